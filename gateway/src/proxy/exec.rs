//! Runs a session's command in a host and pumps its stdio to an SSH
//! channel: stdin from channel data (EOF closes it), stdout as channel
//! data, stderr as extended data 1, then EOF, exit-status or exit-signal,
//! close. Also delivers `signal` requests and window changes, and hangs the
//! command up when the client goes away.
//!
//! Commands start through the host's `berth-agent` ([`super::agent`]):
//! the command's stdio are pipes (or a terminal) shared with the gateway,
//! so no byte passes through the engine, and the agent reports exit codes
//! and signals as the kernel gave them.
//!
//! Hosts without an agent (custom images) get the engine's exec API. There
//! every command runs under `berth-session` (in the host image), which
//! records how it ended — the engine reports an exit code only, and
//! "killed by SIGKILL" and `exit 137` both read 137 there — and knows its
//! pid, for signals and for the hang-up (the engine cannot signal an exec).
//! Images with neither still run commands, without those three. The exec's
//! output stream is read straight off the hijacked engine connection:
//! bollard's decoder guesses framed or raw per chunk from its first byte,
//! which a terminal's output starting with 0x00-0x02 defeats.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::ExecConfig;
use bollard::query_parameters::ResizeExecOptions;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use russh::server::{Handle, Msg};
use russh::{ChannelId, ChannelMsg, Sig};

use super::agent::{self, AgentError};
use crate::hosts::{Host, Starting};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Terminal size in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TermSize {
    /// Columns.
    pub cols: u32,
    /// Rows.
    pub rows: u32,
}

/// What to run in the host.
#[derive(Debug, Clone)]
pub struct ExecSpec {
    /// argv.
    pub cmd: Vec<String>,
    /// `NAME=value` pairs.
    pub env: Vec<String>,
    /// Run on a terminal of this size.
    pub tty: Option<TermSize>,
    /// The client's terminal modes (RFC 4254 opcode, value).
    pub modes: Vec<(u8, u32)>,
    /// Whether the client's `signal` requests reach the command (OpenSSH
    /// refuses them for subsystems).
    pub signals: bool,
}

/// Client input received on one connection but not yet taken by the
/// commands.
///
/// russh grants a channel's window again as data arrives, not as commands
/// consume it, so the window alone bounds only the rate, not the amount
/// queued. While this backlog is above [`InputBacklog::HIGH`] the
/// connection therefore grants a token window ([`InputBacklog::window`]):
/// the client soon runs out and waits, and each session's reader takes the
/// client's packets slowly ([`InputBacklog::wait_while_high`]), so the
/// trickle costs neither memory nor CPU. What queues is bounded by `HIGH`
/// plus the windows granted before the backlog rose above it.
#[derive(Debug, Default)]
pub struct InputBacklog {
    queued: AtomicUsize,
    drained: tokio::sync::Notify,
}

impl InputBacklog {
    /// Backlog above which the connection stops granting real windows.
    const HIGH: usize = 4 * 1024 * 1024;
    /// The token window granted meanwhile. russh grants a new window when
    /// less than half the target is left, so the client sends a packet of
    /// this size each time its window is used up; the readers' pace
    /// ([`Self::PAUSED_PACE`]) decides how often that is.
    const TOKEN: u32 = 2;
    /// How long a session's reader waits for the backlog to drain before
    /// it takes the next packet anyway.
    const PAUSED_PACE: Duration = Duration::from_millis(10);

    /// The window to grant next, given the configured `full` window.
    pub fn window(&self, full: u32) -> u32 {
        if self.is_high() {
            Self::TOKEN.min(full)
        } else {
            full
        }
    }

    fn is_high(&self) -> bool {
        self.queued.load(Ordering::Relaxed) > Self::HIGH
    }

