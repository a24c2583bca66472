//! Conformance cases of OpenID tokens.

use chancery_store::*;

use crate::account;

fn token(hash: &str, user: &str, created_ts: u64) -> NewOpenIdToken {
    NewOpenIdToken { token_hash: hash.into(), user_id: user.into(), expires_ts: created_ts + 3_600_000, created_ts }
}

pub async fn openid_tokens_expire_are_bounded_per_user_and_purged(store: DynStore) {
    store.create_account(account("@alice:x"), None, None, 1_000).await.unwrap();
    store.create_account(account("@bob:x"), None, None, 1_000).await.unwrap();
    store.save_openid_token(&token("a1", "@alice:x", 10_000), 10_000, 3).await.unwrap();
    store.save_openid_token(&token("b1", "@bob:x", 10_000), 10_000, 3).await.unwrap();
    let user = |hash: &'static str, now: u64| {
        let store = store.clone();
        async move { store.openid_token_user(hash, now).await.unwrap() }
    };
    assert_eq!(user("a1", 10_000).await.as_deref(), Some("@alice:x"));
    assert_eq!(user("b1", 10_000).await.as_deref(), Some("@bob:x"));
    assert_eq!(user("nope", 10_000).await, None);
    // Valid until just before its expiry.
    assert_eq!(user("a1", 3_609_999).await.as_deref(), Some("@alice:x"));
    assert_eq!(user("a1", 3_610_000).await, None);

    // At most three per user: the fourth pushes out the oldest, and only
    // the user's own.
    store.save_openid_token(&token("a2", "@alice:x", 11_000), 11_000, 3).await.unwrap();
    store.save_openid_token(&token("a3", "@alice:x", 12_000), 12_000, 3).await.unwrap();
    store.save_openid_token(&token("a4", "@alice:x", 13_000), 13_000, 3).await.unwrap();
    assert_eq!(user("a1", 13_000).await, None);
    for hash in ["a2", "a3", "a4"] {
        assert_eq!(user(hash, 13_000).await.as_deref(), Some("@alice:x"), "{hash}");
    }
    assert_eq!(user("b1", 13_000).await.as_deref(), Some("@bob:x"));

    // A hash is saved once.
    assert!(matches!(store.save_openid_token(&token("a4", "@alice:x", 14_000), 14_000, 3).await, Err(StoreError::Contract(_))));

    // A deactivated account's tokens are worth nothing.
    store.deactivate_account("@bob:x", 20_000).await.unwrap();
    assert_eq!(user("b1", 20_000).await, None);

    // The purge deletes exactly the expired ones: b1 (10 000 + 1 h) and
    // a2 (11 000 + 1 h) by 3 611 000; a3 and a4 stay.
    assert_eq!(store.delete_expired_openid_tokens(3_611_000).await.unwrap(), 2);
    assert_eq!(store.delete_expired_openid_tokens(3_611_000).await.unwrap(), 0);
    assert_eq!(user("a3", 3_611_000).await.as_deref(), Some("@alice:x"));
    assert_eq!(store.delete_expired_openid_tokens(u64::MAX / 2).await.unwrap(), 2);
}
