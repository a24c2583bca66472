//! Conformance cases for account data and receipts: their streams, limits,
//! and that concurrent writers never let a reader see a later position
//! before an earlier one.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Value as JsonValue, json};

use chancery_store::*;

pub(crate) const LIMITS: AccountDataLimits =
    AccountDataLimits { max_entries: 100, max_content_bytes: 10_000, max_total_bytes: 1_000_000 };

/// [`LIMITS`] with another entry count.
fn entries(max_entries: usize) -> AccountDataLimits {
    AccountDataLimits { max_entries, ..LIMITS }
}

/// A read of changes that nothing cuts short.
const ALL: AccountDataBatchLimits = AccountDataBatchLimits { max_entries: usize::MAX, max_bytes: usize::MAX };

fn entry(room_id: Option<&str>, event_type: &str, content: JsonValue, stream_pos: u64) -> AccountDataEntry {
    AccountDataEntry { room_id: room_id.map(Into::into), event_type: event_type.into(), content: content.to_string(), stream_pos }
}

fn parsed(content: Option<String>) -> Option<JsonValue> {
    content.map(|c| serde_json::from_str(&c).expect("stored content is JSON"))
}

pub async fn account_data_is_per_user_and_room_with_a_stream(store: DynStore) {
    assert_eq!(store.current_account_data_pos().await.unwrap(), 0);
    assert!(store.account_data("@a:x", None, "m.direct").await.unwrap().is_none());

    let direct = json!({"@b:x": ["!dm:x"]});
    assert_eq!(store.set_account_data("@a:x", None, "m.direct", &direct.to_string(), entries(10)).await.unwrap(), 1);
    assert_eq!(store.set_account_data("@a:x", Some("!r:x"), "org.example", r#"{"n":1}"#, entries(10)).await.unwrap(), 2);
    assert_eq!(store.set_account_data("@b:x", None, "m.direct", "{}", entries(10)).await.unwrap(), 3);
    assert_eq!(parsed(store.account_data("@a:x", None, "m.direct").await.unwrap()), Some(direct.clone()));
    assert_eq!(store.account_data("@a:x", Some("!r:x"), "org.example").await.unwrap().as_deref(), Some(r#"{"n":1}"#));
    // Room and global data do not fall back to each other.
    assert!(store.account_data("@a:x", Some("!r:x"), "m.direct").await.unwrap().is_none());
    assert!(store.account_data("@a:x", None, "org.example").await.unwrap().is_none());
    assert!(store.account_data("@a:x", Some("!other:x"), "org.example").await.unwrap().is_none());
    assert_eq!(store.current_account_data_pos().await.unwrap(), 3);

    assert_eq!(
        store.account_data_changes("@a:x", 0, 3, ALL).await.unwrap(),
        [entry(None, "m.direct", direct.clone(), 1), entry(Some("!r:x"), "org.example", json!({"n": 1}), 2)]
    );
    assert_eq!(store.account_data_changes("@a:x", 1, 3, ALL).await.unwrap().len(), 1);
    assert!(store.account_data_changes("@a:x", 2, 3, ALL).await.unwrap().is_empty());
    assert_eq!(store.account_data_changes("@a:x", 0, 1, ALL).await.unwrap().len(), 1);

    // Replacing moves the entry to a new position: a client that synced up
    // to 3 gets it again, once, with the new content.
    assert_eq!(store.set_account_data("@a:x", Some("!r:x"), "org.example", r#"{"n":2}"#, entries(10)).await.unwrap(), 4);
    assert_eq!(
        store.account_data_changes("@a:x", 3, 4, ALL).await.unwrap(),
        [entry(Some("!r:x"), "org.example", json!({"n": 2}), 4)]
    );
    assert_eq!(store.account_data_changes("@a:x", 0, 4, ALL).await.unwrap().len(), 2);
    assert_eq!(store.current_account_data_pos().await.unwrap(), 4);
}

pub async fn account_data_limits_and_tags(store: DynStore) {
    for n in 0..3 {
        store.set_account_data("@a:x", None, &format!("t{n}"), "{}", entries(3)).await.unwrap();
    }
    let over = store.set_account_data("@a:x", Some("!r:x"), "t9", "{}", entries(3)).await;
    assert!(matches!(over, Err(StoreError::TooManyAccountData)), "{over:?}");
    // Replacing an entry is not a new entry; other users have their own count.
    store.set_account_data("@a:x", None, "t0", r#"{"again":true}"#, entries(3)).await.unwrap();
    store.set_account_data("@b:x", None, "t0", "{}", entries(3)).await.unwrap();
    let refused_tag =
        store.set_room_tag("@a:x", "!r:x", "u.work", Some(&json!({})), AccountDataLimits { max_entries: 3, ..LIMITS }).await;
    assert!(matches!(refused_tag, Err(StoreError::TooManyAccountData)), "{refused_tag:?}");
    let pos = store.current_account_data_pos().await.unwrap();
    assert_eq!(pos, 5);

    // Tags: read-modify-write of the room's m.tag entry.
    let r = "!r:x";
    let tags = |store: DynStore| async move { parsed(store.account_data("@b:x", Some(r), TAG_EVENT_TYPE).await.unwrap()) };
    assert_eq!(store.set_room_tag("@b:x", r, "u.work", Some(&json!({"order": 0.5})), LIMITS).await.unwrap(), Some(6));
    assert_eq!(store.set_room_tag("@b:x", r, "m.favourite", Some(&json!({})), LIMITS).await.unwrap(), Some(7));
    assert_eq!(tags(store.clone()).await, Some(json!({"tags": {"u.work": {"order": 0.5}, "m.favourite": {}}})));
    // No change, nothing written.
    assert_eq!(store.set_room_tag("@b:x", r, "m.favourite", Some(&json!({})), LIMITS).await.unwrap(), None);
    assert_eq!(store.set_room_tag("@b:x", r, "u.never", None, LIMITS).await.unwrap(), None);
    assert_eq!(store.set_room_tag("@b:x", "!untagged:x", "u.never", None, LIMITS).await.unwrap(), None);
    assert!(store.account_data("@b:x", Some("!untagged:x"), TAG_EVENT_TYPE).await.unwrap().is_none());
    assert_eq!(store.set_room_tag("@b:x", r, "u.work", None, LIMITS).await.unwrap(), Some(8));
    assert_eq!(tags(store.clone()).await, Some(json!({"tags": {"m.favourite": {}}})));
    let changes = store.account_data_changes("@b:x", 5, 8, ALL).await.unwrap();
    assert_eq!(changes, [entry(Some(r), TAG_EVENT_TYPE, json!({"tags": {"m.favourite": {}}}), 8)]);

    // The m.tag content as a whole is bounded.
    let small = AccountDataLimits { max_content_bytes: 100, ..LIMITS };
    let big = json!({"note": "x".repeat(100)});
    let too_big = store.set_room_tag("@b:x", r, "u.big", Some(&big), small).await;
    assert!(matches!(too_big, Err(StoreError::AccountDataTooLarge)), "{too_big:?}");
    assert_eq!(tags(store.clone()).await, Some(json!({"tags": {"m.favourite": {}}})));
    assert_eq!(store.current_account_data_pos().await.unwrap(), 8);
}

/// A JSON object of exactly `bytes` bytes.
fn content_of(bytes: usize) -> String {
    let content = format!(r#"{{"v":"{}"}}"#, "x".repeat(bytes - 8));
    assert_eq!(content.len(), bytes);
    content
}

pub async fn account_data_total_bytes_are_bounded(store: DynStore) {
    // An entry counts its room id, type and content.
    assert_eq!(account_data_entry_bytes(Some("!r:x"), "t", "{}"), 7);
    let limits = AccountDataLimits { max_entries: 100, max_content_bytes: 1_000, max_total_bytes: 300 };
    let set = |user: &'static str, room: Option<&'static str>, event_type: &'static str, bytes: usize, limits| {
        let store = store.clone();
        async move { store.set_account_data(user, room, event_type, &content_of(bytes), limits).await }
    };
    let over = |result: StoreResult<u64>| matches!(result, Err(StoreError::AccountDataTotalTooLarge));
    set("@a:x", None, "t1", 100, limits).await.unwrap();
    set("@a:x", None, "t2", 100, limits).await.unwrap();
    // 102 + 102 + 102 > 300: refused, nothing written.
    assert!(over(set("@a:x", None, "t3", 100, limits).await));
    assert!(store.account_data("@a:x", None, "t3").await.unwrap().is_none());
    assert_eq!(store.current_account_data_pos().await.unwrap(), 2);
    // Exactly the limit is fine.
    set("@a:x", None, "t3", 94, limits).await.unwrap();
    // A replacement counts by what it adds.
    assert!(over(set("@a:x", None, "t1", 101, limits).await));
    set("@a:x", None, "t1", 100, limits).await.unwrap();
    set("@a:x", None, "t1", 50, limits).await.unwrap();
    // The room id counts: 52 + 102 + 96 + (4 + 1 + 46) > 300.
    assert!(over(set("@a:x", Some("!r:x"), "t", 46, limits).await));
    set("@a:x", Some("!r:x"), "t", 45, limits).await.unwrap();
    // Other users have their own total.
    set("@b:x", None, "t1", 290, limits).await.unwrap();
    // Tags and push rules are account data too.
    let tag = store.set_room_tag("@a:x", "!s:x", "u.work", Some(&json!({})), limits).await;
    assert!(matches!(tag, Err(StoreError::AccountDataTotalTooLarge)), "{tag:?}");
    assert!(store.account_data("@a:x", Some("!s:x"), TAG_EVENT_TYPE).await.unwrap().is_none());
    let rules = store.set_push_rules("@a:x", "{}", limits).await;
    assert!(matches!(rules, Err(StoreError::AccountDataTotalTooLarge)), "{rules:?}");
    // The content limit holds in the store too.
    let big = store.set_account_data("@c:x", None, "t", &content_of(1_001), limits).await;
    assert!(matches!(big, Err(StoreError::AccountDataTooLarge)), "{big:?}");

    // Over a lowered limit, entries can still be replaced by no more.
    let lowered = AccountDataLimits { max_total_bytes: 100, ..limits };
    set("@a:x", None, "t2", 100, lowered).await.unwrap();
    set("@a:x", None, "t2", 60, lowered).await.unwrap();
    assert!(over(set("@a:x", None, "t2", 61, lowered).await));
    assert!(over(set("@a:x", None, "t4", 10, lowered).await));
    let tags_unchanged = store.set_room_tag("@a:x", "!r:x", "u.gone", None, lowered).await.unwrap();
    assert_eq!(tags_unchanged, None);
}

pub async fn account_data_total_holds_under_concurrency(store: DynStore) {
    // Twelve writers of new 100-byte entries race for a 500-byte total.
    let limits = AccountDataLimits { max_entries: 100, max_content_bytes: 1_000, max_total_bytes: 500 };
    let mut tasks = Vec::new();
    for n in 0..12 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let event_type = format!("c{n:02}");
            match store.set_account_data("@a:x", None, &event_type, &content_of(97), limits).await {
                Ok(_) => true,
                Err(StoreError::AccountDataTotalTooLarge) => false,
                Err(e) => panic!("{e}"),
            }
        }));
    }
    let mut written = 0;
    for task in tasks {
        written += usize::from(task.await.unwrap());
    }
    assert_eq!(written, 5);
    let pos = store.current_account_data_pos().await.unwrap();
    assert_eq!(store.account_data_changes("@a:x", 0, pos, ALL).await.unwrap().len(), 5);
}

pub async fn account_data_changes_come_in_bounded_batches(store: DynStore) {
    // Alice's entries at positions 1, 3, 5, 7, 9 (Bob's in between), 100
    // bytes each.
    for n in 0..5 {
        store.set_account_data("@a:x", None, &format!("a{n}"), &content_of(98), LIMITS).await.unwrap();
        store.set_account_data("@b:x", None, &format!("b{n}"), &content_of(98), LIMITS).await.unwrap();
    }
    let up_to = store.current_account_data_pos().await.unwrap();
    let positions = |changes: Vec<AccountDataEntry>| changes.into_iter().map(|e| e.stream_pos).collect::<Vec<_>>();
    let read = |after: u64, batch: AccountDataBatchLimits| {
        let store = store.clone();
        async move { positions(store.account_data_changes("@a:x", after, up_to, batch).await.unwrap()) }
    };
    assert_eq!(read(0, ALL).await, [1, 3, 5, 7, 9]);
    // By count: each read continues after the last one returned.
    let two = AccountDataBatchLimits { max_entries: 2, max_bytes: usize::MAX };
    assert_eq!(read(0, two).await, [1, 3]);
    assert_eq!(read(3, two).await, [5, 7]);
    assert_eq!(read(7, two).await, [9]);
    assert!(read(9, two).await.is_empty());
    // By bytes: entries while those before come to less than the bound.
    let bytes = |max_bytes| AccountDataBatchLimits { max_entries: usize::MAX, max_bytes };
    assert_eq!(read(0, bytes(200)).await, [1, 3]);
    assert_eq!(read(0, bytes(201)).await, [1, 3, 5]);
    assert_eq!(read(3, bytes(150)).await, [5, 7]);
    // At least one, however large.
    assert_eq!(read(0, bytes(1)).await, [1]);
    // Both bounds: whichever comes first.
    assert_eq!(read(0, AccountDataBatchLimits { max_entries: 2, max_bytes: 101 }).await, [1, 3]);
    assert_eq!(read(0, AccountDataBatchLimits { max_entries: 4, max_bytes: 101 }).await, [1, 3]);
    assert_eq!(read(0, AccountDataBatchLimits { max_entries: 4, max_bytes: 100 }).await, [1]);
}

pub async fn concurrent_tag_changes_all_survive(store: DynStore) {
    let mut tasks = Vec::new();
    for n in 0..12 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            store.set_room_tag("@a:x", "!r:x", &format!("u.t{n}"), Some(&json!({"order": n})), LIMITS).await.unwrap()
        }));
    }
    let mut positions = Vec::new();
    for task in tasks {
        positions.push(task.await.unwrap().expect("every tag is a change"));
    }
    positions.sort_unstable();
    assert_eq!(positions, (1..=12).collect::<Vec<_>>());
    let content = parsed(store.account_data("@a:x", Some("!r:x"), TAG_EVENT_TYPE).await.unwrap()).unwrap();
    assert_eq!(content["tags"].as_object().unwrap().len(), 12, "{content}");
}

