//! Element X's own sync stack against Chancery, on SQLite and PostgreSQL:
//! matrix-sdk-ui 0.18's `SyncService` (the room list service over
//! simplified sliding sync, plus its encryption sync of to-device
//! messages and device lists), its `RoomList` sorted as Element X sorts
//! it, and its `Timeline`. The client finds sliding sync through
//! `/versions`, as Element X does.
//!
//! Alice uses Element X's stack; Bob uses matrix-sdk with `/sync` v2 (so
//! his messages to her are encrypted by another client stack).

use std::time::{Duration, Instant};

use chancery_testkit::{Backend, TestServer};
use futures_util::StreamExt;
use matrix_sdk::config::SyncSettings;
use matrix_sdk::ruma::api::client::room::create_room;
use matrix_sdk::ruma::api::client::room::create_room::v3::RoomPreset;
use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;
use matrix_sdk::ruma::{OwnedRoomId, RoomId};
use matrix_sdk::sliding_sync::VersionBuilder;
use matrix_sdk::{Client, RoomState};
use matrix_sdk_ui::eyeball_im::Vector;
use matrix_sdk_ui::room_list_service::RoomListItem;
use matrix_sdk_ui::room_list_service::filters::new_filter_non_left;
use matrix_sdk_ui::sync_service::SyncService;
use matrix_sdk_ui::timeline::RoomExt;

use reqwest::Method;
use serde_json::json;

use crate::common::{PASSWORD, call, register};
use crate::e2ee::{encryption, new_user};

/// The longest any one expectation may take to come true.
const WAIT: Duration = Duration::from_secs(60);

/// Alice as Element X logs in: discovering sliding sync from `/versions`.
async fn element_x_login(base: &str, name: &str) -> Client {
    register(base, name).await;
    let client = Client::builder()
        .homeserver_url(base)
        .sliding_sync_version_builder(VersionBuilder::DiscoverNative)
        .with_encryption_settings(encryption(false, false))
        .build()
        .await
        .expect("the server advertises simplified sliding sync");
    client.matrix_auth().login_username(name, PASSWORD).initial_device_display_name("Element X").send().await.unwrap();
    client.encryption().wait_for_e2ee_initialization_tasks().await;
    client
}

async fn create(bob: &Client, name: &str, preset: RoomPreset, invite: &[&Client]) -> OwnedRoomId {
    let mut req = create_room::v3::Request::new();
    req.name = Some(name.to_owned());
    req.preset = Some(preset);
    req.invite = invite.iter().map(|c| c.user_id().unwrap().to_owned()).collect();
    bob.create_room(req).await.unwrap().room_id().to_owned()
}

async fn say(bob: &Client, room: &RoomId, text: &str) {
    // Bob's client must know the room (and, if encrypted, its members'
    // devices) before it sends.
    bob.sync_once(SyncSettings::default().timeout(Duration::ZERO)).await.unwrap();
    let room = bob.get_room(room).unwrap();
    room.send(RoomMessageEventContent::text_plain(text)).await.unwrap();
}

/// The room list's names in Element X's order.
fn names(items: &Vector<RoomListItem>) -> Vec<String> {
    items.iter().map(|r| r.cached_display_name().map(|n| n.to_string()).unwrap_or_default()).collect()
}

/// Applies room-list updates until `done` holds of the list (bounded).
async fn list_until(
    stream: &mut (impl futures_util::Stream<Item = Vec<matrix_sdk_ui::eyeball_im::VectorDiff<RoomListItem>>> + Unpin),
    items: &mut Vector<RoomListItem>,
    what: &str,
    done: impl Fn(&Vector<RoomListItem>) -> bool,
) {
    let deadline = Instant::now() + WAIT;
    while !done(items) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "{what}: the room list never got there; it shows {:?}", names(items));
        if let Ok(Some(diffs)) = tokio::time::timeout(left.min(Duration::from_millis(500)), stream.next()).await {
            for diff in diffs {
                diff.apply(items);
            }
        }
    }
}

/// Polls `check` every 100 ms until it holds (bounded).
async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} never happened");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn message_bodies(timeline: &matrix_sdk_ui::Timeline) -> Vec<String> {
    timeline
        .items()
        .await
        .iter()
        .filter_map(|item| item.as_event()?.content().as_message().map(|m| m.body().to_owned()))
        .collect()
}

