//! One task per channel: collects a session's requests, makes sure the
//! user's host is up, then hands the channel to a byte pump.

use std::sync::Arc;
use std::time::{Duration, Instant};

use russh::server::{ChannelOpenHandle, Handle, Msg};
use russh::{Channel, ChannelMsg, ChannelOpenFailure};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::command::{self, Command};
use super::forward::TcpTarget;
use super::handler::Login;
use super::{Gateway, env};
use crate::hosts::{Host, Readiness, Running, Starting};
use crate::proxy::exec::{self, ExecSpec, InputBacklog, TermSize};
use crate::proxy::splice;

/// The only subsystem berth serves.
pub const SFTP_SUBSYSTEM: &str = "sftp";
/// sftp-server inside the host image.
const SFTP_SERVER: &str = "/usr/lib/openssh/sftp-server";

/// What the client asked the session channel to run.
enum Request {
    Shell,
    Exec(String),
    Sftp,
}

struct Pty {
    term: String,
    size: TermSize,
    modes: Vec<(u8, u32)>,
}

/// Runs one session channel from its first request to its close. `handle`
/// sends what a channel cannot (exit-signal).
pub async fn run(
    gateway: Arc<Gateway>,
    login: Login,
    mut channel: Channel<Msg>,
    handle: Handle,
    backlog: Arc<InputBacklog>,
) {
    let _active = gateway.hosts.activity(&login.user);
    let mut pty: Option<Pty> = None;
    let mut env_vars: Vec<String> = Vec::new();
    let request = loop {
        let Some(msg) = channel.wait().await else {
            return;
        };
        match msg {
            ChannelMsg::RequestPty {
                term,
                col_width,
                row_height,
                terminal_modes,
                ..
            } if login.permissions.pty => {
                pty = Some(Pty {
                    term,
                    size: TermSize {
                        cols: col_width,
                        rows: row_height,
                    },
                    modes: terminal_modes
                        .into_iter()
                        .map(|(op, value)| (op as u8, value))
                        .collect(),
                });
            }
            ChannelMsg::SetEnv {
                variable_name,
                variable_value,
                ..
            } if env::is_allowed(&variable_name, &gateway.config.ssh.env_allow) => {
                env_vars.push(format!("{variable_name}={variable_value}"));
            }
            ChannelMsg::WindowChange {
                col_width,
                row_height,
                ..
            } => {
                if let Some(pty) = pty.as_mut() {
                    pty.size = TermSize {
                        cols: col_width,
                        rows: row_height,
                    };
                }
            }
            ChannelMsg::RequestShell { .. } => break Request::Shell,
            ChannelMsg::Exec { command, .. } => {
                break Request::Exec(String::from_utf8_lossy(&command).into_owned());
            }
            ChannelMsg::RequestSubsystem { name, .. } if name == SFTP_SUBSYSTEM => {
                break Request::Sftp;
            }
            ChannelMsg::Close | ChannelMsg::Eof => return,
            _ => {}
        }
    };

    // A forced command (authorized_keys `command=`) replaces what was asked.
    // Like sshd, berth passes signal requests to neither it nor a subsystem.
    let signals = login.permissions.command.is_none() && !matches!(request, Request::Sftp);
    let request = match (&login.permissions.command, request) {
        (Some(forced), _) => Request::Exec(forced.clone()),
        (None, request) => request,
    };

    let Some((host, starting)) = ready_host(&gateway, &login, &channel, pty.is_some()).await else {
        return;
    };

    let shell = gateway.config.ssh.shell.clone();
    env_vars.push(format!("SHELL={shell}"));
    let cmd = match request {
        Request::Exec(line) => match command::classify(&line) {
            Command::DialStdio => {
                tracing::debug!("dial-stdio");
                // The docker CLI shows stderr only when it fails: say why
                // before handing it a socket that would only fail.
                if let Some(e) = started(starting).await {
                    fail(&channel, &format!("berth: {e}\n")).await;
                    return;
                }
                match host.connect_docker().await {
                    Ok(socket) => {
                        let _ = splice::splice(channel, socket, Some(0)).await;
                    }
                    Err(e) => fail(&channel, &format!("berth: {e}\r\n")).await,
                }
                return;
            }
            Command::DialStdioElsewhere(target) => {
                let message = format!(
                    "berth: refused: only your host's Docker socket can be dialled, not {target}\n"
                );
                fail(&channel, &message).await;
                return;
            }
            Command::Shell(line) => vec![shell, "-c".into(), line],
        },
        Request::Shell => vec![shell, "-l".into()],
        Request::Sftp => vec![SFTP_SERVER.into()],
    };
    if let Some(pty) = &pty {
        env_vars.retain(|v| !v.starts_with("TERM="));
        env_vars.push(format!("TERM={}", pty.term));
    }
    let spec = ExecSpec {
        cmd,
        env: env_vars,
        tty: pty.as_ref().map(|p| p.size),
        modes: pty.map(|p| p.modes).unwrap_or_default(),
        signals,
    };
    tracing::debug!(cmd = ?spec.cmd, tty = spec.tty.is_some(), "exec");
    let docker = gateway.hosts.docker();
    if let Err(e) = exec::run(docker, &host, spec, starting, channel, handle, backlog).await {
        tracing::warn!("{e}");
    }
}

