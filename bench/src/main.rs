//! `chancery-bench`: drives any Matrix homeserver through the client-server
//! API only, so the same run measures Chancery and Synapse side by side.
//!
//! Every scenario is bounded in time (`--max-seconds`) and requests
//! (`--max-requests`), verifies that the work really happened (messages
//! are read back or seen arriving), prints one JSON line on stdout and
//! appends a row to a Markdown table (`--results`). Progress goes to stderr.

mod client;
mod report;
mod rss;
mod scenarios;
mod stats;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::json;

use client::Server;
use report::{Outcome, ResultsFile};
use scenarios::{Ctx, Scenario, Sizes};

#[derive(Parser)]
#[command(name = "chancery-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run scenarios against one homeserver.
    Run {
        /// Base URL of the homeserver, e.g. http://127.0.0.1:8008.
        #[arg(long)]
        url: String,
        /// Process id of the server (for `rss` and per-scenario memory peaks).
        #[arg(long)]
        pid: Option<u32>,
        /// Name of the server in the output.
        #[arg(long, default_value = "server")]
        label: String,
        /// Base URL of a second server federating with the first (the
        /// receiving side of `fed-latency` and `fed-throughput`).
        #[arg(long)]
        url_remote: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Run scenarios against two homeservers, alternating which goes first,
    /// and print the ratio A/B of every figure.
    Compare {
        /// Base URL of server A (the numerator of every ratio).
        #[arg(long)]
        a: String,
        /// Process id of server A.
        #[arg(long)]
        a_pid: Option<u32>,
        /// Name of server A in the output.
        #[arg(long, default_value = "A")]
        a_label: String,
        /// Base URL of a second server of A's kind federating with A (the
        /// receiving side of the `fed-*` scenarios).
        #[arg(long)]
        a_remote: Option<String>,
        /// Base URL of server B (the denominator).
        #[arg(long)]
        b: String,
        /// Process id of server B.
        #[arg(long)]
        b_pid: Option<u32>,
        /// Name of server B in the output.
        #[arg(long, default_value = "B")]
        b_label: String,
        /// Base URL of a second server of B's kind federating with B.
        #[arg(long)]
        b_remote: Option<String>,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Preset {
    /// Small sizes: proves the tool and both servers work (minutes).
    Smoke,
    /// The sizes of the targets in issue 5 (an hour or more against Synapse).
    Target,
}

#[derive(Args)]
struct Common {
    /// Comma-separated scenarios; they run in the canonical order
    /// (register, send, e2e-latency, fanout, initial-sync, ss-first, ss-arrival, join-large, history, connections,
    /// key-share, rss).
    #[arg(long, value_delimiter = ',', default_value = "all")]
    scenarios: Vec<Scenario>,
    /// Default sizes; every size flag below overrides its part.
    #[arg(long, value_enum, default_value = "smoke")]
    preset: Preset,
    /// Markdown file to append result rows to.
    #[arg(long)]
    results: Option<PathBuf>,
    /// A line to add under the run's heading in the results file (repeatable).
    #[arg(long)]
    note: Vec<String>,
    /// Wall-clock bound of one scenario on one server, setup included
    /// (default: 600 for smoke, 7200 for target; for `ss-first` at least
    /// one second per room unless given).
    #[arg(long)]
    max_seconds: Option<u64>,
    /// Request bound of one scenario on one server, setup included
    /// (default: 200000 for smoke, 5000000 for target).
    #[arg(long)]
    max_requests: Option<u64>,
    /// Room version of every room created; "default" leaves it to the server.
    #[arg(long, default_value = "12")]
    room_version: String,
    /// Users registering (and logging in) at once in `register`.
    #[arg(long)]
    register_users: Option<usize>,
    #[arg(long)]
    register_concurrency: Option<usize>,
    /// Messages sent in `send`, by `--send-concurrency` senders over `--send-rooms` rooms.
    #[arg(long)]
    send_messages: Option<usize>,
    #[arg(long)]
    send_concurrency: Option<usize>,
    #[arg(long)]
    send_rooms: Option<usize>,
    /// Messages timed in `e2e-latency`.
    #[arg(long)]
    e2e_samples: Option<usize>,
    /// Pause after the receiver is long-polling, before each send.
    #[arg(long)]
    e2e_gap_ms: Option<u64>,
    /// Long-polling members in `fanout`, and messages sent to them.
    #[arg(long)]
    fanout_members: Option<usize>,
    #[arg(long)]
    fanout_rounds: Option<usize>,
    /// Pause after all members are long-polling, before each send.
    #[arg(long)]
    fanout_gap_ms: Option<u64>,
    /// Rooms of the user in `initial-sync`, messages in each, other members in each.
    #[arg(long)]
    initial_sync_rooms: Option<usize>,
    #[arg(long)]
    initial_sync_history: Option<usize>,
    #[arg(long)]
    initial_sync_members: Option<usize>,
    #[arg(long)]
    initial_sync_samples: Option<usize>,
    /// Rooms of the user in `ss-first` (each created with a name, then given
    /// `--ss-first-messages` messages), and first sliding-sync answers timed.
    #[arg(long)]
    ss_first_rooms: Option<usize>,
    #[arg(long)]
    ss_first_messages: Option<usize>,
    #[arg(long)]
    ss_first_samples: Option<usize>,
    /// Messages timed in `ss-arrival` (after a warm-up; the pause before
    /// each send is `--e2e-gap-ms`).
    #[arg(long)]
    ss_arrival_samples: Option<usize>,
    /// Members of the room joined in `join-large`, and users who join it (samples).
    #[arg(long)]
    join_members: Option<usize>,
    #[arg(long)]
    join_samples: Option<usize>,
    /// Room sizes (messages) at which `history` times sends, e.g. 1000,10000,100000.
    #[arg(long, value_delimiter = ',')]
    history_sizes: Option<Vec<usize>>,
    #[arg(long)]
    history_samples: Option<usize>,
    #[arg(long)]
    history_fill_concurrency: Option<usize>,
    /// Idle keep-alive connections `connections` holds open (each made one
    /// `GET /versions`), and long-poll `/sync` requests it keeps out.
    #[arg(long)]
    idle_connections: Option<usize>,
    #[arg(long)]
    long_polls: Option<usize>,
    /// Long-polls per user in `connections` (servers may cap them per user).
    #[arg(long)]
    long_polls_per_user: Option<usize>,
    /// `/whoami` calls and sends timed in `connections`, before and under the load.
    #[arg(long)]
    probe_samples: Option<usize>,
    /// Members of the encrypted room in `key-share` (each with one device),
    /// shares timed (each after a warm-up share), and users per
    /// `/keys/query` and messages per `/sendToDevice` request.
    #[arg(long)]
    key_share_members: Option<usize>,
    #[arg(long)]
    key_share_rounds: Option<usize>,
    #[arg(long)]
    key_share_batch: Option<usize>,
    /// Distinct 4,000×3,000 JPEGs `thumbnail` uploads and thumbnails.
    #[arg(long)]
    thumbnail_samples: Option<usize>,
    /// Call members in `delayed-restart` (each one delayed leave event),
    /// and restarts each sends back to back.
    #[arg(long)]
    delayed_members: Option<usize>,
    #[arg(long)]
    delayed_restarts: Option<usize>,
    /// `fed-latency` (named only; needs the remote server): messages timed
    /// from a send on one server to its arrival in a long-poll `/sync` on
    /// the other.
    #[arg(long)]
    fed_latency_samples: Option<usize>,
    /// `fed-throughput` (named only): messages sent on one server, and
    /// sends in flight at once, until the other server's user has them all.
    #[arg(long)]
    fed_throughput_messages: Option<usize>,
    #[arg(long)]
    fed_throughput_concurrency: Option<usize>,
    /// `fed-join-large` (named only): members of the home server's room
    /// that a user of the remote server joins.
    #[arg(long)]
    fed_join_members: Option<usize>,
    /// `sfu` (Chancery only, not in `all`): call sizes as
    /// PUBLISHERSxSUBSCRIBERS, run one after another.
    #[arg(long, value_delimiter = ',', default_value = "2x4,4x8")]
    sfu_sizes: Vec<String>,
    /// Seconds measured at each `sfu` size (after everyone receives everything).
    #[arg(long, default_value_t = 20)]
    sfu_seconds: u64,
    /// Requests at once while setting up (registrations, joins, room creation).
    #[arg(long)]
    setup_concurrency: Option<usize>,
    /// Long-poll timeout of syncing receivers.
    #[arg(long, default_value_t = 30_000)]
    sync_timeout_ms: u64,
}

impl Common {
    fn sizes(&self) -> Sizes {
        let target = matches!(self.preset, Preset::Target);
        let pick = |small: usize, big: usize| if target { big } else { small };
        let ss_first_rooms = self.ss_first_rooms.unwrap_or(2_000);
        Sizes {
            register_users: self.register_users.unwrap_or(pick(20, 200)),
            register_concurrency: self.register_concurrency.unwrap_or(pick(4, 8)),
            send_messages: self.send_messages.unwrap_or(pick(300, 10_000)),
            send_concurrency: self.send_concurrency.unwrap_or(pick(4, 16)),
            send_rooms: self.send_rooms.unwrap_or(pick(2, 4)),
            e2e_samples: self.e2e_samples.unwrap_or(pick(30, 200)),
            e2e_gap_ms: self.e2e_gap_ms.unwrap_or(20),
            fanout_members: self.fanout_members.unwrap_or(pick(20, 1_000)),
            fanout_rounds: self.fanout_rounds.unwrap_or(20),
            fanout_gap_ms: self.fanout_gap_ms.unwrap_or(pick(200, 1_000) as u64),
            initial_sync_rooms: self.initial_sync_rooms.unwrap_or(pick(20, 500)),
            initial_sync_history: self.initial_sync_history.unwrap_or(pick(5, 20)),
            initial_sync_members: self.initial_sync_members.unwrap_or(2),
            initial_sync_samples: self.initial_sync_samples.unwrap_or(20),
            // The sizes of issue 14's goal in both presets: the first screen
            // of a user in 2,000 rooms is what the scenario is about.
            ss_first_rooms,
            ss_first_messages: self.ss_first_messages.unwrap_or(1),
            ss_first_samples: self.ss_first_samples.unwrap_or(20),
            ss_arrival_samples: self.ss_arrival_samples.unwrap_or(50),
            join_members: self.join_members.unwrap_or(pick(50, 10_000)),
            join_samples: self.join_samples.unwrap_or(20),
            history_sizes: self
                .history_sizes
                .clone()
                .unwrap_or_else(|| if target { vec![1_000, 10_000, 100_000] } else { vec![100, 1_000] }),
            history_samples: self.history_samples.unwrap_or(pick(20, 100)),
            history_fill_concurrency: self.history_fill_concurrency.unwrap_or(4),
            idle_connections: self.idle_connections.unwrap_or(pick(500, 5_000)),
            long_polls: self.long_polls.unwrap_or(pick(200, 2_000)),
            long_polls_per_user: self.long_polls_per_user.unwrap_or(8),
            probe_samples: self.probe_samples.unwrap_or(100),
            key_share_members: self.key_share_members.unwrap_or(pick(100, 1_000)),
            key_share_rounds: self.key_share_rounds.unwrap_or(20),
            // matrix-sdk's chunks (MAX_KEY_QUERY_USERS, MAX_TO_DEVICE_MESSAGES).
            key_share_batch: self.key_share_batch.unwrap_or(250),
            thumbnail_samples: self.thumbnail_samples.unwrap_or(20),
            delayed_members: self.delayed_members.unwrap_or(pick(20, 200)),
            delayed_restarts: self.delayed_restarts.unwrap_or(pick(50, 200)),
            fed_latency_samples: self.fed_latency_samples.unwrap_or(pick(50, 200)),
            fed_throughput_messages: self.fed_throughput_messages.unwrap_or(pick(500, 5_000)),
            fed_throughput_concurrency: self.fed_throughput_concurrency.unwrap_or(4),
            fed_join_members: self.fed_join_members.unwrap_or(pick(500, 10_000)),
            sfu_sizes: self.sfu_sizes.iter().filter_map(|s| parse_size(s)).collect(),
            sfu_seconds: self.sfu_seconds,
            setup_concurrency: self.setup_concurrency.unwrap_or(pick(4, 8)),
            sync_timeout_ms: self.sync_timeout_ms,
            room_version: (self.room_version != "default").then(|| self.room_version.clone()),
            max_time: Duration::from_secs(self.max_seconds.unwrap_or(pick(600, 7_200) as u64)),
            // `ss-first` creates its rooms one after another: 0.1 to 0.4 s
            // a room on Synapse on the 2-core machine, so 2,000 rooms outlast
            // the smoke bound. A second a room bounds it without cutting a
            // slow but working server short; an explicit bound wins.
            ss_first_max_time: Duration::from_secs(self.max_seconds.unwrap_or(pick(600, 7_200).max(ss_first_rooms) as u64)),
            max_requests: self.max_requests.unwrap_or(pick(200_000, 5_000_000) as u64),
        }
    }

    fn scenarios(&self) -> Vec<Scenario> {
        let all = self.scenarios.contains(&Scenario::All);
        let mut chosen: Vec<Scenario> = Scenario::EVERY.into_iter().filter(|s| all || self.scenarios.contains(s)).collect();
        // Named only: `sfu` measures Chancery's own SFU.
        // Named only: the `fed-*` scenarios need a second, federating server.
        for named in [Scenario::Sfu, Scenario::FedLatency, Scenario::FedThroughput, Scenario::FedJoinLarge] {
            if self.scenarios.contains(&named) {
                chosen.push(named);
            }
        }
        chosen
    }

    fn check(&self) -> Result<()> {
        if let Some(bad) = self.sfu_sizes.iter().find(|s| parse_size(s).is_none()) {
            bail!("--sfu-sizes: {bad:?} is not PUBLISHERSxSUBSCRIBERS (both at least 1)");
        }
        Ok(())
    }

    fn preset_name(&self) -> &'static str {
        match self.preset {
            Preset::Smoke => "smoke",
            Preset::Target => "target",
        }
    }
}

/// `PxM` with both at least one.
fn parse_size(s: &str) -> Option<(usize, usize)> {
    let (p, m) = s.trim().split_once('x')?;
    let (p, m) = (p.parse().ok()?, m.parse().ok()?);
    (p > 0 && m > 0).then_some((p, m))
}

fn run_id() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    format!("{:x}{:03x}", secs, std::process::id() % 4096)
}

