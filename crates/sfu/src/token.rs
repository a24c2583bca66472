//! LiveKit access tokens: HS256 JWTs whose issuer is the API key, signed
//! with the API secret, carrying a `video` grant (what lk-jwt-service and
//! Chancery's token service mint). Pure: the time is passed in.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::JoinGrant;

/// Longest token accepted (a LiveKit token is a few hundred bytes).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The claims we read. Permission flags absent from the grant mean "allowed",
/// as livekit-server reads them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    /// The participant identity.
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub metadata: String,
    #[serde(default)]
    pub video: VideoGrant,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VideoGrant {
    #[serde(default)]
    pub room_join: bool,
    #[serde(default)]
    pub room: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub can_publish: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub can_subscribe: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub can_publish_data: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub can_update_own_metadata: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("unsupported algorithm")]
    Algorithm,
    #[error("invalid signature")]
    Signature,
    #[error("unknown API key")]
    Issuer,
    #[error("token expired or not yet valid")]
    Expired,
    #[error("the token does not grant joining a room")]
    NoRoomJoin,
}

impl Claims {
    /// What the token lets its bearer do in the SFU.
    pub fn grant(&self) -> JoinGrant {
        JoinGrant {
            room: self.video.room.clone(),
            identity: self.sub.clone(),
            name: self.name.clone(),
            metadata: self.metadata.clone(),
            can_publish: self.video.can_publish.unwrap_or(true),
            can_subscribe: self.video.can_subscribe.unwrap_or(true),
            can_publish_data: self.video.can_publish_data.unwrap_or(true),
        }
    }
}

/// Checks a token's signature, issuer, validity period (`now_unix_secs`,
/// with `leeway_secs` either way for clock skew) and room-join grant.
pub fn verify(token: &str, api_key: &str, api_secret: &str, now_unix_secs: i64, leeway_secs: i64) -> Result<Claims, TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(TokenError::Malformed);
    };
    #[derive(Deserialize)]
    struct Header {
        alg: String,
    }
    let signing_input = &token[..header.len() + 1 + payload.len()];
    let header: Header = decode_json(header)?;
    if header.alg != "HS256" {
        return Err(TokenError::Algorithm);
    }
    let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| TokenError::Malformed)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(api_secret.as_bytes()).map_err(|_| TokenError::Signature)?;
    mac.update(signing_input.as_bytes());
    mac.verify_slice(&signature).map_err(|_| TokenError::Signature)?;
    let claims: Claims = decode_json(payload)?;
    if claims.iss != api_key {
        return Err(TokenError::Issuer);
    }
    if claims.exp + leeway_secs < now_unix_secs || claims.nbf.is_some_and(|nbf| nbf - leeway_secs > now_unix_secs) {
        return Err(TokenError::Expired);
    }
    if !claims.video.room_join || claims.video.room.is_empty() {
        return Err(TokenError::NoRoomJoin);
    }
    Ok(claims)
}

