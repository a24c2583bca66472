//! The pure parts of the token service, exactly as lk-jwt-service
//! computes them (its `helper.go` and `handler.go`), so Element Call,
//! which maps video tiles and encryption keys by them, sees the same
//! names whichever service answers:
//!
//! - the LiveKit room of a MatrixRTC slot: unpadded standard base64 of
//!   SHA-256 of the Go JSON of `[room_id, slot_id]` ([`livekit_room`]);
//!   the legacy `/sfu/get` uses the slot `m.call#ROOM`;
//! - the participant identity: `@user:server:DEVICE` on `/sfu/get`
//!   ([`legacy_identity`]), the same hash of `[user_id, device_id,
//!   member_id]` on `/get_token` ([`livekit_identity`]);
//! - the access token: a JWT signed HS256 with the API secret, `iss` the
//!   API key, `sub` the identity, valid an hour from `nbf`, with the video
//!   grants `roomJoin`, `room`, `canPublish`, `canSubscribe`,
//!   `canUpdateOwnMetadata`, and `roomCreate` for users of the servers
//!   allowed to create rooms ([`join_token`]).

use base64::Engine;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// The slot of the legacy endpoint, which names no slot.
pub const LEGACY_SLOT: &str = "m.call#ROOM";
/// How long a LiveKit access token is valid (lk-jwt-service's
/// `SetValidFor(time.Hour)`).
pub const JOIN_TOKEN_LIFETIME_SECS: u64 = 60 * 60;

/// Go's `json.Marshal` of a `[]string`: serde_json's form, with the HTML
/// escapes Go adds by default (`<`, `>`, `&`, U+2028, U+2029). Both escape
/// control characters alike (Go 1.22 and later).
fn go_json_strings(items: &[&str]) -> String {
    let json = serde_json::Value::from(items.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()).to_string();
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

fn hashed(items: &[&str]) -> String {
    STANDARD_NO_PAD.encode(Sha256::digest(go_json_strings(items).as_bytes()))
}

/// The LiveKit room of a Matrix room's MatrixRTC slot.
pub fn livekit_room(room_id: &str, slot_id: &str) -> String {
    hashed(&[room_id, slot_id])
}

/// The participant identity of a MatrixRTC member (`/get_token`).
pub fn livekit_identity(user_id: &str, device_id: &str, member_id: &str) -> String {
    hashed(&[user_id, device_id, member_id])
}

/// The participant identity on the legacy `/sfu/get`.
pub fn legacy_identity(user_id: &str, device_id: &str) -> String {
    format!("{user_id}:{device_id}")
}

/// LiveKit's video grant, in the field order of livekit/protocol's
/// `VideoGrant` (false grants are left out, as Go's `omitempty` does).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VideoGrant {
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub room_create: bool,
    pub room_join: bool,
    pub room: String,
    pub can_publish: bool,
    pub can_subscribe: bool,
    pub can_update_own_metadata: bool,
}

/// The claims of a LiveKit access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JoinClaims {
    pub exp: u64,
    pub iss: String,
    pub nbf: u64,
    pub sub: String,
    pub video: VideoGrant,
}

impl JoinClaims {
    /// The claims of a token to join `room` as `identity` from `now_secs`,
    /// creating the room if `may_create`.
    pub fn new(api_key: &str, room: String, identity: String, may_create: bool, now_secs: u64) -> Self {
        JoinClaims {
            exp: now_secs.saturating_add(JOIN_TOKEN_LIFETIME_SECS),
            iss: api_key.to_owned(),
            nbf: now_secs,
            sub: identity,
            video: VideoGrant {
                room_create: may_create,
                room_join: true,
                room,
                can_publish: true,
                can_subscribe: true,
                can_update_own_metadata: true,
            },
        }
    }
}

