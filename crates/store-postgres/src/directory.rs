//! `DirectoryStore` on PostgreSQL.
//!
//! Room creations and upgrades follow the write path of `rooms.rs`: every
//! statement that needs no stream position (room row, aliases, listing)
//! runs before `persist` takes the stream lock. An upgrade first locks the
//! old room's row and takes its extremities exactly like an append, so it
//! is serialised with every other writer of that room on every node.
//! Per-room alias counts are checked under an advisory lock per room.

use async_trait::async_trait;
use chancery_store::*;
use deadpool_postgres::{GenericClient, Transaction};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use crate::accounts::{get, i, query, query_opt, u};
use crate::rooms::{Writes, insert_error, persist};
use crate::{PostgresStore, backend};

fn alias_error(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) if *db.code() == SqlState::UNIQUE_VIOLATION && db.constraint() == Some("room_aliases_pkey") => {
            StoreError::AliasTaken
        }
        Some(db) if *db.code() == SqlState::FOREIGN_KEY_VIOLATION => StoreError::UnknownRoom,
        _ => backend(e),
    }
}

async fn insert_alias(c: &impl GenericClient, alias: &RoomAlias) -> StoreResult<()> {
    let stmt = c
        .prepare_cached("INSERT INTO room_aliases (alias, room_id, creator, created_ts) VALUES ($1, $2, $3, $4)")
        .await
        .map_err(backend)?;
    c.execute(&stmt, &[&alias.alias, &alias.room_id, &alias.creator, &i(alias.created_ts)]).await.map_err(alias_error)?;
    Ok(())
}

async fn publish(c: &impl GenericClient, room_id: &str) -> StoreResult<()> {
    let stmt = c
        .prepare_cached("INSERT INTO room_directory (room_id) VALUES ($1) ON CONFLICT (room_id) DO NOTHING")
        .await
        .map_err(backend)?;
    c.execute(&stmt, &[&room_id])
        .await
        .map_err(|e| if e.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) { StoreError::UnknownRoom } else { backend(e) })?;
    Ok(())
}

async fn insert_room(tx: &Transaction<'_>, room: &NewRoom, events: &[NewEvent]) -> StoreResult<()> {
    let max_depth = events.iter().map(|e| i(e.depth)).max().unwrap_or(0);
    let stmt = tx
        .prepare_cached("INSERT INTO rooms (room_id, room_version, creator, created_ts, max_depth) VALUES ($1, $2, $3, $4, $5)")
        .await
        .map_err(backend)?;
    tx.execute(&stmt, &[&room.room_id, &room.room_version.as_str(), &room.creator, &i(room.created_ts), &max_depth])
        .await
        .map_err(insert_error)?;
    Ok(())
}

fn check_room_events(room_id: &str, events: &[NewEvent]) -> StoreResult<()> {
    if events.is_empty() {
        return Err(StoreError::Contract("an empty batch of events"));
    }
    if events.iter().any(|e| e.room_id != room_id) {
        return Err(StoreError::Contract("an event of another room"));
    }
    Ok(())
}

/// A string field of the content of the room's current state event of
/// `event_type` (empty state key), `NULL` if absent or not a string, and
/// also if the event was redacted when `redactable` (the redaction
/// algorithm strips the field, but the stored JSON keeps it). `json`, not
/// `jsonb`: jsonb refuses `\u0000`, which canonical JSON may hold; events
/// holding it are skipped, as extracting it as text would fail the query.
fn state_field(event_type: &str, path: &str, redactable: bool) -> String {
    let (join, unredacted) = if redactable {
        ("LEFT JOIN redactions r ON r.target_event_id = s.event_id", "AND r.target_event_id IS NULL")
    } else {
        ("", "")
    };
    format!(
        "(SELECT CASE WHEN json_typeof(e.json::json #> '{{{path}}}') = 'string' THEN e.json::json #>> '{{{path}}}' END
          FROM room_state s JOIN events e ON e.event_id = s.event_id {join}
          WHERE s.room_id = d.room_id AND s.event_type = '{event_type}' AND s.state_key = '' AND s.to_pos IS NULL
            AND strpos(e.json, '\\u0000') = 0 {unredacted})"
    )
}

/// The published rooms with their directory fields; `p` in the query.
fn published_rooms_sql() -> String {
    format!(
        "SELECT d.room_id,
                (SELECT COUNT(*) FROM room_state m
                 WHERE m.room_id = d.room_id AND m.event_type = 'm.room.member' AND m.to_pos IS NULL
                   AND m.membership = 'join') AS joined,
                {} AS name, {} AS topic, {} AS avatar_url, {} AS canonical_alias, {} AS join_rule,
                {} AS history_visibility, {} AS guest_access, {} AS room_type
         FROM room_directory d",
        state_field("m.room.name", "content,name", true),
        state_field("m.room.topic", "content,topic", true),
        state_field("m.room.avatar", "content,url", true),
        state_field("m.room.canonical_alias", "content,alias", true),
        // The redaction algorithm keeps these fields.
        state_field("m.room.join_rules", "content,join_rule", false),
        state_field("m.room.history_visibility", "content,history_visibility", false),
        state_field("m.room.guest_access", "content,guest_access", true),
        state_field("m.room.create", "content,type", false),
    )
}

