//! A throwaway PostgreSQL cluster for tests: real `postgres` binaries, a
//! data directory under /tmp, reachable only through a Unix socket there.
//!
//! One cluster per test process ([`PgCluster::shared`]) and one database per
//! test ([`PgCluster::fresh_database`]): starting a cluster costs about a
//! second, creating a database a few milliseconds.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use tempfile::TempDir;

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const READY_POLL: Duration = Duration::from_millis(50);
const SUPERUSER: &str = "postgres";
/// Written by the wrapper when postgres has exited, holding its status.
const EXITED: &str = "postgres.exited";

/// A running cluster. It stops, and its directory is removed, when the test
/// process exits however it exits: see [`PgCluster::start`].
pub struct PgCluster {
    /// The socket directory, which is also the root of everything else.
    dir: PathBuf,
    /// The wrapper shell. Its stdin is `stdin` below.
    child: Child,
    /// Closing this (explicitly, or by the kernel when the process dies)
    /// tells the wrapper to stop postgres and delete `dir`.
    stdin: Option<ChildStdin>,
    /// Deletes `dir` if the cluster is dropped rather than outlived.
    _tempdir: TempDir,
}

static SHARED: OnceLock<PgCluster> = OnceLock::new();
static NEXT_DB: AtomicU64 = AtomicU64::new(0);

impl PgCluster {
    /// The process-wide cluster, started on first use. Panics if it cannot
    /// be started: a test that needs PostgreSQL must fail, not skip.
    pub fn shared() -> &'static PgCluster {
        SHARED.get_or_init(|| PgCluster::start().unwrap_or_else(|e| panic!("starting the test PostgreSQL cluster: {e:#}")))
    }

    /// Creates and starts a new cluster.
    ///
    /// A static is never dropped and a panicking test may abort the process,
    /// so cleanup cannot rely on `Drop`. Instead postgres runs under a small
    /// shell whose stdin is a pipe only this process writes to: when the
    /// process exits the kernel closes the pipe, `read` returns, and the
    /// shell stops postgres and deletes the directory.
    pub fn start() -> anyhow::Result<PgCluster> {
        let bin = find_bindir()?;
        let as_root = effective_uid_is_root()?;
        let tempdir =
            tempfile::Builder::new().prefix("chancery-pg-").tempdir_in("/tmp").context("creating the cluster directory")?;
        let dir = tempdir.path().to_owned();
        let data = dir.join("data");
        let log = dir.join("postgres.log");
        if as_root {
            // initdb and postgres refuse to run as root.
            run(Command::new("chown").arg("-R").arg(SUPERUSER).arg(&dir), "chown -R postgres")?;
        }

        run(
            server_command(as_root, &bin.join("initdb"))
                .arg("-D")
                .arg(&data)
                .args(["-A", "trust", "-U", SUPERUSER, "-E", "UTF8", "--locale=C", "--no-sync"])
                .current_dir(&dir),
            "initdb",
        )?;
        // Throwaway data: durability settings off for speed. Unix socket
        // only, so parallel test processes never fight over a TCP port.
        let mut conf =
            fs::OpenOptions::new().append(true).open(data.join("postgresql.conf")).context("opening postgresql.conf")?;
        writeln!(
            conf,
            "\nlisten_addresses = ''\nfsync = off\nfull_page_writes = off\nsynchronous_commit = off\nmax_connections = 200"
        )
        .context("writing postgresql.conf")?;
        drop(conf);

        // `$1`… are passed as arguments, never spliced into the script, so
        // no path needs quoting. The stdin pipe is kept on fd 3 because a
        // background job's stdin is /dev/null. It carries commands, one a
        // line: `stop` (a fast shutdown, waited for) and `start`, so a test
        // can take the server away and bring it back on the same socket
        // ([`PgCluster::stop`], [`PgCluster::start_again`]). Once postgres
        // exits (stopped, or failed on its own) the wrapper leaves a marker
        // for `wait_ready` and `stop`. When the pipe closes (the test
        // process ended, however) it stops postgres and removes the
        // directory, log included. INT is ignored so that Ctrl-C on the
        // test run still lets the wrapper clean up; postgres sets its own
        // handler and so still takes `kill -INT` as a fast shutdown.
        let script = r#"trap '' INT
exec 3<&0
run() {
  ("$1/postgres" -D "$2" -k "$3" >>"$4" 2>&1 </dev/null 3<&-; echo "$?" >"$5") 3<&- &
}
run "$@"
while read -r command <&3; do
  case "$command" in
    stop) "$1/pg_ctl" stop -D "$2" -m fast -w -t 60 >>"$4" 2>&1 </dev/null 3<&-; wait ;;
    start) run "$@" ;;
  esac
