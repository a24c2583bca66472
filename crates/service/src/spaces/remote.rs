//! Space hierarchies across servers (server-server API "Spaces", spec
//! v1.19 `GET /_matrix/federation/v1/hierarchy/{roomId}`).
//!
//! Served: a room this server knows, to a server that may see it (the
//! room federates, and is public, knockable or world-readable, or one of
//! the server's users is joined or invited, or — restricted rooms — is
//! joined to an allowed room), with its `children_state` if it is a space,
//! the summaries of the children this server knows that the server may
//! see, and the ids of those it may not (`inaccessible_children`).
//!
//! Asked: while walking a hierarchy for a user, a room this server does
//! not know (or knows only as the stub of an invite or a knock) is asked of the servers its `m.space.child` link names in
//! `via` (kept with a paused walk for the rooms it leaves waiting, so a
//! later page asks them too; else the room id's server). The summaries of the children another server
//! answers with are kept for the request, so a child that is not a space
//! costs no second request. The user sees a remote room under the same
//! rule as a local one (`decide::may_preview`, without a membership this
//! server cannot know). Bounded per request: at most
//! [`MAX_HIERARCHY_REMOTE_ROOMS_PER_REQUEST`] rooms asked about, each
//! through at most [`MAX_HIERARCHY_SERVERS_PER_ROOM`] servers, within
//! [`HIERARCHY_REMOTE_BUDGET_MS`] in all; what is not reached is left out
//! of the page, as an unknown room is.

use std::collections::HashMap;
use std::time::Duration;

use chancery_proto::limits::{
    HIERARCHY_REMOTE_BUDGET_MS, MAX_ALLOW_ROOMS_CHECKED, MAX_HIERARCHY_REMOTE_ROOMS_PER_REQUEST,
    MAX_HIERARCHY_ROOMS_VISITED_PER_REQUEST, MAX_HIERARCHY_SERVERS_PER_ROOM, MAX_SPACE_CHILDREN,
};
use chancery_proto::ruma::api::federation::space::{SpaceHierarchyParentSummary, get_hierarchy};
use chancery_proto::ruma::events::room::member::MembershipState;
use chancery_proto::ruma::events::space::child::HierarchySpaceChildEvent;
use chancery_proto::ruma::room::{JoinRuleSummary, RoomSummary, RoomType};
use chancery_proto::ruma::serde::Raw;
use chancery_proto::ruma::{OwnedRoomId, OwnedServerName, RoomId, ServerName, UserId};
use chancery_store::PendingRoom;
use serde_json::Value as JsonValue;

use super::decide::{
    Access, HierarchyParams, child_order_key, hierarchy_params, is_child_link, is_suggested, may_preview, needs_allow_check,
};
use super::summary::{joined_to_any, read_room};
use super::{Child, Spaces};
use crate::Error;

/// What one `/hierarchy` request learnt of other servers' rooms, and what
/// it may still spend asking them.
pub(super) struct RemoteRooms {
    /// The `via` servers of the links met so far.
    via: HashMap<OwnedRoomId, Vec<OwnedServerName>>,
    /// Summaries of children other servers named, not yet asked about.
    named: HashMap<OwnedRoomId, RoomSummary>,
    asked: usize,
    deadline_ms: u64,
}

impl RemoteRooms {
    /// For a request continuing a walk whose waiting rooms are `pending`
    /// (with the `via` servers of their links, saved with the walk).
    pub(super) fn new(now_ms: u64, pending: &[PendingRoom]) -> Self {
        let mut via = HashMap::new();
        for room in pending.iter().filter(|p| !p.via.is_empty()) {
            let Ok(room_id) = OwnedRoomId::try_from(room.room_id.as_str()) else { continue };
            via.insert(room_id, room.via.iter().filter_map(|s| ServerName::parse(s).ok()).collect());
        }
        Self { via, named: HashMap::new(), asked: 0, deadline_ms: now_ms.saturating_add(HIERARCHY_REMOTE_BUDGET_MS) }
    }

    /// Remembers the servers a link names for its child (as many as are
    /// ever asked).
    pub(super) fn note_links(&mut self, children: &[Child]) {
        for child in children {
            self.via
                .entry(child.room_id.clone())
                .or_insert_with(|| child.via.iter().take(MAX_HIERARCHY_SERVERS_PER_ROOM).cloned().collect());
        }
    }

