//! Knocking, space hierarchies and `timestamp_to_event` across servers
//! (server-server API `make_knock`/`send_knock`, `hierarchy`,
//! `timestamp_to_event`): two Chancery servers, users driven over HTTP.

use chancery_testkit::{Backend, TestServer};
use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{User, assert_error, urlencode};
use crate::federation::{signed_as, wait_for_invite};

/// Polls `check` on `user`'s syncs (bounded) until it finds something.
async fn wait_for_sync<T>(user: &User, what: &str, check: impl Fn(&Value) -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let sync = user.sync("timeout=0").await;
        if let Some(found) = check(&sync) {
            return found;
        }
        assert!(std::time::Instant::now() < deadline, "{what} never showed for {}: {sync}", user.id);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Polls (bounded) until `user` reads `target`'s membership in `room` as
/// `membership`.
async fn wait_for_membership(user: &User, room: &str, target: &str, membership: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let got = user.call(Method::GET, &format!("/rooms/{room}/state/m.room.member/{}", urlencode(target)), None).await;
        if got.1["membership"] == membership {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{target} never became {membership} for {}: {}", user.id, got.1);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A user of B knocks on a knock-only room of A by its alias: the room
/// shows under `rooms.knock` on B with its stripped state, A's members see
/// the knock, an invite accepts it and the knocker joins. A second knocker
/// retracts their knock. Knocks on an invite-only room and on an unknown
/// room are refused as the resident server says.
async fn knocks_across_servers(backend: Backend) {
    let a = TestServer::start_federating(backend, |_| {}).await.unwrap();
    let b = TestServer::start_federating(backend, |_| {}).await.unwrap();
    let alice = User::new(&a.base_url, "alice").await;
    let bob = User::new(&b.base_url, "bob").await;
    let carol = User::new(&b.base_url, "carol").await;
    let room = alice
        .create_room(json!({
            "room_alias_name": "door",
            "preset": "private_chat",
            "name": "Behind the door",
            "initial_state": [{"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}],
        }))
        .await;

    let alias = format!("#door:{}", a.server_name());
    let knocked = bob.ok(Method::POST, &format!("/knock/{}", urlencode(&alias)), Some(json!({"reason": "let me in"}))).await;
    assert_eq!(knocked["room_id"], room.as_str());
    // B shows the knock with the room's stripped state.
    let knock = wait_for_sync(&bob, "the knock", |s| Some(s["rooms"]["knock"][&room].clone()).filter(Value::is_object)).await;
    let events = knock["knock_state"]["events"].as_array().cloned().unwrap_or_default();
    let has = |kind: &str, check: &dyn Fn(&Value) -> bool| events.iter().any(|e| e["type"] == kind && check(e));
    assert!(has("m.room.name", &|e| e["content"]["name"] == "Behind the door"), "{knock}");
    assert!(has("m.room.join_rules", &|e| e["content"]["join_rule"] == "knock"), "{knock}");
    assert!(has("m.room.member", &|e| e["state_key"] == bob.id.as_str() && e["content"]["membership"] == "knock"), "{knock}");
    // Sliding sync (Element X) shows it too, as stripped state.
    let request = json!({
        "conn_id": "room-list",
        "lists": {"all": {"ranges": [[0, 19]], "timeline_limit": 1, "required_state": [["m.room.name", ""]]}},
    });
    let url = format!("{}/_matrix/client/unstable/org.matrix.simplified_msc3575/sync", b.base_url);
    let (status, sliding) = crate::common::call(Method::POST, &url, Some(&bob.token), Some(request)).await;
    assert_eq!(status.as_u16(), 200, "{sliding}");
    let listed = &sliding["rooms"][&room];
    assert_eq!(listed["membership"], "knock", "{sliding}");
    let stripped = listed["invite_state"].as_array().cloned().unwrap_or_default();
    assert!(stripped.iter().any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Behind the door"), "{listed}");
    // Knocking again changes nothing.
    bob.ok(Method::POST, &format!("/knock/{room}"), Some(json!({}))).await;

    // A's members see the knock, with its reason.
    wait_for_membership(&alice, &room, &bob.id, "knock").await;
    let member = alice.ok(Method::GET, &format!("/rooms/{room}/state/m.room.member/{}", urlencode(&bob.id)), None).await;
    assert_eq!(member["reason"], "let me in", "{member}");

    // Accepted: invited, then joined through A.
    alice.ok(Method::POST, &format!("/rooms/{room}/invite"), Some(json!({"user_id": bob.id}))).await;
    wait_for_invite(&bob, &room).await;
    bob.ok(Method::POST, &format!("/rooms/{room}/join"), Some(json!({}))).await;
    let members = bob.ok(Method::GET, &format!("/rooms/{room}/joined_members"), None).await;
    assert!(members["joined"][&alice.id].is_object() && members["joined"][&bob.id].is_object(), "{members}");
    wait_for_membership(&alice, &room, &bob.id, "join").await;

    // Carol knocks by room id and `via`, then takes it back.
    let via = format!("/knock/{room}?via={}", urlencode(a.server_name()));
    carol.ok(Method::POST, &via, Some(json!({}))).await;
    wait_for_membership(&alice, &room, &carol.id, "knock").await;
    carol.ok(Method::POST, &format!("/rooms/{room}/leave"), Some(json!({}))).await;
    wait_for_membership(&alice, &room, &carol.id, "leave").await;

    // An invite-only room refuses knocks; an unknown room is not found.
    let private = alice.create_room(json!({"room_alias_name": "private", "preset": "private_chat"})).await;
    let got = carol.call(Method::POST, &format!("/knock/{}", urlencode(&format!("#private:{}", a.server_name()))), None).await;
    assert_error(&got, 403, "M_FORBIDDEN");
    let got = carol.call(Method::GET, &format!("/rooms/{private}/state"), None).await;
    assert_eq!(got.0, 403, "B does not know the private room: {}", got.1);
    let unknown = format!("/knock/{}?via={}", urlencode(&format!("!nowhere:{}", a.server_name())), urlencode(a.server_name()));
    let got = carol.call(Method::POST, &unknown, Some(json!({}))).await;
    assert_error(&got, 404, "M_NOT_FOUND");

    // The server-server endpoints themselves: a knock for another
    // server's user, and one on a room that takes none.
    let path = format!("/_matrix/federation/v1/make_knock/{}/{}?ver=11", urlencode(&room), urlencode(&alice.id));
    let (status, body) = signed_as(&b, &a, "GET", &path, None).await;
    assert_eq!((status.as_u16(), body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
    let path = format!("/_matrix/federation/v1/make_knock/{}/{}?ver=11", urlencode(&private), urlencode(&carol.id));
    let (status, body) = signed_as(&b, &a, "GET", &path, None).await;
    assert_eq!((status.as_u16(), body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
    let path = format!("/_matrix/federation/v1/make_knock/{}/{}?ver=1", urlencode(&room), urlencode(&carol.id));
    let (status, body) = signed_as(&b, &a, "GET", &path, None).await;
    assert_eq!((status.as_u16(), body["errcode"].as_str()), (400, Some("M_INCOMPATIBLE_ROOM_VERSION")), "{body}");
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}
on_both_backends!(knocks_across_servers);

/// The milliseconds since the epoch now, by the clock the servers read.
fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Waits (bounded) until the clock has passed `ts_ms`, so the next event
/// any server stamps is later than it.
async fn clock_passes(ts_ms: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while now_ms() <= ts_ms {
        assert!(std::time::Instant::now() < deadline, "the clock never passed {ts_ms}");
        tokio::task::yield_now().await;
    }
}

/// A space on A whose children B partly knows: a user of B walks it and
/// sees the rooms only A knows (a public sub-space and its child, asked of
/// A through the links' `via`), but not A's invite-only room. A serves
/// `/hierarchy` to B by the spec's rules.
async fn space_hierarchy_across_servers(backend: Backend) {
    let a = TestServer::start_federating(backend, |_| {}).await.unwrap();
    let b = TestServer::start_federating(backend, |_| {}).await.unwrap();
    let alice = User::new(&a.base_url, "alice").await;
    let bob = User::new(&b.base_url, "bob").await;
    let space_of = |name: &str| json!({"preset": "public_chat", "name": name, "creation_content": {"type": "m.space"}});
    let space = alice.create_room(space_of("Ministry")).await;
    let shared = alice.create_room(json!({"preset": "public_chat", "name": "Shared"})).await;
    // Room version 12: its id names no server, so only the link's `via`
    // says where to ask, also on a later page.
    let mut sub_request = space_of("Only on A");
    sub_request["room_version"] = json!("12");
    let sub = alice.create_room(sub_request).await;
    let deep = alice.create_room(json!({"preset": "public_chat", "name": "Deep"})).await;
    let private = alice.create_room(json!({"preset": "private_chat", "name": "Private"})).await;
    let knocky = alice
        .create_room(json!({
            "preset": "private_chat",
            "name": "Knock here",
            "initial_state": [{"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}],
        }))
        .await;
    let link = |parent: &str, child: &str| {
        let path = format!("/rooms/{parent}/state/m.space.child/{child}");
        (path, json!({"via": [a.server_name()]}))
    };
    for (parent, child) in [(&space, &shared), (&space, &sub), (&space, &private), (&space, &knocky), (&sub, &deep)] {
        let (path, body) = link(parent, child);
        alice.ok(Method::PUT, &path, Some(body)).await;
    }
    for room in [&space, &shared] {
        bob.ok(Method::POST, &format!("/join/{room}?via={}", urlencode(a.server_name())), Some(json!({}))).await;
    }
    // B knows the knock-only room only as the stub of Bob's knock.
    bob.ok(Method::POST, &format!("/knock/{knocky}?via={}", urlencode(a.server_name())), Some(json!({}))).await;

    let url = format!("{}/_matrix/client/v1/rooms/{space}/hierarchy", b.base_url);
    let (status, page) = crate::common::call(Method::GET, &url, Some(&bob.token), None).await;
    assert_eq!(status.as_u16(), 200, "{page}");
    let rooms = page["rooms"].as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = rooms.iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(names, ["Ministry", "Shared", "Only on A", "Deep", "Knock here"], "{page}");
    let sub_room = rooms.iter().find(|r| r["room_id"] == sub.as_str()).unwrap();
    assert_eq!(sub_room["room_type"], "m.space", "{sub_room}");
    assert_eq!(sub_room["children_state"][0]["state_key"], deep.as_str(), "{sub_room}");
    assert_eq!(rooms[0]["children_state"].as_array().map(Vec::len), Some(4), "every link shows: {page}");
    // The knocked room as A has it, not as B's stub does.
    let knocked = rooms.iter().find(|r| r["room_id"] == knocky.as_str()).unwrap();
    assert_eq!((knocked["num_joined_members"].as_u64(), knocked["join_rule"].as_str()), (Some(1), Some("knock")), "{knocked}");

    // The same walk two rooms a page: the rooms left waiting keep their
    // links' servers.
    let mut paged = Vec::new();
    let mut from: Option<String> = None;
    for _ in 0..5 {
        let query = from.as_ref().map_or(String::new(), |f| format!("&from={}", urlencode(f)));
        let url = format!("{}/_matrix/client/v1/rooms/{space}/hierarchy?limit=2{query}", b.base_url);
        let (status, page) = crate::common::call(Method::GET, &url, Some(&bob.token), None).await;
        assert_eq!(status.as_u16(), 200, "{page}");
        paged.extend(page["rooms"].as_array().unwrap().iter().filter_map(|r| r["name"].as_str().map(str::to_owned)));
        from = page["next_batch"].as_str().map(str::to_owned);
        if from.is_none() {
            break;
        }
    }
    assert_eq!(paged, names, "paged like the whole walk");

    // A's answer to B.
    let path = format!("/_matrix/federation/v1/hierarchy/{}", urlencode(&space));
    let (status, body) = signed_as(&b, &a, "GET", &path, None).await;
    assert_eq!(status.as_u16(), 200, "{body}");
    assert_eq!(body["room"]["room_id"], space.as_str(), "{body}");
    assert_eq!(body["room"]["children_state"].as_array().map(Vec::len), Some(4), "{body}");
    let mut children: Vec<&str> = body["children"].as_array().unwrap().iter().filter_map(|c| c["room_id"].as_str()).collect();
    children.sort_unstable();
    let mut expected = [shared.as_str(), sub.as_str(), knocky.as_str()];
    expected.sort_unstable();
    assert_eq!(children, expected, "{body}");
    assert_eq!(body["inaccessible_children"], json!([private]), "{body}");
    // An invite-only room B has no user in, and an unknown room: 404.
    for room in [private.clone(), format!("!nowhere:{}", a.server_name())] {
        let path = format!("/_matrix/federation/v1/hierarchy/{}", urlencode(&room));
        let (status, body) = signed_as(&b, &a, "GET", &path, None).await;
        assert_eq!((status.as_u16(), body["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{room}: {body}");
    }
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}
on_both_backends!(space_hierarchy_across_servers);

/// A user of B joined a room of A after its first messages: "jump to
/// date" finds a message only A holds (asked of A), and A answers B's
/// server directly only for a room B has a user in.
async fn timestamp_to_event_across_servers(backend: Backend) {
    let a = TestServer::start_federating(backend, |_| {}).await.unwrap();
    let b = TestServer::start_federating(backend, |_| {}).await.unwrap();
    let alice = User::new(&a.base_url, "alice").await;
    let bob = User::new(&b.base_url, "bob").await;
    let room = alice.create_room(json!({"preset": "public_chat", "name": "History"})).await;
    let private = alice.create_room(json!({"preset": "private_chat"})).await;
    // The message is later than every state event, and the join later
    // than the message, so each direction has one closest answer.
    clock_passes(now_ms()).await;
    let message = alice.say(&room, "m1", "before bob").await;
    let ts = alice.ok(Method::GET, &format!("/rooms/{room}/event/{message}"), None).await["origin_server_ts"].as_u64().unwrap();
    clock_passes(ts).await;
    bob.ok(Method::POST, &format!("/join/{room}?via={}", urlencode(a.server_name())), Some(json!({}))).await;

    for dir in ["b", "f"] {
        let path = format!("/_matrix/client/v1/rooms/{room}/timestamp_to_event?ts={ts}&dir={dir}");
        let (status, body) = crate::common::call(Method::GET, &format!("{}{path}", b.base_url), Some(&bob.token), None).await;
        assert_eq!(status.as_u16(), 200, "{dir}: {body}");
        assert_eq!((body["event_id"].as_str(), body["origin_server_ts"].as_u64()), (Some(message.as_str()), Some(ts)), "{dir}");
    }

    let path = format!("/_matrix/federation/v1/timestamp_to_event/{}?ts={ts}&dir=b", urlencode(&room));
    let (status, body) = signed_as(&b, &a, "GET", &path, None).await;
    assert_eq!((status.as_u16(), body["event_id"].as_str()), (200, Some(message.as_str())), "{body}");
    let path = format!("/_matrix/federation/v1/timestamp_to_event/{}?ts={ts}&dir=b", urlencode(&private));
    let (status, body) = signed_as(&b, &a, "GET", &path, None).await;
    assert_eq!((status.as_u16(), body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}
on_both_backends!(timestamp_to_event_across_servers);
