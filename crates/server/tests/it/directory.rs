//! Room addresses, the published room directory, upgrades, knocking,
//! forgetting and reporting, over plain HTTP (successes and every error
//! the spec names) and through matrix-sdk.

use std::time::Duration;

use chancery_testkit::{Backend, TestServer};
use matrix_sdk::config::SyncSettings;
use matrix_sdk::ruma::api::client::directory::get_public_rooms_filtered;
use matrix_sdk::ruma::api::client::room::{Visibility, create_room, upgrade_room};
use matrix_sdk::ruma::directory::Filter;
use matrix_sdk::ruma::{OwnedRoomOrAliasId, RoomAliasId, RoomVersionId};
use matrix_sdk::{Client, RoomState};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use chancery_proto::limits::{MAX_REPORT_REASON_BYTES, MAX_REPORTS_PER_USER_PER_WINDOW};

use crate::common::{PASSWORD, User, assert_error, call, register};

impl User {
    async fn join(&self, room: &str) {
        self.ok(Method::POST, &format!("/join/{}", enc(room)), Some(json!({}))).await;
    }
    async fn state(&self, room: &str, event_type: &str) -> Value {
        self.ok(Method::GET, &format!("/rooms/{room}/state/{event_type}/"), None).await
    }
    async fn membership(&self, room: &str, user: &str) -> String {
        let members = self.ok(Method::GET, &format!("/rooms/{room}/members"), None).await;
        let member = members["chunk"].as_array().unwrap().iter().find(|m| m["state_key"] == user);
        member.map(|m| m["content"]["membership"].as_str().unwrap().to_owned()).unwrap_or_default()
    }
    async fn public_rooms(&self, body: Value) -> Value {
        self.ok(Method::POST, "/publicRooms", Some(body)).await
    }
}

/// Percent-encodes a path segment or query value (`#` above all).
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'!' | b':' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn alias_path(alias: &str) -> String {
    format!("/directory/room/{}", enc(alias))
}

async fn publish(user: &User, room: &str, visibility: &str) -> (StatusCode, Value) {
    user.call(Method::PUT, &format!("/directory/list/room/{room}"), Some(json!({"visibility": visibility}))).await
}

async fn upgrade(user: &User, room: &str, version: &str) -> (StatusCode, Value) {
    user.call(Method::POST, &format!("/rooms/{room}/upgrade"), Some(json!({"new_version": version}))).await
}

async fn knock(user: &User, target: &str, body: Value) -> (StatusCode, Value) {
    user.call(Method::POST, &format!("/knock/{}", enc(target)), Some(body)).await
}

async fn forget(user: &User, room: &str) -> (StatusCode, Value) {
    user.call(Method::POST, &format!("/rooms/{room}/forget"), Some(json!({}))).await
}

async fn report(user: &User, room: &str, event: &str, body: Value) -> (StatusCode, Value) {
    user.call(Method::POST, &format!("/rooms/{room}/report/{}", enc(event)), Some(body)).await
}

fn chunk_ids(page: &Value) -> Vec<String> {
    page["chunk"].as_array().unwrap().iter().map(|r| r["room_id"].as_str().unwrap().to_owned()).collect()
}

