//! One room of a sliding-sync answer (MSC4186 "Room results"): its
//! timeline, the state its config asks for, name, avatar, heroes, counts;
//! or, for an invite or knock, its stripped state.

use std::collections::BTreeSet;

use chancery_proto::ruma::api::client::filter::RoomEventFilter;
use chancery_proto::ruma::events::room::member::MembershipState;
use chancery_store::{Membership, RoomListEntry, StoredEvent};
use serde_json::{Map, Value as JsonValue, json};

use super::SlidingSyncDeps;
use super::decide::{self, RoomConfig, RoomRecord, RoomUpdate};
use crate::rooms::{ClientEventOptions, format_token};
use crate::stream_token::StreamToken;
use crate::sync::rooms::{TimelineWindow, stripped_state, timeline_window, without_room_ids};
use crate::{AuthedUser, Error};

/// Heroes sent for a room without a name (as `/sync`'s summary).
const HEROES: usize = 5;

/// What every room of one answer shares.
pub(super) struct Context {
    pub user: AuthedUser,
    /// The client's token (none on a new connection).
    pub since: Option<StreamToken>,
    pub cut: StreamToken,
    pub ignored: BTreeSet<String>,
    /// Rooms `m.direct` names.
    pub direct: BTreeSet<String>,
}

fn content_str(event: Option<&StoredEvent>, field: &str) -> Option<String> {
    let event = event?;
    let json: JsonValue = serde_json::from_str(&event.json).ok()?;
    json.get("content")?.get(field)?.as_str().filter(|s| !s.is_empty()).map(str::to_owned)
}

