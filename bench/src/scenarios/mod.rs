//! The scenarios, and what they share: the per-server context (a pool of
//! registered users, the memory sampler), bounded concurrency, long-poll
//! receivers and the check that messages really are in a room.

pub mod connections;
pub mod delayed_restart;
pub mod e2e;
pub mod fanout;
pub mod federation;
pub mod history;
pub mod initial_sync;
pub mod join_large;
pub mod key_share;
pub mod register;
pub mod rss;
pub mod send;
pub mod sfu;
pub mod sliding;
pub mod ss_arrival;
pub mod ss_first;
pub mod thumbnail;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::client::{Server, Session};
use crate::report::Outcome;
use crate::rss::PeakSampler;

/// Every password the tool sets (accounts exist only on throwaway servers).
pub const PASSWORD: &str = "chancery-bench-password";

/// The sync filter every scenario uses: what Element asks for (members
/// lazy-loaded), with a fixed timeline limit so both servers do the same.
pub const SYNC_FILTER: &str = r#"{"room":{"state":{"lazy_load_members":true},"timeline":{"limit":10}}}"#;

/// [`SYNC_FILTER`] plus a clause that matches nothing and differs on every
/// call. Synapse answers a repeated identical `/sync` request from a cache
/// for two minutes (`sync_response_cache_duration`), so an initial sync
/// repeated by a user who has since joined a room would not show the room.
pub fn uncached_filter() -> String {
    static NONCE: AtomicU64 = AtomicU64::new(0);
    let n = NONCE.fetch_add(1, Ordering::Relaxed);
    format!(
        r#"{{"room":{{"state":{{"lazy_load_members":true}},"timeline":{{"limit":10}}}},"account_data":{{"not_types":["chancery.bench.nonce.{n}"]}}}}"#
    )
}

/// The scenarios, in the order `all` runs them (`rss` last: it reuses the
/// peaks measured during `send` and `fanout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    Register,
    Send,
    E2eLatency,
    Fanout,
    InitialSync,
    SsFirst,
    SsArrival,
    JoinLarge,
    History,
    Connections,
    KeyShare,
    Thumbnail,
    DelayedRestart,
    Rss,
    /// Every scenario above, in this order.
    All,
    /// Chancery's built-in SFU (not in `all`: other servers have none).
    Sfu,
    /// Federation latency between two servers of one implementation (not
    /// in `all`: needs the second server, `--url-remote` / `--a-remote`).
    FedLatency,
    /// Federation throughput between the same two servers (not in `all`).
    FedThroughput,
    /// A remote join of a room of many members (not in `all`).
    FedJoinLarge,
}

impl Scenario {
    pub const EVERY: [Scenario; 14] = [
        Scenario::Register,
        Scenario::Send,
        Scenario::E2eLatency,
        Scenario::Fanout,
        Scenario::InitialSync,
        Scenario::SsFirst,
        Scenario::SsArrival,
        Scenario::JoinLarge,
        Scenario::History,
        Scenario::Connections,
        Scenario::KeyShare,
        Scenario::Thumbnail,
        Scenario::DelayedRestart,
        Scenario::Rss,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Register => "register",
            Scenario::Send => "send",
            Scenario::E2eLatency => "e2e-latency",
            Scenario::Fanout => "fanout",
            Scenario::InitialSync => "initial-sync",
            Scenario::SsFirst => "ss-first",
            Scenario::SsArrival => "ss-arrival",
            Scenario::JoinLarge => "join-large",
            Scenario::History => "history",
            Scenario::Connections => "connections",
            Scenario::KeyShare => "key-share",
            Scenario::Thumbnail => "thumbnail",
            Scenario::DelayedRestart => "delayed-restart",
            Scenario::Rss => "rss",
            Scenario::All => "all",
            Scenario::Sfu => "sfu",
            Scenario::FedLatency => "fed-latency",
            Scenario::FedThroughput => "fed-throughput",
            Scenario::FedJoinLarge => "fed-join-large",
        }
    }
}

