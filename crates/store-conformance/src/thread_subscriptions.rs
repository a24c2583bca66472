//! Conformance cases of thread subscriptions (MSC4306): the subscribe
//! rules, the stream of changes, the per-user bound, deactivation, and
//! positions becoming visible in order under concurrent writers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chancery_store::*;

use crate::{account, event, member, message, room};

const MANY: usize = 1_000;

pub async fn thread_subscriptions_follow_the_subscribe_rules(store: DynStore) {
    let (r, alice, bob) = ("!r:x", "@alice:x", "@bob:x");
    store.create_account(account(alice), None, None, 1_000).await.unwrap();
    store
        .create_room(
            room(r),
            vec![
                event(r, "$create", "m.room.create", Some(""), 1),
                member(r, "$alice", alice, "join", 2),
                message(r, "$root", 3),
            ],
        )
        .await
        .unwrap();
    let reply = store.append_event(message(r, "$reply1", 4), &["$root".to_owned()]).await.unwrap();
    assert_eq!(store.stream_positions().await.unwrap().thread_subscriptions, 0);
    assert_eq!(store.thread_subscription(alice, r, "$root").await.unwrap(), None);

    // Manual, then the same again: nothing written the second time.
    assert_eq!(store.subscribe_to_thread(alice, r, "$root", None, MANY).await.unwrap(), SubscribeOutcome::Subscribed(1));
    assert_eq!(store.subscribe_to_thread(alice, r, "$root", None, MANY).await.unwrap(), SubscribeOutcome::Unchanged);
    // A manual subscription wins over an automatic one.
    assert_eq!(store.subscribe_to_thread(alice, r, "$root", Some(reply), MANY).await.unwrap(), SubscribeOutcome::Unchanged);
    assert_eq!(store.thread_subscription(alice, r, "$root").await.unwrap(), Some(false));
    assert_eq!(store.thread_subscription(bob, r, "$root").await.unwrap(), None);
    assert_eq!(store.thread_subscription(alice, "!other:x", "$root").await.unwrap(), None);
    assert_eq!(store.thread_subscribers(r, "$root").await.unwrap(), [alice]);
    assert_eq!(store.stream_positions().await.unwrap().thread_subscriptions, 1);

    // Unsubscribing twice writes once.
    assert_eq!(store.unsubscribe_from_thread(alice, r, "$root").await.unwrap(), Some(2));
    assert_eq!(store.unsubscribe_from_thread(alice, r, "$root").await.unwrap(), None);
    assert_eq!(store.unsubscribe_from_thread(bob, r, "$root").await.unwrap(), None);
    assert_eq!(store.thread_subscription(alice, r, "$root").await.unwrap(), None);
    assert!(store.thread_subscribers(r, "$root").await.unwrap().is_empty());

    // An automatic subscription caused by an event the user had seen when
    // they unsubscribed conflicts; one caused by a later event does not.
    assert_eq!(
        store.subscribe_to_thread(alice, r, "$root", Some(reply), MANY).await.unwrap(),
        SubscribeOutcome::ConflictsWithUnsubscription
    );
    let later = store.append_event(message(r, "$reply2", 5), &["$reply1".to_owned()]).await.unwrap();
    assert!(later > reply);
    assert_eq!(store.subscribe_to_thread(alice, r, "$root", Some(later), MANY).await.unwrap(), SubscribeOutcome::Subscribed(3));
    assert_eq!(store.thread_subscription(alice, r, "$root").await.unwrap(), Some(true));
    // Automatic again: unchanged; manual: becomes manual.
    assert_eq!(store.subscribe_to_thread(alice, r, "$root", Some(later), MANY).await.unwrap(), SubscribeOutcome::Unchanged);
    assert_eq!(store.subscribe_to_thread(alice, r, "$root", None, MANY).await.unwrap(), SubscribeOutcome::Subscribed(4));
    assert_eq!(store.thread_subscription(alice, r, "$root").await.unwrap(), Some(false));

    // A manual subscription after an unsubscription is always written.
    assert_eq!(store.unsubscribe_from_thread(alice, r, "$root").await.unwrap(), Some(5));
    assert_eq!(store.subscribe_to_thread(alice, r, "$root", None, MANY).await.unwrap(), SubscribeOutcome::Subscribed(6));
}

