//! `RoomStore` on PostgreSQL.
//!
//! # Appends from many nodes
//!
//! Each write is one READ COMMITTED transaction in two phases:
//!
//! 1. Lock the room row (the `UPDATE rooms SET max_depth = ...` takes it)
//!    and read its forward extremities. Appends to one room therefore run
//!    one after the other on every node; the second one sees the first
//!    one's extremities (READ COMMITTED reads with a fresh snapshot after
//!    the lock wait) and fails with `StaleExtremities`.
//! 2. Allocate the stream position and write the event, its state row and
//!    the new extremities, then COMMIT.
//!
//! # Stream positions commit in order
//!
//! Readers treat `current_stream_pos()` as "everything at or below this is
//! visible", so position N+1 must never become visible before N. A sequence
//! cannot promise that (two transactions commit in any order), so the
//! position comes from the one-row table `stream_position`, incremented
//! only at the end of the transaction and only while holding the advisory
//! lock [`STREAM_LOCK`], which (like the row lock the UPDATE takes) is
//! released by COMMIT, after the commit is visible. The next writer can
//! allocate only after that, so positions are dense (a rollback gives its
//! number back) and commit in order across all nodes.
//!
//! The price: from allocation to commit, writers of *all* rooms go one at a
//! time. To keep that window short, every statement that needs no position
//! runs before it, statements are prepared before it, and the statements
//! after the lock are pipelined (sent together, one round trip), leaving
//! the commit (its WAL flush) as the main cost inside the window.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use async_trait::async_trait;
use chancery_proto::ruma::events::room::member::MembershipState;
use chancery_store::*;
use deadpool_postgres::{GenericClient, Transaction};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Row, Statement};

use chancery_store_sql::batches::check_room_events;
use chancery_store_sql::rows::{self, EVENT_COLUMNS, REDACTION_JOIN};
use chancery_store_sql::{i, u};

use crate::query::{PgRow, get, query, query_opt};
use crate::{PostgresStore, backend};

/// Advisory-lock key held from allocating a stream position until commit
/// ("chanstrm" in ASCII).
const STREAM_LOCK: i64 = 0x6368_616e_7374_726d;

pub(crate) fn event_from_row(row: &Row) -> StoreResult<StoredEvent> {
    rows::stored_event(&PgRow(row))
}

fn membership_from_row(row: &Row) -> StoreResult<Membership> {
    rows::membership(&PgRow(row))
}

/// A unique violation becomes the conflict its index stands for.
pub(crate) fn insert_error(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) if *db.code() == SqlState::UNIQUE_VIOLATION => match db.constraint() {
            Some("events_txn_key") => StoreError::TransactionIdUsed,
            Some("events_pkey") => StoreError::EventIdTaken,
            Some("rooms_pkey") => StoreError::RoomIdTaken,
            _ => backend(e),
        },
        _ => backend(e),
    }
}

/// The statements of the write path, prepared (once per connection) before
/// any lock is taken.
pub(crate) struct Writes {
    pub(crate) lock_room: Statement,
    pub(crate) take_extremities: Statement,
    pub(crate) add_extremity: Statement,
    add_redaction: Statement,
    notify: Statement,
    index_texts: Statement,
    unindex: Statement,
    stream_lock: Statement,
    insert_event: Statement,
    close_state: Statement,
    open_state: Statement,
    cancel_delayed_state: Statement,
    bump_room: Statement,
    relations: crate::relations::RelationWrites,
}