/// Sizes and knobs of every scenario, resolved from the preset and flags.
#[derive(Debug, Clone)]
pub struct Sizes {
    pub register_users: usize,
    pub register_concurrency: usize,
    pub send_messages: usize,
    pub send_concurrency: usize,
    pub send_rooms: usize,
    pub e2e_samples: usize,
    pub e2e_gap_ms: u64,
    pub fanout_members: usize,
    pub fanout_rounds: usize,
    pub fanout_gap_ms: u64,
    pub initial_sync_rooms: usize,
    pub initial_sync_history: usize,
    pub initial_sync_members: usize,
    pub initial_sync_samples: usize,
    pub ss_first_rooms: usize,
    pub ss_first_messages: usize,
    pub ss_first_samples: usize,
    pub ss_arrival_samples: usize,
    pub join_members: usize,
    pub join_samples: usize,
    pub history_sizes: Vec<usize>,
    pub history_samples: usize,
    pub history_fill_concurrency: usize,
    pub idle_connections: usize,
    pub long_polls: usize,
    pub long_polls_per_user: usize,
    pub probe_samples: usize,
    pub key_share_members: usize,
    pub key_share_rounds: usize,
    pub key_share_batch: usize,
    pub thumbnail_samples: usize,
    pub delayed_members: usize,
    pub delayed_restarts: usize,
    /// `fed-latency`: messages timed; `fed-throughput`: messages sent, and
    /// how many sends are in flight at once.
    pub fed_latency_samples: usize,
    pub fed_throughput_messages: usize,
    pub fed_throughput_concurrency: usize,
    /// `fed-join-large`: members of the room the remote user joins.
    pub fed_join_members: usize,
    /// `sfu`: the (publishers, subscribers) sizes run one after another,
    /// and the seconds measured at each.
    pub sfu_sizes: Vec<(usize, usize)>,
    pub sfu_seconds: u64,
    pub setup_concurrency: usize,
    pub sync_timeout_ms: u64,
    pub room_version: Option<String>,
    pub max_time: Duration,
    /// `max_time` for `ss-first`, whose setup grows with its rooms.
    pub ss_first_max_time: Duration,
    pub max_requests: u64,
}

/// One server's state across the scenarios of a run.
pub struct Ctx {
    pub server: Server,
    pub sizes: Sizes,
    run_id: String,
    next_user: AtomicU64,
    /// Users registered earlier in this run, handed out again to scenarios
    /// where who the users are does not matter (fan-out members, senders).
    pool: tokio::sync::Mutex<Vec<Session>>,
    /// `VmRSS` before the first scenario.
    pub idle_rss_kb: Option<u64>,
    /// Peak `VmRSS` during the measured phase of each scenario run so far.
    pub peaks_kb: Mutex<HashMap<&'static str, u64>>,
    sampler: Mutex<Option<PeakSampler>>,
    /// The second server of a federating pair (`fed-*` scenarios): its
    /// users are the receivers, the server above is where rooms are made.
    pub remote: Option<Box<Ctx>>,
}

impl Ctx {
    pub fn new(server: Server, sizes: Sizes, run_id: &str) -> Result<Self> {
        let idle_rss_kb = server.pid.map(crate::rss::rss_kb).transpose()?;
        Ok(Ctx {
            server,
            sizes,
            run_id: run_id.to_owned(),
            next_user: AtomicU64::new(0),
            pool: tokio::sync::Mutex::new(Vec::new()),
            idle_rss_kb,
            peaks_kb: Mutex::new(HashMap::new()),
            sampler: Mutex::new(None),
            remote: None,
        })
    }

    /// This context with `remote` as the other server of a federating pair.
    pub fn with_remote(mut self, remote: Ctx) -> Self {
        self.remote = Some(Box::new(remote));
        self
    }

    /// A marker unique to this run, put in message bodies so that
    /// verification counts only what this run sent.
    pub fn marker(&self, scenario: &str) -> String {
        format!("{scenario}-{}", self.run_id)
    }

    pub fn localpart(&self) -> String {
        format!("bench-{}-{}", self.run_id, self.next_user.fetch_add(1, Ordering::Relaxed))
    }

    /// Registers `n` new users (setup: not timed).
    pub async fn fresh_users(&self, n: usize) -> Result<Vec<Session>> {
        let names: Vec<String> = (0..n).map(|_| self.localpart()).collect();
        let server = self.server.clone();
        bounded(names, self.sizes.setup_concurrency, move |name| {
            let server = server.clone();
            async move { server.register(&name, PASSWORD).await }
        })
        .await
        .context("registering users for the scenario")
    }

    /// `n` users from the pool, registering more when it is short.
    pub async fn pool_users(&self, n: usize) -> Result<Vec<Session>> {
        let mut pool = self.pool.lock().await;
        if pool.len() < n {
            let more = self.fresh_users(n - pool.len()).await?;
            pool.extend(more);
        }
        Ok(pool[..n].to_vec())
    }

    pub async fn add_to_pool(&self, users: &[Session]) {
        self.pool.lock().await.extend_from_slice(users);
    }

