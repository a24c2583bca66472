//! `RelationStore` on SQLite, and the relation writes of the append path.
//!
//! Lists of event ids are passed as one JSON array and read with
//! `json_each`, so a page of any size is one prepared statement (no
//! statement per length, no variable-count limit).

use async_trait::async_trait;
use chancery_store::*;
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use chancery_store_sql::params::position_range_params;
use chancery_store_sql::rows::{self, EVENT_COLUMNS, REDACTION_JOIN};
use chancery_store_sql::{i, u};

use crate::rooms::{collect, event_from_row};
use crate::row::SqliteRow;
use crate::{SqliteStore, backend};

/// Records `event`'s relation at position `pos`; a thread reply also moves
/// its thread to the top of the room's threads.
pub(crate) fn record_relation_in(tx: &Transaction<'_>, event: &NewEvent, relation: &NewRelation, pos: i64) -> StoreResult<()> {
    tx.prepare_cached(
        "INSERT INTO relations (event_id, room_id, relates_to, rel_type, event_type, sender, rel_key, stream_pos)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .and_then(|mut s| {
        s.execute(params![
            event.event_id,
            event.room_id,
            relation.parent,
            relation.rel_type,
            event.event_type,
            event.sender,
            relation.key,
            pos
        ])
    })
    .map_err(backend)?;
    if relation.rel_type == "m.thread" {
        tx.prepare_cached(
            "INSERT INTO threads (root_id, room_id, latest_pos) VALUES (?1, ?2, ?3)
             ON CONFLICT (root_id) DO UPDATE SET latest_pos = MAX(latest_pos, excluded.latest_pos)",
        )
        .and_then(|mut s| s.execute(params![relation.parent, event.room_id, pos]))
        .map_err(backend)?;
    }
    Ok(())
}

/// `target` was redacted: its relation is broken. If it was a thread
/// reply, its thread falls back to the previous reply, or is no thread any
/// more if it was the only one. A no-op for events without a relation and
/// for repeated redactions.
pub(crate) fn break_relation_in(tx: &Transaction<'_>, target: &str) -> StoreResult<()> {
    tx.prepare_cached(
        "DELETE FROM threads
         WHERE root_id = (SELECT relates_to FROM relations WHERE event_id = ?1 AND rel_type = 'm.thread')
           AND NOT EXISTS (SELECT 1 FROM relations x
                           WHERE x.relates_to = threads.root_id AND x.rel_type = 'm.thread' AND x.event_id <> ?1)",
    )
    .and_then(|mut s| s.execute([target]))
    .map_err(backend)?;
    tx.prepare_cached(
        "UPDATE threads
         SET latest_pos = (SELECT MAX(x.stream_pos) FROM relations x
                           WHERE x.relates_to = threads.root_id AND x.rel_type = 'm.thread' AND x.event_id <> ?1)
         WHERE root_id = (SELECT relates_to FROM relations WHERE event_id = ?1 AND rel_type = 'm.thread')",
    )
    .and_then(|mut s| s.execute([target]))
    .map_err(backend)?;
    tx.prepare_cached("DELETE FROM relations WHERE event_id = ?1").and_then(|mut s| s.execute([target])).map_err(backend)?;
    Ok(())
}

fn json_list(ids: &[String]) -> StoreResult<String> {
    serde_json::to_string(ids).map_err(|e| StoreError::Backend(e.to_string()))
}

fn relations_in(conn: &Connection, q: &RelationsQuery) -> StoreResult<Vec<StoredEvent>> {
    let order = if q.newest_first { "DESC" } else { "ASC" };
    // Separate texts per filter, so a filtered page walks the
    // (relates_to, rel_type, stream_pos) index in order instead of sorting;
    // `?n IS NULL` keeps the parameter numbering the same in every text.
    let rel_type = if q.rel_type.is_some() { "AND rl.rel_type = ?3" } else { "AND ?3 IS NULL" };
    let event_type = if q.event_type.is_some() { "AND rl.event_type = ?4" } else { "AND ?4 IS NULL" };
    let sql = if q.max_depth <= 1 {
        format!(
            "SELECT {EVENT_COLUMNS} FROM relations rl JOIN events e ON e.event_id = rl.event_id {REDACTION_JOIN}
             WHERE rl.relates_to = ?1 AND rl.room_id = ?2 {rel_type} {event_type}
               AND rl.stream_pos > ?5 AND rl.stream_pos <= ?6
             ORDER BY rl.stream_pos {order} LIMIT ?7"
        )
    } else {
        // Relations point from newer to older events, so the graph has no
        // cycles; the depth bound keeps the walk finite regardless.
        format!(
            "WITH RECURSIVE tree (event_id, depth) AS (
                 SELECT event_id, 1 FROM relations WHERE relates_to = ?1
                 UNION ALL
                 SELECT x.event_id, t.depth + 1 FROM tree t JOIN relations x ON x.relates_to = t.event_id
                 WHERE t.depth < ?8
             )
             SELECT {EVENT_COLUMNS} FROM tree JOIN relations rl ON rl.event_id = tree.event_id
             JOIN events e ON e.event_id = rl.event_id {REDACTION_JOIN}
             WHERE rl.room_id = ?2 {rel_type} {event_type} AND rl.stream_pos > ?5 AND rl.stream_pos <= ?6
             ORDER BY rl.stream_pos {order} LIMIT ?7"
        )
    };
    let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
    let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
    let (after, up_to) = (i(q.after), i(q.up_to));
    let rows = if q.max_depth <= 1 {
        stmt.query_map(params![q.parent, q.room_id, q.rel_type, q.event_type, after, up_to, limit], event_from_row)
    } else {
        let depth = i64::from(q.max_depth);
        stmt.query_map(params![q.parent, q.room_id, q.rel_type, q.event_type, after, up_to, limit, depth], event_from_row)
    };
    collect(rows.map_err(backend)?)
}

