//! The delivery runtime: one task per node ([`Pushers::run_delivery`])
//! around the decisions of `engine.rs`.
//!
//! The task asks the store which pushers are due (undelivered
//! notifications, backoff over, lease free), claims each (the lease makes
//! it the only node delivering that pusher) and runs a job for it, at most
//! `MAX_CONCURRENT_PUSHES` at once, so a slow or failing gateway holds one
//! slot and never the others. A job reads the pusher's queue, lets the
//! engine pick the next step, pushes, and writes the progress only after
//! the gateway's 2xx (a crash in between repeats that one push, which the
//! gateway de-duplicates by event id). It keeps the lease while it works
//! and releases it when the queue is done, when it backs off, or after
//! `MAX_PUSHES_PER_TURN` steps (it is due again at once, behind the
//! others). A store error ends a job with its lease held: the pusher is
//! retried when the lease runs out.
//!
//! The task wakes when a commit on this node may have queued
//! notifications (the store's event listener notifies `wake`), when
//! another node committed (`remote_changes`), when a read receipt asks
//! for a badge, when a job ends, and at the next time a pusher becomes
//! due; at the latest every minute.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chancery_proto::limits::{
    MAX_CONCURRENT_PUSHES, MAX_PENDING_BADGE_USERS, MAX_PUSHES_PER_TURN, PUSH_QUEUE_BATCH, PUSHER_LEASE_MS,
};
use chancery_proto::ruma::push::Action;
use chancery_store::{ClaimedPusher, Pusher, QueuedNotification, StoredEvent};
use serde_json::Value as JsonValue;
use serde_json::value::RawValue;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::body::{self, EventDetails, EventPush};
use super::engine::{self, Outcome, Queued, Step, Verdict};
use super::{Pushers, rules};
use crate::Error;

/// The store is asked at least this often, wake-ups or not.
const SWEEP_MS: u64 = 60_000;
/// After a store error, the task asks again after this long.
const ERROR_PAUSE_MS: u64 = 5_000;
/// Wake-ups within this time of each other are handled by one look at
/// the store (a busy server commits far more often than pushes are due).
const COALESCE: Duration = Duration::from_millis(10);
/// On shutdown, jobs get this long to release their leases.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// How a push ended.
enum Pushed {
    Answered {
        verdict: Verdict,
        unread: u64,
    },
    /// The node is stopping.
    Shutdown,
}

