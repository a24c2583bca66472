use chancery_store::StoreError;
use serde_json::Value as JsonValue;

/// Everything a service call can answer besides success. Each variant is
/// one Matrix errcode (the `api` crate maps them to HTTP statuses).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Forbidden(String),
    #[error("registration is disabled on this server")]
    RegistrationDisabled,
    #[error("guest access is disabled on this server")]
    GuestAccessForbidden,
    #[error("this account has been deactivated")]
    UserDeactivated,
    #[error("{0}")]
    InvalidUsername(String),
    #[error("this user ID is already taken")]
    UserInUse,
    #[error("this user ID is reserved")]
    Exclusive,
    #[error("{0}")]
    WeakPassword(String),
    #[error("{0}")]
    InvalidParam(String),
    #[error("{0}")]
    MissingParam(String),
    #[error("{0}")]
    BadJson(String),
    #[error("{0}")]
    NotFound(String),
    /// A write to something only the server may change (HTTP 405,
    /// `M_BAD_JSON`, as the spec asks for server-managed account data).
    #[error("{0}")]
    ServerManaged(String),
    #[error("{0}")]
    Unknown(String),
    #[error("missing access token")]
    MissingToken,
    /// A credential other than an access token (the OpenID token given
    /// to the MatrixRTC token service) could not be verified: 401
    /// `M_UNAUTHORIZED`, lk-jwt-service's answer.
    #[error("{0}")]
    Unauthorized(String),
    #[error("unknown or expired access token")]
    UnknownToken { soft_logout: bool },
    #[error("too many requests")]
    LimitExceeded { retry_after_ms: u64 },
    #[error("{0}")]
    ResourceLimit(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("the profile would exceed 64 KiB")]
    ProfileTooLarge,
    #[error("profile keys are at most 255 bytes")]
    KeyTooLarge,
    /// More interactive-auth stages are needed (HTTP 401 with the flows).
    #[error("interactive authentication required")]
    Uia(Box<UiaChallenge>),
    #[error("room version {0} is not supported")]
    UnsupportedRoomVersion(String),
    /// The room's version is not among those the joining server supports.
    #[error("the room's version {room_version} is not one your server supports")]
    IncompatibleRoomVersion { room_version: String },
    /// A second identical annotation of one event by one sender (spec
    /// "Event annotations", "Avoiding duplicate annotations").
    #[error("you already sent this annotation to that event")]
    DuplicateAnnotation,
    /// An alias of an `m.room.canonical_alias` event does not point to the
    /// room (HTTP 400 `M_BAD_ALIAS`).
    #[error("{0}")]
    BadAlias(String),
    /// `createRoom`'s `room_alias_name` is taken (HTTP 400 `M_ROOM_IN_USE`).
    #[error("{0}")]
    RoomInUse(String),
    /// `PUT /directory/room/{alias}` of a taken alias (HTTP 409 `M_UNKNOWN`,
    /// as the spec says).
    #[error("{0}")]
    AliasInUse(String),
    /// A key's signature is missing or does not verify (HTTP 400
    /// `M_INVALID_SIGNATURE`).
    #[error("{0}")]
    InvalidSignature(String),
    /// Keys were sent to a backup version that is not the current one
    /// (HTTP 403 `M_WRONG_ROOM_KEYS_VERSION` with `current_version`).
    #[error("this backup version is not the current one")]
    WrongRoomKeysVersion { current: Option<String> },
    /// A sliding-sync `pos` this connection does not have (HTTP 400
    /// `M_UNKNOWN_POS`: the client starts the connection afresh).
    #[error("unknown or expired sliding sync position")]
    UnknownPos,
    /// Content for a media id that has some (HTTP 409
    /// `M_CANNOT_OVERWRITE_MEDIA`).
    #[error("this media already has content; it cannot be overwritten")]
    CannotOverwriteMedia,
    /// A media id whose content did not come within the wait (HTTP 504
    /// `M_NOT_YET_UPLOADED`).
    #[error("the content of this media has not been uploaded yet")]
    NotYetUploaded,
    /// Something the server fetched for the client failed (a URL
    /// preview's page): HTTP 502 `M_UNKNOWN`.
    #[error("{0}")]
    UpstreamFailed(String),
    /// A delayed event's delay is past the server's maximum (HTTP 400
    /// `M_UNKNOWN` with `org.matrix.msc4140.errcode: M_MAX_DELAY_EXCEEDED` and
    /// the maximum, as matrix-js-sdk reads it; MSC4140).
    #[error("the requested delay exceeds the allowed maximum ({max_delay_ms} ms)")]
    MaxDelayExceeded { max_delay_ms: u64 },
    /// An automatic thread subscription whose cause the user had seen
    /// when they unsubscribed (HTTP 409
    /// `IO.ELEMENT.MSC4306.M_CONFLICTING_UNSUBSCRIPTION`).
    #[error("this automatic subscription is older than the user's unsubscription from the thread")]
    ConflictingUnsubscription,
    /// An automatic thread subscription naming an event that is not in
    /// the thread (HTTP 400 `IO.ELEMENT.MSC4306.M_NOT_IN_THREAD`).
    #[error("{0}")]
    NotInThread(String),
    #[error("internal error")]
    Internal(String),
    /// The server cannot do this now but will later (its database is
    /// unreachable, busy or out of disk): HTTP 503 with `Retry-After`.
    /// The message says what is wrong, never request content.
    #[error("{message}")]
    Unavailable { message: String, retry_after_ms: u64 },
}

