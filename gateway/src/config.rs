//! berth's configuration: one TOML file, every key defaulted, overridable by
//! `berth serve` flags and `BERTH_*` environment variables.

use std::collections::BTreeMap;
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
    /// Revoked keys and certificates (public keys, or `serial:`/`id:` lines).
    pub revoked_keys: Option<PathBuf>,
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
    /// Extra arguments for every host's inner dockerd (one word per item).
    pub dockerd_args: Vec<String>,
    /// Memory limit of a host, in bytes (0 = no limit). Written "512m", "4g".
    #[serde(with = "byte_size")]
    pub memory: u64,
    /// Memory plus swap limit of a host, in bytes (0 = engine default, -1 =
    /// unlimited swap). Written "8g", "-1".
    #[serde(with = "swap_size")]
    pub memory_swap: i64,
    /// CPUs a host may use (0 = no limit), e.g. 1.5.
    pub cpus: f64,
    /// Maximum number of processes in a host (0 = no limit).
    pub pids_limit: i64,
    /// Environment of every host (its dockerd and the sessions in it).
    pub env: BTreeMap<String, String>,
    /// Images on the gateway's engine that every new host gets preloaded.
    pub preload_images: Vec<String>,
    /// Per-user overrides, as `[hosts.users.alice]`.
    pub users: BTreeMap<String, HostOverrides>,
}

/// One user's departures from `[hosts]`: limits replace the global ones,
/// `dockerd_args` are added after the global ones, `env` entries win over
/// the global ones of the same name.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostOverrides {
    /// Memory limit in bytes (0 = no limit).
    #[serde(deserialize_with = "byte_size::optional")]
    pub memory: Option<u64>,
    /// Memory plus swap limit (0 = engine default, -1 = unlimited swap).
    #[serde(deserialize_with = "swap_size::optional")]
    pub memory_swap: Option<i64>,
    /// CPUs (0 = no limit).
    pub cpus: Option<f64>,
    /// Maximum number of processes (0 = no limit).
    pub pids_limit: Option<i64>,
    /// Extra dockerd arguments, after the global ones.
    pub dockerd_args: Vec<String>,
    /// Extra environment, over the global one.
    pub env: BTreeMap<String, String>,
}

/// The settings one user's host is created with: `[hosts]` with that
/// user's overrides applied.
#[derive(Debug, Clone, PartialEq)]
pub struct HostSettings {
    /// Memory limit in bytes (0 = no limit).
    pub memory: u64,
    /// Memory plus swap limit (0 = engine default, -1 = unlimited swap).
    pub memory_swap: i64,
    /// CPUs (0 = no limit).
    pub cpus: f64,
    /// Maximum number of processes (0 = no limit).
    pub pids_limit: i64,
    /// Extra dockerd arguments.
    pub dockerd_args: Vec<String>,
    /// Environment of the host.
    pub env: BTreeMap<String, String>,
}

