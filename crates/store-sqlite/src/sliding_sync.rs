//! `SlidingSyncStore` on SQLite.

use async_trait::async_trait;
use chancery_store::*;
use chancery_store_sql::rows::{self, ROOM_LIST_COLUMNS};
use chancery_store_sql::{i, u};
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use crate::rooms::collect;
use crate::row::SqliteRow;
use crate::{BUSY_TIMEOUT_MS, SqliteStore, backend, stable_plans};

/// The sliding-sync connection state, in a SQLite file of its own beside
/// the database (`<database>-sliding`), on one connection.
///
/// Every answer writes it. In the main file, each such write made every
/// reader connection drop its whole page cache (WAL mode does so after any
/// commit by another connection) and paid an fsync: the first screen of a
/// user in 2,000 rooms read its room list and states cold each time. Apart,
/// the main file's readers keep their caches, and the state is written
/// without an fsync per commit (`synchronous = NORMAL`): it is disposable.
/// A power cut may forget the newest answers, after which their positions
/// answer `M_UNKNOWN_POS` and the client starts over, as the MSC provides;
/// connection keys stay unique because every open moves the key sequence
/// past any key an earlier run could have handed out.
///
/// Its schema is not migrated: a file of another [`CONNECTION_SCHEMA`], or
/// one that cannot be read, is recreated empty.
pub(crate) struct ConnectionFile {
    conn: std::sync::Mutex<Option<Connection>>,
}

/// The schema of the connection file (`PRAGMA user_version`).
const CONNECTION_SCHEMA: i64 = 1;

const CONNECTION_TABLES: &str = "
-- A connection: a device's `conn_id`. `conn_key` is never reused
-- (AUTOINCREMENT, and moved on at every open), so a position of a
-- restarted connection is refused.
CREATE TABLE sliding_sync_connections (
    conn_key     INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id      TEXT NOT NULL,
    device_id    TEXT NOT NULL,
    conn_id      TEXT NOT NULL,
    next_pos     INTEGER NOT NULL DEFAULT 1,
    last_used_ts INTEGER NOT NULL,
    UNIQUE (user_id, device_id, conn_id)
);
CREATE INDEX sliding_sync_connections_by_use ON sliding_sync_connections (last_used_ts);
-- The positions a connection's client may still send: the one it
-- acknowledged last and the answer after it.
CREATE TABLE sliding_sync_positions (
    conn_key INTEGER NOT NULL,
    pos      INTEGER NOT NULL,
    token    TEXT NOT NULL,
    PRIMARY KEY (conn_key, pos)
) WITHOUT ROWID;
-- What each answer recorded of a room; a room's state at a position is
-- its newest record at or before it.
CREATE TABLE sliding_sync_rooms (
    conn_key INTEGER NOT NULL,
    room_id  TEXT NOT NULL,
    pos      INTEGER NOT NULL,
    record   TEXT NOT NULL,
    PRIMARY KEY (conn_key, room_id, pos)
) WITHOUT ROWID;
CREATE INDEX sliding_sync_rooms_by_pos ON sliding_sync_rooms (conn_key, pos);
";

