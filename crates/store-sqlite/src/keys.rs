//! `KeyStore` on SQLite: end-to-end encryption keys, the device-list and
//! to-device streams, key backups and dehydrated devices.
//!
//! Writes run on the single writer connection in one IMMEDIATE
//! transaction, so a claim of a one-time key, the limit checks and the
//! positions of both streams cannot be overtaken by another writer:
//! device-list positions are `MAX(stream_pos) + 1` of
//! `device_list_changes` (one row per user, never deleted, so the maximum
//! never goes back), to-device positions come from the
//! `to_device_position` counter (messages are deleted once read, so the
//! table's maximum could go back).
//!
//! The `AccountStore` calls that delete devices go through
//! [`forget_devices`] (and deactivation also through [`forget_account`]),
//! in their own transaction.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use async_trait::async_trait;
use chancery_store::*;
use chancery_store_sql::params::reaches_limit;
use chancery_store_sql::rows::{self, BACKED_UP_KEY_COLUMNS, BACKUP_VERSION_COLUMNS, KEY_SIGNATURE_COLUMNS};
use chancery_store_sql::{i, u};
use rusqlite::{Connection, OptionalExtension, params};

use crate::accounts::{insert_device, is_unique_violation};
use crate::rooms::collect;
use crate::row::SqliteRow;
use crate::{SqliteStore, backend};

/// `limits::MAX_TO_DEVICE_TXNS_PER_DEVICE`, as the database counts.
const MAX_TXNS: i64 = chancery_proto::limits::MAX_TO_DEVICE_TXNS_PER_DEVICE as i64;
use chancery_proto::limits::MAX_TO_DEVICE_FROM_ONE_SENDER as MAX_FROM_ONE_SENDER;

/// Moves the user to the next position of the device-list stream.
fn move_device_list(conn: &Connection, user_id: &str) -> StoreResult<()> {
    conn.prepare_cached(
        "INSERT INTO device_list_changes (user_id, stream_pos)
         VALUES (?1, (SELECT COALESCE(MAX(stream_pos), 0) + 1 FROM device_list_changes))
         ON CONFLICT (user_id) DO UPDATE SET stream_pos = excluded.stream_pos",
    )
    .and_then(|mut s| s.execute([user_id]))
    .map_err(backend)?;
    Ok(())
}

/// Deletes the devices (ids that do not exist are ignored) with everything
/// of theirs this module keeps: keys, one-time and fallback keys,
/// signatures added to their keys and those they made, inbox, to-device
/// transaction ids, pushers, and
/// the dehydrated-device record if one of them is it. Returns whether
/// anything was there to delete.
fn delete_devices_and_keys(conn: &Connection, user_id: &str, device_ids: &[String]) -> StoreResult<bool> {
    const DELETES: [&str; 8] = [
        "DELETE FROM devices WHERE user_id = ?1 AND device_id = ?2",
        "DELETE FROM device_keys WHERE user_id = ?1 AND device_id = ?2",
        "DELETE FROM one_time_keys WHERE user_id = ?1 AND device_id = ?2",
        "DELETE FROM fallback_keys WHERE user_id = ?1 AND device_id = ?2",
        "DELETE FROM key_signatures WHERE target_user_id = ?1 AND target_key_id = ?2",
        // A device's signature of its user's master key goes with it: every
        // login that verifies itself adds one, and none would ever go.
        "DELETE FROM key_signatures WHERE signer_user_id = ?1 AND signer_key_id = 'ed25519:' || ?2",
        "DELETE FROM to_device_messages WHERE user_id = ?1 AND device_id = ?2",
        "DELETE FROM to_device_txns WHERE user_id = ?1 AND device_id = ?2",
    ];
    let mut deleted = false;
    for device_id in device_ids {
        // The device row and its keys are what others see of it; the rest
        // is the device's own.
        for (n, sql) in DELETES.iter().enumerate() {
            let rows = conn.prepare_cached(sql).and_then(|mut s| s.execute([user_id, device_id])).map_err(backend)?;
            deleted |= n < 2 && rows > 0;
        }
        conn.prepare_cached("DELETE FROM dehydrated_devices WHERE user_id = ?1 AND device_id = ?2")
            .and_then(|mut s| s.execute([user_id, device_id]))
            .map_err(backend)?;
        // A pusher belongs to the device whose access token set it.
        crate::pushers::delete_pushers_of_device(conn, user_id, device_id)?;
    }
    Ok(deleted)
}

/// The deletion of devices every `AccountStore` call that deletes devices
/// makes, inside its transaction: the devices and all they hold (see
/// [`delete_devices_and_keys`]), and the user moved in the device-list
/// stream if a device was deleted. That moves it also for a device that
/// never uploaded keys, which nobody else saw: simpler than telling the
/// two apart, and the cost is one needless `/keys/query` of the user's
/// contacts, while the user's own other devices do see the list change.
pub(crate) fn forget_devices(conn: &Connection, user_id: &str, device_ids: &[String]) -> StoreResult<()> {
    if delete_devices_and_keys(conn, user_id, device_ids)? {
        move_device_list(conn, user_id)?;
    }
    Ok(())
}

/// The user's devices, optionally but one.
pub(crate) fn device_ids_of(conn: &Connection, user_id: &str, except: Option<&str>) -> StoreResult<Vec<String>> {
    let mut stmt =
        conn.prepare_cached("SELECT device_id FROM devices WHERE user_id = ?1 AND device_id IS NOT ?2").map_err(backend)?;
    collect(stmt.query_map(params![user_id, except], |r| r.get(0)).map_err(backend)?)
}

/// What deactivation deletes besides devices: every device with its keys
/// and pushers, the cross-signing keys, signatures made on the user's keys or by them,
/// the key backups and the dehydrated device; and the user moved in the
/// device-list stream (their keys are gone).
pub(crate) fn forget_account(conn: &Connection, user_id: &str) -> StoreResult<()> {
    let devices = device_ids_of(conn, user_id, None)?;
    delete_devices_and_keys(conn, user_id, &devices)?;
    for sql in [
        "DELETE FROM cross_signing_keys WHERE user_id = ?1",
        "DELETE FROM key_signatures WHERE target_user_id = ?1",
        "DELETE FROM key_signatures WHERE signer_user_id = ?1",
        "DELETE FROM backup_keys WHERE user_id = ?1",
        // The account is never used again: its version numbers need no
        // tombstone.
        "DELETE FROM backup_versions WHERE user_id = ?1",
        "DELETE FROM dehydrated_devices WHERE user_id = ?1",
    ] {
        conn.prepare_cached(sql).and_then(|mut s| s.execute([user_id])).map_err(backend)?;
    }
    crate::pushers::delete_pushers_of_user(conn, user_id)?;
    move_device_list(conn, user_id)
}

fn device_exists(conn: &Connection, user_id: &str, device_id: &str) -> StoreResult<bool> {
    conn.prepare_cached("SELECT 1 FROM devices WHERE user_id = ?1 AND device_id = ?2")
        .and_then(|mut s| s.query_row([user_id, device_id], |_| Ok(())).optional())
        .map(|found| found.is_some())
        .map_err(backend)
}

/// The device's unclaimed one-time keys by algorithm and the algorithms
/// of its unused fallback keys, in one statement (every sync reads them).
fn key_counts_of(conn: &Connection, user_id: &str, device_id: &str) -> StoreResult<(BTreeMap<String, u64>, Vec<String>)> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT algorithm, COUNT(*), 0 FROM one_time_keys WHERE user_id = ?1 AND device_id = ?2 GROUP BY algorithm
             UNION ALL
             SELECT algorithm, 0, 1 FROM fallback_keys WHERE user_id = ?1 AND device_id = ?2 AND used = 0",
        )
        .map_err(backend)?;
    let rows = stmt
        .query_map([user_id, device_id], |r| Ok((r.get::<_, String>(0)?, u(r.get(1)?), r.get::<_, bool>(2)?)))
        .map_err(backend)?;
    let (mut counts, mut fallbacks) = (BTreeMap::new(), Vec::new());
    for (algorithm, count, fallback) in collect(rows)? {
        if fallback {
            fallbacks.push(algorithm);
        } else {
            counts.insert(algorithm, count);
        }
    }
    fallbacks.sort();
    Ok((counts, fallbacks))
}

