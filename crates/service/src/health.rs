//! The health component: whether the database answers (for `/health`)
//! and how its connection pool fares (for `/metrics`).

use chancery_store::{DynStore, PoolStats};

/// The database's health, as load balancers and metrics see it.
pub struct Health {
    store: DynStore,
}

impl Health {
    pub fn new(store: DynStore) -> Self {
        Self { store }
    }

    /// Whether the database answers.
    pub async fn healthy(&self) -> bool {
        self.store.ping().await.is_ok()
    }

    pub fn pool_stats(&self) -> PoolStats {
        self.store.pool_stats()
    }
}
