//! Starting a session's command through the host's `berth-agent` (see the
//! `berth-agent` crate for the protocol): the command gets pipes made here
//! (or a terminal the agent opens), so its bytes flow between the gateway
//! and the command through the kernel alone, and starting it costs one
//! unix-socket round trip instead of the engine's exec machinery.
//!
//! The tenant is root in their host and may replace the agent: nothing it
//! says is trusted beyond this session. It can only hand back a terminal,
//! which is checked to be a character device, and end lines.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use berth_agent::{Ending, Request, SOCKET_NAME, recv_with_fds, send_with_fds};
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::stat::{SFlag, fstat};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use crate::hosts::socket;

/// A pipe's capacity for the command's output (Linux's default cap for an
/// unprivileged process): fewer wake-ups per megabyte than 64 KiB.
const OUTPUT_PIPE: i32 = 1024 * 1024;

/// How long the agent has to answer a request (it answers at once).
const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A command the agent started.
pub struct Started {
    /// The command's stdin.
    pub stdin: Box<dyn AsyncWrite + Send + Unpin>,
    /// Its stdout (the terminal, with one).
    pub stdout: Box<dyn AsyncRead + Send + Unpin>,
    /// Its stderr; none on a terminal.
    pub stderr: Option<Box<dyn AsyncRead + Send + Unpin>>,
    /// Signals, resizes and how it ended.
    pub control: Control,
}

/// The session's connection to the agent. Dropping it hangs the command up.
pub struct Control {
    writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    reader: OwnedReadHalf,
    pending: Vec<u8>,
}

/// Sends control lines from other tasks.
#[derive(Clone)]
pub struct ControlSender(Arc<tokio::sync::Mutex<OwnedWriteHalf>>);

impl ControlSender {
    /// Delivers a signal (a validated name, without `SIG`).
    pub async fn signal(&self, name: &str) {
        let _ = self
            .0
            .lock()
            .await
            .write_all(format!("signal {name}\n").as_bytes())
            .await;
    }

    /// Resizes the terminal.
    pub async fn resize(&self, cols: u32, rows: u32) {
        let (cols, rows) = (cols.min(u16::MAX.into()), rows.min(u16::MAX.into()));
        let _ = self
            .0
            .lock()
            .await
            .write_all(format!("resize {cols} {rows}\n").as_bytes())
            .await;
    }
}

impl Control {
    /// A handle for sending signals and resizes.
    pub fn sender(&self) -> ControlSender {
        ControlSender(self.writer.clone())
    }

    /// Waits for the agent to say how the command ended (255 when it goes
    /// away without saying).
    pub async fn ending(mut self) -> Ending {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 256];
        loop {
            while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                if let Some(ending) = Ending::parse(&String::from_utf8_lossy(&line)) {
                    return ending;
                }
            }
            if self.pending.len() > 4096 {
                return Ending::Exit(255);
            }
            match self.reader.read(&mut buf).await {
                Ok(0) | Err(_) => return Ending::Exit(255),
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
            }
        }
    }
}

/// Why the agent could not start the command.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The agent answered with an error (e.g. no such program).
    #[error("{0}")]
    Refused(String),
    /// The conversation with the agent failed.
    #[error("host agent: {0}")]
    Io(#[from] io::Error),
}

/// Starts `request` through the agent in `run_dir`. `Ok(None)` when the
/// host has no agent listening (an image without one, or one still
/// starting): the caller uses the engine's exec instead.
pub async fn start(run_dir: &Path, request: &Request) -> Result<Option<Started>, AgentError> {
    let stream = match socket::connect_named(run_dir, SOCKET_NAME).await {
        Ok(stream) => stream,
        Err(e) => {
            tracing::debug!("no host agent: {e}");
            return Ok(None);
        }
    };
    match tokio::time::timeout(ANSWER_TIMEOUT, converse(stream, request)).await {
        Ok(started) => started.map(Some),
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "the agent did not answer").into()),
    }
}

