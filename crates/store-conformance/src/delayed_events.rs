//! Conformance cases of delayed events (MSC4140): scheduling with its
//! per-user bound and retried transactions, restart, cancel, claims that
//! hand each event to one caller, and the replaced-state cancellation.

use std::collections::BTreeSet;

use chancery_store::*;
use serde_json::json;

fn delayed(id: &str, user: &str, send_ts: u64) -> DelayedEvent {
    DelayedEvent {
        delay_id: id.into(),
        user_id: user.into(),
        device_id: "DEV".into(),
        room_id: "!r:x".into(),
        event_type: "org.matrix.msc3401.call.member".into(),
        state_key: Some(format!("_{user}_DEV")),
        content: json!({"leave": id}),
        delay_ms: 1_000,
        send_ts,
        txn_id: None,
    }
}

pub async fn delayed_events_are_scheduled_bounded_and_listed(store: DynStore) {
    assert_eq!(store.schedule_delayed_event(&delayed("d2", "@a:x", 2_000), 3).await.unwrap(), "d2");
    assert_eq!(store.schedule_delayed_event(&delayed("d1", "@a:x", 1_500), 3).await.unwrap(), "d1");
    // A message event with a transaction id: a retry finds the first.
    let mut message = delayed("d3", "@a:x", 5_000);
    message.state_key = None;
    message.txn_id = Some("t1".into());
    assert_eq!(store.schedule_delayed_event(&message, 3).await.unwrap(), "d3");
    let mut retried = message.clone();
    retried.delay_id = "d3-again".into();
    assert_eq!(store.schedule_delayed_event(&retried, 3).await.unwrap(), "d3");
    // The fourth is refused, naming the earliest send time.
    let refused = store.schedule_delayed_event(&delayed("d4", "@a:x", 9_000), 3).await;
    assert!(matches!(refused, Err(StoreError::TooManyDelayedEvents { next_send_ts: 1_500 })), "{refused:?}");
    // Other users have their own bound.
    store.schedule_delayed_event(&delayed("b1", "@b:x", 700), 3).await.unwrap();

    let listed = store.delayed_events_of_user("@a:x", 10).await.unwrap();
    assert_eq!(listed.iter().map(|e| e.delay_id.as_str()).collect::<Vec<_>>(), ["d1", "d2", "d3"]);
    assert_eq!(listed[0], delayed("d1", "@a:x", 1_500));
    assert_eq!(listed[2], message);
    assert_eq!(store.delayed_events_of_user("@a:x", 1).await.unwrap().len(), 1);
    assert!(store.delayed_events_of_user("@nobody:x", 10).await.unwrap().is_empty());
    assert_eq!(store.next_delayed_event_ts().await.unwrap(), Some(700));
}

pub async fn delayed_events_restart_cancel_and_claim_once(store: DynStore) {
    assert_eq!(store.next_delayed_event_ts().await.unwrap(), None);
    for (id, ts) in [("a", 1_000), ("b", 2_000), ("c", 3_000)] {
        store.schedule_delayed_event(&delayed(id, "@u:x", ts), 10).await.unwrap();
    }
    // Restart: now plus the delay.
    assert_eq!(store.restart_delayed_event("a", 5_000).await.unwrap(), Some(6_000));
    assert_eq!(store.restart_delayed_event("nope", 5_000).await.unwrap(), None);
    // Cancel.
    assert!(store.cancel_delayed_event("b").await.unwrap());
    assert!(!store.cancel_delayed_event("b").await.unwrap());
    assert_eq!(store.next_delayed_event_ts().await.unwrap(), Some(3_000));

    // At 3,500 only c is due; claimed until 60,000, it is neither listed,
    // restarted nor cancelled, and not claimed again while leased.
    let claimed = store.claim_due_delayed_events(3_500, 60_000, 10).await.unwrap();
    assert_eq!(claimed.iter().map(|e| e.delay_id.as_str()).collect::<Vec<_>>(), ["c"]);
    assert_eq!(claimed[0].content, json!({"leave": "c"}));
    assert!(store.claim_due_delayed_events(3_600, 60_000, 10).await.unwrap().is_empty());
    assert_eq!(store.restart_delayed_event("c", 3_600).await.unwrap(), None);
    assert!(!store.cancel_delayed_event("c").await.unwrap());
    assert!(store.claim_delayed_event("c", 70_000).await.unwrap().is_none());
    let listed = store.delayed_events_of_user("@u:x", 10).await.unwrap();
    assert_eq!(listed.iter().map(|e| e.delay_id.as_str()).collect::<Vec<_>>(), ["a"]);
    // A claim whose lease ran out is claimed again (its node died).
    let again = store.claim_due_delayed_events(60_000, 120_000, 10).await.unwrap();
    assert_eq!(again.iter().map(|e| e.delay_id.as_str()).collect::<Vec<_>>(), ["a", "c"]);
    store.finish_delayed_event("c").await.unwrap();
    // Released, a is scheduled again as given.
    store.release_delayed_event("a", 7_000).await.unwrap();
    assert_eq!(store.delayed_events_of_user("@u:x", 10).await.unwrap()[0].send_ts, 7_000);
    // A client's `send` claims it whatever its time, as scheduled.
    let sent = store.claim_delayed_event("a", 8_000).await.unwrap().expect("scheduled");
    assert_eq!(sent.send_ts, 7_000);
    store.finish_delayed_event("a").await.unwrap();
    assert_eq!(store.next_delayed_event_ts().await.unwrap(), None);
}

