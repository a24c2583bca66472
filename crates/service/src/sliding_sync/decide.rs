//! The decisions of a sliding-sync answer, as pure functions over what
//! was read: which rooms the lists and subscriptions select, the room
//! config each gets (MSC4186 "Combining room configs"), which state a
//! config asks for, and whether and how a room is sent again.

use std::collections::BTreeSet;

use chancery_proto::ruma::api::client::sync::sync_events::v5::request::{ExtensionRoomConfig, ListFilters};
use chancery_proto::ruma::events::room::member::MembershipState;
use chancery_store::RoomListEntry;
use serde::{Deserialize, Serialize};

/// `required_state` wildcards and placeholders (ruma's `sync_events::v5`
/// and MSC3575, as matrix-sdk sends them).
const ANY: &str = "*";
const LAZY: &str = "$LAZY";
const ME: &str = "$ME";

/// What state a room config asks for: (type, state key) pairs, where
/// either may be `*`, and a member state key `$ME` or `$LAZY`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequiredState(pub BTreeSet<(String, String)>);

impl RequiredState {
    /// Whether the current state event (`event_type`, `state_key`) is
    /// asked for, `me` being the syncing user.
    pub fn matches(&self, event_type: &str, state_key: &str, me: &str) -> bool {
        self.0.iter().any(|(t, k)| {
            (t == ANY || t == event_type)
                && (k == ANY || k == state_key || (k == ME && state_key == me && event_type == "m.room.member"))
        })
    }

    /// Lazy-loaded members: those the timeline needs (its senders and
    /// the targets of its member events).
    pub fn lazy_members(&self) -> bool {
        self.0.iter().any(|(t, k)| (t == "m.room.member" || t == ANY) && k == LAZY)
    }

    /// Every member event is asked for (then there is no lazy loading).
    pub fn all_members(&self) -> bool {
        self.0.iter().any(|(t, k)| (t == "m.room.member" || t == ANY) && k == ANY)
    }

    /// Member state keys asked for by name (`$ME` as `me`).
    pub fn named_members<'a>(&'a self, me: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(|(t, k)| (t == "m.room.member" || t == ANY) && k != ANY && k != LAZY)
            .map(move |(_, k)| if k == ME { me } else { k.as_str() })
    }

    /// Asks for some state this one does not (a widened config: the
    /// state it adds is sent again).
    pub fn widens(&self, previous: &RequiredState) -> bool {
        !self.0.is_subset(&previous.0)
    }
}

/// The room config of a list or subscription (MSC4186 "Room results").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomConfig {
    pub timeline_limit: usize,
    pub required_state: RequiredState,
}

impl RoomConfig {
    /// The superset of two configs: the longer timeline, the union of the
    /// state (MSC4186 "Combining room configs").
    pub fn combine(&mut self, other: &RoomConfig) {
        self.timeline_limit = self.timeline_limit.max(other.timeline_limit);
        self.required_state.0.extend(other.required_state.0.iter().cloned());
    }
}

/// What a connection remembers of a room it sent, stored with the
/// position (opaque to the store). Short keys: one per room and answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomRecord {
    /// The events position the client holds the room up to.
    #[serde(rename = "p")]
    pub pos: u64,
    /// The membership the room was sent with.
    #[serde(rename = "m")]
    pub membership: String,
    /// The room config it was sent with.
    #[serde(rename = "l")]
    pub timeline_limit: usize,
    #[serde(rename = "s")]
    pub required_state: RequiredState,
    /// (notifications, highlights) sent.
    #[serde(rename = "c", default)]
    pub counts: (u64, u64),
}

/// Whether a room is in the list at all (MSC4186 "Lists"): every room the
/// user is joined to, invited to or knocked on; a ban or a kick (they may
/// not have seen it otherwise; Synapse lists kicks too); a room they left
/// themselves only if this connection sent it.
pub fn listed(entry: &RoomListEntry, sent_before: bool) -> bool {
    match entry.membership {
        MembershipState::Join | MembershipState::Invite | MembershipState::Knock | MembershipState::Ban => true,
        MembershipState::Leave if entry.kicked => true,
        _ => sent_before,
    }
}

