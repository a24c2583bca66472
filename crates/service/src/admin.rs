//! The Synapse-compatible admin API, for server admins (accounts created
//! with `chancery create-user --admin`), so existing admin tools work.
//!
//! Content reports: `/_synapse/admin/v1/event_reports` as Synapse 1.163
//! has it (offset pagination, `next_token`, `dir`). Synapse 1.163 keeps room
//! reports apart and has no admin API for them yet; the one under review
//! upstream (`/_synapse/admin/v1/room_reports`, element-hq/synapse#19648:
//! newest first, `from` a report id, `next_batch`) is served here, so room
//! reports reach admins and event reports keep Synapse's exact shape.

use std::collections::BTreeMap;
use std::sync::Arc;

use chancery_proto::limits::{DEFAULT_ADMIN_REPORTS_LIMIT, MAX_ADMIN_REPORTS_LIMIT};
use chancery_store::{Report, ReportKind, ReportQuery, ReportStore, RoomStore, TextFilter};
use serde_json::{Value as JsonValue, json};

use crate::rooms::Direction;
use crate::{AuthedUser, Error};

/// `GET /_synapse/admin/v1/event_reports`.
#[derive(Debug, Clone)]
pub struct EventReportsRequest {
    /// Offset into the selected reports.
    pub from: u64,
    pub limit: Option<u64>,
    /// `Backward`: the most recent first (Synapse's default).
    pub dir: Direction,
    /// Reporters whose id contains this.
    pub user_id: Option<String>,
    /// Rooms whose id contains this.
    pub room_id: Option<String>,
    /// Only reports of events this user sent.
    pub event_sender_user_id: Option<String>,
}

/// `GET /_synapse/admin/v1/room_reports`.
#[derive(Debug, Clone, Default)]
pub struct RoomReportsRequest {
    /// Only reports with an id below this one; the most recent first.
    pub from: Option<u64>,
    pub limit: Option<u64>,
    /// This reporter only.
    pub user_id: Option<String>,
    /// This room only.
    pub room_id: Option<String>,
}

/// What admins see of a room next to a report: its current name,
/// canonical alias and topic.
#[derive(Debug, Clone, Default)]
struct RoomLabels {
    name: Option<String>,
    canonical_alias: Option<String>,
    topic: Option<String>,
}

const NO_LABELS: RoomLabels = RoomLabels { name: None, canonical_alias: None, topic: None };

fn page_limit(limit: Option<u64>) -> usize {
    let limit = limit.map_or(DEFAULT_ADMIN_REPORTS_LIMIT, |l| usize::try_from(l).unwrap_or(usize::MAX));
    limit.clamp(1, MAX_ADMIN_REPORTS_LIMIT)
}

/// The admin API's component. Every method first checks that its caller
/// is a server admin.
pub struct Admin {
    reports: Arc<dyn ReportStore>,
    rooms: Arc<dyn RoomStore>,
}

impl Admin {
    pub fn new(reports: Arc<dyn ReportStore>, rooms: Arc<dyn RoomStore>) -> Self {
        Self { reports, rooms }
    }

    async fn room_labels(&self, room_id: &str) -> Result<RoomLabels, Error> {
        let field = |event: Option<chancery_store::StoredEvent>, key: &str| -> Option<String> {
            let value: JsonValue = serde_json::from_str(&event?.json).ok()?;
            value.get("content")?.get(key)?.as_str().map(str::to_owned)
        };
        let state = |event_type: &'static str| self.rooms.state_event(room_id, event_type, "", None);
        Ok(RoomLabels {
            name: field(state("m.room.name").await?, "name"),
            canonical_alias: field(state("m.room.canonical_alias").await?, "alias"),
            topic: field(state("m.room.topic").await?, "topic"),
        })
    }

    /// The labels of each report's room, each room read once.
    async fn labels_of(&self, reports: &[Report]) -> Result<BTreeMap<String, RoomLabels>, Error> {
        let mut labels = BTreeMap::new();
        for report in reports {
            if !labels.contains_key(&report.room_id) {
                labels.insert(report.room_id.clone(), self.room_labels(&report.room_id).await?);
            }
        }
        Ok(labels)
    }

    /// `GET /_synapse/admin/v1/event_reports`.
    pub async fn admin_event_reports(&self, admin: &AuthedUser, req: EventReportsRequest) -> Result<JsonValue, Error> {
        admin.ensure_admin()?;
        let limit = page_limit(req.limit);
        let query = ReportQuery {
            kind: ReportKind::Event,
            reporter: req.user_id.map(TextFilter::Contains),
            room: req.room_id.map(TextFilter::Contains),
            event_sender: req.event_sender_user_id,
            newest_first: req.dir == Direction::Backward,
            before_id: None,
            offset: req.from,
            limit,
        };
        let page = self.reports.report_page(&query).await?;
        let labels = self.labels_of(&page.reports).await?;
        let reports: Vec<JsonValue> =
            page.reports.iter().map(|r| event_report_json(r, labels.get(&r.room_id).unwrap_or(&NO_LABELS))).collect();
        let mut body = json!({ "event_reports": reports, "total": page.total });
        // Synapse's rule, with the limit this server applied.
        if req.from.saturating_add(limit as u64) < page.total {
            body["next_token"] = json!(req.from.saturating_add(reports.len() as u64));
        }
        Ok(body)
    }

