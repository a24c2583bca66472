//! `FederationStore` on PostgreSQL: the outbound federation queue over the
//! events table. Positions commit in order (`stream_position`), so a read
//! up to the committed position never skips an event still in flight.

use async_trait::async_trait;
use chancery_store::{
    EduOutboxLimits, FederationSenderState, FederationStore, NewOutboundEdu, OutboundEdu, OutgoingPdu, QueuedEdus, RoomStore,
    StoreResult,
};
use chancery_store_sql::{i, u};

use crate::json::jsonb_or_null;
use crate::query::{execute, get, query, query_opt};
use crate::{PostgresStore, backend};

/// The server part of a user id column: everything after its first `:`.
fn server_of(column: &str) -> String {
    format!("substring({column} from position(':' in {column}) + 1)")
}

/// `$3` is this server: remote users' membership changes by a local sender
/// or in a room with a local member joined, and the joined members of the
/// rooms local users joined.
fn new_destinations_sql() -> String {
    format!(
        "SELECT server, MIN(pos) FROM (
           SELECT {target} AS server, e.stream_pos AS pos FROM events e
           WHERE e.stream_pos > $1 AND e.stream_pos <= $2 AND e.event_type = 'm.room.member'
             AND ({sender} = $3
                  OR EXISTS (SELECT 1 FROM room_state s
                             WHERE s.room_id = e.room_id AND s.event_type = 'm.room.member' AND s.to_pos IS NULL
                               AND s.membership = 'join' AND {member} = $3))
           UNION ALL
           SELECT {member}, e.stream_pos FROM events e
           JOIN room_state s ON s.room_id = e.room_id AND s.event_type = 'm.room.member' AND s.to_pos IS NULL
                            AND s.membership = 'join'
           WHERE e.stream_pos > $1 AND e.stream_pos <= $2 AND e.event_type = 'm.room.member'
             AND e.membership = 'join' AND {target} = $3
         ) found WHERE server <> $3 AND server <> ''
         GROUP BY server ORDER BY MIN(pos), server LIMIT $4",
        target = server_of("e.state_key"),
        sender = server_of("e.sender"),
        member = server_of("s.state_key"),
    )
}

/// `$3` is this server, `$4` the destination; a room's members at an
/// event are the membership rows in force right after it. Besides this
/// server's own events, the joins of other servers' users are passed on
/// (the resident server of a `send_join` must; a copy another server also
/// sends is dropped by its receiver as already known).
fn events_for_sql() -> String {
    format!(
        "SELECT e.stream_pos, e.event_id, e.json FROM events e
         WHERE e.stream_pos > $1 AND e.stream_pos <= $2
           AND ({sender} = $3 OR (e.event_type = 'm.room.member' AND e.membership = 'join' AND {sender} <> $4))
           AND ((e.event_type = 'm.room.member' AND {target} = $4)
                OR EXISTS (SELECT 1 FROM room_state s
                           WHERE s.room_id = e.room_id AND s.event_type = 'm.room.member' AND s.membership = 'join'
                             AND s.from_pos <= e.stream_pos AND (s.to_pos IS NULL OR s.to_pos > e.stream_pos)
                             AND {member} = $4))
           AND NOT EXISTS (SELECT 1 FROM room_state c JOIN events ce ON ce.event_id = c.event_id
                           WHERE c.room_id = e.room_id AND c.event_type = 'm.room.create' AND c.state_key = ''
                             AND c.to_pos IS NULL AND {create} -> 'content' -> 'm.federate' = 'false'::jsonb)
         ORDER BY e.stream_pos LIMIT $5",
        sender = server_of("e.sender"),
        target = server_of("e.state_key"),
        member = server_of("s.state_key"),
        create = jsonb_or_null("ce.json"),
    )
}

