//! Conformance cases of the cache of other servers' users' keys.

use chancery_store::*;

fn keys(user: &str, json: &str, list_pos: u64) -> RemoteUserKeys {
    RemoteUserKeys { user_id: user.into(), keys_json: json.into(), list_pos }
}

pub async fn remote_keys_are_cached_until_the_device_list_moves(store: DynStore) {
    let users = vec!["@bob:remote".to_owned(), "@carol:remote".to_owned()];
    assert_eq!(store.remote_device_list_positions(&users).await.unwrap(), vec![(users[0].clone(), 0), (users[1].clone(), 0)]);
    assert!(store.cached_remote_keys(&users, 0).await.unwrap().is_empty());

    store
        .cache_remote_keys(&[keys("@bob:remote", "{\"b\":1}", 0), keys("@carol:remote", "{\"c\":1}", 0)], 1_000, 10)
        .await
        .unwrap();
    let mut cached = store.cached_remote_keys(&users, 0).await.unwrap();
    cached.sort();
    assert_eq!(cached, vec![(users[0].clone(), "{\"b\":1}".to_owned()), (users[1].clone(), "{\"c\":1}".to_owned())]);
    // Fetched too long ago: not fresh.
    assert!(store.cached_remote_keys(&users, 1_000).await.unwrap().is_empty());

    // Bob's server says his devices changed: his entry no longer holds.
    store.note_remote_device_list_change("@bob:remote").await.unwrap();
    assert_eq!(store.cached_remote_keys(&users, 0).await.unwrap(), vec![(users[1].clone(), "{\"c\":1}".to_owned())]);
    let positions = store.remote_device_list_positions(&users[..1]).await.unwrap();
    let bob_pos = positions[0].1;
    assert!(bob_pos > 0);
    // A fetch that started before the change is cached stale: still not used.
    store.cache_remote_keys(&[keys("@bob:remote", "{\"b\":1}", 0)], 2_000, 10).await.unwrap();
    assert_eq!(store.cached_remote_keys(&users[..1], 0).await.unwrap(), vec![]);
    // One that started after it is.
    store.cache_remote_keys(&[keys("@bob:remote", "{\"b\":2}", bob_pos)], 3_000, 10).await.unwrap();
    assert_eq!(store.cached_remote_keys(&users[..1], 0).await.unwrap(), vec![(users[0].clone(), "{\"b\":2}".to_owned())]);

    // Bounded: the least recently fetched go.
    store.cache_remote_keys(&[keys("@dan:remote", "{}", 0)], 4_000, 2).await.unwrap();
    let all = vec![users[0].clone(), users[1].clone(), "@dan:remote".to_owned()];
    let mut left: Vec<String> = store.cached_remote_keys(&all, 0).await.unwrap().into_iter().map(|(u, _)| u).collect();
    left.sort();
    assert_eq!(left, vec!["@bob:remote".to_owned(), "@dan:remote".to_owned()]);
}
