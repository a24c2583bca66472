//! The federation component (server-server API): this server's signing
//! keys and other servers', request authentication both ways (`X-Matrix`),
//! the operator's allow and deny lists and pinned keys, and the queries
//! other servers answer (profiles, room aliases). Requests go out over TLS
//! checked against the system's roots plus the operator's CA.
//!
//! Invariants: no request leaves for, and no request is heard from, a
//! server the policy does not permit; a request is believed only when its
//! signature verifies with a key its origin published (or the operator
//! pinned) that is valid now; answers from other servers are read within
//! [`MAX_FEDERATION_RESPONSE_BYTES`] and [`FEDERATION_REQUEST_TIMEOUT_MS`].

pub mod edus;
mod history;
pub mod keys;
mod knock;
pub mod policy;
mod rooms;

pub(crate) use rooms::server_allowed_in_room;

pub use history::{HistoryPage, RoomHistory, RoomHistoryDeps};
pub use rooms::{RoomFederation, RoomFederationDeps, SendJoinAnswer};
pub mod sender;
mod timestamp;
pub(crate) use timestamp::closer;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chancery_core::pdu::{self, Pdu};
use chancery_proto::limits::{
    FEDERATION_CONNECT_TIMEOUT_MS, FEDERATION_REQUEST_TIMEOUT_MS, MAX_CACHED_SERVER_KEYS, MAX_FEDERATION_RESPONSE_BYTES,
    MAX_INBOUND_REQUESTS_PER_ORIGIN, MAX_NOTARY_QUERY_SERVERS, SERVER_KEY_FAILURE_BACKOFF_MS, SERVER_KEY_VALIDITY_MS,
};
use chancery_proto::ruma::api::auth_scheme::NoAuthentication;
use chancery_proto::ruma::api::federation::authentication::{ServerSignatures, ServerSignaturesInput, XMatrix};
use chancery_proto::ruma::api::federation::discovery::get_server_keys;
use chancery_proto::ruma::api::federation::query::{get_profile_information, get_room_information};
use chancery_proto::ruma::api::path_builder::SinglePath;
use chancery_proto::ruma::api::{IncomingResponse, Metadata, OutgoingRequest};
use chancery_proto::ruma::serde::Base64;
use chancery_proto::ruma::signatures::{Ed25519KeyPair, PublicKeyMap};
use chancery_proto::ruma::{CanonicalJsonObject, OwnedRoomId, OwnedServerName, RoomAliasId, RoomVersionId, ServerName, UserId};
use serde_json::Value as JsonValue;
use serde_json::value::RawValue as RawJsonValue;

use crate::Error;
use crate::clock::Clock;
use crate::server_discovery::{Destination, ServerDiscovery, ServerDiscoveryDeps};
use keys::{KeyCache, KnownKeys};
use policy::ServerPolicy;

/// What the operator configured (`[federation]`).
#[derive(Debug, Clone)]
pub struct FederationConfig {
    /// Whether this server talks to others at all. Off, every outbound
    /// request is refused and no federation listener runs.
    pub enabled: bool,
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    /// Server → key id (`ed25519:abc`) → unpadded base64 public key: only
    /// these keys are believed for that server.
    pub pinned_keys: BTreeMap<String, BTreeMap<String, String>>,
    /// Extra trust roots (PEM) for outbound TLS, beside the system's.
    pub extra_ca_pem: Option<Vec<u8>>,
    /// Requests one origin may make (beside at most
    /// [`MAX_INBOUND_REQUESTS_PER_ORIGIN`] in flight); past it 429.
    pub requests_per_origin: crate::ratelimit::RateLimit,
}

/// Requests one other server may make by default, transactions apart
/// (`admit`): Synapse's `rc_federation` delays past 10 a second and
/// refuses past 50 queued; a joining Synapse fetches a big room's events
/// in bursts, so the burst is large.
pub const DEFAULT_REQUESTS_PER_ORIGIN: crate::ratelimit::RateLimit =
    crate::ratelimit::RateLimit { per_second: 100.0, burst: 1_000 };

