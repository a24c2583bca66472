//! Schema migrations at start-up, under an advisory lock so nodes started
//! together apply each migration once instead of racing on DDL.
//!
//! Migration numbers are shared with SQLite (`chancery_store_sql::migrations`).
//! Binaries before that numbered PostgreSQL's migrations on their own,
//! without SQLite's 0009 (`0009_report_ids.sql` is a no-op here), so their
//! 9 and 10 are our 10 and 11; [`renumbered`] finds such a database and
//! moves its stored version to the shared numbering.

use chancery_store::StoreResult;
use chancery_store_sql::migrations::pending_migrations;

use crate::backend;

/// Migrations in order; the schema version is the number applied.
const MIGRATIONS: &[&str] = &chancery_store_sql::migration_sql!();

/// The schema version this binary brings databases to.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Advisory-lock key held while migrating ("chancery" in ASCII).
const MIGRATION_LOCK: i64 = 0x6368_616e_6365_7279;

/// What a database at an ambiguous version 9 or 10 shows of the two
/// migrations whose numbers moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RenumberedMigrations {
    /// `0010_push_rule_owners` ran: its index exists.
    push_rule_owners: bool,
    /// `0011_notifications_by_position` ran: `notifications` has `stream_pos`.
    notifications_by_position: bool,
}

/// The version, in the shared numbering, of a database that stores
/// `stored`. Versions up to 8 mean the same in both numberings, and the old
/// one never went past 10. At 9 or 10 the schema tells them apart: by the
/// shared numbering, 9 has neither moved migration and 10 only the first;
/// by the old one, 9 has the first and 10 both.
fn renumbered(stored: i64, applied: RenumberedMigrations) -> i64 {
    if !matches!(stored, 9 | 10) {
        return stored;
    }
    if applied.notifications_by_position {
        11
    } else if applied.push_rule_owners {
        10
    } else {
        stored
    }
}

/// Creates or updates the schema in one transaction.
pub(crate) async fn migrate(client: &mut deadpool_postgres::Client) -> StoreResult<()> {
    let tx = client.transaction().await.map_err(backend)?;
    // Migrations of a big database, and waiting for another node's, take
    // as long as they take.
    tx.batch_execute("SET LOCAL statement_timeout = 0").await.map_err(backend)?;
    // Taken before anything else, so even the schema_version table is
    // created by one node only; released by COMMIT/ROLLBACK.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(backend)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)").await.map_err(backend)?;
    let stored: i64 = tx.query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[]).await.map_err(backend)?.get(0);
    let current = renumbered(stored, probe(&tx).await?);
    if current != stored {
        store_version(&tx, current).await?;
        tracing::info!(stored, current, "renumbered the PostgreSQL schema version to the migration numbers SQLite shares");
    }
    for index in pending_migrations(current, MIGRATIONS.len())? {
        let version = index as i64 + 1;
        tx.batch_execute(MIGRATIONS[index]).await.map_err(backend)?;
        store_version(&tx, version).await?;
        tracing::info!(version, "applied PostgreSQL migration");
    }
    tx.commit().await.map_err(backend)
}

async fn store_version(tx: &deadpool_postgres::Transaction<'_>, version: i64) -> StoreResult<()> {
    tx.execute("DELETE FROM schema_version", &[]).await.map_err(backend)?;
    tx.execute("INSERT INTO schema_version (version) VALUES ($1)", &[&version]).await.map_err(backend)?;
    Ok(())
}

/// Reads which of the renumbered migrations ran. Both markers are looked
/// up the way the migrations' own statements find their objects (through
/// `search_path`), so a schema elsewhere on the path is judged as a whole.
async fn probe(tx: &deadpool_postgres::Transaction<'_>) -> StoreResult<RenumberedMigrations> {
    let row = tx
        .query_one(
            "SELECT to_regclass('account_data_push_rules') IS NOT NULL,
                    EXISTS (SELECT 1 FROM pg_attribute
                            WHERE attrelid = to_regclass('notifications') AND attname = 'stream_pos'
                              AND NOT attisdropped)",
            &[],
        )
        .await
        .map_err(backend)?;
    Ok(RenumberedMigrations {
        push_rule_owners: row.try_get(0).map_err(backend)?,
        notifications_by_position: row.try_get(1).map_err(backend)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_numbers_move_to_the_shared_ones() {
        let schema =
            |push_rule_owners, notifications_by_position| RenumberedMigrations { push_rule_owners, notifications_by_position };
        // (stored, what the schema shows, version in the shared numbering)
        let cases = [
            // Unambiguous: the same in both numberings.
            (0, schema(false, false), 0),
            (8, schema(false, false), 8),
            (11, schema(true, true), 11),
            // Written by this numbering: 9 has run the no-op 0009, 10 also 0010.
            (9, schema(false, false), 9),
            (10, schema(true, false), 10),
            // Written by the old numbering: its 9 was 0010, its 10 was 0011.
            (9, schema(true, false), 10),
            (10, schema(true, true), 11),
        ];
        for (stored, applied, expected) in cases {
            assert_eq!(renumbered(stored, applied), expected, "stored {stored}, {applied:?}");
        }
    }
}
