//! `SearchStore` on PostgreSQL: `tsvector` with the 'simple' configuration
//! for events, ILIKE for the user directory.

use async_trait::async_trait;
use chancery_store::*;

use chancery_store_sql::params::{like_contains, search_scope_params};
use chancery_store_sql::rows::{self, EVENT_COLUMNS, REDACTION_JOIN};
use chancery_store_sql::{i, u};

use crate::json::jsonb_or_null;
use crate::query::{PgRow, get, query, query_opt};
use crate::{PostgresStore, backend};

/// A tsquery matching every word, the last as a prefix. Words are
/// alphanumeric (the service splits terms), so they need no quoting
/// beyond what `to_tsquery` of a single lexeme does.
fn ts_query(words: &[String]) -> String {
    let last = words.len().saturating_sub(1);
    words.iter().enumerate().map(|(n, w)| if n == last { format!("{w}:*") } else { w.clone() }).collect::<Vec<_>>().join(" & ")
}

#[async_trait]
impl SearchStore for PostgresStore {
    async fn search_users(&self, searcher: &str, term: &str, limit: usize, all_users: bool) -> StoreResult<Vec<UserHit>> {
        let (_heavy, client) = self.heavy_client().await?;
        let pattern = like_contains(&term.to_lowercase());
        // Join rules and profile values as JSON only where they hold no
        // `\u0000` (see `json.rs`): one such row must not fail every search.
        let join_rules = jsonb_or_null("je.json");
        let profile_value = jsonb_or_null("p.value");
        let sql = format!(
            "
            WITH visible AS (
                SELECT s2.state_key AS user_id FROM room_state s1
                JOIN room_state s2 ON s2.room_id = s1.room_id AND s2.event_type = 'm.room.member'
                     AND s2.to_pos IS NULL AND s2.membership = 'join'
                WHERE s1.event_type = 'm.room.member' AND s1.state_key = $1 AND s1.to_pos IS NULL AND s1.membership = 'join'
                UNION
                SELECT m.state_key FROM room_state jr
                JOIN events je ON je.event_id = jr.event_id
                JOIN room_state m ON m.room_id = jr.room_id AND m.event_type = 'm.room.member'
                     AND m.to_pos IS NULL AND m.membership = 'join'
                WHERE jr.event_type = 'm.room.join_rules' AND jr.to_pos IS NULL
                  AND ({join_rules} -> 'content' ->> 'join_rule') = 'public'
            )
            SELECT a.user_id,
                   (SELECT {profile_value} #>> '{{}}' FROM profile_fields p WHERE p.user_id = a.user_id AND p.field = 'displayname'),
                   (SELECT {profile_value} #>> '{{}}' FROM profile_fields p WHERE p.user_id = a.user_id AND p.field = 'avatar_url')
            FROM accounts a
            WHERE a.deactivated_ts IS NULL AND a.user_id <> $1
              AND ($2 OR a.user_id IN (SELECT user_id FROM visible))
              AND (lower(a.user_id) LIKE $3
                   OR EXISTS (SELECT 1 FROM profile_fields p WHERE p.user_id = a.user_id AND p.field = 'displayname'
                              AND lower({profile_value} #>> '{{}}') LIKE $3))
            ORDER BY a.user_id
            LIMIT $4"
        );
        let rows = query(&client, &sql, &[&searcher, &all_users, &pattern, &i(limit as u64)]).await?;
        rows.iter().map(|r| rows::user_hit(&PgRow(r))).collect()
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
        // Whole rooms are a plain array; rooms searched only in parts are
        // three parallel arrays (room, from, to) for `unnest`.
        let (whole, parts) = search_scope_params(scopes);
        let (mut part_rooms, mut part_from, mut part_to) = (Vec::new(), Vec::new(), Vec::new());
        for (room, from, to) in parts {
            part_rooms.push(room);
            part_from.push(from);
            part_to.push(to);
        }
        let tsq = ts_query(words);
        let filter = "s.vector @@ to_tsquery('simple', $1)
            AND (s.room_id = ANY($2)
                 OR EXISTS (SELECT 1 FROM unnest($4::text[], $5::bigint[], $6::bigint[]) AS p(room_id, from_pos, to_pos)
                            WHERE p.room_id = s.room_id AND e.stream_pos >= p.from_pos
                              AND (p.to_pos IS NULL OR e.stream_pos < p.to_pos)))
            AND s.key = ANY($3) AND r.redaction_event_id IS NULL";
        let order_sql = match order {
            SearchOrder::Rank => "rank DESC, e.stream_pos DESC",
            SearchOrder::Recent => "e.stream_pos DESC",
        };
        let (_heavy, mut client) = self.heavy_client().await?;
        // The page and the count from one snapshot.
        let tx = client.build_transaction().read_only(true).isolation_level(tokio_postgres::IsolationLevel::RepeatableRead);
        let tx = tx.start().await.map_err(backend)?;
        let sql = format!(
            "SELECT {EVENT_COLUMNS}, ts_rank(s.vector, to_tsquery('simple', $1))::float8 AS rank
             FROM event_search s JOIN events e ON e.event_id = s.event_id {REDACTION_JOIN}
             WHERE {filter} ORDER BY {order_sql} LIMIT $7 OFFSET $8"
        );
        let rows =
            query(&tx, &sql, &[&tsq, &whole, &keys, &part_rooms, &part_from, &part_to, &i(limit as u64), &i(offset as u64)])
                .await?;
        let hits = rows.iter().map(|r| rows::search_hit(&PgRow(r))).collect::<StoreResult<Vec<_>>>()?;
        let count_sql = format!(
            "SELECT COUNT(*) FROM event_search s JOIN events e ON e.event_id = s.event_id {REDACTION_JOIN} WHERE {filter}"
        );
        let row = query_opt(&tx, &count_sql, &[&tsq, &whole, &keys, &part_rooms, &part_from, &part_to])
            .await?
            .ok_or_else(|| StoreError::Backend("count returned no row".into()))?;
        let count = u(get(&row, 0)?);
        tx.commit().await.map_err(backend)?;
        Ok((hits, count))
    }
}