    /// Starts sampling memory for the measured phase of a scenario.
    pub fn measure_begin(&self) {
        if let Some(pid) = self.server.pid {
            let sampler = PeakSampler::start(pid, Duration::from_millis(20), self.server.budget.deadline());
            *self.sampler.lock().expect("sampler lock") = Some(sampler);
        }
    }

    /// Ends the measured phase; records and returns the peak.
    pub async fn measure_end(&self, scenario: &'static str, o: &mut Outcome) {
        let sampler = self.sampler.lock().expect("sampler lock").take();
        if let (Some(s), Some(pid)) = (sampler, self.server.pid) {
            let kb = s.finish(pid).await;
            self.peaks_kb.lock().expect("peaks lock").insert(scenario, kb);
            o.rss_peak_kb = Some(kb);
        }
    }
}

/// Runs `f` on every item with at most `concurrency` in flight; results in
/// item order. The first error stops the rest.
pub async fn bounded<T, R, F, Fut>(items: Vec<T>, concurrency: usize, f: F) -> Result<Vec<R>>
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R>> + Send + 'static,
{
    let total = items.len();
    let queue = Arc::new(Mutex::new(items.into_iter().enumerate()));
    let f = Arc::new(f);
    let mut workers = JoinSet::new();
    for _ in 0..concurrency.clamp(1, total.max(1)) {
        let (queue, f) = (queue.clone(), f.clone());
        workers.spawn(async move {
            let mut done = Vec::new();
            loop {
                let next = queue.lock().expect("queue lock").next();
                let Some((i, item)) = next else { break };
                done.push((i, f(item).await?));
            }
            Ok::<_, anyhow::Error>(done)
        });
    }
    let mut results: Vec<Option<R>> = (0..total).map(|_| None).collect();
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok(Ok(done)) => {
                for (i, r) in done {
                    results[i] = Some(r);
                }
            }
            Ok(Err(e)) => {
                workers.abort_all();
                return Err(e);
            }
            Err(e) => {
                workers.abort_all();
                return Err(anyhow!("worker failed: {e}"));
            }
        }
    }
    Ok(results.into_iter().map(|r| r.expect("every item ran")).collect())
}

/// The `m.room.message` events of a room whose body starts with `prefix`,
/// as (event id, body), newest first, read back through `/messages` —
/// what a client scrolling back would see. Stops at the start of the room
/// or after `max_events` events.
pub async fn room_messages(
    server: &Server,
    s: &Session,
    room_id: &str,
    prefix: &str,
    max_events: usize,
) -> Result<Vec<(String, String)>> {
    let mut found = Vec::new();
    let mut from: Option<String> = None;
    let mut seen = 0usize;
    loop {
        let page = server.messages_back(s, room_id, from.as_deref(), 1000).await?;
        let chunk = page["chunk"].as_array().ok_or_else(|| anyhow!("/messages: no chunk"))?;
        for ev in chunk {
            if ev["type"] == "m.room.message"
                && let Some(body) = ev["content"]["body"].as_str()
                && body.starts_with(prefix)
            {
                let id = ev["event_id"].as_str().ok_or_else(|| anyhow!("/messages: event without event_id"))?;
                found.push((id.to_owned(), body.to_owned()));
            }
        }
        seen += chunk.len();
        let end = page["end"].as_str();
        if chunk.is_empty() || end.is_none() || seen >= max_events {
            return Ok(found);
        }
        from = end.map(str::to_owned);
    }
}

/// A message seen by a long-polling receiver.
#[derive(Debug)]
pub struct Arrival {
    pub receiver: usize,
    pub event_id: String,
    pub body: String,
    pub at: Instant,
}

/// Users long-polling (`/sync`, or a sliding-sync connection), each
/// reporting every message of one room whose body starts with a marker.
pub struct Receivers {
    parked: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    arrivals: mpsc::UnboundedReceiver<Arrival>,
    tasks: JoinSet<Result<()>>,
}

/// What one receiver's task reports through: whether it has a long-poll
/// out, and the messages it saw.
pub struct ReceiverLink {
    receiver: usize,
    parked: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    tx: mpsc::UnboundedSender<Arrival>,
}

impl ReceiverLink {
    /// Whether the receivers are being stopped (the task should return).
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Runs one long-poll request, counted as parked while it is out;
    /// returns its result and the instant it was answered.
    pub async fn poll<T>(&self, request: impl Future<Output = T>) -> (T, Instant) {
        self.parked.fetch_add(1, Ordering::SeqCst);
        let answer = request.await;
        self.parked.fetch_sub(1, Ordering::SeqCst);
        (answer, Instant::now())
    }