async fn aliases(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let base = server.base_url.clone();
    let alice = User::new(&base, "alice").await;
    let bob = User::new(&base, "bob").await;
    let carol = User::new(&base, "carol").await;

    // createRoom with an alias: created atomically, resolvable, canonical,
    // and the canonical alias comes right after the power levels.
    let room = alice.create_room(json!({"preset": "public_chat", "room_alias_name": "ops", "name": "Ops"})).await;
    let resolved = call(Method::GET, &alice.url(&alias_path("#ops:localhost")), None, None).await;
    assert_eq!(resolved.0, 200, "resolving needs no token: {}", resolved.1);
    assert_eq!(resolved.1, json!({"room_id": room, "servers": ["localhost"]}));
    assert_eq!(alice.state(&room, "m.room.canonical_alias").await, json!({"alias": "#ops:localhost"}));
    let page = alice.ok(Method::GET, &format!("/rooms/{room}/messages?dir=f&limit=6"), None).await;
    let types: Vec<&str> = page["chunk"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types[..5],
        ["m.room.create", "m.room.member", "m.room.power_levels", "m.room.canonical_alias", "m.room.join_rules"]
    );

    assert_error(&alice.call(Method::POST, "/createRoom", Some(json!({"room_alias_name": "ops"}))).await, 400, "M_ROOM_IN_USE");
    for bad in ["two words", "a:b", ""] {
        assert_error(
            &alice.call(Method::POST, "/createRoom", Some(json!({"room_alias_name": bad}))).await,
            400,
            "M_INVALID_PARAM",
        );
    }
    // initial_state may only name the alias created with the room.
    assert_error(
        &alice
            .call(
                Method::POST,
                "/createRoom",
                Some(json!({"initial_state": [{"type": "m.room.canonical_alias", "content": {"alias": "#ops:localhost"}}]})),
            )
            .await,
        400,
        "M_BAD_ALIAS",
    );
    assert_eq!(alice.ok(Method::GET, "/joined_rooms", None).await["joined_rooms"], json!([room]));

    // PUT: joined members only, local aliases only, once.
    alice.ok(Method::PUT, &alias_path("#ops2:localhost"), Some(json!({"room_id": room}))).await;
    assert_error(
        &alice.call(Method::PUT, &alias_path("#ops2:localhost"), Some(json!({"room_id": room}))).await,
        409,
        "M_UNKNOWN",
    );
    assert_error(&bob.call(Method::PUT, &alias_path("#bob:localhost"), Some(json!({"room_id": room}))).await, 403, "M_FORBIDDEN");
    assert_error(
        &alice.call(Method::PUT, &alias_path("#ops:elsewhere.example"), Some(json!({"room_id": room}))).await,
        400,
        "M_INVALID_PARAM",
    );
    assert_error(
        &alice.call(Method::PUT, &alias_path("#no-colon"), Some(json!({"room_id": room}))).await,
        400,
        "M_INVALID_PARAM",
    );
    assert_error(
        &alice.call(Method::PUT, &alias_path("not-an-alias"), Some(json!({"room_id": room}))).await,
        400,
        "M_INVALID_PARAM",
    );
    assert_error(
        &alice.call(Method::PUT, &alias_path("#x:localhost"), Some(json!({"room_id": "!unknown:localhost"}))).await,
        403,
        "M_FORBIDDEN",
    );
    assert_error(&alice.call(Method::PUT, &alias_path("#x:localhost"), Some(json!({}))).await, 400, "M_BAD_JSON");

    // GET: unknown and remote aliases are not found.
    for missing in ["#nothing:localhost", "#ops:elsewhere.example"] {
        assert_error(&call(Method::GET, &alice.url(&alias_path(missing)), None, None).await, 404, "M_NOT_FOUND");
    }

    // The room's local aliases: members only.
    assert_error(&bob.call(Method::GET, &format!("/rooms/{room}/aliases"), None).await, 403, "M_FORBIDDEN");
    bob.join("#ops:localhost").await;
    assert_eq!(
        bob.ok(Method::GET, &format!("/rooms/{room}/aliases"), None).await["aliases"],
        json!(["#ops2:localhost", "#ops:localhost"])
    );

    // Deleting: the creator, or whoever may change the canonical alias.
    bob.ok(Method::PUT, &alias_path("#bobs:localhost"), Some(json!({"room_id": room}))).await;
    assert_error(&bob.call(Method::DELETE, &alias_path("#ops2:localhost"), None).await, 403, "M_FORBIDDEN");
    bob.ok(Method::DELETE, &alias_path("#bobs:localhost"), None).await;
    bob.ok(Method::PUT, &alias_path("#bobs:localhost"), Some(json!({"room_id": room}))).await;
    alice.ok(Method::DELETE, &alias_path("#bobs:localhost"), None).await;
    assert_error(&alice.call(Method::DELETE, &alias_path("#bobs:localhost"), None).await, 404, "M_NOT_FOUND");
    assert_error(&alice.call(Method::DELETE, &alias_path("#x:elsewhere.example"), None).await, 404, "M_NOT_FOUND");

    // m.room.canonical_alias: every alias it adds must point here.
    let other = alice.create_room(json!({"room_alias_name": "other"})).await;
    for (content, errcode) in [
        (json!({"alias": "#nope:localhost"}), "M_BAD_ALIAS"),
        (json!({"alias": "#other:localhost"}), "M_BAD_ALIAS"),
        (json!({"alias": "#ops:elsewhere.example"}), "M_BAD_ALIAS"),
        (json!({"alt_aliases": ["#ops:localhost", "#other:localhost"]}), "M_BAD_ALIAS"),
        (json!({"alias": "not an alias"}), "M_INVALID_PARAM"),
        (json!({"alias": 5}), "M_INVALID_PARAM"),
        (json!({"alt_aliases": "#ops:localhost"}), "M_INVALID_PARAM"),
        (json!({"alt_aliases": [5]}), "M_INVALID_PARAM"),
    ] {
        assert_error(
            &alice.call(Method::PUT, &format!("/rooms/{room}/state/m.room.canonical_alias/"), Some(content)).await,
            400,
            errcode,
        );
    }
    alice
        .ok(
            Method::PUT,
            &format!("/rooms/{room}/state/m.room.canonical_alias/"),
            Some(json!({"alias": "#ops:localhost", "alt_aliases": ["#ops2:localhost"]})),
        )
        .await;
    // Deleting an alias drops it from the canonical alias event.
    alice.ok(Method::DELETE, &alias_path("#ops2:localhost"), None).await;
    assert_eq!(alice.state(&room, "m.room.canonical_alias").await, json!({"alias": "#ops:localhost"}));
    assert_eq!(alice.ok(Method::GET, &format!("/rooms/{other}/aliases"), None).await["aliases"], json!(["#other:localhost"]));

    // Joining by alias; unknown aliases are not found.
    carol.join("#ops:localhost").await;
    assert_eq!(alice.membership(&room, &carol.id).await, "join");
    assert_error(
        &carol.call(Method::POST, &format!("/join/{}", enc("#nope:localhost")), Some(json!({}))).await,
        404,
        "M_NOT_FOUND",
    );

    // A server admin deletes any alias, in a room they are not in.
    let admin = User::admin(&server, "olivia").await;
    admin.ok(Method::DELETE, &alias_path("#other:localhost"), None).await;
    assert_error(&call(Method::GET, &alice.url(&alias_path("#other:localhost")), None, None).await, 404, "M_NOT_FOUND");
    server.stop().await.unwrap();
}