/// The device's messages at positions `after < p <= up_to` (at most
/// `limit`, in order), and whether any at or below `after` are left.
fn inbox_of(
    conn: &Connection,
    user_id: &str,
    device_id: &str,
    after: u64,
    up_to: u64,
    limit: usize,
) -> StoreResult<ToDeviceInbox> {
    // One statement (every sync reads it): always one row, the messages'
    // columns NULL when there are none.
    let mut stmt = conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM to_device_messages WHERE user_id = ?1 AND device_id = ?2 AND stream_pos <= ?3),
                    m.stream_pos, m.sender, m.event_type, m.content
             FROM (SELECT 1) AS one
             LEFT JOIN (
                 SELECT stream_pos, sender, event_type, content FROM to_device_messages
                 WHERE user_id = ?1 AND device_id = ?2 AND stream_pos > ?3 AND stream_pos <= ?4
                 ORDER BY stream_pos LIMIT ?5
             ) AS m
             ORDER BY m.stream_pos",
        )
        .map_err(backend)?;
    let rows = stmt
        .query_map(params![user_id, device_id, i(after), i(up_to), i(limit as u64)], |r| {
            let message = match r.get::<_, Option<i64>>(1)? {
                Some(pos) => {
                    Some(ToDeviceEvent { stream_pos: u(pos), sender: r.get(2)?, event_type: r.get(3)?, content: r.get(4)? })
                }
                None => None,
            };
            Ok((r.get::<_, bool>(0)?, message))
        })
        .map_err(backend)?;
    let mut inbox = ToDeviceInbox::default();
    for (acknowledged_waiting, message) in collect(rows)? {
        inbox.acknowledged_waiting = acknowledged_waiting;
        inbox.messages.extend(message);
    }
    Ok(inbox)
}

/// The device's unclaimed one-time keys counted by algorithm.
fn one_time_key_counts(conn: &Connection, user_id: &str, device_id: &str) -> StoreResult<BTreeMap<String, u64>> {
    let mut stmt = conn
        .prepare_cached("SELECT algorithm, COUNT(*) FROM one_time_keys WHERE user_id = ?1 AND device_id = ?2 GROUP BY algorithm")
        .map_err(backend)?;
    let rows = stmt.query_map([user_id, device_id], |r| Ok((r.get::<_, String>(0)?, u(r.get(1)?)))).map_err(backend)?;
    Ok(collect(rows)?.into_iter().collect())
}

/// Stores one upload for an existing device (see [`KeyUpload`]); returns
/// the unclaimed one-time key counts afterwards. Errors leave half an
/// upload behind, which the writer's savepoint rolls back.
fn store_keys(
    conn: &Connection,
    user_id: &str,
    device_id: &str,
    upload: &KeyUpload,
    limits: KeyLimits,
) -> StoreResult<BTreeMap<String, u64>> {
    if let Some(keys) = &upload.device_keys {
        let held: Option<String> = conn
            .prepare_cached("SELECT keys FROM device_keys WHERE user_id = ?1 AND device_id = ?2")
            .and_then(|mut s| s.query_row([user_id, device_id], |r| r.get(0)).optional())
            .map_err(backend)?;
        match held {
            Some(held) if held == *keys => {}
            Some(_) => return Err(StoreError::DeviceKeysChanged),
            None => {
                conn.prepare_cached("INSERT INTO device_keys (user_id, device_id, keys) VALUES (?1, ?2, ?3)")
                    .and_then(|mut s| s.execute([user_id, device_id, keys]))
                    .map_err(backend)?;
                move_device_list(conn, user_id)?;
            }
        }
    }
    let mut added = false;
    for key in &upload.one_time_keys {
        let held: Option<String> = conn
            .prepare_cached(
                "SELECT key FROM one_time_keys WHERE user_id = ?1 AND device_id = ?2 AND algorithm = ?3 AND key_id = ?4",
            )
            .and_then(|mut s| s.query_row([user_id, device_id, &key.algorithm, &key.key_id], |r| r.get(0)).optional())
            .map_err(backend)?;
        match held {
            Some(held) if held == key.key => {}
            Some(_) => return Err(StoreError::OneTimeKeyChanged),
            None => {
                conn.prepare_cached(
                    "INSERT INTO one_time_keys (user_id, device_id, algorithm, key_id, key) VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .and_then(|mut s| s.execute([user_id, device_id, &key.algorithm, &key.key_id, &key.key]))
                .map_err(backend)?;
                added = true;
            }
        }
    }
    for key in &upload.fallback_keys {
        // The same key again keeps its `used` mark; anything else is a new
        // fallback key, unused.
        conn.prepare_cached(
            "INSERT INTO fallback_keys (user_id, device_id, algorithm, key_id, key, used) VALUES (?1, ?2, ?3, ?4, ?5, 0)
             ON CONFLICT (user_id, device_id, algorithm) DO UPDATE SET key_id = excluded.key_id, key = excluded.key, used = 0
             WHERE key_id IS NOT excluded.key_id OR key IS NOT excluded.key",
        )
        .and_then(|mut s| s.execute([user_id, device_id, &key.algorithm, &key.key_id, &key.key]))
        .map_err(backend)?;
    }
    let counts = one_time_key_counts(conn, user_id, device_id)?;
    // Only an upload that added keys can be refused for their number, so a
    // retry of one that went through is answered the same.
    if added && counts.values().sum::<u64>() > limits.max_one_time_keys as u64 {
        return Err(StoreError::TooManyOneTimeKeys);
    }
    Ok(counts)
}

/// A version as the API names it: decimal without sign or leading zeros,
/// so `01` is no alias of `1`.
fn parse_version(version: &str) -> Option<i64> {
    let n: i64 = version.parse().ok()?;
    (n > 0 && n.to_string() == version).then_some(n)
}

/// The user's current backup version: the highest not deleted.
fn current_version(conn: &Connection, user_id: &str) -> StoreResult<Option<i64>> {
    conn.prepare_cached("SELECT MAX(version) FROM backup_versions WHERE user_id = ?1 AND deleted = 0")
        .and_then(|mut s| s.query_row([user_id], |r| r.get(0)))
        .map_err(backend)
}

fn read_version(conn: &Connection, user_id: &str, version: i64) -> StoreResult<Option<BackupVersion>> {
    conn.prepare_cached(&format!(
        "SELECT {BACKUP_VERSION_COLUMNS} FROM backup_versions WHERE user_id = ?1 AND version = ?2 AND deleted = 0"
    ))
    .and_then(|mut s| s.query_row(params![user_id, version], |r| rows::backup_version(&SqliteRow(r))).optional())
    .map_err(backend)
}

/// A version's number if it exists (and is not deleted).
fn existing_version(conn: &Connection, user_id: &str, version: &str) -> StoreResult<Option<i64>> {
    let Some(number) = parse_version(version) else { return Ok(None) };
    conn.prepare_cached("SELECT version FROM backup_versions WHERE user_id = ?1 AND version = ?2 AND deleted = 0")
        .and_then(|mut s| s.query_row(params![user_id, number], |r| r.get(0)).optional())
        .map_err(backend)
}

/// Drops the user's deleted versions below their highest version: only
/// the highest number must stay known (the next one is `MAX + 1`), so a
/// user creating and deleting versions holds at most one tombstone.
fn drop_version_tombstones(conn: &Connection, user_id: &str) -> StoreResult<()> {
    conn.prepare_cached(
        "DELETE FROM backup_versions WHERE user_id = ?1 AND deleted = 1
           AND version < (SELECT MAX(version) FROM backup_versions WHERE user_id = ?1)",
    )
    .and_then(|mut s| s.execute([user_id]))
    .map_err(backend)?;
    Ok(())
}

/// The scope's condition on `backup_keys` (parameters ?1 user, ?2 version,
/// ?3 room, ?4 session) and its two parameters.
fn scope_filter<'a>(scope: BackupScope<'a>) -> (&'static str, Option<&'a str>, Option<&'a str>) {
    match scope {
        BackupScope::All => ("user_id = ?1 AND version = ?2 AND ?3 IS NULL AND ?4 IS NULL", None, None),
        BackupScope::Room(room) => ("user_id = ?1 AND version = ?2 AND room_id = ?3 AND ?4 IS NULL", Some(room), None),
        BackupScope::Session { room_id, session_id } => {
            ("user_id = ?1 AND version = ?2 AND room_id = ?3 AND session_id = ?4", Some(room_id), Some(session_id))
        }
    }
}

// The device-list queries join with CROSS JOIN, which SQLite never
// reorders: without statistics it would rather walk the whole of
// `room_state_by_start` and look each row up in the user's rooms than the
// other way round.

/// The rooms `user` is joined to that are encrypted now (parameter ?1),
/// for the CTE `enc(room_id, me_pos, enc_pos)` of the device-list queries:
/// the positions of the user's join and of the encryption event.
const ENCRYPTED_ROOMS_CTE: &str = "enc(room_id, me_pos, enc_pos) AS MATERIALIZED (
         SELECT m.room_id, m.from_pos, e.from_pos FROM room_state m INDEXED BY room_state_memberships
         CROSS JOIN room_state e INDEXED BY room_state_current
           ON e.room_id = m.room_id AND e.event_type = 'm.room.encryption' AND e.state_key = '' AND e.to_pos IS NULL
         WHERE m.state_key = ?1 AND m.event_type = 'm.room.member' AND m.to_pos IS NULL AND m.membership = 'join'
     )";

