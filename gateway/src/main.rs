//! `berth`: the gateway daemon and its admin commands.

#![forbid(unsafe_code)]

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use berth::config::{Config, LogFormat, parse_duration};
use berth::hosts::{HostManager, engine};
use berth_keys::{KeyStore, UserName};
use clap::{Args, Parser, Subcommand};

/// An SSH gateway that gives every user their own Docker host.
#[derive(Parser)]
#[command(name = "berth", version)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Commands,
}

#[derive(Args)]
struct Global {
    /// Config file (TOML); every key has a default.
    #[arg(long, global = true, env = "BERTH_CONFIG")]
    config: Option<PathBuf>,
    /// State directory: host key, users and keys, per-user run dirs.
    #[arg(long, global = true, env = "BERTH_STATE_DIR")]
    state_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Commands {
    /// Run the SSH gateway.
    Serve(ServeArgs),
    /// Manage users.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage users' public keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Manage users' Docker hosts.
    #[command(subcommand)]
    Host(HostCommand),
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "BERTH_LISTEN")]
    listen: Option<SocketAddr>,
    /// Image for users' hosts.
    #[arg(long, env = "BERTH_IMAGE")]
    image: Option<String>,
    /// Stop a host after this long with no session ("30m", "0" = never).
    #[arg(long, env = "BERTH_IDLE_TIMEOUT", value_parser = parse_duration)]
    idle_timeout: Option<Duration>,
    /// A trusted OpenSSH user CA public key file (repeatable).
    #[arg(long = "trusted-user-ca", value_name = "FILE")]
    trusted_user_ca: Vec<PathBuf>,
    /// Revoked keys and certificates file.
    #[arg(long, value_name = "FILE", env = "BERTH_REVOKED_KEYS")]
    revoked_keys: Option<PathBuf>,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user (with no keys yet).
    Add { user: String },
    /// Remove a user and their keys. Their host and its volume stay; see `berth host purge`.
    Rm { user: String },
    /// List users.
    List,
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Add the public keys in FILE (or `-` for stdin) to USER, creating the user if needed.
    Add { user: String, file: PathBuf },
    /// List USER's keys.
    List { user: String },
    /// Remove USER's keys matching a SHA256 fingerprint or a comment.
    Rm { user: String, key: String },
}

