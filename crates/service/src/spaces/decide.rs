//! The decisions of spaces and room previews, as pure functions over what
//! was read: who may preview a room, what a join rule reads as, which
//! `m.space.child` links count and in which order, the parameters of a
//! `/hierarchy` request, and the depth-first walk itself.

use std::collections::HashSet;

use chancery_proto::limits::{MAX_HIERARCHY_DEPTH, MAX_HIERARCHY_LIMIT, MAX_HIERARCHY_ROOMS_PER_WALK};
use chancery_proto::ruma::events::room::member::MembershipState;
use chancery_proto::ruma::room::{JoinRule, JoinRuleSummary};
use chancery_store::{HierarchyWalk, PendingRoom};
use serde_json::Value as JsonValue;

use crate::Error;

/// What decides whether someone may preview a room.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Access<'a> {
    pub join_rule: &'a JoinRuleSummary,
    pub world_readable: bool,
    /// The requester's membership (`None`: none, or unauthenticated).
    pub membership: Option<&'a MembershipState>,
    /// The requester is joined to a room the restricted join rule allows.
    pub in_allowed_room: bool,
}

/// Spec `GET /hierarchy` ("The server should return any rooms where...")
/// and `GET /room_summary`: the requester is joined or invited; the room
/// is public or knockable (every room version this server runs has
/// `knock` and `knock_restricted`); it is restricted and they are in an
/// allowed room; or its history is world-readable. An unauthenticated
/// requester has no membership and is in no room.
pub(crate) fn may_preview(access: Access<'_>) -> bool {
    matches!(access.membership, Some(MembershipState::Join | MembershipState::Invite))
        || matches!(access.join_rule, JoinRuleSummary::Public | JoinRuleSummary::Knock | JoinRuleSummary::KnockRestricted(_))
        || (matches!(access.join_rule, JoinRuleSummary::Restricted(_)) && access.in_allowed_room)
        || access.world_readable
}

/// Whether only the allowed rooms' memberships can still let the requester
/// preview the room: everything else says no and the rule is restricted.
pub(crate) fn needs_allow_check(access: Access<'_>) -> bool {
    matches!(access.join_rule, JoinRuleSummary::Restricted(r) if !r.allowed_room_ids.is_empty())
        && !may_preview(Access { in_allowed_room: false, ..access })
}

/// The join rule a room's `m.room.join_rules` content reads as. No event:
/// nobody joins without an invite (the auth rules let only the creator
/// in), so `invite`. A rule this server does not know, or a content that
/// does not parse, lets nobody join: `private` (ruma cannot serialize a
/// custom rule in a summary).
pub(crate) fn join_rule_summary(content: Option<&JsonValue>) -> JoinRuleSummary {
    let Some(content) = content else { return JoinRuleSummary::Invite };
    match serde_json::from_value::<JoinRule>(content.clone()) {
        Ok(JoinRule::_Custom(_)) | Err(_) => JoinRuleSummary::Private,
        Ok(rule) => rule.into(),
    }
}

/// A child link counts only with a `via` list of server names (spec
/// `m.space.child`: "When not present or invalid, the child room is not
/// considered to be part of the space"; a redacted link has none).
pub(crate) fn is_child_link(content: &JsonValue) -> bool {
    content.get("via").and_then(JsonValue::as_array).is_some_and(|via| !via.is_empty() && via.iter().all(JsonValue::is_string))
}

/// `suggested: true` (a boolean; anything else is not suggested).
pub(crate) fn is_suggested(content: &JsonValue) -> bool {
    content.get("suggested").and_then(JsonValue::as_bool) == Some(true)
}

/// The link's `order` if valid (spec: a string of 1 to 50 characters
/// between `\x20` and `\x7E`); an invalid one counts as absent.
pub(crate) fn valid_order(content: &JsonValue) -> Option<&str> {
    content
        .get("order")
        .and_then(JsonValue::as_str)
        .filter(|o| !o.is_empty() && o.len() <= 50 && o.bytes().all(|b| (0x20..=0x7E).contains(&b)))
}

