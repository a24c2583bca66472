//! The runtime of Chancery, as components. Each component owns one domain
//! and the in-memory state that goes with it, and is handed at
//! construction only the store traits, other components, clock and
//! randomness it uses; `chancery-server` builds them in order and the
//! `api` crate hands each handler the one it needs. The components speak
//! Matrix concepts and return [`Error`]s that map one-to-one to Matrix
//! errcodes, but know nothing of HTTP.
//!
//! | component | owns |
//! |---|---|
//! | [`Accounts`] | registration, login, tokens, devices, passwords, registration tokens |
//! | [`InteractiveAuth`] | interactive-auth sessions and their stages |
//! | [`Profiles`] | users' profiles |
//! | [`AccountData`] | account data, tags, the fully-read marker, ignored users, filters |
//! | [`Push`] | push rules, their evaluation, notifications and unread counts |
//! | [`Pushers`] | pushers, and delivering notifications to push gateways |
//! | [`RoomWriter`] | the write path: per-room locks, building, authorising, appending |
//! | [`Rooms`] | room actions: create, send, state, redact, memberships, knock, forget, upgrade |
//! | [`RoomReader`] | events, state, members, `/messages`, `/context`, relations, threads |
//! | [`Visibility`] | history visibility |
//! | [`EventFormatter`] | events as clients see them, with bundled aggregations |
//! | [`Directory`] | room aliases and the published room directory |
//! | [`Search`] | the user directory and message search |
//! | [`Spaces`] | space hierarchies (also served to, and asked of, other servers) and room previews (summaries) |
//! | [`Ephemeral`] | typing, receipts, presence, and telling other nodes of them |
//! | [`Keys`] | end-to-end encryption: keys, device lists, to-device messages, key backups, dehydrated devices |
//! | [`Syncer`] | `/sync` |
//! | [`SlidingSync`] | simplified sliding sync (MSC4186) for Element X |
//! | [`ThreadSubscriptions`] | thread subscriptions (MSC4306) and their changes (MSC4308) |
//! | [`Media`] | the content repository: uploads, downloads, thumbnails, URL previews, quarantine |
//! | [`DelayedEvents`] | delayed events (MSC4140): scheduling, restarts, cancels, firing them on time |
//! | [`Reports`] | content reports |
//! | [`Admin`] | the Synapse-compatible admin API |
//! | [`Health`] | whether the database answers, pool figures |
//! | [`OpenId`] | OpenID tokens: issuing them, telling whose they are |
//! | [`Calls`] | the MatrixRTC token service (lk-jwt-service compatible) |
//! | [`Federation`] | server keys, request signatures both ways, the allow/deny lists, queries to and from other servers |
//! | [`FederationSender`] | outbound transactions: every local event to the servers in its room, in order, retried with backoff |
//!
//! Architecture invariants: every write goes through one store call (one
//! transaction); anything kept in memory (rate limiters, typing, presence,
//! per-room locks, caches) is per node and may be lost at restart without
//! harm; no component holds another through anything but its constructor.

pub mod account_data;
pub mod accounts;
pub mod admin;
pub mod calls;
pub mod clock;
pub mod delayed_events;
pub mod directory;
pub mod ephemeral;
mod error;
pub mod federation;
pub mod health;
pub mod keys;
pub mod leases;
pub mod media;
pub mod notifier;
mod nul;
pub mod openid;
pub mod profiles;
pub mod push;
pub mod pushers;
pub mod ratelimit;
pub mod reports;
pub mod rooms;
pub mod search;
pub mod server_discovery;
pub mod signing;
pub mod sliding_sync;
pub mod spaces;
mod stream_token;
pub mod sync;
pub mod thread_subscriptions;
pub mod tokens;

use std::sync::Arc;

