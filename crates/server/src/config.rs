//! The TOML configuration, with every key overridable by an environment
//! variable: `CHANCERY_<KEY>` for top-level keys, `CHANCERY_<SECTION>__<KEY>`
//! for keys in a section (e.g. `CHANCERY_RATE_LIMITS__ENABLED=false`).
//! A wrong value stops start-up with one line naming the key.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use chancery_proto::limits;
use chancery_proto::ruma::{OwnedServerName, ServerName};
pub use chancery_service::rooms::EncryptionByDefault;
pub use chancery_service::{RateLimitConfig, RegistrationMode};
use serde::{Deserialize, Serialize};

/// The commented file written on first run.
pub const TEMPLATE: &str = include_str!("../chancery.example.toml");

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server_name: String,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// `sqlite:PATH` or `postgres://...`; default `sqlite:<data_dir>/chancery.db`.
    pub database_url: Option<String>,
    pub registration: RegistrationMode,
    pub public_baseurl: Option<String>,
    pub federation_address: Option<String>,
    pub reserved_usernames: Vec<String>,
    pub password_min_length: usize,
    pub access_token_lifetime_ms: u64,
    pub trust_forwarded_for: bool,
    /// Room version of new rooms: "10", "11" or "12".
    pub default_room_version: String,
    /// Which new rooms are end-to-end encrypted from their creation:
    /// `invite` (rooms of the private presets, the default), `all`, `off`.
    pub encryption_by_default: EncryptionByDefault,
    /// The server's ed25519 signing key; default `<data_dir>/signing.key`.
    /// Nodes sharing one database must share this file.
    pub signing_key_path: Option<PathBuf>,
    pub limits: LimitsConfig,
    pub user_directory: UserDirectoryConfig,
    pub presence: PresenceConfig,
    pub experimental: ExperimentalConfig,
    pub rate_limits: RateLimitConfig,
    pub retention: RetentionConfig,
    pub push: PushConfig,
    pub media: MediaSection,
    pub delayed_events: DelayedEventsSection,
    /// `[calls]`: Element Call meetings. Absent, no call transport is
    /// advertised and the token service is not served.
    pub calls: Option<CallsSection>,
    pub database: DatabaseConfig,
    pub log: LogConfig,
    pub metrics: MetricsConfig,
    pub sfu: SfuSection,
    pub federation: FederationSection,
}

/// `[federation]`: the server-server API. Off unless enabled; when on it
/// is served over TLS on its own listener, and the client API keeps its
/// own.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FederationSection {
    pub enabled: bool,
    /// The TLS listener of the server-server API.
    pub listen: SocketAddr,
    /// PEM files: the certificate chain other servers check against this
    /// server's name, and its private key.
    pub tls_certificate: Option<PathBuf>,
    pub tls_private_key: Option<PathBuf>,
    /// Extra trust roots (PEM) for outbound TLS, beside the system's (a
    /// state's own CA).
    pub ca_file: Option<PathBuf>,
    /// Servers federated with (names, `*` and `?` wildcards); empty: all
    /// but `deny`. With a list, nothing outside it is contacted or heard.
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    /// Per server, the only signing keys believed for it:
    /// `[federation.pinned_keys."other.gouv.fr"]` then
    /// `"ed25519:abc" = "<base64 public key>"`.
    pub pinned_keys: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
    /// Requests one other server may make: a sustained rate and a burst
    /// (429 `M_LIMIT_EXCEEDED` past it), beside at most 32 in flight.
    pub requests_per_origin: chancery_service::RateLimit,
}

impl Default for FederationSection {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: SocketAddr::from(([0, 0, 0, 0], 8448)),
            tls_certificate: None,
            tls_private_key: None,
            ca_file: None,
            allow: Vec::new(),
            deny: Vec::new(),
            pinned_keys: Default::default(),
            requests_per_origin: chancery_service::federation::DEFAULT_REQUESTS_PER_ORIGIN,
        }
    }
}

/// `[media]`: the content repository.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaSection {
    /// Where media files live; default `<data_dir>/media`. Nodes sharing a
    /// database must share this directory (like the signing key).
    pub path: Option<PathBuf>,
    /// Largest upload (413 `M_TOO_LARGE` past it); also the request body
    /// bound of the upload endpoints, which stream to disk.
    pub max_upload_bytes: u64,
    /// Bytes of uploads each user may keep (403 `M_FORBIDDEN` past it).
    pub max_bytes_per_user: u64,
    /// Serve `preview_url`: the server then fetches pages clients name.
    pub url_preview: bool,
    /// Address ranges (CIDR) previews may fetch although they are
    /// internal (loopback, private, link-local, ...), e.g. an intranet.
    pub url_preview_allow_ranges: Vec<String>,
    /// The boxes thumbnails are made for.
    pub thumbnail_sizes: Vec<ThumbnailSize>,
    /// Images decoded for thumbnails at once.
    pub max_concurrent_thumbnails: usize,
    /// An upload must arrive whole within this time (the general
    /// `limits.request_timeout_ms` is for JSON requests).
    pub upload_timeout_ms: u64,
}

/// `[calls]`: the LiveKit SFU calls go through, and the token service
/// (lk-jwt-service compatible) this server runs for it at
/// `<public_baseurl>/livekit/jwt`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallsSection {
    /// The SFU's WebSocket URL as clients reach it (`wss://…`).
    pub livekit_url: String,
    /// The API key and secret the SFU knows (its `keys:`); tokens are
    /// signed with the secret.
    pub livekit_api_key: String,
    pub livekit_api_secret: String,
    /// Users of these servers may create rooms on the SFU (lk-jwt-service's
    /// full-access homeservers; `["*"]` for all). Default: this server.
    #[serde(default)]
    pub room_create_servers: Option<Vec<String>>,
}

/// One thumbnail box: `{ width = 96, height = 96, method = "crop" }`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ThumbnailSize {
    pub width: u32,
    pub height: u32,
    /// `scale` or `crop`.
    pub method: String,
}

