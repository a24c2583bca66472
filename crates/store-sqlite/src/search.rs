//! `SearchStore` on SQLite: FTS5 for events, LIKE for the user directory.

use async_trait::async_trait;
use chancery_store::*;
use rusqlite::{Transaction, params};

use chancery_store_sql::i;
use chancery_store_sql::params::{like_contains, search_scope_params};
use chancery_store_sql::rows::{self, EVENT_COLUMNS, REDACTION_JOIN};

use crate::row::SqliteRow;
use crate::{SqliteStore, backend};

/// Indexes an event being appended at `pos` (same transaction).
pub(crate) fn index_event(tx: &Transaction<'_>, event: &NewEvent, pos: i64) -> StoreResult<()> {
    for (key, text) in &event.search_text {
        tx.prepare_cached("INSERT INTO event_search (rowid, text, key, room_id) VALUES (?1, ?2, ?3, ?4)")
            .and_then(|mut s| s.execute(params![pos, text, key, event.room_id]))
            .map_err(backend)?;
    }
    Ok(())
}

/// Drops a redacted event from the index.
pub(crate) fn unindex_event(tx: &Transaction<'_>, event_id: &str) -> StoreResult<()> {
    tx.prepare_cached("DELETE FROM event_search WHERE rowid = (SELECT stream_pos FROM events WHERE event_id = ?1)")
        .and_then(|mut s| s.execute([event_id]))
        .map_err(backend)?;
    Ok(())
}

/// An FTS5 query matching every word, the last as a prefix. Words are
/// alphanumeric (the service splits terms), quoting makes them literal.
fn fts_query(words: &[String]) -> String {
    let last = words.len().saturating_sub(1);
    words
        .iter()
        .enumerate()
        .map(
            |(n, w)| {
                if n == last { format!("\"{}\"*", w.replace('"', "\"\"")) } else { format!("\"{}\"", w.replace('"', "\"\"")) }
            },
        )
        .collect::<Vec<_>>()
        .join(" ")
}

fn to_json(value: &impl serde::Serialize) -> StoreResult<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Backend(e.to_string()))
}

#[async_trait]
impl SearchStore for SqliteStore {
    async fn search_users(&self, searcher: &str, term: &str, limit: usize, all_users: bool) -> StoreResult<Vec<UserHit>> {
        let (searcher, pattern) = (searcher.to_owned(), like_contains(&term.to_lowercase()));
        self.read_heavy(move |conn| {
            // Candidates: everyone (all_users), or people sharing a joined
            // room with the searcher, or joined to a public room.
            let sql = "
                WITH visible AS (
                    SELECT s2.state_key AS user_id FROM room_state s1
                    JOIN room_state s2 ON s2.room_id = s1.room_id AND s2.event_type = 'm.room.member'
                         AND s2.to_pos IS NULL AND s2.membership = 'join'
                    WHERE s1.event_type = 'm.room.member' AND s1.state_key = ?1 AND s1.to_pos IS NULL AND s1.membership = 'join'
                    UNION
                    SELECT m.state_key FROM room_state jr
                    JOIN events je ON je.event_id = jr.event_id
                    JOIN room_state m ON m.room_id = jr.room_id AND m.event_type = 'm.room.member'
                         AND m.to_pos IS NULL AND m.membership = 'join'
                    WHERE jr.event_type = 'm.room.join_rules' AND jr.to_pos IS NULL
                      AND json_extract(je.json, '$.content.join_rule') = 'public'
                )
                SELECT a.user_id,
                       (SELECT json_extract(value, '$') FROM profile_fields p WHERE p.user_id = a.user_id AND p.field = 'displayname'),
                       (SELECT json_extract(value, '$') FROM profile_fields p WHERE p.user_id = a.user_id AND p.field = 'avatar_url')
                FROM accounts a
                WHERE a.deactivated_ts IS NULL AND a.user_id != ?1
                  AND (?2 OR a.user_id IN (SELECT user_id FROM visible))
                  AND (lower(a.user_id) LIKE ?3 ESCAPE '\\'
                       OR EXISTS (SELECT 1 FROM profile_fields p WHERE p.user_id = a.user_id AND p.field = 'displayname'
                                  AND lower(json_extract(p.value, '$')) LIKE ?3 ESCAPE '\\'))
                ORDER BY a.user_id
                LIMIT ?4";
            let mut stmt = conn.prepare_cached(sql).map_err(backend)?;
            let rows = stmt
                .query_map(params![searcher, all_users, pattern, i(limit as u64)], |r| rows::user_hit(&SqliteRow(r)))
                .map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(backend)
        })
        .await
    }

    async fn search_events(
        &self,
        scopes: &[SearchScope],
        words: &[String],
        keys: &[String],
        order: SearchOrder,
        offset: usize,
        limit: usize,
    ) -> StoreResult<(Vec<SearchHit>, u64)> {
        if words.is_empty() || scopes.is_empty() || keys.is_empty() {
            return Ok((Vec::new(), 0));
        }
        let query = fts_query(words);
        // Whole rooms are a plain set; rooms searched only in parts are
        // (room, from, to) triples.
        let (whole, parts) = search_scope_params(scopes);
        let (whole, parts, keys) = (to_json(&whole)?, to_json(&parts)?, to_json(&keys)?);
        self.read_heavy(move |conn| {
            let filter = "event_search MATCH ?1
                 AND (s.room_id IN (SELECT value FROM json_each(?2))
                      OR EXISTS (SELECT 1 FROM json_each(?4) p
                                 WHERE json_extract(p.value, '$[0]') = s.room_id
                                   AND e.stream_pos >= json_extract(p.value, '$[1]')
                                   AND (json_extract(p.value, '$[2]') IS NULL
                                        OR e.stream_pos < json_extract(p.value, '$[2]'))))
                 AND s.key IN (SELECT value FROM json_each(?3))
                 AND r.redaction_event_id IS NULL";
            let order_sql = match order {
                SearchOrder::Rank => "rank DESC, e.stream_pos DESC",
                SearchOrder::Recent => "e.stream_pos DESC",
            };
            // One read transaction: the page and the count see one snapshot.
            let tx = conn.unchecked_transaction().map_err(backend)?;
            let sql = format!(
                "SELECT {EVENT_COLUMNS}, -bm25(event_search) AS rank
                 FROM event_search s JOIN events e ON e.stream_pos = s.rowid {REDACTION_JOIN}
                 WHERE {filter} ORDER BY {order_sql} LIMIT ?5 OFFSET ?6"
            );
            let hits = {
                let mut stmt = tx.prepare_cached(&sql).map_err(backend)?;
                let rows = stmt
                    .query_map(params![query, whole, keys, parts, i(limit as u64), i(offset as u64)], |r| {
                        rows::search_hit(&SqliteRow(r))
                    })
                    .map_err(backend)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(backend)?
            };
            let count_sql = format!(
                "SELECT COUNT(*) FROM event_search s JOIN events e ON e.stream_pos = s.rowid {REDACTION_JOIN} WHERE {filter}"
            );
            let count: i64 = tx
                .prepare_cached(&count_sql)
                .and_then(|mut s| s.query_row(params![query, whole, keys, parts], |r| r.get(0)))
                .map_err(backend)?;
            tx.commit().map_err(backend)?;
            Ok((hits, u64::try_from(count).unwrap_or(0)))
        })
        .await
    }
}