impl ConnectionFile {
    /// Opens the connection file of the database at `database`, creating
    /// or recreating it as needed.
    pub(crate) async fn open(database: &std::path::Path) -> StoreResult<Self> {
        let mut path = database.as_os_str().to_owned();
        path.push("-sliding");
        let path = std::path::PathBuf::from(path);
        let conn = tokio::task::spawn_blocking(move || match Self::open_file(&path) {
            Ok(conn) => Ok(conn),
            Err(e) => {
                tracing::warn!(error = %e, path = %path.display(), "recreating the sliding-sync connection file");
                for suffix in ["", "-wal", "-shm"] {
                    let mut file = path.as_os_str().to_owned();
                    file.push(suffix);
                    match std::fs::remove_file(&file) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(StoreError::Backend(e.to_string())),
                        _ => {}
                    }
                }
                Self::open_file(&path)
            }
        })
        .await
        .map_err(|e| StoreError::Backend(e.to_string()))??;
        Ok(Self { conn: std::sync::Mutex::new(Some(conn)) })
    }

    fn open_file(path: &std::path::Path) -> StoreResult<Connection> {
        let mut conn = Connection::open(path).map_err(backend)?;
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA temp_store = MEMORY;")
            .map_err(backend)?;
        conn.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS.into())).map_err(backend)?;
        stable_plans(&conn).map_err(backend)?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(backend)?;
        let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(backend)?;
        if version != CONNECTION_SCHEMA {
            if version != 0 {
                tracing::info!(found = version, "the sliding-sync connection file has another schema: recreated empty");
            }
            for table in ["sliding_sync_rooms", "sliding_sync_positions", "sliding_sync_connections"] {
                tx.execute_batch(&format!("DROP TABLE IF EXISTS {table}")).map_err(backend)?;
            }
            tx.execute_batch(CONNECTION_TABLES).map_err(backend)?;
            tx.execute_batch(&format!("PRAGMA user_version = {CONNECTION_SCHEMA}")).map_err(backend)?;
        }
        // Past every key an earlier run handed out, even one whose commit a
        // power cut undid: keys grow by one per connection, far below 1,024
        // a millisecond.
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 1024))
            .unwrap_or(0);
        let floor = now_ms.saturating_mul(1024);
        tx.execute("DELETE FROM sqlite_sequence WHERE name = 'sliding_sync_connections' AND seq < ?1", [floor])
            .map_err(backend)?;
        tx.execute(
            "INSERT INTO sqlite_sequence (name, seq) SELECT 'sliding_sync_connections', ?1
             WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'sliding_sync_connections')",
            [floor],
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)?;
        conn.set_prepared_statement_cache_capacity(32);
        Ok(conn)
    }

    /// Runs `f` in an IMMEDIATE transaction, committed if it succeeds. The
    /// work is a few indexed rows, so it runs on the calling task.
    fn run<T>(&self, f: impl FnOnce(&Transaction<'_>) -> StoreResult<T>) -> StoreResult<T> {
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let conn = guard.as_mut().ok_or_else(|| StoreError::Backend("the database is closed".into()))?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(backend)?;
        let out = f(&tx)?;
        tx.commit().map_err(backend)?;
        Ok(out)
    }

    pub(crate) fn close(&self) {
        if let Some(conn) = self.conn.lock().unwrap_or_else(|p| p.into_inner()).take()
            && let Err((_, e)) = conn.close()
        {
            tracing::warn!(error = %e, "closing the sliding-sync connection file failed");
        }
    }
}

/// Drops a connection and everything recorded for it.
fn drop_connection(conn: &Connection, conn_key: i64) -> StoreResult<()> {
    for sql in [
        "DELETE FROM sliding_sync_rooms WHERE conn_key = ?1",
        "DELETE FROM sliding_sync_positions WHERE conn_key = ?1",
        "DELETE FROM sliding_sync_connections WHERE conn_key = ?1",
    ] {
        conn.prepare_cached(sql).and_then(|mut s| s.execute([conn_key])).map_err(backend)?;
    }
    Ok(())
}

/// Each room's newest record at or before `pos`, by room id.
fn rooms_at(conn: &Connection, conn_key: i64, pos: i64) -> StoreResult<Vec<SentRoom>> {
    let mut stmt = conn
        .prepare_cached("SELECT room_id, record FROM sliding_sync_rooms WHERE conn_key = ?1 AND pos <= ?2 ORDER BY room_id, pos")
        .map_err(backend)?;
    let rows =
        collect(stmt.query_map([conn_key, pos], |r| Ok(SentRoom { room_id: r.get(0)?, record: r.get(1)? })).map_err(backend)?)?;
    let mut rooms: Vec<SentRoom> = Vec::with_capacity(rows.len());
    for room in rows {
        match rooms.last_mut() {
            // Sorted by position within a room: the later record wins.
            Some(last) if last.room_id == room.room_id => *last = room,
            _ => rooms.push(room),
        }
    }
    Ok(rooms)
}

#[async_trait]
impl SlidingSyncStore for SqliteStore {
    async fn room_list(&self, user_id: &str) -> StoreResult<Vec<RoomListEntry>> {
        let user_id = user_id.to_owned();
        self.read(move |conn| {
            let sql = format!(
                "SELECT {ROOM_LIST_COLUMNS}
                 FROM room_state s JOIN rooms r ON r.room_id = s.room_id
                 WHERE s.state_key = ?1 AND s.event_type = 'm.room.member' AND s.to_pos IS NULL
                 ORDER BY s.room_id"
            );
            let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
            collect(stmt.query_map([&user_id], |r| rows::room_list_entry(&SqliteRow(r))).map_err(backend)?)
        })
        .await
    }

