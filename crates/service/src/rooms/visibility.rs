//! The visibility component (client-server API "Room History
//! Visibility"): which events of a room a user may read, from the room's
//! `m.room.history_visibility` and the user's membership at each event.
//!
//! The rules are evaluated on the spans of those two state keys (the
//! temporal state table gives them in one indexed read per room), so a page
//! of events costs one read instead of one per event, and `/search` turns
//! the same rules into position ranges the store filters by: one rule, one
//! implementation, for every endpoint. The same spans decide what else
//! would show the history: the state at a position (`/context`,
//! `/members`), and events known only by their position (bundled
//! children, store filters).

use chancery_proto::ruma::events::room::history_visibility::HistoryVisibility;
use chancery_proto::ruma::events::room::member::MembershipState;
use std::collections::BTreeMap;
use std::sync::Arc;

use chancery_proto::limits::MAX_VISIBILITY_SPANS;
use chancery_proto::ruma::{RoomId, UserId};
use chancery_store::{ForgottenRoomStore, PositionRange, RoomStore, SpanKind, StateSpan, StoredEvent};

use crate::Error;

/// What decides, position by position, whether one user may read one
/// room's events: the spans of its history visibility and of the user's
/// membership, each sorted by start and not overlapping.
#[derive(Debug, Default)]
pub(crate) struct ReadAccess {
    visibility: Vec<StateSpan>,
    membership: Vec<StateSpan>,
}

fn span_at(spans: &[StateSpan], pos: u64) -> Option<&StateSpan> {
    let after = spans.partition_point(|s| s.from_pos <= pos);
    after.checked_sub(1).map(|i| &spans[i]).filter(|s| s.to_pos.is_none_or(|to| to > pos))
}

impl ReadAccess {
    /// From one room's spans in the store's order.
    pub(crate) fn new(spans: impl IntoIterator<Item = StateSpan>) -> Self {
        let mut access = Self::default();
        for span in spans {
            match span.kind {
                SpanKind::HistoryVisibility(_) => access.visibility.push(span),
                SpanKind::Membership(_) => access.membership.push(span),
            }
        }
        access
    }

    /// The visibility in force at `pos`; spec: `shared` when there is none
    /// or its value is not understood.
    fn visibility_at(&self, pos: u64) -> HistoryVisibility {
        match span_at(&self.visibility, pos).map(|s| &s.kind) {
            Some(SpanKind::HistoryVisibility(Some(
                v @ (HistoryVisibility::WorldReadable | HistoryVisibility::Invited | HistoryVisibility::Joined),
            ))) => v.clone(),
            _ => HistoryVisibility::Shared,
        }
    }

    fn membership_at(&self, pos: u64) -> Option<&MembershipState> {
        match span_at(&self.membership, pos).map(|s| &s.kind) {
            Some(SpanKind::Membership(m)) => Some(m),
            _ => None,
        }
    }

    /// Whether the user was joined at some position after `pos`.
    fn joined_after(&self, pos: u64) -> bool {
        self.membership.iter().any(|s| {
            matches!(&s.kind, SpanKind::Membership(MembershipState::Join)) && s.to_pos.is_none_or(|to| to > pos.saturating_add(1))
        })
    }

    /// The spec's "Server behaviour" rules for an event at `pos` under
    /// `visibility`: world-readable; joined at the event; `shared` and
    /// joined at some point after it; invited at the event under `invited`.
    fn allows(&self, visibility: HistoryVisibility, pos: u64) -> bool {
        let membership = self.membership_at(pos);
        match visibility {
            HistoryVisibility::WorldReadable => true,
            _ if membership == Some(&MembershipState::Join) => true,
            HistoryVisibility::Invited => membership == Some(&MembershipState::Invite),
            HistoryVisibility::Joined => false,
            _ => self.joined_after(pos),
        }
    }

    /// Whether the user may read an event at `pos` by the rules alone
    /// (without [`Self::may_see`]'s exceptions for their own membership and
    /// visibility changes): what [`Self::visible_ranges`] describes.
    pub(crate) fn may_read_at(&self, pos: u64) -> bool {
        self.allows(self.visibility_at(pos), pos)
    }