impl Default for FederationConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            allow: Vec::new(),
            deny: Vec::new(),
            pinned_keys: BTreeMap::new(),
            extra_ca_pem: None,
            requests_per_origin: DEFAULT_REQUESTS_PER_ORIGIN,
        }
    }
}

/// What [`Federation`] is built from.
pub struct FederationDeps {
    pub config: FederationConfig,
    pub server_name: OwnedServerName,
    pub signing_key: Ed25519KeyPair,
    /// Keys this server signed with before (`signing::load_old_keys`).
    pub old_keys: Vec<crate::signing::OldKey>,
    pub clock: Arc<dyn Clock>,
    /// SRV answers are picked by weight.
    pub entropy: Arc<dyn crate::tokens::Entropy>,
}

/// Why a request to another server failed.
#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    #[error("federation is disabled on this server")]
    Disabled,
    #[error("{0} is not a server this one federates with")]
    NotPermitted(OwnedServerName),
    #[error("the request could not be built: {0}")]
    Build(String),
    #[error("{server} could not be reached: {reason}")]
    Unreachable { server: OwnedServerName, reason: String },
    #[error("{server} answered with more than the limit of bytes")]
    TooLarge { server: OwnedServerName },
    #[error("{server} answered {status}: {body}")]
    Remote { server: OwnedServerName, status: u16, errcode: Option<String>, body: String },
    #[error("{server} answered something unreadable: {reason}")]
    BadAnswer { server: OwnedServerName, reason: String },
}

impl From<FederationError> for Error {
    fn from(e: FederationError) -> Self {
        match e {
            // As before federation: what is on another server is not found.
            FederationError::Disabled => Error::NotFound(e.to_string()),
            FederationError::NotPermitted(_) => Error::Forbidden(e.to_string()),
            FederationError::Remote { status: 404, .. } => Error::NotFound(e.to_string()),
            // The other server refused (not allowed to join, not federating
            // with us): the user is refused, with its words.
            FederationError::Remote { status: 403, .. } => Error::Forbidden(e.to_string()),
            FederationError::Build(reason) => Error::InvalidParam(reason),
            _ => Error::UpstreamFailed(e.to_string()),
        }
    }
}

/// Talking to other servers, and deciding whom to believe.
pub struct Federation {
    deps: FederationDeps,
    policy: ServerPolicy,
    /// Server → key id → public key bytes.
    pinned: HashMap<OwnedServerName, BTreeMap<String, Vec<u8>>>,
    http: reqwest::Client,
    /// Where each server is reached (well-known, SRV).
    discovery: ServerDiscovery,
    keys: Mutex<KeyCache>,
    /// Requests each other server has in flight here.
    inbound: Mutex<HashMap<OwnedServerName, Arc<tokio::sync::Semaphore>>>,
    /// Requests per origin over time.
    inbound_rate: crate::ratelimit::RateLimiter,
}

/// Holds one of an origin's places among its requests in flight until
/// dropped.
pub struct InboundPermit {
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Federation {
    /// Fails on a pinned key that is not base64 or an extra CA that is not
    /// PEM (the configuration names them).
    pub fn new(deps: FederationDeps) -> Result<Self, String> {
        let policy = ServerPolicy::new(&deps.config.allow, &deps.config.deny);
        let mut pinned = HashMap::new();
        for (server, keys) in &deps.config.pinned_keys {
            let server = ServerName::parse(server).map_err(|e| format!("pinned_keys: {server}: {e}"))?;
            let mut decoded = BTreeMap::new();
            for (key_id, key) in keys {
                if !key_id.starts_with("ed25519:") {
                    return Err(format!("pinned_keys: {server}: key ids look like ed25519:<version>, not {key_id}"));
                }
                let bytes = keys::decode_base64(key).filter(|b| b.len() == 32);
                decoded.insert(
                    key_id.clone(),
                    bytes.ok_or_else(|| format!("pinned_keys: {server}: {key_id} is not a base64 ed25519 key"))?,
                );
            }
            pinned.insert(server, decoded);
        }
        let extra_roots = match &deps.config.extra_ca_pem {
            Some(pem) => {
                let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| format!("ca_file: {e}"))?;
                if certs.is_empty() {
                    return Err("ca_file: no certificate in it".into());
                }
                certs
            }
            None => Vec::new(),
        };
        let well_known = ServerDiscovery::well_known_client_builder()
            .tls_certs_merge(extra_roots.clone())
            .build()
            .map_err(|e| format!("building the well-known client: {e}"))?;
        let discovery = ServerDiscovery::new(ServerDiscoveryDeps {
            http: well_known,
            clock: deps.clock.clone(),
            entropy: deps.entropy.clone(),
        });
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(FEDERATION_CONNECT_TIMEOUT_MS))
            .timeout(Duration::from_millis(FEDERATION_REQUEST_TIMEOUT_MS))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("Chancery/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(discovery.dns_resolver())
            .tls_certs_merge(extra_roots)
            .build()
            .map_err(|e| format!("building the federation client: {e}"))?;
        let inbound_rate = crate::ratelimit::RateLimiter::new(deps.config.requests_per_origin, true);
        Ok(Self {
            deps,
            policy,
            pinned,
            http,
            discovery,
            keys: Mutex::new(KeyCache::new(MAX_CACHED_SERVER_KEYS)),
            inbound: Mutex::new(HashMap::new()),
            inbound_rate,
        })
    }

