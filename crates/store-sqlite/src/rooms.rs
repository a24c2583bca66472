//! `RoomStore` on SQLite.
//!
//! Every write runs on the single writer connection in one IMMEDIATE
//! transaction, so checks made inside it (room exists, forward extremities,
//! transaction key) cannot be overtaken by another writer, and stream
//! positions are simply `MAX(stream_pos) + 1`: dense, and committed in
//! order. Reads run on the reader pool; a read of several statements runs
//! in one read transaction, so it sees one snapshot.

use std::collections::BTreeSet;

use async_trait::async_trait;
use chancery_proto::ruma::events::room::member::MembershipState;
use chancery_store::*;
use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};

use chancery_store_sql::batches::check_room_events;
use chancery_store_sql::rows::{self, EVENT_COLUMNS, REDACTION_JOIN};
use chancery_store_sql::{i, u};

use crate::accounts::is_unique_violation;
use crate::row::SqliteRow;
use crate::{SqliteStore, backend};

pub(crate) fn event_from_row(row: &Row<'_>) -> rusqlite::Result<StoredEvent> {
    rows::stored_event(&SqliteRow(row))
}

fn membership_from_row(row: &Row<'_>) -> rusqlite::Result<Membership> {
    rows::membership(&SqliteRow(row))
}

pub(crate) fn collect<T>(rows: impl Iterator<Item = rusqlite::Result<T>>) -> StoreResult<Vec<T>> {
    rows.collect::<Result<Vec<_>, _>>().map_err(backend)
}

/// The whole of `append_event` after its transaction has begun; also used
/// for each event of `create_room`.
pub(crate) fn append_in_tx(tx: &Transaction<'_>, event: &NewEvent, prev_extremities: &[String]) -> StoreResult<u64> {
    // One writer: these checks cannot be overtaken before the INSERT.
    let pos = next_stream_pos(tx)?;
    check_room_and_extremities(tx, event, prev_extremities, pos)?;
    check_ids_unused(tx, event)?;
    insert_event(tx, event, pos)?;
    crate::search::index_event(tx, event, pos)?;
    crate::push::insert_notifications(tx, event, pos)?;
    make_only_extremity(tx, event)?;
    if let Some(state_key) = &event.state_key {
        record_state(tx, event, state_key, pos)?;
    }
    if let Some(target) = &event.redacts {
        record_redaction(tx, event, target)?;
    }
    if let Some(relation) = &event.relates_to {
        crate::relations::record_relation_in(tx, event, relation, pos)?;
    }
    Ok(u(pos))
}

/// `UnknownRoom` or `StaleExtremities` unless the room exists and its
/// forward extremities are exactly `prev_extremities`; raises the room's
/// max depth to the event's, and records it as the room's newest event
/// at `pos` (and newest "bump", for the room list, if its type bumps;
/// the create event also records the room's type, the encryption event
/// that it is encrypted).
fn check_room_and_extremities(tx: &Transaction<'_>, event: &NewEvent, prev_extremities: &[String], pos: i64) -> StoreResult<()> {
    let room_type = (event.event_type == "m.room.create").then(|| room_type_of_create(&event.json)).flatten();
    let found = tx
        .prepare_cached(
            "UPDATE rooms SET max_depth = MAX(max_depth, ?2), last_pos = ?3,
                              bump_pos = CASE WHEN ?4 THEN ?3 ELSE bump_pos END, room_type = COALESCE(?5, room_type),
                              encrypted = encrypted OR ?6
             WHERE room_id = ?1",
        )
        .and_then(|mut s| {
            s.execute(params![
                event.room_id,
                i(event.depth),
                pos,
                bumps_room(&event.event_type),
                room_type,
                enables_encryption(&event.event_type, event.state_key.as_deref())
            ])
        })
        .map_err(backend)?;
    if found == 0 {
        return Err(StoreError::UnknownRoom);
    }
    let current: BTreeSet<String> = {
        let mut stmt = tx.prepare_cached("SELECT event_id FROM forward_extremities WHERE room_id = ?1").map_err(backend)?;
        collect(stmt.query_map([&event.room_id], |r| r.get(0)).map_err(backend)?)?.into_iter().collect()
    };
    if current != prev_extremities.iter().cloned().collect::<BTreeSet<_>>() {
        return Err(StoreError::StaleExtremities);
    }
    Ok(())
}

