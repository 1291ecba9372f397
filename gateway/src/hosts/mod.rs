//! The per-user Docker host lifecycle on the gateway's engine: create,
//! start, wait for readiness, stop, remove. Knows nothing of SSH.
//!
//! Names on the engine, for user `alice`: container `berth-alice`, volume
//! `berth-alice-docker` (the inner `/var/lib/docker`, never removed except by
//! purge), network `berth-alice` (a bridge of her own), run dir
//! `<state>/run/alice` bind-mounted at `/run/berth` (the inner dockerd's
//! socket for the gateway).
//!
//! Lifecycle: [`HostManager::ensure_running`] provisions or resumes a host
//! once however many logins race for it; [`HostManager::start_lifecycle`]
//! adopts the hosts already on the engine when the gateway starts and stops
//! hosts that stay idle; sessions hold an [`ActivityGuard`] from
//! [`HostManager::activity`] so that a host in use is never stopped.

pub mod activity;
pub mod engine;
pub mod preload;
pub mod profile;
pub mod socket;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use berth_keys::UserName;
use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, HostConfig, Mount,
    MountType, NetworkCreateRequest, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectContainerOptions, InspectNetworkOptions,
    ListContainersOptionsBuilder, RemoveContainerOptionsBuilder, RemoveVolumeOptionsBuilder,
    StartContainerOptions, StopContainerOptionsBuilder,
};
use tokio::net::UnixStream;

use self::activity::Activity;
pub use self::activity::{ActivityGuard, SessionRecord};
use self::profile::Resolved;
use crate::config::{HostsConfig, SecurityProfile};

/// Label on every object berth creates.
pub const LABEL_MANAGED: &str = "io.berth.managed";
/// Label naming the user an object belongs to.
pub const LABEL_USER: &str = "io.berth.user";
/// Label naming the state dir of the gateway that created an object, so a
/// gateway adopts and idle-stops only its own hosts when several share an
/// engine.
pub const LABEL_STATE_DIR: &str = "io.berth.state-dir";

/// How often a starting host's socket is looked for: a missing socket costs
/// one failed open, and the session starts as soon as it is there.
const LISTEN_POLL: Duration = Duration::from_millis(2);
/// How often a listening host is pinged (a ping waits in the socket's queue
/// until dockerd serves, so this only paces retries after failures).
const READY_POLL: Duration = Duration::from_millis(10);
/// How often the engine is asked whether a starting host is still running.
const READY_CHECK: Duration = Duration::from_millis(250);

/// A failure to provide or manage a user's host, worded for that user or an operator.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The engine could not be reached.
    #[error("cannot reach the Docker engine ({0}); is DOCKER_HOST right and the engine running?")]
    Engine(#[source] DockerError),
    /// An engine call failed.
    #[error("Docker engine refused to {action} for {user}: {source}")]
    Call {
        /// What berth was doing.
        action: &'static str,
        /// Whose host.
        user: UserName,
        /// The engine's answer.
        source: DockerError,
    },
    /// The inner dockerd never answered.
    #[error("host for {user} did not become ready in {secs} s: {last}")]
    NotReady {
        /// Whose host.
        user: UserName,
        /// The deadline.
        secs: u64,
        /// The last thing seen (dockerd log line or socket error).
        last: String,
    },
    /// The host's run directory could not be prepared.
    #[error("cannot prepare {path}: {source}")]
    RunDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The user has no host.
    #[error("{0} has no host")]
    NoHost(UserName),
    /// The host is in use and the operator did not force the action.
    #[error("{user}'s host has {sessions} live session(s); end them first or pass --force")]
    InUse {
        /// Whose host.
        user: UserName,
        /// Sessions, execs and forwards open now.
        sessions: usize,
    },
    /// The inner Docker socket could not be used.
    #[error(transparent)]
    Socket(#[from] socket::SocketError),
}

/// What `ensure_running` had to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// The host was already running.
    WasRunning,
    /// A stopped host was started.
    Started,
    /// The host was created (first login, or after `host rm`).
    Created,
}

