//! User-interactive authentication (client-server API "User-Interactive
//! Authentication API"): sessions kept in the store so any node can
//! continue a session another node started. Its own component because
//! other components guard their operations with it too (cross-signing key
//! replacement will).

use std::sync::Arc;

use chancery_core::uia::{self, Operation, stage};
use chancery_proto::limits::{MAX_REGISTRATION_TOKEN_CHARS, MAX_UIA_SESSIONS, MAX_UIA_SESSIONS_PER_USER, UIA_SESSION_TTL_MS};
use chancery_proto::ruma::OwnedServerName;
use chancery_store::{AccountStore, UiaSession, UiaSessionLimits};
use serde_json::json;

use super::password;
use crate::ratelimit::Limiters;
use crate::clock::Clock;
use crate::tokens::{self, Entropy};
use crate::{Error, UiaChallenge};

/// The `auth` dict of a request, decoded by the API layer.
#[derive(Debug, Clone, Default)]
pub struct AuthPayload {
    pub session: Option<String>,
    pub stage: AuthStage,
}

#[derive(Debug, Clone, Default)]
pub enum AuthStage {
    /// Only a session id (or nothing): the client asks where it stands.
    #[default]
    Query,
    Dummy,
    RegistrationToken(String),
    /// `m.login.password` with the user as the client named it.
    Password {
        user: Option<String>,
        password: String,
    },
    Other(String),
}

/// Characters MSC3231 allows in a registration token.
pub(crate) fn is_valid_registration_token(token: &str) -> bool {
    !token.is_empty()
        && token.chars().count() <= MAX_REGISTRATION_TOKEN_CHARS
        && token.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'))
}

/// What [`InteractiveAuth`] is built from: the store traits, components, clock
/// and randomness it uses, named where the server wires it.
pub struct InteractiveAuthDeps {
    /// Sessions, registration tokens and password hashes.
    pub store: Arc<dyn AccountStore>,
    /// Which users of a password stage are ours.
    pub server_name: OwnedServerName,
    /// `login_per_account` also slows password guessing through the
    /// password stage.
    pub limiters: Arc<Limiters>,
    /// Session expiry.
    pub clock: Arc<dyn Clock>,
    /// Session ids.
    pub entropy: Arc<dyn Entropy>,
}

/// Interactive-auth sessions and their stages.
pub struct InteractiveAuth {
    deps: InteractiveAuthDeps,
}

impl InteractiveAuth {
    pub fn new(deps: InteractiveAuthDeps) -> Self {
        Self { deps }
    }

    /// Runs one round of interactive auth for `op`. Returns the session
    /// once one of `flows` is complete; otherwise `Error::Uia` with what the
    /// client must do next. The caller deletes the session after the
    /// operation succeeded, so a failed operation can be retried.
    pub(crate) async fn authorize(
        &self,
        op: Operation,
        user_id: Option<&str>,
        flows: Vec<Vec<&'static str>>,
        auth: Option<AuthPayload>,
    ) -> Result<UiaSession, Error> {
        let store = &self.deps.store;
        let now = self.deps.clock.now_ms();
        let auth = auth.unwrap_or_default();
        // Each call of a logged-in user's guarded operation costs store
        // work whether or not it carries auth: bounded per user.
        if let Some(user_id) = user_id {
            self.deps.limiters.uia_per_account.check(user_id)?;
        }
        let existing = match &auth.session {
            Some(id) if id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric()) => {
                store.uia_session(id).await?.filter(|s| s.created_ts + UIA_SESSION_TTL_MS > now)
            }
            _ => None,
        };
        let mut session = match existing {
            Some(session) => session,
            None => {
                // No session yet, or it expired: start one, or continue the
                // user's open one of this operation (so repeated calls do
                // not pile up sessions). A client that kept a stale id
                // simply carries on with the one it gets.
                let new = UiaSession {
                    session_id: tokens::random_string(&*self.deps.entropy, tokens::ALNUM, 24),
                    operation: op.as_str().to_owned(),
                    user_id: user_id.map(str::to_owned),
                    completed: Vec::new(),
                    registration_token: None,
                    created_ts: now,
                };
                let limits = UiaSessionLimits { max_sessions: MAX_UIA_SESSIONS, max_per_user: MAX_UIA_SESSIONS_PER_USER };
                store.open_uia_session(&new, now.saturating_sub(UIA_SESSION_TTL_MS), limits).await?
            }
        };
        if session.operation != op.as_str() || session.user_id.as_deref() != user_id {
            return Err(Error::Forbidden("this interactive-auth session was started for another request".into()));
        }