    /// While the backlog is high, waits until it drains or for
    /// [`Self::PAUSED_PACE`], whichever comes first.
    async fn wait_while_high(&self) {
        let drained = self.drained.notified();
        if self.is_high() {
            let _ = tokio::time::timeout(Self::PAUSED_PACE, drained).await;
        }
    }

    fn add(&self, n: usize) {
        self.queued.fetch_add(n, Ordering::Relaxed);
    }

    fn take(&self, n: usize) {
        let before = self.queued.fetch_sub(n, Ordering::Relaxed);
        if before > Self::HIGH && before - n <= Self::HIGH {
            self.drained.notify_waiters();
        }
    }
}

/// One session's share of its connection's [`InputBacklog`]; whatever is
/// still queued when the session ends stops counting then.
struct SessionBacklog {
    connection: Arc<InputBacklog>,
    queued: AtomicUsize,
}

impl SessionBacklog {
    fn add(&self, n: usize) {
        self.queued.fetch_add(n, Ordering::Relaxed);
        self.connection.add(n);
    }

    fn take(&self, n: usize) {
        self.queued.fetch_sub(n, Ordering::Relaxed);
        self.connection.take(n);
    }
}

impl Drop for SessionBacklog {
    fn drop(&mut self) {
        self.connection.take(*self.queued.get_mut());
    }
}

/// Why an exec could not be run.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The engine refused or failed the exec.
    #[error("cannot run the command in your host: {0}")]
    Engine(#[from] bollard::errors::Error),
    /// The engine connection for the exec's stdio failed.
    #[error("cannot attach to the command in your host: {0}")]
    Attach(String),
}

/// The session parent in the host image, and how commands are started
/// under it when it is there (and without it when it is not).
const SESSION_PARENT: &str = "/usr/local/libexec/berth-session";
/// Like sshd, sessions start in the home directory (relative `scp` and
/// `rsync` paths land there).
const TRAMPOLINE: &str = "cd \"${HOME:-/}\" 2>/dev/null; p=/usr/local/libexec/berth-session; \
     if [ -x \"$p\" ]; then exec \"$p\" run \"$@\"; fi; shift; exec \"$@\"";

/// How long after the client went away processes that did not take the
/// hang-up get SIGKILL (inside `berth-session hangup`), plus slack.
const HANGUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Output chunks (up to 32 KiB each) read ahead of the channel's window.
const OUTPUT_QUEUE: usize = 256;

/// The client went away (or closed the channel) while we wrote to it.
#[derive(Debug)]
struct ClientGone;

/// How often a command waiting for nothing checks that its client is still
/// there (a blocked stdin or a silent command would never notice).
const LIVENESS_INTERVAL: Duration = Duration::from_secs(1);

