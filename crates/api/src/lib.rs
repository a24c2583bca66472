//! The HTTP face of Chancery: axum routers whose handlers decode ruma
//! requests, authenticate, call the service layer and encode the answer.
//! Errors become Matrix `errcode`s here and nowhere else.
//!
//! Architecture invariants: handlers hold no business logic (that is in
//! `chancery-service`); every route is a finished endpoint (anything else
//! gets 404/405 `M_UNRECOGNIZED`); request bodies are bounded before they
//! are read; logs carry the matched route, never the URI (query strings can
//! hold access tokens) nor bodies.

mod error;
mod extract;
mod handlers;
pub mod metrics;
mod observe;

use axum::Router;
use axum::handler::Handler;
use axum::http::{Method, StatusCode, header};
use axum::routing::{MethodFilter, delete, get, on, post, put};
use chancery_proto::ruma::api::client::sync::sync_events::v3 as sync_events_v3;
use chancery_proto::ruma::api::client::sync::sync_events::v5 as sync_events_v5;
use chancery_proto::ruma::api::client::{
    account, alias, context, device, directory, discovery, knock, membership, message, presence, push, redact, relations, room,
    session, space, threads,
};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRef;
use chancery_proto::ruma::api::{IncomingRequest, path_builder::PathBuilder};
use chancery_service::{
    AccountData, Accounts, Admin, Components, DelayedEvents, Directory, Ephemeral, Federation, Health, Keys, Media, OpenId,
    Profiles, Push, Pushers, Reports, RoomFederation, RoomReader, Rooms, Search, SlidingSync, Spaces, Syncer,
    ThreadSubscriptions,
};
use tower_http::cors::{Any, CorsLayer};

pub use error::{ApiError, ApiResult};
pub use metrics::Metrics;

use handlers as h;

/// What the API layer needs from the configuration.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub max_request_body_bytes: usize,
    /// Served in `/.well-known/matrix/client`.
    pub public_baseurl: String,
    /// Served in `/.well-known/matrix/server` (`host:port`).
    pub federation_address: String,
    /// Take the client address from `X-Forwarded-For` (behind a proxy).
    pub trust_forwarded_for: bool,
    /// Write client addresses into request logs (off by default).
    pub log_client_address: bool,
    /// A request body must arrive whole within this time (408 otherwise).
    pub body_read_timeout: Duration,
    /// A request must be answered within this time (503 otherwise).
    pub request_timeout: Duration,
    /// ... but an upload (whose body is as large as the media limit) within
    /// this one.
    pub upload_timeout: Duration,
}

impl ApiConfig {
    /// The longest a `/sync` long-poll waits: under the request timeout,
    /// so a quiet long-poll answers empty instead of timing out.
    pub fn max_long_poll(&self) -> Duration {
        self.request_timeout * 9 / 10
    }
}

/// What the routers hold: the components (each handler extracts the one
/// it needs, through [`FromRef`]), the API's configuration and metrics.
#[derive(Clone)]
pub struct AppState {
    pub components: Components,
    pub config: Arc<ApiConfig>,
    pub metrics: Option<Arc<Metrics>>,
}

/// `State<Arc<Component>>` for every component a handler may ask for.
macro_rules! component_state {
    ($($field:ident: $component:ty),* $(,)?) => {
        $(
            impl FromRef<AppState> for Arc<$component> {
                fn from_ref(state: &AppState) -> Self {
                    Arc::clone(&state.components.$field)
                }
            }
        )*
    };
}

component_state! {
    accounts: Accounts,
    profiles: Profiles,
    account_data: AccountData,
    push: Push,
    pushers: Pushers,
    rooms: Rooms,
    room_reader: RoomReader,
    directory: Directory,
    search: Search,
    spaces: Spaces,
    ephemeral: Ephemeral,
    keys: Keys,
    syncer: Syncer,
    sliding_sync: SlidingSync,
    thread_subscriptions: ThreadSubscriptions,
    reports: Reports,
    admin: Admin,
    media: Media,
    delayed_events: DelayedEvents,
    health: Health,
    openid: OpenId,
    federation: Federation,
    room_federation: RoomFederation,
}

impl FromRef<AppState> for Arc<ApiConfig> {
    fn from_ref(state: &AppState) -> Self {
        Arc::clone(&state.config)
    }
}

