//! Delayed events (MSC4140): events a user schedules now for the server to
//! send later, unless the client restarts (postpones) or cancels them
//! first. Element Call keeps a call membership alive this way: each
//! client schedules its "leave" state event a few seconds ahead and
//! restarts it every few seconds; when the client vanishes, the server
//! sends the leave.
//!
//! The events are in the store (`DelayedEventStore`), so they survive
//! restarts and any node manages and fires any of them. A delay id is 256
//! random bits: knowing it is what allows restarting, cancelling or
//! sending the event, without an access token (MSC4140 "Delegating
//! delayed events": lk-jwt-service and the SFU act on it).
//!
//! Firing ([`DelayedEvents::run`], one task per node): claim the due
//! events in the store (one node wins each), send each as its sender now
//! through [`Rooms`], then forget it. A send that fails for good (the
//! sender left the room or lost the power, the room is gone) drops the
//! event with a log line; one that fails for a while (the database)
//! leaves the claim, which runs out and is taken again. The delay id is
//! the send's transaction id, so a second send of the same event finds
//! the first's.
//!
//! Decisions (due times, restarts, the task's sleep, a full quota) are
//! pure functions in `decide.rs`.

pub mod decide;

use std::sync::Arc;

use chancery_proto::limits::MAX_DELAYED_EVENTS_LISTED;
use chancery_proto::ruma::RoomId;
use chancery_store::{DelayedEvent, DelayedEventStore, StoreError};
use serde_json::Value as JsonValue;
use tokio::sync::{Notify, watch};

pub use decide::Action;
use decide::{CLAIM_LEASE_MS, DelayRefusal, FIRE_BATCH};

use crate::clock::Clock;
use crate::ratelimit::Limiters;
use crate::rooms::Rooms;
use crate::tokens::{self, Entropy};
use crate::{AuthedUser, Error};

/// Rounds of [`FIRE_BATCH`] events one wake-up of the task sends at most
/// before it looks at its shutdown signal again.
const MAX_ROUNDS_PER_WAKE: usize = 16;
/// How long the task waits after the store failed.
const ERROR_PAUSE_MS: u64 = 1_000;

/// What the component needs from the configuration (`[delayed_events]`).
#[derive(Debug, Clone)]
pub struct DelayedEventsConfig {
    /// Off: the `delay` parameter is refused (403, as Synapse) and the
    /// management endpoints are not routed.
    pub enabled: bool,
    /// The longest delay a client may ask for (400 `M_MAX_DELAY_EXCEEDED`).
    pub max_delay_ms: u64,
    /// Delayed events one user may have scheduled at once (429
    /// `M_LIMIT_EXCEEDED`).
    pub max_per_user: usize,
}

/// What [`DelayedEvents`] is built from.
pub struct DelayedEventsDeps {
    pub config: DelayedEventsConfig,
    pub store: Arc<dyn DelayedEventStore>,
    /// Checks a sender's right when an event is scheduled, and sends it
    /// when it fires.
    pub rooms: Arc<Rooms>,
    /// Scheduling counts as sending an event (`events_per_user`);
    /// restarts, cancels and sends of scheduled events count against
    /// nothing.
    pub limiters: Arc<Limiters>,
    pub clock: Arc<dyn Clock>,
    /// Delay ids.
    pub entropy: Arc<dyn Entropy>,
}

/// A request to schedule an event.
#[derive(Debug, Clone)]
pub struct ScheduleRequest<'a> {
    pub room_id: &'a RoomId,
    pub event_type: &'a str,
    /// Present for a state event.
    pub state_key: Option<&'a str>,
    /// The `/send` request's transaction id (none for state events).
    pub txn_id: Option<&'a str>,
    pub content: JsonValue,
    pub delay_ms: u64,
}

/// Delayed events of this server.
pub struct DelayedEvents {
    deps: DelayedEventsDeps,
    /// Wakes this node's firing task: an event was scheduled.
    wake: Notify,
}

impl DelayedEvents {
    pub fn new(deps: DelayedEventsDeps) -> Self {
        Self { deps, wake: Notify::new() }
    }

    pub fn enabled(&self) -> bool {
        self.deps.config.enabled
    }

