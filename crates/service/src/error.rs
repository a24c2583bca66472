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
    #[error("internal error")]
    Internal(String),
}

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

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict("user") => Error::UserInUse,
            StoreError::Conflict(what) => Error::InvalidParam(format!("{what} already exists")),
            StoreError::LimitExceeded("devices") => {
                Error::ResourceLimit("this account has too many devices; remove one to log in".into())
            }
            StoreError::LimitExceeded("profile") => Error::ProfileTooLarge,
            StoreError::LimitExceeded("uia_sessions") => Error::LimitExceeded { retry_after_ms: 60_000 },
            StoreError::LimitExceeded(what) => Error::ResourceLimit(format!("too many {what}; try again later")),
            StoreError::Invalid("registration_token") => Error::Forbidden("the registration token is not valid".into()),
            StoreError::Invalid("account") => Error::UserDeactivated,
            StoreError::Invalid(what) => Error::InvalidParam(format!("invalid {what}")),
            e @ (StoreError::SchemaTooNew { .. } | StoreError::Backend(_)) => Error::Internal(e.to_string()),
        }
    }
}
