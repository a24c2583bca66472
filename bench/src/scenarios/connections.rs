//! `connections`: N idle keep-alive connections and L long-poll `/sync`
//! requests held open at once. Measures the server's resident memory per
//! idle connection and per long-poll, and whether another user's requests
//! (`/whoami`, a send) keep their latency under that load.
//!
//! An idle connection is an HTTP/1.1 connection of its own that made one
//! `GET /_matrix/client/versions` and then stays quiet, as a client's
//! keep-alive connection does. The long-polls come from several users in
//! one room (a server may cap long-polls per user), each with its own
//! filter so no server can answer several of them with one computation;
//! a long-poll that times out is sent again. At the end one message in
//! that room must wake every long-poll, and every idle connection must
//! still answer a second request.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::client::conn::http1::{SendRequest, handshake};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use super::{Ctx, bounded, room_messages, uncached_filter};
use crate::client::{Server, Session};
use crate::report::{Better, Outcome};
use crate::rss::rss_kb;
use crate::stats::Samples;

/// Connections opened (and later checked) at once.
const OPEN_CONCURRENCY: usize = 32;
/// File descriptors kept free for everything else (the HTTP client's own
/// connections, the results file, /proc reads).
const FD_SLACK: usize = 256;
/// Time for the server to take in new connections before memory is read.
const SETTLE: Duration = Duration::from_secs(1);
/// Bound on one raw request on an idle connection.
const RAW_TIMEOUT: Duration = Duration::from_secs(20);