    pub fn server_name(&self) -> &ServerName {
        &self.deps.server_name
    }

    /// The key this server signs events and requests with.
    pub(crate) fn signing_key(&self) -> &Ed25519KeyPair {
        &self.deps.signing_key
    }

    pub fn enabled(&self) -> bool {
        self.deps.config.enabled
    }

    /// This server's key document, signed, as `/_matrix/key/v2/server`
    /// serves it.
    pub fn own_keys(&self) -> CanonicalJsonObject {
        keys::own_document(
            &self.deps.server_name,
            &self.deps.signing_key,
            &self.deps.old_keys,
            self.deps.clock.now_ms(),
            SERVER_KEY_VALIDITY_MS,
        )
    }

    fn permit(&self, server: &ServerName) -> Result<(), FederationError> {
        if !self.deps.config.enabled {
            return Err(FederationError::Disabled);
        }
        if server == self.deps.server_name || !self.policy.permits(server) {
            return Err(FederationError::NotPermitted(server.to_owned()));
        }
        Ok(())
    }

    // ----- inbound -----

    /// Authenticates a request another server signed: the `X-Matrix`
    /// header, its origin against the policy, its destination, and its
    /// signature against the origin's current keys. Returns the origin.
    pub async fn authenticate(
        &self,
        authorization: Option<&str>,
        method: &http::Method,
        uri: &http::Uri,
        body: &[u8],
    ) -> Result<OwnedServerName, Error> {
        let header = authorization.ok_or_else(|| Error::Unauthorized("this endpoint needs an X-Matrix signature".into()))?;
        let xmatrix = XMatrix::parse(header).map_err(|e| Error::Unauthorized(format!("bad X-Matrix header: {e}")))?;
        let origin = xmatrix.origin.clone();
        match self.permit(&origin) {
            Ok(()) => {}
            Err(FederationError::Disabled) => return Err(Error::Forbidden("federation is disabled on this server".into())),
            Err(_) => return Err(Error::Forbidden(format!("{origin} is not a server this one federates with"))),
        }
        let key_id = xmatrix.key.to_string();
        let key = self.request_key(&origin, &key_id).await?;
        let mut request = http::Request::new(body);
        *request.method_mut() = method.clone();
        *request.uri_mut() = uri.clone();
        let keys = BTreeMap::from([(origin.to_string(), BTreeMap::from([(key_id, Base64::new(key))]))]);
        xmatrix
            .verify_request(&request, &self.deps.server_name, &keys)
            .map_err(|e| Error::Unauthorized(format!("the X-Matrix signature does not verify: {e}")))?;
        Ok(origin)
    }