async fn run_scenario(ctx: &Ctx, scenario: Scenario) -> Outcome {
    let server = &ctx.server;
    eprintln!("[{}] {} ...", server.label, scenario.name());
    let max_time = if scenario == Scenario::SsFirst { ctx.sizes.ss_first_max_time } else { ctx.sizes.max_time };
    server.budget.reset(max_time, ctx.sizes.max_requests);
    if let Some(remote) = &ctx.remote {
        remote.server.budget.reset(max_time, ctx.sizes.max_requests);
    }
    let mut o = Outcome::new(scenario.name(), &server.label, server.base.as_str());
    let started = Instant::now();
    let result = match scenario {
        Scenario::Register => scenarios::register::run(ctx, &mut o).await,
        Scenario::Send => scenarios::send::run(ctx, &mut o).await,
        Scenario::E2eLatency => scenarios::e2e::run(ctx, &mut o).await,
        Scenario::Fanout => scenarios::fanout::run(ctx, &mut o).await,
        Scenario::InitialSync => scenarios::initial_sync::run(ctx, &mut o).await,
        Scenario::SsFirst => scenarios::ss_first::run(ctx, &mut o).await,
        Scenario::SsArrival => scenarios::ss_arrival::run(ctx, &mut o).await,
        Scenario::JoinLarge => scenarios::join_large::run(ctx, &mut o).await,
        Scenario::History => scenarios::history::run(ctx, &mut o).await,
        Scenario::Connections => scenarios::connections::run(ctx, &mut o).await,
        Scenario::KeyShare => scenarios::key_share::run(ctx, &mut o).await,
        Scenario::Thumbnail => scenarios::thumbnail::run(ctx, &mut o).await,
        Scenario::DelayedRestart => scenarios::delayed_restart::run(ctx, &mut o).await,
        Scenario::Rss => scenarios::rss::run(ctx, &mut o).await,
        Scenario::Sfu => scenarios::sfu::run(ctx, &mut o).await,
        Scenario::FedLatency => scenarios::federation::latency(ctx, &mut o).await,
        Scenario::FedThroughput => scenarios::federation::throughput(ctx, &mut o).await,
        Scenario::FedJoinLarge => scenarios::federation::join_large(ctx, &mut o).await,
        Scenario::All => unreachable!("expanded before running"),
    };
    o.wall_s = started.elapsed().as_secs_f64();
    o.requests = server.budget.used() + ctx.remote.as_ref().map_or(0, |r| r.server.budget.used());
    if let Err(e) = result {
        o.error = Some(format!("{e:#}"));
        eprintln!("[{}] {} FAILED: {e:#}", server.label, scenario.name());
    } else {
        eprintln!("[{}] {} done in {:.1} s", server.label, scenario.name(), o.wall_s);
    }
    o
}