/// What orders a space's children (spec "Ordering of children within a
/// space"): children with a valid `order` first, by it (byte order, which
/// is code-point order for these ASCII strings), then by the link's
/// `origin_server_ts`, then by room id.
pub(crate) fn child_order_key<'a>(content: &'a JsonValue, origin_server_ts: u64, room_id: &'a str) -> impl Ord + 'a {
    let order = valid_order(content);
    (order.is_none(), order, origin_server_ts, room_id)
}

/// A `/hierarchy` request's parameters, checked and capped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HierarchyParams {
    pub limit: usize,
    pub max_depth: u32,
    pub suggested_only: bool,
}

/// `limit` must be above zero (spec); both default to, and are capped at,
/// the server's limits.
pub(crate) fn hierarchy_params(
    limit: Option<u64>,
    max_depth: Option<u64>,
    suggested_only: bool,
) -> Result<HierarchyParams, Error> {
    let limit = match limit {
        Some(0) => return Err(Error::InvalidParam("limit must be greater than zero".into())),
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX).min(MAX_HIERARCHY_LIMIT),
        None => MAX_HIERARCHY_LIMIT,
    };
    let max_depth = max_depth.map_or(MAX_HIERARCHY_DEPTH, |d| u32::try_from(d).unwrap_or(u32::MAX).min(MAX_HIERARCHY_DEPTH));
    Ok(HierarchyParams { limit, max_depth, suggested_only })
}

/// Whether a saved walk continues this request: the same user and root,
/// and (spec) the same `suggested_only` and `max_depth`. `limit` may
/// change between pages.
pub(crate) fn continues(walk: &HierarchyWalk, user_id: &str, room_id: &str, params: HierarchyParams) -> bool {
    walk.user_id == user_id
        && walk.room_id == room_id
        && walk.suggested_only == params.suggested_only
        && walk.max_depth == params.max_depth
}

/// A depth-first walk of a space tree, as the spec's `/hierarchy` goes:
/// a space's children are visited, in order, right after it and before
/// its next sibling. Each room is visited once however often it is linked
/// (two parents, a cycle), and the walk holds at most
/// [`MAX_HIERARCHY_ROOMS_PER_WALK`] rooms, visited or waiting.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Walk {
    /// The frontier, the next room last.
    pending: Vec<PendingRoom>,
    /// Visited rooms, in visiting order.
    visited: Vec<String>,
    visited_set: HashSet<String>,
}

impl Walk {
    pub(crate) fn new(root: &str) -> Self {
        Self { pending: vec![PendingRoom { room_id: root.to_owned(), depth: 0, via: Vec::new() }], ..Self::default() }
    }

    pub(crate) fn resume(pending: Vec<PendingRoom>, visited: Vec<String>) -> Self {
        let visited_set = visited.iter().cloned().collect();
        Self { pending, visited, visited_set }
    }

    /// The next room not yet visited, now counted as visited.
    pub(crate) fn next(&mut self) -> Option<PendingRoom> {
        while let Some(room) = self.pending.pop() {
            if self.visited_set.insert(room.room_id.clone()) {
                self.visited.push(room.room_id.clone());
                return Some(room);
            }
        }
        None
    }

    /// Queues the children of a room visited at `depth` (in their order,
    /// the first visited first), unless that is `max_depth` already.
    /// Children already visited are left out; past the walk's bound the
    /// rest are dropped.
    pub(crate) fn expand<'c>(&mut self, children: impl DoubleEndedIterator<Item = &'c str>, depth: u32, max_depth: u32) {
        if depth >= max_depth {
            return;
        }
        let fresh: Vec<&str> = children.filter(|c| !self.visited_set.contains(*c)).collect();
        let room_left = MAX_HIERARCHY_ROOMS_PER_WALK.saturating_sub(self.visited.len() + self.pending.len());
        for child in fresh.into_iter().take(room_left).rev() {
            self.pending.push(PendingRoom { room_id: child.to_owned(), depth: depth + 1, via: Vec::new() });
        }
    }

    /// Whether rooms not visited yet are waiting (a next page may list
    /// some).
    pub(crate) fn has_more(&self) -> bool {
        self.pending.iter().any(|p| !self.visited_set.contains(&p.room_id))
    }

    /// The frontier (without rooms visited meanwhile) and the visited
    /// rooms, to be saved between pages.
    pub(crate) fn into_parts(self) -> (Vec<PendingRoom>, Vec<String>) {
        let Self { mut pending, visited, visited_set } = self;
        pending.retain(|p| !visited_set.contains(&p.room_id));
        (pending, visited)
    }
}

