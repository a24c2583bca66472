//! The reports component (module "Reporting content"): users report
//! events and rooms for the server's administrators (who read them
//! through the admin component), bounded per reporter and hour in the
//! store itself so the bound holds across nodes and restarts.

use std::sync::Arc;

use chancery_proto::limits::{MAX_REPORT_REASON_BYTES, MAX_REPORTS_PER_USER_PER_WINDOW, REPORT_WINDOW_MS};
use chancery_proto::ruma::{EventId, RoomId};
use chancery_store::{NewReport, ReportStore, RoomStore};

use crate::clock::Clock;
use crate::rooms::Visibility;
use crate::rooms::state::{ensure_joined, event_of_room};
use crate::{AuthedUser, Error};

/// What [`Reports`] is built from: the store traits, components, clock
/// and randomness it uses, named where the server wires it.
pub struct ReportsDeps {
    pub store: Arc<dyn ReportStore>,
    pub rooms: Arc<dyn RoomStore>,
    /// Only events the reporter may see can be reported.
    pub visibility: Arc<Visibility>,
    pub clock: Arc<dyn Clock>,
}

/// Content reports of users.
pub struct Reports {
    deps: ReportsDeps,
}

impl Reports {
    pub fn new(deps: ReportsDeps) -> Self {
        Self { deps }
    }

    /// `POST /rooms/{roomId}/report/{eventId}`. The spec answers 404 both
    /// for an unknown event and for a reporter who is not joined, so
    /// neither can be told apart; an event history visibility hides from
    /// the reporter is answered the same way.
    pub async fn report_event(
        &self,
        user: &AuthedUser,
        room_id: &RoomId,
        event_id: &EventId,
        reason: Option<String>,
        score: Option<i64>,
    ) -> Result<(), Error> {
        check_reason(reason.as_deref())?;
        if score.is_some_and(|s| !(-100..=0).contains(&s)) {
            return Err(Error::InvalidParam("score is between -100 and 0".into()));
        }
        let not_found = || Error::NotFound("the event was not found or you are not joined to its room".into());
        ensure_joined(&*self.deps.rooms, room_id, &user.user_id).await.map_err(|_| not_found())?;
        let event = event_of_room(&*self.deps.rooms, room_id, event_id.as_str()).await?.ok_or_else(not_found)?;
        self.deps.visibility.visible_event(&user.user_id, event).await.map_err(|e| match e {
            Error::NotFound(_) => not_found(),
            other => other,
        })?;
        self.file_report(user, room_id, Some(event_id), reason, score).await
    }

    /// `POST /rooms/{roomId}/report`. The spec forbids requiring the
    /// reporter to be joined (rooms are also seen in the directory and in
    /// invites); only the room must exist.
    pub async fn report_room(&self, user: &AuthedUser, room_id: &RoomId, reason: String) -> Result<(), Error> {
        check_reason(Some(&reason))?;
        if self.deps.rooms.room(room_id.as_str()).await?.is_none() {
            return Err(Error::NotFound("the room was not found".into()));
        }
        self.file_report(user, room_id, None, Some(reason).filter(|r| !r.is_empty()), None).await
    }

    async fn file_report(
        &self,
        user: &AuthedUser,
        room_id: &RoomId,
        event_id: Option<&EventId>,
        reason: Option<String>,
        score: Option<i64>,
    ) -> Result<(), Error> {
        let now = self.deps.clock.now_ms();
        let report = NewReport {
            room_id: room_id.to_string(),
            event_id: event_id.map(|e| e.to_string()),
            reporter: user.user_id.to_string(),
            reason,
            score,
            created_ts: now,
        };
        let window_start = now.saturating_sub(REPORT_WINDOW_MS);
        let id = self.deps.store.add_report(report, window_start, MAX_REPORTS_PER_USER_PER_WINDOW).await?;
        tracing::info!(report_id = id, room_id = %room_id, "content reported");
        Ok(())
    }
}

fn check_reason(reason: Option<&str>) -> Result<(), Error> {
    if reason.is_some_and(|r| r.len() > MAX_REPORT_REASON_BYTES) {
        return Err(Error::InvalidParam(format!("reasons are at most {MAX_REPORT_REASON_BYTES} bytes")));
    }
    Ok(())
}
