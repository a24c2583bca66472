//! The runtime logic of Chancery: what happens when a user registers, logs
//! in, manages devices or edits a profile. It speaks Matrix concepts and
//! returns [`Error`]s that map one-to-one to Matrix errcodes, but knows
//! nothing of HTTP: the `api` crate decodes requests and encodes answers.
//!
//! Architecture invariants: every write goes through one store call (one
//! transaction); anything kept in memory here (rate limiters, typing
//! notifications) is per node and may be lost at restart without harm.

mod account_data;
mod accounts;
pub mod admin;
mod cluster;
mod error;
mod filters;
mod lazy_members;
mod password;
mod presence;
mod profile;
mod push;
pub mod ratelimit;
mod receipts;
mod registration_tokens;
pub mod rooms;
pub mod search;
pub mod signing;
mod stream_token;
mod sync;
pub mod tokens;
mod typing;
mod uia;
mod wakeups;

use std::sync::Arc;

use chancery_proto::ruma::OwnedServerName;
use chancery_store::DynStore;

pub use accounts::{AuthedUser, LoginOutcome, LoginRequest, RegisterOutcome, RegisterRequest};
pub use chancery_store::{Device, PoolStats};
pub use error::{Error, UiaChallenge};
pub use ratelimit::{RateLimitConfig, RateLimiter};
pub use receipts::ReceiptThread;
pub use registration_tokens::NewRegistrationToken;
pub use stream_token::StreamToken;
pub use sync::SyncRequest;
pub use uia::{AuthPayload, AuthStage};

/// Who may create an account through the client-server API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RegistrationMode {
    /// Only operators create accounts (`chancery create-user`).
    #[default]
    Disabled,
    /// Anyone holding a registration token.
    Token,
    /// Anyone.
    Open,
}

/// What the services need from the configuration.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub server_name: OwnedServerName,
    pub registration: RegistrationMode,
    /// Localparts nobody may register (answered with `M_EXCLUSIVE`).
    pub reserved_usernames: Vec<String>,
    pub password_min_length: usize,
    /// Lifetime of access tokens that come with a refresh token.
    pub access_token_lifetime_ms: u64,
    pub max_devices_per_user: usize,
    pub rate_limits: RateLimitConfig,
    /// Version of new rooms unless the client asks for another.
    pub default_room_version: chancery_proto::ruma::RoomVersionId,
    /// The user directory finds every local user, not only those sharing
    /// a room with the searcher or in public rooms.
    pub user_directory_search_all_users: bool,
    /// Track and share presence (in memory only).
    pub presence_enabled: bool,
}

/// All services, cheap to clone and share between request handlers.
#[derive(Clone)]
pub struct Services {
    inner: Arc<Inner>,
}

struct Inner {
    config: ServiceConfig,
    store: DynStore,
    limiters: ratelimit::Limiters,
    signing_key: chancery_proto::ruma::signatures::Ed25519KeyPair,
    rooms: rooms::RoomRuntime,
    /// Presence: in memory, per node, only when enabled.
    presence: presence::PresenceRuntime,
    /// Typing notifications: in memory, per node.
    typing: typing::TypingRuntime,
    /// Wakes long-polling syncs on account data, receipt, typing and
    /// presence changes.
    wakeups: Arc<wakeups::Wakeups>,
    /// Member events each device was sent by lazy-loading syncs: in
    /// memory, per node.
    lazy_members: lazy_members::LazyMembersCache,
    default_rulesets: push::DefaultRulesets,
    /// This process among the nodes sharing the database (random).
    node_id: u64,
    /// Whether other nodes may share the database (typing and presence
    /// changes are then published for them).
    shares_ephemeral: bool,
}

impl Services {
    pub fn new(config: ServiceConfig, store: DynStore, signing_key: chancery_proto::ruma::signatures::Ed25519KeyPair) -> Self {
        let limiters = ratelimit::Limiters::new(&config.rate_limits);
        let presence = presence::PresenceRuntime::new(config.presence_enabled);
        let updates = store.ephemeral_updates();
        let wakeups: Arc<wakeups::Wakeups> = Arc::default();
        // The store wakes the syncs an appended event concerns, at commit.
        {
            let wakeups = Arc::clone(&wakeups);
            store.set_event_listener(Arc::new(move |room_id: &str, member_target: Option<&str>| {
                wakeups.event(room_id, member_target)
            }));
        }
        let services = Self {
            inner: Arc::new(Inner {
                config,
                store,
                limiters,
                signing_key,
                rooms: rooms::RoomRuntime::new(),
                presence,
                typing: typing::TypingRuntime::new(),
                wakeups,
                lazy_members: lazy_members::LazyMembersCache::new(),
                default_rulesets: push::DefaultRulesets::new(),
                node_id: rand::random(),
                shares_ephemeral: updates.is_some(),
            }),
        };
        if let Some(updates) = updates {
            services.follow_other_nodes(updates);
        }
        services
    }

    pub(crate) fn signing_key(&self) -> &chancery_proto::ruma::signatures::Ed25519KeyPair {
        &self.inner.signing_key
    }

    pub fn config(&self) -> &ServiceConfig {
        &self.inner.config
    }

    pub fn store(&self) -> &DynStore {
        &self.inner.store
    }

    pub fn server_name(&self) -> &chancery_proto::ruma::ServerName {
        &self.inner.config.server_name
    }

    /// Whether the database answers, for `/health`.
    pub async fn healthy(&self) -> bool {
        self.inner.store.ping().await.is_ok()
    }
}

/// Milliseconds since the Unix epoch. Services read the clock; `core` and
/// the stores are handed the value.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