#[derive(Subcommand)]
enum HostCommand {
    /// List hosts on the engine: state, uptime or idle time, live sessions.
    List,
    /// Stop USER's host cleanly (SIGTERM, then `stop_timeout` of grace).
    Stop { user: String },
    /// Remove USER's host container; the volume (inner images, containers) stays.
    Rm { user: String },
    /// Remove USER's host and its volume: everything in it is lost.
    Purge {
        user: String,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
        /// Purge even while the host has live sessions.
        #[arg(long)]
        force: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(global: &Global) -> anyhow::Result<Config> {
    let mut config = match &global.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(dir) = &global.state_dir {
        config.state_dir = dir.clone();
    }
    Ok(config)
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,russh=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let mut config = load_config(&cli.global)?;
    match cli.command {
        Commands::Serve(args) => {
            if let Some(listen) = args.listen {
                config.listen = listen;
            }
            if let Some(image) = args.image {
                config.image = image;
            }
            if let Some(idle) = args.idle_timeout {
                config.hosts.idle_timeout = idle;
            }
            config.trusted_user_ca_keys.extend(args.trusted_user_ca);
            if let Some(revoked) = args.revoked_keys {
                config.revoked_keys = Some(revoked);
            }
            if args.log_json {
                config.log.format = LogFormat::Json;
            }
            config.validate()?;
            init_logging(config.log.format);
            let runtime = tokio::runtime::Runtime::new().context("cannot start the runtime")?;
            runtime.block_on(async {
                berth::serve(
                    config,
                    |addr| eprintln!("berth: listening on {addr}"),
                    shutdown_signal(),
                )
                .await
            })?;
            Ok(())
        }
        Commands::User(command) => user_command(&config, command),
        Commands::Key(command) => key_command(&config, command),
        Commands::Host(command) => {
            let runtime = tokio::runtime::Runtime::new().context("cannot start the runtime")?;
            runtime.block_on(host_command(config, command))
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}

fn open_store(config: &Config) -> anyhow::Result<KeyStore> {
    berth::prepare_state_dir(&config.state_dir)?;
    Ok(KeyStore::open(&config.state_dir)?)
}

fn user_command(config: &Config, command: UserCommand) -> anyhow::Result<()> {
    let store = open_store(config)?;
    match command {
        UserCommand::Add { user } => {
            let user = UserName::parse(&user)?;
            if store.add_user(&user)? {
                println!("added user {user}");
            } else {
                println!("user {user} already exists");
            }
            prepare_host(config, &user);
        }
        UserCommand::Rm { user } => {
            let user = UserName::parse(&user)?;
            store.remove_user(&user)?;
            println!("removed user {user} and their keys (their host and volume are kept)");
        }
        UserCommand::List => {
            for user in store.list_users()? {
                println!("{user}");
            }
        }
    }
    Ok(())
}

fn key_command(config: &Config, command: KeyCommand) -> anyhow::Result<()> {
    let store = open_store(config)?;
    match command {
        KeyCommand::Add { user, file } => {
            let user = UserName::parse(&user)?;
            let mut text = Vec::new();
            if file.as_os_str() == "-" {
                std::io::stdin()
                    .read_to_end(&mut text)
                    .context("cannot read keys from stdin")?;
            } else {
                text = std::fs::read(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?;
            }
            let added = store
                .add_keys(&user, &text)
                .with_context(|| format!("no keys added to {user}"))?;
            if added.is_empty() {
                println!("no new keys for {user} (all already on file)");
            }
            for entry in added {
                println!("added {} {}", entry.fingerprint(), entry.comment());
            }
            prepare_host(config, &user);
        }
        KeyCommand::List { user } => {
            let user = UserName::parse(&user)?;
            for entry in store.list_keys(&user)? {
                println!("{entry}");
            }
        }
        KeyCommand::Rm { user, key } => {
            let user = UserName::parse(&user)?;
            let removed = store.remove_keys(&user, &key)?;
            for entry in removed {
                println!("removed {} {}", entry.fingerprint(), entry.comment());
            }
        }
    }
    Ok(())
}

/// How long `user add` and `key add` wait for the engine.
const PREPARE_TIMEOUT: Duration = Duration::from_secs(10);

/// Makes a new user's host volume and network now, on the gateway's engine,
/// so their first login has less to do. Best effort, and only on an engine
/// known to be the gateway's: otherwise the first login makes them.
fn prepare_host(config: &Config, user: &UserName) {
    let Some(engine) = engine::known_for_cli(&config.state_dir) else {
        return;
    };
    let prepared = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")
        .and_then(|runtime| {
            runtime.block_on(async {
                let prepare = async {
                    let hosts = HostManager::connect(
                        &engine,
                        config.hosts.clone(),
                        config.image.clone(),
                        &config.state_dir,
                    )
                    .await?;
                    hosts.prepare(user).await
                };
                match tokio::time::timeout(PREPARE_TIMEOUT, prepare).await {
                    Ok(result) => result.map_err(anyhow::Error::from),
                    Err(_) => Err(anyhow::anyhow!(
                        "{engine} did not answer in {} s",
                        PREPARE_TIMEOUT.as_secs()
                    )),
                }
            })
        });
    if let Err(e) = prepared {
        eprintln!(
            "berth: note: {user}'s host volume and network will be made at their first login: {e:#}"
        );
    }
}

async fn host_command(config: Config, command: HostCommand) -> anyhow::Result<()> {
    let hosts = HostManager::connect(
        &engine::for_cli(&config.state_dir),
        config.hosts.clone(),
        config.image.clone(),
        &config.state_dir,
    )
    .await?;
    match command {
        HostCommand::List => {
            println!(
                "{:<20} {:<10} {:<14} {:<22} SESSIONS",
                "USER", "STATE", "CONTAINER", "UPTIME/IDLE"
            );
            for row in hosts.list().await? {
                let id: String = row.container_id.chars().take(12).collect();
                let (timing, sessions) = host_timing(&row);
                println!(
                    "{:<20} {:<10} {:<14} {:<22} {}",
                    row.user, row.state, id, timing, sessions
                );
            }
        }
        HostCommand::Stop { user } => {
            let user = UserName::parse(&user)?;
            hosts.stop(&user).await?;
            println!("stopped {user}'s host");
        }
        HostCommand::Rm { user } => {
            let user = UserName::parse(&user)?;
            hosts.remove(&user).await?;
            println!(
                "removed {user}'s host; volume {} kept",
                HostManager::volume_name(&user)
            );
        }
        HostCommand::Purge { user, yes, force } => {
            let user = UserName::parse(&user)?;
            // Asked before the question, so nobody confirms a purge that
            // would then be refused.
            let sessions = hosts.live_sessions(&user).await?;
            if sessions > 0 && !force {
                bail!(berth::hosts::HostError::InUse { user, sessions });
            }
            if !yes
                && !confirm(&format!(
                    "purge {user}'s host and volume {}? everything in it is lost [y/N] ",
                    HostManager::volume_name(&user)
                ))?
            {
                bail!("not purged");
            }
            hosts.purge(&user, force).await?;
            println!("purged {user}'s host and volume");
        }
    }
    Ok(())
}

/// "up 3m 2s" or "stopped 2h ago", plus "idle 4m" when the host has no
/// session; and the live session count ("-" when no daemon is counting).
fn host_timing(row: &berth::hosts::HostSummary) -> (String, String) {
    let ago = |t: std::time::SystemTime| {
        let secs = t.elapsed().map_or(0, |d| d.as_secs());
        humantime::format_duration(Duration::from_secs(secs)).to_string()
    };
    let live = row.sessions.as_ref().map(|r| r.live_sessions());
    let timing = match (row.state.as_str(), row.since) {
        ("running", Some(t)) => match (live, &row.sessions) {
            (Some(0), Some(r)) if r.last_active() > t => {
                format!("up {}, idle {}", ago(t), ago(r.last_active()))
            }
            (Some(0), _) | (None, _) => format!("up {}, idle {}", ago(t), ago(t)),
            _ => format!("up {}", ago(t)),
        },
        (_, Some(t)) => format!("stopped {} ago", ago(t)),
        (_, None) => "-".into(),
    };
    let sessions = match (row.state.as_str(), live) {
        ("running", Some(n)) => n.to_string(),
        ("running", None) => "0".into(),
        _ => "-".into(),
    };
    (timing, sessions)
}

fn confirm(question: &str) -> anyhow::Result<bool> {
    use std::io::Write;
    eprint!("{question}");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}