    /// Schedules an event (`?org.matrix.msc4140.delay=` on `/send` and
    /// `/state`) and answers its delay id. The sender must be allowed to
    /// send it now; a retried `/send` (same device and transaction id)
    /// answers the first one's id.
    pub async fn schedule(&self, user: &AuthedUser, req: ScheduleRequest<'_>) -> Result<String, Error> {
        if !self.deps.config.enabled {
            return Err(Error::Forbidden("sending delayed events is disabled on this server".into()));
        }
        let now = self.deps.clock.now_ms();
        let send_ts = match decide::due_ts(now, req.delay_ms, self.deps.config.max_delay_ms) {
            Ok(ts) => ts,
            Err(DelayRefusal::NotPositive) => {
                return Err(Error::InvalidParam("the delay must be a positive number of milliseconds".into()));
            }
            Err(DelayRefusal::TooLong { max_delay_ms }) => return Err(Error::MaxDelayExceeded { max_delay_ms }),
        };
        if let Some(txn_id) = req.txn_id {
            crate::rooms::check_txn_id(txn_id)?;
        }
        self.deps.limiters.events_per_user.check_user(user)?;
        self.deps.rooms.check_may_send(&user.user_id, req.room_id, req.event_type, req.state_key, &req.content).await?;
        let event = DelayedEvent {
            delay_id: tokens::generate(&*self.deps.entropy, "chd_"),
            user_id: user.user_id.to_string(),
            device_id: user.device_id.clone(),
            room_id: req.room_id.to_string(),
            event_type: req.event_type.to_owned(),
            state_key: req.state_key.map(str::to_owned),
            content: req.content,
            delay_ms: req.delay_ms,
            send_ts,
            txn_id: req.txn_id.map(str::to_owned),
        };
        match self.deps.store.schedule_delayed_event(&event, self.deps.config.max_per_user).await {
            Ok(delay_id) => {
                self.wake.notify_one();
                Ok(delay_id)
            }
            Err(StoreError::TooManyDelayedEvents { next_send_ts }) => {
                Err(Error::LimitExceeded { retry_after_ms: decide::quota_retry_after_ms(now, next_send_ts) })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The user's scheduled delayed events, soonest first.
    pub async fn list(&self, user: &AuthedUser) -> Result<Vec<DelayedEvent>, Error> {
        let limit = self.deps.config.max_per_user.min(MAX_DELAYED_EVENTS_LISTED);
        Ok(self.deps.store.delayed_events_of_user(user.user_id.as_str(), limit).await?)
    }

    /// Restarts, cancels or sends the scheduled event `delay_id`, whoever
    /// asks (the delay id is the secret). 404 `M_NOT_FOUND` when no
    /// scheduled event has this id (unknown, sent, cancelled, or being
    /// sent right now).
    pub async fn update(&self, delay_id: &str, action: Action) -> Result<(), Error> {
        let not_found = || Error::NotFound("no scheduled delayed event has this id".into());
        if delay_id.is_empty() || delay_id.len() > 255 {
            return Err(not_found());
        }
        match action {
            Action::Restart => {
                let now = self.deps.clock.now_ms();
                self.deps.store.restart_delayed_event(delay_id, now).await?.ok_or_else(not_found)?;
                Ok(())
            }
            Action::Cancel => {
                if self.deps.store.cancel_delayed_event(delay_id).await? {
                    Ok(())
                } else {
                    Err(not_found())
                }
            }
            Action::Send => {
                let lease_until = self.deps.clock.now_ms().saturating_add(CLAIM_LEASE_MS);
                let event = self.deps.store.claim_delayed_event(delay_id, lease_until).await?.ok_or_else(not_found)?;
                match self.deps.rooms.send_delayed(&event).await {
                    Ok(_) => {
                        self.deps.store.finish_delayed_event(&event.delay_id).await?;
                        Ok(())
                    }
                    // MSC4140: the error of the send, the event kept
                    // scheduled (the cause may pass before it is due).
                    Err(e) => {
                        self.deps.store.release_delayed_event(&event.delay_id, event.send_ts).await?;
                        Err(e)
                    }
                }
            }
        }
    }

    /// The firing task of this node, until `shutdown`: sends what is due,
    /// then sleeps until the next event is (at most `decide::MAX_IDLE_MS`,
    /// for what other nodes scheduled), or until this node schedules one.
    /// Overdue events (after a restart) fire at once.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        if !self.deps.config.enabled {
            return;
        }
        while !*shutdown.borrow() {
            let next = match self.fire_due().await {
                Ok(next) => next,
                Err(e) => {
                    tracing::warn!(error = %e, "firing delayed events failed; trying again shortly");
                    Some(self.deps.clock.now_ms().saturating_add(ERROR_PAUSE_MS))
                }
            };
            let wait = decide::sleep_for(self.deps.clock.now_ms(), next);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
                changed = shutdown.changed() => if changed.is_err() { break },
            }
        }
    }

    /// Claims and sends the events due now, in bounded rounds; answers
    /// when the next one is due.
    async fn fire_due(&self) -> Result<Option<u64>, StoreError> {
        for _ in 0..MAX_ROUNDS_PER_WAKE {
            let now = self.deps.clock.now_ms();
            let due = self.deps.store.claim_due_delayed_events(now, now.saturating_add(CLAIM_LEASE_MS), FIRE_BATCH).await?;
            let count = due.len();
            for event in due {
                self.fire(event).await;
            }
            if count < FIRE_BATCH {
                break;
            }
        }
        self.deps.store.next_delayed_event_ts().await
    }

    /// Sends one claimed event. Logs name the room and type, never the
    /// content or the delay id (a secret).
    async fn fire(&self, event: DelayedEvent) {
        match self.deps.rooms.send_delayed(&event).await {
            Ok(_) => {}
            // Given back to be tried again soon (if that fails too, the
            // claim runs out and the event is taken again).
            Err(e @ (Error::Unavailable { retry_after_ms, .. } | Error::LimitExceeded { retry_after_ms })) => {
                tracing::warn!(room_id = %event.room_id, event_type = %event.event_type, error = %e,
                    "a delayed event could not be sent now; trying again shortly");
                let at = decide::retry_send_at(self.deps.clock.now_ms(), retry_after_ms);
                if let Err(e) = self.deps.store.release_delayed_event(&event.delay_id, at).await {
                    tracing::warn!(error = %e, "giving a delayed event back failed; taken again when its claim runs out");
                }
                return;
            }
            Err(e) => {
                tracing::info!(room_id = %event.room_id, event_type = %event.event_type, reason = %e,
                    "a delayed event was dropped: its sender can no longer send it");
            }
        }
        if let Err(e) = self.deps.store.finish_delayed_event(&event.delay_id).await {
            // Taken again when the claim runs out; its transaction id makes
            // the second send answer the first one's event.
            tracing::warn!(error = %e, "forgetting a fired delayed event failed");
        }
    }
}
