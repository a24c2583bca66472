//! `KeyStore` on PostgreSQL: device, one-time, fallback and cross-signing
//! keys, signatures, the device-list and to-device streams, key backups and
//! dehydrated devices.
//!
//! The two streams are written like account data (`account_data.rs`): a
//! write's checks first, then the stream's advisory lock, its counter row
//! in `stream_counters` moved by the positions the write takes, the rows
//! written at them and COMMIT, which releases the lock once the commit is
//! visible. Positions therefore commit in order on every node and each
//! counter is its stream's watermark; `pg_notify` in the same transaction
//! wakes the other nodes' syncs at commit.
//!
//! What must hold while several nodes write at once, and the lock that
//! makes it hold:
//! - A device's keys: uploads lock the device's row (`FOR NO KEY UPDATE`),
//!   so uploads of one device go one at a time (the one-time key bound) and
//!   a deletion of the device waits for them, then deletes what they wrote.
//! - Cross-signing keys and signatures: a per-user advisory lock
//!   ([`KEYS_USER_LOCK`]), taken for every user a write touches in the
//!   order of the lock keys, so two writes never wait on each other in a
//!   circle.
//! - Key backups: a per-user advisory lock ([`BACKUP_USER_LOCK`]): version
//!   numbers, the current version, key counts and etags are read and
//!   written under it.
//! - Inboxes: a message is queued under the to-device stream lock, where
//!   the device's existence and its inbox's size are read again, so the
//!   inbox bound is exact; a device deletion takes the same lock before it
//!   deletes the inbox, so no message lands in the inbox of a device that
//!   is gone.
//! - One-time key claims delete the key they hand out, choosing it with
//!   `FOR UPDATE SKIP LOCKED`: two claims never get the same key and never
//!   wait on each other's key.
//!
//! Locks are taken in one order: account row, device rows, per-user key
//! locks, per-user backup lock, to-device stream, device-list stream. Row
//! locks of keys (a claim holding one key while it waits for a fallback
//! key a deletion holds) can still cross, so the writes that delete keys
//! and the claims run again on a deadlock (`retry::conflicts`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use async_trait::async_trait;
use chancery_store::*;
use chancery_store_sql::rows::{self, BACKUP_VERSION_COLUMNS, KEY_SIGNATURE_COLUMNS};
use chancery_store_sql::{i, u};
use deadpool_postgres::{GenericClient, Transaction};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use crate::query::{PgRow, execute, get, query, query_opt};
use crate::{PostgresStore, backend};

/// `limits::MAX_TO_DEVICE_TXNS_PER_DEVICE`, as the database counts.
const MAX_TXNS: i64 = chancery_proto::limits::MAX_TO_DEVICE_TXNS_PER_DEVICE as i64;
/// `limits::MAX_TO_DEVICE_FROM_ONE_SENDER`, as the database counts.
const MAX_FROM_ONE_SENDER: i64 = chancery_proto::limits::MAX_TO_DEVICE_FROM_ONE_SENDER as i64;

/// Advisory-lock key held from allocating device-list positions until
/// commit ("chandevl" in ASCII).
const DEVICE_LIST_STREAM_LOCK: i64 = 0x6368_616e_6465_766c;
/// Advisory-lock key held from allocating to-device positions (or deleting
/// a device's inbox) until commit ("chantodv" in ASCII).
const TO_DEVICE_STREAM_LOCK: i64 = 0x6368_616e_746f_6476;
/// First key of the two-key per-user locks ("keys", "bkup"); the second is
/// a hash of the user id. A hash collision only makes two users wait for
/// each other.
const KEYS_USER_LOCK: i32 = 0x6b65_7973;
const BACKUP_USER_LOCK: i32 = 0x626b_7570;

/// Takes the per-user locks of `class` for `users`, in the order of the
/// lock keys, whoever the users are: two transactions locking overlapping
/// sets never wait for each other in a circle. (A volatile function in the
/// select list runs after ORDER BY.)
async fn lock_users(tx: &impl GenericClient, class: i32, users: &[&str]) -> StoreResult<()> {
    query(
        tx,
        "SELECT pg_advisory_xact_lock($1, h)
         FROM (SELECT DISTINCT hashtext(x) AS h FROM UNNEST($2::text[]) AS x) AS hashes
         ORDER BY h",
        &[&class, &users],
    )
    .await?;
    Ok(())
}

/// Moves every user's row in `device_list_changes` to a new position of
/// its own, the phase under the stream lock: the lock, the positions and
/// the notification are pipelined (one round trip) so writers of the
/// stream wait for each other as briefly as possible.
pub(crate) async fn move_device_lists(tx: &Transaction<'_>, users: &[&str]) -> StoreResult<()> {
    // Distinct: one upsert statement may not touch a row twice.
    let users: Vec<&str> = users.iter().copied().collect::<BTreeSet<_>>().into_iter().collect();
    if users.is_empty() {
        return Ok(());
    }
    // Prepared before the lock, so no round trip for them inside the window.
    let lock = tx.prepare_cached("SELECT pg_advisory_xact_lock($1)").await.map_err(backend)?;
    let upsert = tx
        .prepare_cached(
            "WITH x AS (SELECT t.user_id, ROW_NUMBER() OVER (ORDER BY t.user_id) AS k FROM UNNEST($1::text[]) AS t(user_id)),
                  p AS (UPDATE stream_counters SET pos = pos + (SELECT COUNT(*) FROM x)
                        WHERE stream = 'device_lists' RETURNING pos)
             INSERT INTO device_list_changes (user_id, stream_pos)
             SELECT x.user_id, p.pos - (SELECT COUNT(*) FROM x) + x.k FROM x, p
             ON CONFLICT (user_id) DO UPDATE SET stream_pos = EXCLUDED.stream_pos",
        )
        .await
        .map_err(backend)?;
    let notify = tx.prepare_cached("SELECT pg_notify('chancery_changes', '')").await.map_err(backend)?;
    let (locked, moved, notified) = tokio::join!(
        biased;
        async { tx.execute(&lock, &[&DEVICE_LIST_STREAM_LOCK]).await },
        async { tx.execute(&upsert, &[&users]).await },
        async { tx.execute(&notify, &[]).await },
    );
    locked.map_err(backend)?;
    moved.map_err(backend)?;
    notified.map_err(backend)?;
    Ok(())
}

/// Deletes what belongs to these devices of the user beside their
/// `devices` rows (which the caller deletes): keys, one-time and fallback
/// keys, signatures of their keys and those they made, their inboxes, the transaction ids they
/// sent with, their pushers and the dehydrated-device row if one of them
/// is it. Then,
/// under the to-device lock, their inboxes once more: a message being
/// queued for one of them meanwhile either committed (and is deleted here)
/// or sees the device gone. The inboxes are deleted before too, so the
/// lock, which every sender waits for, is held only for what came since.
async fn delete_device_data(tx: &Transaction<'_>, user_id: &str, device_ids: &[String]) -> StoreResult<()> {
    execute(
        tx,
        "WITH dk AS (DELETE FROM device_keys WHERE user_id = $1 AND device_id = ANY($2)),
              otk AS (DELETE FROM one_time_keys WHERE user_id = $1 AND device_id = ANY($2)),
              fb AS (DELETE FROM fallback_keys WHERE user_id = $1 AND device_id = ANY($2)),
              sig AS (DELETE FROM key_signatures WHERE target_user_id = $1 AND target_key_id = ANY($2)),
              -- A device's signature of its user's master key goes with it:
              -- every login that verifies itself adds one.
              made AS (DELETE FROM key_signatures
                       WHERE signer_user_id = $1 AND signer_key_id = ANY(SELECT 'ed25519:' || d FROM UNNEST($2::text[]) AS d)),
              inbox AS (DELETE FROM to_device_messages WHERE user_id = $1 AND device_id = ANY($2)),
              txn AS (DELETE FROM to_device_txns WHERE user_id = $1 AND device_id = ANY($2)),
              dehydrated AS (DELETE FROM dehydrated_devices WHERE user_id = $1 AND device_id = ANY($2)),
              -- A pusher belongs to the device whose access token set it.
              pushers AS (DELETE FROM pushers WHERE user_id = $1 AND device_id = ANY($2))
         SELECT 1",
        &[&user_id, &device_ids],
    )
    .await
    .map_err(backend)?;
    let lock = tx.prepare_cached("SELECT pg_advisory_xact_lock($1)").await.map_err(backend)?;
    let inbox =
        tx.prepare_cached("DELETE FROM to_device_messages WHERE user_id = $1 AND device_id = ANY($2)").await.map_err(backend)?;
    let (locked, deleted) = tokio::join!(
        biased;
        async { tx.execute(&lock, &[&TO_DEVICE_STREAM_LOCK]).await },
        async { tx.execute(&inbox, &[&user_id, &device_ids]).await },
    );
    locked.map_err(backend)?;
    deleted.map_err(backend)?;
    Ok(())
}

