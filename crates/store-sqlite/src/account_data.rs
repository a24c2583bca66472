//! `AccountDataStore` and `ReceiptStore` on SQLite.
//!
//! Writes run on the single writer connection in one IMMEDIATE
//! transaction, so the limit checks (the user's entries and bytes), the
//! read-modify-write of `m.tag` and the position (`MAX(stream_pos) + 1` of
//! the table) cannot be overtaken by another writer, and positions become
//! visible in order.

use async_trait::async_trait;
use chancery_store::*;
use rusqlite::{OptionalExtension, Row, Transaction, params};
use serde_json::Value as JsonValue;

use chancery_store_sql::params::{passes_total_limit, reaches_limit};
use chancery_store_sql::rows::{self, ACCOUNT_DATA_ENTRY_BYTES};
use chancery_store_sql::{i, u};

use crate::rooms::collect;
use crate::row::SqliteRow;
use crate::{SqliteStore, backend};

/// Writes one account-data entry at the next position, checking the
/// user's limits first.
fn put_entry(
    tx: &Transaction<'_>,
    user_id: &str,
    room_key: &str,
    event_type: &str,
    content: &str,
    limits: AccountDataLimits,
) -> StoreResult<u64> {
    if content.len() > limits.max_content_bytes {
        return Err(StoreError::AccountDataTooLarge);
    }
    let replaced: Option<i64> = tx
        .prepare_cached(&format!(
            "SELECT {ACCOUNT_DATA_ENTRY_BYTES} FROM account_data WHERE user_id = ?1 AND room_id = ?2 AND event_type = ?3"
        ))
        .and_then(|mut s| s.query_row([user_id, room_key, event_type], |r| r.get(0)).optional())
        .map_err(backend)?;
    if replaced.is_none() {
        let count: i64 = tx
            .prepare_cached("SELECT COUNT(*) FROM account_data WHERE user_id = ?1")
            .and_then(|mut s| s.query_row([user_id], |r| r.get(0)))
            .map_err(backend)?;
        if reaches_limit(count, limits.max_entries) {
            return Err(StoreError::TooManyAccountData);
        }
    }
    let (replaced, new) = (replaced.unwrap_or(0), account_data_entry_bytes(Some(room_key), event_type, content));
    // Summing the user's entries is a scan of them, on the one writer: only
    // for a write that grows them (a fully-read marker moving on does not).
    if i64::try_from(new).unwrap_or(i64::MAX) > replaced {
        let total: i64 = tx
            .prepare_cached(&format!("SELECT COALESCE(SUM({ACCOUNT_DATA_ENTRY_BYTES}), 0) FROM account_data WHERE user_id = ?1"))
            .and_then(|mut s| s.query_row([user_id], |r| r.get(0)))
            .map_err(backend)?;
        if passes_total_limit(total, replaced, new, limits.max_total_bytes) {
            return Err(StoreError::AccountDataTotalTooLarge);
        }
    }
    let pos: i64 = tx
        .prepare_cached("SELECT COALESCE(MAX(stream_pos), 0) + 1 FROM account_data")
        .and_then(|mut s| s.query_row([], |r| r.get(0)))
        .map_err(backend)?;
    tx.prepare_cached(
        "INSERT INTO account_data (user_id, room_id, event_type, content, stream_pos) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (user_id, room_id, event_type) DO UPDATE SET content = excluded.content, stream_pos = excluded.stream_pos",
    )
    .and_then(|mut s| s.execute(params![user_id, room_key, event_type, content, pos]))
    .map_err(backend)?;
    Ok(u(pos))
}

fn entry_from_row(row: &Row<'_>) -> rusqlite::Result<AccountDataEntry> {
    rows::account_data_entry(&SqliteRow(row))
}

#[async_trait]
impl AccountDataStore for SqliteStore {
    async fn set_account_data(
        &self,
        user_id: &str,
        room_id: Option<&str>,
        event_type: &str,
        content: &str,
        limits: AccountDataLimits,
    ) -> StoreResult<u64> {
        let (user_id, room_key, event_type, content) =
            (user_id.to_owned(), room_id.unwrap_or("").to_owned(), event_type.to_owned(), content.to_owned());
        self.write(move |tx| put_entry(tx, &user_id, &room_key, &event_type, &content, limits)).await
    }

    async fn set_room_tag(
        &self,
        user_id: &str,
        room_id: &str,
        tag: &str,
        info: Option<&JsonValue>,
        limits: AccountDataLimits,
    ) -> StoreResult<Option<u64>> {
        let (user_id, room_id, tag, info) = (user_id.to_owned(), room_id.to_owned(), tag.to_owned(), info.cloned());
        self.write(move |tx| {
            let current: Option<String> = tx
                .prepare_cached("SELECT content FROM account_data WHERE user_id = ?1 AND room_id = ?2 AND event_type = ?3")
                .and_then(|mut s| s.query_row([&user_id, &room_id, TAG_EVENT_TYPE], |r| r.get(0)).optional())
                .map_err(backend)?;
            let Some(content) = apply_tag_change(current.as_deref(), &tag, info.as_ref())? else { return Ok(None) };
            put_entry(tx, &user_id, &room_id, TAG_EVENT_TYPE, &content, limits).map(Some)
        })
        .await
    }