on_both_backends!(aliases);

async fn public_directory(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let base = server.base_url.clone();
    let alice = User::new(&base, "alice").await;
    let bob = User::new(&base, "bob").await;

    let crisis = alice
        .create_room(json!({"visibility": "public", "room_alias_name": "crisis", "name": "Crisis cell", "topic": "Floods"}))
        .await;
    let budget = alice.create_room(json!({"preset": "public_chat", "name": "Budget"})).await;
    let space =
        alice.create_room(json!({"visibility": "public", "name": "Ministry", "creation_content": {"type": "m.space"}})).await;
    // Published but invite-only: never listed (as in Synapse).
    let closed = alice.create_room(json!({"visibility": "public", "preset": "private_chat", "name": "Closed"})).await;

    let visibility = |room: &str| {
        let url = alice.url(&format!("/directory/list/room/{room}"));
        async move { call(Method::GET, &url, None, None).await }
    };
    assert_eq!(visibility(&crisis).await, (StatusCode::OK, json!({"visibility": "public"})));
    assert_eq!(visibility(&budget).await, (StatusCode::OK, json!({"visibility": "private"})));
    assert_eq!(visibility(&closed).await, (StatusCode::OK, json!({"visibility": "public"})));
    assert_error(&visibility("!unknown:localhost").await, 404, "M_NOT_FOUND");

    // Only this server's users read the directory.
    assert_error(&call(Method::GET, &alice.url("/publicRooms"), None, None).await, 401, "M_MISSING_TOKEN");
    let listed = alice.ok(Method::GET, "/publicRooms", None).await;
    assert_eq!(listed["total_room_count_estimate"], 3);
    let mut ids = chunk_ids(&listed);
    ids.sort();
    let mut expected = vec![crisis.clone(), space.clone()];
    expected.sort();
    assert_eq!(ids, expected);
    let entry = listed["chunk"].as_array().unwrap().iter().find(|r| r["room_id"] == crisis.as_str()).unwrap();
    assert_eq!(
        *entry,
        json!({"room_id": crisis, "num_joined_members": 1, "world_readable": false, "guest_can_join": false,
               "name": "Crisis cell", "topic": "Floods", "canonical_alias": "#crisis:localhost", "join_rule": "public"})
    );

    // Publishing needs the power to change the canonical alias.
    assert_error(&publish(&bob, &budget, "public").await, 403, "M_FORBIDDEN");
    bob.join(&budget).await;
    assert_error(&publish(&bob, &budget, "public").await, 403, "M_FORBIDDEN");
    assert_error(&publish(&alice, &budget, "hidden").await, 400, "M_INVALID_PARAM");
    assert_error(&publish(&alice, "!unknown:localhost", "public").await, 403, "M_FORBIDDEN");
    alice.ok(Method::PUT, &format!("/directory/list/room/{budget}"), Some(json!({"visibility": "public"}))).await;
    assert_eq!(visibility(&budget).await.1, json!({"visibility": "public"}));

    // Most members first; search; room types.
    let all = alice.public_rooms(json!({})).await;
    assert_eq!(chunk_ids(&all)[0], budget, "two members: first");
    assert_eq!(chunk_ids(&all).len(), 3);
    assert_eq!(chunk_ids(&alice.public_rooms(json!({"filter": {"generic_search_term": "crisis"}})).await), [crisis.as_str()]);
    assert_eq!(chunk_ids(&alice.public_rooms(json!({"filter": {"generic_search_term": "BUDGET"}})).await), [budget.as_str()]);
    assert_eq!(chunk_ids(&alice.public_rooms(json!({"filter": {"generic_search_term": "#crisis:"}})).await), [crisis.as_str()]);
    assert!(chunk_ids(&alice.public_rooms(json!({"filter": {"generic_search_term": "nothing"}})).await).is_empty());
    let spaces = alice.public_rooms(json!({"filter": {"room_types": ["m.space"]}})).await;
    assert_eq!(chunk_ids(&spaces), [space.as_str()]);
    assert_eq!(spaces["chunk"][0]["room_type"], "m.space");
    let plain = alice.public_rooms(json!({"filter": {"room_types": [null]}})).await;
    assert_eq!(chunk_ids(&plain).len(), 2);
    assert!(!chunk_ids(&plain).contains(&space));

    // Pages of one, forward to the end and back again.
    let mut seen = Vec::new();
    let mut since: Option<String> = None;
    let mut last = Value::Null;
    for _ in 0..5 {
        let mut body = json!({"limit": 1});
        if let Some(since) = &since {
            body["since"] = json!(since);
        }
        last = alice.public_rooms(body).await;
        seen.extend(chunk_ids(&last));
        assert_eq!(last.get("prev_batch").is_some(), since.is_some(), "{last}");
        since = last["next_batch"].as_str().map(str::to_owned);
        if since.is_none() {
            break;
        }
    }
    assert_eq!(seen, chunk_ids(&all), "every room once, in order");
    let back = alice.public_rooms(json!({"limit": 1, "since": last["prev_batch"]})).await;
    assert_eq!(chunk_ids(&back), [seen[1].clone()]);
    assert!(back["next_batch"].is_string() && back["prev_batch"].is_string(), "{back}");
    let get_page =
        alice.ok(Method::GET, &format!("/publicRooms?limit=2&since={}", enc(back["next_batch"].as_str().unwrap())), None).await;
    assert_eq!(chunk_ids(&get_page), [seen[2].clone()]);

    // Other servers' directories need federation; bad input.
    assert_error(&alice.call(Method::GET, "/publicRooms?server=elsewhere.example", None).await, 403, "M_FORBIDDEN");
    assert_eq!(chunk_ids(&alice.ok(Method::GET, "/publicRooms?server=localhost", None).await).len(), 3);
    assert_error(&alice.call(Method::GET, "/publicRooms?since=garbage", None).await, 400, "M_INVALID_PARAM");
    assert_error(&alice.call(Method::GET, "/publicRooms?limit=many", None).await, 400, "M_INVALID_PARAM");
    let long = "x".repeat(300);
    assert_error(
        &alice.call(Method::POST, "/publicRooms", Some(json!({"filter": {"generic_search_term": long}}))).await,
        400,
        "M_INVALID_PARAM",
    );
    let third_party = alice.public_rooms(json!({"third_party_instance_id": "irc"})).await;
    assert!(chunk_ids(&third_party).is_empty());

    // Unpublishing removes the room.
    alice.ok(Method::PUT, &format!("/directory/list/room/{crisis}"), Some(json!({"visibility": "private"}))).await;
    assert!(!chunk_ids(&alice.public_rooms(json!({})).await).contains(&crisis));
    server.stop().await.unwrap();
}