    /// Reports one arrival found another way than in a long-poll answer
    /// (read back through `/messages`).
    pub fn send_arrival(&self, arrival: Arrival) {
        let _ = self.tx.send(arrival);
    }

    /// Reports every `m.room.message` among `events` whose body starts
    /// with `marker`, as arrived `at`.
    pub fn report(&self, events: &Value, marker: &str, at: Instant) {
        for ev in events.as_array().into_iter().flatten() {
            if ev["type"] == "m.room.message"
                && let Some(body) = ev["content"]["body"].as_str()
                && body.starts_with(marker)
            {
                let event_id = ev["event_id"].as_str().unwrap_or_default().to_owned();
                let _ = self.tx.send(Arrival { receiver: self.receiver, event_id, body: body.to_owned(), at });
            }
        }
    }
}

impl Receivers {
    /// Each user makes an initial sync (setup, `setup_concurrency` at a
    /// time), then long-polls from its `next_batch` until stopped.
    pub async fn start(ctx: &Ctx, users: Vec<Session>, room_id: &str, marker: &str) -> Result<Self> {
        let server = ctx.server.clone();
        let room = room_id.to_owned();
        let initial = bounded(users, ctx.sizes.setup_concurrency, move |u| {
            let (server, room) = (server.clone(), room.clone());
            async move {
                let (v, _) = server.sync(&u, None, 0, &uncached_filter()).await?;
                if v["rooms"]["join"].get(&room).is_none() {
                    bail!("{} does not see the room in its initial sync", u.user_id);
                }
                let since = v["next_batch"].as_str().ok_or_else(|| anyhow!("sync without next_batch"))?.to_owned();
                Ok((u, since))
            }
        })
        .await
        .context("initial syncs of the receivers")?;

        let (server, room, marker, timeout_ms) =
            (ctx.server.clone(), room_id.to_owned(), marker.to_owned(), ctx.sizes.sync_timeout_ms);
        Ok(Receivers::spawn(initial, move |(user, mut since), link| {
            let (server, room, marker) = (server.clone(), room.clone(), marker.clone());
            async move {
                while !link.stopping() {
                    let (answer, at) = link.poll(server.sync(&user, Some(&since), timeout_ms, SYNC_FILTER)).await;
                    let (v, _) = answer?;
                    link.report(&v["rooms"]["join"][&room]["timeline"]["events"], &marker, at);
                    since = v["next_batch"].as_str().ok_or_else(|| anyhow!("sync without next_batch"))?.to_owned();
                }
                Ok(())
            }
        }))
    }

    /// Spawns one task per receiver, `task(receiver, link)`: it long-polls
    /// through `link.poll` and reports messages through `link.report`
    /// until `link.stopping()` (or it is aborted by [`Receivers::stop`]).
    pub fn spawn<T, F, Fut>(receivers: Vec<T>, task: F) -> Self
    where
        F: Fn(T, ReceiverLink) -> Fut,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        let parked = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, arrivals) = mpsc::unbounded_channel();
        let mut tasks = JoinSet::new();
        for (receiver, r) in receivers.into_iter().enumerate() {
            let link = ReceiverLink { receiver, parked: parked.clone(), stop: stop.clone(), tx: tx.clone() };
            tasks.spawn(task(r, link));
        }
        Receivers { parked, stop, arrivals, tasks }
    }

    /// Waits until `n` receivers have a long-poll request out, then `gap`
    /// more so the requests have reached the server.
    pub async fn wait_parked(&mut self, n: usize, gap: Duration, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        while self.parked.load(Ordering::SeqCst) < n {
            self.check_alive()?;
            if Instant::now() >= deadline {
                bail!("only {} of {n} receivers long-polling after {limit:?}", self.parked.load(Ordering::SeqCst));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(gap).await;
        Ok(())
    }

    /// The next arrival, or an error after `limit` or when a receiver failed.
    pub async fn next(&mut self, limit: Duration) -> Result<Arrival> {
        let deadline = Instant::now() + limit;
        loop {
            self.check_alive()?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("no message arrived within {limit:?}");
            }
            match tokio::time::timeout(left.min(Duration::from_millis(500)), self.arrivals.recv()).await {
                Ok(Some(a)) => return Ok(a),
                Ok(None) => bail!("every receiver stopped"),
                Err(_) => continue,
            }
        }
    }

    fn check_alive(&mut self) -> Result<()> {
        if let Some(done) = self.tasks.try_join_next() {
            match done {
                Ok(Ok(())) => bail!("a receiver stopped early"),
                Ok(Err(e)) => return Err(e.context("a receiver's /sync failed")),
                Err(e) => bail!("a receiver panicked: {e}"),
            }
        }
        Ok(())
    }

    /// Stops every receiver (their pending long-polls are dropped).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.tasks.abort_all();
    }
}