fn receipt(room: &str, user: &str, receipt_type: &str, thread: Option<&str>, event_id: &str, ts: u64) -> NewReceipt {
    NewReceipt {
        room_id: room.into(),
        user_id: user.into(),
        receipt_type: receipt_type.into(),
        thread_id: thread.map(Into::into),
        event_id: event_id.into(),
        ts,
    }
}

fn stored(r: &NewReceipt, stream_pos: u64) -> Receipt {
    Receipt {
        room_id: r.room_id.clone(),
        user_id: r.user_id.clone(),
        receipt_type: r.receipt_type.clone(),
        thread_id: r.thread_id.clone(),
        event_id: r.event_id.clone(),
        ts: r.ts,
        stream_pos,
    }
}

pub async fn receipts_replace_per_type_and_thread(store: DynStore) {
    let r = "!r:x";
    assert_eq!(store.current_receipt_pos().await.unwrap(), 0);
    let a_read = receipt(r, "@a:x", "m.read", None, "$1", 10);
    let a_private = receipt(r, "@a:x", "m.read.private", None, "$2", 11);
    let a_main = receipt(r, "@a:x", "m.read", Some("main"), "$1", 12);
    let a_thread = receipt(r, "@a:x", "m.read", Some("$root"), "$3", 13);
    let b_read = receipt(r, "@b:x", "m.read", None, "$1", 14);
    let elsewhere = receipt("!other:x", "@a:x", "m.read", None, "$9", 15);
    for (n, rc) in [&a_read, &a_private, &a_main, &a_thread, &b_read, &elsewhere].into_iter().enumerate() {
        assert_eq!(store.set_receipt(rc.clone(), 10).await.unwrap(), n as u64 + 1);
    }
    assert_eq!(
        store.room_receipts(r, 0, 6).await.unwrap(),
        [stored(&a_read, 1), stored(&a_private, 2), stored(&a_main, 3), stored(&a_thread, 4), stored(&b_read, 5)]
    );
    assert_eq!(store.room_receipts(r, 3, 6).await.unwrap(), [stored(&a_thread, 4), stored(&b_read, 5)]);
    assert_eq!(store.room_receipts(r, 0, 2).await.unwrap().len(), 2);
    assert_eq!(store.room_receipts("!other:x", 0, 6).await.unwrap(), [stored(&elsewhere, 6)]);

    // A newer receipt of the same (user, type, thread) replaces the older
    // one; the others stay.
    let a_read_later = receipt(r, "@a:x", "m.read", None, "$4", 20);
    assert_eq!(store.set_receipt(a_read_later.clone(), 10).await.unwrap(), 7);
    let all = store.room_receipts(r, 0, 7).await.unwrap();
    assert_eq!(all.len(), 5);
    assert_eq!(all.last(), Some(&stored(&a_read_later, 7)));
    assert!(!all.contains(&stored(&a_read, 1)));
    assert_eq!(store.room_receipts(r, 6, 7).await.unwrap(), [stored(&a_read_later, 7)]);
    assert_eq!(store.current_receipt_pos().await.unwrap(), 7);

    // Threads a user holds receipts in are bounded; replacing is fine.
    let over = store.set_receipt(receipt(r, "@a:x", "m.read", Some("$root2"), "$5", 30), 3).await;
    assert!(matches!(over, Err(StoreError::TooManyReceiptThreads)), "{over:?}");
    store.set_receipt(receipt(r, "@a:x", "m.read", Some("$root"), "$5", 31), 3).await.unwrap();
    store.set_receipt(receipt(r, "@b:x", "m.read", Some("$root2"), "$5", 32), 3).await.unwrap();
    assert_eq!(store.current_receipt_pos().await.unwrap(), 9);
}

