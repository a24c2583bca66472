//! `ForgottenRoomStore` on SQLite.

use async_trait::async_trait;
use chancery_store::{ForgottenRoomStore, StoreResult};

use crate::{SqliteStore, backend};

#[async_trait]
impl ForgottenRoomStore for SqliteStore {
    async fn forget_room(&self, user_id: &str, room_id: &str) -> StoreResult<bool> {
        let (user_id, room_id) = (user_id.to_owned(), room_id.to_owned());
        self.write(move |tx| {
            let changed = tx
                .execute(
                    "INSERT INTO forgotten_rooms (user_id, room_id, membership_event_id)
                     SELECT state_key, room_id, event_id FROM room_state
                     WHERE room_id = ?2 AND event_type = 'm.room.member' AND state_key = ?1 AND to_pos IS NULL
                       AND membership IN ('leave', 'ban')
                     ON CONFLICT (user_id, room_id) DO UPDATE SET membership_event_id = excluded.membership_event_id",
                    [&user_id, &room_id],
                )
                .map_err(backend)?;
            Ok(changed > 0)
        })
        .await
    }

    async fn forgotten_rooms(&self, user_id: &str) -> StoreResult<Vec<String>> {
        let user_id = user_id.to_owned();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT f.room_id FROM forgotten_rooms f
                     JOIN room_state s ON s.room_id = f.room_id AND s.event_type = 'm.room.member'
                          AND s.state_key = f.user_id AND s.to_pos IS NULL AND s.event_id = f.membership_event_id
                     WHERE f.user_id = ?1
                     ORDER BY f.room_id",
                )
                .map_err(backend)?;
            let rows = stmt.query_map([&user_id], |r| r.get(0)).map_err(backend)?;
            rows.collect::<Result<Vec<String>, _>>().map_err(backend)
        })
        .await
    }
}