/// Checks that a room as one `/sync` answer shows it (`rooms.join.<id>`)
/// carries what a client needs to draw it: the create event, power levels,
/// join rules and the name `name` among the state (the `state` block and
/// the state events of the timeline together), the member event of every
/// sender in the timeline (lazy loading must still send those), and a
/// `summary` counting `joined` members.
pub fn check_room_view(room: &Value, name: &str, joined: usize) -> Result<()> {
    let timeline = room["timeline"]["events"].as_array().map(Vec::as_slice).unwrap_or_default();
    let state: Vec<&Value> = room["state"]["events"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .chain(timeline.iter().filter(|e| e.get("state_key").is_some()))
        .collect();
    let find = |kind: &str, key: &str| state.iter().find(|e| e["type"] == kind && e["state_key"] == key).copied();
    for kind in ["m.room.create", "m.room.power_levels", "m.room.join_rules"] {
        if find(kind, "").is_none() {
            bail!("no {kind} in the room's state");
        }
    }
    let shown = find("m.room.name", "").and_then(|e| e["content"]["name"].as_str());
    if shown != Some(name) {
        bail!("room name in the state is {shown:?}, expected {name:?}");
    }
    for sender in timeline.iter().filter_map(|e| e["sender"].as_str()) {
        if find("m.room.member", sender).is_none() {
            bail!("no m.room.member of {sender}, who sent an event in the timeline");
        }
    }
    let count = &room["summary"]["m.joined_member_count"];
    if count.as_u64() != Some(joined as u64) {
        bail!("summary m.joined_member_count is {count}, expected {joined}");
    }
    Ok(())
}

/// `d` in milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::check_room_view;

    fn state(kind: &str, key: &str, content: serde_json::Value) -> serde_json::Value {
        json!({ "type": kind, "state_key": key, "sender": "@a:x", "content": content })
    }

    /// A lazy-loaded room: @b's member event only in the timeline, @a's in
    /// the state block, the name in the timeline.
    fn room() -> serde_json::Value {
        json!({
            "summary": { "m.joined_member_count": 2 },
            "state": { "events": [
                state("m.room.create", "", json!({})),
                state("m.room.power_levels", "", json!({})),
                state("m.room.join_rules", "", json!({ "join_rule": "public" })),
                state("m.room.member", "@a:x", json!({ "membership": "join" })),
            ]},
            "timeline": { "events": [
                state("m.room.name", "", json!({ "name": "r" })),
                { "type": "m.room.member", "state_key": "@b:x", "sender": "@b:x", "content": { "membership": "join" } },
                { "type": "m.room.message", "sender": "@b:x", "content": { "body": "hi" } },
                { "type": "m.room.message", "sender": "@a:x", "content": { "body": "hi" } },
            ]},
        })
    }

    #[test]
    fn a_complete_room_passes() {
        check_room_view(&room(), "r", 2).unwrap();
    }

    #[test]
    fn missing_state_members_or_count_fail() {
        let err = |r: &serde_json::Value, name: &str, joined: usize| check_room_view(r, name, joined).unwrap_err().to_string();
        assert!(err(&room(), "r", 3).contains("m.joined_member_count"));
        assert!(err(&room(), "other", 2).contains("room name"));
        for (i, kind) in ["m.room.create", "m.room.power_levels", "m.room.join_rules"].iter().enumerate() {
            let mut r = room();
            r["state"]["events"].as_array_mut().unwrap().remove(i);
            assert!(err(&r, "r", 2).contains(kind));
        }
        let mut r = room();
        r["state"]["events"].as_array_mut().unwrap().remove(3);
        assert!(err(&r, "r", 2).contains("m.room.member of @a:x"));
        let mut r = room();
        r["timeline"]["events"].as_array_mut().unwrap().remove(1);
        assert!(err(&r, "r", 2).contains("m.room.member of @b:x"));
        let mut r = room();
        r.as_object_mut().unwrap().remove("summary");
        assert!(err(&r, "r", 2).contains("m.joined_member_count"));
    }
}
