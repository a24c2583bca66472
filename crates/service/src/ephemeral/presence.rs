//! Presence (client-server API "Presence"): off unless the operator turns
//! it on. When on, each node keeps the current presence of users in memory
//! only — no history is ever written — and delivers changes in `/sync` to
//! users sharing a room. When off, everyone appears offline and nothing is
//! kept.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;

use chancery_proto::limits::{MAX_PRESENCE_ENTRIES, MAX_STATUS_MSG_BYTES};
use chancery_proto::ruma::UserId;
use chancery_proto::ruma::events::room::member::MembershipState;
use chancery_proto::ruma::presence::PresenceState;
use serde_json::{Value as JsonValue, json};

use super::Ephemeral;
use super::cluster::Update;
use crate::{AuthedUser, Error};

/// Users count as active this long after their last action.
const ACTIVE_WINDOW_MS: u64 = 5 * 60 * 1000;

#[derive(Debug, Clone)]
pub(crate) struct Presence {
    pub presence: PresenceState,
    pub status_msg: Option<String>,
    pub last_active_ts: u64,
    /// Bumped on every change; `/sync` delivers entries newer than its token.
    pub serial: u64,
}

pub(crate) struct PresenceRuntime {
    pub enabled: bool,
    state: Mutex<(u64, HashMap<String, Presence>)>,
}

impl PresenceRuntime {
    /// Starting at the wall clock, `now_ms`.
    pub(crate) fn new(enabled: bool, now_ms: u64) -> Self {
        Self { enabled, state: Mutex::new((now_ms, HashMap::new())) }
    }

    /// Records a presence; returns the new serial if anything changed.
    pub(crate) fn set(&self, user_id: &str, presence: &PresenceState, status_msg: Option<String>, now: u64) -> Option<u64> {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (serial, map) = &mut *guard;
        let changed = map.get(user_id).is_none_or(|p| {
            p.presence != *presence || p.status_msg != status_msg || now.saturating_sub(p.last_active_ts) > ACTIVE_WINDOW_MS
        });
        if !changed {
            if let Some(p) = map.get_mut(user_id) {
                p.last_active_ts = now;
            }
            return None;
        }
        if map.len() >= MAX_PRESENCE_ENTRIES && !map.contains_key(user_id) {
            // Forget those who went offline first; the map never outgrows
            // its bound.
            map.retain(|_, p| p.presence != PresenceState::Offline);
            if map.len() >= MAX_PRESENCE_ENTRIES {
                return None;
            }
        }
        // The serial follows the wall clock, like typing's, so a restarted
        // node never reuses a serial a client already holds.
        *serial = (*serial + 1).max(now);
        map.insert(user_id.to_owned(), Presence { presence: presence.clone(), status_msg, last_active_ts: now, serial: *serial });
        Some(*serial)
    }

    pub(crate) fn get(&self, user_id: &str) -> Option<Presence> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).1.get(user_id).cloned()
    }

    pub(crate) fn serial(&self) -> u64 {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).0
    }

    /// Entries of `users` changed after `since`.
    pub(crate) fn changed_since(&self, since: u64, users: &[String]) -> Vec<(String, Presence)> {
        let guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        users.iter().filter_map(|u| guard.1.get(u).filter(|p| p.serial > since).map(|p| (u.clone(), p.clone()))).collect()
    }
}

/// The `content` of an `m.presence` event, as of `now`.
pub(crate) fn presence_content(p: &Presence, now: u64) -> JsonValue {
    let ago = now.saturating_sub(p.last_active_ts);
    let mut content = json!({
        "presence": p.presence,
        "last_active_ago": ago,
        "currently_active": p.presence == PresenceState::Online && ago < ACTIVE_WINDOW_MS,
    });
    if let Some(msg) = &p.status_msg {
        content["status_msg"] = json!(msg);
    }
    content
}

/// The states a user may be in (anything else ruma keeps as a custom
/// string, which is refused or ignored).
pub(super) fn is_known(presence: &PresenceState) -> bool {
    matches!(presence, PresenceState::Online | PresenceState::Offline | PresenceState::Unavailable)
}