pub async fn run(ctx: &Ctx, o: &mut Outcome) -> Result<()> {
    let s = &ctx.sizes;
    let (n, l, per_user) = (s.idle_connections, s.long_polls, s.long_polls_per_user.max(1));
    o.param("idle_connections", n);
    o.param("long_polls", l);
    o.param("long_polls_per_user", per_user);
    o.param("probe_samples", s.probe_samples);
    let Some(pid) = ctx.server.pid else { bail!("connections needs the server's process id (--pid / --a-pid / --b-pid)") };
    let wanted = n + l + FD_SLACK;
    check_fd_limit("self", wanted).context("the benchmark client")?;
    check_fd_limit(&pid.to_string(), wanted).context("the server")?;

    // Setup: a probe user alone in its room; the long-polling users in one
    // room, each with an initial sync to long-poll from.
    let users = ctx.pool_users(1 + l.div_ceil(per_user)).await?;
    let (probe, pollers) = (users[0].clone(), users[1..].to_vec());
    let probe_room = ctx.server.create_room(&probe, "bench connections probe", s.room_version.as_deref()).await?;
    let wake_room = match pollers.first() {
        Some(owner) => Some(ctx.server.create_room(owner, "bench connections wake", s.room_version.as_deref()).await?),
        None => None,
    };
    let mut since = Vec::new();
    if let Some(room) = &wake_room {
        let (server, r) = (ctx.server.clone(), room.clone());
        bounded(pollers[1..].to_vec(), s.setup_concurrency, move |u| {
            let (server, r) = (server.clone(), r.clone());
            async move { server.join(&u, &r).await }
        })
        .await?;
        let (server, r) = (ctx.server.clone(), room.clone());
        since = bounded(pollers.clone(), s.setup_concurrency, move |u| {
            let (server, r) = (server.clone(), r.clone());
            async move {
                let (v, _) = server.sync(&u, None, 0, &uncached_filter()).await?;
                if v["rooms"]["join"].get(&r).is_none() {
                    bail!("{} does not see the room in its initial sync", u.user_id);
                }
                v["next_batch"].as_str().map(str::to_owned).ok_or_else(|| anyhow!("sync without next_batch"))
            }
        })
        .await
        .context("initial syncs of the long-polling users")?;
    }
    let marker = ctx.marker("conn");

    ctx.measure_begin();
    let mut sent = HashSet::new();
    let unloaded = time_probes(ctx, &probe, &probe_room, &marker, "unloaded", &mut sent).await?;
    let rss_unloaded = rss_kb(pid)?;

    let idle = open_idle(&ctx.server, n).await?;
    tokio::time::sleep(SETTLE).await;
    let open_at_reading = idle.iter().filter(|c| c.open()).count();
    let rss_idle = rss_kb(pid)?;

    let mut polls = LongPolls::start(ctx, &pollers, &since, per_user, l, wake_room.as_deref(), &marker);
    let measured = async {
        polls.wait_parked(l, Duration::from_secs(60)).await?;
        // A request counted as out may still be on its way in.
        tokio::time::sleep(SETTLE + Duration::from_millis(2 * l as u64)).await;
        let rss_polls = rss_kb(pid)?;
        let loaded = time_probes(ctx, &probe, &probe_room, &marker, "loaded", &mut sent).await?;
        let open_after_probes = idle.iter().filter(|c| c.open()).count();
        Ok::<_, anyhow::Error>((rss_polls, loaded, open_after_probes))
    }
    .await;
    ctx.measure_end("connections", o).await;
    let (rss_polls, loaded, open_after_probes) = match measured {
        Ok(m) => m,
        Err(e) => {
            polls.abort();
            return Err(e);
        }
    };

    // Verify: the idle connections still answer, one message wakes every
    // long-poll, and the probe's sends are in its room.
    let still_serving = check_idle(&ctx.server, idle).await?;
    let (woken, answers) = match &wake_room {
        Some(room) => {
            ctx.server.send_text(&pollers[0], room, &format!("{marker} wake")).await?;
            polls.finish(Duration::from_millis(s.sync_timeout_ms) + Duration::from_secs(60)).await?
        }
        None => (0, 0),
    };
    let found = room_messages(&ctx.server, &probe, &probe_room, &marker, sent.len() + 1000).await?;
    let ids: HashSet<String> = found.into_iter().map(|(id, _)| id).collect();
    if ids != sent {
        bail!("the probe sent {} messages, its room shows {} of them", sent.len(), ids.intersection(&sent).count());
    }

    let per = |grew_kb: u64, base_kb: u64, count: usize| {
        if count == 0 { f64::NAN } else { (grew_kb as f64 - base_kb as f64) * 1024.0 / count as f64 }
    };
    o.figure("rss_per_idle_connection_bytes", per(rss_idle, rss_unloaded, open_at_reading), Better::Lower);
    o.figure("rss_per_long_poll_bytes", per(rss_polls, rss_idle, l), Better::Lower);
    o.figure("unloaded_rss_kb", rss_unloaded as f64, Better::Lower);
    o.figure("loaded_rss_kb", rss_polls as f64, Better::Lower);
    for (phase, (whoami, send)) in [("unloaded", &unloaded), ("loaded", &loaded)] {
        for p in [50.0, 95.0, 99.0] {
            o.figure(format!("{phase}_whoami_p{p}_ms"), whoami.percentile(p)?, Better::Lower);
        }
        for p in [50.0, 95.0, 99.0] {
            o.figure(format!("{phase}_send_p{p}_ms"), send.percentile(p)?, Better::Lower);
        }
    }
    o.figure("loaded_over_unloaded_whoami_p50", loaded.0.median()? / unloaded.0.median()?, Better::Lower);
    o.figure("loaded_over_unloaded_send_p50", loaded.1.median()? / unloaded.1.median()?, Better::Lower);
    o.verified = format!(
        "{open_at_reading} of {n} idle connections open when memory was read, {open_after_probes} after the loaded \
         probes, {still_serving} of {n} answered a second request at the end ({} closed by the server); all {l} long-polls answered 200 ({answers} answers) and {woken} were \
         woken by one message; every probe /whoami named its user and all {} probe sends read back",
        n - still_serving,
        sent.len()
    );
    if woken != l {
        bail!("{woken} of {l} long-polls saw the waking message");
    }
    Ok(())
}

/// Times `probe_samples` `/whoami` calls, then as many sends into the
/// probe's own room, one after another.
async fn time_probes(
    ctx: &Ctx,
    user: &Session,
    room: &str,
    marker: &str,
    phase: &str,
    sent: &mut HashSet<String>,
) -> Result<(Samples, Samples)> {
    let (mut whoami, mut send) = (Samples::new(), Samples::new());
    for _ in 0..ctx.sizes.probe_samples {
        let t = Instant::now();
        let who = ctx.server.whoami(user).await?;
        whoami.push(t.elapsed());
        if who != user.user_id {
            bail!("/whoami of {} answered {who}", user.user_id);
        }
    }
    for i in 0..ctx.sizes.probe_samples {
        let t = Instant::now();
        let id = ctx.server.send_text(user, room, &format!("{marker} {phase} {i}")).await?;
        send.push(t.elapsed());
        sent.insert(id);
    }
    Ok((whoami, send))
}