impl Default for MediaSection {
    fn default() -> Self {
        let sizes = chancery_service::media::default_thumbnail_sizes();
        Self {
            path: None,
            max_upload_bytes: limits::MAX_UPLOAD_BYTES,
            max_bytes_per_user: limits::MAX_MEDIA_BYTES_PER_USER,
            url_preview: false,
            url_preview_allow_ranges: Vec::new(),
            thumbnail_sizes: sizes
                .iter()
                .map(|k| ThumbnailSize { width: k.width, height: k.height, method: k.method.as_str().into() })
                .collect(),
            max_concurrent_thumbnails: limits::MAX_CONCURRENT_THUMBNAILS,
            upload_timeout_ms: 10 * 60 * 1000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_request_body_bytes: usize,
    pub max_devices_per_user: usize,
    /// Open client connections in all; past it a new one is answered 503.
    pub max_connections: usize,
    /// Open connections from one address (IPv6: one /64); past it a new
    /// one is answered 429. Not applied with `trust_forwarded_for`, where
    /// every connection comes from the proxy.
    pub max_connections_per_address: usize,
    /// A request head must arrive within this time, and a kept-alive
    /// connection sending no new request is closed after it.
    pub header_read_timeout_ms: u64,
    /// A request body must arrive whole within this time (408 otherwise).
    pub body_read_timeout_ms: u64,
    /// A request must be answered within this time (503 otherwise);
    /// `/sync` long-polls wait at most nine tenths of it.
    pub request_timeout_ms: u64,
    /// On shutdown, how long requests in flight may take to finish
    /// before their connections are closed.
    pub shutdown_drain_ms: u64,
}

/// `[delayed_events]`: delayed events (MSC4140), which Element Call's
/// membership and every call's "leave" need.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DelayedEventsSection {
    /// Off: the `org.matrix.msc4140.delay` parameter is refused (403),
    /// the `delayed_events` endpoints are not routed and `/versions` does
    /// not advertise `org.matrix.msc4140`.
    pub enabled: bool,
    /// The longest delay a client may ask for (Synapse's
    /// `max_event_delay_duration`); past it 400 `M_MAX_DELAY_EXCEEDED`.
    pub max_delay_ms: u64,
    /// Delayed events one user may have scheduled at once (Synapse's
    /// `msc4140_max_delayed_events_per_user`); past it 429.
    pub max_per_user: usize,
}

impl Default for DelayedEventsSection {
    fn default() -> Self {
        Self { enabled: true, max_delay_ms: limits::MAX_EVENT_DELAY_MS, max_per_user: limits::MAX_DELAYED_EVENTS_PER_USER }
    }
}

/// `[experimental]`: features of unstable MSCs, off until their clients
/// and the proposals settle (Synapse's `experimental_features`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExperimentalConfig {
    /// Thread subscriptions (MSC4306) and their sliding-sync extension
    /// (MSC4308), as Element X uses them (Synapse's `msc4306_enabled`).
    /// When on, a reply in a thread notifies only the users subscribed to
    /// it (and those it mentions): clients that do not subscribe to
    /// threads (Element Web today) then hear of no thread replies.
    pub thread_subscriptions: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceConfig {
    /// Share online/away status between users who share a room. Kept in
    /// memory only; off by default (metadata minimisation).
    pub enabled: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UserDirectoryConfig {
    /// Search every local user, not only those sharing a room with the
    /// searcher or in public rooms (a ministry-wide phone book).
    pub search_all_users: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Days a notification is kept (`GET /notifications`, and the unread
    /// notification counts, which therefore cover this many days).
    pub notifications_days: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self { notifications_days: 30 }
    }
}

/// Push notifications to phones, through the push gateways their apps
/// name (`POST /pushers/set`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PushConfig {
    /// Accept push gateways at plain `http://` URLs (the spec asks for
    /// https): only for a gateway on a network you trust.
    pub allow_http_gateways: bool,
    /// Accept push gateways at loopback, private or link-local addresses
    /// (a gateway inside the institution's network). Off, no user can
    /// make the server send requests into its own network.
    pub allow_private_gateway_addresses: bool,
    /// The badge (`counts.unread`) counts rooms with unread notifications,
    /// as Synapse does by default; false counts the notifications.
    pub group_unread_count_by_room: bool,
    /// The wait after a gateway's first failure; it doubles with each
    /// failure after, up to `retry_max_ms`.
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            allow_http_gateways: false,
            allow_private_gateway_addresses: false,
            group_unread_count_by_room: true,
            retry_initial_ms: 1_000,
            retry_max_ms: 60 * 60 * 1000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    pub sqlite_readers: usize,
    pub postgres_max_connections: usize,
    /// How long one database statement may run (reads whose size grows
    /// with a room or the server); past it the request is answered 503.
    pub query_timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `chancery_api=debug,info`;
    /// `RUST_LOG` wins when set.
    pub level: String,
    /// Write client addresses into request logs.
    pub client_address: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address of the Prometheus listener; metrics are off when unset.
    pub listen: Option<SocketAddr>,
}

/// `[sfu]`: the built-in SFU (LiveKit client protocol). Off unless
/// enabled; its WebSocket is `<public base>/_chancery/livekit/rtc`, so the
/// LiveKit URL handed to clients is `wss://<host>/_chancery/livekit`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SfuSection {
    pub enabled: bool,
    /// The one UDP socket all media uses (ICE-lite, one port).
    pub udp_listen: SocketAddr,
    /// The address clients reach that socket at, announced as the ICE
    /// candidate; default the bound address (which must then not be a
    /// wildcard).
    pub public_address: Option<std::net::IpAddr>,
    /// Access tokens must be issued by this key and signed (HS256) with
    /// this secret.
    pub api_key: String,
    pub api_secret: String,
    pub max_rooms: usize,
    pub max_participants_per_room: usize,
    pub max_tracks_per_participant: usize,
    /// RTP payload bits a second one publisher may send, all its tracks and
    /// simulcast layers together; packets beyond are not forwarded (a
    /// guard against a misbehaving client, far above livekit-client's
    /// 2.5–5 Mbit/s).
    pub max_publisher_bitrate: u64,
    /// Data channel bytes and packets a second one participant may send
    /// (one second's worth may come at once); more is dropped.
    pub data_bytes_per_second: u64,
    pub data_packets_per_second: u64,
}