    /// Gives the rooms left waiting the `via` servers of their links, so
    /// the next page, on any node, asks the right servers.
    pub(super) fn annotate(&self, pending: &mut [PendingRoom]) {
        for room in pending {
            if let Some(via) = RoomId::parse(&room.room_id).ok().and_then(|id| self.via.get(&id)) {
                room.via = via.iter().map(ToString::to_string).collect();
            }
        }
    }
}

impl Spaces {
    /// `GET /_matrix/federation/v1/hierarchy/{roomId}` for `origin`. 404
    /// `M_NOT_FOUND` when this server does not know the room or `origin`
    /// may not see it (the spec answers both alike).
    pub async fn hierarchy_for_server(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        suggested_only: bool,
    ) -> Result<get_hierarchy::v1::Response, Error> {
        let not_found = || Error::NotFound("room not found, or your server may not see it".into());
        let room = read_room(&*self.deps.rooms, room_id, None).await?.filter(|r| !r.stub).ok_or_else(not_found)?;
        if !self.server_may_see(origin, room_id, &room.summary, room.may_preview, room.federates).await? {
            return Err(not_found());
        }
        let params = hierarchy_params(None, None, suggested_only)?;
        let children = if room.is_space() { self.children(room_id, &room, params).await? } else { Vec::new() };
        let children_state = children.iter().map(|c| c.event.clone()).collect();
        let mut response = get_hierarchy::v1::Response::new(SpaceHierarchyParentSummary::new(room.summary, children_state));
        for child in children.into_iter().take(MAX_HIERARCHY_ROOMS_VISITED_PER_REQUEST) {
            let Some(facts) = read_room(&*self.deps.rooms, &child.room_id, None).await?.filter(|f| !f.stub) else { continue };
            if self.server_may_see(origin, &child.room_id, &facts.summary, facts.may_preview, facts.federates).await? {
                response.children.push(facts.summary);
            } else {
                response.inaccessible_children.push(child.room_id);
            }
        }
        Ok(response)
    }

