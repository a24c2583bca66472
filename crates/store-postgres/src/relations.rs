//! `RelationStore` on PostgreSQL, and the relation statements of the
//! append pipeline (see rooms.rs: they are prepared before any lock and
//! sent with the other statements of the append).
//!
//! Lists of event ids are one `text[]` parameter read with `unnest`, so a
//! page of any size is one prepared statement.

use async_trait::async_trait;
use chancery_store::*;
use tokio_postgres::Statement;

use chancery_store_sql::params::position_range_params;
use chancery_store_sql::rows::{self, EVENT_COLUMNS, REDACTION_JOIN};
use chancery_store_sql::{i, u};

use crate::query::{PgRow, get, query, query_opt};
use crate::rooms::event_from_row;
use crate::{PostgresStore, backend};

/// The relation statements of the write path.
pub(crate) struct RelationWrites {
    /// Redaction of a thread's only reply: the thread goes. Runs before
    /// `rewind_thread` and `drop_relation`, which it must see undone.
    pub(crate) drop_thread: Statement,
    /// Redaction of a thread reply: the thread falls back to its previous
    /// reply.
    pub(crate) rewind_thread: Statement,
    /// Redaction of a child: its relation is broken.
    pub(crate) drop_relation: Statement,
    /// After the event's insert, whose position `stream_position` holds.
    pub(crate) add_relation: Statement,
    /// A thread reply moves its thread to the top of the room's threads.
    pub(crate) touch_thread: Statement,
}

