//! Conformance cases for pushers and their delivery state
//! (`PusherStore`): setting, listing and deleting pushers, their going
//! with their device, the queue the appends fill, leases, and what a
//! badge is counted from.

use std::sync::Arc;

use chancery_store::*;

use super::{account, append_chain, device, member, message, room_with};

const MAX: usize = 3;

fn new_pusher(user: &str, device: &str, app_id: &str, pushkey: &str) -> NewPusher {
    NewPusher {
        user_id: user.into(),
        device_id: device.into(),
        app_id: app_id.into(),
        pushkey: pushkey.into(),
        kind: "http".into(),
        app_display_name: "App".into(),
        device_display_name: "Phone".into(),
        profile_tag: None,
        lang: "en".into(),
        data_json: r#"{"url":"https://gw.example/_matrix/push/v1/notify","format":"event_id_only"}"#.into(),
        now_ts: 5_000,
    }
}

/// An account with these devices (tokens named after user and device).
async fn user_with(store: &DynStore, user: &str, devices: &[&str]) {
    store.create_account(account(user), None, None, 1_000).await.unwrap();
    for (n, id) in devices.iter().enumerate() {
        let mut d = device(user, id, 0);
        d.tokens.access_token_hash = format!("{user}-{id}-{n}");
        store.upsert_device(d, 10).await.unwrap();
    }
}

fn keys(pushers: &[Pusher]) -> Vec<(&str, &str, &str)> {
    pushers.iter().map(|p| (p.app_id.as_str(), p.pushkey.as_str(), p.device_id.as_str())).collect()
}

pub async fn pushers_are_set_updated_listed_and_deleted(store: DynStore) {
    user_with(&store, "@alice:x", &["PHONE", "TABLET"]).await;
    user_with(&store, "@bob:x", &["PHONE"]).await;
    store.set_pusher(new_pusher("@alice:x", "PHONE", "app.b", "k1"), false, MAX).await.unwrap();
    store.set_pusher(new_pusher("@alice:x", "PHONE", "app.a", "k2"), false, MAX).await.unwrap();
    let listed = store.pushers("@alice:x").await.unwrap();
    assert_eq!(keys(&listed), [("app.a", "k2", "PHONE"), ("app.b", "k1", "PHONE")], "by app id, then pushkey");
    let first = listed[1].clone();
    assert_eq!(first.data_json, new_pusher("@alice:x", "PHONE", "app.b", "k1").data_json, "kept byte for byte");
    assert_eq!((first.pushkey_ts, first.lang.as_str(), first.profile_tag.as_deref()), (5_000, "en", None));

    // Set again from another device, with other fields: the same pusher,
    // moved to that device.
    let mut again = new_pusher("@alice:x", "TABLET", "app.b", "k1");
    again.lang = "fr".into();
    again.profile_tag = Some("tag".into());
    again.data_json = r#"{"url":"https://other.example/_matrix/push/v1/notify"}"#.into();
    again.now_ts = 6_000;
    store.set_pusher(again, false, MAX).await.unwrap();
    let updated = store.pushers("@alice:x").await.unwrap().remove(1);
    assert_eq!(updated.id, first.id);
    assert_eq!(
        (updated.device_id.as_str(), updated.lang.as_str(), updated.profile_tag.as_deref(), updated.pushkey_ts),
        ("TABLET", "fr", Some("tag"), 6_000)
    );
    assert!(updated.data_json.contains("other.example"));

    // The per-user bound counts new pushers only.
    store.set_pusher(new_pusher("@alice:x", "PHONE", "app.c", "k3"), false, MAX).await.unwrap();
    let over = store.set_pusher(new_pusher("@alice:x", "PHONE", "app.d", "k4"), false, MAX).await;
    assert!(matches!(over, Err(StoreError::TooManyPushers)), "{over:?}");
    store.set_pusher(new_pusher("@alice:x", "PHONE", "app.c", "k3"), false, MAX).await.unwrap();

    // Bob takes over alice's pushkey with append: both keep it; without
    // append, it is his alone.
    store.set_pusher(new_pusher("@bob:x", "PHONE", "app.a", "k2"), true, MAX).await.unwrap();
    assert_eq!(store.pushers("@alice:x").await.unwrap().len(), 3);
    store.set_pusher(new_pusher("@bob:x", "PHONE", "app.b", "k1"), false, MAX).await.unwrap();
    assert_eq!(keys(&store.pushers("@alice:x").await.unwrap()), [("app.a", "k2", "PHONE"), ("app.c", "k3", "PHONE")]);
    assert_eq!(keys(&store.pushers("@bob:x").await.unwrap()), [("app.a", "k2", "PHONE"), ("app.b", "k1", "PHONE")]);

    // A device that does not exist cannot own a pusher.
    let ghost = store.set_pusher(new_pusher("@alice:x", "GONE", "app.e", "k5"), false, MAX).await;
    assert!(matches!(ghost, Err(StoreError::UnknownDevice)), "{ghost:?}");

    assert!(store.delete_pusher("@alice:x", "app.a", "k2").await.unwrap());
    assert!(!store.delete_pusher("@alice:x", "app.a", "k2").await.unwrap(), "already gone");
    assert_eq!(store.pushers("@bob:x").await.unwrap().len(), 2, "bob's of the same key stays");

    // A rejected pusher goes unless it was set again since.
    let bobs = store.pushers("@bob:x").await.unwrap();
    assert!(!store.delete_rejected_pusher(bobs[0].id, bobs[0].pushkey_ts + 1).await.unwrap());
    assert!(store.delete_rejected_pusher(bobs[0].id, bobs[0].pushkey_ts).await.unwrap());
    assert_eq!(keys(&store.pushers("@bob:x").await.unwrap()), [("app.b", "k1", "PHONE")]);
}

