//! The protocol between the berth gateway and `berth-agent`, the small
//! process in every host that starts SSH sessions' commands.
//!
//! The gateway connects to the agent's unix socket in the host's run dir
//! (`/run/berth/agent.sock` inside the host), one connection per session,
//! and sends one [`Request`] as a JSON line. Without a terminal the same
//! message carries the command's stdin, stdout and stderr (SCM_RIGHTS):
//! the command reads and writes the gateway's own pipes, so its bytes
//! never pass through the engine. With a terminal the agent opens the pty
//! and answers `started` with the master side attached.
//!
//! Agent to gateway, one line each: `started`, then `exit N` or
//! `signal N` / `signal N core` when the command ends; or `error TEXT`.
//! Gateway to agent: `signal NAME`, `resize COLS ROWS`. The gateway
//! closing the connection while the command runs hangs the command up
//! (SIGHUP to its process group, SIGKILL two seconds later).

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

/// The agent's socket, in a host's run dir.
pub const SOCKET_NAME: &str = "agent.sock";

/// The longest request line accepted.
pub const MAX_REQUEST: usize = 1024 * 1024;

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Request {
    /// argv; the first word is looked up on PATH.
    pub argv: Vec<String>,
    /// `NAME=value` pairs added to the host's environment.
    pub env: Vec<String>,
    /// Run on a terminal of this many (columns, rows).
    pub tty: Option<(u16, u16)>,
}

/// Sends `bytes` with `fds` attached to the first byte; returns how many
/// bytes went (the rest is sent as plain data).
pub fn send_with_fds(socket: BorrowedFd<'_>, bytes: &[u8], fds: &[RawFd]) -> io::Result<usize> {
    let iov = [IoSlice::new(bytes)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &cmsg };
    sendmsg::<()>(
        socket.as_raw_fd(),
        &iov,
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(io::Error::from)
}

/// Receives bytes into `buf` and up to `max_fds` descriptors. Descriptors
/// beyond that (or a truncated set) are closed and reported as an error.
pub fn recv_with_fds(
    socket: BorrowedFd<'_>,
    buf: &mut [u8],
    max_fds: usize,
) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(raw) = cmsg {
            // SAFETY: the kernel just installed these descriptors in this
            // process for us; nothing else owns them.
            fds.extend(
                raw.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    let bytes = msg.bytes;
    if msg.flags.contains(MsgFlags::MSG_CTRUNC) || fds.len() > max_fds {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "unexpected descriptors attached",
        ));
    }
    Ok((bytes, fds))
}

/// How a command ended, as the agent reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// `exit N`.
    Exit(u32),
    /// `signal N [core]`.
    Signal {
        /// Linux signal number.
        number: u32,
        /// Whether it dumped core.
        core_dumped: bool,
    },
}

impl Ending {
    /// The line the agent sends.
    pub fn line(&self) -> String {
        match self {
            Ending::Exit(code) => format!("exit {code}\n"),
            Ending::Signal {
                number,
                core_dumped: true,
            } => format!("signal {number} core\n"),
            Ending::Signal { number, .. } => format!("signal {number}\n"),
        }
    }

    /// Reads an `exit …` or `signal …` line.
    pub fn parse(line: &str) -> Option<Ending> {
        let mut words = line.split_whitespace();
        let kind = words.next()?;
        let number: u32 = words.next()?.parse().ok()?;
        match (kind, words.next(), words.next()) {
            ("exit", None, _) => Some(Ending::Exit(number)),
            ("signal", None, _) => Some(Ending::Signal {
                number,
                core_dumped: false,
            }),
            ("signal", Some("core"), None) => Some(Ending::Signal {
                number,
                core_dumped: true,
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn endings_round_trip_through_their_lines() {
        for ending in [
            Ending::Exit(0),
            Ending::Exit(137),
            Ending::Signal {
                number: 9,
                core_dumped: false,
            },
            Ending::Signal {
                number: 11,
                core_dumped: true,
            },
        ] {
            assert_eq!(Ending::parse(&ending.line()), Some(ending));
        }
        assert_eq!(Ending::parse("exit"), None);
        assert_eq!(Ending::parse("exit x"), None);
        assert_eq!(Ending::parse("signal 9 soon"), None);
        assert_eq!(Ending::parse("started"), None);
    }

    #[test]
    fn descriptors_travel_with_the_first_byte() {
        let (a, b) = UnixStream::pair().unwrap();
        let (r, w) = std::io::pipe().unwrap();
        let sent = send_with_fds(
            std::os::fd::AsFd::as_fd(&a),
            b"hello\n",
            &[r.as_raw_fd(), w.as_raw_fd()],
        )
        .unwrap();
        assert_eq!(sent, 6);
        let mut buf = [0u8; 16];
        let (n, fds) = recv_with_fds(std::os::fd::AsFd::as_fd(&b), &mut buf, 2).unwrap();
        assert_eq!(&buf[..n], b"hello\n");
        assert_eq!(fds.len(), 2);
    }

    #[test]
    fn more_descriptors_than_expected_are_refused() {
        let (a, b) = UnixStream::pair().unwrap();
        let (r, w) = std::io::pipe().unwrap();
        send_with_fds(
            std::os::fd::AsFd::as_fd(&a),
            b"x",
            &[r.as_raw_fd(), w.as_raw_fd()],
        )
        .unwrap();
        let mut buf = [0u8; 16];
        assert!(recv_with_fds(std::os::fd::AsFd::as_fd(&b), &mut buf, 1).is_err());
    }
}
