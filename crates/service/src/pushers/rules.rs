//! What `POST /pushers/set` accepts (client-server API "Push
//! Notifications", `data/api/client-server/pusher.yaml`): pure checks,
//! table-tested below.
//!
//! - Only `http` pushers: this server sends no e-mail, so an `email`
//!   pusher is refused rather than stored and never served.
//! - `data.url` is the gateway's full URL, "an HTTPS URL with a path of
//!   `/_matrix/push/v1/notify`"; plain `http` only where the operator
//!   allows it (`push.allow_http_gateways`), and a host that is a private,
//!   loopback or link-local address only where the operator allows that
//!   (`push.allow_private_gateway_addresses`): otherwise any user could
//!   make the server POST to its own network (Synapse refuses those
//!   ranges for pushers by default too). Names are checked again once
//!   resolved, by the gateway client.
//! - Lengths and sizes are bounded (`proto::limits`): everything but `url`
//!   is sent to the gateway with every push.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use chancery_proto::limits::{
    MAX_PUSHER_APP_ID_CHARS, MAX_PUSHER_DATA_BYTES, MAX_PUSHER_TEXT_BYTES, MAX_PUSHER_URL_BYTES, MAX_PUSHKEY_BYTES,
};
use chancery_proto::ruma::api::client::push::{Pusher as RumaPusher, PusherIds, PusherKind};
use chancery_proto::ruma::push::HttpPusherData;
use serde_json::Value as JsonValue;

use crate::Error;
use crate::nul::refuse_nul_in_json;

/// The path every gateway URL has (spec, push gateway API).
pub const NOTIFY_PATH: &str = "/_matrix/push/v1/notify";

/// Which gateway addresses the operator allows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GatewayPolicy {
    /// `http://` gateway URLs (a gateway on a trusted network, tests).
    pub allow_http: bool,
    /// Gateways at loopback, private, link-local or other non-public
    /// addresses (a gateway inside the institution's network, tests).
    pub allow_private_addresses: bool,
}

/// The parts of a pusher this server stores, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CheckedPusher {
    pub app_id: String,
    pub pushkey: String,
    pub app_display_name: String,
    pub device_display_name: String,
    pub profile_tag: Option<String>,
    pub lang: String,
    /// `data` as the client sent it (with `url`), serialized.
    pub data_json: String,
}

/// `M_INVALID_PARAM` unless the ids are within the spec's bounds.
pub(crate) fn check_ids(ids: &PusherIds) -> Result<(), Error> {
    if ids.app_id.is_empty() || ids.app_id.chars().count() > MAX_PUSHER_APP_ID_CHARS {
        return Err(Error::InvalidParam(format!("app_id must be 1 to {MAX_PUSHER_APP_ID_CHARS} characters")));
    }
    if ids.pushkey.is_empty() || ids.pushkey.len() > MAX_PUSHKEY_BYTES {
        return Err(Error::InvalidParam(format!("pushkey must be 1 to {MAX_PUSHKEY_BYTES} bytes")));
    }
    Ok(())
}

