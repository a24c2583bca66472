//! `ReportStore` on SQLite. Report ids come from AUTOINCREMENT (migration
//! 0009), so an id deleted by an admin is never handed out again.

use async_trait::async_trait;
use chancery_store::{NewReport, Report, ReportKind, ReportPage, ReportQuery, ReportStore, StoreError, StoreResult};
use chancery_store_sql::params::{reaches_limit, text_filter_params};
use chancery_store_sql::rows::{self, REPORT_SELECT};
use chancery_store_sql::{i, u};
use rusqlite::{OptionalExtension, params};

use crate::row::SqliteRow;
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
            if reaches_limit(recent, max_in_window) {
                return Err(StoreError::TooManyReports);
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
            let sql = format!("{REPORT_SELECT} WHERE c.report_id > ?1 ORDER BY c.report_id LIMIT ?2");
            let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
            let rows = stmt.query_map(params![i(after_id), limit], report_from_row).map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(backend)
        })
        .await
    }

    async fn report_page(&self, query: &ReportQuery) -> StoreResult<ReportPage> {
        let query = query.clone();
        self.read_heavy(move |conn| {
            let (reporter_exact, reporter_part) = text_filter_params(query.reporter.as_ref());
            let (room_exact, room_part) = text_filter_params(query.room.as_ref());
            let filters = params![
                query.kind == ReportKind::Event,
                reporter_exact,
                reporter_part,
                room_exact,
                room_part,
                query.event_sender,
            ];
            // One read transaction: the page and the total see one snapshot.
            let tx = conn.unchecked_transaction().map_err(backend)?;
            let order = if query.newest_first { "DESC" } else { "ASC" };
            let sql = format!(
                "{REPORT_SELECT} WHERE {REPORT_FILTER} AND (?7 IS NULL OR c.report_id < ?7)
                 ORDER BY c.report_id {order} LIMIT ?8 OFFSET ?9"
            );
            let mut page_params: Vec<&dyn rusqlite::ToSql> = filters.to_vec();
            let (before, limit, offset) =
                (query.before_id.map(i), i64::try_from(query.limit).unwrap_or(i64::MAX), i(query.offset));
            page_params.extend([&before as &dyn rusqlite::ToSql, &limit, &offset]);
            let reports = {
                let mut stmt = tx.prepare_cached(&sql).map_err(backend)?;
                let rows = stmt.query_map(page_params.as_slice(), report_from_row).map_err(backend)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(backend)?
            };
            let count_sql = format!(
                "SELECT COUNT(*) FROM content_reports c LEFT JOIN events e ON e.event_id = c.event_id WHERE {REPORT_FILTER}"
            );
            let total: i64 =
                tx.prepare_cached(&count_sql).and_then(|mut s| s.query_row(filters, |r| r.get(0))).map_err(backend)?;
            tx.commit().map_err(backend)?;
            Ok(ReportPage { reports, total: u(total) })
        })
        .await
    }

    async fn report(&self, report_id: u64) -> StoreResult<Option<Report>> {
        self.read(move |conn| {
            let sql = format!("{REPORT_SELECT} WHERE c.report_id = ?1");
            conn.prepare_cached(&sql).and_then(|mut s| s.query_row([i(report_id)], report_from_row).optional()).map_err(backend)
        })
        .await
    }

    async fn delete_report(&self, report_id: u64, kind: ReportKind) -> StoreResult<bool> {
        self.write(move |tx| {
            let deleted = tx
                .execute(
                    "DELETE FROM content_reports WHERE report_id = ?1 AND (event_id IS NOT NULL) = ?2",
                    params![i(report_id), kind == ReportKind::Event],
                )
                .map_err(backend)?;
            Ok(deleted > 0)
        })
        .await
    }
}

/// The kind and filters of a [`ReportQuery`] as parameters ?1..?6; a NULL
/// filter matches everything. `instr` rather than LIKE: no wildcards to
/// escape.
const REPORT_FILTER: &str = "(c.event_id IS NOT NULL) = ?1
     AND (?2 IS NULL OR c.reporter = ?2) AND (?3 IS NULL OR instr(c.reporter, ?3) > 0)
     AND (?4 IS NULL OR c.room_id = ?4) AND (?5 IS NULL OR instr(c.room_id, ?5) > 0)
     AND (?6 IS NULL OR e.sender = ?6)";

fn report_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Report> {
    rows::report(&SqliteRow(r))
}