/// Runs `spec` in `container`, pumping stdio over `channel` until the
/// command ends (or the client goes away, which hangs the command up), and
/// reports how it ended. With the host's dockerd still `starting`, the
/// command runs at once, and its end is reported once dockerd serves (or,
/// if it never does, after saying why on stderr).
pub async fn run(
    docker: &Docker,
    host: &Host,
    spec: ExecSpec,
    starting: Option<Starting>,
    channel: russh::Channel<Msg>,
    handle: Handle,
    backlog: Arc<InputBacklog>,
) -> Result<(), ExecError> {
    let tty = spec.tty.is_some();
    let signals = spec.signals;
    let request = berth_agent::Request {
        argv: spec.cmd.clone(),
        env: spec.env.clone(),
        tty: spec.tty.map(|size| {
            (
                size.cols.min(u16::MAX.into()) as u16,
                size.rows.min(u16::MAX.into()) as u16,
            )
        }),
        modes: spec.modes.clone(),
    };
    let (output, mut input, steer, finish) = match agent::start(host.run_dir(), &request).await {
        Ok(Some(started)) => {
            let output = match started.stderr {
                Some(stderr) => Output::Split(started.stdout, stderr),
                None => Output::Raw(started.stdout),
            };
            let steer = Steer::Agent(started.control.sender());
            (output, started.stdin, steer, Finish::Agent(started.control))
        }
        Err(AgentError::Refused(text)) => {
            let mut stderr = channel.make_writer_ext(Some(1));
            let _ = stderr
                .write_all(format!("berth: {text}\n").as_bytes())
                .await;
            let _ = channel.exit_status(127).await;
            let _ = channel.eof().await;
            let _ = channel.close().await;
            return Ok(());
        }
        found => {
            if let Err(e) = found {
                tracing::warn!("host agent failed ({e}); using the engine's exec");
            }
            let (output, input, control) = start_exec(docker, &host.container_id, spec).await?;
            (
                output,
                input,
                Steer::Exec(control.clone()),
                Finish::Exec(control),
            )
        }
    };
    let channel_id = channel.id();
    let (mut from_client, to_client) = channel.split();

    // Input and output pump independently: a command blocked writing
    // output must never wait on us writing its input, or the reverse.
    let input_steer = steer;
    // The connection's session loop hands us the client's packets through
    // a bounded queue and stops reading the connection while that queue is
    // full, window adjustments included: a command not reading its stdin
    // would then stall its own output (and every other channel). So the
    // queue is drained into `stdin_tx`, at once while the connection's
    // backlog is low and at a slow pace while it is high, and what that
    // holds is bounded by the windows the connection grants (`InputBacklog`).
    let (stdin_tx, mut stdin_rx) = tokio::sync::mpsc::unbounded_channel::<Option<Bytes>>();
    let session_backlog = Arc::new(SessionBacklog {
        connection: backlog,
        queued: AtomicUsize::new(0),
    });
    let writer_backlog = session_backlog.clone();
    let drain_backlog = session_backlog;
    let stdin_writer = async move {
        while let Some(item) = stdin_rx.recv().await {
            let written = match item {
                Some(data) => {
                    let written = input.write_all(&data).await;
                    writer_backlog.take(data.len());
                    written
                }
                None => {
                    let _ = input.shutdown().await;
                    break;
                }
            };
            if written.is_err() {
                break;
            }
        }
        stdin_rx.close();
        // Closes the command's stdin (a pipe ends only when closed).
        drop(input);
        // A closed stdin is no reason to stop the session.
        std::future::pending::<()>().await
    };
    let drain = async move {
        let mut stdin_open = true;
        loop {
            drain_backlog.connection.wait_while_high().await;
            let Some(msg) = from_client.wait().await else {
                break;
            };
            match msg {
                ChannelMsg::Data { data } if stdin_open => {
                    let n = data.len();
                    drain_backlog.add(n);
                    stdin_open = stdin_tx.send(Some(data)).is_ok();
                    if !stdin_open {
                        drain_backlog.take(n);
                    }
                }
                // A terminal has no half-close: like sshd, ignore EOF on a
                // PTY session (closing the exec's input would end it).
                ChannelMsg::Eof if stdin_open && !tty => {
                    let _ = stdin_tx.send(None);
                    stdin_open = false;
                }
                ChannelMsg::WindowChange {
                    col_width,
                    row_height,
                    ..
                } => {
                    let size = TermSize {
                        cols: col_width,
                        rows: row_height,
                    };
                    let steer = input_steer.clone();
                    tokio::spawn(async move { steer.resize(size).await });
                }
                ChannelMsg::Signal { signal } if signals => {
                    let steer = input_steer.clone();
                    tokio::spawn(async move { steer.signal(&signal).await });
                }
                ChannelMsg::Close => break,
                _ => {}
            }
        }
    };
    let input_pump = async move {
        tokio::select! {
            _ = drain => {}
            _ = stdin_writer => {}
        }
    };

    let mut stdout = to_client.make_writer();
    let mut stderr = to_client.make_writer_ext(Some(1));
    // Output is read off the engine into a bounded queue (OUTPUT_QUEUE
    // chunks of up to 32 KiB) and written to the channel from there: while
    // the session loop waits on a full input queue, the command can still
    // write, so it goes on reading its input and unblocks that loop.
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<(bool, Bytes)>(OUTPUT_QUEUE);
    let output_pump = async {
        let deliver = async {
            while let Some((is_stderr, data)) = out_rx.recv().await {
                let writer: &mut (dyn AsyncWrite + Unpin + Send) =
                    if is_stderr { &mut stderr } else { &mut stdout };
                writer.write_all(&data).await.map_err(|_| ClientGone)?;
            }
            Ok::<(), ClientGone>(())
        };
        let (read, written) = tokio::join!(pump_output(output, tty, out_tx), deliver);
        read.and(written)
    };

    let finished = tokio::select! {
        written = output_pump => written.is_ok(),
        _ = input_pump => false,
        _ = client_gone(&handle, channel_id) => false,
    };
    if !finished {
        tracing::debug!("client went away; hanging up the command");
        tokio::spawn(finish.hangup());
        return Ok(());
    }
    let _ = stdout.flush().await;
    let _ = stderr.flush().await;

    // The command may outlive its output (`exec >&-; sleep 60`); a client
    // that leaves meanwhile hangs it up.
    let ending = tokio::select! {
        ending = finish.ending() => ending,
        _ = client_gone(&handle, channel_id) => return Ok(()),
    };
    if let Some(starting) = starting {
        let failure = tokio::select! {
            failure = starting.failure() => failure,
            _ = client_gone(&handle, channel_id) => return Ok(()),
        };
        if let Some(e) = failure {
            let newline = if tty { "\r\n" } else { "\n" };
            let _ = stderr
                .write_all(format!("berth: {e}{newline}").as_bytes())
                .await;
            let _ = stderr.flush().await;
        }
    }
    let _ = to_client.eof().await;
    match ending {
        Ending::Status(code) => {
            let _ = to_client.exit_status(code).await;
        }
        Ending::Signal {
            number,
            core_dumped,
        } => {
            let name = signal_name(number);
            let _ = handle
                .exit_signal_request(channel_id, name, core_dumped, String::new(), String::new())
                .await;
        }
    }
    let _ = to_client.close().await;
    Ok(())
}

