//! A real Synapse (pinned 1.163.2, as bench/synapse.sh) started by a test,
//! federating with Chancery's test servers: named `127.0.0.1:<port>`, its
//! server-server API over TLS with a certificate of the test CA, trusting
//! that CA (and only with certificate checks on) for its outbound requests.
//!
//! Synapse comes from a Python venv: `SYNAPSE_VENV` if set, else
//! `<workspace>/target/synapse-venv` (scripts/test installs it there).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;

use crate::federation::TestCa;

/// The Synapse version the tests are written against.
pub const SYNAPSE_VERSION: &str = "1.163.2";

/// How long Synapse may take to answer after being started.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// A Synapse child process with its data in a temp dir; killed on drop.
pub struct SynapseServer {
    child: Option<Child>,
    /// `http://127.0.0.1:<port>`: the client-server API, plain HTTP.
    pub base_url: String,
    /// `127.0.0.1:<federation port>`.
    pub server_name: String,
    client_port: u16,
    /// Config, database and logs; kept (not deleted) when a test fails.
    dir: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

/// Starts Synapse on the config in `dir`, its output appended to
/// `stdout.log` there.
fn spawn(dir: &Path) -> anyhow::Result<Child> {
    let stdout = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("stdout.log"))?;
    Command::new(venv().join("bin/python"))
        .args(["-m", "synapse.app.homeserver", "--config-path"])
        .arg(dir.join("homeserver.yaml"))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(stdout.try_clone()?)
        .stderr(stdout)
        .spawn()
        .context("starting Synapse")
}

/// The venv Synapse runs from.
pub fn venv() -> PathBuf {
    match std::env::var_os("SYNAPSE_VENV") {
        Some(path) => PathBuf::from(path),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/synapse-venv"),
    }
}

/// A port free right now on 127.0.0.1 (another process may take it before
/// Synapse binds it: acceptable for tests).
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0").context("binding a free port")?.local_addr()?.port())
}

