//! `fed-latency`, `fed-throughput` and `fed-join-large`: two servers of one implementation
//! federating over loopback. A user of the home server (`--url`, `--a`,
//! `--b`) makes a public room with an alias; a user of the remote server
//! (`--url-remote`, `--a-remote`, `--b-remote`) joins it by that alias,
//! which the remote server resolves and joins over federation. Messages
//! are then sent on the home server and received through the remote
//! server's long-poll `/sync`: every figure includes the home server's
//! send, its federation transaction, the remote server's handling of it
//! and the remote server's wake-up of the waiting `/sync`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

use super::{Arrival, Ctx, Receivers, bounded, ms, uncached_filter};
use crate::client::{Server, Session};
use crate::report::{Better, Outcome};
use crate::stats::Samples;

/// How long one federated message may take to arrive before the scenario
/// fails (a lost message, not a slow one).
const ARRIVAL_LIMIT: Duration = Duration::from_secs(60);

/// In `fed-throughput`, how long no message may arrive through `/sync`
/// with some missing before the room is read back through `/messages`
/// (once; after that a wait of this length fails the scenario).
const QUIET: Duration = Duration::from_secs(10);

/// The receiver's filter in `fed-throughput`: a timeline as long as the
/// servers give (Chancery caps it at 100, Synapse does not cap it), so that
/// few answers are `limited`; those that are get their gap read back.
const THROUGHPUT_FILTER: &str = r#"{"room":{"timeline":{"limit":1000}}}"#;

/// A room on the home server joined by a user of the remote one.
struct FedRoom {
    room_id: String,
    sender: Session,
    receiver: Session,
    join_ms: f64,
}

fn remote(ctx: &Ctx) -> Result<&Ctx> {
    ctx.remote.as_deref().ok_or_else(|| {
        anyhow!("the fed-* scenarios need the second, federating server (`run --url-remote`, `compare --a-remote/--b-remote`)")
    })
}

/// The server name part of a user id (`@u:127.0.0.1:8448` → `127.0.0.1:8448`).
fn server_name(user_id: &str) -> Result<&str> {
    user_id.split_once(':').map(|(_, name)| name).ok_or_else(|| anyhow!("user id without a server name: {user_id}"))
}

