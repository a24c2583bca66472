//! Federation with a real Synapse (1.163.2), started by each test: both
//! servers named `127.0.0.1:<port>`, TLS with certificates of the test CA,
//! certificate checks on both sides. Profiles, aliases, joins and messages,
//! in both directions.

use std::time::{Duration, Instant};

use chancery_testkit::synapse::SynapseServer;
use chancery_testkit::{Backend, TestServer};
use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{User, urlencode};

/// A Chancery server and a Synapse, federating.
async fn pair(backend: Backend) -> (TestServer, SynapseServer) {
    let chancery = TestServer::start_federating(backend, |_| {}).await.unwrap();
    let synapse = SynapseServer::start().await.unwrap();
    (chancery, synapse)
}

/// Polls `GET path` as `user` (every 100 ms, at most 30 s) until `done`
/// holds for a 200 answer; returns that answer.
async fn poll(user: &User, path: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = Value::Null;
    while Instant::now() < deadline {
        let (status, body) = user.call(Method::GET, path, None).await;
        if status == 200 && done(&body) {
            return body;
        }
        last = json!({"status": status.as_u16(), "body": body});
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not within 30 s; last answer to {path}: {last}");
}

/// Syncs as `user` (an initial `/sync`, then incremental ones long-polling
/// up to 1 s each, for at most 30 s) until `seen` holds for an answer.
/// Synapse caches identical `/sync` answers, so each request carries the
/// previous `next_batch`.
async fn sync_until(user: &User, what: &str, seen: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut since: Option<String> = None;
    while Instant::now() < deadline {
        let query = match &since {
            Some(since) => format!("since={}&timeout=1000", urlencode(since)),
            None => String::new(),
        };
        let sync = user.sync(&query).await;
        if seen(&sync) {
            return;
        }
        since = sync["next_batch"].as_str().map(str::to_owned);
    }
    panic!("{what}: not in {}'s /sync within 30 s", user.id);
}

/// A message with body `text` in `room` comes down `user`'s `/sync`.
async fn message_reaches_sync(user: &User, room: &str, text: &str) {
    sync_until(user, &format!("message {text:?} in {room}"), |sync| {
        let events = sync["rooms"]["join"][room]["timeline"]["events"].as_array();
        events.is_some_and(|events| events.iter().any(|e| e["type"] == "m.room.message" && e["content"]["body"] == text))
    })
    .await;
}

/// The ephemeral event of `kind` in `room` of a `/sync` answer.
fn ephemeral<'a>(sync: &'a Value, room: &str, kind: &str) -> Option<&'a Value> {
    sync["rooms"]["join"][room]["ephemeral"]["events"].as_array()?.iter().find(|e| e["type"] == kind)
}

/// Each server's users read the other's profiles and resolve its aliases.
async fn profiles_and_aliases_with_synapse(backend: Backend) {
    let (chancery, synapse) = pair(backend).await;
    let alice = User::new(&chancery.base_url, "alice").await;
    let sam = User::new(&synapse.base_url, "sam").await;
    alice
        .ok(Method::PUT, &format!("/profile/{}/displayname", urlencode(&alice.id)), Some(json!({"displayname": "Alice C"})))
        .await;
    sam.ok(Method::PUT, &format!("/profile/{}/displayname", urlencode(&sam.id)), Some(json!({"displayname": "Sam S"}))).await;
    let lobby = alice.create_room(json!({"room_alias_name": "lobby", "preset": "public_chat"})).await;
    let square = sam.create_room(json!({"room_alias_name": "square", "preset": "public_chat"})).await;

    // Synapse asks Chancery.
    let profile = sam.ok(Method::GET, &format!("/profile/{}", urlencode(&alice.id)), None).await;
    assert_eq!(profile["displayname"], "Alice C", "{profile}");
    let alias = format!("#lobby:{}", chancery.server_name());
    let found = sam.ok(Method::GET, &format!("/directory/room/{}", urlencode(&alias)), None).await;
    assert_eq!(found["room_id"], lobby.as_str(), "{found}");
    assert_eq!(found["servers"], json!([chancery.server_name()]), "{found}");
    let missing = format!("#nowhere:{}", chancery.server_name());
    let (status, body) = sam.call(Method::GET, &format!("/directory/room/{}", urlencode(&missing)), None).await;
    assert_eq!((status.as_u16(), &body["errcode"]), (404, &json!("M_NOT_FOUND")), "{body}");

    // Chancery asks Synapse.
    let profile = alice.ok(Method::GET, &format!("/profile/{}", urlencode(&sam.id)), None).await;
    assert_eq!(profile["displayname"], "Sam S", "{profile}");
    let alias = format!("#square:{}", synapse.server_name);
    let found = alice.ok(Method::GET, &format!("/directory/room/{}", urlencode(&alias)), None).await;
    assert_eq!(found["room_id"], square.as_str(), "{found}");
    assert!(found["servers"].as_array().unwrap().contains(&json!(synapse.server_name)), "{found}");
    let missing = format!("#nowhere:{}", synapse.server_name);
    let (status, body) = alice.call(Method::GET, &format!("/directory/room/{}", urlencode(&missing)), None).await;
    assert_eq!((status.as_u16(), &body["errcode"]), (404, &json!("M_NOT_FOUND")), "{body}");
    chancery.stop().await.unwrap();
    synapse.stop();
}
on_both_backends!(profiles_and_aliases_with_synapse);