/// Registers `handler` on every path ruma knows for endpoint `R` (stable,
/// legacy `r0` and unstable prefixes) with `R`'s method.
fn ruma_route<R, H, T>(mut router: Router<AppState>, handler: H) -> Router<AppState>
where
    R: IncomingRequest,
    H: Handler<T, AppState> + Clone,
    T: 'static,
{
    let filter = MethodFilter::try_from(R::METHOD).expect("ruma endpoints use standard methods");
    for path in R::PATH_BUILDER.all_paths() {
        router = router.route(path, on(filter, handler.clone()));
    }
    router
}

/// End-to-end encryption: keys, to-device messages, key backups and
/// dehydrated devices (MSC3814).
fn keys_routes(mut r: Router<AppState>) -> Router<AppState> {
    use chancery_proto::ruma::api::client::{backup, dehydrated_device, keys, to_device};
    r = ruma_route::<keys::upload_keys::v3::Request, _, _>(r, h::keys::upload);
    r = ruma_route::<keys::get_keys::v3::Request, _, _>(r, h::keys::query);
    r = ruma_route::<keys::claim_keys::v3::Request, _, _>(r, h::keys::claim);
    r = ruma_route::<keys::get_key_changes::v3::Request, _, _>(r, h::keys::changes);
    r = ruma_route::<keys::upload_signing_keys::v3::Request, _, _>(r, h::keys::upload_signing_keys);
    r = ruma_route::<keys::upload_signatures::v3::Request, _, _>(r, h::keys::upload_signatures);
    r = ruma_route::<to_device::send_event_to_device::v3::Request, _, _>(r, h::keys::send_to_device);
    r = ruma_route::<backup::create_backup_version::v3::Request, _, _>(r, h::keys::create_backup);
    r = ruma_route::<backup::get_latest_backup_info::v3::Request, _, _>(r, h::keys::latest_backup);
    r = ruma_route::<backup::get_backup_info::v3::Request, _, _>(r, h::keys::backup);
    r = ruma_route::<backup::update_backup_version::v3::Request, _, _>(r, h::keys::update_backup);
    r = ruma_route::<backup::delete_backup_version::v3::Request, _, _>(r, h::keys::delete_backup);
    r = ruma_route::<backup::add_backup_keys::v3::Request, _, _>(r, h::keys::put_backup_keys);
    r = ruma_route::<backup::add_backup_keys_for_room::v3::Request, _, _>(r, h::keys::put_backup_room_keys);
    r = ruma_route::<backup::add_backup_keys_for_session::v3::Request, _, _>(r, h::keys::put_backup_session_key);
    r = ruma_route::<backup::get_backup_keys::v3::Request, _, _>(r, h::keys::backup_keys);
    r = ruma_route::<backup::get_backup_keys_for_room::v3::Request, _, _>(r, h::keys::backup_room_keys);
    r = ruma_route::<backup::get_backup_keys_for_session::v3::Request, _, _>(r, h::keys::backup_session_key);
    r = ruma_route::<backup::delete_backup_keys::v3::Request, _, _>(r, h::keys::delete_backup_keys);
    r = ruma_route::<backup::delete_backup_keys_for_room::v3::Request, _, _>(r, h::keys::delete_backup_room_keys);
    r = ruma_route::<backup::delete_backup_keys_for_session::v3::Request, _, _>(r, h::keys::delete_backup_session_key);
    r = ruma_route::<dehydrated_device::put_dehydrated_device::unstable::Request, _, _>(r, h::keys::put_dehydrated_device);
    r = ruma_route::<dehydrated_device::get_dehydrated_device::unstable::Request, _, _>(r, h::keys::get_dehydrated_device);
    r = ruma_route::<dehydrated_device::delete_dehydrated_device::unstable::Request, _, _>(r, h::keys::delete_dehydrated_device);
    r = ruma_route::<dehydrated_device::get_events::unstable::Request, _, _>(r, h::keys::dehydrated_device_events);
    r
}

/// Thread subscriptions (MSC4306) and the pagination of their changes
/// (MSC4308), as Synapse serves them under `msc4306_enabled`.
fn thread_subscription_routes(mut r: Router<AppState>) -> Router<AppState> {
    use chancery_proto::ruma::api::client::threads::{get_thread_subscription, subscribe_thread, unsubscribe_thread};
    r = ruma_route::<get_thread_subscription::unstable::Request, _, _>(r, h::threads::get);
    r = ruma_route::<subscribe_thread::unstable::Request, _, _>(r, h::threads::subscribe);
    r = ruma_route::<unsubscribe_thread::unstable::Request, _, _>(r, h::threads::unsubscribe);
    r.route("/_matrix/client/unstable/io.element.msc4308/thread_subscriptions", get(h::threads::changes))
}