fn edits_in(conn: &Connection, ids: &str) -> StoreResult<Vec<(String, StoredEvent)>> {
    // The latest valid edit: by the original's sender (the service records
    // only such edits; checked again here because it is the rule that
    // matters most), the largest (origin_server_ts, event_id) winning.
    let sql = format!(
        "SELECT {EVENT_COLUMNS}, p.value FROM json_each(?1) p
         JOIN events o ON o.event_id = p.value
         JOIN events e ON e.event_id = (
             SELECT x.event_id FROM relations x JOIN events c ON c.event_id = x.event_id
             WHERE x.relates_to = p.value AND x.rel_type = 'm.replace' AND x.sender = o.sender
             ORDER BY c.origin_server_ts DESC, x.event_id DESC LIMIT 1)
         {REDACTION_JOIN}"
    );
    let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
    let rows = stmt.query_map([ids], |r| rows::edit(&SqliteRow(r))).map_err(backend)?;
    collect(rows)
}

fn threads_in(conn: &Connection, ids: &str, viewer: &str) -> StoreResult<Vec<ThreadSummary>> {
    let sql = format!(
        "SELECT {EVENT_COLUMNS}, s.root, s.replies, s.participated FROM (
             SELECT p.value AS root, COUNT(*) AS replies, MAX(x.stream_pos) AS latest_pos,
                    MAX(x.sender = ?2 OR o.sender = ?2) AS participated
             FROM json_each(?1) p
             JOIN events o ON o.event_id = p.value
             JOIN relations x ON x.relates_to = p.value AND x.rel_type = 'm.thread'
             GROUP BY p.value
         ) s JOIN events e ON e.stream_pos = s.latest_pos {REDACTION_JOIN}"
    );
    let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
    let rows = stmt.query_map([ids, viewer], |r| rows::thread_summary(&SqliteRow(r))).map_err(backend)?;
    collect(rows)
}

/// `(parent, child, child's position)` of the references.
fn references_in(conn: &Connection, ids: &str, max_references: usize) -> StoreResult<Vec<(String, String, u64)>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT p.value, x.event_id, x.stream_pos FROM json_each(?1) p
             JOIN relations x ON x.event_id IN (
                 SELECT y.event_id FROM relations y WHERE y.relates_to = p.value AND y.rel_type = 'm.reference'
                 ORDER BY y.stream_pos LIMIT ?2)
             ORDER BY x.stream_pos",
        )
        .map_err(backend)?;
    let limit = i64::try_from(max_references).unwrap_or(i64::MAX);
    collect(stmt.query_map(params![ids, limit], |r| Ok((r.get(0)?, r.get(1)?, u(r.get(2)?)))).map_err(backend)?)
}

/// Whether `stream_pos` (a column) lies in one of the (from, to) pairs of
/// the JSON array parameter `?{n}`.
fn within_ranges(stream_pos: &str, n: u8) -> String {
    format!(
        "EXISTS (SELECT 1 FROM json_each(?{n}) w
                 WHERE {stream_pos} >= json_extract(w.value, '$[0]')
                   AND (json_extract(w.value, '$[1]') IS NULL OR {stream_pos} < json_extract(w.value, '$[1]')))"
    )
}

#[async_trait]
impl RelationStore for SqliteStore {
    async fn relations(&self, query: &RelationsQuery) -> StoreResult<Vec<StoredEvent>> {
        let query = query.clone();
        self.read_heavy(move |conn| relations_in(conn, &query)).await
    }