pub async fn concurrent_claims_hand_each_delayed_event_to_one_caller(store: DynStore) {
    for n in 0..40u64 {
        store.schedule_delayed_event(&delayed(&format!("e{n:02}"), &format!("@u{}:x", n % 4), 100 + n), 100).await.unwrap();
    }
    let mut claims = Vec::new();
    for _ in 0..4 {
        let store = store.clone();
        claims.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..20 {
                let batch = store.claim_due_delayed_events(1_000, 100_000, 3).await.unwrap();
                if batch.is_empty() {
                    break;
                }
                got.extend(batch.into_iter().map(|e| e.delay_id));
            }
            got
        }));
    }
    let mut all = Vec::new();
    for claim in claims {
        all.extend(claim.await.unwrap());
    }
    let unique: BTreeSet<_> = all.iter().cloned().collect();
    assert_eq!(all.len(), 40, "every event claimed once: {all:?}");
    assert_eq!(unique.len(), 40);
}

pub async fn replaced_state_cancels_other_users_delayed_state_events(store: DynStore) {
    let r = "!r:x";
    let at = |id: &str, user: &str, event_type: &str, key: &str| {
        let mut e = delayed(id, user, 1_000);
        e.event_type = event_type.into();
        e.state_key = Some(key.into());
        e
    };
    let call = "org.matrix.msc3401.call.member";
    let scheduled = [
        at("name", "@b:x", "m.room.name", ""),
        at("mine", "@alice:x", call, "k"),
        at("theirs", "@b:x", call, "k"),
        at("sending", "@b:x", call, "k"),
        at("other-key", "@b:x", call, "j"),
        at("member", "@b:x", "m.room.member", "@c:x"),
        at("other-room", "@b:x", "m.room.topic", ""),
    ];
    for e in &scheduled {
        store.schedule_delayed_event(e, 100).await.unwrap();
    }
    // Claimed (being sent): not cancelled under its sender.
    assert!(store.claim_delayed_event("sending", 60_000).await.unwrap().is_some());
    let mut elsewhere = at("elsewhere", "@b:x", "m.room.topic", "");
    elsewhere.room_id = "!other:x".into();
    store.schedule_delayed_event(&elsewhere, 100).await.unwrap();
    let listed = |store: DynStore, user: &'static str| async move {
        store.delayed_events_of_user(user, 100).await.unwrap().into_iter().map(|e| e.delay_id).collect::<BTreeSet<_>>()
    };

    // The room's creation sets its name (sent by @alice:x): @b's delayed
    // name goes with it.
    store
        .create_room(
            crate::room(r),
            vec![
                crate::event(r, "$create", "m.room.create", Some(""), 1),
                crate::member(r, "$alice", "@alice:x", "join", 2),
                crate::event(r, "$name", "m.room.name", Some(""), 3),
            ],
        )
        .await
        .unwrap();
    let b = listed(store.clone(), "@b:x").await;
    assert!(!b.contains("name") && b.contains("theirs"), "{b:?}");

    // @alice sets the call key "k": @b's scheduled one there goes, @alice's
    // own, @b's claimed one and @b's at another key stay.
    store.append_event(crate::event(r, "$k", call, Some("k"), 4), &["$name".into()]).await.unwrap();
    // A membership (by @c:x themself) cancels delayed state at its key too.
    store.append_event(crate::member(r, "$c", "@c:x", "join", 5), &["$k".into()]).await.unwrap();
    // A message event cancels nothing.
    store.append_event(crate::message(r, "$m", 6), &["$c".into()]).await.unwrap();

    assert_eq!(listed(store.clone(), "@alice:x").await, BTreeSet::from(["mine".to_owned()]));
    assert_eq!(
        listed(store.clone(), "@b:x").await,
        ["other-key", "other-room", "elsewhere"].into_iter().map(str::to_owned).collect::<BTreeSet<_>>()
    );
    // The claimed one is still there to be finished by its sender.
    store.release_delayed_event("sending", 500).await.unwrap();
    assert!(listed(store.clone(), "@b:x").await.contains("sending"));
}