impl Default for SfuSection {
    fn default() -> Self {
        Self {
            enabled: false,
            udp_listen: SocketAddr::from(([127, 0, 0, 1], 7882)),
            public_address: None,
            api_key: String::new(),
            api_secret: String::new(),
            max_rooms: 256,
            max_participants_per_room: 64,
            max_tracks_per_participant: 8,
            max_publisher_bitrate: 20_000_000,
            data_bytes_per_second: 1024 * 1024,
            data_packets_per_second: 200,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server_name: "localhost".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8008)),
            data_dir: PathBuf::from("./data"),
            database_url: None,
            registration: RegistrationMode::Disabled,
            public_baseurl: None,
            federation_address: None,
            reserved_usernames: Vec::new(),
            password_min_length: 8,
            access_token_lifetime_ms: limits::ACCESS_TOKEN_LIFETIME_MS,
            trust_forwarded_for: false,
            default_room_version: "11".into(),
            encryption_by_default: EncryptionByDefault::default(),
            signing_key_path: None,
            limits: LimitsConfig::default(),
            user_directory: UserDirectoryConfig::default(),
            presence: PresenceConfig::default(),
            experimental: ExperimentalConfig::default(),
            rate_limits: RateLimitConfig::default(),
            retention: RetentionConfig::default(),
            push: PushConfig::default(),
            media: MediaSection::default(),
            delayed_events: DelayedEventsSection::default(),
            calls: None,
            database: DatabaseConfig::default(),
            log: LogConfig::default(),
            metrics: MetricsConfig::default(),
            sfu: SfuSection::default(),
            federation: FederationSection::default(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_request_body_bytes: limits::MAX_REQUEST_BODY_BYTES,
            max_devices_per_user: limits::MAX_DEVICES_PER_USER,
            max_connections: 10_000,
            max_connections_per_address: 1_000,
            header_read_timeout_ms: 30_000,
            body_read_timeout_ms: 60_000,
            request_timeout_ms: 120_000,
            shutdown_drain_ms: 10_000,
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self { sqlite_readers: 4, postgres_max_connections: 16, query_timeout_ms: 20_000 }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Text, level: "info".into(), client_address: false }
    }
}

/// A configuration problem, naming the key.
#[derive(Debug, thiserror::Error)]
#[error("config error: {0}")]
pub struct ConfigError(pub String);

fn err(key: &str, source: Option<&str>, problem: impl std::fmt::Display) -> ConfigError {
    match source {
        Some(var) => ConfigError(format!("key `{key}` (from {var}): {problem}")),
        None => ConfigError(format!("key `{key}`: {problem}")),
    }
}

/// The database a config points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    Sqlite(PathBuf),
    Postgres(String),
}

