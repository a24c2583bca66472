//! The behaviour every backend must have, written once. A backend's tests
//! call [`store_conformance_tests!`] with a factory that returns a fresh,
//! empty store (and a guard that keeps its files or database alive).

use std::sync::Arc;

use serde_json::json;

use crate::*;

/// Expands to one `#[tokio::test]` per conformance case. `$factory` is an
/// async fn returning `(DynStore, impl Drop)`.
#[macro_export]
macro_rules! store_conformance_tests {
    ($factory:path) => {
        $crate::store_conformance_tests!(@cases $factory;
            accounts_are_unique, account_with_first_device_is_atomic, registration_tokens_count_uses,
            registration_token_uses_hold_under_concurrency, devices_and_sessions, device_limit_is_enforced,
            refresh_keeps_previous_token_until_new_one_used, password_change_logs_out_others,
            deactivation_erases_and_keeps_the_name, profile_fields_respect_size_limit, uia_sessions_expire_and_are_bounded,
        );
    };
    (@cases $factory:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (store, _guard) = $factory().await;
                $crate::conformance::$case(store.clone()).await;
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
    assert!(matches!(again, Err(StoreError::Conflict("user"))), "{again:?}");
    store.ping().await.unwrap();
}

pub async fn account_with_first_device_is_atomic(store: DynStore) {
    store.create_registration_token(&reg_token("once", Some(1))).await.unwrap();
    store.create_account(account("@a:x"), Some(device("@a:x", "DEV", 1)), Some("once"), 5).await.unwrap();
    let session = store.session_by_access_token("access-1").await.unwrap().unwrap();
    assert_eq!((session.user_id.as_str(), session.device_id.as_str()), ("@a:x", "DEV"));
    // The token is used up: the second account must not exist afterwards.
    let second = store.create_account(account("@b:x"), Some(device("@b:x", "DEV", 2)), Some("once"), 5).await;
    assert!(matches!(second, Err(StoreError::Invalid("registration_token"))), "{second:?}");
    assert!(store.account("@b:x").await.unwrap().is_none());
    assert!(store.session_by_access_token("access-2").await.unwrap().is_none());
    // Same id twice: the device of the failed attempt must not appear.
    let dup = store.create_account(account("@a:x"), Some(device("@a:x", "OTHER", 3)), None, 5).await;
    assert!(matches!(dup, Err(StoreError::Conflict("user"))));
    assert_eq!(store.devices("@a:x").await.unwrap().len(), 1);
    // A token that does not exist is refused the same way.
    let missing = store.create_account(account("@c:x"), None, Some("nope"), 5).await;
    assert!(matches!(missing, Err(StoreError::Invalid("registration_token"))));
}

pub async fn registration_tokens_count_uses(store: DynStore) {
    let mut limited = reg_token("two", Some(2));
    limited.expiry_ts = Some(1_000);
    store.create_registration_token(&limited).await.unwrap();
    store.create_registration_token(&reg_token("free", None)).await.unwrap();
    assert!(matches!(store.create_registration_token(&reg_token("free", None)).await, Err(StoreError::Conflict(_))));
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
    assert!(matches!(store.upsert_device(device("@ghost:x", "D", 9), 10).await, Err(StoreError::Invalid("account"))));
}

pub async fn device_limit_is_enforced(store: DynStore) {
    store.create_account(account("@a:x"), None, None, 5).await.unwrap();
    for i in 0..3 {
        store.upsert_device(device("@a:x", &format!("D{i}"), i), 3).await.unwrap();
    }
    let over = store.upsert_device(device("@a:x", "D9", 9), 3).await;
    assert!(matches!(over, Err(StoreError::LimitExceeded("devices"))), "{over:?}");
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
    assert!(matches!(store.create_account(account("@a:x"), None, None, 20).await, Err(StoreError::Conflict("user"))));
    assert!(matches!(store.upsert_device(device("@a:x", "TWO", 2), 10).await, Err(StoreError::Invalid("account"))));
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
    assert!(matches!(
        store.set_profile_field("@a:x", "org.example.big", &big, 1_000).await,
        Err(StoreError::LimitExceeded("profile"))
    ));
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
    store.create_uia_session(&session("s1", 100), 0, 2).await.unwrap();
    store.create_uia_session(&session("s2", 200), 0, 2).await.unwrap();
    assert!(matches!(store.create_uia_session(&session("s3", 300), 0, 2).await, Err(StoreError::LimitExceeded("uia_sessions"))));
    // s1 has expired by now: it is dropped and s3 fits.
    store.create_uia_session(&session("s3", 300), 150, 2).await.unwrap();
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