/// The `KeyStore` part of an `AccountStore` device deletion, in its
/// transaction, after the `devices` rows of `device_ids` (those it
/// deleted) are gone: their keys, inboxes and transaction ids go too and
/// the user moves in the device-list stream.
pub(crate) async fn forget_devices(tx: &Transaction<'_>, user_id: &str, device_ids: &[String]) -> StoreResult<()> {
    if device_ids.is_empty() {
        return Ok(());
    }
    delete_device_data(tx, user_id, device_ids).await?;
    move_device_lists(tx, &[user_id]).await
}

/// Deactivation's part: [`forget_devices`] for the devices it deleted,
/// plus the cross-signing keys, every signature made by or on the user's
/// keys, the key backups and the dehydrated device; the user moves in the
/// device-list stream even without devices (their cross-signing keys went).
pub(crate) async fn forget_account(tx: &Transaction<'_>, user_id: &str, device_ids: &[String]) -> StoreResult<()> {
    // A signature or backup write running now finishes first, or sees
    // the deletion: nothing of theirs is left behind.
    lock_users(tx, KEYS_USER_LOCK, &[user_id]).await?;
    lock_users(tx, BACKUP_USER_LOCK, &[user_id]).await?;
    // Every key the user signed with is being deleted, so a signature by
    // them (signer) is worthless too, whoever's key it is on.
    execute(
        tx,
        "WITH cs AS (DELETE FROM cross_signing_keys WHERE user_id = $1),
              sig AS (DELETE FROM key_signatures WHERE target_user_id = $1 OR signer_user_id = $1),
              bk AS (DELETE FROM backup_keys WHERE user_id = $1),
              bv AS (DELETE FROM backup_versions WHERE user_id = $1),
              dd AS (DELETE FROM dehydrated_devices WHERE user_id = $1),
              pu AS (DELETE FROM pushers WHERE user_id = $1)
         SELECT 1",
        &[&user_id],
    )
    .await
    .map_err(backend)?;
    if !device_ids.is_empty() {
        delete_device_data(tx, user_id, device_ids).await?;
    }
    move_device_lists(tx, &[user_id]).await
}

/// Stores a device's upload (see [`KeyUpload`]); the device is locked by
/// the caller. True if the device keys are new (the user moves in the
/// device-list stream).
async fn store_upload(
    tx: &Transaction<'_>,
    user_id: &str,
    device_id: &str,
    upload: &KeyUpload,
    limits: KeyLimits,
) -> StoreResult<bool> {
    let mut new_device_keys = false;
    if let Some(keys) = &upload.device_keys {
        let held = query_opt(tx, "SELECT keys FROM device_keys WHERE user_id = $1 AND device_id = $2", &[&user_id, &device_id])
            .await?
            .map(|r| get::<String>(&r, 0))
            .transpose()?;
        match held {
            Some(held) if held == *keys => {}
            Some(_) => return Err(StoreError::DeviceKeysChanged),
            None => {
                execute(
                    tx,
                    "INSERT INTO device_keys (user_id, device_id, keys) VALUES ($1, $2, $3)",
                    &[&user_id, &device_id, keys],
                )
                .await
                .map_err(backend)?;
                new_device_keys = true;
            }
        }
    }
    store_one_time_keys(tx, user_id, device_id, &upload.one_time_keys, limits).await?;
    store_fallback_keys(tx, user_id, device_id, &upload.fallback_keys).await?;
    Ok(new_device_keys)
}

async fn store_one_time_keys(
    tx: &Transaction<'_>,
    user_id: &str,
    device_id: &str,
    keys: &[OneTimeKey],
    limits: KeyLimits,
) -> StoreResult<()> {
    if keys.is_empty() {
        return Ok(());
    }
    // One id twice in one upload counts like an id already held.
    let mut new: BTreeMap<&str, &OneTimeKey> = BTreeMap::new();
    for key in keys {
        if let Some(earlier) = new.insert(&key.key_id, key)
            && (earlier.key != key.key || earlier.algorithm != key.algorithm)
        {
            return Err(StoreError::OneTimeKeyChanged);
        }
    }
    let ids: Vec<&str> = new.keys().copied().collect();
    let held = query(
        tx,
        "SELECT key_id, key FROM one_time_keys WHERE user_id = $1 AND device_id = $2 AND key_id = ANY($3)",
        &[&user_id, &device_id, &ids],
    )
    .await?;
    for row in &held {
        let (key_id, key): (&str, &str) = (get(row, 0)?, get(row, 1)?);
        match new.remove(key_id) {
            Some(given) if given.key != key => return Err(StoreError::OneTimeKeyChanged),
            _ => {}
        }
    }
    if new.is_empty() {
        return Ok(());
    }
    let count =
        query_opt(tx, "SELECT COUNT(*) FROM one_time_keys WHERE user_id = $1 AND device_id = $2", &[&user_id, &device_id])
            .await?
            .ok_or_else(|| StoreError::Backend("aggregate returned no row".into()))?;
    let count = u(get(&count, 0)?);
    if count.saturating_add(new.len() as u64) > limits.max_one_time_keys as u64 {
        return Err(StoreError::TooManyOneTimeKeys);
    }
    let algorithms: Vec<&str> = new.values().map(|k| k.algorithm.as_str()).collect();
    let ids: Vec<&str> = new.keys().copied().collect();
    let values: Vec<&str> = new.values().map(|k| k.key.as_str()).collect();
    execute(
        tx,
        "INSERT INTO one_time_keys (user_id, device_id, algorithm, key_id, key)
         SELECT $1, $2, x.algorithm, x.key_id, x.key FROM UNNEST($3::text[], $4::text[], $5::text[]) AS x(algorithm, key_id, key)",
        &[&user_id, &device_id, &algorithms, &ids, &values],
    )
    .await
    .map_err(backend)?;
    Ok(())
}

async fn store_fallback_keys(tx: &Transaction<'_>, user_id: &str, device_id: &str, keys: &[OneTimeKey]) -> StoreResult<()> {
    if keys.is_empty() {
        return Ok(());
    }
    // One per algorithm, the last given winning (as if uploaded in turn).
    let by_algorithm: BTreeMap<&str, &OneTimeKey> = keys.iter().map(|k| (k.algorithm.as_str(), k)).collect();
    let algorithms: Vec<&str> = by_algorithm.keys().copied().collect();
    let ids: Vec<&str> = by_algorithm.values().map(|k| k.key_id.as_str()).collect();
    let values: Vec<&str> = by_algorithm.values().map(|k| k.key.as_str()).collect();
    // The same key again keeps its `used` mark; any other replaces it unused.
    execute(
        tx,
        "INSERT INTO fallback_keys (user_id, device_id, algorithm, key_id, key, used)
         SELECT $1, $2, x.algorithm, x.key_id, x.key, FALSE FROM UNNEST($3::text[], $4::text[], $5::text[]) AS x(algorithm, key_id, key)
         ON CONFLICT (user_id, device_id, algorithm) DO UPDATE
         SET key_id = EXCLUDED.key_id, key = EXCLUDED.key,
             used = fallback_keys.used AND fallback_keys.key_id = EXCLUDED.key_id AND fallback_keys.key = EXCLUDED.key",
        &[&user_id, &device_id, &algorithms, &ids, &values],
    )
    .await
    .map_err(backend)?;
    Ok(())
}