pub async fn pushers_go_with_their_device(store: DynStore) {
    user_with(&store, "@alice:x", &["A", "B", "C", "D"]).await;
    user_with(&store, "@bob:x", &["A"]).await;
    for (device, key) in [("A", "ka"), ("B", "kb"), ("C", "kc"), ("D", "kd")] {
        store.set_pusher(new_pusher("@alice:x", device, "app", key), true, 10).await.unwrap();
    }
    store.set_pusher(new_pusher("@bob:x", "A", "app", "bob"), true, 10).await.unwrap();
    let devices_of = |pushers: Vec<Pusher>| pushers.into_iter().map(|p| p.device_id).collect::<Vec<_>>();

    store.delete_devices("@alice:x", &["A".into()]).await.unwrap();
    assert_eq!(devices_of(store.pushers("@alice:x").await.unwrap()), ["B", "C", "D"]);
    assert_eq!(store.pushers("@bob:x").await.unwrap().len(), 1, "another user's device A is not touched");

    store.change_password("@alice:x", "$argon2id$new", true, Some("B")).await.unwrap();
    assert_eq!(devices_of(store.pushers("@alice:x").await.unwrap()), ["B"]);

    store.upsert_device(device("@alice:x", "E", 9), 10).await.unwrap();
    store.set_pusher(new_pusher("@alice:x", "E", "app", "ke"), true, 10).await.unwrap();
    store.delete_all_devices("@alice:x", Some("E")).await.unwrap();
    assert_eq!(devices_of(store.pushers("@alice:x").await.unwrap()), ["E"]);

    store.deactivate_account("@alice:x", 9_000).await.unwrap();
    assert!(store.pushers("@alice:x").await.unwrap().is_empty());
    assert_eq!(store.pushers("@bob:x").await.unwrap().len(), 1);
}

/// Room `!r:x` with alice (the sender) and bob joined; returns the last
/// event id, for appending.
async fn room_of_alice_and_bob(store: &DynStore) -> String {
    room_with(
        store,
        "!r:x",
        &[("$create", "m.room.create", serde_json::json!({}))],
        &[("$alice", "@alice:x", "join"), ("$bob", "@bob:x", "join")],
    )
    .await;
    "$bob".into()
}

