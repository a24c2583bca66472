//! Space hierarchies (`GET /rooms/{roomId}/hierarchy`) and room summaries
//! (`GET /room_summary/{roomIdOrAlias}`, MSC3266) over plain HTTP, and
//! through matrix-sdk's room preview and ruma's client types.

use std::collections::{BTreeMap, BTreeSet};

use chancery_testkit::{Backend, TestServer};
use matrix_sdk::Client;
use matrix_sdk::room_preview::RoomPreview;
use matrix_sdk::ruma::api::client::space::get_hierarchy;
use matrix_sdk::ruma::room::{JoinRuleSummary, RoomType};
use matrix_sdk::ruma::{OwnedRoomId, OwnedRoomOrAliasId};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{PASSWORD, User, assert_error, call, register};

/// Percent-encodes a path segment (`#`, `!` and `:` of ids and aliases).
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn server_of(user: &User) -> String {
    user.id.split_once(':').unwrap().1.to_owned()
}

/// The space tree every test walks, with each room's id by name.
struct Tree {
    rooms: BTreeMap<&'static str, String>,
}

impl Tree {
    fn id(&self, name: &str) -> &str {
        &self.rooms[name]
    }
    fn names(&self, ids: &[String]) -> Vec<&'static str> {
        ids.iter().map(|id| *self.rooms.iter().find(|(_, v)| *v == id).map(|(k, _)| k).unwrap_or(&"?")).collect()
    }
}

async fn link(owner: &User, space: &str, child: &str, content: Value) -> String {
    let path = format!("/rooms/{space}/state/m.space.child/{child}");
    owner.ok(Method::PUT, &path, Some(content)).await["event_id"].as_str().unwrap().to_owned()
}

/// Space `S` (public) holding, in this order: `P` (public, with an
/// alias), `Q` (private, encrypted), `R` (restricted to members of `S`),
/// sub-space `Sub` (public; children `Sub1`, `Sub2` and `S` again, a
/// cycle), `G` (public, suggested), and a room this server does not know.
async fn build_tree(alice: &User) -> Tree {
    let server = server_of(alice);
    let via = json!([server]);
    let space = |name: &str| {
        json!({"preset": "public_chat", "name": name, "topic": format!("topic of {name}"),
               "creation_content": {"type": "m.space"}})
    };
    let public = |name: &str| json!({"preset": "public_chat", "name": name});
    let s = alice.create_room(space("S")).await;
    let p = alice.create_room(json!({"preset": "public_chat", "name": "P", "room_alias_name": "spaces-p"})).await;
    let q = alice.create_room(json!({"preset": "private_chat", "name": "Q"})).await;
    let r = alice
        .create_room(json!({"preset": "private_chat", "name": "R", "initial_state": [{
            "type": "m.room.join_rules", "state_key": "",
            "content": {"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": s}]}}]}))
        .await;
    let sub = alice.create_room(space("Sub")).await;
    let sub1 = alice.create_room(public("Sub1")).await;
    let sub2 = alice.create_room(public("Sub2")).await;
    let g = alice.create_room(public("G")).await;
    for (child, order) in [(&p, "a"), (&q, "b"), (&r, "c"), (&sub, "d")] {
        link(alice, &s, child, json!({"via": via, "order": order})).await;
    }
    link(alice, &s, &g, json!({"via": via, "order": "e", "suggested": true})).await;
    link(alice, &s, &format!("!nowhere:{server}"), json!({"via": via})).await;
    // No order: by the link's timestamp, Sub1 first.
    link(alice, &sub, &sub1, json!({"via": via})).await;
    link(alice, &sub, &sub2, json!({"via": via})).await;
    link(alice, &sub, &s, json!({"via": via})).await;
    let rooms = BTreeMap::from([("S", s), ("P", p), ("Q", q), ("R", r), ("Sub", sub), ("Sub1", sub1), ("Sub2", sub2), ("G", g)]);
    Tree { rooms }
}

fn hierarchy_url(base: &str, room: &str, query: &str) -> String {
    format!("{base}/_matrix/client/v1/rooms/{}/hierarchy?{query}", enc(room))
}

async fn hierarchy(user: &User, room: &str, query: &str) -> (StatusCode, Value) {
    call(Method::GET, &hierarchy_url(&user.base, room, query), Some(&user.token), None).await
}

fn room_ids(page: &Value) -> Vec<String> {
    page["rooms"].as_array().unwrap().iter().map(|r| r["room_id"].as_str().unwrap().to_owned()).collect()
}

