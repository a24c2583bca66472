//! The migrations both backends apply, by number: number N is the same
//! change of the schema on SQLite and on PostgreSQL (in each one's
//! dialect, or nothing where a backend needs no change), so a schema
//! version means the same on both. A database's version is the number of
//! migrations applied.

use std::ops::Range;

use chancery_store::{StoreError, StoreResult};

/// The SQL of every migration of the backend that expands it, in order:
/// its files `migrations/<name>.sql`. A backend lacking one of the shared
/// names fails to compile; a migration is added here and in both
/// backends' `migrations/` together.
#[macro_export]
macro_rules! migration_sql {
    () => {
        $crate::migration_sql!(@files
            "0001_accounts",
            "0002_rooms",
            "0003_filters",
            "0004_account_data",
            "0005_relations",
            "0006_directory",
            "0007_search",
            "0008_push",
            "0009_report_ids",
            "0010_push_rule_owners",
            "0011_notifications_by_position",
            "0012_uia_sessions_by_user",
            "0013_e2ee",
            "0014_media",
            "0015_pushers",
            "0016_sliding_sync",
            "0017_spaces",
            "0018_thread_subscriptions",
            "0019_delayed_events",
            "0020_openid_tokens",
            "0021_room_list",
            "0022_sliding_connections_apart",
            "0023_room_list_changes",
            "0024_federation_destinations",
            "0025_federation_edu_outbox",
            "0026_room_history",
            "0027_job_leases",
            "0028_remote_device_keys",
        )
    };
    (@files $($name:literal),* $(,)?) => {
        [$(include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/", $name, ".sql"))),*]
    };
}

/// The indexes of the migrations (of `count`) a database at schema
/// `version` still needs. `SchemaTooNew` if a newer binary wrote it.
pub fn pending_migrations(version: i64, count: usize) -> StoreResult<Range<usize>> {
    let supported = count as i64;
    if version > supported {
        return Err(StoreError::SchemaTooNew { found: version, supported });
    }
    // A negative version (never written) applies nothing, as ever.
    let applied = usize::try_from(version).unwrap_or(usize::MAX).min(count);
    Ok(applied..count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_migrations_follow_the_version() {
        assert_eq!(pending_migrations(0, 11).unwrap(), 0..11);
        assert_eq!(pending_migrations(9, 11).unwrap(), 9..11);
        assert_eq!(pending_migrations(11, 11).unwrap(), 11..11);
        assert!(matches!(pending_migrations(12, 11), Err(StoreError::SchemaTooNew { found: 12, supported: 11 })));
    }
}
