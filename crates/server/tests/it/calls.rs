//! Calls (issue 15) over plain HTTP: OpenID tokens and their userinfo,
//! MSC4143 transport discovery with and without `[calls]`, the
//! lk-jwt-service compatible token service (`/sfu/get`, `/get_token`:
//! JWTs checked against the configured secret and lk-jwt-service's
//! algorithm, recomputed here), `org.matrix.msc3401.call.member` at power
//! level 0, and MSC4222's `state_after` under its unstable names.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use chancery_testkit::{Backend, TestServer};
use hmac::{Hmac, Mac};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::common::{User, assert_error, call, register};

const LIVEKIT_URL: &str = "wss://sfu.example.org";
const API_KEY: &str = "devkey";
const API_SECRET: &str = "a secret of at least thirty-two characters";

async fn with_calls(backend: Backend) -> TestServer {
    TestServer::start_with(backend, |config| {
        config.calls = Some(chancery_server::config::CallsSection {
            livekit_url: LIVEKIT_URL.into(),
            livekit_api_key: API_KEY.into(),
            livekit_api_secret: API_SECRET.into(),
            room_create_servers: None,
        });
    })
    .await
    .unwrap()
}

/// `POST /user/{me}/openid/request_token`, which must succeed.
async fn openid_token(user: &User) -> Value {
    let body = user.ok(Method::POST, &format!("/user/{}/openid/request_token", user.id), Some(json!({}))).await;
    assert_eq!(body["token_type"], "Bearer", "{body}");
    assert_eq!(body["expires_in"], 3600, "{body}");
    assert_eq!(body["matrix_server_name"], "localhost", "{body}");
    assert!(body["access_token"].as_str().is_some_and(|t| t.len() > 40), "{body}");
    body
}

async fn userinfo(base: &str, token: &str) -> (StatusCode, Value) {
    call(Method::GET, &format!("{base}/_matrix/federation/v1/openid/userinfo?access_token={token}"), None, None).await
}

async fn openid_tokens_are_issued_to_their_user_and_exchanged_for_their_id(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let base = &server.base_url;
    let alice = User::new(base, "alice").await;
    let bob = User::new(base, "bob").await;

    let token = openid_token(&alice).await;
    let token = token["access_token"].as_str().unwrap();
    assert_eq!(userinfo(base, token).await, (StatusCode::OK, json!({"sub": alice.id})));
    // Each request gets a fresh token; both stay valid.
    let second = openid_token(&alice).await["access_token"].as_str().unwrap().to_owned();
    assert_ne!(second, token);
    assert_eq!(userinfo(base, &second).await.1["sub"], alice.id);
    assert_eq!(userinfo(base, token).await.1["sub"], alice.id);

    // Only for yourself.
    let other = alice.call(Method::POST, &format!("/user/{}/openid/request_token", bob.id), Some(json!({}))).await;
    assert_error(&other, 403, "M_FORBIDDEN");
    // Needs an access token.
    let url = format!("{base}/_matrix/client/v3/user/{}/openid/request_token", alice.id);
    assert_error(&call(Method::POST, &url, None, Some(json!({}))).await, 401, "M_MISSING_TOKEN");
    // An access token is not an OpenID token, nor is anything made up.
    assert_error(&userinfo(base, &alice.token).await, 401, "M_UNKNOWN_TOKEN");
    assert_error(&userinfo(base, "cho_made_up").await, 401, "M_UNKNOWN_TOKEN");
    let none = call(Method::GET, &format!("{base}/_matrix/federation/v1/openid/userinfo"), None, None).await;
    assert_eq!(none.0, 401, "{}", none.1);

    // An expired token (written as the store keeps them, an hour old) is refused.
    let store = chancery_server::open_store(&server.config).await.unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let expired = chancery_store::NewOpenIdToken {
        token_hash: chancery_service::tokens::hash("cho_expired"),
        user_id: alice.id.clone(),
        expires_ts: now - 1,
        created_ts: now - 3_600_001,
    };
    store.save_openid_token(&expired, now - 3_600_001, 100).await.unwrap();
    store.close().await;
    assert_error(&userinfo(base, "cho_expired").await, 401, "M_UNKNOWN_TOKEN");
    assert_eq!(userinfo(base, token).await.1["sub"], alice.id, "the live one still works");

    // A deactivated user's tokens are worth nothing.
    let deactivate = json!({"auth": {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"},
                                     "password": crate::common::PASSWORD}});
    alice.ok(Method::POST, "/account/deactivate", Some(deactivate)).await;
    assert_error(&userinfo(base, token).await, 401, "M_UNKNOWN_TOKEN");
    server.stop().await.unwrap();
}
on_both_backends!(openid_tokens: openid_tokens_are_issued_to_their_user_and_exchanged_for_their_id());

