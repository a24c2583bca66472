//! `AccountDataStore` and `ReceiptStore` on PostgreSQL.
//!
//! Each write is one READ COMMITTED transaction in two phases, like an
//! event append (see `rooms.rs`):
//!
//! 1. Take a per-user advisory lock (two-key form, so it never collides
//!    with the one-key stream locks) and do the checks that must hold under
//!    concurrency from any node: the user's entry and byte limits, and the
//!    read-modify-write of `m.tag`, so two tag changes of one room both
//!    survive.
//! 2. Take the stream's advisory lock, increment its counter row in
//!    `stream_counters` and write the row at that position, then COMMIT,
//!    which releases the lock after the commit is visible. Positions
//!    therefore commit in order on every node and the counter is the
//!    "everything at or below is visible" watermark. Phase 2's two
//!    statements are pipelined (one round trip) to keep the window in which
//!    writers of the stream go one at a time short.

use async_trait::async_trait;
use chancery_store::*;
use chancery_store_sql::params::{passes_total_limit, reaches_limit};
use chancery_store_sql::rows::{self, ACCOUNT_DATA_ENTRY_BYTES};
use chancery_store_sql::{i, u};
use deadpool_postgres::GenericClient;
use serde_json::Value as JsonValue;
use tokio_postgres::Row;

use crate::query::{PgRow, get, query, query_opt};
use crate::{PostgresStore, backend};

/// Advisory-lock key held from allocating an account-data position until
/// commit ("chanacct" in ASCII).
const ACCOUNT_DATA_STREAM_LOCK: i64 = 0x6368_616e_6163_6374;
/// Advisory-lock key held from allocating a receipt position until commit
/// ("chanrcpt" in ASCII).
const RECEIPT_STREAM_LOCK: i64 = 0x6368_616e_7263_7074;
/// First key of the two-key per-user locks ("acct", "rcpt"); the second is
/// a hash of the user id. A hash collision only makes two users wait for
/// each other.
const ACCOUNT_DATA_USER_LOCK: i32 = 0x6163_6374;
const RECEIPT_USER_LOCK: i32 = 0x7263_7074;

async fn lock_user(tx: &impl GenericClient, class: i32, user_id: &str) -> StoreResult<()> {
    let stmt = tx.prepare_cached("SELECT pg_advisory_xact_lock($1, hashtext($2))").await.map_err(backend)?;
    tx.execute(&stmt, &[&class, &user_id]).await.map_err(backend)?;
    Ok(())
}

