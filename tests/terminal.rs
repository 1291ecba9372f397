//! Terminal sessions behave like OpenSSH's: raw bytes, the login shell,
//! resizes, Ctrl-C and Ctrl-Z, and how commands end (exit status or signal).
//! Interactive sessions are driven through tmux, as a person would type.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn terminal_output_starting_with_frame_header_bytes_arrives_intact() {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    let out = alice
        .ssh_command()
        .args(["-tt", r"printf '\001\002\000hello'"])
        .stdin(Stdio::null())
        .output()
        .expect("ssh -tt");
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert!(
        out.stdout.starts_with(b"\x01\x02\x00hello"),
        "output: {:?}",
        out.stdout
    );
}

#[test]
fn a_command_killed_by_a_signal_is_reported_as_an_exit_signal() {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    alice.ssh_ok("true");
    // OpenSSH's client records no exit status for an exit-signal and exits
    // 255; its debug log shows the request.
    let out = alice
        .ssh_command()
        .args(["-v", "kill -9 $$"])
        .stdin(Stdio::null())
        .output()
        .expect("ssh");
    assert_eq!(out.status.code(), Some(255), "stderr: {}", stderr(&out));
    assert!(
        stderr(&out).contains("rtype exit-signal"),
        "stderr: {}",
        stderr(&out)
    );
}

#[test]
fn a_command_exiting_with_a_high_code_is_not_mistaken_for_a_signal() {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    alice.ssh_ok("true");
    let out = alice
        .ssh_command()
        .args(["-v", "exit 137"])
        .stdin(Stdio::null())
        .output()
        .expect("ssh");
    assert_eq!(out.status.code(), Some(137), "stderr: {}", stderr(&out));
    assert!(!stderr(&out).contains("rtype exit-signal"));
}

#[test]
fn non_interactive_commands_find_docker_on_path() {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    assert_eq!(alice.ssh_ok("command -v docker"), "/usr/bin/docker");
}

#[test]
fn the_configured_shell_runs_commands() {
    let mut gateway = Gateway::start_with_config("[ssh]\nshell = \"/bin/sh\"\n");
    let alice = gateway.new_user();
    assert_eq!(alice.ssh_ok("readlink /proc/$$/exe"), "/usr/bin/dash");
    assert_eq!(alice.ssh_ok("echo $SHELL"), "/bin/sh");
}

#[test]
fn the_login_shell_shows_a_prompt_and_follows_window_resizes() {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    let tmux = Tmux::start(&alice, 100, 30);
    tmux.wait_for("@berth-host:~#");

    tmux.type_line("stty size");
    tmux.wait_for(&tmux.pane_size());

    tmux.resize(132, 43);
    tmux.type_line("clear; stty size");
    tmux.wait_for(&tmux.pane_size());
    assert!(tmux.pane_size().ends_with(" 132"), "{}", tmux.pane_size());
}

#[test]
fn ctrl_c_interrupts_the_running_command_and_the_prompt_returns() {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    let tmux = Tmux::start(&alice, 100, 30);
    tmux.wait_for("@berth-host:~#");
    tmux.type_line("sleep 100; echo slept-$((6 * 7))");
    wait_until(|| !alice.host_processes("sleep 100").is_empty());
    tmux.keys(&["C-c"]);
    // Typed only once the prompt is back: prints 42 only if sleep ended
    // early and the shell survived.
    tmux.type_line("echo back-$((6 * 7))");
    tmux.wait_for("back-42");
    assert!(!tmux.screen().contains("slept-42"), "{}", tmux.screen());
    assert!(alice.host_processes("sleep 100").is_empty());
}

#[test]
fn the_clients_terminal_modes_apply_to_the_remote_terminal() {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    // The local terminal interrupts with ^B; ssh sends that mode along.
    let tmux = Tmux::start_after("stty intr ^B;", &alice, 100, 30);
    tmux.wait_for("@berth-host:~#");
    tmux.type_line("stty -a | grep -o 'intr = [^;]*' | tr a-z A-Z");
    tmux.wait_for("INTR = ^B");
}

#[test]
fn ctrl_z_stops_the_running_command_as_a_job() {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    let tmux = Tmux::start(&alice, 100, 30);
    tmux.wait_for("@berth-host:~#");
    tmux.type_line("sleep 100");
    wait_until(|| !alice.host_processes("sleep 100").is_empty());
    tmux.keys(&["C-z"]);
    tmux.wait_for("Stopped");
    tmux.type_line("jobs -l | tr a-z A-Z");
    tmux.wait_for("STOPPED");
}

#[test]
fn disconnecting_mid_command_leaves_no_process_behind() {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    alice.ssh_ok("true");
    let mut ssh = alice
        .ssh_command()
        .arg("sleep 4242; echo never")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ssh");
    wait_until(|| !alice.host_processes("sleep 4242").is_empty());
    ssh.kill().expect("kill ssh");
    let _ = ssh.wait();
    wait_until(|| alice.host_processes("4242").is_empty());
}