/// A host sessions may use: its inner dockerd listens on its socket.
#[derive(Debug)]
pub struct Running {
    /// The host.
    pub host: Host,
    /// What it took to get there.
    pub readiness: Readiness,
    /// Set when this call started the host's dockerd: it listens but may
    /// still be starting (API requests wait in the socket's queue until it
    /// serves them). Tells whether it came to serve.
    pub starting: Option<Starting>,
}

/// The rest of a host's start, watched in the background after sessions
/// were let in.
#[derive(Debug)]
pub struct Starting(tokio::sync::oneshot::Receiver<HostError>);

impl Starting {
    /// Waits until the inner dockerd serves (`None`) or is known never to
    /// (the reason).
    pub async fn failure(self) -> Option<HostError> {
        self.0.await.ok()
    }
}

/// What a starting host is waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Until {
    /// The inner dockerd accepts connections on its socket.
    Listening,
    /// The inner dockerd answers `/_ping`.
    Serving,
}

/// A running host, ready for execs and socket connections.
#[derive(Debug, Clone)]
pub struct Host {
    /// The owner.
    pub user: UserName,
    /// The container's ID on the gateway's engine.
    pub container_id: String,
    run_dir: PathBuf,
}

impl Host {
    /// Connects to the host's inner dockerd socket (never following links).
    pub async fn connect_docker(&self) -> Result<UnixStream, HostError> {
        Ok(socket::connect(&self.run_dir).await?)
    }

    /// The directory shared with the host as `/run/berth` (the inner
    /// Docker socket and the agent's socket).
    pub fn run_dir(&self) -> &std::path::Path {
        &self.run_dir
    }
}

/// One row of `berth host list`.
#[derive(Debug, Clone)]
pub struct HostSummary {
    /// The owner.
    pub user: String,
    /// Engine state (`running`, `exited`, ...).
    pub state: String,
    /// Container ID.
    pub container_id: String,
    /// Engine's human status ("Up 3 minutes").
    pub status: String,
    /// When the host last started (if running) or stopped (if not).
    pub since: Option<SystemTime>,
    /// What the daemon last recorded about the host's sessions.
    pub sessions: Option<SessionRecord>,
}

/// Creates, starts and stops users' hosts on one Docker engine. Cheap to
/// clone: clones share their locks and session counts.
#[derive(Clone)]
pub struct HostManager {
    docker: Docker,
    config: Arc<HostsConfig>,
    image: String,
    state_dir: PathBuf,
    run_root: PathBuf,
    /// One lock per user so concurrent logins provision once, and an idle
    /// stop never races a login.
    flights: Arc<Mutex<HashMap<UserName, Arc<tokio::sync::Mutex<()>>>>>,
    /// What `auto` resolved to on this engine, once learned.
    learned_profile: Arc<Mutex<Option<Resolved>>>,
    /// Sessions per user, for idle stop and the CLI.
    activity: Arc<Activity>,
}