impl SlidingSyncDeps {
    /// The room's entry in the answer, and what the connection then holds
    /// of it.
    pub(super) async fn room(
        &self,
        ctx: &Context,
        entry: &RoomListEntry,
        config: &RoomConfig,
        in_lists: &[String],
        update: RoomUpdate,
    ) -> Result<(Option<JsonValue>, RoomRecord), Error> {
        let room_id = entry.room_id.as_str();
        let viewer = ClientEventOptions::from(&ctx.user);
        let mut room = Map::new();
        if update == RoomUpdate::Initial {
            room.insert("initial".into(), json!(true));
        }
        room.insert("bump_stamp".into(), json!(decide::bump_stamp(entry)));
        room.insert("membership".into(), json!(entry.membership.as_str()));
        if !in_lists.is_empty() {
            room.insert("lists".into(), json!(in_lists));
        }
        let mut record = RoomRecord {
            pos: entry.membership_pos,
            membership: entry.membership.as_str().to_owned(),
            timeline_limit: config.timeline_limit,
            required_state: config.required_state.clone(),
            counts: (0, 0),
        };
        if !decide::sees_room(&entry.membership) {
            let m = Membership {
                room_id: entry.room_id.clone(),
                user_id: ctx.user.user_id.to_string(),
                membership: entry.membership.clone(),
                event_id: entry.membership_event_id.clone(),
                stream_pos: entry.membership_pos,
            };
            // An invite from an ignored user is not sent (spec "Ignoring
            // Users"); its record keeps it from being looked at again.
            let Some(stripped) = stripped_state(self.rooms.as_ref(), &self.formatter, &viewer, &m, &ctx.ignored).await? else {
                return Ok((None, record));
            };
            // ruma and matrix-sdk read `invite_state`; the MSC renamed it.
            room.insert("invite_state".into(), JsonValue::Array(stripped.clone()));
            room.insert("stripped_state".into(), JsonValue::Array(stripped));
            return Ok((Some(JsonValue::Object(room)), record));
        }

        let joined = entry.membership == MembershipState::Join;
        let up_to = if joined { ctx.cut.events } else { entry.membership_pos };
        record.pos = up_to;
        if !joined {
            let room = self.left_room(ctx, entry, room.clone(), &viewer).await?;
            if let Some(room) = room {
                return Ok((Some(room), record));
            }
        }
        let (after, expanded, state_from) = match update {
            RoomUpdate::Changes { after, expanded_timeline, widened_state } => {
                (if expanded_timeline { 0 } else { after }, expanded_timeline, (!widened_state).then_some(after))
            }
            _ => (0, false, None),
        };
        let no_filter = RoomEventFilter::default();
        let joined_since = joined.then_some(entry.membership_pos);
        let window = TimelineWindow {
            after,
            up_to,
            limit: config.timeline_limit,
            filter: &no_filter,
            ignored: &ctx.ignored,
            joined_since,
        };
        let timeline = async {
            let w = timeline_window(self.rooms.as_ref(), &self.visibility, &ctx.user.user_id, room_id, window).await?;
            Ok::<_, Error>((w.timeline, w.limited, format_token(w.before_timeline)))
        };
        let summary = async {
            if joined {
                Ok::<_, Error>(Some(self.rooms.member_summary(room_id, ctx.user.user_id.as_str(), HEROES).await?))
            } else {
                Ok(None)
            }
        };
        let (window, summary) = tokio::try_join!(timeline, summary)?;
        let (events, limited, prev_batch) = window;

        // The state the config asks for: whole when the room is new to
        // the client (or the config grew), else what changed.
        let me = ctx.user.user_id.as_str();
        let rs = &config.required_state;
        let mut lazy: BTreeSet<String> = BTreeSet::new();
        if rs.lazy_members() {
            for e in &events {
                lazy.insert(e.sender.clone());
                if e.event_type == "m.room.member"
                    && let Some(key) = &e.state_key
                {
                    lazy.insert(key.clone());
                }
            }
        }
        let named: BTreeSet<String> = rs.named_members(me).map(str::to_owned).collect();
        let wanted = |e: &StoredEvent| {
            let key = e.state_key.as_deref().unwrap_or_default();
            rs.matches(&e.event_type, key, me) || (e.event_type == "m.room.member" && lazy.contains(key))
        };
        let mut state: Vec<StoredEvent> = match state_from {
            None if rs.all_members() => self.rooms.state_at(room_id, Some(up_to)).await?,
            None => {
                let members: Vec<String> = named.iter().chain(&lazy).cloned().collect();
                self.rooms.state_at_with_members(room_id, Some(up_to), &members).await?
            }
            Some(after) => self.rooms.state_changes(room_id, after, up_to).await?,
        };
        state.retain(|e| wanted(e));
        if state_from.is_some() {
            // The members the new timeline needs that did not change.
            let present: BTreeSet<&str> =
                state.iter().filter(|e| e.event_type == "m.room.member").filter_map(|e| e.state_key.as_deref()).collect();
            let missing: Vec<(String, String)> =
                lazy.iter().filter(|m| !present.contains(m.as_str())).map(|m| ("m.room.member".to_owned(), m.clone())).collect();
            for chunk in missing.chunks(chancery_store::MAX_STATE_KEYS_PER_READ) {
                state.extend(self.rooms.current_state_events(room_id, chunk).await?);
            }
        }

        // Name, avatar and heroes, whatever the config: Element X shows
        // them. A room the user left is shown as it was when they left.
        // The whole state just read holds them if the config asks for them
        // (Element X's does); heroes are needed only for a room without a name.
        let heroes: Vec<String> = summary.as_ref().map(|s| s.heroes.clone()).unwrap_or_default();
        let in_state = |t: &str| joined && state_from.is_none() && rs.matches(t, "", me);
        let named = in_state("m.room.name")
            && content_str(state.iter().find(|e| e.event_type == "m.room.name" && e.state_key.as_deref() == Some("")), "name")
                .is_some();
        let mut keys: Vec<(String, String)> = ["m.room.name", "m.room.avatar"]
            .into_iter()
            .filter(|t| !in_state(t))
            .map(|t| (t.to_owned(), String::new()))
            .collect();
        if !named {
            keys.extend(heroes.iter().map(|h| ("m.room.member".to_owned(), h.clone())));
        }
        let looks = if keys.is_empty() {
            Vec::new()
        } else if joined {
            self.rooms.current_state_events(room_id, &keys).await?
        } else {
            let mut looks = Vec::new();
            for (t, k) in &keys {
                looks.extend(self.rooms.state_event(room_id, t, k, Some(up_to)).await?);
            }
            looks
        };
        let find = |t: &str, k: &str| looks.iter().chain(&state).find(|e| e.event_type == t && e.state_key.as_deref() == Some(k));
        match content_str(find("m.room.name", ""), "name") {
            Some(name) => {
                room.insert("name".into(), json!(name));
            }
            None if joined => {
                let heroes: Vec<JsonValue> = heroes
                    .iter()
                    .map(|h| {
                        let member = find("m.room.member", h);
                        let mut hero = json!({ "user_id": h });
                        if let Some(name) = content_str(member, "displayname") {
                            hero["displayname"] = json!(name);
                        }
                        if let Some(avatar) = content_str(member, "avatar_url") {
                            hero["avatar_url"] = json!(avatar);
                        }
                        hero
                    })
                    .collect();
                room.insert("heroes".into(), JsonValue::Array(heroes));
            }
            None => {}
        }
        match content_str(find("m.room.avatar", ""), "url") {
            Some(url) => room.insert("avatar".into(), json!(url)),
            None => room.insert("avatar".into(), JsonValue::Null),
        };
        room.insert("is_dm".into(), json!(ctx.direct.contains(room_id)));
        if let Some(summary) = &summary {
            room.insert("joined_count".into(), json!(summary.joined));
            room.insert("invited_count".into(), json!(summary.invited));
            let counts = self.push.unread_counts(&ctx.user.user_id, room_id).await?;
            record.counts = (counts["notification_count"].as_u64().unwrap_or(0), counts["highlight_count"].as_u64().unwrap_or(0));
            room.insert("notification_count".into(), json!(record.counts.0));
            room.insert("highlight_count".into(), json!(record.counts.1));
        }

        let positions: Vec<u64> = events.iter().map(|e| e.stream_pos).collect();
        let (state, timeline) =
            tokio::try_join!(self.formatter.client_events(&state, &viewer), self.formatter.client_events(&events, &viewer))?;
        room.insert("required_state".into(), JsonValue::Array(without_room_ids(state)));
        room.insert("timeline".into(), JsonValue::Array(without_room_ids(timeline)));
        room.insert("limited".into(), json!(limited));
        room.insert("prev_batch".into(), json!(prev_batch));
        room.insert("num_live".into(), json!(decide::num_live(&positions, ctx.since.map(|s| s.events))));
        if expanded {
            // The MSC's name and the one Synapse (and clients) used first.
            room.insert("expanded_timeline".into(), json!(true));
            room.insert("unstable_expanded_timeline".into(), json!(true));
        }
        Ok((Some(JsonValue::Object(room)), record))
    }

