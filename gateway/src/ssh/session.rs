//! One task per channel: collects a session's requests, makes sure the
//! user's host is up, then hands the channel to a byte pump.

use std::sync::Arc;
use std::time::Instant;

use russh::server::{ChannelOpenHandle, Msg};
use russh::{Channel, ChannelMsg, ChannelOpenFailure};
use tokio::io::AsyncWriteExt;

use super::command::{self, Command};
use super::handler::Login;
use super::{Gateway, env};
use crate::hosts::{Host, Readiness};
use crate::proxy::exec::{self, ExecSpec, TermSize};
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
}

/// Runs one session channel from its first request to its close.
pub async fn run(gateway: Arc<Gateway>, login: Login, mut channel: Channel<Msg>) {
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
                ..
            } if login.permissions.pty => {
                pty = Some(Pty {
                    term,
                    size: TermSize {
                        cols: col_width,
                        rows: row_height,
                    },
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
    let request = match (&login.permissions.command, request) {
        (Some(forced), _) => Request::Exec(forced.clone()),
        (None, request) => request,
    };

    let Some(host) = ready_host(&gateway, &login, &channel, pty.is_some()).await else {
        return;
    };

    let shell = gateway.config.ssh.shell.clone();
    let cmd = match request {
        Request::Exec(line) => match command::classify(&line) {
            Command::DialStdio => {
                tracing::debug!("dial-stdio");
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
        tty: pty.map(|p| p.size),
    };
    tracing::debug!(cmd = ?spec.cmd, tty = spec.tty.is_some(), "exec");
    if let Err(e) = exec::run(gateway.hosts.docker(), &host.container_id, spec, channel).await {
        tracing::warn!("{e}");
    }
}

/// Brings the user's host up, telling the user on stderr when that takes
/// a while (stdout stays clean for `DOCKER_HOST=ssh://` and pipes).
async fn ready_host(
    gateway: &Gateway,
    login: &Login,
    channel: &Channel<Msg>,
    tty: bool,
) -> Option<Host> {
    let started = Instant::now();
    let newline = if tty { "\r\n" } else { "\n" };
    let mut stderr = channel.make_writer_ext(Some(1));
    match gateway.hosts.ensure_running(&login.user).await {
        Ok((host, readiness)) => {
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
            Some(host)
        }
        Err(e) => {
            tracing::warn!("host not ready: {e}");
            fail(channel, &format!("berth: {e}{newline}")).await;
            None
        }
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
    let host = match gateway.hosts.ensure_running(&login.user).await {
        Ok((host, _)) => host,
        Err(e) => {
            tracing::warn!("host not ready: {e}");
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return;
        }
    };
    match host.connect_docker().await {
        Ok(socket) => {
            reply.accept().await;
            let _ = splice::splice(channel, socket, None).await;
        }
        Err(e) => {
            tracing::warn!("{e}");
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
        }
    }
}