async fn without_calls_nothing_is_advertised_or_served(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let base = &server.base_url;
    let alice = User::new(base, "alice").await;
    let (status, well_known) = call(Method::GET, &format!("{base}/.well-known/matrix/client"), None, None).await;
    assert_eq!(status, 200);
    assert!(well_known.get("org.matrix.msc4143.rtc_foci").is_none(), "{well_known}");
    let transports = format!("{base}/_matrix/client/unstable/org.matrix.msc4143/rtc/transports");
    assert_error(&call(Method::GET, &transports, Some(&alice.token), None).await, 404, "M_UNRECOGNIZED");
    for endpoint in ["sfu/get", "get_token"] {
        let got = call(Method::POST, &format!("{base}/livekit/jwt/{endpoint}"), None, Some(json!({}))).await;
        assert_error(&got, 404, "M_UNRECOGNIZED");
    }
    // OpenID itself is there: other third parties use it too.
    openid_token(&alice).await;
    server.stop().await.unwrap();
}
on_both_backends!(calls_off: without_calls_nothing_is_advertised_or_served());

/// lk-jwt-service's hash of a JSON list of strings (ids here hold none of
/// the characters Go escapes further).
fn lk_hash(items: &[&str]) -> String {
    STANDARD_NO_PAD.encode(Sha256::digest(serde_json::to_string(items).unwrap().as_bytes()))
}

/// Checks the JWT's HS256 signature with the configured secret and
/// returns its claims.
fn verified_claims(jwt: &str) -> Value {
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "{jwt}");
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(header["alg"], "HS256");
    let mut mac = Hmac::<Sha256>::new_from_slice(API_SECRET.as_bytes()).unwrap();
    mac.update(format!("{}.{}", parts[0], parts[1]).as_bytes());
    mac.verify_slice(&URL_SAFE_NO_PAD.decode(parts[2]).unwrap()).expect("signed with the configured secret");
    let mut wrong = Hmac::<Sha256>::new_from_slice(b"another secret").unwrap();
    wrong.update(format!("{}.{}", parts[0], parts[1]).as_bytes());
    assert!(wrong.verify_slice(&URL_SAFE_NO_PAD.decode(parts[2]).unwrap()).is_err());
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap()
}

#[track_caller]
fn assert_claims(claims: &Value, room: &str, identity: &str) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert_eq!(claims["iss"], API_KEY, "{claims}");
    assert_eq!(claims["sub"], identity, "{claims}");
    let nbf = claims["nbf"].as_u64().unwrap();
    assert!(nbf.abs_diff(now) < 60, "{claims}");
    assert_eq!(claims["exp"].as_u64(), Some(nbf + 3600), "{claims}");
    let video = &claims["video"];
    assert_eq!(video["room"], room, "{claims}");
    for grant in ["roomJoin", "canPublish", "canSubscribe", "canUpdateOwnMetadata", "roomCreate"] {
        assert_eq!(video[grant], true, "{grant}: {claims}");
    }
}