/// Phase 2: takes `lock`, then runs `insert` (which allocates the position
/// from `stream_counters` and returns it), pipelined.
async fn allocate_and_write(
    tx: &deadpool_postgres::Transaction<'_>,
    lock: i64,
    insert: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> StoreResult<u64> {
    // Prepared before the lock, so no round trip for it inside the window.
    let lock_stmt = tx.prepare_cached("SELECT pg_advisory_xact_lock($1)").await.map_err(backend)?;
    let insert_stmt = tx.prepare_cached(insert).await.map_err(backend)?;
    let (locked, inserted) = tokio::join!(
        biased;
        async { tx.execute(&lock_stmt, &[&lock]).await },
        async { tx.query_one(&insert_stmt, params).await },
    );
    locked.map_err(backend)?;
    let pos = u(get(&inserted.map_err(backend)?, 0)?);
    crate::notify::notify_in(tx).await?;
    Ok(pos)
}

const UPSERT_ENTRY: &str = "WITH p AS (UPDATE stream_counters SET pos = pos + 1 WHERE stream = 'account_data' RETURNING pos)
     INSERT INTO account_data (user_id, room_id, event_type, content, stream_pos)
     SELECT $1::text, $2::text, $3::text, $4::text, p.pos FROM p
     ON CONFLICT (user_id, room_id, event_type) DO UPDATE SET content = EXCLUDED.content, stream_pos = EXCLUDED.stream_pos
     RETURNING stream_pos";

/// Phase 1's limit checks for an entry about to be written; the per-user
/// lock is held, so no other write of the user's can pass them at once.
async fn check_limits(
    tx: &impl GenericClient,
    user_id: &str,
    room_key: &str,
    event_type: &str,
    content: &str,
    limits: AccountDataLimits,
) -> StoreResult<()> {
    if content.len() > limits.max_content_bytes {
        return Err(StoreError::AccountDataTooLarge);
    }
    let replaced = query_opt(
        tx,
        &format!(
            "SELECT {ACCOUNT_DATA_ENTRY_BYTES}::bigint FROM account_data WHERE user_id = $1 AND room_id = $2 AND event_type = $3"
        ),
        &[&user_id, &room_key, &event_type],
    )
    .await?
    .map(|r| get::<i64>(&r, 0))
    .transpose()?;
    if replaced.is_none() {
        let row = query_opt(tx, "SELECT COUNT(*) FROM account_data WHERE user_id = $1", &[&user_id])
            .await?
            .ok_or_else(|| StoreError::Backend("aggregate returned no row".into()))?;
        if reaches_limit(get(&row, 0)?, limits.max_entries) {
            return Err(StoreError::TooManyAccountData);
        }
    }
    let (replaced, new) = (replaced.unwrap_or(0), account_data_entry_bytes(Some(room_key), event_type, content));
    // Summing the user's entries is a scan of them: only for a write that
    // grows them (a fully-read marker moving on does not).
    if i64::try_from(new).unwrap_or(i64::MAX) > replaced {
        let row = query_opt(
            tx,
            &format!("SELECT COALESCE(SUM({ACCOUNT_DATA_ENTRY_BYTES}), 0)::bigint FROM account_data WHERE user_id = $1"),
            &[&user_id],
        )
        .await?
        .ok_or_else(|| StoreError::Backend("aggregate returned no row".into()))?;
        if passes_total_limit(get(&row, 0)?, replaced, new, limits.max_total_bytes) {
            return Err(StoreError::AccountDataTotalTooLarge);
        }
    }
    Ok(())
}

fn entry_from_row(row: &Row) -> StoreResult<AccountDataEntry> {
    rows::account_data_entry(&PgRow(row))
}

async fn counter(c: &impl GenericClient, stream: &str) -> StoreResult<u64> {
    let row = query_opt(c, "SELECT pos FROM stream_counters WHERE stream = $1", &[&stream]).await?;
    Ok(row.map(|r| get::<i64>(&r, 0)).transpose()?.map(u).unwrap_or(0))
}

#[async_trait]
impl AccountDataStore for PostgresStore {
    async fn set_account_data(
        &self,
        user_id: &str,
        room_id: Option<&str>,
        event_type: &str,
        content: &str,
        limits: AccountDataLimits,
    ) -> StoreResult<u64> {
        let room_key = room_id.unwrap_or("");
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        lock_user(&tx, ACCOUNT_DATA_USER_LOCK, user_id).await?;
        check_limits(&tx, user_id, room_key, event_type, content, limits).await?;
        let pos = allocate_and_write(&tx, ACCOUNT_DATA_STREAM_LOCK, UPSERT_ENTRY, &[&user_id, &room_key, &event_type, &content])
            .await?;
        tx.commit().await.map_err(backend)?;
        Ok(pos)
    }

    async fn set_room_tag(
        &self,
        user_id: &str,
        room_id: &str,
        tag: &str,
        info: Option<&JsonValue>,
        limits: AccountDataLimits,
    ) -> StoreResult<Option<u64>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        lock_user(&tx, ACCOUNT_DATA_USER_LOCK, user_id).await?;
        let current = query_opt(
            &tx,
            "SELECT content FROM account_data WHERE user_id = $1 AND room_id = $2 AND event_type = $3",
            &[&user_id, &room_id, &TAG_EVENT_TYPE],
        )
        .await?
        .map(|r| get::<String>(&r, 0))
        .transpose()?;
        let Some(content) = apply_tag_change(current.as_deref(), tag, info)? else { return Ok(None) };
        check_limits(&tx, user_id, room_id, TAG_EVENT_TYPE, &content, limits).await?;
        let pos =
            allocate_and_write(&tx, ACCOUNT_DATA_STREAM_LOCK, UPSERT_ENTRY, &[&user_id, &room_id, &TAG_EVENT_TYPE, &content])
                .await?;
        tx.commit().await.map_err(backend)?;
        Ok(Some(pos))
    }

    async fn account_data(&self, user_id: &str, room_id: Option<&str>, event_type: &str) -> StoreResult<Option<String>> {
        let client = self.client().await?;
        let row = query_opt(
            &client,
            "SELECT content FROM account_data WHERE user_id = $1 AND room_id = $2 AND event_type = $3",
            &[&user_id, &room_id.unwrap_or(""), &event_type],
        )
        .await?;
        row.map(|r| get(&r, 0)).transpose()
    }

    async fn account_data_changes(
        &self,
        user_id: &str,
        after: u64,
        up_to: u64,
        batch: AccountDataBatchLimits,
    ) -> StoreResult<Vec<AccountDataEntry>> {
        let (_heavy, client) = self.heavy_client().await?;
        // The bytes of the entries before each one, in position order: an
        // entry is read while those came to less than the batch's bytes.
        let rows = query(
            &client,
            &format!(
                "SELECT room_id, event_type, content, stream_pos FROM (
                     SELECT room_id, event_type, content, stream_pos,
                            SUM({ACCOUNT_DATA_ENTRY_BYTES}) OVER (ORDER BY stream_pos) - {ACCOUNT_DATA_ENTRY_BYTES} AS bytes_before
                     FROM account_data
                     WHERE user_id = $1 AND stream_pos > $2 AND stream_pos <= $3
                 ) AS changes
                 WHERE bytes_before < $4
                 ORDER BY stream_pos
                 LIMIT $5"
            ),
            &[&user_id, &i(after), &i(up_to), &i(batch.max_bytes as u64), &i(batch.max_entries as u64)],
        )
        .await?;
        rows.iter().map(entry_from_row).collect()
    }

    async fn current_account_data_pos(&self) -> StoreResult<u64> {
        counter(&self.client().await?, "account_data").await
    }
}