/// How a command ended, as SSH reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ending {
    Status(u32),
    Signal { number: u32, core_dumped: bool },
}

/// A random name for one session, shared with `berth-session`.
fn session_id() -> String {
    use rand::RngExt;
    let mut rng = rand::rng();
    (0..24)
        .map(|_| char::from(b"0123456789abcdef"[rng.random_range(0..16)]))
        .collect()
}

/// Starts `spec` with the engine's exec API: for images without the agent.
async fn start_exec(
    docker: &Docker,
    container: &str,
    spec: ExecSpec,
) -> Result<(Output, Writer, Control), ExecError> {
    let tty = spec.tty.is_some();
    let session_id = session_id();
    let mut cmd = vec![
        "/bin/sh".to_string(),
        "-c".into(),
        TRAMPOLINE.into(),
        "berth-session".into(),
        session_id.clone(),
    ];
    cmd.extend(spec.cmd);
    let config = ExecConfig {
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        tty: Some(tty),
        env: Some(spec.env),
        cmd: Some(cmd),
        console_size: spec
            .tty
            .map(|size| vec![size.rows as usize, size.cols as usize]),
        ..Default::default()
    };
    let exec_id = docker.create_exec(container, config).await?.id;
    let (output, input) = attach(docker, &exec_id, tty).await?;
    if let Some(size) = spec.tty {
        // Engines before API 1.42 ignore the size given at create; set it
        // once the exec runs, as the docker CLI does.
        let docker = docker.clone();
        let exec_id = exec_id.clone();
        tokio::spawn(async move { resize(&docker, &exec_id, size).await });
    }
    let control = Control {
        docker: docker.clone(),
        container: container.to_string(),
        session_id,
        exec_id,
    };
    Ok((output, input, control))
}