async fn the_token_service_hands_out_livekit_tokens_as_lk_jwt_service(backend: Backend) {
    let server = with_calls(backend).await;
    let base = &server.base_url;
    let service_url = server.config.livekit_service_url();
    assert!(service_url.ends_with("/livekit/jwt"), "{service_url}");
    let transport = json!({"type": "livekit", "livekit_service_url": service_url});

    // Discovery, in both forms.
    let (_, well_known) = call(Method::GET, &format!("{base}/.well-known/matrix/client"), None, None).await;
    assert_eq!(well_known["org.matrix.msc4143.rtc_foci"], json!([transport]), "{well_known}");
    let (user_id, token, device_id) = register(base, "alice").await;
    let alice = User { base: base.clone(), token, id: user_id.clone() };
    let transports = format!("{base}/_matrix/client/unstable/org.matrix.msc4143/rtc/transports");
    let (status, body) = call(Method::GET, &transports, Some(&alice.token), None).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"rtc_transports": [transport]})));
    assert_error(&call(Method::GET, &transports, None, None).await, 401, "M_MISSING_TOKEN");

    // The service is reached at `<public_baseurl>/livekit/jwt`; the test
    // server's configured base URL has no port, so go by the real one.
    let sfu_get = format!("{base}/livekit/jwt/sfu/get");
    let get_token = format!("{base}/livekit/jwt/get_token");
    let room_id = alice.create_room(json!({})).await;
    let openid = openid_token(&alice).await;

    // Legacy: the room of slot `m.call#ROOM`, identity `@user:server:DEVICE`.
    let legacy = json!({"room": room_id, "openid_token": openid, "device_id": device_id});
    let (status, answer) = call(Method::POST, &sfu_get, None, Some(legacy.clone())).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["url"], LIVEKIT_URL);
    let claims = verified_claims(answer["jwt"].as_str().unwrap());
    assert_claims(&claims, &lk_hash(&[&room_id, "m.call#ROOM"]), &format!("{user_id}:{device_id}"));

    // Matrix 2.0: the slot's room, the hashed member identity.
    let member = json!({"id": "member-1", "claimed_user_id": user_id, "claimed_device_id": device_id});
    let body = json!({"room_id": room_id, "slot_id": "m.call#ROOM", "openid_token": openid, "member": member});
    let (status, answer) = call(Method::POST, &get_token, None, Some(body.clone())).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["url"], LIVEKIT_URL);
    let claims = verified_claims(answer["jwt"].as_str().unwrap());
    assert_claims(&claims, &lk_hash(&[&room_id, "m.call#ROOM"]), &lk_hash(&[&user_id, &device_id, "member-1"]));
    let mut other_slot = body.clone();
    other_slot["slot_id"] = json!("m.call#other");
    let (_, answer) = call(Method::POST, &get_token, None, Some(other_slot)).await;
    assert_eq!(verified_claims(answer["jwt"].as_str().unwrap())["video"]["room"], lk_hash(&[&room_id, "m.call#other"]));

    // A browser's preflight is answered for any origin (Element Call is a
    // web app on another origin).
    let preflight = crate::common::http()
        .request(Method::OPTIONS, &get_token)
        .header("Origin", "https://call.example.org")
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "content-type")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    assert_eq!(preflight.headers()["access-control-allow-origin"], "*");

    // What lk-jwt-service refuses, it refuses here alike.
    let with = |mut v: Value, path: &[&str], value: Value| {
        let mut at = &mut v;
        for key in &path[..path.len() - 1] {
            at = &mut at[*key];
        }
        at[path[path.len() - 1]] = value;
        v
    };
    let bob_openid = openid_token(&User::new(base, "bob").await).await;
    let unauthorised = [
        ("unknown token", with(body.clone(), &["openid_token", "access_token"], json!("cho_made_up"))),
        ("an access token", with(body.clone(), &["openid_token", "access_token"], json!(alice.token))),
        ("another server's token", with(body.clone(), &["openid_token", "matrix_server_name"], json!("elsewhere.org"))),
        ("someone else's token", with(body.clone(), &["openid_token"], bob_openid.clone())),
        ("claimed user differs", with(body.clone(), &["member", "claimed_user_id"], json!("@bob:localhost"))),
    ];
    for (what, bad) in unauthorised {
        let got = call(Method::POST, &get_token, None, Some(bad)).await;
        assert_eq!(got.0, 401, "{what}: {}", got.1);
        assert_eq!(got.1["errcode"], "M_UNAUTHORIZED", "{what}: {}", got.1);
    }
    let got =
        call(Method::POST, &sfu_get, None, Some(with(legacy.clone(), &["openid_token", "matrix_server_name"], json!("x.org"))))
            .await;
    assert_error(&got, 401, "M_UNAUTHORIZED");
    let bad_json = [
        ("no slot", with(body.clone(), &["slot_id"], json!(""))),
        ("no member id", with(body.clone(), &["member", "id"], json!(""))),
        ("delay id without timeout", with(body.clone(), &["delay_id"], json!("d1"))),
        // Delegating the delayed leave is not built: refused the way
        // lk-jwt-service refuses users it does not delegate for.
        ("delegation", with(with(body.clone(), &["delay_id"], json!("d1")), &["delay_timeout"], json!(10_000))),
    ];
    for (what, bad) in bad_json {
        let got = call(Method::POST, &get_token, None, Some(bad)).await;
        assert_eq!((got.0.as_u16(), got.1["errcode"].as_str()), (400, Some("M_BAD_JSON")), "{what}: {}", got.1);
    }
    let legacy_delegation = with(with(legacy.clone(), &["delay_id"], json!("d1")), &["delay_timeout"], json!(10_000));
    assert_error(&call(Method::POST, &sfu_get, None, Some(legacy_delegation)).await, 400, "M_BAD_JSON");
    assert_error(&call(Method::POST, &sfu_get, None, Some(with(legacy, &["room"], json!("")))).await, 400, "M_BAD_JSON");
    let not_json = [("unknown field", json!({"room_id": room_id, "surprise": 1})), ("wrong type", json!({"room_id": 5}))];
    for (what, bad) in not_json {
        let got = call(Method::POST, &get_token, None, Some(bad)).await;
        assert_eq!((got.0.as_u16(), got.1["errcode"].as_str()), (400, Some("M_NOT_JSON")), "{what}: {}", got.1);
    }
    let garbage = crate::common::http().post(&sfu_get).body("{not json").send().await.unwrap();
    assert_eq!(garbage.status(), 400);
    server.stop().await.unwrap();
}
on_both_backends!(token_service: the_token_service_hands_out_livekit_tokens_as_lk_jwt_service());

