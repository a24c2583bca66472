//! `DirectoryStore` on SQLite: aliases, the published directory, and the
//! room creations and upgrades that change them in the same transaction
//! as the room's events (on the single writer, like every write).

use async_trait::async_trait;
use chancery_store::*;
use rusqlite::types::Value;
use rusqlite::{OptionalExtension, Transaction, params, params_from_iter};

use chancery_store_sql::batches::{check_aliases, check_room_events};
use chancery_store_sql::directory::{
    DirectoryField, LISTED_ROOMS_FILTER, PUBLIC_ROOMS_SELECT, cursor_filter, page_order, published_rooms_sql,
};
use chancery_store_sql::params::{like_contains, reaches_limit};
use chancery_store_sql::rows::{self, ALIAS_COLUMNS};
use chancery_store_sql::{i, u};

use crate::accounts::is_unique_violation;
use crate::rooms::{append_in_tx, create_room_in_tx};
use crate::row::SqliteRow;
use crate::{SqliteStore, backend};

fn insert_alias(tx: &Transaction<'_>, alias: &RoomAlias) -> StoreResult<()> {
    tx.prepare_cached("INSERT INTO room_aliases (alias, room_id, creator, created_ts) VALUES (?1, ?2, ?3, ?4)")
        .and_then(|mut s| s.execute(params![alias.alias, alias.room_id, alias.creator, i(alias.created_ts)]))
        .map_err(|e| if is_unique_violation(&e) { StoreError::AliasTaken } else { backend(e) })?;
    Ok(())
}

fn publish(tx: &Transaction<'_>, room_id: &str) -> StoreResult<()> {
    tx.prepare_cached("INSERT INTO room_directory (room_id) VALUES (?1) ON CONFLICT (room_id) DO NOTHING")
        .and_then(|mut s| s.execute([room_id]))
        .map_err(backend)?;
    Ok(())
}

/// The dialect's subquery of a directory field: a string of the content
/// of the room's current state event, `NULL` if absent or not a string.
fn state_field(field: &DirectoryField) -> String {
    let (event_type, path) = (field.event_type, format!("$.content.{}", field.content_key));
    let (join, unredacted) = field.unredacted();
    format!(
        "(SELECT CASE WHEN json_type(e.json, '{path}') = 'text' THEN json_extract(e.json, '{path}') END
          FROM room_state s JOIN events e ON e.event_id = s.event_id {join}
          WHERE s.room_id = d.room_id AND s.event_type = '{event_type}' AND s.state_key = '' AND s.to_pos IS NULL {unredacted})"
    )
}

#[async_trait]
impl DirectoryStore for SqliteStore {
    async fn create_alias(&self, alias: &RoomAlias, max_per_room: usize) -> StoreResult<()> {
        let alias = alias.clone();
        self.write(move |tx| {
            let room = tx
                .query_row("SELECT 1 FROM rooms WHERE room_id = ?1", [&alias.room_id], |_| Ok(()))
                .optional()
                .map_err(backend)?;
            if room.is_none() {
                return Err(StoreError::UnknownRoom);
            }
            let count: i64 = tx
                .query_row("SELECT COUNT(*) FROM room_aliases WHERE room_id = ?1", [&alias.room_id], |r| r.get(0))
                .map_err(backend)?;
            if reaches_limit(count, max_per_room) {
                return Err(StoreError::TooManyAliases);
            }
            insert_alias(tx, &alias)
        })
        .await
    }

    async fn alias(&self, alias: &str) -> StoreResult<Option<RoomAlias>> {
        let alias = alias.to_owned();
        self.read(move |conn| {
            conn.prepare_cached(&format!("SELECT {ALIAS_COLUMNS} WHERE alias = ?1"))
                .and_then(|mut s| s.query_row([&alias], |r| rows::room_alias(&SqliteRow(r))).optional())
                .map_err(backend)
        })
        .await
    }

    async fn delete_alias(&self, alias: &str) -> StoreResult<bool> {
        let alias = alias.to_owned();
        self.write(move |tx| Ok(tx.execute("DELETE FROM room_aliases WHERE alias = ?1", [&alias]).map_err(backend)? > 0)).await
    }

    async fn aliases_of_room(&self, room_id: &str) -> StoreResult<Vec<String>> {
        let room_id = room_id.to_owned();
        self.read(move |conn| {
            let mut stmt =
                conn.prepare_cached("SELECT alias FROM room_aliases WHERE room_id = ?1 ORDER BY alias").map_err(backend)?;
            let rows = stmt.query_map([&room_id], |r| r.get(0)).map_err(backend)?;
            rows.collect::<Result<Vec<String>, _>>().map_err(backend)
        })
        .await
    }

