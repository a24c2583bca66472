//! The behaviour every storage backend must have, written once against
//! the `chancery-store` traits. A backend's tests call
//! [`store_conformance_tests!`] with a factory that returns a fresh, empty
//! store (and a guard that keeps its files or database alive).
//!
//! A crate of its own, used only as a dev-dependency, so the product's
//! `chancery-store` holds no test code.

mod account_data;
mod delayed_events;
mod federation;
mod hierarchy;
mod history;
mod keys;
mod leases;
mod media;
mod nul;
mod openid;
mod pushers;
mod remote_keys;
mod sliding_sync;
mod thread_subscriptions;

use std::collections::BTreeMap;
use std::sync::Arc;

use chancery_proto::ruma::RoomVersionId;
use chancery_proto::ruma::events::room::member::MembershipState;
use serde_json::json;

pub use self::account_data::*;
pub use self::delayed_events::*;
pub use self::federation::*;
pub use self::hierarchy::*;
pub use self::history::*;
pub use self::keys::*;
pub use self::leases::*;
pub use self::media::*;
pub use self::nul::*;
pub use self::openid::*;
pub use self::pushers::*;
pub use self::remote_keys::*;
pub use self::sliding_sync::*;
pub use self::thread_subscriptions::*;
use chancery_store::*;

/// Expands to one `#[tokio::test]` per conformance case. `$factory` is an
/// async fn returning `(DynStore, impl Drop)`.
#[macro_export]
macro_rules! store_conformance_tests {
    ($factory:path) => {
        $crate::store_conformance_tests!(@cases $factory;
            accounts_are_unique, account_with_first_device_is_atomic, registration_tokens_count_uses,
            registration_token_uses_hold_under_concurrency, devices_and_sessions, device_limit_is_enforced,
            refresh_keeps_previous_token_until_new_one_used, password_change_logs_out_others,
            deactivation_erases_and_keeps_the_name, profile_fields_respect_size_limit, uia_sessions_expire_and_are_bounded, uia_sessions_are_reused_and_bounded_per_user,
            rooms_create_append_and_read, append_checks_extremities_and_txn, redactions_are_linked, stub_rooms_are_replaced_whole,
            racing_appends_to_one_room_let_exactly_one_win, concurrent_appends_to_different_rooms_keep_positions_dense_and_ordered,
            one_bad_append_among_concurrent_ones_fails_alone,
            account_data_is_per_user_and_room_with_a_stream, account_data_limits_and_tags, concurrent_tag_changes_all_survive,
            account_data_total_bytes_are_bounded, account_data_total_holds_under_concurrency,
            account_data_changes_come_in_bounded_batches,
            receipts_replace_per_type_and_thread, concurrent_side_stream_writers_become_visible_in_order,
            relations_are_recorded_filtered_and_paginated, bundled_aggregations_summarise_children,
            thread_roots_are_ordered_by_latest_reply, annotations_are_counted_per_key_and_sender, events_are_found_by_timestamp,
            children_and_times_are_read_within_ranges,
            aliases_are_unique_and_bounded, directory_lists_published_joinable_rooms, room_creation_with_addresses_is_atomic,
            upgrade_moves_addresses_atomically, forgetting_follows_the_membership, reports_are_bounded_per_reporter_and_window,
            member_summaries_count_and_pick_heroes, stream_positions_read_every_stream, rooms_changed_lists_rooms_with_news,
            push_rules_are_read_per_user_and_per_room, old_notifications_are_pruned_per_user,
            heavy_reads_leave_a_connection_for_small_ones,
            visibility_spans_follow_the_state_history, search_stays_within_its_scopes,
            reports_are_listed_filtered_and_deleted, stored_nul_characters_break_no_shared_read,
            key_uploads_are_all_or_nothing_and_counted, claims_hand_out_one_time_keys_once_then_the_fallback,
            concurrent_claims_never_hand_out_a_key_twice, cross_signing_keys_and_signatures_replace_and_cascade,
            device_list_updates_follow_shared_encrypted_rooms, deleting_devices_deletes_their_keys_and_inbox,
            deactivation_deletes_every_key_of_the_account, to_device_messages_are_queued_bounded_and_acknowledged,
            to_device_transaction_ids_are_remembered_per_device_and_bounded, device_sync_state_is_the_inbox_and_the_key_counts,
            one_sender_fills_only_its_share_of_an_inbox,
            backup_versions_are_numbered_and_bounded, backed_up_keys_keep_the_better_one_per_session,
            dehydrated_device_is_replaced_whole,
            room_list_carries_bumps_types_and_encryption, room_list_changes_are_the_rooms_that_moved_on, sliding_positions_keep_what_the_client_may_still_send,
            sliding_connections_are_bounded_per_device_and_expire,
            current_state_of_one_type_is_read_in_state_key_order, hierarchy_walks_expire_and_are_bounded_per_user,
            pushers_are_set_updated_listed_and_deleted, pushers_go_with_their_device,
            appends_queue_notifications_for_pushers, queued_notifications_merge_rooms_in_position_order,
            a_pusher_is_leased_to_one_node_at_a_time, concurrent_claims_give_a_pusher_to_one_node,
            badge_counts_follow_reads_and_invites,
            media_is_stored_once_and_counted_against_the_quota, concurrent_uploads_hold_the_quota,
            pending_media_is_bounded_expires_and_completes_once,
            thumbnails_and_deletions_tell_which_files_are_unreferenced, quarantine_is_set_per_item_and_per_uploader,
            delayed_events_are_scheduled_bounded_and_listed, delayed_events_restart_cancel_and_claim_once,
            concurrent_claims_hand_each_delayed_event_to_one_caller, replaced_state_cancels_other_users_delayed_state_events,
            openid_tokens_expire_are_bounded_per_user_and_purged,
            thread_subscriptions_follow_the_subscribe_rules, thread_subscription_changes_page_back_from_the_newest,
            thread_subscriptions_are_bounded_per_user_and_go_with_the_account,
            concurrent_thread_subscriptions_become_visible_in_order,
            federation_events_go_to_the_servers_in_the_room, federation_destinations_come_from_membership_changes,
            federation_positions_persist_and_never_move_back, federation_edus_wait_per_destination_until_acknowledged,
            federation_edu_outbox_is_bounded_in_count_and_age,
            history_walks_back_numbered_hidden_and_bounded,
            job_leases_go_to_one_node_until_they_end, concurrent_lease_claims_give_a_job_to_one_node,
            remote_keys_are_cached_until_the_device_list_moves,
        );
    };
    (@cases $factory:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (store, _guard) = $factory().await;
                $crate::$case(store.clone()).await;
                store.close().await;
            }
        )*
    };
}

fn account(user: &str) -> NewAccount {
    NewAccount { user_id: user.into(), password_hash: Some("$argon2id$hash".into()), is_admin: false, created_ts: 1_000 }
}

fn tokens(n: u32) -> TokenPair {
    TokenPair { access_token_hash: format!("access-{n}"), access_expires_ts: None, refresh_token_hash: None }
}

fn device(user: &str, id: &str, n: u32) -> NewDevice {
    NewDevice { user_id: user.into(), device_id: id.into(), display_name: None, tokens: tokens(n), now_ts: 2_000 }
}

fn reg_token(token: &str, uses_allowed: Option<u64>) -> RegistrationToken {
    RegistrationToken { token: token.into(), uses_allowed, completed: 0, expiry_ts: None, created_ts: 1, revoked_ts: None }
}

pub async fn accounts_are_unique(store: DynStore) {
    store.create_account(account("@alice:x"), None, None, 1_000).await.unwrap();
    let got = store.account("@alice:x").await.unwrap().unwrap();
    assert_eq!(got.user_id, "@alice:x");
    assert_eq!(got.password_hash.as_deref(), Some("$argon2id$hash"));
    assert!(!got.deactivated && !got.is_admin);
    assert!(store.account("@bob:x").await.unwrap().is_none());
    let again = store.create_account(account("@alice:x"), None, None, 1_000).await;
    assert!(matches!(again, Err(StoreError::UserIdTaken)), "{again:?}");
    store.ping().await.unwrap();
}

pub async fn account_with_first_device_is_atomic(store: DynStore) {
    store.create_registration_token(&reg_token("once", Some(1))).await.unwrap();
    store.create_account(account("@a:x"), Some(device("@a:x", "DEV", 1)), Some("once"), 5).await.unwrap();
    let session = store.session_by_access_token("access-1").await.unwrap().unwrap();
    assert_eq!((session.user_id.as_str(), session.device_id.as_str()), ("@a:x", "DEV"));
    // The token is used up: the second account must not exist afterwards.
    let second = store.create_account(account("@b:x"), Some(device("@b:x", "DEV", 2)), Some("once"), 5).await;
    assert!(matches!(second, Err(StoreError::RegistrationTokenUnusable)), "{second:?}");
    assert!(store.account("@b:x").await.unwrap().is_none());
    assert!(store.session_by_access_token("access-2").await.unwrap().is_none());
    // Same id twice: the device of the failed attempt must not appear.
    let dup = store.create_account(account("@a:x"), Some(device("@a:x", "OTHER", 3)), None, 5).await;
    assert!(matches!(dup, Err(StoreError::UserIdTaken)));
    assert_eq!(store.devices("@a:x").await.unwrap().len(), 1);
    // A token that does not exist is refused the same way.
    let missing = store.create_account(account("@c:x"), None, Some("nope"), 5).await;
    assert!(matches!(missing, Err(StoreError::RegistrationTokenUnusable)));
}

pub async fn registration_tokens_count_uses(store: DynStore) {
    let mut limited = reg_token("two", Some(2));
    limited.expiry_ts = Some(1_000);
    store.create_registration_token(&limited).await.unwrap();
    store.create_registration_token(&reg_token("free", None)).await.unwrap();
    assert!(matches!(store.create_registration_token(&reg_token("free", None)).await, Err(StoreError::RegistrationTokenExists)));
    store.create_account(account("@a:x"), None, Some("two"), 10).await.unwrap();
    let got = store.registration_token("two").await.unwrap().unwrap();
    assert_eq!(got.completed, 1);
    assert!(got.is_usable(10) && !got.is_usable(1_000));
    // Expired tokens are refused by the store too.
    assert!(store.create_account(account("@b:x"), None, Some("two"), 2_000).await.is_err());
    let list = store.registration_tokens().await.unwrap();
    assert_eq!(list.iter().map(|t| t.token.as_str()).collect::<Vec<_>>(), ["free", "two"]);
    assert!(store.revoke_registration_token("free", 50).await.unwrap());
    assert!(!store.revoke_registration_token("missing", 50).await.unwrap());
    let free = store.registration_token("free").await.unwrap().unwrap();
    assert_eq!(free.revoked_ts, Some(50));
    assert!(store.create_account(account("@c:x"), None, Some("free"), 60).await.is_err());
}

pub async fn registration_token_uses_hold_under_concurrency(store: DynStore) {
    store.create_registration_token(&reg_token("three", Some(3))).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..12 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let user = format!("@u{i}:x");
            store.create_account(account(&user), Some(device(&user, "D", 100 + i)), Some("three"), 5).await.is_ok()
        }));
    }
    let mut created = 0;
    for task in tasks {
        created += usize::from(task.await.unwrap());
    }
    assert_eq!(created, 3);
    assert_eq!(store.registration_token("three").await.unwrap().unwrap().completed, 3);
}

pub async fn devices_and_sessions(store: DynStore) {
    store.create_account(account("@a:x"), Some(device("@a:x", "ONE", 1)), None, 5).await.unwrap();
    let mut two = device("@a:x", "TWO", 2);
    two.display_name = Some("Laptop".into());
    store.upsert_device(two, 10).await.unwrap();
    let devices = store.devices("@a:x").await.unwrap();
    assert_eq!(devices.iter().map(|d| d.device_id.as_str()).collect::<Vec<_>>(), ["ONE", "TWO"]);
    assert_eq!(store.device("@a:x", "TWO").await.unwrap().unwrap().display_name.as_deref(), Some("Laptop"));
    assert!(store.device("@b:x", "TWO").await.unwrap().is_none());

    // Logging in again on TWO replaces its token and keeps its name.
    store.upsert_device(device("@a:x", "TWO", 3), 10).await.unwrap();
    assert!(store.session_by_access_token("access-2").await.unwrap().is_none());
    assert_eq!(store.session_by_access_token("access-3").await.unwrap().unwrap().device_id, "TWO");
    assert_eq!(store.device("@a:x", "TWO").await.unwrap().unwrap().display_name.as_deref(), Some("Laptop"));

    assert!(store.set_device_display_name("@a:x", "ONE", Some("Phone")).await.unwrap());
    assert!(!store.set_device_display_name("@a:x", "NOPE", Some("x")).await.unwrap());
    assert_eq!(store.device("@a:x", "ONE").await.unwrap().unwrap().display_name.as_deref(), Some("Phone"));

    store.delete_devices("@a:x", &["ONE".into(), "MISSING".into()]).await.unwrap();
    assert!(store.session_by_access_token("access-1").await.unwrap().is_none());
    assert_eq!(store.devices("@a:x").await.unwrap().len(), 1);

    store.upsert_device(device("@a:x", "THREE", 4), 10).await.unwrap();
    store.delete_all_devices("@a:x", Some("THREE")).await.unwrap();
    assert_eq!(store.devices("@a:x").await.unwrap().iter().map(|d| d.device_id.clone()).collect::<Vec<_>>(), ["THREE"]);
    store.delete_all_devices("@a:x", None).await.unwrap();
    assert!(store.devices("@a:x").await.unwrap().is_empty());

    // No device for an account that does not exist.
    assert!(matches!(store.upsert_device(device("@ghost:x", "D", 9), 10).await, Err(StoreError::AccountInactive)));
}

pub async fn device_limit_is_enforced(store: DynStore) {
    store.create_account(account("@a:x"), None, None, 5).await.unwrap();
    for i in 0..3 {
        store.upsert_device(device("@a:x", &format!("D{i}"), i), 3).await.unwrap();
    }
    let over = store.upsert_device(device("@a:x", "D9", 9), 3).await;
    assert!(matches!(over, Err(StoreError::TooManyDevices)), "{over:?}");
    // Re-using an existing device id is not a new device.
    store.upsert_device(device("@a:x", "D0", 10), 3).await.unwrap();
}

pub async fn refresh_keeps_previous_token_until_new_one_used(store: DynStore) {
    let mut first = device("@a:x", "D", 1);
    first.tokens =
        TokenPair { access_token_hash: "a1".into(), access_expires_ts: Some(100), refresh_token_hash: Some("r1".into()) };
    store.create_account(account("@a:x"), Some(first), None, 5).await.unwrap();
    let s = store.session_by_access_token("a1").await.unwrap().unwrap();
    assert_eq!(s.access_expires_ts, Some(100));
    assert!(!s.previous_refresh_pending);

    let second =
        TokenPair { access_token_hash: "a2".into(), access_expires_ts: Some(200), refresh_token_hash: Some("r2".into()) };
    assert_eq!(store.refresh_tokens("r1", &second).await.unwrap().unwrap().device_id, "D");
    assert!(store.session_by_access_token("a1").await.unwrap().is_none());
    // The response was lost: the client retries with r1 and gets a3/r3.
    let third = TokenPair { access_token_hash: "a3".into(), access_expires_ts: Some(300), refresh_token_hash: Some("r3".into()) };
    assert!(store.refresh_tokens("r1", &third).await.unwrap().is_some());
    assert!(store.session_by_access_token("a2").await.unwrap().is_none());
    let s = store.session_by_access_token("a3").await.unwrap().unwrap();
    assert!(s.previous_refresh_pending);
    store.forget_previous_refresh_token("@a:x", "D").await.unwrap();
    assert!(!store.session_by_access_token("a3").await.unwrap().unwrap().previous_refresh_pending);
    let fourth = TokenPair { access_token_hash: "a4".into(), access_expires_ts: None, refresh_token_hash: Some("r4".into()) };
    assert!(store.refresh_tokens("r1", &fourth).await.unwrap().is_none());
    assert!(store.refresh_tokens("r2", &fourth).await.unwrap().is_none());
    assert!(store.refresh_tokens("r3", &fourth).await.unwrap().is_some());
}

