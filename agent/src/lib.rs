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
    /// The client's terminal modes (RFC 4254 section 8 opcodes and values),
    /// applied to the terminal.
    #[serde(default)]
    pub modes: Vec<(u8, u32)>,
}

/// Applies SSH terminal modes (RFC 4254 section 8) to `t`; opcodes Linux
/// has no use for (speeds, VDSUSP, VSTATUS…) are skipped.
pub fn apply_modes(t: &mut nix::sys::termios::Termios, modes: &[(u8, u32)]) {
    use nix::sys::termios::{
        ControlFlags as C, InputFlags as I, LocalFlags as L, OutputFlags as O,
        SpecialCharacterIndices as V,
    };
    for &(opcode, value) in modes {
        let on = value != 0;
        let char_index = match opcode {
            1 => Some(V::VINTR),
            2 => Some(V::VQUIT),
            3 => Some(V::VERASE),
            4 => Some(V::VKILL),
            5 => Some(V::VEOF),
            6 => Some(V::VEOL),
            7 => Some(V::VEOL2),
            8 => Some(V::VSTART),
            9 => Some(V::VSTOP),
            10 => Some(V::VSUSP),
            12 => Some(V::VREPRINT),
            13 => Some(V::VWERASE),
            14 => Some(V::VLNEXT),
            18 => Some(V::VDISCARD),
            _ => None,
        };
        if let Some(index) = char_index {
            // 255 means "disabled" on the wire; Linux spells it 0.
            t.control_chars[index as usize] = if value == 255 { 0 } else { value as u8 };
            continue;
        }
        match opcode {
            30 => t.input_flags.set(I::IGNPAR, on),
            31 => t.input_flags.set(I::PARMRK, on),
            32 => t.input_flags.set(I::INPCK, on),
            33 => t.input_flags.set(I::ISTRIP, on),
            34 => t.input_flags.set(I::INLCR, on),
            35 => t.input_flags.set(I::IGNCR, on),
            36 => t.input_flags.set(I::ICRNL, on),
            37 => t.input_flags.set(I::IUCLC, on),
            38 => t.input_flags.set(I::IXON, on),
            39 => t.input_flags.set(I::IXANY, on),
            40 => t.input_flags.set(I::IXOFF, on),
            41 => t.input_flags.set(I::IMAXBEL, on),
            42 => t.input_flags.set(I::IUTF8, on),
            50 => t.local_flags.set(L::ISIG, on),
            51 => t.local_flags.set(L::ICANON, on),
            52 => t.local_flags.set(L::XCASE, on),
            53 => t.local_flags.set(L::ECHO, on),
            54 => t.local_flags.set(L::ECHOE, on),
            55 => t.local_flags.set(L::ECHOK, on),
            56 => t.local_flags.set(L::ECHONL, on),
            57 => t.local_flags.set(L::NOFLSH, on),
            58 => t.local_flags.set(L::TOSTOP, on),
            59 => t.local_flags.set(L::IEXTEN, on),
            60 => t.local_flags.set(L::ECHOCTL, on),
            61 => t.local_flags.set(L::ECHOKE, on),
            62 => t.local_flags.set(L::PENDIN, on),
            70 => t.output_flags.set(O::OPOST, on),
            71 => t.output_flags.set(O::OLCUC, on),
            72 => t.output_flags.set(O::ONLCR, on),
            73 => t.output_flags.set(O::OCRNL, on),
            74 => t.output_flags.set(O::ONOCR, on),
            75 => t.output_flags.set(O::ONLRET, on),
            90 if on => {
                t.control_flags.remove(C::CSIZE);
                t.control_flags.insert(C::CS7);
            }
            91 if on => {
                t.control_flags.remove(C::CSIZE);
                t.control_flags.insert(C::CS8);
            }
            92 => t.control_flags.set(C::PARENB, on),
            93 => t.control_flags.set(C::PARODD, on),
            _ => {}
        }
    }
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
    fn terminal_modes_reach_the_termios() {
        use nix::sys::termios::{LocalFlags, SpecialCharacterIndices, tcgetattr};
        let pty = nix::pty::openpty(None, None).unwrap();
        let mut t = tcgetattr(&pty.slave).unwrap();
        // VINTR = ^B, ECHO off, VEOL disabled.
        apply_modes(&mut t, &[(1, 2), (53, 0), (6, 255), (128, 38400)]);
        assert_eq!(t.control_chars[SpecialCharacterIndices::VINTR as usize], 2);
        assert_eq!(t.control_chars[SpecialCharacterIndices::VEOL as usize], 0);
        assert!(!t.local_flags.contains(LocalFlags::ECHO));
        apply_modes(&mut t, &[(53, 1)]);
        assert!(t.local_flags.contains(LocalFlags::ECHO));
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