/// Steers a running command: resizes and signals.
#[derive(Clone)]
enum Steer {
    Exec(Control),
    Agent(agent::ControlSender),
}

impl Steer {
    async fn resize(&self, size: TermSize) {
        match self {
            Steer::Exec(control) => resize(&control.docker, &control.exec_id, size).await,
            Steer::Agent(sender) => sender.resize(size.cols, size.rows).await,
        }
    }

    async fn signal(&self, signal: &Sig) {
        let Some(name) = signal_request_name(signal) else {
            tracing::debug!(?signal, "ignored signal request with an invalid name");
            return;
        };
        match self {
            Steer::Exec(control) => control.signal(&name).await,
            Steer::Agent(sender) => sender.signal(&name).await,
        }
    }
}

/// Learns how the command ended, or hangs it up.
enum Finish {
    Exec(Control),
    Agent(agent::Control),
}

impl Finish {
    async fn ending(self) -> Ending {
        match self {
            Finish::Exec(control) => match exit_code(&control.docker, &control.exec_id).await {
                code @ 129..=192 => control.ending(code).await,
                code => Ending::Status(code),
            },
            Finish::Agent(control) => match control.ending().await {
                berth_agent::Ending::Exit(code) => Ending::Status(code),
                berth_agent::Ending::Signal {
                    number,
                    core_dumped,
                } => Ending::Signal {
                    number,
                    core_dumped,
                },
            },
        }
    }

    /// The client went away: SIGHUP (then SIGKILL) for the session.
    async fn hangup(self) {
        match self {
            Finish::Exec(control) => control.hangup().await,
            // The agent hangs the command up when its connection closes.
            Finish::Agent(control) => drop(control),
        }
    }
}

/// Resolves when the SSH connection is gone. Needed because a command that
/// neither reads its input nor writes output gives no other sign.
async fn client_gone(handle: &Handle, channel: ChannelId) {
    loop {
        tokio::time::sleep(LIVENESS_INTERVAL).await;
        // Empty data puts nothing on the wire; it fails once the
        // connection's session loop has ended.
        let probe = tokio::time::timeout(LIVENESS_INTERVAL, handle.data(channel, Bytes::new()));
        if let Ok(Err(_)) = probe.await {
            return;
        }
    }
}

type Reader = Box<dyn AsyncRead + Send + Unpin>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// The exec's output: raw bytes off the engine connection, or (engines
/// reached through TLS and the like) bollard's decoded stream.
enum Output {
    Raw(Reader),
    /// stdout and stderr on pipes of their own (through the agent).
    Split(Reader, Reader),
    Decoded(futures_util::stream::BoxStream<'static, Result<LogOutput, bollard::errors::Error>>),
}

/// Reads the exec's output into `out` as (is stderr, bytes) chunks until
/// it ends. Kept apart from writing to the channel so the command can keep
/// producing while the connection's session loop is busy (see `run`).
async fn pump_output(
    output: Output,
    tty: bool,
    out: tokio::sync::mpsc::Sender<(bool, Bytes)>,
) -> Result<(), ClientGone> {
    let mut buf = vec![0u8; 32 * 1024];
    let send = |is_stderr: bool, data: &[u8]| out.send((is_stderr, Bytes::copy_from_slice(data)));
    match output {
        Output::Raw(reader) if tty => copy_chunks(reader, false, &out).await,
        Output::Split(stdout, stderr) => {
            let (a, b) = tokio::join!(
                copy_chunks(stdout, false, &out),
                copy_chunks(stderr, true, &out)
            );
            a.and(b)
        }
        // Without a terminal the engine frames the streams: 8-byte header
        // (stream type, 3 zero bytes, big-endian length), then the payload.
        Output::Raw(mut reader) => loop {
            let mut header = [0u8; 8];
            if reader.read_exact(&mut header).await.is_err() {
                return Ok(());
            }
            let mut left =
                u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
            while left > 0 {
                let want = left.min(buf.len());
                let n = match reader.read(&mut buf[..want]).await {
                    Ok(0) | Err(_) => return Ok(()),
                    Ok(n) => n,
                };
                left -= n;
                send(header[0] == 2, &buf[..n])
                    .await
                    .map_err(|_| ClientGone)?;
            }
        },
        Output::Decoded(mut stream) => {
            while let Some(item) = stream.next().await {
                match item {
                    Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                        out.send((false, message)).await.map_err(|_| ClientGone)?
                    }
                    Ok(LogOutput::StdErr { message }) => {
                        out.send((true, message)).await.map_err(|_| ClientGone)?
                    }
                    Ok(LogOutput::StdIn { .. }) => {}
                    Err(e) => {
                        tracing::debug!("exec output ended: {e}");
                        break;
                    }
                }
            }
            Ok(())
        }
    }
}