/// A Synapse user joins a public Chancery room by its alias and talks in
/// it: Chancery shows the join and delivers the message to its user's
/// `/sync`, as do Sam's typing and read receipt; Synapse shows the room's
/// name, delivers the answer and backfills the history from before the
/// join.
async fn synapse_user_joins_chancery_room(backend: Backend) {
    let (chancery, synapse) = pair(backend).await;
    let alice = User::new(&chancery.base_url, "alice").await;
    let sam = User::new(&synapse.base_url, "sam").await;
    sam.ok(Method::PUT, &format!("/profile/{}/displayname", urlencode(&sam.id)), Some(json!({"displayname": "Sam S"}))).await;
    let room = alice.create_room(json!({"room_alias_name": "lobby", "preset": "public_chat", "name": "Lobby"})).await;
    alice.say(&room, "t1", "before sam").await;

    let alias = format!("#lobby:{}", chancery.server_name());
    let joined = sam.ok(Method::POST, &format!("/join/{}", urlencode(&alias)), Some(json!({}))).await;
    assert_eq!(joined["room_id"], room.as_str(), "{joined}");

    let members = alice.ok(Method::GET, &format!("/rooms/{room}/joined_members"), None).await;
    assert_eq!(members["joined"][&sam.id]["display_name"], "Sam S", "Chancery shows Sam joined, named as on Synapse: {members}");
    let name = sam.ok(Method::GET, &format!("/rooms/{room}/state/m.room.name/"), None).await;
    assert_eq!(name["name"], "Lobby", "{name}");
    let members = sam.ok(Method::GET, &format!("/rooms/{room}/joined_members"), None).await;
    assert!(members["joined"][&alice.id].is_object() && members["joined"][&sam.id].is_object(), "{members}");

    // Sam talks: Synapse sends the PDU to Chancery in a transaction.
    sam.say(&room, "s1", "hello from synapse").await;
    message_reaches_sync(&alice, &room, "hello from synapse").await;

    // Synapse's EDUs: Sam types.
    sam.ok(Method::PUT, &format!("/rooms/{room}/typing/{}", urlencode(&sam.id)), Some(json!({"typing": true, "timeout": 30000})))
        .await;
    sync_until(&alice, "Sam typing", |sync| {
        ephemeral(sync, &room, "m.typing").is_some_and(|typing| typing["content"]["user_ids"] == json!([sam.id]))
    })
    .await;
    // Alice answers: Chancery's sender delivers it to Synapse.
    let answer = alice.say(&room, "t2", "hello from chancery").await;
    message_reaches_sync(&sam, &room, "hello from chancery").await;
    // Sam reads it: Synapse's receipt EDU reaches Alice.
    sam.ok(Method::POST, &format!("/rooms/{room}/receipt/m.read/{answer}"), Some(json!({}))).await;
    sync_until(&alice, "Sam's read receipt", |sync| {
        ephemeral(sync, &room, "m.receipt").is_some_and(|receipt| receipt["content"][&answer]["m.read"][&sam.id].is_object())
    })
    .await;

    // Synapse fetches the history from before Sam's join from Chancery
    // (backfill) when Sam pages back.
    let history = poll(&sam, &format!("/rooms/{room}/messages?dir=b&limit=50"), "history before Sam's join", |page| {
        page["chunk"].as_array().is_some_and(|events| events.iter().any(|e| e["content"]["body"] == "before sam"))
    })
    .await;
    let bodies: Vec<&str> = history["chunk"].as_array().unwrap().iter().filter_map(|e| e["content"]["body"].as_str()).collect();
    assert_eq!(bodies, ["hello from chancery", "hello from synapse", "before sam"], "newest first: {history}");
    chancery.stop().await.unwrap();
    synapse.stop();
}
on_both_backends!(synapse_user_joins_chancery_room);

