//! The `chancery` command.

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::Context;
use chancery_server::config::{self, Config, LogFormat};
use chancery_service::NewRegistrationToken;
use chancery_service::clock::{Clock, SystemClock};
use clap::{Parser, Subcommand};

/// mimalloc rather than glibc's malloc: a sliding-sync answer or a sync
/// allocates many small strings and frees them together, and glibc spent a
/// quarter of such a request's CPU consolidating and unlinking free chunks.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Chancery: a Matrix homeserver for institutions.
#[derive(Parser)]
#[command(name = "chancery", version, about, propagate_version = true)]
struct Cli {
    /// Configuration file [env: CHANCERY_CONFIG] (default ./chancery.toml,
    /// written with comments on first run).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the homeserver until SIGTERM or SIGINT.
    Serve {
        /// Write the bound address (ip:port) to this file once listening.
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
    /// Create an account.
    CreateUser {
        /// The localpart (`alice` for @alice:server).
        name: String,
        /// Make the account a server administrator.
        #[arg(long)]
        admin: bool,
        /// Read the password from the first line of standard input instead
        /// of generating one.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Manage registration tokens (for `registration = "token"`).
    #[command(subcommand)]
    RegistrationToken(TokenCommand),
    /// Replace the server's signing key with a new one; the old one stays
    /// published (`old_verify_keys`) so the events it signed still verify.
    /// Restart every node afterwards.
    RotateSigningKey,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token and print it.
    Create {
        /// Use this token instead of a random one.
        #[arg(long)]
        token: Option<String>,
        /// Length of a random token.
        #[arg(long, default_value_t = 16)]
        length: usize,
        /// How many registrations it allows (default: unlimited).
        #[arg(long)]
        uses_allowed: Option<u64>,
        /// Expire after this many seconds (default: never).
        #[arg(long, conflicts_with = "expiry_time")]
        expires_in: Option<u64>,
        /// Expire at this time, in milliseconds since the Unix epoch.
        #[arg(long)]
        expiry_time: Option<u64>,
    },
    /// List all tokens with their uses and state.
    List,
    /// Revoke a token: it can no longer be used.
    Revoke { token: String },
}

fn init_logging(config: &Config) {
    use tracing_subscriber::filter::filter_fn;
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{EnvFilter, fmt};
    // ruma's state resolution logs every authorised event at INFO: too
    // much for a server's default log, so it starts at WARN unless the
    // operator's filter names it.
    let level = if config.log.level.contains("ruma_state_res") {
        config.log.level.clone()
    } else {
        format!("{},ruma_state_res=warn", config.log.level)
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let output = match config.log.format {
        LogFormat::Json => fmt::layer().json().with_writer(std::io::stderr).with_ansi(ansi).boxed(),
        LogFormat::Text => fmt::layer().with_writer(std::io::stderr).with_ansi(ansi).boxed(),
    };
    tracing_subscriber::registry().with(output.with_filter(filter).with_filter(filter_fn(holds_no_bound_parameters))).init();
}

/// tokio-postgres logs every statement's bound parameters at DEBUG (through
/// the `log` crate): token hashes, password hashes, message bodies. Its
/// logs stop at INFO whatever the operator's filter asks (`RUST_LOG=debug`,
/// or naming its targets), so turning on debug logging never writes them.
fn holds_no_bound_parameters(meta: &tracing::Metadata<'_>) -> bool {
    !(meta.target().starts_with("tokio_postgres") && *meta.level() > tracing::Level::INFO)
}

fn main() {
    let cli = Cli::parse();
    let (config, path) = match config::load_from_disk(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    init_logging(&config);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let result = runtime.block_on(run(cli.command, config, path));
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(command: Command, config: Config, path: PathBuf) -> anyhow::Result<()> {
    match command {
        Command::Serve { ready_file } => serve(config, path, ready_file).await,
        Command::CreateUser { name, admin, password_stdin } => {
            let (password, generated) = if password_stdin {
                let mut line = String::new();
                std::io::stdin().lock().read_line(&mut line).context("reading the password from stdin")?;
                (line.trim_end_matches(['\r', '\n']).to_owned(), false)
            } else {
                let entropy = chancery_service::tokens::OsEntropy;
                (chancery_service::tokens::random_string(&entropy, chancery_service::tokens::ALNUM, 20), true)
            };
            let store = chancery_server::open_store(&config).await?;
            let components = chancery_server::components(&config, store.clone())?;
            let created = components.accounts.create_user(&name, Some(password.clone()), admin).await;
            store.close().await;
            let user_id = created.map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("created {user_id}{}", if admin { " (admin)" } else { "" });
            if generated {
                println!("password: {password}");
            }
            Ok(())
        }
        Command::RotateSigningKey => {
            let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
            let path = config.signing_key_path();
            let (old, new) = chancery_service::signing::rotate(&path, now_ms).map_err(|e| anyhow::anyhow!(e))?;
            println!("signing key {new} replaces {old} (kept in {})", chancery_service::signing::old_keys_path(&path).display());
            println!("restart every node of this server to sign with it");
            Ok(())
        }
        Command::RegistrationToken(cmd) => {
            let store = chancery_server::open_store(&config).await?;
            let components = chancery_server::components(&config, store.clone())?;
            let result = registration_token(&components.accounts, cmd).await;
            store.close().await;
            result
        }
    }
}

async fn registration_token(accounts: &chancery_service::Accounts, cmd: TokenCommand) -> anyhow::Result<()> {
    let fail = |e: chancery_service::Error| anyhow::anyhow!("{e}");
    match cmd {
        TokenCommand::Create { token, length, uses_allowed, expires_in, expiry_time } => {
            let now_ms = SystemClock.now_ms();
            let expiry_ts = expiry_time.or(expires_in.map(|s| now_ms.saturating_add(s.saturating_mul(1000))));
            let t = accounts
                .create_registration_token(NewRegistrationToken { token, length, uses_allowed, expiry_ts })
                .await
                .map_err(fail)?;
            println!("{}", t.token);
        }
        TokenCommand::List => {
            let now = SystemClock.now_ms();
            println!("{:<24} {:>9} {:>13} {:>15} state", "token", "completed", "uses_allowed", "expiry_ms");
            for t in accounts.registration_tokens().await.map_err(fail)? {
                let state = if t.revoked_ts.is_some() {
                    "revoked"
                } else if t.is_usable(now) {
                    "valid"
                } else {
                    "used up or expired"
                };
                let uses = t.uses_allowed.map_or("unlimited".into(), |u| u.to_string());
                let expiry = t.expiry_ts.map_or("never".into(), |e| e.to_string());
                println!("{:<24} {:>9} {:>13} {:>15} {state}", t.token, t.completed, uses, expiry);
            }
        }
        TokenCommand::Revoke { token } => {
            accounts.revoke_registration_token(&token).await.map_err(fail)?;
            println!("revoked {token}");
        }
    }
    Ok(())
}

async fn serve(config: Config, path: PathBuf, ready_file: Option<PathBuf>) -> anyhow::Result<()> {
    tracing::info!(config = %path.display(), env = ?config::env_keys(), version = env!("CARGO_PKG_VERSION"), "starting chancery");
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("creating data_dir {}", config.data_dir.display()))?;
    let server = chancery_server::start(config).await?;
    if let Some(file) = ready_file {
        std::fs::write(&file, server.local_addr.to_string()).with_context(|| format!("writing {}", file.display()))?;
    }
    shutdown_signal().await;
    tracing::info!("shutting down: finishing in-flight requests");
    server.shutdown().await
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