/// The content repository: authenticated media, uploads, the frozen
/// unauthenticated downloads, and Synapse's admin endpoints for media.
/// `preview_url` is routed only when the operator turned previews on
/// (otherwise it is an unknown endpoint, 404 `M_UNRECOGNIZED`).
// The deprecated endpoints' request types name their paths; nothing else
// of them is used.
#[allow(deprecated)]
fn media_routes(mut r: Router<AppState>, url_preview: bool) -> Router<AppState> {
    use chancery_proto::ruma::api::Metadata;
    use chancery_proto::ruma::api::client::authenticated_media as authed;
    use chancery_proto::ruma::api::client::media as legacy;
    r = ruma_route::<authed::get_media_config::v1::Request, _, _>(r, h::media::config);
    r = ruma_route::<legacy::get_media_config::v3::Request, _, _>(r, h::media::config);
    r = ruma_route::<authed::get_content::v1::Request, _, _>(r, h::media::download);
    r = ruma_route::<authed::get_content_as_filename::v1::Request, _, _>(r, h::media::download_as);
    r = ruma_route::<authed::get_content_thumbnail::v1::Request, _, _>(r, h::media::thumbnail);
    if url_preview {
        r = ruma_route::<authed::get_media_preview::v1::Request, _, _>(r, h::media::preview_url);
        for path in legacy::get_media_preview::v3::Request::PATH_BUILDER.all_paths() {
            r = r.route(path, get(h::media::preview_url));
        }
    }
    // Uploads stream their bodies: not ruma's request types, which hold
    // the whole body.
    for path in legacy::create_content::v3::Request::PATH_BUILDER.all_paths() {
        r = r.route(path, post(h::media::upload));
    }
    for path in legacy::create_mxc_uri::v1::Request::PATH_BUILDER.all_paths() {
        r = r.route(path, post(h::media::create));
    }
    for path in legacy::create_content_async::v3::Request::PATH_BUILDER.all_paths() {
        r = r.route(path, put(h::media::upload_to));
    }
    for path in legacy::get_content::v3::Request::PATH_BUILDER
        .all_paths()
        .chain(legacy::get_content_as_filename::v3::Request::PATH_BUILDER.all_paths())
        .chain(legacy::get_content_thumbnail::v3::Request::PATH_BUILDER.all_paths())
    {
        r = r.route(path, get(h::media::frozen));
    }
    r.route("/_synapse/admin/v1/media/{server_name}/{media_id}", delete(h::media::admin_delete))
        .route("/_synapse/admin/v1/media/quarantine/{server_name}/{media_id}", post(h::media::admin_quarantine))
        .route("/_synapse/admin/v1/media/unquarantine/{server_name}/{media_id}", post(h::media::admin_unquarantine))
        .route("/_synapse/admin/v1/user/{user_id}/media/quarantine", post(h::media::admin_quarantine_user))
}

/// Where the token service is mounted: MSC4143's `livekit_service_url`
/// is the public base URL followed by this, and Element Call POSTs to
/// `<livekit_service_url>/sfu/get` and `/get_token`.
pub const LIVEKIT_SERVICE_PATH: &str = "/livekit/jwt";

/// OpenID tokens, and when calls are configured MSC4143's transports and
/// the token service. The userinfo endpoint is the first of the
/// federation API: it needs no request signature (the token is the
/// credential), so it is served on the client listener, as Synapse's
/// `openid` resource is.
fn calls_routes(mut r: Router<AppState>, calls: bool) -> Router<AppState> {
    use chancery_proto::ruma::api::client::account::request_openid_token;
    r = ruma_route::<request_openid_token::v3::Request, _, _>(r, h::calls::request_token);
    r = r.route("/_matrix/federation/v1/openid/userinfo", get(h::calls::userinfo));
    if calls {
        r = r
            .route("/_matrix/client/unstable/org.matrix.msc4143/rtc/transports", get(h::calls::rtc_transports))
            .route(&format!("{LIVEKIT_SERVICE_PATH}/sfu/get"), post(h::calls::sfu_get))
            .route(&format!("{LIVEKIT_SERVICE_PATH}/get_token"), post(h::calls::get_token))
            .route(&format!("{LIVEKIT_SERVICE_PATH}/delegate_delayed_leave"), post(h::calls::delegate_delayed_leave));
    }
    r
}