/// Signs claims as an HS256 JWT (the token service's job; here so both
/// sides share one definition, and for tests).
pub fn sign(claims: &Claims, api_secret: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialize"));
    let signing_input = format!("{header}.{payload}");
    let mut mac = Hmac::<Sha256>::new_from_slice(api_secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(signing_input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

fn decode_json<T: for<'de> Deserialize<'de>>(part: &str) -> Result<T, TokenError> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| TokenError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            iss: "key".into(),
            sub: "@alice:example.org:DEVICE".into(),
            nbf: Some(1_000),
            exp: 5_000,
            name: String::new(),
            metadata: String::new(),
            video: VideoGrant {
                room_join: true,
                room: "!room".into(),
                can_publish: Some(true),
                can_subscribe: None,
                can_publish_data: Some(false),
                can_update_own_metadata: Some(true),
            },
        }
    }

    #[test]
    fn verifies_what_it_signs_and_refuses_the_rest() {
        let good = sign(&claims(), "secret");
        let no_join = sign(&Claims { video: VideoGrant { room_join: false, ..claims().video }, ..claims() }, "secret");
        let none_alg = {
            let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
            parts[0] = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
            parts.join(".")
        };
        let tampered = {
            let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
            parts[1] =
                URL_SAFE_NO_PAD.encode(serde_json::to_vec(&Claims { sub: "@mallory:example.org:X".into(), ..claims() }).unwrap());
            parts.join(".")
        };
        type Case<'a> = (&'a str, &'a str, &'a str, i64, Result<(), TokenError>);
        let cases: Vec<Case> = vec![
            ("good", &good, "secret", 2_000, Ok(())),
            ("within leeway after expiry", &good, "secret", 5_030, Ok(())),
            ("expired", &good, "secret", 6_000, Err(TokenError::Expired)),
            ("not yet valid", &good, "secret", 500, Err(TokenError::Expired)),
            ("wrong secret", &good, "other", 2_000, Err(TokenError::Signature)),
            ("tampered payload", &tampered, "secret", 2_000, Err(TokenError::Signature)),
            ("alg none", &none_alg, "secret", 2_000, Err(TokenError::Algorithm)),
            ("no room join", &no_join, "secret", 2_000, Err(TokenError::NoRoomJoin)),
            ("garbage", "a.b", "secret", 2_000, Err(TokenError::Malformed)),
        ];
        for (name, token, secret, now, expected) in cases {
            assert_eq!(verify(token, "key", secret, now, 60).map(|_| ()), expected, "{name}");
        }
        assert_eq!(verify(&good, "other-key", "secret", 2_000, 60), Err(TokenError::Issuer));
    }

    /// What Chancery's token service (`chancery_service::calls::token`,
    /// lk-jwt-service's claims: no `name`, `roomCreate` when allowed, an
    /// hour from `nbf`) mints is accepted as is; this is its known answer.
    #[test]
    fn accepts_the_token_services_tokens() {
        let minted = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJleHAiOjE3MDAwMDM2MDAsImlzcyI6ImRldmtleSIsIm5iZiI6MTcwMDAwMDAwMCwic3ViIjoiQGFsaWNlOmV4YW1wbGUub3JnOkRFVklDRUlEIiwidmlkZW8iOnsicm9vbUNyZWF0ZSI6dHJ1ZSwicm9vbUpvaW4iOnRydWUsInJvb20iOiI5WXpiQ3hNOFAwZndPYlV0aVE5bS91ak1QOXJ1Tk14UzdTT3N1Z0JFYXhBIiwiY2FuUHVibGlzaCI6dHJ1ZSwiY2FuU3Vic2NyaWJlIjp0cnVlLCJjYW5VcGRhdGVPd25NZXRhZGF0YSI6dHJ1ZX19.fkcxtZPGomHFLvqpr0oWDo4lbrR5p-SMKTGmO93a7-Q";
        let secret = "secret-of-at-least-32-characters!!";
        let cases: &[(&str, &str, i64, Result<(), TokenError>)] = &[
            ("inside its hour", "devkey", 1_700_000_100, Ok(())),
            ("after its hour and the leeway", "devkey", 1_700_003_661, Err(TokenError::Expired)),
            ("another API key", "otherkey", 1_700_000_100, Err(TokenError::Issuer)),
        ];
        for (what, key, now, expected) in cases {
            assert_eq!(verify(minted, key, secret, *now, 60).map(|_| ()), *expected, "{what}");
        }
        let grant = verify(minted, "devkey", secret, 1_700_000_100, 60).unwrap().grant();
        assert_eq!(grant.identity, "@alice:example.org:DEVICEID");
        assert_eq!(grant.room, "9YzbCxM8P0fwObUtiQ9m/ujMP9ruNMxS7SOsugBEaxA");
        assert!(grant.can_publish && grant.can_subscribe && grant.can_publish_data);
        assert!(grant.name.is_empty());
    }

    #[test]
    fn grant_defaults_absent_permissions_to_allowed() {
        let grant = verify(&sign(&claims(), "secret"), "key", "secret", 2_000, 0).unwrap().grant();
        assert_eq!(grant.room, "!room");
        assert_eq!(grant.identity, "@alice:example.org:DEVICE");
        assert!(grant.can_publish && grant.can_subscribe && !grant.can_publish_data);
    }
}