#[cfg(test)]
mod tests {
    use chancery_proto::ruma::owned_room_id;
    use chancery_proto::ruma::room::RestrictedSummary;
    use serde_json::json;

    use super::*;

    fn restricted() -> JoinRuleSummary {
        JoinRuleSummary::Restricted(RestrictedSummary::new(vec![owned_room_id!("!space:x")]))
    }

    #[test]
    fn who_may_preview() {
        use JoinRuleSummary as R;
        use MembershipState as M;
        let knock_restricted = JoinRuleSummary::KnockRestricted(RestrictedSummary::new(vec![]));
        // (join rule, world readable, membership, in an allowed room) → may preview
        let cases: Vec<(JoinRuleSummary, bool, Option<M>, bool, bool)> = vec![
            (R::Public, false, None, false, true),
            (R::Knock, false, None, false, true),
            (knock_restricted, false, None, false, true),
            (R::Invite, false, None, false, false),
            (R::Private, false, None, false, false),
            (R::Invite, true, None, false, true),
            (R::Invite, false, Some(M::Join), false, true),
            (R::Invite, false, Some(M::Invite), false, true),
            (R::Invite, false, Some(M::Leave), false, false),
            (R::Invite, false, Some(M::Ban), false, false),
            (R::Invite, false, Some(M::Knock), false, false),
            (restricted(), false, None, false, false),
            (restricted(), false, None, true, true),
            (restricted(), false, Some(M::Leave), true, true),
            // Membership of an allowed room means nothing to other rules.
            (R::Invite, false, None, true, false),
        ];
        for (rule, world_readable, membership, in_allowed_room, expected) in cases {
            let access = Access { join_rule: &rule, world_readable, membership: membership.as_ref(), in_allowed_room };
            assert_eq!(may_preview(access), expected, "{rule:?} {world_readable} {membership:?} {in_allowed_room}");
        }
    }