/// `TransactionIdUsed` or `EventIdTaken` if the event's transaction key or
/// id is taken.
fn check_ids_unused(tx: &Transaction<'_>, event: &NewEvent) -> StoreResult<()> {
    if let Some(txn) = &event.txn
        && let Some(_) = event_for_txn_in(tx, txn)?
    {
        return Err(StoreError::TransactionIdUsed);
    }
    let exists = tx
        .prepare_cached("SELECT 1 FROM events WHERE event_id = ?1")
        .and_then(|mut s| s.query_row([&event.event_id], |_| Ok(())).optional())
        .map_err(backend)?;
    if exists.is_some() {
        return Err(StoreError::EventIdTaken);
    }
    Ok(())
}

/// The single writer makes `MAX + 1` dense and committed in order.
fn next_stream_pos(tx: &Transaction<'_>) -> StoreResult<i64> {
    tx.prepare_cached("SELECT COALESCE(MAX(stream_pos), 0) + 1 FROM events")
        .and_then(|mut s| s.query_row([], |r| r.get(0)))
        .map_err(backend)
}

fn insert_event(tx: &Transaction<'_>, event: &NewEvent, pos: i64) -> StoreResult<()> {
    let txn = event.txn.as_ref();
    tx.prepare_cached(
        "INSERT INTO events (stream_pos, event_id, room_id, event_type, state_key, sender, origin_server_ts, depth, json,
                             membership, txn_user, txn_device, txn_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )
    .and_then(|mut s| {
        s.execute(params![
            pos,
            event.event_id,
            event.room_id,
            event.event_type,
            event.state_key,
            event.sender,
            i(event.origin_server_ts),
            i(event.depth),
            event.json,
            event.membership.as_ref().map(MembershipState::as_str),
            txn.map(|t| &t.user_id),
            txn.map(|t| &t.device_id),
            txn.map(|t| &t.txn_id),
        ])
    })
    .map_err(|e| if is_unique_violation(&e) { StoreError::EventIdTaken } else { backend(e) })?;
    Ok(())
}

/// The event becomes its room's only forward extremity.
fn make_only_extremity(tx: &Transaction<'_>, event: &NewEvent) -> StoreResult<()> {
    tx.prepare_cached("DELETE FROM forward_extremities WHERE room_id = ?1")
        .and_then(|mut s| s.execute([&event.room_id]))
        .map_err(backend)?;
    tx.prepare_cached("INSERT INTO forward_extremities (room_id, event_id) VALUES (?1, ?2)")
        .and_then(|mut s| s.execute([&event.room_id, &event.event_id]))
        .map_err(backend)?;
    Ok(())
}

/// The state event ends the span of the one it replaces and opens its own
/// at `pos`; other users' scheduled delayed events at its key are
/// cancelled (`RoomStore::append_event`).
fn record_state(tx: &Transaction<'_>, event: &NewEvent, state_key: &str, pos: i64) -> StoreResult<()> {
    tx.prepare_cached(
        "UPDATE room_state SET to_pos = ?4
         WHERE room_id = ?1 AND event_type = ?2 AND state_key = ?3 AND to_pos IS NULL",
    )
    .and_then(|mut s| s.execute(params![event.room_id, event.event_type, state_key, pos]))
    .map_err(backend)?;
    tx.prepare_cached(
        "INSERT INTO room_state (room_id, event_type, state_key, event_id, membership, from_pos)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .and_then(|mut s| {
        s.execute(params![
            event.room_id,
            event.event_type,
            state_key,
            event.event_id,
            event.membership.as_ref().map(MembershipState::as_str),
            pos
        ])
    })
    .map_err(backend)?;
    tx.prepare_cached(
        "DELETE FROM delayed_events
         WHERE room_id = ?1 AND event_type = ?2 AND state_key = ?3 AND user_id <> ?4 AND claimed = 0",
    )
    .and_then(|mut s| s.execute(params![event.room_id, event.event_type, state_key, event.sender]))
    .map_err(backend)?;
    Ok(())
}

