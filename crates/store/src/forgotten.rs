//! Forgotten rooms (`POST /rooms/{roomId}/forget`).
//!
//! A forget is recorded against the membership event it forgot (the
//! user's leave or ban). Any later membership event of the user in that
//! room (a rejoin, an invite, a knock, even a new ban) is not forgotten,
//! which is the spec's "until the user re-joins, is re-invited, or knocks"
//! without the write path having to clear a flag.

use async_trait::async_trait;

use crate::StoreResult;

#[async_trait]
pub trait ForgottenRoomStore: Send + Sync {
    /// Forgets the user's current membership of the room if it is `leave`
    /// or `ban`; returns false (and stores nothing) if the user has no
    /// membership there or another one.
    async fn forget_room(&self, user_id: &str, room_id: &str) -> StoreResult<bool>;

    /// Rooms whose current membership of the user is forgotten, sorted.
    async fn forgotten_rooms(&self, user_id: &str) -> StoreResult<Vec<String>>;
}