/// Brings the user's host up, telling the user on stderr when that takes
/// a while (stdout stays clean for `DOCKER_HOST=ssh://` and pipes). The
/// host's dockerd may still be starting (see [`Running::starting`]).
async fn ready_host(
    gateway: &Gateway,
    login: &Login,
    channel: &Channel<Msg>,
    tty: bool,
) -> Option<(Host, Option<Starting>)> {
    let started = Instant::now();
    let newline = if tty { "\r\n" } else { "\n" };
    let mut stderr = channel.make_writer_ext(Some(1));
    match gateway.hosts.ensure_running(&login.user).await {
        Ok(Running {
            host,
            readiness,
            starting,
        }) => {
            let took = started.elapsed();
            if readiness != Readiness::WasRunning {
                let what = match readiness {
                    Readiness::Created => "created your Docker host",
                    _ => "started your Docker host",
                };
                tracing::info!(?readiness, secs = took.as_secs_f64(), "host ready");
                let message = format!(
                    "berth: {what}, ready in {:.1} s{newline}",
                    took.as_secs_f64()
                );
                let _ = stderr.write_all(message.as_bytes()).await;
                let _ = stderr.flush().await;
            }
            Some((host, starting))
        }
        Err(e) => {
            tracing::warn!("host not ready: {e}");
            fail(channel, &format!("berth: {e}{newline}")).await;
            None
        }
    }
}

/// Waits for a starting host's dockerd to serve; the reason if it never does.
async fn started(starting: Option<Starting>) -> Option<crate::hosts::HostError> {
    match starting {
        Some(starting) => starting.failure().await,
        None => None,
    }
}

/// Ends a session with a message on stderr and exit status 1.
async fn fail(channel: &Channel<Msg>, message: &str) {
    let mut stderr = channel.make_writer_ext(Some(1));
    let _ = stderr.write_all(message.as_bytes()).await;
    let _ = stderr.flush().await;
    let _ = channel.eof().await;
    let _ = channel.exit_status(1).await;
    let _ = channel.close().await;
}

/// Serves a `direct-streamlocal` channel to the host's Docker socket
/// (`ssh -L LOCAL:/var/run/docker.sock`).
pub async fn forward_docker_socket(
    gateway: Arc<Gateway>,
    login: Login,
    channel: Channel<Msg>,
    reply: ChannelOpenHandle,
) {
    let _active = gateway.hosts.activity(&login.user);
    let Some((host, reply)) = host_for_forward(&gateway, &login, reply).await else {
        return;
    };
    match host.connect_docker().await {
        Ok(socket) => {
            reply.accept().await;
            tracing::debug!("docker socket forward");
            let _ = splice::splice(channel, socket, None).await;
        }
        Err(e) => {
            tracing::warn!("refused socket forward: {e}");
            reject_forward(reply, ChannelOpenFailure::ConnectFailed, &e.to_string()).await;
        }
    }
}

/// How long a forward waits for its TCP target to accept.
const TCP_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves a `direct-tcpip` channel (`ssh -L PORT:localhost:HOSTPORT`):
/// connects to the user's host at its address on its own network, or to a
/// destination the operator allowed, and splices the channel onto it.
pub async fn forward_tcp(
    gateway: Arc<Gateway>,
    login: Login,
    channel: Channel<Msg>,
    reply: ChannelOpenHandle,
    target: TcpTarget,
) {
    let _active = gateway.hosts.activity(&login.user);
    let Some((host, reply)) = host_for_forward(&gateway, &login, reply).await else {
        return;
    };
    let (addr, shown) = match target {
        TcpTarget::Host { port } => match gateway.hosts.host_address(&host).await {
            Ok(Some(ip)) => (
                (ip.to_string(), port),
                format!("port {port} of your host ({ip})"),
            ),
            Ok(None) => {
                let why = "your host has no address on its network";
                tracing::warn!("refused port forward: {why}");
                reject_forward(reply, ChannelOpenFailure::ConnectFailed, why).await;
                return;
            }
            Err(e) => {
                tracing::warn!("refused port forward: {e}");
                reject_forward(reply, ChannelOpenFailure::ConnectFailed, &e.to_string()).await;
                return;
            }
        },
        TcpTarget::Allowed { host, port } => {
            let shown = format!("{host}:{port}");
            ((host, port), shown)
        }
    };
    let connect = tokio::time::timeout(TCP_CONNECT_TIMEOUT, TcpStream::connect(addr));
    match connect.await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            reply.accept().await;
            tracing::debug!("port forward to {shown}");
            let _ = splice::splice(channel, stream, None).await;
        }
        Ok(Err(e)) => {
            let why = format!("cannot connect to {shown}: {e}");
            tracing::info!("port forward failed: {why}");
            reject_forward(reply, ChannelOpenFailure::ConnectFailed, &why).await;
        }
        Err(_) => {
            let why = format!("cannot connect to {shown}: no answer in {TCP_CONNECT_TIMEOUT:?}");
            tracing::info!("port forward failed: {why}");
            reject_forward(reply, ChannelOpenFailure::ConnectFailed, &why).await;
        }
    }
}

/// Refuses a forward's channel with `why` as the text the client prints.
/// The user's running host for a forward, or the forward refused with why.
async fn host_for_forward(
    gateway: &Gateway,
    login: &Login,
    reply: ChannelOpenHandle,
) -> Option<(Host, ChannelOpenHandle)> {
    let serving = match gateway.hosts.ensure_running(&login.user).await {
        Ok(running) => match started(running.starting).await {
            None => Ok(running.host),
            Some(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    match serving {
        Ok(host) => Some((host, reply)),
        Err(e) => {
            tracing::warn!("host not ready: {e}");
            reject_forward(reply, ChannelOpenFailure::ConnectFailed, &e.to_string()).await;
            None
        }
    }
}

async fn reject_forward(reply: ChannelOpenHandle, failure: ChannelOpenFailure, why: &str) {
    reply
        .reject(ChannelOpenFailure::Other {
            code: failure.code(),
            reason: format!("berth: {why}"),
        })
        .await;
}
