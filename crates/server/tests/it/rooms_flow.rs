//! Officials chat through matrix-sdk, on SQLite and PostgreSQL: two of
//! them create, invite, join, send, sync, paginate, rename, redact, leave;
//! three of them go through each `createRoom` preset, leave and come back.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chancery_testkit::{Backend, TestServer};
use matrix_sdk::config::SyncSettings;
use matrix_sdk::room::MessagesOptions;
use matrix_sdk::ruma::api::client::room::create_room;
use matrix_sdk::ruma::api::client::room::create_room::v3::RoomPreset;
use matrix_sdk::ruma::events::StateEventType;
use matrix_sdk::ruma::events::room::history_visibility::HistoryVisibility;
use matrix_sdk::ruma::events::room::join_rules::JoinRule;
use matrix_sdk::ruma::events::room::message::{OriginalSyncRoomMessageEvent, RoomMessageEventContent};
use matrix_sdk::ruma::events::room::power_levels::UserPowerLevel;
use matrix_sdk::ruma::{Int, OwnedRoomId, RoomId, UserId};
use matrix_sdk::{Client, Room, RoomState};

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

/// Syncs until `done` holds, bounded in rounds (20) and time (60 s; one
/// sync long-polls at most 5 s and is given 15).
async fn sync_until(client: &Client, what: &str, mut done: impl FnMut(&Client) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    for _ in 0..20 {
        tokio::time::timeout(Duration::from_secs(15), client.sync_once(settings()))
            .await
            .unwrap_or_else(|_| panic!("a sync of {} hung", client.user_id().unwrap()))
            .unwrap();
        if done(client) {
            return;
        }
        if Instant::now() > deadline {
            break;
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

on_both_backends!(chat);

/// The messages a client received through sync: (room, sender, body).
#[derive(Clone, Default)]
struct Inbox(Arc<Mutex<Vec<(OwnedRoomId, String, String)>>>);

impl Inbox {
    fn of(client: &Client) -> Inbox {
        let inbox = Inbox::default();
        let sink = inbox.clone();
        client.add_event_handler(move |event: OriginalSyncRoomMessageEvent, room: Room| {
            let sink = sink.clone();
            async move {
                let entry = (room.room_id().to_owned(), event.sender.to_string(), event.content.body().to_owned());
                sink.0.lock().unwrap().push(entry);
            }
        });
        inbox
    }

    /// Whether every one of `expected` (sender, body) arrived in `room`.
    fn has_all(&self, room: &RoomId, expected: &[(&UserId, &str)]) -> bool {
        let got = self.0.lock().unwrap();
        expected.iter().all(|(sender, body)| got.iter().any(|(r, s, b)| r == room && s == sender.as_str() && b == body))
    }
}

fn level(n: i64) -> UserPowerLevel {
    UserPowerLevel::Int(Int::new(n).unwrap())
}

/// Three officials through one `createRoom` preset: alice creates the room
/// (inviting bob and carol unless it is public, which they join freely),
/// all three chat and see each other's messages through sync, carol leaves
/// and comes back (in private rooms only with a new invite), and every
/// client's view of the room shows the join rule, history visibility and
/// power levels the preset gives (trusted_private_chat: the invitees get
/// the creator's level, before and after carol's return).
async fn three_officials(backend: Backend, preset: RoomPreset) {
    // Presets, power and shared history as such: unencrypted rooms, so
    // that what was said while Carol was away is readable to her (in an
    // encrypted room she was never sent its key: `e2ee.rs`).
    let server = TestServer::start_with(backend, |config| {
        config.encryption_by_default = chancery_server::config::EncryptionByDefault::Off;
    })
    .await
    .unwrap();
    let base = server.base_url.clone();
    let alice = logged_in(&base, "alice").await;
    let bob = logged_in(&base, "bob").await;
    let carol = logged_in(&base, "carol").await;
    let clients = [&alice, &bob, &carol];
    let inboxes: Vec<Inbox> = clients.iter().map(|c| Inbox::of(c)).collect();
    for client in clients {
        client.sync_once(settings()).await.unwrap();
    }
    let (alice_id, bob_id, carol_id) =
        (alice.user_id().unwrap().to_owned(), bob.user_id().unwrap().to_owned(), carol.user_id().unwrap().to_owned());
    let public = preset == RoomPreset::PublicChat;
    let trusted = preset == RoomPreset::TrustedPrivateChat;

    let mut request = create_room::v3::Request::new();
    request.preset = Some(preset.clone());
    request.name = Some(format!("Cell ({})", preset.as_str()));
    if !public {
        request.invite = vec![bob_id.clone(), carol_id.clone()];
    }
    let room_id: OwnedRoomId = alice.create_room(request).await.unwrap().room_id().to_owned();
    for guest in [&bob, &carol] {
        if !public {
            sync_until(guest, "the invite", |c| c.get_room(&room_id).is_some_and(|r| r.state() == RoomState::Invited)).await;
        }
        guest.join_room_by_id(&room_id).await.unwrap();
    }
    let all_joined = |count: u64| {
        let room_id = room_id.clone();
        move |c: &Client| {
            c.get_room(&room_id).is_some_and(|r| r.state() == RoomState::Joined && r.joined_members_count() == count)
        }
    };
    for client in clients {
        sync_until(client, "three joined members", all_joined(3)).await;
    }

    // Everyone speaks; everyone sees everyone's message through sync.
    let said = [(&*alice_id, "alice: agenda at 9"), (&*bob_id, "bob: noted"), (&*carol_id, "carol: noted too")];
    for (client, (_, text)) in clients.iter().zip(said) {
        client.get_room(&room_id).unwrap().send(RoomMessageEventContent::text_plain(text)).await.unwrap();
    }
    for (client, inbox) in clients.iter().zip(&inboxes) {
        sync_until(client, "everyone's messages", |_| inbox.has_all(&room_id, &said)).await;
    }

    // What the preset gives, as each client's room API reads it.
    let member_level = if trusted { 100 } else { 0 };
    for client in clients {
        let room = client.get_room(&room_id).unwrap();
        assert_eq!(room.join_rule(), Some(if public { JoinRule::Public } else { JoinRule::Invite }), "{preset:?}");
        assert_eq!(room.history_visibility(), Some(HistoryVisibility::Shared), "{preset:?}");
        let levels = room.power_levels().await.unwrap();
        assert_eq!(levels.for_user(&alice_id), level(100), "{preset:?}");
        assert_eq!(room.get_user_power_level(&bob_id).await.unwrap(), level(member_level), "{preset:?}");
        assert_eq!(room.get_user_power_level(&carol_id).await.unwrap(), level(member_level), "{preset:?}");
        assert_eq!(levels.invite, Int::new(if public { 50 } else { 0 }).unwrap(), "{preset:?}");
        assert_eq!(levels.user_can_invite(&bob_id), !public, "{preset:?}");
        // The invitees of a trusted room rename it and moderate like its
        // creator, though never each other (equal levels).
        assert_eq!(levels.user_can_send_state(&bob_id, StateEventType::RoomName), trusted, "{preset:?}");
        assert_eq!(levels.user_can_redact_event_of_other(&carol_id), trusted, "{preset:?}");
        assert!(levels.user_can_kick_user(&alice_id, &bob_id) != trusted, "{preset:?}");
        assert!(!levels.user_can_kick_user(&bob_id, &carol_id), "{preset:?}");
    }

    // Carol leaves; the others see it; bob speaks while she is away.
    carol.get_room(&room_id).unwrap().leave().await.unwrap();
    for client in [&alice, &bob] {
        sync_until(client, "carol leaving", all_joined(2)).await;
    }
    let while_away = "bob: carol missed this";
    bob.get_room(&room_id).unwrap().send(RoomMessageEventContent::text_plain(while_away)).await.unwrap();

    // Back in: freely in a public room; in private ones only once invited
    // again (in the trusted room by bob, who has the creator's level).
    if !public {
        let refused = carol.join_room_by_id(&room_id).await.expect_err("a private room needs a new invite");
        let errcode = refused.client_api_error_kind().map(|kind| kind.errcode().to_string());
        assert_eq!(errcode.as_deref(), Some("M_FORBIDDEN"), "{preset:?}: {refused:?}");
        let inviter = if trusted { &bob } else { &alice };
        inviter.get_room(&room_id).unwrap().invite_user_by_id(&carol_id).await.unwrap();
        sync_until(&carol, "the new invite", |c| c.get_room(&room_id).is_some_and(|r| r.state() == RoomState::Invited)).await;
    }
    carol.join_room_by_id(&room_id).await.unwrap();
    for client in clients {
        sync_until(client, "carol back", all_joined(3)).await;
    }
    let back = [(&*carol_id, "carol: back")];
    carol.get_room(&room_id).unwrap().send(RoomMessageEventContent::text_plain(back[0].1)).await.unwrap();
    for (client, inbox) in clients.iter().zip(&inboxes) {
        sync_until(client, "carol's return message", |_| inbox.has_all(&room_id, &back)).await;
    }
    // Shared history: what was said while she was away is hers to read.
    assert!(texts(&carol, &room_id, 20).await.iter().any(|t| t == while_away), "{preset:?}");
    let carol_room = carol.get_room(&room_id).unwrap();
    assert_eq!(carol_room.get_user_power_level(&carol_id).await.unwrap(), level(member_level), "{preset:?}: after rejoining");
    server.stop().await.unwrap();
}

on_both_backends!(three_officials_private_chat: three_officials(RoomPreset::PrivateChat));
on_both_backends!(three_officials_public_chat: three_officials(RoomPreset::PublicChat));
on_both_backends!(three_officials_trusted_private_chat: three_officials(RoomPreset::TrustedPrivateChat));
