//! The spaces component: the space hierarchy (`GET /rooms/{roomId}/hierarchy`,
//! spec "Spaces") and room previews (`GET /room_summary/{roomIdOrAlias}`,
//! MSC3266, spec v1.15 "Room Summaries").
//!
//! Both show a room only to who may preview it (`decide::may_preview`:
//! members and invitees; anyone for public, knockable or world-readable
//! rooms; members of an allowed room for restricted ones). A hierarchy is
//! walked depth first (`decide::Walk`); between pages the walk is saved
//! in the store under the `next_batch` token (`HierarchyStore`), so any
//! node answers the next page and no room is listed twice. Rooms this
//! server does not know are asked of other servers (`remote`: the
//! `via` servers of their links, bounded per request), and served to
//! other servers (`GET /_matrix/federation/v1/hierarchy`).

mod decide;
mod remote;
mod summary;

use std::collections::HashMap;
use std::sync::Arc;

use chancery_proto::limits::{
    HIERARCHY_WALK_TTL_MS, MAX_HIERARCHY_ROOMS_VISITED_PER_REQUEST, MAX_HIERARCHY_WALKS_PER_USER, MAX_SPACE_CHILDREN,
};
use chancery_proto::ruma::api::client::space::SpaceHierarchyRoomsChunk;
use chancery_proto::ruma::events::room::member::MembershipState;
use chancery_proto::ruma::events::space::child::HierarchySpaceChildEvent;
use chancery_proto::ruma::room::RoomSummary;
use chancery_proto::ruma::serde::Raw;
use chancery_proto::ruma::{OwnedRoomId, OwnedServerName, RoomId, RoomOrAliasId, UserId};
use chancery_store::{DirectoryStore, HierarchyStore, HierarchyWalk, RoomStore};
use serde_json::json;

use self::decide::{HierarchyParams, Walk, child_order_key, continues, hierarchy_params, is_child_link, is_suggested};
use self::summary::{RoomFacts, read_room};
use crate::clock::Clock;
use crate::rooms::state::effective_content;
use crate::tokens::{ALNUM, Entropy, random_string};
use crate::{AuthedUser, Error};

/// What [`Spaces`] is built from.
pub struct SpacesDeps {
    /// Rooms' state, members, and the space links in it.
    pub rooms: Arc<dyn RoomStore>,
    /// Room aliases, for summaries asked for by alias.
    pub aliases: Arc<dyn DirectoryStore>,
    /// Hierarchy walks paused between pages.
    pub walks: Arc<dyn HierarchyStore>,
    /// Only aliases of this server are resolved.
    pub server_name: OwnedServerName,
    /// When a paused walk was saved, and when it expires.
    pub clock: Arc<dyn Clock>,
    /// `next_batch` tokens.
    pub entropy: Arc<dyn Entropy>,
    /// Other servers' rooms in a hierarchy are asked of them.
    pub federation: Arc<crate::Federation>,
}

/// A counting child link of a space: the child, the servers the link
/// names, and the link as `children_state` shows it.
pub(crate) struct Child {
    pub room_id: OwnedRoomId,
    pub via: Vec<OwnedServerName>,
    pub event: Raw<HierarchySpaceChildEvent>,
}

/// What a client asked `/hierarchy` for.
#[derive(Debug, Clone)]
pub struct HierarchyRequest {
    pub room_id: OwnedRoomId,
    pub from: Option<String>,
    pub limit: Option<u64>,
    pub max_depth: Option<u64>,
    pub suggested_only: bool,
}

/// One page of a hierarchy.
#[derive(Debug, Clone, Default)]
pub struct HierarchyPage {
    pub rooms: Vec<SpaceHierarchyRoomsChunk>,
    pub next_batch: Option<String>,
}

/// A room preview and the requester's membership (`None` when
/// unauthenticated; `leave` when they have none).
#[derive(Debug, Clone)]
pub struct RoomPreview {
    pub summary: RoomSummary,
    pub membership: Option<MembershipState>,
}

/// Space hierarchies and room previews.
pub struct Spaces {
    deps: SpacesDeps,
}

/// Rooms read during one request, so a room linked twice (or the root,
/// checked before the walk) is read once.
type Facts = HashMap<OwnedRoomId, Option<RoomFacts>>;

impl Spaces {
    pub fn new(deps: SpacesDeps) -> Self {
        Self { deps }
    }

    /// `GET /room_summary/{roomIdOrAlias}` (and its unstable paths). A room
    /// this server does not know, an alias of no room (or of another
    /// server) and a room the requester may not preview all answer 404
    /// `M_NOT_FOUND` alike (spec: "The room could not be found"), so room
    /// ids cannot be probed. `via` names servers to ask over federation,
    /// which this server does not speak yet.
    pub async fn room_summary(&self, requester: Option<&AuthedUser>, room: &RoomOrAliasId) -> Result<RoomPreview, Error> {
        let not_found = || Error::NotFound("room not found, or you may not preview it".into());
        let room_id = match <&RoomId>::try_from(room) {
            Ok(room_id) => room_id.to_owned(),
            Err(alias) => {
                if alias.server_name() != self.deps.server_name {
                    return Err(not_found());
                }
                let found = self.deps.aliases.alias(alias.as_str()).await?.ok_or_else(not_found)?;
                OwnedRoomId::try_from(found.room_id).map_err(|e| Error::Internal(format!("stored alias: {e}")))?
            }
        };
        let user = requester.map(|u| -> &UserId { &u.user_id });
        let facts = read_room(&*self.deps.rooms, &room_id, user).await?.filter(|f| f.may_preview).ok_or_else(not_found)?;
        let membership = requester.map(|_| facts.membership.clone().unwrap_or(MembershipState::Leave));
        Ok(RoomPreview { summary: facts.summary, membership })
    }