    /// A place among `origin`'s requests in flight, or 429
    /// `M_LIMIT_EXCEEDED` (with `retry_after_ms`) past
    /// [`MAX_INBOUND_REQUESTS_PER_ORIGIN`] or past the origin's rate
    /// (`requests_per_origin`, when `rate_limited`): one server cannot
    /// take every worker.
    pub fn admit(&self, origin: &ServerName, rate_limited: bool) -> Result<InboundPermit, Error> {
        if rate_limited {
            self.inbound_rate.check(origin.as_str())?;
        }
        let semaphore = {
            let mut inbound = self.inbound.lock().expect("inbound lock");
            if inbound.len() >= MAX_CACHED_SERVER_KEYS {
                // Idle origins hold no permit: forget them.
                inbound.retain(|_, s| s.available_permits() < MAX_INBOUND_REQUESTS_PER_ORIGIN);
            }
            inbound
                .entry(origin.to_owned())
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(MAX_INBOUND_REQUESTS_PER_ORIGIN)))
                .clone()
        };
        semaphore
            .try_acquire_owned()
            .map(|permit| InboundPermit { _permit: permit })
            .map_err(|_| Error::LimitExceeded { retry_after_ms: 1_000 })
    }

    /// The public key `key_id` of `server`, valid now: a pinned one, or one
    /// from its key document (fetched when not known or expired).
    async fn request_key(&self, server: &ServerName, key_id: &str) -> Result<Vec<u8>, Error> {
        if let Some(pinned) = self.pinned.get(server) {
            return pinned
                .get(key_id)
                .cloned()
                .ok_or_else(|| Error::Unauthorized(format!("{key_id} is not a key pinned for {server}")));
        }
        let now = self.deps.clock.now_ms();
        let known = self.server_keys(server, now).await?;
        known
            .request_key(key_id, now)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| Error::Unauthorized(format!("{server} has no valid key {key_id}")))
    }

    /// `server`'s keys valid after `now_ms`, from memory or fetched from it.
    async fn server_keys(&self, server: &ServerName, now_ms: u64) -> Result<Arc<KnownKeys>, Error> {
        {
            let cache = self.keys.lock().expect("key cache lock");
            if let Some(known) = cache.get(server).filter(|k| k.valid_until_ts > now_ms) {
                return Ok(known.clone());
            }
            if cache.recently_failed(server, now_ms) {
                return Err(Error::Unauthorized(format!("the keys of {server} could not be fetched; try again later")));
            }
        }
        match self.fetch_keys(server, now_ms).await {
            Ok(known) => {
                let known = Arc::new(known);
                self.keys.lock().expect("key cache lock").insert(server.to_owned(), known.clone());
                Ok(known)
            }
            Err(e) => {
                tracing::info!(server = %server, error = %e, "fetching a server's keys failed");
                self.keys.lock().expect("key cache lock").note_failure(server.to_owned(), now_ms + SERVER_KEY_FAILURE_BACKOFF_MS);
                Err(Error::Unauthorized(format!("the keys of {server} could not be fetched: {e}")))
            }
        }
    }

    async fn fetch_keys(&self, server: &ServerName, now_ms: u64) -> Result<KnownKeys, String> {
        let answer = self.send_unsigned(server, get_server_keys::v2::Request::new()).await.map_err(|e| e.to_string())?;
        let document: CanonicalJsonObject = serde_json::from_str(answer.server_key.json().get()).map_err(|e| e.to_string())?;
        keys::check_document(server, document, None, now_ms).map_err(|e| e.to_string())
    }

    /// The public keys of `servers` to check event signatures with: this
    /// server's own, pinned ones, or those of the servers' key documents
    /// (current and old keys; the spec checks an old key against the
    /// event's time, which the caller's check does not see, so old keys
    /// count as the servers published them).
    pub async fn event_keys(&self, servers: &[OwnedServerName]) -> Result<PublicKeyMap, Error> {
        let mut map = PublicKeyMap::new();
        let now = self.deps.clock.now_ms();
        for server in servers {
            let mut set = BTreeMap::new();
            if *server == self.deps.server_name {
                let id = format!("ed25519:{}", self.deps.signing_key.version());
                set.insert(id, Base64::new(self.deps.signing_key.public_key().to_vec()));
                set.extend(self.deps.old_keys.iter().map(|old| (old.key_id.clone(), Base64::new(old.public_key.clone()))));
            } else if let Some(pinned) = self.pinned.get(server) {
                set.extend(pinned.iter().map(|(id, key)| (id.clone(), Base64::new(key.clone()))));
            } else {
                if !self.policy.permits(server) {
                    return Err(Error::Forbidden(format!("{server} is not a server this one federates with")));
                }
                let known = self.server_keys(server, now).await?;
                set.extend(known.verify_keys.iter().map(|(id, key)| (id.clone(), Base64::new(key.clone()))));
                set.extend(known.old_verify_keys.iter().map(|(id, (key, _))| (id.clone(), Base64::new(key.clone()))));
            }
            map.insert(server.to_string(), set);
        }
        Ok(map)
    }

    /// The notary answer (`/_matrix/key/v2/query`): for each server named,
    /// its key document valid at least until `minimum_valid_until_ts`
    /// (fetched again if what is known expires sooner), countersigned by
    /// this server. A server whose keys cannot be had is left out.
    pub async fn notary_keys(&self, servers: Vec<(OwnedServerName, Option<u64>)>) -> Result<Vec<CanonicalJsonObject>, Error> {
        if servers.len() > MAX_NOTARY_QUERY_SERVERS {
            return Err(Error::TooLarge(format!("at most {MAX_NOTARY_QUERY_SERVERS} servers per key query")));
        }
        let mut answers = Vec::new();
        for (server, minimum) in servers {
            if server == self.deps.server_name {
                answers.push(self.own_keys());
                continue;
            }
            if self.permit(&server).is_err() {
                continue;
            }
            let now = self.deps.clock.now_ms();
            let at_least = minimum.unwrap_or(now).max(now);
            if let Ok(known) = self.server_keys(&server, at_least).await {
                answers.push(keys::countersign(&self.deps.server_name, &self.deps.signing_key, &known.document));
            }
        }
        Ok(answers)
    }

    // ----- outbound -----

    /// Where requests to `server` go (spec "Resolving server names").
    async fn destination(&self, server: &ServerName) -> Result<Destination, FederationError> {
        self.discovery
            .resolve(server)
            .await
            .map_err(|e| FederationError::Unreachable { server: server.to_owned(), reason: e.to_string() })
    }

    /// Steps 1–3 of the checks on a received PDU (server-server API,
    /// "Checks performed on receipt of a PDU"): size, format, the
    /// signatures of the servers that must have signed it (keys fetched as
    /// needed), content hash (a mismatch keeps it redacted).
    pub async fn check_pdu(&self, room_version: &RoomVersionId, raw: &RawJsonValue) -> Result<Pdu, Error> {
        if raw.get().len() > chancery_proto::limits::MAX_PDU_BYTES {
            return Err(Error::TooLarge("the event is larger than 65,536 bytes".into()));
        }
        let rules = crate::rooms::rules_of(room_version)?;
        let object: CanonicalJsonObject =
            serde_json::from_str(raw.get()).map_err(|e| Error::BadJson(format!("not a PDU: {e}")))?;
        let servers = pdu::servers_to_verify(&object, &rules)?;
        let keys = self.event_keys(&servers).await?;
        Ok(pdu::check_received(object, &rules, &keys)?)
    }

    /// Sends a signed request to `destination`.
    pub async fn send<R>(&self, destination: &ServerName, request: R) -> Result<R::IncomingResponse, FederationError>
    where
        R: OutgoingRequest + Metadata<Authentication = ServerSignatures, PathBuilder = SinglePath>,
    {
        self.permit(destination)?;
        let target = self.destination(destination).await?;
        let input = ServerSignaturesInput::new(self.deps.server_name.clone(), destination.to_owned(), &self.deps.signing_key);
        let request = request
            .try_into_http_request::<Vec<u8>>(&target.url_base, input, ())
            .map_err(|e| FederationError::Build(e.to_string()))?;
        self.execute::<R::IncomingResponse>(destination, &target, request).await
    }

    /// Sends a request that needs no signature (key fetches).
    async fn send_unsigned<R>(&self, destination: &ServerName, request: R) -> Result<R::IncomingResponse, FederationError>
    where
        R: OutgoingRequest + Metadata<Authentication = NoAuthentication, PathBuilder = SinglePath>,
    {
        self.permit(destination)?;
        let target = self.destination(destination).await?;
        let request = request
            .try_into_http_request::<Vec<u8>>(&target.url_base, (), ())
            .map_err(|e| FederationError::Build(e.to_string()))?;
        self.execute::<R::IncomingResponse>(destination, &target, request).await
    }

    async fn execute<T: IncomingResponse>(
        &self,
        server: &ServerName,
        target: &Destination,
        mut request: http::Request<Vec<u8>>,
    ) -> Result<T, FederationError> {
        let unreachable = |e: reqwest::Error| FederationError::Unreachable { server: server.to_owned(), reason: error_chain(&e) };
        // The spec's Host header (no port after an SRV answer or the 8448
        // default), not what the URL would give.
        let host = http::HeaderValue::from_str(&target.host_header).map_err(|e| FederationError::Build(e.to_string()))?;
        request.headers_mut().insert(http::header::HOST, host);
        let request = reqwest::Request::try_from(request).map_err(|e| FederationError::Build(e.to_string()))?;
        let mut response = self.http.execute(request).await.map_err(unreachable)?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
            if body.len() + chunk.len() > MAX_FEDERATION_RESPONSE_BYTES {
                return Err(FederationError::TooLarge { server: server.to_owned() });
            }
            body.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            let errcode = serde_json::from_slice::<JsonValue>(&body)
                .ok()
                .and_then(|v| v.get("errcode").and_then(JsonValue::as_str).map(str::to_owned));
            let text: String = String::from_utf8_lossy(&body).chars().take(200).collect();
            return Err(FederationError::Remote { server: server.to_owned(), status: status.as_u16(), errcode, body: text });
        }
        let mut answer = http::Response::builder().status(status);
        if let Some(headers) = answer.headers_mut() {
            *headers = response.headers().clone();
        }
        let answer =
            answer.body(body).map_err(|e| FederationError::BadAnswer { server: server.to_owned(), reason: e.to_string() })?;
        T::try_from_http_response(answer)
            .map_err(|e| FederationError::BadAnswer { server: server.to_owned(), reason: e.to_string() })
    }

    // ----- queries other servers answer -----

    /// A remote user's profile (all of it, or one field).
    pub async fn query_profile(&self, user_id: &UserId, field: Option<&str>) -> Result<BTreeMap<String, JsonValue>, Error> {
        let mut request = get_profile_information::v1::Request::new(user_id.to_owned());
        request.field = field.map(Into::into);
        let answer = self.send(user_id.server_name(), request).await?;
        Ok(answer.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    /// A page of another server's public room directory.
    pub async fn public_rooms(
        &self,
        server: &ServerName,
        req: &crate::directory::PublicRoomsRequest,
    ) -> Result<JsonValue, Error> {
        use chancery_proto::ruma::api::federation::directory::get_public_rooms_filtered;
        use chancery_proto::ruma::directory::{Filter, RoomNetwork, RoomTypeFilter};
        let mut request = get_public_rooms_filtered::v1::Request::new();
        request.limit = req.limit.and_then(chancery_proto::ruma::UInt::new);
        request.since = req.since.clone();
        let mut filter = Filter::new();
        filter.generic_search_term = req.search.clone();
        filter.room_types = req.room_types.iter().map(|t| RoomTypeFilter::from(t.clone())).collect();
        request.filter = filter;
        request.room_network = RoomNetwork::Matrix;
        let answer = self.send(server, request).await?;
        Ok(serde_json::json!({
            "chunk": answer.chunk,
            "next_batch": answer.next_batch,
            "prev_batch": answer.prev_batch,
            "total_room_count_estimate": answer.total_room_count_estimate,
        }))
    }

    /// A remote room alias: the room and servers that may be asked to join.
    pub async fn query_alias(&self, alias: &RoomAliasId) -> Result<(OwnedRoomId, Vec<OwnedServerName>), Error> {
        let answer = self.send(alias.server_name(), get_room_information::v1::Request::new(alias.to_owned())).await?;
        Ok((answer.room_id, answer.servers))
    }
}

/// An error and its sources, for logs and messages (reqwest's own display
/// hides why a TLS handshake failed).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    let mut depth = 0;
    while let Some(s) = source {
        depth += 1;
        if depth > 8 {
            break;
        }
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
