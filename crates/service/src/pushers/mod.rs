//! The pushers component (client-server API "Push Notifications":
//! `GET /pushers`, `POST /pushers/set`) and the delivery of notifications
//! to push gateways (push gateway API, `POST /_matrix/push/v1/notify`).
//!
//! - `rules.rs`: what a client may set (pure, table-tested).
//! - `engine.rs`: the delivery decisions, a sans-I/O state machine with
//!   time passed in (what to send next, backoff, what an answer means,
//!   badge counts, priority).
//! - `body.rs`: the notify body (pure).
//! - `delivery.rs`: the runtime around them: one task per node, woken by
//!   commits on this node (the store's event listener, through `wake`) and
//!   on others (`StreamStore::remote_changes`) and by the next retry time;
//!   it claims due pushers in the store (one node per pusher at a time),
//!   pushes through [`PushGateway`] and writes the progress back.
//!
//! The queue is the stored notifications (`chancery_store::PusherStore`
//! says how), so it survives restarts and is shared by the nodes.
//!
//! In memory, per node: the users whose badge should be re-sent after a
//! read receipt, and the badge counts last sent (both bounded).

mod body;
mod delivery;
pub mod engine;
pub mod rules;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chancery_proto::limits::{MAX_PENDING_BADGE_USERS, MAX_PUSHERS_PER_USER, MAX_REMEMBERED_BADGES};
use chancery_proto::ruma::api::client::push::set_pusher::v3::{PusherAction, PusherPostData};
use chancery_proto::ruma::api::client::push::{Pusher as RumaPusher, PusherIds, PusherInit, PusherKind};
use chancery_store::{NewPusher, PusherStore, RoomStore, StreamStore};
use tokio::sync::Notify;

pub use engine::{Reply, RetryPolicy};
pub use rules::{GatewayPolicy, is_public_address};

use crate::clock::Clock;
use crate::tokens::Entropy;
use crate::{AuthedUser, Error};

/// Sends a push to a gateway: the HTTP client, which the server provides
/// (the service knows no HTTP). It must not follow redirects, must keep
/// to the [`GatewayPolicy`] for the addresses it connects to (names
/// resolved), and must answer within its timeout.
#[async_trait]
pub trait PushGateway: Send + Sync {
    /// POSTs the JSON `body` to `url`: the status and the start of the
    /// answer's body, or [`Reply::Unreachable`].
    async fn notify(&self, url: &str, body: Vec<u8>) -> Reply;
}

/// What the operator decides about pushes.
#[derive(Debug, Clone, Copy)]
pub struct PushersConfig {
    pub gateways: GatewayPolicy,
    /// `counts.unread` counts rooms with unread notifications (Synapse's
    /// default) rather than the notifications.
    pub group_unread_count_by_room: bool,
    pub retry: RetryPolicy,
}

/// What [`Pushers`] is built from.
pub struct PushersDeps {
    pub store: Arc<dyn PusherStore>,
    /// Room names, aliases and display names for pushes that are not
    /// `event_id_only`.
    pub rooms: Arc<dyn RoomStore>,
    /// Commits of other nodes (`remote_changes`) wake the delivery.
    pub streams: Arc<dyn StreamStore>,
    pub gateway: Arc<dyn PushGateway>,
    /// Notified by the store's event listener at every commit on this node
    /// (`server` wiring joins it to the notifier's listener).
    pub wake: Arc<Notify>,
    pub config: PushersConfig,
    /// Pushes' ages, backoff and leases.
    pub clock: Arc<dyn Clock>,
}

/// Pushers and push delivery.
pub struct Pushers {
    deps: PushersDeps,
    /// This node among those sharing the database: the owner of the
    /// leases it takes (random, drawn at construction).
    node: String,
    /// Users whose badge changed by reading (bounded).
    badge_users: Mutex<HashSet<String>>,
    badges: Mutex<engine::BadgeMemory>,
}

impl Pushers {
    /// The node's id is drawn from `entropy`.
    pub fn new(deps: PushersDeps, entropy: &dyn Entropy) -> Self {
        let mut id = [0u8; 8];
        entropy.fill(&mut id);
        Self {
            deps,
            node: format!("{:016x}", u64::from_le_bytes(id)),
            badge_users: Mutex::new(HashSet::new()),
            badges: Mutex::new(engine::BadgeMemory::new(MAX_REMEMBERED_BADGES)),
        }
    }

    /// `GET /pushers`.
    pub async fn pushers(&self, user: &AuthedUser) -> Result<Vec<RumaPusher>, Error> {
        let stored = self.deps.store.pushers(user.user_id.as_str()).await?;
        stored
            .into_iter()
            .filter(|p| p.kind == "http")
            .map(|p| {
                Ok(PusherInit {
                    ids: PusherIds::new(p.pushkey, p.app_id),
                    kind: PusherKind::Http(rules::stored_data(&p.data_json)?),
                    app_display_name: p.app_display_name,
                    device_display_name: p.device_display_name,
                    profile_tag: p.profile_tag,
                    lang: p.lang,
                }
                .into())
            })
            .collect()
    }

    /// `POST /pushers/set`: creates or updates a pusher of the user's (it
    /// belongs to the device whose access token set it), or deletes one
    /// (`kind: null`).
    pub async fn set_pusher(&self, user: &AuthedUser, action: PusherAction) -> Result<(), Error> {
        match action {
            PusherAction::Post(PusherPostData { pusher, append, .. }) => {
                let checked = rules::check_pusher(&pusher, self.deps.config.gateways)?;
                let new = NewPusher {
                    user_id: user.user_id.to_string(),
                    device_id: user.device_id.clone(),
                    app_id: checked.app_id,
                    pushkey: checked.pushkey,
                    kind: "http".into(),
                    app_display_name: checked.app_display_name,
                    device_display_name: checked.device_display_name,
                    profile_tag: checked.profile_tag,
                    lang: checked.lang,
                    data_json: checked.data_json,
                    now_ts: self.deps.clock.now_ms(),
                };
                self.deps.store.set_pusher(new, append, MAX_PUSHERS_PER_USER).await?;
                Ok(())
            }
            PusherAction::Delete(ids) => {
                rules::check_ids(&ids)?;
                // Deleting a pusher that is not there is no error (as
                // Synapse answers).
                self.deps.store.delete_pusher(user.user_id.as_str(), &ids.app_id, &ids.pushkey).await?;
                Ok(())
            }
            _ => Err(Error::InvalidParam("unknown pusher action".into())),
        }
    }

    /// The user read something (a read receipt moved): their devices are
    /// sent the new badge count, if it changed. Never waits: the delivery
    /// task does it.
    pub fn user_read(&self, user_id: &str) {
        {
            let mut users = self.badge_users.lock().unwrap_or_else(|p| p.into_inner());
            if users.len() >= MAX_PENDING_BADGE_USERS && !users.contains(user_id) {
                // The next push corrects the badge; dropping this one only
                // delays that.
                return;
            }
            users.insert(user_id.to_owned());
        }
        self.deps.wake.notify_one();
    }

    fn take_badge_users(&self) -> Vec<String> {
        let mut users = self.badge_users.lock().unwrap_or_else(|p| p.into_inner());
        users.drain().collect()
    }

    fn badges(&self) -> std::sync::MutexGuard<'_, engine::BadgeMemory> {
        self.badges.lock().unwrap_or_else(|p| p.into_inner())
    }
}
