//! Boots real Chancery servers for tests: in this process (fast, shares the
//! test's tokio runtime) or as a child process of the `chancery` binary
//! (for signals and crashes), on SQLite in a temp dir or on a database of a
//! throwaway PostgreSQL cluster. Servers listen on 127.0.0.1, port 0.
//!
//! Architecture invariant: product code never depends on this crate.

pub mod federation;
pub mod pg;
pub mod synapse;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chancery_server::{Config, RunningServer};
use tempfile::TempDir;

/// Which database a test server uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub const ALL: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];
}

/// A config for tests: open registration, no rate limits, loopback, port 0,
/// data in `dir`.
pub async fn test_config(backend: Backend, dir: &Path) -> anyhow::Result<Config> {
    let mut config = Config::default();
    config.listen = "127.0.0.1:0".parse()?;
    config.data_dir = dir.to_owned();
    config.registration = chancery_server::config::RegistrationMode::Open;
    config.rate_limits.enabled = false;
    config.log.level = "warn".into();
    config.database_url = Some(match backend {
        Backend::Sqlite => format!("sqlite:{}", dir.join("chancery.db").display()),
        Backend::Postgres => pg::PgCluster::shared().fresh_database().await?,
    });
    Ok(config)
}

/// Creates `count` accounts named `{prefix}{n}` with one logged-in
/// device each, straight in the database of `config`, whether a server
/// runs on it or not (no password hashing, so a test can have thousands
/// of users). Returns (user_id, access_token).
pub async fn bulk_users(config: &Config, prefix: &str, count: usize) -> anyhow::Result<Vec<(String, String)>> {
    use chancery_store::{NewAccount, NewDevice, TokenPair};
    let store = chancery_server::open_store(config).await?;
    let mut users = Vec::with_capacity(count);
    for n in 0..count {
        let user_id = format!("@{prefix}{n}:{}", config.server_name);
        let token = format!("bulk_{prefix}{n}_{}", chancery_service::tokens::generate(&chancery_service::tokens::OsEntropy, ""));
        let account = NewAccount { user_id: user_id.clone(), password_hash: None, is_admin: false, created_ts: 1 };
        let tokens = TokenPair {
            access_token_hash: chancery_service::tokens::hash(&token),
            access_expires_ts: None,
            refresh_token_hash: None,
        };
        let device = NewDevice { user_id: user_id.clone(), device_id: "BULK".into(), display_name: None, tokens, now_ts: 1 };
        store.create_account(account, Some(device), None, 1).await?;
        users.push((user_id, token));
    }
    store.close().await;
    Ok(users)
}

/// A server running inside the test process.
pub struct TestServer {
    running: Option<RunningServer>,
    pub base_url: String,
    pub config: Config,
    dir: TempDir,
}

impl TestServer {
    pub async fn start(backend: Backend) -> anyhow::Result<Self> {
        Self::start_with(backend, |_| {}).await
    }

    /// Starts a server after `adjust` has changed the test config.
    pub async fn start_with(backend: Backend, adjust: impl FnOnce(&mut Config)) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut config = test_config(backend, dir.path()).await?;
        adjust(&mut config);
        let running = chancery_server::start(config.clone()).await?;
        Ok(Self { base_url: running.base_url(), running: Some(running), config, dir })
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn metrics_url(&self) -> Option<String> {
        self.running.as_ref()?.metrics_addr.map(|a| format!("http://{a}/metrics"))
    }

    /// Another node on the same database (PostgreSQL) and the same signing
    /// key, as a scaled-out deployment runs them.
    pub async fn another_node(&self) -> anyhow::Result<TestServer> {
        let dir = tempfile::tempdir()?;
        let mut config = self.config.clone();
        config.listen = "127.0.0.1:0".parse()?;
        config.signing_key_path = Some(self.config.signing_key_path());
        config.data_dir = dir.path().to_owned();
        let running = chancery_server::start(config.clone()).await?;
        Ok(Self { base_url: running.base_url(), running: Some(running), config, dir })
    }

    /// Creates `count` accounts straight in the database: see [`bulk_users`].
    pub async fn bulk_users(&self, prefix: &str, count: usize) -> anyhow::Result<Vec<(String, String)>> {
        bulk_users(&self.config, prefix, count).await
    }

    /// Stops the server gracefully and starts it again on the same data.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if let Some(running) = self.running.take() {
            running.shutdown().await?;
        }
        let mut config = self.config.clone();
        config.listen = "127.0.0.1:0".parse()?;
        let running = chancery_server::start(config).await?;
        self.base_url = running.base_url();
        self.running = Some(running);
        Ok(())
    }

    /// Stops the server, runs `meanwhile`, then starts it again on the
    /// same data (and the same federation port, if it federates).
    pub async fn restart_after<F, Fut>(&mut self, meanwhile: F) -> anyhow::Result<()>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        if let Some(running) = self.running.take() {
            running.shutdown().await?;
        }
        meanwhile().await;
        let mut config = self.config.clone();
        config.listen = "127.0.0.1:0".parse()?;
        let running = chancery_server::start(config).await?;
        self.base_url = running.base_url();
        self.running = Some(running);
        Ok(())
    }

    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(running) = self.running.take() {
            running.shutdown().await?;
        }
        Ok(())
    }
}

/// A `chancery serve` child process.
pub struct ChildServer {
    child: tokio::process::Child,
    pub base_url: String,
    pub config_path: PathBuf,
}

impl ChildServer {
    /// Writes `config` as TOML next to the data and starts `binary serve`
    /// with it, waiting (at most 30 s) until it is listening.
    pub async fn spawn(binary: &Path, config: &Config) -> anyhow::Result<Self> {
        Self::spawn_with(binary, config, &[], Stdio::inherit()).await
    }

    /// Like [`Self::spawn`], with these environment variables set and its
    /// log (stderr) written to `stderr`.
    pub async fn spawn_with(binary: &Path, config: &Config, env: &[(&str, &str)], stderr: Stdio) -> anyhow::Result<Self> {
        let config_path = config.data_dir.join("chancery.toml");
        std::fs::write(&config_path, toml_of(config)?)?;
        let ready = config.data_dir.join("ready");
        let _ = std::fs::remove_file(&ready);
        let child = tokio::process::Command::new(binary)
            .arg("--config")
            .arg(&config_path)
            .arg("serve")
            .arg("--ready-file")
            .arg(&ready)
            .env_remove("CHANCERY_CONFIG")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut server = Self { child, base_url: String::new(), config_path };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(addr) = std::fs::read_to_string(&ready)
                && !addr.is_empty()
            {
                server.base_url = format!("http://{}", addr.trim());
                return Ok(server);
            }
            if let Some(status) = server.child.try_wait()? {
                bail!("chancery exited before listening: {status}");
            }
            if Instant::now() > deadline {
                bail!("chancery did not start listening within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: no chance to finish anything.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }

    /// Sends SIGTERM and waits (at most 30 s) for a clean exit.
    pub async fn terminate(mut self) -> anyhow::Result<std::process::ExitStatus> {
        let pid = self.child.id().context("child already gone")?;
        let status = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status()?;
        if !status.success() {
            bail!("kill -TERM failed");
        }
        Ok(tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .context("no exit within 30 s after SIGTERM")??)
    }
}

fn toml_of(config: &Config) -> anyhow::Result<String> {
    Ok(toml::to_string(config)?)
}