    /// Whether the event at `pos` is one [`Self::may_see`] lets through by
    /// its exceptions. A span starts at the event that set it, so the spans
    /// tell which events those are: the user's own membership events, and
    /// visibility changes the visibility before them allowed.
    fn excepted_at(&self, pos: u64) -> bool {
        let starts_at = |spans: &[StateSpan]| spans.binary_search_by_key(&pos, |s| s.from_pos).is_ok();
        starts_at(&self.membership) || (pos > 0 && starts_at(&self.visibility) && self.allows(self.visibility_at(pos - 1), pos))
    }

    /// [`Self::may_see`] for an event known only by its position (a child
    /// bundled by id): the same answer, the exceptions read off the spans.
    pub(crate) fn may_see_at(&self, pos: u64) -> bool {
        self.may_read_at(pos) || self.excepted_at(pos)
    }

    /// The positions of every event the user may see ([`Self::may_see_at`])
    /// as ranges: [`Self::visible_ranges`] plus the single positions of the
    /// exceptions, for stores to filter by.
    pub(crate) fn seen_ranges(&self) -> Vec<PositionRange> {
        let excepted = self.membership.iter().chain(&self.visibility).map(|s| s.from_pos).filter(|p| self.excepted_at(*p));
        let mut ranges = self.visible_ranges();
        ranges.extend(excepted.map(|p| PositionRange { from: p, to: Some(p.saturating_add(1)) }));
        ranges.sort_unstable_by_key(|r| r.from);
        let mut merged: Vec<PositionRange> = Vec::with_capacity(ranges.len());
        for range in ranges {
            match merged.last_mut() {
                Some(last) if last.to.is_none_or(|to| to >= range.from) => {
                    last.to = match (last.to, range.to) {
                        (Some(a), Some(b)) => Some(a.max(b)),
                        _ => None,
                    };
                }
                _ => merged.push(range),
            }
        }
        merged
    }

    /// Whether the user may read every position in `after + 1..=up_to`
    /// (a thread's replies, known only by their span, all fall there).
    pub(crate) fn reads_all_between(&self, after: u64, up_to: u64) -> bool {
        let first = after.saturating_add(1);
        first > up_to || self.visible_ranges().iter().any(|r| r.from <= first && r.to.is_none_or(|to| to > up_to))
    }

    /// Whether the user may see the room's state at `event` (after it).
    /// That state is the state before the event plus the event itself, so:
    /// where the user may read, or where they may see the event (their own
    /// leave, say) and could read just before it. Anything else would show
    /// state from where they may not read: the members after they left, or
    /// before a `joined` room let them in.
    pub(crate) fn may_see_state_at(&self, user_id: &str, event: &StoredEvent) -> bool {
        let pos = event.stream_pos;
        self.may_read_at(pos) || (pos > 0 && self.may_read_at(pos - 1) && self.may_see(user_id, event))
    }

    /// Whether the user may see `event`. Their own membership events are
    /// always theirs to see; an `m.room.history_visibility` event is
    /// visible if the visibility before or after it allows (spec).
    pub(crate) fn may_see(&self, user_id: &str, event: &StoredEvent) -> bool {
        if event.event_type == "m.room.member" && event.state_key.as_deref() == Some(user_id) {
            return true;
        }
        let pos = event.stream_pos;
        if self.allows(self.visibility_at(pos), pos) {
            return true;
        }
        event.event_type == "m.room.history_visibility"
            && event.state_key.as_deref() == Some("")
            && pos > 0
            && self.allows(self.visibility_at(pos - 1), pos)
    }

    /// The positions whose events the user may see, as ranges: the rules
    /// of [`Self::allows`] change only where a span starts or ends, or
    /// where "joined at some point after" stops holding, so checking one
    /// position per stretch between those points decides the stretch.
    pub(crate) fn visible_ranges(&self) -> Vec<PositionRange> {
        let mut points: Vec<u64> = vec![0];
        for span in self.visibility.iter().chain(&self.membership) {
            points.push(span.from_pos);
            points.extend(span.to_pos);
        }
        let joined_spans = || self.membership.iter().filter(|s| matches!(&s.kind, SpanKind::Membership(MembershipState::Join)));
        if joined_spans().all(|s| s.to_pos.is_some())
            && let Some(last_end) = joined_spans().filter_map(|s| s.to_pos).max()
        {
            points.push(last_end.saturating_sub(1));
        }
        points.sort_unstable();
        points.dedup();
        let mut ranges: Vec<PositionRange> = Vec::new();
        for (n, &from) in points.iter().enumerate() {
            if !self.allows(self.visibility_at(from), from) {
                continue;
            }
            let to = points.get(n + 1).copied();
            match ranges.last_mut() {
                Some(last) if last.to == Some(from) => last.to = to,
                _ => ranges.push(PositionRange { from, to }),
            }
        }
        ranges
    }
}