/// Reads `reader` to its end into `out`, as chunks of one stream.
async fn copy_chunks(
    mut reader: Reader,
    is_stderr: bool,
    out: &tokio::sync::mpsc::Sender<(bool, Bytes)>,
) -> Result<(), ClientGone> {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return Ok(()),
            Ok(n) => n,
        };
        out.send((is_stderr, Bytes::copy_from_slice(&buf[..n])))
            .await
            .map_err(|_| ClientGone)?;
    }
}

/// Where the engine listens, for connections of our own.
enum EngineAddr {
    Unix(PathBuf),
    Tcp(String),
}

/// The engine address as bollard's `connect_with_defaults` reads it, when
/// it is one we can dial ourselves (plain unix or TCP).
fn engine_addr() -> Option<EngineAddr> {
    let host =
        std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
    if let Some(path) = host.strip_prefix("unix://") {
        return Some(EngineAddr::Unix(PathBuf::from(path)));
    }
    let tls = std::env::var_os("DOCKER_TLS_VERIFY").is_some();
    match host
        .strip_prefix("tcp://")
        .or_else(|| host.strip_prefix("http://"))
    {
        Some(addr) if !tls => Some(EngineAddr::Tcp(addr.trim_end_matches('/').to_string())),
        _ => None,
    }
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// Starts the exec attached: its output and its stdin.
async fn attach(docker: &Docker, exec_id: &str, tty: bool) -> Result<(Output, Writer), ExecError> {
    let Some(addr) = engine_addr() else {
        let started = docker
            .start_exec(
                exec_id,
                Some(StartExecOptions {
                    detach: false,
                    tty,
                    output_capacity: Some(32 * 1024),
                }),
            )
            .await?;
        return match started {
            StartExecResults::Attached { output, input } => {
                Ok((Output::Decoded(output.boxed()), Box::new(input)))
            }
            StartExecResults::Detached => Err(ExecError::Attach("exec started detached".into())),
        };
    };
    let failed = |e: &dyn std::fmt::Display| ExecError::Attach(e.to_string());
    let stream: Box<dyn Io> = match addr {
        EngineAddr::Unix(path) => Box::new(
            tokio::net::UnixStream::connect(&path)
                .await
                .map_err(|e| failed(&format!("{}: {e}", path.display())))?,
        ),
        EngineAddr::Tcp(addr) => {
            let stream = tokio::net::TcpStream::connect(&addr)
                .await
                .map_err(|e| failed(&format!("{addr}: {e}")))?;
            let _ = stream.set_nodelay(true);
            Box::new(stream)
        }
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| failed(&e))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!("engine connection for exec ended: {e}");
        }
    });
    let version = docker.client_version();
    let body = format!(r#"{{"Detach":false,"Tty":{tty}}}"#);
    let request = hyper::Request::post(format!(
        "/v{}.{}/exec/{exec_id}/start",
        version.major_version, version.minor_version
    ))
    .header(hyper::header::HOST, "docker")
    .header(hyper::header::CONTENT_TYPE, "application/json")
    .header(hyper::header::CONNECTION, "Upgrade")
    .header(hyper::header::UPGRADE, "tcp")
    .body(Full::new(Bytes::from(body)))
    .map_err(|e| failed(&e))?;
    let response = sender.send_request(request).await.map_err(|e| failed(&e))?;
    let status = response.status();
    if status != hyper::StatusCode::SWITCHING_PROTOCOLS && status != hyper::StatusCode::OK {
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_string())
            .unwrap_or_default();
        return Err(ExecError::Attach(format!(
            "engine answered {status}: {body}"
        )));
    }
    let upgraded = hyper::upgrade::on(response).await.map_err(|e| failed(&e))?;
    let (reader, writer) = tokio::io::split(TokioIo::new(upgraded));
    Ok((Output::Raw(Box::new(reader)), Box::new(writer)))
}