async fn one_time_key_counts(c: &impl GenericClient, user_id: &str, device_id: &str) -> StoreResult<BTreeMap<String, u64>> {
    let rows = query(
        c,
        "SELECT algorithm, COUNT(*) FROM one_time_keys WHERE user_id = $1 AND device_id = $2 GROUP BY algorithm",
        &[&user_id, &device_id],
    )
    .await?;
    rows.iter().map(|r| Ok((get(r, 0)?, u(get(r, 1)?)))).collect()
}

/// A backup version as the API names it: the decimal number we handed
/// out, nothing else ("01" is not version 1).
fn parse_version(version: &str) -> Option<i64> {
    version.parse::<i64>().ok().filter(|n| *n > 0 && n.to_string() == version)
}

/// A version that is not deleted.
async fn live_version(c: &impl GenericClient, user_id: &str, version: i64) -> StoreResult<Option<BackupVersion>> {
    let sql = format!("SELECT {BACKUP_VERSION_COLUMNS} FROM backup_versions WHERE user_id = $1 AND version = $2 AND NOT deleted");
    query_opt(c, &sql, &[&user_id, &version]).await?.map(|r| rows::backup_version(&PgRow(&r))).transpose()
}

/// (room, session) of a scope, NULL matching everything.
fn scope_params<'a>(scope: BackupScope<'a>) -> (Option<&'a str>, Option<&'a str>) {
    match scope {
        BackupScope::All => (None, None),
        BackupScope::Room(room_id) => (Some(room_id), None),
        BackupScope::Session { room_id, session_id } => (Some(room_id), Some(session_id)),
    }
}

/// The statement of one claim: the device's first unclaimed one-time key
/// of the algorithm, deleted, or (none left) its fallback key, marked used.
/// A key another claim holds is skipped, not waited for: that claim will
/// delete it.
const CLAIM: &str = "WITH otk AS (
        DELETE FROM one_time_keys
        WHERE (user_id, device_id, algorithm, key_id) IN (
            SELECT user_id, device_id, algorithm, key_id FROM one_time_keys
            WHERE user_id = $1 AND device_id = $2 AND algorithm = $3
            ORDER BY key_id LIMIT 1
            FOR UPDATE SKIP LOCKED)
        RETURNING key_id, key
    ),
    fallback AS (
        UPDATE fallback_keys SET used = TRUE
        WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 AND NOT EXISTS (SELECT 1 FROM otk)
        RETURNING key_id, key
    )
    SELECT key_id, key FROM otk UNION ALL SELECT key_id, key FROM fallback";

/// Messages queued in one statement under the to-device lock: the targets
/// whose device still exists, each device's inbox counted once (up to the
/// bound, no further; MATERIALIZED, or the count would run once per
/// message), those that fit numbered in request order, the counter moved
/// by their number and the messages written at the positions it gave.
/// Answers (queued, targets that exist).
const QUEUE: &str = "WITH t AS (
        SELECT x.user_id, x.device_id, x.msg, x.ord,
               ROW_NUMBER() OVER (PARTITION BY x.user_id, x.device_id ORDER BY x.ord) AS nth
        FROM UNNEST($1::text[], $2::text[], $3::int[]) WITH ORDINALITY AS x(user_id, device_id, msg, ord)
        WHERE EXISTS (SELECT 1 FROM devices d WHERE d.user_id = x.user_id AND d.device_id = x.device_id)
    ),
    held AS MATERIALIZED (
        SELECT d.user_id, d.device_id,
               (SELECT COUNT(*) FROM (SELECT 1 FROM to_device_messages m
                                      WHERE m.user_id = d.user_id AND m.device_id = d.device_id LIMIT $4) AS c) AS n,
               (SELECT COUNT(*) FROM (SELECT 1 FROM to_device_messages m
                                      WHERE m.user_id = d.user_id AND m.device_id = d.device_id AND m.sender = $5
                                      LIMIT $8) AS c) AS from_sender
        FROM (SELECT DISTINCT user_id, device_id FROM t) AS d
    ),
    kept AS (
        SELECT t.user_id, t.device_id, t.msg, ROW_NUMBER() OVER (ORDER BY t.ord) AS k
        FROM t JOIN held h ON h.user_id = t.user_id AND h.device_id = t.device_id
        WHERE h.n + t.nth <= $4 AND h.from_sender + t.nth <= $8
    ),
    p AS (
        UPDATE stream_counters SET pos = pos + (SELECT COUNT(*) FROM kept) WHERE stream = 'to_device' RETURNING pos
    ),
    ins AS (
        INSERT INTO to_device_messages (stream_pos, user_id, device_id, sender, event_type, content)
        SELECT p.pos - (SELECT COUNT(*) FROM kept) + kept.k, kept.user_id, kept.device_id, $5::text, $6::text,
               ($7::text[])[kept.msg]
        FROM kept, p
        RETURNING 1
    )
    SELECT (SELECT COUNT(*) FROM ins), (SELECT COUNT(*) FROM t)";

/// `enc`: the encrypted rooms user `$1` is joined to, with the position of
/// their join.
const ENC_ROOMS: &str = "enc AS (
        SELECT m.room_id, m.from_pos AS me_from FROM room_state m
        WHERE m.state_key = $1 AND m.event_type = 'm.room.member' AND m.to_pos IS NULL AND m.membership = 'join'
          AND EXISTS (SELECT 1 FROM room_state x WHERE x.room_id = m.room_id AND x.event_type = 'm.room.encryption'
                      AND x.state_key = '' AND x.to_pos IS NULL)
    )";

/// `shares(user)` as a join: `{alias}.one` is not NULL when `user` has a
/// current `join` in an encrypted room `$1` is joined to. A lateral
/// subquery with LIMIT runs per row, walking that user's rooms and looking
/// each up: as an EXISTS the planner may instead hash every member of every
/// encrypted room of the syncing user's, on every sync, where the users to
/// check are a few; and it takes the materialized `enc` for one row, so a
/// join with it would probe every user's rooms once per room of `enc`.
fn sharing(user: &str, alias: &str) -> String {
    format!(
        "LEFT JOIN LATERAL (
             SELECT 1 AS one FROM room_state j
             WHERE j.state_key = {user} AND j.event_type = 'm.room.member' AND j.to_pos IS NULL AND j.membership = 'join'
               AND EXISTS (SELECT 1 FROM room_state me WHERE me.state_key = $1 AND me.room_id = j.room_id
                           AND me.event_type = 'm.room.member' AND me.to_pos IS NULL AND me.membership = 'join')
               AND EXISTS (SELECT 1 FROM room_state x WHERE x.room_id = j.room_id AND x.event_type = 'm.room.encryption'
                           AND x.state_key = '' AND x.to_pos IS NULL)
             LIMIT 1
         ) AS {alias} ON TRUE"
    )
}

/// Rule 1 of `device_list_updates`: the user `$1`, and users sharing an
/// encrypted room with them, whose device list moved in `$2 < p <= $3`.
static STREAM_CHANGED: LazyLock<String> = LazyLock::new(stream_changed);

/// Rules 1 and 2 (`changed`) and the `left` rule of `device_list_updates`.
static DEVICE_LIST_UPDATES: LazyLock<String> = LazyLock::new(device_list_updates_sql);

fn stream_changed() -> String {
    format!(
        "SELECT c.user_id FROM device_list_changes c {}
         WHERE c.stream_pos > $2 AND c.stream_pos <= $3 AND (c.user_id = $1 OR shared.one IS NOT NULL)",
        sharing("c.user_id", "shared")
    )
}

