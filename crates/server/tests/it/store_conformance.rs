//! The store conformance suite (chancery_store::conformance) against every
//! backend, each test on a fresh, empty store.

mod sqlite {
    use std::any::Any;
    use std::sync::Arc;

    use chancery_store::DynStore;
    use chancery_store_sqlite::SqliteStore;

    async fn factory() -> (DynStore, Box<dyn Any + Send>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("chancery.db"), 2).await.expect("open SQLite store");
        (Arc::new(store), Box::new(dir))
    }

    chancery_store::store_conformance_tests!(factory);
}

mod postgres {
    use std::any::Any;
    use std::sync::Arc;

    use chancery_store::DynStore;
    use chancery_store_postgres::PostgresStore;
    use chancery_testkit::pg::PgCluster;

    async fn factory() -> (DynStore, Box<dyn Any + Send>) {
        let url = PgCluster::shared().fresh_database().await.expect("fresh PostgreSQL database");
        let store = PostgresStore::connect(&url, 8).await.expect("connect PostgreSQL store");
        // The database lives as long as the shared cluster.
        (Arc::new(store), Box::new(()))
    }

    chancery_store::store_conformance_tests!(factory);
}