/// Links the redaction to `target` (the first one wins), which leaves the
/// search index and loses its relation.
fn record_redaction(tx: &Transaction<'_>, event: &NewEvent, target: &str) -> StoreResult<()> {
    tx.prepare_cached(
        "INSERT INTO redactions (target_event_id, redaction_event_id) VALUES (?1, ?2)
         ON CONFLICT (target_event_id) DO NOTHING",
    )
    .and_then(|mut s| s.execute([target, event.event_id.as_str()]))
    .map_err(backend)?;
    crate::search::unindex_event(tx, target)?;
    crate::relations::break_relation_in(tx, target)?;
    Ok(())
}

/// The whole of `create_room` inside a write transaction; also used by
/// the directory operations that create a room together with its addresses.
pub(crate) fn create_room_in_tx(tx: &Transaction<'_>, room: &NewRoom, events: &[NewEvent]) -> StoreResult<u64> {
    check_room_events(&room.room_id, events)?;
    tx.execute(
        "INSERT INTO rooms (room_id, room_version, creator, created_ts) VALUES (?1, ?2, ?3, ?4)",
        params![room.room_id, room.room_version.as_str(), room.creator, i(room.created_ts)],
    )
    .map_err(|e| if is_unique_violation(&e) { StoreError::RoomIdTaken } else { backend(e) })?;
    let mut pos = 0;
    let mut prev: Vec<String> = Vec::new();
    for event in events {
        pos = append_in_tx(tx, event, &prev)?;
        prev = vec![event.event_id.clone()];
    }
    Ok(pos)
}

fn event_for_txn_in(conn: &Connection, txn: &TxnKey) -> StoreResult<Option<String>> {
    conn.prepare_cached("SELECT event_id FROM events WHERE txn_user = ?1 AND txn_device = ?2 AND txn_id = ?3")
        .and_then(|mut s| s.query_row([&txn.user_id, &txn.device_id, &txn.txn_id], |r| r.get(0)).optional())
        .map_err(backend)
}

#[async_trait]
impl RoomStore for SqliteStore {
    async fn create_room(&self, room: NewRoom, events: Vec<NewEvent>) -> StoreResult<u64> {
        self.write(move |tx| create_room_in_tx(tx, &room, &events)).await
    }

    async fn replace_stub_room(&self, room: NewRoom, events: Vec<NewEvent>) -> StoreResult<u64> {
        self.write(move |tx| {
            let stub = tx
                .prepare_cached(
                    "SELECT 1 FROM rooms r WHERE r.room_id = ?1
                     AND NOT EXISTS (SELECT 1 FROM room_state s WHERE s.room_id = r.room_id AND s.event_type = 'm.room.create')",
                )
                .and_then(|mut s| s.query_row([&room.room_id], |_| Ok(())).optional())
                .map_err(backend)?;
            if stub.is_none() {
                return Err(StoreError::UnknownRoom);
            }
            // A knock's stub holds searchable state (the room's name):
            // the joined room's copy of those events is indexed anew.
            for table in ["room_state", "forward_extremities", "event_search", "events", "rooms"] {
                tx.execute(&format!("DELETE FROM {table} WHERE room_id = ?1"), [&room.room_id]).map_err(backend)?;
            }
            create_room_in_tx(tx, &room, &events)
        })
        .await
    }

