//! The decisions of a sync pass, as pure functions over what the pass
//! read: which section a room goes in, which state it gets, whether its
//! typing list is sent, whose member events a lazy-loading client needs.
//! The pass (`mod.rs`, `rooms.rs`) does the reads around them.

use std::collections::BTreeSet;

use chancery_proto::limits::{DEFAULT_SYNC_TIMELINE_LIMIT, MAX_SYNC_TIMELINE_LIMIT};
use chancery_proto::ruma::api::client::filter::{FilterDefinition, LazyLoadOptions};
use chancery_proto::ruma::events::room::member::MembershipState;
use chancery_store::{AccountDataBatchLimits, StoredEvent};
use serde_json::Value as JsonValue;

use crate::keys::MembershipNews;

/// How this sync loads member events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LazyMembers {
    /// Every member event of the state.
    Off,
    /// Those the answer needs, every time (`include_redundant_members`).
    AlwaysSend,
    /// Those the answer needs and the device does not hold yet.
    SkipHeld,
}

impl LazyMembers {
    pub(super) fn of(filter: &FilterDefinition) -> Self {
        match filter.room.state.lazy_load_options {
            LazyLoadOptions::Disabled => Self::Off,
            LazyLoadOptions::Enabled { include_redundant_members: true } => Self::AlwaysSend,
            LazyLoadOptions::Enabled { include_redundant_members: false } => Self::SkipHeld,
        }
    }
}

/// Timeline events per room the filter asks for, within the bounds.
pub(super) fn timeline_limit(filter: &FilterDefinition) -> usize {
    filter
        .room
        .timeline
        .limit
        .map(|l| u64::from(l) as usize)
        .unwrap_or(DEFAULT_SYNC_TIMELINE_LIMIT)
        .clamp(1, MAX_SYNC_TIMELINE_LIMIT)
}

/// Whether the filter lets the room through (`rooms` / `not_rooms`).
pub(super) fn room_allowed(filter: &FilterDefinition, room_id: &str) -> bool {
    let room = &filter.room;
    room.rooms.as_ref().is_none_or(|rooms| rooms.iter().any(|r| r.as_str() == room_id))
        && !room.not_rooms.iter().any(|r| r.as_str() == room_id)
}

/// Timeline events of ignored users are not delivered; their state events
/// are (spec "Ignoring Users": the room must not look different).
pub(crate) fn visible(event: &StoredEvent, ignored: &BTreeSet<String>) -> bool {
    event.state_key.is_some() || !ignored.contains(&event.sender)
}

/// Where a room goes in this answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Section {
    /// Not in this answer.
    Skip,
    /// `rooms.join`: looked at, and sent if it has news.
    Joined,
    Invited,
    Knocked,
    Left,
}

/// What decides a room's section, read by the pass.
#[derive(Debug, Clone, Copy)]
pub(super) struct RoomFacts {
    /// The user's membership changed since the client's token (or this is
    /// an initial sync).
    pub(super) membership_changed: bool,
    /// The room has account data for this answer.
    pub(super) has_account_data: bool,
    /// `Some(false)`: the store says no events or receipts arrived in the
    /// room since the token; `None`: unknown (a long gap, or a full sync).
    pub(super) store_news: Option<bool>,
    /// Its typing list goes into this answer.
    pub(super) typing_news: bool,
    pub(super) forgotten: bool,
}

/// The section of a room the user has `membership` in. An initial sync
/// lists left rooms only with `include_leave`; an incremental one, rooms
/// left since the token.
pub(super) fn section(membership: &MembershipState, facts: RoomFacts, initial: bool, include_leave: bool) -> Section {
    use MembershipState as M;
    match membership {
        M::Join
            if !facts.membership_changed && !facts.has_account_data && facts.store_news == Some(false) && !facts.typing_news =>
        {
            Section::Skip
        }
        M::Join => Section::Joined,
        M::Invite if facts.membership_changed => Section::Invited,
        M::Knock if facts.membership_changed => Section::Knocked,
        M::Leave | M::Ban if facts.forgotten => Section::Skip,
        M::Leave | M::Ban if !initial && facts.membership_changed || (initial && include_leave) => Section::Left,
        _ => Section::Skip,
    }
}

