//! `ReportStore` on SQLite.

use async_trait::async_trait;
use chancery_store::{NewReport, Report, ReportStore, StoreError, StoreResult};
use rusqlite::params;

use crate::accounts::{i, u};
use crate::{SqliteStore, backend};

#[async_trait]
impl ReportStore for SqliteStore {
    async fn add_report(&self, report: NewReport, window_start_ts: u64, max_in_window: usize) -> StoreResult<u64> {
        self.write(move |tx| {
            // One writer: nobody else can add a report between the count
            // and the insert.
            let recent: i64 = tx
                .query_row(
                    "SELECT COUNT(*) FROM content_reports WHERE reporter = ?1 AND created_ts >= ?2",
                    params![report.reporter, i(window_start_ts)],
                    |r| r.get(0),
                )
                .map_err(backend)?;
            if usize::try_from(recent).unwrap_or(usize::MAX) >= max_in_window {
                return Err(StoreError::LimitExceeded("reports"));
            }
            tx.execute(
                "INSERT INTO content_reports (room_id, event_id, reporter, reason, score, created_ts)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![report.room_id, report.event_id, report.reporter, report.reason, report.score, i(report.created_ts)],
            )
            .map_err(backend)?;
            Ok(u(tx.last_insert_rowid()))
        })
        .await
    }

    async fn reports(&self, after_id: u64, limit: usize) -> StoreResult<Vec<Report>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read_heavy(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT report_id, room_id, event_id, reporter, reason, score, created_ts FROM content_reports
                     WHERE report_id > ?1 ORDER BY report_id LIMIT ?2",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![i(after_id), limit], |r| {
                    Ok(Report {
                        report_id: u(r.get(0)?),
                        room_id: r.get(1)?,
                        event_id: r.get(2)?,
                        reporter: r.get(3)?,
                        reason: r.get(4)?,
                        score: r.get(5)?,
                        created_ts: u(r.get(6)?),
                    })
                })
                .map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(backend)
        })
        .await
    }
}