    async fn append_event(&self, event: NewEvent, prev_extremities: &[String]) -> StoreResult<u64> {
        let prev = prev_extremities.to_vec();
        let listener = self.event_listener.get().cloned();
        let room_id = event.room_id.clone();
        let target = event.member_target().map(str::to_owned);
        self.writer
            .write_then(move |tx| append_in_tx(tx, &event, &prev), move || listener.and_then(|l| l(&room_id, target.as_deref())))
            .await
    }

    async fn room(&self, room_id: &str) -> StoreResult<Option<RoomInfo>> {
        let room_id = room_id.to_owned();
        self.read(move |conn| {
            // Two statements, one snapshot.
            let tx = conn.unchecked_transaction().map_err(backend)?;
            let found = tx
                .prepare_cached("SELECT room_id, room_version, creator, created_ts, max_depth FROM rooms WHERE room_id = ?1")
                .and_then(|mut s| {
                    s.query_row([&room_id], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get(2)?, u(r.get(3)?), u(r.get(4)?)))
                    })
                    .optional()
                })
                .map_err(backend)?;
            let Some((found_id, room_version, creator, created_ts, max_depth)) = found else { return Ok(None) };
            let room_version = stored_room_version(&room_version)?;
            let mut info =
                RoomInfo { room_id: found_id, room_version, creator, created_ts, forward_extremities: Vec::new(), max_depth };
            let mut stmt = tx
                .prepare_cached("SELECT event_id FROM forward_extremities WHERE room_id = ?1 ORDER BY event_id")
                .map_err(backend)?;
            info.forward_extremities = collect(stmt.query_map([&room_id], |r| r.get(0)).map_err(backend)?)?;
            Ok(Some(info))
        })
        .await
    }

    async fn event(&self, event_id: &str) -> StoreResult<Option<StoredEvent>> {
        let event_id = event_id.to_owned();
        self.read(move |conn| {
            let sql = format!("SELECT {EVENT_COLUMNS} FROM events e {REDACTION_JOIN} WHERE e.event_id = ?1");
            conn.prepare_cached(&sql).and_then(|mut s| s.query_row([&event_id], event_from_row).optional()).map_err(backend)
        })
        .await
    }

    async fn event_for_txn(&self, txn: &TxnKey) -> StoreResult<Option<String>> {
        let txn = txn.clone();
        self.read(move |conn| event_for_txn_in(conn, &txn)).await
    }

    async fn state_at(&self, room_id: &str, at: Option<u64>) -> StoreResult<Vec<StoredEvent>> {
        let room_id = room_id.to_owned();
        self.read_heavy(move |conn| match at {
            None => {
                let sql = format!(
                    "SELECT {EVENT_COLUMNS} FROM room_state s INDEXED BY room_state_current
                     JOIN events e ON e.event_id = s.event_id {REDACTION_JOIN}
                     WHERE s.room_id = ?1 AND s.to_pos IS NULL
                     ORDER BY s.event_type, s.state_key"
                );
                let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
                collect(stmt.query_map([&room_id], event_from_row).map_err(backend)?)
            }
            Some(at) => {
                // In force at `at`: started by then and not yet ended, i.e.
                // current rows that started by then plus replaced rows that
                // ended after it; each half has its own index. Without
                // statistics SQLite would rather scan the room's whole state
                // history by primary key, hence INDEXED BY here and below
                // (which fails loudly should an index stop being usable).
                let sql = format!(
                    "SELECT {EVENT_COLUMNS} FROM (
                         SELECT event_id, event_type, state_key FROM room_state INDEXED BY room_state_current
                         WHERE room_id = ?1 AND to_pos IS NULL AND from_pos <= ?2
                         UNION ALL
                         SELECT event_id, event_type, state_key FROM room_state INDEXED BY room_state_by_end
                         WHERE room_id = ?1 AND to_pos > ?2 AND from_pos <= ?2
                     ) s JOIN events e ON e.event_id = s.event_id {REDACTION_JOIN}
                     ORDER BY s.event_type, s.state_key"
                );
                let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
                collect(stmt.query_map(params![room_id, i(at)], event_from_row).map_err(backend)?)
            }
        })
        .await
    }

    async fn state_at_with_members(&self, room_id: &str, at: Option<u64>, members: &[String]) -> StoreResult<Vec<StoredEvent>> {
        let room_id = room_id.to_owned();
        let members = serde_json::to_string(members).map_err(|e| StoreError::Backend(e.to_string()))?;
        let at = at.map_or(i64::MAX, i);
        self.read(move |conn| {
            // As `state_at`, in three parts: the non-member state, the
            // wanted members (index lookups), and rows replaced after `at`.
            let sql = format!(
                "SELECT {EVENT_COLUMNS} FROM (
                     SELECT event_id, event_type, state_key FROM room_state INDEXED BY room_state_current
                     WHERE room_id = ?1 AND to_pos IS NULL AND from_pos <= ?2 AND event_type <> 'm.room.member'
                     UNION ALL
                     SELECT event_id, event_type, state_key FROM room_state INDEXED BY room_state_current
                     WHERE room_id = ?1 AND to_pos IS NULL AND from_pos <= ?2 AND event_type = 'm.room.member'
                       AND state_key IN (SELECT value FROM json_each(?3))
                     UNION ALL
                     SELECT event_id, event_type, state_key FROM room_state INDEXED BY room_state_by_end
                     WHERE room_id = ?1 AND to_pos > ?2 AND from_pos <= ?2
                       AND (event_type <> 'm.room.member' OR state_key IN (SELECT value FROM json_each(?3)))
                 ) s JOIN events e ON e.event_id = s.event_id {REDACTION_JOIN}
                 ORDER BY s.event_type, s.state_key"
            );
            let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
            collect(stmt.query_map(params![room_id, at, members], event_from_row).map_err(backend)?)
        })
        .await
    }

    async fn current_state_events(&self, room_id: &str, keys: &[(String, String)]) -> StoreResult<Vec<StoredEvent>> {
        if keys.len() > MAX_STATE_KEYS_PER_READ {
            return Err(StoreError::TooManyStateKeys);
        }
        let (room_id, keys) = (room_id.to_owned(), keys.to_vec());
        self.read(move |conn| {
            let sql = format!(
                "SELECT {EVENT_COLUMNS} FROM room_state s JOIN events e ON e.event_id = s.event_id {REDACTION_JOIN}
                 WHERE s.room_id = ?1 AND s.event_type = ?2 AND s.state_key = ?3 AND s.to_pos IS NULL"
            );
            let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
            let mut found = Vec::with_capacity(keys.len());
            for (event_type, state_key) in &keys {
                found.extend(stmt.query_row([&room_id, event_type, state_key], event_from_row).optional().map_err(backend)?);
            }
            Ok(found)
        })
        .await
    }

    async fn current_state_of_type(&self, room_id: &str, event_type: &str, limit: usize) -> StoreResult<Vec<StoredEvent>> {
        let (room_id, event_type) = (room_id.to_owned(), event_type.to_owned());
        let limit = i(u64::try_from(limit).unwrap_or(u64::MAX));
        self.read(move |conn| {
            let sql = format!(
                "SELECT {EVENT_COLUMNS} FROM room_state s JOIN events e ON e.event_id = s.event_id {REDACTION_JOIN}
                 WHERE s.room_id = ?1 AND s.event_type = ?2 AND s.to_pos IS NULL
                 ORDER BY s.state_key LIMIT ?3"
            );
            let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
            collect(stmt.query_map(params![room_id, event_type, limit], event_from_row).map_err(backend)?)
        })
        .await
    }

    async fn state_event(
        &self,
        room_id: &str,
        event_type: &str,
        state_key: &str,
        at: Option<u64>,
    ) -> StoreResult<Option<StoredEvent>> {
        let (room_id, event_type, state_key) = (room_id.to_owned(), event_type.to_owned(), state_key.to_owned());
        self.read(move |conn| {
            let found = match at {
                None => {
                    let sql = format!(
                        "SELECT {EVENT_COLUMNS} FROM room_state s JOIN events e ON e.event_id = s.event_id {REDACTION_JOIN}
                         WHERE s.room_id = ?1 AND s.event_type = ?2 AND s.state_key = ?3 AND s.to_pos IS NULL"
                    );
                    conn.prepare_cached(&sql)
                        .and_then(|mut s| s.query_row([&room_id, &event_type, &state_key], event_from_row).optional())
                }
                Some(at) => {
                    // The last row of the key that started by `at`, if it
                    // had not ended by then.
                    let sql = format!(
                        "SELECT {EVENT_COLUMNS} FROM room_state s JOIN events e ON e.event_id = s.event_id {REDACTION_JOIN}
                         WHERE s.room_id = ?1 AND s.event_type = ?2 AND s.state_key = ?3 AND s.from_pos <= ?4
                           AND (s.to_pos IS NULL OR s.to_pos > ?4)
                         ORDER BY s.from_pos DESC LIMIT 1"
                    );
                    conn.prepare_cached(&sql)
                        .and_then(|mut s| s.query_row(params![room_id, event_type, state_key, i(at)], event_from_row).optional())
                }
            };
            found.map_err(backend)
        })
        .await
    }

    async fn state_changes(&self, room_id: &str, after: u64, up_to: u64) -> StoreResult<Vec<StoredEvent>> {
        let room_id = room_id.to_owned();
        self.read_heavy(move |conn| {
            let sql = format!(
                "SELECT {EVENT_COLUMNS} FROM room_state s JOIN events e ON e.event_id = s.event_id {REDACTION_JOIN}
                 WHERE s.room_id = ?1 AND s.from_pos > ?2 AND s.from_pos <= ?3 AND (s.to_pos IS NULL OR s.to_pos > ?3)
                 ORDER BY s.from_pos"
            );
            let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
            collect(stmt.query_map(params![room_id, i(after), i(up_to)], event_from_row).map_err(backend)?)
        })
        .await
    }

    async fn room_events(
        &self,
        room_id: &str,
        after: u64,
        up_to: u64,
        limit: usize,
        newest_first: bool,
    ) -> StoreResult<Vec<StoredEvent>> {
        let room_id = room_id.to_owned();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |conn| {
            let order = if newest_first { "DESC" } else { "ASC" };
            let sql = format!(
                "SELECT {EVENT_COLUMNS} FROM events e {REDACTION_JOIN}
                 WHERE e.room_id = ?1 AND e.stream_pos > ?2 AND e.stream_pos <= ?3
                 ORDER BY e.stream_pos {order} LIMIT ?4"
            );
            let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
            collect(stmt.query_map(params![room_id, i(after), i(up_to), limit], event_from_row).map_err(backend)?)
        })
        .await
    }

    async fn memberships_of_user(&self, user_id: &str) -> StoreResult<Vec<Membership>> {
        let user_id = user_id.to_owned();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT room_id, state_key, membership, event_id, from_pos FROM room_state
                     WHERE state_key = ?1 AND event_type = 'm.room.member' AND to_pos IS NULL
                     ORDER BY room_id",
                )
                .map_err(backend)?;
            collect(stmt.query_map([&user_id], membership_from_row).map_err(backend)?)
        })
        .await
    }

    async fn members_of_room(&self, room_id: &str) -> StoreResult<Vec<Membership>> {
        let room_id = room_id.to_owned();
        self.read_heavy(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT room_id, state_key, membership, event_id, from_pos FROM room_state INDEXED BY room_state_current
                     WHERE room_id = ?1 AND event_type = 'm.room.member' AND to_pos IS NULL
                     ORDER BY state_key",
                )
                .map_err(backend)?;
            collect(stmt.query_map([&room_id], membership_from_row).map_err(backend)?)
        })
        .await
    }

    async fn member_summary(&self, room_id: &str, user_id: &str, heroes: usize) -> StoreResult<MemberSummary> {
        let (room_id, user_id) = (room_id.to_owned(), user_id.to_owned());
        self.read(move |conn| {
            let (joined, invited) = conn
                .prepare_cached(
                    "SELECT COALESCE(SUM(membership = 'join'), 0), COALESCE(SUM(membership = 'invite'), 0)
                     FROM room_state INDEXED BY room_state_current
                     WHERE room_id = ?1 AND event_type = 'm.room.member' AND to_pos IS NULL",
                )
                .and_then(|mut s| s.query_row([&room_id], |r| Ok((u(r.get(0)?), u(r.get(1)?)))))
                .map_err(backend)?;
            let mut stmt = conn
                .prepare_cached(
                    "SELECT state_key FROM room_state INDEXED BY room_state_current
                     WHERE room_id = ?1 AND event_type = 'm.room.member' AND to_pos IS NULL AND state_key <> ?2
                       AND (membership IN ('join', 'invite')) = ?3
                     ORDER BY from_pos LIMIT ?4",
                )
                .map_err(backend)?;
            let limit = i64::try_from(heroes).unwrap_or(i64::MAX);
            let mut names: Vec<String> =
                collect(stmt.query_map(rusqlite::params![room_id, user_id, true, limit], |r| r.get(0)).map_err(backend)?)?;
            if names.is_empty() {
                names =
                    collect(stmt.query_map(rusqlite::params![room_id, user_id, false, limit], |r| r.get(0)).map_err(backend)?)?;
            }
            Ok(MemberSummary { joined, invited, heroes: names })
        })
        .await
    }

    async fn visibility_spans(
        &self,
        user_id: &str,
        rooms: &[String],
        from: u64,
        up_to: u64,
        limit: usize,
    ) -> StoreResult<Vec<StateSpan>> {
        if rooms.is_empty() {
            return Ok(Vec::new());
        }
        let user_id = user_id.to_owned();
        let rooms = serde_json::to_string(rooms).map_err(|e| StoreError::Backend(e.to_string()))?;
        self.read(move |conn| {
            // Both halves are ranges of the primary key (room, type, key,
            // start); only visibility rows need the event, for its content.
            let mut stmt = conn
                .prepare_cached(
                    "SELECT s.room_id, s.from_pos, s.to_pos, NULL, e.json
                     FROM room_state s JOIN events e ON e.event_id = s.event_id
                     WHERE s.room_id IN (SELECT value FROM json_each(?1))
                       AND s.event_type = 'm.room.history_visibility' AND s.state_key = ''
                       AND s.from_pos <= ?3 AND (s.to_pos IS NULL OR s.to_pos > ?2)
                     UNION ALL
                     SELECT s.room_id, s.from_pos, s.to_pos, COALESCE(s.membership, ''), NULL
                     FROM room_state s
                     WHERE s.room_id IN (SELECT value FROM json_each(?1))
                       AND s.event_type = 'm.room.member' AND s.state_key = ?4
                       AND (s.to_pos IS NULL OR s.to_pos > ?2)
                     ORDER BY 1, 2
                     LIMIT ?5",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![rooms, i(from), i(up_to), user_id, i(limit as u64).saturating_add(1)], |r| {
                    rows::visibility_span(&SqliteRow(r))
                })
                .map_err(backend)?;
            let spans = collect(rows)?;
            if spans.len() > limit {
                return Err(StoreError::TooManyVisibilitySpans);
            }
            Ok(spans)
        })
        .await
    }

    async fn current_stream_pos(&self) -> StoreResult<u64> {
        self.committed_pos("SELECT COALESCE(MAX(stream_pos), 0) FROM events").await
    }
}