/// The soft open-files limit of a process (`self` or a pid), from
/// `/proc/<pid>/limits`; an error when `wanted` descriptors do not fit.
fn check_fd_limit(pid: &str, wanted: usize) -> Result<()> {
    let path = format!("/proc/{pid}/limits");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let line = text.lines().find(|l| l.starts_with("Max open files")).ok_or_else(|| anyhow!("{path}: no open-files limit"))?;
    let soft = line.split_whitespace().nth(3).ok_or_else(|| anyhow!("{path}: unreadable open-files limit"))?;
    if soft == "unlimited" {
        return Ok(());
    }
    let soft: usize = soft.parse().with_context(|| format!("{path}: open-files limit {soft:?}"))?;
    if soft < wanted {
        bail!("open-files limit is {soft}, {wanted} needed (raise `ulimit -n` before starting it, or lower the sizes)");
    }
    Ok(())
}

/// A client's kept-alive connection: one HTTP/1.1 connection of its own.
struct Idle {
    sender: SendRequest<Empty<Bytes>>,
    /// Drives the connection; ends when either side closes it.
    conn: tokio::task::JoinHandle<hyper::Result<()>>,
}

impl Idle {
    /// Whether the server has not closed the connection.
    fn open(&self) -> bool {
        !self.conn.is_finished() && !self.sender.is_closed()
    }
}