async fn members_may_send_call_membership_at_power_level_zero(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let base = &server.base_url;
    let alice = User::new(base, "alice").await;
    let bob = User::new(base, "bob").await;
    for preset in ["private_chat", "public_chat", "trusted_private_chat"] {
        let room = alice.create_room(json!({"preset": preset, "invite": [bob.id]})).await;
        let levels = alice.ok(Method::GET, &format!("/rooms/{room}/state/m.room.power_levels/"), None).await;
        assert_eq!(levels["events"]["org.matrix.msc3401.call.member"], 0, "{preset}: {levels}");
        bob.ok(Method::POST, &format!("/join/{room}"), Some(json!({}))).await;
        if preset == "trusted_private_chat" {
            continue; // bob is an admin there: proves nothing
        }
        // Bob (power level 0) cannot name the room, but joins the call,
        // under his own id (legacy) and a device-scoped key (MSC4143).
        let name = bob.call(Method::PUT, &format!("/rooms/{room}/state/m.room.name/"), Some(json!({"name": "x"}))).await;
        assert_error(&name, 403, "M_FORBIDDEN");
        let membership = json!({"application": "m.call", "call_id": "", "scope": "m.room", "device_id": "BOBDEV",
                                "focus_active": {"type": "livekit", "focus_selection": "oldest_membership"},
                                "foci_preferred": [], "expires": 14_400_000});
        for key in [bob.id.clone(), format!("_{}_BOBDEV", bob.id)] {
            let path = format!("/rooms/{room}/state/org.matrix.msc3401.call.member/{key}");
            bob.ok(Method::PUT, &path, Some(membership.clone())).await;
            assert_eq!(bob.ok(Method::GET, &path, None).await["application"], "m.call", "{preset}");
        }
    }
    server.stop().await.unwrap();
}
on_both_backends!(call_member_power_level: members_may_send_call_membership_at_power_level_zero());