/// The claims as a JWT signed HS256 with `secret` (RFC 7519: base64url
/// header and payload, HMAC-SHA-256 of both).
pub fn join_token(claims: &JoinClaims, secret: &[u8]) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    // A struct of strings, numbers and booleans always serializes.
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
    let signing_input = format!("{header}.{payload}");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(signing_input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

#[cfg(test)]
mod tests {
    use super::*;

    // Known answers computed outside Rust, by lk-jwt-service's algorithm
    // (python3: json.dumps with Go's HTML escapes, hashlib.sha256,
    // base64.b64encode without `=`; hmac for the JWT).

    #[test]
    fn rooms_and_identities_match_lk_jwt_service() {
        let cases: &[(&str, String, &str)] = &[
            (
                "room of the legacy slot",
                livekit_room("!abc:example.org", LEGACY_SLOT),
                "9YzbCxM8P0fwObUtiQ9m/ujMP9ruNMxS7SOsugBEaxA",
            ),
            (
                "HTML escapes as Go writes them",
                livekit_room("!a&b<c>:example.org", LEGACY_SLOT),
                "mDo38MCfznh9ZLUcjaZGaAlMUEXy6M1xkHa6iYyTQxU",
            ),
            (
                "member identity",
                livekit_identity("@alice:example.org", "DEVICEID", "member-1"),
                "EKqPjhkY4Z79PW3wKu7wEGyd1WVt8oMAIh4Bk1JDMHQ",
            ),
            (
                "non-ASCII kept, line separator escaped",
                livekit_identity("@alice:example.org", "DEV\u{e9}", "m\u{2028}"),
                "OdeuhHVzK5geZkdWIB05bJaU+s35A98bQzKcrjQvvxc",
            ),
            ("legacy identity", legacy_identity("@alice:example.org", "DEVICEID"), "@alice:example.org:DEVICEID"),
        ];
        for (what, got, want) in cases {
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn go_json_escapes_like_encoding_json() {
        let cases = [
            (vec!["a", "b"], r#"["a","b"]"#),
            (vec!["<&>"], r#"["\u003c\u0026\u003e"]"#),
            (vec!["q\"\\"], r#"["q\"\\"]"#),
            (vec!["\n\t\u{1}"], r#"["\n\t\u0001"]"#),
            (vec![], "[]"),
        ];
        for (items, want) in cases {
            assert_eq!(go_json_strings(&items), want, "{items:?}");
        }
    }

    #[test]
    fn join_token_matches_a_known_answer() {
        let claims = JoinClaims::new(
            "devkey",
            livekit_room("!abc:example.org", LEGACY_SLOT),
            legacy_identity("@alice:example.org", "DEVICEID"),
            true,
            1_700_000_000,
        );
        assert_eq!(
            join_token(&claims, b"secret-of-at-least-32-characters!!"),
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJleHAiOjE3MDAwMDM2MDAsImlzcyI6ImRldmtleSIsIm5iZiI6MTcwMDAwMDAwMCwic3ViIjoiQGFsaWNlOmV4YW1wbGUub3JnOkRFVklDRUlEIiwidmlkZW8iOnsicm9vbUNyZWF0ZSI6dHJ1ZSwicm9vbUpvaW4iOnRydWUsInJvb20iOiI5WXpiQ3hNOFAwZndPYlV0aVE5bS91ak1QOXJ1Tk14UzdTT3N1Z0JFYXhBIiwiY2FuUHVibGlzaCI6dHJ1ZSwiY2FuU3Vic2NyaWJlIjp0cnVlLCJjYW5VcGRhdGVPd25NZXRhZGF0YSI6dHJ1ZX19.fkcxtZPGomHFLvqpr0oWDo4lbrR5p-SMKTGmO93a7-Q"
        );
    }

    #[test]
    fn claims_grant_creation_only_when_allowed() {
        let cases = [(true, Some(true)), (false, None)];
        for (may_create, want) in cases {
            let claims = JoinClaims::new("k", "r".into(), "i".into(), may_create, 10);
            let json = serde_json::to_value(&claims).unwrap();
            assert_eq!(json["video"].get("roomCreate").and_then(|v| v.as_bool()), want, "{may_create}");
            assert_eq!((json["nbf"].as_u64(), json["exp"].as_u64()), (Some(10), Some(3610)));
            for grant in ["roomJoin", "canPublish", "canSubscribe", "canUpdateOwnMetadata"] {
                assert_eq!(json["video"][grant], true, "{grant}");
            }
        }
    }
}