/// A room in view: the lists whose ranges hold it, and whether the
/// request subscribes to it.
pub struct InView<'a> {
    pub room_id: &'a str,
    pub lists: Vec<&'a str>,
    pub subscribed: bool,
}

/// The rooms in view an extension with these `lists` and `rooms` covers
/// (MSC4186 as ruma documents it and Synapse serves it): the rooms of the
/// named lists (all lists when `lists` is absent) and the named
/// subscriptions (`*`: all; all when `rooms` is absent). An empty list
/// covers nothing of its kind; a named room counts only if it is
/// subscribed.
pub fn extension_rooms<'a>(view: &[InView<'a>], lists: Option<&[String]>, rooms: Option<&[ExtensionRoomConfig]>) -> Vec<&'a str> {
    let by_list = |room: &InView| match lists {
        None => !room.lists.is_empty(),
        Some(names) => names.iter().any(|n| (n == "*" && !room.lists.is_empty()) || room.lists.contains(&n.as_str())),
    };
    let by_subscription = |room: &InView| {
        room.subscribed
            && match rooms {
                None => true,
                Some(rooms) => rooms.iter().any(|r| match r {
                    ExtensionRoomConfig::AllSubscribed => true,
                    ExtensionRoomConfig::Room(id) => id.as_str() == room.room_id,
                    _ => false,
                }),
            }
    };
    view.iter().filter(|room| by_list(room) || by_subscription(room)).map(|room| room.room_id).collect()
}

/// A room's `bump_stamp`: its newest bump event when joined, else the
/// user's membership event (MSC4186: "for rooms that the user is not
/// currently joined to, ... when the relevant membership happened").
pub fn bump_stamp(entry: &RoomListEntry) -> u64 {
    if entry.membership == MembershipState::Join { entry.bump_pos.max(1) } else { entry.membership_pos }
}

/// Whether a room passes a list's filters; `dm` says whether `m.direct`
/// names it.
pub fn passes(filters: Option<&ListFilters>, entry: &RoomListEntry, dm: bool) -> bool {
    let Some(f) = filters else { return true };
    let room_type = entry.room_type.as_deref();
    f.is_dm.is_none_or(|want| want == dm)
        && f.is_encrypted.is_none_or(|want| want == entry.encrypted)
        && f.is_invite.is_none_or(|want| want == (entry.membership == MembershipState::Invite))
        && (f.room_types.is_empty() || f.room_types.iter().any(|t| t.as_str() == room_type))
        && !f.not_room_types.iter().any(|t| t.as_str() == room_type)
}

/// Sorts the list by recency: newest bump first, then by room id so the
/// order is total.
pub fn sort_by_recency(entries: &mut [&RoomListEntry]) {
    entries.sort_unstable_by_key(|e| {
        let e: &RoomListEntry = e;
        (std::cmp::Reverse(bump_stamp(e)), e.room_id.as_str())
    });
}

/// The indexes the ranges select of a list of `count` rooms (inclusive
/// ranges, clamped to the list).
pub fn in_ranges(ranges: &[(u64, u64)], count: usize) -> BTreeSet<usize> {
    let mut picked = BTreeSet::new();
    for &(start, end) in ranges {
        let (Ok(start), end) = (usize::try_from(start), usize::try_from(end).unwrap_or(usize::MAX)) else { continue };
        if count == 0 || start >= count {
            continue;
        }
        picked.extend(start..=end.min(count - 1));
    }
    picked
}

/// How a selected room goes into this answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomUpdate {
    /// Not sent: nothing new for this connection.
    Skip,
    /// Sent whole (`initial`): never sent on this connection, or the
    /// user's membership moved from stripped state to the room itself.
    Initial,
    /// What changed since the client's copy at position `after`.
    Changes {
        after: u64,
        /// The timeline limit grew: the newest events are sent again
        /// (`expanded_timeline`), even without news.
        expanded_timeline: bool,
        /// The required state grew: the state it adds is sent.
        widened_state: bool,
    },
}