/// A Chancery user joins a public Synapse room (room version 12, Synapse's
/// default: its id names no server) by alias: Chancery shows the room's
/// state and members and fetches the history from before the join;
/// messages go both ways, and Chancery's typing and read receipt reach
/// Synapse.
async fn chancery_user_joins_synapse_room(backend: Backend) {
    let (chancery, synapse) = pair(backend).await;
    let alice = User::new(&chancery.base_url, "alice").await;
    let sam = User::new(&synapse.base_url, "sam").await;
    alice
        .ok(Method::PUT, &format!("/profile/{}/displayname", urlencode(&alice.id)), Some(json!({"displayname": "Alice C"})))
        .await;
    let room =
        sam.create_room(json!({"room_alias_name": "square", "preset": "public_chat", "name": "Square", "topic": "talk"})).await;
    sam.say(&room, "s1", "before alice").await;

    let alias = format!("#square:{}", synapse.server_name);
    let joined = alice.ok(Method::POST, &format!("/join/{}", urlencode(&alias)), Some(json!({}))).await;
    assert_eq!(joined["room_id"], room.as_str(), "{joined}");

    let create = alice.ok(Method::GET, &format!("/rooms/{room}/state/m.room.create/"), None).await;
    assert_eq!(create["room_version"], "12", "Synapse's default room version: {create}");
    let name = alice.ok(Method::GET, &format!("/rooms/{room}/state/m.room.name/"), None).await;
    assert_eq!(name["name"], "Square", "{name}");
    let topic = alice.ok(Method::GET, &format!("/rooms/{room}/state/m.room.topic/"), None).await;
    assert_eq!(topic["topic"], "talk", "{topic}");
    let members = alice.ok(Method::GET, &format!("/rooms/{room}/joined_members"), None).await;
    assert!(members["joined"][&alice.id].is_object() && members["joined"][&sam.id].is_object(), "{members}");
    let sync = alice.sync("").await;
    assert!(sync["rooms"]["join"][&room].is_object(), "{sync}");
    // Synapse shows Alice joined.
    poll(&sam, &format!("/rooms/{room}/joined_members"), "Alice joined on Synapse, named as on Chancery", |members| {
        members["joined"][&alice.id]["display_name"] == "Alice C"
    })
    .await;

    // Sam talks after the join: the message reaches Alice.
    let welcome = sam.say(&room, "s2", "welcome alice").await;
    message_reaches_sync(&alice, &room, "welcome alice").await;
    // Alice pages back into the history from before her join, which
    // Chancery fetches from Synapse.
    let (bodies, _) = crate::federation::page_back(&alice, &room, 5).await;
    assert_eq!(bodies, ["welcome alice", "before alice"]);
    // Alice answers in Synapse's room.
    alice.say(&room, "t1", "thanks sam").await;
    message_reaches_sync(&sam, &room, "thanks sam").await;

    // Chancery's EDUs: Alice types, and reads Sam's message.
    let typing = json!({"typing": true, "timeout": 30000});
    alice.ok(Method::PUT, &format!("/rooms/{room}/typing/{}", urlencode(&alice.id)), Some(typing)).await;
    sync_until(&sam, "Alice typing", |sync| {
        ephemeral(sync, &room, "m.typing").is_some_and(|typing| typing["content"]["user_ids"] == json!([alice.id]))
    })
    .await;
    alice.ok(Method::POST, &format!("/rooms/{room}/receipt/m.read/{welcome}"), Some(json!({}))).await;
    sync_until(&sam, "Alice's read receipt", |sync| {
        ephemeral(sync, &room, "m.receipt").is_some_and(|receipt| receipt["content"][&welcome]["m.read"][&alice.id].is_object())
    })
    .await;
    chancery.stop().await.unwrap();
    synapse.stop();
}
on_both_backends!(chancery_user_joins_synapse_room);