/// A message in `room` that notifies `users`.
fn notifying(room: &str, id: &str, depth: u64, users: &[&str]) -> NewEvent {
    let mut e = message(room, id, depth);
    e.notifications = users
        .iter()
        .map(|u| NewNotification { user_id: (*u).into(), actions_json: r#"["notify"]"#.into(), highlight: false })
        .collect();
    e
}

pub async fn appends_queue_notifications_for_pushers(store: DynStore) {
    user_with(&store, "@bob:x", &["PHONE"]).await;
    let mut prev = room_of_alice_and_bob(&store).await;
    // Before the pusher exists: not queued for it.
    append_chain(&store, &mut prev, vec![notifying("!r:x", "$early", 4, &["@bob:x"])]).await;
    store.set_pusher(new_pusher("@bob:x", "PHONE", "app", "key"), false, MAX).await.unwrap();
    assert_eq!(store.pushers_due(u64::MAX / 2, 10).await.unwrap(), DuePushers::default(), "nothing queued yet");
    let id = store.pushers("@bob:x").await.unwrap()[0].id;

    let positions = append_chain(
        &store,
        &mut prev,
        vec![
            notifying("!r:x", "$m1", 5, &["@bob:x"]),
            notifying("!r:x", "$other", 6, &["@carol:x"]),
            notifying("!r:x", "$m2", 7, &["@bob:x"]),
        ],
    )
    .await;
    let due = store.pushers_due(10_000, 10).await.unwrap();
    assert_eq!(due, DuePushers { due: vec![id], next_due_ts: None });

    let claimed = store.claim_pusher(id, "node-a", 10_000, 70_000).await.unwrap().expect("free");
    assert_eq!(claimed.queued_pos, positions[2], "the newest notification of bob's");
    assert_eq!(claimed.progress.failures, 0);
    assert!(claimed.progress.delivered_pos < positions[0], "starts before the first one after it was set");
    let queued = store.queued_notifications("@bob:x", claimed.progress.delivered_pos, claimed.queued_pos, 10).await.unwrap();
    let ids: Vec<&str> = queued.iter().map(|q| q.notification.event.event_id.as_str()).collect();
    assert_eq!(ids, ["$m1", "$m2"], "only bob's, not $early (before the pusher), not carol's");
    assert!(queued.iter().all(|q| !q.read));
    assert_eq!(queued[0].notification.actions_json, r#"["notify"]"#);

    // Delivered up to $m1: $m2 is what is left, and the pusher is still due.
    let progress = DeliveryProgress { delivered_pos: positions[0], failures: 0, retry_at_ts: 0 };
    assert_eq!(store.record_delivery(id, "node-a", progress, 0).await.unwrap(), Some(positions[2]));
    let left = store.queued_notifications("@bob:x", positions[0], positions[2], 10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(store.pushers_due(10_000, 10).await.unwrap().due, [id]);

    // Bob reads the room (a receipt on $m2): it is read now.
    let receipt = NewReceipt {
        room_id: "!r:x".into(),
        user_id: "@bob:x".into(),
        receipt_type: "m.read".into(),
        thread_id: None,
        event_id: "$m2".into(),
        ts: 1,
    };
    store.set_receipt(receipt, 10).await.unwrap();
    let left = store.queued_notifications("@bob:x", positions[0], positions[2], 10).await.unwrap();
    assert!(left[0].read);

    // Done up to the end: not due any more.
    let done = DeliveryProgress { delivered_pos: positions[2], ..progress };
    store.claim_pusher(id, "node-a", 10_000, 70_000).await.unwrap().expect("released before");
    assert_eq!(store.record_delivery(id, "node-a", done, 0).await.unwrap(), Some(positions[2]));
    assert!(store.pushers_due(10_000, 10).await.unwrap().due.is_empty());
}

pub async fn queued_notifications_merge_rooms_in_position_order(store: DynStore) {
    user_with(&store, "@bob:x", &["PHONE"]).await;
    let mut in_r = room_of_alice_and_bob(&store).await;
    room_with(&store, "!s:x", &[("$screate", "m.room.create", serde_json::json!({}))], &[("$sbob", "@bob:x", "join")]).await;
    let mut in_s = "$sbob".to_owned();
    store.set_pusher(new_pusher("@bob:x", "PHONE", "app", "key"), false, MAX).await.unwrap();
    let mut positions = Vec::new();
    for n in 0..4u64 {
        let (room, prev) = if n % 2 == 0 { ("!r:x", &mut in_r) } else { ("!s:x", &mut in_s) };
        positions.extend(append_chain(&store, prev, vec![notifying(room, &format!("$n{n}"), 10 + n, &["@bob:x"])]).await);
    }
    let ids = |queued: Vec<QueuedNotification>| queued.into_iter().map(|q| q.notification.event.event_id).collect::<Vec<_>>();
    let all = store.queued_notifications("@bob:x", 0, positions[3], 10).await.unwrap();
    assert_eq!(ids(all), ["$n0", "$n1", "$n2", "$n3"], "merged across rooms, oldest first");
    assert_eq!(ids(store.queued_notifications("@bob:x", 0, positions[3], 3).await.unwrap()), ["$n0", "$n1", "$n2"], "limit");
    assert_eq!(
        ids(store.queued_notifications("@bob:x", positions[0], positions[2], 10).await.unwrap()),
        ["$n1", "$n2"],
        "after is excluded, up_to included"
    );
    assert!(store.queued_notifications("@nobody:x", 0, positions[3], 10).await.unwrap().is_empty());
}

pub async fn a_pusher_is_leased_to_one_node_at_a_time(store: DynStore) {
    user_with(&store, "@bob:x", &["PHONE"]).await;
    let mut prev = room_of_alice_and_bob(&store).await;
    store.set_pusher(new_pusher("@bob:x", "PHONE", "app", "key"), false, MAX).await.unwrap();
    let id = store.pushers("@bob:x").await.unwrap()[0].id;
    let pos = append_chain(&store, &mut prev, vec![notifying("!r:x", "$m", 5, &["@bob:x"])]).await[0];

    let a = store.claim_pusher(id, "a", 1_000, 61_000).await.unwrap().expect("free");
    assert!(store.claim_pusher(id, "b", 1_000, 61_000).await.unwrap().is_none(), "held by a");
    assert!(store.claim_pusher(id, "a", 2_000, 62_000).await.unwrap().is_some(), "a renews its own");
    let due = store.pushers_due(2_000, 10).await.unwrap();
    assert_eq!(due, DuePushers { due: vec![], next_due_ts: Some(62_000) }, "not due while leased; due when the lease ends");

    // a goes silent; once its lease ended, b takes over, and a's late
    // write is refused.
    assert!(store.claim_pusher(id, "b", 61_999, 100_000).await.unwrap().is_none());
    let b = store.claim_pusher(id, "b", 62_000, 122_000).await.unwrap().expect("expired");
    assert_eq!(b.progress, a.progress);
    let late = DeliveryProgress { delivered_pos: pos, failures: 0, retry_at_ts: 0 };
    assert_eq!(store.record_delivery(id, "a", late, 0).await.unwrap(), None, "a lost it");
    assert_eq!(store.claim_pusher(id, "b", 62_000, 122_000).await.unwrap().unwrap().progress, a.progress, "nothing written");

    // b backs off: not due before its retry time, whatever the lease.
    let backoff = DeliveryProgress { delivered_pos: a.progress.delivered_pos, failures: 2, retry_at_ts: 70_000 };
    assert_eq!(store.record_delivery(id, "b", backoff, 0).await.unwrap(), Some(pos));
    assert_eq!(store.pushers_due(69_999, 10).await.unwrap(), DuePushers { due: vec![], next_due_ts: Some(70_000) });
    assert_eq!(store.pushers_due(70_000, 10).await.unwrap().due, [id]);
    let c = store.claim_pusher(id, "c", 70_000, 130_000).await.unwrap().expect("released");
    assert_eq!(c.progress, backoff, "the failures and retry time are kept");

    // Setting the pusher again clears the backoff (the gateway may have
    // changed) but keeps what is queued.
    store.record_delivery(id, "c", backoff, 0).await.unwrap();
    store.set_pusher(new_pusher("@bob:x", "PHONE", "app", "key"), false, MAX).await.unwrap();
    let fresh = store.claim_pusher(id, "c", 1, 60_001).await.unwrap().expect("released");
    assert_eq!((fresh.progress.failures, fresh.progress.retry_at_ts), (0, 0));
    assert_eq!((fresh.progress.delivered_pos, fresh.queued_pos), (a.progress.delivered_pos, pos));

    // A deleted pusher cannot be claimed or written.
    store.delete_pusher("@bob:x", "app", "key").await.unwrap();
    assert!(store.claim_pusher(id, "c", 1, 60_001).await.unwrap().is_none());
    assert_eq!(store.record_delivery(id, "c", late, 0).await.unwrap(), None);
}

pub async fn concurrent_claims_give_a_pusher_to_one_node(store: DynStore) {
    user_with(&store, "@bob:x", &["PHONE"]).await;
    store.set_pusher(new_pusher("@bob:x", "PHONE", "app", "key"), false, MAX).await.unwrap();
    let id = store.pushers("@bob:x").await.unwrap()[0].id;
    let claims: Vec<_> = (0..8)
        .map(|n| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.claim_pusher(id, &format!("node-{n}"), 1_000, 61_000).await.unwrap() })
        })
        .collect();
    let mut won = 0;
    for claim in claims {
        won += usize::from(claim.await.unwrap().is_some());
    }
    assert_eq!(won, 1);
}

pub async fn badge_counts_follow_reads_and_invites(store: DynStore) {
    user_with(&store, "@bob:x", &["PHONE"]).await;
    let mut in_r = room_of_alice_and_bob(&store).await;
    room_with(&store, "!s:x", &[("$screate", "m.room.create", serde_json::json!({}))], &[("$sbob", "@bob:x", "join")]).await;
    let mut in_s = "$sbob".to_owned();
    room_with(&store, "!t:x", &[("$tcreate", "m.room.create", serde_json::json!({}))], &[("$tbob", "@bob:x", "invite")]).await;
    assert_eq!(store.badge_counts("@bob:x").await.unwrap(), BadgeCounts { invites: 1, unread_per_room: vec![] });

    append_chain(&store, &mut in_r, vec![notifying("!r:x", "$r1", 4, &["@bob:x"]), notifying("!r:x", "$r2", 5, &["@bob:x"])])
        .await;
    append_chain(&store, &mut in_s, vec![notifying("!s:x", "$s1", 3, &["@bob:x"])]).await;
    let mut counts = store.badge_counts("@bob:x").await.unwrap();
    counts.unread_per_room.sort_unstable();
    assert_eq!(counts, BadgeCounts { invites: 1, unread_per_room: vec![1, 2] });

    // Reading !r:x up to $r1 leaves one there; bob's own message in !s:x
    // reads it.
    let receipt = NewReceipt {
        room_id: "!r:x".into(),
        user_id: "@bob:x".into(),
        receipt_type: "m.read.private".into(),
        thread_id: None,
        event_id: "$r1".into(),
        ts: 1,
    };
    store.set_receipt(receipt, 10).await.unwrap();
    let mut own = message("!s:x", "$bobs", 4);
    own.sender = "@bob:x".into();
    append_chain(&store, &mut in_s, vec![own]).await;
    assert_eq!(store.badge_counts("@bob:x").await.unwrap(), BadgeCounts { invites: 1, unread_per_room: vec![1] });

    // Rooms bob left do not count.
    append_chain(&store, &mut in_r, vec![member("!r:x", "$bobleft", "@bob:x", "leave", 6)]).await;
    assert_eq!(store.badge_counts("@bob:x").await.unwrap(), BadgeCounts { invites: 1, unread_per_room: vec![] });
}