fn emit(o: &Outcome, results: &ResultsFile) -> Result<()> {
    println!("{}", o.json_line());
    results.row(o)
}

fn header_notes(common: &Common, sizes: &Sizes, servers: &[&Server]) -> Vec<String> {
    let mut notes = vec![format!(
        "preset `{}`, room version {}, bounds per scenario and server: {} s (ss-first {} s), {} requests",
        common.preset_name(),
        sizes.room_version.as_deref().unwrap_or("server default"),
        sizes.max_time.as_secs(),
        sizes.ss_first_max_time.as_secs(),
        sizes.max_requests
    )];
    for s in servers {
        notes.push(format!("{}: {} (pid {})", s.label, s.base, s.pid.map_or("not given".into(), |p| p.to_string())));
    }
    notes.extend(common.note.iter().cloned());
    notes
}

/// The context of one server, with its federating partner when given
/// (`remote`: that server's URL; its users get the run id plus `r`).
async fn context(server: Server, remote: Option<&str>, sizes: &Sizes, id: &str) -> Result<Ctx> {
    let ctx = Ctx::new(server, sizes.clone(), id)?;
    let Some(url) = remote else { return Ok(ctx) };
    let remote_id = format!("{id}r");
    let server = Server::new(&format!("{}-remote", ctx.server.label), url, None, &remote_id)?;
    server.check_reachable().await?;
    Ok(ctx.with_remote(Ctx::new(server, sizes.clone(), &remote_id)?))
}

