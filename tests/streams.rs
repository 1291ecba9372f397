//! Heavy streams through a session: a gigabyte in, out, and both at once,
//! byte for byte, without the gateway buffering it; and many sessions on
//! one connection (ControlMaster).

mod common;

use std::process::{Command, Stdio};

use common::*;

/// The gateway's resident memory may not grow past this while a gigabyte
/// streams through it: flow control, not buffering.
const RSS_BOUND_KIB: u64 = 128 * 1024;

const GIB: &str = "1073741824";

fn bash(script: &str) -> std::process::Output {
    Command::new("bash")
        .args(["-o", "pipefail", "-c", script])
        .stdin(Stdio::null())
        .output()
        .expect("run bash")
}

fn ssh_line(user: &User) -> String {
    let mut ssh = vec!["ssh".to_string()];
    ssh.extend(user.ssh_args());
    ssh.extend([
        "-p".into(),
        user.addr.port().to_string(),
        format!("{}@{}", user.name, user.addr.ip()),
    ]);
    shell_words::join(&ssh)
}

/// Peak resident set (VmHWM) of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[test]
fn a_gigabyte_streams_both_ways_at_once_with_bounded_gateway_memory() {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    alice.ssh_ok("true");
    let ssh = ssh_line(&alice);
    // The same bytes go in and come back out, while still being sent.
    let out = bash(&format!(
        "head -c {GIB} /dev/urandom | tee >(sha256sum >&2) | {ssh} cat | sha256sum"
    ));
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let sent = stderr(&out);
    let sent = sent.split_whitespace().next().expect("sent sum");
    let received = stdout(&out);
    assert_eq!(received.split_whitespace().next(), Some(sent));
    let peak = peak_rss_kib(gateway.pid().expect("gateway pid"));
    eprintln!("gateway peak RSS: {} MiB", peak / 1024);
    assert!(
        peak < RSS_BOUND_KIB,
        "gateway peak RSS {peak} KiB over {RSS_BOUND_KIB} KiB"
    );
}

#[test]
fn a_gigabyte_of_stdin_reaches_the_command_and_its_end_too() {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    let ssh = ssh_line(&alice);
    let out = bash(&format!("head -c {GIB} /dev/zero | {ssh} sha256sum"));
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let local = bash(&format!("head -c {GIB} /dev/zero | sha256sum"));
    assert_eq!(
        stdout(&out).split_whitespace().next(),
        stdout(&local).split_whitespace().next()
    );
}

#[test]
fn a_gigabyte_of_stdout_arrives_intact_with_stderr_kept_apart() {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    let ssh = ssh_line(&alice);
    // The host sums what it sends on stderr; we sum what arrives on stdout.
    let remote = shell_words::quote("head -c 1073741824 /dev/urandom | tee >(sha256sum >&2)");
    let out = bash(&format!("{ssh} bash -c {remote} | sha256sum"));
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let err = stderr(&out);
    let sent = err
        .lines()
        .find(|l| l.ends_with(" -"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no sum on stderr: {err}"));
    assert_eq!(stdout(&out).split_whitespace().next(), Some(sent));
}

#[test]
fn ten_parallel_commands_share_one_controlmaster_connection() {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    let dir = tempfile::tempdir().expect("tempdir");
    let control = dir.path().join("cm");
    let master = |cmd: &mut Command| {
        cmd.args(["-o", "ControlMaster=auto", "-o", "ControlPersist=60"])
            .arg("-o")
            .arg(format!("ControlPath={}", control.display()));
    };
    // The first command leaves the master connection behind (persist).
    let mut first = alice.ssh_command();
    master(&mut first);
    let out = first
        .arg("true")
        .stdin(Stdio::null())
        .output()
        .expect("ssh");
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let mut children = Vec::new();
    for i in 0..10 {
        let mut cmd = alice.ssh_command();
        master(&mut cmd);
        // Every command waits a moment so they all overlap; one of them
        // ends early, which must not disturb the others.
        let line = if i == 0 {
            "echo early".to_string()
        } else {
            format!("sleep 1; echo out-{i}; echo err-{i} >&2; exit {i}")
        };
        children.push(
            cmd.arg(line)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("ssh"),
        );
    }
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().expect("ssh output");
        if i == 0 {
            assert_eq!(stdout(&out), "early");
            continue;
        }
        assert_eq!(
            out.status.code(),
            Some(i as i32),
            "stderr: {}",
            stderr(&out)
        );
        assert_eq!(stdout(&out), format!("out-{i}"));
        assert!(stderr(&out).contains(&format!("err-{i}")));
    }
    // All went through the one master connection, which is still there.
    let mut check = alice.ssh_command();
    master(&mut check);
    let out = check.args(["-O", "check"]).output().expect("ssh -O check");
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert_eq!(gateway.log().matches("logged in with").count(), 1);
    let mut exit = alice.ssh_command();
    master(&mut exit);
    let _ = exit.args(["-O", "exit"]).output();
}

#[test]
fn output_flows_while_unread_input_waits_with_bounded_gateway_memory() {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    alice.ssh_ok("true");
    let ssh = ssh_line(&alice);
    // The command writes ~170 MB before it reads any of its 512 MiB of
    // input: the input must wait in the client, not in the gateway, and
    // must not hold the output up.
    let out = bash(&format!(
        "head -c 536870912 /dev/zero | {ssh} 'seq 1 20000000; wc -c' | tail -2"
    ));
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "20000000\n536870912");
    let peak = peak_rss_kib(gateway.pid().expect("gateway pid"));
    eprintln!("gateway peak RSS: {} MiB", peak / 1024);
    assert!(
        peak < RSS_BOUND_KIB,
        "gateway peak RSS {peak} KiB over {RSS_BOUND_KIB} KiB"
    );
}
