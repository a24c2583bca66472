//! Which user ids may be registered and how a login identifier names one.
//! Spec: appendix "User Identifiers" (v1.19) and client-server API
//! `POST /register` (`M_INVALID_USERNAME`).

use chancery_proto::limits::MAX_USER_ID_BYTES;
use chancery_proto::ruma::{OwnedUserId, ServerName, UserId};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsernameError {
    #[error("User ID must not be empty")]
    Empty,
    #[error("User ID may only contain the characters a-z, 0-9, '.', '_', '=', '-', '/' and '+'")]
    InvalidCharacters,
    #[error("User ID is too long: at most {MAX_USER_ID_BYTES} bytes including the server name")]
    TooLong,
    #[error("User ID must not start with '_', which is reserved for bridges and bots")]
    ReservedPrefix,
    #[error("User ID belongs to another server")]
    ForeignServer,
    #[error("Not a valid user ID")]
    Malformed,
}

/// Checks a localpart a client asks to register. Registration is stricter
/// than what the spec lets other servers have (historical ids): only the
/// current grammar `[a-z0-9._=\-/+]`, lowercase, and not starting with `_`.
pub fn validate_new_localpart(localpart: &str, server_name: &ServerName) -> Result<(), UsernameError> {
    if localpart.is_empty() {
        return Err(UsernameError::Empty);
    }
    if !localpart.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'=' | b'-' | b'/' | b'+')) {
        return Err(UsernameError::InvalidCharacters);
    }
    if localpart.starts_with('_') {
        return Err(UsernameError::ReservedPrefix);
    }
    // "@" + localpart + ":" + server name
    if 1 + localpart.len() + 1 + server_name.as_str().len() > MAX_USER_ID_BYTES {
        return Err(UsernameError::TooLong);
    }
    Ok(())
}

/// Resolves what a client typed at login (`alice`, `@alice:example.org`, or
/// with capitals, as people type) to a local user id. Spec: "m.id.user"
/// identifiers may be a localpart or a full user id; servers should
/// lower-case before lookup since registration only allows lowercase.
pub fn resolve_login_user(input: &str, server_name: &ServerName) -> Result<OwnedUserId, UsernameError> {
    let input = input.trim();
    if input.is_empty() {
        return Err(UsernameError::Empty);
    }
    if input.len() > MAX_USER_ID_BYTES {
        return Err(UsernameError::TooLong);
    }
    let lowered = input.to_lowercase();
    let user_id = if lowered.starts_with('@') {
        UserId::parse(lowered.as_str()).map_err(|_| UsernameError::Malformed)?
    } else {
        UserId::parse(format!("@{lowered}:{server_name}")).map_err(|_| UsernameError::Malformed)?
    };
    if user_id.server_name() != server_name {
        return Err(UsernameError::ForeignServer);
    }
    Ok(user_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> &'static ServerName {
        <&ServerName>::try_from("example.org").unwrap()
    }

    #[test]
    fn new_localparts() {
        let long = "a".repeat(255);
        let cases: &[(&str, Result<(), UsernameError>)] = &[
            ("alice", Ok(())),
            ("a.b_c=d-e/f+g", Ok(())),
            ("", Err(UsernameError::Empty)),
            ("Alice", Err(UsernameError::InvalidCharacters)),
            ("al ice", Err(UsernameError::InvalidCharacters)),
            ("alice:x", Err(UsernameError::InvalidCharacters)),
            ("élise", Err(UsernameError::InvalidCharacters)),
            ("_bridge", Err(UsernameError::ReservedPrefix)),
            (long.as_str(), Err(UsernameError::TooLong)),
        ];
        for (input, want) in cases {
            assert_eq!(&validate_new_localpart(input, server()), want, "{input:?}");
        }
    }

    #[test]
    fn login_identifiers() {
        let ok = |s: &str| resolve_login_user(s, server()).map(|u| u.to_string());
        assert_eq!(ok("alice").unwrap(), "@alice:example.org");
        assert_eq!(ok("Alice").unwrap(), "@alice:example.org");
        assert_eq!(ok("@alice:example.org").unwrap(), "@alice:example.org");
        assert_eq!(ok("@Alice:Example.org").unwrap(), "@alice:example.org");
        assert_eq!(ok("@alice:other.org"), Err(UsernameError::ForeignServer));
        assert_eq!(ok(""), Err(UsernameError::Empty));
        assert_eq!(ok("@"), Err(UsernameError::Malformed));
    }
}