on_both_backends!(public_directory);

async fn upgrades(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let base = server.base_url.clone();
    let alice = User::new(&base, "alice").await;
    let bob = User::new(&base, "bob").await;

    let caps = alice.ok(Method::GET, "/capabilities", None).await;
    assert_eq!(
        caps["capabilities"]["m.room_versions"],
        json!({"default": server.config.default_room_version, "available": {"10": "stable", "11": "stable", "12": "stable"}})
    );

    let old = alice
        .create_room(json!({
            "room_version": "11", "preset": "public_chat", "visibility": "public", "room_alias_name": "town",
            "name": "Town hall", "topic": "Agenda",
            "initial_state": [{"type": "m.room.encryption", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}],
        }))
        .await;
    bob.join(&old).await;
    assert_error(&upgrade(&bob, &old, "12").await, 403, "M_FORBIDDEN");
    for version in ["9", "13", "1"] {
        assert_error(&upgrade(&alice, &old, version).await, 400, "M_UNSUPPORTED_ROOM_VERSION");
    }
    assert_error(&upgrade(&alice, "!unknown:localhost", "12").await, 403, "M_FORBIDDEN");
    assert_error(&alice.call(Method::POST, &format!("/rooms/{old}/upgrade"), Some(json!({}))).await, 400, "M_BAD_JSON");

    let (status, body) = upgrade(&alice, &old, "12").await;
    assert_eq!(status, 200, "{body}");
    let new = body["replacement_room"].as_str().unwrap().to_owned();
    assert!(!new.contains(':'), "a v12 room id: {new}");

    // The old room: tombstone, no canonical alias, restricted levels.
    assert_eq!(alice.state(&old, "m.room.tombstone").await["replacement_room"], new.as_str());
    assert_eq!(alice.state(&old, "m.room.canonical_alias").await, json!({}));
    let levels = alice.state(&old, "m.room.power_levels").await;
    assert_eq!((levels["events_default"].as_i64(), levels["invite"].as_i64()), (Some(50), Some(50)));
    assert_error(
        &bob.call(Method::PUT, &format!("/rooms/{old}/send/m.room.message/t1"), Some(json!({"msgtype": "m.text", "body": "hi"})))
            .await,
        403,
        "M_FORBIDDEN",
    );
    assert_error(&upgrade(&alice, &old, "12").await, 403, "M_FORBIDDEN");

    // The new room: predecessor, copied state, moved addresses.
    let create = alice.state(&new, "m.room.create").await;
    assert_eq!(create["room_version"], "12");
    assert_eq!(create["predecessor"]["room_id"], old.as_str());
    assert!(create["predecessor"]["event_id"].as_str().is_some_and(|e| e.starts_with('$')), "{create}");
    assert_eq!(alice.state(&new, "m.room.name").await["name"], "Town hall");
    assert_eq!(alice.state(&new, "m.room.topic").await["topic"], "Agenda");
    assert_eq!(alice.state(&new, "m.room.encryption").await["algorithm"], "m.megolm.v1.aes-sha2");
    assert_eq!(alice.state(&new, "m.room.join_rules").await["join_rule"], "public");
    assert_eq!(alice.state(&new, "m.room.canonical_alias").await, json!({"alias": "#town:localhost"}));
    let new_levels = alice.state(&new, "m.room.power_levels").await;
    assert!(new_levels["users"].get(&alice.id).is_none(), "v12 creators are not listed: {new_levels}");
    assert_eq!(call(Method::GET, &alice.url(&alias_path("#town:localhost")), None, None).await.1["room_id"], new.as_str());
    assert_eq!(alice.ok(Method::GET, &format!("/directory/list/room/{old}"), None).await["visibility"], "private");
    assert_eq!(alice.ok(Method::GET, &format!("/directory/list/room/{new}"), None).await["visibility"], "public");
    assert_eq!(chunk_ids(&alice.public_rooms(json!({})).await), [new.as_str()]);
    bob.join("#town:localhost").await;
    assert_eq!(alice.membership(&new, &bob.id).await, "join");

    // Back to v10: creators are listed again, the create event names one.
    let (status, body) = upgrade(&alice, &new, "10").await;
    assert_eq!(status, 200, "{body}");
    let newer = body["replacement_room"].as_str().unwrap().to_owned();
    assert!(newer.ends_with(":localhost"));
    assert_eq!(alice.state(&newer, "m.room.create").await["creator"], alice.id.as_str());
    assert_eq!(alice.state(&newer, "m.room.power_levels").await["users"][&alice.id], 100);
    alice.ok(Method::PUT, &format!("/rooms/{newer}/state/m.room.topic/"), Some(json!({"topic": "still in charge"}))).await;
    server.stop().await.unwrap();
}