impl Config {
    /// Parses TOML text, applies `CHANCERY_*` variables from `env`, and
    /// validates.
    pub fn load(toml_text: &str, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, ConfigError> {
        let mut table: toml::Table =
            toml_text.parse().map_err(|e: toml::de::Error| ConfigError(format!("invalid TOML: {}", e.message())))?;
        let mut from_env: Vec<(String, String)> = Vec::new();
        let mut raw_values: Vec<(String, String)> = Vec::new();
        for (var, value) in env {
            let Some(rest) = var.strip_prefix("CHANCERY_") else { continue };
            if rest == "CONFIG" {
                continue;
            }
            let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
            set_path(&mut table, &path, env_value(&value));
            raw_values.push((var.clone(), value));
            from_env.push((path.join("."), var));
        }
        // Environment values are typed by their look ("9" is a number);
        // where the key wants a string, the same text is retried as one.
        let config: Config = loop {
            let error = match serde_path_to_error::deserialize(toml::Value::Table(table.clone())) {
                Ok(config) => break config,
                Err(e) => e,
            };
            let key = error.path().to_string();
            let var =
                from_env.iter().find(|(k, _)| key.starts_with(k.as_str()) || k.starts_with(key.as_str())).map(|(_, v)| v.clone());
            // An environment variable that names no key (orchestrators set
            // `CHANCERY_PORT` and the like for a service called chancery) is
            // ignored with a warning instead of stopping the server; a
            // wrong key in the file still stops it.
            if error.inner().message().starts_with("unknown field")
                && let Some((env_key, env_var)) = from_env.iter().find(|(k, _)| *k == key).cloned()
            {
                let path: Vec<String> = env_key.split('.').map(str::to_owned).collect();
                remove_path(&mut table, &path);
                from_env.retain(|(k, _)| *k != env_key);
                eprintln!("warning: ignoring {env_var}: no config key `{env_key}`");
                continue;
            }
            if let Some(var) = &var
                && error.inner().message().contains("expected a string")
                && let Ok(raw) = env_raw(&raw_values, var)
            {
                let path: Vec<String> = key.split('.').map(str::to_owned).collect();
                if get_path(&table, &path).is_some_and(|v| !v.is_str()) {
                    set_path(&mut table, &path, toml::Value::String(raw));
                    continue;
                }
            }
            return Err(err(if key == "." { "(top level)" } else { &key }, var.as_deref(), error.inner().message()));
        };
        config.validate(&from_env)?;
        Ok(config)
    }

    fn validate(&self, from_env: &[(String, String)]) -> Result<(), ConfigError> {
        let var_of = |key: &str| from_env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
        ServerName::parse(&self.server_name)
            .map_err(|e| err("server_name", var_of("server_name"), format!("not a valid server name: {e}")))?;
        if let Some(url) = &self.database_url {
            parse_database_url(url).map_err(|p| err("database_url", var_of("database_url"), p))?;
        }
        if let Some(url) = &self.public_baseurl
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err(err("public_baseurl", var_of("public_baseurl"), "must start with https:// or http://"));
        }
        if chancery_service::rooms::supported_room_version(&self.default_room_version).is_none() {
            let supported: Vec<&str> = chancery_service::rooms::SUPPORTED_ROOM_VERSIONS.iter().map(|v| v.as_str()).collect();
            let supported = supported.join(", ");
            return Err(err("default_room_version", var_of("default_room_version"), format!("must be one of {supported}")));
        }
        if self.password_min_length > limits::MAX_PASSWORD_BYTES {
            return Err(err(
                "password_min_length",
                var_of("password_min_length"),
                format!("at most {}", limits::MAX_PASSWORD_BYTES),
            ));
        }
        if self.limits.max_request_body_bytes < 1024 {
            let key = "limits.max_request_body_bytes";
            return Err(err(key, var_of(key), "must be at least 1024"));
        }
        for (key, value, min) in [
            ("limits.max_connections", self.limits.max_connections as u64, 1),
            ("limits.max_connections_per_address", self.limits.max_connections_per_address as u64, 1),
            ("limits.header_read_timeout_ms", self.limits.header_read_timeout_ms, 100),
            ("limits.body_read_timeout_ms", self.limits.body_read_timeout_ms, 100),
            ("limits.request_timeout_ms", self.limits.request_timeout_ms, 1_000),
        ] {
            if value < min {
                return Err(err(key, var_of(key), format!("must be at least {min}")));
            }
        }
        if self.limits.max_connections > tokio::sync::Semaphore::MAX_PERMITS {
            let key = "limits.max_connections";
            return Err(err(key, var_of(key), format!("at most {}", tokio::sync::Semaphore::MAX_PERMITS)));
        }
        if self.sfu.enabled {
            // Both unset: generated at startup (`fill_sfu_keys`).
            let generated = self.sfu.api_key.is_empty() && self.sfu.api_secret.is_empty();
            if !generated && self.sfu.api_key.is_empty() {
                let key = "sfu.api_key";
                return Err(err(
                    key,
                    var_of(key),
                    "must be set when sfu.api_secret is (or leave both unset to have them generated)",
                ));
            }
            if !generated && self.sfu.api_secret.len() < 32 {
                let key = "sfu.api_secret";
                return Err(err(
                    key,
                    var_of(key),
                    "must be at least 32 characters when sfu.api_key is set (or leave both unset to have them generated)",
                ));
            }
            if self.sfu.udp_listen.ip().is_unspecified() && self.sfu.public_address.is_none() {
                let key = "sfu.public_address";
                return Err(err(key, var_of(key), "must be set when sfu.udp_listen is a wildcard address"));
            }
            for (key, value) in [
                ("sfu.max_rooms", self.sfu.max_rooms),
                ("sfu.max_participants_per_room", self.sfu.max_participants_per_room),
                ("sfu.max_tracks_per_participant", self.sfu.max_tracks_per_participant),
                ("sfu.max_publisher_bitrate", self.sfu.max_publisher_bitrate as usize),
                ("sfu.data_bytes_per_second", self.sfu.data_bytes_per_second as usize),
                ("sfu.data_packets_per_second", self.sfu.data_packets_per_second as usize),
            ] {
                if value == 0 {
                    return Err(err(key, var_of(key), "must be at least 1"));
                }
            }
        }
        if self.retention.notifications_days == 0 {
            let key = "retention.notifications_days";
            return Err(err(key, var_of(key), "must be at least 1"));
        }
        if self.push.retry_initial_ms < 10 {
            let key = "push.retry_initial_ms";
            return Err(err(key, var_of(key), "must be at least 10"));
        }
        if self.push.retry_max_ms < self.push.retry_initial_ms {
            let key = "push.retry_max_ms";
            return Err(err(key, var_of(key), "must be at least push.retry_initial_ms"));
        }
        if self.database.query_timeout_ms < 100 {
            let key = "database.query_timeout_ms";
            return Err(err(key, var_of(key), "must be at least 100"));
        }
        self.validate_media(&var_of)?;
        if self.federation.enabled {
            for (key, value) in [
                ("federation.tls_certificate", &self.federation.tls_certificate),
                ("federation.tls_private_key", &self.federation.tls_private_key),
            ] {
                if value.is_none() {
                    return Err(err(
                        key,
                        var_of(key),
                        "must be set when federation is enabled (the server-server API is served over TLS)",
                    ));
                }
            }
        }
        for (key, value) in [
            ("delayed_events.max_delay_ms", self.delayed_events.max_delay_ms),
            ("delayed_events.max_per_user", self.delayed_events.max_per_user as u64),
        ] {
            if value == 0 {
                return Err(err(key, var_of(key), "must be at least 1"));
            }
        }
        if let Some(calls) = &self.calls {
            let key = "calls.livekit_url";
            if !(calls.livekit_url.starts_with("wss://") || calls.livekit_url.starts_with("ws://")) {
                return Err(err(key, var_of(key), "must start with wss:// or ws://"));
            }
            for (key, value) in
                [("calls.livekit_api_key", &calls.livekit_api_key), ("calls.livekit_api_secret", &calls.livekit_api_secret)]
            {
                if value.is_empty() {
                    return Err(err(key, var_of(key), "must not be empty"));
                }
            }
        }
        if self.database.sqlite_readers == 0 || self.database.postgres_max_connections == 0 {
            return Err(err("database", None, "connection counts must be at least 1"));
        }
        for (key, limit) in [
            ("rate_limits.login_per_address", self.rate_limits.login_per_address),
            ("rate_limits.login_per_account", self.rate_limits.login_per_account),
            ("rate_limits.register_per_address", self.rate_limits.register_per_address),
            ("rate_limits.uia_per_account", self.rate_limits.uia_per_account),
            ("rate_limits.events_per_user", self.rate_limits.events_per_user),
            ("rate_limits.rooms_per_user", self.rate_limits.rooms_per_user),
            ("rate_limits.invites_per_user", self.rate_limits.invites_per_user),
            ("rate_limits.receipts_per_user", self.rate_limits.receipts_per_user),
        ] {
            if !(limit.per_second.is_finite() && limit.per_second > 0.0) || limit.burst == 0 {
                return Err(err(key, None, "per_second must be > 0 and burst >= 1"));
            }
        }
        Ok(())
    }