        let challenge = |session: &UiaSession, error: Option<(&'static str, String)>| {
            Error::Uia(Box::new(UiaChallenge {
                flows: flows.clone(),
                completed: session.completed.clone(),
                session: session.session_id.clone(),
                params: json!({}),
                error,
            }))
        };
        let stage_name = match &auth.stage {
            // A session whose stages are all done finishes its operation:
            // the client retries after the operation itself failed (a name
            // taken meanwhile) with just the session.
            AuthStage::Query if uia::is_complete(&flows, &session.completed) => return Ok(session),
            AuthStage::Query => return Err(challenge(&session, None)),
            AuthStage::Dummy => stage::DUMMY,
            AuthStage::RegistrationToken(_) => stage::REGISTRATION_TOKEN,
            AuthStage::Password { .. } => stage::PASSWORD,
            AuthStage::Other(name) => {
                let message = format!("authentication stage {name} is not offered here");
                return Err(challenge(&session, Some(("M_UNRECOGNIZED", message))));
            }
        };
        if !uia::may_attempt(&flows, &session.completed, stage_name) {
            let message = format!("stage {stage_name} is not expected at this point of any flow");
            return Err(challenge(&session, Some(("M_FORBIDDEN", message))));
        }

        match auth.stage {
            AuthStage::RegistrationToken(token) => {
                let usable = is_valid_registration_token(&token)
                    && store.registration_token(&token).await?.is_some_and(|t| t.is_usable(now));
                if !usable {
                    return Err(challenge(&session, Some(("M_FORBIDDEN", "invalid registration token".into()))));
                }
                session.registration_token = Some(token);
            }
            AuthStage::Password { user, password } if password.len() > chancery_proto::limits::MAX_PASSWORD_BYTES => {
                let _ = (user, password);
                return Err(challenge(&session, Some(("M_FORBIDDEN", "invalid user or password".into()))));
            }
            AuthStage::Password { user, password } => {
                let Some(expected) = user_id else {
                    return Err(challenge(&session, Some(("M_FORBIDDEN", "password stage needs a logged-in user".into()))));
                };
                self.deps.limiters.login_per_account.check(expected)?;
                let named = user.as_deref().map(|u| chancery_core::username::resolve_login_user(u, &self.deps.server_name));
                let names_self = match named {
                    None => true,
                    Some(Ok(u)) => u.as_str() == expected,
                    Some(Err(_)) => false,
                };
                let stored = store.account(expected).await?.and_then(|a| a.password_hash);
                let verified = password::verify(password, stored).await?;
                if !(names_self && verified) {
                    return Err(challenge(&session, Some(("M_FORBIDDEN", "invalid user or password".into()))));
                }
            }
            AuthStage::Dummy | AuthStage::Query | AuthStage::Other(_) => {}
        }
        session.completed.push(stage_name.to_owned());
        store.update_uia_session(&session).await?;
        if uia::is_complete(&flows, &session.completed) { Ok(session) } else { Err(challenge(&session, None)) }
    }

    /// Deletes a session whose operation succeeded.
    pub(crate) async fn finish(&self, session: &UiaSession) {
        if let Err(e) = self.deps.store.delete_uia_session(&session.session_id).await {
            tracing::warn!(error = %e, "could not delete a finished interactive-auth session; it will expire");
        }
    }
}