fn remote_note(label: &str, remote: Option<&str>) -> Option<String> {
    remote.map(|url| format!("{label}-remote (federating with {label}): {url}"))
}

async fn run_one(url: String, pid: Option<u32>, label: String, url_remote: Option<String>, common: Common) -> Result<bool> {
    common.check()?;
    let sizes = common.sizes();
    let id = run_id();
    let server = Server::new(&label, &url, pid, &id)?;
    server.check_reachable().await?;
    let results = ResultsFile::new(common.results.as_deref());
    let mut notes = header_notes(&common, &sizes, &[&server]);
    notes.extend(remote_note(&label, url_remote.as_deref()));
    results.start_run(&format!("{} — run against {label}", report::utc_now()), &notes)?;
    let ctx = context(server, url_remote.as_deref(), &sizes, &id).await?;
    let mut ok = true;
    for scenario in common.scenarios() {
        let o = run_scenario(&ctx, scenario).await;
        ok &= o.error.is_none();
        emit(&o, &results)?;
    }
    Ok(ok)
}

/// One side of `compare`: URL, pid, label and the federating partner's URL.
type Side = (String, Option<u32>, String, Option<String>);

async fn compare(a: Side, b: Side, common: Common) -> Result<bool> {
    let sizes = common.sizes();
    let id = run_id();
    let server_a = Server::new(&a.2, &a.0, a.1, &format!("{id}a"))?;
    let server_b = Server::new(&b.2, &b.0, b.1, &format!("{id}b"))?;
    server_a.check_reachable().await?;
    server_b.check_reachable().await?;
    if a.2 == b.2 {
        bail!("--a-label and --b-label must differ");
    }
    let results = ResultsFile::new(common.results.as_deref());
    let mut notes = header_notes(&common, &sizes, &[&server_a, &server_b]);
    notes.extend(remote_note(&a.2, a.3.as_deref()));
    notes.extend(remote_note(&b.2, b.3.as_deref()));
    results.start_run(&format!("{} — compare {} (A) with {} (B)", report::utc_now(), a.2, b.2), &notes)?;
    // Both contexts first, so both idle memory figures precede any load.
    let ctx_a = context(server_a, a.3.as_deref(), &sizes, &format!("{id}a")).await?;
    let ctx_b = context(server_b, b.3.as_deref(), &sizes, &format!("{id}b")).await?;
    let mut pairs = Vec::new();
    let mut ok = true;
    for (i, scenario) in common.scenarios().into_iter().enumerate() {
        // Alternate which server goes first, so neither always meets a
        // machine the other has just warmed (or heated).
        let (oa, ob) = if i % 2 == 0 {
            let oa = run_scenario(&ctx_a, scenario).await;
            emit(&oa, &results)?;
            let ob = run_scenario(&ctx_b, scenario).await;
            emit(&ob, &results)?;
            (oa, ob)
        } else {
            let ob = run_scenario(&ctx_b, scenario).await;
            emit(&ob, &results)?;
            let oa = run_scenario(&ctx_a, scenario).await;
            emit(&oa, &results)?;
            (oa, ob)
        };
        ok &= oa.error.is_none() && ob.error.is_none();
        for fa in &oa.figures {
            if let Some(vb) = ob.get(&fa.name) {
                println!(
                    "{}",
                    json!({
                        "compare": scenario.name(),
                        "figure": fa.name,
                        "a": a.2, "a_value": fa.value,
                        "b": b.2, "b_value": vb,
                        "ratio_a_over_b": fa.value / vb,
                        "better": fa.better.describe(),
                    })
                );
            }
        }
        pairs.push((oa, ob));
    }
    let table = results.ratios(&a.2, &b.2, &pairs)?;
    eprintln!("{table}");
    Ok(ok)
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let ok = match cli.command {
        Command::Run { url, pid, label, url_remote, common } => run_one(url, pid, label, url_remote, common).await?,
        Command::Compare { a, a_pid, a_label, a_remote, b, b_pid, b_label, b_remote, common } => {
            compare((a, a_pid, a_label, a_remote), (b, b_pid, b_label, b_remote), common).await?
        }
    };
    if !ok {
        eprintln!("some scenarios failed (see the `error` fields)");
        std::process::exit(1);
    }
    Ok(())
}