    /// `GET /rooms/{roomId}/hierarchy`: the next page of the space tree
    /// under `room_id`, depth first. 403 `M_FORBIDDEN` if the requester
    /// may not preview the root (or it is unknown); 400 `M_INVALID_PARAM`
    /// for a `limit` of 0, and for a `from` token that is unknown, expired,
    /// another user's, or used with another root, `suggested_only` or
    /// `max_depth` (the spec lets only `limit` change between pages).
    pub async fn hierarchy(&self, requester: &AuthedUser, req: HierarchyRequest) -> Result<HierarchyPage, Error> {
        let params = hierarchy_params(req.limit, req.max_depth, req.suggested_only)?;
        let user: &UserId = &requester.user_id;
        let now = self.deps.clock.now_ms();
        let expire_before = now.saturating_sub(HIERARCHY_WALK_TTL_MS);
        let (mut walk, mut remote) = match &req.from {
            None => (Walk::new(req.room_id.as_str()), remote::RemoteRooms::new(now, &[])),
            Some(token) => {
                let saved = self
                    .deps
                    .walks
                    .hierarchy_walk(token, expire_before)
                    .await?
                    .filter(|w| continues(w, user.as_str(), req.room_id.as_str(), params))
                    .ok_or_else(|| {
                        Error::InvalidParam(
                            "unknown or expired pagination token, or one used with another room, suggested_only or max_depth"
                                .into(),
                        )
                    })?;
                let remote = remote::RemoteRooms::new(now, &saved.pending);
                (Walk::resume(saved.pending, saved.visited), remote)
            }
        };
        let mut facts = Facts::new();
        // Every page checks the root: who lost access stops paging.
        if !self.facts(&mut facts, &req.room_id, user).await?.is_some_and(|f| f.may_preview) {
            return Err(Error::Forbidden("you may not view this room, or it is unknown to this server".into()));
        }

        let mut page = HierarchyPage::default();
        let mut visits = 0;
        while page.rooms.len() < params.limit && visits < MAX_HIERARCHY_ROOMS_VISITED_PER_REQUEST {
            let Some(next) = walk.next() else { break };
            visits += 1;
            let Ok(room_id) = OwnedRoomId::try_from(next.room_id) else { continue };
            let (summary, children) = match self.facts(&mut facts, &room_id, user).await?.cloned() {
                // A stub's state is not the room's: asked like an unknown room.
                Some(room) if room.may_preview && !room.stub => {
                    let children = if room.is_space() { self.children(&room_id, &room, params).await? } else { Vec::new() };
                    (room.summary, children)
                }
                Some(room) if !room.stub => continue,
                _ => match self.remote_room(&mut remote, &room_id, user, params).await? {
                    Some(found) => found,
                    None => continue,
                },
            };
            remote.note_links(&children);
            walk.expand(children.iter().map(|c| c.room_id.as_str()), next.depth, params.max_depth);
            page.rooms.push(SpaceHierarchyRoomsChunk::new(summary, children.into_iter().map(|c| c.event).collect()));
        }
        if walk.has_more() {
            let token = random_string(&*self.deps.entropy, ALNUM, 32);
            let (mut pending, visited) = walk.into_parts();
            remote.annotate(&mut pending);
            let saved = HierarchyWalk {
                token: token.clone(),
                user_id: user.to_string(),
                room_id: req.room_id.to_string(),
                suggested_only: params.suggested_only,
                max_depth: params.max_depth,
                pending,
                visited,
                created_ts: now,
            };
            self.deps.walks.save_hierarchy_walk(&saved, expire_before, MAX_HIERARCHY_WALKS_PER_USER).await?;
            page.next_batch = Some(token);
        }
        Ok(page)
    }

    async fn facts<'f>(&self, facts: &'f mut Facts, room_id: &RoomId, user: &UserId) -> Result<Option<&'f RoomFacts>, Error> {
        if !facts.contains_key(room_id) {
            let read = read_room(&*self.deps.rooms, room_id, Some(user)).await?;
            facts.insert(room_id.to_owned(), read);
        }
        Ok(facts.get(room_id).and_then(Option::as_ref))
    }

    /// A space's child links that count (a `via`, and `suggested` if only
    /// suggested ones are asked for), in the spec's order, each with its
    /// stripped event for `children_state`.
    async fn children(&self, space: &RoomId, room: &RoomFacts, params: HierarchyParams) -> Result<Vec<Child>, Error> {
        let links = self.deps.rooms.current_state_of_type(space.as_str(), "m.space.child", MAX_SPACE_CHILDREN).await?;
        let mut children = Vec::with_capacity(links.len());
        for link in links {
            let Some(Ok(child)) = link.state_key.as_deref().map(OwnedRoomId::try_from) else { continue };
            let content = effective_content(&link, &room.redaction)?;
            if !is_child_link(&content) || (params.suggested_only && !is_suggested(&content)) {
                continue;
            }
            children.push((child, content, link));
        }
        children.sort_by(|a, b| {
            child_order_key(&a.1, a.2.origin_server_ts, a.0.as_str()).cmp(&child_order_key(
                &b.1,
                b.2.origin_server_ts,
                b.0.as_str(),
            ))
        });
        children
            .into_iter()
            .map(|(child, content, link)| {
                let stripped = json!({
                    "type": "m.space.child",
                    "state_key": child,
                    "content": content,
                    "sender": link.sender,
                    "origin_server_ts": link.origin_server_ts,
                });
                let raw = serde_json::value::to_raw_value(&stripped).map_err(|e| Error::Internal(format!("space child: {e}")))?;
                Ok(Child { via: remote::via_of(&content), room_id: child, event: Raw::from_json(raw) })
            })
            .collect()
    }
}
