//! berth-agent: started by `berth-init` in every berth host, it runs SSH
//! sessions' commands for the gateway (see the library for the protocol).
//!
//!     berth-agent [SOCKET]      # default /run/berth/agent.sock
//!
//! Commands run as children of the agent in the host's namespaces and
//! cgroup, each in a session of its own (so signals and the hang-up reach
//! its whole process group), in $HOME, with the host's environment plus
//! what the gateway passes.

use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use berth_agent::{Ending, MAX_REQUEST, Request, apply_modes, recv_with_fds, send_with_fds};
use nix::pty::{Winsize, openpty};
use nix::sys::signal::{Signal, killpg};
use nix::sys::termios::{SetArg, tcgetattr, tcsetattr};
use nix::unistd::Pid;

/// How long a hung-up command has to exit before SIGKILL.
const HANGUP_GRACE: Duration = Duration::from_secs(2);

nix::ioctl_write_ptr_bad!(set_window_size, nix::libc::TIOCSWINSZ, Winsize);

fn main() {
    // Started in the background by a script, the agent may have inherited
    // SIGINT and SIGQUIT ignored (what shells do to asynchronous commands);
    // commands inherit dispositions, and Ctrl-C must work in them.
    for signal in [
        Signal::SIGHUP,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGTERM,
        Signal::SIGTSTP,
        Signal::SIGTTIN,
        Signal::SIGTTOU,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
    ] {
        // SAFETY: installs the default disposition, no handler code.
        let _ = unsafe { nix::sys::signal::signal(signal, nix::sys::signal::SigHandler::SigDfl) };
    }
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/run/berth/agent.sock".into());
    if let Err(e) = serve(&path) {
        eprintln!("berth-agent: {path}: {e}");
        std::process::exit(1);
    }
}

/// Tells whoever started the agent that it listens: one line on stdout,
/// which is then pointed at /dev/null so the reader may go away (berth-init
/// waits for this line before it starts dockerd, so a session never arrives
/// before the agent).
fn announce_ready() {
    let mut stdout = io::stdout().lock();
    let _ = stdout.write_all(b"ready\n").and_then(|()| stdout.flush());
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(&null);
    }
}

fn serve(path: &str) -> io::Result<()> {
    // Bound under a temporary name and moved into place, so the gateway
    // never finds a socket nobody listens on yet.
    let staging = format!("{path}.new");
    let _ = std::fs::remove_file(&staging);
    let listener = UnixListener::bind(&staging)?;
    std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&staging, path)?;
    announce_ready();
    for conn in listener.incoming() {
        match conn {
            Ok(conn) => {
                let spawned = small_thread().spawn(move || {
                    if let Err(e) = session(conn) {
                        eprintln!("berth-agent: session: {e}");
                    }
                });
                if let Err(e) = spawned {
                    eprintln!("berth-agent: cannot start a session thread: {e}");
                }
            }
            Err(e) => eprintln!("berth-agent: accept: {e}"),
        }
    }
    Ok(())
}

/// Session threads only shuffle lines and wait: a small stack each keeps
/// hundreds of sessions cheap.
fn small_thread() -> std::thread::Builder {
    std::thread::Builder::new().stack_size(128 * 1024)
}

/// Reads the request line and the descriptors sent with it.
fn read_request(conn: &UnixStream) -> io::Result<(Request, Vec<OwnedFd>)> {
    let mut line = Vec::new();
    let mut fds = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let (n, got) = recv_with_fds(conn.as_fd(), &mut buf, 3 - fds.len().min(3))?;
        fds.extend(got);
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "no request"));
        }
        line.extend_from_slice(&buf[..n]);
        if line.last() == Some(&b'\n') {
            break;
        }
        if line.len() > MAX_REQUEST || line.contains(&b'\n') {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "bad request"));
        }
    }
    let request: Request =
        serde_json::from_slice(&line).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    if request.argv.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "empty argv"));
    }
    Ok((request, fds))
}