/// The client's typing state of a room, as far as this node can tell.
#[derive(Debug, Clone, Copy)]
pub(super) struct TypingFacts {
    /// The client's typing token; `None` on an initial sync.
    pub(super) since: Option<u64>,
    /// Serial of the room's last typing change here.
    pub(super) changed: u64,
    /// Changes at or below this serial may be unknown to this node.
    pub(super) floor: u64,
    pub(super) anyone_typing: bool,
}

/// Whether a room the client holds needs a pass for its typing list.
pub(super) fn typing_news(t: TypingFacts) -> bool {
    match t.since {
        // The client may hold typing state this node never knew.
        Some(since) if since < t.floor => true,
        Some(since) => t.changed > since,
        None => true,
    }
}

/// Whether the room's `m.typing` goes into its section. A room sent whole
/// gets its list when someone types.
pub(super) fn send_typing(t: TypingFacts, whole_room: bool) -> bool {
    match t.since {
        Some(_) if whole_room => t.anyone_typing,
        None => t.anyone_typing,
        // The client may hold typing state this node never knew: give it
        // every room's list once.
        Some(since) if since < t.floor => true,
        Some(since) => t.changed > since,
    }
}

/// MSC4222's unstable name of `state_after`, which matrix-js-sdk asks
/// for (`org.matrix.msc4222.use_state_after`) and reads.
pub(crate) const UNSTABLE_STATE_AFTER: &str = "org.matrix.msc4222.state_after";

/// The key of a room's state section: `state`, or with `use_state_after`
/// `state_after` under the name the client asked by (spec v1.16 or
/// MSC4222's unstable prefix). The other key is left out, as the spec
/// requires.
pub(super) fn state_section_key(use_state_after: bool, unstable_name: bool) -> &'static str {
    match (use_state_after, unstable_name) {
        (false, _) => "state",
        (true, false) => "state_after",
        (true, true) => UNSTABLE_STATE_AFTER,
    }
}

/// Which state a room's `state` (or `state_after`) section is read as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum StateRead {
    /// Nothing: the client holds the state and the timeline brings the rest.
    Nothing,
    /// The changes in `(after, up_to]`.
    Changes { after: u64, up_to: u64 },
    /// The whole state at a position.
    At(u64),
    /// The whole state at a position, member events only of these users.
    AtWithMembers(u64, Vec<String>),
}

/// The read for a room's state section. `window_since` is where the
/// client's copy of the room ends (`None`: it gets the room whole);
/// `lazy_members` the members a lazy-loading whole room needs;
/// `before_timeline` and `end` where the timeline starts and ends.
pub(super) fn state_read(
    window_since: Option<u64>,
    full_state: bool,
    state_after: bool,
    lazy_members: Option<Vec<String>>,
    limited: bool,
    before_timeline: u64,
    end: u64,
) -> StateRead {
    match (window_since, full_state, state_after, lazy_members) {
        // MSC4222: the state at the end of the timeline, as a delta when
        // the client already has the room.
        (Some(s), false, true, _) => StateRead::Changes { after: s, up_to: end },
        (_, _, true, Some(members)) => StateRead::AtWithMembers(end, members),
        (_, _, true, None) => StateRead::At(end),
        (Some(s), false, false, _) if limited => StateRead::Changes { after: s, up_to: before_timeline },
        (Some(_), false, false, _) => StateRead::Nothing,
        (_, _, false, Some(members)) => StateRead::AtWithMembers(before_timeline, members),
        (_, _, false, None) => StateRead::At(before_timeline),
    }
}

/// Whether a room's `summary` is sent: with the room whole, then again
/// when membership events come (spec: "may be omitted" when unchanged; a
/// gap may hold some), so a message in a large room does not cost a count
/// of its members per syncing client.
pub(super) fn summary_needed(whole_room: bool, full_state: bool, limited: bool, timeline_has_member: bool) -> bool {
    whole_room || full_state || limited || timeline_has_member
}