/// `%term%` for LIKE, with the wildcards of the term escaped by `\`.
fn like_pattern(term: &str) -> String {
    let mut out = String::with_capacity(term.len() + 2);
    out.push('%');
    for c in term.chars() {
        if matches!(c, '\\' | '%' | '_') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

#[async_trait]
impl DirectoryStore for PostgresStore {
    async fn create_alias(&self, alias: &RoomAlias, max_per_room: usize) -> StoreResult<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        // Two creations for one room at once must not both pass the count.
        tx.execute("SELECT pg_advisory_xact_lock(hashtext('aliases:' || $1))", &[&alias.room_id]).await.map_err(backend)?;
        if query_opt(&tx, "SELECT 1 FROM rooms WHERE room_id = $1", &[&alias.room_id]).await?.is_none() {
            return Err(StoreError::UnknownRoom);
        }
        let row = query_opt(&tx, "SELECT COUNT(*) FROM room_aliases WHERE room_id = $1", &[&alias.room_id])
            .await?
            .ok_or_else(|| StoreError::Backend("aggregate returned no row".into()))?;
        if usize::try_from(get::<i64>(&row, 0)?).unwrap_or(usize::MAX) >= max_per_room {
            return Err(StoreError::TooManyAliases);
        }
        insert_alias(&tx, alias).await?;
        tx.commit().await.map_err(backend)
    }

    async fn alias(&self, alias: &str) -> StoreResult<Option<RoomAlias>> {
        let client = self.client().await?;
        let row = query_opt(&client, "SELECT alias, room_id, creator, created_ts FROM room_aliases WHERE alias = $1", &[&alias])
            .await?;
        row.map(|r| Ok(RoomAlias { alias: get(&r, 0)?, room_id: get(&r, 1)?, creator: get(&r, 2)?, created_ts: u(get(&r, 3)?) }))
            .transpose()
    }

    async fn delete_alias(&self, alias: &str) -> StoreResult<bool> {
        let client = self.client().await?;
        let stmt = client.prepare_cached("DELETE FROM room_aliases WHERE alias = $1").await.map_err(backend)?;
        Ok(client.execute(&stmt, &[&alias]).await.map_err(backend)? > 0)
    }

    async fn aliases_of_room(&self, room_id: &str) -> StoreResult<Vec<String>> {
        let client = self.client().await?;
        let rows = query(&client, "SELECT alias FROM room_aliases WHERE room_id = $1 ORDER BY alias", &[&room_id]).await?;
        rows.iter().map(|r| get(r, 0)).collect()
    }

    async fn set_published(&self, room_id: &str, published: bool) -> StoreResult<()> {
        let client = self.client().await?;
        if published {
            // The foreign key refuses unknown rooms.
            publish(&client, room_id).await
        } else {
            // One statement: the room check and the delete see one snapshot.
            let row = query_opt(
                &client,
                "WITH gone AS (DELETE FROM room_directory WHERE room_id = $1)
                 SELECT 1 FROM rooms WHERE room_id = $1",
                &[&room_id],
            )
            .await?;
            if row.is_none() { Err(StoreError::UnknownRoom) } else { Ok(()) }
        }
    }

    async fn is_published(&self, room_id: &str) -> StoreResult<bool> {
        let client = self.client().await?;
        Ok(query_opt(&client, "SELECT 1 FROM room_directory WHERE room_id = $1", &[&room_id]).await?.is_some())
    }

    async fn public_rooms(&self, query_: &PublicRoomsQuery) -> StoreResult<PublicRoomsPage> {
        let mut sql = format!(
            "SELECT room_id, joined, name, topic, avatar_url, canonical_alias, join_rule, history_visibility,
                    guest_access, room_type
             FROM ({}) p
             WHERE (p.join_rule IN ('public', 'knock', 'knock_restricted') OR p.history_visibility = 'world_readable')",
            published_rooms_sql()
        );
        let mut args: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
        if let Some(term) = query_.search.as_deref().filter(|t| !t.is_empty()) {
            // ILIKE: the same ASCII case-insensitivity as SQLite's LIKE.
            args.push(Box::new(like_pattern(term)));
            let n = args.len();
            sql.push_str(&format!(
                " AND (p.name ILIKE ${n} ESCAPE '\\' OR p.topic ILIKE ${n} ESCAPE '\\' OR p.canonical_alias ILIKE ${n} ESCAPE '\\')"
            ));
        }
        if let Some(types) = query_.room_types.as_ref().filter(|t| !t.is_empty()) {
            let named: Vec<String> = types.iter().flatten().cloned().collect();
            let mut alternatives = Vec::new();
            if types.iter().any(Option::is_none) {
                alternatives.push("p.room_type IS NULL".to_owned());
            }
            if !named.is_empty() {
                args.push(Box::new(named));
                alternatives.push(format!("p.room_type = ANY(${})", args.len()));
            }
            sql.push_str(&format!(" AND ({})", alternatives.join(" OR ")));
        }
        let forward = query_.cursor.as_ref().is_none_or(|c| c.forward);
        if let Some(cursor) = &query_.cursor {
            args.push(Box::new(i(cursor.joined_members)));
            args.push(Box::new(cursor.room_id.clone()));
            let (count, room) = (args.len() - 1, args.len());
            sql.push_str(&if cursor.forward {
                format!(" AND (p.joined < ${count} OR (p.joined = ${count} AND p.room_id > ${room}))")
            } else {
                format!(" AND (p.joined > ${count} OR (p.joined = ${count} AND p.room_id < ${room}))")
            });
        }
        args.push(Box::new(i64::try_from(query_.limit).unwrap_or(i64::MAX)));
        sql.push_str(&if forward {
            format!(" ORDER BY p.joined DESC, p.room_id ASC LIMIT ${}", args.len())
        } else {
            format!(" ORDER BY p.joined ASC, p.room_id DESC LIMIT ${}", args.len())
        });

        let mut client = self.client().await?;
        // The page and the total from one snapshot.
        let tx = client.build_transaction().read_only(true).isolation_level(tokio_postgres::IsolationLevel::RepeatableRead);
        let tx = tx.start().await.map_err(backend)?;
        let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a.as_ref() as &(dyn ToSql + Sync)).collect();
        let rows = query(&tx, &sql, &params).await?;
        let mut rooms = rows
            .iter()
            .map(|r| {
                Ok(PublicRoomEntry {
                    room_id: get(r, 0)?,
                    joined_members: u(get(r, 1)?),
                    name: get(r, 2)?,
                    topic: get(r, 3)?,
                    avatar_url: get(r, 4)?,
                    canonical_alias: get(r, 5)?,
                    join_rule: get(r, 6)?,
                    history_visibility: get(r, 7)?,
                    guest_access: get(r, 8)?,
                    room_type: get(r, 9)?,
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        if !forward {
            rooms.reverse();
        }
        let total = query_opt(&tx, "SELECT COUNT(*) FROM room_directory", &[])
            .await?
            .map(|r| get::<i64>(&r, 0))
            .transpose()?
            .unwrap_or(0);
        tx.commit().await.map_err(backend)?;
        Ok(PublicRoomsPage { rooms, total: u(total) })
    }

    async fn create_room_with_addresses(
        &self,
        room: NewRoom,
        events: Vec<NewEvent>,
        addresses: RoomAddresses,
    ) -> StoreResult<u64> {
        check_room_events(&room.room_id, &events)?;
        if addresses.aliases.iter().any(|a| a.room_id != room.room_id) {
            return Err(StoreError::AliasOfAnotherRoom);
        }
        let mut client = self.client().await?;
        let w = Writes::prepare(&client).await?;
        let tx = client.transaction().await.map_err(backend)?;
        // Nobody else sees the room before COMMIT: no extremities to check.
        insert_room(&tx, &room, &events).await?;
        for alias in &addresses.aliases {
            insert_alias(&tx, alias).await?;
        }
        if addresses.publish {
            publish(&tx, &room.room_id).await?;
        }
        let pos = persist(&tx, &w, &events).await?;
        tx.commit().await.map_err(backend)?;
        Ok(pos)
    }

    async fn upgrade_room(&self, upgrade: RoomUpgrade) -> StoreResult<u64> {
        check_room_events(&upgrade.old_room_id, &upgrade.old_room_events)?;
        check_room_events(&upgrade.new_room.room_id, &upgrade.new_room_events)?;
        let (old, new) = (&upgrade.old_room_id, &upgrade.new_room.room_id);
        let old_depth = upgrade.old_room_events.iter().map(|e| i(e.depth)).max().unwrap_or(0);
        let mut client = self.client().await?;
        let w = Writes::prepare(&client).await?;
        let tx = client.transaction().await.map_err(backend)?;
        // As an append: lock the old room, then take its extremities.
        let (room, taken) = tokio::join!(
            biased;
            async { tx.query_opt(&w.lock_room, &[old, &old_depth]).await },
            async { tx.query(&w.take_extremities, &[old]).await },
        );
        if room.map_err(backend)?.is_none() {
            return Err(StoreError::UnknownRoom);
        }
        let mut current = taken.map_err(backend)?.iter().map(|r| get::<String>(r, 0)).collect::<StoreResult<Vec<_>>>()?;
        let mut expected = upgrade.old_extremities.clone();
        current.sort();
        expected.sort();
        if current != expected {
            return Err(StoreError::StaleExtremities);
        }
        insert_room(&tx, &upgrade.new_room, &upgrade.new_room_events).await?;
        tx.execute("UPDATE room_aliases SET room_id = $2 WHERE room_id = $1", &[old, new]).await.map_err(backend)?;
        if tx.execute("DELETE FROM room_directory WHERE room_id = $1", &[old]).await.map_err(backend)? > 0 {
            publish(&tx, new).await?;
        }
        persist(&tx, &w, &upgrade.old_room_events).await?;
        let pos = persist(&tx, &w, &upgrade.new_room_events).await?;
        tx.commit().await.map_err(backend)?;
        Ok(pos)
    }
}