/// Registers one user on each server, creates the room with an alias on
/// the home server and joins it from the remote one by that alias (timed:
/// the `/join` request until it answers). Then waits until the home server
/// counts both members, so no message is sent before the home server
/// knows where to send it.
async fn setup(ctx: &Ctx, remote: &Ctx, scenario: &str) -> Result<FedRoom> {
    let sender = ctx.fresh_users(1).await?.remove(0);
    let receiver = remote.fresh_users(1).await?.remove(0);
    if server_name(&sender.user_id)? == server_name(&receiver.user_id)? {
        bail!("the home and remote servers have the same name {}: not a federating pair", server_name(&sender.user_id)?);
    }
    let alias_local = ctx.localpart().replace("bench-", &format!("{scenario}-"));
    let room_id = ctx
        .server
        .create_room_with_alias(&sender, &format!("bench {scenario}"), &alias_local, ctx.sizes.room_version.as_deref())
        .await
        .context("creating the room on the home server")?;
    let alias = format!("#{alias_local}:{}", server_name(&sender.user_id)?);

    let t0 = Instant::now();
    let joined = remote.server.join_alias(&receiver, &alias).await.with_context(|| format!("joining {alias} over federation"))?;
    let join_ms = ms(t0.elapsed());
    if joined != room_id {
        bail!("joining {alias} gave {joined}, the room is {room_id}");
    }

    let deadline = Instant::now() + ARRIVAL_LIMIT;
    loop {
        let members = ctx.server.joined_members_count(&sender, &room_id).await?;
        if members == 2 {
            break;
        }
        if Instant::now() >= deadline {
            bail!("the home server counts {members} members {ARRIVAL_LIMIT:?} after the remote join");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(FedRoom { room_id, sender, receiver, join_ms })
}

/// `fed-latency`: the remote user long-polls `/sync`; once it is parked
/// (+`--e2e-gap-ms`) the home user sends one message; the time from the
/// start of the send until the remote `/sync` returns it. Repeated.
pub async fn latency(ctx: &Ctx, o: &mut Outcome) -> Result<()> {
    let remote = remote(ctx)?;
    let s = &ctx.sizes;
    o.param("samples", s.fed_latency_samples);
    o.param("gap_ms", s.e2e_gap_ms);
    let room = setup(ctx, remote, "fed-latency").await?;
    let marker = ctx.marker("fed-latency");
    let mut receivers = Receivers::start(remote, vec![room.receiver.clone()], &room.room_id, &marker).await?;

    let mut samples = Samples::new();
    ctx.measure_begin();
    let result = async {
        // Sample 0 is a warm-up, not counted.
        for i in 0..=s.fed_latency_samples {
            receivers.wait_parked(1, Duration::from_millis(s.e2e_gap_ms), Duration::from_secs(30)).await?;
            let body = format!("{marker} {i}");
            let t0 = Instant::now();
            let event_id = ctx.server.send_text(&room.sender, &room.room_id, &body).await?;
            let arrival = loop {
                let a = receivers.next(ARRIVAL_LIMIT).await.with_context(|| format!("sample {i} over federation"))?;
                if a.body == body {
                    break a;
                }
            };
            if arrival.event_id != event_id {
                bail!("sample {i}: the remote user got event {} but the send returned {event_id}", arrival.event_id);
            }
            if i > 0 {
                samples.push_ms(ms(arrival.at - t0));
            }
        }
        Ok::<(), anyhow::Error>(())
    }
    .await;
    receivers.stop();
    ctx.measure_end("fed-latency", o).await;
    result?;

    o.figure("send_to_remote_arrival_p50_ms", samples.percentile(50.0)?, Better::Lower);
    o.figure("send_to_remote_arrival_p90_ms", samples.percentile(90.0)?, Better::Lower);
    o.figure("send_to_remote_arrival_p99_ms", samples.percentile(99.0)?, Better::Lower);
    o.figure("remote_join_ms", room.join_ms, Better::Lower);
    o.verified = format!(
        "the remote user joined by alias over federation; {} of {} messages sent on the home server arrived in its long-poll on the remote server with the sent event id",
        samples.len(),
        s.fed_latency_samples
    );
    Ok(())
}

/// `fed-throughput`: the home user sends M messages, C in flight at once;
/// the remote user's `/sync` loop collects them. Measured from the first
/// send until the remote user has every one; each must carry an event id
/// a send returned, none may be missing.
pub async fn throughput(ctx: &Ctx, o: &mut Outcome) -> Result<()> {
    let remote = remote(ctx)?;
    let s = &ctx.sizes;
    let total = s.fed_throughput_messages;
    o.param("messages", total);
    o.param("concurrency", s.fed_throughput_concurrency);
    if total == 0 {
        bail!("--fed-throughput-messages must be at least 1");
    }
    let room = setup(ctx, remote, "fed-throughput").await?;
    let marker = ctx.marker("fed-throughput");
    let mut receivers = start_collector(remote, &room, &marker).await?;

    ctx.measure_begin();
    let result = measure_throughput(ctx, &room, &marker, &mut receivers).await;
    receivers.stop();
    ctx.measure_end("fed-throughput", o).await;
    let m = result?;

    let secs = (m.last_arrival - m.start).as_secs_f64();
    o.figure("remote_msgs_per_s", total as f64 / secs, Better::Higher);
    o.figure("home_send_msgs_per_s", total as f64 / (m.sends_done - m.start).as_secs_f64(), Better::Higher);
    o.figure("remote_all_ms", ms(m.last_arrival - m.start), Better::Lower);
    o.figure("remote_lag_after_last_send_ms", ms(m.last_arrival.saturating_duration_since(m.sends_done)), Better::Lower);
    o.figure("remote_join_ms", room.join_ms, Better::Lower);
    o.verified = format!(
        "all {total} messages sent on the home server reached the remote user with the event ids the sends returned, none twice ({} read back through /messages after a limited timeline; {} given again by a later /sync answer, dropped by event id as a client does; {} never in /sync, found through /messages after 10 s without arrivals)",
        m.backfilled, m.repeats, m.missed_by_sync
    );
    o.figure("missed_by_sync", m.missed_by_sync as f64, Better::Lower);
    Ok(())
}

struct ThroughputRun {
    start: Instant,
    sends_done: Instant,
    last_arrival: Instant,
    backfilled: usize,
    repeats: usize,
    missed_by_sync: usize,
}

async fn measure_throughput(ctx: &Ctx, room: &FedRoom, marker: &str, receivers: &mut Receivers) -> Result<ThroughputRun> {
    let remote = remote(ctx)?;
    let s = &ctx.sizes;
    let total = s.fed_throughput_messages;
    receivers.wait_parked(1, Duration::from_millis(s.e2e_gap_ms), Duration::from_secs(30)).await?;
    let bodies: Vec<String> = (0..total).map(|i| format!("{marker} {i}")).collect();
    let (server, sender, room_id) = (ctx.server.clone(), room.sender.clone(), room.room_id.clone());
    let start = Instant::now();
    let sent = bounded(bodies.clone(), s.fed_throughput_concurrency, move |body| {
        let (server, sender, room_id) = (server.clone(), sender.clone(), room_id.clone());
        async move { server.send_text(&sender, &room_id, &body).await }
    })
    .await
    .context("sending on the home server")?;
    let sends_done = Instant::now();
    let expected: HashMap<&str, &str> = bodies.iter().map(String::as_str).zip(sent.iter().map(String::as_str)).collect();

    let mut seen: HashSet<String> = HashSet::new();
    let mut last_arrival = start;
    let (mut backfilled, mut repeats, mut missed_by_sync, mut read_back) = (0usize, 0usize, 0usize, false);
    // Bounded: each wait is bounded by ARRIVAL_LIMIT, each arrival is a
    // new message (a second one fails) or a repeat, and repeats are bounded
    // by what the collector saw once.
    while seen.len() < total {
        if repeats > total {
            bail!("more repeated events than messages sent");
        }
        let a: Arrival = match receivers.next(QUIET).await {
            Ok(a) => a,
            Err(e) if !read_back => {
                // Quiet for QUIET with messages missing: read the room back
                // once through /messages on the remote server, as a client
                // that saw a gap would; what is found there counts as
                // arriving now, and how many is reported.
                read_back = true;
                let on_remote = super::room_messages(&remote.server, &room.receiver, &room.room_id, marker, total + 100).await?;
                let at = Instant::now();
                let mut found = 0usize;
                for (event_id, body) in on_remote {
                    if !seen.contains(&body) && expected.get(body.as_str()) == Some(&event_id.as_str()) {
                        seen.insert(body);
                        found += 1;
                        last_arrival = at;
                    }
                }
                missed_by_sync += found;
                eprintln!("fed-throughput: {e:#}; {found} missing messages found through /messages on the remote server");
                continue;
            }
            Err(e) => return Err(e.context(format!("{} of {total} messages reached the remote user", seen.len()))),
        };
        let Some(&want) = expected.get(a.body.as_str()) else {
            bail!("the remote user got a message this run did not send: {}", a.body);
        };
        if a.event_id != want {
            bail!("message {:?}: the remote user got event {} but the send returned {want}", a.body, a.event_id);
        }
        if a.receiver == REPEAT {
            repeats += 1;
            continue;
        }
        if !seen.insert(a.body) {
            bail!("the remote user got event {} twice", a.event_id);
        }
        if a.receiver == BACKFILL {
            backfilled += 1;
        }
        last_arrival = last_arrival.max(a.at);
    }
    Ok(ThroughputRun { start, sends_done, last_arrival, backfilled, repeats, missed_by_sync })
}

/// Marks an arrival read back through `/messages` (after a `limited`
/// `/sync` timeline) rather than in the `/sync` answer itself.
const BACKFILL: usize = usize::MAX;

/// Marks an event a `/sync` answer gave again after an earlier answer (or
/// the read-back of a gap) had given it.
const REPEAT: usize = usize::MAX - 1;

/// The remote user's `/sync` loop for `fed-throughput`: an initial sync
/// that must show the room, then long-polls with [`THROUGHPUT_FILTER`].
/// When an answer's timeline is `limited` (the server left events out),
/// the gap is read back through `/messages` from the timeline's
/// `prev_batch`, as a client fills it, and those messages count as
/// arriving when that read finishes.
async fn start_collector(remote: &Ctx, room: &FedRoom, marker: &str) -> Result<Receivers> {
    let (v, _) = remote.server.sync(&room.receiver, None, 0, &uncached_filter()).await?;
    if v["rooms"]["join"].get(&room.room_id).is_none() {
        bail!("{} does not see the room in its initial sync", room.receiver.user_id);
    }
    let since = v["next_batch"].as_str().ok_or_else(|| anyhow!("sync without next_batch"))?.to_owned();
    let shared = Arc::new((remote.server.clone(), room.receiver.clone(), room.room_id.clone(), marker.to_owned()));
    let (timeout_ms, limit) = (remote.sizes.sync_timeout_ms, remote.sizes.fed_throughput_messages);
    Ok(Receivers::spawn(vec![since], move |mut since, link| {
        let shared = shared.clone();
        async move {
            let (server, user, room_id, marker) = &*shared;
            let mut seen_ids: HashSet<String> = HashSet::new();
            while !link.stopping() {
                let (answer, at) = link.poll(server.sync(user, Some(&since), timeout_ms, THROUGHPUT_FILTER)).await;
                let (v, _) = answer?;
                let timeline = &v["rooms"]["join"][room_id.as_str()]["timeline"];
                if timeline["limited"] == Value::Bool(true) {
                    let prev = timeline["prev_batch"].as_str().ok_or_else(|| anyhow!("limited timeline without prev_batch"))?;
                    let gap = read_gap(server, user, room_id, prev, marker, &seen_ids, limit).await?;
                    let at = Instant::now();
                    for (event_id, body) in gap {
                        seen_ids.insert(event_id.clone());
                        link.send_arrival(Arrival { receiver: BACKFILL, event_id, body, at });
                    }
                }
                // An event a earlier answer already gave is reported as a
                // repeat (a client drops it by its id), not as an arrival.
                let mut fresh = Vec::new();
                for ev in timeline["events"].as_array().into_iter().flatten() {
                    let id = ev["event_id"].as_str().unwrap_or_default();
                    if seen_ids.insert(id.to_owned()) {
                        fresh.push(ev.clone());
                    } else if let Some(body) = ev["content"]["body"].as_str().filter(|b| b.starts_with(marker.as_str())) {
                        link.send_arrival(Arrival { receiver: REPEAT, event_id: id.to_owned(), body: body.to_owned(), at });
                    }
                }
                link.report(&Value::Array(fresh), marker, at);
                since = v["next_batch"].as_str().ok_or_else(|| anyhow!("sync without next_batch"))?.to_owned();
            }
            Ok(())
        }
    }))
}

/// The marker's messages before `prev_batch` not yet seen, oldest first:
/// pages of `/messages` backwards until a page holds an event already seen
/// or that precedes the run (or the start of the room), at most `limit`
/// messages' worth of pages.
async fn read_gap(
    server: &Server,
    user: &Session,
    room_id: &str,
    prev_batch: &str,
    marker: &str,
    seen: &HashSet<String>,
    limit: usize,
) -> Result<Vec<(String, String)>> {
    let mut found = Vec::new();
    let mut from = prev_batch.to_owned();
    for _ in 0..limit / 100 + 2 {
        let page = server.messages_back(user, room_id, Some(&from), 100).await?;
        let chunk = page["chunk"].as_array().ok_or_else(|| anyhow!("/messages: no chunk"))?;
        let mut reached_known = false;
        for ev in chunk {
            let id = ev["event_id"].as_str().unwrap_or_default();
            if seen.contains(id) {
                reached_known = true;
                break;
            }
            if ev["type"] == "m.room.message" {
                match ev["content"]["body"].as_str() {
                    Some(body) if body.starts_with(marker) => found.push((id.to_owned(), body.to_owned())),
                    // A message from before the run: the gap is closed.
                    _ => reached_known = true,
                }
            }
            if ev["type"] == "m.room.member" {
                // The join precedes every message of the run.
                reached_known = true;
            }
            if reached_known {
                break;
            }
        }
        match page["end"].as_str() {
            Some(end) if !reached_known && !chunk.is_empty() => from = end.to_owned(),
            _ => {
                found.reverse();
                return Ok(found);
            }
        }
    }
    bail!("the gap before a limited /sync timeline holds more than {limit} messages")
}

/// How long the remote server may take to hold a big room's full state.
const FULL_STATE_LIMIT: Duration = Duration::from_secs(1_800);

/// `fed-join-large`: a room of M members on the home server (M users of
/// it); a fresh user of the remote server joins it by alias. Timed from
/// the start of the `/join`: until it answers, until the joiner's first
/// message is accepted (join + send), and until the remote server counts
/// all M + 1 members (its full state: after a partial-state join Synapse
/// answers `/joined_members` only once the room's full state is in).
pub async fn join_large(ctx: &Ctx, o: &mut Outcome) -> Result<()> {
    let remote = remote(ctx)?;
    let m = ctx.sizes.fed_join_members.max(1);
    o.param("members", m);
    let members = ctx.pool_users(m).await?;
    let owner = members[0].clone();
    let alias_local = ctx.localpart().replace("bench-", "fed-join-large-");
    let room_id = ctx
        .server
        .create_room_with_alias(&owner, "bench fed-join-large", &alias_local, ctx.sizes.room_version.as_deref())
        .await
        .context("creating the room on the home server")?;
    let (server, r) = (ctx.server.clone(), room_id.clone());
    bounded(members[1..].to_vec(), ctx.sizes.setup_concurrency, move |u| {
        let (server, r) = (server.clone(), r.clone());
        async move { server.join(&u, &r).await }
    })
    .await?;
    let before = ctx.server.joined_members_count(&owner, &room_id).await?;
    if before != m {
        bail!("room has {before} joined members after setup, expected {m}");
    }
    let alias = format!("#{alias_local}:{}", server_name(&owner.user_id)?);
    let joiner = remote.fresh_users(1).await?.remove(0);

    ctx.measure_begin();
    let t0 = Instant::now();
    let joined = remote.server.join_alias(&joiner, &alias).await.with_context(|| format!("joining {alias} over federation"))?;
    let join_ms = ms(t0.elapsed());
    if joined != room_id {
        bail!("joining {alias} gave {joined}, the room is {room_id}");
    }
    remote.server.send_text(&joiner, &room_id, "hello, big room").await.context("the joiner's first message")?;
    let send_ms = ms(t0.elapsed());
    let deadline = t0 + FULL_STATE_LIMIT;
    let full_ms = loop {
        let count = remote.server.joined_members_count(&joiner, &room_id).await?;
        if count == m + 1 {
            break ms(t0.elapsed());
        }
        if Instant::now() >= deadline {
            bail!("the remote server counts {count} of {} members {FULL_STATE_LIMIT:?} after the join", m + 1);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    ctx.measure_end("fed-join-large", o).await;
    o.figure("join_ms", join_ms, Better::Lower);
    o.figure("first_send_ms", send_ms, Better::Lower);
    o.figure("full_state_ms", full_ms, Better::Lower);
    let home = ctx.server.joined_members_count(&owner, &room_id).await?;
    if home != m + 1 {
        bail!("the home server counts {home} members after the remote join, expected {}", m + 1);
    }
    o.verified = format!(
        "the remote user joined a room of {m} members by alias and sent a message; both servers count {} joined members",
        m + 1
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::server_name;

    #[test]
    fn server_names_keep_their_port() {
        assert_eq!(server_name("@a:127.0.0.1:8448").unwrap(), "127.0.0.1:8448");
        assert_eq!(server_name("@a:localhost").unwrap(), "localhost");
        assert!(server_name("nobody").is_err());
    }
}