/// Rules 1 and 2 (`changed`) and the `left` rule of `device_list_updates`,
/// with the events range `$4 < p <= $5`; rows (user, changed?).
fn device_list_updates_sql() -> String {
    let in_events = |pos: &str| format!("{pos} > $4 AND {pos} <= $5");
    let was_joined = |row: &str, user: &str| {
        format!(
            "EXISTS (SELECT 1 FROM room_state p WHERE p.room_id = {row}.room_id AND p.event_type = 'm.room.member'
                     AND p.state_key = {user} AND p.to_pos = {row}.from_pos AND p.membership = 'join')"
        )
    };
    let enc_now = |room: &str| {
        format!(
            "EXISTS (SELECT 1 FROM room_state x WHERE x.room_id = {room} AND x.event_type = 'm.room.encryption'
                     AND x.state_key = '' AND x.to_pos IS NULL)"
        )
    };
    format!(
        "WITH {ENC_ROOMS},
         -- Members who joined an encrypted room of the user's (a display-name change is no join).
         newly_joined AS (
             SELECT s.state_key AS user_id FROM enc
             JOIN room_state s ON s.room_id = enc.room_id AND {s_in}
             WHERE s.event_type = 'm.room.member' AND s.to_pos IS NULL AND s.membership = 'join' AND s.state_key <> $1
               AND NOT {s_was_joined}
         ),
         -- Rooms the user joined, or that became encrypted, in the range: all their members.
         whole_rooms AS (
             SELECT enc.room_id FROM enc
             WHERE ({me_in} AND NOT EXISTS (
                        SELECT 1 FROM room_state p WHERE p.room_id = enc.room_id AND p.event_type = 'm.room.member'
                        AND p.state_key = $1 AND p.to_pos = enc.me_from AND p.membership = 'join'))
                OR EXISTS (SELECT 1 FROM room_state x WHERE x.room_id = enc.room_id AND x.event_type = 'm.room.encryption'
                           AND x.state_key = '' AND x.to_pos IS NULL AND {x_in})
         ),
         whole_members AS (
             SELECT s.state_key AS user_id FROM whole_rooms w
             JOIN room_state s ON s.room_id = w.room_id AND s.event_type = 'm.room.member' AND s.to_pos IS NULL
             WHERE s.membership = 'join' AND s.state_key <> $1
         ),
         -- Who left an encrypted room of the user's, and the members of one the user left.
         gone AS (
             SELECT s.state_key AS user_id FROM enc
             JOIN room_state s ON s.room_id = enc.room_id AND {s_in}
             WHERE s.event_type = 'm.room.member' AND s.to_pos IS NULL AND s.membership IS DISTINCT FROM 'join'
               AND s.state_key <> $1
             UNION
             SELECT s.state_key FROM room_state mine
             JOIN room_state s ON s.room_id = mine.room_id AND s.event_type = 'm.room.member' AND s.to_pos IS NULL
             WHERE mine.state_key = $1 AND mine.event_type = 'm.room.member' AND mine.to_pos IS NULL
               AND mine.membership IS DISTINCT FROM 'join' AND {mine_in} AND {mine_enc}
               AND s.membership = 'join' AND s.state_key <> $1
         )
         SELECT user_id, TRUE FROM ({stream_changed}) AS c
         UNION SELECT user_id, TRUE FROM newly_joined
         UNION SELECT user_id, TRUE FROM whole_members
         UNION SELECT g.user_id, FALSE FROM gone g {g_sharing} WHERE still.one IS NULL",
        s_in = in_events("s.from_pos"),
        s_was_joined = was_joined("s", "s.state_key"),
        me_in = in_events("enc.me_from"),
        x_in = in_events("x.from_pos"),
        mine_in = in_events("mine.from_pos"),
        mine_enc = enc_now("mine.room_id"),
        stream_changed = stream_changed(),
        g_sharing = sharing("g.user_id", "still"),
    )
}

/// The device's unclaimed one-time keys by algorithm and the algorithms
/// of its unused fallback keys.
async fn key_counts_of(
    client: &impl GenericClient,
    user_id: &str,
    device_id: &str,
) -> StoreResult<(BTreeMap<String, u64>, Vec<String>)> {
    // One statement: both from one snapshot.
    let rows = query(
        client,
        "SELECT algorithm, COUNT(*), FALSE FROM one_time_keys WHERE user_id = $1 AND device_id = $2 GROUP BY algorithm
             UNION ALL
             SELECT algorithm, 0::bigint, TRUE FROM fallback_keys WHERE user_id = $1 AND device_id = $2 AND NOT used",
        &[&user_id, &device_id],
    )
    .await?;
    let (mut counts, mut fallbacks) = (BTreeMap::new(), Vec::new());
    for row in &rows {
        let algorithm: String = get(row, 0)?;
        if get(row, 2)? {
            fallbacks.push(algorithm);
        } else {
            counts.insert(algorithm, u(get(row, 1)?));
        }
    }
    fallbacks.sort();
    Ok((counts, fallbacks))
}

/// The device's messages at positions `after < p <= up_to` (at most
/// `limit`, in order), and whether any at or below `after` are left.
async fn inbox_of(
    client: &impl GenericClient,
    user_id: &str,
    device_id: &str,
    after: u64,
    up_to: u64,
    limit: usize,
) -> StoreResult<ToDeviceInbox> {
    // One statement, one snapshot: always one row, the messages' columns
    // NULL when there are none.
    let rows = query(
        client,
        "SELECT EXISTS (SELECT 1 FROM to_device_messages
                            WHERE user_id = $1 AND device_id = $2 AND stream_pos <= $3),
                    m.stream_pos, m.sender, m.event_type, m.content
             FROM (SELECT 1) AS one
             LEFT JOIN LATERAL (
                 SELECT stream_pos, sender, event_type, content FROM to_device_messages
                 WHERE user_id = $1 AND device_id = $2 AND stream_pos > $3 AND stream_pos <= $4
                 ORDER BY stream_pos LIMIT $5
             ) AS m ON TRUE
             ORDER BY m.stream_pos",
        &[&user_id, &device_id, &i(after), &i(up_to), &i(limit as u64)],
    )
    .await?;
    let mut inbox = ToDeviceInbox::default();
    for row in &rows {
        inbox.acknowledged_waiting = get(row, 0)?;
        if let Some(pos) = get::<Option<i64>>(row, 1)? {
            inbox.messages.push(ToDeviceEvent {
                stream_pos: u(pos),
                sender: get(row, 2)?,
                event_type: get(row, 3)?,
                content: get(row, 4)?,
            });
        }
    }
    Ok(inbox)
}

#[async_trait]
impl KeyStore for PostgresStore {
    async fn upload_keys(
        &self,
        user_id: &str,
        device_id: &str,
        upload: KeyUpload,
        limits: KeyLimits,
    ) -> StoreResult<BTreeMap<String, u64>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        // Uploads of this device go one at a time from here (the one-time
        // key bound), and a deletion of the device waits for this one.
        let device = query_opt(
            &tx,
            "SELECT 1 FROM devices WHERE user_id = $1 AND device_id = $2 FOR NO KEY UPDATE",
            &[&user_id, &device_id],
        )
        .await?;
        if device.is_none() {
            return Err(StoreError::UnknownDevice);
        }
        let new_device_keys = store_upload(&tx, user_id, device_id, &upload, limits).await?;
        let counts = one_time_key_counts(&tx, user_id, device_id).await?;
        if new_device_keys {
            move_device_lists(&tx, &[user_id]).await?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(counts)
    }

    async fn key_counts(&self, user_id: &str, device_id: &str) -> StoreResult<(BTreeMap<String, u64>, Vec<String>)> {
        let client = self.client().await?;
        key_counts_of(&client, user_id, device_id).await
    }