fn session(conn: UnixStream) -> io::Result<()> {
    let (request, fds) = read_request(&conn)?;
    let mut out = conn.try_clone()?;
    let mut cmd = Command::new(&request.argv[0]);
    cmd.args(&request.argv[1..]);
    for pair in &request.env {
        if let Some((name, value)) = pair.split_once('=') {
            cmd.env(name, value);
        }
    }
    let home = request
        .env
        .iter()
        .find_map(|p| p.strip_prefix("HOME="))
        .map(str::to_string)
        .or_else(|| std::env::var("HOME").ok())
        .unwrap_or_else(|| "/".into());
    if std::path::Path::new(&home).is_dir() {
        cmd.current_dir(&home);
    } else {
        cmd.current_dir("/");
    }
    let master = match request.tty {
        Some((cols, rows)) => {
            let size = Winsize {
                ws_row: rows,
                ws_col: cols,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            let pty = openpty(Some(&size), None)?;
            if !request.modes.is_empty() {
                let mut termios = tcgetattr(&pty.slave)?;
                apply_modes(&mut termios, &request.modes);
                tcsetattr(&pty.slave, SetArg::TCSANOW, &termios)?;
            }
            cmd.stdin(Stdio::from(pty.slave.try_clone()?))
                .stdout(Stdio::from(pty.slave.try_clone()?))
                .stderr(Stdio::from(pty.slave));
            // SAFETY: only async-signal-safe calls between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    nix::unistd::setsid()?;
                    if nix::libc::ioctl(0, nix::libc::TIOCSCTTY as _, 0) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            Some(pty.master)
        }
        None => {
            let [stdin, stdout, stderr]: [OwnedFd; 3] = fds
                .try_into()
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "want 3 descriptors"))?;
            cmd.stdin(Stdio::from(stdin))
                .stdout(Stdio::from(stdout))
                .stderr(Stdio::from(stderr));
            // SAFETY: only async-signal-safe calls between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    nix::unistd::setsid()?;
                    Ok(())
                });
            }
            None
        }
    };
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            let _ = out.write_all(format!("error {}: {e}\n", request.argv[0]).as_bytes());
            return Ok(());
        }
    };
    // The command's descriptors now live in the child only.
    drop(cmd);
    let group = Pid::from_raw(child.id() as i32);
    let announced = match &master {
        Some(master) => send_with_fds(out.as_fd(), b"started\n", &[master.as_raw_fd()]).map(drop),
        None => out.write_all(b"started\n"),
    };
    if let Err(e) = announced {
        // Nobody to report to: the command goes, as on a hang-up.
        let ended = AtomicBool::new(false);
        hang_up(group, &ended);
        let _ = child.wait();
        return Err(e);
    }

    let ended = Arc::new(AtomicBool::new(false));
    let waiter_ended = ended.clone();
    small_thread().spawn(move || {
        let ending = match child.wait() {
            Ok(status) => match (status.code(), status.signal()) {
                (Some(code), _) => Ending::Exit(code as u32),
                (None, Some(number)) => Ending::Signal {
                    number: number as u32,
                    core_dumped: status.core_dumped(),
                },
                (None, None) => Ending::Exit(255),
            },
            Err(_) => Ending::Exit(255),
        };
        waiter_ended.store(true, Ordering::SeqCst);
        let _ = out.write_all(ending.line().as_bytes());
        let _ = out.shutdown(std::net::Shutdown::Write);
    })?;

    let reader = BufReader::new(conn.try_clone()?);
    for line in reader.lines() {
        let Ok(line) = line else { break };
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("signal"), Some(name), None) => {
                if let Ok(signal) = format!("SIG{name}").parse::<Signal>() {
                    let _ = killpg(group, signal);
                }
            }
            (Some("resize"), Some(cols), Some(rows)) => {
                if let (Some(master), Ok(cols), Ok(rows)) = (&master, cols.parse(), rows.parse()) {
                    let size = Winsize {
                        ws_row: rows,
                        ws_col: cols,
                        ws_xpixel: 0,
                        ws_ypixel: 0,
                    };
                    // SAFETY: a valid descriptor and a valid winsize.
                    let _ = unsafe { set_window_size(master.as_raw_fd(), &size) };
                }
            }
            _ => {}
        }
    }
    // The gateway went away: hang the command up, as sshd does.
    hang_up(group, &ended);
    Ok(())
}

/// SIGHUP (and SIGCONT, for a stopped job) to the command's process group,
/// then SIGKILL after [`HANGUP_GRACE`] unless the command has ended.
fn hang_up(group: Pid, ended: &AtomicBool) {
    if ended.load(Ordering::SeqCst) {
        return;
    }
    let _ = killpg(group, Signal::SIGHUP);
    let _ = killpg(group, Signal::SIGCONT);
    std::thread::sleep(HANGUP_GRACE);
    if !ended.load(Ordering::SeqCst) {
        let _ = killpg(group, Signal::SIGKILL);
    }
}