/// A JSON object of `fields`, moved in: `json!` copies every `Value` it is
/// given (through `to_value`), which for a sync answer's rooms and
/// timelines is most of the answer.
pub(crate) fn json_object<const N: usize>(fields: [(&str, serde_json::Value); N]) -> serde_json::Value {
    serde_json::Value::Object(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

pub use account_data::{AccountData, AccountDataDeps};
pub use accounts::{
    Accounts, AccountsConfig, AccountsDeps, AuthPayload, AuthStage, AuthedUser, InteractiveAuth, InteractiveAuthDeps,
    LoginOutcome, LoginRequest, NewRegistrationToken, RegisterOutcome, RegisterRequest, RegistrationMode,
};
pub use admin::Admin;
pub use calls::{Calls, CallsConfig, CallsDeps};
pub use chancery_store::{Device, PoolStats};
pub use delayed_events::{DelayedEvents, DelayedEventsConfig, DelayedEventsDeps};
pub use directory::{Directory, DirectoryDeps};
pub use ephemeral::{Ephemeral, EphemeralDeps, ReceiptThread};
pub use error::{Error, UiaChallenge};
pub use federation::sender::{FederationSender, FederationSenderDeps};
pub use federation::{
    Federation, FederationConfig, FederationDeps, FederationError, HistoryPage, RoomFederation, RoomFederationDeps, RoomHistory,
    RoomHistoryDeps,
};
pub use health::Health;
pub use keys::{DeviceLists, Keys, KeysDeps};
pub use media::{Media, MediaConfig, MediaDeps};
pub use notifier::Notifier;
pub use openid::{OpenId, OpenIdDeps};
pub use profiles::Profiles;
pub use push::{Push, PushDeps};
pub use pushers::{PushGateway, Pushers, PushersConfig, PushersDeps};
pub use ratelimit::{Limiters, RateLimit, RateLimitConfig, RateLimiter};
pub use reports::{Reports, ReportsDeps};
pub use rooms::{
    EventFormatter, EventFormatterDeps, RoomReader, RoomReaderDeps, RoomWriter, RoomWriterDeps, Rooms, RoomsDeps, Visibility,
};
pub use search::{Search, SearchDeps};
pub use sliding_sync::{SlidingSync, SlidingSyncDeps};
pub use spaces::{Spaces, SpacesDeps};
pub use stream_token::StreamToken;
pub use sync::{SyncRequest, Syncer, SyncerDeps};
pub use thread_subscriptions::{ThreadSubscriptions, ThreadSubscriptionsDeps};

/// Every client-facing component of one node, as `chancery-server` wired
/// them: what the API layer hands out to its handlers. No component holds
/// this; each holds only what its constructor was given.
#[derive(Clone)]
pub struct Components {
    pub accounts: Arc<Accounts>,
    pub profiles: Arc<Profiles>,
    pub account_data: Arc<AccountData>,
    pub push: Arc<Push>,
    pub pushers: Arc<Pushers>,
    pub rooms: Arc<Rooms>,
    pub room_reader: Arc<RoomReader>,
    pub directory: Arc<Directory>,
    pub search: Arc<Search>,
    pub spaces: Arc<Spaces>,
    pub ephemeral: Arc<Ephemeral>,
    pub keys: Arc<Keys>,
    pub syncer: Arc<Syncer>,
    pub sliding_sync: Arc<SlidingSync>,
    pub thread_subscriptions: Arc<ThreadSubscriptions>,
    pub reports: Arc<Reports>,
    pub admin: Arc<Admin>,
    pub media: Arc<Media>,
    pub delayed_events: Arc<DelayedEvents>,
    pub health: Arc<Health>,
    pub openid: Arc<OpenId>,
    pub federation: Arc<Federation>,
    pub room_federation: Arc<RoomFederation>,
    /// The outbound transaction sender (its task runs only when
    /// federation is enabled).
    pub federation_sender: Arc<FederationSender>,
    /// The token service, when the operator configured calls.
    pub calls: Option<Arc<Calls>>,
}