/// Whose member events a lazy-loading client needs with this timeline:
/// every sender, unless (in a `state` section) the sender's own member
/// event came earlier in the timeline, which the client applies itself;
/// the heroes (spec: their member events "MUST be included in the
/// `state`, unless they are redundant"); and `me` when given (on a join or
/// a full-state sync the user's own membership MUST be sent).
pub(super) fn wanted_members<'a>(
    timeline: &'a [StoredEvent],
    state_after: bool,
    heroes: &'a [String],
    me: Option<&'a str>,
) -> BTreeSet<&'a str> {
    let mut wanted: BTreeSet<&str> = heroes.iter().map(String::as_str).chain(me).collect();
    let mut in_timeline: BTreeSet<&str> = BTreeSet::new();
    for event in timeline {
        if !in_timeline.contains(event.sender.as_str()) {
            wanted.insert(&event.sender);
        }
        if !state_after && event.event_type == "m.room.member" {
            in_timeline.extend(event.state_key.as_deref());
        }
    }
    wanted
}

/// Whether the answer has anything for the client (else a long-poll waits).
pub(super) fn has_news(rooms_with_news: usize, global_account_data: usize, presence: usize) -> bool {
    rooms_with_news + global_account_data + presence > 0
}

/// Where an answer's account data ends, given the (position, bytes) of
/// the changes read after the client's token in position order, at most
/// `batch` of them: at the cut (`up_to`) if `batch` did not cut the read
/// short, else at the last change read, so the next sync continues right
/// after it and everything at or below the token has been delivered (the
/// stream's promise, ARCHITECTURE.md "Sync tokens are compound"). `true`
/// when more may follow: the answer then counts as news, so the client
/// comes back at once instead of long-polling on changes already there.
pub(crate) fn account_data_reach(read: &[(u64, usize)], up_to: u64, batch: AccountDataBatchLimits) -> (u64, bool) {
    let bytes = read.iter().fold(0usize, |sum, (_, b)| sum.saturating_add(*b));
    match read.last() {
        Some(&(last, _)) if read.len() >= batch.max_entries || bytes >= batch.max_bytes => (last, true),
        _ => (up_to, false),
    }
}

/// Event types whose change in a room changes whose device lists its
/// members track.
const DEVICE_LIST_EVENT_TYPES: [&str; 2] = ["m.room.member", "m.room.encryption"];

