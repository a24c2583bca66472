//! Content reports (spec "Reporting content"): users report events and
//! rooms; the reports wait for the server's administrators.

use async_trait::async_trait;

use crate::StoreResult;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewReport {
    pub room_id: String,
    /// `None` for a report of the whole room.
    pub event_id: Option<String>,
    pub reporter: String,
    pub reason: Option<String>,
    /// -100 (most offensive) to 0, from clients of spec versions before
    /// v1.18, which removed it.
    pub score: Option<i64>,
    pub created_ts: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Increasing in the order reports were filed.
    pub report_id: u64,
    pub room_id: String,
    pub event_id: Option<String>,
    pub reporter: String,
    pub reason: Option<String>,
    pub score: Option<i64>,
    pub created_ts: u64,
}

#[async_trait]
pub trait ReportStore: Send + Sync {
    /// Stores a report and returns its id. `LimitExceeded("reports")` if
    /// the reporter already filed `max_in_window` reports at or after
    /// `window_start_ts` (checked and written in one transaction, so the
    /// bound holds under concurrency and across nodes).
    async fn add_report(&self, report: NewReport, window_start_ts: u64, max_in_window: usize) -> StoreResult<u64>;

    /// Reports with ids above `after_id`, oldest first, at most `limit`.
    async fn reports(&self, after_id: u64, limit: usize) -> StoreResult<Vec<Report>>;
}