    async fn room_list_changes(&self, user_id: &str, after: u64, max_rooms: usize) -> StoreResult<Option<Vec<RoomListEntry>>> {
        let user_id = user_id.to_owned();
        let (after, limit) = (i(after), i64::try_from(max_rooms).unwrap_or(i64::MAX).saturating_add(1));
        self.read(move |conn| {
            let moved: i64 = conn
                .prepare_cached("SELECT COUNT(*) FROM (SELECT 1 FROM rooms WHERE last_pos > ?1 LIMIT ?2)")
                .and_then(|mut s| s.query_row(params![after, limit], |r| r.get(0)))
                .map_err(backend)?;
            if moved >= limit {
                return Ok(None);
            }
            let sql = format!(
                "SELECT {ROOM_LIST_COLUMNS}
                 FROM rooms r JOIN room_state s ON s.room_id = r.room_id
                     AND s.state_key = ?1 AND s.event_type = 'm.room.member' AND s.to_pos IS NULL
                 WHERE r.last_pos > ?2
                 ORDER BY s.room_id"
            );
            let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
            collect(stmt.query_map(params![user_id, after], |r| rows::room_list_entry(&SqliteRow(r))).map_err(backend)?).map(Some)
        })
        .await
    }

    async fn sliding_position(
        &self,
        owner: ConnectionOwner<'_>,
        conn_key: u64,
        pos: u64,
        with_rooms: bool,
    ) -> StoreResult<SlidingPosition> {
        let (user_id, device_id, conn_id) = (owner.user_id, owner.device_id, owner.conn_id);
        self.connections.run(|tx| {
            let token: Option<String> = tx
                .prepare_cached(
                    "SELECT p.token FROM sliding_sync_connections c
                     JOIN sliding_sync_positions p ON p.conn_key = c.conn_key AND p.pos = ?5
                     WHERE c.conn_key = ?4 AND c.user_id = ?1 AND c.device_id = ?2 AND c.conn_id = ?3",
                )
                .and_then(|mut s| s.query_row(params![user_id, device_id, conn_id, i(conn_key), i(pos)], |r| r.get(0)).optional())
                .map_err(backend)?;
            let token = token.ok_or(StoreError::UnknownPosition)?;
            let rooms = if with_rooms { rooms_at(tx, i(conn_key), i(pos))? } else { Vec::new() };
            Ok(SlidingPosition { conn_key, pos, token, rooms })
        })
    }

    async fn start_sliding_connection(&self, owner: ConnectionOwner<'_>, now_ts: u64, max_per_device: usize) -> StoreResult<u64> {
        self.connections
            .run(|tx| start_connection(tx, owner.user_id, owner.device_id, owner.conn_id, now_ts, max_per_device).map(u))
    }

    async fn record_sliding_answer(
        &self,
        conn_key: u64,
        base_pos: u64,
        token: &str,
        rooms: &[SentRoom],
        now_ts: u64,
    ) -> StoreResult<u64> {
        self.connections.run(|tx| {
            let key = i(conn_key);
            let base = i(base_pos);
            let next: i64 = tx
                .prepare_cached("SELECT next_pos FROM sliding_sync_connections WHERE conn_key = ?1")
                .and_then(|mut s| s.query_row([key], |r| r.get(0)).optional())
                .map_err(backend)?
                .ok_or(StoreError::UnknownPosition)?;
            if base_pos != 0 {
                tx.prepare_cached("SELECT 1 FROM sliding_sync_positions WHERE conn_key = ?1 AND pos = ?2")
                    .and_then(|mut s| s.query_row([key, base], |_| Ok(())).optional())
                    .map_err(backend)?
                    .ok_or(StoreError::UnknownPosition)?;
                for sql in [
                    "DELETE FROM sliding_sync_positions WHERE conn_key = ?1 AND pos <> ?2",
                    "DELETE FROM sliding_sync_rooms WHERE conn_key = ?1 AND pos > ?2",
                    // Records the base position's superseded; every earlier
                    // position was a base once, so nothing older is left over.
                    "DELETE FROM sliding_sync_rooms WHERE conn_key = ?1 AND pos < ?2
                       AND room_id IN (SELECT room_id FROM sliding_sync_rooms WHERE conn_key = ?1 AND pos = ?2)",
                ] {
                    tx.prepare_cached(sql).and_then(|mut s| s.execute([key, base])).map_err(backend)?;
                }
            }
            tx.prepare_cached("UPDATE sliding_sync_connections SET next_pos = ?2, last_used_ts = ?3 WHERE conn_key = ?1")
                .and_then(|mut s| s.execute(params![key, next + 1, i(now_ts)]))
                .map_err(backend)?;
            tx.prepare_cached("INSERT INTO sliding_sync_positions (conn_key, pos, token) VALUES (?1, ?2, ?3)")
                .and_then(|mut s| s.execute(params![key, next, token]))
                .map_err(backend)?;
            let mut insert = tx
                .prepare_cached("INSERT INTO sliding_sync_rooms (conn_key, room_id, pos, record) VALUES (?1, ?2, ?3, ?4)")
                .map_err(backend)?;
            for room in rooms {
                insert.execute(params![key, room.room_id, next, room.record]).map_err(|e| {
                    if crate::accounts::is_unique_violation(&e) {
                        StoreError::Contract("two records of one room in one answer")
                    } else {
                        backend(e)
                    }
                })?;
            }
            Ok(u(next))
        })
    }