on_both_backends!(upgrades);

/// An upgrader whose own level is below what the copied state needs gets
/// it for the copy and the room's levels at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_by_a_moderator_keeps_the_levels() {
    let server = TestServer::start(Backend::Sqlite).await.unwrap();
    let alice = User::new(&server.base_url, "alice").await;
    let bob = User::new(&server.base_url, "bob").await;
    let room = alice
        .create_room(json!({
            "room_version": "10", "preset": "public_chat", "name": "Levels",
            "power_level_content_override": {"events": {"m.room.tombstone": 50, "m.room.name": 100, "m.room.power_levels": 100}},
        }))
        .await;
    bob.join(&room).await;
    let mut levels = alice.state(&room, "m.room.power_levels").await;
    levels["users"][&bob.id] = json!(50);
    alice.ok(Method::PUT, &format!("/rooms/{room}/state/m.room.power_levels/"), Some(levels)).await;
    let body = bob.ok(Method::POST, &format!("/rooms/{room}/upgrade"), Some(json!({"new_version": "11"}))).await;
    let new = body["replacement_room"].as_str().unwrap();
    assert_eq!(bob.state(new, "m.room.name").await["name"], "Levels");
    let new_levels = bob.state(new, "m.room.power_levels").await;
    assert_eq!(new_levels["users"][&bob.id], 50);
    assert_eq!(new_levels["users"][&alice.id], 100);
    assert_eq!(new_levels["events"]["m.room.name"], 100);
    // Bob could not change the old room's levels: they stay as they were.
    assert_eq!(bob.state(&room, "m.room.power_levels").await["events_default"], 0);
    assert_eq!(bob.state(&room, "m.room.tombstone").await["replacement_room"], new);
    server.stop().await.unwrap();
}

