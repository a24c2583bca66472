//! The body of a `POST /_matrix/push/v1/notify` (push gateway API), built
//! with ruma's types. Pure: what goes in is passed in.
//!
//! With `data.format: "event_id_only"` a push carries the event id, room
//! id, counts, priority and the device, and nothing of the event (no
//! type, sender, content or room name): the app fetches the event itself
//! over its own connection, so no message content or metadata passes
//! through the push provider. Without it, the event-related fields the
//! spec lists.
//!
//! `counts.unread` is always sent, 0 included, although the spec says
//! zero counts "should be omitted" (and ruma's type omits them): a badge
//! that must clear needs its 0, and gateways (Sygnal) leave the badge as
//! it was when the count is missing. Synapse sends it too.

use chancery_proto::ruma::api::push_gateway::send_event_notification::v1::{
    Device, Notification, NotificationPriority, PusherData,
};
use chancery_proto::ruma::events::TimelineEventType;
use chancery_proto::ruma::push::{PushFormat, Tweak};
use chancery_proto::ruma::{EventId, RoomAliasId, RoomId, SecondsSinceUnixEpoch, UInt, UserId};
use chancery_store::Pusher;
use serde_json::value::RawValue;
use serde_json::{Value as JsonValue, json};

use super::rules::data_for_gateway;
use crate::Error;

/// Whether the pusher asked for `event_id_only` pushes.
pub(crate) fn event_id_only(pusher: &Pusher) -> bool {
    data_for_gateway(&pusher.data_json)
        .ok()
        .and_then(|d| d.get("format").and_then(JsonValue::as_str).map(|f| PushFormat::from(f) == PushFormat::EventIdOnly))
        .unwrap_or(false)
}

/// What the full format tells of the event besides its ids.
#[derive(Debug, Clone, Default)]
pub(crate) struct EventDetails {
    pub event_type: String,
    pub sender: String,
    pub content: Option<Box<RawValue>>,
    pub sender_display_name: Option<String>,
    pub room_name: Option<String>,
    pub room_alias: Option<String>,
    /// A membership event whose target is the user pushed to.
    pub user_is_target: bool,
}

/// A push about one event.
#[derive(Debug, Clone)]
pub(crate) struct EventPush {
    pub event_id: String,
    pub room_id: String,
    pub prio: NotificationPriority,
    pub tweaks: Vec<Tweak>,
    /// `None` for `event_id_only` pushers.
    pub details: Option<EventDetails>,
}

fn internal(what: &str) -> impl Fn(String) -> Error + '_ {
    move |e| Error::Internal(format!("building a push: {what}: {e}"))
}

/// The pusher as a device of the push: its ids, when its pushkey was set
/// (in seconds), its `data` without `url`, and the tweaks.
fn device(pusher: &Pusher, tweaks: Vec<Tweak>) -> Result<Device, Error> {
    let data = data_for_gateway(&pusher.data_json)?;
    let mut device = Device::new(pusher.app_id.clone(), pusher.pushkey.clone());
    device.pushkey_ts = Some(SecondsSinceUnixEpoch(UInt::new_saturating(pusher.pushkey_ts / 1000)));
    device.data = serde_json::from_value::<PusherData>(JsonValue::Object(data)).map_err(|e| internal("data")(e.to_string()))?;
    device.tweaks = tweaks;
    Ok(device)
}

/// `{"notification": ...}` with `counts.unread` set (see the module
/// documentation).
fn finish(notification: Notification, unread: u64) -> Result<Vec<u8>, Error> {
    let mut body = json!({ "notification": notification });
    body["notification"]["counts"]["unread"] = json!(unread);
    serde_json::to_vec(&body).map_err(|e| internal("body")(e.to_string()))
}

/// The push of an event to `pusher`, with the user's badge count.
pub(crate) fn event_body(pusher: &Pusher, push: EventPush, unread: u64) -> Result<Vec<u8>, Error> {
    let mut n = Notification::new(vec![device(pusher, push.tweaks)?]);
    n.event_id = Some(EventId::parse(&push.event_id).map_err(|e| internal("event id")(e.to_string()))?);
    n.room_id = Some(RoomId::parse(&push.room_id).map_err(|e| internal("room id")(e.to_string()))?);
    n.prio = push.prio;
    if let Some(d) = push.details {
        n.event_type = Some(TimelineEventType::from(d.event_type.as_str()));
        n.sender = UserId::parse(&d.sender).ok();
        n.sender_display_name = d.sender_display_name.filter(|s| !s.is_empty());
        n.room_name = d.room_name.filter(|s| !s.is_empty());
        n.room_alias = d.room_alias.and_then(|a| RoomAliasId::parse(&a).ok());
        n.content = d.content;
        n.user_is_target = d.user_is_target;
    }
    finish(n, unread)
}