/// The gateway's background lifecycle work (idle stop); stops when dropped.
pub struct Lifecycle {
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Lifecycle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl HostManager {
    /// Connects to `engine` (a Docker host address such as
    /// `unix:///var/run/docker.sock`) and agrees on an API version with it.
    pub async fn connect(
        engine: &str,
        config: HostsConfig,
        image: String,
        state_dir: &Path,
    ) -> Result<HostManager, HostError> {
        let docker = Docker::connect_with_host(engine).map_err(HostError::Engine)?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(HostError::Engine)?;
        // Bind mounts need a path the engine understands: absolute.
        let state_dir = std::path::absolute(state_dir).map_err(|source| HostError::RunDir {
            path: state_dir.into(),
            source,
        })?;
        Ok(HostManager {
            docker,
            config: Arc::new(config),
            image,
            run_root: state_dir.join("run"),
            activity: Arc::new(Activity::new(&state_dir)),
            state_dir,
            flights: Arc::new(Mutex::new(HashMap::new())),
            learned_profile: Arc::new(Mutex::new(None)),
        })
    }

    /// The engine client, for execs into hosts.
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// The address of `host` on its own network (`berth-<user>`), where the
    /// ports its inner containers publish listen: the target of the user's
    /// `ssh -L` forwards. `None` while the host has no address there.
    pub async fn host_address(&self, host: &Host) -> Result<Option<std::net::IpAddr>, HostError> {
        let info = self
            .docker
            .inspect_container(&host.container_id, None::<InspectContainerOptions>)
            .await
            .map_err(|source| HostError::Call {
                action: "inspect the host",
                user: host.user.clone(),
                source,
            })?;
        let network = Self::network_name(&host.user);
        Ok(info
            .network_settings
            .and_then(|s| s.networks)
            .and_then(|mut n| n.remove(&network))
            .and_then(|e| e.ip_address)
            .and_then(|ip| ip.parse().ok()))
    }

    /// Container name of a user's host.
    pub fn container_name(user: &UserName) -> String {
        format!("berth-{user}")
    }

    /// Volume name holding a user's inner `/var/lib/docker`.
    pub fn volume_name(user: &UserName) -> String {
        format!("berth-{user}-docker")
    }

    /// Bridge network of a user's host.
    pub fn network_name(user: &UserName) -> String {
        format!("berth-{user}")
    }

    fn run_dir(&self, user: &UserName) -> PathBuf {
        self.run_root.join(user.as_str())
    }

    /// Counts a session, exec or forward of `user` until the guard drops;
    /// a host is only stopped for idleness when no guard is held for it.
    pub fn activity(&self, user: &UserName) -> ActivityGuard {
        self.activity.enter(user)
    }

    fn flight(&self, user: &UserName) -> Arc<tokio::sync::Mutex<()>> {
        let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
        flights.entry(user.clone()).or_default().clone()
    }

    /// Adopts the hosts already on the engine, then stops hosts that stay
    /// idle for `idle_timeout` until the returned handle drops.
    pub async fn start_lifecycle(&self) -> Result<Lifecycle, HostError> {
        self.adopt().await?;
        let timeout = self.config.idle_timeout;
        if timeout.is_zero() {
            tracing::info!("idle stop is off (idle_timeout = 0)");
            return Ok(Lifecycle { task: None });
        }
        let manager = self.clone();
        let task = tokio::spawn(async move { manager.stop_idle_hosts(timeout).await });
        Ok(Lifecycle { task: Some(task) })
    }

    /// Containers (running or not) carrying every one of `labels`.
    async fn managed_containers(
        &self,
        labels: Vec<String>,
    ) -> Result<Vec<bollard::models::ContainerSummary>, HostError> {
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&HashMap::from([("label", labels)]))
            .build();
        self.docker
            .list_containers(Some(options))
            .await
            .map_err(HostError::Engine)
    }

    /// Finds berth's hosts on the engine by label and resumes tracking them:
    /// running ones start their idle clock now. Fixed names mean a user never
    /// gets a second container or volume; half-made containers are repaired
    /// at the next login.
    async fn adopt(&self) -> Result<(), HostError> {
        let containers = self
            .managed_containers(vec![
                format!("{LABEL_MANAGED}=true"),
                format!("{LABEL_STATE_DIR}={}", self.state_dir.display()),
            ])
            .await?;
        for c in containers {
            let label = c.labels.as_ref().and_then(|l| l.get(LABEL_USER));
            let Some(user) = label.and_then(|u| UserName::parse(u).ok()) else {
                continue;
            };
            let expected = format!("/{}", Self::container_name(&user));
            if !c.names.as_ref().is_some_and(|n| n.contains(&expected)) {
                continue;
            }
            let id = c.id.unwrap_or_default();
            let state = c.state.map(|s| s.to_string()).unwrap_or_default();
            if state == "running" {
                self.activity.track(&user);
                if let Ok(info) = self
                    .docker
                    .inspect_container(&id, None::<InspectContainerOptions>)
                    .await
                {
                    self.learn_profile_from(&info);
                }
            }
            tracing::info!(%user, container = %id, %state, "adopted host");
        }
        Ok(())
    }