    /// A room the user left or was banned from, when they may not see its
    /// state as of their departure (an invite they rejected, a ban before
    /// they ever joined): only their own membership event, so the client
    /// drops the invite and learns nothing else. `None` when they may see
    /// it (the room is then answered like a joined one, as of the leave).
    async fn left_room(
        &self,
        ctx: &Context,
        entry: &RoomListEntry,
        mut room: Map<String, JsonValue>,
        viewer: &ClientEventOptions,
    ) -> Result<Option<JsonValue>, Error> {
        let room_id =
            chancery_proto::ruma::RoomId::parse(&entry.room_id).map_err(|e| Error::Internal(format!("stored room id: {e}")))?;
        match self.visibility.ensure_can_see_state_at(&ctx.user.user_id, &room_id, entry.membership_pos).await {
            Ok(()) => Ok(None),
            Err(Error::Forbidden(_)) => {
                let own = self.rooms.event(&entry.membership_event_id).await?;
                let own = self.formatter.client_events(own.as_slice(), viewer).await?;
                let own = without_room_ids(own);
                room.insert("required_state".into(), JsonValue::Array(own.clone()));
                room.insert("timeline".into(), JsonValue::Array(own));
                Ok(Some(JsonValue::Object(room)))
            }
            Err(e) => Err(e),
        }
    }
}