impl Pushers {
    /// Delivers pushes until `shutdown` turns true; then lets the jobs in
    /// flight release their leases (briefly) and returns.
    pub async fn run_delivery(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut remote = self.deps.streams.remote_changes();
        let mut jobs: JoinSet<u64> = JoinSet::new();
        let mut running: HashMap<tokio::task::Id, u64> = HashMap::new();
        // Pushers to send a badge to once nothing of theirs is running here.
        let mut badges_wanted: HashMap<u64, Pusher> = HashMap::new();
        while !*shutdown.borrow() {
            for user in self.take_badge_users() {
                match self.deps.store.pushers(&user).await {
                    Ok(pushers) => {
                        for p in pushers {
                            if badges_wanted.len() < MAX_PENDING_BADGE_USERS {
                                badges_wanted.insert(p.id, p);
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "reading pushers for a badge update failed; skipped"),
                }
            }
            let busy: HashSet<u64> = running.values().copied().collect();
            let now = self.deps.clock.now_ms();
            let mut next_due = None;
            if busy.len() < MAX_CONCURRENT_PUSHES {
                match self.deps.store.pushers_due(now, MAX_CONCURRENT_PUSHES).await {
                    Ok(found) => {
                        next_due = found.next_due_ts;
                        for id in found.due.into_iter().filter(|id| !busy.contains(id)) {
                            if running.len() >= MAX_CONCURRENT_PUSHES {
                                break;
                            }
                            let badge = badges_wanted.remove(&id);
                            let job = jobs.spawn(Arc::clone(&self).job(id, badge, shutdown.clone()));
                            running.insert(job.id(), id);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "finding pushers to deliver failed; trying again shortly");
                        next_due = Some(now + ERROR_PAUSE_MS);
                    }
                }
            }
            // Badges of pushers with nothing due (those running get theirs
            // when their job ends and they come back here).
            let busy: HashSet<u64> = running.values().copied().collect();
            let idle: Vec<u64> = badges_wanted.keys().filter(|id| !busy.contains(id)).copied().collect();
            for id in idle {
                if running.len() >= MAX_CONCURRENT_PUSHES {
                    break;
                }
                let badge = badges_wanted.remove(&id);
                let job = jobs.spawn(Arc::clone(&self).job(id, badge, shutdown.clone()));
                running.insert(job.id(), id);
            }
            let wait_ms = next_due.map_or(SWEEP_MS, |t| t.saturating_sub(now)).clamp(1, SWEEP_MS);
            tokio::select! {
                stopping = shutdown.changed() => {
                    // The sender gone is a shutdown too.
                    if stopping.is_err() {
                        break;
                    }
                }
                () = self.deps.wake.notified() => tokio::time::sleep(COALESCE).await,
                () = remote_change(&mut remote) => tokio::time::sleep(COALESCE).await,
                Some(done) = jobs.join_next_with_id(), if !jobs.is_empty() => {
                    let task = match done {
                        Ok((task, _)) => task,
                        Err(e) => {
                            tracing::error!(error = %e, "a push job failed");
                            e.id()
                        }
                    };
                    running.remove(&task);
                }
                () = tokio::time::sleep(Duration::from_millis(wait_ms)) => {}
            }
        }
        if tokio::time::timeout(SHUTDOWN_WAIT, async { while jobs.join_next().await.is_some() {} }).await.is_err() {
            jobs.abort_all();
        }
    }

    /// One turn of one pusher: claim it and deliver, then the badge if one
    /// was asked for. Returns the pusher's id.
    async fn job(self: Arc<Self>, id: u64, badge: Option<Pusher>, mut shutdown: watch::Receiver<bool>) -> u64 {
        let now = self.deps.clock.now_ms();
        match self.deps.store.claim_pusher(id, &self.node, now, now + PUSHER_LEASE_MS).await {
            Ok(Some(claimed)) => self.deliver(claimed, badge.is_some(), &mut shutdown).await,
            // Another node is delivering it: the badge goes without the
            // lease (a count is idempotent; that node's next push carries
            // the count of its time too).
            Ok(None) => {
                if let Some(pusher) = badge {
                    self.send_badge(&pusher, &mut shutdown).await;
                }
            }
            Err(e) => tracing::warn!(pusher = id, error = %e, "claiming a pusher failed"),
        }
        id
    }

    async fn deliver(&self, mut c: ClaimedPusher, mut badge: bool, shutdown: &mut watch::Receiver<bool>) {
        let policy = self.deps.config.retry;
        let id = c.pusher.id;
        for _ in 0..MAX_PUSHES_PER_TURN {
            if *shutdown.borrow() {
                self.release(&c).await;
                return;
            }
            let queue = if c.queued_pos > c.progress.delivered_pos {
                match self
                    .deps
                    .store
                    .queued_notifications(&c.pusher.user_id, c.progress.delivered_pos, c.queued_pos, PUSH_QUEUE_BATCH)
                    .await
                {
                    Ok(queue) => queue,
                    Err(e) => {
                        tracing::warn!(pusher = id, error = %e, "reading a pusher's queue failed; retried when its lease ends");
                        return;
                    }
                }
            } else {
                Vec::new()
            };
            let decided: Vec<Queued> = queue.iter().map(queued).collect();
            let covered = match decided.last() {
                Some(last) if queue.len() >= PUSH_QUEUE_BATCH => last.pos,
                _ => c.queued_pos,
            };
            match engine::next_step(&policy, &c.progress, self.deps.clock.now_ms(), &decided, covered) {
                // Claimed while backing off (for a badge): the gateway is
                // failing, so no badge either.
                Step::Wait { .. } => {
                    self.release(&c).await;
                    return;
                }
                Step::Advance { to_pos } => {
                    c.progress.delivered_pos = to_pos;
                    match self.keep(&c).await {
                        Some(queued) => c.queued_pos = queued,
                        None => return,
                    }
                }
                Step::Send { index } => {
                    let notification = &queue[index];
                    let (verdict, unread) = match self.push_event(&c.pusher, notification, shutdown).await {
                        Pushed::Answered { verdict, unread } => (verdict, unread),
                        Pushed::Shutdown => {
                            self.release(&c).await;
                            return;
                        }
                    };
                    let sent_pos = notification.notification.event.stream_pos;
                    match engine::after_push(&policy, &c.progress, self.deps.clock.now_ms(), sent_pos, verdict) {
                        Outcome::Delivered(progress) => {
                            if c.progress.failures > 0 {
                                tracing::info!(pusher = id, app_id = %c.pusher.app_id, "push gateway answers again");
                            }
                            c.progress = progress;
                            self.badges().sent(id, unread);
                            match self.keep(&c).await {
                                Some(queued) => c.queued_pos = queued,
                                None => return,
                            }
                        }
                        Outcome::Backoff(progress) => {
                            c.progress = progress;
                            let retry_in_ms = progress.retry_at_ts.saturating_sub(self.deps.clock.now_ms());
                            if progress.failures == 1 {
                                tracing::warn!(pusher = id, app_id = %c.pusher.app_id, retry_in_ms, "push gateway failed; backing off");
                            } else {
                                tracing::debug!(
                                    pusher = id,
                                    failures = progress.failures,
                                    retry_in_ms,
                                    "push gateway still failing"
                                );
                            }
                            self.release(&c).await;
                            return;
                        }
                        Outcome::Remove => {
                            self.remove_rejected(&c.pusher).await;
                            return;
                        }
                    }
                }
                Step::Idle => {
                    if badge {
                        badge = false;
                        if !self.send_badge(&c.pusher, shutdown).await {
                            return;
                        }
                    }
                    // Released; an append may have queued more since the
                    // last read, and its wake-up found the lease held:
                    // then this job goes on.
                    match self.deps.store.record_delivery(id, &self.node, c.progress, 0).await {
                        Ok(Some(queued)) if queued > c.progress.delivered_pos => {
                            let now = self.deps.clock.now_ms();
                            match self.deps.store.claim_pusher(id, &self.node, now, now + PUSHER_LEASE_MS).await {
                                Ok(Some(again)) => c = again,
                                // Another node took it over: it delivers.
                                Ok(None) => return,
                                Err(e) => {
                                    tracing::warn!(pusher = id, error = %e, "claiming a pusher again failed");
                                    self.deps.wake.notify_one();
                                    return;
                                }
                            }
                        }
                        Ok(_) => return,
                        Err(e) => {
                            tracing::warn!(pusher = id, error = %e, "releasing a pusher failed; it is free when its lease ends");
                            return;
                        }
                    }
                }
            }
        }
        // Its turn is over; it is due again at once, after the others.
        self.release(&c).await;
        self.deps.wake.notify_one();
    }

    /// Writes the progress and renews the lease: the current queued
    /// position, or `None` if the lease was lost (another node took over
    /// after it expired, or the pusher was deleted).
    async fn keep(&self, c: &ClaimedPusher) -> Option<u64> {
        let until = self.deps.clock.now_ms() + PUSHER_LEASE_MS;
        match self.deps.store.record_delivery(c.pusher.id, &self.node, c.progress, until).await {
            Ok(queued) => queued,
            Err(e) => {
                tracing::warn!(pusher = c.pusher.id, error = %e, "recording a push failed; retried when the lease ends");
                None
            }
        }
    }

    /// Writes the progress and gives the lease up.
    async fn release(&self, c: &ClaimedPusher) {
        if let Err(e) = self.deps.store.record_delivery(c.pusher.id, &self.node, c.progress, 0).await {
            tracing::warn!(pusher = c.pusher.id, error = %e, "releasing a pusher failed; it is free when its lease ends");
        }
    }

    async fn remove_rejected(&self, pusher: &Pusher) {
        self.badges().forget(pusher.id);
        match self.deps.store.delete_rejected_pusher(pusher.id, pusher.pushkey_ts).await {
            Ok(true) => {
                tracing::info!(pusher = pusher.id, app_id = %pusher.app_id, "the push gateway rejected the pushkey; pusher removed")
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(pusher = pusher.id, error = %e, "removing a rejected pusher failed"),
        }
    }

    /// The user's badge count now.
    async fn unread(&self, user_id: &str) -> Result<u64, Error> {
        let counts = self.deps.store.badge_counts(user_id).await?;
        Ok(engine::badge(&counts, self.deps.config.group_unread_count_by_room))
    }

    /// Pushes one notification. A failure to build the push (a store
    /// error) counts as a failed push: the pusher backs off.
    async fn push_event(&self, pusher: &Pusher, n: &QueuedNotification, shutdown: &mut watch::Receiver<bool>) -> Pushed {
        let built = async {
            let unread = self.unread(&pusher.user_id).await?;
            let push = self.event_push(pusher, &n.notification.event, &n.notification.actions_json).await?;
            Ok::<_, Error>((rules::stored_data(&pusher.data_json)?.url, body::event_body(pusher, push, unread)?, unread))
        };
        let (url, body, unread) = match built.await {
            Ok(built) => built,
            Err(e) => {
                tracing::warn!(pusher = pusher.id, error = %e, "building a push failed");
                return Pushed::Answered { verdict: Verdict::Failed, unread: 0 };
            }
        };
        tokio::select! {
            reply = self.deps.gateway.notify(&url, body) => {
                Pushed::Answered { verdict: engine::verdict(&reply, &pusher.pushkey), unread }
            }
            _ = shutdown.changed() => Pushed::Shutdown,
        }
    }

    /// The push of `event`: for `event_id_only` pushers its ids alone.
    async fn event_push(&self, pusher: &Pusher, event: &StoredEvent, actions_json: &str) -> Result<EventPush, Error> {
        let actions: Vec<Action> = serde_json::from_str(actions_json).unwrap_or_default();
        let details = if body::event_id_only(pusher) { None } else { Some(self.details(pusher, event).await?) };
        Ok(EventPush {
            event_id: event.event_id.clone(),
            room_id: event.room_id.clone(),
            prio: engine::priority(&event.event_type, &actions),
            tweaks: engine::tweaks(&actions),
            details,
        })
    }

    /// What the full format tells of `event`: its type, sender and
    /// content, the sender's display name, the room's name and canonical
    /// alias (current state, one read).
    async fn details(&self, pusher: &Pusher, event: &StoredEvent) -> Result<EventDetails, Error> {
        let json: JsonValue = serde_json::from_str(&event.json).map_err(|e| Error::Internal(format!("stored event: {e}")))?;
        let content = match json.get("content") {
            Some(c) => Some(RawValue::from_string(c.to_string()).map_err(|e| Error::Internal(e.to_string()))?),
            None => None,
        };
        let keys = [
            ("m.room.name".to_owned(), String::new()),
            ("m.room.canonical_alias".to_owned(), String::new()),
            ("m.room.member".to_owned(), event.sender.clone()),
        ];
        let state = self.deps.rooms.current_state_events(&event.room_id, &keys).await?;
        let field = |event_type: &str, key: &str| {
            state
                .iter()
                .find(|s| s.event_type == event_type)
                .and_then(|s| serde_json::from_str::<JsonValue>(&s.json).ok())
                .and_then(|v| v["content"][key].as_str().map(str::to_owned))
        };
        Ok(EventDetails {
            event_type: event.event_type.clone(),
            sender: event.sender.clone(),
            content,
            sender_display_name: field("m.room.member", "displayname"),
            room_name: field("m.room.name", "name"),
            room_alias: field("m.room.canonical_alias", "alias"),
            user_is_target: event.event_type == "m.room.member" && event.state_key.as_deref() == Some(pusher.user_id.as_str()),
        })
    }

    /// Sends the user's badge count to `pusher` if it differs from the
    /// last one this node sent it. False if the gateway rejected the
    /// pushkey (the pusher is gone).
    async fn send_badge(&self, pusher: &Pusher, shutdown: &mut watch::Receiver<bool>) -> bool {
        let unread = match self.unread(&pusher.user_id).await {
            Ok(unread) => unread,
            Err(e) => {
                tracing::warn!(pusher = pusher.id, error = %e, "counting a badge failed");
                return true;
            }
        };
        if !self.badges().changed(pusher.id, unread) {
            return true;
        }
        let built = rules::stored_data(&pusher.data_json).and_then(|d| Ok((d.url, body::badge_body(pusher, unread)?)));
        let (url, body) = match built {
            Ok(built) => built,
            Err(e) => {
                tracing::warn!(pusher = pusher.id, error = %e, "building a badge push failed");
                return true;
            }
        };
        let reply = tokio::select! {
            reply = self.deps.gateway.notify(&url, body) => reply,
            _ = shutdown.changed() => return true,
        };
        let verdict = engine::verdict(&reply, &pusher.pushkey);
        if engine::after_badge(verdict) {
            self.remove_rejected(pusher).await;
            return false;
        }
        if verdict == Verdict::Delivered {
            self.badges().sent(pusher.id, unread);
        }
        true
    }
}

/// A queued notification as the engine sees it.
fn queued(q: &QueuedNotification) -> Queued {
    let event = &q.notification.event;
    Queued { pos: event.stream_pos, ts: event.origin_server_ts, read: q.read, redacted: event.redacted_by.is_some() }
}

/// Returns when another node committed something (never where no other
/// node can, or once the store stopped telling).
async fn remote_change(remote: &mut Option<watch::Receiver<u64>>) {
    match remote {
        Some(r) => {
            if r.changed().await.is_err() {
                *remote = None;
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}