pub async fn password_change_logs_out_others(store: DynStore) {
    store.create_account(account("@a:x"), Some(device("@a:x", "ONE", 1)), None, 5).await.unwrap();
    store.upsert_device(device("@a:x", "TWO", 2), 10).await.unwrap();
    store.change_password("@a:x", "new-hash", false, Some("ONE")).await.unwrap();
    assert_eq!(store.devices("@a:x").await.unwrap().len(), 2);
    store.change_password("@a:x", "newer-hash", true, Some("ONE")).await.unwrap();
    assert_eq!(store.account("@a:x").await.unwrap().unwrap().password_hash.as_deref(), Some("newer-hash"));
    assert!(store.session_by_access_token("access-2").await.unwrap().is_none());
    assert!(store.session_by_access_token("access-1").await.unwrap().is_some());
}

pub async fn deactivation_erases_and_keeps_the_name(store: DynStore) {
    store.create_account(account("@a:x"), Some(device("@a:x", "ONE", 1)), None, 5).await.unwrap();
    store.set_profile_field("@a:x", "displayname", &json!("Alice"), 65_536).await.unwrap();
    store.deactivate_account("@a:x", 10).await.unwrap();
    let a = store.account("@a:x").await.unwrap().unwrap();
    assert!(a.deactivated);
    assert!(a.password_hash.is_none());
    assert!(store.devices("@a:x").await.unwrap().is_empty());
    assert!(store.session_by_access_token("access-1").await.unwrap().is_none());
    assert!(store.profile("@a:x").await.unwrap().is_empty());
    assert!(matches!(store.create_account(account("@a:x"), None, None, 20).await, Err(StoreError::UserIdTaken)));
    assert!(matches!(store.upsert_device(device("@a:x", "TWO", 2), 10).await, Err(StoreError::AccountInactive)));
}

pub async fn profile_fields_respect_size_limit(store: DynStore) {
    store.create_account(account("@a:x"), None, None, 5).await.unwrap();
    store.set_profile_field("@a:x", "displayname", &json!("Alice"), 1_000).await.unwrap();
    store.set_profile_field("@a:x", "m.tz", &json!("Europe/Paris"), 1_000).await.unwrap();
    store.set_profile_field("@a:x", "displayname", &json!("Alice B."), 1_000).await.unwrap();
    let profile = store.profile("@a:x").await.unwrap();
    assert_eq!(
        serde_json::Value::Object(profile.into_iter().collect()),
        json!({"displayname": "Alice B.", "m.tz": "Europe/Paris"})
    );
    let big = json!("x".repeat(990));
    assert!(matches!(store.set_profile_field("@a:x", "org.example.big", &big, 1_000).await, Err(StoreError::ProfileTooLarge)));
    assert_eq!(store.profile("@a:x").await.unwrap().len(), 2);
    store.delete_profile_field("@a:x", "m.tz").await.unwrap();
    store.delete_profile_field("@a:x", "never-set").await.unwrap();
    assert_eq!(store.profile("@a:x").await.unwrap().keys().collect::<Vec<_>>(), ["displayname"]);
}

pub async fn uia_sessions_expire_and_are_bounded(store: DynStore) {
    let session = |id: &str, created_ts| UiaSession {
        session_id: id.into(),
        operation: "register".into(),
        user_id: None,
        completed: vec![],
        registration_token: None,
        created_ts,
    };
    let two = UiaSessionLimits { max_sessions: 2, max_per_user: 2 };
    assert_eq!(store.open_uia_session(&session("s1", 100), 0, two).await.unwrap(), session("s1", 100));
    store.open_uia_session(&session("s2", 200), 0, two).await.unwrap();
    assert!(matches!(store.open_uia_session(&session("s3", 300), 0, two).await, Err(StoreError::TooManyUiaSessions)));
    // s1 has expired by now: it is dropped and s3 fits.
    store.open_uia_session(&session("s3", 300), 150, two).await.unwrap();
    assert!(store.uia_session("s1").await.unwrap().is_none());
    let mut s2 = store.uia_session("s2").await.unwrap().unwrap();
    s2.completed = vec!["m.login.registration_token".into()];
    s2.registration_token = Some("tok".into());
    s2.user_id = Some("@a:x".into());
    store.update_uia_session(&s2).await.unwrap();
    assert_eq!(store.uia_session("s2").await.unwrap().unwrap(), s2);
    store.delete_uia_session("s2").await.unwrap();
    assert!(store.uia_session("s2").await.unwrap().is_none());
}

/// A logged-in user's calls of one operation share one session, and one
/// user cannot hold more than their share of the table.
pub async fn uia_sessions_are_reused_and_bounded_per_user(store: DynStore) {
    let session = |id: &str, user: Option<&str>, operation: &str| UiaSession {
        session_id: id.into(),
        operation: operation.into(),
        user_id: user.map(str::to_owned),
        completed: vec![],
        registration_token: None,
        created_ts: 1_000,
    };
    let limits = UiaSessionLimits { max_sessions: 10, max_per_user: 2 };
    let first = store.open_uia_session(&session("a1", Some("@a:x"), "delete_devices"), 0, limits).await.unwrap();
    assert_eq!(first.session_id, "a1");
    let mut progressed = first.clone();
    progressed.completed = vec!["m.login.password".into()];
    store.update_uia_session(&progressed).await.unwrap();
    // The same user and operation: the open session, with its progress.
    let again = store.open_uia_session(&session("a2", Some("@a:x"), "delete_devices"), 0, limits).await.unwrap();
    assert_eq!(again, progressed);
    assert!(store.uia_session("a2").await.unwrap().is_none(), "no second row");
    // Another operation of theirs is a session of its own, up to their cap.
    store.open_uia_session(&session("a3", Some("@a:x"), "change_password"), 0, limits).await.unwrap();
    let over = store.open_uia_session(&session("a4", Some("@a:x"), "deactivate"), 0, limits).await;
    assert!(matches!(over, Err(StoreError::TooManyUiaSessions)), "{over:?}");
    // Others are not held back by them, nor registrations (no user).
    store.open_uia_session(&session("b1", Some("@b:x"), "deactivate"), 0, limits).await.unwrap();
    store.open_uia_session(&session("r1", None, "register"), 0, limits).await.unwrap();
    let second_registration = store.open_uia_session(&session("r2", None, "register"), 0, limits).await.unwrap();
    assert_eq!(second_registration.session_id, "r2", "registrations have no user to share a session with");
    // Expired sessions are not reused.
    let later = store.open_uia_session(&session("a5", Some("@a:x"), "delete_devices"), 2_000, limits).await.unwrap();
    assert_eq!(later.session_id, "a5");
}

pub(crate) fn room(id: &str) -> NewRoom {
    NewRoom { room_id: id.into(), room_version: RoomVersionId::V11, creator: "@alice:x".into(), created_ts: 1_000 }
}

/// An event of `room`; the JSON is whatever the store is given, kept
/// byte for byte.
pub(crate) fn event(room: &str, id: &str, event_type: &str, state_key: Option<&str>, depth: u64) -> NewEvent {
    let json = json!({
        "event_id": id,
        "room_id": room,
        "type": event_type,
        "state_key": state_key,
        "sender": "@alice:x",
        "depth": depth,
        "content": {},
    });
    NewEvent {
        event_id: id.into(),
        room_id: room.into(),
        event_type: event_type.into(),
        state_key: state_key.map(Into::into),
        sender: "@alice:x".into(),
        origin_server_ts: 1_000 + depth,
        depth,
        json: json.to_string(),
        membership: None,
        redacts: None,
        txn: None,
        search_text: Vec::new(),
        notifications: Vec::new(),
        relates_to: None,
    }
}

pub(crate) fn member(room: &str, id: &str, user: &str, membership: &str, depth: u64) -> NewEvent {
    let mut e = event(room, id, "m.room.member", Some(user), depth);
    e.sender = user.into();
    e.membership = Some(membership.into());
    e.json =
        json!({"event_id": id, "type": "m.room.member", "state_key": user, "content": {"membership": membership}}).to_string();
    e
}

pub(crate) fn message(room: &str, id: &str, depth: u64) -> NewEvent {
    let mut e = event(room, id, "m.room.message", None, depth);
    e.json = json!({"event_id": id, "type": "m.room.message", "content": {"msgtype": "m.text", "body": id}}).to_string();
    e
}

fn ids(events: &[StoredEvent]) -> Vec<&str> {
    events.iter().map(|e| e.event_id.as_str()).collect()
}

fn positions(events: &[StoredEvent]) -> Vec<u64> {
    events.iter().map(|e| e.stream_pos).collect()
}

fn txn(device: &str, id: &str) -> TxnKey {
    TxnKey { user_id: "@alice:x".into(), device_id: device.into(), txn_id: id.into() }
}

pub async fn member_summaries_count_and_pick_heroes(store: DynStore) {
    let r = "!r:x";
    store
        .create_room(room(r), vec![event(r, "$create", "m.room.create", Some(""), 1), member(r, "$alice", "@alice:x", "join", 2)])
        .await
        .unwrap();
    let summary = |user: &'static str, heroes: usize| {
        let store = store.clone();
        async move { store.member_summary(r, user, heroes).await.unwrap() }
    };
    // Alone: nobody else to name the room after.
    assert_eq!(summary("@alice:x", 5).await, MemberSummary { joined: 1, invited: 0, heroes: vec![] });
    // In stream order ("@Zed" first although it sorts first by bytes too,
    // "@bob" before "@amy" by position), never the asking user.
    let steps = [
        member(r, "$zed", "@Zed:x", "join", 3),
        member(r, "$bob", "@bob:x", "invite", 4),
        member(r, "$amy", "@amy:x", "join", 5),
        member(r, "$cat", "@cat:x", "leave", 6),
        member(r, "$dan", "@dan:x", "ban", 7),
    ];
    let mut prev = "$alice".to_owned();
    for e in steps {
        let id = e.event_id.clone();
        store.append_event(e, std::slice::from_ref(&prev)).await.unwrap();
        prev = id;
    }
    let s = summary("@alice:x", 5).await;
    assert_eq!((s.joined, s.invited), (3, 1));
    assert_eq!(s.heroes, ["@Zed:x", "@bob:x", "@amy:x"]);
    assert_eq!(summary("@amy:x", 2).await.heroes, ["@alice:x", "@Zed:x"]);
    assert!(summary("@alice:x", 0).await.heroes.is_empty());
    // Everyone else gone: the ones who left or were banned name it.
    for (id, user, depth) in [("$zedleft", "@Zed:x", 8), ("$bobleft", "@bob:x", 9), ("$amyleft", "@amy:x", 10)] {
        store.append_event(member(r, id, user, "leave", depth), std::slice::from_ref(&prev)).await.unwrap();
        prev = id.to_owned();
    }
    let s = summary("@alice:x", 5).await;
    assert_eq!((s.joined, s.invited), (1, 0));
    assert_eq!(s.heroes, ["@cat:x", "@dan:x", "@Zed:x", "@bob:x", "@amy:x"]);
    assert_eq!(store.member_summary("!nope:x", "@alice:x", 5).await.unwrap(), MemberSummary::default());

    // Lazy-loading's state: the same as the whole state without the member
    // events of anyone not asked for, now and in the past.
    for at in [None, Some(4), Some(8)] {
        for asked in [vec![], vec!["@bob:x".to_owned()], vec!["@Zed:x".to_owned(), "@alice:x".to_owned(), "@nobody:x".to_owned()]]
        {
            let whole = store.state_at(r, at).await.unwrap();
            let expected: Vec<StoredEvent> = whole
                .into_iter()
                .filter(|e| e.event_type != "m.room.member" || e.state_key.as_ref().is_some_and(|k| asked.contains(k)))
                .collect();
            assert_eq!(store.state_at_with_members(r, at, &asked).await.unwrap(), expected, "at {at:?}, asked {asked:?}");
        }
    }
}

pub async fn rooms_changed_lists_rooms_with_news(store: DynStore) {
    let sorted = |rooms: Option<Vec<String>>| {
        rooms.map(|mut r| {
            r.sort();
            r
        })
    };
    for r in ["!a:x", "!b:x", "!c:x"] {
        store
            .create_room(
                room(r),
                vec![
                    event(r, &format!("$c{r}"), "m.room.create", Some(""), 1),
                    member(r, &format!("$j{r}"), "@alice:x", "join", 2),
                ],
            )
            .await
            .unwrap();
    }
    // Positions: !a 1-2, !b 3-4, !c 5-6; then a message in !a at 7.
    store.append_event(message("!a:x", "$m", 3), &["$j!a:x".into()]).await.unwrap();
    let receipt = NewReceipt {
        room_id: "!c:x".into(),
        user_id: "@alice:x".into(),
        receipt_type: "m.read".into(),
        thread_id: None,
        event_id: "$j!c:x".into(),
        ts: 1,
    };
    let receipt_pos = store.set_receipt(receipt, 10).await.unwrap();
    let changed = |events, receipts, limit| {
        let store = store.clone();
        async move { sorted(store.rooms_changed(events, receipts, limit).await.unwrap()) }
    };
    assert_eq!(changed((6, 7), (receipt_pos, receipt_pos), 10).await, Some(vec!["!a:x".to_owned()]));
    assert_eq!(changed((2, 4), (0, 0), 10).await, Some(vec!["!b:x".to_owned()]));
    assert_eq!(changed((6, 7), (receipt_pos - 1, receipt_pos), 10).await, Some(vec!["!a:x".to_owned(), "!c:x".to_owned()]));
    assert_eq!(changed((0, 7), (0, receipt_pos), 3).await, Some(vec!["!a:x".to_owned(), "!b:x".to_owned(), "!c:x".to_owned()]));
    assert_eq!(changed((0, 7), (0, receipt_pos), 2).await, None, "more rooms than the limit");
    assert_eq!(changed((7, 7), (receipt_pos, receipt_pos), 10).await, Some(vec![]));
}

