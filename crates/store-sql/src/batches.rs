//! Checks of what a write is handed, made before any SQL runs: a broken
//! contract is a bug in the caller (`StoreError::Contract`), and an alias
//! of another room is refused the same way on both backends.

use chancery_store::{NewEvent, RoomAlias, StoreError, StoreResult};

/// The events of a room creation or upgrade: at least one, all of `room_id`.
pub fn check_room_events(room_id: &str, events: &[NewEvent]) -> StoreResult<()> {
    if events.is_empty() {
        return Err(StoreError::Contract("an empty batch of events"));
    }
    if events.iter().any(|e| e.room_id != room_id) {
        return Err(StoreError::Contract("an event of another room"));
    }
    Ok(())
}

/// The aliases a new room gets with its creation: all of `room_id`.
pub fn check_aliases(room_id: &str, aliases: &[RoomAlias]) -> StoreResult<()> {
    if aliases.iter().any(|a| a.room_id != room_id) {
        return Err(StoreError::AliasOfAnotherRoom);
    }
    Ok(())
}