    /// Remembers which profile a running host was created with, so `auto`
    /// does not try `--privileged` again on an engine that refused it.
    fn learn_profile_from(&self, info: &ContainerInspectResponse) {
        if self.config.security_profile != SecurityProfile::Auto {
            return;
        }
        let host = info.host_config.as_ref();
        let profile = if host.and_then(|h| h.privileged).unwrap_or(false) {
            Resolved::Privileged
        } else if host
            .and_then(|h| h.cap_add.as_ref())
            .is_some_and(|caps| caps.iter().any(|c| c == "ALL"))
        {
            Resolved::Explicit
        } else {
            return;
        };
        let mut learned = self
            .learned_profile
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        learned.get_or_insert(profile);
    }

    async fn stop_idle_hosts(self, timeout: Duration) {
        // Check often enough that a host stops within ~20% of its timeout.
        let tick = (timeout / 5).clamp(Duration::from_millis(200), Duration::from_secs(30));
        loop {
            tokio::time::sleep(tick).await;
            for user in self.activity.take_idle(timeout) {
                let manager = self.clone();
                tokio::spawn(async move {
                    let stopped = manager.stop_if_idle(&user, timeout).await;
                    manager.activity.stop_done(&user, stopped);
                });
            }
        }
    }

    /// Stops `user`'s host if it is still idle once no login is bringing it
    /// up; a login that arrives meanwhile waits, then starts it again.
    /// Returns whether the host is stopped.
    async fn stop_if_idle(&self, user: &UserName, timeout: Duration) -> bool {
        let flight = self.flight(user);
        let _guard = flight.lock().await;
        if !self.activity.is_idle(user, timeout) {
            return false;
        }
        if !self.is_running(&Self::container_name(user)).await {
            return true;
        }
        tracing::info!(
            %user,
            idle_secs = timeout.as_secs(),
            "host idle; stopping it cleanly"
        );
        match self.stop(user).await {
            Ok(()) | Err(HostError::NoHost(_)) => {
                tracing::info!(%user, "idle host stopped");
                true
            }
            Err(e) => {
                tracing::warn!(%user, "idle stop failed: {e}");
                false
            }
        }
    }

    /// Returns the user's running host: resumed if stopped, created if
    /// missing. Concurrent calls for one user share one provisioning.
    ///
    /// A host this call starts is handed back as soon as its inner dockerd
    /// listens, not when it first answers: the last few hundred milliseconds
    /// of dockerd's start then overlap the session's own (the command's
    /// start, the docker CLI's), whose API requests wait in the socket's
    /// queue until dockerd serves them. [`Running::starting`] reports a
    /// dockerd that never comes to serve. With images to preload, the host
    /// is only handed back once they are in.
    pub async fn ensure_running(&self, user: &UserName) -> Result<Running, HostError> {
        let run_dir = self.run_dir(user);
        let flight = self.flight(user);
        let _guard = flight.lock().await;
        let deadline = Instant::now() + self.config.ready_timeout;

        let name = Self::container_name(user);
        let inspected = self
            .docker
            .inspect_container(&name, None::<InspectContainerOptions>)
            .await;
        let (id, readiness) = match inspected {
            Ok(info) => {
                let id = info.id.unwrap_or_else(|| name.clone());
                let status = info.state.and_then(|s| s.status);
                let running = status == Some(ContainerStateStatusEnum::RUNNING);
                let half_made = matches!(
                    status,
                    Some(ContainerStateStatusEnum::CREATED | ContainerStateStatusEnum::DEAD)
                );
                if half_made {
                    // Never started (a gateway crash mid-provision) or
                    // broken: re-create it; the volume is kept.
                    tracing::warn!(%user, container = %id, ?status, "re-creating a half-made host");
                    self.remove_container(user, &id).await?;
                    self.prepare_run_dir(&run_dir)?;
                    (self.create_and_start(user).await?, Readiness::Created)
                } else if running {
                    if socket::ping(&run_dir, Duration::from_secs(2)).await.is_ok() {
                        return Ok(self.running(user, id, Readiness::WasRunning, None));
                    }
                    (id, Readiness::WasRunning)
                } else {
                    self.prepare_run_dir(&run_dir)?;
                    self.start(user, &id).await?;
                    (id, Readiness::Started)
                }
            }
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => {
                self.prepare_run_dir(&run_dir)?;
                (self.create_and_start(user).await?, Readiness::Created)
            }

            Err(source) => {
                return Err(HostError::Call {
                    action: "inspect the host",
                    user: user.clone(),
                    source,
                });
            }
        };
        let preload = readiness == Readiness::Created && !self.config.preload_images.is_empty();
        if preload || readiness == Readiness::WasRunning {
            // A running host that did not answer is waited on whole: it
            // was started by an earlier login, which watches its start.
            self.wait(user, &id, &run_dir, deadline, Until::Serving)
                .await?;
            if preload {
                self.preload(user, &run_dir).await;
            }
            return Ok(self.running(user, id, readiness, None));
        }
        self.wait(user, &id, &run_dir, deadline, Until::Listening)
            .await?;
        let starting = self.watch_start(user, &id, deadline);
        Ok(self.running(user, id, readiness, Some(starting)))
    }