/// Writers of both side streams race while a reader keeps reading up to
/// the current positions: everything at or below a current position must
/// already be readable (dense, no gap that fills in later), and in the end
/// every write is there exactly once.
pub async fn concurrent_side_stream_writers_become_visible_in_order(store: DynStore) {
    const WRITERS: usize = 6;
    const PER_WRITER: usize = 15;
    let users: Vec<String> = (0..WRITERS).map(|n| format!("@u{n}:x")).collect();
    let done = Arc::new(AtomicBool::new(false));

    let reader = {
        let (store, users, done) = (Arc::clone(&store), users.clone(), Arc::clone(&done));
        tokio::spawn(async move {
            let mut checks = 0u32;
            loop {
                let finished = done.load(Ordering::SeqCst);
                let account_data = store.current_account_data_pos().await.unwrap();
                let receipts = store.current_receipt_pos().await.unwrap();
                let mut seen_data = Vec::new();
                for user in &users {
                    let changes = store.account_data_changes(user, 0, account_data, ALL).await.unwrap();
                    seen_data.extend(changes.iter().map(|e| e.stream_pos));
                }
                seen_data.sort_unstable();
                assert_eq!(seen_data, (1..=account_data).collect::<Vec<_>>(), "account data visible at {account_data}");
                let mut seen_receipts: Vec<u64> =
                    store.room_receipts("!r:x", 0, receipts).await.unwrap().iter().map(|r| r.stream_pos).collect();
                seen_receipts.sort_unstable();
                assert_eq!(seen_receipts, (1..=receipts).collect::<Vec<_>>(), "receipts visible at {receipts}");
                checks += 1;
                if finished {
                    return checks;
                }
                tokio::task::yield_now().await;
            }
        })
    };

    let mut writers = Vec::new();
    for user in users.clone() {
        let store = Arc::clone(&store);
        writers.push(tokio::spawn(async move {
            let mut positions = (Vec::new(), Vec::new());
            for n in 0..PER_WRITER {
                // Distinct keys, so no write replaces another one.
                let pos = store.set_account_data(&user, None, &format!("org.example.{n}"), "{}", entries(1_000)).await.unwrap();
                positions.0.push(pos);
                let thread = format!("$thread{n}");
                let pos = store.set_receipt(receipt("!r:x", &user, "m.read", Some(&thread), "$e", 1), 1_000).await.unwrap();
                positions.1.push(pos);
            }
            positions
        }));
    }
    let (mut data, mut receipts) = (BTreeSet::new(), BTreeSet::new());
    for writer in writers {
        let (d, r) = writer.await.unwrap();
        assert!(d.windows(2).all(|w| w[0] < w[1]) && r.windows(2).all(|w| w[0] < w[1]), "one writer's positions increase");
        data.extend(d);
        receipts.extend(r);
    }
    done.store(true, Ordering::SeqCst);
    assert!(reader.await.unwrap() >= 1);
    let total = (WRITERS * PER_WRITER) as u64;
    assert_eq!(data.into_iter().collect::<Vec<_>>(), (1..=total).collect::<Vec<_>>());
    assert_eq!(receipts.into_iter().collect::<Vec<_>>(), (1..=total).collect::<Vec<_>>());
    assert_eq!(store.current_account_data_pos().await.unwrap(), total);
    assert_eq!(store.current_receipt_pos().await.unwrap(), total);
}