impl SynapseServer {
    /// Writes the config, generates the signing key and starts Synapse,
    /// waiting (at most 120 s) until its client API answers.
    pub async fn start() -> anyhow::Result<Self> {
        let python = venv().join("bin/python");
        let version = Command::new(&python)
            .args(["-c", "import synapse; print(synapse.__version__)"])
            .output()
            .ok()
            .filter(|out| out.status.success())
            // Inside a git checkout (target/synapse-venv) Synapse appends
            // " (b=<branch>,<commit>)" of that checkout: the first word is its own.
            .and_then(|out| String::from_utf8_lossy(&out.stdout).split_whitespace().next().map(str::to_owned));
        match version.as_deref() {
            Some(SYNAPSE_VERSION) => {}
            Some(other) => bail!("{} has Synapse {other}, the tests need {SYNAPSE_VERSION}", python.display()),
            None => bail!(
                "no Synapse in the venv {}: scripts/test installs it (python3 -m venv target/synapse-venv && \
                 target/synapse-venv/bin/pip install matrix-synapse=={SYNAPSE_VERSION}), or point SYNAPSE_VENV at one",
                venv().display()
            ),
        }

        let dir = tempfile::tempdir()?;
        let (cert, key) = TestCa::shared().issue(dir.path())?;
        std::fs::write(dir.path().join("log.yaml"), log_config(dir.path()))?;
        // The ports are free when picked, but another process may take one
        // before Synapse binds it: then Synapse is started again on others.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (client_port, federation_port) = (free_port()?, free_port()?);
            let server_name = format!("127.0.0.1:{federation_port}");
            let config_path = dir.path().join("homeserver.yaml");
            std::fs::write(
                &config_path,
                config(dir.path(), &server_name, client_port, federation_port, &cert, &key).to_string(),
            )?;
            if attempt == 1 {
                let status = Command::new(&python)
                    .args(["-m", "synapse.app.homeserver", "--config-path"])
                    .arg(&config_path)
                    .arg("--generate-keys")
                    .current_dir(dir.path())
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .context("generating Synapse's signing key")?;
                if !status.success() {
                    bail!("synapse --generate-keys failed: {status}");
                }
            }
            let child = spawn(dir.path())?;
            let mut server = Self {
                child: Some(child),
                base_url: format!("http://127.0.0.1:{client_port}"),
                server_name,
                client_port,
                dir: dir.path().to_owned(),
                _dir: None,
            };
            match server.wait_until_answering(client_port).await {
                Ok(()) => {
                    server._dir = Some(dir);
                    return Ok(server);
                }
                Err(e) if attempt < 3 && e.to_string().contains("Address already in use") => {
                    server.kill();
                    continue;
                }
                Err(e) => {
                    server._dir = Some(dir);
                    return Err(e);
                }
            }
        }
    }

    /// Kills Synapse and starts it again on the same data and ports: what
    /// it held only in memory (its federation send queues) is lost, as in
    /// a crash.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.child = Some(spawn(&self.dir)?);
        self.wait_until_answering(self.client_port).await
    }

    async fn wait_until_answering(&mut self, port: u16) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if versions_answer(port) {
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().context("no process")?.try_wait()? {
                bail!("Synapse exited during start-up ({status}):\n{}", self.log_tail());
            }
            if Instant::now() > deadline {
                bail!("Synapse did not answer within {} s:\n{}", START_TIMEOUT.as_secs(), self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last lines of Synapse's output and log, for failure messages.
    pub fn log_tail(&self) -> String {
        let mut tail = String::new();
        for name in ["stdout.log", "homeserver.log"] {
            let text = std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
            // Without the access log and /sync's cache hits: polling
            // tests would fill the tail with them.
            let lines: Vec<&str> =
                text.lines().filter(|l| !l.contains(" - synapse.access.") && !l.contains("response_cache")).collect();
            tail += &format!("--- {name} ---\n{}\n", lines[lines.len().saturating_sub(60)..].join("\n"));
        }
        tail
    }

    /// Kills Synapse and waits for it.
    pub fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for SynapseServer {
    /// Kills Synapse; when a test failed, shows the tail of its log and
    /// keeps its directory.
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let kept = self._dir.take().map(tempfile::TempDir::keep);
            eprintln!("Synapse {} ({}), its files kept in {kept:?}:\n{}", self.server_name, self.base_url, self.log_tail());
        }
    }
}

/// Whether `GET /_matrix/client/versions` answers 200 on 127.0.0.1:`port`.
fn versions_answer(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let request = format!("GET /_matrix/client/versions HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && &head[9..12] == b"200"
}

/// Synapse's config (JSON is YAML): like bench/synapse.sh's, plus a TLS
/// federation listener and the test CA.
fn config(dir: &Path, server_name: &str, client_port: u16, federation_port: u16, cert: &Path, key: &Path) -> serde_json::Value {
    let unlimited = json!({"per_second": 1000000, "burst_count": 1000000});
    let config = json!({
        "server_name": server_name,
        "pid_file": dir.join("homeserver.pid"),
        "listeners": [
            {
                "port": client_port, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": false,
                "x_forwarded": false, "resources": [{"names": ["client"], "compress": false}],
            },
            {
                "port": federation_port, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": true,
                "x_forwarded": false, "resources": [{"names": ["federation", "keys"], "compress": false}],
            },
        ],
        "tls_certificate_path": cert,
        "tls_private_key_path": key,
        "federation_custom_ca_list": [TestCa::shared().cert_path],
        "federation_verify_certificates": true,
        // Synapse refuses to contact loopback addresses by default, and
        // the Chancery servers of a test are there. `ip_range_whitelist`
        // is not enough for server names that are IP literals: Synapse
        // 1.163 checks those against the federation blocklist alone
        // (BlocklistingAgentWrapper), so the federation blocklist is
        // emptied (Synapse still adds 0.0.0.0 and ::).
        "federation_ip_range_blacklist": [],
        "database": {"name": "sqlite3", "args": {"database": dir.join("homeserver.db")}},
        "log_config": dir.join("log.yaml"),
        "media_store_path": dir.join("media_store"),
        "signing_key_path": dir.join("signing.key"),
        "macaroon_secret_key": "chancery-test-synapse-macaroon-secret",
        "report_stats": false,
        "enable_metrics": false,
        "trusted_key_servers": [],
        "suppress_key_server_warning": true,
        "enable_registration": true,
        "enable_registration_without_verification": true,
        "presence": {"enabled": false},
        "url_preview_enabled": false,
    });
    let limits = json!({
        "rc_message": unlimited,
        "rc_registration": unlimited,
        "rc_registration_token_validity": unlimited,
        "rc_login": {"address": unlimited, "account": unlimited, "failed_attempts": unlimited},
        "rc_joins": {"local": unlimited, "remote": unlimited},
        "rc_joins_per_room": unlimited,
        "rc_invites": {"per_room": unlimited, "per_user": unlimited, "per_issuer": unlimited},
        "rc_room_creation": unlimited,
        "rc_admin_redaction": unlimited,
        "rc_key_requests": unlimited,
        "rc_3pid_validation": unlimited,
        "rc_third_party_invite": unlimited,
        "rc_media_create": unlimited,
        "rc_presence": {"per_user": unlimited},
        "rc_delayed_event_mgmt": unlimited,
        "rc_reports": unlimited,
        "rc_user_directory": unlimited,
        "rc_profile": unlimited,
        "rc_federation": {"window_size": 1000, "sleep_limit": 1000000, "sleep_delay": 1, "reject_limit": 1000000, "concurrent": 1000000},
    });
    let (serde_json::Value::Object(mut config), serde_json::Value::Object(limits)) = (config, limits) else {
        unreachable!("both are JSON objects")
    };
    config.extend(limits);
    serde_json::Value::Object(config)
}

/// INFO to a file in `dir`.
fn log_config(dir: &Path) -> String {
    format!(
        "version: 1
formatters:
  precise:
    format: '%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s'
handlers:
  file:
    class: logging.FileHandler
    formatter: precise
    filename: {}
    encoding: utf8
root:
  level: INFO
  handlers: [file]
disable_existing_loggers: false
",
        dir.join("homeserver.log").display()
    )
}