    fn validate_media<'a>(&self, var_of: &dyn Fn(&str) -> Option<&'a str>) -> Result<(), ConfigError> {
        let media = &self.media;
        for (key, value, min) in [
            ("media.max_upload_bytes", media.max_upload_bytes, 1),
            ("media.max_bytes_per_user", media.max_bytes_per_user, 1),
            ("media.max_concurrent_thumbnails", media.max_concurrent_thumbnails as u64, 1),
            ("media.upload_timeout_ms", media.upload_timeout_ms, 1_000),
        ] {
            if value < min {
                return Err(err(key, var_of(key), format!("must be at least {min}")));
            }
        }
        if media.max_concurrent_thumbnails > 64 {
            let key = "media.max_concurrent_thumbnails";
            return Err(err(key, var_of(key), "at most 64"));
        }
        self.media_thumbnail_sizes().map_err(|p| err("media.thumbnail_sizes", var_of("media.thumbnail_sizes"), p))?;
        self.media_allow_ranges()
            .map_err(|p| err("media.url_preview_allow_ranges", var_of("media.url_preview_allow_ranges"), p))?;
        Ok(())
    }

    /// The thumbnail boxes, checked.
    pub fn media_thumbnail_sizes(&self) -> Result<Vec<chancery_store::ThumbnailKey>, String> {
        let max = limits::MAX_THUMBNAIL_DIMENSION;
        if self.media.thumbnail_sizes.is_empty() {
            return Err("at least one size is needed".into());
        }
        self.media
            .thumbnail_sizes
            .iter()
            .map(|s| {
                let method = chancery_store::ThumbnailMethod::parse(&s.method)
                    .ok_or_else(|| format!("method `{}` must be `scale` or `crop`", s.method))?;
                if !(1..=max).contains(&s.width) || !(1..=max).contains(&s.height) {
                    return Err(format!("widths and heights are 1 to {max}"));
                }
                Ok(chancery_store::ThumbnailKey { width: s.width, height: s.height, method })
            })
            .collect()
    }

    /// The ranges previews may fetch although internal, checked.
    pub fn media_allow_ranges(&self) -> Result<Vec<chancery_service::media::IpRange>, String> {
        self.media.url_preview_allow_ranges.iter().map(|r| r.parse()).collect()
    }

    /// Where media files live.
    pub fn media_path(&self) -> PathBuf {
        self.media.path.clone().unwrap_or_else(|| self.data_dir.join("media"))
    }

    /// What the HTTP listeners allow their clients.
    pub fn http_limits(&self) -> crate::http::HttpLimits {
        let ms = std::time::Duration::from_millis;
        crate::http::HttpLimits {
            header_read_timeout: ms(self.limits.header_read_timeout_ms),
            max_connections: self.limits.max_connections,
            max_connections_per_address: (!self.trust_forwarded_for).then_some(self.limits.max_connections_per_address),
            shutdown_drain: ms(self.limits.shutdown_drain_ms),
        }
    }

    pub fn server_name(&self) -> OwnedServerName {
        ServerName::parse(&self.server_name).expect("validated in Config::load")
    }

    pub fn database(&self) -> DatabaseUrl {
        match &self.database_url {
            Some(url) => parse_database_url(url).expect("validated in Config::load"),
            None => DatabaseUrl::Sqlite(self.data_dir.join("chancery.db")),
        }
    }

    pub fn signing_key_path(&self) -> PathBuf {
        self.signing_key_path.clone().unwrap_or_else(|| self.data_dir.join("signing.key"))
    }

    pub fn public_baseurl(&self) -> String {
        match &self.public_baseurl {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None if self.server_name == "localhost" => format!("http://{}", self.listen),
            None => format!("https://{}", self.server_name),
        }
    }

    /// Where the token service is reached (MSC4143's `livekit_service_url`):
    /// Element Call POSTs to `<this>/sfu/get` and `<this>/get_token`.
    pub fn livekit_service_url(&self) -> String {
        format!("{}{}", self.public_baseurl(), chancery_api::LIVEKIT_SERVICE_PATH)
    }

    /// The token service's configuration: `[calls]` when present (an
    /// external LiveKit, or the built-in SFU named explicitly); otherwise,
    /// with the built-in SFU enabled, that SFU at
    /// [`Config::builtin_livekit_url`] with `[sfu]`'s key and secret (once
    /// [`Config::fill_sfu_keys`] has set them, if the operator did not).
    /// None: calls are neither served nor advertised.
    pub fn calls_config(&self) -> Option<chancery_service::CallsConfig> {
        let default_servers = || vec![self.server_name.clone()];
        if let Some(calls) = &self.calls {
            return Some(chancery_service::CallsConfig {
                livekit_url: calls.livekit_url.clone(),
                livekit_api_key: calls.livekit_api_key.clone(),
                livekit_api_secret: calls.livekit_api_secret.clone(),
                livekit_service_url: self.livekit_service_url(),
                room_create_servers: calls.room_create_servers.clone().unwrap_or_else(default_servers),
            });
        }
        if !self.sfu.enabled || self.sfu.api_key.is_empty() || self.sfu.api_secret.is_empty() {
            return None;
        }
        Some(chancery_service::CallsConfig {
            livekit_url: self.builtin_livekit_url(),
            livekit_api_key: self.sfu.api_key.clone(),
            livekit_api_secret: self.sfu.api_secret.clone(),
            livekit_service_url: self.livekit_service_url(),
            room_create_servers: default_servers(),
        })
    }

    /// The built-in SFU's LiveKit URL: the public base URL with `ws` for
    /// `http` (`wss` for `https`), followed by `/_chancery/livekit`.
    pub fn builtin_livekit_url(&self) -> String {
        let base = self.public_baseurl();
        let base = match base.strip_prefix("https://") {
            Some(rest) => format!("wss://{rest}"),
            None => format!("ws://{}", base.strip_prefix("http://").unwrap_or(&base)),
        };
        format!("{base}{}", crate::sfu::SFU_PATH)
    }

    /// Whether the token service's tokens are for the built-in SFU, whose
    /// participant events then reach it, so that it can keep delegated
    /// delayed leaves alive and send them (delayed events enabled too).
    pub fn calls_delegate_leaves(&self) -> bool {
        self.sfu.enabled
            && self.delayed_events.enabled
            && self.calls_config().is_some_and(|calls| calls.livekit_api_key == self.sfu.api_key)
    }

    /// Generates `[sfu]`'s API key and secret when the SFU is enabled and
    /// the operator set neither: 256 random bits of secret from `entropy`,
    /// new at each start, never written anywhere (the token service and the
    /// SFU are this one process). Tokens minted before a restart are then
    /// refused after it, as are a node's tokens by another node: set both
    /// explicitly to run several nodes or keep tokens across restarts.
    pub fn fill_sfu_keys(&mut self, entropy: &dyn chancery_service::tokens::Entropy) {
        use chancery_service::tokens::{ALNUM, random_string};
        if self.sfu.enabled && self.sfu.api_key.is_empty() && self.sfu.api_secret.is_empty() {
            self.sfu.api_key = format!("chancery-{}", random_string(entropy, ALNUM, 12));
            self.sfu.api_secret = random_string(entropy, ALNUM, 43);
        }
    }

    /// Where other servers reach this one (`/.well-known/matrix/server`):
    /// `federation_address`, or the server name when it carries a port,
    /// or the name with the federation listener's port.
    pub fn federation_address(&self) -> String {
        if let Some(address) = &self.federation_address {
            return address.clone();
        }
        let name = self.server_name();
        match (name.port(), self.federation.enabled) {
            (Some(_), _) => name.to_string(),
            (None, true) => format!("{}:{}", name.host(), self.federation.listen.port()),
            (None, false) => format!("{}:443", self.server_name),
        }
    }

    /// The federation component's part of the configuration; reads the
    /// extra CA file.
    pub fn federation_config(&self) -> Result<chancery_service::FederationConfig, ConfigError> {
        let extra_ca_pem = match &self.federation.ca_file {
            Some(path) => Some(
                std::fs::read(path).map_err(|e| err("federation.ca_file", None, format!("reading {}: {e}", path.display())))?,
            ),
            None => None,
        };
        Ok(chancery_service::FederationConfig {
            enabled: self.federation.enabled,
            allow: self.federation.allow.clone(),
            deny: self.federation.deny.clone(),
            pinned_keys: self.federation.pinned_keys.clone(),
            extra_ca_pem,
            requests_per_origin: self.federation.requests_per_origin,
        })
    }
}