/// Whether this answer's rooms carry a membership or encryption change, so
/// the device lists of the users they concern must be looked at. Read off
/// the answer's joined rooms (a room joined since the last sync carries
/// its members in its state) and whether any room was left. A filter
/// that may hide such events (by type or by room) leaves it possible.
pub(super) fn membership_news<'a>(
    filter: &FilterDefinition,
    joined: impl Iterator<Item = &'a JsonValue>,
    left_any: bool,
) -> MembershipNews {
    let room = &filter.room;
    let may_hide = room.rooms.is_some()
        || !room.not_rooms.is_empty()
        || room.timeline.types.is_some()
        || !room.timeline.not_types.is_empty()
        || room.state.types.is_some()
        || !room.state.not_types.is_empty();
    let is_news = |event: &JsonValue| event["type"].as_str().is_some_and(|t| DEVICE_LIST_EVENT_TYPES.contains(&t));
    let section_has_news = |room: &JsonValue| {
        ["timeline", "state", "state_after", UNSTABLE_STATE_AFTER]
            .iter()
            .any(|section| room[section]["events"].as_array().is_some_and(|events| events.iter().any(is_news)))
    };
    if may_hide || left_any || joined.into_iter().any(section_has_news) { MembershipNews::Possible } else { MembershipNews::None }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUIET: RoomFacts = RoomFacts {
        membership_changed: false,
        has_account_data: false,
        store_news: Some(false),
        typing_news: false,
        forgotten: false,
    };

    #[test]
    fn sections() {
        use MembershipState as M;
        let changed = RoomFacts { membership_changed: true, ..QUIET };
        let cases: Vec<(&str, M, RoomFacts, bool, bool, Section)> = vec![
            ("a quiet joined room is skipped", M::Join, QUIET, false, false, Section::Skip),
            ("unknown news: looked at", M::Join, RoomFacts { store_news: None, ..QUIET }, false, false, Section::Joined),
            ("events", M::Join, RoomFacts { store_news: Some(true), ..QUIET }, false, false, Section::Joined),
            ("account data", M::Join, RoomFacts { has_account_data: true, ..QUIET }, false, false, Section::Joined),
            ("typing", M::Join, RoomFacts { typing_news: true, ..QUIET }, false, false, Section::Joined),
            ("joined since", M::Join, changed, false, false, Section::Joined),
            ("invited since", M::Invite, changed, false, false, Section::Invited),
            ("an old invite", M::Invite, QUIET, false, false, Section::Skip),
            ("knocked since", M::Knock, changed, false, false, Section::Knocked),
            ("left since", M::Leave, changed, false, false, Section::Left),
            ("banned since", M::Ban, changed, false, false, Section::Left),
            ("left long ago", M::Leave, QUIET, false, false, Section::Skip),
            ("left and forgotten", M::Leave, RoomFacts { forgotten: true, ..changed }, false, false, Section::Skip),
            ("initial, left, no include_leave", M::Leave, changed, true, false, Section::Skip),
            ("initial, left, include_leave", M::Leave, changed, true, true, Section::Left),
            ("initial, forgotten, include_leave", M::Leave, RoomFacts { forgotten: true, ..changed }, true, true, Section::Skip),
        ];
        for (name, membership, facts, initial, include_leave, expected) in cases {
            assert_eq!(section(&membership, facts, initial, include_leave), expected, "{name}");
        }
    }

    #[test]
    fn typing_lists() {
        let t = |since, changed, floor, anyone_typing| TypingFacts { since, changed, floor, anyone_typing };
        // (facts, news for a held room, sent in a held room, sent in a whole room)
        let cases = [
            (t(None, 0, 10, false), true, false, false),
            (t(None, 12, 10, true), true, true, true),
            (t(Some(5), 0, 10, false), true, true, false),
            (t(Some(20), 15, 10, true), false, false, true),
            (t(Some(20), 25, 10, false), true, true, false),
        ];
        for (facts, news, sent_held, sent_whole) in cases {
            assert_eq!(typing_news(facts), news, "{facts:?}");
            assert_eq!(send_typing(facts, false), sent_held, "{facts:?}");
            assert_eq!(send_typing(facts, true), sent_whole, "{facts:?} whole");
        }
    }

    #[test]
    fn state_reads() {
        let members = || Some(vec!["@a:x".to_owned()]);
        let cases: Vec<(&str, StateRead, StateRead)> = vec![
            ("held, gapless", state_read(Some(5), false, false, None, false, 9, 10), StateRead::Nothing),
            ("held, gappy", state_read(Some(5), false, false, None, true, 9, 10), StateRead::Changes { after: 5, up_to: 9 }),
            (
                "held, state_after",
                state_read(Some(5), false, true, None, false, 9, 10),
                StateRead::Changes { after: 5, up_to: 10 },
            ),
            ("whole", state_read(None, false, false, None, false, 9, 10), StateRead::At(9)),
            ("full state", state_read(Some(5), true, false, None, true, 9, 10), StateRead::At(9)),
            (
                "whole, lazy",
                state_read(None, false, false, members(), false, 9, 10),
                StateRead::AtWithMembers(9, vec!["@a:x".into()]),
            ),
            ("whole, state_after", state_read(None, false, true, None, false, 9, 10), StateRead::At(10)),
            (
                "whole, state_after, lazy",
                state_read(None, false, true, members(), false, 9, 10),
                StateRead::AtWithMembers(10, vec!["@a:x".into()]),
            ),
        ];
        for (name, got, expected) in cases {
            assert_eq!(got, expected, "{name}");
        }
    }

    fn event(sender: &str, event_type: &str, state_key: Option<&str>) -> StoredEvent {
        StoredEvent {
            event_id: format!("${sender}{event_type}"),
            room_id: "!r".into(),
            event_type: event_type.into(),
            state_key: state_key.map(str::to_owned),
            sender: sender.into(),
            origin_server_ts: 0,
            depth: 1,
            json: "{}".into(),
            membership: None,
            stream_pos: 1,
            redacted_by: None,
            txn: None,
        }
    }

    #[test]
    fn account_data_ends_at_the_last_change_sent_when_cut_short() {
        let batch = AccountDataBatchLimits { max_entries: 3, max_bytes: 100 };
        // The (position, bytes) read; the token's position, whether more may follow.
        let case = |name: &str, read: &[(u64, usize)], expected: (u64, bool)| {
            assert_eq!(account_data_reach(read, 50, batch), expected, "{name}");
        };
        case("nothing changed", &[], (50, false));
        case("all of it", &[(4, 10), (9, 10)], (50, false));
        case("as many as an answer holds", &[(4, 10), (9, 10), (12, 10)], (12, true));
        case("as many bytes", &[(4, 60), (9, 40)], (9, true));
        case("one entry over the bytes", &[(4, 500)], (4, true));
        case("just under the bytes", &[(4, 60), (9, 39)], (50, false));
    }

    #[test]
    fn members_a_lazy_client_needs() {
        let timeline =
            [event("@a", "m.room.message", None), event("@b", "m.room.member", Some("@b")), event("@b", "m.room.message", None)];
        let heroes = ["@h".to_owned()];
        fn names(s: BTreeSet<&str>) -> Vec<&str> {
            s.into_iter().collect()
        }
        // @b's own join came earlier in the timeline: not needed in `state`.
        assert_eq!(names(wanted_members(&timeline, false, &heroes, None)), ["@a", "@b", "@h"]);
        assert_eq!(names(wanted_members(&timeline, false, &[], Some("@me"))), ["@a", "@b", "@me"]);
        assert_eq!(names(wanted_members(&timeline[2..], false, &[], None)), ["@b"]);
        assert!(summary_needed(true, false, false, false) && summary_needed(false, false, false, true));
        assert!(!summary_needed(false, false, false, false));
    }

    #[test]
    fn state_section_keys_follow_the_request() {
        let cases = [
            (false, false, "state"),
            (false, true, "state"),
            (true, false, "state_after"),
            (true, true, "org.matrix.msc4222.state_after"),
        ];
        for (after, unstable, want) in cases {
            assert_eq!(state_section_key(after, unstable), want, "{after} {unstable}");
        }
    }

    #[test]
    fn device_lists_are_looked_at_only_after_membership_or_encryption_changes() {
        use serde_json::json;
        let plain = FilterDefinition::default();
        let message = json!({"timeline": {"events": [{"type": "m.room.message"}]}, "state": {"events": []}});
        let joined = json!({"timeline": {"events": [{"type": "m.room.member"}]}, "state": {"events": []}});
        let gappy = json!({"timeline": {"events": []}, "state": {"events": [{"type": "m.room.member"}]}});
        let encrypted = json!({"timeline": {"events": [{"type": "m.room.encryption"}]}});
        let after = json!({"timeline": {"events": []}, "state_after": {"events": [{"type": "m.room.member"}]}});
        let unstable_after =
            json!({"timeline": {"events": []}, "org.matrix.msc4222.state_after": {"events": [{"type": "m.room.member"}]}});
        assert_eq!(membership_news(&plain, [&message].into_iter(), false), MembershipNews::None);
        assert_eq!(membership_news(&plain, std::iter::empty(), false), MembershipNews::None);
        for room in [&joined, &gappy, &encrypted, &after, &unstable_after] {
            assert_eq!(membership_news(&plain, [&message, room].into_iter(), false), MembershipNews::Possible, "{room}");
        }
        assert_eq!(membership_news(&plain, [&message].into_iter(), true), MembershipNews::Possible, "a room was left");
        // A filter that may hide member events leaves it to the store.
        let mut by_type = FilterDefinition::default();
        by_type.room.timeline.not_types = vec!["m.room.member".into()];
        assert_eq!(membership_news(&by_type, [&message].into_iter(), false), MembershipNews::Possible);
        let mut by_room = FilterDefinition::default();
        by_room.room.rooms = Some(vec![]);
        assert_eq!(membership_news(&by_room, std::iter::empty(), false), MembershipNews::Possible);
    }
}