/// Direct chats across the two implementations: Chancery invites a
/// Synapse user (Synapse countersigns), who accepts and answers; Synapse
/// invites a Chancery user, who sees the invite, accepts it through
/// Synapse, and answers.
async fn invites_with_synapse(backend: Backend) {
    let (chancery, synapse) = pair(backend).await;
    let alice = User::new(&chancery.base_url, "alice").await;
    let sam = User::new(&synapse.base_url, "sam").await;

    // Chancery → Synapse.
    let room = alice.create_room(json!({"preset": "trusted_private_chat", "is_direct": true, "invite": [sam.id]})).await;
    sync_until(&sam, "Alice's invite on Synapse", |sync| sync["rooms"]["invite"][&room].is_object()).await;
    sam.ok(Method::POST, &format!("/rooms/{room}/join"), Some(json!({}))).await;
    sam.say(&room, "s1", "hi alice, from synapse").await;
    message_reaches_sync(&alice, &room, "hi alice, from synapse").await;
    alice.say(&room, "a1", "hi sam, from chancery").await;
    message_reaches_sync(&sam, &room, "hi sam, from chancery").await;

    // Synapse → Chancery.
    let room = sam.create_room(json!({"preset": "private_chat", "is_direct": true, "invite": [alice.id]})).await;
    sync_until(&alice, "Sam's invite on Chancery", |sync| sync["rooms"]["invite"][&room].is_object()).await;
    alice.ok(Method::POST, &format!("/rooms/{room}/join"), Some(json!({}))).await;
    let members = alice.ok(Method::GET, &format!("/rooms/{room}/joined_members"), None).await;
    assert!(members["joined"][&sam.id].is_object() && members["joined"][&alice.id].is_object(), "{members}");
    alice.say(&room, "a2", "accepted, from chancery").await;
    message_reaches_sync(&sam, &room, "accepted, from chancery").await;
    sam.say(&room, "s2", "welcome, from synapse").await;
    message_reaches_sync(&alice, &room, "welcome, from synapse").await;

    // An invite refused on Chancery reaches Synapse as a leave.
    let room = sam.create_room(json!({"preset": "private_chat", "invite": [alice.id]})).await;
    sync_until(&alice, "Sam's second invite", |sync| sync["rooms"]["invite"][&room].is_object()).await;
    alice.ok(Method::POST, &format!("/rooms/{room}/leave"), Some(json!({}))).await;
    poll(&sam, &format!("/rooms/{room}/state/m.room.member/{}", urlencode(&alice.id)), "Alice's refusal on Synapse", |m| {
        m["membership"] == "leave"
    })
    .await;
    chancery.stop().await.unwrap();
    synapse.stop();
}
on_both_backends!(invites_with_synapse);

/// Chancery goes down while a Synapse user keeps talking, and Synapse
/// restarts meanwhile. When Chancery is back, Synapse sends only the
/// room's latest event ("catch-up"); Chancery asks for the ones between
/// (`get_missing_events`), so its user sees every message, in order.
async fn synapse_catch_up_after_an_outage(backend: Backend) {
    let (mut chancery, mut synapse) = pair(backend).await;
    let mut alice = User::new(&chancery.base_url, "alice").await;
    let sam = User::new(&synapse.base_url, "sam").await;
    let room = sam.create_room(json!({"room_alias_name": "outage", "preset": "public_chat"})).await;
    let alias = format!("#outage:{}", synapse.server_name);
    alice.ok(Method::POST, &format!("/join/{}", urlencode(&alias)), Some(json!({}))).await;
    sam.say(&room, "s0", "before the outage").await;
    message_reaches_sync(&alice, &room, "before the outage").await;

    chancery
        .restart_after(|| async {
            for n in 1..=5 {
                sam.say(&room, &format!("s{n}"), &format!("during the outage {n}")).await;
            }
            // Synapse restarts too: its queue for Chancery, held in
            // memory, is gone; on start it catches up from its database.
            synapse.restart().await.unwrap();
        })
        .await
        .unwrap();
    alice.base = chancery.base_url.clone();
    // Alice speaks: Synapse hears from Chancery, so it tries again at once.
    alice.say(&room, "a1", "back again").await;
    message_reaches_sync(&alice, &room, "during the outage 5").await;
    let (bodies, _) = crate::federation::page_back(&alice, &room, 50).await;
    let during: Vec<&str> = bodies.iter().map(String::as_str).filter(|b| b.starts_with("during")).collect();
    assert_eq!(
        during,
        ["during the outage 5", "during the outage 4", "during the outage 3", "during the outage 2", "during the outage 1"],
        "every message, newest first: {bodies:?}"
    );
    chancery.stop().await.unwrap();
    synapse.stop();
}
on_both_backends!(synapse_catch_up_after_an_outage);