pub async fn push_rules_are_read_per_user_and_per_room(store: DynStore) {
    let r = "!r:x";
    store
        .create_room(room(r), vec![event(r, "$create", "m.room.create", Some(""), 1), member(r, "$alice", "@alice:x", "join", 2)])
        .await
        .unwrap();
    let mut prev = "$alice".to_owned();
    for (id, user, membership, depth) in
        [("$bob", "@bob:x", "join", 3), ("$carol", "@carol:x", "join", 4), ("$carolleft", "@carol:x", "leave", 5)]
    {
        store.append_event(member(r, id, user, membership, depth), std::slice::from_ref(&prev)).await.unwrap();
        prev = id.to_owned();
    }
    for user in ["@alice:x", "@carol:x", "@dave:x"] {
        store.set_push_rules(user, &format!(r#"{{"override":[],"owner":"{user}"}}"#), account_data::LIMITS).await.unwrap();
    }
    let sorted = |mut rows: Vec<(String, String)>| {
        rows.sort();
        rows.into_iter().map(|(user, json)| (user, serde_json::from_str::<serde_json::Value>(&json).unwrap())).collect::<Vec<_>>()
    };
    // Joined members with rules of their own: not bob (defaults), not
    // carol (left), not dave (not in the room).
    assert_eq!(
        sorted(store.push_rules_in_room(r).await.unwrap()),
        [("@alice:x".to_owned(), json!({"override": [], "owner": "@alice:x"}))]
    );
    assert!(store.push_rules_in_room("!nope:x").await.unwrap().is_empty());
    // Every joined member, with rules or without, in user id order.
    let members = store.joined_members_with_push_rules(r).await.unwrap();
    let members: Vec<(&str, Option<serde_json::Value>)> =
        members.iter().map(|(u, rules)| (u.as_str(), rules.as_deref().map(|j| serde_json::from_str(j).unwrap()))).collect();
    assert_eq!(members, [("@alice:x", Some(json!({"override": [], "owner": "@alice:x"}))), ("@bob:x", None)]);
    assert!(store.joined_members_with_push_rules("!nope:x").await.unwrap().is_empty());
    let asked = ["@alice:x", "@bob:x", "@dave:x"].map(str::to_owned);
    let got = sorted(store.push_rules_of(&asked).await.unwrap());
    assert_eq!(got.iter().map(|(u, _)| u.as_str()).collect::<Vec<_>>(), ["@alice:x", "@dave:x"]);
    assert_eq!(got[1].1, json!({"override": [], "owner": "@dave:x"}));
}

pub async fn old_notifications_are_pruned_per_user(store: DynStore) {
    let notify = |mut e: NewEvent, ts: u64, users: &[&str]| {
        e.origin_server_ts = ts;
        e.notifications = users
            .iter()
            .map(|u| NewNotification { user_id: (*u).into(), actions_json: "[\"notify\"]".into(), highlight: false })
            .collect();
        e
    };
    for r in ["!a:x", "!b:x"] {
        let create = format!("$create{r}");
        store.create_room(room(r), vec![event(r, &create, "m.room.create", Some(""), 1)]).await.unwrap();
        let mut prev = create;
        let ids = [2, 3, 4].map(|n| format!("$m{n}{r}"));
        // Two old messages and a new one in each room, for bob and carol.
        append_chain(
            &store,
            &mut prev,
            vec![
                notify(message(r, &ids[0], 2), 1_000, &["@bob:x", "@carol:x"]),
                notify(message(r, &ids[1], 3), 2_000, &["@bob:x", "@carol:x"]),
                notify(message(r, &ids[2], 4), 9_000, &["@bob:x", "@carol:x"]),
            ],
        )
        .await;
    }
    let count = |user: &'static str| {
        let store = store.clone();
        async move { store.notifications(user, None, 100, false).await.unwrap().len() }
    };
    assert_eq!((count("@bob:x").await, count("@carol:x").await), (6, 6));
    // One user per call, in user id order: bob, then carol, then done.
    let (deleted, last) = store.prune_notifications(5_000, None, 1).await.unwrap();
    assert_eq!((deleted, last.as_deref()), (4, Some("@bob:x")));
    assert_eq!((count("@bob:x").await, count("@carol:x").await), (2, 6));
    assert_eq!(store.notification_counts("@bob:x", "!a:x", 0).await.unwrap(), (1, 0), "the new one is still unread");
    let (deleted, last) = store.prune_notifications(5_000, last.as_deref(), 1).await.unwrap();
    assert_eq!((deleted, last.as_deref()), (4, Some("@carol:x")));
    assert_eq!(store.prune_notifications(5_000, last.as_deref(), 1).await.unwrap(), (0, None));
    // Stamped exactly at the cut: kept; nothing before the first stamp.
    assert_eq!(store.prune_notifications(9_000, None, 10).await.unwrap(), (0, None));
    assert_eq!(count("@carol:x").await, 2);
    assert_eq!(store.prune_notifications(9_001, None, 10).await.unwrap(), (4, None));
    assert_eq!((count("@bob:x").await, count("@carol:x").await), (0, 0));
}

/// A room of `members` joined members: reads of its state or member list
/// grow with it.
pub async fn big_room(store: &DynStore, r: &str, members: usize) {
    let mut events = vec![event(r, &format!("$create{r}"), "m.room.create", Some(""), 1)];
    for n in 0..members {
        events.push(member(r, &format!("$m{n}{r}"), &format!("@u{n}:x"), "join", n as u64 + 2));
    }
    store.create_room(room(r), events).await.unwrap();
}

/// Many reads of a big room's whole state at once do not hold every
/// connection: a small read (an access-token check is one) still finds
/// one while most of them wait.
pub async fn heavy_reads_leave_a_connection_for_small_ones(store: DynStore) {
    const HEAVY: usize = 16;
    let members = 8_000;
    big_room(&store, "!big:x", members).await;
    store.create_account(account("@alice:x"), None, None, 1).await.unwrap();
    let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let heavy: Vec<_> = (0..HEAVY)
        .map(|_| {
            let (store, started) = (store.clone(), started.clone());
            tokio::spawn(async move {
                // Counted in the same poll that queues the read for a
                // connection.
                started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                store.state_at("!big:x", None).await.map(|state| state.len())
            })
        })
        .collect();
    for _ in 0..1_000 {
        if started.load(std::sync::atomic::Ordering::SeqCst) == HEAVY {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    assert_eq!(started.load(std::sync::atomic::Ordering::SeqCst), HEAVY);
    for _ in 0..3 {
        assert!(store.account("@alice:x").await.unwrap().is_some());
    }
    let waiting = heavy.iter().filter(|h| !h.is_finished()).count();
    assert!(waiting > HEAVY / 2, "the small reads waited for {} of {HEAVY} heavy ones", HEAVY - waiting);
    for h in heavy {
        assert_eq!(h.await.unwrap().unwrap(), members + 1);
    }
}

pub async fn stream_positions_read_every_stream(store: DynStore) {
    assert_eq!(store.stream_positions().await.unwrap(), StreamPositions::default());
    let r = "!r:x";
    store
        .create_room(room(r), vec![event(r, "$create", "m.room.create", Some(""), 1), member(r, "$alice", "@alice:x", "join", 2)])
        .await
        .unwrap();
    store.set_account_data("@alice:x", None, "m.direct", "{}", account_data::LIMITS).await.unwrap();
    let got = store.stream_positions().await.unwrap();
    assert_eq!(
        got,
        StreamPositions {
            events: store.current_stream_pos().await.unwrap(),
            account_data: store.current_account_data_pos().await.unwrap(),
            receipts: store.current_receipt_pos().await.unwrap(),
            // No keys changed, no message was sent, no thread followed.
            device_lists: 0,
            to_device: 0,
            thread_subscriptions: 0,
        }
    );
    assert_eq!((got.events, got.receipts), (2, 0));
    assert!(got.account_data > 0);
}

/// A room known only through an invite is replaced whole by the room a
/// join made known; a room with a create event is no stub.
pub async fn stub_rooms_are_replaced_whole(store: DynStore) {
    let r = "!remote:y";
    store.create_room(room(r), vec![member(r, "$invite", "@bob:x", "invite", 5)]).await.unwrap();
    let members = store.members_of_room(r).await.unwrap();
    assert_eq!(members.len(), 1);
    let chain = vec![
        event(r, "$rcreate", "m.room.create", Some(""), 1),
        member(r, "$ralice", "@alice:y", "join", 2),
        member(r, "$rbob", "@bob:x", "join", 6),
    ];
    let pos = store.replace_stub_room(room(r), chain).await.unwrap();
    assert!(pos > 1);
    let state = store.state_at(r, None).await.unwrap();
    assert_eq!(ids(&state), vec!["$rcreate", "$ralice", "$rbob"]);
    assert!(store.event("$invite").await.unwrap().is_none(), "the stub's events are gone");
    assert_eq!(store.room(r).await.unwrap().unwrap().forward_extremities, vec!["$rbob".to_owned()]);
    // Now a real room: not replaced again, nothing changed.
    let again = store.replace_stub_room(room(r), vec![event(r, "$other", "m.room.create", Some(""), 1)]).await;
    assert!(matches!(again, Err(StoreError::UnknownRoom)), "{again:?}");
    let missing = store.replace_stub_room(room("!none:y"), vec![event("!none:y", "$n", "m.room.create", Some(""), 1)]).await;
    assert!(matches!(missing, Err(StoreError::UnknownRoom)), "{missing:?}");
    assert_eq!(ids(&store.state_at(r, None).await.unwrap()), vec!["$rcreate", "$ralice", "$rbob"]);

    // A knock's stub holds some of the room's state, a searchable name
    // among it; the joined room's copy of that event replaces it.
    let k = "!knocked:y";
    let named = || {
        let mut name = event(k, "$kname", "m.room.name", Some(""), 3);
        name.search_text = vec![("content.name".to_owned(), "Behind the door".to_owned())];
        name
    };
    store.create_room(room(k), vec![named(), member(k, "$kknock", "@bob:x", "knock", 5)]).await.unwrap();
    let chain = vec![
        event(k, "$kcreate", "m.room.create", Some(""), 1),
        member(k, "$kalice", "@alice:y", "join", 2),
        named(),
        member(k, "$kbob", "@bob:x", "join", 6),
    ];
    store.replace_stub_room(room(k), chain).await.unwrap();
    assert_eq!(ids(&store.state_at(k, None).await.unwrap()), vec!["$kcreate", "$kalice", "$kbob", "$kname"]);
}

pub async fn rooms_create_append_and_read(store: DynStore) {
    let r = "!r:x";
    assert_eq!(store.current_stream_pos().await.unwrap(), 0);
    assert!(store.room(r).await.unwrap().is_none());
    let created = store
        .create_room(
            room(r),
            vec![
                event(r, "$create", "m.room.create", Some(""), 1),
                member(r, "$alice", "@alice:x", "join", 2),
                event(r, "$pl", "m.room.power_levels", Some(""), 3),
            ],
        )
        .await
        .unwrap();
    assert_eq!(created, 3);
    assert_eq!(store.current_stream_pos().await.unwrap(), 3);
    let again = store.create_room(room(r), vec![event(r, "$create2", "m.room.create", Some(""), 1)]).await;
    assert!(matches!(again, Err(StoreError::RoomIdTaken)), "{again:?}");
    assert!(store.event("$create2").await.unwrap().is_none());

    let info = store.room(r).await.unwrap().unwrap();
    assert_eq!(
        info,
        RoomInfo {
            room_id: r.into(),
            room_version: RoomVersionId::V11,
            creator: "@alice:x".into(),
            created_ts: 1_000,
            forward_extremities: vec!["$pl".into()],
            max_depth: 3,
        }
    );

    // Positions: 4 message, 5 name, 6 bob joins, 7 bob leaves, 8 new name,
    // 9 "@Zed" joins (byte order puts it before "@alice").
    let m1 = message(r, "$m1", 4);
    assert_eq!(store.append_event(m1.clone(), &["$pl".into()]).await.unwrap(), 4);
    let steps = [
        event(r, "$name1", "m.room.name", Some(""), 5),
        member(r, "$bobjoin", "@bob:x", "join", 6),
        member(r, "$bobleave", "@bob:x", "leave", 7),
        event(r, "$name2", "m.room.name", Some(""), 8),
        member(r, "$zed", "@Zed:x", "join", 9),
    ];
    let mut prev = "$m1".to_owned();
    let mut last_pos = 4;
    for e in steps {
        let id = e.event_id.clone();
        let pos = store.append_event(e, std::slice::from_ref(&prev)).await.unwrap();
        assert!(pos > last_pos, "positions increase");
        (prev, last_pos) = (id, pos);
    }
    assert_eq!(last_pos, 9);
    assert_eq!(store.current_stream_pos().await.unwrap(), 9);
    let info = store.room(r).await.unwrap().unwrap();
    assert_eq!((info.forward_extremities, info.max_depth), (vec!["$zed".to_owned()], 9));

    let got = store.event("$m1").await.unwrap().unwrap();
    assert_eq!(
        got,
        StoredEvent {
            event_id: "$m1".into(),
            room_id: r.into(),
            event_type: "m.room.message".into(),
            state_key: None,
            sender: "@alice:x".into(),
            origin_server_ts: 1_004,
            depth: 4,
            json: m1.json.clone(),
            membership: None,
            stream_pos: 4,
            redacted_by: None,
            txn: None,
        }
    );
    let bob = store.event("$bobjoin").await.unwrap().unwrap();
    assert_eq!(
        (bob.state_key.as_deref(), bob.membership.as_ref().map(MembershipState::as_str), bob.stream_pos),
        (Some("@bob:x"), Some("join"), 6)
    );
    assert!(store.event("$missing").await.unwrap().is_none());

    // State now and in the past, sorted by (type, state_key).
    let now = store.state_at(r, None).await.unwrap();
    assert_eq!(ids(&now), ["$create", "$zed", "$alice", "$bobleave", "$name2", "$pl"]);
    assert_eq!(store.state_at(r, Some(9)).await.unwrap(), now);
    assert_eq!(ids(&store.state_at(r, Some(3)).await.unwrap()), ["$create", "$alice", "$pl"]);
    assert_eq!(ids(&store.state_at(r, Some(4)).await.unwrap()), ["$create", "$alice", "$pl"]);
    assert_eq!(ids(&store.state_at(r, Some(6)).await.unwrap()), ["$create", "$alice", "$bobjoin", "$name1", "$pl"]);
    assert_eq!(ids(&store.state_at(r, Some(7)).await.unwrap()), ["$create", "$alice", "$bobleave", "$name1", "$pl"]);
    assert_eq!(ids(&store.state_at(r, Some(1)).await.unwrap()), ["$create"]);
    assert!(store.state_at(r, Some(0)).await.unwrap().is_empty());
    assert!(store.state_at("!nope:x", None).await.unwrap().is_empty());

    let name = |at| {
        let store = store.clone();
        async move { store.state_event(r, "m.room.name", "", at).await.unwrap().map(|e| e.event_id) }
    };
    assert_eq!(name(None).await.as_deref(), Some("$name2"));
    assert_eq!(name(Some(4)).await, None);
    assert_eq!(name(Some(5)).await.as_deref(), Some("$name1"));
    assert_eq!(name(Some(7)).await.as_deref(), Some("$name1"));
    assert_eq!(name(Some(8)).await.as_deref(), Some("$name2"));
    let bob_at_6 = store.state_event(r, "m.room.member", "@bob:x", Some(6)).await.unwrap().unwrap();
    assert_eq!(bob_at_6.membership.as_ref().map(MembershipState::as_str), Some("join"));
    assert!(store.state_event(r, "m.room.member", "@carol:x", None).await.unwrap().is_none());
    let key = |t: &str, k: &str| (t.to_owned(), k.to_owned());
    let keys =
        [key("m.room.name", ""), key("m.room.member", "@bob:x"), key("m.room.member", "@carol:x"), key("m.room.create", "")];
    let found = store.current_state_events(r, &keys).await.unwrap();
    let mut some = ids(&found);
    some.sort();
    assert_eq!(some, ["$bobleave", "$create", "$name2"]);
    assert!(store.current_state_events(r, &[]).await.unwrap().is_empty());
    assert!(store.current_state_events("!nope:x", &keys).await.unwrap().is_empty());
    let too_many = vec![key("m.room.name", ""); MAX_STATE_KEYS_PER_READ + 1];
    assert!(matches!(store.current_state_events(r, &too_many).await, Err(StoreError::TooManyStateKeys)));

    // Only the last change per key, and only if still in force at up_to.
    assert_eq!(ids(&store.state_changes(r, 3, 6).await.unwrap()), ["$name1", "$bobjoin"]);
    assert_eq!(ids(&store.state_changes(r, 3, 9).await.unwrap()), ["$bobleave", "$name2", "$zed"]);
    assert_eq!(ids(&store.state_changes(r, 5, 7).await.unwrap()), ["$bobleave"]);
    assert_eq!(positions(&store.state_changes(r, 6, 8).await.unwrap()), [7, 8]);
    assert!(store.state_changes(r, 9, 9).await.unwrap().is_empty());
    assert!(store.state_changes(r, 3, 4).await.unwrap().is_empty());

    // Timeline windows in both directions.
    assert_eq!(positions(&store.room_events(r, 0, 9, 3, true).await.unwrap()), [9, 8, 7]);
    assert_eq!(positions(&store.room_events(r, 0, 9, 3, false).await.unwrap()), [1, 2, 3]);
    assert_eq!(positions(&store.room_events(r, 3, 5, 10, false).await.unwrap()), [4, 5]);
    assert_eq!(positions(&store.room_events(r, 3, 5, 10, true).await.unwrap()), [5, 4]);
    assert_eq!(positions(&store.room_events(r, 0, 9, 100, false).await.unwrap()), (1..=9).collect::<Vec<_>>());
    assert_eq!(store.room_events(r, 0, 9, 100, false).await.unwrap()[3], got);
    assert!(store.room_events(r, 5, 5, 10, true).await.unwrap().is_empty());
    assert!(store.room_events(r, 0, 9, 0, true).await.unwrap().is_empty());
    assert!(store.room_events("!nope:x", 0, 9, 10, true).await.unwrap().is_empty());

    // A second room ("!a" sorts first) that alice is in too.
    let a = "!a:x";
    let pos = store
        .create_room(
            room(a),
            vec![event(a, "$acreate", "m.room.create", Some(""), 1), member(a, "$ajoin", "@alice:x", "join", 2)],
        )
        .await
        .unwrap();
    assert_eq!(pos, 11);
    assert!(store.room_events(r, 9, 11, 10, false).await.unwrap().is_empty());
    let alice = store.memberships_of_user("@alice:x").await.unwrap();
    let m = |room: &str, user: &str, membership: &str, event_id: &str, stream_pos| Membership {
        room_id: room.into(),
        user_id: user.into(),
        membership: membership.into(),
        event_id: event_id.into(),
        stream_pos,
    };
    assert_eq!(alice, [m(a, "@alice:x", "join", "$ajoin", 11), m(r, "@alice:x", "join", "$alice", 2)]);
    assert_eq!(store.memberships_of_user("@bob:x").await.unwrap(), [m(r, "@bob:x", "leave", "$bobleave", 7)]);
    assert!(store.memberships_of_user("@carol:x").await.unwrap().is_empty());
    assert_eq!(
        store.members_of_room(r).await.unwrap(),
        [m(r, "@Zed:x", "join", "$zed", 9), m(r, "@alice:x", "join", "$alice", 2), m(r, "@bob:x", "leave", "$bobleave", 7)]
    );
    assert_eq!(store.members_of_room(a).await.unwrap(), [m(a, "@alice:x", "join", "$ajoin", 11)]);
    assert_eq!(store.current_stream_pos().await.unwrap(), 11);

    // Malformed creations store nothing.
    let empty = store.create_room(room("!empty:x"), vec![]).await;
    assert!(matches!(empty, Err(StoreError::Contract(_))), "{empty:?}");
    let elsewhere = store.create_room(room("!b:x"), vec![event("!c:x", "$bc", "m.room.create", Some(""), 1)]).await;
    assert!(matches!(elsewhere, Err(StoreError::Contract(_))), "{elsewhere:?}");
    assert!(store.room("!b:x").await.unwrap().is_none());
    assert_eq!(store.current_stream_pos().await.unwrap(), 11);
}

pub async fn append_checks_extremities_and_txn(store: DynStore) {
    let r = "!r:x";
    store.create_room(room(r), vec![event(r, "$create", "m.room.create", Some(""), 1)]).await.unwrap();
    assert_eq!(store.append_event(message(r, "$a", 2), &["$create".into()]).await.unwrap(), 2);

    // Someone else appended $a: a send built on $create is refused whole.
    let mut stale = event(r, "$b", "m.room.topic", Some(""), 2);
    stale.txn = Some(txn("DEV", "t0"));
    let refused = store.append_event(stale, &["$create".into()]).await;
    assert!(matches!(refused, Err(StoreError::StaleExtremities)), "{refused:?}");
    for prev in [vec![], vec!["$a".to_owned(), "$create".to_owned()], vec!["$other".to_owned()]] {
        let refused = store.append_event(message(r, "$b", 3), &prev).await;
        assert!(matches!(refused, Err(StoreError::StaleExtremities)), "{prev:?}: {refused:?}");
    }
    assert!(store.event("$b").await.unwrap().is_none());
    assert!(store.event_for_txn(&txn("DEV", "t0")).await.unwrap().is_none());
    assert!(store.state_event(r, "m.room.topic", "", None).await.unwrap().is_none());
    assert_eq!(store.room(r).await.unwrap().unwrap().forward_extremities, ["$a"]);
    assert_eq!(store.room(r).await.unwrap().unwrap().max_depth, 2);
    assert_eq!(store.current_stream_pos().await.unwrap(), 2);

    let missing = store.append_event(message("!nope:x", "$n", 1), &[]).await;
    assert!(matches!(missing, Err(StoreError::UnknownRoom)), "{missing:?}");

    // Transaction ids are per device.
    let mut sent = message(r, "$t1", 3);
    sent.txn = Some(txn("DEV", "t1"));
    assert_eq!(store.append_event(sent, &["$a".into()]).await.unwrap(), 3);
    assert_eq!(store.event_for_txn(&txn("DEV", "t1")).await.unwrap().as_deref(), Some("$t1"));
    assert_eq!(store.event("$t1").await.unwrap().unwrap().txn, Some(txn("DEV", "t1")));
    assert!(store.event_for_txn(&txn("OTHER", "t1")).await.unwrap().is_none());
    assert!(store.event_for_txn(&txn("DEV", "t2")).await.unwrap().is_none());
    let mut retry = event(r, "$t1again", "m.room.topic", Some(""), 4);
    retry.txn = Some(txn("DEV", "t1"));
    let refused = store.append_event(retry, &["$t1".into()]).await;
    assert!(matches!(refused, Err(StoreError::TransactionIdUsed)), "{refused:?}");
    assert!(store.event("$t1again").await.unwrap().is_none());
    assert!(store.state_at(r, None).await.unwrap().iter().all(|e| e.event_type != "m.room.topic"));
    assert_eq!(store.room(r).await.unwrap().unwrap().forward_extremities, ["$t1"]);
    assert_eq!(store.current_stream_pos().await.unwrap(), 3);

    let mut other_device = message(r, "$t1other", 4);
    other_device.txn = Some(txn("OTHER", "t1"));
    assert_eq!(store.append_event(other_device, &["$t1".into()]).await.unwrap(), 4);
    assert_eq!(store.event_for_txn(&txn("OTHER", "t1")).await.unwrap().as_deref(), Some("$t1other"));

    // An event id is stored once.
    let dup = store.append_event(message(r, "$a", 5), &["$t1other".into()]).await;
    assert!(matches!(dup, Err(StoreError::EventIdTaken)), "{dup:?}");
    assert_eq!(store.event("$a").await.unwrap().unwrap().stream_pos, 2);

    // Failed appends gave their positions back: the next one is dense.
    assert_eq!(store.append_event(message(r, "$c", 5), &["$t1other".into()]).await.unwrap(), 5);
    assert_eq!(positions(&store.room_events(r, 0, 5, 10, false).await.unwrap()), [1, 2, 3, 4, 5]);
}

pub async fn redactions_are_linked(store: DynStore) {
    let r = "!r:x";
    store
        .create_room(
            room(r),
            vec![event(r, "$create", "m.room.create", Some(""), 1), event(r, "$name", "m.room.name", Some(""), 2)],
        )
        .await
        .unwrap();
    store.append_event(message(r, "$m", 3), &["$name".into()]).await.unwrap();
    let redaction = |id: &str, target: &str, depth| {
        let mut e = event(r, id, "m.room.redaction", None, depth);
        e.redacts = Some(target.into());
        e
    };
    store.append_event(redaction("$r1", "$m", 4), &["$m".into()]).await.unwrap();
    assert_eq!(store.event("$m").await.unwrap().unwrap().redacted_by.as_deref(), Some("$r1"));
    // A second redaction is stored as an event, but the first one stays the link.
    store.append_event(redaction("$r2", "$m", 5), &["$r1".into()]).await.unwrap();
    assert_eq!(store.event("$m").await.unwrap().unwrap().redacted_by.as_deref(), Some("$r1"));
    assert!(store.event("$r2").await.unwrap().unwrap().redacted_by.is_none());
    let timeline = store.room_events(r, 0, 10, 10, false).await.unwrap();
    assert_eq!(ids(&timeline), ["$create", "$name", "$m", "$r1", "$r2"]);
    assert_eq!(timeline[2].redacted_by.as_deref(), Some("$r1"));
    assert!(timeline.iter().filter(|e| e.event_id != "$m").all(|e| e.redacted_by.is_none()));

    // Redacted state stays state, marked as redacted.
    store.append_event(redaction("$r3", "$name", 6), &["$r2".into()]).await.unwrap();
    let name = store.state_event(r, "m.room.name", "", None).await.unwrap().unwrap();
    assert_eq!((name.event_id.as_str(), name.redacted_by.as_deref()), ("$name", Some("$r3")));
    let state = store.state_at(r, Some(2)).await.unwrap();
    assert_eq!(state.iter().map(|e| e.redacted_by.as_deref()).collect::<Vec<_>>(), [None, Some("$r3")]);
    assert_eq!(store.state_changes(r, 0, 6).await.unwrap()[1].redacted_by.as_deref(), Some("$r3"));
}

pub async fn racing_appends_to_one_room_let_exactly_one_win(store: DynStore) {
    let r = "!r:x";
    store.create_room(room(r), vec![event(r, "$create", "m.room.create", Some(""), 1)]).await.unwrap();
    let mut prev = "$create".to_owned();
    for round in 0..5 {
        let mut tasks = Vec::new();
        for n in 0..6 {
            let (store, prev) = (Arc::clone(&store), prev.clone());
            tasks.push(tokio::spawn(async move {
                let id = format!("$r{round}n{n}");
                let e = event(r, &id, "m.room.topic", Some(""), round + 2);
                store.append_event(e, &[prev]).await.map(|_| id)
            }));
        }
        let mut winners = Vec::new();
        for task in tasks {
            match task.await.unwrap() {
                Ok(id) => winners.push(id),
                Err(StoreError::StaleExtremities) => {}
                Err(e) => panic!("unexpected {e:?}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        prev = winners.pop().unwrap();
        assert_eq!(store.room(r).await.unwrap().unwrap().forward_extremities, [prev.clone()]);
        assert_eq!(store.state_event(r, "m.room.topic", "", None).await.unwrap().unwrap().event_id, prev);
    }
    assert_eq!(store.current_stream_pos().await.unwrap(), 6);
    assert_eq!(positions(&store.room_events(r, 0, 6, 10, false).await.unwrap()), [1, 2, 3, 4, 5, 6]);
}

/// Appends queued together share a transaction (both backends' group
/// commit). One of them whose transaction id is used fails alone with
/// `TransactionIdUsed`; the others, queued before and after it, commit
/// with dense positions, several rounds over.
pub async fn one_bad_append_among_concurrent_ones_fails_alone(store: DynStore) {
    const ROOMS: usize = 40;
    const ROUNDS: u64 = 3;
    let rooms: Vec<String> = (0..ROOMS).map(|n| format!("!batch{n}:x")).collect();
    for r in &rooms {
        store.create_room(room(r), vec![event(r, &format!("$create{r}"), "m.room.create", Some(""), 1)]).await.unwrap();
    }
    let mut used = message(&rooms[0], "$used", 2);
    used.txn = Some(txn("DEV", "used"));
    store.append_event(used, &[format!("$create{}", rooms[0])]).await.unwrap();
    for round in 0..ROUNDS {
        let before = store.current_stream_pos().await.unwrap();
        let bad = (round as usize * 13 + 7) % ROOMS;
        let mut appends = tokio::task::JoinSet::new();
        for (k, r) in rooms.iter().enumerate() {
            let prev = store.room(r).await.unwrap().unwrap().forward_extremities;
            let depth = store.room(r).await.unwrap().unwrap().max_depth + 1;
            let mut e = message(r, &format!("$r{round}m{k}"), depth);
            if k == bad {
                e.txn = Some(txn("DEV", "used"));
            }
            let store = Arc::clone(&store);
            appends.spawn(async move { (k, store.append_event(e, &prev).await) });
        }
        let mut committed = Vec::new();
        for (k, result) in appends.join_all().await {
            match result {
                Err(StoreError::TransactionIdUsed) if k == bad => {}
                Ok(pos) if k != bad => committed.push(pos),
                other => panic!("round {round}, append {k} (bad: {bad}): {other:?}"),
            }
        }
        committed.sort_unstable();
        assert_eq!(committed, (before + 1..before + ROOMS as u64).collect::<Vec<_>>(), "round {round}");
        assert!(store.event(&format!("$r{round}m{bad}")).await.unwrap().is_none());
        assert_eq!(store.event_for_txn(&txn("DEV", "used")).await.unwrap().as_deref(), Some("$used"));
    }
}

pub async fn concurrent_appends_to_different_rooms_keep_positions_dense_and_ordered(store: DynStore) {
    const ROOMS: usize = 8;
    const PER_ROOM: usize = 50;
    let rooms: Vec<String> = (0..ROOMS).map(|n| format!("!room{n}:x")).collect();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));

    // While the writers run, readers behave like syncing clients: each
    // reads the current position, then fetches what happened since its
    // previous one, all rooms at once. Every position up to the current one
    // must be there: a position seen before an earlier one is committed
    // would make a client skip that event for good.
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (store, rooms, done) = (Arc::clone(&store), rooms.clone(), Arc::clone(&done));
            tokio::spawn(async move {
                let (mut checks, mut since) = (0u32, 0);
                loop {
                    let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                    let current = store.current_stream_pos().await.unwrap();
                    assert!(current >= since, "the position went back from {since} to {current}");
                    let mut queries = tokio::task::JoinSet::new();
                    for room in &rooms {
                        let (store, room) = (Arc::clone(&store), room.clone());
                        queries.spawn(async move {
                            positions(&store.room_events(&room, since, current, usize::MAX, false).await.unwrap())
                        });
                    }
                    let mut seen: Vec<u64> = queries.join_all().await.into_iter().flatten().collect();
                    seen.sort_unstable();
                    assert_eq!(seen, (since + 1..=current).collect::<Vec<_>>(), "events visible in ({since}, {current}]");
                    (since, checks) = (current, checks + 1);
                    if finished {
                        return checks;
                    }
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();

    let mut writers = Vec::new();
    for room_id in rooms.clone() {
        let store = Arc::clone(&store);
        writers.push(tokio::spawn(async move {
            let create = format!("{room_id}/create");
            let mut got = vec![(
                create.clone(),
                store.create_room(room(&room_id), vec![event(&room_id, &create, "m.room.create", Some(""), 1)]).await.unwrap(),
            )];
            let mut prev = create;
            for n in 0..PER_ROOM {
                let id = format!("{room_id}/{n}");
                let e = if n % 5 == 0 {
                    event(&room_id, &id, "m.room.topic", Some(""), n as u64 + 2)
                } else {
                    message(&room_id, &id, n as u64 + 2)
                };
                let pos = store.append_event(e, &[prev]).await.unwrap();
                got.push((id.clone(), pos));
                prev = id;
            }
            got
        }));
    }
    let mut all = Vec::new();
    let mut per_room = Vec::new();
    for writer in writers {
        let got = writer.await.unwrap();
        assert!(got.windows(2).all(|w| w[0].1 < w[1].1), "a room's events get increasing positions");
        all.extend(got.iter().map(|(_, pos)| *pos));
        per_room.push(got);
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    for reader in readers {
        assert!(reader.await.unwrap() >= 1);
    }

    let total = (ROOMS * (PER_ROOM + 1)) as u64;
    all.sort_unstable();
    assert_eq!(all, (1..=total).collect::<Vec<_>>(), "dense, no duplicates");
    assert_eq!(store.current_stream_pos().await.unwrap(), total);
    for (room_id, got) in rooms.iter().zip(&per_room) {
        let stored = store.room_events(room_id, 0, total, 1_000, false).await.unwrap();
        let stored: Vec<(String, u64)> = stored.into_iter().map(|e| (e.event_id, e.stream_pos)).collect();
        assert_eq!(&stored, got);
        let topic = store.state_event(room_id, "m.room.topic", "", None).await.unwrap().unwrap();
        assert_eq!(topic.event_id, format!("{room_id}/{}", (PER_ROOM - 1) / 5 * 5));
    }
}

/// A child of `parent` sent by `sender`.
fn related(room: &str, id: &str, sender: &str, rel_type: &str, parent: &str, key: Option<&str>, depth: u64) -> NewEvent {
    let event_type = if rel_type == "m.annotation" { "m.reaction" } else { "m.room.message" };
    let mut e = event(room, id, event_type, None, depth);
    e.sender = sender.into();
    e.json = json!({
        "event_id": id,
        "type": event_type,
        "sender": sender,
        "content": {"m.relates_to": {"rel_type": rel_type, "event_id": parent, "key": key}},
    })
    .to_string();
    e.relates_to = Some(NewRelation { parent: parent.into(), rel_type: rel_type.into(), key: key.map(Into::into) });
    e
}

fn redaction_of(room: &str, id: &str, target: &str, depth: u64) -> NewEvent {
    let mut e = event(room, id, "m.room.redaction", None, depth);
    e.redacts = Some(target.into());
    e
}

/// Appends `events` one after the other on top of `prev`, which ends as
/// the last one's id; returns their positions.
async fn append_chain(store: &DynStore, prev: &mut String, events: Vec<NewEvent>) -> Vec<u64> {
    let mut positions = Vec::new();
    for e in events {
        let id = e.event_id.clone();
        positions.push(store.append_event(e, std::slice::from_ref(prev)).await.unwrap());
        *prev = id;
    }
    positions
}

fn relations_query(room: &str, parent: &str) -> RelationsQuery {
    RelationsQuery {
        room_id: room.into(),
        parent: parent.into(),
        rel_type: None,
        event_type: None,
        after: 0,
        up_to: u64::MAX / 2,
        limit: 100,
        newest_first: true,
        max_depth: 1,
    }
}

pub async fn relations_are_recorded_filtered_and_paginated(store: DynStore) {
    let r = "!r:x";
    store.create_room(room(r), vec![event(r, "$create", "m.room.create", Some(""), 1)]).await.unwrap();
    let mut prev = "$create".to_owned();
    // Positions: 2 root, 3 thread reply, 4 reaction, 5 reference, 6 reply,
    // 7 reaction to the reply (depth 2), 8 reference to that reaction
    // (depth 3), 9 unrelated message.
    let positions = append_chain(
        &store,
        &mut prev,
        vec![
            message(r, "$root", 2),
            related(r, "$t1", "@bob:x", "m.thread", "$root", None, 3),
            related(r, "$like", "@bob:x", "m.annotation", "$root", Some("👍"), 4),
            related(r, "$ref", "@alice:x", "m.reference", "$root", None, 5),
            related(r, "$t2", "@alice:x", "m.thread", "$root", None, 6),
            related(r, "$like2", "@alice:x", "m.annotation", "$t2", Some("👍"), 7),
            related(r, "$deep", "@alice:x", "m.reference", "$like2", None, 8),
            message(r, "$other", 9),
        ],
    )
    .await;
    assert_eq!(positions, (2..=9).collect::<Vec<_>>());

    let q = relations_query(r, "$root");
    assert_eq!(ids(&store.relations(&q).await.unwrap()), ["$t2", "$ref", "$like", "$t1"]);
    let oldest_first = RelationsQuery { newest_first: false, ..q.clone() };
    assert_eq!(ids(&store.relations(&oldest_first).await.unwrap()), ["$t1", "$like", "$ref", "$t2"]);
    let threads = RelationsQuery { rel_type: Some("m.thread".into()), ..q.clone() };
    assert_eq!(ids(&store.relations(&threads).await.unwrap()), ["$t2", "$t1"]);
    let reactions = RelationsQuery { rel_type: Some("m.annotation".into()), event_type: Some("m.reaction".into()), ..q.clone() };
    assert_eq!(ids(&store.relations(&reactions).await.unwrap()), ["$like"]);
    let none = RelationsQuery { rel_type: Some("m.annotation".into()), event_type: Some("m.room.message".into()), ..q.clone() };
    assert!(store.relations(&none).await.unwrap().is_empty());

    // Pages by position, in both directions.
    let page = |after, up_to, limit, newest_first| RelationsQuery { after, up_to, limit, newest_first, ..q.clone() };
    assert_eq!(ids(&store.relations(&page(0, 9, 2, true)).await.unwrap()), ["$t2", "$ref"]);
    assert_eq!(ids(&store.relations(&page(0, 4, 2, true)).await.unwrap()), ["$like", "$t1"]);
    assert_eq!(ids(&store.relations(&page(3, 9, 2, false)).await.unwrap()), ["$like", "$ref"]);
    assert_eq!(ids(&store.relations(&page(5, 9, 2, false)).await.unwrap()), ["$t2"]);
    assert!(store.relations(&page(6, 9, 2, false)).await.unwrap().is_empty());
    assert!(store.relations(&page(0, 9, 0, true)).await.unwrap().is_empty());

    // Recursion follows relations of relations, up to the depth asked.
    let deep = |max_depth| RelationsQuery { max_depth, ..q.clone() };
    assert_eq!(ids(&store.relations(&deep(2)).await.unwrap()), ["$like2", "$t2", "$ref", "$like", "$t1"]);
    assert_eq!(ids(&store.relations(&deep(3)).await.unwrap()), ["$deep", "$like2", "$t2", "$ref", "$like", "$t1"]);
    assert_eq!(store.relations(&deep(10)).await.unwrap(), store.relations(&deep(3)).await.unwrap());
    let deep_refs = RelationsQuery { rel_type: Some("m.reference".into()), ..deep(3) };
    assert_eq!(ids(&store.relations(&deep_refs).await.unwrap()), ["$deep", "$ref"]);
    let deep_page = RelationsQuery { up_to: 6, limit: 2, ..deep(3) };
    assert_eq!(ids(&store.relations(&deep_page).await.unwrap()), ["$t2", "$ref"]);

    // Other parents and rooms are separate.
    assert_eq!(ids(&store.relations(&relations_query(r, "$t2")).await.unwrap()), ["$like2"]);
    assert!(store.relations(&relations_query(r, "$other")).await.unwrap().is_empty());
    assert!(store.relations(&relations_query("!elsewhere:x", "$root")).await.unwrap().is_empty());
    assert!(store.relations(&relations_query(r, "$missing")).await.unwrap().is_empty());

    // The stored event keeps its JSON byte for byte.
    let like = store.relations(&reactions).await.unwrap().remove(0);
    assert_eq!(like, store.event("$like").await.unwrap().unwrap());

    // A redacted child is no child any more; its own children stay (the
    // relation of $deep to $like2 is $deep's).
    append_chain(&store, &mut prev, vec![redaction_of(r, "$redact", "$like2", 10)]).await;
    assert_eq!(ids(&store.relations(&deep(3)).await.unwrap()), ["$t2", "$ref", "$like", "$t1"]);
    assert!(store.relations(&relations_query(r, "$t2")).await.unwrap().is_empty());
    assert_eq!(ids(&store.relations(&relations_query(r, "$like2")).await.unwrap()), ["$deep"]);
    // Redacting it again, or redacting an event without a relation, changes nothing.
    append_chain(&store, &mut prev, vec![redaction_of(r, "$redact2", "$like2", 11), redaction_of(r, "$redact3", "$other", 12)])
        .await;
    assert_eq!(ids(&store.relations(&q).await.unwrap()), ["$t2", "$ref", "$like", "$t1"]);
}

pub async fn bundled_aggregations_summarise_children(store: DynStore) {
    let r = "!r:x";
    store.create_room(room(r), vec![event(r, "$create", "m.room.create", Some(""), 1)]).await.unwrap();
    let mut prev = "$create".to_owned();
    let at = |mut e: NewEvent, ts: u64| {
        e.origin_server_ts = ts;
        e
    };
    append_chain(
        &store,
        &mut prev,
        vec![
            // Alice's message and its edits: the latest by timestamp wins,
            // ties go to the larger event id; bob cannot edit it.
            at(message(r, "$msg", 2), 100),
            at(related(r, "$edit-b", "@alice:x", "m.replace", "$msg", None, 3), 500),
            at(related(r, "$edit-a", "@alice:x", "m.replace", "$msg", None, 4), 500),
            at(related(r, "$edit-old", "@alice:x", "m.replace", "$msg", None, 5), 200),
            at(related(r, "$bob-edit", "@bob:x", "m.replace", "$msg", None, 6), 900),
            // A thread on $msg with replies by bob and carol.
            related(r, "$t1", "@bob:x", "m.thread", "$msg", None, 7),
            related(r, "$t2", "@carol:x", "m.thread", "$msg", None, 8),
            // References to $msg, and a reaction (not bundled).
            related(r, "$ref1", "@bob:x", "m.reference", "$msg", None, 9),
            related(r, "$ref2", "@bob:x", "m.reference", "$msg", None, 10),
            related(r, "$ref3", "@bob:x", "m.reference", "$msg", None, 11),
            related(r, "$like", "@bob:x", "m.annotation", "$msg", Some("👍"), 12),
            // An edit of bob's thread reply, and a plain message.
            related(r, "$t1-edit", "@bob:x", "m.replace", "$t1", None, 13),
            message(r, "$plain", 14),
        ],
    )
    .await;
    let list = |ids: &[&str]| ids.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let all = list(&["$msg", "$t1", "$plain", "$missing"]);

    let got = store.bundled_aggregations(&all, "@bob:x", 2).await.unwrap();
    let edits: Vec<(&str, &str)> = got.edits.iter().map(|(o, e)| (o.as_str(), e.event_id.as_str())).collect();
    let mut edits = edits;
    edits.sort();
    assert_eq!(edits, [("$msg", "$edit-b"), ("$t1", "$t1-edit")]);
    let edit = got.edits.iter().find(|(o, _)| o == "$msg").unwrap().1.clone();
    assert_eq!(edit, store.event("$edit-b").await.unwrap().unwrap());
    assert_eq!(got.threads.len(), 1);
    let thread = &got.threads[0];
    assert_eq!(
        (thread.root.as_str(), thread.latest.event_id.as_str(), thread.count, thread.participated),
        ("$msg", "$t2", 2, true)
    );
    assert_eq!(thread.latest, store.event("$t2").await.unwrap().unwrap());
    assert_eq!(got.references, [("$msg".to_owned(), "$ref1".to_owned()), ("$msg".to_owned(), "$ref2".to_owned())]);

    // Participation: the root's sender, a replier, or nobody.
    for (viewer, participated) in [("@alice:x", true), ("@carol:x", true), ("@dave:x", false)] {
        let got = store.bundled_aggregations(&list(&["$msg"]), viewer, 10).await.unwrap();
        assert_eq!(got.threads[0].participated, participated, "{viewer}");
        assert_eq!(got.references.len(), 3);
    }
    assert_eq!(store.bundled_aggregations(&[], "@bob:x", 10).await.unwrap(), BundledAggregations::default());
    assert_eq!(store.bundled_aggregations(&list(&["$plain"]), "@bob:x", 10).await.unwrap(), BundledAggregations::default());

    // Redacting the winning edit falls back to the previous one; redacting
    // the latest reply moves the thread back to the one before.
    append_chain(
        &store,
        &mut prev,
        vec![redaction_of(r, "$x1", "$edit-b", 15), redaction_of(r, "$x2", "$t2", 16), redaction_of(r, "$x3", "$ref1", 17)],
    )
    .await;
    let got = store.bundled_aggregations(&list(&["$msg"]), "@carol:x", 10).await.unwrap();
    assert_eq!(got.edits.iter().map(|(_, e)| e.event_id.as_str()).collect::<Vec<_>>(), ["$edit-a"]);
    let thread = &got.threads[0];
    assert_eq!((thread.latest.event_id.as_str(), thread.count, thread.participated), ("$t1", 1, false));
    assert_eq!(got.references.iter().map(|(_, c)| c.as_str()).collect::<Vec<_>>(), ["$ref2", "$ref3"]);
}

pub async fn thread_roots_are_ordered_by_latest_reply(store: DynStore) {
    let r = "!r:x";
    store.create_room(room(r), vec![event(r, "$create", "m.room.create", Some(""), 1)]).await.unwrap();
    let mut prev = "$create".to_owned();
    // Roots at 2, 3, 4 (bob's); replies: A at 5 (bob), B at 6 (alice),
    // C at 7 (carol), A again at 8 (alice).
    let mut bob_root = message(r, "$c", 4);
    bob_root.sender = "@bob:x".into();
    append_chain(
        &store,
        &mut prev,
        vec![
            message(r, "$a", 2),
            message(r, "$b", 3),
            bob_root,
            related(r, "$a1", "@bob:x", "m.thread", "$a", None, 5),
            related(r, "$b1", "@alice:x", "m.thread", "$b", None, 6),
            related(r, "$c1", "@carol:x", "m.thread", "$c", None, 7),
            related(r, "$a2", "@alice:x", "m.thread", "$a", None, 8),
        ],
    )
    .await;
    let roots = |participant: Option<&'static str>, before: Option<u64>, limit| {
        let store = store.clone();
        async move {
            store
                .thread_roots(r, participant, before, limit)
                .await
                .unwrap()
                .into_iter()
                .map(|t| (t.root.event_id, t.latest_pos))
                .collect::<Vec<_>>()
        }
    };
    let pairs = |v: &[(&str, u64)]| v.iter().map(|(id, pos)| ((*id).to_owned(), *pos)).collect::<Vec<_>>();
    assert_eq!(roots(None, None, 10).await, pairs(&[("$a", 8), ("$c", 7), ("$b", 6)]));
    assert_eq!(roots(None, None, 2).await, pairs(&[("$a", 8), ("$c", 7)]));
    assert_eq!(roots(None, Some(7), 2).await, pairs(&[("$b", 6)]));
    assert!(roots(None, Some(6), 2).await.is_empty());
    // Participation: bob replied in A and sent C; carol only replied in C.
    assert_eq!(roots(Some("@bob:x"), None, 10).await, pairs(&[("$a", 8), ("$c", 7)]));
    assert_eq!(roots(Some("@carol:x"), None, 10).await, pairs(&[("$c", 7)]));
    assert!(roots(Some("@dave:x"), None, 10).await.is_empty());
    assert!(store.thread_roots("!other:x", None, None, 10).await.unwrap().is_empty());
    let root = store.thread_roots(r, None, None, 1).await.unwrap().remove(0).root;
    assert_eq!(root, store.event("$a").await.unwrap().unwrap());

    // Redactions: A's latest reply goes (A falls back to 5), C's only one
    // goes (C is no thread any more).
    append_chain(&store, &mut prev, vec![redaction_of(r, "$x1", "$a2", 9), redaction_of(r, "$x2", "$c1", 10)]).await;
    assert_eq!(roots(None, None, 10).await, pairs(&[("$b", 6), ("$a", 5)]));
    assert!(roots(Some("@carol:x"), None, 10).await.is_empty());
    // A new reply brings C back on top.
    append_chain(&store, &mut prev, vec![related(r, "$c2", "@alice:x", "m.thread", "$c", None, 11)]).await;
    assert_eq!(roots(None, None, 10).await, pairs(&[("$c", 11), ("$b", 6), ("$a", 5)]));
}

pub async fn annotations_are_counted_per_key_and_sender(store: DynStore) {
    let r = "!r:x";
    store.create_room(room(r), vec![event(r, "$create", "m.room.create", Some(""), 1)]).await.unwrap();
    let mut prev = "$create".to_owned();
    append_chain(
        &store,
        &mut prev,
        vec![
            message(r, "$msg", 2),
            related(r, "$l1", "@bob:x", "m.annotation", "$msg", Some("👍"), 3),
            related(r, "$l2", "@carol:x", "m.annotation", "$msg", Some("👍"), 4),
            // The same sender twice counts once (duplicates can arrive over federation).
            related(r, "$l3", "@carol:x", "m.annotation", "$msg", Some("👍"), 5),
            related(r, "$h1", "@bob:x", "m.annotation", "$msg", Some("❤️"), 6),
            related(r, "$t1", "@bob:x", "m.thread", "$msg", None, 7),
        ],
    )
    .await;
    let count = |event_type: &str, key: &str, count| AnnotationCount { event_type: event_type.into(), key: key.into(), count };
    assert_eq!(
        store.annotation_counts("$msg", None).await.unwrap(),
        [count("m.reaction", "👍", 2), count("m.reaction", "❤️", 1)]
    );
    assert_eq!(
        store.annotation_counts("$msg", Some("@bob:x")).await.unwrap(),
        [count("m.reaction", "❤️", 1), count("m.reaction", "👍", 1)]
    );
    assert!(store.annotation_counts("$msg", Some("@dave:x")).await.unwrap().is_empty());
    assert!(store.annotation_counts("$t1", None).await.unwrap().is_empty());

    append_chain(&store, &mut prev, vec![redaction_of(r, "$x1", "$l1", 8), redaction_of(r, "$x2", "$h1", 9)]).await;
    assert_eq!(store.annotation_counts("$msg", None).await.unwrap(), [count("m.reaction", "👍", 1)]);
    assert!(store.annotation_counts("$msg", Some("@bob:x")).await.unwrap().is_empty());
}

pub async fn events_are_found_by_timestamp(store: DynStore) {
    let r = "!r:x";
    let at = |mut e: NewEvent, ts: u64| {
        e.origin_server_ts = ts;
        e
    };
    store.create_room(room(r), vec![at(event(r, "$create", "m.room.create", Some(""), 1), 1_000)]).await.unwrap();
    store.create_room(room("!o:x"), vec![at(event("!o:x", "$o", "m.room.create", Some(""), 1), 1_500)]).await.unwrap();
    let mut prev = "$create".to_owned();
    append_chain(
        &store,
        &mut prev,
        vec![at(message(r, "$m1", 2), 2_000), at(message(r, "$m2", 3), 2_000), at(message(r, "$m3", 4), 3_000)],
    )
    .await;
    let near = |ts, forward| {
        let store = store.clone();
        async move { store.event_near_ts(r, ts, forward).await.unwrap().map(|e| e.event_id) }
    };
    assert_eq!(near(0, true).await.as_deref(), Some("$create"));
    assert_eq!(near(1_000, true).await.as_deref(), Some("$create"));
    assert_eq!(near(1_001, true).await.as_deref(), Some("$m1"));
    assert_eq!(near(2_000, true).await.as_deref(), Some("$m1"));
    assert_eq!(near(2_000, false).await.as_deref(), Some("$m2"));
    assert_eq!(near(2_999, false).await.as_deref(), Some("$m2"));
    assert_eq!(near(2_999, true).await.as_deref(), Some("$m3"));
    assert_eq!(near(9_999, false).await.as_deref(), Some("$m3"));
    assert_eq!(near(3_001, true).await, None);
    assert_eq!(near(999, false).await, None);
    assert_eq!(store.event_near_ts(r, 2_000, true).await.unwrap(), store.event("$m1").await.unwrap());
    assert!(store.event_near_ts("!none:x", 2_000, true).await.unwrap().is_none());
}

/// What readers need to leave out what history visibility hides: the
/// positions of bundled references, thread replies counted within position
/// ranges, and the event nearest a time within ranges.
pub async fn children_and_times_are_read_within_ranges(store: DynStore) {
    let r = "!r:x";
    let at = |mut e: NewEvent, ts: u64| {
        e.origin_server_ts = ts;
        e
    };
    store.create_room(room(r), vec![at(event(r, "$create", "m.room.create", Some(""), 1), 1_000)]).await.unwrap();
    let mut prev = "$create".to_owned();
    let pos = append_chain(
        &store,
        &mut prev,
        vec![
            at(message(r, "$root", 2), 2_000),
            at(related(r, "$t1", "@bob:x", "m.thread", "$root", None, 3), 3_000),
            at(related(r, "$ref1", "@bob:x", "m.reference", "$root", None, 4), 4_000),
            at(related(r, "$t2", "@bob:x", "m.thread", "$root", None, 5), 5_000),
            at(related(r, "$ref2", "@bob:x", "m.reference", "$root", None, 6), 6_000),
            at(related(r, "$t3", "@bob:x", "m.thread", "$root", None, 7), 7_000),
        ],
    )
    .await;
    let [root, t1, ref1, t2, ref2, t3] = pos[..] else { panic!("six positions: {pos:?}") };
    let list = |ids: &[&str]| ids.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();

    let got = store.bundled_aggregations(&list(&["$root"]), "@bob:x", 10).await.unwrap();
    assert_eq!(got.reference_positions, BTreeMap::from([("$ref1".to_owned(), ref1), ("$ref2".to_owned(), ref2)]));
    let got = store.bundled_aggregations(&list(&["$root"]), "@bob:x", 1).await.unwrap();
    assert_eq!(got.reference_positions, BTreeMap::from([("$ref1".to_owned(), ref1)]), "only the references bundled");

    let range = |from: u64, to: Option<u64>| PositionRange { from, to };
    let roots = list(&["$root", "$t1", "$missing"]);
    let counts = |within: Vec<PositionRange>| {
        let (store, roots) = (store.clone(), roots.clone());
        async move {
            let mut got = store.thread_reply_counts(&roots, &within).await.unwrap();
            got.sort();
            got
        }
    };
    let expect = |n: u64| vec![("$missing".to_owned(), 0), ("$root".to_owned(), n), ("$t1".to_owned(), 0)];
    assert_eq!(counts(vec![PositionRange::ALL]).await, expect(3));
    assert_eq!(counts(vec![range(root, Some(t2))]).await, expect(1));
    assert_eq!(counts(vec![range(0, Some(t1 + 1)), range(t3, None)]).await, expect(2));
    assert_eq!(counts(vec![range(t2, Some(t2 + 1))]).await, expect(1));
    assert_eq!(counts(vec![]).await, expect(0));
    assert!(store.thread_reply_counts(&[], &[PositionRange::ALL]).await.unwrap().is_empty());

    let near = |ts, forward, within: Vec<PositionRange>| {
        let store = store.clone();
        async move { store.event_near_ts_within(r, ts, forward, &within).await.unwrap().map(|e| e.event_id) }
    };
    assert_eq!(near(2_500, true, vec![PositionRange::ALL]).await.as_deref(), Some("$t1"));
    // Hidden events are passed over in both directions.
    assert_eq!(near(2_500, true, vec![range(t2, None)]).await.as_deref(), Some("$t2"));
    assert_eq!(near(6_500, false, vec![range(0, Some(ref1))]).await.as_deref(), Some("$t1"));
    assert_eq!(near(6_500, false, vec![range(0, Some(t1)), range(t2, Some(ref2))]).await.as_deref(), Some("$t2"));
    assert_eq!(near(2_500, true, vec![range(0, Some(t1))]).await, None);
    assert_eq!(near(2_500, true, vec![]).await, None);
    assert_eq!(near(9_000, false, vec![range(t3, None)]).await.as_deref(), Some("$t3"));
    assert_eq!(
        store.event_near_ts_within(r, 2_000, true, &[range(root, Some(root + 1))]).await.unwrap(),
        store.event("$root").await.unwrap()
    );
    assert!(store.event_near_ts_within("!none:x", 2_000, true, &[range(0, None)]).await.unwrap().is_none());
}

fn alias(alias: &str, room: &str) -> RoomAlias {
    RoomAlias { alias: alias.into(), room_id: room.into(), creator: "@alice:x".into(), created_ts: 5 }
}

/// A state event (empty state key) of `room` with this content.
fn state(room: &str, id: &str, event_type: &str, content: serde_json::Value, depth: u64) -> NewEvent {
    let mut e = event(room, id, event_type, Some(""), depth);
    e.json = json!({"event_id": id, "room_id": room, "type": event_type, "state_key": "", "sender": "@alice:x",
                    "depth": depth, "content": content})
    .to_string();
    e
}

/// A room whose events are given as (id, type, content) state events
/// and (id, user, membership) members, in this order, built one on the
/// other.
async fn room_with(store: &DynStore, r: &str, states: &[(&str, &str, serde_json::Value)], members: &[(&str, &str, &str)]) {
    let mut events = Vec::new();
    for (id, event_type, content) in states {
        events.push(state(r, id, event_type, content.clone(), events.len() as u64 + 1));
    }
    for (id, user, membership) in members {
        events.push(member(r, id, user, membership, events.len() as u64 + 1));
    }
    store.create_room(room(r), events).await.unwrap();
}

fn room_ids(page: &PublicRoomsPage) -> Vec<&str> {
    page.rooms.iter().map(|r| r.room_id.as_str()).collect()
}

pub async fn aliases_are_unique_and_bounded(store: DynStore) {
    for r in ["!a:x", "!b:x"] {
        room_with(&store, r, &[(&format!("$create{r}"), "m.room.create", json!({}))], &[]).await;
    }
    store.create_alias(&alias("#one:x", "!a:x"), 3).await.unwrap();
    assert_eq!(store.alias("#one:x").await.unwrap(), Some(alias("#one:x", "!a:x")));
    assert!(store.alias("#two:x").await.unwrap().is_none());
    // Taken, whichever room asks.
    for r in ["!a:x", "!b:x"] {
        let taken = store.create_alias(&alias("#one:x", r), 3).await;
        assert!(matches!(taken, Err(StoreError::AliasTaken)), "{taken:?}");
    }
    let unknown = store.create_alias(&alias("#ghost:x", "!nope:x"), 3).await;
    assert!(matches!(unknown, Err(StoreError::UnknownRoom)), "{unknown:?}");
    assert!(store.alias("#ghost:x").await.unwrap().is_none());

    store.create_alias(&alias("#two:x", "!a:x"), 3).await.unwrap();
    store.create_alias(&alias("#three:x", "!a:x"), 3).await.unwrap();
    let over = store.create_alias(&alias("#four:x", "!a:x"), 3).await;
    assert!(matches!(over, Err(StoreError::TooManyAliases)), "{over:?}");
    store.create_alias(&alias("#four:x", "!b:x"), 3).await.unwrap();
    assert_eq!(store.aliases_of_room("!a:x").await.unwrap(), ["#one:x", "#three:x", "#two:x"]);
    assert_eq!(store.aliases_of_room("!b:x").await.unwrap(), ["#four:x"]);
    assert!(store.aliases_of_room("!nope:x").await.unwrap().is_empty());

    assert!(store.delete_alias("#two:x").await.unwrap());
    assert!(!store.delete_alias("#two:x").await.unwrap());
    assert!(store.alias("#two:x").await.unwrap().is_none());
    // The freed place can be taken again.
    store.create_alias(&alias("#five:x", "!a:x"), 3).await.unwrap();
    assert_eq!(store.aliases_of_room("!a:x").await.unwrap(), ["#five:x", "#one:x", "#three:x"]);

    // The per-room bound holds under concurrency.
    room_with(&store, "!c:x", &[("$createc", "m.room.create", json!({}))], &[]).await;
    let mut tasks = Vec::new();
    for n in 0..8 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move { store.create_alias(&alias(&format!("#c{n}:x"), "!c:x"), 3).await.is_ok() }));
    }
    let mut created = 0;
    for task in tasks {
        created += usize::from(task.await.unwrap());
    }
    assert_eq!(created, 3);
    assert_eq!(store.aliases_of_room("!c:x").await.unwrap().len(), 3);
}

pub async fn directory_lists_published_joinable_rooms(store: DynStore) {
    let public = json!({"join_rule": "public"});
    let shared = json!({"history_visibility": "shared"});
    room_with(
        &store,
        "!big:x",
        &[
            ("$bigcreate", "m.room.create", json!({"room_version": "11"})),
            ("$bigrules", "m.room.join_rules", public.clone()),
            ("$bighist", "m.room.history_visibility", shared.clone()),
            ("$bigguest", "m.room.guest_access", json!({"guest_access": "can_join"})),
            ("$bigname", "m.room.name", json!({"name": "Crisis Cell"})),
            ("$bigtopic", "m.room.topic", json!({"topic": "Floods in the north"})),
            ("$bigavatar", "m.room.avatar", json!({"url": "mxc://x/avatar"})),
            ("$bigalias", "m.room.canonical_alias", json!({"alias": "#crisis:x"})),
        ],
        &[
            ("$biga", "@alice:x", "join"),
            ("$bigb", "@bob:x", "join"),
            ("$bigc", "@carol:x", "join"),
            ("$bigd", "@dave:x", "leave"),
            ("$bige", "@eve:x", "invite"),
        ],
    )
    .await;
    room_with(
        &store,
        "!mid:x",
        &[
            ("$midcreate", "m.room.create", json!({"type": "m.space"})),
            ("$midrules", "m.room.join_rules", json!({"join_rule": "knock"})),
            // Not a string: not shown.
            ("$midname", "m.room.name", json!({"name": 12})),
        ],
        &[("$mida", "@alice:x", "join"), ("$midb", "@bob:x", "join")],
    )
    .await;
    room_with(
        &store,
        "!small:x",
        &[
            ("$smallcreate", "m.room.create", json!({})),
            ("$smallrules", "m.room.join_rules", json!({"join_rule": "invite"})),
            ("$smallhist", "m.room.history_visibility", json!({"history_visibility": "world_readable"})),
            ("$smalltopic", "m.room.topic", json!({"topic": "The 100% plan_b"})),
        ],
        &[("$smalla", "@alice:x", "join")],
    )
    .await;
    room_with(
        &store,
        "!tied:x",
        &[("$tiedcreate", "m.room.create", json!({})), ("$tiedrules", "m.room.join_rules", public.clone())],
        &[("$tieda", "@alice:x", "join")],
    )
    .await;
    room_with(
        &store,
        "!redacted:x",
        &[
            ("$redcreate", "m.room.create", json!({})),
            ("$redrules", "m.room.join_rules", public.clone()),
            ("$redname", "m.room.name", json!({"name": "Secret name"})),
        ],
        &[("$reda", "@alice:x", "join")],
    )
    .await;
    let mut redaction = event("!redacted:x", "$redaction", "m.room.redaction", None, 5);
    redaction.redacts = Some("$redname".into());
    store.append_event(redaction, &["$reda".into()]).await.unwrap();
    // Invite-only and not world-readable: published but never listed.
    room_with(
        &store,
        "!private:x",
        &[("$privcreate", "m.room.create", json!({})), ("$privrules", "m.room.join_rules", json!({"join_rule": "invite"}))],
        &[("$priva", "@alice:x", "join")],
    )
    .await;
    // Public but not published.
    room_with(
        &store,
        "!unlisted:x",
        &[("$unlcreate", "m.room.create", json!({})), ("$unlrules", "m.room.join_rules", public.clone())],
        &[("$unla", "@alice:x", "join")],
    )
    .await;

    for r in ["!big:x", "!mid:x", "!small:x", "!tied:x", "!redacted:x", "!private:x"] {
        store.set_published(r, true).await.unwrap();
    }
    store.set_published("!big:x", true).await.unwrap();
    assert!(store.is_published("!big:x").await.unwrap());
    assert!(!store.is_published("!unlisted:x").await.unwrap());
    assert!(matches!(store.set_published("!nope:x", true).await, Err(StoreError::UnknownRoom)));
    assert!(matches!(store.set_published("!nope:x", false).await, Err(StoreError::UnknownRoom)));

    let page = |query: PublicRoomsQuery| {
        let store = store.clone();
        async move { store.public_rooms(&query).await.unwrap() }
    };
    let all = page(PublicRoomsQuery { limit: 10, ..Default::default() }).await;
    assert_eq!(room_ids(&all), ["!big:x", "!mid:x", "!redacted:x", "!small:x", "!tied:x"]);
    assert_eq!(all.total, 6);
    assert_eq!(
        all.rooms[0],
        PublicRoomEntry {
            room_id: "!big:x".into(),
            joined_members: 3,
            name: Some("Crisis Cell".into()),
            topic: Some("Floods in the north".into()),
            avatar_url: Some("mxc://x/avatar".into()),
            canonical_alias: Some("#crisis:x".into()),
            join_rule: Some("public".into()),
            history_visibility: Some("shared".into()),
            guest_access: Some("can_join".into()),
            room_type: None,
        }
    );
    let mid = &all.rooms[1];
    assert_eq!((mid.joined_members, mid.name.as_deref()), (2, None));
    assert_eq!((mid.join_rule.as_ref().map(|j| j.as_str()), mid.room_type.as_deref()), (Some("knock"), Some("m.space")));
    assert_eq!(all.rooms[2].name, None, "a redacted name is no name");
    assert_eq!(all.rooms[3].history_visibility.as_ref().map(|v| v.as_str()), Some("world_readable"));

    // Search: name, topic, alias; ASCII case ignored; LIKE wildcards are
    // literal characters.
    let search = |term: &str| PublicRoomsQuery { search: Some(term.into()), limit: 10, ..Default::default() };
    for (term, expected) in [
        ("crisis", vec!["!big:x"]),
        ("FLOODS", vec!["!big:x"]),
        ("#crisis:", vec!["!big:x"]),
        ("100%", vec!["!small:x"]),
        ("%", vec!["!small:x"]),
        ("_", vec!["!small:x"]),
        ("plan%", vec![]),
        ("secret", vec![]),
        ("", vec!["!big:x", "!mid:x", "!redacted:x", "!small:x", "!tied:x"]),
    ] {
        assert_eq!(room_ids(&page(search(term)).await), expected, "search {term:?}");
    }
    let types = |t: Vec<Option<&str>>| PublicRoomsQuery {
        room_types: Some(t.into_iter().map(|t| t.map(Into::into)).collect()),
        limit: 10,
        ..Default::default()
    };
    assert_eq!(room_ids(&page(types(vec![Some("m.space")])).await), ["!mid:x"]);
    assert_eq!(room_ids(&page(types(vec![None])).await), ["!big:x", "!redacted:x", "!small:x", "!tied:x"]);
    assert_eq!(room_ids(&page(types(vec![None, Some("m.space")])).await).len(), 5);
    assert_eq!(room_ids(&page(types(vec![])).await).len(), 5);

    // Keyset pages in both directions, always in directory order.
    let from = |joined_members, room_id: &str, forward, limit| PublicRoomsQuery {
        cursor: Some(DirectoryCursor { joined_members, room_id: room_id.into(), forward }),
        limit,
        ..Default::default()
    };
    assert_eq!(room_ids(&page(PublicRoomsQuery { limit: 2, ..Default::default() }).await), ["!big:x", "!mid:x"]);
    assert_eq!(room_ids(&page(from(2, "!mid:x", true, 2)).await), ["!redacted:x", "!small:x"]);
    assert_eq!(room_ids(&page(from(1, "!small:x", true, 2)).await), ["!tied:x"]);
    assert!(page(from(1, "!tied:x", true, 2)).await.rooms.is_empty());
    assert_eq!(room_ids(&page(from(1, "!redacted:x", false, 2)).await), ["!big:x", "!mid:x"]);
    assert_eq!(room_ids(&page(from(1, "!tied:x", false, 1)).await), ["!small:x"]);
    assert!(page(from(3, "!big:x", false, 5)).await.rooms.is_empty());

    store.set_published("!big:x", false).await.unwrap();
    store.set_published("!big:x", false).await.unwrap();
    assert!(!store.is_published("!big:x").await.unwrap());
    let after = page(PublicRoomsQuery { limit: 10, ..Default::default() }).await;
    assert_eq!(room_ids(&after), ["!mid:x", "!redacted:x", "!small:x", "!tied:x"]);
    assert_eq!(after.total, 5);
}

pub async fn room_creation_with_addresses_is_atomic(store: DynStore) {
    let r = "!r:x";
    let events = |r: &str| {
        vec![
            event(r, &format!("$create{r}"), "m.room.create", Some(""), 1),
            member(r, &format!("$join{r}"), "@alice:x", "join", 2),
        ]
    };
    let addresses = |aliases: Vec<RoomAlias>, publish| RoomAddresses { aliases, publish };
    let pos = store.create_room_with_addresses(room(r), events(r), addresses(vec![alias("#r:x", r)], true)).await.unwrap();
    assert_eq!(pos, 2);
    assert_eq!(store.alias("#r:x").await.unwrap().unwrap().room_id, r);
    assert!(store.is_published(r).await.unwrap());
    assert_eq!(store.room(r).await.unwrap().unwrap().forward_extremities, [format!("$join{r}")]);

    // A taken alias: no room, no events, no listing, no position used.
    let s = "!s:x";
    let taken = store.create_room_with_addresses(room(s), events(s), addresses(vec![alias("#r:x", s)], true)).await;
    assert!(matches!(taken, Err(StoreError::AliasTaken)), "{taken:?}");
    assert!(store.room(s).await.unwrap().is_none());
    assert!(store.event(&format!("$create{s}")).await.unwrap().is_none());
    assert!(!store.is_published(s).await.unwrap());
    assert_eq!(store.alias("#r:x").await.unwrap().unwrap().room_id, r);
    assert_eq!(store.current_stream_pos().await.unwrap(), 2);

    let elsewhere = store.create_room_with_addresses(room(s), events(s), addresses(vec![alias("#s:x", r)], false)).await;
    assert!(matches!(elsewhere, Err(StoreError::AliasOfAnotherRoom)), "{elsewhere:?}");
    assert!(store.alias("#s:x").await.unwrap().is_none());

    // The room id exists: its new alias is not kept either.
    let mut again = events(r);
    again[0].event_id = "$create-again".into();
    again.truncate(1);
    let dup = store.create_room_with_addresses(room(r), again, addresses(vec![alias("#other:x", r)], true)).await;
    assert!(matches!(dup, Err(StoreError::RoomIdTaken)), "{dup:?}");
    assert!(store.alias("#other:x").await.unwrap().is_none());

    // Without addresses it is a plain creation.
    store.create_room_with_addresses(room(s), events(s), RoomAddresses::default()).await.unwrap();
    assert!(store.aliases_of_room(s).await.unwrap().is_empty());
    assert!(!store.is_published(s).await.unwrap());
    assert_eq!(store.current_stream_pos().await.unwrap(), 4);
}

pub async fn upgrade_moves_addresses_atomically(store: DynStore) {
    let (old, new) = ("!old:x", "!new:x");
    room_with(&store, old, &[("$ocreate", "m.room.create", json!({}))], &[("$oalice", "@alice:x", "join")]).await;
    store.create_alias(&alias("#a:x", old), 10).await.unwrap();
    store.create_alias(&alias("#b:x", old), 10).await.unwrap();
    store.set_published(old, true).await.unwrap();
    let upgrade = |extremities: &[&str], tombstone: &str, new_room: &str| RoomUpgrade {
        old_room_id: old.into(),
        old_extremities: extremities.iter().map(|e| (*e).to_owned()).collect(),
        old_room_events: vec![
            state(old, tombstone, "m.room.tombstone", json!({"replacement_room": new_room, "body": "moved"}), 3),
            state(old, &format!("{tombstone}-pl"), "m.room.power_levels", json!({"events_default": 50}), 4),
        ],
        new_room: room(new_room),
        new_room_events: vec![
            state(new_room, &format!("$create{new_room}"), "m.room.create", json!({"predecessor": {"room_id": old}}), 1),
            member(new_room, &format!("$join{new_room}"), "@alice:x", "join", 2),
        ],
    };

    // Built on stale extremities: nothing at all happens.
    let stale = store.upgrade_room(upgrade(&["$ocreate"], "$tomb", new)).await;
    assert!(matches!(stale, Err(StoreError::StaleExtremities)), "{stale:?}");
    assert!(store.room(new).await.unwrap().is_none());
    assert!(store.event("$tomb").await.unwrap().is_none());
    assert_eq!(store.aliases_of_room(old).await.unwrap(), ["#a:x", "#b:x"]);
    assert!(store.is_published(old).await.unwrap());
    assert_eq!(store.room(old).await.unwrap().unwrap().forward_extremities, ["$oalice"]);
    assert_eq!(store.current_stream_pos().await.unwrap(), 2);

    let pos = store.upgrade_room(upgrade(&["$oalice"], "$tomb", new)).await.unwrap();
    assert_eq!(pos, 6);
    assert_eq!(positions(&store.room_events(old, 0, 6, 10, false).await.unwrap()), [1, 2, 3, 4]);
    assert_eq!(positions(&store.room_events(new, 0, 6, 10, false).await.unwrap()), [5, 6]);
    assert_eq!(store.room(old).await.unwrap().unwrap().forward_extremities, ["$tomb-pl"]);
    assert_eq!(store.room(new).await.unwrap().unwrap().forward_extremities, [format!("$join{new}")]);
    assert_eq!(store.state_event(old, "m.room.tombstone", "", None).await.unwrap().unwrap().event_id, "$tomb");
    assert!(store.aliases_of_room(old).await.unwrap().is_empty());
    assert_eq!(store.aliases_of_room(new).await.unwrap(), ["#a:x", "#b:x"]);
    assert_eq!(store.alias("#a:x").await.unwrap().unwrap().room_id, new);
    assert!(!store.is_published(old).await.unwrap());
    assert!(store.is_published(new).await.unwrap());

    // A replacement id that exists: the old room gets nothing either.
    let taken = store.upgrade_room(upgrade(&["$tomb-pl"], "$tomb2", new)).await;
    assert!(matches!(taken, Err(StoreError::RoomIdTaken)), "{taken:?}");
    assert!(store.event("$tomb2").await.unwrap().is_none());
    assert_eq!(store.room(old).await.unwrap().unwrap().forward_extremities, ["$tomb-pl"]);
    assert_eq!(store.current_stream_pos().await.unwrap(), 6);

    // An unpublished room without aliases upgrades without addresses.
    let plain = store.upgrade_room(upgrade(&["$tomb-pl"], "$tomb3", "!newer:x")).await.unwrap();
    assert_eq!(plain, 10);
    assert!(store.aliases_of_room("!newer:x").await.unwrap().is_empty());
    assert!(!store.is_published("!newer:x").await.unwrap());
    assert!(store.is_published(new).await.unwrap());

    let mut missing = upgrade(&[], "$tomb4", "!newest:x");
    missing.old_room_id = "!nope:x".into();
    for e in &mut missing.old_room_events {
        e.room_id = "!nope:x".into();
    }
    let missing = store.upgrade_room(missing).await;
    assert!(matches!(missing, Err(StoreError::UnknownRoom)), "{missing:?}");
    assert!(store.room("!newest:x").await.unwrap().is_none());
}

pub async fn forgetting_follows_the_membership(store: DynStore) {
    let r = "!r:x";
    room_with(&store, r, &[("$create", "m.room.create", json!({}))], &[("$alice", "@alice:x", "join")]).await;
    let mut prev = "$alice".to_owned();
    let mut depth = 2;
    let mut step = |id: &str, membership: &str| {
        depth += 1;
        let e = member(r, id, "@bob:x", membership, depth);
        let p = std::mem::replace(&mut prev, id.to_owned());
        let store = store.clone();
        async move { store.append_event(e, &[p]).await.unwrap() }
    };
    step("$bobjoin", "join").await;
    assert!(!store.forget_room("@bob:x", r).await.unwrap(), "joined rooms are not forgotten");
    assert!(!store.forget_room("@carol:x", r).await.unwrap(), "nor rooms never joined");
    assert!(!store.forget_room("@bob:x", "!nope:x").await.unwrap());
    assert!(store.forgotten_rooms("@bob:x").await.unwrap().is_empty());

    step("$bobleave", "leave").await;
    assert!(store.forget_room("@bob:x", r).await.unwrap());
    assert!(store.forget_room("@bob:x", r).await.unwrap());
    assert_eq!(store.forgotten_rooms("@bob:x").await.unwrap(), [r]);
    assert!(store.forgotten_rooms("@alice:x").await.unwrap().is_empty());

    // A rejoin clears it; leaving again does not bring it back.
    step("$bobjoin2", "join").await;
    assert!(store.forgotten_rooms("@bob:x").await.unwrap().is_empty());
    step("$bobleave2", "leave").await;
    assert!(store.forgotten_rooms("@bob:x").await.unwrap().is_empty());

    step("$bobknock", "knock").await;
    assert!(!store.forget_room("@bob:x", r).await.unwrap(), "a pending knock is not forgotten");
    step("$bobban", "ban").await;
    assert!(store.forget_room("@bob:x", r).await.unwrap());
    assert_eq!(store.forgotten_rooms("@bob:x").await.unwrap(), [r]);
}

pub async fn reports_are_bounded_per_reporter_and_window(store: DynStore) {
    let report = |reporter: &str, n: u64| NewReport {
        room_id: "!r:x".into(),
        event_id: Some(format!("$e{n}")),
        reporter: reporter.into(),
        reason: Some(format!("reason {n}")),
        score: Some(-100),
        created_ts: 1_000 + n,
    };
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(store.add_report(report("@bob:x", n), 0, 3).await.unwrap());
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let over = store.add_report(report("@bob:x", 3), 0, 3).await;
    assert!(matches!(over, Err(StoreError::TooManyReports)), "{over:?}");
    // Others are not limited by bob; an older window lets bob in again.
    store.add_report(report("@carol:x", 4), 0, 3).await.unwrap();
    store.add_report(report("@bob:x", 5), 1_001, 3).await.unwrap();

    let room_report = NewReport {
        room_id: "!r:x".into(),
        event_id: None,
        reporter: "@dave:x".into(),
        reason: None,
        score: None,
        created_ts: 2_000,
    };
    let room_report_id = store.add_report(room_report.clone(), 0, 3).await.unwrap();

    let all = store.reports(0, 100).await.unwrap();
    assert_eq!(all.len(), 6);
    assert_eq!(
        all[0],
        Report {
            report_id: ids[0],
            room_id: "!r:x".into(),
            event_id: Some("$e0".into()),
            reporter: "@bob:x".into(),
            reason: Some("reason 0".into()),
            score: Some(-100),
            created_ts: 1_000,
            event_sender: None,
        }
    );
    let last = all.last().unwrap();
    assert_eq!((last.report_id, last.event_id.as_ref(), last.reason.as_ref(), last.score), (room_report_id, None, None, None));
    let page = store.reports(ids[0], 2).await.unwrap();
    assert_eq!(page.iter().map(|r| r.report_id).collect::<Vec<_>>(), [ids[1], ids[2]]);
    assert!(store.reports(room_report_id, 10).await.unwrap().is_empty());

    // The bound holds under concurrency.
    let mut tasks = Vec::new();
    for n in 0..8 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move { store.add_report(report("@eve:x", 10 + n), 0, 3).await.is_ok() }));
    }
    let mut stored = 0;
    for task in tasks {
        stored += usize::from(task.await.unwrap());
    }
    assert_eq!(stored, 3);
}

fn visibility(room: &str, id: &str, value: &str, depth: u64) -> NewEvent {
    state(room, id, "m.room.history_visibility", json!({"history_visibility": value}), depth)
}

fn span(room: &str, from_pos: u64, to_pos: Option<u64>, kind: SpanKind) -> StateSpan {
    StateSpan { room_id: room.into(), from_pos, to_pos, kind }
}

pub async fn visibility_spans_follow_the_state_history(store: DynStore) {
    let (r, s) = ("!r:x", "!s:x");
    let hv = |v: &str| SpanKind::HistoryVisibility(Some(v.into()));
    let m = |v: &str| SpanKind::Membership(v.into());
    // !r:x: 1 create, 2 alice joins, 3 shared, 4 bob joins, 5 message,
    // 6 joined, 7 bob leaves, 8 message, 9 carol joins, 10 bob joins,
    // 11 a visibility event without a usable value.
    store
        .create_room(
            room(r),
            vec![
                event(r, "$create", "m.room.create", Some(""), 1),
                member(r, "$alice", "@alice:x", "join", 2),
                visibility(r, "$shared", "shared", 3),
            ],
        )
        .await
        .unwrap();
    let mut prev = "$shared".to_owned();
    let broken = state(r, "$broken", "m.room.history_visibility", json!({"history_visibility": 7}), 11);
    let positions = append_chain(
        &store,
        &mut prev,
        vec![
            member(r, "$bob1", "@bob:x", "join", 4),
            message(r, "$m5", 5),
            visibility(r, "$joined", "joined", 6),
            member(r, "$bob2", "@bob:x", "leave", 7),
            message(r, "$m8", 8),
            member(r, "$carol", "@carol:x", "join", 9),
            member(r, "$bob3", "@bob:x", "join", 10),
            broken,
        ],
    )
    .await;
    assert_eq!(positions, (4..=11).collect::<Vec<u64>>());
    // !s:x (12, 13): bob is there, no visibility event.
    store
        .create_room(room(s), vec![event(s, "$s-create", "m.room.create", Some(""), 1), member(s, "$s-bob", "@bob:x", "join", 2)])
        .await
        .unwrap();

    let rooms = [r.to_owned(), s.to_owned()];
    let all = store.visibility_spans("@bob:x", &rooms, 0, 13, 100).await.unwrap();
    assert_eq!(
        all,
        [
            span(r, 3, Some(6), hv("shared")),
            span(r, 4, Some(7), m("join")),
            span(r, 6, Some(11), hv("joined")),
            span(r, 7, Some(10), m("leave")),
            span(r, 10, None, m("join")),
            span(r, 11, None, SpanKind::HistoryVisibility(None)),
            span(s, 13, None, m("join")),
        ]
    );
    // A window: visibility overlapping 7..=8, every membership span of the
    // user ending after 7; other users' memberships never.
    let window = store.visibility_spans("@bob:x", &rooms[..1], 7, 8, 100).await.unwrap();
    assert_eq!(window, [span(r, 6, Some(11), hv("joined")), span(r, 7, Some(10), m("leave")), span(r, 10, None, m("join"))]);
    let carol = store.visibility_spans("@carol:x", &rooms, 1, 3, 100).await.unwrap();
    assert_eq!(carol, [span(r, 3, Some(6), hv("shared")), span(r, 9, None, m("join"))]);
    assert!(store.visibility_spans("@dave:x", &[], 0, 13, 100).await.unwrap().is_empty());
    assert!(store.visibility_spans("@dave:x", &["!unknown:x".to_owned()], 0, 13, 100).await.unwrap().is_empty());
    let over = store.visibility_spans("@bob:x", &rooms, 0, 13, 6).await;
    assert!(matches!(over, Err(StoreError::TooManyVisibilitySpans)), "{over:?}");
    assert_eq!(store.visibility_spans("@bob:x", &rooms, 0, 13, 7).await.unwrap().len(), 7);
}

pub async fn search_stays_within_its_scopes(store: DynStore) {
    let (r, s) = ("!r:x", "!s:x");
    let searchable = |room: &str, id: &str, text: &str, depth: u64| {
        let mut e = message(room, id, depth);
        e.search_text = vec![("content.body".into(), text.into())];
        e
    };
    store.create_room(room(r), vec![event(r, "$create", "m.room.create", Some(""), 1)]).await.unwrap();
    let mut prev_r = "$create".to_owned();
    // Positions 2..=7: budget notes, one other message.
    let positions = append_chain(
        &store,
        &mut prev_r,
        vec![
            searchable(r, "$b2", "budget two", 2),
            searchable(r, "$b3", "budget three", 3),
            searchable(r, "$x4", "lunch", 4),
            searchable(r, "$b5", "budget five", 5),
            searchable(r, "$b6", "budget six", 6),
            searchable(r, "$b7", "budget seven", 7),
        ],
    )
    .await;
    assert_eq!(positions, (2..=7).collect::<Vec<u64>>());
    store.create_room(room(s), vec![event(s, "$s-create", "m.room.create", Some(""), 1)]).await.unwrap();
    let mut prev = "$s-create".to_owned();
    append_chain(&store, &mut prev, vec![searchable(s, "$s9", "budget elsewhere", 2)]).await;

    let words = ["budget".to_owned()];
    let keys = ["content.body".to_owned()];
    let scope = |room: &str, ranges: &[(u64, Option<u64>)]| SearchScope {
        room_id: room.into(),
        ranges: ranges.iter().map(|&(from, to)| PositionRange { from, to }).collect(),
    };
    let search = |scopes: Vec<SearchScope>, offset: usize, limit: usize| {
        let store = store.clone();
        let (words, keys) = (words.clone(), keys.clone());
        async move {
            let (hits, count) = store.search_events(&scopes, &words, &keys, SearchOrder::Recent, offset, limit).await.unwrap();
            (hits.into_iter().map(|h| h.event.event_id).collect::<Vec<_>>(), count)
        }
    };
    let whole_r = scope(r, &[(0, None)]);
    assert!(whole_r.is_whole_room());
    assert_eq!(
        search(vec![whole_r.clone()], 0, 10).await,
        (vec!["$b7".into(), "$b6".into(), "$b5".into(), "$b3".into(), "$b2".into()], 5)
    );
    // Parts of !r:x (3..=5 and from 7 on) and the whole of !s:x: counts and
    // offsets cover only those.
    let parts = vec![scope(r, &[(3, Some(6)), (7, None)]), scope(s, &[(0, None)])];
    assert!(!parts[0].is_whole_room());
    assert_eq!(search(parts.clone(), 0, 10).await, (vec!["$s9".into(), "$b7".into(), "$b5".into(), "$b3".into()], 4));
    assert_eq!(search(parts.clone(), 1, 2).await, (vec!["$b7".into(), "$b5".into()], 4));
    assert_eq!(search(parts, 3, 2).await, (vec!["$b3".into()], 4));
    // A range ending where the room's events start finds nothing.
    assert_eq!(search(vec![scope(r, &[(0, Some(2))])], 0, 10).await, (vec![], 0));
    assert_eq!(search(vec![], 0, 10).await, (vec![], 0));
    // A redacted event is found no more.
    let mut redaction = event(r, "$redacts-b7", "m.room.redaction", None, 8);
    redaction.redacts = Some("$b7".into());
    append_chain(&store, &mut prev_r, vec![redaction, searchable(r, "$b10", "budget ten", 9)]).await;
    assert_eq!(
        search(vec![whole_r], 0, 10).await,
        (vec!["$b10".into(), "$b6".into(), "$b5".into(), "$b3".into(), "$b2".into()], 5)
    );
}

pub async fn reports_are_listed_filtered_and_deleted(store: DynStore) {
    let r = "!r:x";
    let mut by_bob = message(r, "$m2", 3);
    by_bob.sender = "@bob:x".into();
    store
        .create_room(room(r), vec![event(r, "$create", "m.room.create", Some(""), 1), message(r, "$m1", 2), by_bob])
        .await
        .unwrap();
    let file = |room: &str, event: Option<&str>, reporter: &str, n: u64| {
        let store = store.clone();
        let report = NewReport {
            room_id: room.into(),
            event_id: event.map(Into::into),
            reporter: reporter.into(),
            reason: Some(format!("reason {n}")),
            score: None,
            created_ts: 1_000 + n,
        };
        async move { store.add_report(report, 0, 100).await.unwrap() }
    };
    let m1_by_carol = file(r, Some("$m1"), "@carol:x", 1).await;
    let m2_by_dave = file(r, Some("$m2"), "@dave:x", 2).await;
    let room_by_carol = file(r, None, "@carol:x", 3).await;
    let unknown_by_erin = file("!other:x", Some("$gone"), "@erin:x", 4).await;
    let m2_by_carol = file(r, Some("$m2"), "@carol:x", 5).await;

    let events = ReportQuery {
        kind: ReportKind::Event,
        reporter: None,
        room: None,
        event_sender: None,
        newest_first: true,
        before_id: None,
        offset: 0,
        limit: 10,
    };
    let page = |query: ReportQuery| {
        let store = store.clone();
        async move {
            let page = store.report_page(&query).await.unwrap();
            (page.reports.iter().map(|r| r.report_id).collect::<Vec<_>>(), page.total)
        }
    };
    assert_eq!(page(events.clone()).await, (vec![m2_by_carol, unknown_by_erin, m2_by_dave, m1_by_carol], 4));
    let newest = store.report_page(&events).await.unwrap().reports;
    assert_eq!(
        newest[0],
        Report {
            report_id: m2_by_carol,
            room_id: r.into(),
            event_id: Some("$m2".into()),
            reporter: "@carol:x".into(),
            reason: Some("reason 5".into()),
            score: None,
            created_ts: 1_005,
            event_sender: Some("@bob:x".into()),
        }
    );
    assert_eq!(newest[1].event_sender, None, "the server does not have $gone");
    assert_eq!(newest[3].event_sender.as_deref(), Some("@alice:x"));
    // Oldest first from an offset; keyset from an id.
    let oldest = ReportQuery { newest_first: false, offset: 1, limit: 2, ..events.clone() };
    assert_eq!(page(oldest).await, (vec![m2_by_dave, unknown_by_erin], 4));
    let below = ReportQuery { before_id: Some(unknown_by_erin), ..events.clone() };
    assert_eq!(page(below).await, (vec![m2_by_dave, m1_by_carol], 4));
    // Filters: reporter and room exactly or as substrings, the event's sender.
    let contains = |s: &str| Some(TextFilter::Contains(s.into()));
    let exact = |s: &str| Some(TextFilter::Exact(s.into()));
    assert_eq!(page(ReportQuery { reporter: contains("carol"), ..events.clone() }).await, (vec![m2_by_carol, m1_by_carol], 2));
    assert_eq!(page(ReportQuery { reporter: exact("@carol:x"), ..events.clone() }).await, (vec![m2_by_carol, m1_by_carol], 2));
    assert_eq!(page(ReportQuery { reporter: exact("carol"), ..events.clone() }).await, (vec![], 0));
    assert_eq!(page(ReportQuery { reporter: contains("%"), ..events.clone() }).await, (vec![], 0), "no wildcards");
    assert_eq!(page(ReportQuery { room: contains("other"), ..events.clone() }).await, (vec![unknown_by_erin], 1));
    assert_eq!(page(ReportQuery { room: exact(r), ..events.clone() }).await, (vec![m2_by_carol, m2_by_dave, m1_by_carol], 3));
    let bobs = ReportQuery { event_sender: Some("@bob:x".into()), ..events.clone() };
    assert_eq!(page(bobs).await, (vec![m2_by_carol, m2_by_dave], 2));
    // Room reports are listed apart.
    let rooms = ReportQuery { kind: ReportKind::Room, ..events.clone() };
    assert_eq!(page(rooms.clone()).await, (vec![room_by_carol], 1));
    assert_eq!(page(ReportQuery { before_id: Some(room_by_carol), ..rooms }).await, (vec![], 1));

    // One by id; deletes only of the right kind; ids never come back.
    let one = store.report(room_by_carol).await.unwrap().unwrap();
    assert_eq!((one.event_id, one.reporter.as_str()), (None, "@carol:x"));
    assert!(store.report(m2_by_carol + 100).await.unwrap().is_none());
    assert!(!store.delete_report(room_by_carol, ReportKind::Event).await.unwrap());
    assert!(store.delete_report(room_by_carol, ReportKind::Room).await.unwrap());
    assert!(!store.delete_report(room_by_carol, ReportKind::Room).await.unwrap());
    assert!(store.report(room_by_carol).await.unwrap().is_none());
    assert!(store.delete_report(m2_by_carol, ReportKind::Event).await.unwrap());
    let next = file(r, Some("$m1"), "@frank:x", 6).await;
    assert!(next > m2_by_carol, "the deleted newest id {m2_by_carol} was reused: {next}");
    assert_eq!(page(events).await, (vec![next, unknown_by_erin, m2_by_dave, m1_by_carol], 4));
}
