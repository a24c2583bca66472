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

/// PostgreSQL databases written before its migrations took SQLite's
/// numbers (PostgreSQL had no 0009_report_ids, so its 9 and 10 are now 10
/// and 11) open with this binary: every migration applied exactly once,
/// the data kept.
mod postgres_migration_numbers {
    use chancery_store::{AccountStore, PushStore, ReportStore, Store};
    use chancery_store_postgres::PostgresStore;
    use chancery_testkit::pg::PgCluster;

    /// The files the old binary applied, in its order: SQLite's 0009 had no
    /// PostgreSQL file, so its 9th and 10th were today's 0010 and 0011.
    const OLD_MIGRATIONS: [&str; 10] = [
        include_str!("../../../store-postgres/migrations/0001_accounts.sql"),
        include_str!("../../../store-postgres/migrations/0002_rooms.sql"),
        include_str!("../../../store-postgres/migrations/0003_filters.sql"),
        include_str!("../../../store-postgres/migrations/0004_account_data.sql"),
        include_str!("../../../store-postgres/migrations/0005_relations.sql"),
        include_str!("../../../store-postgres/migrations/0006_directory.sql"),
        include_str!("../../../store-postgres/migrations/0007_search.sql"),
        include_str!("../../../store-postgres/migrations/0008_push.sql"),
        include_str!("../../../store-postgres/migrations/0010_push_rule_owners.sql"),
        include_str!("../../../store-postgres/migrations/0011_notifications_by_position.sql"),
    ];

    /// Today's 0009, which a database of the new numbering at version 9 has.
    const REPORT_IDS: &str = include_str!("../../../store-postgres/migrations/0009_report_ids.sql");

    /// Data as the old binary stored it at its version 8 or 9 (notifications
    /// still keyed by event id): an account with push rules, a room with
    /// one message that notified a member, a report.
    const OLD_DATA: &str = "
        INSERT INTO accounts (user_id, password_hash, is_admin, created_ts) VALUES ('@old:x', 'hash', FALSE, 1);
        INSERT INTO rooms (room_id, room_version, creator, created_ts, max_depth) VALUES ('!room:x', '10', '@old:x', 2, 1);
        INSERT INTO events (event_id, room_id, stream_pos, event_type, sender, origin_server_ts, depth, json)
            VALUES ('$message', '!room:x', 1, 'm.room.message', '@old:x', 3, 1, '{}');
        UPDATE stream_position SET pos = 1;
        INSERT INTO forward_extremities (room_id, event_id) VALUES ('!room:x', '$message');
        INSERT INTO notifications (user_id, event_id, room_id, actions, highlight)
            VALUES ('@member:x', '$message', '!room:x', '[\"notify\"]', TRUE);
        INSERT INTO account_data (user_id, room_id, event_type, content, stream_pos)
            VALUES ('@old:x', '', 'm.push_rules', '{\"global\":{\"override\":[]}}', 1);
        UPDATE stream_counters SET pos = 1 WHERE stream = 'account_data';
        INSERT INTO content_reports (room_id, event_id, reporter, reason, created_ts)
            VALUES ('!room:x', '$message', '@member:x', 'spam', 4);";