/// A pusher to create or update, checked (see the module documentation).
pub(crate) fn check_pusher(pusher: &RumaPusher, policy: GatewayPolicy) -> Result<CheckedPusher, Error> {
    check_ids(&pusher.ids)?;
    let data = match &pusher.kind {
        PusherKind::Http(data) => data,
        PusherKind::Email(_) => {
            return Err(Error::InvalidParam(
                "email pushers are not supported: this server sends no e-mail; use an http pusher".into(),
            ));
        }
        _ => return Err(Error::InvalidParam("unknown pusher kind: only \"http\" is supported".into())),
    };
    for (name, value) in [
        ("app_display_name", Some(pusher.app_display_name.as_str())),
        ("device_display_name", Some(pusher.device_display_name.as_str())),
        ("profile_tag", pusher.profile_tag.as_deref()),
        ("lang", Some(pusher.lang.as_str())),
    ] {
        if value.is_some_and(|v| v.len() > MAX_PUSHER_TEXT_BYTES) {
            return Err(Error::InvalidParam(format!("{name} is limited to {MAX_PUSHER_TEXT_BYTES} bytes")));
        }
    }
    check_gateway_url(&data.url, policy)?;
    let data_json = serde_json::to_string(data).map_err(|e| Error::Internal(e.to_string()))?;
    if data_json.len() > MAX_PUSHER_DATA_BYTES {
        return Err(Error::InvalidParam(format!("data is limited to {MAX_PUSHER_DATA_BYTES} bytes")));
    }
    // Everything stored, ids and names included (PostgreSQL refuses NUL).
    let whole = serde_json::to_value(pusher).map_err(|e| Error::Internal(e.to_string()))?;
    refuse_nul_in_json(&whole, "a pusher")?;
    Ok(CheckedPusher {
        app_id: pusher.ids.app_id.clone(),
        pushkey: pusher.ids.pushkey.clone(),
        app_display_name: pusher.app_display_name.clone(),
        device_display_name: pusher.device_display_name.clone(),
        profile_tag: pusher.profile_tag.clone(),
        lang: pusher.lang.clone(),
        data_json,
    })
}

/// `M_INVALID_PARAM` unless `url` is a gateway URL the policy allows.
pub(crate) fn check_gateway_url(url: &str, policy: GatewayPolicy) -> Result<(), Error> {
    let invalid = |why: &str| Err(Error::InvalidParam(format!("data.url {why}")));
    if url.len() > MAX_PUSHER_URL_BYTES {
        return invalid(&format!("is limited to {MAX_PUSHER_URL_BYTES} bytes"));
    }
    let Ok(parsed) = url::Url::parse(url) else {
        return invalid("is not a URL");
    };
    match parsed.scheme() {
        "https" => {}
        "http" if policy.allow_http => {}
        "http" => return invalid("must be an https:// URL (this server does not send pushes over plain http)"),
        _ => return invalid("must be an https:// URL"),
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return invalid("must not hold credentials");
    }
    if parsed.path() != NOTIFY_PATH {
        return invalid(&format!("must have the path {NOTIFY_PATH}"));
    }
    match parsed.host() {
        None => invalid("has no host"),
        Some(url::Host::Ipv4(ip)) if !policy.allow_private_addresses && !is_public_address(IpAddr::V4(ip)) => {
            invalid("points to a private or local address")
        }
        Some(url::Host::Ipv6(ip)) if !policy.allow_private_addresses && !is_public_address(IpAddr::V6(ip)) => {
            invalid("points to a private or local address")
        }
        Some(url::Host::Domain(name)) if !policy.allow_private_addresses && name.eq_ignore_ascii_case("localhost") => {
            invalid("points to a private or local address")
        }
        Some(_) => Ok(()),
    }
}

/// Whether `ip` is an address on the public internet: not loopback,
/// private (RFC 1918, unique local), link-local, shared (RFC 6598),
/// unspecified, multicast, broadcast or documentation. IPv4 addresses
/// mapped into IPv6 are judged as IPv4.
pub fn is_public_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let shared = a == 100 && (64..128).contains(&b);
    let reserved = a == 0 || a >= 240 || (a, b, c) == (192, 0, 0);
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || shared
        || reserved)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let documentation = ip.segments()[0] == 0x2001 && ip.segments()[1] == 0x0db8;
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_unique_local()
        || ip.is_unicast_link_local()
        || documentation)
}

/// A stored `data` object as ruma's type (`GET /pushers`).
pub(crate) fn stored_data(data_json: &str) -> Result<HttpPusherData, Error> {
    serde_json::from_str(data_json).map_err(|e| Error::Internal(format!("stored pusher data: {e}")))
}