    /// Waits in the background for a listening host's dockerd to serve.
    fn watch_start(&self, user: &UserName, id: &str, deadline: Instant) -> Starting {
        let (failed, failure) = tokio::sync::oneshot::channel();
        let manager = self.clone();
        let (user, id) = (user.clone(), id.to_string());
        tokio::spawn(async move {
            let run_dir = manager.run_dir(&user);
            match manager
                .wait(&user, &id, &run_dir, deadline, Until::Serving)
                .await
            {
                Ok(()) => tracing::debug!(%user, "host's dockerd serves"),
                Err(e) => {
                    tracing::warn!(%user, "host's dockerd never came to serve: {e}");
                    let _ = failed.send(e);
                }
            }
        });
        Starting(failure)
    }

    /// Loads the configured images into a new host. A failure is logged and
    /// the login goes on: the host works, it only lacks a convenience.
    async fn preload(&self, user: &UserName, run_dir: &Path) {
        if self.config.preload_images.is_empty() {
            return;
        }
        let images = &self.config.preload_images;
        match preload::preload(&self.docker, run_dir, user.as_str(), images).await {
            Ok(n) => tracing::info!(%user, loaded = n, "preload done"),
            Err(e) => tracing::warn!(%user, "preload failed: {e}"),
        }
    }

    fn running(
        &self,
        user: &UserName,
        container_id: String,
        readiness: Readiness,
        starting: Option<Starting>,
    ) -> Running {
        let host = Host {
            user: user.clone(),
            container_id,
            run_dir: self.run_dir(user),
        };
        Running {
            host,
            readiness,
            starting,
        }
    }