impl HostsConfig {
    /// The settings for `user`'s host.
    pub fn for_user(&self, user: &str) -> HostSettings {
        let mut settings = HostSettings {
            memory: self.memory,
            memory_swap: self.memory_swap,
            cpus: self.cpus,
            pids_limit: self.pids_limit,
            dockerd_args: self.dockerd_args.clone(),
            env: self.env.clone(),
        };
        if let Some(o) = self.users.get(user) {
            settings.memory = o.memory.unwrap_or(settings.memory);
            settings.memory_swap = o.memory_swap.unwrap_or(settings.memory_swap);
            settings.cpus = o.cpus.unwrap_or(settings.cpus);
            settings.pids_limit = o.pids_limit.unwrap_or(settings.pids_limit);
            settings.dockerd_args.extend(o.dockerd_args.iter().cloned());
            settings
                .env
                .extend(o.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        settings
    }

    /// Checks what serde cannot, naming the offending key.
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.ready_timeout.is_zero() {
            return invalid("hosts.ready_timeout must be more than 0".into());
        }
        check_limits(
            "hosts",
            self.memory,
            self.memory_swap,
            self.cpus,
            self.pids_limit,
        )?;
        check_words("hosts", &self.dockerd_args, &self.env)?;
        for image in &self.preload_images {
            if image.trim().is_empty() || image.chars().any(char::is_whitespace) {
                return invalid(format!(
                    "hosts.preload_images: '{image}' is not an image name"
                ));
            }
        }
        for (user, o) in &self.users {
            let key = format!("hosts.users.{user}");
            if let Err(e) = berth_keys::UserName::parse(user) {
                return invalid(format!("{key}: {e}"));
            }
            let s = self.for_user(user);
            check_limits(&key, s.memory, s.memory_swap, s.cpus, s.pids_limit)?;
            check_words(&key, &o.dockerd_args, &o.env)?;
        }
        Ok(())
    }
}

fn check_limits(
    key: &str,
    memory: u64,
    memory_swap: i64,
    cpus: f64,
    pids_limit: i64,
) -> Result<(), ConfigError> {
    let invalid = |m: String| Err(ConfigError::Invalid(m));
    if !(cpus.is_finite() && cpus >= 0.0) {
        return invalid(format!(
            "{key}.cpus must be 0 (no limit) or more, not {cpus}"
        ));
    }
    if pids_limit < 0 {
        return invalid(format!("{key}.pids_limit must be 0 (no limit) or more"));
    }
    if memory_swap > 0 && (memory == 0 || (memory_swap as u64) < memory) {
        return invalid(format!(
            "{key}.memory_swap is memory plus swap: it needs memory set and at least as large"
        ));
    }
    if memory != 0 && memory < 6 * 1024 * 1024 {
        return invalid(format!(
            "{key}.memory must be at least 6m (engines refuse less)"
        ));
    }
    Ok(())
}

fn check_words(
    key: &str,
    dockerd_args: &[String],
    env: &BTreeMap<String, String>,
) -> Result<(), ConfigError> {
    let invalid = |m: String| Err(ConfigError::Invalid(m));
    for arg in dockerd_args {
        // The host's init splits the arguments on whitespace.
        if arg.is_empty() || arg.chars().any(char::is_whitespace) {
            return invalid(format!(
                "{key}.dockerd_args: '{arg}' must be one word (write \"--mtu\", \"1400\" as two items)"
            ));
        }
    }
    for name in env.keys() {
        let valid = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return invalid(format!("{key}.env: '{name}' is not a variable name"));
        }
        if name.starts_with("BERTH_") {
            return invalid(format!("{key}.env: BERTH_* names are berth's own"));
        }
    }
    Ok(())
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
    /// Extra `ssh -L` destinations beyond the user's own host, as
    /// `HOST:PORT` (`*` = any port), connected from the gateway.
    pub tcp_forward_allow: Vec<String>,
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
            revoked_keys: None,
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
            memory: 0,
            memory_swap: 0,
            cpus: 0.0,
            pids_limit: 0,
            env: BTreeMap::new(),
            preload_images: Vec::new(),
            users: BTreeMap::new(),
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
            tcp_forward_allow: Vec::new(),
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
        self.hosts.validate()?;
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

/// Byte sizes as docker writes them ("512m", "4g", "0"), binary units.
mod byte_size {
    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Text {
        Number(u64),
        Text(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        match Text::deserialize(d)? {
            Text::Number(n) => Ok(n),
            Text::Text(t) => parse(&t).map_err(serde::de::Error::custom),
        }
    }

    pub fn optional<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        deserialize(d).map(Some)
    }

    pub fn parse(text: &str) -> Result<u64, String> {
        let t = text.trim().to_ascii_lowercase();
        let t = t.strip_suffix('b').unwrap_or(&t);
        let (digits, unit) = match t.char_indices().last() {
            Some((i, c)) if c.is_ascii_alphabetic() => (&t[..i], c),
            _ => (t, ' '),
        };
        let shift = match unit {
            ' ' => 0,
            'k' => 10,
            'm' => 20,
            'g' => 30,
            't' => 40,
            _ => return Err(format!("invalid size '{text}' (examples: 512m, 4g, 0)")),
        };
        digits
            .trim()
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(1 << shift))
            .ok_or_else(|| format!("invalid size '{text}' (examples: 512m, 4g, 0)"))
    }
}