/// A stored `data` object without `url`: what the gateway is sent (spec:
/// "Servers MUST forward the entire content including `format` and any
/// custom keys but excluding `url`").
pub(crate) fn data_for_gateway(data_json: &str) -> Result<serde_json::Map<String, JsonValue>, Error> {
    let mut data: serde_json::Map<String, JsonValue> =
        serde_json::from_str(data_json).map_err(|e| Error::Internal(format!("stored pusher data: {e}")))?;
    data.remove("url");
    Ok(data)
}

#[cfg(test)]
mod tests {
    use chancery_proto::ruma::api::client::push::{EmailPusherData, PusherInit};
    use serde_json::json;

    use super::*;

    const STRICT: GatewayPolicy = GatewayPolicy { allow_http: false, allow_private_addresses: false };
    const LOOPBACK_TESTS: GatewayPolicy = GatewayPolicy { allow_http: true, allow_private_addresses: true };

    fn pusher(data: JsonValue) -> RumaPusher {
        let init = PusherInit {
            ids: PusherIds::new("key".into(), "com.example.app".into()),
            kind: serde_json::from_value(json!({"kind": "http", "data": data})).unwrap(),
            app_display_name: "App".into(),
            device_display_name: "Phone".into(),
            profile_tag: None,
            lang: "en".into(),
        };
        init.into()
    }

    #[test]
    fn gateway_urls() {
        let cases: &[(&str, GatewayPolicy, Result<(), &str>)] = &[
            ("https://push.example.org/_matrix/push/v1/notify", STRICT, Ok(())),
            ("https://push.example.org:8443/_matrix/push/v1/notify", STRICT, Ok(())),
            ("https://push.example.org/_matrix/push/v1/notify?token=x", STRICT, Ok(())),
            ("http://push.example.org/_matrix/push/v1/notify", STRICT, Err("https")),
            ("http://push.example.org/_matrix/push/v1/notify", LOOPBACK_TESTS, Ok(())),
            ("ftp://push.example.org/_matrix/push/v1/notify", LOOPBACK_TESTS, Err("https")),
            ("https://push.example.org/", STRICT, Err("path")),
            ("https://push.example.org/_matrix/push/v1/notify/", STRICT, Err("path")),
            ("https://push.example.org/_matrix/push/v2/notify", STRICT, Err("path")),
            ("push.example.org/_matrix/push/v1/notify", STRICT, Err("not a URL")),
            ("", STRICT, Err("not a URL")),
            ("https://user:pw@push.example.org/_matrix/push/v1/notify", STRICT, Err("credentials")),
            ("https://127.0.0.1/_matrix/push/v1/notify", STRICT, Err("private")),
            ("https://10.1.2.3/_matrix/push/v1/notify", STRICT, Err("private")),
            ("https://169.254.169.254/_matrix/push/v1/notify", STRICT, Err("private")),
            ("https://[::1]/_matrix/push/v1/notify", STRICT, Err("private")),
            ("https://[fd00::1]/_matrix/push/v1/notify", STRICT, Err("private")),
            ("https://[::ffff:192.168.1.1]/_matrix/push/v1/notify", STRICT, Err("private")),
            ("https://localhost/_matrix/push/v1/notify", STRICT, Err("private")),
            ("https://127.0.0.1/_matrix/push/v1/notify", LOOPBACK_TESTS, Ok(())),
            ("https://93.184.216.34/_matrix/push/v1/notify", STRICT, Ok(())),
            ("https://[2a00:1450::1]/_matrix/push/v1/notify", STRICT, Ok(())),
        ];
        for (url, policy, expected) in cases {
            let got = check_gateway_url(url, *policy);
            match (expected, got) {
                (Ok(()), Ok(())) => {}
                (Err(fragment), Err(Error::InvalidParam(message))) => {
                    assert!(message.contains(fragment), "{url}: {message} should say {fragment}")
                }
                (expected, got) => panic!("{url}: expected {expected:?}, got {got:?}"),
            }
        }
        let long = format!("https://push.example.org/_matrix/push/v1/notify?{}", "a".repeat(MAX_PUSHER_URL_BYTES));
        assert!(matches!(check_gateway_url(&long, STRICT), Err(Error::InvalidParam(_))));
    }