/// Every page of a hierarchy (at most 20), as the rooms' names, each
/// page's rooms in order; the pages are asked of `bases` in turn.
async fn all_pages(user: &User, bases: &[String], tree: &Tree, room: &str, query: &str) -> Vec<Vec<&'static str>> {
    let mut pages = Vec::new();
    let mut from: Option<String> = None;
    for n in 0..20 {
        let q = match &from {
            None => query.to_owned(),
            Some(token) => format!("{query}&from={}", enc(token)),
        };
        let url = hierarchy_url(&bases[n % bases.len()], room, &q);
        let (status, page) = call(Method::GET, &url, Some(&user.token), None).await;
        assert_eq!(status, 200, "{page}");
        pages.push(tree.names(&room_ids(&page)));
        match page["next_batch"].as_str() {
            Some(token) => from = Some(token.to_owned()),
            None => return pages,
        }
    }
    panic!("more than 20 pages");
}

async fn hierarchy_of_a_space(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let base = server.base_url.clone();
    let alice = User::new(&base, "alice").await;
    let bob = User::new(&base, "bob").await;
    let tree = build_tree(&alice).await;
    let s = tree.id("S").to_owned();

    // A member sees every room they may, depth first, each once (Sub's
    // link back to S is a cycle); the unknown room is skipped.
    let (status, page) = hierarchy(&alice, &s, "").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(tree.names(&room_ids(&page)), ["S", "P", "Q", "R", "Sub", "Sub1", "Sub2", "G"]);
    assert!(page.get("next_batch").is_none(), "{page}");
    let by_name = |name: &str| page["rooms"].as_array().unwrap().iter().find(|r| r["room_id"] == tree.id(name)).unwrap().clone();
    let space = by_name("S");
    assert_eq!((&space["name"], &space["topic"], &space["room_type"]), (&json!("S"), &json!("topic of S"), &json!("m.space")));
    assert_eq!(space["num_joined_members"], 1);
    assert_eq!((&space["world_readable"], &space["guest_can_join"]), (&json!(false), &json!(false)));
    assert!(space["room_version"].is_string());
    // Children as stripped events with their timestamps, in the spec's
    // order (the unknown room's link, without an order, last).
    let children = space["children_state"].as_array().unwrap();
    let linked: Vec<&str> = children.iter().map(|c| c["state_key"].as_str().unwrap()).collect();
    let unknown = format!("!nowhere:{}", server_of(&alice));
    assert_eq!(linked, [tree.id("P"), tree.id("Q"), tree.id("R"), tree.id("Sub"), tree.id("G"), unknown.as_str()]);
    for child in children {
        assert_eq!((&child["type"], &child["sender"]), (&json!("m.space.child"), &json!(alice.id)), "{child}");
        assert!(child["origin_server_ts"].is_u64() && child["content"]["via"].is_array(), "{child}");
        assert!(child.get("event_id").is_none() && child.get("room_id").is_none(), "stripped: {child}");
    }
    assert_eq!(by_name("G")["children_state"], json!([]));
    assert_eq!(by_name("P")["canonical_alias"], format!("#spaces-p:{}", server_of(&alice)));
    assert_eq!(by_name("Q")["encryption"], "m.megolm.v1.aes-sha2");
    assert_eq!(by_name("Q")["join_rule"], "invite");
    let restricted = by_name("R");
    assert_eq!((&restricted["join_rule"], &restricted["allowed_room_ids"]), (&json!("restricted"), &json!([s])));

    // An outsider sees the public rooms, not the private one nor the one
    // restricted to members of S, until they join S.
    let (status, page) = hierarchy(&bob, &s, "").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(tree.names(&room_ids(&page)), ["S", "P", "Sub", "Sub1", "Sub2", "G"]);
    assert_eq!(page["rooms"][0]["children_state"].as_array().unwrap().len(), 6, "links to hidden rooms still show");
    bob.ok(Method::POST, &format!("/join/{}", enc(&s)), Some(json!({}))).await;
    let (_, page) = hierarchy(&bob, &s, "").await;
    assert_eq!(tree.names(&room_ids(&page)), ["S", "P", "R", "Sub", "Sub1", "Sub2", "G"]);
    // A private room's own hierarchy is closed to them; so is an unknown one.
    assert_error(&hierarchy(&bob, tree.id("Q"), "").await, 403, "M_FORBIDDEN");
    assert_error(&hierarchy(&bob, &unknown, "").await, 403, "M_FORBIDDEN");

    // max_depth and suggested_only.
    let names = |page: &Value| tree.names(&room_ids(page));
    assert_eq!(names(&hierarchy(&alice, &s, "max_depth=0").await.1), ["S"]);
    assert_eq!(names(&hierarchy(&alice, &s, "max_depth=1").await.1), ["S", "P", "Q", "R", "Sub", "G"]);
    let (_, suggested) = hierarchy(&alice, &s, "suggested_only=true").await;
    assert_eq!(names(&suggested), ["S", "G"]);
    let links = suggested["rooms"][0]["children_state"].as_array().unwrap();
    assert_eq!(links.iter().map(|c| c["state_key"].as_str().unwrap()).collect::<Vec<_>>(), [tree.id("G")]);

    // The cycle seen from the sub-space: S is walked into once, and Sub
    // is not listed again under it.
    assert_eq!(names(&hierarchy(&alice, tree.id("Sub"), "").await.1), ["Sub", "Sub1", "Sub2", "S", "P", "Q", "R", "G"]);

    // The unstable path of MSC2946 answers the same.
    let url = format!("{base}/_matrix/client/unstable/org.matrix.msc2946/rooms/{}/hierarchy?max_depth=0", enc(&s));
    let (status, page) = call(Method::GET, &url, Some(&alice.token), None).await;
    assert_eq!((status, names(&page)), (StatusCode::OK, vec!["S"]));

    // A redacted link (content stripped, no `via`) no longer counts.
    let sub = tree.id("Sub").to_owned();
    let link_event = alice.ok(Method::GET, &format!("/rooms/{sub}/state/m.space.child/{}", tree.id("Sub2")), None).await;
    assert!(link_event["via"].is_array(), "{link_event}");
    let state = alice.ok(Method::GET, &format!("/rooms/{sub}/state"), None).await;
    let link_id = state
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.space.child" && e["state_key"] == tree.id("Sub2"))
        .unwrap()["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    alice.ok(Method::PUT, &format!("/rooms/{sub}/redact/{}/t1", enc(&link_id)), Some(json!({}))).await;
    assert_eq!(names(&hierarchy(&alice, &sub, "max_depth=1").await.1), ["Sub", "Sub1", "S"]);
    server.stop().await.unwrap();
}

on_both_backends!(hierarchy_of_a_space);

/// Small pages list every room exactly once, in the order of one big
/// page, with the pages answered by two nodes in turn (PostgreSQL) or
/// across a restart (SQLite); a token works only with the parameters it
/// was made for, and bad tokens and limits are refused.
async fn hierarchy_pages(backend: Backend) {
    let mut server = TestServer::start(backend).await.unwrap();
    let alice = User::new(&server.base_url, "alice").await;
    let bob = User::new(&server.base_url, "bob").await;
    let tree = build_tree(&alice).await;
    let s = tree.id("S").to_owned();
    let everything = ["S", "P", "Q", "R", "Sub", "Sub1", "Sub2", "G"];

    let other = match backend {
        Backend::Postgres => Some(server.another_node().await.unwrap()),
        Backend::Sqlite => None,
    };
    let bases: Vec<String> = std::iter::once(server.base_url.clone()).chain(other.iter().map(|o| o.base_url.clone())).collect();
    for limit in [1, 2, 3] {
        let pages = all_pages(&alice, &bases, &tree, &s, &format!("limit={limit}")).await;
        assert!(pages.len() >= everything.len().div_ceil(limit), "{pages:?}");
        assert!(pages.iter().all(|p| p.len() <= limit), "{pages:?}");
        assert_eq!(pages.concat(), everything, "limit {limit}: {pages:?}");
    }
    // limit may change between pages; the rooms still come once each.
    let (_, first) = hierarchy(&alice, &s, "limit=2").await;
    let token = first["next_batch"].as_str().unwrap().to_owned();
    let (status, second) = hierarchy(&alice, &s, &format!("limit=50&from={}", enc(&token))).await;
    assert_eq!(status, 200, "{second}");
    assert_eq!([tree.names(&room_ids(&first)), tree.names(&room_ids(&second))].concat(), everything);
    // A token is valid again (a retried page), across a restart too.
    if backend == Backend::Sqlite {
        server.restart().await.unwrap();
    }
    let alice = User { base: server.base_url.clone(), token: alice.token.clone(), id: alice.id.clone() };
    let bob = User { base: server.base_url.clone(), ..bob };
    let (status, again) = hierarchy(&alice, &s, &format!("limit=50&from={}", enc(&token))).await;
    assert_eq!((status, room_ids(&again)), (StatusCode::OK, room_ids(&second)));

    // Only with the parameters it was made for, by its user.
    for query in [
        format!("max_depth=1&from={}", enc(&token)),
        format!("suggested_only=true&from={}", enc(&token)),
        "from=nonsense".to_owned(),
        "from=".to_owned(),
    ] {
        assert_error(&hierarchy(&alice, &s, &query).await, 400, "M_INVALID_PARAM");
    }
    assert_error(&hierarchy(&alice, tree.id("Sub"), &format!("from={}", enc(&token))).await, 400, "M_INVALID_PARAM");
    assert_error(&hierarchy(&bob, &s, &format!("from={}", enc(&token))).await, 400, "M_INVALID_PARAM");
    // Bad limits and depths; no access token.
    for query in ["limit=0", "limit=-1", "limit=many", "max_depth=-1"] {
        assert_error(&hierarchy(&alice, &s, query).await, 400, "M_INVALID_PARAM");
    }
    assert_error(&call(Method::GET, &hierarchy_url(&server.base_url, &s, ""), None, None).await, 401, "M_MISSING_TOKEN");
    if let Some(other) = other {
        other.stop().await.unwrap();
    }
    server.stop().await.unwrap();
}

on_both_backends!(hierarchy_pages);

fn summary_url(base: &str, room: &str) -> String {
    format!("{base}/_matrix/client/v1/room_summary/{}", enc(room))
}

async fn summary(base: &str, room: &str, token: Option<&str>) -> (StatusCode, Value) {
    call(Method::GET, &summary_url(base, room), token, None).await
}

async fn room_summaries(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let base = server.base_url.clone();
    let alice = User::new(&base, "alice").await;
    let bob = User::new(&base, "bob").await;
    let carol = User::new(&base, "carol").await;
    let domain = server_of(&alice);
    let public = alice
        .create_room(json!({"preset": "public_chat", "name": "Town square", "topic": "Everyone", "room_alias_name": "square"}))
        .await;
    let alias = format!("#square:{domain}");

    // A public room, by id and by alias, for a non-member and for nobody.
    for target in [&public, &alias] {
        let (status, as_bob) = summary(&base, target, Some(&bob.token)).await;
        assert_eq!(status, 200, "{as_bob}");
        assert_eq!(
            (&as_bob["room_id"], &as_bob["name"], &as_bob["topic"]),
            (&json!(public), &json!("Town square"), &json!("Everyone"))
        );
        assert_eq!((&as_bob["canonical_alias"], &as_bob["num_joined_members"]), (&json!(alias), &json!(1)));
        assert_eq!((&as_bob["world_readable"], &as_bob["guest_can_join"]), (&json!(false), &json!(false)));
        assert_eq!(as_bob["membership"], "leave");
        assert!(as_bob["room_version"].is_string() && as_bob.get("room_type").is_none() && as_bob.get("encryption").is_none());
        // ruma leaves out `public`, the field's default.
        assert!(matches!(as_bob.get("join_rule"), None | Some(Value::String(_))), "{as_bob}");
        let (status, anonymous) = summary(&base, target, None).await;
        assert_eq!(status, 200, "{anonymous}");
        assert_eq!(anonymous["room_id"], json!(public));
        assert!(anonymous.get("membership").is_none(), "{anonymous}");
    }
    let (_, as_alice) = summary(&base, &public, Some(&alice.token)).await;
    assert_eq!(as_alice["membership"], "join");

    // The unstable paths (ruma's, and the one Synapse also serves).
    for url in [
        format!("{base}/_matrix/client/unstable/im.nheko.summary/rooms/{}/summary", enc(&alias)),
        format!("{base}/_matrix/client/unstable/im.nheko.summary/summary/{}", enc(&alias)),
    ] {
        let (status, body) = call(Method::GET, &url, Some(&bob.token), None).await;
        assert_eq!((status, &body["room_id"]), (StatusCode::OK, &json!(public)), "{url}: {body}");
    }

    // A private room: not for outsiders nor for nobody (answered as an
    // unknown room), but for an invitee, with their membership.
    let private = alice.create_room(json!({"preset": "private_chat", "name": "Cabinet"})).await;
    assert_error(&summary(&base, &private, Some(&bob.token)).await, 404, "M_NOT_FOUND");
    assert_error(&summary(&base, &private, None).await, 404, "M_NOT_FOUND");
    alice.ok(Method::POST, &format!("/rooms/{private}/invite"), Some(json!({"user_id": carol.id}))).await;
    let (status, as_carol) = summary(&base, &private, Some(&carol.token)).await;
    assert_eq!(status, 200, "{as_carol}");
    assert_eq!((&as_carol["membership"], &as_carol["name"]), (&json!("invite"), &json!("Cabinet")));
    assert_eq!((&as_carol["encryption"], &as_carol["join_rule"]), (&json!("m.megolm.v1.aes-sha2"), &json!("invite")));
    // Who left it loses the preview.
    carol.ok(Method::POST, &format!("/rooms/{private}/leave"), Some(json!({}))).await;
    assert_error(&summary(&base, &private, Some(&carol.token)).await, 404, "M_NOT_FOUND");

    // A space says so.
    let space =
        alice.create_room(json!({"preset": "public_chat", "name": "Ministry", "creation_content": {"type": "m.space"}})).await;
    let (_, body) = summary(&base, &space, None).await;
    assert_eq!(body["room_type"], "m.space");

    // Unknown rooms and aliases, aliases of other servers; a bad token.
    assert_error(&summary(&base, &format!("!nowhere:{domain}"), Some(&bob.token)).await, 404, "M_NOT_FOUND");
    assert_error(&summary(&base, &format!("#nowhere:{domain}"), None).await, 404, "M_NOT_FOUND");
    assert_error(&summary(&base, "#square:elsewhere.example", Some(&bob.token)).await, 404, "M_NOT_FOUND");
    assert_error(&summary(&base, "not-a-room", Some(&bob.token)).await, 400, "M_INVALID_PARAM");
    assert_error(&summary(&base, &public, Some("cha_nonsense")).await, 401, "M_UNKNOWN_TOKEN");
    server.stop().await.unwrap();
}

on_both_backends!(room_summaries);

async fn sdk_client(base: &str, name: &str) -> Client {
    register(base, name).await;
    let client = Client::builder().homeserver_url(base).build().await.unwrap();
    client.matrix_auth().login_username(name, PASSWORD).send().await.unwrap();
    client
}

/// What a real client does with these answers: matrix-sdk's room preview
/// reads the summary of rooms it is not in (by alias too), and ruma's
/// client types read a hierarchy page, children's events included.
async fn sdk_previews_and_hierarchy(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let base = server.base_url.clone();
    let alice = User::new(&base, "alice").await;
    let tree = build_tree(&alice).await;
    let bob = sdk_client(&base, "bob").await;

    let p: OwnedRoomId = tree.id("P").try_into().unwrap();
    let alias: OwnedRoomOrAliasId = format!("#spaces-p:{}", server_of(&alice)).try_into().unwrap();
    let preview = RoomPreview::from_room_summary(&bob, p.clone(), &alias, vec![]).await.unwrap();
    assert_eq!((preview.room_id.clone(), preview.name.as_deref()), (p.clone(), Some("P")));
    assert_eq!((preview.num_joined_members, preview.join_rule.clone()), (1, Some(JoinRuleSummary::Public)));
    assert_eq!((preview.room_type.clone(), preview.is_world_readable, preview.state), (None, Some(false), None));
    let by_alias = bob.get_room_preview(&alias, vec![]).await.unwrap();
    assert_eq!(by_alias.room_id, p);

    let s: OwnedRoomId = tree.id("S").try_into().unwrap();
    let s_or_alias: OwnedRoomOrAliasId = s.clone().into();
    let space = RoomPreview::from_room_summary(&bob, s.clone(), &s_or_alias, vec![]).await.unwrap();
    assert_eq!(space.room_type, Some(RoomType::Space));

    let mut request = get_hierarchy::v1::Request::new(s.clone());
    request.max_depth = Some(1u32.into());
    let page = bob.send(request).await.unwrap();
    let names: Vec<Option<&str>> = page.rooms.iter().map(|r| r.summary.name.as_deref()).collect();
    assert_eq!(names, [Some("S"), Some("P"), Some("Sub"), Some("G")]);
    let children: BTreeSet<String> = page.rooms[0]
        .children_state
        .iter()
        .map(|raw| raw.deserialize().expect("a child event ruma reads").state_key.to_string())
        .collect();
    assert_eq!(children.len(), 6);
    assert!(children.contains(tree.id("Q")), "links to rooms bob may not see still show");
    server.stop().await.unwrap();
}

on_both_backends!(sdk_previews_and_hierarchy);
