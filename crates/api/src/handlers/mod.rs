pub mod account;
pub mod account_data;
pub mod admin;
pub mod calls;
pub mod delayed_events;
pub mod devices;
pub mod directory;
pub mod discovery;
pub mod federation;
pub mod filters;
pub mod keys;
pub mod media;
pub mod presence;
pub mod profile;
pub mod push;
pub mod pushers;
pub mod receipts;
pub mod relations;
pub mod rooms;
pub mod search;
pub mod session;
pub mod spaces;
pub mod sync;
pub mod threads;

use chancery_proto::ruma::api::client::uiaa::{AuthData, UserIdentifier};
use chancery_service::{AuthPayload, AuthStage};

/// Turns the `auth` dict of a request into the service's terms.
pub(crate) fn auth_payload(auth: Option<AuthData>) -> Option<AuthPayload> {
    let auth = auth?;
    let session = auth.session().map(str::to_owned);
    let stage = match auth {
        AuthData::Dummy(_) => AuthStage::Dummy,
        AuthData::RegistrationToken(t) => AuthStage::RegistrationToken(t.token),
        AuthData::Password(p) => AuthStage::Password { user: identifier_user(&p.identifier), password: p.password },
        AuthData::FallbackAcknowledgement(_) => AuthStage::Query,
        other => match other.auth_type() {
            Some(t) => AuthStage::Other(t.to_string()),
            None => AuthStage::Query,
        },
    };
    Some(AuthPayload { session, stage })
}

/// The user an `m.id.user` identifier names; other identifier kinds name
/// nobody we can look up (no third-party ids on this server).
pub(crate) fn identifier_user(identifier: &UserIdentifier) -> Option<String> {
    match identifier {
        UserIdentifier::Matrix(m) => Some(m.user.clone()),
        _ => None,
    }
}