/// Whether a matched route is an upload, whose deadline is
/// [`ApiConfig::upload_timeout`].
/// Delayed events (MSC4140) under their unstable prefix; only routed when
/// they are on. The management endpoints take no access token.
fn delayed_event_routes(r: Router<AppState>) -> Router<AppState> {
    let base = "/_matrix/client/unstable/org.matrix.msc4140/delayed_events";
    r.route(base, get(h::delayed_events::list))
        .route(&format!("{base}/{{delay_id}}"), post(h::delayed_events::update_by_body))
        .route(&format!("{base}/{{delay_id}}/{{action}}"), post(h::delayed_events::update_by_path))
}

pub(crate) fn is_upload_route(route: &str) -> bool {
    route.starts_with("/_matrix/media/") && route.contains("/upload")
}

/// The server-server API, served on the federation listener (TLS): keys,
/// the version, queries, and OpenID userinfo. Anything else is an unknown
/// endpoint (404 `M_UNRECOGNIZED`).
pub fn federation_router(state: AppState) -> Router {
    use chancery_proto::ruma::api::federation::discovery::{get_remote_server_keys, get_remote_server_keys_batch};
    use chancery_proto::ruma::api::federation::query::{get_profile_information, get_room_information};
    let mut r = Router::new()
        .route("/_matrix/key/v2/server", get(h::federation::server_keys))
        .route("/_matrix/federation/v1/version", get(h::federation::version))
        .route("/_matrix/federation/v1/openid/userinfo", get(h::calls::userinfo));
    r = ruma_route::<get_remote_server_keys::v2::Request, _, _>(r, h::federation::query_keys);
    r = ruma_route::<get_remote_server_keys_batch::v2::Request, _, _>(r, h::federation::query_keys_batch);
    r = ruma_route::<get_profile_information::v1::Request, _, _>(r, h::federation::query_profile);
    r = ruma_route::<get_room_information::v1::Request, _, _>(r, h::federation::query_directory);
    {
        use chancery_proto::ruma::api::federation::membership::{create_join_event, prepare_join_event};
        use chancery_proto::ruma::api::federation::transactions::send_transaction_message;
        r = ruma_route::<prepare_join_event::v1::Request, _, _>(r, h::federation::make_join);
        r = ruma_route::<create_join_event::v2::Request, _, _>(r, h::federation::send_join);
        r = ruma_route::<send_transaction_message::v1::Request, _, _>(r, h::federation::send_transaction);
        use chancery_proto::ruma::api::federation::backfill::get_backfill;
        use chancery_proto::ruma::api::federation::event::{get_event, get_missing_events, get_room_state, get_room_state_ids};
        r = ruma_route::<get_event::v1::Request, _, _>(r, h::federation::event);
        use chancery_proto::ruma::api::federation::authorization::get_event_authorization;
        r = ruma_route::<get_event_authorization::v1::Request, _, _>(r, h::federation::event_auth);
        r = ruma_route::<get_room_state::v1::Request, _, _>(r, h::federation::state);
        r = ruma_route::<get_room_state_ids::v1::Request, _, _>(r, h::federation::state_ids);
        r = ruma_route::<get_backfill::v1::Request, _, _>(r, h::federation::backfill);
        r = ruma_route::<get_missing_events::v1::Request, _, _>(r, h::federation::missing_events);
        use chancery_proto::ruma::api::federation::membership::{create_invite, create_leave_event, prepare_leave_event};
        r = ruma_route::<create_invite::v2::Request, _, _>(r, h::federation::invite);
        r = ruma_route::<prepare_leave_event::v1::Request, _, _>(r, h::federation::make_leave);
        r = ruma_route::<create_leave_event::v2::Request, _, _>(r, h::federation::send_leave);
        use chancery_proto::ruma::api::federation::membership::{create_knock_event, prepare_knock_event};
        r = ruma_route::<prepare_knock_event::v1::Request, _, _>(r, h::federation::make_knock);
        r = ruma_route::<create_knock_event::v1::Request, _, _>(r, h::federation::send_knock);
        use chancery_proto::ruma::api::federation::event::get_event_by_timestamp;
        r = ruma_route::<get_event_by_timestamp::v1::Request, _, _>(r, h::federation::timestamp_to_event);
        use chancery_proto::ruma::api::federation::space::get_hierarchy;
        r = ruma_route::<get_hierarchy::v1::Request, _, _>(r, h::federation::hierarchy);
        use chancery_proto::ruma::api::federation::device::get_devices;
        use chancery_proto::ruma::api::federation::keys::{claim_keys, get_keys};
        r = ruma_route::<get_keys::v1::Request, _, _>(r, h::federation::keys_query);
        r = ruma_route::<claim_keys::v1::Request, _, _>(r, h::federation::keys_claim);
        r = ruma_route::<get_devices::v1::Request, _, _>(r, h::federation::user_devices);
        use chancery_proto::ruma::api::federation::directory::{get_public_rooms, get_public_rooms_filtered};
        r = ruma_route::<get_public_rooms::v1::Request, _, _>(r, h::federation::public_rooms);
        r = ruma_route::<get_public_rooms_filtered::v1::Request, _, _>(r, h::federation::public_rooms_filtered);
    }
    r.fallback(|| async { ApiError::unrecognized(StatusCode::NOT_FOUND) })
        .method_not_allowed_fallback(|| async { ApiError::unrecognized(StatusCode::METHOD_NOT_ALLOWED) })
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(observe::panic_response))
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe::deadline))
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe::observe))
        .with_state(state)
}