#[test]
fn disconnecting_a_terminal_session_hangs_up_its_processes() {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    let tmux = Tmux::start(&alice, 100, 30);
    tmux.wait_for("@berth-host:~#");
    tmux.type_line("sleep 4343 & sleep 4444");
    wait_until(|| alice.host_processes("sleep 4").len() >= 2);
    drop(tmux);
    wait_until(|| alice.host_processes("sleep 4").is_empty());
    assert!(alice.host_processes("bash -l").is_empty());
}

/// Polls `done` for up to 20 s.
fn wait_until(mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "condition not met in 20 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A tmux server of its own running `ssh -tt` to the user's host.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(user: &User, cols: u32, rows: u32) -> Tmux {
        Tmux::start_after("", user, cols, rows)
    }

    /// Starts ssh in a tmux pane after running `local` (shell) there.
    fn start_after(local: &str, user: &User, cols: u32, rows: u32) -> Tmux {
        let socket = format!("berth-test-{}-{}", std::process::id(), user.name);
        let mut ssh = vec!["ssh".to_string()];
        ssh.extend(user.ssh_args());
        ssh.extend([
            "-tt".into(),
            "-p".into(),
            user.addr.port().to_string(),
            format!("{}@{}", user.name, user.addr.ip()),
        ]);
        let tmux = Tmux { socket };
        tmux.run(&[
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            &cols.to_string(),
            "-y",
            &rows.to_string(),
            &format!("{local} exec {}", shell_words::join(&ssh)),
        ]);
        tmux.run(&["set-option", "-g", "status", "off"]);
        tmux
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .env_remove("TMUX")
            .output()
            .expect("run tmux (scripts/test-deps.sh installs it)");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "t"];
        args.extend_from_slice(keys);
        self.run(&args);
    }

    fn type_line(&self, line: &str) {
        self.run(&["send-keys", "-t", "t", "-l", line]);
        self.keys(&["Enter"]);
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "t"])
    }

    /// "ROWS COLS" of the pane, as `stty size` prints it.
    fn pane_size(&self) -> String {
        self.run(&[
            "display-message",
            "-p",
            "-t",
            "t",
            "#{pane_height} #{pane_width}",
        ])
        .trim()
        .to_string()
    }

    fn resize(&self, cols: u32, rows: u32) {
        self.run(&[
            "resize-window",
            "-t",
            "t",
            "-x",
            &cols.to_string(),
            "-y",
            &rows.to_string(),
        ]);
    }

    fn wait_for(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let screen = self.screen();
            if screen.contains(text) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{text:?} did not appear; screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .arg("kill-server")
            .status();
    }
}

/// SSH `signal` requests, as SSH libraries send them (OpenSSH's client has
/// no way to): a trapped signal runs the trap, an untrapped one ends the
/// command and comes back as an exit-signal.
#[test]
fn signal_requests_reach_the_command() {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    alice.ssh_ok("true");
    let client = alice.client_home();
    let out = run_python(
        &client,
        r#"
import sys, time, paramiko
from paramiko.common import MSG_CHANNEL_REQUEST, cMSG_CHANNEL_REQUEST
host, port, user, key, known = sys.argv[1:6]

# paramiko reads exit-status only; note every exit-signal as it arrives.
exit_signals = []
handle_request = paramiko.Channel._handle_request
def spy(self, m):
    pos = m.packet.tell()
    if m.get_text() == "exit-signal":
        m.get_boolean()
        exit_signals.append(m.get_text())
    m.packet.seek(pos)
    return handle_request(self, m)
paramiko.Transport._channel_handler_table[MSG_CHANNEL_REQUEST] = spy

ssh = paramiko.SSHClient()
ssh.load_host_keys(known)
ssh.set_missing_host_key_policy(paramiko.RejectPolicy())
ssh.connect(host, int(port), user, key_filename=key, allow_agent=False, look_for_keys=False)

def signal(ch, name):
    m = paramiko.Message()
    m.add_byte(cMSG_CHANNEL_REQUEST)
    m.add_int(ch.remote_chanid)
    m.add_string("signal")
    m.add_boolean(False)
    m.add_string(name)
    ch.transport._send_user_message(m)

def started(command):
    ch = ssh.get_transport().open_session(timeout=30)
    ch.settimeout(60)
    ch.exec_command(command)
    f = ch.makefile("rb")
    assert f.readline() == b"ready\n"
    return ch, f

ch, f = started("trap 'echo got USR1; exit 7' USR1; echo ready; while :; do sleep 0.1; done")
signal(ch, "USR1")
assert f.readline() == b"got USR1\n"
assert ch.recv_exit_status() == 7
print("trapped")

ch, f = started("echo ready; exec sleep 60")
begun = time.time()
signal(ch, "TERM")
status = ch.recv_exit_status()
assert time.time() - begun < 30, "the command outlived SIGTERM"
assert status == -1, "an exit status (%d) instead of an exit-signal" % status
assert exit_signals == ["TERM"], exit_signals
print("ended by TERM")
"#,
        &alice.paramiko_login(&client),
    );
    assert_eq!(
        stdout(&out),
        "trapped\nended by TERM",
        "stderr: {}",
        stderr(&out)
    );
}