    async fn device_keys(&self, queries: &[(String, Vec<String>)]) -> StoreResult<Vec<DeviceKeysEntry>> {
        let mut whole_users: Vec<&str> = Vec::new();
        let (mut users, mut devices): (Vec<&str>, Vec<&str>) = (Vec::new(), Vec::new());
        for (user_id, device_ids) in queries {
            if device_ids.is_empty() {
                whole_users.push(user_id);
            }
            for device_id in device_ids {
                users.push(user_id);
                devices.push(device_id);
            }
        }
        if whole_users.is_empty() && users.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        // Two index walks rather than one OR, which would scan the table;
        // UNION drops a device asked for both ways.
        let rows = query(
            &client,
            "SELECT k.user_id, k.device_id, k.keys, d.display_name
             FROM device_keys k JOIN devices d ON d.user_id = k.user_id AND d.device_id = k.device_id
             WHERE k.user_id = ANY($1)
             UNION
             SELECT k.user_id, k.device_id, k.keys, d.display_name
             FROM UNNEST($2::text[], $3::text[]) AS q(user_id, device_id)
             JOIN device_keys k ON k.user_id = q.user_id AND k.device_id = q.device_id
             JOIN devices d ON d.user_id = k.user_id AND d.device_id = k.device_id",
            &[&whole_users, &users, &devices],
        )
        .await?;
        let mut entries = rows
            .iter()
            .map(|r| {
                Ok(DeviceKeysEntry { user_id: get(r, 0)?, device_id: get(r, 1)?, keys: get(r, 2)?, display_name: get(r, 3)? })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        entries.sort_by(|a, b| (&a.user_id, &a.device_id).cmp(&(&b.user_id, &b.device_id)));
        Ok(entries)
    }

    async fn cross_signing_keys(&self, user_ids: &[String]) -> StoreResult<Vec<CrossSigningKey>> {
        if user_ids.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let rows = query(
            &client,
            "SELECT user_id, kind, public_key, key FROM cross_signing_keys WHERE user_id = ANY($1) ORDER BY user_id, kind",
            &[&user_ids],
        )
        .await?;
        rows.iter()
            .map(|r| {
                let kind: &str = get(r, 1)?;
                let kind = CrossSigningKeyKind::parse(kind)
                    .ok_or_else(|| StoreError::Backend(format!("unknown cross-signing key kind {kind:?}")))?;
                Ok(CrossSigningKey { user_id: get(r, 0)?, kind, public_key: get(r, 2)?, key: get(r, 3)? })
            })
            .collect()
    }

    async fn key_signatures(&self, target_user_ids: &[String]) -> StoreResult<Vec<KeySignature>> {
        if target_user_ids.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let found = query(
            &client,
            &format!(
                "SELECT {KEY_SIGNATURE_COLUMNS} FROM key_signatures
                 WHERE target_user_id = ANY($1)
                 ORDER BY target_user_id, target_key_id, signer_user_id, signer_key_id"
            ),
            &[&target_user_ids],
        )
        .await?;
        found.iter().map(|r| rows::key_signature(&PgRow(r))).collect()
    }

    async fn set_cross_signing_keys(&self, user_id: &str, keys: &[CrossSigningKey]) -> StoreResult<()> {
        // One per kind, the last given winning.
        let by_kind: BTreeMap<CrossSigningKeyKind, &CrossSigningKey> = keys.iter().map(|k| (k.kind, k)).collect();
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        // The keys read here stay the user's until commit: a signature
        // made meanwhile by or on a key replaced here waits, then lands on
        // the new one or is deleted with the old one.
        lock_users(&tx, KEYS_USER_LOCK, &[user_id]).await?;
        let held = query(&tx, "SELECT kind, public_key FROM cross_signing_keys WHERE user_id = $1", &[&user_id]).await?;
        let mut replaced: Vec<String> = Vec::new();
        for row in &held {
            let (kind, public_key): (&str, String) = (get(row, 0)?, get(row, 1)?);
            let new = CrossSigningKeyKind::parse(kind).and_then(|kind| by_kind.get(&kind));
            if new.is_some_and(|new| new.public_key != public_key) {
                replaced.push(public_key);
            }
        }
        if !replaced.is_empty() {
            let signer_key_ids: Vec<String> = replaced.iter().map(|k| format!("ed25519:{k}")).collect();
            // Two statements, each an index walk (on the target, on the signer).
            execute(
                &tx,
                "DELETE FROM key_signatures WHERE target_user_id = $1 AND target_key_id = ANY($2)",
                &[&user_id, &replaced],
            )
            .await
            .map_err(backend)?;
            execute(
                &tx,
                "DELETE FROM key_signatures WHERE signer_user_id = $1 AND signer_key_id = ANY($2)",
                &[&user_id, &signer_key_ids],
            )
            .await
            .map_err(backend)?;
        }
        if !by_kind.is_empty() {
            let kinds: Vec<&str> = by_kind.keys().map(|k| k.as_str()).collect();
            let public_keys: Vec<&str> = by_kind.values().map(|k| k.public_key.as_str()).collect();
            let values: Vec<&str> = by_kind.values().map(|k| k.key.as_str()).collect();
            execute(
                &tx,
                "INSERT INTO cross_signing_keys (user_id, kind, public_key, key)
                 SELECT $1, x.kind, x.public_key, x.key FROM UNNEST($2::text[], $3::text[], $4::text[]) AS x(kind, public_key, key)
                 ON CONFLICT (user_id, kind) DO UPDATE SET public_key = EXCLUDED.public_key, key = EXCLUDED.key",
                &[&user_id, &kinds, &public_keys, &values],
            )
            .await
            .map_err(backend)?;
        }
        move_device_lists(&tx, &[user_id]).await?;
        tx.commit().await.map_err(backend)
    }

    async fn note_remote_device_list_change(&self, user_id: &str) -> StoreResult<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        move_device_lists(&tx, &[user_id]).await?;
        tx.commit().await.map_err(backend)
    }

    async fn add_key_signatures(&self, signatures: &[KeySignature]) -> StoreResult<()> {
        if signatures.is_empty() {
            return Ok(());
        }
        // One per target, signer and signing key, the last given winning:
        // one upsert may not touch a row twice.
        let by_key: BTreeMap<(&str, &str, &str, &str), &KeySignature> = signatures
            .iter()
            .map(|s| ((&*s.target_user_id, &*s.target_key_id, &*s.signer_user_id, &*s.signer_key_id), s))
            .collect();
        let targets: Vec<&str> = signatures.iter().map(|s| s.target_user_id.as_str()).collect();
        let involved: Vec<&str> = targets.iter().copied().chain(signatures.iter().map(|s| s.signer_user_id.as_str())).collect();
        let column = |n: usize| -> Vec<&str> { by_key.keys().map(|k| [k.0, k.1, k.2, k.3][n]).collect() };
        let signature_values: Vec<&str> = by_key.values().map(|s| s.signature.as_str()).collect();
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        // Neither the signed keys nor the signing ones are replaced (which
        // deletes their signatures) while these are added.
        lock_users(&tx, KEYS_USER_LOCK, &involved).await?;
        execute(
            &tx,
            "INSERT INTO key_signatures (target_user_id, target_key_id, signer_user_id, signer_key_id, signature)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])
             ON CONFLICT (target_user_id, target_key_id, signer_user_id, signer_key_id)
             DO UPDATE SET signature = EXCLUDED.signature",
            &[&column(0), &column(1), &column(2), &column(3), &signature_values],
        )
        .await
        .map_err(backend)?;
        move_device_lists(&tx, &targets).await?;
        tx.commit().await.map_err(backend)
    }

    async fn claim_keys(&self, claims: &[KeyClaim]) -> StoreResult<Vec<ClaimedKey>> {
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        // A claim holding one key while it waits for a fallback key a
        // device deletion holds (which waits for that key) is a deadlock
        // the database breaks by giving one up: run it again.
        retry::conflicts(move || async move {
            let mut client = self.client().await?;
            let claim = client.prepare_cached(CLAIM).await.map_err(backend)?;
            let tx = client.transaction().await.map_err(backend)?;
            // Pipelined: the statements run one after the other in one
            // round trip, each seeing the keys the earlier ones took.
            let params: Vec<[&(dyn ToSql + Sync); 3]> =
                claims.iter().map(|c| [&c.user_id as &(dyn ToSql + Sync), &c.device_id, &c.algorithm]).collect();
            let got =
                futures_util::future::try_join_all(params.iter().map(|p| tx.query_opt(&claim, p))).await.map_err(backend)?;
            let mut claimed = Vec::new();
            for (c, row) in claims.iter().zip(got) {
                if let Some(row) = row {
                    claimed.push(ClaimedKey {
                        user_id: c.user_id.clone(),
                        device_id: c.device_id.clone(),
                        key_id: get(&row, 0)?,
                        key: get(&row, 1)?,
                    });
                }
            }
            tx.commit().await.map_err(backend)?;
            Ok(claimed)
        })
        .await
    }

    async fn device_list_updates(
        &self,
        user_id: &str,
        device_lists: (u64, u64),
        events: Option<(u64, u64)>,
    ) -> StoreResult<DeviceListUpdates> {
        let (d0, d1) = (i(device_lists.0), i(device_lists.1));
        let Some((e0, e1)) = events else {
            let client = self.client().await?;
            let rows = query(&client, &STREAM_CHANGED, &[&user_id, &d0, &d1]).await?;
            return collect_updates(rows.iter().map(|r| Ok((get(r, 0)?, true))));
        };
        // Walks every encrypted room of the user's: off the pool share that
        // small reads need.
        let (_heavy, client) = self.heavy_client().await?;
        let rows = query(&client, &DEVICE_LIST_UPDATES, &[&user_id, &d0, &d1, &i(e0), &i(e1)]).await?;
        collect_updates(rows.iter().map(|r| Ok((get(r, 0)?, get(r, 1)?))))
    }

    async fn send_to_device(
        &self,
        sender_user_id: &str,
        sender_device_id: &str,
        txn_id: &str,
        event_type: &str,
        messages: &[ToDeviceMessage],
        max_inbox: usize,
    ) -> StoreResult<ToDeviceQueued> {
        let users: Vec<&str> = messages.iter().map(|m| m.user_id.as_str()).collect();
        let devices: Vec<Option<&str>> = messages.iter().map(|m| m.device_id.as_deref()).collect();
        let contents: Vec<&str> = messages.iter().map(|m| m.content.as_str()).collect();
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        // A concurrent send of the same id waits here for the first one's
        // commit, then fails.
        // The device's oldest ids are forgotten in the same statement (a
        // retry comes soon); two sends of one device at once may share a
        // `seq`, which only orders the forgetting.
        execute(
            &tx,
            "WITH new AS (
                 INSERT INTO to_device_txns (user_id, device_id, seq, txn_id)
                 VALUES ($1, $2, (SELECT COALESCE(MAX(seq), 0) + 1 FROM to_device_txns WHERE user_id = $1 AND device_id = $2), $3)
                 RETURNING seq
             )
             DELETE FROM to_device_txns t USING new
             WHERE t.user_id = $1 AND t.device_id = $2 AND t.seq <= new.seq - $4",
            &[&sender_user_id, &sender_device_id, &txn_id, &MAX_TXNS],
        )
        .await
        .map_err(|e| if e.code() == Some(&SqlState::UNIQUE_VIOLATION) { StoreError::TransactionIdUsed } else { backend(e) })?;
        // Who the messages go to, `*` expanded, before the lock; the queuing
        // statement checks again that each device still exists.
        let targets = if messages.is_empty() {
            Vec::new()
        } else {
            query(
                &tx,
                "SELECT x.ord, d.user_id, d.device_id
                 FROM UNNEST($1::text[], $2::text[]) WITH ORDINALITY AS x(user_id, device_id, ord)
                 JOIN devices d ON d.user_id = x.user_id AND d.device_id = COALESCE(x.device_id, d.device_id)
                 ORDER BY x.ord, d.device_id",
                &[&users, &devices],
            )
            .await?
        };
        let mut queued = ToDeviceQueued::default();
        if !targets.is_empty() {
            let mut target_users: Vec<String> = Vec::with_capacity(targets.len());
            let mut target_devices: Vec<String> = Vec::with_capacity(targets.len());
            let mut target_messages: Vec<i32> = Vec::with_capacity(targets.len());
            for row in &targets {
                let ord: i64 = get(row, 0)?;
                target_messages.push(i32::try_from(ord).map_err(|_| StoreError::Backend("too many to-device messages".into()))?);
                target_users.push(get(row, 1)?);
                target_devices.push(get(row, 2)?);
            }
            let max_inbox = i(max_inbox as u64);
            // Prepared before the lock, so no round trip for them inside the window.
            let lock = tx.prepare_cached("SELECT pg_advisory_xact_lock($1)").await.map_err(backend)?;
            let queue = tx.prepare_cached(QUEUE).await.map_err(backend)?;
            let notify = tx.prepare_cached("SELECT pg_notify('chancery_changes', '')").await.map_err(backend)?;
            let (locked, counted, notified) = tokio::join!(
                biased;
                async { tx.execute(&lock, &[&TO_DEVICE_STREAM_LOCK]).await },
                async {
                    let params: [&(dyn ToSql + Sync); 8] = [
                        &target_users,
                        &target_devices,
                        &target_messages,
                        &max_inbox,
                        &sender_user_id,
                        &event_type,
                        &contents,
                        &MAX_FROM_ONE_SENDER,
                    ];
                    tx.query_one(&queue, &params).await
                },
                async { tx.execute(&notify, &[]).await },
            );
            locked.map_err(backend)?;
            let counted = counted.map_err(backend)?;
            notified.map_err(backend)?;
            let (written, existing): (i64, i64) = (get(&counted, 0)?, get(&counted, 1)?);
            queued.queued = u(written) as usize;
            queued.dropped_full = u(existing.saturating_sub(written)) as usize;
        }
        tx.commit().await.map_err(backend)?;
        Ok(queued)
    }