pub async fn thread_subscription_changes_page_back_from_the_newest(store: DynStore) {
    let (r, alice, bob) = ("!r:x", "@alice:x", "@bob:x");
    store.create_room(room(r), vec![event(r, "$create", "m.room.create", Some(""), 1)]).await.unwrap();
    for n in 1..=4 {
        store.subscribe_to_thread(alice, r, &format!("$t{n}"), None, MANY).await.unwrap();
    }
    store.subscribe_to_thread(bob, r, "$t1", None, MANY).await.unwrap(); // 5
    store.unsubscribe_from_thread(alice, r, "$t2").await.unwrap(); // 6
    store.subscribe_to_thread(alice, r, "$t3", Some(1), MANY).await.unwrap(); // unchanged (manual)
    let up_to = store.stream_positions().await.unwrap().thread_subscriptions;
    assert_eq!(up_to, 6);
    let threads = |c: &[ThreadSubscriptionChange]| c.iter().map(|c| (c.thread_root_id.clone(), c.stream_pos)).collect::<Vec<_>>();
    let all = store.thread_subscription_changes(alice, 0, up_to, 100).await.unwrap();
    // Each thread once, at its latest change, oldest first.
    assert_eq!(threads(&all), [("$t1".into(), 1), ("$t3".into(), 3), ("$t4".into(), 4), ("$t2".into(), 6)]);
    let t2 = all.last().unwrap();
    assert!(!t2.subscribed && t2.room_id == r);
    assert!(all[0].subscribed && !all[0].automatic);
    // The newest `limit` first; then on below the first returned.
    let page = store.thread_subscription_changes(alice, 0, up_to, 2).await.unwrap();
    assert_eq!(threads(&page), [("$t4".into(), 4), ("$t2".into(), 6)]);
    let page = store.thread_subscription_changes(alice, 0, page[0].stream_pos - 1, 2).await.unwrap();
    assert_eq!(threads(&page), [("$t1".into(), 1), ("$t3".into(), 3)]);
    // `after` is exclusive, `up_to` inclusive.
    assert_eq!(threads(&store.thread_subscription_changes(alice, 3, 4, 10).await.unwrap()), [("$t4".into(), 4)]);
    assert_eq!(threads(&store.thread_subscription_changes(bob, 0, up_to, 10).await.unwrap()), [("$t1".into(), 5)]);
}

pub async fn thread_subscriptions_are_bounded_per_user_and_go_with_the_account(store: DynStore) {
    let (r, alice, bob) = ("!r:x", "@alice:x", "@bob:x");
    store.create_account(account(alice), None, None, 1_000).await.unwrap();
    store.create_room(room(r), vec![event(r, "$create", "m.room.create", Some(""), 1)]).await.unwrap();
    store.subscribe_to_thread(alice, r, "$a", None, 2).await.unwrap();
    store.subscribe_to_thread(alice, r, "$b", None, 2).await.unwrap();
    store.unsubscribe_from_thread(alice, r, "$b").await.unwrap();
    // Unsubscribed rows count too; changing an existing row is allowed.
    let third = store.subscribe_to_thread(alice, r, "$c", None, 2).await;
    assert!(matches!(third, Err(StoreError::TooManyThreadSubscriptions)), "{third:?}");
    assert!(matches!(store.subscribe_to_thread(alice, r, "$b", None, 2).await.unwrap(), SubscribeOutcome::Subscribed(_)));
    store.subscribe_to_thread(bob, r, "$a", None, 2).await.unwrap();
    let before = store.stream_positions().await.unwrap().thread_subscriptions;

    store.deactivate_account(alice, 5_000).await.unwrap();
    assert_eq!(store.thread_subscription(alice, r, "$a").await.unwrap(), None);
    assert!(store.thread_subscription_changes(alice, 0, before, 100).await.unwrap().is_empty());
    assert_eq!(store.thread_subscribers(r, "$a").await.unwrap(), [bob]);
    // Positions never go back, so no position is handed out twice.
    assert_eq!(store.stream_positions().await.unwrap().thread_subscriptions, before);
    assert_eq!(store.subscribe_to_thread(bob, r, "$z", None, 2).await.unwrap(), SubscribeOutcome::Subscribed(before + 1));
}

pub async fn concurrent_thread_subscriptions_become_visible_in_order(store: DynStore) {
    const WRITERS: usize = 4;
    const PER_WRITER: usize = 12;
    let r = "!r:x";
    store.create_room(room(r), vec![event(r, "$create", "m.room.create", Some(""), 1)]).await.unwrap();
    let users: Vec<String> = (0..WRITERS).map(|n| format!("@u{n}:x")).collect();
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (store, users, done) = (Arc::clone(&store), users.clone(), Arc::clone(&done));
        tokio::spawn(async move {
            let mut checks = 0u32;
            loop {
                let finished = done.load(Ordering::SeqCst);
                let up_to = store.stream_positions().await.unwrap().thread_subscriptions;
                let mut seen = Vec::new();
                for user in &users {
                    let changes = store.thread_subscription_changes(user, 0, up_to, MANY).await.unwrap();
                    seen.extend(changes.iter().map(|c| c.stream_pos));
                }
                seen.sort_unstable();
                assert_eq!(seen, (1..=up_to).collect::<Vec<_>>(), "visible at {up_to}");
                checks += 1;
                if finished {
                    return checks;
                }
                tokio::task::yield_now().await;
            }
        })
    };
    let mut writers = Vec::new();
    for user in users {
        let store = Arc::clone(&store);
        writers.push(tokio::spawn(async move {
            for n in 0..PER_WRITER {
                let outcome = store.subscribe_to_thread(&user, r, &format!("$t{n}"), None, MANY).await.unwrap();
                assert!(matches!(outcome, SubscribeOutcome::Subscribed(_)));
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    assert!(reader.await.unwrap() > 0);
    assert_eq!(store.stream_positions().await.unwrap().thread_subscriptions, (WRITERS * PER_WRITER) as u64);
}