    async fn raw_client(url: &str) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        client
    }

    /// A fresh database on which `migrations` ran, `data` is stored after
    /// the first `data_after` of them, and `version` is recorded, as a
    /// binary would have left it.
    async fn database(migrations: &[&str], data_after: usize, version: i64) -> String {
        let url = PgCluster::shared().fresh_database().await.unwrap();
        let client = raw_client(&url).await;
        client.batch_execute("CREATE TABLE schema_version (version BIGINT NOT NULL)").await.unwrap();
        for (n, sql) in migrations.iter().enumerate() {
            if n == data_after {
                client.batch_execute(OLD_DATA).await.unwrap();
            }
            client.batch_execute(sql).await.unwrap();
        }
        client.execute("INSERT INTO schema_version (version) VALUES ($1)", &[&version]).await.unwrap();
        url
    }

    /// The stored version, and whether the index of 0010 and the key of
    /// 0011 are there.
    async fn schema(url: &str) -> (i64, bool, bool) {
        let row = raw_client(url)
            .await
            .query_one(
                "SELECT (SELECT version FROM schema_version),
                        to_regclass('account_data_push_rules') IS NOT NULL,
                        EXISTS (SELECT 1 FROM pg_attribute
                                WHERE attrelid = to_regclass('notifications') AND attname = 'stream_pos'
                                  AND NOT attisdropped)",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    }

    /// Opens the database with this binary, twice, and finds the newest
    /// version and the data.
    async fn opens_at_the_newest_version_with_its_data(url: &str) {
        for _ in 0..2 {
            let store = PostgresStore::connect(url, 2).await.unwrap();
            assert_eq!(schema(url).await, (chancery_store_postgres::SCHEMA_VERSION, true, true));
            assert!(store.account("@old:x").await.unwrap().is_some());
            let rules = store.push_rules("@old:x").await.unwrap().expect("the old rule set");
            assert_eq!(serde_json::from_str::<serde_json::Value>(&rules).unwrap(), serde_json::json!({"override": []}));
            let notifications = store.notifications("@member:x", None, 10, false).await.unwrap();
            assert_eq!(notifications.len(), 1);
            assert_eq!((notifications[0].event.event_id.as_str(), notifications[0].highlight), ("$message", true));
            assert_eq!(store.notification_counts("@member:x", "!room:x", 0).await.unwrap(), (1, 1));
            assert_eq!(store.report(1).await.unwrap().unwrap().reason.as_deref(), Some("spam"));
            store.close().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn old_version_9_had_push_rule_owners() {
        let url = database(&OLD_MIGRATIONS[..9], 8, 9).await;
        opens_at_the_newest_version_with_its_data(&url).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn old_version_10_had_notifications_by_position() {
        let url = database(&OLD_MIGRATIONS, 8, 10).await;
        opens_at_the_newest_version_with_its_data(&url).await;
    }

    /// The same stored numbers written by this numbering are not mistaken
    /// for old ones: 9 has only the no-op, 10 also the index.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn new_versions_9_and_10_are_left_as_they_are() {
        let new_migrations: Vec<&str> = OLD_MIGRATIONS[..8].iter().copied().chain([REPORT_IDS, OLD_MIGRATIONS[8]]).collect();
        for version in [9, 10] {
            let url = database(&new_migrations[..version], 8, version as i64).await;
            opens_at_the_newest_version_with_its_data(&url).await;
        }
    }
}

/// A read past the database's time limit is stopped and reported as
/// such (the API answers 503 with Retry-After), while small reads on the
/// same store go on; on both backends.
mod query_timeouts {
    use std::sync::Arc;
    use std::time::Duration;

    use chancery_store::{DynStore, NewAccount, StoreError};
    use chancery_store_postgres::{PostgresOptions, PostgresStore};
    use chancery_store_sqlite::{SqliteOptions, SqliteStore};
    use chancery_testkit::pg::PgCluster;

    const MEMBERS: usize = 8_000;

    async fn fill(store: DynStore) {
        chancery_store_conformance::big_room(&store, "!big:x", MEMBERS).await;
        let alice = NewAccount { user_id: "@alice:x".into(), password_hash: None, is_admin: false, created_ts: 1 };
        store.create_account(alice, None, None, 1).await.unwrap();
        store.close().await;
    }

    async fn a_slow_read_is_stopped(store: DynStore) {
        let stopped = store.state_at("!big:x", None).await;
        assert!(matches!(stopped, Err(StoreError::QueryTimedOut)), "{:?}", stopped.map(|s| s.len()));
        // A deadline of a millisecond or two can stop a small read too on a
        // loaded machine: one of a few tries must pass.
        let mut small = Err(StoreError::QueryTimedOut);
        for _ in 0..20 {
            small = store.account("@alice:x").await;
            if small.is_ok() {
                break;
            }
        }
        assert!(small.unwrap().is_some(), "a small read is not stopped");
        // The connection is usable again.
        assert!(matches!(store.state_at("!big:x", None).await, Err(StoreError::QueryTimedOut)));
        store.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_stops_a_read_past_its_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chancery.db");
        fill(Arc::new(SqliteStore::open(&path, 2).await.unwrap())).await;
        let options = SqliteOptions { readers: 2, read_timeout: Duration::from_millis(1) };
        a_slow_read_is_stopped(Arc::new(SqliteStore::open_with(&path, options).await.unwrap())).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_stops_a_statement_past_its_timeout() {
        let url = PgCluster::shared().fresh_database().await.unwrap();
        fill(Arc::new(PostgresStore::connect(&url, 2).await.unwrap())).await;
        let options = PostgresOptions { max_connections: 2, statement_timeout: Duration::from_millis(2) };
        a_slow_read_is_stopped(Arc::new(PostgresStore::connect_with(&url, options).await.unwrap())).await;
    }
}