/// Sets the exec's terminal size; the exec may not have started yet, so
/// try a few times.
async fn resize(docker: &Docker, exec_id: &str, size: TermSize) {
    let options = ResizeExecOptions {
        h: size.rows.min(i32::MAX as u32) as i32,
        w: size.cols.min(i32::MAX as u32) as i32,
    };
    for attempt in 1..=5 {
        match docker.resize_exec(exec_id, options.clone()).await {
            Ok(()) => return,
            Err(e) if attempt == 5 => tracing::debug!("resize failed: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20 * attempt)).await,
        }
    }
}

/// The exec's exit code. The engine may report it a moment after the
/// output stream ends, so ask a few times.
async fn exit_code(docker: &Docker, exec_id: &str) -> u32 {
    for _ in 0..100 {
        match docker.inspect_exec(exec_id).await {
            Ok(info) if info.running != Some(true) => {
                return info.exit_code.map(|c| c as u32).unwrap_or(255);
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => {
                tracing::warn!("cannot read exit code of exec {exec_id}: {e}");
                return 255;
            }
        }
    }
    255
}

/// Talks to a session's `berth-session` through short execs of its own.
#[derive(Clone)]
struct Control {
    docker: Docker,
    container: String,
    session_id: String,
    exec_id: String,
}

impl Control {
    /// Runs `berth-session MODE ID ARGS…` and returns its stdout.
    async fn call(&self, mode: &str, args: &[&str]) -> Result<String, bollard::errors::Error> {
        let mut cmd = vec![SESSION_PARENT, mode, &self.session_id];
        cmd.extend_from_slice(args);
        let config = ExecConfig {
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            cmd: Some(cmd.into_iter().map(String::from).collect()),
            ..Default::default()
        };
        let id = self.docker.create_exec(&self.container, config).await?.id;
        let mut text = String::new();
        if let StartExecResults::Attached { mut output, .. } =
            self.docker.start_exec(&id, None).await?
        {
            while let Some(item) = output.next().await {
                match item? {
                    LogOutput::StdOut { message } => {
                        text.push_str(&String::from_utf8_lossy(&message))
                    }
                    LogOutput::StdErr { message } => {
                        tracing::debug!(
                            "berth-session {mode}: {}",
                            String::from_utf8_lossy(&message)
                        )
                    }
                    _ => {}
                }
            }
        }
        Ok(text)
    }

    /// How a command that exited with `code` (128+N) really ended.
    async fn ending(&self, code: u32) -> Ending {
        match self.call("status", &[]).await {
            Ok(text) => parse_status(&text).unwrap_or(Ending::Status(code)),
            Err(e) => {
                tracing::debug!("cannot read how the command ended: {e}");
                Ending::Status(code)
            }
        }
    }

    /// Delivers a client's `signal` request (a validated name).
    async fn signal(&self, name: &str) {
        if let Err(e) = self.call("signal", &[name]).await {
            tracing::debug!("cannot deliver SIG{name}: {e}");
        }
    }

    /// Hangs the session's processes up: SIGHUP, then SIGKILL for those
    /// that neither exit nor ignore it.
    async fn hangup(&self) {
        match tokio::time::timeout(HANGUP_TIMEOUT, self.call("hangup", &[])).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!("cannot hang up session {}: {e}", self.session_id),
            Err(_) => tracing::warn!("hang-up of session {} timed out", self.session_id),
        }
    }
}

/// Reads `berth-session status` output: "signal N" or "signal N core".
fn parse_status(text: &str) -> Option<Ending> {
    let mut words = text.split_whitespace();
    if words.next()? != "signal" {
        return None;
    }
    let number: u32 = words.next()?.parse().ok()?;
    let core_dumped = words.next() == Some("core");
    Some(Ending::Signal {
        number,
        core_dumped,
    })
}

/// The SSH name of signal `number` (Linux numbering), as OpenSSH's sshd
/// names it: RFC 4254's list plus USR2, anything else `SIG@openssh.com`.
fn signal_name(number: u32) -> Sig {
    match number {
        1 => Sig::HUP,
        2 => Sig::INT,
        3 => Sig::QUIT,
        4 => Sig::ILL,
        6 => Sig::ABRT,
        8 => Sig::FPE,
        9 => Sig::KILL,
        10 => Sig::USR1,
        11 => Sig::SEGV,
        12 => Sig::Custom("USR2".into()),
        13 => Sig::PIPE,
        14 => Sig::ALRM,
        15 => Sig::TERM,
        _ => Sig::Custom("SIG@openssh.com".into()),
    }
}

/// The name to hand to `kill`, for a client's signal request; None for
/// anything that is not a plain signal name.
fn signal_request_name(signal: &Sig) -> Option<String> {
    let name = match signal {
        Sig::ABRT => "ABRT",
        Sig::ALRM => "ALRM",
        Sig::FPE => "FPE",
        Sig::HUP => "HUP",
        Sig::ILL => "ILL",
        Sig::INT => "INT",
        Sig::KILL => "KILL",
        Sig::PIPE => "PIPE",
        Sig::QUIT => "QUIT",
        Sig::SEGV => "SEGV",
        Sig::TERM => "TERM",
        Sig::USR1 => "USR1",
        Sig::Custom(name) => name.as_str(),
    };
    let valid = !name.is_empty()
        && name.len() <= 16
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
    valid.then(|| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_signal_becomes_an_exit_signal() {
        assert_eq!(
            parse_status("signal 9\n"),
            Some(Ending::Signal {
                number: 9,
                core_dumped: false
            })
        );
        assert_eq!(
            parse_status("signal 11 core\n"),
            Some(Ending::Signal {
                number: 11,
                core_dumped: true
            })
        );
    }

    #[test]
    fn no_recorded_signal_means_a_plain_exit() {
        assert_eq!(parse_status(""), None);
        assert_eq!(parse_status("signal x"), None);
    }

    #[test]
    fn signals_outside_the_rfc_list_are_named_as_openssh_does() {
        let name = |n| format!("{:?}", signal_name(n));
        assert_eq!(name(9), "KILL");
        assert_eq!(name(12), format!("{:?}", Sig::Custom("USR2".into())));
        assert_eq!(
            name(7),
            format!("{:?}", Sig::Custom("SIG@openssh.com".into()))
        );
    }

    #[test]
    fn signal_requests_with_odd_names_are_not_delivered() {
        assert_eq!(signal_request_name(&Sig::INT).as_deref(), Some("INT"));
        assert_eq!(
            signal_request_name(&Sig::Custom("WINCH".into())).as_deref(),
            Some("WINCH")
        );
        assert_eq!(signal_request_name(&Sig::Custom("-9; rm".into())), None);
        assert_eq!(signal_request_name(&Sig::Custom(String::new())), None);
    }
}