impl Drop for Idle {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

/// The address to connect to and the `/versions` URI of `server`.
fn versions_target(server: &Server) -> Result<(String, hyper::Uri)> {
    let url = server.base.join("_matrix/client/versions")?;
    if url.scheme() != "http" {
        bail!("connections holds raw TCP connections, so it needs an http:// URL, not {url}");
    }
    let host = url.host_str().ok_or_else(|| anyhow!("{url} has no host"))?;
    let port = url.port_or_known_default().ok_or_else(|| anyhow!("{url} has no port"))?;
    Ok((format!("{host}:{port}"), url.as_str().parse()?))
}

/// One `GET /versions` on `idle`; the status of the whole answer.
async fn versions(idle: &mut Idle, addr: &str, uri: &hyper::Uri) -> Result<u16> {
    let request =
        hyper::Request::get(uri.path()).header(hyper::header::HOST, addr).body(Empty::new()).context("building the request")?;
    let exchange = async {
        idle.sender.ready().await.context("connection not ready")?;
        let answer = idle.sender.send_request(request).await.context("sending /versions")?;
        let status = answer.status().as_u16();
        answer.into_body().collect().await.context("reading the answer")?;
        Ok::<_, anyhow::Error>(status)
    };
    tokio::time::timeout(RAW_TIMEOUT, exchange).await.map_err(|_| anyhow!("no whole answer within {RAW_TIMEOUT:?}"))?
}

/// Opens `n` connections, each making one `/versions` request, at most
/// [`OPEN_CONCURRENCY`] at a time.
async fn open_idle(server: &Server, n: usize) -> Result<Vec<Idle>> {
    let (addr, uri) = versions_target(server)?;
    let (addr, uri) = (Arc::new(addr), Arc::new(uri));
    let server = server.clone();
    bounded((0..n).collect(), OPEN_CONCURRENCY, move |i| {
        let (server, addr, uri) = (server.clone(), addr.clone(), uri.clone());
        async move {
            server.budget.charge()?;
            let opening = async {
                let stream = TcpStream::connect(addr.as_str()).await.context("connecting")?;
                stream.set_nodelay(true)?;
                let (sender, conn) = handshake(TokioIo::new(stream)).await.context("HTTP/1.1 handshake")?;
                Ok::<_, anyhow::Error>(Idle { sender, conn: tokio::spawn(conn) })
            };
            let mut idle = tokio::time::timeout(RAW_TIMEOUT, opening)
                .await
                .map_err(|_| anyhow!("idle connection {i}: not open within {RAW_TIMEOUT:?}"))?
                .with_context(|| format!("idle connection {i} (of {n})"))?;
            let status = versions(&mut idle, &addr, &uri).await.with_context(|| format!("idle connection {i}"))?;
            if status != 200 {
                bail!("idle connection {i}: /versions answered {status}");
            }
            Ok(idle)
        }
    })
    .await
}

/// A second `/versions` on every held connection; how many answered 200.
async fn check_idle(server: &Server, idle: Vec<Idle>) -> Result<usize> {
    let (addr, uri) = versions_target(server)?;
    let (addr, uri) = (Arc::new(addr), Arc::new(uri));
    let server = server.clone();
    let answered = bounded(idle, OPEN_CONCURRENCY, move |mut c| {
        let (server, addr, uri) = (server.clone(), addr.clone(), uri.clone());
        async move {
            server.budget.charge()?;
            Ok(c.open() && matches!(versions(&mut c, &addr, &uri).await, Ok(200)))
        }
    })
    .await?;
    Ok(answered.into_iter().filter(|ok| *ok).count())
}

/// `count` long-poll loops spread over `users`, `per_user` each; every
/// loop sends its `/sync` again when it returns, until it sees the
/// message starting with `marker` in `room` (or its time is up).
struct LongPolls {
    parked: Arc<AtomicUsize>,
    tasks: JoinSet<Result<(bool, usize)>>,
}

impl LongPolls {
    fn start(
        ctx: &Ctx,
        users: &[Session],
        since: &[String],
        per_user: usize,
        count: usize,
        room: Option<&str>,
        marker: &str,
    ) -> Self {
        let parked = Arc::new(AtomicUsize::new(0));
        let mut tasks = JoinSet::new();
        for i in 0..count {
            let (user, since) = (users[i / per_user].clone(), since[i / per_user].clone());
            let (server, parked) = (ctx.server.clone(), parked.clone());
            let (room, wake, timeout_ms) =
                (room.unwrap_or_default().to_owned(), format!("{marker} wake"), ctx.sizes.sync_timeout_ms);
            // Its own filter: identical requests may share one answer.
            let filter = uncached_filter();
            tasks.spawn(async move {
                let mut since = since;
                let mut answers = 0usize;
                let deadline = server.budget.deadline();
                while Instant::now() < deadline {
                    parked.fetch_add(1, Ordering::SeqCst);
                    let answer = server.sync(&user, Some(&since), timeout_ms, &filter).await;
                    parked.fetch_sub(1, Ordering::SeqCst);
                    let (v, _) = answer.with_context(|| format!("long-poll {i}"))?;
                    answers += 1;
                    let events =
                        v["rooms"]["join"][&room]["timeline"]["events"].as_array().map(Vec::as_slice).unwrap_or_default();
                    if events.iter().any(|e| e["content"]["body"] == wake.as_str()) {
                        return Ok((true, answers));
                    }
                    since = v["next_batch"].as_str().ok_or_else(|| anyhow!("sync without next_batch"))?.to_owned();
                }
                Ok((false, answers))
            });
        }
        LongPolls { parked, tasks }
    }

    /// Waits until `n` long-polls are out (a failed one is an error).
    async fn wait_parked(&mut self, n: usize, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        while self.parked.load(Ordering::SeqCst) < n {
            if let Some(done) = self.tasks.try_join_next() {
                done.map_err(|e| anyhow!("a long-poll panicked: {e}"))??;
                bail!("a long-poll stopped before the waking message");
            }
            if Instant::now() >= deadline {
                bail!("only {} of {n} long-polls out after {limit:?}", self.parked.load(Ordering::SeqCst));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Waits (at most `limit`) for every loop to end; returns how many saw
    /// the waking message and how many answers (all 200) they had in all.
    async fn finish(mut self, limit: Duration) -> Result<(usize, usize)> {
        let (mut woken, mut answers) = (0, 0);
        let all = async {
            while let Some(done) = self.tasks.join_next().await {
                let (saw, n) = done.map_err(|e| anyhow!("a long-poll panicked: {e}"))??;
                woken += usize::from(saw);
                answers += n;
            }
            Ok::<_, anyhow::Error>(())
        };
        let ended = tokio::time::timeout(limit, all).await;
        self.tasks.abort_all();
        ended.map_err(|_| anyhow!("long-polls still out {limit:?} after the waking message"))??;
        Ok((woken, answers))
    }

    fn abort(mut self) {
        self.tasks.abort_all();
    }
}