    async fn account_data(&self, user_id: &str, room_id: Option<&str>, event_type: &str) -> StoreResult<Option<String>> {
        let (user_id, room_key, event_type) = (user_id.to_owned(), room_id.unwrap_or("").to_owned(), event_type.to_owned());
        self.read(move |conn| {
            conn.prepare_cached("SELECT content FROM account_data WHERE user_id = ?1 AND room_id = ?2 AND event_type = ?3")
                .and_then(|mut s| s.query_row([&user_id, &room_key, &event_type], |r| r.get(0)).optional())
                .map_err(backend)
        })
        .await
    }

    async fn account_data_changes(
        &self,
        user_id: &str,
        after: u64,
        up_to: u64,
        batch: AccountDataBatchLimits,
    ) -> StoreResult<Vec<AccountDataEntry>> {
        let user_id = user_id.to_owned();
        self.read_heavy(move |conn| {
            // The bytes of the entries before each one, in position order: an
            // entry is read while those came to less than the batch's bytes.
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT room_id, event_type, content, stream_pos FROM (
                         SELECT room_id, event_type, content, stream_pos,
                                SUM({ACCOUNT_DATA_ENTRY_BYTES}) OVER (ORDER BY stream_pos) - {ACCOUNT_DATA_ENTRY_BYTES} AS bytes_before
                         FROM account_data
                         WHERE user_id = ?1 AND stream_pos > ?2 AND stream_pos <= ?3
                     )
                     WHERE bytes_before < ?4
                     ORDER BY stream_pos
                     LIMIT ?5"
                ))
                .map_err(backend)?;
            let params = params![user_id, i(after), i(up_to), i(batch.max_bytes as u64), i(batch.max_entries as u64)];
            collect(stmt.query_map(params, entry_from_row).map_err(backend)?)
        })
        .await
    }

    async fn current_account_data_pos(&self) -> StoreResult<u64> {
        self.committed_pos("SELECT COALESCE(MAX(stream_pos), 0) FROM account_data").await
    }
}

fn receipt_from_row(row: &Row<'_>) -> rusqlite::Result<Receipt> {
    rows::receipt(&SqliteRow(row))
}

#[async_trait]
impl ReceiptStore for SqliteStore {
    async fn set_receipt(&self, receipt: NewReceipt, max_threads: usize) -> StoreResult<u64> {
        self.write(move |tx| {
            let thread_key = receipt.thread_id.as_deref().unwrap_or("");
            let exists = tx
                .prepare_cached(
                    "SELECT 1 FROM receipts WHERE room_id = ?1 AND user_id = ?2 AND receipt_type = ?3 AND thread_id = ?4",
                )
                .and_then(|mut s| {
                    s.query_row([&receipt.room_id, &receipt.user_id, &receipt.receipt_type, thread_key], |_| Ok(())).optional()
                })
                .map_err(backend)?
                .is_some();
            if !exists {
                let count: i64 = tx
                    .prepare_cached("SELECT COUNT(*) FROM receipts WHERE room_id = ?1 AND user_id = ?2 AND receipt_type = ?3")
                    .and_then(|mut s| s.query_row([&receipt.room_id, &receipt.user_id, &receipt.receipt_type], |r| r.get(0)))
                    .map_err(backend)?;
                if reaches_limit(count, max_threads) {
                    return Err(StoreError::TooManyReceiptThreads);
                }
            }
            let pos: i64 = tx
                .prepare_cached("SELECT COALESCE(MAX(stream_pos), 0) + 1 FROM receipts")
                .and_then(|mut s| s.query_row([], |r| r.get(0)))
                .map_err(backend)?;
            tx.prepare_cached(
                "INSERT INTO receipts (room_id, user_id, receipt_type, thread_id, event_id, ts, stream_pos)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (room_id, user_id, receipt_type, thread_id)
                 DO UPDATE SET event_id = excluded.event_id, ts = excluded.ts, stream_pos = excluded.stream_pos",
            )
            .and_then(|mut s| {
                s.execute(params![
                    receipt.room_id,
                    receipt.user_id,
                    receipt.receipt_type,
                    thread_key,
                    receipt.event_id,
                    i(receipt.ts),
                    pos
                ])
            })
            .map_err(backend)?;
            Ok(u(pos))
        })
        .await
    }

    async fn room_receipts(&self, room_id: &str, after: u64, up_to: u64) -> StoreResult<Vec<Receipt>> {
        let room_id = room_id.to_owned();
        self.read_heavy(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT room_id, user_id, receipt_type, thread_id, event_id, ts, stream_pos FROM receipts
                     WHERE room_id = ?1 AND stream_pos > ?2 AND stream_pos <= ?3
                     ORDER BY stream_pos",
                )
                .map_err(backend)?;
            collect(stmt.query_map(params![room_id, i(after), i(up_to)], receipt_from_row).map_err(backend)?)
        })
        .await
    }

    async fn current_receipt_pos(&self) -> StoreResult<u64> {
        self.committed_pos("SELECT COALESCE(MAX(stream_pos), 0) FROM receipts").await
    }
}