    /// `GET /_synapse/admin/v1/event_reports/{reportId}`: the report and
    /// the reported event as stored (the signed PDU).
    pub async fn admin_event_report(&self, admin: &AuthedUser, report_id: u64) -> Result<JsonValue, Error> {
        admin.ensure_admin()?;
        let report = self.report_of_kind(report_id, ReportKind::Event).await?;
        let labels = self.room_labels(&report.room_id).await?;
        let mut body = event_report_json(&report, &labels);
        let event = match &report.event_id {
            Some(id) => self.rooms.event(id).await?,
            None => None,
        };
        body["event_json"] = event.and_then(|e| serde_json::from_str(&e.json).ok()).unwrap_or(JsonValue::Null);
        Ok(body)
    }

    /// `DELETE /_synapse/admin/v1/event_reports/{reportId}`.
    pub async fn admin_delete_event_report(&self, admin: &AuthedUser, report_id: u64) -> Result<(), Error> {
        admin.ensure_admin()?;
        self.delete_report_of_kind(report_id, ReportKind::Event).await
    }

    /// `GET /_synapse/admin/v1/room_reports`.
    pub async fn admin_room_reports(&self, admin: &AuthedUser, req: RoomReportsRequest) -> Result<JsonValue, Error> {
        admin.ensure_admin()?;
        let limit = page_limit(req.limit);
        let query = ReportQuery {
            kind: ReportKind::Room,
            reporter: req.user_id.map(TextFilter::Exact),
            room: req.room_id.map(TextFilter::Exact),
            event_sender: None,
            newest_first: true,
            before_id: req.from,
            offset: 0,
            // One more than shown tells whether there is a next page.
            limit: limit + 1,
        };
        let mut page = self.reports.report_page(&query).await?;
        let more = page.reports.len() > limit;
        page.reports.truncate(limit);
        let labels = self.labels_of(&page.reports).await?;
        let reports: Vec<JsonValue> =
            page.reports.iter().map(|r| room_report_json(r, labels.get(&r.room_id).unwrap_or(&NO_LABELS))).collect();
        let mut body = json!({ "room_reports": reports, "total": page.total });
        if more && let Some(last) = page.reports.last() {
            body["next_batch"] = json!(last.report_id);
        }
        Ok(body)
    }

    /// `GET /_synapse/admin/v1/room_reports/{reportId}`.
    pub async fn admin_room_report(&self, admin: &AuthedUser, report_id: u64) -> Result<JsonValue, Error> {
        admin.ensure_admin()?;
        let report = self.report_of_kind(report_id, ReportKind::Room).await?;
        let labels = self.room_labels(&report.room_id).await?;
        Ok(room_report_json(&report, &labels))
    }

    /// `DELETE /_synapse/admin/v1/room_reports/{reportId}`.
    pub async fn admin_delete_room_report(&self, admin: &AuthedUser, report_id: u64) -> Result<(), Error> {
        admin.ensure_admin()?;
        self.delete_report_of_kind(report_id, ReportKind::Room).await
    }

    async fn report_of_kind(&self, report_id: u64, kind: ReportKind) -> Result<Report, Error> {
        let report = self.reports.report(report_id).await?;
        report.filter(|r| (r.event_id.is_some()) == (kind == ReportKind::Event)).ok_or_else(|| not_found(kind))
    }

    async fn delete_report_of_kind(&self, report_id: u64, kind: ReportKind) -> Result<(), Error> {
        if self.reports.delete_report(report_id, kind).await? {
            tracing::info!(report_id, "content report deleted by an admin");
            Ok(())
        } else {
            Err(not_found(kind))
        }
    }
}

fn not_found(kind: ReportKind) -> Error {
    Error::NotFound(match kind {
        ReportKind::Event => "Event report not found".into(),
        ReportKind::Room => "Room report not found".into(),
    })
}

/// An event report as Synapse lists it.
fn event_report_json(report: &Report, labels: &RoomLabels) -> JsonValue {
    json!({
        "id": report.report_id,
        "received_ts": report.created_ts,
        "room_id": report.room_id,
        "name": labels.name,
        "event_id": report.event_id,
        "user_id": report.reporter,
        "reason": report.reason,
        "score": report.score,
        "sender": report.event_sender,
        "canonical_alias": labels.canonical_alias,
    })
}

/// A room report as the upstream proposal lists it.
fn room_report_json(report: &Report, labels: &RoomLabels) -> JsonValue {
    json!({
        "id": report.report_id,
        "received_ts": report.created_ts,
        "room_id": report.room_id,
        "user_id": report.reporter,
        "reason": report.reason,
        "canonical_alias": labels.canonical_alias,
        "name": labels.name,
        "topic": labels.topic,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_capped_and_never_zero() {
        assert_eq!(page_limit(None), DEFAULT_ADMIN_REPORTS_LIMIT);
        assert_eq!(page_limit(Some(0)), 1);
        assert_eq!(page_limit(Some(7)), 7);
        assert_eq!(page_limit(Some(u64::MAX)), MAX_ADMIN_REPORTS_LIMIT);
    }
}