/// The client-server API, `.well-known` and `/health`.
pub fn router(state: AppState) -> Router {
    let mut r = Router::new();
    r = media_routes(r, state.components.media.url_preview_enabled());
    r = calls_routes(r, state.components.calls.is_some());
    if state.components.thread_subscriptions.enabled() {
        r = thread_subscription_routes(r);
    }
    r = ruma_route::<discovery::get_supported_versions::Request, _, _>(r, h::discovery::versions);
    r = ruma_route::<session::get_login_types::v3::Request, _, _>(r, h::session::login_types);
    r = ruma_route::<session::login::v3::Request, _, _>(r, h::session::login);
    r = ruma_route::<session::refresh_token::v3::Request, _, _>(r, h::session::refresh);
    r = ruma_route::<session::logout::v3::Request, _, _>(r, h::session::logout);
    r = ruma_route::<session::logout_all::v3::Request, _, _>(r, h::session::logout_all);
    r = ruma_route::<account::register::v3::Request, _, _>(r, h::account::register);
    r = ruma_route::<account::get_username_availability::v3::Request, _, _>(r, h::account::username_available);
    r = ruma_route::<account::check_registration_token_validity::v1::Request, _, _>(r, h::account::registration_token_validity);
    r = ruma_route::<account::whoami::v3::Request, _, _>(r, h::account::whoami);
    r = ruma_route::<account::change_password::v3::Request, _, _>(r, h::account::change_password);
    r = ruma_route::<account::deactivate::v3::Request, _, _>(r, h::account::deactivate);
    r = ruma_route::<device::get_devices::v3::Request, _, _>(r, h::devices::list);
    r = ruma_route::<device::get_device::v3::Request, _, _>(r, h::devices::get);
    r = ruma_route::<device::update_device::v3::Request, _, _>(r, h::devices::update);
    r = ruma_route::<device::delete_device::v3::Request, _, _>(r, h::devices::delete_one);
    r = ruma_route::<device::delete_devices::v3::Request, _, _>(r, h::devices::delete_many);
    r = ruma_route::<room::create_room::v3::Request, _, _>(r, h::rooms::create);
    r = ruma_route::<membership::join_room_by_id::v3::Request, _, _>(r, h::rooms::join_by_id);
    r = ruma_route::<membership::join_room_by_id_or_alias::v3::Request, _, _>(r, h::rooms::join_by_id_or_alias);
    r = ruma_route::<membership::leave_room::v3::Request, _, _>(r, h::rooms::leave);
    r = ruma_route::<membership::invite_user::v3::Request, _, _>(r, h::rooms::invite);
    r = ruma_route::<membership::kick_user::v3::Request, _, _>(r, h::rooms::kick);
    r = ruma_route::<membership::ban_user::v3::Request, _, _>(r, h::rooms::ban);
    r = ruma_route::<membership::unban_user::v3::Request, _, _>(r, h::rooms::unban);
    r = ruma_route::<membership::joined_rooms::v3::Request, _, _>(r, h::rooms::joined);
    r = ruma_route::<membership::get_member_events::v3::Request, _, _>(r, h::rooms::members);
    r = ruma_route::<message::get_message_events::v3::Request, _, _>(r, h::rooms::messages);
    r = ruma_route::<redact::redact_event::v3::Request, _, _>(r, h::rooms::redact);
    r = ruma_route::<sync_events_v3::Request, _, _>(r, h::sync::sync);
    r = ruma_route::<sync_events_v5::Request, _, _>(r, h::sync::sliding_sync);
    r = ruma_route::<push::get_pushrules_all::v3::Request, _, _>(r, h::push::all);
    r = ruma_route::<push::get_pushrules_global_scope::v3::Request, _, _>(r, h::push::global);
    r = ruma_route::<push::get_pushrule::v3::Request, _, _>(r, h::push::get);
    r = ruma_route::<push::set_pushrule::v3::Request, _, _>(r, h::push::set);
    r = ruma_route::<push::delete_pushrule::v3::Request, _, _>(r, h::push::delete);
    r = ruma_route::<push::get_pushrule_enabled::v3::Request, _, _>(r, h::push::enabled);
    r = ruma_route::<push::set_pushrule_enabled::v3::Request, _, _>(r, h::push::set_enabled);
    r = ruma_route::<push::get_pushrule_actions::v3::Request, _, _>(r, h::push::actions);
    r = ruma_route::<push::set_pushrule_actions::v3::Request, _, _>(r, h::push::set_actions);
    r = ruma_route::<push::get_notifications::v3::Request, _, _>(r, h::push::notifications);
    r = ruma_route::<push::get_pushers::v3::Request, _, _>(r, h::pushers::list);
    r = ruma_route::<push::set_pusher::v3::Request, _, _>(r, h::pushers::set);
    r = ruma_route::<presence::get_presence::v3::Request, _, _>(r, h::presence::get);
    r = ruma_route::<presence::set_presence::v3::Request, _, _>(r, h::presence::set);
    r = h::account_data::routes(r);
    r = keys_routes(r);
    r = h::receipts::routes(r);
    r = ruma_route::<relations::get_relating_events::v1::Request, _, _>(r, h::relations::relations);
    r = ruma_route::<relations::get_relating_events_with_rel_type::v1::Request, _, _>(r, h::relations::relations_of_type);
    r = ruma_route::<relations::get_relating_events_with_rel_type_and_event_type::v1::Request, _, _>(
        r,
        h::relations::relations_of_type_and_event_type,
    );
    r = ruma_route::<threads::get_threads::v1::Request, _, _>(r, h::relations::threads);
    r = ruma_route::<context::get_context::v3::Request, _, _>(r, h::relations::context);
    r = ruma_route::<room::get_event_by_timestamp::v1::Request, _, _>(r, h::relations::timestamp_to_event);
    r = ruma_route::<alias::get_alias::v3::Request, _, _>(r, h::directory::get_alias);
    r = ruma_route::<alias::create_alias::v3::Request, _, _>(r, h::directory::create_alias);
    r = ruma_route::<alias::delete_alias::v3::Request, _, _>(r, h::directory::delete_alias);
    r = ruma_route::<room::aliases::v3::Request, _, _>(r, h::directory::room_aliases);
    r = ruma_route::<directory::get_room_visibility::v3::Request, _, _>(r, h::directory::get_visibility);
    r = ruma_route::<directory::set_room_visibility::v3::Request, _, _>(r, h::directory::set_visibility);
    r = ruma_route::<directory::get_public_rooms::v3::Request, _, _>(r, h::directory::public_rooms);
    r = ruma_route::<directory::get_public_rooms_filtered::v3::Request, _, _>(r, h::directory::public_rooms_filtered);
    r = ruma_route::<room::upgrade_room::v3::Request, _, _>(r, h::directory::upgrade);
    r = ruma_route::<knock::knock_room::v3::Request, _, _>(r, h::directory::knock);
    r = ruma_route::<membership::forget_room::v3::Request, _, _>(r, h::directory::forget);
    r = ruma_route::<room::report_room::v3::Request, _, _>(r, h::directory::report_room);
    r = ruma_route::<space::get_hierarchy::v1::Request, _, _>(r, h::spaces::hierarchy);
    r = ruma_route::<room::get_summary::v1::Request, _, _>(r, h::spaces::room_summary);
    // MSC3266's unstable path as it ended (Synapse serves it too; ruma
    // knows only the earlier `/rooms/{roomIdOrAlias}/summary`).
    r = r.route("/_matrix/client/unstable/im.nheko.summary/summary/{room_id_or_alias}", get(h::spaces::room_summary));
    for prefix in ["/_matrix/client/v3", "/_matrix/client/r0"] {
        // Not ruma's request type: it lacks the `score` older clients send.
        r = r.route(&format!("{prefix}/rooms/{{room_id}}/report/{{event_id}}"), post(h::directory::report_event));
    }
    for prefix in ["/_matrix/client/v3", "/_matrix/client/r0"] {
        let rooms = format!("{prefix}/rooms/{{room_id}}");
        r = r
            .route(&format!("{rooms}/send/{{event_type}}/{{txn_id}}"), put(h::rooms::send))
            .route(&format!("{rooms}/state"), get(h::rooms::get_state))
            .route(&format!("{rooms}/state/{{event_type}}"), get(h::rooms::get_state_event).put(h::rooms::put_state))
            .route(&format!("{rooms}/state/{{event_type}}/"), get(h::rooms::get_state_event).put(h::rooms::put_state))
            .route(
                &format!("{rooms}/state/{{event_type}}/{{state_key}}"),
                get(h::rooms::get_state_event).put(h::rooms::put_state),
            )
            .route(&format!("{rooms}/event/{{event_id}}"), get(h::rooms::get_event))
            .route(&format!("{rooms}/joined_members"), get(h::rooms::joined_members))
            .route(&format!("{prefix}/user/{{user_id}}/filter"), axum::routing::post(h::filters::create))
            .route(&format!("{prefix}/search"), axum::routing::post(h::search::search))
            .route(&format!("{prefix}/user_directory/search"), axum::routing::post(h::search::user_directory))
            .route(&format!("{prefix}/user/{{user_id}}/filter/{{filter_id}}"), get(h::filters::get));
    }
    for prefix in ["/_matrix/client/v3", "/_matrix/client/r0", "/_matrix/client/unstable/uk.tcpip.msc4133"] {
        if !prefix.contains("msc4133") {
            r = r.route(&format!("{prefix}/profile/{{user_id}}"), get(h::profile::get_profile));
        }
        r = r.route(
            &format!("{prefix}/profile/{{user_id}}/{{key}}"),
            get(h::profile::get_field).put(h::profile::set_field).merge(delete(h::profile::delete_field)),
        );
    }
    for prefix in ["/_matrix/client/v3", "/_matrix/client/r0"] {
        r = r.route(&format!("{prefix}/capabilities"), get(h::discovery::capabilities));
    }
    if state.components.delayed_events.enabled() {
        r = delayed_event_routes(r);
    }
    // The Synapse-compatible admin API (not in ruma: plain handlers).
    r = r
        .route("/_synapse/admin/v1/event_reports", get(h::admin::event_reports))
        .route("/_synapse/admin/v1/event_reports/{report_id}", get(h::admin::event_report).delete(h::admin::delete_event_report))
        .route("/_synapse/admin/v1/room_reports", get(h::admin::room_reports))
        .route("/_synapse/admin/v1/room_reports/{report_id}", get(h::admin::room_report).delete(h::admin::delete_room_report));
    r = r
        .route("/.well-known/matrix/client", get(h::discovery::well_known_client))
        .route("/.well-known/matrix/server", get(h::discovery::well_known_server))
        .route("/health", get(h::discovery::health))
        .fallback(|| async { ApiError::unrecognized(StatusCode::NOT_FOUND) })
        .method_not_allowed_fallback(|| async { ApiError::unrecognized(StatusCode::METHOD_NOT_ALLOWED) });

    // Spec "Web Browser Clients": these exact headers on every response.
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS])
        .allow_headers([header::HeaderName::from_static("x-requested-with"), header::CONTENT_TYPE, header::AUTHORIZATION]);

    // Inside `observe`, so a panic's 500 or a timeout's 503 is logged with
    // its route and counted.
    r.layer(tower_http::catch_panic::CatchPanicLayer::custom(observe::panic_response))
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe::deadline))
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe::observe))
        .layer(cors)
        .with_state(state)
}