async fn room_list_timeline_and_invites(backend: Backend) {
    let server = TestServer::start(backend).await.unwrap();
    let base = server.base_url.clone();
    let bob = new_user(&base, "bob", encryption(false, false)).await;
    let alice = element_x_login(&base, "alice").await;

    // Three rooms Alice is in, talked in from oldest to newest, and an
    // encrypted one whose message is the newest of all.
    let older = create(&bob, "Older", RoomPreset::PublicChat, &[]).await;
    let newer = create(&bob, "Newer", RoomPreset::PublicChat, &[]).await;
    let history = create(&bob, "History", RoomPreset::PublicChat, &[]).await;
    let secret = create(&bob, "Secret", RoomPreset::PrivateChat, &[&alice]).await;
    for room in [&older, &newer, &history, &secret] {
        alice.join_room_by_id(room).await.unwrap();
    }
    for n in 0..25 {
        say(&bob, &history, &format!("history {n}")).await;
    }
    say(&bob, &older, "older news").await;
    say(&bob, &newer, "newer news").await;

    let sync = SyncService::builder(alice.clone()).build().await.unwrap();
    sync.start().await;
    let room_list_service = sync.room_list_service();
    let all_rooms = room_list_service.all_rooms().await.unwrap();
    let (stream, controller) = all_rooms.entries_with_dynamic_adapters(50);
    controller.set_filter(Box::new(new_filter_non_left()));
    let mut stream = Box::pin(stream);
    let mut items = Vector::new();
    list_until(&mut stream, &mut items, "the first screen", |items| names(items) == ["Newer", "Older", "History", "Secret"])
        .await;

    // Bob's encrypted message (to Alice's Element X device) moves the
    // secret room to the top, and it decrypts in her timeline. Bob must
    // know that device first (its keys are uploaded by Element X's
    // encryption sync, which races with this test): a message encrypted
    // before would carry no room key for it, and matrix-sdk-ui does not
    // move a room whose newest message it cannot decrypt.
    let (alice_id, alice_device) = (alice.user_id().unwrap().to_owned(), alice.device_id().unwrap().to_owned());
    until("Bob knowing Alice's Element X device", async || {
        bob.sync_once(SyncSettings::default().timeout(Duration::ZERO)).await.unwrap();
        bob.encryption().get_device(&alice_id, &alice_device).await.unwrap().is_some()
    })
    .await;
    say(&bob, &secret, "only for alice").await;
    list_until(&mut stream, &mut items, "the encrypted room on top", |items| {
        names(items).first().map(String::as_str) == Some("Secret")
    })
    .await;
    let secret_room = alice.get_room(&secret).unwrap();
    assert!(secret_room.latest_encryption_state().await.unwrap().is_encrypted());
    let secret_timeline = secret_room.timeline().await.unwrap();
    until("the encrypted message decrypting", async || {
        message_bodies(&secret_timeline).await.contains(&"only for alice".to_owned())
    })
    .await;

    // Unread counts: Bob's messages notify Alice.
    let newer_room = alice.get_room(&newer).unwrap();
    until("an unread count", async || newer_room.unread_notification_counts().notification_count >= 1).await;

    // A new message in the oldest room brings it to the top.
    say(&bob, &history, "history is back").await;
    list_until(&mut stream, &mut items, "the history room on top", |items| {
        names(items).first().map(String::as_str) == Some("History")
    })
    .await;

    // The timeline pages back through the room's history.
    room_list_service.subscribe_to_rooms(&[&history]).await;
    let history_timeline = alice.get_room(&history).unwrap().timeline().await.unwrap();
    let expected: Vec<String> = (0..25).map(|n| format!("history {n}")).chain(["history is back".to_owned()]).collect();
    let deadline = Instant::now() + WAIT;
    loop {
        let bodies = message_bodies(&history_timeline).await;
        if bodies == expected {
            break;
        }
        assert!(Instant::now() < deadline, "the timeline never held the whole history: {bodies:?}");
        if bodies.first().map(String::as_str) == Some("history 0") {
            // The start is reached; the live end may still be on its way.
            tokio::time::sleep(Duration::from_millis(100)).await;
        } else {
            history_timeline.paginate_backwards(10).await.unwrap();
        }
    }

    // The server forgets the room list's connection (as it does with an
    // idle one): the client's next request gets M_UNKNOWN_POS, it starts
    // the connection again, and the list goes on.
    let token = alice.access_token().unwrap();
    let restart = json!({ "conn_id": "room-list", "lists": {} });
    let url = format!("{base}/_matrix/client/unstable/org.matrix.simplified_msc3575/sync");
    let (status, body) = call(Method::POST, &url, Some(&token), Some(restart)).await;
    assert_eq!(status, 200, "{body}");
    say(&bob, &older, "after the reset").await;
    // Element X restarts its sync service when it stops on an error.
    let mut state = sync.state();
    let stopped = tokio::time::timeout(WAIT, async {
        loop {
            if let matrix_sdk_ui::sync_service::State::Error(error) = state.get() {
                break error;
            }
            state.next().await;
        }
    })
    .await
    .expect("the sync service stops on the unknown position");
    assert!(format!("{stopped:?}").contains("UnknownPos"), "{stopped:?}");
    sync.start().await;
    list_until(&mut stream, &mut items, "the list after a lost connection", |items| {
        names(items).first().map(String::as_str) == Some("Older")
    })
    .await;

    // An invite shows in the list and is accepted from it.
    let invited = create(&bob, "Invitation", RoomPreset::PrivateChat, &[&alice]).await;
    list_until(&mut stream, &mut items, "the invite", |items| {
        items.iter().any(|r| r.room_id() == invited && r.state() == RoomState::Invited)
    })
    .await;
    let invite = items.iter().find(|r| r.room_id() == invited).unwrap().clone().into_inner();
    invite.join().await.unwrap();
    list_until(&mut stream, &mut items, "the joined invite", |items| {
        items.iter().any(|r| r.room_id() == invited && r.state() == RoomState::Joined)
    })
    .await;
    say(&bob, &invited, "welcome").await;
    let invited_timeline = alice.get_room(&invited).unwrap().timeline().await.unwrap();
    until("the welcome in the accepted room", async || message_bodies(&invited_timeline).await.contains(&"welcome".to_owned()))
        .await;
    sync.stop().await;
}
on_both_backends!(room_list_timeline_and_invites);