impl Ephemeral {
    /// `PUT /presence/{userId}/status`.
    pub async fn set_presence(
        &self,
        user: &AuthedUser,
        target: &UserId,
        presence: &PresenceState,
        status_msg: Option<String>,
    ) -> Result<(), Error> {
        if user.user_id != target {
            return Err(Error::Forbidden("you can only set your own presence".into()));
        }
        if !is_known(presence) {
            return Err(Error::InvalidParam("presence must be online, offline or unavailable".into()));
        }
        if status_msg.as_ref().is_some_and(|m| m.len() > MAX_STATUS_MSG_BYTES) {
            return Err(Error::InvalidParam(format!("status messages are at most {MAX_STATUS_MSG_BYTES} bytes")));
        }
        if self.presence.enabled
            && self.presence.set(user.user_id.as_str(), presence, status_msg.clone(), self.deps.clock.now_ms()).is_some()
        {
            self.deps.notifier.everyone();
            self.presence_to_other_servers(&user.user_id);
            self.publish(Update::Presence { user_id: user.user_id.to_string(), presence: presence.clone(), status_msg });
        }
        Ok(())
    }

    /// A syncing client counts as online unless it says otherwise.
    pub(crate) fn touch_presence(&self, user: &AuthedUser, set_presence: &PresenceState) {
        // Anything but the two states a client may claim by syncing is
        // ignored (ruma keeps unknown values as custom strings).
        if !self.presence.enabled || !matches!(set_presence, PresenceState::Online | PresenceState::Unavailable) {
            return;
        }
        let status = self.presence.get(user.user_id.as_str()).and_then(|p| p.status_msg);
        if self.presence.set(user.user_id.as_str(), set_presence, status.clone(), self.deps.clock.now_ms()).is_some() {
            self.deps.notifier.everyone();
            self.presence_to_other_servers(&user.user_id);
            self.publish(Update::Presence {
                user_id: user.user_id.to_string(),
                presence: set_presence.clone(),
                status_msg: status,
            });
        }
    }

    /// A local user's new presence, for the servers sharing a room with
    /// them (the node where it changed sends it).
    fn presence_to_other_servers(&self, user_id: &UserId) {
        if let Some(p) = self.presence.get(user_id.as_str()) {
            self.deps.edus.presence(user_id, presence_content(&p, self.deps.clock.now_ms()));
        }
    }

    /// `GET /presence/{userId}/status`: only for users one shares a room
    /// with (or oneself).
    pub async fn get_presence(&self, user: &AuthedUser, target: &UserId) -> Result<JsonValue, Error> {
        if user.user_id != target && !self.shares_room(&user.user_id, target).await? {
            return Err(Error::Forbidden("you do not share a room with this user".into()));
        }
        if !self.presence.enabled {
            return Ok(json!({ "presence": PresenceState::Offline }));
        }
        Ok(match self.presence.get(target.as_str()) {
            Some(p) => presence_content(&p, self.deps.clock.now_ms()),
            None => json!({ "presence": PresenceState::Offline }),
        })
    }

    /// `m.presence` events for `/sync`: changes after `since` of the users
    /// sharing a joined room with the syncing user (and the user).
    pub(crate) async fn presence_events(
        &self,
        user: &AuthedUser,
        joined_rooms: &[&str],
        since: u64,
    ) -> Result<(Vec<JsonValue>, u64), Error> {
        if !self.presence.enabled {
            return Ok((Vec::new(), since));
        }
        let serial = self.presence.serial();
        let mut users = BTreeSet::new();
        users.insert(user.user_id.to_string());
        for room in joined_rooms {
            for m in self.deps.rooms.members_of_room(room).await? {
                if m.membership == MembershipState::Join {
                    users.insert(m.user_id);
                }
            }
        }
        let users: Vec<String> = users.into_iter().collect();
        let now = self.deps.clock.now_ms();
        let events = self
            .presence
            .changed_since(since, &users)
            .into_iter()
            .map(|(sender, p)| json!({ "type": "m.presence", "sender": sender, "content": presence_content(&p, now) }))
            .collect();
        Ok((events, serial.max(since)))
    }

    async fn shares_room(&self, a: &UserId, b: &UserId) -> Result<bool, Error> {
        let theirs: HashSet<String> = self
            .deps
            .rooms
            .memberships_of_user(b.as_str())
            .await?
            .into_iter()
            .filter(|m| m.membership == MembershipState::Join)
            .map(|m| m.room_id)
            .collect();
        Ok(self
            .deps
            .rooms
            .memberships_of_user(a.as_str())
            .await?
            .iter()
            .any(|m| m.membership == MembershipState::Join && theirs.contains(&m.room_id)))
    }
}