impl Writes {
    pub(crate) async fn prepare(c: &deadpool_postgres::Client) -> StoreResult<Self> {
        let p = async |sql: &str| c.prepare_cached(sql).await.map_err(backend);
        Ok(Self {
            lock_room: p("UPDATE rooms SET max_depth = GREATEST(max_depth, $2) WHERE room_id = $1 RETURNING room_id").await?,
            take_extremities: p("DELETE FROM forward_extremities WHERE room_id = $1 RETURNING event_id").await?,
            add_extremity: p("INSERT INTO forward_extremities (room_id, event_id) VALUES ($1, $2)").await?,
            add_redaction: p("INSERT INTO redactions (target_event_id, redaction_event_id) VALUES ($1, $2)
                              ON CONFLICT (target_event_id) DO NOTHING")
            .await?,
            notify: p("SELECT pg_notify('chancery_changes', '')").await?,
            index_texts: p("INSERT INTO event_search (event_id, room_id, key, vector)
                            SELECT x.e, x.r, x.k, to_tsvector('simple', x.t)
                            FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[]) AS x(e, r, k, t)")
            .await?,
            unindex: p("DELETE FROM event_search WHERE event_id = ANY($1)").await?,
            stream_lock: p("SELECT pg_advisory_xact_lock($1)").await?,
            // The event and the notifications it makes, at the position
            // it allocates, and its place in the pushers' queues: one
            // statement.
            insert_event: p("WITH p AS (UPDATE stream_position SET pos = pos + 1 RETURNING pos),
                             e AS (INSERT INTO events (event_id, room_id, stream_pos, event_type, state_key, sender,
                                                       origin_server_ts, depth, json, membership, txn_user, txn_device, txn_id)
                                   SELECT $1::text, $2::text, p.pos, $3::text, $4::text, $5::text, $6::bigint, $7::bigint,
                                          $8::text, $9::text, $10::text, $11::text, $12::text
                                   FROM p
                                   RETURNING stream_pos),
                             n AS (INSERT INTO notifications (user_id, room_id, stream_pos, actions, highlight)
                                   SELECT t.u, $2::text, e.stream_pos, t.a, t.h
                                   FROM e, UNNEST($13::text[], $14::text[], $15::bool[]) AS t(u, a, h)),
                             -- The notified users' pushers have work up to here
                             -- (`PusherStore`): taken under the stream lock, so
                             -- in position order.
                             q AS (UPDATE pushers SET queued_pos = e.stream_pos FROM e
                                   WHERE pushers.user_id = ANY($13::text[]) AND pushers.queued_pos < e.stream_pos)
                             SELECT stream_pos FROM e")
            .await?,
            // Both run after `insert_event` in the same transaction, so
            // `stream_position` holds this event's position.
            close_state: p("UPDATE room_state SET to_pos = (SELECT pos FROM stream_position)
                            WHERE room_id = $1 AND event_type = $2 AND state_key = $3 AND to_pos IS NULL")
            .await?,
            open_state: p("INSERT INTO room_state (room_id, event_type, state_key, event_id, membership, from_pos)
                           SELECT $1::text, $2::text, $3::text, $4::text, $5::text, pos FROM stream_position")
            .await?,
            // Other users' scheduled delayed events at the key the event
            // sets (`RoomStore::append_event`).
            cancel_delayed_state: p("DELETE FROM delayed_events
                                     WHERE room_id = $1 AND event_type = $2 AND state_key = $3 AND user_id <> $4
                                       AND NOT claimed")
            .await?,
            // After `insert_event`, like `open_state`.
            bump_room: p("UPDATE rooms SET last_pos = s.pos, bump_pos = CASE WHEN $3 THEN s.pos ELSE bump_pos END,
                                 room_type = COALESCE($2, room_type), encrypted = encrypted OR $4
                          FROM stream_position s WHERE room_id = $1")
            .await?,
            relations: crate::relations::RelationWrites::prepare(c).await?,
        })
    }
}

/// Phase 2 of a write: the room is locked and its extremities checked (and
/// deleted). Writes `events` in order and makes the last one the room's
/// forward extremity; returns the position of the last one.
pub(crate) async fn persist(tx: &Transaction<'_>, w: &Writes, events: &[NewEvent]) -> StoreResult<u64> {
    let chain: Vec<&NewEvent> = events.iter().collect();
    Ok(persist_chains(tx, w, &[&chain]).await?.pop().and_then(|p| p.last().copied()).unwrap_or(0))
}

/// One statement (or a few, joined) of a pipeline; see [`pipeline`].
pub(crate) type Step<'a, T> = Pin<Box<dyn Future<Output = StoreResult<T>> + Send + 'a>>;

/// Runs `steps` as one pipeline: each is polled first in order, and
/// tokio-postgres sends a statement at its first poll, so the server gets
/// them in this order in one round trip and runs them in it. A step must
/// therefore send every statement it has at its first poll (statements
/// prepared beforehand, no await before). The first error in order is the
/// answer: the statements after it fail because the transaction is
/// aborted.
pub(crate) async fn pipeline<T>(mut steps: Vec<Step<'_, T>>) -> StoreResult<Vec<T>> {
    let mut done: Vec<Option<StoreResult<T>>> = steps.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (step, out) in steps.iter_mut().zip(done.iter_mut()) {
            if out.is_none() {
                match step.as_mut().poll(cx) {
                    Poll::Ready(result) => *out = Some(result),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending { Poll::Pending } else { Poll::Ready(()) }
    })
    .await;
    done.into_iter().map(|r| r.unwrap_or_else(|| Err(StoreError::Backend("a statement had no answer".into())))).collect()
}

/// Persists `chains`, each a chain of events in one room (each on the one
/// before; the rooms' extremities already taken, or about to be by
/// statements sent before this), and returns each event's position. All
/// the statements go in one pipeline (see [`pipeline`]): the first poll
/// sends them all.
pub(crate) async fn persist_chains(tx: &Transaction<'_>, w: &Writes, chains: &[&[&NewEvent]]) -> StoreResult<Vec<Vec<u64>>> {
    // Statements that need no position go first, before the stream lock,
    // so they add nothing to its window. The NOTIFY is sent at commit.
    // The search index, one statement for all the events.
    let mut texts: [Vec<&str>; 4] = Default::default();
    let mut redacted: Vec<&str> = Vec::new();
    for event in chains.iter().flat_map(|c| c.iter()) {
        for (key, text) in &event.search_text {
            for (column, value) in texts.iter_mut().zip([&event.event_id, &event.room_id, key, text]) {
                column.push(value);
            }
        }
        // A redacted event leaves the search index.
        redacted.extend(event.redacts.as_deref());
    }
    let mut before: Vec<Step<'_, ()>> = vec![Box::pin(async { tx.execute(&w.notify, &[]).await.map(drop).map_err(backend) })];
    if !texts[0].is_empty() {
        let [ids, rooms, keys, texts] = texts;
        before.push(Box::pin(async move {
            tx.execute(&w.index_texts, &[&ids, &rooms, &keys, &texts]).await.map(drop).map_err(backend)
        }));
    }
    if !redacted.is_empty() {
        before.push(Box::pin(async move { tx.execute(&w.unindex, &[&redacted]).await.map(drop).map_err(backend) }));
    }
    let mut steps: Vec<Step<'_, u64>> = Vec::new();
    for chain in chains {
        for (n, event) in chain.iter().enumerate() {
            steps.push(Box::pin(persist_one(tx, w, event, steps.is_empty(), n + 1 == chain.len())));
        }
    }
    let (before, positions) = tokio::join!(biased; pipeline(before), pipeline(steps));
    before?;
    let mut positions = positions?.into_iter();
    Ok(chains.iter().map(|c| positions.by_ref().take(c.len()).collect()).collect())
}

/// The statements of one event: the stream lock first if `first`, and the
/// room's new extremity if `last` of its chain. Each step below sends its
/// statement (or nothing) at its first poll.
async fn persist_one(tx: &Transaction<'_>, w: &Writes, event: &NewEvent, first: bool, last: bool) -> StoreResult<u64> {
    let columns = InsertColumns::of(event);
    // `biased` polls, hence sends, them in this order, and the server runs
    // them in order. Only the first error counts: the statements after it
    // fail because the transaction is aborted.
    let results = tokio::join!(
        biased;
        add_extremity(tx, w, event, last),
        add_redaction(tx, w, event),
        // A redaction breaks its target's relation (see relations.rs).
        on_redaction_target(tx, &w.relations.drop_thread, event),
        on_redaction_target(tx, &w.relations.rewind_thread, event),
        on_redaction_target(tx, &w.relations.drop_relation, event),
        take_stream_lock(tx, w, first),
        insert_event(tx, w, event, &columns),
        close_state(tx, w, event),
        open_state(tx, w, event, &columns),
        cancel_delayed_state(tx, w, event),
        bump_room(tx, w, event, &columns),
        // After `insert_event`: `stream_position` holds this event's position.
        add_relation(tx, w, event),
        touch_thread(tx, w, event),
    );
    let (
        extremity,
        redaction,
        drop_thread,
        rewind_thread,
        drop_relation,
        lock,
        inserted,
        closed,
        opened,
        cancelled,
        bumped,
        related,
        threaded,
    ) = results;
    extremity.map_err(backend)?;
    redaction.map_err(backend)?;
    drop_thread.map_err(backend)?;
    rewind_thread.map_err(backend)?;
    drop_relation.map_err(backend)?;
    lock.map_err(backend)?;
    let position = u(get(&inserted.map_err(insert_error)?, 0)?);
    closed.map_err(backend)?;
    opened.map_err(backend)?;
    cancelled.map_err(backend)?;
    bumped.map_err(backend)?;
    related.map_err(backend)?;
    threaded.map_err(backend)?;
    Ok(position)
}

/// What `insert_event` binds beyond the event's own fields; built before
/// the pipeline, as the parameters must outlive it.
struct InsertColumns<'a> {
    txn_user: Option<&'a String>,
    txn_device: Option<&'a String>,
    txn_id: Option<&'a String>,
    depth: i64,
    origin_server_ts: i64,
    membership: Option<&'a str>,
    notified_users: Vec<&'a str>,
    notification_actions: Vec<&'a str>,
    notification_highlights: Vec<bool>,
    /// The room's type, for a create event.
    room_type: Option<String>,
    bumps: bool,
    encrypts: bool,
}

impl<'a> InsertColumns<'a> {
    fn of(event: &'a NewEvent) -> Self {
        let txn = event.txn.as_ref();
        let notifications = &event.notifications;
        Self {
            txn_user: txn.map(|t| &t.user_id),
            txn_device: txn.map(|t| &t.device_id),
            txn_id: txn.map(|t| &t.txn_id),
            depth: i(event.depth),
            origin_server_ts: i(event.origin_server_ts),
            membership: event.membership.as_ref().map(MembershipState::as_str),
            notified_users: notifications.iter().map(|n| n.user_id.as_str()).collect(),
            notification_actions: notifications.iter().map(|n| n.actions_json.as_str()).collect(),
            notification_highlights: notifications.iter().map(|n| n.highlight).collect(),
            room_type: (event.event_type == "m.room.create").then(|| room_type_of_create(&event.json)).flatten(),
            bumps: bumps_room(&event.event_type),
            encrypts: enables_encryption(&event.event_type, event.state_key.as_deref()),
        }
    }
}

type StepResult = Result<(), tokio_postgres::Error>;

/// The last event of its room's chain becomes the room's only extremity
/// (the others were taken before).
async fn add_extremity(tx: &Transaction<'_>, w: &Writes, event: &NewEvent, last: bool) -> StepResult {
    if last { tx.execute(&w.add_extremity, &[&event.room_id, &event.event_id]).await.map(drop) } else { Ok(()) }
}

async fn add_redaction(tx: &Transaction<'_>, w: &Writes, event: &NewEvent) -> StepResult {
    match &event.redacts {
        Some(target) => tx.execute(&w.add_redaction, &[target, &event.event_id]).await.map(drop),
        None => Ok(()),
    }
}

/// `statement` on the redacted event, if `event` redacts one.
async fn on_redaction_target(tx: &Transaction<'_>, statement: &Statement, event: &NewEvent) -> StepResult {
    match &event.redacts {
        Some(target) => tx.execute(statement, &[target]).await.map(drop),
        None => Ok(()),
    }
}

/// The first event of a batch takes the stream lock, held to the commit.
async fn take_stream_lock(tx: &Transaction<'_>, w: &Writes, first: bool) -> StepResult {
    if first { tx.execute(&w.stream_lock, &[&STREAM_LOCK]).await.map(drop) } else { Ok(()) }
}

/// The event and its notifications at the position it allocates; the row
/// holds that position.
async fn insert_event(
    tx: &Transaction<'_>,
    w: &Writes,
    event: &NewEvent,
    c: &InsertColumns<'_>,
) -> Result<Row, tokio_postgres::Error> {
    tx.query_one(
        &w.insert_event,
        &[
            &event.event_id,
            &event.room_id,
            &event.event_type,
            &event.state_key,
            &event.sender,
            &c.origin_server_ts,
            &c.depth,
            &event.json,
            &c.membership,
            &c.txn_user,
            &c.txn_device,
            &c.txn_id,
            &c.notified_users,
            &c.notification_actions,
            &c.notification_highlights,
        ],
    )
    .await
}

/// The state row this event replaces ends at the event's position.
async fn close_state(tx: &Transaction<'_>, w: &Writes, event: &NewEvent) -> StepResult {
    match &event.state_key {
        Some(key) => tx.execute(&w.close_state, &[&event.room_id, &event.event_type, key]).await.map(drop),
        None => Ok(()),
    }
}

/// Every event is its room's newest; one of a bump type also moves the
/// room up the room list (sliding sync); the create event records the
/// room's type.
async fn bump_room(tx: &Transaction<'_>, w: &Writes, event: &NewEvent, c: &InsertColumns<'_>) -> StepResult {
    tx.execute(&w.bump_room, &[&event.room_id, &c.room_type, &c.bumps, &c.encrypts]).await.map(drop)
}

/// The event's own state row starts at its position.
async fn open_state(tx: &Transaction<'_>, w: &Writes, event: &NewEvent, c: &InsertColumns<'_>) -> StepResult {
    match &event.state_key {
        Some(key) => {
            tx.execute(&w.open_state, &[&event.room_id, &event.event_type, key, &event.event_id, &c.membership]).await.map(drop)
        }
        None => Ok(()),
    }
}

/// A state event cancels the other users' scheduled (unclaimed) delayed
/// events at its key: they would overwrite state their sender never saw.
async fn cancel_delayed_state(tx: &Transaction<'_>, w: &Writes, event: &NewEvent) -> StepResult {
    match &event.state_key {
        Some(key) => {
            tx.execute(&w.cancel_delayed_state, &[&event.room_id, &event.event_type, key, &event.sender]).await.map(drop)
        }
        None => Ok(()),
    }
}

async fn add_relation(tx: &Transaction<'_>, w: &Writes, event: &NewEvent) -> StepResult {
    match &event.relates_to {
        Some(rel) => tx
            .execute(
                &w.relations.add_relation,
                &[&event.event_id, &event.room_id, &rel.parent, &rel.rel_type, &event.event_type, &event.sender, &rel.key],
            )
            .await
            .map(drop),
        None => Ok(()),
    }
}

/// A thread reply moves its thread to the top of the room's threads.
async fn touch_thread(tx: &Transaction<'_>, w: &Writes, event: &NewEvent) -> StepResult {
    match &event.relates_to {
        Some(rel) if rel.rel_type == "m.thread" => {
            tx.execute(&w.relations.touch_thread, &[&rel.parent, &event.room_id]).await.map(drop)
        }
        _ => Ok(()),
    }
}

const STATE_JOIN: &str = "FROM room_state s JOIN events e ON e.event_id = s.event_id";

#[async_trait]
impl RoomStore for PostgresStore {
    async fn create_room(&self, room: NewRoom, events: Vec<NewEvent>) -> StoreResult<u64> {
        check_room_events(&room.room_id, &events)?;
        let max_depth = events.iter().map(|e| i(e.depth)).max().unwrap_or(0);
        // It takes the stream lock like every append: a deadlock with
        // another node's transaction is run again.
        let (room, events) = (&room, &events);
        retry::conflicts(move || async move {
            let mut client = self.client().await?;
            let w = Writes::prepare(&client).await?;
            let insert_room = client
                .prepare_cached(
                    "INSERT INTO rooms (room_id, room_version, creator, created_ts, max_depth) VALUES ($1, $2, $3, $4, $5)",
                )
                .await
                .map_err(backend)?;
            let tx = client.transaction().await.map_err(backend)?;
            // Nobody else sees the room before COMMIT: no extremities to check.
            tx.execute(
                &insert_room,
                &[&room.room_id, &room.room_version.as_str(), &room.creator, &i(room.created_ts), &max_depth],
            )
            .await
            .map_err(insert_error)?;
            let pos = persist(&tx, &w, events).await?;
            tx.commit().await.map_err(backend)?;
            Ok(pos)
        })
        .await
    }

    async fn replace_stub_room(&self, room: NewRoom, events: Vec<NewEvent>) -> StoreResult<u64> {
        check_room_events(&room.room_id, &events)?;
        let max_depth = events.iter().map(|e| i(e.depth)).max().unwrap_or(0);
        let (room, events) = (&room, &events);
        retry::conflicts(move || async move {
            let mut client = self.client().await?;
            let w = Writes::prepare(&client).await?;
            let tx = client.transaction().await.map_err(backend)?;
            // The room's row is locked first: an append to the stub waits.
            let stub = tx
                .query_opt(
                    "SELECT 1 FROM rooms r WHERE r.room_id = $1
                     AND NOT EXISTS (SELECT 1 FROM room_state s WHERE s.room_id = r.room_id AND s.event_type = 'm.room.create')
                     FOR UPDATE",
                    &[&room.room_id],
                )
                .await
                .map_err(backend)?;
            if stub.is_none() {
                return Err(StoreError::UnknownRoom);
            }
            // A knock's stub holds searchable state (the room's name):
            // the joined room's copy of those events is indexed anew.
            for table in ["room_state", "forward_extremities", "event_search", "events"] {
                tx.execute(&format!("DELETE FROM {table} WHERE room_id = $1"), &[&room.room_id]).await.map_err(backend)?;
            }
            tx.execute(
                "UPDATE rooms SET room_version = $2, creator = $3, created_ts = $4, max_depth = $5 WHERE room_id = $1",
                &[&room.room_id, &room.room_version.as_str(), &room.creator, &i(room.created_ts), &max_depth],
            )
            .await
            .map_err(backend)?;
            let pos = persist(&tx, &w, events).await?;
            tx.commit().await.map_err(backend)?;
            Ok(pos)
        })
        .await
    }

    async fn append_event(&self, event: NewEvent, prev_extremities: &[String]) -> StoreResult<u64> {
        self.appender.append(event, prev_extremities).await
    }

    async fn room(&self, room_id: &str) -> StoreResult<Option<RoomInfo>> {
        let client = self.client().await?;
        // One statement, one snapshot.
        let row = query_opt(
            &client,
            "SELECT r.room_id, r.room_version, r.creator, r.created_ts, r.max_depth,
                    ARRAY(SELECT f.event_id FROM forward_extremities f WHERE f.room_id = r.room_id ORDER BY f.event_id)
             FROM rooms r WHERE r.room_id = $1",
            &[&room_id],
        )
        .await?;
        row.map(|r| {
            let mut forward_extremities: Vec<String> = get(&r, 5)?;
            forward_extremities.sort();
            Ok(RoomInfo {
                room_id: get(&r, 0)?,
                room_version: stored_room_version(&get::<String>(&r, 1)?)?,
                creator: get(&r, 2)?,
                created_ts: u(get(&r, 3)?),
                forward_extremities,
                max_depth: u(get(&r, 4)?),
            })
        })
        .transpose()
    }

    async fn event(&self, event_id: &str) -> StoreResult<Option<StoredEvent>> {
        let client = self.client().await?;
        let sql = format!("SELECT {EVENT_COLUMNS} FROM events e {REDACTION_JOIN} WHERE e.event_id = $1");
        query_opt(&client, &sql, &[&event_id]).await?.map(|r| event_from_row(&r)).transpose()
    }

    async fn event_for_txn(&self, txn: &TxnKey) -> StoreResult<Option<String>> {
        let client = self.client().await?;
        let row = query_opt(
            &client,
            "SELECT event_id FROM events WHERE txn_user = $1 AND txn_device = $2 AND txn_id = $3",
            &[&txn.user_id, &txn.device_id, &txn.txn_id],
        )
        .await?;
        row.map(|r| get(&r, 0)).transpose()
    }

    async fn state_at(&self, room_id: &str, at: Option<u64>) -> StoreResult<Vec<StoredEvent>> {
        let (_heavy, client) = self.heavy_client().await?;
        let rows = match at {
            None => {
                let sql = format!(
                    "SELECT {EVENT_COLUMNS} {STATE_JOIN} {REDACTION_JOIN}
                     WHERE s.room_id = $1 AND s.to_pos IS NULL
                     ORDER BY s.event_type, s.state_key"
                );
                query(&client, &sql, &[&room_id]).await?
            }
            Some(at) => {
                // In force at `at`: current rows that started by then plus
                // replaced rows that ended after it; each half has its own
                // index.
                let sql = format!(
                    "SELECT {EVENT_COLUMNS} FROM (
                         SELECT event_id, event_type, state_key FROM room_state
                         WHERE room_id = $1 AND to_pos IS NULL AND from_pos <= $2
                         UNION ALL
                         SELECT event_id, event_type, state_key FROM room_state
                         WHERE room_id = $1 AND to_pos > $2 AND from_pos <= $2
                     ) s JOIN events e ON e.event_id = s.event_id {REDACTION_JOIN}
                     ORDER BY s.event_type, s.state_key"
                );
                query(&client, &sql, &[&room_id, &i(at)]).await?
            }
        };
        rows.iter().map(event_from_row).collect()
    }

    async fn state_at_with_members(&self, room_id: &str, at: Option<u64>, members: &[String]) -> StoreResult<Vec<StoredEvent>> {
        let client = self.client().await?;
        let at = at.map_or(i64::MAX, i);
        // As `state_at`, in three parts: the non-member state, the wanted
        // members (index lookups), and rows replaced after `at`.
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM (
                 SELECT event_id, event_type, state_key FROM room_state
                 WHERE room_id = $1 AND to_pos IS NULL AND from_pos <= $2 AND event_type <> 'm.room.member'
                 UNION ALL
                 SELECT event_id, event_type, state_key FROM room_state
                 WHERE room_id = $1 AND to_pos IS NULL AND from_pos <= $2 AND event_type = 'm.room.member'
                   AND state_key = ANY($3)
                 UNION ALL
                 SELECT event_id, event_type, state_key FROM room_state
                 WHERE room_id = $1 AND to_pos > $2 AND from_pos <= $2
                   AND (event_type <> 'm.room.member' OR state_key = ANY($3))
             ) s JOIN events e ON e.event_id = s.event_id {REDACTION_JOIN}
             ORDER BY s.event_type, s.state_key"
        );
        let rows = query(&client, &sql, &[&room_id, &at, &members]).await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn current_state_events(&self, room_id: &str, keys: &[(String, String)]) -> StoreResult<Vec<StoredEvent>> {
        if keys.len() > MAX_STATE_KEYS_PER_READ {
            return Err(StoreError::TooManyStateKeys);
        }
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let (types, state_keys): (Vec<&str>, Vec<&str>) = keys.iter().map(|(t, k)| (t.as_str(), k.as_str())).unzip();
        let sql = format!(
            "SELECT {EVENT_COLUMNS} {STATE_JOIN} {REDACTION_JOIN}
             JOIN UNNEST($2::text[], $3::text[]) AS k(t, sk) ON s.event_type = k.t AND s.state_key = k.sk
             WHERE s.room_id = $1 AND s.to_pos IS NULL"
        );
        query(&client, &sql, &[&room_id, &types, &state_keys]).await?.iter().map(event_from_row).collect()
    }

    async fn current_state_of_type(&self, room_id: &str, event_type: &str, limit: usize) -> StoreResult<Vec<StoredEvent>> {
        let client = self.client().await?;
        let limit = i(u64::try_from(limit).unwrap_or(u64::MAX));
        let sql = format!(
            "SELECT {EVENT_COLUMNS} {STATE_JOIN} {REDACTION_JOIN}
             WHERE s.room_id = $1 AND s.event_type = $2 AND s.to_pos IS NULL
             ORDER BY s.state_key LIMIT $3"
        );
        query(&client, &sql, &[&room_id, &event_type, &limit]).await?.iter().map(event_from_row).collect()
    }

    async fn state_event(
        &self,
        room_id: &str,
        event_type: &str,
        state_key: &str,
        at: Option<u64>,
    ) -> StoreResult<Option<StoredEvent>> {
        let client = self.client().await?;
        let row = match at {
            None => {
                let sql = format!(
                    "SELECT {EVENT_COLUMNS} {STATE_JOIN} {REDACTION_JOIN}
                     WHERE s.room_id = $1 AND s.event_type = $2 AND s.state_key = $3 AND s.to_pos IS NULL"
                );
                query_opt(&client, &sql, &[&room_id, &event_type, &state_key]).await?
            }
            Some(at) => {
                let sql = format!(
                    "SELECT {EVENT_COLUMNS} {STATE_JOIN} {REDACTION_JOIN}
                     WHERE s.room_id = $1 AND s.event_type = $2 AND s.state_key = $3 AND s.from_pos <= $4
                       AND (s.to_pos IS NULL OR s.to_pos > $4)
                     ORDER BY s.from_pos DESC LIMIT 1"
                );
                query_opt(&client, &sql, &[&room_id, &event_type, &state_key, &i(at)]).await?
            }
        };
        row.map(|r| event_from_row(&r)).transpose()
    }

    async fn state_changes(&self, room_id: &str, after: u64, up_to: u64) -> StoreResult<Vec<StoredEvent>> {
        let (_heavy, client) = self.heavy_client().await?;
        let sql = format!(
            "SELECT {EVENT_COLUMNS} {STATE_JOIN} {REDACTION_JOIN}
             WHERE s.room_id = $1 AND s.from_pos > $2 AND s.from_pos <= $3 AND (s.to_pos IS NULL OR s.to_pos > $3)
             ORDER BY s.from_pos"
        );
        query(&client, &sql, &[&room_id, &i(after), &i(up_to)]).await?.iter().map(event_from_row).collect()
    }

    async fn room_events(
        &self,
        room_id: &str,
        after: u64,
        up_to: u64,
        limit: usize,
        newest_first: bool,
    ) -> StoreResult<Vec<StoredEvent>> {
        let client = self.client().await?;
        let order = if newest_first { "DESC" } else { "ASC" };
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events e {REDACTION_JOIN}
             WHERE e.room_id = $1 AND e.stream_pos > $2 AND e.stream_pos <= $3
             ORDER BY e.stream_pos {order} LIMIT $4"
        );
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        query(&client, &sql, &[&room_id, &i(after), &i(up_to), &limit]).await?.iter().map(event_from_row).collect()
    }

    async fn memberships_of_user(&self, user_id: &str) -> StoreResult<Vec<Membership>> {
        let client = self.client().await?;
        let rows = query(
            &client,
            "SELECT room_id, state_key, membership, event_id, from_pos FROM room_state
             WHERE state_key = $1 AND event_type = 'm.room.member' AND to_pos IS NULL
             ORDER BY room_id",
            &[&user_id],
        )
        .await?;
        rows.iter().map(membership_from_row).collect()
    }

    async fn members_of_room(&self, room_id: &str) -> StoreResult<Vec<Membership>> {
        let (_heavy, client) = self.heavy_client().await?;
        let rows = query(
            &client,
            "SELECT room_id, state_key, membership, event_id, from_pos FROM room_state
             WHERE room_id = $1 AND event_type = 'm.room.member' AND to_pos IS NULL
             ORDER BY state_key",
            &[&room_id],
        )
        .await?;
        rows.iter().map(membership_from_row).collect()
    }

    async fn member_summary(&self, room_id: &str, user_id: &str, heroes: usize) -> StoreResult<MemberSummary> {
        let client = self.client().await?;
        let counts = query_opt(
            &client,
            "SELECT COUNT(*) FILTER (WHERE membership = 'join'), COUNT(*) FILTER (WHERE membership = 'invite')
             FROM room_state WHERE room_id = $1 AND event_type = 'm.room.member' AND to_pos IS NULL",
            &[&room_id],
        )
        .await?;
        let (joined, invited) = match counts {
            Some(row) => (u(get::<i64>(&row, 0)?), u(get::<i64>(&row, 1)?)),
            None => (0, 0),
        };
        let limit = i64::try_from(heroes).unwrap_or(i64::MAX);
        let sql = "SELECT state_key FROM room_state
                   WHERE room_id = $1 AND event_type = 'm.room.member' AND to_pos IS NULL AND state_key <> $2
                     AND (membership IN ('join', 'invite')) = $3
                   ORDER BY from_pos LIMIT $4";
        let mut rows = query(&client, sql, &[&room_id, &user_id, &true, &limit]).await?;
        if rows.is_empty() {
            rows = query(&client, sql, &[&room_id, &user_id, &false, &limit]).await?;
        }
        let heroes = rows.iter().map(|r| get::<String>(r, 0)).collect::<StoreResult<_>>()?;
        Ok(MemberSummary { joined, invited, heroes })
    }

    async fn visibility_spans(
        &self,
        user_id: &str,
        rooms: &[String],
        from: u64,
        up_to: u64,
        limit: usize,
    ) -> StoreResult<Vec<StateSpan>> {
        if rooms.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        // Both halves are ranges of the primary key (room, type, key,
        // start); only visibility rows need the event, for its content.
        let rows = query(
            &client,
            "SELECT s.room_id, s.from_pos, s.to_pos, NULL::text AS membership, e.json
             FROM room_state s JOIN events e ON e.event_id = s.event_id
             WHERE s.room_id = ANY($1) AND s.event_type = 'm.room.history_visibility' AND s.state_key = ''
               AND s.from_pos <= $3 AND (s.to_pos IS NULL OR s.to_pos > $2)
             UNION ALL
             SELECT s.room_id, s.from_pos, s.to_pos, COALESCE(s.membership, ''), NULL
             FROM room_state s
             WHERE s.room_id = ANY($1) AND s.event_type = 'm.room.member' AND s.state_key = $4
               AND (s.to_pos IS NULL OR s.to_pos > $2)
             ORDER BY 1, 2
             LIMIT $5",
            &[&rooms, &i(from), &i(up_to), &user_id, &i(limit as u64).saturating_add(1)],
        )
        .await?;
        if rows.len() > limit {
            return Err(StoreError::TooManyVisibilitySpans);
        }
        rows.iter().map(|r| rows::visibility_span(&PgRow(r))).collect()
    }

    async fn current_stream_pos(&self) -> StoreResult<u64> {
        let client = self.client().await?;
        // Positions commit in order (see the module comment), so the last
        // allocated one is the last committed one, and all below it are
        // visible.
        let row = query_opt(&client, "SELECT pos FROM stream_position", &[]).await?;
        Ok(row.map(|r| get::<i64>(&r, 0)).transpose()?.map(u).unwrap_or(0))
    }
}