/// Where a user stands in a room, for what they may read of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Standing {
    Member,
    /// Left or banned at position `left_at`, and has not forgotten the room.
    FormerMember {
        left_at: u64,
    },
}

/// Who may read which events.
pub struct Visibility {
    rooms: Arc<dyn RoomStore>,
    forgotten: Arc<dyn ForgottenRoomStore>,
}

impl Visibility {
    pub fn new(rooms: Arc<dyn RoomStore>, forgotten: Arc<dyn ForgottenRoomStore>) -> Self {
        Self { rooms, forgotten }
    }

    /// The read access of `user_id` to each of `rooms` for events at
    /// positions `from..=up_to`.
    pub(crate) async fn read_access(
        &self,
        user_id: &UserId,
        rooms: &[String],
        from: u64,
        up_to: u64,
    ) -> Result<BTreeMap<String, ReadAccess>, Error> {
        let spans = self.rooms.visibility_spans(user_id.as_str(), rooms, from, up_to, MAX_VISIBILITY_SPANS).await?;
        let mut by_room: BTreeMap<String, Vec<StateSpan>> = rooms.iter().map(|r| (r.clone(), Vec::new())).collect();
        for span in spans {
            by_room.entry(span.room_id.clone()).or_default().push(span);
        }
        Ok(by_room.into_iter().map(|(room, spans)| (room, ReadAccess::new(spans))).collect())
    }

    /// The read access of `user_id` to one room for events at positions
    /// `from..=up_to` (from one below the first event to judge: a
    /// visibility change is judged by the visibility before it too).
    pub(crate) async fn room_access(&self, user_id: &UserId, room_id: &str, from: u64, up_to: u64) -> Result<ReadAccess, Error> {
        let rooms = [room_id.to_owned()];
        Ok(self.read_access(user_id, &rooms, from, up_to).await?.remove(room_id).unwrap_or_default())
    }

    /// The events (of one room) the user may see, in their order.
    pub(crate) async fn visible_events(
        &self,
        user_id: &UserId,
        room_id: &str,
        events: Vec<StoredEvent>,
    ) -> Result<Vec<StoredEvent>, Error> {
        let (Some(first), Some(last)) = (events.iter().map(|e| e.stream_pos).min(), events.iter().map(|e| e.stream_pos).max())
        else {
            return Ok(events);
        };
        let access = self.room_access(user_id, room_id, first.saturating_sub(1), last).await?;
        Ok(events.into_iter().filter(|e| access.may_see(user_id.as_str(), e)).collect())
    }

    /// `event` if the user may see it; otherwise it is answered like a
    /// missing one, so its existence is not revealed.
    pub(crate) async fn visible_event(&self, user_id: &UserId, event: StoredEvent) -> Result<StoredEvent, Error> {
        let room_id = event.room_id.clone();
        self.visible_events(user_id, &room_id, vec![event])
            .await?
            .pop()
            .ok_or_else(|| Error::NotFound("no such event in this room".into()))
    }

    /// Whether the user is in the room, or was and may still read what
    /// they were allowed to (`None`: neither).
    pub(crate) async fn standing(&self, room_id: &RoomId, user_id: &UserId) -> Result<Option<Standing>, Error> {
        let own = self.rooms.state_event(room_id.as_str(), "m.room.member", user_id.as_str(), None).await?;
        Ok(match own {
            Some(e) if e.membership == Some(MembershipState::Join) => Some(Standing::Member),
            // Spec "Leaving rooms": after a forget the user "will no longer
            // be able to retrieve history for this room".
            Some(e)
                if matches!(e.membership, Some(MembershipState::Leave | MembershipState::Ban))
                    && !self.forgotten.forgotten_rooms(user_id.as_str()).await?.iter().any(|r| r == room_id.as_str()) =>
            {
                Some(Standing::FormerMember { left_at: e.stream_pos })
            }
            _ => None,
        })
    }