impl RelationWrites {
    pub(crate) async fn prepare(c: &deadpool_postgres::Client) -> StoreResult<Self> {
        let p = async |sql: &str| c.prepare_cached(sql).await.map_err(backend);
        Ok(Self {
            drop_thread: p("DELETE FROM threads
                            WHERE root_id = (SELECT relates_to FROM relations WHERE event_id = $1 AND rel_type = 'm.thread')
                              AND NOT EXISTS (SELECT 1 FROM relations x WHERE x.relates_to = threads.root_id
                                              AND x.rel_type = 'm.thread' AND x.event_id <> $1)")
            .await?,
            rewind_thread: p("UPDATE threads
                              SET latest_pos = (SELECT MAX(x.stream_pos) FROM relations x WHERE x.relates_to = threads.root_id
                                                AND x.rel_type = 'm.thread' AND x.event_id <> $1)
                              WHERE root_id = (SELECT relates_to FROM relations WHERE event_id = $1 AND rel_type = 'm.thread')")
            .await?,
            drop_relation: p("DELETE FROM relations WHERE event_id = $1").await?,
            add_relation: p(
                "INSERT INTO relations (event_id, room_id, relates_to, rel_type, event_type, sender, rel_key, stream_pos)
                             SELECT $1::text, $2::text, $3::text, $4::text, $5::text, $6::text, $7::text, pos
                             FROM stream_position",
            )
            .await?,
            touch_thread: p("INSERT INTO threads (root_id, room_id, latest_pos)
                             SELECT $1::text, $2::text, pos FROM stream_position
                             ON CONFLICT (root_id) DO UPDATE SET latest_pos = GREATEST(threads.latest_pos, EXCLUDED.latest_pos)")
            .await?,
        })
    }
}

/// Position ranges as two parallel arrays, (from, to), for `unnest`.
fn range_arrays(ranges: &[(i64, Option<i64>)]) -> (Vec<i64>, Vec<Option<i64>>) {
    ranges.iter().copied().unzip()
}

/// Whether `stream_pos` (a column) lies in one of the ranges of the
/// parallel arrays `$n` (from) and `$n+1` (to, NULL: no end).
fn within_ranges(stream_pos: &str, n: u8) -> String {
    let to = n + 1;
    format!(
        "EXISTS (SELECT 1 FROM unnest(${n}::bigint[], ${to}::bigint[]) AS w(from_pos, to_pos)
                 WHERE {stream_pos} >= w.from_pos AND (w.to_pos IS NULL OR {stream_pos} < w.to_pos))"
    )
}

#[async_trait]
impl RelationStore for PostgresStore {
    async fn relations(&self, q: &RelationsQuery) -> StoreResult<Vec<StoredEvent>> {
        let (_heavy, client) = self.heavy_client().await?;
        let order = if q.newest_first { "DESC" } else { "ASC" };
        // Separate texts per filter, so a filtered page walks the
        // (relates_to, rel_type, stream_pos) index in order instead of
        // sorting; `$n::text IS NULL` keeps the parameters the same.
        let rel_type = if q.rel_type.is_some() { "AND rl.rel_type = $3" } else { "AND $3::text IS NULL" };
        let event_type = if q.event_type.is_some() { "AND rl.event_type = $4" } else { "AND $4::text IS NULL" };
        let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
        let (after, up_to) = (i(q.after), i(q.up_to));
        let rows = if q.max_depth <= 1 {
            let sql = format!(
                "SELECT {EVENT_COLUMNS} FROM relations rl JOIN events e ON e.event_id = rl.event_id {REDACTION_JOIN}
                 WHERE rl.relates_to = $1 AND rl.room_id = $2 {rel_type} {event_type}
                   AND rl.stream_pos > $5 AND rl.stream_pos <= $6
                 ORDER BY rl.stream_pos {order} LIMIT $7"
            );
            query(&client, &sql, &[&q.parent, &q.room_id, &q.rel_type, &q.event_type, &after, &up_to, &limit]).await?
        } else {
            // Relations point from newer to older events, so the graph has
            // no cycles; the depth bound keeps the walk finite regardless.
            let sql = format!(
                "WITH RECURSIVE tree (event_id, depth) AS (
                     SELECT event_id, 1 FROM relations WHERE relates_to = $1
                     UNION ALL
                     SELECT x.event_id, t.depth + 1 FROM tree t JOIN relations x ON x.relates_to = t.event_id
                     WHERE t.depth < $8
                 )
                 SELECT {EVENT_COLUMNS} FROM tree JOIN relations rl ON rl.event_id = tree.event_id
                 JOIN events e ON e.event_id = rl.event_id {REDACTION_JOIN}
                 WHERE rl.room_id = $2 {rel_type} {event_type} AND rl.stream_pos > $5 AND rl.stream_pos <= $6
                 ORDER BY rl.stream_pos {order} LIMIT $7"
            );
            let depth = i32::try_from(q.max_depth).unwrap_or(i32::MAX);
            query(&client, &sql, &[&q.parent, &q.room_id, &q.rel_type, &q.event_type, &after, &up_to, &limit, &depth]).await?
        };
        rows.iter().map(event_from_row).collect()
    }

    async fn thread_roots(
        &self,
        room_id: &str,
        participant: Option<&str>,
        before: Option<u64>,
        limit: usize,
    ) -> StoreResult<Vec<ThreadRoot>> {
        let (_heavy, client) = self.heavy_client().await?;
        let participated = if participant.is_some() {
            "AND (e.sender = $3 OR EXISTS (SELECT 1 FROM relations x
                  WHERE x.relates_to = t.root_id AND x.rel_type = 'm.thread' AND x.sender = $3))"
        } else {
            "AND $3::text IS NULL"
        };
        let sql = format!(
            "SELECT {EVENT_COLUMNS}, t.latest_pos FROM threads t JOIN events e ON e.event_id = t.root_id {REDACTION_JOIN}
             WHERE t.room_id = $1 AND t.latest_pos < $2 {participated}
             ORDER BY t.latest_pos DESC LIMIT $4"
        );
        let before = before.map_or(i64::MAX, i);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = query(&client, &sql, &[&room_id, &before, &participant, &limit]).await?;
        rows.iter().map(|r| rows::thread_root(&PgRow(r))).collect()
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
        let client = self.client().await?;
        // The latest valid edit: by the original's sender (the service
        // records only such edits; checked again here because it is the
        // rule that matters most), the largest (origin_server_ts, event_id)
        // winning.
        let edits_sql = format!(
            "SELECT {EVENT_COLUMNS}, p.id FROM unnest($1::text[]) AS p(id)
             JOIN events o ON o.event_id = p.id
             CROSS JOIN LATERAL (
                 SELECT x.event_id FROM relations x JOIN events c ON c.event_id = x.event_id
                 WHERE x.relates_to = p.id AND x.rel_type = 'm.replace' AND x.sender = o.sender
                 ORDER BY c.origin_server_ts DESC, x.event_id DESC LIMIT 1) latest
             JOIN events e ON e.event_id = latest.event_id {REDACTION_JOIN}"
        );
        let threads_sql = format!(
            "SELECT {EVENT_COLUMNS}, s.root, s.replies, s.participated FROM (
                 SELECT p.id AS root, COUNT(*) AS replies, MAX(x.stream_pos) AS latest_pos,
                        BOOL_OR(x.sender = $2 OR o.sender = $2) AS participated
                 FROM unnest($1::text[]) AS p(id)
                 JOIN events o ON o.event_id = p.id
                 JOIN relations x ON x.relates_to = p.id AND x.rel_type = 'm.thread'
                 GROUP BY p.id
             ) s JOIN events e ON e.stream_pos = s.latest_pos {REDACTION_JOIN}"
        );
        let references_sql = "SELECT p.id, y.event_id, y.stream_pos FROM unnest($1::text[]) AS p(id)
             CROSS JOIN LATERAL (
                 SELECT event_id, stream_pos FROM relations
                 WHERE relates_to = p.id AND rel_type = 'm.reference'
                 ORDER BY stream_pos LIMIT $2) y
             ORDER BY y.stream_pos";
        let ids: Vec<&str> = event_ids.iter().map(String::as_str).collect();
        let limit = i64::try_from(max_references).unwrap_or(i64::MAX);
        let (edits_params, threads_params, references_params): (
            [&(dyn tokio_postgres::types::ToSql + Sync); 1],
            [&(dyn tokio_postgres::types::ToSql + Sync); 2],
            [&(dyn tokio_postgres::types::ToSql + Sync); 2],
        ) = ([&ids], [&ids, &viewer], [&ids, &limit]);
        // Pipelined: three statements, one round trip.
        let (edits, threads, references) = tokio::join!(
            query(&client, &edits_sql, &edits_params),
            query(&client, &threads_sql, &threads_params),
            query(&client, references_sql, &references_params),
        );
        let references: Vec<(String, String, u64)> =
            references?.iter().map(|r| Ok((get(r, 0)?, get(r, 1)?, u(get(r, 2)?)))).collect::<StoreResult<_>>()?;
        Ok(BundledAggregations {
            edits: edits?.iter().map(|r| rows::edit(&PgRow(r))).collect::<StoreResult<_>>()?,
            threads: threads?.iter().map(|r| rows::thread_summary(&PgRow(r))).collect::<StoreResult<_>>()?,
            reference_positions: references.iter().map(|(_, child, pos)| (child.clone(), *pos)).collect(),
            references: references.into_iter().map(|(parent, child, _)| (parent, child)).collect(),
        })
    }

    async fn thread_reply_counts(&self, roots: &[String], within: &[PositionRange]) -> StoreResult<Vec<(String, u64)>> {
        if roots.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let (from, to) = range_arrays(&position_range_params(within).unwrap_or_else(|| vec![(0, None)]));
        let sql = format!(
            "SELECT p.id, (SELECT COUNT(*) FROM relations x
                           WHERE x.relates_to = p.id AND x.rel_type = 'm.thread' AND {})
             FROM unnest($1::text[]) AS p(id)",
            within_ranges("x.stream_pos", 2)
        );
        let ids: Vec<&str> = roots.iter().map(String::as_str).collect();
        let rows = query(&client, &sql, &[&ids, &from, &to]).await?;
        rows.iter().map(|r| Ok((get(r, 0)?, u(get(r, 1)?)))).collect()
    }

    async fn annotation_counts(&self, parent: &str, sender: Option<&str>) -> StoreResult<Vec<AnnotationCount>> {
        let client = self.client().await?;
        let by_sender = if sender.is_some() { "AND sender = $2" } else { "AND $2::text IS NULL" };
        let sql = format!(
            "SELECT event_type, COALESCE(rel_key, ''), COUNT(DISTINCT sender) AS n FROM relations
             WHERE relates_to = $1 AND rel_type = 'm.annotation' {by_sender}
             GROUP BY event_type, rel_key ORDER BY n DESC, event_type, rel_key"
        );
        let rows = query(&client, &sql, &[&parent, &sender]).await?;
        rows.iter().map(|r| rows::annotation_count(&PgRow(r))).collect()
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
        let client = self.client().await?;
        let (cmp, order) = if forward { (">=", "ASC") } else { ("<=", "DESC") };
        let near = |filter: &str| {
            format!(
                "SELECT {EVENT_COLUMNS} FROM events e {REDACTION_JOIN}
                 WHERE e.room_id = $1 AND e.origin_server_ts {cmp} $2 {filter}
                 ORDER BY e.origin_server_ts {order}, e.stream_pos {order} LIMIT 1"
            )
        };
        let row = match position_range_params(within) {
            None => query_opt(&client, &near(""), &[&room_id, &i(ts)]).await?,
            Some(ranges) => {
                let (from, to) = range_arrays(&ranges);
                let sql = near(&format!("AND {}", within_ranges("e.stream_pos", 3)));
                query_opt(&client, &sql, &[&room_id, &i(ts), &from, &to]).await?
            }
        };
        row.map(|r| event_from_row(&r)).transpose()
    }
}