    async fn to_device_inbox(
        &self,
        user_id: &str,
        device_id: &str,
        after: u64,
        up_to: u64,
        limit: usize,
    ) -> StoreResult<ToDeviceInbox> {
        let client = self.client().await?;
        inbox_of(&client, user_id, device_id, after, up_to, limit).await
    }

    async fn device_sync_state(
        &self,
        user_id: &str,
        device_id: &str,
        after: u64,
        up_to: u64,
        limit: usize,
    ) -> StoreResult<DeviceSyncState> {
        let client = self.client().await?;
        // Both statements in one round trip (pipelined on the connection).
        let (inbox, (one_time_key_counts, unused_fallback_key_types)) = tokio::try_join!(
            inbox_of(&client, user_id, device_id, after, up_to, limit),
            key_counts_of(&client, user_id, device_id),
        )?;
        Ok(DeviceSyncState { inbox, one_time_key_counts, unused_fallback_key_types })
    }

    async fn delete_to_device(&self, user_id: &str, device_id: &str, up_to: u64) -> StoreResult<()> {
        let client = self.client().await?;
        execute(
            &client,
            "DELETE FROM to_device_messages WHERE user_id = $1 AND device_id = $2 AND stream_pos <= $3",
            &[&user_id, &device_id, &i(up_to)],
        )
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn create_backup_version(
        &self,
        user_id: &str,
        algorithm: &str,
        auth_data: &str,
        limits: BackupLimits,
    ) -> StoreResult<String> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        lock_users(&tx, BACKUP_USER_LOCK, &[user_id]).await?;
        let row = query_opt(
            &tx,
            "SELECT COUNT(*) FILTER (WHERE NOT deleted), COALESCE(MAX(version), 0) FROM backup_versions WHERE user_id = $1",
            &[&user_id],
        )
        .await?
        .ok_or_else(|| StoreError::Backend("aggregate returned no row".into()))?;
        let (live, highest): (i64, i64) = (get(&row, 0)?, get(&row, 1)?);
        if u(live) >= limits.max_versions as u64 {
            return Err(StoreError::TooManyBackupVersions);
        }
        let version = highest.saturating_add(1);
        execute(
            &tx,
            "INSERT INTO backup_versions (user_id, version, algorithm, auth_data) VALUES ($1, $2, $3, $4)",
            &[&user_id, &version, &algorithm, &auth_data],
        )
        .await
        .map_err(backend)?;
        // A deleted version was kept only to keep its number taken; the new
        // one is higher now.
        execute(&tx, "DELETE FROM backup_versions WHERE user_id = $1 AND deleted", &[&user_id]).await.map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(version.to_string())
    }