/// What a room's update depends on.
#[derive(Debug, Clone, Copy)]
pub struct RoomFacts<'a> {
    pub record: Option<&'a RoomRecord>,
    pub membership: &'a MembershipState,
    /// The room's newest event, up to the answer's cut (for a room the
    /// user left, up to their leave).
    pub last_pos: u64,
    pub config: &'a RoomConfig,
}

/// Whether a membership gives the room itself (rather than stripped
/// state).
pub fn sees_room(membership: &MembershipState) -> bool {
    matches!(membership, MembershipState::Join | MembershipState::Leave | MembershipState::Ban)
}

pub fn room_update(f: RoomFacts<'_>) -> RoomUpdate {
    let Some(record) = f.record else { return RoomUpdate::Initial };
    let was_stripped = !sees_room(&MembershipState::from(record.membership.as_str()));
    if was_stripped && sees_room(f.membership) {
        return RoomUpdate::Initial;
    }
    let membership_moved = record.membership != f.membership.as_str();
    if !sees_room(f.membership) {
        // Invites and knocks are stripped state: sent again only when the
        // membership event changes (another invite).
        return if membership_moved || f.last_pos > record.pos { RoomUpdate::Initial } else { RoomUpdate::Skip };
    }
    let expanded_timeline = f.config.timeline_limit > record.timeline_limit;
    let widened_state = f.config.required_state.widens(&record.required_state);
    if f.last_pos <= record.pos && !membership_moved && !expanded_timeline && !widened_state {
        return RoomUpdate::Skip;
    }
    RoomUpdate::Changes { after: record.pos, expanded_timeline, widened_state }
}