async fn knocking(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let base = server.base_url.clone();
    let alice = User::new(&base, "alice").await;
    let bob = User::new(&base, "bob").await;
    let carol = User::new(&base, "carol").await;
    let room = alice
        .create_room(json!({
            "room_alias_name": "door", "name": "Knock knock",
            "initial_state": [{"type": "m.room.join_rules", "content": {"join_rule": "knock"}}],
        }))
        .await;
    let alice_since = alice.sync("timeout=0").await["next_batch"].as_str().unwrap().to_owned();
    let bob_since = bob.sync("timeout=0").await["next_batch"].as_str().unwrap().to_owned();

    let (status, body) = knock(&bob, "#door:localhost", json!({"reason": "let me in"})).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"room_id": room})));

    // The knocker sees the room in rooms.knock, with stripped state.
    let synced = bob.sync(&format!("since={bob_since}&timeout=0")).await;
    let state = synced["rooms"]["knock"][&room]["knock_state"]["events"].as_array().unwrap().clone();
    let of_type = |t: &str| state.iter().find(|e| e["type"] == t).cloned().unwrap_or(Value::Null);
    assert_eq!(of_type("m.room.member")["content"]["membership"], "knock");
    assert_eq!(of_type("m.room.member")["state_key"], bob.id.as_str());
    assert_eq!(of_type("m.room.name")["content"]["name"], "Knock knock");
    assert_eq!(of_type("m.room.join_rules")["content"]["join_rule"], "knock");
    assert!(state.iter().all(|e| e.get("event_id").is_none()), "stripped: {state:?}");
    assert!(synced["rooms"]["join"].get(&room).is_none());
    let bob_since = synced["next_batch"].as_str().unwrap().to_owned();

    // Members see the knock in their timeline.
    let synced = alice.sync(&format!("since={alice_since}&timeout=0")).await;
    let timeline = synced["rooms"]["join"][&room]["timeline"]["events"].as_array().unwrap();
    let event = timeline.iter().find(|e| e["type"] == "m.room.member" && e["state_key"] == bob.id.as_str()).unwrap();
    assert_eq!(
        (event["content"]["membership"].as_str(), event["content"]["reason"].as_str()),
        (Some("knock"), Some("let me in"))
    );

    // Knocking is not joining; knocking twice adds nothing.
    assert_error(&bob.call(Method::POST, &format!("/rooms/{room}/join"), Some(json!({}))).await, 403, "M_FORBIDDEN");
    let before = alice.ok(Method::GET, &format!("/rooms/{room}/state/m.room.member/{}?format=event", bob.id), None).await;
    knock(&bob, &room, json!({})).await;
    let after = alice.ok(Method::GET, &format!("/rooms/{room}/state/m.room.member/{}?format=event", bob.id), None).await;
    assert_eq!(before["event_id"], after["event_id"]);

    // Accepting: an invite, then a join.
    alice.ok(Method::POST, &format!("/rooms/{room}/invite"), Some(json!({"user_id": bob.id}))).await;
    let synced = bob.sync(&format!("since={bob_since}&timeout=0")).await;
    assert!(synced["rooms"]["invite"].get(&room).is_some(), "{synced}");
    assert!(synced["rooms"]["knock"].get(&room).is_none());
    bob.ok(Method::POST, &format!("/rooms/{room}/join"), Some(json!({}))).await;
    assert_eq!(alice.membership(&room, &bob.id).await, "join");
    assert_error(&knock(&bob, &room, json!({})).await, 403, "M_FORBIDDEN");

    // Retracting: the knocker leaves, and sees it in rooms.leave.
    let carol_since = carol.sync("timeout=0").await["next_batch"].as_str().unwrap().to_owned();
    knock(&carol, &room, json!({})).await;
    carol.ok(Method::POST, &format!("/rooms/{room}/leave"), Some(json!({}))).await;
    assert_eq!(alice.membership(&room, &carol.id).await, "leave");
    let synced = carol.sync(&format!("since={carol_since}&timeout=0")).await;
    assert!(synced["rooms"]["leave"].get(&room).is_some(), "{synced}");
    // Refusing: a kick; a ban also stops further knocks.
    knock(&carol, &room, json!({})).await;
    alice.ok(Method::POST, &format!("/rooms/{room}/kick"), Some(json!({"user_id": carol.id}))).await;
    assert_eq!(alice.membership(&room, &carol.id).await, "leave");
    alice.ok(Method::POST, &format!("/rooms/{room}/ban"), Some(json!({"user_id": carol.id}))).await;
    assert_error(&knock(&carol, &room, json!({})).await, 403, "M_FORBIDDEN");

    // Rooms that do not take knocks, and rooms that do not exist.
    let public = alice.create_room(json!({"preset": "public_chat"})).await;
    let private = alice.create_room(json!({"preset": "private_chat"})).await;
    let dave = User::new(&base, "dave").await;
    assert_error(&knock(&dave, &public, json!({})).await, 403, "M_FORBIDDEN");
    assert_error(&knock(&dave, &private, json!({})).await, 403, "M_FORBIDDEN");
    assert_error(&knock(&dave, "!unknown:localhost", json!({})).await, 404, "M_NOT_FOUND");
    assert_error(&knock(&dave, "#nowhere:localhost", json!({})).await, 404, "M_NOT_FOUND");
    assert_error(&knock(&dave, "not-a-room", json!({})).await, 400, "M_INVALID_PARAM");
    // knock_restricted takes knocks too.
    let restricted = alice
        .create_room(json!({"initial_state": [{"type": "m.room.join_rules",
            "content": {"join_rule": "knock_restricted", "allow": [{"type": "m.room_membership", "room_id": room}]}}]}))
        .await;
    knock(&dave, &restricted, json!({})).await;
    assert_eq!(alice.membership(&restricted, &dave.id).await, "knock");
    server.stop().await.unwrap();
}