    async fn backup_version(&self, user_id: &str, version: Option<&str>) -> StoreResult<Option<BackupVersion>> {
        let client = self.client().await?;
        match version {
            Some(version) => match parse_version(version) {
                Some(version) => live_version(&client, user_id, version).await,
                None => Ok(None),
            },
            None => {
                let sql = format!(
                    "SELECT {BACKUP_VERSION_COLUMNS} FROM backup_versions WHERE user_id = $1 AND NOT deleted ORDER BY version DESC LIMIT 1"
                );
                query_opt(&client, &sql, &[&user_id]).await?.map(|r| rows::backup_version(&PgRow(&r))).transpose()
            }
        }
    }

    async fn update_backup_version(&self, user_id: &str, version: &str, algorithm: &str, auth_data: &str) -> StoreResult<bool> {
        let Some(version) = parse_version(version) else { return Ok(false) };
        let client = self.client().await?;
        // One statement: replaced only when the algorithm is the version's,
        // which it answers.
        let row = query_opt(
            &client,
            "UPDATE backup_versions SET auth_data = CASE WHEN algorithm = $3 THEN $4 ELSE auth_data END
             WHERE user_id = $1 AND version = $2 AND NOT deleted
             RETURNING algorithm = $3",
            &[&user_id, &version, &algorithm, &auth_data],
        )
        .await?;
        match row {
            None => Ok(false),
            Some(row) if get(&row, 0)? => Ok(true),
            Some(_) => Err(StoreError::BackupAlgorithmMismatch),
        }
    }

    async fn delete_backup_version(&self, user_id: &str, version: &str) -> StoreResult<bool> {
        let Some(version) = parse_version(version) else { return Ok(false) };
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        // Keys being put into it finish first (then are deleted here).
        lock_users(&tx, BACKUP_USER_LOCK, &[user_id]).await?;
        let deleted = execute(
            &tx,
            "UPDATE backup_versions SET deleted = TRUE, key_count = 0 WHERE user_id = $1 AND version = $2 AND NOT deleted",
            &[&user_id, &version],
        )
        .await
        .map_err(backend)?;
        if deleted == 0 {
            return Ok(false);
        }
        execute(&tx, "DELETE FROM backup_keys WHERE user_id = $1 AND version = $2", &[&user_id, &version])
            .await
            .map_err(backend)?;
        // Only the highest version's row must stay to keep numbers from
        // being handed out again: deleted ones below it go, so a user
        // creating and deleting versions in a loop leaves one row behind.
        execute(
            &tx,
            "DELETE FROM backup_versions WHERE user_id = $1 AND deleted
               AND version < (SELECT MAX(version) FROM backup_versions WHERE user_id = $1)",
            &[&user_id],
        )
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(true)
    }