fn parse_database_url(url: &str) -> Result<DatabaseUrl, String> {
    if let Some(path) = url.strip_prefix("sqlite:") {
        let path = path.strip_prefix("//").unwrap_or(path);
        if path.is_empty() {
            return Err("sqlite: needs a file path, e.g. sqlite:./data/chancery.db".into());
        }
        Ok(DatabaseUrl::Sqlite(PathBuf::from(path)))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(DatabaseUrl::Postgres(url.to_owned()))
    } else {
        Err("must start with sqlite: or postgres://".into())
    }
}

/// An environment value as TOML: numbers and booleans typed, anything else
/// a string.
fn env_value(raw: &str) -> toml::Value {
    let trimmed = raw.trim();
    if let Ok(b) = trimmed.parse::<bool>() {
        return toml::Value::Boolean(b);
    }
    if let Ok(i) = trimmed.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    if let Ok(f) = trimmed.parse::<f64>()
        && trimmed.contains('.')
        && !trimmed.contains(':')
    {
        return toml::Value::Float(f);
    }
    if trimmed.starts_with('[')
        && let Ok(t) = format!("v = {trimmed}").parse::<toml::Table>()
        && let Some(v) = t.get("v")
    {
        return v.clone();
    }
    toml::Value::String(raw.to_owned())
}

fn env_raw(raw_values: &[(String, String)], var: &str) -> Result<String, ()> {
    raw_values.iter().find(|(k, _)| k == var).map(|(_, v)| v.clone()).ok_or(())
}

fn remove_path(table: &mut toml::Table, path: &[String]) {
    match path {
        [] => {}
        [last] => {
            table.remove(last);
        }
        [first, rest @ ..] => {
            if let Some(toml::Value::Table(t)) = table.get_mut(first) {
                remove_path(t, rest);
            }
        }
    }
}

fn get_path<'a>(table: &'a toml::Table, path: &[String]) -> Option<&'a toml::Value> {
    let (first, rest) = path.split_first()?;
    let value = table.get(first)?;
    if rest.is_empty() { Some(value) } else { get_path(value.as_table()?, rest) }
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) {
    match path {
        [] => {}
        [last] => {
            table.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = table.entry(first.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if !entry.is_table() {
                *entry = toml::Value::Table(toml::Table::new());
            }
            if let toml::Value::Table(t) = entry {
                set_path(t, rest, value);
            }
        }
    }
}

/// Where the config comes from: `--config`, else `CHANCERY_CONFIG`, else
/// `./chancery.toml` (written from the template on first run).
pub fn resolve_path(flag: Option<&Path>) -> (PathBuf, bool) {
    if let Some(p) = flag {
        return (p.to_owned(), true);
    }
    if let Ok(p) = std::env::var("CHANCERY_CONFIG")
        && !p.is_empty()
    {
        return (PathBuf::from(p), true);
    }
    (PathBuf::from("chancery.toml"), false)
}

/// Reads the config file (creating the default one if it is the implicit
/// path and missing) and the environment.
pub fn load_from_disk(flag: Option<&Path>) -> Result<(Config, PathBuf), ConfigError> {
    let (path, explicit) = resolve_path(flag);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
            std::fs::write(&path, TEMPLATE).map_err(|e| ConfigError(format!("could not write {}: {e}", path.display())))?;
            eprintln!("wrote a commented default config to {}", path.display());
            TEMPLATE.to_owned()
        }
        Err(e) => return Err(ConfigError(format!("could not read {}: {e}", path.display()))),
    };
    Ok((Config::load(&text, std::env::vars())?, path))
}