fn state_types(section: &Value) -> Vec<String> {
    section["events"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap().to_owned()).collect()
}

async fn state_after_is_served_under_its_unstable_names(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let base = &server.base_url;
    let (_, versions) = call(Method::GET, &format!("{base}/_matrix/client/versions"), None, None).await;
    assert_eq!(versions["unstable_features"]["org.matrix.msc4222"], true, "{versions}");
    let alice = User::new(base, "alice").await;
    let bob = User::new(base, "bob").await;
    let room = alice.create_room(json!({"preset": "public_chat", "name": "before"})).await;
    const UNSTABLE: &str = "org.matrix.msc4222.use_state_after=true";
    const KEY: &str = "org.matrix.msc4222.state_after";

    // Initial sync: the whole state, under the unstable key only.
    let initial = alice.sync(UNSTABLE).await;
    let joined = &initial["rooms"]["join"][&room];
    assert!(joined.get("state").is_none() && joined.get("state_after").is_none(), "{joined}");
    assert!(state_types(&joined[KEY]).contains(&"m.room.name".to_owned()), "{joined}");

    // A state change in the timeline is in `state_after` too (the state
    // at the end of the timeline), with its new content.
    let since = initial["next_batch"].as_str().unwrap();
    alice.ok(Method::PUT, &format!("/rooms/{room}/state/m.room.name/"), Some(json!({"name": "after"}))).await;
    let next = alice.sync(&format!("since={since}&{UNSTABLE}")).await;
    let joined = &next["rooms"]["join"][&room];
    assert_eq!(joined["timeline"]["events"][0]["content"]["name"], "after", "{joined}");
    assert!(joined.get("state").is_none(), "{joined}");
    let after = joined[KEY]["events"].as_array().unwrap();
    assert_eq!(after.len(), 1, "{joined}");
    assert_eq!((after[0]["type"].as_str(), after[0]["content"]["name"].as_str()), (Some("m.room.name"), Some("after")));

    // Without the flag, the classic `state` (empty: the change is in the
    // timeline); with the stable name, `state_after`.
    let plain = alice.sync(&format!("since={since}")).await;
    let joined = &plain["rooms"]["join"][&room];
    assert_eq!(joined["state"], json!({"events": []}), "{joined}");
    assert!(joined.get(KEY).is_none(), "{joined}");
    let stable = alice.sync(&format!("since={since}&use_state_after=true")).await;
    let joined = &stable["rooms"]["join"][&room];
    assert_eq!(state_types(&joined["state_after"]), ["m.room.name"], "{joined}");
    assert!(joined.get(KEY).is_none() && joined.get("state").is_none(), "{joined}");

    // A left room follows the flag as well.
    bob.ok(Method::POST, &format!("/join/{room}"), Some(json!({}))).await;
    let since = bob.sync("").await["next_batch"].as_str().unwrap().to_owned();
    bob.ok(Method::POST, &format!("/rooms/{room}/leave"), Some(json!({}))).await;
    let left = bob.sync(&format!("since={since}&{UNSTABLE}")).await;
    let left = &left["rooms"]["leave"][&room];
    assert!(left.get("state").is_none(), "{left}");
    assert!(state_types(&left[KEY]).contains(&"m.room.member".to_owned()), "{left}");
    server.stop().await.unwrap();
}
on_both_backends!(state_after_unstable: state_after_is_served_under_its_unstable_names());