    async fn thread_roots(
        &self,
        room_id: &str,
        participant: Option<&str>,
        before: Option<u64>,
        limit: usize,
    ) -> StoreResult<Vec<ThreadRoot>> {
        let (room_id, participant) = (room_id.to_owned(), participant.map(str::to_owned));
        let before = before.map_or(i64::MAX, i);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read_heavy(move |conn| {
            let participated = if participant.is_some() {
                "AND (e.sender = ?3 OR EXISTS (SELECT 1 FROM relations x
                      WHERE x.relates_to = t.root_id AND x.rel_type = 'm.thread' AND x.sender = ?3))"
            } else {
                "AND ?3 IS NULL"
            };
            let sql = format!(
                "SELECT {EVENT_COLUMNS}, t.latest_pos FROM threads t JOIN events e ON e.event_id = t.root_id {REDACTION_JOIN}
                 WHERE t.room_id = ?1 AND t.latest_pos < ?2 {participated}
                 ORDER BY t.latest_pos DESC LIMIT ?4"
            );
            let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
            let rows = stmt
                .query_map(params![room_id, before, participant, limit], |r| rows::thread_root(&SqliteRow(r)))
                .map_err(backend)?;
            collect(rows)
        })
        .await
    }

    async fn bundled_aggregations(
        &self,
        event_ids: &[String],
        viewer: &str,
        max_references: usize,
    ) -> StoreResult<BundledAggregations> {
        if event_ids.is_empty() {
            return Ok(BundledAggregations::default());
        }
        let ids = json_list(event_ids)?;
        let viewer = viewer.to_owned();
        self.read(move |conn| {
            // Most events have no relations at all: one look says so.
            let related = conn
                .prepare_cached(
                    "SELECT EXISTS (SELECT 1 FROM json_each(?1) p WHERE EXISTS (SELECT 1 FROM relations x WHERE x.relates_to = p.value))",
                )
                .and_then(|mut s| s.query_row([&ids], |r| r.get::<_, bool>(0)))
                .map_err(backend)?;
            if !related {
                return Ok(BundledAggregations::default());
            }
            // Three statements, one snapshot.
            let tx = conn.unchecked_transaction().map_err(backend)?;
            let references = references_in(&tx, &ids, max_references)?;
            Ok(BundledAggregations {
                edits: edits_in(&tx, &ids)?,
                threads: threads_in(&tx, &ids, &viewer)?,
                reference_positions: references.iter().map(|(_, child, pos)| (child.clone(), *pos)).collect(),
                references: references.into_iter().map(|(parent, child, _)| (parent, child)).collect(),
            })
        })
        .await
    }

    async fn thread_reply_counts(&self, roots: &[String], within: &[PositionRange]) -> StoreResult<Vec<(String, u64)>> {
        if roots.is_empty() {
            return Ok(Vec::new());
        }
        let ids = json_list(roots)?;
        let ranges = serde_json::to_string(&position_range_params(within).unwrap_or_else(|| vec![(0, None)]))
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        self.read(move |conn| {
            let sql = format!(
                "SELECT p.value, (SELECT COUNT(*) FROM relations x
                                  WHERE x.relates_to = p.value AND x.rel_type = 'm.thread' AND {})
                 FROM json_each(?1) p",
                within_ranges("x.stream_pos", 2)
            );
            let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
            collect(stmt.query_map(params![ids, ranges], |r| Ok((r.get(0)?, u(r.get(1)?)))).map_err(backend)?)
        })
        .await
    }

    async fn annotation_counts(&self, parent: &str, sender: Option<&str>) -> StoreResult<Vec<AnnotationCount>> {
        let (parent, sender) = (parent.to_owned(), sender.map(str::to_owned));
        self.read(move |conn| {
            let by_sender = if sender.is_some() { "AND sender = ?2" } else { "AND ?2 IS NULL" };
            let sql = format!(
                "SELECT event_type, COALESCE(rel_key, ''), COUNT(DISTINCT sender) AS n FROM relations
                 WHERE relates_to = ?1 AND rel_type = 'm.annotation' {by_sender}
                 GROUP BY event_type, rel_key ORDER BY n DESC, event_type, rel_key"
            );
            let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
            let rows = stmt.query_map(params![parent, sender], |r| rows::annotation_count(&SqliteRow(r))).map_err(backend)?;
            collect(rows)
        })
        .await
    }

    async fn event_near_ts_within(
        &self,
        room_id: &str,
        ts: u64,
        forward: bool,
        within: &[PositionRange],
    ) -> StoreResult<Option<StoredEvent>> {
        if within.is_empty() {
            return Ok(None);
        }
        let room_id = room_id.to_owned();
        let (cmp, order) = if forward { (">=", "ASC") } else { ("<=", "DESC") };
        let near = |filter: &str| {
            format!(
                "SELECT {EVENT_COLUMNS} FROM events e {REDACTION_JOIN}
                 WHERE e.room_id = ?1 AND e.origin_server_ts {cmp} ?2 {filter}
                 ORDER BY e.origin_server_ts {order}, e.stream_pos {order} LIMIT 1"
            )
        };
        match position_range_params(within) {
            None => {
                let sql = near("");
                self.read(move |conn| {
                    conn.prepare_cached(&sql)
                        .and_then(|mut s| s.query_row(params![room_id, i(ts)], event_from_row).optional())
                        .map_err(backend)
                })
                .await
            }
            // Passing over hidden events grows with the room: off the
            // calling task.
            Some(ranges) => {
                let sql = near(&format!("AND {}", within_ranges("e.stream_pos", 3)));
                let ranges = serde_json::to_string(&ranges).map_err(|e| StoreError::Backend(e.to_string()))?;
                self.read_heavy(move |conn| {
                    conn.prepare_cached(&sql)
                        .and_then(|mut s| s.query_row(params![room_id, i(ts), ranges], event_from_row).optional())
                        .map_err(backend)
                })
                .await
            }
        }
    }
}
