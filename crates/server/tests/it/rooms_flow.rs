//! Two officials chat through matrix-sdk: create, invite, join, send,
//! sync, paginate, rename, redact, leave — on SQLite and PostgreSQL.

use std::time::Duration;

use chancery_testkit::{Backend, TestServer};
use matrix_sdk::config::SyncSettings;
use matrix_sdk::room::MessagesOptions;
use matrix_sdk::ruma::api::client::room::create_room;
use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;
use matrix_sdk::ruma::{OwnedRoomId, RoomId};
use matrix_sdk::{Client, RoomState};

use crate::common::{PASSWORD, register};

async fn logged_in(base: &str, name: &str) -> Client {
    register(base, name).await;
    let client = Client::builder().homeserver_url(base).build().await.unwrap();
    client.matrix_auth().login_username(name, PASSWORD).send().await.unwrap();
    client
}

fn settings() -> SyncSettings {
    SyncSettings::default().timeout(Duration::from_secs(5))
}

/// Syncs (bounded: at most 20 rounds) until `done` holds.
async fn sync_until(client: &Client, what: &str, mut done: impl FnMut(&Client) -> bool) {
    for _ in 0..20 {
        client.sync_once(settings()).await.unwrap();
        if done(client) {
            return;
        }
    }
    panic!("{} never saw: {what}", client.user_id().unwrap());
}

async fn texts(client: &Client, room_id: &RoomId, limit: u32) -> Vec<String> {
    let room = client.get_room(room_id).unwrap();
    let mut options = MessagesOptions::backward();
    options.limit = limit.into();
    let page = room.messages(options).await.unwrap();
    page.chunk
        .iter()
        .filter_map(|e| {
            let raw: serde_json::Value = e.raw().deserialize_as().ok()?;
            (raw["type"] == "m.room.message").then(|| raw["content"]["body"].as_str().unwrap_or("<redacted>").to_owned())
        })
        .collect()
}

async fn chat(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let base = server.base_url.clone();
    let alice = logged_in(&base, "alice").await;
    let bob = logged_in(&base, "bob").await;
    alice.sync_once(settings()).await.unwrap();
    bob.sync_once(settings()).await.unwrap();

    let mut request = create_room::v3::Request::new();
    request.name = Some("Crisis cell".into());
    request.invite = vec![bob.user_id().unwrap().to_owned()];
    let room = alice.create_room(request).await.unwrap();
    let room_id: OwnedRoomId = room.room_id().to_owned();

    sync_until(&bob, "the invite", |c| c.get_room(&room_id).is_some_and(|r| r.state() == RoomState::Invited)).await;
    bob.join_room_by_id(&room_id).await.unwrap();

    let room = alice.get_room(&room_id).unwrap();
    room.send(RoomMessageEventContent::text_plain("Situation report at 9")).await.unwrap();
    let second = room.send(RoomMessageEventContent::text_plain("Typo, ignore")).await.unwrap();
    sync_until(&bob, "the room joined", |c| c.get_room(&room_id).is_some_and(|r| r.state() == RoomState::Joined)).await;
    assert_eq!(texts(&bob, &room_id, 10).await, ["Typo, ignore", "Situation report at 9"]);

    // The name set at creation and a rename both reach bob.
    sync_until(&bob, "the room name", |c| c.get_room(&room_id).and_then(|r| r.name()).as_deref() == Some("Crisis cell")).await;
    room.set_name("Crisis cell (north)".into()).await.unwrap();
    sync_until(&bob, "the new name", |c| c.get_room(&room_id).and_then(|r| r.name()).as_deref() == Some("Crisis cell (north)"))
        .await;

    // Redaction: the content is gone for everyone.
    room.redact(&second.response.event_id, Some("typo"), None).await.unwrap();
    let bob_room = bob.get_room(&room_id).unwrap();
    let event = bob_room.event(&second.response.event_id, None).await.unwrap();
    let raw: serde_json::Value = event.raw().deserialize_as().unwrap();
    assert_eq!(raw["content"], serde_json::json!({}), "{raw}");
    assert!(raw["unsigned"]["redacted_because"].is_object(), "{raw}");

    // Paginate back through 500 messages.
    for i in 0..500 {
        bob_room.send(RoomMessageEventContent::text_plain(format!("m{i}"))).await.unwrap();
    }
    let mut seen = 0;
    let mut from = None;
    for _ in 0..20 {
        let mut options = MessagesOptions::backward();
        options.limit = 50u32.into();
        options.from = from.clone();
        let page = bob_room.messages(options).await.unwrap();
        seen += page.chunk.len();
        from = page.end;
        if from.is_none() {
            break;
        }
    }
    assert!(seen >= 500 + 2, "paginated {seen} events");

    // Bob leaves; alice sees it.
    bob_room.leave().await.unwrap();
    sync_until(&alice, "bob leaving", |c| c.get_room(&room_id).is_some_and(|r| r.joined_members_count() == 1)).await;
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_sqlite() {
    chat(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_postgres() {
    chat(Backend::Postgres).await;
}