/// Knocks across the two implementations. A Chancery user knocks on a
/// knock-only Synapse room (room version 12) by its alias: Chancery shows
/// the knock, Synapse's member sees it and invites, and the knocker joins
/// through Synapse. A Synapse user knocks on a knock-only Chancery room:
/// Chancery's member sees the knock and invites, and the knocker joins.
async fn knocks_with_synapse(backend: Backend) {
    let (chancery, synapse) = pair(backend).await;
    let alice = User::new(&chancery.base_url, "alice").await;
    let sam = User::new(&synapse.base_url, "sam").await;
    let knock_only = |alias: &str, name: &str| {
        json!({
            "room_alias_name": alias,
            "preset": "private_chat",
            "name": name,
            "initial_state": [{"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}],
        })
    };

    // Chancery → Synapse.
    let room = sam.create_room(knock_only("samdoor", "Sam's door")).await;
    let alias = format!("#samdoor:{}", synapse.server_name);
    let knocked = alice.ok(Method::POST, &format!("/knock/{}", urlencode(&alias)), Some(json!({"reason": "hello"}))).await;
    assert_eq!(knocked["room_id"], room.as_str(), "{knocked}");
    sync_until(&alice, "the knock on Chancery", |sync| {
        sync["rooms"]["knock"][&room]["knock_state"]["events"].as_array().is_some_and(|events| {
            events.iter().any(|e| e["state_key"] == alice.id.as_str() && e["content"]["membership"] == "knock")
        })
    })
    .await;
    poll(&sam, &format!("/rooms/{room}/state/m.room.member/{}", urlencode(&alice.id)), "Alice's knock on Synapse", |m| {
        m["membership"] == "knock"
    })
    .await;
    sam.ok(Method::POST, &format!("/rooms/{room}/invite"), Some(json!({"user_id": alice.id}))).await;
    sync_until(&alice, "Sam's invite after the knock", |sync| sync["rooms"]["invite"][&room].is_object()).await;
    alice.ok(Method::POST, &format!("/rooms/{room}/join"), Some(json!({}))).await;
    poll(&sam, &format!("/rooms/{room}/joined_members"), "Alice joined on Synapse", |m| m["joined"][&alice.id].is_object()).await;

    // Synapse → Chancery.
    let room = alice.create_room(knock_only("alicedoor", "Alice's door")).await;
    let alias = format!("#alicedoor:{}", chancery.server_name());
    let knocked = sam.ok(Method::POST, &format!("/knock/{}", urlencode(&alias)), Some(json!({"reason": "hi"}))).await;
    assert_eq!(knocked["room_id"], room.as_str(), "{knocked}");
    let member = alice.ok(Method::GET, &format!("/rooms/{room}/state/m.room.member/{}", urlencode(&sam.id)), None).await;
    assert_eq!((member["membership"].as_str(), member["reason"].as_str()), (Some("knock"), Some("hi")), "{member}");
    alice.ok(Method::POST, &format!("/rooms/{room}/invite"), Some(json!({"user_id": sam.id}))).await;
    sync_until(&sam, "Alice's invite after the knock", |sync| sync["rooms"]["invite"][&room].is_object()).await;
    sam.ok(Method::POST, &format!("/rooms/{room}/join"), Some(json!({}))).await;
    let members = alice.ok(Method::GET, &format!("/rooms/{room}/joined_members"), None).await;
    assert!(members["joined"][&sam.id].is_object(), "{members}");
    chancery.stop().await.unwrap();
    synapse.stop();
}
on_both_backends!(knocks_with_synapse);