/// A push of the badge count alone (after the user read something), low
/// priority: nothing to alert about.
pub(crate) fn badge_body(pusher: &Pusher, unread: u64) -> Result<Vec<u8>, Error> {
    let mut n = Notification::new(vec![device(pusher, Vec::new())?]);
    n.prio = NotificationPriority::Low;
    finish(n, unread)
}

#[cfg(test)]
mod tests {
    use chancery_proto::ruma::push::SoundTweakValue;

    use super::*;

    fn pusher(data: JsonValue) -> Pusher {
        Pusher {
            id: 1,
            user_id: "@alice:x".into(),
            device_id: "DEV".into(),
            app_id: "com.example.app".into(),
            pushkey: "the-key".into(),
            kind: "http".into(),
            app_display_name: "App".into(),
            device_display_name: "Phone".into(),
            profile_tag: None,
            lang: "en".into(),
            data_json: data.to_string(),
            pushkey_ts: 1_700_000_123_456,
        }
    }

    fn push(details: Option<EventDetails>) -> EventPush {
        EventPush {
            event_id: "$ev:x".into(),
            room_id: "!room:x".into(),
            prio: NotificationPriority::High,
            tweaks: vec![Tweak::Sound(SoundTweakValue::Default)],
            details,
        }
    }

    fn body(bytes: Vec<u8>) -> JsonValue {
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn event_id_only_sends_nothing_of_the_event() {
        let p = pusher(json!({"url": "https://gw/_matrix/push/v1/notify", "format": "event_id_only", "extra": 1}));
        assert!(event_id_only(&p));
        let got = body(event_body(&p, push(None), 2).unwrap());
        assert_eq!(
            got,
            json!({"notification": {
                "event_id": "$ev:x",
                "room_id": "!room:x",
                "counts": {"unread": 2},
                "devices": [{
                    "app_id": "com.example.app",
                    "pushkey": "the-key",
                    "pushkey_ts": 1_700_000_123,
                    "data": {"format": "event_id_only", "extra": 1},
                    "tweaks": {"sound": "default"},
                }],
            }}),
            "high priority is the default, so ruma leaves it out"
        );
    }

    #[test]
    fn the_full_format_tells_of_the_event() {
        let p = pusher(json!({"url": "https://gw/_matrix/push/v1/notify"}));
        assert!(!event_id_only(&p));
        let details = EventDetails {
            event_type: "m.room.message".into(),
            sender: "@bob:x".into(),
            content: Some(RawValue::from_string(r#"{"body":"hi","msgtype":"m.text"}"#.into()).unwrap()),
            sender_display_name: Some("Bob".into()),
            room_name: Some("Lounge".into()),
            room_alias: Some("#lounge:x".into()),
            user_is_target: false,
        };
        let mut low = push(Some(details));
        low.prio = NotificationPriority::Low;
        low.tweaks.clear();
        let got = body(event_body(&p, low, 0).unwrap());
        assert_eq!(
            got,
            json!({"notification": {
                "event_id": "$ev:x",
                "room_id": "!room:x",
                "type": "m.room.message",
                "sender": "@bob:x",
                "sender_display_name": "Bob",
                "room_name": "Lounge",
                "room_alias": "#lounge:x",
                "prio": "low",
                "content": {"body": "hi", "msgtype": "m.text"},
                "counts": {"unread": 0},
                "devices": [{"app_id": "com.example.app", "pushkey": "the-key", "pushkey_ts": 1_700_000_123}],
            }}),
            "a zero count is sent, an empty data object is not"
        );
    }

    #[test]
    fn a_badge_push_has_counts_and_devices_only() {
        let p = pusher(json!({"url": "https://gw/_matrix/push/v1/notify", "format": "event_id_only"}));
        let got = body(badge_body(&p, 0).unwrap());
        assert_eq!(
            got,
            json!({"notification": {
                "prio": "low",
                "counts": {"unread": 0},
                "devices": [{"app_id": "com.example.app", "pushkey": "the-key", "pushkey_ts": 1_700_000_123,
                             "data": {"format": "event_id_only"}}],
            }})
        );
    }
}
