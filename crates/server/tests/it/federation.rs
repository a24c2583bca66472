//! Federation between Chancery servers (issue 16): keys, signed requests,
//! queries, and the closed-federation controls. Servers are named
//! `127.0.0.1:<port>` and federate over TLS with certificates of the test
//! process's CA.

use chancery_testkit::federation::TestCa;
use chancery_testkit::{Backend, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{User, assert_error, urlencode};

/// A client of the server-server API that trusts the test CA.
fn federation_http() -> reqwest::Client {
    let ca = std::fs::read(&TestCa::shared().cert_path).unwrap();
    reqwest::Client::builder()
        .tls_certs_merge(reqwest::Certificate::from_pem_bundle(&ca).unwrap())
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn get_json(client: &reqwest::Client, url: &str, authorization: Option<&str>) -> (StatusCode, Value) {
    let mut request = client.get(url);
    if let Some(authorization) = authorization {
        request = request.header("Authorization", authorization);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn keys_version_and_unknown_endpoints(backend: Backend) {
    let server = TestServer::start_federating(backend, |_| {}).await.unwrap();
    let base = server.federation_url().unwrap();
    let client = federation_http();

    let (status, keys) = get_json(&client, &format!("{base}/_matrix/key/v2/server"), None).await;
    assert_eq!(status, 200, "{keys}");
    assert_eq!(keys["server_name"], server.server_name());
    let verify_keys = keys["verify_keys"].as_object().unwrap();
    assert_eq!(verify_keys.len(), 1);
    let key_id = verify_keys.keys().next().unwrap();
    assert!(key_id.starts_with("ed25519:"));
    assert!(keys["signatures"][server.server_name()][key_id].is_string(), "{keys}");
    assert!(keys["valid_until_ts"].as_u64().unwrap() > 0);

    let (status, version) = get_json(&client, &format!("{base}/_matrix/federation/v1/version"), None).await;
    assert_eq!(status, 200);
    assert_eq!(version["server"]["name"], "Chancery");

    // A notary answer for itself is its own document.
    let (status, notary) = get_json(&client, &format!("{base}/_matrix/key/v2/query/{}", server.server_name()), None).await;
    assert_eq!(status, 200, "{notary}");
    assert_eq!(notary["server_keys"][0]["server_name"], server.server_name());

    // Not (yet) served: unknown, as the spec says.
    let got = get_json(&client, &format!("{base}/_matrix/federation/v1/no_such_thing"), None).await;
    assert_error(&got, 404, "M_UNRECOGNIZED");
    // The client listener does not serve the server-server API.
    let got = crate::common::call(Method::GET, &format!("{}/_matrix/key/v2/server", server.base_url), None, None).await;
    assert_error(&got, 404, "M_UNRECOGNIZED");
    server.stop().await.unwrap();
}
on_both_backends!(keys_version_and_unknown_endpoints);

async fn profiles_and_aliases_across_servers(backend: Backend) {
    let a = TestServer::start_federating(backend, |_| {}).await.unwrap();
    let b = TestServer::start_federating(backend, |_| {}).await.unwrap();
    let alice = User::new(&a.base_url, "alice").await;
    let bob = User::new(&b.base_url, "bob").await;
    alice
        .ok(Method::PUT, &format!("/profile/{}/displayname", urlencode(&alice.id)), Some(json!({"displayname": "Alice A"})))
        .await;
    let room = alice.create_room(json!({"room_alias_name": "lobby", "preset": "public_chat"})).await;

    // Bob, on B, reads Alice's profile on A: B asks A over federation.
    let profile = bob.ok(Method::GET, &format!("/profile/{}", urlencode(&alice.id)), None).await;
    assert_eq!(profile["displayname"], "Alice A", "{profile}");
    let name = bob.ok(Method::GET, &format!("/profile/{}/displayname", urlencode(&alice.id)), None).await;
    assert_eq!(name["displayname"], "Alice A");
    let got = bob.call(Method::GET, &format!("/profile/{}", urlencode(&format!("@nobody:{}", a.server_name()))), None).await;
    assert_error(&got, 404, "M_NOT_FOUND");

    // And resolves A's alias.
    let alias = format!("#lobby:{}", a.server_name());
    let found = bob.ok(Method::GET, &format!("/directory/room/{}", urlencode(&alias)), None).await;
    assert_eq!(found["room_id"], room.as_str());
    assert_eq!(found["servers"], json!([a.server_name()]));
    let missing = format!("#nowhere:{}", a.server_name());
    let got = bob.call(Method::GET, &format!("/directory/room/{}", urlencode(&missing)), None).await;
    assert_error(&got, 404, "M_NOT_FOUND");

    // B's users read A's published room directory.
    alice.ok(Method::PUT, &format!("/directory/list/room/{room}"), Some(json!({"visibility": "public"}))).await;
    let page = bob.ok(Method::GET, &format!("/publicRooms?server={}", urlencode(a.server_name())), None).await;
    assert_eq!(page["chunk"][0]["room_id"], room.as_str(), "{page}");
    let page = bob
        .ok(
            Method::POST,
            &format!("/publicRooms?server={}", urlencode(a.server_name())),
            Some(json!({"filter": {"generic_search_term": "zzz-nothing"}})),
        )
        .await;
    assert_eq!(page["chunk"], json!([]), "{page}");

    // B, as a notary, hands on A's keys with its own signature added.
    let client = federation_http();
    let url = format!("{}/_matrix/key/v2/query/{}", b.federation_url().unwrap(), a.server_name());
    let (status, notary) = get_json(&client, &url, None).await;
    assert_eq!(status, 200, "{notary}");
    let document = &notary["server_keys"][0];
    assert_eq!(document["server_name"], a.server_name());
    assert!(
        document["signatures"][a.server_name()].is_object() && document["signatures"][b.server_name()].is_object(),
        "{document}"
    );
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}
on_both_backends!(profiles_and_aliases_across_servers);

/// Signed endpoints refuse requests without a valid signature: 401
/// `M_UNAUTHORIZED`, whatever is wrong with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_and_badly_signed_requests_are_refused() {
    let a = TestServer::start_federating(Backend::Sqlite, |_| {}).await.unwrap();
    let b = TestServer::start_federating(Backend::Sqlite, |_| {}).await.unwrap();
    let alice = User::new(&a.base_url, "alice").await;
    let client = federation_http();
    let url = format!("{}/_matrix/federation/v1/query/profile?user_id={}", a.federation_url().unwrap(), urlencode(&alice.id));
    let got = get_json(&client, &url, None).await;
    assert_error(&got, 401, "M_UNAUTHORIZED");
    let got = get_json(&client, &url, Some("Bearer abc")).await;
    assert_error(&got, 401, "M_UNAUTHORIZED");
    // A key B does not have.
    let forged =
        format!(r#"X-Matrix origin="{}",destination="{}",key="ed25519:nope",sig="AAAA""#, b.server_name(), a.server_name());
    let got = get_json(&client, &url, Some(&forged)).await;
    assert_error(&got, 401, "M_UNAUTHORIZED");
    // B's real key, but a signature that is not over this request.
    let (_, keys) = get_json(&client, &format!("{}/_matrix/key/v2/server", b.federation_url().unwrap()), None).await;
    let key_id = keys["verify_keys"].as_object().unwrap().keys().next().unwrap().clone();
    let bad_sig = "a".repeat(86);
    let forged =
        format!(r#"X-Matrix origin="{}",destination="{}",key="{key_id}",sig="{bad_sig}""#, b.server_name(), a.server_name());
    let got = get_json(&client, &url, Some(&forged)).await;
    assert_error(&got, 401, "M_UNAUTHORIZED");
    // Addressed to another server.
    let forged =
        format!(r#"X-Matrix origin="{}",destination="elsewhere.example",key="{key_id}",sig="{bad_sig}""#, b.server_name());
    let got = get_json(&client, &url, Some(&forged)).await;
    assert_error(&got, 401, "M_UNAUTHORIZED");
    // A server that does not answer for its keys.
    let forged = format!(r#"X-Matrix origin="127.0.0.1:1",destination="{}",key="ed25519:x",sig="AAAA""#, a.server_name());
    let got = get_json(&client, &url, Some(&forged)).await;
    assert_error(&got, 401, "M_UNAUTHORIZED");
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

/// With an allow list, a server outside it is neither heard nor contacted;
/// a denied server neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_federation_hears_and_contacts_only_the_allowed() {
    let partner = TestServer::start_federating(Backend::Sqlite, |_| {}).await.unwrap();
    let outsider = TestServer::start_federating(Backend::Sqlite, |_| {}).await.unwrap();
    let partner_name = partner.server_name().to_owned();
    let home = TestServer::start_federating(Backend::Sqlite, |c| c.federation.allow = vec![partner_name]).await.unwrap();
    let alice = User::new(&home.base_url, "alice").await;
    let pat = User::new(&partner.base_url, "pat").await;
    let olga = User::new(&outsider.base_url, "olga").await;

    // The partner is heard and contacted.
    pat.ok(Method::GET, &format!("/profile/{}", urlencode(&alice.id)), None).await;
    alice.ok(Method::GET, &format!("/profile/{}", urlencode(&pat.id)), None).await;
    // The outsider is not heard: home refuses its signed request...
    let got = olga.call(Method::GET, &format!("/profile/{}", urlencode(&alice.id)), None).await;
    assert_error(&got, 403, "M_FORBIDDEN");
    assert!(got.1["error"].as_str().unwrap().contains("403"), "the outsider's server relays home's refusal: {}", got.1);
    // ... and not contacted.
    let got = alice.call(Method::GET, &format!("/profile/{}", urlencode(&olga.id)), None).await;
    assert_error(&got, 403, "M_FORBIDDEN");

    let denying =
        TestServer::start_federating(Backend::Sqlite, |c| c.federation.deny = vec!["127.0.0.1:*".into()]).await.unwrap();
    let dan = User::new(&denying.base_url, "dan").await;
    let got = dan.call(Method::GET, &format!("/profile/{}", urlencode(&alice.id)), None).await;
    assert_error(&got, 403, "M_FORBIDDEN");
    for server in [partner, outsider, home, denying] {
        server.stop().await.unwrap();
    }
}

/// A pinned key is the only one believed for its server: a server
/// presenting another key (a stolen name) is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_keys_refuse_any_other_key() {
    let b = TestServer::start_federating(Backend::Sqlite, |_| {}).await.unwrap();
    let client = federation_http();
    let (_, keys) = get_json(&client, &format!("{}/_matrix/key/v2/server", b.federation_url().unwrap()), None).await;
    let (key_id, key) = keys["verify_keys"]
        .as_object()
        .unwrap()
        .iter()
        .next()
        .map(|(id, k)| (id.clone(), k["key"].as_str().unwrap().to_owned()))
        .unwrap();
    let b_name = b.server_name().to_owned();
    let bob = User::new(&b.base_url, "bob").await;

    // Right pin: heard.
    let pinned = [(b_name.clone(), [(key_id.clone(), key)].into())].into();
    let trusting = TestServer::start_federating(Backend::Sqlite, |c| c.federation.pinned_keys = pinned).await.unwrap();
    let alice = User::new(&trusting.base_url, "alice").await;
    bob.ok(Method::GET, &format!("/profile/{}", urlencode(&alice.id)), None).await;

    // Wrong pin (another key under the same id): refused.
    let wrong = "Ab9x5vyYJNl1vRrbvaVAp7+b5r6kOIa1AfoLHbYdBa8".to_owned();
    let pinned = [(b_name, [(key_id, wrong)].into())].into();
    let suspicious = TestServer::start_federating(Backend::Sqlite, |c| c.federation.pinned_keys = pinned).await.unwrap();
    let carol = User::new(&suspicious.base_url, "carol").await;
    let (status, body) = bob.call(Method::GET, &format!("/profile/{}", urlencode(&carol.id)), None).await;
    assert_eq!(status, 502, "{body}");
    assert!(body["error"].as_str().unwrap().contains("401"), "{body}");
    for server in [b, trusting, suspicious] {
        server.stop().await.unwrap();
    }
}

/// A user of one server joins a public room of another by its alias: the
/// room appears on the joiner's server with its state, and the resident
/// server sees the join. A room the user may not join stays closed.
async fn joins_across_servers(backend: Backend) {
    let a = TestServer::start_federating(backend, |_| {}).await.unwrap();
    let b = TestServer::start_federating(backend, |_| {}).await.unwrap();
    let alice = User::new(&a.base_url, "alice").await;
    let bob = User::new(&b.base_url, "bob").await;
    bob.ok(Method::PUT, &format!("/profile/{}/displayname", urlencode(&bob.id)), Some(json!({"displayname": "Bob B"}))).await;
    let room = alice.create_room(json!({"room_alias_name": "lobby", "preset": "public_chat", "name": "Lobby"})).await;
    alice.say(&room, "t1", "before bob").await;

    let alias = format!("#lobby:{}", a.server_name());
    let joined = bob.ok(Method::POST, &format!("/join/{}", urlencode(&alias)), Some(json!({}))).await;
    assert_eq!(joined["room_id"], room.as_str());

    // B knows the room now: its name, its members.
    let name = bob.ok(Method::GET, &format!("/rooms/{room}/state/m.room.name/"), None).await;
    assert_eq!(name["name"], "Lobby");
    let members = bob.ok(Method::GET, &format!("/rooms/{room}/joined_members"), None).await;
    assert!(members["joined"][&alice.id].is_object() && members["joined"][&bob.id].is_object(), "{members}");
    let sync = bob.sync("").await;
    assert!(sync["rooms"]["join"][&room].is_object(), "{sync}");
    // A stored Bob's join, with the display name B put in it.
    let members = alice.ok(Method::GET, &format!("/rooms/{room}/joined_members"), None).await;
    assert_eq!(members["joined"][&bob.id]["display_name"], "Bob B", "{members}");
    // Joining again changes nothing.
    bob.ok(Method::POST, &format!("/rooms/{room}/join"), Some(json!({}))).await;

    // An invite-only room: A refuses the join, and B says so.
    let private = alice.create_room(json!({"room_alias_name": "private", "preset": "private_chat"})).await;
    let alias = format!("#private:{}", a.server_name());
    let got = bob.call(Method::POST, &format!("/join/{}", urlencode(&alias)), Some(json!({}))).await;
    assert_error(&got, 403, "M_FORBIDDEN");
    let got = bob.call(Method::GET, &format!("/rooms/{private}/state"), None).await;
    assert_eq!(got.0, 403, "B does not know the private room: {}", got.1);

    // A room that does not federate: public, yet closed to other servers.
    let local = alice
        .create_room(json!({"room_alias_name": "local", "preset": "public_chat", "creation_content": {"m.federate": false}}))
        .await;
    let got =
        bob.call(Method::POST, &format!("/join/{}", urlencode(&format!("#local:{}", a.server_name()))), Some(json!({}))).await;
    assert_error(&got, 403, "M_FORBIDDEN");
    let got = alice.call(Method::POST, &format!("/rooms/{local}/invite"), Some(json!({"user_id": bob.id}))).await;
    assert_error(&got, 403, "M_FORBIDDEN");
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}
on_both_backends!(joins_across_servers);

/// Sends a transaction to `to` as `from` would, signed with `from`'s key
/// (read from its key file): the test plays `from`'s sender.
async fn send_transaction_as(from: &TestServer, to: &TestServer, txn_id: &str, body: Value) -> (StatusCode, Value) {
    signed_as(from, to, "PUT", &format!("/_matrix/federation/v1/send/{txn_id}"), Some(body)).await
}

/// A request to `to`'s server-server API signed as `from` signs them.
pub(crate) async fn signed_as(
    from: &TestServer,
    to: &TestServer,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    use chancery_proto::ruma::ServerName;
    use chancery_proto::ruma::api::federation::authentication::{ServerSignaturesInput, XMatrix};
    let key = chancery_service::signing::load_or_generate(&from.config.signing_key_path()).unwrap();
    let bytes = body.map(|b| serde_json::to_vec(&b).unwrap()).unwrap_or_default();
    let request = http::Request::builder().method(method).uri(path).body(bytes.clone()).unwrap();
    let origin = ServerName::parse(from.server_name()).unwrap();
    let destination = ServerName::parse(to.server_name()).unwrap();
    let header = XMatrix::try_from_http_request(&request, ServerSignaturesInput::new(origin, destination, &key)).unwrap();
    let mut request = federation_http()
        .request(method.parse().unwrap(), format!("{}{path}", to.federation_url().unwrap()))
        .header("Authorization", header.to_string());
    if !bytes.is_empty() {
        request = request.header("Content-Type", "application/json").body(bytes);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Typing and read receipts of a remote user arrive as EDUs and show in
/// local users' syncs; an EDU speaking for another server's user is
/// dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_and_receipts_from_another_server() {
    let a = TestServer::start_federating(Backend::Sqlite, |_| {}).await.unwrap();
    let b = TestServer::start_federating(Backend::Sqlite, |_| {}).await.unwrap();
    let alice = User::new(&a.base_url, "alice").await;
    let bob = User::new(&b.base_url, "bob").await;
    let room = alice.create_room(json!({"room_alias_name": "edus", "preset": "public_chat"})).await;
    let event = alice.say(&room, "t1", "read me").await;
    bob.ok(Method::POST, &format!("/join/{}", urlencode(&format!("#edus:{}", a.server_name()))), Some(json!({}))).await;

    let edus = json!({
        "origin": b.server_name(), "origin_server_ts": 1, "pdus": [],
        "edus": [
            {"edu_type": "m.typing", "content": {"room_id": room, "user_id": bob.id, "typing": true}},
            {"edu_type": "m.typing", "content": {"room_id": room, "user_id": alice.id, "typing": true}},
            {"edu_type": "m.receipt", "content": {room.clone(): {"m.read": {bob.id.clone(): {"data": {"ts": 5}, "event_ids": [event]}}}}},
        ],
    });
    let (status, body) = send_transaction_as(&b, &a, "txn1", edus).await;
    assert_eq!(status, 200, "{body}");
    let sync = alice.sync("").await;
    let ephemeral = &sync["rooms"]["join"][&room]["ephemeral"]["events"];
    let typing = ephemeral.as_array().unwrap().iter().find(|e| e["type"] == "m.typing").expect("a typing event");
    assert_eq!(typing["content"]["user_ids"], json!([bob.id]), "B may not speak for alice: {typing}");
    let receipt = ephemeral.as_array().unwrap().iter().find(|e| e["type"] == "m.receipt").expect("a receipt");
    assert!(receipt["content"][&event]["m.read"][&bob.id]["ts"].is_u64(), "{receipt}");

    // A transaction whose origin is not its signer is refused whole.
    let forged = json!({"origin": "elsewhere.example", "origin_server_ts": 1, "pdus": [], "edus": []});
    let got = send_transaction_as(&b, &a, "txn2", forged).await;
    assert_error(&got, 403, "M_FORBIDDEN");
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

/// The reads other servers make of a shared room: one event, the state at
/// an event, backfill and missing events; a server with no user in the
/// room reads nothing.
async fn room_reads_for_servers_in_the_room(backend: Backend) {
    let a = TestServer::start_federating(backend, |_| {}).await.unwrap();
    let b = TestServer::start_federating(backend, |_| {}).await.unwrap();
    let c = TestServer::start_federating(backend, |_| {}).await.unwrap();
    let alice = User::new(&a.base_url, "alice").await;
    let bob = User::new(&b.base_url, "bob").await;
    let room = alice.create_room(json!({"room_alias_name": "reads", "preset": "public_chat"})).await;
    let first = alice.say(&room, "t1", "one").await;
    let second = alice.say(&room, "t2", "two").await;
    bob.ok(Method::POST, &format!("/join/{}", urlencode(&format!("#reads:{}", a.server_name()))), Some(json!({}))).await;
    let third = alice.say(&room, "t3", "three").await;

    let (status, got) = signed_as(&b, &a, "GET", &format!("/_matrix/federation/v1/event/{}", urlencode(&second)), None).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["pdus"][0]["content"]["body"], "two");
    assert_eq!(got["origin"], a.server_name());

    let path = format!("/_matrix/federation/v1/state_ids/{}?event_id={}", urlencode(&room), urlencode(&third));
    let (status, got) = signed_as(&b, &a, "GET", &path, None).await;
    assert_eq!(status, 200, "{got}");
    let state_ids = got["pdu_ids"].as_array().unwrap();
    assert!(state_ids.len() >= 5, "create, members, power levels, join rules...: {got}");
    assert!(!got["auth_chain_ids"].as_array().unwrap().is_empty(), "{got}");
    let path = format!("/_matrix/federation/v1/state/{}?event_id={}", urlencode(&room), urlencode(&third));
    let (status, got) = signed_as(&b, &a, "GET", &path, None).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["pdus"].as_array().unwrap().len(), state_ids.len());

    let path = format!("/_matrix/federation/v1/event_auth/{}/{}", urlencode(&room), urlencode(&third));
    let (status, got) = signed_as(&b, &a, "GET", &path, None).await;
    assert_eq!(status, 200, "{got}");
    let types: Vec<&str> = got["auth_chain"].as_array().unwrap().iter().filter_map(|e| e["type"].as_str()).collect();
    assert!(types.contains(&"m.room.create") && types.contains(&"m.room.power_levels"), "{got}");

    let path = format!("/_matrix/federation/v1/backfill/{}?v={}&limit=3", urlencode(&room), urlencode(&third));
    let (status, got) = signed_as(&b, &a, "GET", &path, None).await;
    assert_eq!(status, 200, "{got}");
    let bodies: Vec<&Value> = got["pdus"].as_array().unwrap().iter().map(|p| &p["content"]).collect();
    assert_eq!(bodies.len(), 3, "{got}");
    assert_eq!(bodies[0]["body"], "three", "newest first, from v on: {got}");

    let path = format!("/_matrix/federation/v1/get_missing_events/{}", urlencode(&room));
    let body = json!({"earliest_events": [first], "latest_events": [third], "limit": 10, "min_depth": 0});
    let (status, got) = signed_as(&b, &a, "POST", &path, Some(body)).await;
    assert_eq!(status, 200, "{got}");
    let events = got["events"].as_array().unwrap();
    assert_eq!(events.first().unwrap()["content"]["body"], "two", "oldest first: {got}");
    assert_eq!(events.last().unwrap()["content"]["membership"], "join", "bob's join is between: {got}");

    // C has nobody in the room.
    let got = signed_as(&c, &a, "GET", &format!("/_matrix/federation/v1/event/{}", urlencode(&second)), None).await;
    assert_error(&got, 403, "M_FORBIDDEN");
    for server in [a, b, c] {
        server.stop().await.unwrap();
    }
}
on_both_backends!(room_reads_for_servers_in_the_room);

/// Waits (bounded) until `user`'s sync shows a message with `body` in
/// `room`; returns the bodies of the room's messages seen, in order.
async fn wait_for_message(user: &User, room: &str, body: &str) -> Vec<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut since: Option<String> = None;
    let mut seen = Vec::new();
    loop {
        let query = match &since {
            Some(token) => format!("timeout=5000&since={token}"),
            None => "timeout=0".to_owned(),
        };
        let sync = user.sync(&query).await;
        since = sync["next_batch"].as_str().map(str::to_owned);
        if let Some(events) = sync["rooms"]["join"][room]["timeline"]["events"].as_array() {
            for event in events.iter().filter(|e| e["type"] == "m.room.message") {
                seen.push(event["content"]["body"].as_str().unwrap_or_default().to_owned());
            }
        }
        if seen.iter().any(|b| b == body) {
            return seen;
        }
        assert!(std::time::Instant::now() < deadline, "{body:?} never reached {}: saw {seen:?}", user.id);
    }
}

/// Two users on two servers chat both ways; with one server stopped the
/// other keeps sending, and after its restart everything arrives, in order.
async fn chat_across_servers_survives_a_restart(backend: Backend) {
    let a = TestServer::start_federating(backend, |_| {}).await.unwrap();
    let mut b = TestServer::start_federating(backend, |_| {}).await.unwrap();
    let alice = User::new(&a.base_url, "alice").await;
    let mut bob = User::new(&b.base_url, "bob").await;
    let room = alice.create_room(json!({"room_alias_name": "chat", "preset": "public_chat"})).await;
    bob.ok(Method::POST, &format!("/join/{}", urlencode(&format!("#chat:{}", a.server_name()))), Some(json!({}))).await;

    alice.say(&room, "a1", "hello from A").await;
    wait_for_message(&bob, &room, "hello from A").await;
    bob.say(&room, "b1", "hello from B").await;
    wait_for_message(&alice, &room, "hello from B").await;

    // B goes down; A keeps sending (and a to-device message for bob, which
    // A tries again); B comes back on the same port.
    b.restart_after(|| async {
        for n in 0..3 {
            alice.say(&room, &format!("down{n}"), &format!("while B was down {n}")).await;
        }
        let body = json!({"messages": {bob.id.clone(): {"*": {"note": "sent while B was down"}}}});
        alice.ok(Method::PUT, "/sendToDevice/org.example.note/td1", Some(body)).await;
    })
    .await
    .unwrap();
    bob.base = b.base_url.clone();
    // One sync loop watches both: a to-device message is delivered once
    // (a later sync acknowledges it), so it must be looked for in every
    // answer.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let (mut seen, mut note, mut since) = (Vec::new(), None, None::<String>);
    while !(seen.iter().any(|b: &String| b == "while B was down 2") && note.is_some()) {
        let query = since.as_ref().map_or("timeout=0".to_owned(), |t| format!("timeout=2000&since={t}"));
        let sync = bob.sync(&query).await;
        since = sync["next_batch"].as_str().map(str::to_owned);
        for event in sync["rooms"]["join"][&room]["timeline"]["events"].as_array().into_iter().flatten() {
            if event["type"] == "m.room.message" {
                seen.push(event["content"]["body"].as_str().unwrap_or_default().to_owned());
            }
        }
        if let Some(found) =
            sync["to_device"]["events"].as_array().into_iter().flatten().find(|e| e["type"] == "org.example.note")
        {
            note = Some(found.clone());
        }
        assert!(std::time::Instant::now() < deadline, "not everything reached bob: messages {seen:?}, to-device {note:?}");
    }
    let down: Vec<&String> = seen.iter().filter(|b| b.starts_with("while B was down")).collect();
    assert_eq!(down, ["while B was down 0", "while B was down 1", "while B was down 2"], "in order, once each: {seen:?}");
    let note = note.unwrap();
    assert_eq!(note["sender"], alice.id.as_str());
    assert_eq!(note["content"]["note"], "sent while B was down");
    bob.say(&room, "b2", "back").await;
    wait_for_message(&alice, &room, "back").await;
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}
on_both_backends!(chat_across_servers_survives_a_restart);

/// Waits (bounded) until `user`'s sync shows an invite to `room`.
pub(crate) async fn wait_for_invite(user: &User, room: &str) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let sync = user.sync("timeout=0").await;
        if sync["rooms"]["invite"][room].is_object() {
            return sync["rooms"]["invite"][room].clone();
        }
        assert!(std::time::Instant::now() < deadline, "no invite to {room} for {}: {sync}", user.id);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A direct chat with a user of another server: created with the invite,
/// seen by the invitee, accepted over federation, and used both ways; an
/// invite refused is seen refused by the inviter.
async fn invites_across_servers(backend: Backend) {
    let a = TestServer::start_federating(backend, |_| {}).await.unwrap();
    let b = TestServer::start_federating(backend, |_| {}).await.unwrap();
    let alice = User::new(&a.base_url, "alice").await;
    let bob = User::new(&b.base_url, "bob").await;
    let carol = User::new(&b.base_url, "carol").await;
    let room = alice.create_room(json!({"preset": "trusted_private_chat", "is_direct": true, "invite": [bob.id]})).await;

    let invite = wait_for_invite(&bob, &room).await;
    let own = invite["invite_state"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.room.member" && e["state_key"] == bob.id.as_str())
        .cloned();
    assert_eq!(own.as_ref().map(|e| e["sender"].clone()), Some(json!(alice.id)), "{invite}");
    assert_eq!(own.map(|e| e["content"]["is_direct"].clone()), Some(json!(true)));

    bob.ok(Method::POST, &format!("/rooms/{room}/join"), Some(json!({}))).await;
    let members = bob.ok(Method::GET, &format!("/rooms/{room}/joined_members"), None).await;
    assert!(members["joined"][&alice.id].is_object() && members["joined"][&bob.id].is_object(), "{members}");
    alice.say(&room, "a1", "hi bob").await;
    wait_for_message(&bob, &room, "hi bob").await;
    bob.say(&room, "b1", "hi alice").await;
    wait_for_message(&alice, &room, "hi alice").await;

    // An invite through /invite, refused.
    alice.ok(Method::POST, &format!("/rooms/{room}/invite"), Some(json!({"user_id": carol.id}))).await;
    wait_for_invite(&carol, &room).await;
    carol.ok(Method::POST, &format!("/rooms/{room}/leave"), Some(json!({}))).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let member = alice.call(Method::GET, &format!("/rooms/{room}/state/m.room.member/{}", urlencode(&carol.id)), None).await;
        if member.1["membership"] == "leave" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "carol's refusal never reached A: {}", member.1);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let sync = carol.sync("timeout=0").await;
    assert!(sync["rooms"]["invite"][&room].is_null(), "the invite is gone for carol: {sync}");

    // Inviting a user that does not exist on the other server fails.
    let got = alice
        .call(Method::POST, &format!("/rooms/{room}/invite"), Some(json!({"user_id": format!("@ghost:{}", b.server_name())})))
        .await;
    assert_eq!(got.0, 404, "{}", got.1);
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}
on_both_backends!(invites_across_servers);

/// Three servers in one room: a user of the third joins through the
/// resident server, which passes the join on; everyone's messages reach
/// everyone.
async fn three_servers_in_one_room(backend: Backend) {
    let a = TestServer::start_federating(backend, |_| {}).await.unwrap();
    let b = TestServer::start_federating(backend, |_| {}).await.unwrap();
    let c = TestServer::start_federating(backend, |_| {}).await.unwrap();
    let alice = User::new(&a.base_url, "alice").await;
    let bob = User::new(&b.base_url, "bob").await;
    let carol = User::new(&c.base_url, "carol").await;
    let room = alice.create_room(json!({"room_alias_name": "three", "preset": "public_chat"})).await;
    let alias = format!("#three:{}", a.server_name());
    bob.ok(Method::POST, &format!("/join/{}", urlencode(&alias)), Some(json!({}))).await;
    carol.ok(Method::POST, &format!("/join/{}", urlencode(&alias)), Some(json!({}))).await;

    // B learns of carol's join from A, and so sends to C too.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let members = bob.ok(Method::GET, &format!("/rooms/{room}/joined_members"), None).await;
        if members["joined"][&carol.id].is_object() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "carol's join never reached B: {members}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    bob.say(&room, "b1", "from B").await;
    wait_for_message(&carol, &room, "from B").await;
    wait_for_message(&alice, &room, "from B").await;
    carol.say(&room, "c1", "from C").await;
    wait_for_message(&bob, &room, "from C").await;
    wait_for_message(&alice, &room, "from C").await;
    alice.say(&room, "a1", "from A").await;
    wait_for_message(&bob, &room, "from A").await;
    wait_for_message(&carol, &room, "from A").await;
    for server in [a, b, c] {
        server.stop().await.unwrap();
    }
}
on_both_backends!(three_servers_in_one_room);

/// Waits (bounded) until `user`'s sync shows an ephemeral event of `kind`
/// in `room` that `accept` takes.
async fn wait_for_ephemeral(user: &User, room: &str, kind: &str, accept: impl Fn(&Value) -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let sync = user.sync("timeout=0").await;
        let events = sync["rooms"]["join"][room]["ephemeral"]["events"].as_array().cloned().unwrap_or_default();
        if events.iter().any(|e| e["type"] == kind && accept(e)) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "no {kind} for {} in {room}: {sync}", user.id);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A user's typing and read receipts reach the users of the other server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_and_receipts_reach_the_other_server() {
    let a = TestServer::start_federating(Backend::Sqlite, |_| {}).await.unwrap();
    let b = TestServer::start_federating(Backend::Sqlite, |_| {}).await.unwrap();
    let alice = User::new(&a.base_url, "alice").await;
    let bob = User::new(&b.base_url, "bob").await;
    let room = alice.create_room(json!({"room_alias_name": "eph", "preset": "public_chat"})).await;
    bob.ok(Method::POST, &format!("/join/{}", urlencode(&format!("#eph:{}", a.server_name()))), Some(json!({}))).await;

    alice
        .ok(
            Method::PUT,
            &format!("/rooms/{room}/typing/{}", urlencode(&alice.id)),
            Some(json!({"typing": true, "timeout": 20000})),
        )
        .await;
    let alice_id = alice.id.clone();
    wait_for_ephemeral(&bob, &room, "m.typing", |e| e["content"]["user_ids"] == json!([alice_id])).await;
    alice.ok(Method::PUT, &format!("/rooms/{room}/typing/{}", urlencode(&alice.id)), Some(json!({"typing": false}))).await;
    // Stopped: an initial sync shows nobody typing.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let sync = bob.sync("timeout=0").await;
        let events = sync["rooms"]["join"][&room]["ephemeral"]["events"].as_array().cloned().unwrap_or_default();
        if !events.iter().any(|e| e["type"] == "m.typing" && e["content"]["user_ids"] != json!([])) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "alice never stopped typing on B: {sync}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let event = alice.say(&room, "a1", "read this").await;
    wait_for_message(&bob, &room, "read this").await;
    bob.ok(Method::POST, &format!("/rooms/{room}/receipt/m.read/{}", urlencode(&event)), Some(json!({}))).await;
    let (bob_id, event_id) = (bob.id.clone(), event.clone());
    wait_for_ephemeral(&alice, &room, "m.receipt", |e| e["content"][&event_id]["m.read"][&bob_id].is_object()).await;
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

/// A room's server ACL shuts servers out: once IP literals are denied,
/// neither the server of a member already in nor a new one is heard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_acls_shut_servers_out() {
    let a = TestServer::start_federating(Backend::Sqlite, |_| {}).await.unwrap();
    let b = TestServer::start_federating(Backend::Sqlite, |_| {}).await.unwrap();
    let c = TestServer::start_federating(Backend::Sqlite, |_| {}).await.unwrap();
    let alice = User::new(&a.base_url, "alice").await;
    let bob = User::new(&b.base_url, "bob").await;
    let carol = User::new(&c.base_url, "carol").await;
    let room = alice.create_room(json!({"room_alias_name": "acl", "preset": "public_chat"})).await;
    let alias = format!("#acl:{}", a.server_name());
    bob.ok(Method::POST, &format!("/join/{}", urlencode(&alias)), Some(json!({}))).await;
    let event = alice.say(&room, "a1", "before the ACL").await;
    let (status, _) = signed_as(&b, &a, "GET", &format!("/_matrix/federation/v1/event/{}", urlencode(&event)), None).await;
    assert_eq!(status, 200);

    alice
        .ok(
            Method::PUT,
            &format!("/rooms/{room}/state/m.room.server_acl/"),
            Some(json!({"allow": ["*"], "allow_ip_literals": false})),
        )
        .await;
    let got = signed_as(&b, &a, "GET", &format!("/_matrix/federation/v1/event/{}", urlencode(&event)), None).await;
    assert_error(&got, 403, "M_FORBIDDEN");
    let got = carol.call(Method::POST, &format!("/join/{}", urlencode(&alias)), Some(json!({}))).await;
    assert_error(&got, 403, "M_FORBIDDEN");
    // B's typing in the room is ignored now.
    let typing = json!({"origin": b.server_name(), "origin_server_ts": 1, "pdus": [], "edus": [
        {"edu_type": "m.typing", "content": {"room_id": room, "user_id": bob.id, "typing": true}}]});
    let (status, _) = send_transaction_as(&b, &a, "acl1", typing).await;
    assert_eq!(status, 200);
    let sync = alice.sync("").await;
    let typing = sync["rooms"]["join"][&room]["ephemeral"]["events"].as_array().cloned().unwrap_or_default();
    assert!(typing.iter().all(|e| e["type"] != "m.typing" || e["content"]["user_ids"] == json!([])), "{typing:?}");
    for server in [a, b, c] {
        server.stop().await.unwrap();
    }
}

/// Both servers change the room's name at the same moment, several times:
/// whatever the order their events cross in, both end with the same name.
async fn concurrent_state_changes_converge(backend: Backend) {
    let a = TestServer::start_federating(backend, |_| {}).await.unwrap();
    let b = TestServer::start_federating(backend, |_| {}).await.unwrap();
    let alice = User::new(&a.base_url, "alice").await;
    let bob = User::new(&b.base_url, "bob").await;
    let room = alice
        .create_room(json!({"room_alias_name": "race", "preset": "public_chat",
        "power_level_content_override": {"events": {"m.room.name": 0}}}))
        .await;
    bob.ok(Method::POST, &format!("/join/{}", urlencode(&format!("#race:{}", a.server_name()))), Some(json!({}))).await;
    let path = format!("/rooms/{room}/state/m.room.name/");
    for round in 0..5 {
        let (x, y) = tokio::join!(
            alice.call(Method::PUT, &path, Some(json!({"name": format!("A{round}")}))),
            bob.call(Method::PUT, &path, Some(json!({"name": format!("B{round}")}))),
        );
        assert_eq!((x.0.as_u16(), y.0.as_u16()), (200, 200), "{} {}", x.1, y.1);
        // Both servers have both events once each has the other's: then
        // their names must agree.
        let (ex, ey) = (x.1["event_id"].as_str().unwrap().to_owned(), y.1["event_id"].as_str().unwrap().to_owned());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let a_has = alice.call(Method::GET, &format!("/rooms/{room}/event/{}", urlencode(&ey)), None).await.0 == 200;
            let b_has = bob.call(Method::GET, &format!("/rooms/{room}/event/{}", urlencode(&ex)), None).await.0 == 200;
            if a_has && b_has {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "round {round}: the events never crossed");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let on_a = alice.ok(Method::GET, &path, None).await["name"].clone();
        let on_b = bob.ok(Method::GET, &path, None).await["name"].clone();
        assert_eq!(on_a, on_b, "round {round}: the servers disagree on the room's name");
    }
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}
on_both_backends!(concurrent_state_changes_converge);

/// Pages `room` back as `user` with `/messages` (`limit` a page, at most
/// 50 pages) until no `end` token; returns the message bodies, newest
/// first, and how many pages it took.
pub(crate) async fn page_back(user: &User, room: &str, limit: usize) -> (Vec<String>, usize) {
    let mut from: Option<String> = None;
    let mut bodies = Vec::new();
    for page in 1..=50 {
        let query = match &from {
            Some(token) => format!("dir=b&limit={limit}&from={}", urlencode(token)),
            None => format!("dir=b&limit={limit}"),
        };
        let answer = user.ok(Method::GET, &format!("/rooms/{room}/messages?{query}"), None).await;
        for event in answer["chunk"].as_array().into_iter().flatten().filter(|e| e["type"] == "m.room.message") {
            bodies.push(event["content"]["body"].as_str().unwrap_or_default().to_owned());
        }
        match answer["end"].as_str() {
            Some(end) => from = Some(end.to_owned()),
            None => return (bodies, page),
        }
    }
    panic!("{}'s pages of {room} never ended: {bodies:?}", user.id);
}

/// A user who joins a room of another server pages back into its history
/// from before the join: fetched from the resident server (`/backfill`),
/// each event once, in order, and only where the room's history
/// visibility lets a new member see it.
async fn history_from_before_a_join_is_fetched(backend: Backend) {
    let a = TestServer::start_federating(backend, |_| {}).await.unwrap();
    let b = TestServer::start_federating(backend, |_| {}).await.unwrap();
    let alice = User::new(&a.base_url, "alice").await;
    let bob = User::new(&b.base_url, "bob").await;
    let room = alice.create_room(json!({"room_alias_name": "archive", "preset": "public_chat"})).await;
    for n in 0..25 {
        alice.say(&room, &format!("t{n}"), &format!("old {n}")).await;
    }
    bob.ok(Method::POST, &format!("/join/{}", urlencode(&format!("#archive:{}", a.server_name()))), Some(json!({}))).await;
    alice.say(&room, "after", "after the join").await;
    wait_for_message(&bob, &room, "after the join").await;

    let (bodies, pages) = page_back(&bob, &room, 10).await;
    let mut expected = vec!["after the join".to_owned()];
    expected.extend((0..25).rev().map(|n| format!("old {n}")));
    assert_eq!(bodies, expected);
    assert!(pages >= 3, "25 old messages in pages of 10 take several pages, not {pages}");
    // Read again, now from what B stored: the same.
    assert_eq!(page_back(&bob, &room, 7).await.0, expected);

    // History only members at the time may read stays hidden from a new one.
    let closed = alice
        .create_room(json!({"room_alias_name": "closed", "preset": "public_chat",
            "initial_state": [{"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": "joined"}}]}))
        .await;
    alice.say(&closed, "c1", "members only").await;
    bob.ok(Method::POST, &format!("/join/{}", urlencode(&format!("#closed:{}", a.server_name()))), Some(json!({}))).await;
    let (bodies, _) = page_back(&bob, &closed, 10).await;
    assert!(bodies.is_empty(), "{bodies:?}");

    // A user of B outside the room reads none of it.
    let carol = User::new(&b.base_url, "carol").await;
    let got = carol.call(Method::GET, &format!("/rooms/{room}/messages?dir=b&from=h0"), None).await;
    assert_error(&got, 403, "M_FORBIDDEN");
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}
on_both_backends!(history_from_before_a_join_is_fetched);

/// One server's requests are rate-limited apart from another's: past its
/// burst an origin gets 429 `M_LIMIT_EXCEEDED` with the time to wait,
/// save for its transactions, while another origin is still heard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_rate_limited_per_origin() {
    let noisy = TestServer::start_federating(Backend::Sqlite, |_| {}).await.unwrap();
    let quiet = TestServer::start_federating(Backend::Sqlite, |_| {}).await.unwrap();
    let home = TestServer::start_federating(Backend::Sqlite, |c| {
        c.federation.requests_per_origin = chancery_service::RateLimit { per_second: 0.01, burst: 3 };
    })
    .await
    .unwrap();
    let alice = User::new(&home.base_url, "alice").await;
    let path = format!("/_matrix/federation/v1/query/profile?user_id={}", urlencode(&alice.id));
    for n in 0..3 {
        let got = signed_as(&noisy, &home, "GET", &path, None).await;
        assert_eq!(got.0, 200, "request {n} within the burst: {}", got.1);
    }
    let got = signed_as(&noisy, &home, "GET", &path, None).await;
    assert_error(&got, 429, "M_LIMIT_EXCEEDED");
    assert!(got.1["retry_after_ms"].as_u64().is_some_and(|ms| ms > 1_000), "{}", got.1);
    // Transactions are not rate-limited (one in flight per destination).
    let txn = json!({"origin": noisy.server_name(), "origin_server_ts": 1, "pdus": [], "edus": []});
    let got = send_transaction_as(&noisy, &home, "t1", txn).await;
    assert_eq!(got.0, 200, "a transaction past the rate: {}", got.1);
    let got = signed_as(&quiet, &home, "GET", &path, None).await;
    assert_eq!(got.0, 200, "another origin is still heard: {}", got.1);
    for server in [noisy, quiet, home] {
        server.stop().await.unwrap();
    }
}

/// After a key rotation (`chancery rotate-signing-key`), the server signs
/// with its new key and still publishes the old one (`old_verify_keys`,
/// with when it expired), so a server that joins afterwards verifies the
/// room's events signed before the rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_stays_published_for_old_events() {
    let mut a = TestServer::start_federating(Backend::Sqlite, |_| {}).await.unwrap();
    let b = TestServer::start_federating(Backend::Sqlite, |_| {}).await.unwrap();
    let mut alice = User::new(&a.base_url, "alice").await;
    let room = alice.create_room(json!({"room_alias_name": "keys", "preset": "public_chat", "name": "Before"})).await;
    alice.say(&room, "t1", "signed with the first key").await;
    let client = federation_http();
    let keys_url = format!("{}/_matrix/key/v2/server", a.federation_url().unwrap());
    let before = client.get(&keys_url).send().await.unwrap().json::<Value>().await.unwrap();
    let first = before["verify_keys"].as_object().unwrap().keys().next().unwrap().clone();
    assert_eq!(before["old_verify_keys"], json!({}));

    let path = a.config.signing_key_path();
    a.restart_after(|| async {
        chancery_service::signing::rotate(&path, 1_234).unwrap();
    })
    .await
    .unwrap();
    alice.base = a.base_url.clone();
    let keys_url = format!("{}/_matrix/key/v2/server", a.federation_url().unwrap());
    let after = client.get(&keys_url).send().await.unwrap().json::<Value>().await.unwrap();
    let second = after["verify_keys"].as_object().unwrap().keys().next().unwrap().clone();
    assert_ne!(first, second);
    assert_eq!(after["old_verify_keys"][&first]["key"], before["verify_keys"][&first]["key"]);
    assert_eq!(after["old_verify_keys"][&first]["expired_ts"], 1_234);

    // B joins now: the room's state was signed with the old key.
    let bob = User::new(&b.base_url, "bob").await;
    bob.ok(Method::POST, &format!("/join/{}", urlencode(&format!("#keys:{}", a.server_name()))), Some(json!({}))).await;
    let name = bob.ok(Method::GET, &format!("/rooms/{room}/state/m.room.name/"), None).await;
    assert_eq!(name["name"], "Before");
    let (bodies, _) = page_back(&bob, &room, 10).await;
    assert_eq!(bodies, ["signed with the first key"]);
    // And what A signs with the new key reaches B.
    alice.say(&room, "t2", "signed with the second key").await;
    wait_for_message(&bob, &room, "signed with the second key").await;
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

/// With presence on, another server's `m.presence` EDU sets its users'
/// presence here for the local users who share a room with them; an
/// update about a user of another server than the sender is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_from_another_server() {
    let a = TestServer::start_federating(Backend::Sqlite, |c| c.presence.enabled = true).await.unwrap();
    let b = TestServer::start_federating(Backend::Sqlite, |c| c.presence.enabled = true).await.unwrap();
    let alice = User::new(&a.base_url, "alice").await;
    let bob = User::new(&b.base_url, "bob").await;
    alice.create_room(json!({"room_alias_name": "status", "preset": "public_chat"})).await;
    bob.ok(Method::POST, &format!("/join/{}", urlencode(&format!("#status:{}", a.server_name()))), Some(json!({}))).await;

    let update = |user: &str, presence: &str, status: &str| json!({"user_id": user, "presence": presence, "status_msg": status, "last_active_ago": 2_000, "currently_active": true});
    let txn = json!({"origin": b.server_name(), "origin_server_ts": 1, "pdus": [], "edus": [
        {"edu_type": "m.presence", "content": {"push": [
            update(&bob.id, "unavailable", "in a meeting"),
            update(&alice.id, "online", "forged by B"),
        ]}},
    ]});
    let (status, body) = send_transaction_as(&b, &a, "p1", txn).await;
    assert_eq!(status, 200, "{body}");
    let got = alice.ok(Method::GET, &format!("/presence/{}/status", urlencode(&bob.id)), None).await;
    assert_eq!(got["presence"], "unavailable", "{got}");
    assert_eq!(got["status_msg"], "in a meeting", "{got}");
    assert!(got["last_active_ago"].as_u64().is_some_and(|ago| ago >= 2_000), "{got}");
    let own = alice.ok(Method::GET, &format!("/presence/{}/status", urlencode(&alice.id)), None).await;
    assert_ne!(own["status_msg"], "forged by B", "B may not speak for A's users: {own}");
    // It reaches Alice's /sync as an m.presence event.
    let sync = alice.sync("").await;
    let events = sync["presence"]["events"].as_array().cloned().unwrap_or_default();
    assert!(events.iter().any(|e| e["sender"] == bob.id.as_str() && e["content"]["presence"] == "unavailable"), "{sync}");
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

/// Two nodes of one server on one PostgreSQL: one of them (the lease's
/// holder) sends to other servers; when it stops, the other takes over
/// and messages sent through it still arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_sends_and_another_takes_over() {
    let first = TestServer::start_federating(Backend::Postgres, |_| {}).await.unwrap();
    let second = first.another_federating_node().await.unwrap();
    let b = TestServer::start_federating(Backend::Postgres, |_| {}).await.unwrap();
    let alice = User::new(&first.base_url, "alice").await;
    let bob = User::new(&b.base_url, "bob").await;
    let room = alice.create_room(json!({"room_alias_name": "nodes", "preset": "public_chat"})).await;
    bob.ok(Method::POST, &format!("/join/{}", urlencode(&format!("#nodes:{}", first.server_name()))), Some(json!({}))).await;
    alice.say(&room, "t1", "through the first node").await;
    wait_for_message(&bob, &room, "through the first node").await;

    // Someone holds the sender's lease, and it is not up for grabs.
    let store = chancery_server::open_store(&first.config).await.unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    assert!(!store.try_job_lease("federation-sender", "probe", now, now + 1).await.unwrap());

    first.stop().await.unwrap();
    let alice_elsewhere = User { base: second.base_url.clone(), token: alice.token.clone(), id: alice.id.clone() };
    alice_elsewhere.say(&room, "t2", "through the second node").await;
    wait_for_message(&bob, &room, "through the second node").await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    assert!(!store.try_job_lease("federation-sender", "probe", now, now + 1).await.unwrap(), "the second node holds it");
    store.close().await;
    second.stop().await.unwrap();
    b.stop().await.unwrap();
}

/// With presence on at both, a user's presence set on one server reaches
/// the users of another who share a room with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_crosses_servers() {
    let a = TestServer::start_federating(Backend::Sqlite, |c| c.presence.enabled = true).await.unwrap();
    let b = TestServer::start_federating(Backend::Sqlite, |c| c.presence.enabled = true).await.unwrap();
    let alice = User::new(&a.base_url, "alice").await;
    let bob = User::new(&b.base_url, "bob").await;
    alice.create_room(json!({"room_alias_name": "lunch", "preset": "public_chat"})).await;
    bob.ok(Method::POST, &format!("/join/{}", urlencode(&format!("#lunch:{}", a.server_name()))), Some(json!({}))).await;
    let status = json!({"presence": "unavailable", "status_msg": "at lunch"});
    bob.ok(Method::PUT, &format!("/presence/{}/status", urlencode(&bob.id)), Some(status)).await;
    let path = format!("/presence/{}/status", urlencode(&bob.id));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let got = alice.ok(Method::GET, &path, None).await;
        if got["status_msg"] == "at lunch" {
            assert_eq!(got["presence"], "unavailable", "{got}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "Bob's presence never reached A: {got}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}