    /// Whether `origin` may see a room: it federates, and anyone may
    /// preview it, or one of `origin`'s users is joined or invited, or it
    /// is restricted and one of them is joined to an allowed room.
    async fn server_may_see(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        summary: &RoomSummary,
        anyone_may: bool,
        federates: bool,
    ) -> Result<bool, Error> {
        if !federates {
            return Ok(false);
        }
        if anyone_may {
            return Ok(true);
        }
        let suffix = format!(":{origin}");
        let has_user = |members: Vec<chancery_store::Membership>, invited_too: bool| {
            members.into_iter().any(|m| {
                m.user_id.ends_with(&suffix)
                    && (m.membership == MembershipState::Join || (invited_too && m.membership == MembershipState::Invite))
            })
        };
        if has_user(self.deps.rooms.members_of_room(room_id.as_str()).await?, true) {
            return Ok(true);
        }
        if let JoinRuleSummary::Restricted(rule) = &summary.join_rule {
            for allowed in rule.allowed_room_ids.iter().take(MAX_ALLOW_ROOMS_CHECKED) {
                if has_user(self.deps.rooms.members_of_room(allowed.as_str()).await?, false) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// A room this server does not know, as another server describes it
    /// (asked within the request's bounds), if `user` may see it: its
    /// summary and, for a space, its counting child links.
    pub(super) async fn remote_room(
        &self,
        remote: &mut RemoteRooms,
        room_id: &RoomId,
        user: &UserId,
        params: HierarchyParams,
    ) -> Result<Option<(RoomSummary, Vec<Child>)>, Error> {
        let named = remote.named.get(room_id).filter(|s| s.room_type != Some(RoomType::Space)).cloned();
        let (summary, children_state) = match named {
            Some(summary) => (summary, Vec::new()),
            None => {
                let Some(answer) = self.ask_hierarchy(remote, room_id, params.suggested_only).await else { return Ok(None) };
                for child in answer.children {
                    remote.named.entry(child.room_id.clone()).or_insert(child);
                }
                (answer.room.summary, answer.room.children_state)
            }
        };
        let mut access = Access {
            join_rule: &summary.join_rule,
            world_readable: summary.world_readable,
            membership: None,
            in_allowed_room: false,
        };
        if needs_allow_check(access) {
            access.in_allowed_room = joined_to_any(&*self.deps.rooms, &summary.join_rule, Some(user)).await?;
        }
        if !may_preview(access) {
            return Ok(None);
        }
        let children =
            if summary.room_type == Some(RoomType::Space) { remote_children(children_state, params) } else { Vec::new() };
        Ok(Some((summary, children)))
    }

    /// Asks the room's servers, in turn, for its hierarchy; `None` once the
    /// request's budget is spent or when none answers about that room.
    async fn ask_hierarchy(
        &self,
        remote: &mut RemoteRooms,
        room_id: &RoomId,
        suggested_only: bool,
    ) -> Option<get_hierarchy::v1::Response> {
        if !self.deps.federation.enabled() || remote.asked >= MAX_HIERARCHY_REMOTE_ROOMS_PER_REQUEST {
            return None;
        }
        remote.asked += 1;
        let mut servers = remote.via.get(room_id).cloned().unwrap_or_default();
        servers.extend(room_id.server_name().map(ToOwned::to_owned));
        let mut seen = std::collections::HashSet::new();
        servers.retain(|s| *s != self.deps.server_name && seen.insert(s.clone()));
        for server in servers.into_iter().take(MAX_HIERARCHY_SERVERS_PER_ROOM) {
            let left_ms = remote.deadline_ms.saturating_sub(self.deps.clock.now_ms());
            if left_ms == 0 {
                return None;
            }
            let mut request = get_hierarchy::v1::Request::new(room_id.to_owned());
            request.suggested_only = suggested_only;
            match tokio::time::timeout(Duration::from_millis(left_ms), self.deps.federation.send(&server, request)).await {
                Ok(Ok(answer)) if answer.room.summary.room_id == room_id => return Some(answer),
                Ok(Ok(_)) => tracing::info!(server = %server, room_id = %room_id, "hierarchy: an answer about another room"),
                Ok(Err(e)) => {
                    tracing::info!(server = %server, room_id = %room_id, error = %e, "hierarchy over federation failed")
                }
                Err(_) => tracing::info!(server = %server, room_id = %room_id, "hierarchy over federation timed out"),
            }
        }
        None
    }
}

/// The counting links of a remote space's `children_state`, in the spec's
/// order (as `Spaces::children` reads a local space's).
fn remote_children(children_state: Vec<Raw<HierarchySpaceChildEvent>>, params: HierarchyParams) -> Vec<Child> {
    let mut children: Vec<(OwnedRoomId, JsonValue, u64, Raw<HierarchySpaceChildEvent>)> = Vec::new();
    for raw in children_state.into_iter().take(MAX_SPACE_CHILDREN) {
        let Ok(event) = raw.deserialize_as_unchecked::<JsonValue>() else { continue };
        let Some(Ok(child)) = event.get("state_key").and_then(JsonValue::as_str).map(OwnedRoomId::try_from) else { continue };
        let content = event.get("content").cloned().unwrap_or(JsonValue::Null);
        if event.get("type").and_then(JsonValue::as_str) != Some("m.space.child")
            || !is_child_link(&content)
            || (params.suggested_only && !is_suggested(&content))
        {
            continue;
        }
        let ts = event.get("origin_server_ts").and_then(JsonValue::as_u64).unwrap_or_default();
        children.push((child, content, ts, raw));
    }
    children.sort_by(|a, b| child_order_key(&a.1, a.2, a.0.as_str()).cmp(&child_order_key(&b.1, b.2, b.0.as_str())));
    children.into_iter().map(|(room_id, content, _, event)| Child { via: via_of(&content), room_id, event }).collect()
}

/// The server names of a link's `via` list.
pub(super) fn via_of(content: &JsonValue) -> Vec<OwnedServerName> {
    content
        .get("via")
        .and_then(JsonValue::as_array)
        .map(|via| via.iter().filter_map(JsonValue::as_str).filter_map(|s| ServerName::parse(s).ok()).collect())
        .unwrap_or_default()
}