    async fn expire_sliding_connections(&self, before_ts: u64, max: usize) -> StoreResult<u64> {
        self.connections.run(|tx| {
            let keys: Vec<i64> = {
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT conn_key FROM sliding_sync_connections WHERE last_used_ts < ?1 ORDER BY last_used_ts LIMIT ?2",
                    )
                    .map_err(backend)?;
                collect(stmt.query_map([i(before_ts), i(max as u64)], |r| r.get(0)).map_err(backend)?)?
            };
            for key in &keys {
                drop_connection(tx, *key)?;
            }
            Ok(keys.len() as u64)
        })
    }
}

/// Starts the owner's connection afresh (see
/// [`SlidingSyncStore::start_sliding_connection`]); returns its key.
fn start_connection(
    tx: &Transaction<'_>,
    user_id: &str,
    device_id: &str,
    conn_id: &str,
    now_ts: u64,
    max_per_device: usize,
) -> StoreResult<i64> {
    let previous: Option<i64> = tx
        .prepare_cached("SELECT conn_key FROM sliding_sync_connections WHERE user_id = ?1 AND device_id = ?2 AND conn_id = ?3")
        .and_then(|mut s| s.query_row([&user_id, &device_id, &conn_id], |r| r.get(0)).optional())
        .map_err(backend)?;
    if let Some(key) = previous {
        drop_connection(tx, key)?;
    }
    tx.prepare_cached("INSERT INTO sliding_sync_connections (user_id, device_id, conn_id, last_used_ts) VALUES (?1, ?2, ?3, ?4)")
        .and_then(|mut s| s.execute(params![user_id, device_id, conn_id, i(now_ts)]))
        .map_err(backend)?;
    let conn_key = tx.last_insert_rowid();
    let beyond: Vec<i64> = {
        let mut stmt = tx
            .prepare_cached(
                "SELECT conn_key FROM sliding_sync_connections WHERE user_id = ?1 AND device_id = ?2
                 ORDER BY last_used_ts DESC, conn_key DESC LIMIT -1 OFFSET ?3",
            )
            .map_err(backend)?;
        collect(stmt.query_map(params![user_id, device_id, i(max_per_device as u64)], |r| r.get(0)).map_err(backend)?)?
    };
    for key in beyond {
        drop_connection(tx, key)?;
    }
    Ok(conn_key)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWNER: ConnectionOwner<'static> = ConnectionOwner { user_id: "@a:x", device_id: "D", conn_id: "main" };

    async fn start(store: &SqliteStore) -> u64 {
        let key = store.start_sliding_connection(OWNER, 1, 4).await.unwrap();
        assert_eq!(store.record_sliding_answer(key, 0, "t", &[], 1).await.unwrap(), 1);
        key
    }

    /// Reopened, the file keeps its positions; the key sequence moves on,
    /// so a new connection never takes an earlier key.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn positions_outlive_a_restart_and_keys_are_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chancery.db");
        let store = SqliteStore::open(&path, 1).await.unwrap();
        let first = start(&store).await;
        store.close().await;
        let store = SqliteStore::open(&path, 1).await.unwrap();
        let kept = store.sliding_position(OWNER, first, 1, true).await.unwrap();
        assert_eq!(kept.token, "t");
        let second = start(&store).await;
        assert!(second > first, "{second} after {first}");
        store.close().await;
    }

    /// A file that is not a database, or of another schema, is recreated
    /// empty: its positions are unknown and the server starts.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreadable_or_foreign_file_is_recreated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chancery.db");
        let side = dir.path().join("chancery.db-sliding");
        let store = SqliteStore::open(&path, 1).await.unwrap();
        let key = start(&store).await;
        store.close().await;
        Connection::open(&side).unwrap().execute_batch("PRAGMA user_version = 99").unwrap();
        let store = SqliteStore::open(&path, 1).await.unwrap();
        let gone = store.sliding_position(OWNER, key, 1, false).await;
        assert!(matches!(gone, Err(StoreError::UnknownPosition)), "{gone:?}");
        store.close().await;
        for suffix in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(dir.path().join(format!("chancery.db-sliding{suffix}")));
        }
        std::fs::write(&side, b"not a database, not at all; long enough to have a header of sorts....").unwrap();
        let store = SqliteStore::open(&path, 1).await.unwrap();
        assert!(start(&store).await > key);
        store.close().await;
    }
}