on_both_backends!(knocking);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgetting_rooms() {
    let server = TestServer::start(Backend::Sqlite).await.unwrap();
    let base = server.base_url.clone();
    let alice = User::new(&base, "alice").await;
    let bob = User::new(&base, "bob").await;
    let room = alice.create_room(json!({"preset": "public_chat", "name": "Left behind"})).await;
    bob.join(&room).await;
    let since = bob.sync("timeout=0").await["next_batch"].as_str().unwrap().to_owned();
    let include_leave = enc(r#"{"room":{"include_leave":true}}"#);

    assert_error(&forget(&bob, &room).await, 400, "M_UNKNOWN");
    bob.ok(Method::POST, &format!("/rooms/{room}/leave"), Some(json!({}))).await;
    assert!(bob.sync(&format!("filter={include_leave}")).await["rooms"]["leave"].get(&room).is_some());
    assert!(bob.sync(&format!("since={since}&timeout=0")).await["rooms"]["leave"].get(&room).is_some());

    bob.ok(Method::POST, &format!("/rooms/{room}/forget"), Some(json!({}))).await;
    assert!(bob.sync(&format!("filter={include_leave}")).await["rooms"]["leave"].get(&room).is_none());
    assert!(bob.sync(&format!("since={since}&timeout=0")).await["rooms"]["leave"].get(&room).is_none());
    // Unknown rooms and rooms never joined: nothing to forget.
    bob.ok(Method::POST, "/rooms/!unknown:localhost/forget", Some(json!({}))).await;
    assert_error(&bob.call(Method::POST, "/rooms/not-a-room/forget", Some(json!({}))).await, 400, "M_INVALID_PARAM");

    // Rejoining brings it back; the next leave is not forgotten.
    let since = bob.sync("timeout=0").await["next_batch"].as_str().unwrap().to_owned();
    bob.join(&room).await;
    assert!(bob.sync(&format!("since={since}&timeout=0")).await["rooms"]["join"].get(&room).is_some());
    bob.ok(Method::POST, &format!("/rooms/{room}/leave"), Some(json!({}))).await;
    assert!(bob.sync(&format!("filter={include_leave}")).await["rooms"]["leave"].get(&room).is_some());
    // Invited rooms cannot be forgotten either.
    let private = alice.create_room(json!({"invite": [bob.id]})).await;
    assert_error(&forget(&bob, &private).await, 400, "M_UNKNOWN");
    server.stop().await.unwrap();
}

async fn reporting(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let base = server.base_url.clone();
    let alice = User::new(&base, "alice").await;
    let bob = User::new(&base, "bob").await;
    let carol = User::new(&base, "carol").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    let other = alice.create_room(json!({"preset": "public_chat"})).await;
    let event = alice
        .ok(Method::PUT, &format!("/rooms/{room}/send/m.room.message/m1"), Some(json!({"msgtype": "m.text", "body": "rude"})))
        .await;
    let event = event["event_id"].as_str().unwrap().to_owned();
    let elsewhere = alice
        .ok(Method::PUT, &format!("/rooms/{other}/send/m.room.message/m2"), Some(json!({"msgtype": "m.text", "body": "x"})))
        .await;
    let elsewhere = elsewhere["event_id"].as_str().unwrap().to_owned();

    // Event reports: joined reporters, events of that room.
    assert_error(&report(&bob, &room, &event, json!({"reason": "spam"})).await, 404, "M_NOT_FOUND");
    bob.join(&room).await;
    bob.ok(Method::POST, &format!("/rooms/{room}/report/{}", enc(&event)), Some(json!({"reason": "spam", "score": -100}))).await;
    assert_error(&report(&bob, &room, "$unknown", json!({})).await, 404, "M_NOT_FOUND");
    assert_error(&report(&bob, &room, &elsewhere, json!({})).await, 404, "M_NOT_FOUND");
    assert_error(&report(&bob, &room, &event, json!({"score": 5})).await, 400, "M_INVALID_PARAM");
    assert_error(&report(&bob, &room, &event, json!({"score": "bad"})).await, 400, "M_BAD_JSON");
    assert_error(
        &report(&bob, &room, &event, json!({"reason": "x".repeat(MAX_REPORT_REASON_BYTES + 1)})).await,
        400,
        "M_INVALID_PARAM",
    );
    assert_error(&report(&bob, "not-a-room", &event, json!({})).await, 400, "M_INVALID_PARAM");

    // Room reports: no membership needed (spec v1.13), the room must exist.
    carol.ok(Method::POST, &format!("/rooms/{room}/report"), Some(json!({"reason": "whole room"}))).await;
    assert_error(
        &carol.call(Method::POST, "/rooms/!unknown:localhost/report", Some(json!({"reason": "x"}))).await,
        404,
        "M_NOT_FOUND",
    );

    // At most so many reports per hour and reporter.
    for n in 1..MAX_REPORTS_PER_USER_PER_WINDOW {
        let (status, body) = report(&bob, &room, &event, json!({"reason": format!("again {n}")})).await;
        assert_eq!(status, 200, "report {n}: {body}");
    }
    let limited = report(&bob, &room, &event, json!({})).await;
    assert_error(&limited, 429, "M_LIMIT_EXCEEDED");
    assert!(limited.1["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0), "{}", limited.1);
    assert_error(
        &bob.call(Method::POST, &format!("/rooms/{room}/report"), Some(json!({"reason": "x"}))).await,
        429,
        "M_LIMIT_EXCEEDED",
    );
    assert_error(&report(&carol, &room, &event, json!({})).await, 404, "M_NOT_FOUND");

    // Stored for the admins.
    let store = chancery_server::open_store(&server.config).await.unwrap();
    let reports = store.reports(0, 100).await.unwrap();
    store.close().await;
    assert_eq!(reports.len(), MAX_REPORTS_PER_USER_PER_WINDOW + 1);
    assert_eq!(
        (reports[0].reporter.as_str(), reports[0].event_id.as_deref(), reports[0].reason.as_deref(), reports[0].score),
        (bob.id.as_str(), Some(event.as_str()), Some("spam"), Some(-100))
    );
    assert_eq!((reports[1].reporter.as_str(), reports[1].event_id.as_deref()), (carol.id.as_str(), None));
    assert!(reports.iter().all(|r| r.room_id == room));
    server.stop().await.unwrap();
}

on_both_backends!(reporting);

async fn sdk_client(base: &str, name: &str) -> Client {
    register(base, name).await;
    let client = Client::builder().homeserver_url(base).build().await.unwrap();
    client.matrix_auth().login_username(name, PASSWORD).send().await.unwrap();
    client
}

/// Syncs (bounded: at most 20 rounds) until `done` holds.
async fn sync_until(client: &Client, what: &str, mut done: impl FnMut(&Client) -> bool) {
    for _ in 0..20 {
        client.sync_once(SyncSettings::default().timeout(Duration::from_secs(5))).await.unwrap();
        if done(client) {
            return;
        }
    }
    panic!("{} never saw: {what}", client.user_id().unwrap());
}

/// Element's path: a public room with an address, found in the directory
/// and joined by its alias from another account, then upgraded; both
/// clients follow the tombstone to the new room.
async fn sdk_address_directory_and_upgrade(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let base = server.base_url.clone();
    let alice = sdk_client(&base, "alice").await;
    let bob = sdk_client(&base, "bob").await;

    let mut request = create_room::v3::Request::new();
    request.name = Some("Town square".into());
    request.room_alias_name = Some("townsquare".into());
    request.visibility = Visibility::Public;
    let room = alice.create_room(request).await.unwrap();
    let old_id = room.room_id().to_owned();

    let alias = RoomAliasId::parse("#townsquare:localhost").unwrap();
    let resolved = bob.resolve_room_alias(&alias).await.unwrap();
    assert_eq!(resolved.room_id, old_id);
    assert_eq!(resolved.servers.iter().map(|s| s.as_str()).collect::<Vec<_>>(), ["localhost"]);
    let mut search = get_public_rooms_filtered::v3::Request::new();
    let mut filter = Filter::new();
    filter.generic_search_term = Some("town".into());
    search.filter = filter;
    let found = bob.public_rooms_filtered(search).await.unwrap();
    assert_eq!(found.chunk.len(), 1);
    assert_eq!(found.chunk[0].room_id, old_id);
    assert_eq!(found.chunk[0].canonical_alias.as_deref(), Some(&*alias));
    assert_eq!(found.chunk[0].name.as_deref(), Some("Town square"));

    let target: OwnedRoomOrAliasId = alias.clone().into();
    let joined = bob.join_room_by_id_or_alias(&target, &[]).await.unwrap();
    assert_eq!(joined.room_id(), old_id);
    sync_until(&bob, "the joined room", |c| c.get_room(&old_id).is_some_and(|r| r.state() == RoomState::Joined)).await;
    sync_until(&bob, "the canonical alias", |c| {
        c.get_room(&old_id).and_then(|r| r.canonical_alias()).as_deref() == Some(&*alias)
    })
    .await;

    let upgraded = alice.send(upgrade_room::v3::Request::new(old_id.clone(), RoomVersionId::V12)).await.unwrap();
    let new_id = upgraded.replacement_room;
    sync_until(&bob, "the tombstone", |c| {
        c.get_room(&old_id).and_then(|r| r.successor_room()).is_some_and(|s| s.room_id == new_id)
    })
    .await;
    // The alias follows the room; joining by it lands in the new room.
    assert_eq!(bob.resolve_room_alias(&alias).await.unwrap().room_id, new_id);
    let joined = bob.join_room_by_id_or_alias(&target, &[]).await.unwrap();
    assert_eq!(joined.room_id(), new_id);
    sync_until(&bob, "the predecessor", |c| {
        c.get_room(&new_id).and_then(|r| r.predecessor_room()).is_some_and(|p| p.room_id == old_id)
    })
    .await;
    sync_until(&alice, "the new room", |c| c.get_room(&new_id).is_some_and(|r| r.state() == RoomState::Joined)).await;
    assert_eq!(alice.get_room(&new_id).unwrap().name().as_deref(), Some("Town square"));
    server.stop().await.unwrap();
}

on_both_backends!(sdk_address_directory_and_upgrade);
