//! `ReportStore` on PostgreSQL. The per-reporter window is counted under
//! an advisory lock per reporter, so concurrent reports on several nodes
//! cannot all pass the count.

use async_trait::async_trait;
use chancery_store::{NewReport, Report, ReportKind, ReportPage, ReportQuery, ReportStore, StoreError, StoreResult};
use chancery_store_sql::params::{reaches_limit, text_filter_params};
use chancery_store_sql::rows::{self, REPORT_SELECT};
use chancery_store_sql::{i, u};
use tokio_postgres::types::ToSql;

use crate::query::{PgRow, get, query, query_opt};
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
        if reaches_limit(get(&row, 0)?, max_in_window) {
            return Err(StoreError::TooManyReports);
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
        let (_heavy, client) = self.heavy_client().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let sql = format!("{REPORT_SELECT} WHERE c.report_id > $1 ORDER BY c.report_id LIMIT $2");
        let rows = query(&client, &sql, &[&i(after_id), &limit]).await?;
        rows.iter().map(report_from_row).collect()
    }

    async fn report_page(&self, q: &ReportQuery) -> StoreResult<ReportPage> {
        let (reporter_exact, reporter_part) = text_filter_params(q.reporter.as_ref());
        let (room_exact, room_part) = text_filter_params(q.room.as_ref());
        let is_event = q.kind == ReportKind::Event;
        let filters: [&(dyn ToSql + Sync); 6] =
            [&is_event, &reporter_exact, &reporter_part, &room_exact, &room_part, &q.event_sender];
        let order = if q.newest_first { "DESC" } else { "ASC" };
        let sql = format!(
            "{REPORT_SELECT} WHERE {REPORT_FILTER} AND ($7::bigint IS NULL OR c.report_id < $7)
             ORDER BY c.report_id {order} LIMIT $8 OFFSET $9"
        );
        let (before, limit, offset) = (q.before_id.map(i), i64::try_from(q.limit).unwrap_or(i64::MAX), i(q.offset));
        let mut page_params: Vec<&(dyn ToSql + Sync)> = filters.to_vec();
        page_params.extend([&before as &(dyn ToSql + Sync), &limit, &offset]);
        let (_heavy, mut client) = self.heavy_client().await?;
        // The page and the total from one snapshot.
        let tx = client.build_transaction().read_only(true).isolation_level(tokio_postgres::IsolationLevel::RepeatableRead);
        let tx = tx.start().await.map_err(backend)?;
        let reports = query(&tx, &sql, &page_params).await?.iter().map(report_from_row).collect::<StoreResult<Vec<_>>>()?;
        let count_sql =
            format!("SELECT COUNT(*) FROM content_reports c LEFT JOIN events e ON e.event_id = c.event_id WHERE {REPORT_FILTER}");
        let row =
            query_opt(&tx, &count_sql, &filters).await?.ok_or_else(|| StoreError::Backend("count returned no row".into()))?;
        let total = u(get(&row, 0)?);
        tx.commit().await.map_err(backend)?;
        Ok(ReportPage { reports, total })
    }

    async fn report(&self, report_id: u64) -> StoreResult<Option<Report>> {
        let client = self.client().await?;
        let sql = format!("{REPORT_SELECT} WHERE c.report_id = $1");
        query_opt(&client, &sql, &[&i(report_id)]).await?.as_ref().map(report_from_row).transpose()
    }

    async fn delete_report(&self, report_id: u64, kind: ReportKind) -> StoreResult<bool> {
        let client = self.client().await?;
        let deleted = client
            .execute(
                "DELETE FROM content_reports WHERE report_id = $1 AND (event_id IS NOT NULL) = $2",
                &[&i(report_id), &(kind == ReportKind::Event)],
            )
            .await
            .map_err(backend)?;
        Ok(deleted > 0)
    }
}

/// The kind and filters of a [`ReportQuery`] as parameters $1..$6; a NULL
/// filter matches everything. `strpos` rather than LIKE: no wildcards to
/// escape.
const REPORT_FILTER: &str = "(c.event_id IS NOT NULL) = $1
     AND ($2::text IS NULL OR c.reporter = $2) AND ($3::text IS NULL OR strpos(c.reporter, $3) > 0)
     AND ($4::text IS NULL OR c.room_id = $4) AND ($5::text IS NULL OR strpos(c.room_id, $5) > 0)
     AND ($6::text IS NULL OR e.sender = $6)";

fn report_from_row(r: &tokio_postgres::Row) -> StoreResult<Report> {
    rows::report(&PgRow(r))
}