    /// Errors unless the user may see the room's state at position `pos`
    /// (the state after the room's last event at or before it; see
    /// [`ReadAccess::may_see_state_at`]). One event read and one span read.
    pub(crate) async fn ensure_can_see_state_at(&self, user_id: &UserId, room_id: &RoomId, pos: u64) -> Result<(), Error> {
        // Before the room's first event there is no state to hide.
        let Some(last) = self.rooms.room_events(room_id.as_str(), 0, pos, 1, true).await?.pop() else { return Ok(()) };
        let access = self.room_access(user_id, room_id.as_str(), last.stream_pos.saturating_sub(1), last.stream_pos).await?;
        if access.may_see_state_at(user_id.as_str(), &last) {
            Ok(())
        } else {
            Err(Error::Forbidden("the room's history visibility does not let you see its state at this point".into()))
        }
    }

    /// Whether the user may read the room's history at all: members, former
    /// members who have not forgotten the room (up to what visibility
    /// allows), and anyone in a world-readable room. Rooms one never
    /// belonged to answer like unknown rooms.
    pub(crate) async fn ensure_can_read(&self, room_id: &RoomId, user_id: &UserId) -> Result<(), Error> {
        if self.standing(room_id, user_id).await?.is_some() {
            return Ok(());
        }
        let current = self.rooms.current_stream_pos().await?;
        let world_readable = self.rooms.room(room_id.as_str()).await?.is_some() && {
            let event = self.rooms.state_event(room_id.as_str(), "m.room.history_visibility", "", Some(current)).await?;
            event.and_then(|e| chancery_store::history_visibility_of(&e.json)) == Some(HistoryVisibility::WorldReadable)
        };
        if world_readable { Ok(()) } else { Err(Error::Forbidden("you are not joined to this room".into())) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn visibility(from: u64, to: Option<u64>, value: &str) -> StateSpan {
        StateSpan { room_id: "!r".into(), from_pos: from, to_pos: to, kind: SpanKind::HistoryVisibility(Some(value.into())) }
    }

    fn member(from: u64, to: Option<u64>, membership: &str) -> StateSpan {
        StateSpan { room_id: "!r".into(), from_pos: from, to_pos: to, kind: SpanKind::Membership(membership.into()) }
    }

    fn message(pos: u64) -> StoredEvent {
        StoredEvent {
            event_id: format!("$e{pos}"),
            room_id: "!r".into(),
            event_type: "m.room.message".into(),
            state_key: None,
            sender: "@alice:x".into(),
            origin_server_ts: 0,
            depth: pos,
            json: "{}".into(),
            membership: None,
            stream_pos: pos,
            redacted_by: None,
            txn: None,
        }
    }

    fn visible(access: &ReadAccess, positions: std::ops::Range<u64>) -> Vec<u64> {
        positions.filter(|p| access.may_see("@bob:x", &message(*p))).collect()
    }

    fn range(from: u64, to: Option<u64>) -> PositionRange {
        PositionRange { from, to }
    }

    /// Each case: the spans (the visibility set from position 0, so no
    /// stretch falls back to the default), the positions 1..20 the user may
    /// read, and the same as ranges (which `/search` filters by).
    #[test]
    fn rules_and_ranges_agree() {
        type Case = (&'static str, Vec<StateSpan>, Vec<u64>, Vec<PositionRange>);
        let cases: Vec<Case> = vec![
            (
                "shared, joined now: everything",
                vec![visibility(0, None, "shared"), member(10, None, "join")],
                (1..20).collect(),
                vec![range(0, None)],
            ),
            (
                "shared, joined 10..15: everything before leaving",
                vec![visibility(0, None, "shared"), member(10, Some(15), "join"), member(15, None, "leave")],
                (1..15).collect(),
                vec![range(0, Some(15))],
            ),
            (
                "joined, joined 10..15: only while there",
                vec![visibility(0, None, "joined"), member(10, Some(15), "join"), member(15, None, "leave")],
                (10..15).collect(),
                vec![range(10, Some(15))],
            ),
            (
                "invited, invited at 8, joined 10..15",
                vec![
                    visibility(0, None, "invited"),
                    member(8, Some(10), "invite"),
                    member(10, Some(15), "join"),
                    member(15, None, "leave"),
                ],
                (8..15).collect(),
                vec![range(8, Some(15))],
            ),
            (
                "world_readable from 17 on, never joined",
                vec![visibility(0, Some(17), "joined"), visibility(17, None, "world_readable")],
                (17..20).collect(),
                vec![range(17, None)],
            ),
            (
                "joined then shared while away, rejoined at 18",
                vec![
                    visibility(0, Some(12), "joined"),
                    visibility(12, None, "shared"),
                    member(5, Some(8), "join"),
                    member(8, Some(18), "leave"),
                    member(18, None, "join"),
                ],
                (5..8).chain(12..20).collect(),
                vec![range(5, Some(8)), range(12, None)],
            ),
            (
                "unknown values count as shared",
                vec![visibility(0, None, "nonsense"), member(10, Some(12), "join"), member(12, None, "leave")],
                (1..12).collect(),
                vec![range(0, Some(12))],
            ),
        ];
        for (name, spans, expected, ranges) in cases {
            let access = ReadAccess::new(spans.clone());
            assert_eq!(visible(&access, 1..20), expected, "{name}");
            assert_eq!(access.visible_ranges(), ranges, "{name}");
            let in_ranges: Vec<u64> = (1..20)
                .filter(|p| access.visible_ranges().iter().any(|r| *p >= r.from && r.to.is_none_or(|to| *p < to)))
                .collect();
            assert_eq!(in_ranges, expected, "{name}: ranges and rules disagree");
            exceptions_agree(name, &spans);
        }
    }

    /// The event at `pos` in a history with these spans: the one that
    /// started a span there, else a message.
    fn event_at(spans: &[StateSpan], pos: u64) -> StoredEvent {
        match spans.iter().find(|s| s.from_pos == pos).map(|s| &s.kind) {
            Some(SpanKind::Membership(_)) => own_membership(pos),
            Some(SpanKind::HistoryVisibility(_)) => visibility_change(pos),
            None => message(pos),
        }
    }

    /// Judged by position alone (children bundled by id, `/search`-style
    /// store filters), every event gets the answer `may_see` gives it.
    fn exceptions_agree(name: &str, spans: &[StateSpan]) {
        let access = ReadAccess::new(spans.to_vec());
        let seen = access.seen_ranges();
        for pos in 1..25 {
            let expected = access.may_see("@bob:x", &event_at(spans, pos));
            assert_eq!(access.may_see_at(pos), expected, "{name}: at {pos}");
            let in_ranges = seen.iter().any(|r| pos >= r.from && r.to.is_none_or(|to| pos < to));
            assert_eq!(in_ranges, expected, "{name}: at {pos} in {seen:?}");
        }
        assert!(seen.windows(2).all(|w| w[0].to.is_some_and(|to| to < w[1].from)), "{name}: not merged: {seen:?}");
    }

    #[test]
    fn exceptions_are_read_off_the_spans() {
        let cases: Vec<(&str, Vec<StateSpan>)> = vec![
            (
                "joined, invited at 8, joined 10..15: the invite and the leave",
                vec![
                    visibility(0, None, "joined"),
                    member(8, Some(10), "invite"),
                    member(10, Some(15), "join"),
                    member(15, None, "leave"),
                ],
            ),
            (
                "world_readable to joined at 10, invited at 12, never joined",
                vec![visibility(2, Some(10), "world_readable"), visibility(10, None, "joined"), member(12, None, "invite")],
            ),
            (
                "joined to shared at 12 while away, back at 18",
                vec![
                    visibility(0, Some(12), "joined"),
                    visibility(12, None, "shared"),
                    member(5, Some(8), "join"),
                    member(8, Some(18), "leave"),
                    member(18, None, "join"),
                ],
            ),
            (
                "shared to joined at 6, then joined 9..11, the change and the join adjacent",
                vec![
                    visibility(0, Some(6), "shared"),
                    visibility(6, None, "joined"),
                    member(7, Some(9), "invite"),
                    member(9, Some(11), "join"),
                    member(11, None, "leave"),
                ],
            ),
        ];
        for (name, spans) in cases {
            exceptions_agree(name, &spans);
        }
    }

    fn own_membership(pos: u64) -> StoredEvent {
        let mut event = message(pos);
        event.event_type = "m.room.member".into();
        event.state_key = Some("@bob:x".into());
        event
    }

    fn visibility_change(pos: u64) -> StoredEvent {
        let mut event = message(pos);
        event.event_type = "m.room.history_visibility".into();
        event.state_key = Some(String::new());
        event
    }

    /// Each case: the spans, an event, and whether the user may see the
    /// state at it (`/context`, `/members`): where they may read, or at an
    /// event they may see whose state before they could read.
    #[test]
    fn state_at_an_event() {
        let left_shared = || vec![visibility(0, None, "shared"), member(10, Some(15), "join"), member(15, None, "leave")];
        let rejected = |value| vec![visibility(0, None, value), member(8, Some(12), "invite"), member(12, None, "leave")];
        let cases: Vec<(&str, Vec<StateSpan>, StoredEvent, bool)> = vec![
            ("shared, left at 15: a message while there", left_shared(), message(12), true),
            ("shared, left at 15: before joining", left_shared(), message(3), true),
            ("shared, left at 15: their own leave", left_shared(), own_membership(15), true),
            ("shared, left at 15: after leaving", left_shared(), message(16), false),
            ("joined, joined at 10: before", vec![visibility(0, None, "joined"), member(10, None, "join")], message(9), false),
            (
                "joined, joined at 10: their join",
                vec![visibility(0, None, "joined"), member(10, None, "join")],
                own_membership(10),
                true,
            ),
            ("shared, invite rejected, never joined: the rejection", rejected("shared"), own_membership(12), false),
            ("shared, invite rejected, never joined: the invite", rejected("shared"), own_membership(8), false),
            ("invited, invite rejected: the rejection", rejected("invited"), own_membership(12), true),
            (
                "world_readable to joined at 10, never joined: the change",
                vec![visibility(0, Some(10), "world_readable"), visibility(10, None, "joined")],
                visibility_change(10),
                true,
            ),
            (
                "world_readable to joined at 10, never joined: after it",
                vec![visibility(0, Some(10), "world_readable"), visibility(10, None, "joined")],
                message(11),
                false,
            ),
        ];
        for (name, spans, event, expected) in cases {
            let access = ReadAccess::new(spans);
            assert_eq!(access.may_see_state_at("@bob:x", &event), expected, "{name}");
        }
    }

    /// Each case: the spans, a stretch `(after, up_to]` (a thread's
    /// replies), and whether every position of it may be read; checked
    /// against the rules position by position too.
    #[test]
    fn whole_stretches() {
        let away = || {
            vec![
                visibility(0, None, "joined"),
                member(5, Some(8), "join"),
                member(8, Some(18), "leave"),
                member(18, None, "join"),
            ]
        };
        let cases: Vec<(&str, Vec<StateSpan>, u64, u64, bool)> = vec![
            ("shared, joined now", vec![visibility(0, None, "shared"), member(10, None, "join")], 1, 19, true),
            ("joined, all while there", away(), 5, 7, true),
            ("joined, a stretch starting before the join", away(), 3, 7, false),
            ("joined, across the time away", away(), 6, 19, false),
            ("joined, since coming back", away(), 17, 19, true),
            ("an empty stretch", away(), 10, 10, true),
            (
                "shared, left at 15: up to leaving",
                vec![visibility(0, None, "shared"), member(10, Some(15), "join"), member(15, None, "leave")],
                2,
                14,
                true,
            ),
            (
                "shared, left at 15: past leaving",
                vec![visibility(0, None, "shared"), member(10, Some(15), "join"), member(15, None, "leave")],
                2,
                15,
                false,
            ),
        ];
        for (name, spans, after, up_to, expected) in cases {
            let access = ReadAccess::new(spans);
            assert_eq!(access.reads_all_between(after, up_to), expected, "{name}");
            assert_eq!((after + 1..=up_to).all(|p| access.may_read_at(p)), expected, "{name}: the rules disagree");
        }
    }

    #[test]
    fn own_membership_and_visibility_changes() {
        let access = ReadAccess::new([
            visibility(2, Some(10), "world_readable"),
            visibility(10, None, "joined"),
            member(12, None, "invite"),
        ]);
        let mut own = message(12);
        own.event_type = "m.room.member".into();
        own.state_key = Some("@bob:x".into());
        assert!(access.may_see("@bob:x", &own), "one's own invite");
        let mut change = message(10);
        change.event_type = "m.room.history_visibility".into();
        change.state_key = Some(String::new());
        assert!(access.may_see("@bob:x", &change), "the change away from world_readable");
        assert!(!access.may_see("@bob:x", &message(11)));
    }
}