    #[test]
    fn public_addresses() {
        for (ip, public) in [
            ("8.8.8.8", true),
            ("100.63.255.255", true),
            ("100.64.0.1", false),
            ("100.127.255.255", false),
            ("172.16.0.1", false),
            ("172.32.0.1", true),
            ("192.168.0.1", false),
            ("192.0.0.8", false),
            ("192.0.2.1", false),
            ("192.0.1.1", true),
            ("0.0.0.0", false),
            ("255.255.255.255", false),
            ("224.0.0.1", false),
            ("240.0.0.1", false),
            ("2001:db8::1", false),
            ("fe80::1", false),
            ("ff02::1", false),
            ("::", false),
            ("::ffff:8.8.8.8", true),
            ("2606:4700::1111", true),
        ] {
            assert_eq!(is_public_address(ip.parse().unwrap()), public, "{ip}");
        }
    }

    #[test]
    fn pushers_are_checked_and_kept_as_sent() {
        let data = json!({"url": "https://push.example.org/_matrix/push/v1/notify", "format": "event_id_only",
                          "default_payload": {"aps": {"mutable-content": 1}}});
        let checked = check_pusher(&pusher(data.clone()), STRICT).unwrap();
        assert_eq!(serde_json::from_str::<JsonValue>(&checked.data_json).unwrap(), data);
        assert_eq!((checked.app_id.as_str(), checked.pushkey.as_str()), ("com.example.app", "key"));
        let for_gateway = data_for_gateway(&checked.data_json).unwrap();
        assert_eq!(
            JsonValue::Object(for_gateway),
            json!({"format": "event_id_only", "default_payload": {"aps": {"mutable-content": 1}}}),
            "everything but url, format included"
        );

        let url = "https://push.example.org/_matrix/push/v1/notify";
        let mut email = pusher(json!({"url": url}));
        email.kind = PusherKind::Email(EmailPusherData::new());
        assert!(matches!(check_pusher(&email, STRICT), Err(Error::InvalidParam(m)) if m.contains("e-mail")));

        let huge = pusher(json!({"url": url, "blob": "x".repeat(MAX_PUSHER_DATA_BYTES)}));
        assert!(matches!(check_pusher(&huge, STRICT), Err(Error::InvalidParam(m)) if m.contains("data")));

        let mut long_key = pusher(json!({"url": url}));
        long_key.ids.pushkey = "k".repeat(MAX_PUSHKEY_BYTES + 1);
        assert!(matches!(check_pusher(&long_key, STRICT), Err(Error::InvalidParam(m)) if m.contains("pushkey")));
        long_key.ids.pushkey = "k".repeat(MAX_PUSHKEY_BYTES);
        assert!(check_pusher(&long_key, STRICT).is_ok());

        let mut long_app = pusher(json!({"url": url}));
        long_app.ids.app_id = "é".repeat(MAX_PUSHER_APP_ID_CHARS);
        assert!(check_pusher(&long_app, STRICT).is_ok(), "64 characters, more bytes");
        long_app.ids.app_id.push('x');
        assert!(matches!(check_pusher(&long_app, STRICT), Err(Error::InvalidParam(m)) if m.contains("app_id")));

        let mut long_lang = pusher(json!({"url": url}));
        long_lang.lang = "x".repeat(MAX_PUSHER_TEXT_BYTES + 1);
        assert!(matches!(check_pusher(&long_lang, STRICT), Err(Error::InvalidParam(m)) if m.contains("lang")));

        let nul = pusher(json!({"url": url, "note": "a\u{0}b"}));
        assert!(matches!(check_pusher(&nul, STRICT), Err(Error::BadJson(_))));
    }
}