/// How long a client waits before trying again when the database is
/// unreachable: about what a restart or a failover takes.
const UNAVAILABLE_RETRY_AFTER_MS: u64 = 5_000;
/// ... when its transaction met a concurrent one too often: a moment.
const CONFLICT_RETRY_AFTER_MS: u64 = 1_000;
/// ... when the database's disk is full: an operator has to act.
const DISK_FULL_RETRY_AFTER_MS: u64 = 60_000;
/// A statement stopped at its deadline: the load may have passed.
const QUERY_TIMED_OUT_RETRY_AFTER_MS: u64 = 10_000;

/// How long a client with too many pending media ids waits: until it
/// uploads one of them, which a client does within seconds.
const PENDING_MEDIA_RETRY_AFTER_MS: u64 = 10_000;

/// The body of a 401 interactive-auth answer.
#[derive(Debug, Clone)]
pub struct UiaChallenge {
    pub flows: Vec<Vec<&'static str>>,
    pub completed: Vec<String>,
    pub session: String,
    pub params: JsonValue,
    /// Why the last stage failed, as (errcode, message).
    pub error: Option<(&'static str, String)>,
}

/// Every store failure in Matrix terms: the one place they are mapped.
/// Where the spec gives the same condition another answer on one endpoint
/// (a taken alias is `M_ROOM_IN_USE` from `createRoom` but 409 from `PUT
/// /directory/room`), that component matches the variant itself.
impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        use chancery_proto::limits::{
            MAX_ACCOUNT_DATA_BYTES, MAX_ACCOUNT_DATA_BYTES_PER_USER, MAX_ACCOUNT_DATA_ENTRIES_PER_USER, MAX_ALIASES_PER_ROOM,
            MAX_BACKED_UP_KEYS, MAX_BACKUP_VERSIONS, MAX_ONE_TIME_KEYS_PER_DEVICE, MAX_RECEIPT_THREADS_PER_ROOM,
            MAX_REPORTS_PER_USER_PER_WINDOW, REPORT_WINDOW_MS,
        };
        match e {
            StoreError::UserIdTaken => Error::UserInUse,
            StoreError::RegistrationTokenExists => Error::InvalidParam("registration_token already exists".into()),
            StoreError::UiaSessionExists => Error::InvalidParam("uia_session already exists".into()),
            StoreError::RoomIdTaken => Error::InvalidParam("room already exists".into()),
            StoreError::EventIdTaken => Error::InvalidParam("event already exists".into()),
            StoreError::AliasTaken => Error::InvalidParam("alias already exists".into()),
            StoreError::StaleExtremities => Error::LimitExceeded { retry_after_ms: 100 },
            StoreError::TransactionIdUsed => Error::InvalidParam("txn already exists".into()),
            StoreError::AccountInactive => Error::UserDeactivated,
            StoreError::UnknownDevice => Error::NotFound("no such device".into()),
            StoreError::DeviceIdTaken => Error::InvalidParam("this device id is taken by another device of yours".into()),
            StoreError::DeviceKeysChanged => Error::InvalidParam(
                "this device's keys are already uploaded and cannot be replaced; log in as a new device".into(),
            ),
            StoreError::OneTimeKeyChanged => {
                Error::InvalidParam("a one-time key of this id is already uploaded with another key".into())
            }
            StoreError::WrongBackupVersion(current) => Error::WrongRoomKeysVersion { current },
            StoreError::BackupAlgorithmMismatch => {
                Error::InvalidParam("the algorithm of a backup version cannot change; create a new version".into())
            }
            StoreError::TooManyOneTimeKeys => {
                Error::ResourceLimit(format!("a device holds at most {MAX_ONE_TIME_KEYS_PER_DEVICE} unclaimed one-time keys"))
            }
            StoreError::TooManyBackedUpKeys => {
                Error::ResourceLimit(format!("a key backup holds at most {MAX_BACKED_UP_KEYS} sessions"))
            }
            StoreError::TooManyBackupVersions => {
                Error::ResourceLimit(format!("an account keeps at most {MAX_BACKUP_VERSIONS} key backup versions; delete one"))
            }
            StoreError::TooManyPushers => Error::ResourceLimit(format!(
                "an account has at most {} pushers; delete one of them first",
                chancery_proto::limits::MAX_PUSHERS_PER_USER
            )),
            StoreError::TooManyThreadSubscriptions => Error::ResourceLimit(format!(
                "an account follows at most {} threads (unsubscribed ones count until resubscribed)",
                chancery_proto::limits::MAX_THREAD_SUBSCRIPTIONS_PER_USER
            )),
            StoreError::RegistrationTokenUnusable => Error::Forbidden("the registration token is not valid".into()),
            StoreError::UnknownRoom => Error::NotFound("this server does not know that room".into()),
            StoreError::UnknownPosition => Error::UnknownPos,
            StoreError::UnknownMedia => Error::NotFound("unknown media id".into()),
            StoreError::NotMediaCreator => Error::Forbidden("this media id was created by another user".into()),
            StoreError::MediaAlreadyUploaded => Error::CannotOverwriteMedia,
            // Media ids are 24 random letters and digits: a collision is a
            // broken entropy source, not a client's doing.
            StoreError::MediaIdTaken => Error::Internal("a freshly drawn media id was taken".into()),
            // Spec "Content repository", upload: a quota for uploaded content
            // is 403 M_FORBIDDEN (ARCHITECTURE.md, "Media", says why not the
            // other codes).
            StoreError::MediaQuotaExceeded => {
                Error::ResourceLimit("your uploads have reached this server's storage quota for your account".into())
            }
            // Spec `POST /_matrix/media/v1/create`: 429 M_LIMIT_EXCEEDED for
            // too many pending uploads; one frees as soon as one is uploaded.
            StoreError::TooManyPendingMedia => Error::LimitExceeded { retry_after_ms: PENDING_MEDIA_RETRY_AFTER_MS },
            // `DelayedEvents` answers it with the time until the user's
            // earliest event is due; this is the answer without a clock.
            StoreError::TooManyDelayedEvents { .. } => Error::LimitExceeded { retry_after_ms: 1_000 },
            StoreError::AliasOfAnotherRoom => Error::InvalidParam("invalid alias".into()),
            StoreError::TextNotStorable => Error::InvalidParam("invalid text".into()),
            StoreError::PayloadTooLarge => Error::TooLarge("the message for other nodes is too large".into()),
            StoreError::TooManyStateKeys => Error::InvalidParam("invalid keys".into()),
            StoreError::TooManyDevices => Error::ResourceLimit("this account has too many devices; remove one to log in".into()),
            StoreError::ProfileTooLarge => Error::ProfileTooLarge,
            StoreError::TooManyUiaSessions => Error::LimitExceeded { retry_after_ms: 60_000 },
            StoreError::TooManyFilters => Error::ResourceLimit("too many filters; try again later".into()),
            StoreError::TooManyAccountData => {
                Error::ResourceLimit(format!("an account holds at most {MAX_ACCOUNT_DATA_ENTRIES_PER_USER} account data entries"))
            }
            StoreError::AccountDataTooLarge => {
                Error::TooLarge(format!("account data content is at most {MAX_ACCOUNT_DATA_BYTES} bytes"))
            }
            // A quota, like the entry count above: the user has to remove
            // or shrink entries, retrying does not help.
            StoreError::AccountDataTotalTooLarge => Error::ResourceLimit(format!(
                "an account holds at most {MAX_ACCOUNT_DATA_BYTES_PER_USER} bytes of account data in all"
            )),
            StoreError::TooManyReceiptThreads => Error::ResourceLimit(format!(
                "at most {MAX_RECEIPT_THREADS_PER_ROOM} threads per room and receipt type can hold a receipt"
            )),
            StoreError::TooManyAliases => Error::ResourceLimit(format!("a room has at most {MAX_ALIASES_PER_ROOM} aliases")),
            // The window frees a place at least this often on average.
            StoreError::TooManyReports => {
                Error::LimitExceeded { retry_after_ms: REPORT_WINDOW_MS / MAX_REPORTS_PER_USER_PER_WINDOW as u64 }
            }
            StoreError::TooManyVisibilitySpans => {
                Error::ResourceLimit("the history visibility of these rooms changed too often to be evaluated at once".into())
            }
            StoreError::QueryTimedOut => {
                tracing::warn!("a database statement ran past database.query_timeout_ms and was stopped");
                Error::Unavailable {
                    message: "the server took too long to answer; try again later, or ask for less".into(),
                    retry_after_ms: QUERY_TIMED_OUT_RETRY_AFTER_MS,
                }
            }
            e @ (StoreError::Contract(_) | StoreError::SchemaTooNew { .. } | StoreError::Backend(_)) => {
                Error::Internal(e.to_string())
            }
            // Faults that pass: the client is told to come back (ARCHITECTURE.md, "Faults").
            StoreError::Unavailable(detail) => {
                tracing::warn!(error = %detail, "database unavailable");
                Error::Unavailable {
                    message: "the database is unavailable; try again shortly".into(),
                    retry_after_ms: UNAVAILABLE_RETRY_AFTER_MS,
                }
            }
            StoreError::Conflict(detail) => {
                tracing::warn!(error = %detail, "transaction kept meeting concurrent ones");
                Error::Unavailable {
                    message: "the server is busy; try again shortly".into(),
                    retry_after_ms: CONFLICT_RETRY_AFTER_MS,
                }
            }
            StoreError::DiskFull => {
                tracing::error!("the database's disk is full: writes fail until space is freed");
                Error::Unavailable {
                    message: "the server's disk is full: nothing can be saved until its operator frees space; reading works"
                        .into(),
                    retry_after_ms: DISK_FULL_RETRY_AFTER_MS,
                }
            }
        }
    }
}