fn receipt_from_row(row: &Row) -> StoreResult<Receipt> {
    rows::receipt(&PgRow(row))
}

#[async_trait]
impl ReceiptStore for PostgresStore {
    async fn set_receipt(&self, receipt: NewReceipt, max_threads: usize) -> StoreResult<u64> {
        let thread_key = receipt.thread_id.as_deref().unwrap_or("");
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        lock_user(&tx, RECEIPT_USER_LOCK, &receipt.user_id).await?;
        let exists = query_opt(
            &tx,
            "SELECT 1 FROM receipts WHERE room_id = $1 AND user_id = $2 AND receipt_type = $3 AND thread_id = $4",
            &[&receipt.room_id, &receipt.user_id, &receipt.receipt_type, &thread_key],
        )
        .await?
        .is_some();
        if !exists {
            let row = query_opt(
                &tx,
                "SELECT COUNT(*) FROM receipts WHERE room_id = $1 AND user_id = $2 AND receipt_type = $3",
                &[&receipt.room_id, &receipt.user_id, &receipt.receipt_type],
            )
            .await?
            .ok_or_else(|| StoreError::Backend("aggregate returned no row".into()))?;
            if reaches_limit(get(&row, 0)?, max_threads) {
                return Err(StoreError::TooManyReceiptThreads);
            }
        }
        let pos = allocate_and_write(
            &tx,
            RECEIPT_STREAM_LOCK,
            "WITH p AS (UPDATE stream_counters SET pos = pos + 1 WHERE stream = 'receipts' RETURNING pos)
             INSERT INTO receipts (room_id, user_id, receipt_type, thread_id, event_id, ts, stream_pos)
             SELECT $1::text, $2::text, $3::text, $4::text, $5::text, $6::bigint, p.pos FROM p
             ON CONFLICT (room_id, user_id, receipt_type, thread_id)
             DO UPDATE SET event_id = EXCLUDED.event_id, ts = EXCLUDED.ts, stream_pos = EXCLUDED.stream_pos
             RETURNING stream_pos",
            &[&receipt.room_id, &receipt.user_id, &receipt.receipt_type, &thread_key, &receipt.event_id, &i(receipt.ts)],
        )
        .await?;
        tx.commit().await.map_err(backend)?;
        Ok(pos)
    }

    async fn room_receipts(&self, room_id: &str, after: u64, up_to: u64) -> StoreResult<Vec<Receipt>> {
        let (_heavy, client) = self.heavy_client().await?;
        let rows = query(
            &client,
            "SELECT room_id, user_id, receipt_type, thread_id, event_id, ts, stream_pos FROM receipts
             WHERE room_id = $1 AND stream_pos > $2 AND stream_pos <= $3
             ORDER BY stream_pos",
            &[&room_id, &i(after), &i(up_to)],
        )
        .await?;
        rows.iter().map(receipt_from_row).collect()
    }

    async fn current_receipt_pos(&self) -> StoreResult<u64> {
        counter(&self.client().await?, "receipts").await
    }
}
