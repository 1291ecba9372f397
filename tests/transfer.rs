//! File transfer through the host's sftp-server and commands: scp (SFTP
//! and legacy protocol), sftp and rsync move a 200 MB random file both ways
//! byte for byte.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

const SIZE_MIB: usize = 200;

/// A random file of SIZE_MIB under `dir` and its sha256.
fn random_file(dir: &Path) -> (std::path::PathBuf, String) {
    let path = dir.join("payload.bin");
    let status = Command::new("head")
        .args(["-c", &format!("{}M", SIZE_MIB), "/dev/urandom"])
        .stdout(std::fs::File::create(&path).expect("create payload"))
        .status()
        .expect("head");
    assert!(status.success());
    let sum = sha256(&path);
    (path, sum)
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    assert!(out.status.success());
    stdout(&out)
        .split_whitespace()
        .next()
        .expect("sum")
        .to_string()
}

fn remote_sha256(user: &User, path: &str) -> String {
    user.ssh_ok(&format!("sha256sum {path}"))
        .split_whitespace()
        .next()
        .expect("sum")
        .to_string()
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.stdin(Stdio::null()).output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?} exited {:?}: {}",
        out.status.code(),
        stderr(&out)
    );
}

fn remote(user: &User, path: &str) -> String {
    format!("{}@{}:{path}", user.name, user.addr.ip())
}

fn scp_round_trip(extra: &[&str]) {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    let dir = tempfile::tempdir().expect("tempdir");
    let (local, sum) = random_file(dir.path());
    let scp = || {
        let mut cmd = Command::new("scp");
        cmd.args(alice.ssh_args())
            .args(["-q", "-P", &alice.addr.port().to_string()])
            .args(extra);
        cmd
    };
    // A relative path lands in the home directory, as with sshd.
    run_ok(scp().arg(&local).arg(remote(&alice, "up.bin")));
    assert_eq!(remote_sha256(&alice, "/root/up.bin"), sum);
    let back = dir.path().join("back.bin");
    run_ok(scp().arg(remote(&alice, "up.bin")).arg(&back));
    assert_eq!(sha256(&back), sum);
}

#[test]
fn scp_copies_a_large_file_both_ways_over_sftp() {
    scp_round_trip(&[]);
}

#[test]
fn legacy_scp_copies_a_large_file_both_ways() {
    scp_round_trip(&["-O"]);
}

#[test]
fn sftp_puts_and_gets_a_large_file() {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    let dir = tempfile::tempdir().expect("tempdir");
    let (local, sum) = random_file(dir.path());
    let back = dir.path().join("back.bin");
    let batch = dir.path().join("batch");
    std::fs::write(
        &batch,
        format!(
            "put {} /tmp/up.bin\nget /tmp/up.bin {}\n",
            local.display(),
            back.display()
        ),
    )
    .expect("batch");
    run_ok(
        Command::new("sftp")
            .args(alice.ssh_args())
            .args(["-q", "-P", &alice.addr.port().to_string(), "-b"])
            .arg(&batch)
            .arg(format!("{}@{}", alice.name, alice.addr.ip())),
    );
    assert_eq!(remote_sha256(&alice, "/tmp/up.bin"), sum);
    assert_eq!(sha256(&back), sum);
}

#[test]
fn rsync_over_ssh_copies_a_large_file_both_ways() {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    let dir = tempfile::tempdir().expect("tempdir");
    let (local, sum) = random_file(dir.path());
    let mut ssh = vec!["ssh".to_string()];
    ssh.extend(alice.ssh_args());
    ssh.extend(["-p".into(), alice.addr.port().to_string()]);
    let rsync = || {
        let mut cmd = Command::new("rsync");
        cmd.args(["-a", "-e", &shell_words::join(&ssh)]);
        cmd
    };
    run_ok(rsync().arg(&local).arg(remote(&alice, "/tmp/up.bin")));
    assert_eq!(remote_sha256(&alice, "/tmp/up.bin"), sum);
    let back = dir.path().join("back.bin");
    run_ok(rsync().arg(remote(&alice, "/tmp/up.bin")).arg(&back));
    assert_eq!(sha256(&back), sum);
}
