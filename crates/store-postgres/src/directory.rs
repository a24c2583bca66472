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

use chancery_store_sql::batches::{check_aliases, check_room_events};
use chancery_store_sql::directory::{
    DirectoryField, LISTED_ROOMS_FILTER, PUBLIC_ROOMS_SELECT, cursor_filter, page_order, published_rooms_sql,
};
use chancery_store_sql::params::{like_contains, reaches_limit};
use chancery_store_sql::rows::{self, ALIAS_COLUMNS};
use chancery_store_sql::{i, u};

use crate::json::no_nul_escape;
use crate::query::{PgRow, get, query, query_opt};
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

/// The dialect's subquery of a directory field: a string of the content
/// of the room's current state event, `NULL` if absent or not a string.
/// Events holding `\u0000` are skipped (see `json.rs`): any JSON operation
/// on them would fail the query. `json`, not `jsonb`: one field is read
/// of each, so the text need not be converted as a whole.
fn state_field(field: &DirectoryField) -> String {
    let (event_type, path) = (field.event_type, format!("content,{}", field.content_key));
    let (join, unredacted) = field.unredacted();
    let no_nul = no_nul_escape("e.json");
    format!(
        "(SELECT CASE WHEN json_typeof(e.json::json #> '{{{path}}}') = 'string' THEN e.json::json #>> '{{{path}}}' END
          FROM room_state s JOIN events e ON e.event_id = s.event_id {join}
          WHERE s.room_id = d.room_id AND s.event_type = '{event_type}' AND s.state_key = '' AND s.to_pos IS NULL
            AND {no_nul} {unredacted})"
    )
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
        if reaches_limit(get(&row, 0)?, max_per_room) {
            return Err(StoreError::TooManyAliases);
        }
        insert_alias(&tx, alias).await?;
        tx.commit().await.map_err(backend)
    }

    async fn alias(&self, alias: &str) -> StoreResult<Option<RoomAlias>> {
        let client = self.client().await?;
        let sql = format!("SELECT {ALIAS_COLUMNS} WHERE alias = $1");
        query_opt(&client, &sql, &[&alias]).await?.map(|r| rows::room_alias(&PgRow(&r))).transpose()
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
        let mut sql = format!("{PUBLIC_ROOMS_SELECT} FROM ({}) p WHERE {LISTED_ROOMS_FILTER}", published_rooms_sql(state_field));
        let mut args: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
        if let Some(term) = query_.search.as_deref().filter(|t| !t.is_empty()) {
            // ILIKE: the same ASCII case-insensitivity as SQLite's LIKE.
            args.push(Box::new(like_contains(term)));
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
            sql.push_str(&cursor_filter(cursor.forward, &format!("${count}"), &format!("${room}")));
        }
        args.push(Box::new(i64::try_from(query_.limit).unwrap_or(i64::MAX)));
        sql.push_str(&page_order(forward, &format!("${}", args.len())));

        let (_heavy, mut client) = self.heavy_client().await?;
        // The page and the total from one snapshot.
        let tx = client.build_transaction().read_only(true).isolation_level(tokio_postgres::IsolationLevel::RepeatableRead);
        let tx = tx.start().await.map_err(backend)?;
        let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a.as_ref() as &(dyn ToSql + Sync)).collect();
        let rows = query(&tx, &sql, &params).await?;
        let mut rooms = rows.iter().map(|r| rows::public_room(&PgRow(r))).collect::<StoreResult<Vec<_>>>()?;
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
        check_aliases(&room.room_id, &addresses.aliases)?;
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
