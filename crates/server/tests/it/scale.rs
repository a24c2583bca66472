//! Sizes an institution reaches: a room of 2,000 members and a user in
//! 500 rooms. These check correctness at that size; speed is measured in
//! `bench/`, not here.

use chancery_testkit::{Backend, TestServer};
use reqwest::Method;
use serde_json::json;

use crate::common::{ok, urlencode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_of_two_thousand_and_user_in_five_hundred_rooms() {
    let server = TestServer::start(Backend::Sqlite).await.unwrap();
    let base = server.base_url.clone();
    let api = |path: &str| format!("{base}/_matrix/client/v3{path}");
    let users = server.bulk_users("m", 2_000).await.unwrap();
    let (owner, owner_token) = &users[0];

    // 2,000 members join one public room, 8 at a time (bounded).
    let room =
        ok(Method::POST, api("/createRoom"), owner_token, Some(json!({"preset": "public_chat", "name": "All staff"}))).await;
    let room = room["room_id"].as_str().unwrap().to_owned();
    for chunk in users[1..].chunks(8) {
        let joins: Vec<_> = chunk
            .iter()
            .map(|(_, token)| {
                let url = api(&format!("/join/{room}"));
                let token = token.clone();
                tokio::spawn(async move { ok(Method::POST, url, &token, Some(json!({}))).await })
            })
            .collect();
        for join in joins {
            join.await.unwrap();
        }
    }
    let last = &users[1_999];
    let (_, _) = (owner, last);
    let members = ok(Method::GET, api(&format!("/rooms/{room}/joined_members")), &last.1, None).await;
    assert_eq!(members["joined"].as_object().unwrap().len(), 2_000);
    ok(
        Method::PUT,
        api(&format!("/rooms/{room}/send/m.room.message/hello")),
        owner_token,
        Some(json!({"msgtype": "m.text", "body": "Welcome all"})),
    )
    .await;

    // A late member's initial sync, lazy-loading members: the room is
    // complete, the member list is not shipped whole.
    let filter = r#"{"room":{"state":{"lazy_load_members":true},"timeline":{"limit":5}}}"#;
    let sync = ok(Method::GET, api(&format!("/sync?filter={}", urlencode(filter))), &last.1, None).await;
    let joined = &sync["rooms"]["join"][&room];
    assert_eq!(joined["summary"]["m.joined_member_count"], 2_000);
    let member_events = joined["state"]["events"].as_array().unwrap().iter().filter(|e| e["type"] == "m.room.member").count();
    assert!(member_events < 20, "lazy loading sent {member_events} member events");
    let timeline = joined["timeline"]["events"].as_array().unwrap();
    assert_eq!(timeline.last().unwrap()["content"]["body"], "Welcome all");
    let members = ok(Method::GET, api(&format!("/rooms/{room}/members?membership=join")), &last.1, None).await;
    assert_eq!(members["chunk"].as_array().unwrap().len(), 2_000);

    // One official in 500 rooms.
    let (_, busy) = &users[1];
    let mut rooms = Vec::new();
    for n in 0..500 {
        let created = ok(Method::POST, api("/createRoom"), busy, Some(json!({"name": format!("Case {n}")}))).await;
        rooms.push(created["room_id"].as_str().unwrap().to_owned());
    }
    let sync =
        ok(Method::GET, api(&format!("/sync?filter={}", urlencode(r#"{"room":{"timeline":{"limit":1}}}"#))), busy, None).await;
    assert_eq!(sync["rooms"]["join"].as_object().unwrap().len(), 501);
    let since = sync["next_batch"].as_str().unwrap().to_owned();
    ok(
        Method::PUT,
        api(&format!("/rooms/{}/send/m.room.message/x", rooms[250])),
        busy,
        Some(json!({"msgtype": "m.text", "body": "case 250 update"})),
    )
    .await;
    let incremental = ok(Method::GET, api(&format!("/sync?since={since}&timeout=0")), busy, None).await;
    let changed = incremental["rooms"]["join"].as_object().unwrap();
    assert_eq!(changed.keys().collect::<Vec<_>>(), [&rooms[250]]);
    server.stop().await.unwrap();
}