    async fn set_published(&self, room_id: &str, published: bool) -> StoreResult<()> {
        let room_id = room_id.to_owned();
        self.write(move |tx| {
            let room =
                tx.query_row("SELECT 1 FROM rooms WHERE room_id = ?1", [&room_id], |_| Ok(())).optional().map_err(backend)?;
            if room.is_none() {
                return Err(StoreError::UnknownRoom);
            }
            if published {
                publish(tx, &room_id)
            } else {
                tx.execute("DELETE FROM room_directory WHERE room_id = ?1", [&room_id]).map_err(backend)?;
                Ok(())
            }
        })
        .await
    }

    async fn is_published(&self, room_id: &str) -> StoreResult<bool> {
        let room_id = room_id.to_owned();
        self.read(move |conn| {
            conn.query_row("SELECT 1 FROM room_directory WHERE room_id = ?1", [&room_id], |_| Ok(()))
                .optional()
                .map(|found| found.is_some())
                .map_err(backend)
        })
        .await
    }

    async fn public_rooms(&self, query: &PublicRoomsQuery) -> StoreResult<PublicRoomsPage> {
        let query = query.clone();
        self.read_heavy(move |conn| {
            let mut sql = format!("{PUBLIC_ROOMS_SELECT} FROM ({}) p WHERE {LISTED_ROOMS_FILTER}", published_rooms_sql(state_field));
            let mut args: Vec<Value> = Vec::new();
            if let Some(term) = query.search.as_deref().filter(|t| !t.is_empty()) {
                // SQLite's LIKE ignores ASCII case.
                args.push(Value::Text(like_contains(term)));
                let n = args.len();
                sql.push_str(&format!(
                    " AND (p.name LIKE ?{n} ESCAPE '\\' OR p.topic LIKE ?{n} ESCAPE '\\' OR p.canonical_alias LIKE ?{n} ESCAPE '\\')"
                ));
            }
            if let Some(types) = query.room_types.as_ref().filter(|t| !t.is_empty()) {
                let mut alternatives = Vec::new();
                if types.iter().any(Option::is_none) {
                    alternatives.push("p.room_type IS NULL".to_owned());
                }
                for t in types.iter().flatten() {
                    args.push(Value::Text(t.clone()));
                    alternatives.push(format!("p.room_type = ?{}", args.len()));
                }
                sql.push_str(&format!(" AND ({})", alternatives.join(" OR ")));
            }
            let forward = query.cursor.as_ref().is_none_or(|c| c.forward);
            if let Some(cursor) = &query.cursor {
                args.push(Value::Integer(i(cursor.joined_members)));
                args.push(Value::Text(cursor.room_id.clone()));
                let (count, room) = (args.len() - 1, args.len());
                sql.push_str(&cursor_filter(cursor.forward, &format!("?{count}"), &format!("?{room}")));
            }
            args.push(Value::Integer(i64::try_from(query.limit).unwrap_or(i64::MAX)));
            sql.push_str(&page_order(forward, &format!("?{}", args.len())));

            // The page and the total from one snapshot.
            let tx = conn.unchecked_transaction().map_err(backend)?;
            let mut rooms = {
                let mut stmt = tx.prepare(&sql).map_err(backend)?;
                let rows = stmt.query_map(params_from_iter(args), |r| rows::public_room(&SqliteRow(r))).map_err(backend)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(backend)?
            };
            if !forward {
                rooms.reverse();
            }
            let total: i64 = tx.query_row("SELECT COUNT(*) FROM room_directory", [], |r| r.get(0)).map_err(backend)?;
            Ok(PublicRoomsPage { rooms, total: u(total) })
        })
        .await
    }

    async fn create_room_with_addresses(
        &self,
        room: NewRoom,
        events: Vec<NewEvent>,
        addresses: RoomAddresses,
    ) -> StoreResult<u64> {
        check_aliases(&room.room_id, &addresses.aliases)?;
        self.write(move |tx| {
            let pos = create_room_in_tx(tx, &room, &events)?;
            for alias in &addresses.aliases {
                insert_alias(tx, alias)?;
            }
            if addresses.publish {
                publish(tx, &room.room_id)?;
            }
            Ok(pos)
        })
        .await
    }

    async fn upgrade_room(&self, upgrade: RoomUpgrade) -> StoreResult<u64> {
        check_room_events(&upgrade.old_room_id, &upgrade.old_room_events)?;
        self.write(move |tx| {
            let mut prev = upgrade.old_extremities.clone();
            for event in &upgrade.old_room_events {
                append_in_tx(tx, event, &prev)?;
                prev = vec![event.event_id.clone()];
            }
            let pos = create_room_in_tx(tx, &upgrade.new_room, &upgrade.new_room_events)?;
            let (old, new) = (&upgrade.old_room_id, &upgrade.new_room.room_id);
            tx.execute("UPDATE room_aliases SET room_id = ?2 WHERE room_id = ?1", [old, new]).map_err(backend)?;
            if tx.execute("DELETE FROM room_directory WHERE room_id = ?1", [old]).map_err(backend)? > 0 {
                publish(tx, new)?;
            }
            Ok(pos)
        })
        .await
    }
}
