//! `ForgottenRoomStore` on PostgreSQL. Each method is one statement.

use async_trait::async_trait;
use chancery_store::{ForgottenRoomStore, StoreResult};

use crate::query::{get, query};
use crate::{PostgresStore, backend};

#[async_trait]
impl ForgottenRoomStore for PostgresStore {
    async fn forget_room(&self, user_id: &str, room_id: &str) -> StoreResult<bool> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "INSERT INTO forgotten_rooms (user_id, room_id, membership_event_id)
                 SELECT state_key, room_id, event_id FROM room_state
                 WHERE room_id = $2 AND event_type = 'm.room.member' AND state_key = $1 AND to_pos IS NULL
                   AND membership IN ('leave', 'ban')
                 ON CONFLICT (user_id, room_id) DO UPDATE SET membership_event_id = EXCLUDED.membership_event_id",
            )
            .await
            .map_err(backend)?;
        Ok(client.execute(&stmt, &[&user_id, &room_id]).await.map_err(backend)? > 0)
    }

    async fn forgotten_rooms(&self, user_id: &str) -> StoreResult<Vec<String>> {
        let client = self.client().await?;
        let rows = query(
            &client,
            "SELECT f.room_id FROM forgotten_rooms f
             JOIN room_state s ON s.room_id = f.room_id AND s.event_type = 'm.room.member'
                  AND s.state_key = f.user_id AND s.to_pos IS NULL AND s.event_id = f.membership_event_id
             WHERE f.user_id = $1
             ORDER BY f.room_id",
            &[&user_id],
        )
        .await?;
        rows.iter().map(|r| get(r, 0)).collect()
    }
}
