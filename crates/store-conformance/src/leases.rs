//! Conformance cases of job leases.

use chancery_store::*;

pub async fn job_leases_go_to_one_node_until_they_end(store: DynStore) {
    // Free: the first node takes it; the second cannot while it runs.
    assert!(store.try_job_lease("sender", "n1", 1_000, 31_000).await.unwrap());
    assert!(!store.try_job_lease("sender", "n2", 1_000, 31_000).await.unwrap());
    assert!(!store.try_job_lease("sender", "n2", 30_999, 60_999).await.unwrap());
    // The holder renews it, even late.
    assert!(store.try_job_lease("sender", "n1", 20_000, 50_000).await.unwrap());
    assert!(!store.try_job_lease("sender", "n2", 40_000, 70_000).await.unwrap());
    // Once it has ended, another node takes it, and the first cannot renew.
    assert!(store.try_job_lease("sender", "n2", 50_000, 80_000).await.unwrap());
    assert!(!store.try_job_lease("sender", "n1", 50_001, 80_001).await.unwrap());
    // Another job is apart.
    assert!(store.try_job_lease("other", "n1", 50_001, 80_001).await.unwrap());
    // Released by a node that does not hold it: nothing changes.
    store.release_job_lease("sender", "n1").await.unwrap();
    assert!(!store.try_job_lease("sender", "n1", 60_000, 90_000).await.unwrap());
    // Released by its holder: free at once.
    store.release_job_lease("sender", "n2").await.unwrap();
    assert!(store.try_job_lease("sender", "n1", 60_000, 90_000).await.unwrap());
}

pub async fn concurrent_lease_claims_give_a_job_to_one_node(store: DynStore) {
    let mut claims = tokio::task::JoinSet::new();
    for n in 0..8 {
        let store = store.clone();
        claims.spawn(async move { store.try_job_lease("race", &format!("n{n}"), 1_000, 31_000).await.unwrap() });
    }
    let mut winners = 0;
    while let Some(won) = claims.join_next().await {
        winners += usize::from(won.unwrap());
    }
    assert_eq!(winners, 1);
}
