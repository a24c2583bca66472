//! The health component: whether the database answers (for `/health`),
//! how its connection pool fares and how many syncs wait (for `/metrics`).

use std::sync::Arc;

use chancery_store::{DynStore, PoolStats};

use crate::Notifier;

/// The database's health and the node's waiting syncs, as load balancers
/// and metrics see them.
pub struct Health {
    store: DynStore,
    notifier: Arc<Notifier>,
}

impl Health {
    pub fn new(store: DynStore, notifier: Arc<Notifier>) -> Self {
        Self { store, notifier }
    }

    /// Whether the database answers.
    pub async fn healthy(&self) -> bool {
        self.store.ping().await.is_ok()
    }

    pub fn pool_stats(&self) -> PoolStats {
        self.store.pool_stats()
    }

    /// Syncs of this node parked waiting for news.
    pub fn long_polls_waiting(&self) -> usize {
        self.notifier.long_polls_waiting()
    }
}
