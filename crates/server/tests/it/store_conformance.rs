//! The store conformance suite (chancery_store_conformance) against every
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

    chancery_store_conformance::store_conformance_tests!(factory);
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

    chancery_store_conformance::store_conformance_tests!(factory);
}

/// A database written by a newer binary (a higher schema version) is
/// refused at start-up instead of being misread, on both backends.
mod schema_versions {
    use chancery_store::StoreError;
    use chancery_store_postgres::PostgresStore;
    use chancery_store_sqlite::SqliteStore;
    use chancery_testkit::pg::PgCluster;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_refuses_a_newer_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chancery.db");
        let store = SqliteStore::open(&path, 1).await.unwrap();
        chancery_store::Store::close(&store).await;
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute("UPDATE schema_version SET version = 999", []).unwrap();
        drop(conn);
        let refused = SqliteStore::open(&path, 1).await;
        assert!(matches!(refused, Err(StoreError::SchemaTooNew { found: 999, .. })), "{:?}", refused.err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_refuses_a_newer_database() {
        let url = PgCluster::shared().fresh_database().await.unwrap();
        let store = PostgresStore::connect(&url, 2).await.unwrap();
        chancery_store::Store::close(&store).await;
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
        let driver = tokio::spawn(connection);
        client.execute("UPDATE schema_version SET version = 999", &[]).await.unwrap();
        drop(client);
        let _ = driver.await;
        let refused = PostgresStore::connect(&url, 2).await;
        assert!(matches!(refused, Err(StoreError::SchemaTooNew { found: 999, .. })), "{:?}", refused.err());
    }
}