    /// Makes the run dir and clears a stale socket left by an earlier run,
    /// so readiness is judged on the new dockerd's socket.
    fn prepare_run_dir(&self, dir: &Path) -> Result<(), HostError> {
        let err = |source| HostError::RunDir {
            path: dir.into(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(err)?;
        for name in [socket::SOCKET_NAME, berth_agent::SOCKET_NAME] {
            match std::fs::remove_file(dir.join(name)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(err(e)),
            }
        }
        Ok(())
    }

    fn labels(&self, user: &UserName) -> HashMap<String, String> {
        HashMap::from([
            (LABEL_MANAGED.to_string(), "true".to_string()),
            (LABEL_USER.to_string(), user.to_string()),
            (
                LABEL_STATE_DIR.to_string(),
                self.state_dir.display().to_string(),
            ),
        ])
    }

    /// Makes the user's volume and network if they are missing; done when
    /// a user is added, so the first login only creates and starts the
    /// container (a bridge network costs the engine tens of milliseconds).
    pub async fn prepare(&self, user: &UserName) -> Result<(), HostError> {
        let labels = self.labels(user);
        // Independent, so at once: the network is the slow one.
        let volume = async {
            self.docker
                .create_volume(VolumeCreateRequest {
                    name: Some(Self::volume_name(user)),
                    labels: Some(labels.clone()),
                    ..Default::default()
                })
                .await
                .map_err(|source| HostError::Call {
                    action: "create the host's volume",
                    user: user.clone(),
                    source,
                })
        };
        tokio::try_join!(volume, self.ensure_network(user, &labels))?;
        Ok(())
    }

    async fn create_and_start(&self, user: &UserName) -> Result<String, HostError> {
        self.prepare(user).await?;
        let labels = self.labels(user);

        let mut profile = self.profile_to_try();
        loop {
            let id = self.create_container(user, profile, &labels).await?;
            match self.start(user, &id).await {
                Ok(()) => {
                    self.learn_profile(profile);
                    return Ok(id);
                }
                Err(HostError::Call { source, .. })
                    if profile == Resolved::Privileged
                        && self.config.security_profile == SecurityProfile::Auto
                        && profile::is_privilege_refusal(&source.to_string()) =>
                {
                    tracing::warn!(
                        "engine refuses --privileged ({source}); using the explicit capability profile"
                    );
                    self.remove_container(user, &id).await?;
                    profile = Resolved::Explicit;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn profile_to_try(&self) -> Resolved {
        let learned = *self
            .learned_profile
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        learned.unwrap_or_else(|| Resolved::first_choice(self.config.security_profile))
    }

    fn learn_profile(&self, profile: Resolved) {
        let mut learned = self
            .learned_profile
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if learned.is_none() {
            tracing::info!(?profile, "host security profile in use");
        }
        *learned = Some(profile);
    }

    async fn ensure_network(
        &self,
        user: &UserName,
        labels: &HashMap<String, String>,
    ) -> Result<(), HostError> {
        let name = Self::network_name(user);
        // Engines before API 1.44 accept a second network of the same name
        // (and then refuse to attach to either): look before creating, and
        // let no other berth process on this state dir (`berth key add`
        // while the user logs in) look and create at the same time.
        let _lock = self.lock_user(user).await?;
        if self
            .docker
            .inspect_network(&name, None::<InspectNetworkOptions>)
            .await
            .is_ok()
        {
            return Ok(());
        }
        let created = self
            .docker
            .create_network(NetworkCreateRequest {
                name: name.clone(),
                driver: Some("bridge".into()),
                labels: Some(labels.clone()),
                ..Default::default()
            })
            .await;
        match created {
            Ok(_) => Ok(()),
            // Already there from an earlier provisioning.
            Err(DockerError::DockerResponseServerError {
                status_code: 409, ..
            }) => Ok(()),
            Err(e) if e.to_string().contains("already exists") => Ok(()),
            Err(source) => Err(HostError::Call {
                action: "create the host's network",
                user: user.clone(),
                source,
            }),
        }
    }

    /// Takes `<state>/locks/USER`, an advisory lock that every berth
    /// process on this state dir honours, until the returned file drops.
    /// Kept out of the run dir, which the tenant can write to.
    async fn lock_user(&self, user: &UserName) -> Result<std::fs::File, HostError> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = self.state_dir.join("locks");
        let path = dir.join(user.as_str());
        let locked = tokio::task::spawn_blocking({
            let path = path.clone();
            move || {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&dir)?;
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&path)?;
                file.lock()?;
                Ok(file)
            }
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        locked.map_err(|source| HostError::RunDir { path, source })
    }

    async fn create_container(
        &self,
        user: &UserName,
        profile: Resolved,
        labels: &HashMap<String, String>,
    ) -> Result<String, HostError> {
        let run_dir = self.run_dir(user);
        let settings = self.config.for_user(user.as_str());
        let limit = |n: i64| Some(n).filter(|&n| n != 0);
        let mut host = HostConfig {
            mounts: Some(vec![Mount {
                typ: Some(MountType::VOLUME),
                source: Some(Self::volume_name(user)),
                target: Some("/var/lib/docker".into()),
                ..Default::default()
            }]),
            binds: Some(vec![format!("{}:/run/berth:rw", run_dir.display())]),
            network_mode: Some(Self::network_name(user)),
            runtime: self.config.runtime.clone(),
            memory: limit(i64::try_from(settings.memory).unwrap_or(i64::MAX)),
            memory_swap: limit(settings.memory_swap),
            nano_cpus: limit((settings.cpus * 1e9).round() as i64),
            pids_limit: limit(settings.pids_limit),
            ..Default::default()
        };
        profile.apply(&mut host);
        let mut env = vec![format!(
            "BERTH_DOCKERD_ARGS={}",
            settings.dockerd_args.join(" ")
        )];
        env.extend(settings.env.iter().map(|(k, v)| format!("{k}={v}")));
        let body = ContainerCreateBody {
            image: Some(self.image.clone()),
            hostname: Some(user.to_string()),
            labels: Some(labels.clone()),
            env: Some(env),
            stop_timeout: Some(self.config.stop_timeout.as_secs() as i64),
            stop_signal: Some("SIGTERM".into()),
            host_config: Some(host),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default()
            .name(&Self::container_name(user))
            .build();
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(|source| HostError::Call {
                action: "create the host container",
                user: user.clone(),
                source,
            })?;
        tracing::info!(%user, container = %created.id, ?profile, "host created");
        Ok(created.id)
    }

    async fn start(&self, user: &UserName, id: &str) -> Result<(), HostError> {
        match self
            .docker
            .start_container(id, None::<StartContainerOptions>)
            .await
        {
            Ok(()) => Ok(()),
            Err(DockerError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(source) => Err(HostError::Call {
                action: "start the host",
                user: user.clone(),
                source,
            }),
        }
    }

    /// Waits until a starting host's dockerd listens or serves, giving up
    /// at `deadline` or when the host stops.
    async fn wait(
        &self,
        user: &UserName,
        id: &str,
        run_dir: &Path,
        deadline: Instant,
        until: Until,
    ) -> Result<(), HostError> {
        let mut last = String::from("no answer yet");
        let mut next_check = Instant::now() + READY_CHECK;
        while Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            let tried = match until {
                // The connection is dropped unused: dockerd, once serving,
                // accepts it and reads an end of file.
                Until::Listening => socket::connect(run_dir).await.map(drop),
                Until::Serving => socket::ping(run_dir, left.min(Duration::from_secs(2))).await,
            };
            match tried {
                Ok(()) => return Ok(()),
                Err(e) => last = e.to_string(),
            }
            // A missing socket costs one failed open; asking the engine
            // whether the host died is dearer, so it is asked less often.
            if Instant::now() >= next_check {
                if !self.is_running(id).await {
                    last = format!(
                        "host stopped while starting; {}",
                        self.last_log_line(id).await
                    );
                    break;
                }
                next_check = Instant::now() + READY_CHECK;
            }
            tokio::time::sleep(match until {
                Until::Listening => LISTEN_POLL,
                Until::Serving => READY_POLL,
            })
            .await;
        }
        if let Some(line) = Some(self.last_log_line(id).await).filter(|l| !l.is_empty()) {
            last = format!("{last}; last dockerd log line: {line}");
        }
        Err(HostError::NotReady {
            user: user.clone(),
            secs: self.config.ready_timeout.as_secs(),
            last,
        })
    }

    async fn is_running(&self, id: &str) -> bool {
        self.docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .ok()
            .and_then(|i| i.state)
            .and_then(|s| s.running)
            .unwrap_or(false)
    }

    async fn last_log_line(&self, id: &str) -> String {
        use futures_util::StreamExt;
        let options = bollard::query_parameters::LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail("1")
            .build();
        let mut logs = self.docker.logs(id, Some(options));
        let mut line = String::new();
        while let Some(Ok(chunk)) = logs.next().await {
            line = String::from_utf8_lossy(&chunk.into_bytes())
                .trim()
                .to_string();
        }
        line
    }

    /// Lists every host berth manages on this engine, with when it started
    /// or stopped and its sessions.
    pub async fn list(&self) -> Result<Vec<HostSummary>, HostError> {
        let containers = self
            .managed_containers(vec![format!("{LABEL_MANAGED}=true")])
            .await?;
        let mut rows = Vec::new();
        for c in containers {
            let user = c
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_USER).cloned())
                .unwrap_or_default();
            let id = c.id.unwrap_or_default();
            let state = c.state.map(|s| s.to_string()).unwrap_or_default();
            let since = self
                .docker
                .inspect_container(&id, None::<InspectContainerOptions>)
                .await
                .ok()
                .and_then(|info| info.state)
                .and_then(|s| {
                    if s.running.unwrap_or(false) {
                        s.started_at
                    } else {
                        s.finished_at
                    }
                })
                .and_then(|t| humantime::parse_rfc3339_weak(&t).ok())
                // Never-started containers report year 1.
                .filter(|t| *t > SystemTime::UNIX_EPOCH);
            let parsed = UserName::parse(&user).ok();
            let sessions = parsed
                .as_ref()
                .and_then(|u| SessionRecord::read(&self.state_dir, u));
            rows.push(HostSummary {
                user,
                state,
                container_id: id,
                status: c.status.unwrap_or_default(),
                since,
                sessions,
            });
        }
        rows.sort_by(|a, b| a.user.cmp(&b.user));
        Ok(rows)
    }

    /// Sessions, execs and forwards open in `user`'s host now, as far as
    /// this process can tell: those the running daemon recorded in the
    /// state dir, or, if more, the execs running in the container (a daemon
    /// with another state dir, or `docker exec` by hand).
    pub async fn live_sessions(&self, user: &UserName) -> Result<usize, HostError> {
        let recorded = SessionRecord::read(&self.state_dir, user)
            .map_or(0, |r| r.live_sessions())
            .max(self.activity.active(user));
        let info = match self
            .docker
            .inspect_container(&Self::container_name(user), None::<InspectContainerOptions>)
            .await
        {
            Ok(info) => info,
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => return Ok(recorded),
            Err(source) => {
                return Err(HostError::Call {
                    action: "inspect the host",
                    user: user.clone(),
                    source,
                });
            }
        };
        let mut execs = 0;
        for exec in info.exec_ids.unwrap_or_default() {
            let running = self
                .docker
                .inspect_exec(&exec)
                .await
                .ok()
                .and_then(|e| e.running)
                .unwrap_or(false);
            if running {
                execs += 1;
            }
        }
        Ok(recorded.max(execs))
    }

    /// Stops a user's host cleanly: SIGTERM, then the configured grace.
    pub async fn stop(&self, user: &UserName) -> Result<(), HostError> {
        let options = StopContainerOptionsBuilder::default()
            .t(self.config.stop_timeout.as_secs() as i32)
            .build();
        match self
            .docker
            .stop_container(&Self::container_name(user), Some(options))
            .await
        {
            Ok(()) => Ok(()),
            Err(DockerError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => Err(HostError::NoHost(user.clone())),
            Err(source) => Err(HostError::Call {
                action: "stop the host",
                user: user.clone(),
                source,
            }),
        }
    }

    async fn remove_container(&self, user: &UserName, id: &str) -> Result<(), HostError> {
        let options = RemoveContainerOptionsBuilder::default().force(true).build();
        match self.docker.remove_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => Err(HostError::NoHost(user.clone())),
            Err(source) => Err(HostError::Call {
                action: "remove the host container",
                user: user.clone(),
                source,
            }),
        }
    }

    /// Removes a user's host container after a clean stop; the volume stays.
    pub async fn remove(&self, user: &UserName) -> Result<(), HostError> {
        self.stop(user).await?;
        self.remove_container(user, &Self::container_name(user))
            .await
    }

    /// Removes a user's host, its volume and its network. Refuses while the
    /// host has live sessions unless `force`.
    pub async fn purge(&self, user: &UserName, force: bool) -> Result<(), HostError> {
        if !force {
            let sessions = self.live_sessions(user).await?;
            if sessions > 0 {
                return Err(HostError::InUse {
                    user: user.clone(),
                    sessions,
                });
            }
        }
        match self.remove(user).await {
            Ok(()) | Err(HostError::NoHost(_)) => {}
            Err(e) => return Err(e),
        }
        let options = RemoveVolumeOptionsBuilder::default().build();
        match self
            .docker
            .remove_volume(&Self::volume_name(user), Some(options))
            .await
        {
            Ok(())
            | Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(source) => {
                return Err(HostError::Call {
                    action: "remove the host's volume",
                    user: user.clone(),
                    source,
                });
            }
        }
        match self.docker.remove_network(&Self::network_name(user)).await {
            Ok(())
            | Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(source) => Err(HostError::Call {
                action: "remove the host's network",
                user: user.clone(),
                source,
            }),
        }
    }
}