    async fn put_backed_up_keys(
        &self,
        user_id: &str,
        version: &str,
        keys: &[BackedUpKey],
        limits: BackupLimits,
    ) -> StoreResult<BackupVersion> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        lock_users(&tx, BACKUP_USER_LOCK, &[user_id]).await?;
        let current = query_opt(
            &tx,
            "SELECT version, key_count FROM backup_versions WHERE user_id = $1 AND NOT deleted ORDER BY version DESC LIMIT 1",
            &[&user_id],
        )
        .await?;
        let Some(current) = current else { return Err(StoreError::WrongBackupVersion(None)) };
        let (current, key_count): (i64, i64) = (get(&current, 0)?, get(&current, 1)?);
        if parse_version(version) != Some(current) {
            return Err(StoreError::WrongBackupVersion(Some(current.to_string())));
        }
        // The best key of each session the request holds, then compared
        // with the one stored.
        let mut best: BTreeMap<(&str, &str), &BackedUpKey> = BTreeMap::new();
        for key in keys {
            let entry = best.entry((&key.room_id, &key.session_id)).or_insert(key);
            if backed_up_key_is_better(key, entry) {
                *entry = key;
            }
        }
        let rooms: Vec<&str> = best.keys().map(|k| k.0).collect();
        let sessions: Vec<&str> = best.keys().map(|k| k.1).collect();
        let held = query(
            &tx,
            "SELECT k.room_id, k.session_id, k.first_message_index, k.forwarded_count, k.is_verified, k.session_data
             FROM UNNEST($3::text[], $4::text[]) AS q(room_id, session_id)
             JOIN backup_keys k ON k.user_id = $1 AND k.version = $2 AND k.room_id = q.room_id AND k.session_id = q.session_id",
            &[&user_id, &current, &rooms, &sessions],
        )
        .await?;
        let held: BTreeMap<(String, String), BackedUpKey> = held
            .iter()
            .map(|r| rows::backed_up_key(&PgRow(r)).map(|k| ((k.room_id.clone(), k.session_id.clone()), k)))
            .collect::<StoreResult<_>>()?;
        let mut added: u64 = 0;
        let mut writes: Vec<&BackedUpKey> = Vec::new();
        for ((room_id, session_id), new) in best {
            match held.get(&(room_id.to_owned(), session_id.to_owned())) {
                None => {
                    added += 1;
                    writes.push(new);
                }
                Some(old) if backed_up_key_is_better(new, old) => writes.push(new),
                Some(_) => {}
            }
        }
        if added > 0 && u(key_count).saturating_add(added) > limits.max_keys {
            return Err(StoreError::TooManyBackedUpKeys);
        }
        if !writes.is_empty() {
            let rooms: Vec<&str> = writes.iter().map(|k| k.room_id.as_str()).collect();
            let sessions: Vec<&str> = writes.iter().map(|k| k.session_id.as_str()).collect();
            let indexes: Vec<i64> = writes.iter().map(|k| i(k.first_message_index)).collect();
            let forwarded: Vec<i64> = writes.iter().map(|k| i(k.forwarded_count)).collect();
            let verified: Vec<bool> = writes.iter().map(|k| k.is_verified).collect();
            let data: Vec<&str> = writes.iter().map(|k| k.session_data.as_str()).collect();
            execute(
                &tx,
                "INSERT INTO backup_keys (user_id, version, room_id, session_id, first_message_index, forwarded_count,
                                          is_verified, session_data)
                 SELECT $1, $2, x.r, x.s, x.i, x.f, x.v, x.d
                 FROM UNNEST($3::text[], $4::text[], $5::bigint[], $6::bigint[], $7::boolean[], $8::text[]) AS x(r, s, i, f, v, d)
                 ON CONFLICT (user_id, version, room_id, session_id) DO UPDATE
                 SET first_message_index = EXCLUDED.first_message_index, forwarded_count = EXCLUDED.forwarded_count,
                     is_verified = EXCLUDED.is_verified, session_data = EXCLUDED.session_data",
                &[&user_id, &current, &rooms, &sessions, &indexes, &forwarded, &verified, &data],
            )
            .await
            .map_err(backend)?;
            execute(
                &tx,
                "UPDATE backup_versions SET etag = etag + 1, key_count = key_count + $3 WHERE user_id = $1 AND version = $2",
                &[&user_id, &current, &i(added)],
            )
            .await
            .map_err(backend)?;
        }
        let version = live_version(&tx, user_id, current)
            .await?
            .ok_or_else(|| StoreError::Backend("the current backup version vanished under its lock".into()))?;
        tx.commit().await.map_err(backend)?;
        Ok(version)
    }

    async fn backed_up_keys(
        &self,
        user_id: &str,
        version: &str,
        scope: BackupScope<'_>,
    ) -> StoreResult<Option<Vec<BackedUpKey>>> {
        let Some(version) = parse_version(version) else { return Ok(None) };
        let (room_id, session_id) = scope_params(scope);
        // A version's keys grow to `BackupLimits::max_keys`.
        let (_heavy, client) = self.heavy_client().await?;
        // One statement, one snapshot: no row if the version does not
        // exist, one with NULL keys if it holds none in the scope.
        let rows = query(
            &client,
            "SELECT k.room_id, k.session_id, k.first_message_index, k.forwarded_count, k.is_verified, k.session_data
             FROM backup_versions v
             LEFT JOIN backup_keys k ON k.user_id = v.user_id AND k.version = v.version
                  AND ($3::text IS NULL OR k.room_id = $3) AND ($4::text IS NULL OR k.session_id = $4)
             WHERE v.user_id = $1 AND v.version = $2 AND NOT v.deleted
             ORDER BY k.room_id, k.session_id",
            &[&user_id, &version, &room_id, &session_id],
        )
        .await?;
        if rows.is_empty() {
            return Ok(None);
        }
        let mut keys = Vec::with_capacity(rows.len());
        for row in &rows {
            if get::<Option<&str>>(row, 0)?.is_some() {
                keys.push(rows::backed_up_key(&PgRow(row))?);
            }
        }
        Ok(Some(keys))
    }

    async fn delete_backed_up_keys(
        &self,
        user_id: &str,
        version: &str,
        scope: BackupScope<'_>,
    ) -> StoreResult<Option<BackupVersion>> {
        let Some(version) = parse_version(version) else { return Ok(None) };
        let (room_id, session_id) = scope_params(scope);
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        lock_users(&tx, BACKUP_USER_LOCK, &[user_id]).await?;
        if live_version(&tx, user_id, version).await?.is_none() {
            return Ok(None);
        }
        let deleted = execute(
            &tx,
            "DELETE FROM backup_keys WHERE user_id = $1 AND version = $2
               AND ($3::text IS NULL OR room_id = $3) AND ($4::text IS NULL OR session_id = $4)",
            &[&user_id, &version, &room_id, &session_id],
        )
        .await
        .map_err(backend)?;
        if deleted > 0 {
            execute(
                &tx,
                "UPDATE backup_versions SET etag = etag + 1, key_count = GREATEST(key_count - $3, 0)
                 WHERE user_id = $1 AND version = $2",
                &[&user_id, &version, &i(deleted)],
            )
            .await
            .map_err(backend)?;
        }
        let after = live_version(&tx, user_id, version).await?;
        tx.commit().await.map_err(backend)?;
        Ok(after)
    }

    async fn put_dehydrated_device(
        &self,
        device: NewDevice,
        device_data: &str,
        keys: KeyUpload,
        limits: KeyLimits,
        max_devices: usize,
    ) -> StoreResult<()> {
        let (device, keys) = (&device, &keys);
        // It deletes the old device's keys, which a claim may hold.
        retry::conflicts(move || async move {
            let user_id = device.user_id.as_str();
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(backend)?;
            // As for a login: the user's devices change one write at a time.
            let Some(account) = crate::accounts::lock_account(&tx, user_id).await? else {
                return Err(StoreError::AccountInactive);
            };
            if get::<Option<i64>>(&account, 0)?.is_some() {
                return Err(StoreError::AccountInactive);
            }
            let old = query_opt(&tx, "SELECT device_id FROM dehydrated_devices WHERE user_id = $1", &[&user_id])
                .await?
                .map(|r| get::<String>(&r, 0))
                .transpose()?;
            if old.as_deref() != Some(device.device_id.as_str()) {
                let taken =
                    query_opt(&tx, "SELECT 1 FROM devices WHERE user_id = $1 AND device_id = $2", &[&user_id, &device.device_id])
                        .await?;
                if taken.is_some() {
                    return Err(StoreError::DeviceIdTaken);
                }
            }
            if let Some(old) = old {
                let old = [old];
                execute(&tx, "DELETE FROM devices WHERE user_id = $1 AND device_id = ANY($2)", &[&user_id, &old.as_slice()])
                    .await
                    .map_err(backend)?;
                delete_device_data(&tx, user_id, &old).await?;
            }
            let count = query_opt(&tx, "SELECT COUNT(*) FROM devices WHERE user_id = $1", &[&user_id])
                .await?
                .ok_or_else(|| StoreError::Backend("aggregate returned no row".into()))?;
            if u(get(&count, 0)?) >= max_devices as u64 {
                return Err(StoreError::TooManyDevices);
            }
            crate::accounts::insert_device(&tx, device).await?;
            execute(
                &tx,
                "INSERT INTO dehydrated_devices (user_id, device_id, device_data) VALUES ($1, $2, $3)",
                &[&user_id, &device.device_id, &device_data],
            )
            .await
            .map_err(backend)?;
            store_upload(&tx, user_id, &device.device_id, keys, limits).await?;
            move_device_lists(&tx, &[user_id]).await?;
            tx.commit().await.map_err(backend)
        })
        .await
    }

    async fn dehydrated_device(&self, user_id: &str) -> StoreResult<Option<DehydratedDevice>> {
        let client = self.client().await?;
        let row =
            query_opt(&client, "SELECT device_id, device_data FROM dehydrated_devices WHERE user_id = $1", &[&user_id]).await?;
        row.map(|r| Ok(DehydratedDevice { device_id: get(&r, 0)?, device_data: get(&r, 1)? })).transpose()
    }

    async fn delete_dehydrated_device(&self, user_id: &str) -> StoreResult<Option<String>> {
        retry::conflicts(move || async move {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(backend)?;
            crate::accounts::lock_account(&tx, user_id).await?;
            let old = query_opt(&tx, "SELECT device_id FROM dehydrated_devices WHERE user_id = $1", &[&user_id])
                .await?
                .map(|r| get::<String>(&r, 0))
                .transpose()?;
            let Some(old) = old else { return Ok(None) };
            let ids = [old];
            execute(&tx, "DELETE FROM devices WHERE user_id = $1 AND device_id = ANY($2)", &[&user_id, &ids.as_slice()])
                .await
                .map_err(backend)?;
            forget_devices(&tx, user_id, &ids).await?;
            tx.commit().await.map_err(backend)?;
            let [old] = ids;
            Ok(Some(old))
        })
        .await
    }
}

/// The rows of a `device_list_updates` query, (user, changed?), as the two
/// sorted lists; a user in both is only `changed`.
fn collect_updates(rows: impl Iterator<Item = StoreResult<(String, bool)>>) -> StoreResult<DeviceListUpdates> {
    let (mut changed, mut left) = (BTreeSet::new(), BTreeSet::new());
    for row in rows {
        let (user_id, is_changed) = row?;
        if is_changed {
            changed.insert(user_id);
        } else {
            left.insert(user_id);
        }
    }
    left.retain(|u| !changed.contains(u));
    Ok(DeviceListUpdates { changed: changed.into_iter().collect(), left: left.into_iter().collect() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_versions_are_the_numbers_handed_out() {
        assert_eq!(parse_version("1"), Some(1));
        assert_eq!(parse_version("42"), Some(42));
        for other in ["", "0", "01", "-1", "+1", "1.0", " 1", "x", "99999999999999999999"] {
            assert_eq!(parse_version(other), None, "{other:?}");
        }
    }

    #[test]
    fn a_user_in_both_lists_is_only_changed() {
        let rows = [("@b:x", false), ("@a:x", true), ("@b:x", true), ("@c:x", false), ("@a:x", true), ("@c:x", false)];
        let updates = collect_updates(rows.into_iter().map(|(u, c)| Ok((u.to_owned(), c)))).unwrap();
        assert_eq!(updates.changed, ["@a:x", "@b:x"]);
        assert_eq!(updates.left, ["@c:x"]);
    }

    #[test]
    fn lock_keys_spell_their_names() {
        // Distinct from the other modules' keys ("chanacct", "chanrcpt",
        // "chanstrm", "chancery", "chancuia"; "acct", "rcpt").
        assert_eq!(&DEVICE_LIST_STREAM_LOCK.to_be_bytes(), b"chandevl");
        assert_eq!(&TO_DEVICE_STREAM_LOCK.to_be_bytes(), b"chantodv");
        assert_eq!(&KEYS_USER_LOCK.to_be_bytes(), b"keys");
        assert_eq!(&BACKUP_USER_LOCK.to_be_bytes(), b"bkup");
    }
}
