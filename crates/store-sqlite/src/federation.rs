//! `FederationStore` on SQLite: the outbound federation queue over the
//! events table.

use async_trait::async_trait;
use chancery_store::{
    EduOutboxLimits, FederationSenderState, FederationStore, NewOutboundEdu, OutboundEdu, OutgoingPdu, QueuedEdus, RoomStore,
    StoreResult,
};
use chancery_store_sql::{i, u};
use rusqlite::{OptionalExtension, params};

use crate::{SqliteStore, backend};

/// The server part of a user id column: everything after its first `:`.
macro_rules! server_of {
    ($column:literal) => {
        concat!("substr(", $column, ", instr(", $column, ", ':') + 1)")
    };
}

/// `?3` is this server: remote users' membership changes by a local sender
/// or in a room with a local member joined, and the joined members of the
/// rooms local users joined.
const NEW_DESTINATIONS: &str = concat!(
    "SELECT server, MIN(pos) FROM (
       SELECT ",
    server_of!("e.state_key"),
    " AS server, e.stream_pos AS pos FROM events e
       WHERE e.stream_pos > ?1 AND e.stream_pos <= ?2 AND e.event_type = 'm.room.member'
         AND (",
    server_of!("e.sender"),
    " = ?3
              OR EXISTS (SELECT 1 FROM room_state s
                         WHERE s.room_id = e.room_id AND s.event_type = 'm.room.member' AND s.to_pos IS NULL
                           AND s.membership = 'join' AND ",
    server_of!("s.state_key"),
    " = ?3))
       UNION ALL
       SELECT ",
    server_of!("s.state_key"),
    ", e.stream_pos FROM events e
       JOIN room_state s ON s.room_id = e.room_id AND s.event_type = 'm.room.member' AND s.to_pos IS NULL
                        AND s.membership = 'join'
       WHERE e.stream_pos > ?1 AND e.stream_pos <= ?2 AND e.event_type = 'm.room.member'
         AND e.membership = 'join' AND ",
    server_of!("e.state_key"),
    " = ?3
     ) WHERE server <> ?3 AND server <> ''
     GROUP BY server ORDER BY MIN(pos), server LIMIT ?4"
);

/// `?3` is this server, `?4` the destination; a room's members at an
/// event are the membership rows in force right after it. Besides this
/// server's own events, the joins of other servers' users are passed on
/// (the resident server of a `send_join` must; a copy another server also
/// sends is dropped by its receiver as already known).
const EVENTS_FOR: &str = concat!(
    "SELECT e.stream_pos, e.event_id, e.json FROM events e
     WHERE e.stream_pos > ?1 AND e.stream_pos <= ?2 AND (",
    server_of!("e.sender"),
    " = ?3 OR (e.event_type = 'm.room.member' AND e.membership = 'join' AND ",
    server_of!("e.sender"),
    " <> ?4))
       AND ((e.event_type = 'm.room.member' AND ",
    server_of!("e.state_key"),
    " = ?4)
            OR EXISTS (SELECT 1 FROM room_state s
                       WHERE s.room_id = e.room_id AND s.event_type = 'm.room.member' AND s.membership = 'join'
                         AND s.from_pos <= e.stream_pos AND (s.to_pos IS NULL OR s.to_pos > e.stream_pos)
                         AND ",
    server_of!("s.state_key"),
    " = ?4))
       AND NOT EXISTS (SELECT 1 FROM room_state c JOIN events ce ON ce.event_id = c.event_id
                       WHERE c.room_id = e.room_id AND c.event_type = 'm.room.create' AND c.state_key = ''
                         AND c.to_pos IS NULL AND json_extract(ce.json, '$.content.\"m.federate\"') = 0)
     ORDER BY e.stream_pos LIMIT ?5"
);

fn limit_param(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

#[async_trait]
impl FederationStore for SqliteStore {
    async fn federation_stream_pos(&self) -> StoreResult<u64> {
        RoomStore::current_stream_pos(self).await
    }

    async fn new_federation_destinations(
        &self,
        our_server: &str,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> StoreResult<Vec<(String, u64)>> {
        let our_server = our_server.to_owned();
        self.read_heavy(move |conn| {
            let mut stmt = conn.prepare_cached(NEW_DESTINATIONS).map_err(backend)?;
            let rows = stmt
                .query_map(params![i(after), i(upto), our_server, limit_param(limit)], |r| {
                    Ok((r.get::<_, String>(0)?, u(r.get::<_, i64>(1)?)))
                })
                .map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(backend)
        })
        .await
    }

    async fn federation_events_for(
        &self,
        our_server: &str,
        destination: &str,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> StoreResult<Vec<OutgoingPdu>> {
        let (our_server, destination) = (our_server.to_owned(), destination.to_owned());
        self.read_heavy(move |conn| {
            let mut stmt = conn.prepare_cached(EVENTS_FOR).map_err(backend)?;
            let rows = stmt
                .query_map(params![i(after), i(upto), our_server, destination, limit_param(limit)], |r| {
                    Ok(OutgoingPdu { stream_pos: u(r.get(0)?), event_id: r.get(1)?, json: r.get(2)? })
                })
                .map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(backend)
        })
        .await
    }

    async fn federation_sender_state(&self, limit: usize) -> StoreResult<FederationSenderState> {
        self.read(move |conn| {
            let scanned_pos = conn
                .query_row("SELECT scanned_pos FROM federation_discovery WHERE id = 1", [], |r| r.get::<_, i64>(0))
                .optional()
                .map_err(backend)?
                .map(u);
            let mut stmt = conn
                .prepare_cached("SELECT server_name, sent_pos FROM federation_destinations ORDER BY server_name LIMIT ?1")
                .map_err(backend)?;
            let destinations = stmt
                .query_map([limit_param(limit)], |r| Ok((r.get::<_, String>(0)?, u(r.get::<_, i64>(1)?))))
                .map_err(backend)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(backend)?;
            Ok(FederationSenderState { scanned_pos, destinations })
        })
        .await
    }

    async fn add_federation_destinations(&self, destinations: &[(String, u64)], scanned_pos: u64) -> StoreResult<()> {
        let destinations = destinations.to_vec();
        self.write(move |tx| {
            for (server, sent_pos) in &destinations {
                tx.execute(
                    "INSERT INTO federation_destinations (server_name, sent_pos) VALUES (?1, ?2)
                     ON CONFLICT (server_name) DO NOTHING",
                    params![server, i(*sent_pos)],
                )
                .map_err(backend)?;
            }
            tx.execute(
                "INSERT INTO federation_discovery (id, scanned_pos) VALUES (1, ?1)
                 ON CONFLICT (id) DO UPDATE SET scanned_pos = excluded.scanned_pos",
                [i(scanned_pos)],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn queue_federation_edus(
        &self,
        edus: &[NewOutboundEdu],
        now_ms: u64,
        limits: EduOutboxLimits,
    ) -> StoreResult<Vec<(String, u64)>> {
        let edus = edus.to_vec();
        self.write(move |tx| {
            let mut touched = std::collections::BTreeSet::new();
            for edu in &edus {
                tx.execute(
                    "INSERT INTO federation_edu_outbox (destination, json, queued_ms) VALUES (?1, ?2, ?3)",
                    params![edu.destination, edu.json, i(now_ms)],
                )
                .map_err(backend)?;
                touched.insert(edu.destination.as_str());
            }
            let mut dropped = Vec::new();
            for destination in touched {
                let count: i64 = tx
                    .query_row("SELECT COUNT(*) FROM federation_edu_outbox WHERE destination = ?1", [destination], |r| r.get(0))
                    .map_err(backend)?;
                let excess = u(count).saturating_sub(limits.max_per_destination as u64);
                if excess > 0 {
                    tx.execute(
                        "DELETE FROM federation_edu_outbox WHERE id IN
                           (SELECT id FROM federation_edu_outbox WHERE destination = ?1 ORDER BY id LIMIT ?2)",
                        params![destination, i(excess)],
                    )
                    .map_err(backend)?;
                    dropped.push((destination.to_owned(), excess));
                }
            }
            Ok(dropped)
        })
        .await
    }

    async fn federation_edus_for(
        &self,
        destination: &str,
        now_ms: u64,
        limits: EduOutboxLimits,
        limit: usize,
    ) -> StoreResult<QueuedEdus> {
        let destination = destination.to_owned();
        let expired_at = now_ms.saturating_sub(limits.max_age_ms);
        self.write(move |tx| {
            let expired = tx
                .execute(
                    "DELETE FROM federation_edu_outbox WHERE destination = ?1 AND queued_ms <= ?2",
                    params![destination, i(expired_at)],
                )
                .map_err(backend)? as u64;
            let mut stmt = tx
                .prepare_cached("SELECT id, json FROM federation_edu_outbox WHERE destination = ?1 ORDER BY id LIMIT ?2")
                .map_err(backend)?;
            let edus = stmt
                .query_map(params![destination, limit_param(limit)], |r| Ok(OutboundEdu { id: u(r.get(0)?), json: r.get(1)? }))
                .map_err(backend)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(backend)?;
            Ok(QueuedEdus { edus, expired })
        })
        .await
    }

    async fn federation_edu_destinations(&self, limit: usize) -> StoreResult<Vec<String>> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached("SELECT DISTINCT destination FROM federation_edu_outbox ORDER BY destination LIMIT ?1")
                .map_err(backend)?;
            stmt.query_map([limit_param(limit)], |r| r.get::<_, String>(0))
                .map_err(backend)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(backend)
        })
        .await
    }

    async fn federation_transaction_acknowledged(&self, destination: &str, sent_pos: u64, edu_ids: &[u64]) -> StoreResult<()> {
        let (destination, edu_ids) = (destination.to_owned(), edu_ids.to_vec());
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO federation_destinations (server_name, sent_pos) VALUES (?1, ?2)
                 ON CONFLICT (server_name) DO UPDATE SET sent_pos = MAX(sent_pos, excluded.sent_pos)",
                params![destination, i(sent_pos)],
            )
            .map_err(backend)?;
            let mut stmt =
                tx.prepare_cached("DELETE FROM federation_edu_outbox WHERE id = ?1 AND destination = ?2").map_err(backend)?;
            for id in &edu_ids {
                stmt.execute(params![i(*id), destination]).map_err(backend)?;
            }
            Ok(())
        })
        .await
    }
}
