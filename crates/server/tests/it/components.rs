//! Components built with an injected clock and entropy: what depends on
//! time or chance is decided by them, so it is tested without sleeping.

use std::sync::Arc;

use chancery_server::Config;
use chancery_service::clock::ManualClock;
use chancery_service::rooms::CreateRoom;
use chancery_service::tokens::Entropy;
use chancery_service::{AuthedUser, Components, Error, LoginRequest, NewRegistrationToken};
use chancery_store::DynStore;
use chancery_testkit::{Backend, test_config};

/// Always the same byte.
struct Constant(u8);

impl Entropy for Constant {
    fn fill(&self, bytes: &mut [u8]) {
        bytes.fill(self.0);
    }
}

/// A node's components over a fresh SQLite store, at `T0` on a clock
/// that moves only when the test sets it, drawing `entropy`.
struct Node {
    components: Components,
    store: DynStore,
    clock: Arc<ManualClock>,
    config: Config,
    _dir: tempfile::TempDir,
}

const T0: u64 = 1_800_000_000_000;

async fn node(entropy: u8) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(Backend::Sqlite, dir.path()).await.unwrap();
    let store = chancery_server::open_store(&config).await.unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let components =
        chancery_server::components_with(&config, store.clone(), clock.clone(), Arc::new(Constant(entropy))).unwrap();
    Node { components, store, clock, config, _dir: dir }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_follow_the_injected_clock_and_entropy() {
    let Node { components, store, clock, config, _dir } = node(0).await;
    let t0 = T0;
    let accounts = &components.accounts;

    accounts.create_user("alice", Some("correct horse battery".into()), false).await.unwrap();
    let login = LoginRequest {
        user: "alice".into(),
        password: "correct horse battery".into(),
        device_id: None,
        initial_device_display_name: None,
        refresh_token: true,
        client_address: None,
    };
    let session = accounts.login(login).await.unwrap();
    assert_eq!(session.device_id, "AAAAAAAAAA", "the device id is drawn from the injected entropy");
    let lifetime_ms = session.expires_in_ms.expect("a refreshable token expires");
    assert_eq!(lifetime_ms, config.access_token_lifetime_ms);

    // Valid until its last millisecond, a soft logout from then on.
    clock.set(t0 + lifetime_ms - 1);
    assert_eq!(accounts.authenticate(&session.access_token).await.unwrap().device_id, "AAAAAAAAAA");
    clock.set(t0 + lifetime_ms);
    assert!(matches!(accounts.authenticate(&session.access_token).await, Err(Error::UnknownToken { soft_logout: true })));

    // A registration token's expiry is judged by the same clock.
    let expiring = NewRegistrationToken { token: Some("soon".into()), expiry_ts: Some(t0 + lifetime_ms), ..Default::default() };
    assert!(matches!(accounts.create_registration_token(expiring).await, Err(Error::InvalidParam(_))), "already past");
    let later = NewRegistrationToken { token: Some("later".into()), expiry_ts: Some(t0 + lifetime_ms + 1), ..Default::default() };
    assert_eq!(accounts.create_registration_token(later).await.unwrap().created_ts, t0 + lifetime_ms);
    store.close().await;
}

/// Version 12 derives a room's id from its create event: two identical
/// rooms created in the same millisecond would collide, so the second is
/// stamped a millisecond later instead of waiting for the clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_rooms_in_one_millisecond_get_their_own_ids() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(Backend::Sqlite, dir.path()).await.unwrap();
    let store = chancery_server::open_store(&config).await.unwrap();
    let t0 = 1_800_000_000_000;
    let components =
        chancery_server::components_with(&config, store.clone(), Arc::new(ManualClock::new(t0)), Arc::new(Constant(7))).unwrap();
    let user_id = components.accounts.create_user("alice", None, false).await.unwrap();
    let alice = AuthedUser { user_id, device_id: "DEVICE".into(), is_admin: false };
    let request = CreateRoom { room_version: Some("12".into()), ..Default::default() };
    let first = components.rooms.create_room(&alice, request.clone()).await.unwrap();
    let second = components.rooms.create_room(&alice, request).await.unwrap();
    assert_ne!(first, second);
    let create_ts = |room: chancery_proto::ruma::OwnedRoomId| {
        let store = store.clone();
        async move { store.state_event(room.as_str(), "m.room.create", "", None).await.unwrap().unwrap().origin_server_ts }
    };
    assert_eq!(create_ts(first).await, t0);
    assert_eq!(create_ts(second).await, t0 + 1, "the clock never moved: the retry stamped its events a millisecond on");
    store.close().await;
}

/// Notifications older than the retention (30 days by default) are
/// deleted by the periodic pass; newer ones stay, unread ones included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_older_than_the_retention_are_deleted() {
    let Node { components, store, clock, config, _dir } = node(3).await;
    let day_ms = 24 * 60 * 60 * 1000;
    let retention_ms = u64::from(config.retention.notifications_days) * day_ms;
    let user = |user_id| AuthedUser { user_id, device_id: "DEVICE".into(), is_admin: false };
    let alice = user(components.accounts.create_user("alice", None, false).await.unwrap());
    let bob = user(components.accounts.create_user("bob", None, false).await.unwrap());
    let request = CreateRoom { invite: vec![bob.user_id.clone()], is_direct: true, ..Default::default() };
    let room = components.rooms.create_room(&alice, request).await.unwrap();
    components.rooms.join_room(&bob, &room, &[], None).await.unwrap();
    let say = |txn: &'static str| {
        let (components, alice, room) = (&components, &alice, &room);
        async move {
            let content = serde_json::json!({"msgtype": "m.text", "body": txn});
            components.rooms.send_message(alice, room, "m.room.message", txn, content).await.unwrap()
        }
    };
    let bodies = || async {
        let list = components.push.list_notifications(&bob, None, 50, false).await.unwrap();
        list["notifications"].as_array().unwrap().iter().map(|n| n["event"]["content"]["body"].clone()).collect::<Vec<_>>()
    };
    say("old").await;
    clock.set(T0 + day_ms);
    say("recent").await;
    assert_eq!(bodies().await, ["recent", "old"]);

    // Within the retention of both: nothing goes.
    clock.set(T0 + retention_ms);
    assert_eq!(components.push.prune_notifications().await.unwrap(), 0);
    // Past the old one's.
    clock.set(T0 + retention_ms + 1);
    assert_eq!(components.push.prune_notifications().await.unwrap(), 1);
    assert_eq!(bodies().await, ["recent"]);
    assert_eq!(components.push.prune_notifications().await.unwrap(), 0, "a second pass finds nothing more");
    store.close().await;
}
