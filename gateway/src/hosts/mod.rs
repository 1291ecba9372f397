//! The per-user Docker host lifecycle on the gateway's engine: create,
//! start, wait for readiness, stop, remove. Knows nothing of SSH.
//!
//! Names on the engine, for user `alice`: container `berth-alice`, volume
//! `berth-alice-docker` (the inner `/var/lib/docker`, never removed except by
//! purge), network `berth-alice` (a bridge of her own), run dir
//! `<state>/run/alice` bind-mounted at `/run/berth` (the inner dockerd's
//! socket for the gateway).

pub mod profile;
pub mod socket;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_keys::UserName;
use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, ContainerStateStatusEnum, HostConfig, Mount, MountType,
    NetworkCreateRequest, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectContainerOptions, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, RemoveVolumeOptionsBuilder, StartContainerOptions,
    StopContainerOptionsBuilder,
};
use tokio::net::UnixStream;

use self::profile::Resolved;
use crate::config::{HostsConfig, SecurityProfile};

/// Label on every object berth creates.
pub const LABEL_MANAGED: &str = "io.berth.managed";
/// Label naming the user an object belongs to.
pub const LABEL_USER: &str = "io.berth.user";

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
}

/// Creates, starts and stops users' hosts on one Docker engine.
pub struct HostManager {
    docker: Docker,
    config: HostsConfig,
    image: String,
    run_root: PathBuf,
    /// One lock per user so concurrent logins provision once.
    flights: Mutex<HashMap<UserName, Arc<tokio::sync::Mutex<()>>>>,
    /// What `auto` resolved to on this engine, once learned.
    learned_profile: Mutex<Option<Resolved>>,
}

impl HostManager {
    /// Connects to the engine named by `DOCKER_HOST` (or the default socket)
    /// and agrees on an API version with it.
    pub async fn connect(
        config: HostsConfig,
        image: String,
        state_dir: &Path,
    ) -> Result<HostManager, HostError> {
        let docker = Docker::connect_with_defaults().map_err(HostError::Engine)?;
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
            config,
            image,
            run_root: state_dir.join("run"),
            flights: Mutex::new(HashMap::new()),
            learned_profile: Mutex::new(None),
        })
    }

    /// The engine client, for execs into hosts.
    pub fn docker(&self) -> &Docker {
        &self.docker
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

    /// Returns the user's running host: resumed if stopped, created if
    /// missing, waited on until its inner dockerd answers. Concurrent calls
    /// for one user share one provisioning.
    pub async fn ensure_running(&self, user: &UserName) -> Result<(Host, Readiness), HostError> {
        let run_dir = self.run_dir(user);
        let flight = {
            let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
            flights.entry(user.clone()).or_default().clone()
        };
        let _guard = flight.lock().await;

        let name = Self::container_name(user);
        let inspected = self
            .docker
            .inspect_container(&name, None::<InspectContainerOptions>)
            .await;
        let (id, readiness) = match inspected {
            Ok(info) => {
                let id = info.id.unwrap_or_else(|| name.clone());
                let running = info
                    .state
                    .and_then(|s| s.status)
                    .is_some_and(|s| s == ContainerStateStatusEnum::RUNNING);
                if running {
                    if socket::ping(&run_dir, Duration::from_secs(2)).await.is_ok() {
                        return Ok((self.host(user, id), Readiness::WasRunning));
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
        self.wait_ready(user, &id, &run_dir).await?;
        Ok((self.host(user, id), readiness))
    }

    fn host(&self, user: &UserName, container_id: String) -> Host {
        Host {
            user: user.clone(),
            container_id,
            run_dir: self.run_dir(user),
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
        match std::fs::remove_file(dir.join(socket::SOCKET_NAME)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(err(e)),
        }
    }

    async fn create_and_start(&self, user: &UserName) -> Result<String, HostError> {
        let call = |action: &'static str| {
            let user = user.clone();
            move |source| HostError::Call {
                action,
                user,
                source,
            }
        };
        let labels = HashMap::from([
            (LABEL_MANAGED.to_string(), "true".to_string()),
            (LABEL_USER.to_string(), user.to_string()),
        ]);
        self.docker
            .create_volume(VolumeCreateRequest {
                name: Some(Self::volume_name(user)),
                labels: Some(labels.clone()),
                ..Default::default()
            })
            .await
            .map_err(call("create the host's volume"))?;
        self.ensure_network(user, &labels).await?;

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

    async fn create_container(
        &self,
        user: &UserName,
        profile: Resolved,
        labels: &HashMap<String, String>,
    ) -> Result<String, HostError> {
        let run_dir = self.run_dir(user);
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
            ..Default::default()
        };
        profile.apply(&mut host);
        let body = ContainerCreateBody {
            image: Some(self.image.clone()),
            hostname: Some(user.to_string()),
            labels: Some(labels.clone()),
            env: Some(vec![format!(
                "BERTH_DOCKERD_ARGS={}",
                self.config.dockerd_args.join(" ")
            )]),
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

    async fn wait_ready(&self, user: &UserName, id: &str, run_dir: &Path) -> Result<(), HostError> {
        let deadline = Instant::now() + self.config.ready_timeout;
        let mut last = String::from("no answer yet");
        while Instant::now() < deadline {
            match socket::ping(run_dir, Duration::from_secs(2)).await {
                Ok(()) => return Ok(()),
                Err(e) => last = e.to_string(),
            }
            if !self.is_running(id).await {
                last = format!(
                    "host stopped while starting; {}",
                    self.last_log_line(id).await
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
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

    /// Lists every host berth manages on this engine.
    pub async fn list(&self) -> Result<Vec<HostSummary>, HostError> {
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&HashMap::from([(
                "label",
                vec![format!("{LABEL_MANAGED}=true")],
            )]))
            .build();
        let containers = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(HostError::Engine)?;
        let mut rows: Vec<HostSummary> = containers
            .into_iter()
            .map(|c| HostSummary {
                user: c
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_USER).cloned())
                    .unwrap_or_default(),
                state: c.state.map(|s| s.to_string()).unwrap_or_default(),
                container_id: c.id.unwrap_or_default(),
                status: c.status.unwrap_or_default(),
            })
            .collect();
        rows.sort_by(|a, b| a.user.cmp(&b.user));
        Ok(rows)
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

    /// Removes a user's host, its volume and its network.
    pub async fn purge(&self, user: &UserName) -> Result<(), HostError> {
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
