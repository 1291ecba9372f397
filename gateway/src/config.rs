//! berth's configuration: one TOML file, every key defaulted, overridable by
//! `berth serve` flags and `BERTH_*` environment variables.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Everything `berth serve` needs to run. `Config::default()` is a working
/// setup: a local state dir and the local Docker engine.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the SSH server listens on.
    pub listen: SocketAddr,
    /// Directory holding the host key, users, keys and per-user run dirs.
    pub state_dir: PathBuf,
    /// Image every user's Docker host runs.
    pub image: String,
    /// Trusted OpenSSH user CA public key files.
    pub trusted_user_ca_keys: Vec<PathBuf>,
    /// The per-user Docker hosts.
    pub hosts: HostsConfig,
    /// The SSH surface.
    pub ssh: SshConfig,
    /// Logging.
    pub log: LogConfig,
}

/// How users' Docker hosts are created and run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostsConfig {
    /// How long to wait for a host's inner dockerd to answer `/_ping`.
    #[serde(with = "humantime_serde_compat")]
    pub ready_timeout: Duration,
    /// Stop a host after this long with no session (0 = never).
    #[serde(with = "humantime_serde_compat")]
    pub idle_timeout: Duration,
    /// Grace period given to a host's dockerd on stop, before the engine kills it.
    #[serde(with = "humantime_serde_compat")]
    pub stop_timeout: Duration,
    /// Security profile for host containers.
    pub security_profile: SecurityProfile,
    /// OCI runtime for host containers (e.g. "sysbox-runc"); engine default when unset.
    pub runtime: Option<String>,
    /// Extra arguments for every host's inner dockerd.
    pub dockerd_args: Vec<String>,
}

/// How host containers get the privileges a nested dockerd needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecurityProfile {
    /// `--privileged`, falling back to `explicit` where the engine refuses it.
    Auto,
    /// `--privileged`.
    Privileged,
    /// All capabilities the engine can grant, no seccomp/apparmor, all devices.
    Explicit,
    /// No extra privileges: for runtimes such as sysbox-runc that sandbox dockerd themselves.
    Unprivileged,
}

/// The SSH side of the gateway.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SshConfig {
    /// Shell for interactive logins inside the host.
    pub shell: String,
    /// Environment variables a client may set (`*` suffix = prefix match).
    pub env_allow: Vec<String>,
    /// Send a keepalive after this long without traffic from the client.
    #[serde(with = "humantime_serde_compat")]
    pub keepalive_interval: Duration,
}

/// Log output.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `human` or `json`.
    pub format: LogFormat,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object a line.
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 2222)),
            state_dir: PathBuf::from(".berth"),
            image: "berth-host:latest".into(),
            trusted_user_ca_keys: Vec::new(),
            hosts: HostsConfig::default(),
            ssh: SshConfig::default(),
            log: LogConfig::default(),
        }
    }
}

impl Default for HostsConfig {
    fn default() -> Self {
        HostsConfig {
            ready_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(30 * 60),
            stop_timeout: Duration::from_secs(60),
            security_profile: SecurityProfile::Auto,
            runtime: None,
            dockerd_args: Vec::new(),
        }
    }
}

impl Default for SshConfig {
    fn default() -> Self {
        SshConfig {
            shell: "/bin/bash".into(),
            env_allow: ["LANG", "LC_*", "TZ", "TERM", "COLORTERM"]
                .map(String::from)
                .to_vec(),
            keepalive_interval: Duration::from_secs(30),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Human,
        }
    }
}

/// A config file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid berth config.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with line and column.
        source: toml::de::Error,
    },
    /// A value is out of range.
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.into(),
                source,
            },
            other => other,
        })
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: PathBuf::new(),
            source,
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.image.trim().is_empty() {
            return Err(ConfigError::Invalid("image must not be empty".into()));
        }
        if self.hosts.ready_timeout.is_zero() {
            return Err(ConfigError::Invalid(
                "hosts.ready_timeout must be more than 0".into(),
            ));
        }
        for name in &self.ssh.env_allow {
            if crate::ssh::env::is_forbidden(name) {
                return Err(ConfigError::Invalid(format!(
                    "ssh.env_allow may not list '{name}': berth never lets clients set it"
                )));
            }
        }
        Ok(())
    }
}

/// Durations as humane strings ("30m", "90s", "0") in TOML.
mod humantime_serde_compat {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).map_err(serde::de::Error::custom)
    }

    pub fn parse(text: &str) -> Result<Duration, String> {
        if text.trim() == "0" {
            return Ok(Duration::ZERO);
        }
        humantime::parse_duration(text.trim())
            .map_err(|e| format!("invalid duration '{text}': {e} (examples: 90s, 30m, 2h, 0)"))
    }
}

/// Parses a humane duration the way the config file does ("30m", "0").
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime_serde_compat::parse(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_parses_and_matches_the_defaults() {
        let text = include_str!("../../deploy/berth.example.toml");
        let parsed = Config::parse(text).expect("example config parses");
        let defaults = Config::default();
        assert_eq!(parsed.listen, defaults.listen);
        assert_eq!(parsed.image, defaults.image);
        assert_eq!(parsed.hosts.idle_timeout, defaults.hosts.idle_timeout);
        assert_eq!(parsed.hosts.ready_timeout, defaults.hosts.ready_timeout);
        assert_eq!(parsed.hosts.stop_timeout, defaults.hosts.stop_timeout);
        assert_eq!(
            parsed.hosts.security_profile,
            defaults.hosts.security_profile
        );
        assert_eq!(parsed.ssh.env_allow, defaults.ssh.env_allow);
        assert_eq!(parsed.ssh.shell, defaults.ssh.shell);
    }

    #[test]
    fn an_empty_file_is_the_default_config() {
        let parsed = Config::parse("").expect("empty config parses");
        assert_eq!(parsed.listen, Config::default().listen);
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let err = Config::parse("listne = \"0.0.0.0:22\"").unwrap_err();
        assert!(err.to_string().contains("listne"), "{err}");
    }

    #[test]
    fn bad_durations_are_refused() {
        let err = Config::parse("[hosts]\nidle_timeout = \"soon\"").unwrap_err();
        assert!(err.to_string().contains("soon"), "{err}");
    }

    #[test]
    fn forbidden_env_names_cannot_be_allowed() {
        for name in ["PATH", "LD_PRELOAD", "LD_*", "DOCKER_HOST", "BASH_ENV"] {
            let text = format!("[ssh]\nenv_allow = [\"{name}\"]");
            assert!(Config::parse(&text).is_err(), "{name} was allowed");
        }
    }

    #[test]
    fn durations_accept_zero_and_units() {
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
    }
}