    #[test]
    fn allowed_rooms_are_read_only_when_they_decide() {
        let rule = restricted();
        let access = |membership: Option<&'static MembershipState>, world_readable| Access {
            join_rule: &rule,
            world_readable,
            membership,
            in_allowed_room: false,
        };
        assert!(needs_allow_check(access(None, false)));
        assert!(needs_allow_check(access(Some(&MembershipState::Leave), false)));
        assert!(!needs_allow_check(access(Some(&MembershipState::Join), false)));
        assert!(!needs_allow_check(access(None, true)));
        let empty = JoinRuleSummary::Restricted(RestrictedSummary::new(vec![]));
        assert!(!needs_allow_check(Access {
            join_rule: &empty,
            world_readable: false,
            membership: None,
            in_allowed_room: false
        }));
        let public = JoinRuleSummary::Public;
        assert!(!needs_allow_check(Access {
            join_rule: &public,
            world_readable: false,
            membership: None,
            in_allowed_room: false
        }));
    }

    #[test]
    fn join_rules_read_as() {
        let allow = json!({"join_rule": "restricted", "allow": [
            {"type": "m.room_membership", "room_id": "!space:x"},
            {"type": "org.example.other", "room_id": "!no:x"},
        ]});
        assert_eq!(join_rule_summary(Some(&allow)), restricted());
        assert_eq!(join_rule_summary(Some(&json!({"join_rule": "public"}))), JoinRuleSummary::Public);
        assert_eq!(join_rule_summary(Some(&json!({"join_rule": "knock"}))), JoinRuleSummary::Knock);
        assert_eq!(join_rule_summary(None), JoinRuleSummary::Invite);
        assert_eq!(join_rule_summary(Some(&json!({"join_rule": "org.example.custom"}))), JoinRuleSummary::Private);
        assert_eq!(join_rule_summary(Some(&json!({}))), JoinRuleSummary::Private);
        assert_eq!(join_rule_summary(Some(&json!({"join_rule": 7}))), JoinRuleSummary::Private);
    }

    #[test]
    fn child_links_and_their_fields() {
        assert!(is_child_link(&json!({"via": ["x.org"]})));
        for bad in [json!({}), json!({"via": []}), json!({"via": "x.org"}), json!({"via": ["x.org", 7]}), json!({"via": null})] {
            assert!(!is_child_link(&bad), "{bad}");
        }
        assert!(is_suggested(&json!({"suggested": true})));
        for no in [json!({}), json!({"suggested": false}), json!({"suggested": "true"}), json!({"suggested": 1})] {
            assert!(!is_suggested(&no), "{no}");
        }
        assert_eq!(valid_order(&json!({"order": " "})), Some(" "));
        assert_eq!(valid_order(&json!({"order": "~a"})), Some("~a"));
        let fifty = "a".repeat(50);
        assert_eq!(valid_order(&json!({"order": fifty})), Some(fifty.as_str()));
        for bad in [
            json!({"order": ""}),
            json!({"order": "a".repeat(51)}),
            json!({"order": "é"}),
            json!({"order": "\n"}),
            json!({"order": 3}),
        ] {
            assert_eq!(valid_order(&bad), None, "{bad}");
        }
    }

    /// The spec's example of "Ordering of children within a space", plus
    /// ties on order and timestamp, and an invalid order.
    #[test]
    fn children_are_ordered_as_the_spec_says() {
        let children = [
            ("!b:example.org", json!({"order": " "}), 1_640_341_000_000),
            ("!a:example.org", json!({"order": "aaaa"}), 1_640_141_000_000),
            ("!c:example.org", json!({"order": "first"}), 1_640_841_000_000),
            ("!e:example.org", json!({}), 1_640_641_000_000),
            ("!d:example.org", json!({}), 1_640_741_000_000),
            ("!g:example.org", json!({"order": "first"}), 1_640_841_000_000),
            ("!f:example.org", json!({"order": "first"}), 1_640_841_000_000),
            ("!h:example.org", json!({"order": "\u{7f}"}), 1_640_641_000_000),
        ];
        let mut sorted: Vec<_> = children.iter().collect();
        sorted.sort_by(|a, b| child_order_key(&a.1, a.2, a.0).cmp(&child_order_key(&b.1, b.2, b.0)));
        let ids: Vec<&str> = sorted.iter().map(|c| c.0).collect();
        assert_eq!(
            ids,
            [
                "!b:example.org",
                "!a:example.org",
                "!c:example.org",
                "!f:example.org",
                "!g:example.org",
                "!e:example.org",
                "!h:example.org",
                "!d:example.org"
            ]
        );
    }

    #[test]
    fn parameters_are_checked_and_capped() {
        let p = |limit, depth| hierarchy_params(limit, depth, false);
        assert_eq!(
            p(None, None).unwrap(),
            HierarchyParams { limit: MAX_HIERARCHY_LIMIT, max_depth: MAX_HIERARCHY_DEPTH, suggested_only: false }
        );
        assert_eq!(p(Some(3), Some(0)).unwrap().limit, 3);
        assert_eq!(p(Some(3), Some(0)).unwrap().max_depth, 0);
        assert_eq!(p(Some(u64::MAX), Some(u64::MAX)).unwrap().limit, MAX_HIERARCHY_LIMIT);
        assert_eq!(p(Some(u64::MAX), Some(u64::MAX)).unwrap().max_depth, MAX_HIERARCHY_DEPTH);
        assert!(matches!(p(Some(0), None), Err(Error::InvalidParam(_))));
    }

    #[test]
    fn a_walk_continues_only_the_same_request() {
        let params = HierarchyParams { limit: 5, max_depth: 3, suggested_only: true };
        let walk = HierarchyWalk {
            token: "t".into(),
            user_id: "@a:x".into(),
            room_id: "!s:x".into(),
            suggested_only: true,
            max_depth: 3,
            pending: vec![],
            visited: vec![],
            created_ts: 0,
        };
        assert!(continues(&walk, "@a:x", "!s:x", params));
        assert!(continues(&walk, "@a:x", "!s:x", HierarchyParams { limit: 50, ..params }));
        assert!(!continues(&walk, "@b:x", "!s:x", params));
        assert!(!continues(&walk, "@a:x", "!t:x", params));
        assert!(!continues(&walk, "@a:x", "!s:x", HierarchyParams { suggested_only: false, ..params }));
        assert!(!continues(&walk, "@a:x", "!s:x", HierarchyParams { max_depth: 2, ..params }));
    }

    /// Walks a tree given as (room, children) to the end, returning the
    /// rooms in visiting order with their depths.
    fn walk_all(tree: &[(&str, &[&str])], max_depth: u32) -> Vec<(String, u32)> {
        let mut walk = Walk::new(tree[0].0);
        let mut seen = Vec::new();
        for _ in 0..100 {
            let Some(room) = walk.next() else { break };
            let children = tree.iter().find(|(r, _)| *r == room.room_id).map(|(_, c)| *c).unwrap_or(&[]);
            walk.expand(children.iter().copied(), room.depth, max_depth);
            seen.push((room.room_id, room.depth));
        }
        assert!(!walk.has_more());
        seen
    }

    fn names(seen: &[(String, u32)]) -> Vec<&str> {
        seen.iter().map(|(r, _)| r.as_str()).collect()
    }

    #[test]
    fn the_walk_goes_depth_first_once_per_room() {
        let tree: &[(&str, &[&str])] =
            &[("S", &["A", "B", "C"]), ("A", &["A1", "A2"]), ("A1", &["A1x"]), ("B", &["S", "A2", "B1"])];
        let seen = walk_all(tree, 20);
        // Into A before B; S again under B (a cycle) and A2 again (two
        // parents) are not visited twice.
        assert_eq!(names(&seen), ["S", "A", "A1", "A1x", "A2", "B", "B1", "C"]);
        assert_eq!(seen.iter().map(|(_, d)| *d).collect::<Vec<_>>(), [0, 1, 2, 3, 2, 1, 2, 1]);
        // max_depth: 0 is the root alone, 1 its children.
        assert_eq!(names(&walk_all(tree, 0)), ["S"]);
        assert_eq!(names(&walk_all(tree, 1)), ["S", "A", "B", "C"]);
        // A cycle of two spaces ends.
        let cycle: &[(&str, &[&str])] = &[("A", &["B"]), ("B", &["A"])];
        assert_eq!(names(&walk_all(cycle, 20)), ["A", "B"]);
    }

    #[test]
    fn a_paused_walk_resumes_where_it_stopped() {
        let tree: &[(&str, &[&str])] = &[("S", &["A", "B"]), ("A", &["X"]), ("B", &["X", "Y"])];
        let mut walk = Walk::new("S");
        let mut seen = Vec::new();
        for _ in 0..3 {
            let room = walk.next().unwrap();
            let children = tree.iter().find(|(r, _)| *r == room.room_id).map(|(_, c)| *c).unwrap_or(&[]);
            walk.expand(children.iter().copied(), room.depth, 20);
            seen.push(room.room_id);
        }
        assert!(walk.has_more());
        let (pending, visited) = walk.into_parts();
        assert_eq!(visited, ["S", "A", "X"]);
        let mut walk = Walk::resume(pending, visited);
        while let Some(room) = walk.next() {
            let children = tree.iter().find(|(r, _)| *r == room.room_id).map(|(_, c)| *c).unwrap_or(&[]);
            walk.expand(children.iter().copied(), room.depth, 20);
            seen.push(room.room_id);
        }
        assert_eq!(seen, ["S", "A", "X", "B", "Y"]);
    }

    #[test]
    fn the_walk_is_bounded() {
        let many: Vec<String> = (0..MAX_HIERARCHY_ROOMS_PER_WALK + 10).map(|n| format!("!r{n}:x")).collect();
        let mut walk = Walk::new("S");
        let root = walk.next().unwrap();
        walk.expand(many.iter().map(String::as_str), root.depth, 20);
        let (pending, visited) = walk.into_parts();
        assert_eq!(pending.len() + visited.len(), MAX_HIERARCHY_ROOMS_PER_WALK);
        // The first children are the ones kept, the first on top.
        assert_eq!(pending.last().unwrap().room_id, "!r0:x");
    }
}