/// Whether `user` (an SQL expression) is joined to one of `enc`'s rooms.
fn shares_encrypted_room(user: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM room_state o INDEXED BY room_state_memberships
                 WHERE o.state_key = {user} AND o.event_type = 'm.room.member' AND o.to_pos IS NULL
                   AND o.membership = 'join' AND o.room_id IN (SELECT room_id FROM enc))"
    )
}

/// Whether the member row before the one starting at `from_pos` (in room
/// `room`, of `user`: SQL expressions) was a join: the row a state event
/// replaces ends where the new one starts.
fn was_joined(room: &str, user: &str, from_pos: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM room_state p INDEXED BY room_state_by_end
                 WHERE p.room_id = {room} AND p.to_pos = {from_pos} AND p.event_type = 'm.room.member'
                   AND p.state_key = {user} AND p.membership = 'join')"
    )
}

fn strings(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> StoreResult<Vec<String>> {
    let mut stmt = conn.prepare_cached(sql).map_err(backend)?;
    collect(stmt.query_map(params, |r| r.get(0)).map_err(backend)?)
}

/// Users whose device list moved in `device_lists` and who are the user
/// or share an encrypted room with them.
fn moved_lists(conn: &Connection, user_id: &str, device_lists: (u64, u64)) -> StoreResult<Vec<String>> {
    let sql = format!(
        "WITH {ENCRYPTED_ROOMS_CTE}
         SELECT c.user_id FROM device_list_changes c
         WHERE c.stream_pos > ?2 AND c.stream_pos <= ?3 AND (c.user_id = ?1 OR {})",
        shares_encrypted_room("c.user_id")
    );
    strings(conn, &sql, params![user_id, i(device_lists.0), i(device_lists.1)])
}

/// Members of the user's encrypted rooms the user now shares them with
/// because of events in `events`: they joined, the user joined, or the
/// room became encrypted.
fn new_room_mates(conn: &Connection, user_id: &str, events: (u64, u64)) -> StoreResult<Vec<String>> {
    let sql = format!(
        "WITH {ENCRYPTED_ROOMS_CTE},
         whole(room_id) AS (
             SELECT room_id FROM enc
             WHERE (enc_pos > ?2 AND enc_pos <= ?3)
                OR (me_pos > ?2 AND me_pos <= ?3 AND NOT {me_was_joined})
         )
         SELECT s.state_key FROM whole w CROSS JOIN room_state s INDEXED BY room_state_current
           ON s.room_id = w.room_id AND s.event_type = 'm.room.member' AND s.to_pos IS NULL
         WHERE s.membership = 'join' AND s.state_key <> ?1
         UNION
         SELECT s.state_key FROM enc CROSS JOIN room_state s INDEXED BY room_state_by_start
           ON s.room_id = enc.room_id AND s.from_pos > ?2 AND s.from_pos <= ?3
         WHERE s.event_type = 'm.room.member' AND s.to_pos IS NULL AND s.membership = 'join' AND s.state_key <> ?1
           AND NOT {they_were_joined}",
        me_was_joined = was_joined("enc.room_id", "?1", "enc.me_pos"),
        they_were_joined = was_joined("s.room_id", "s.state_key", "s.from_pos"),
    );
    strings(conn, &sql, params![user_id, i(events.0), i(events.1)])
}

/// Users the user stopped sharing an encrypted room with because of
/// events in `events` (they left one of the user's, or the user left one
/// they are in) and who share none any more.
fn gone_room_mates(conn: &Connection, user_id: &str, events: (u64, u64)) -> StoreResult<Vec<String>> {
    let sql = format!(
        "WITH {ENCRYPTED_ROOMS_CTE},
         gone(user_id) AS (
             SELECT s.state_key FROM enc CROSS JOIN room_state s INDEXED BY room_state_by_start
               ON s.room_id = enc.room_id AND s.from_pos > ?2 AND s.from_pos <= ?3
             WHERE s.event_type = 'm.room.member' AND s.to_pos IS NULL AND s.membership <> 'join' AND s.state_key <> ?1
             UNION
             SELECT s.state_key FROM room_state m INDEXED BY room_state_memberships
             CROSS JOIN room_state e INDEXED BY room_state_current
               ON e.room_id = m.room_id AND e.event_type = 'm.room.encryption' AND e.state_key = '' AND e.to_pos IS NULL
             CROSS JOIN room_state s INDEXED BY room_state_current
               ON s.room_id = m.room_id AND s.event_type = 'm.room.member' AND s.to_pos IS NULL
             WHERE m.state_key = ?1 AND m.event_type = 'm.room.member' AND m.to_pos IS NULL AND m.membership <> 'join'
               AND m.from_pos > ?2 AND m.from_pos <= ?3
               AND s.membership = 'join' AND s.state_key <> ?1
         )
         SELECT g.user_id FROM gone g WHERE NOT {}",
        shares_encrypted_room("g.user_id")
    );
    strings(conn, &sql, params![user_id, i(events.0), i(events.1)])
}

#[async_trait]
impl KeyStore for SqliteStore {
    async fn upload_keys(
        &self,
        user_id: &str,
        device_id: &str,
        upload: KeyUpload,
        limits: KeyLimits,
    ) -> StoreResult<BTreeMap<String, u64>> {
        let (user_id, device_id) = (user_id.to_owned(), device_id.to_owned());
        self.write(move |tx| {
            if !device_exists(tx, &user_id, &device_id)? {
                return Err(StoreError::UnknownDevice);
            }
            store_keys(tx, &user_id, &device_id, &upload, limits)
        })
        .await
    }

    async fn key_counts(&self, user_id: &str, device_id: &str) -> StoreResult<(BTreeMap<String, u64>, Vec<String>)> {
        let (user_id, device_id) = (user_id.to_owned(), device_id.to_owned());
        self.read(move |conn| key_counts_of(conn, &user_id, &device_id)).await
    }

    async fn device_keys(&self, queries: &[(String, Vec<String>)]) -> StoreResult<Vec<DeviceKeysEntry>> {
        let queries = queries.to_vec();
        self.read_heavy(move |conn| {
            let tx = conn.unchecked_transaction().map_err(backend)?;
            let entry = |r: &rusqlite::Row<'_>| {
                Ok(DeviceKeysEntry { user_id: r.get(0)?, device_id: r.get(1)?, keys: r.get(2)?, display_name: r.get(3)? })
            };
            // Keys are deleted with their device; the join only keeps a
            // read from naming a device the devices table does not have.
            let mut all_devices = tx
                .prepare_cached(
                    "SELECT k.user_id, k.device_id, k.keys, d.display_name FROM device_keys k
                     JOIN devices d ON d.user_id = k.user_id AND d.device_id = k.device_id
                     WHERE k.user_id = ?1",
                )
                .map_err(backend)?;
            let mut one_device = tx
                .prepare_cached(
                    "SELECT k.user_id, k.device_id, k.keys, d.display_name FROM device_keys k
                     JOIN devices d ON d.user_id = k.user_id AND d.device_id = k.device_id
                     WHERE k.user_id = ?1 AND k.device_id = ?2",
                )
                .map_err(backend)?;
            let mut found = BTreeMap::new();
            for (user_id, device_ids) in &queries {
                let entries = if device_ids.is_empty() {
                    collect(all_devices.query_map([user_id], entry).map_err(backend)?)?
                } else {
                    let mut entries = Vec::new();
                    for device_id in device_ids {
                        entries.extend(one_device.query_row([user_id, device_id], entry).optional().map_err(backend)?);
                    }
                    entries
                };
                for e in entries {
                    found.insert((e.user_id.clone(), e.device_id.clone()), e);
                }
            }
            Ok(found.into_values().collect())
        })
        .await
    }

    async fn cross_signing_keys(&self, user_ids: &[String]) -> StoreResult<Vec<CrossSigningKey>> {
        let user_ids: BTreeSet<String> = user_ids.iter().cloned().collect();
        self.read_heavy(move |conn| {
            let tx = conn.unchecked_transaction().map_err(backend)?;
            let mut stmt = tx
                .prepare_cached("SELECT user_id, kind, public_key, key FROM cross_signing_keys WHERE user_id = ?1 ORDER BY kind")
                .map_err(backend)?;
            let mut keys = Vec::new();
            for user_id in &user_ids {
                let rows = stmt
                    .query_map([user_id], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?))
                    })
                    .map_err(backend)?;
                for (user_id, kind, public_key, key) in collect(rows)? {
                    let kind = CrossSigningKeyKind::parse(&kind)
                        .ok_or_else(|| StoreError::Backend(format!("unknown cross-signing key kind {kind:?}")))?;
                    keys.push(CrossSigningKey { user_id, kind, public_key, key });
                }
            }
            keys.sort_by_key(|k| (k.user_id.clone(), k.kind));
            Ok(keys)
        })
        .await
    }

    async fn key_signatures(&self, target_user_ids: &[String]) -> StoreResult<Vec<KeySignature>> {
        let user_ids: BTreeSet<String> = target_user_ids.iter().cloned().collect();
        self.read_heavy(move |conn| {
            let tx = conn.unchecked_transaction().map_err(backend)?;
            let mut stmt = tx
                .prepare_cached(&format!(
                    "SELECT {KEY_SIGNATURE_COLUMNS} FROM key_signatures
                     WHERE target_user_id = ?1 ORDER BY target_key_id, signer_user_id, signer_key_id"
                ))
                .map_err(backend)?;
            let mut signatures = Vec::new();
            for user_id in &user_ids {
                let found = stmt.query_map([user_id], |r| rows::key_signature(&SqliteRow(r))).map_err(backend)?;
                signatures.extend(collect(found)?);
            }
            Ok(signatures)
        })
        .await
    }

    async fn note_remote_device_list_change(&self, user_id: &str) -> StoreResult<()> {
        let user_id = user_id.to_owned();
        self.write(move |tx| move_device_list(tx, &user_id)).await
    }

    async fn set_cross_signing_keys(&self, user_id: &str, keys: &[CrossSigningKey]) -> StoreResult<()> {
        let (user_id, keys) = (user_id.to_owned(), keys.to_vec());
        if keys.iter().any(|k| k.user_id != user_id) {
            return Err(StoreError::Contract("cross-signing keys of another user"));
        }
        self.write(move |tx| {
            for key in &keys {
                let replaced: Option<String> = tx
                    .prepare_cached("SELECT public_key FROM cross_signing_keys WHERE user_id = ?1 AND kind = ?2")
                    .and_then(|mut s| s.query_row([&user_id, key.kind.as_str()], |r| r.get(0)).optional())
                    .map_err(backend)?;
                if let Some(old) = replaced.filter(|old| *old != key.public_key) {
                    tx.prepare_cached("DELETE FROM key_signatures WHERE target_user_id = ?1 AND target_key_id = ?2")
                        .and_then(|mut s| s.execute([&user_id, &old]))
                        .map_err(backend)?;
                    tx.prepare_cached("DELETE FROM key_signatures WHERE signer_user_id = ?1 AND signer_key_id = ?2")
                        .and_then(|mut s| s.execute([&user_id, &format!("ed25519:{old}")]))
                        .map_err(backend)?;
                }
                tx.prepare_cached(
                    "INSERT INTO cross_signing_keys (user_id, kind, public_key, key) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (user_id, kind) DO UPDATE SET public_key = excluded.public_key, key = excluded.key",
                )
                .and_then(|mut s| s.execute([&user_id, key.kind.as_str(), &key.public_key, &key.key]))
                .map_err(backend)?;
            }
            move_device_list(tx, &user_id)
        })
        .await
    }

    async fn add_key_signatures(&self, signatures: &[KeySignature]) -> StoreResult<()> {
        let signatures = signatures.to_vec();
        self.write(move |tx| {
            let mut targets = BTreeSet::new();
            for s in &signatures {
                tx.prepare_cached(
                    "INSERT INTO key_signatures (target_user_id, target_key_id, signer_user_id, signer_key_id, signature)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (target_user_id, target_key_id, signer_user_id, signer_key_id)
                     DO UPDATE SET signature = excluded.signature",
                )
                .and_then(|mut st| {
                    st.execute([&s.target_user_id, &s.target_key_id, &s.signer_user_id, &s.signer_key_id, &s.signature])
                })
                .map_err(backend)?;
                targets.insert(s.target_user_id.as_str());
            }
            for target in targets {
                move_device_list(tx, target)?;
            }
            Ok(())
        })
        .await
    }

    async fn claim_keys(&self, claims: &[KeyClaim]) -> StoreResult<Vec<ClaimedKey>> {
        let claims = claims.to_vec();
        self.write(move |tx| {
            let mut claimed = Vec::with_capacity(claims.len());
            for c in &claims {
                // The first unclaimed key, taken in one statement.
                let one_time: Option<(String, String)> = tx
                    .prepare_cached(
                        "DELETE FROM one_time_keys
                         WHERE user_id = ?1 AND device_id = ?2 AND algorithm = ?3
                           AND key_id = (SELECT key_id FROM one_time_keys
                                         WHERE user_id = ?1 AND device_id = ?2 AND algorithm = ?3
                                         ORDER BY key_id LIMIT 1)
                         RETURNING key_id, key",
                    )
                    .and_then(|mut s| {
                        s.query_row([&c.user_id, &c.device_id, &c.algorithm], |r| Ok((r.get(0)?, r.get(1)?))).optional()
                    })
                    .map_err(backend)?;
                let key = match one_time {
                    Some(taken) => Some(taken),
                    None => tx
                        .prepare_cached(
                            "UPDATE fallback_keys SET used = 1 WHERE user_id = ?1 AND device_id = ?2 AND algorithm = ?3
                             RETURNING key_id, key",
                        )
                        .and_then(|mut s| {
                            s.query_row([&c.user_id, &c.device_id, &c.algorithm], |r| Ok((r.get(0)?, r.get(1)?))).optional()
                        })
                        .map_err(backend)?,
                };
                if let Some((key_id, key)) = key {
                    claimed.push(ClaimedKey { user_id: c.user_id.clone(), device_id: c.device_id.clone(), key_id, key });
                }
            }
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
        let user_id = user_id.to_owned();
        // Grows with the changes in the ranges and the members of the
        // rooms the user joined or that became encrypted.
        self.read_heavy(move |conn| {
            // Three statements, one snapshot.
            let tx = conn.unchecked_transaction().map_err(backend)?;
            let mut changed: BTreeSet<String> = moved_lists(&tx, &user_id, device_lists)?.into_iter().collect();
            let mut left = BTreeSet::new();
            if let Some(events) = events {
                changed.extend(new_room_mates(&tx, &user_id, events)?);
                left = gone_room_mates(&tx, &user_id, events)?.into_iter().filter(|u| !changed.contains(u)).collect();
            }
            Ok(DeviceListUpdates { changed: changed.into_iter().collect(), left: left.into_iter().collect() })
        })
        .await
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
        let (sender, sender_device, txn_id, event_type) =
            (sender_user_id.to_owned(), sender_device_id.to_owned(), txn_id.to_owned(), event_type.to_owned());
        let messages = messages.to_vec();
        self.write(move |tx| {
            let seq: i64 = tx
                .prepare_cached(
                    "INSERT INTO to_device_txns (user_id, device_id, seq, txn_id)
                     VALUES (?1, ?2, (SELECT COALESCE(MAX(seq), 0) + 1 FROM to_device_txns WHERE user_id = ?1 AND device_id = ?2), ?3)
                     RETURNING seq",
                )
                .and_then(|mut s| s.query_row([&sender, &sender_device, &txn_id], |r| r.get(0)))
                .map_err(|e| if is_unique_violation(&e) { StoreError::TransactionIdUsed } else { backend(e) })?;
            // The device's oldest ids are forgotten (a retry comes soon).
            tx.prepare_cached("DELETE FROM to_device_txns WHERE user_id = ?1 AND device_id = ?2 AND seq <= ?3")
                .and_then(|mut s| s.execute(params![&sender, &sender_device, seq - MAX_TXNS]))
                .map_err(backend)?;
            let mut queued = ToDeviceQueued::default();
            // Positions follow the counter, which moves once per request.
            let first_pos: i64 = tx
                .prepare_cached("SELECT pos FROM to_device_position WHERE id = 0")
                .and_then(|mut s| s.query_row([], |r| r.get(0)))
                .map_err(backend)?;
            let mut last_pos = first_pos;
            // Messages in each inbox, and those from this sender, counted
            // once per request.
            let mut inboxes: HashMap<(String, String), (usize, usize)> = HashMap::new();
            for message in &messages {
                let devices = match &message.device_id {
                    None => device_ids_of(tx, &message.user_id, None)?,
                    Some(device_id) if device_exists(tx, &message.user_id, device_id)? => vec![device_id.clone()],
                    Some(_) => Vec::new(),
                };
                for device_id in devices {
                    let inbox = (message.user_id.clone(), device_id);
                    let held = match inboxes.entry(inbox.clone()) {
                        Entry::Occupied(held) => held.into_mut(),
                        Entry::Vacant(vacant) => {
                            let (all, from_sender): (i64, i64) = tx
                                .prepare_cached(
                                    "SELECT (SELECT COUNT(*) FROM to_device_messages WHERE user_id = ?1 AND device_id = ?2),
                                            (SELECT COUNT(*) FROM to_device_messages
                                             WHERE user_id = ?1 AND device_id = ?2 AND sender = ?3)",
                                )
                                .and_then(|mut s| s.query_row([&inbox.0, &inbox.1, &sender], |r| Ok((r.get(0)?, r.get(1)?))))
                                .map_err(backend)?;
                            let count = |n: i64| usize::try_from(n).unwrap_or(usize::MAX);
                            vacant.insert((count(all), count(from_sender)))
                        }
                    };
                    if held.0 >= max_inbox || held.1 as u64 >= MAX_FROM_ONE_SENDER {
                        queued.dropped_full += 1;
                        continue;
                    }
                    held.0 += 1;
                    held.1 += 1;
                    last_pos += 1;
                    let pos = last_pos;
                    tx.prepare_cached(
                        "INSERT INTO to_device_messages (stream_pos, user_id, device_id, sender, event_type, content)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    )
                    .and_then(|mut s| s.execute(params![pos, inbox.0, inbox.1, sender, event_type, message.content]))
                    .map_err(backend)?;
                    queued.queued += 1;
                }
            }
            if last_pos > first_pos {
                tx.prepare_cached("UPDATE to_device_position SET pos = ?1 WHERE id = 0")
                    .and_then(|mut s| s.execute([last_pos]))
                    .map_err(backend)?;
            }
            Ok(queued)
        })
        .await
    }

    async fn to_device_inbox(
        &self,
        user_id: &str,
        device_id: &str,
        after: u64,
        up_to: u64,
        limit: usize,
    ) -> StoreResult<ToDeviceInbox> {
        let (user_id, device_id) = (user_id.to_owned(), device_id.to_owned());
        self.read(move |conn| inbox_of(conn, &user_id, &device_id, after, up_to, limit)).await
    }

    async fn device_sync_state(
        &self,
        user_id: &str,
        device_id: &str,
        after: u64,
        up_to: u64,
        limit: usize,
    ) -> StoreResult<DeviceSyncState> {
        let (user_id, device_id) = (user_id.to_owned(), device_id.to_owned());
        self.read(move |conn| {
            let inbox = inbox_of(conn, &user_id, &device_id, after, up_to, limit)?;
            let (one_time_key_counts, unused_fallback_key_types) = key_counts_of(conn, &user_id, &device_id)?;
            Ok(DeviceSyncState { inbox, one_time_key_counts, unused_fallback_key_types })
        })
        .await
    }

    async fn delete_to_device(&self, user_id: &str, device_id: &str, up_to: u64) -> StoreResult<()> {
        let (user_id, device_id) = (user_id.to_owned(), device_id.to_owned());
        self.write(move |tx| {
            tx.prepare_cached("DELETE FROM to_device_messages WHERE user_id = ?1 AND device_id = ?2 AND stream_pos <= ?3")
                .and_then(|mut s| s.execute(params![user_id, device_id, i(up_to)]))
                .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn create_backup_version(
        &self,
        user_id: &str,
        algorithm: &str,
        auth_data: &str,
        limits: BackupLimits,
    ) -> StoreResult<String> {
        let (user_id, algorithm, auth_data) = (user_id.to_owned(), algorithm.to_owned(), auth_data.to_owned());
        self.write(move |tx| {
            let live: i64 = tx
                .prepare_cached("SELECT COUNT(*) FROM backup_versions WHERE user_id = ?1 AND deleted = 0")
                .and_then(|mut s| s.query_row([&user_id], |r| r.get(0)))
                .map_err(backend)?;
            if reaches_limit(live, limits.max_versions) {
                return Err(StoreError::TooManyBackupVersions);
            }
            // Deleted versions count too: a number is never handed out again.
            let version: i64 = tx
                .prepare_cached(
                    "INSERT INTO backup_versions (user_id, version, algorithm, auth_data)
                     VALUES (?1, (SELECT COALESCE(MAX(version), 0) + 1 FROM backup_versions WHERE user_id = ?1), ?2, ?3)
                     RETURNING version",
                )
                .and_then(|mut s| s.query_row([&user_id, &algorithm, &auth_data], |r| r.get(0)))
                .map_err(backend)?;
            drop_version_tombstones(tx, &user_id)?;
            Ok(version.to_string())
        })
        .await
    }

    async fn backup_version(&self, user_id: &str, version: Option<&str>) -> StoreResult<Option<BackupVersion>> {
        let (user_id, version) = (user_id.to_owned(), version.map(str::to_owned));
        self.read(move |conn| {
            let tx = conn.unchecked_transaction().map_err(backend)?;
            let number = match &version {
                None => current_version(&tx, &user_id)?,
                Some(version) => parse_version(version),
            };
            match number {
                Some(number) => read_version(&tx, &user_id, number),
                None => Ok(None),
            }
        })
        .await
    }

    async fn update_backup_version(&self, user_id: &str, version: &str, algorithm: &str, auth_data: &str) -> StoreResult<bool> {
        let (user_id, version, algorithm, auth_data) =
            (user_id.to_owned(), version.to_owned(), algorithm.to_owned(), auth_data.to_owned());
        self.write(move |tx| {
            let Some(number) = parse_version(&version) else { return Ok(false) };
            let Some(held) = read_version(tx, &user_id, number)? else { return Ok(false) };
            if held.algorithm != algorithm {
                return Err(StoreError::BackupAlgorithmMismatch);
            }
            tx.prepare_cached("UPDATE backup_versions SET auth_data = ?3 WHERE user_id = ?1 AND version = ?2")
                .and_then(|mut s| s.execute(params![user_id, number, auth_data]))
                .map_err(backend)?;
            Ok(true)
        })
        .await
    }

    async fn delete_backup_version(&self, user_id: &str, version: &str) -> StoreResult<bool> {
        let (user_id, version) = (user_id.to_owned(), version.to_owned());
        self.write(move |tx| {
            let Some(number) = existing_version(tx, &user_id, &version)? else { return Ok(false) };
            tx.prepare_cached("DELETE FROM backup_keys WHERE user_id = ?1 AND version = ?2")
                .and_then(|mut s| s.execute(params![user_id, number]))
                .map_err(backend)?;
            tx.prepare_cached("UPDATE backup_versions SET deleted = 1, key_count = 0 WHERE user_id = ?1 AND version = ?2")
                .and_then(|mut s| s.execute(params![user_id, number]))
                .map_err(backend)?;
            drop_version_tombstones(tx, &user_id)?;
            Ok(true)
        })
        .await
    }

    async fn put_backed_up_keys(
        &self,
        user_id: &str,
        version: &str,
        keys: &[BackedUpKey],
        limits: BackupLimits,
    ) -> StoreResult<BackupVersion> {
        let (user_id, version, keys) = (user_id.to_owned(), version.to_owned(), keys.to_vec());
        self.write(move |tx| {
            let current = current_version(tx, &user_id)?;
            let Some(number) = current.filter(|current| parse_version(&version) == Some(*current)) else {
                return Err(StoreError::WrongBackupVersion(current.map(|c| c.to_string())));
            };
            let held = read_version(tx, &user_id, number)?
                .ok_or_else(|| StoreError::Backend("the current backup version vanished".into()))?;
            let (mut count, mut changed) = (held.count, false);
            for key in &keys {
                let old = tx
                    .prepare_cached(&format!(
                        "SELECT {BACKED_UP_KEY_COLUMNS} FROM backup_keys
                         WHERE user_id = ?1 AND version = ?2 AND room_id = ?3 AND session_id = ?4"
                    ))
                    .and_then(|mut s| {
                        s.query_row(params![user_id, number, key.room_id, key.session_id], |r| rows::backed_up_key(&SqliteRow(r)))
                            .optional()
                    })
                    .map_err(backend)?;
                match old {
                    Some(old) if !backed_up_key_is_better(key, &old) => continue,
                    Some(_) => {}
                    None => {
                        count += 1;
                        if count > limits.max_keys {
                            return Err(StoreError::TooManyBackedUpKeys);
                        }
                    }
                }
                tx.prepare_cached(
                    "INSERT INTO backup_keys (user_id, version, room_id, session_id, first_message_index, forwarded_count,
                                              is_verified, session_data)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT (user_id, version, room_id, session_id) DO UPDATE SET
                         first_message_index = excluded.first_message_index, forwarded_count = excluded.forwarded_count,
                         is_verified = excluded.is_verified, session_data = excluded.session_data",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        user_id,
                        number,
                        key.room_id,
                        key.session_id,
                        i(key.first_message_index),
                        i(key.forwarded_count),
                        key.is_verified,
                        key.session_data
                    ])
                })
                .map_err(backend)?;
                changed = true;
            }
            if !changed {
                return Ok(held);
            }
            tx.prepare_cached("UPDATE backup_versions SET etag = etag + 1, key_count = ?3 WHERE user_id = ?1 AND version = ?2")
                .and_then(|mut s| s.execute(params![user_id, number, i(count)]))
                .map_err(backend)?;
            read_version(tx, &user_id, number)?.ok_or_else(|| StoreError::Backend("the current backup version vanished".into()))
        })
        .await
    }

    async fn backed_up_keys(
        &self,
        user_id: &str,
        version: &str,
        scope: BackupScope<'_>,
    ) -> StoreResult<Option<Vec<BackedUpKey>>> {
        let (user_id, version) = (user_id.to_owned(), version.to_owned());
        let (filter, room, session) = scope_filter(scope);
        let (room, session) = (room.map(str::to_owned), session.map(str::to_owned));
        // A whole version grows with the user's rooms (bounded by
        // `BackupLimits::max_keys`).
        self.read_heavy(move |conn| {
            let tx = conn.unchecked_transaction().map_err(backend)?;
            let Some(number) = existing_version(&tx, &user_id, &version)? else { return Ok(None) };
            let mut stmt = tx
                .prepare_cached(&format!(
                    "SELECT {BACKED_UP_KEY_COLUMNS} FROM backup_keys WHERE {filter} ORDER BY room_id, session_id"
                ))
                .map_err(backend)?;
            let found = stmt
                .query_map(params![user_id, number, room, session], |r| rows::backed_up_key(&SqliteRow(r)))
                .map_err(backend)?;
            collect(found).map(Some)
        })
        .await
    }

    async fn delete_backed_up_keys(
        &self,
        user_id: &str,
        version: &str,
        scope: BackupScope<'_>,
    ) -> StoreResult<Option<BackupVersion>> {
        let (user_id, version) = (user_id.to_owned(), version.to_owned());
        let (filter, room, session) = scope_filter(scope);
        let (room, session) = (room.map(str::to_owned), session.map(str::to_owned));
        self.write(move |tx| {
            let Some(number) = existing_version(tx, &user_id, &version)? else { return Ok(None) };
            let deleted = tx
                .prepare_cached(&format!("DELETE FROM backup_keys WHERE {filter}"))
                .and_then(|mut s| s.execute(params![user_id, number, room, session]))
                .map_err(backend)?;
            if deleted > 0 {
                tx.prepare_cached(
                    "UPDATE backup_versions SET etag = etag + 1, key_count = MAX(key_count - ?3, 0)
                     WHERE user_id = ?1 AND version = ?2",
                )
                .and_then(|mut s| s.execute(params![user_id, number, i(deleted as u64)]))
                .map_err(backend)?;
            }
            read_version(tx, &user_id, number)
        })
        .await
    }

    async fn put_dehydrated_device(
        &self,
        device: NewDevice,
        device_data: &str,
        keys: KeyUpload,
        limits: KeyLimits,
        max_devices: usize,
    ) -> StoreResult<()> {
        let device_data = device_data.to_owned();
        self.write(move |tx| {
            let user_id = device.user_id.as_str();
            let active: Option<Option<i64>> = tx
                .prepare_cached("SELECT deactivated_ts FROM accounts WHERE user_id = ?1")
                .and_then(|mut s| s.query_row([user_id], |r| r.get(0)).optional())
                .map_err(backend)?;
            if !matches!(active, Some(None)) {
                return Err(StoreError::AccountInactive);
            }
            let old: Option<String> = tx
                .prepare_cached("SELECT device_id FROM dehydrated_devices WHERE user_id = ?1")
                .and_then(|mut s| s.query_row([user_id], |r| r.get(0)).optional())
                .map_err(backend)?;
            if old.as_deref() != Some(device.device_id.as_str()) && device_exists(tx, user_id, &device.device_id)? {
                return Err(StoreError::DeviceIdTaken);
            }
            if let Some(old) = old {
                forget_devices(tx, user_id, &[old])?;
            }
            // Counted as `upsert_device` counts a new device.
            let count: i64 = tx
                .prepare_cached("SELECT COUNT(*) FROM devices WHERE user_id = ?1")
                .and_then(|mut s| s.query_row([user_id], |r| r.get(0)))
                .map_err(backend)?;
            if reaches_limit(count, max_devices) {
                return Err(StoreError::TooManyDevices);
            }
            insert_device(tx, &device)?;
            tx.prepare_cached("INSERT INTO dehydrated_devices (user_id, device_id, device_data) VALUES (?1, ?2, ?3)")
                .and_then(|mut s| s.execute([user_id, &device.device_id, &device_data]))
                .map_err(backend)?;
            store_keys(tx, user_id, &device.device_id, &keys, limits)?;
            // A new device is a change of the user's list even when it came
            // without device keys.
            move_device_list(tx, user_id)
        })
        .await
    }

    async fn dehydrated_device(&self, user_id: &str) -> StoreResult<Option<DehydratedDevice>> {
        let user_id = user_id.to_owned();
        self.read(move |conn| {
            conn.prepare_cached("SELECT device_id, device_data FROM dehydrated_devices WHERE user_id = ?1")
                .and_then(|mut s| {
                    s.query_row([&user_id], |r| Ok(DehydratedDevice { device_id: r.get(0)?, device_data: r.get(1)? })).optional()
                })
                .map_err(backend)
        })
        .await
    }

    async fn delete_dehydrated_device(&self, user_id: &str) -> StoreResult<Option<String>> {
        let user_id = user_id.to_owned();
        self.write(move |tx| {
            let found: Option<String> = tx
                .prepare_cached("SELECT device_id FROM dehydrated_devices WHERE user_id = ?1")
                .and_then(|mut s| s.query_row([&user_id], |r| r.get(0)).optional())
                .map_err(backend)?;
            if let Some(device_id) = &found {
                forget_devices(tx, &user_id, std::slice::from_ref(device_id))?;
            }
            Ok(found)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: KeyLimits = KeyLimits { max_one_time_keys: 3 };
    const BACKUPS: BackupLimits = BackupLimits { max_keys: 2, max_versions: 2 };

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("k.db"), 2).await.unwrap();
        (dir, store)
    }

    fn new_device(user: &str, id: &str) -> NewDevice {
        NewDevice {
            user_id: user.into(),
            device_id: id.into(),
            display_name: Some(format!("{id} name")),
            tokens: TokenPair { access_token_hash: format!("{user}/{id}"), access_expires_ts: None, refresh_token_hash: None },
            now_ts: 1,
        }
    }

    async fn user_with_devices(store: &SqliteStore, user: &str, devices: &[&str]) {
        let account = NewAccount { user_id: user.into(), password_hash: None, is_admin: false, created_ts: 1 };
        store.create_account(account, None, None, 1).await.unwrap();
        for id in devices {
            store.upsert_device(new_device(user, id), 10).await.unwrap();
        }
    }

    fn otk(id: &str, key: &str) -> OneTimeKey {
        OneTimeKey { key_id: format!("alg:{id}"), algorithm: "alg".into(), key: key.into() }
    }

    async fn list_pos(store: &SqliteStore) -> u64 {
        store.stream_positions().await.unwrap().device_lists
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keys_are_uploaded_claimed_and_forgotten_with_their_device() {
        let (_dir, store) = store().await;
        user_with_devices(&store, "@a:x", &["A", "B"]).await;
        let unknown = store.upload_keys("@a:x", "Z", KeyUpload::default(), LIMITS).await;
        assert!(matches!(unknown, Err(StoreError::UnknownDevice)), "{unknown:?}");

        let upload = KeyUpload {
            device_keys: Some("{\"k\":1}".into()),
            one_time_keys: vec![otk("2", "k2"), otk("1", "k1")],
            fallback_keys: vec![otk("f", "kf")],
        };
        let counts = store.upload_keys("@a:x", "A", upload.clone(), LIMITS).await.unwrap();
        assert_eq!(counts, BTreeMap::from([("alg".into(), 2)]));
        let moved = list_pos(&store).await;
        assert!(moved > 0);
        // The same upload again changes nothing, not even the stream.
        assert_eq!(store.upload_keys("@a:x", "A", upload, LIMITS).await.unwrap().get("alg"), Some(&2));
        assert_eq!(list_pos(&store).await, moved);
        let changed = KeyUpload { device_keys: Some("{\"k\":2}".into()), ..KeyUpload::default() };
        assert!(matches!(store.upload_keys("@a:x", "A", changed, LIMITS).await, Err(StoreError::DeviceKeysChanged)));
        let other = KeyUpload { one_time_keys: vec![otk("1", "other")], ..KeyUpload::default() };
        assert!(matches!(store.upload_keys("@a:x", "A", other, LIMITS).await, Err(StoreError::OneTimeKeyChanged)));
        let many = KeyUpload { one_time_keys: vec![otk("3", "k3"), otk("4", "k4")], ..KeyUpload::default() };
        assert!(matches!(store.upload_keys("@a:x", "A", many, LIMITS).await, Err(StoreError::TooManyOneTimeKeys)));
        assert_eq!(store.key_counts("@a:x", "A").await.unwrap(), (BTreeMap::from([("alg".into(), 2)]), vec!["alg".into()]));

        let claim = KeyClaim { user_id: "@a:x".into(), device_id: "A".into(), algorithm: "alg".into() };
        let claims = vec![claim.clone(), claim.clone(), claim.clone(), claim];
        let got: Vec<String> = store.claim_keys(&claims).await.unwrap().into_iter().map(|c| c.key).collect();
        assert_eq!(got, ["k1", "k2", "kf", "kf"], "one-time keys in id order, then the fallback key");
        assert_eq!(store.key_counts("@a:x", "A").await.unwrap(), (BTreeMap::new(), vec![]));

        let entries = store.device_keys(&[("@a:x".into(), vec![]), ("@a:x".into(), vec!["A".into(), "B".into()])]).await.unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!((entries[0].device_id.as_str(), entries[0].display_name.as_deref()), ("A", Some("A name")));

        // Deleting the device takes its keys with it and moves the list.
        store.delete_devices("@a:x", &["A".into(), "nope".into()]).await.unwrap();
        assert!(list_pos(&store).await > moved);
        assert!(store.device_keys(&[("@a:x".into(), vec![])]).await.unwrap().is_empty());
        store.upsert_device(new_device("@a:x", "A"), 10).await.unwrap();
        assert_eq!(store.key_counts("@a:x", "A").await.unwrap(), (BTreeMap::new(), vec![]));
        store.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn to_device_messages_are_queued_bounded_and_acknowledged() {
        let (_dir, store) = store().await;
        user_with_devices(&store, "@a:x", &["A"]).await;
        user_with_devices(&store, "@b:x", &["B1", "B2"]).await;
        let message = |user: &str, device: Option<&str>| ToDeviceMessage {
            user_id: user.into(),
            device_id: device.map(str::to_owned),
            content: "{}".into(),
        };
        let messages =
            [message("@b:x", None), message("@b:x", Some("B1")), message("@b:x", Some("gone")), message("@nobody:x", None)];
        let queued = store.send_to_device("@a:x", "A", "t1", "m.test", &messages, 2).await.unwrap();
        assert_eq!(queued, ToDeviceQueued { queued: 3, dropped_full: 0 });
        let again = store.send_to_device("@a:x", "A", "t1", "m.test", &messages, 2).await;
        assert!(matches!(again, Err(StoreError::TransactionIdUsed)), "{again:?}");
        let queued = store.send_to_device("@a:x", "A", "t2", "m.test", &messages, 2).await.unwrap();
        assert_eq!(queued, ToDeviceQueued { queued: 1, dropped_full: 2 }, "B1 holds two already");
        let top = store.stream_positions().await.unwrap().to_device;
        assert_eq!(top, 4);

        let inbox = store.to_device_inbox("@b:x", "B1", 0, top, 10).await.unwrap();
        // `*` queued 1 for B1 and 2 for B2, then B1 got 3.
        assert_eq!(inbox.messages.iter().map(|m| m.stream_pos).collect::<Vec<_>>(), [1, 3]);
        assert!(!inbox.acknowledged_waiting);
        let inbox = store.to_device_inbox("@b:x", "B1", 1, top, 10).await.unwrap();
        assert!(inbox.acknowledged_waiting);
        store.delete_to_device("@b:x", "B1", 3).await.unwrap();
        assert!(store.to_device_inbox("@b:x", "B1", 0, top, 10).await.unwrap().messages.is_empty());
        // Positions of deleted messages are not handed out again.
        store.send_to_device("@a:x", "A", "t3", "m.test", &[message("@b:x", Some("B1"))], 2).await.unwrap();
        assert_eq!(store.stream_positions().await.unwrap().to_device, 5);
        // A deleted device's transaction ids go with it.
        store.delete_all_devices("@a:x", None).await.unwrap();
        store.upsert_device(new_device("@a:x", "A"), 10).await.unwrap();
        store.send_to_device("@a:x", "A", "t1", "m.test", &[], 2).await.unwrap();
        store.close().await;
    }

    fn backed_up(session: &str, index: u64) -> BackedUpKey {
        BackedUpKey {
            room_id: "!r:x".into(),
            session_id: session.into(),
            first_message_index: index,
            forwarded_count: 0,
            is_verified: false,
            session_data: format!("{{\"i\":{index}}}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn backup_versions_are_numbered_once_and_hold_the_better_keys() {
        let (_dir, store) = store().await;
        user_with_devices(&store, "@a:x", &[]).await;
        assert_eq!(store.create_backup_version("@a:x", "alg", "{}", BACKUPS).await.unwrap(), "1");
        assert_eq!(store.create_backup_version("@a:x", "alg", "{}", BACKUPS).await.unwrap(), "2");
        let full = store.create_backup_version("@a:x", "alg", "{}", BACKUPS).await;
        assert!(matches!(full, Err(StoreError::TooManyBackupVersions)), "{full:?}");
        assert!(store.delete_backup_version("@a:x", "2").await.unwrap());
        assert!(!store.delete_backup_version("@a:x", "2").await.unwrap());
        assert_eq!(store.backup_version("@a:x", None).await.unwrap().unwrap().version, "1");
        assert_eq!(store.create_backup_version("@a:x", "alg", "{}", BACKUPS).await.unwrap(), "3");
        assert!(store.delete_backup_version("@a:x", "1").await.unwrap());
        assert!(store.delete_backup_version("@a:x", "3").await.unwrap());
        assert_eq!(store.backup_version("@a:x", None).await.unwrap(), None);
        assert_eq!(store.create_backup_version("@a:x", "alg", "{}", BACKUPS).await.unwrap(), "4");
        assert!(store.backup_version("@a:x", Some("04")).await.unwrap().is_none());

        assert!(matches!(
            store.update_backup_version("@a:x", "4", "other", "{}").await,
            Err(StoreError::BackupAlgorithmMismatch)
        ));
        assert!(store.update_backup_version("@a:x", "4", "alg", "{\"a\":1}").await.unwrap());
        assert!(!store.update_backup_version("@a:x", "3", "alg", "{}").await.unwrap());

        let wrong = store.put_backed_up_keys("@a:x", "3", &[backed_up("s", 5)], BACKUPS).await;
        assert!(matches!(&wrong, Err(StoreError::WrongBackupVersion(Some(v))) if v == "4"), "{wrong:?}");
        let v = store.put_backed_up_keys("@a:x", "4", &[backed_up("s", 5)], BACKUPS).await.unwrap();
        assert_eq!((v.count, v.etag.as_str(), v.auth_data.as_str()), (1, "1", "{\"a\":1}"));
        // A worse key changes nothing; a better one replaces it.
        let same = store.put_backed_up_keys("@a:x", "4", &[backed_up("s", 9)], BACKUPS).await.unwrap();
        assert_eq!(same, v);
        let v = store.put_backed_up_keys("@a:x", "4", &[backed_up("s", 1), backed_up("t", 1)], BACKUPS).await.unwrap();
        assert_eq!((v.count, v.etag.as_str()), (2, "2"));
        let full = store.put_backed_up_keys("@a:x", "4", &[backed_up("u", 1)], BACKUPS).await;
        assert!(matches!(full, Err(StoreError::TooManyBackedUpKeys)), "{full:?}");
        let keys = store.backed_up_keys("@a:x", "4", BackupScope::Room("!r:x")).await.unwrap().unwrap();
        assert_eq!(keys.iter().map(|k| (k.session_id.as_str(), k.first_message_index)).collect::<Vec<_>>(), [("s", 1), ("t", 1)]);
        let scope = BackupScope::Session { room_id: "!r:x", session_id: "s" };
        let v = store.delete_backed_up_keys("@a:x", "4", scope).await.unwrap().unwrap();
        assert_eq!((v.count, v.etag.as_str()), (1, "3"));
        assert_eq!(store.backed_up_keys("@a:x", "4", BackupScope::All).await.unwrap().unwrap().len(), 1);
        assert_eq!(store.backed_up_keys("@a:x", "1", BackupScope::All).await.unwrap(), None);

        store.deactivate_account("@a:x", 5).await.unwrap();
        assert_eq!(store.backup_version("@a:x", None).await.unwrap(), None);
        store.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dehydrated_device_replaces_the_previous_one() {
        let (_dir, store) = store().await;
        user_with_devices(&store, "@a:x", &["A"]).await;
        let upload = KeyUpload { device_keys: Some("{}".into()), one_time_keys: vec![otk("1", "k1")], ..KeyUpload::default() };
        let taken = store.put_dehydrated_device(new_device("@a:x", "A"), "{}", upload.clone(), LIMITS, 10).await;
        assert!(matches!(taken, Err(StoreError::DeviceIdTaken)), "{taken:?}");
        let full = store.put_dehydrated_device(new_device("@a:x", "D1"), "{}", upload.clone(), LIMITS, 1).await;
        assert!(matches!(full, Err(StoreError::TooManyDevices)), "{full:?}");
        store.put_dehydrated_device(new_device("@a:x", "D1"), "{\"n\":1}", upload.clone(), LIMITS, 2).await.unwrap();
        // The old one does not count against the limit: it is replaced.
        store.put_dehydrated_device(new_device("@a:x", "D2"), "{\"n\":2}", upload.clone(), LIMITS, 2).await.unwrap();
        assert_eq!(
            store.dehydrated_device("@a:x").await.unwrap(),
            Some(DehydratedDevice { device_id: "D2".into(), device_data: "{\"n\":2}".into() })
        );
        assert!(store.device("@a:x", "D1").await.unwrap().is_none());
        assert_eq!(store.key_counts("@a:x", "D2").await.unwrap().0.get("alg"), Some(&1));
        // The same id again replaces it too.
        store.put_dehydrated_device(new_device("@a:x", "D2"), "{\"n\":3}", upload, LIMITS, 2).await.unwrap();
        assert_eq!(store.delete_dehydrated_device("@a:x").await.unwrap().as_deref(), Some("D2"));
        assert!(store.device("@a:x", "D2").await.unwrap().is_none());
        assert_eq!(store.delete_dehydrated_device("@a:x").await.unwrap(), None);
        store.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cross_signing_keys_take_their_signatures_along() {
        let (_dir, store) = store().await;
        user_with_devices(&store, "@a:x", &["A"]).await;
        let key = |public: &str| CrossSigningKey {
            user_id: "@a:x".into(),
            kind: CrossSigningKeyKind::Master,
            public_key: public.into(),
            key: format!("{{\"k\":\"{public}\"}}"),
        };
        store.set_cross_signing_keys("@a:x", &[key("M1")]).await.unwrap();
        let signature = |target: &str, signer_user: &str, signer: &str| KeySignature {
            target_user_id: "@a:x".into(),
            target_key_id: target.into(),
            signer_user_id: signer_user.into(),
            signer_key_id: signer.into(),
            signature: "sig".into(),
        };
        let before = list_pos(&store).await;
        store.add_key_signatures(&[signature("M1", "@b:x", "ed25519:B"), signature("A", "@a:x", "ed25519:M1")]).await.unwrap();
        assert!(list_pos(&store).await > before);
        assert_eq!(store.key_signatures(&["@a:x".into()]).await.unwrap().len(), 2);
        // Replacing the master key drops the signature on it and the one it made.
        store.set_cross_signing_keys("@a:x", &[key("M2")]).await.unwrap();
        assert!(store.key_signatures(&["@a:x".into()]).await.unwrap().is_empty());
        assert_eq!(store.cross_signing_keys(&["@a:x".into(), "@b:x".into()]).await.unwrap(), [key("M2")]);
        store.deactivate_account("@a:x", 5).await.unwrap();
        assert!(store.cross_signing_keys(&["@a:x".into()]).await.unwrap().is_empty());
        store.close().await;
    }

    /// Sets a state row as `append_event` would, at `pos`.
    async fn state(store: &SqliteStore, room: &str, event_type: &str, key: &str, membership: Option<&str>, pos: i64) {
        let (room, event_type, key, membership) =
            (room.to_owned(), event_type.to_owned(), key.to_owned(), membership.map(str::to_owned));
        store
            .write(move |tx| {
                tx.execute(
                    "UPDATE room_state SET to_pos = ?4 WHERE room_id = ?1 AND event_type = ?2 AND state_key = ?3 AND to_pos IS NULL",
                    params![room, event_type, key, pos],
                )
                .map_err(backend)?;
                tx.execute(
                    "INSERT INTO room_state (room_id, event_type, state_key, event_id, membership, from_pos)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![room, event_type, key, format!("$e{pos}"), membership, pos],
                )
                .map_err(backend)?;
                Ok(())
            })
            .await
            .unwrap();
    }

    async fn member(store: &SqliteStore, room: &str, user: &str, membership: &str, pos: i64) {
        state(store, room, "m.room.member", user, Some(membership), pos).await;
    }

    async fn updates(store: &SqliteStore, me: &str, lists: (u64, u64), events: Option<(u64, u64)>) -> (Vec<String>, Vec<String>) {
        let got = store.device_list_updates(me, lists, events).await.unwrap();
        (got.changed, got.left)
    }

    fn names(users: &[&str]) -> Vec<String> {
        users.iter().map(|u| (*u).to_owned()).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn device_list_updates_follow_encrypted_rooms() {
        let (_dir, store) = store().await;
        for user in ["@me:x", "@b:x", "@c:x", "@d:x"] {
            user_with_devices(&store, user, &["D"]).await;
        }
        // !e is encrypted with me, b and c; !p is plain with me and d.
        member(&store, "!e", "@me:x", "join", 1).await;
        member(&store, "!e", "@b:x", "join", 2).await;
        state(&store, "!e", "m.room.encryption", "", None, 3).await;
        member(&store, "!e", "@c:x", "join", 4).await;
        member(&store, "!p", "@me:x", "join", 5).await;
        member(&store, "!p", "@d:x", "join", 6).await;

        // Device lists: b, d and me move.
        let base = list_pos(&store).await;
        for user in ["@b:x", "@d:x", "@me:x"] {
            store
                .upload_keys(user, "D", KeyUpload { device_keys: Some("{}".into()), ..KeyUpload::default() }, LIMITS)
                .await
                .unwrap();
        }
        let top = list_pos(&store).await;
        assert_eq!(updates(&store, "@me:x", (base, top), None).await, (names(&["@b:x", "@me:x"]), vec![]));
        assert_eq!(updates(&store, "@me:x", (top, top), None).await, (vec![], vec![]));

        // c joined in (3, 4]; the room became encrypted in (2, 3]: all
        // members (as they are now).
        assert_eq!(updates(&store, "@me:x", (top, top), Some((3, 4))).await, (names(&["@c:x"]), vec![]));
        assert_eq!(updates(&store, "@me:x", (top, top), Some((2, 3))).await, (names(&["@b:x", "@c:x"]), vec![]));
        // A display name change is not a join.
        member(&store, "!e", "@c:x", "join", 7).await;
        assert_eq!(updates(&store, "@me:x", (top, top), Some((6, 7))).await, (vec![], vec![]));
        // Nothing of the plain room counts.
        assert_eq!(updates(&store, "@me:x", (top, top), Some((4, 6))).await, (vec![], vec![]));

        // c leaves: left. b is kicked but shares another encrypted room.
        member(&store, "!e2", "@me:x", "join", 8).await;
        member(&store, "!e2", "@b:x", "join", 9).await;
        state(&store, "!e2", "m.room.encryption", "", None, 10).await;
        member(&store, "!e", "@c:x", "leave", 11).await;
        member(&store, "!e", "@b:x", "leave", 12).await;
        assert_eq!(updates(&store, "@me:x", (top, top), Some((10, 12))).await, (vec![], names(&["@c:x"])));

        // me leaves !e2: b shares nothing any more. me joins !e again with c back in it first.
        member(&store, "!e", "@c:x", "join", 13).await;
        member(&store, "!e", "@me:x", "leave", 14).await;
        member(&store, "!e2", "@me:x", "leave", 15).await;
        assert_eq!(updates(&store, "@me:x", (top, top), Some((13, 15))).await, (vec![], names(&["@b:x", "@c:x"])));
        member(&store, "!e", "@me:x", "join", 16).await;
        assert_eq!(updates(&store, "@me:x", (top, top), Some((15, 16))).await, (names(&["@c:x"]), vec![]));
        // c, gone with me's leave and back with me's join, is only changed.
        assert_eq!(updates(&store, "@me:x", (top, top), Some((12, 16))).await, (names(&["@c:x"]), names(&["@b:x"])));
        store.close().await;
    }
}