fn limit_param(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

#[async_trait]
impl FederationStore for PostgresStore {
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
        let (_permit, client) = self.heavy_client().await?;
        let rows = query(&client, &new_destinations_sql(), &[&i(after), &i(upto), &our_server, &limit_param(limit)]).await?;
        rows.iter().map(|r| Ok((get::<String>(r, 0)?, u(get::<i64>(r, 1)?)))).collect()
    }

    async fn federation_events_for(
        &self,
        our_server: &str,
        destination: &str,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> StoreResult<Vec<OutgoingPdu>> {
        let (_permit, client) = self.heavy_client().await?;
        let rows =
            query(&client, &events_for_sql(), &[&i(after), &i(upto), &our_server, &destination, &limit_param(limit)]).await?;
        rows.iter()
            .map(|r| Ok(OutgoingPdu { stream_pos: u(get::<i64>(r, 0)?), event_id: get(r, 1)?, json: get(r, 2)? }))
            .collect()
    }

    async fn federation_sender_state(&self, limit: usize) -> StoreResult<FederationSenderState> {
        let client = self.client().await?;
        let scanned_pos = query_opt(&client, "SELECT scanned_pos FROM federation_discovery WHERE id = 1", &[])
            .await?
            .map(|r| get::<i64>(&r, 0).map(u))
            .transpose()?;
        let rows = query(
            &client,
            "SELECT server_name, sent_pos FROM federation_destinations ORDER BY server_name LIMIT $1",
            &[&limit_param(limit)],
        )
        .await?;
        let destinations = rows.iter().map(|r| Ok((get::<String>(r, 0)?, u(get::<i64>(r, 1)?)))).collect::<StoreResult<_>>()?;
        Ok(FederationSenderState { scanned_pos, destinations })
    }

    async fn add_federation_destinations(&self, destinations: &[(String, u64)], scanned_pos: u64) -> StoreResult<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        for (server, sent_pos) in destinations {
            execute(
                &tx,
                "INSERT INTO federation_destinations (server_name, sent_pos) VALUES ($1, $2)
                 ON CONFLICT (server_name) DO NOTHING",
                &[server, &i(*sent_pos)],
            )
            .await
            .map_err(backend)?;
        }
        execute(
            &tx,
            "INSERT INTO federation_discovery (id, scanned_pos) VALUES (1, $1)
             ON CONFLICT (id) DO UPDATE SET scanned_pos = excluded.scanned_pos",
            &[&i(scanned_pos)],
        )
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(())
    }

    async fn queue_federation_edus(
        &self,
        edus: &[NewOutboundEdu],
        now_ms: u64,
        limits: EduOutboxLimits,
    ) -> StoreResult<Vec<(String, u64)>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        let mut touched = std::collections::BTreeSet::new();
        for edu in edus {
            execute(
                &tx,
                "INSERT INTO federation_edu_outbox (destination, json, queued_ms) VALUES ($1, $2, $3)",
                &[&edu.destination, &edu.json, &i(now_ms)],
            )
            .await
            .map_err(backend)?;
            touched.insert(edu.destination.as_str());
        }
        let mut dropped = Vec::new();
        for destination in touched {
            let count: i64 = get(
                &query(&tx, "SELECT COUNT(*) FROM federation_edu_outbox WHERE destination = $1", &[&destination]).await?[0],
                0,
            )?;
            let excess = u(count).saturating_sub(limits.max_per_destination as u64);
            if excess > 0 {
                execute(
                    &tx,
                    "DELETE FROM federation_edu_outbox WHERE id IN
                       (SELECT id FROM federation_edu_outbox WHERE destination = $1 ORDER BY id LIMIT $2)",
                    &[&destination, &i(excess)],
                )
                .await
                .map_err(backend)?;
                dropped.push((destination.to_owned(), excess));
            }
        }
        tx.commit().await.map_err(backend)?;
        Ok(dropped)
    }

    async fn federation_edus_for(
        &self,
        destination: &str,
        now_ms: u64,
        limits: EduOutboxLimits,
        limit: usize,
    ) -> StoreResult<QueuedEdus> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        let expired = execute(
            &tx,
            "DELETE FROM federation_edu_outbox WHERE destination = $1 AND queued_ms <= $2",
            &[&destination, &i(now_ms.saturating_sub(limits.max_age_ms))],
        )
        .await
        .map_err(backend)?;
        let rows = query(
            &tx,
            "SELECT id, json FROM federation_edu_outbox WHERE destination = $1 ORDER BY id LIMIT $2",
            &[&destination, &limit_param(limit)],
        )
        .await?;
        let edus =
            rows.iter().map(|r| Ok(OutboundEdu { id: u(get::<i64>(r, 0)?), json: get(r, 1)? })).collect::<StoreResult<_>>()?;
        tx.commit().await.map_err(backend)?;
        Ok(QueuedEdus { edus, expired })
    }

    async fn federation_edu_destinations(&self, limit: usize) -> StoreResult<Vec<String>> {
        let client = self.client().await?;
        let rows = query(
            &client,
            "SELECT DISTINCT destination FROM federation_edu_outbox ORDER BY destination LIMIT $1",
            &[&limit_param(limit)],
        )
        .await?;
        rows.iter().map(|r| get::<String>(r, 0)).collect()
    }

    async fn federation_transaction_acknowledged(&self, destination: &str, sent_pos: u64, edu_ids: &[u64]) -> StoreResult<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        execute(
            &tx,
            "INSERT INTO federation_destinations (server_name, sent_pos) VALUES ($1, $2)
             ON CONFLICT (server_name) DO UPDATE
             SET sent_pos = GREATEST(federation_destinations.sent_pos, excluded.sent_pos)",
            &[&destination, &i(sent_pos)],
        )
        .await
        .map_err(backend)?;
        let ids: Vec<i64> = edu_ids.iter().map(|id| i(*id)).collect();
        execute(&tx, "DELETE FROM federation_edu_outbox WHERE destination = $1 AND id = ANY($2)", &[&destination, &ids])
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(())
    }
}
