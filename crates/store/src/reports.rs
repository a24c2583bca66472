//! Content reports (spec "Reporting content"): users report events and
//! rooms; the reports wait for the server's administrators, who list,
//! read and delete them through the admin API.

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
    /// The sender of the reported event, if this server has the event.
    pub event_sender: Option<String>,
}

/// Reports of events, or of whole rooms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportKind {
    Event,
    Room,
}

/// A condition on a text column (Synapse's admin API matches some filters
/// exactly and others as substrings). Case-sensitive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextFilter {
    Exact(String),
    Contains(String),
}

impl TextFilter {
    pub fn matches(&self, value: &str) -> bool {
        match self {
            TextFilter::Exact(s) => value == s,
            TextFilter::Contains(s) => value.contains(s.as_str()),
        }
    }
}

/// Which reports to list, in which order, from where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportQuery {
    pub kind: ReportKind,
    pub reporter: Option<TextFilter>,
    pub room: Option<TextFilter>,
    /// Only reports of events this user sent.
    pub event_sender: Option<String>,
    /// By id, newest first, or oldest first.
    pub newest_first: bool,
    /// Only reports with an id below this one (keyset pagination).
    pub before_id: Option<u64>,
    /// Matching reports to skip (offset pagination).
    pub offset: u64,
    pub limit: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportPage {
    pub reports: Vec<Report>,
    /// Reports matching the kind and filters, whatever the page.
    pub total: u64,
}

#[async_trait]
pub trait ReportStore: Send + Sync {
    /// Stores a report and returns its id. `TooManyReports` if
    /// the reporter already filed `max_in_window` reports at or after
    /// `window_start_ts` (checked and written in one transaction, so the
    /// bound holds under concurrency and across nodes).
    async fn add_report(&self, report: NewReport, window_start_ts: u64, max_in_window: usize) -> StoreResult<u64>;

    /// Reports with ids above `after_id`, oldest first, at most `limit`.
    async fn reports(&self, after_id: u64, limit: usize) -> StoreResult<Vec<Report>>;

    /// One page of the reports `query` selects and how many it selects in
    /// all, read from one snapshot.
    async fn report_page(&self, query: &ReportQuery) -> StoreResult<ReportPage>;

    /// One report by id.
    async fn report(&self, report_id: u64) -> StoreResult<Option<Report>>;

    /// Deletes a report of this kind; false if there is none. Ids are never
    /// reused, so a repeated delete cannot hit a newer report.
    async fn delete_report(&self, report_id: u64, kind: ReportKind) -> StoreResult<bool>;
}