/// Keys set through the environment, for the start-up log.
pub fn env_keys() -> BTreeSet<String> {
    std::env::vars().filter(|(k, _)| k.starts_with("CHANCERY_")).map(|(k, _)| k).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml: &str, env: &[(&str, &str)]) -> Result<Config, String> {
        Config::load(toml, env.iter().map(|(k, v)| (k.to_string(), v.to_string()))).map_err(|e| e.to_string())
    }

    #[test]
    fn template_is_valid_and_defaults_hold() {
        let c = load(TEMPLATE, &[]).unwrap();
        assert_eq!(c.server_name, "localhost");
        assert_eq!(c.listen.to_string(), "127.0.0.1:8008");
        assert_eq!(c.registration, RegistrationMode::Disabled);
        assert_eq!(c.database(), DatabaseUrl::Sqlite(PathBuf::from("./data/chancery.db")));
        assert_eq!(c.public_baseurl(), "http://127.0.0.1:8008");
        assert_eq!(c.media_path(), PathBuf::from("./data/media"));
        assert!(!c.media.url_preview);
        assert_eq!(c.media.max_upload_bytes, limits::MAX_UPLOAD_BYTES);
        assert_eq!(c.media_thumbnail_sizes().unwrap(), chancery_service::media::default_thumbnail_sizes());
        let delayed = &c.delayed_events;
        assert!(delayed.enabled);
        assert_eq!(delayed.max_delay_ms, limits::MAX_EVENT_DELAY_MS);
        assert_eq!(delayed.max_per_user, limits::MAX_DELAYED_EVENTS_PER_USER);
    }

    #[test]
    fn delayed_event_limits_are_positive() {
        let env = [("CHANCERY_DELAYED_EVENTS__MAX_DELAY_MS", "5000"), ("CHANCERY_DELAYED_EVENTS__ENABLED", "false")];
        let c = load("", &env).unwrap();
        assert_eq!((c.delayed_events.max_delay_ms, c.delayed_events.enabled), (5000, false));
        for key in ["max_delay_ms", "max_per_user"] {
            let err = load(&format!("[delayed_events]\n{key} = 0\n"), &[]).unwrap_err();
            assert!(err.contains(&format!("delayed_events.{key}")), "{err}");
        }
    }

    #[test]
    fn media_keys_come_from_the_environment_too() {
        let env = [
            ("CHANCERY_MEDIA__MAX_UPLOAD_BYTES", "1000"),
            ("CHANCERY_MEDIA__URL_PREVIEW", "true"),
            ("CHANCERY_MEDIA__URL_PREVIEW_ALLOW_RANGES", "[\"10.1.0.0/16\", \"fd00::/8\"]"),
            ("CHANCERY_MEDIA__PATH", "/srv/media"),
        ];
        let c = load("", &env).unwrap();
        assert_eq!(c.media.max_upload_bytes, 1000);
        assert!(c.media.url_preview);
        assert_eq!(c.media_allow_ranges().unwrap().len(), 2);
        assert_eq!(c.media_path(), PathBuf::from("/srv/media"));
    }

    #[test]
    fn sfu_section_is_checked_only_when_enabled() {
        let secret = "a-secret-of-at-least-32-characters";
        let cases: Vec<(&str, String, bool)> = vec![
            ("absent: off", String::new(), true),
            ("off with nothing set", "[sfu]\nenabled = false\n".into(), true),
            ("on without a key", format!("[sfu]\nenabled = true\napi_secret = \"{secret}\"\n"), false),
            ("on with a short secret", "[sfu]\nenabled = true\napi_key = \"k\"\napi_secret = \"short\"\n".into(), false),
            ("on with a key and no secret", "[sfu]\nenabled = true\napi_key = \"k\"\n".into(), false),
            ("on with neither: generated at startup", "[sfu]\nenabled = true\n".into(), true),
            (
                "on with a wildcard and no public address",
                format!("[sfu]\nenabled = true\napi_key = \"k\"\napi_secret = \"{secret}\"\nudp_listen = \"0.0.0.0:7882\"\n"),
                false,
            ),
            (
                "on with a wildcard and a public address",
                format!(
                    "[sfu]\nenabled = true\napi_key = \"k\"\napi_secret = \"{secret}\"\nudp_listen = \"0.0.0.0:7882\"\npublic_address = \"203.0.113.7\"\n"
                ),
                true,
            ),
            (
                "on with no room allowed",
                format!("[sfu]\nenabled = true\napi_key = \"k\"\napi_secret = \"{secret}\"\nmax_rooms = 0\n"),
                false,
            ),
        ];
        for (what, toml, ok) in cases {
            assert_eq!(load(&toml, &[]).is_ok(), ok, "{what}");
        }
        let c =
            load("", &[("CHANCERY_SFU__ENABLED", "true"), ("CHANCERY_SFU__API_KEY", "k"), ("CHANCERY_SFU__API_SECRET", secret)])
                .unwrap();
        assert!(c.sfu.enabled);
        assert_eq!(c.sfu.udp_listen.to_string(), "127.0.0.1:7882");
    }

    #[test]
    fn the_builtin_sfu_alone_serves_calls() {
        let secret = "a-secret-of-at-least-32-characters";
        // Alone, with its keys left to startup.
        let mut c = load("public_baseurl = \"https://m.example.org/\"\n[sfu]\nenabled = true\n", &[]).unwrap();
        assert!(c.calls_config().is_none(), "no keys yet, no token service");
        c.fill_sfu_keys(&chancery_service::tokens::OsEntropy);
        assert!(c.sfu.api_key.starts_with("chancery-") && c.sfu.api_secret.len() >= 32, "{:?}", c.sfu);
        let calls = c.calls_config().unwrap();
        assert_eq!(calls.livekit_url, "wss://m.example.org/_chancery/livekit");
        assert_eq!(calls.livekit_service_url, "https://m.example.org/livekit/jwt");
        assert_eq!(
            (calls.livekit_api_key.as_str(), calls.livekit_api_secret.as_str()),
            (c.sfu.api_key.as_str(), c.sfu.api_secret.as_str())
        );
        assert!(c.calls_delegate_leaves());
        let (key, generated) = (c.sfu.api_key.clone(), c.sfu.api_secret.clone());
        c.fill_sfu_keys(&chancery_service::tokens::OsEntropy);
        assert_eq!((c.sfu.api_key.as_str(), c.sfu.api_secret.as_str()), (key.as_str(), generated.as_str()), "set once");

        // Plain HTTP base, keys given.
        let toml = format!(
            "public_baseurl = \"http://10.0.0.5:8008\"\n[sfu]\nenabled = true\napi_key = \"k\"\napi_secret = \"{secret}\"\n"
        );
        let mut c = load(&toml, &[]).unwrap();
        c.fill_sfu_keys(&chancery_service::tokens::OsEntropy);
        assert_eq!(c.sfu.api_key, "k", "the operator's keys stay");
        assert_eq!(c.calls_config().unwrap().livekit_url, "ws://10.0.0.5:8008/_chancery/livekit");
        c.delayed_events.enabled = false;
        assert!(!c.calls_delegate_leaves(), "no delayed events, no delegation");

        // An explicit [calls] wins: an external LiveKit, no delegation.
        let toml = format!(
            "[sfu]\nenabled = true\napi_key = \"k\"\napi_secret = \"{secret}\"\n[calls]\nlivekit_url = \"wss://lk.example.org\"\nlivekit_api_key = \"other\"\nlivekit_api_secret = \"s\"\n"
        );
        let c = load(&toml, &[]).unwrap();
        assert_eq!(c.calls_config().unwrap().livekit_url, "wss://lk.example.org");
        assert!(!c.calls_delegate_leaves());

        // Off: nothing.
        assert!(load("", &[]).unwrap().calls_config().is_none());
    }

    #[test]
    fn environment_overrides_file() {
        let c = load(
            "server_name = \"a.example\"\n[rate_limits]\nenabled = true\n",
            &[
                ("CHANCERY_SERVER_NAME", "b.example"),
                ("CHANCERY_LISTEN", "127.0.0.1:0"),
                ("CHANCERY_REGISTRATION", "token"),
                ("CHANCERY_DATABASE_URL", "postgres://u@localhost/db"),
                ("CHANCERY_RATE_LIMITS__ENABLED", "false"),
                ("CHANCERY_DATA_DIR", "/tmp/x"),
                ("CHANCERY_DEFAULT_ROOM_VERSION", "12"),
                ("CHANCERY_CONFIG", "/ignored.toml"),
                ("HOME", "/root"),
            ],
        )
        .unwrap();
        assert_eq!(c.server_name, "b.example");
        assert_eq!(c.listen.port(), 0);
        assert_eq!(c.registration, RegistrationMode::Token);
        assert_eq!(c.database(), DatabaseUrl::Postgres("postgres://u@localhost/db".into()));
        assert!(!c.rate_limits.enabled);
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.default_room_version, "12");
        assert_eq!(c.public_baseurl(), "https://b.example");
    }

    #[test]
    fn unknown_environment_variables_are_ignored() {
        let env =
            [("CHANCERY_PORT", "tcp://10.0.0.1:8008"), ("CHANCERY_SERVICE_HOST", "10.0.0.1"), ("CHANCERY_LISTEN", "127.0.0.1:9")];
        let c = load("", &env).unwrap();
        assert_eq!(c.listen.port(), 9);
        // In the file, an unknown key is still an error.
        assert!(load("port = 1", &[]).is_err());
    }

    #[test]
    fn errors_name_the_key() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            ("listen = \"nowhere\"", &[], "key `listen`"),
            ("", &[("CHANCERY_LISTEN", "999.1.1.1:80")], "key `listen` (from CHANCERY_LISTEN)"),
            ("registration = \"sometimes\"", &[], "key `registration`"),
            ("", &[("CHANCERY_REGISTRATION", "maybe")], "(from CHANCERY_REGISTRATION)"),
            ("server_name = \"bad name!\"", &[], "key `server_name`: not a valid server name"),
            ("database_url = \"mysql://x\"", &[], "key `database_url`: must start with sqlite: or postgres://"),
            ("", &[("CHANCERY_DATABASE_URL", "sqlite:")], "key `database_url` (from CHANCERY_DATABASE_URL)"),
            ("serverr_name = \"x\"", &[], "unknown field `serverr_name`"),
            ("[rate_limits]\nlogin_per_address = { per_second = 0.0, burst = 1 }", &[], "key `rate_limits.login_per_address`"),
            ("[limits]\nmax_request_body_bytes = \"big\"", &[], "key `limits.max_request_body_bytes`"),
            ("public_baseurl = \"example.org\"", &[], "key `public_baseurl`"),
            ("[push]\nretry_initial_ms = 5", &[], "key `push.retry_initial_ms`: must be at least 10"),
            ("[push]\nretry_max_ms = 100", &[], "key `push.retry_max_ms`"),
            (
                "",
                &[("CHANCERY_DEFAULT_ROOM_VERSION", "9")],
                "key `default_room_version` (from CHANCERY_DEFAULT_ROOM_VERSION): must be one of",
            ),
            ("this is not toml", &[], "invalid TOML"),
            ("[media]\nmax_upload_bytes = 0", &[], "key `media.max_upload_bytes`: must be at least 1"),
            ("", &[("CHANCERY_MEDIA__MAX_CONCURRENT_THUMBNAILS", "0")], "(from CHANCERY_MEDIA__MAX_CONCURRENT_THUMBNAILS)"),
            ("[media]\nthumbnail_sizes = []", &[], "key `media.thumbnail_sizes`: at least one size"),
            (
                "[media]\nthumbnail_sizes = [{ width = 32, height = 32, method = \"stretch\" }]",
                &[],
                "method `stretch` must be `scale` or `crop`",
            ),
            ("[media]\nthumbnail_sizes = [{ width = 5000, height = 32, method = \"crop\" }]", &[], "widths and heights are 1 to"),
            ("[media]\nurl_preview_allow_ranges = [\"10.0.0.0/40\"]", &[], "key `media.url_preview_allow_ranges`"),
        ];
        for (toml, env, want) in cases {
            let got = load(toml, env).expect_err(toml);
            assert!(got.contains(want), "{toml:?} {env:?}: {got}");
            assert!(!got.contains('\n'), "one line: {got}");
        }
    }
}
