//! `ReportStore` on PostgreSQL. The per-reporter window is counted under
//! an advisory lock per reporter, so concurrent reports on several nodes
//! cannot all pass the count.

use async_trait::async_trait;
use chancery_store::{NewReport, Report, ReportStore, StoreError, StoreResult};

use crate::accounts::{get, i, query, query_opt, u};
use crate::{PostgresStore, backend};

#[async_trait]
impl ReportStore for PostgresStore {
    async fn add_report(&self, report: NewReport, window_start_ts: u64, max_in_window: usize) -> StoreResult<u64> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        tx.execute("SELECT pg_advisory_xact_lock(hashtext('reports:' || $1))", &[&report.reporter]).await.map_err(backend)?;
        let row = query_opt(
            &tx,
            "SELECT COUNT(*) FROM content_reports WHERE reporter = $1 AND created_ts >= $2",
            &[&report.reporter, &i(window_start_ts)],
        )
        .await?
        .ok_or_else(|| StoreError::Backend("aggregate returned no row".into()))?;
        if usize::try_from(get::<i64>(&row, 0)?).unwrap_or(usize::MAX) >= max_in_window {
            return Err(StoreError::LimitExceeded("reports"));
        }
        let row = query_opt(
            &tx,
            "INSERT INTO content_reports (room_id, event_id, reporter, reason, score, created_ts)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING report_id",
            &[&report.room_id, &report.event_id, &report.reporter, &report.reason, &report.score, &i(report.created_ts)],
        )
        .await?
        .ok_or_else(|| StoreError::Backend("insert returned no row".into()))?;
        let id = u(get(&row, 0)?);
        tx.commit().await.map_err(backend)?;
        Ok(id)
    }

    async fn reports(&self, after_id: u64, limit: usize) -> StoreResult<Vec<Report>> {
        let client = self.client().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = query(
            &client,
            "SELECT report_id, room_id, event_id, reporter, reason, score, created_ts FROM content_reports
             WHERE report_id > $1 ORDER BY report_id LIMIT $2",
            &[&i(after_id), &limit],
        )
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Report {
                    report_id: u(get(r, 0)?),
                    room_id: get(r, 1)?,
                    event_id: get(r, 2)?,
                    reporter: get(r, 3)?,
                    reason: get(r, 4)?,
                    score: get(r, 5)?,
                    created_ts: u(get(r, 6)?),
                })
            })
            .collect()
    }
}