/// Sends the request and reads the agent's answer.
async fn converse(
    mut stream: tokio::net::UnixStream,
    request: &Request,
) -> Result<Started, AgentError> {
    let mut line = serde_json::to_vec(request).map_err(io::Error::other)?;
    line.push(b'\n');

    let (stdin, stdout, stderr, theirs) = if request.tty.is_none() {
        let (stdin_r, stdin_w) = std::io::pipe()?;
        let (stdout_r, stdout_w) = std::io::pipe()?;
        let (stderr_r, stderr_w) = std::io::pipe()?;
        // A failure only keeps the default size.
        let _ = fcntl(&stdout_r, FcntlArg::F_SETPIPE_SZ(OUTPUT_PIPE));
        let stdin: Box<dyn AsyncWrite + Send + Unpin> = Box::new(
            tokio::net::unix::pipe::Sender::from_owned_fd(OwnedFd::from(stdin_w))?,
        );
        let stdout: Box<dyn AsyncRead + Send + Unpin> = Box::new(
            tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(stdout_r))?,
        );
        let stderr: Box<dyn AsyncRead + Send + Unpin> = Box::new(
            tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(stderr_r))?,
        );
        let theirs = vec![
            OwnedFd::from(stdin_r),
            OwnedFd::from(stdout_w),
            OwnedFd::from(stderr_w),
        ];
        (Some(stdin), Some(stdout), Some(stderr), theirs)
    } else {
        (None, None, None, Vec::new())
    };

    // The request, with the command's ends of the pipes on its first byte.
    let raw: Vec<_> = theirs.iter().map(|fd| fd.as_raw_fd()).collect();
    let sent = loop {
        stream.writable().await?;
        match stream.try_io(Interest::WRITABLE, || {
            send_with_fds(stream.as_fd(), &line, &raw)
        }) {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.into()),
        }
    };
    // Only the command holds its ends now: EOF works both ways.
    drop(theirs);
    stream.write_all(&line[sent..]).await?;

    // The answer: `started` (with the terminal attached), or `error …`.
    let mut pending = Vec::new();
    let mut terminal = None;
    let mut buf = [0u8; 4096];
    let answer = loop {
        if let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            break String::from_utf8_lossy(&line).trim_end().to_string();
        }
        if pending.len() > 4096 {
            return Err(io::Error::other("the agent's answer is too long").into());
        }
        stream.readable().await?;
        let got = stream.try_io(Interest::READABLE, || {
            recv_with_fds(stream.as_fd(), &mut buf, 1)
        });
        match got {
            Ok((0, _)) => return Err(io::Error::other("the agent closed the connection").into()),
            Ok((n, fds)) => {
                pending.extend_from_slice(&buf[..n]);
                if let Some(fd) = fds.into_iter().next() {
                    terminal = Some(fd);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.into()),
        }
    };
    if let Some(text) = answer.strip_prefix("error ") {
        return Err(AgentError::Refused(text.to_string()));
    }
    if answer != "started" {
        return Err(io::Error::other(format!("unexpected answer {answer:?}")).into());
    }
    let (reader, writer) = stream.into_split();
    let control = Control {
        writer: Arc::new(tokio::sync::Mutex::new(writer)),
        reader,
        pending,
    };
    let started = match (stdin, stdout, terminal) {
        (Some(stdin), Some(stdout), None) => Started {
            stdin,
            stdout,
            stderr,
            control,
        },
        (None, None, Some(fd)) => {
            let (reader, writer) = open_terminal(fd)?;
            Started {
                stdin: Box::new(writer),
                stdout: Box::new(reader),
                stderr: None,
                control,
            }
        }
        _ => return Err(io::Error::other("the agent sent no terminal, or an unasked one").into()),
    };
    Ok(started)
}

/// The master side of the session's terminal, as a reader and a writer.
fn open_terminal(fd: OwnedFd) -> io::Result<(TerminalReader, tokio::net::unix::pipe::Sender)> {
    let st = fstat(&fd).map_err(io::Error::from)?;
    if SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFCHR {
        return Err(io::Error::other("the agent's terminal is not a terminal"));
    }
    let flags = fcntl(&fd, FcntlArg::F_GETFL).map_err(io::Error::from)?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(&fd, FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
    // tokio's pipe ends do plain reads and writes, which is all a terminal
    // needs; each gets its own descriptor.
    let writer = tokio::net::unix::pipe::Sender::from_owned_fd_unchecked(fd.try_clone()?)?;
    let reader = tokio::net::unix::pipe::Receiver::from_owned_fd_unchecked(fd)?;
    Ok((TerminalReader(reader), writer))
}

/// Reads a terminal's master side; EIO (every process holding the terminal
/// has gone) is its end of file.
struct TerminalReader(tokio::net::unix::pipe::Receiver);

impl AsyncRead for TerminalReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match ready!(Pin::new(&mut self.0).poll_read(cx, buf)) {
            Err(e) if e.raw_os_error() == Some(nix::libc::EIO) => Poll::Ready(Ok(())),
            other => Poll::Ready(other),
        }
    }
}