/// `num_live`: the timeline events that happened since the client's
/// previous answer (`since`: its events position; none on a new
/// connection, where nothing is live).
pub fn num_live(timeline_positions: &[u64], since: Option<u64>) -> usize {
    since.map_or(0, |since| timeline_positions.iter().filter(|p| **p > since).count())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chancery_proto::ruma::directory::RoomTypeFilter;

    fn rs(pairs: &[(&str, &str)]) -> RequiredState {
        RequiredState(pairs.iter().map(|(t, k)| ((*t).to_owned(), (*k).to_owned())).collect())
    }

    fn entry(room: &str, membership: MembershipState, bump: u64, member_pos: u64) -> RoomListEntry {
        RoomListEntry {
            room_id: room.into(),
            membership,
            membership_event_id: format!("$m{room}"),
            membership_pos: member_pos,
            bump_pos: bump,
            last_pos: bump,
            room_type: None,
            encrypted: false,
            kicked: false,
        }
    }

    #[test]
    fn required_state_matches_wildcards_and_placeholders() {
        let me = "@me:x";
        let config = rs(&[("m.room.name", ""), ("m.room.member", "$ME"), ("m.room.member", "$LAZY"), ("org.x", "*")]);
        assert!(config.matches("m.room.name", "", me));
        assert!(!config.matches("m.room.name", "other", me));
        assert!(config.matches("m.room.member", me, me));
        assert!(!config.matches("m.room.member", "@you:x", me), "$LAZY is not every member");
        assert!(config.matches("org.x", "anything", me));
        assert!(!config.matches("m.room.topic", "", me));
        assert!(config.lazy_members() && !config.all_members());
        assert_eq!(config.named_members(me).collect::<Vec<_>>(), [me]);
        let all = rs(&[("*", "*")]);
        assert!(all.matches("m.room.topic", "", me) && all.matches("m.room.member", "@you:x", me) && all.all_members());
        // A key for every type.
        assert!(rs(&[("*", "")]).matches("m.room.topic", "", me));
    }

    #[test]
    fn configs_combine_to_their_superset_and_widen() {
        let mut a = RoomConfig { timeline_limit: 1, required_state: rs(&[("m.room.name", "")]) };
        let b = RoomConfig { timeline_limit: 20, required_state: rs(&[("m.room.topic", "")]) };
        a.combine(&b);
        assert_eq!(a.timeline_limit, 20);
        assert_eq!(a.required_state, rs(&[("m.room.name", ""), ("m.room.topic", "")]));
        assert!(a.required_state.widens(&rs(&[("m.room.name", "")])));
        assert!(!rs(&[("m.room.name", "")]).widens(&a.required_state));
    }

    #[test]
    fn lists_sort_by_recency_and_cut_ranges() {
        let rooms = [
            entry("!old:x", MembershipState::Join, 5, 1),
            entry("!new:x", MembershipState::Join, 9, 2),
            entry("!invite:x", MembershipState::Invite, 0, 7),
            entry("!tie:x", MembershipState::Join, 9, 3),
        ];
        let mut list: Vec<&RoomListEntry> = rooms.iter().collect();
        sort_by_recency(&mut list);
        assert_eq!(list.iter().map(|e| e.room_id.as_str()).collect::<Vec<_>>(), ["!new:x", "!tie:x", "!invite:x", "!old:x"]);
        assert_eq!(in_ranges(&[(0, 1)], 4), BTreeSet::from([0, 1]));
        assert_eq!(in_ranges(&[(0, 0), (2, 99)], 4), BTreeSet::from([0, 2, 3]));
        assert!(in_ranges(&[(5, 9)], 4).is_empty());
        assert!(in_ranges(&[(0, 19)], 0).is_empty());
        assert_eq!(in_ranges(&[(0, u64::MAX)], 2), BTreeSet::from([0, 1]));
    }

    #[test]
    fn filters_and_listing() {
        let mut space = entry("!s:x", MembershipState::Join, 1, 1);
        space.room_type = Some("m.space".into());
        let mut secret = entry("!e:x", MembershipState::Join, 1, 1);
        secret.encrypted = true;
        let invite = entry("!i:x", MembershipState::Invite, 0, 1);
        let filters = |set: &dyn Fn(&mut ListFilters)| {
            let mut f = ListFilters::default();
            set(&mut f);
            f
        };
        let not_spaces = filters(&|f| f.not_room_types = vec![RoomTypeFilter::Space]);
        assert!(!passes(Some(&not_spaces), &space, false) && passes(Some(&not_spaces), &secret, false));
        let only_spaces = filters(&|f| f.room_types = vec![RoomTypeFilter::Space]);
        assert!(passes(Some(&only_spaces), &space, false) && !passes(Some(&only_spaces), &secret, false));
        let plain = filters(&|f| f.room_types = vec![RoomTypeFilter::Default]);
        assert!(passes(Some(&plain), &secret, false) && !passes(Some(&plain), &space, false));
        let invites = filters(&|f| f.is_invite = Some(true));
        assert!(passes(Some(&invites), &invite, false) && !passes(Some(&invites), &secret, false));
        let dms = filters(&|f| f.is_dm = Some(true));
        assert!(passes(Some(&dms), &secret, true) && !passes(Some(&dms), &secret, false));
        let encrypted = filters(&|f| f.is_encrypted = Some(true));
        assert!(passes(Some(&encrypted), &secret, false) && !passes(Some(&encrypted), &space, false));
        assert!(passes(None, &space, false));
        // Left rooms only once sent; bans always.
        let left = entry("!l:x", MembershipState::Leave, 1, 1);
        assert!(!listed(&left, false) && listed(&left, true));
        assert!(listed(&entry("!b:x", MembershipState::Ban, 1, 1), false));
        let kicked = RoomListEntry { kicked: true, ..left.clone() };
        assert!(listed(&kicked, false), "a kick is listed like a ban");
        // Not joined: the membership is the bump.
        assert_eq!(bump_stamp(&invite), 1);
        assert_eq!(bump_stamp(&entry("!j:x", MembershipState::Join, 8, 3)), 8);
    }

    #[test]
    fn rooms_are_sent_again_only_with_news_or_a_wider_config() {
        let config = RoomConfig { timeline_limit: 1, required_state: rs(&[("m.room.name", "")]) };
        let record = RoomRecord {
            pos: 10,
            membership: "join".into(),
            timeline_limit: 1,
            required_state: config.required_state.clone(),
            counts: (0, 0),
        };
        let join = MembershipState::Join;
        let facts = |record, last_pos, config| RoomFacts { record, membership: &join, last_pos, config };
        assert_eq!(room_update(facts(None, 10, &config)), RoomUpdate::Initial);
        assert_eq!(room_update(facts(Some(&record), 10, &config)), RoomUpdate::Skip);
        assert_eq!(
            room_update(facts(Some(&record), 11, &config)),
            RoomUpdate::Changes { after: 10, expanded_timeline: false, widened_state: false }
        );
        let longer = RoomConfig { timeline_limit: 20, ..config.clone() };
        assert_eq!(
            room_update(facts(Some(&record), 10, &longer)),
            RoomUpdate::Changes { after: 10, expanded_timeline: true, widened_state: false }
        );
        let wider = RoomConfig { required_state: rs(&[("m.room.name", ""), ("m.room.topic", "")]), ..config.clone() };
        assert_eq!(
            room_update(facts(Some(&record), 10, &wider)),
            RoomUpdate::Changes { after: 10, expanded_timeline: false, widened_state: true }
        );
        // An accepted invite is sent whole; a new invite again; an old one not.
        let invited = RoomRecord { membership: "invite".into(), ..record.clone() };
        assert_eq!(room_update(facts(Some(&invited), 10, &config)), RoomUpdate::Initial);
        let invite = MembershipState::Invite;
        let stripped = |last_pos| RoomFacts { record: Some(&invited), membership: &invite, last_pos, config: &config };
        assert_eq!(room_update(stripped(10)), RoomUpdate::Skip);
        assert_eq!(room_update(stripped(12)), RoomUpdate::Initial);
        // Leaving is a change of a room the client has.
        let leave = MembershipState::Leave;
        let left = RoomFacts { record: Some(&record), membership: &leave, last_pos: 10, config: &config };
        assert_eq!(room_update(left), RoomUpdate::Changes { after: 10, expanded_timeline: false, widened_state: false });
        assert_eq!(num_live(&[3, 11, 12], Some(10)), 2);
        assert_eq!(num_live(&[3, 11], None), 0);
    }

    #[test]
    fn extensions_cover_the_rooms_their_lists_and_rooms_name() {
        let view = [
            InView { room_id: "!a", lists: vec!["all"], subscribed: false },
            InView { room_id: "!b", lists: vec!["all", "dms"], subscribed: false },
            InView { room_id: "!c", lists: vec![], subscribed: true },
            InView { room_id: "!d", lists: vec!["dms"], subscribed: true },
        ];
        let names = |l: &[&str]| l.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let room = |r: &str| ExtensionRoomConfig::Room(r.try_into().unwrap());
        let any = [ExtensionRoomConfig::AllSubscribed];
        type Case<'a> = (Option<Vec<String>>, Option<Vec<ExtensionRoomConfig>>, &'a [&'a str]);
        let cases: [Case; 7] = [
            (None, None, &["!a", "!b", "!c", "!d"]),
            (Some(names(&["dms"])), Some(vec![]), &["!b", "!d"]),
            (Some(names(&[])), None, &["!c", "!d"]),
            (Some(names(&[])), Some(vec![]), &[]),
            (Some(names(&["*"])), Some(vec![]), &["!a", "!b", "!d"]),
            (Some(names(&[])), Some(any.to_vec()), &["!c", "!d"]),
            // A named room counts only if subscribed.
            (Some(names(&[])), Some(vec![room("!c:x"), room("!a:x")]), &[]),
        ];
        for (lists, rooms, want) in cases {
            assert_eq!(extension_rooms(&view, lists.as_deref(), rooms.as_deref()), want, "{lists:?} {rooms:?}");
        }
        let view = [InView { room_id: "!c:x", lists: vec![], subscribed: true }];
        assert_eq!(extension_rooms(&view, Some(&[]), Some(&[room("!c:x")])), ["!c:x"]);
    }
}