done
"$1/pg_ctl" stop -D "$2" -m fast -w -t 60 >/dev/null 2>&1 </dev/null 3<&-
wait
rm -rf "$3""#;
        let mut child = server_command(as_root, Path::new("sh"))
            .arg("-c")
            .arg(script)
            .arg("chancery-pg")
            .arg(&bin)
            .arg(&data)
            .arg(&dir)
            .arg(&log)
            .arg(dir.join(EXITED))
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawning postgres")?;
        let stdin = child.stdin.take();
        let mut cluster = PgCluster { dir, child, stdin, _tempdir: tempdir };
        if let Err(e) = cluster.wait_ready() {
            let log = fs::read_to_string(&log).unwrap_or_else(|e| format!("(no log: {e})"));
            return Err(e.context(format!("postgres did not become ready; its log:\n{log}")));
        }
        Ok(cluster)
    }

    /// Stops the server as an operator would (`pg_ctl stop -m fast`:
    /// clients are disconnected, the data is flushed) and waits (at most
    /// 60 s) until it has exited. Its data and socket directory stay, for
    /// [`Self::start_again`].
    pub fn stop(&mut self) -> anyhow::Result<()> {
        self.command("stop")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.dir.join(EXITED).exists() {
            if Instant::now() > deadline {
                bail!("postgres did not stop within 60 s");
            }
            std::thread::sleep(READY_POLL);
        }
        Ok(())
    }

    /// Starts the stopped server again, on the same data and socket, and
    /// waits until it accepts connections.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        fs::remove_file(self.dir.join(EXITED)).context("postgres is not stopped")?;
        self.command("start")?;
        self.wait_ready()
    }

    fn command(&mut self, command: &str) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().context("the cluster is being dropped")?;
        writeln!(stdin, "{command}").and_then(|()| stdin.flush()).with_context(|| format!("telling postgres to {command}"))
    }

    /// A `postgres://` URL of a new, empty database of its own.
    pub async fn fresh_database(&self) -> anyhow::Result<String> {
        let name = format!("test_{}_{}", std::process::id(), NEXT_DB.fetch_add(1, Ordering::Relaxed));
        let (client, connection) =
            self.admin_config().connect(tokio_postgres::NoTls).await.context("connecting to the test cluster")?;
        let connection = tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .with_context(|| format!("creating database {name}"))?;
        drop(client);
        let _ = connection.await;
        Ok(format!("postgres://{SUPERUSER}@{}/{name}", percent_encode(&self.dir.to_string_lossy())))
    }

    /// The socket directory, for a `host=` parameter.
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    fn admin_config(&self) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config.host_path(&self.dir).user(SUPERUSER).dbname("postgres");
        config
    }

    /// Polls a real connection, since the socket appears before the server
    /// accepts queries. Runs on its own thread and runtime because `start`
    /// is synchronous yet usually called from inside an async test.
    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let config = self.admin_config();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().context("checking on postgres")? {
                bail!("the postgres wrapper exited early ({status})");
            }
            if let Ok(status) = fs::read_to_string(self.dir.join(EXITED)) {
                bail!("postgres exited early (status {})", status.trim());
            }
            let attempt = std::thread::scope(|s| {
                s.spawn(|| -> anyhow::Result<()> {
                    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                    runtime.block_on(async {
                        let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
                        let connection = tokio::spawn(connection);
                        client.simple_query("SELECT 1").await?;
                        drop(client);
                        let _ = connection.await;
                        Ok(())
                    })
                })
                .join()
                .unwrap_or_else(|_| Err(anyhow!("readiness probe panicked")))
            });
            match attempt {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(e.context(format!("no connection within {READY_TIMEOUT:?}")));
                }
                Err(_) => std::thread::sleep(READY_POLL),
            }
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // Closing the pipe is the stop signal; wait so the directory is not
        // removed under a running postgres.
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin` (Debian's layout), else
/// whatever `pg_config --bindir` names.
fn find_bindir() -> anyhow::Result<PathBuf> {
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            has_server(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let bin = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_server(&bin) {
            return Ok(bin);
        }
    }
    bail!(
        "no PostgreSQL server binaries (initdb, postgres) under /usr/lib/postgresql/*/bin or in `pg_config --bindir`; \
         install the `postgresql` Debian package (apt-get install postgresql) to run these tests"
    )
}

/// Read from /proc rather than via libc, as `unsafe` is forbidden here.
fn effective_uid_is_root() -> anyhow::Result<bool> {
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let euid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .ok_or_else(|| anyhow!("no Uid line in /proc/self/status"))?;
    Ok(euid == "0")
}

/// `program`, run as the `postgres` OS user when we are root.
fn server_command(as_root: bool, program: &Path) -> Command {
    if as_root {
        let mut command = Command::new("runuser");
        command.args(["-u", SUPERUSER, "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn run(command: &mut Command, what: &str) -> anyhow::Result<()> {
    let out = command.stdin(Stdio::null()).output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Percent-encodes a socket directory for the host part of a URL, where
/// tokio-postgres decodes it and takes a leading `/` to mean a socket.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