/// Memory-plus-swap sizes: a byte size, or -1 for unlimited swap.
mod swap_size {
    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Text {
        Number(i64),
        Text(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        let text = match Text::deserialize(d)? {
            Text::Number(-1) => return Ok(-1),
            Text::Number(n) => n.to_string(),
            Text::Text(t) if t.trim() == "-1" => return Ok(-1),
            Text::Text(t) => t,
        };
        super::byte_size::parse(&text)
            .and_then(|n| i64::try_from(n).map_err(|_| format!("size '{text}' is too large")))
            .map_err(serde::de::Error::custom)
    }

    pub fn optional<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        deserialize(d).map(Some)
    }
}

/// Parses a byte size the way the config file does ("512m", "4g", "0").
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    byte_size::parse(text)
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
        assert_eq!(parsed.hosts.memory, defaults.hosts.memory);
        assert_eq!(parsed.hosts.memory_swap, defaults.hosts.memory_swap);
        assert_eq!(parsed.hosts.cpus, defaults.hosts.cpus);
        assert_eq!(parsed.hosts.pids_limit, defaults.hosts.pids_limit);
        assert_eq!(parsed.hosts.dockerd_args, defaults.hosts.dockerd_args);
        assert_eq!(parsed.hosts.env, defaults.hosts.env);
        assert_eq!(parsed.hosts.preload_images, defaults.hosts.preload_images);
        assert_eq!(parsed.hosts.users, defaults.hosts.users);
        assert_eq!(parsed.ssh.env_allow, defaults.ssh.env_allow);
        assert_eq!(parsed.ssh.tcp_forward_allow, defaults.ssh.tcp_forward_allow);
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
    fn per_user_host_settings_override_the_global_ones() {
        let text = r#"
            [hosts]
            memory = "1g"
            cpus = 2.0
            dockerd_args = ["--mtu", "1400"]
            env = { HTTP_PROXY = "http://proxy:3128", TZ = "UTC" }

            [hosts.users.alice]
            memory = "4g"
            memory_swap = "-1"
            dockerd_args = ["--insecure-registry", "10.0.0.5:5000"]
            env = { TZ = "Europe/Paris" }
        "#;
        let config = Config::parse(text).expect("parses");
        let alice = config.hosts.for_user("alice");
        assert_eq!(alice.memory, 4 << 30);
        assert_eq!(alice.memory_swap, -1);
        assert_eq!(alice.cpus, 2.0);
        assert_eq!(
            alice.dockerd_args,
            ["--mtu", "1400", "--insecure-registry", "10.0.0.5:5000"]
        );
        assert_eq!(alice.env["TZ"], "Europe/Paris");
        assert_eq!(alice.env["HTTP_PROXY"], "http://proxy:3128");
        let bob = config.hosts.for_user("bob");
        assert_eq!(bob.memory, 1 << 30);
        assert_eq!(bob.env["TZ"], "UTC");
    }

    #[test]
    fn sizes_take_docker_units() {
        assert_eq!(parse_byte_size("0").unwrap(), 0);
        assert_eq!(parse_byte_size("512m").unwrap(), 512 << 20);
        assert_eq!(parse_byte_size("4G").unwrap(), 4 << 30);
        assert_eq!(parse_byte_size("64kb").unwrap(), 64 << 10);
        assert!(parse_byte_size("lots").is_err());
        assert!(parse_byte_size("1.5g").is_err());
    }

    #[test]
    fn bad_host_settings_are_refused_with_their_key() {
        for (text, key) in [
            ("[hosts]\ncpus = -1.0", "hosts.cpus"),
            (
                "[hosts]\ndockerd_args = [\"--mtu 1400\"]",
                "hosts.dockerd_args",
            ),
            ("[hosts]\nenv = { BERTH_X = \"1\" }", "hosts.env"),
            ("[hosts]\nmemory_swap = \"1g\"", "hosts.memory_swap"),
            ("[hosts.users.Alice]\ncpus = 1.0", "hosts.users.Alice"),
            ("[hosts.users.alice]\nmemroy = \"1g\"", "memroy"),
        ] {
            let err = Config::parse(text).unwrap_err();
            assert!(err.to_string().contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn durations_accept_zero_and_units() {
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
    }
}
