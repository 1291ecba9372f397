//! A user's commands and shells run in their own Docker host.

mod common;

use common::*;

#[test]
fn docker_info_over_ssh_reports_the_users_own_engine() {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    let inner = alice.ssh_ok("docker info --format '{{.ID}}'");
    let outer = docker_ok(&["info", "--format", "{{.ID}}"]);
    assert!(!inner.is_empty(), "inner engine reported no ID");
    assert_ne!(inner, outer, "ssh reached the gateway's own engine");
    let labels = docker_ok(&[
        "container",
        "inspect",
        "-f",
        "{{index .Config.Labels \"io.berth.user\"}} {{index .Config.Labels \"io.berth.managed\"}}",
        &format!("berth-{}", alice.name),
    ]);
    assert_eq!(labels, format!("{} true", alice.name));
}

#[test]
fn exit_status_stdout_and_stderr_come_back_separately() {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    let out = alice.ssh("echo to-out; echo to-err >&2; exit 7");
    assert_eq!(out.status.code(), Some(7), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "to-out");
    assert!(stderr(&out).contains("to-err"), "stderr: {}", stderr(&out));
    assert!(!stdout(&out).contains("to-err"));

    // stdin reaches the command, and so does its end.
    let out = alice.ssh_with_stdin("wc -c", b"abc");
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "3");
}

#[test]
fn a_pty_session_has_a_terminal() {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    let out = alice
        .ssh_command()
        .args(["-tt", "echo $TERM; tty"])
        .env("TERM", "xterm-256color")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("ssh -tt");
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("xterm-256color"), "output: {text:?}");
    assert!(text.contains("/dev/pts/"), "output: {text:?}");
}

#[test]
fn a_second_login_reuses_the_same_host_and_its_images() {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    // A one-file image made from busybox inside the host: no registry needed.
    alice.ssh_ok(
        "set -e; d=$(mktemp -d); mkdir $d/bin; cp /bin/busybox $d/bin/; \
         tar -C $d -c . | docker import - probe:1 >/dev/null",
    );
    let container = format!("berth-{}", alice.name);
    let first_id = docker_ok(&["container", "inspect", "-f", "{{.Id}}", &container]);

    let images = alice.ssh_ok("docker images -q probe:1");
    assert!(!images.is_empty(), "image loaded at first login is gone");
    let second_id = docker_ok(&["container", "inspect", "-f", "{{.Id}}", &container]);
    assert_eq!(first_id, second_id, "a second container was created");
    let count = docker_ok(&[
        "ps",
        "-a",
        "-q",
        "--filter",
        &format!("label=io.berth.user={}", alice.name),
    ]);
    assert_eq!(count.lines().count(), 1);
}

#[test]
fn the_first_login_says_on_stderr_that_the_host_was_created() {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    let out = alice.ssh("echo hi");
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "hi", "progress leaked onto stdout");
    assert!(
        stderr(&out).contains("created your Docker host"),
        "stderr: {}",
        stderr(&out)
    );
    let again = alice.ssh("echo hi");
    assert_eq!(stderr(&again), "", "a warm login printed progress");
}

#[test]
fn each_modern_cipher_openssh_offers_is_accepted() {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    for cipher in [
        "chacha20-poly1305@openssh.com",
        "aes256-gcm@openssh.com",
        "aes128-gcm@openssh.com",
        "aes128-ctr",
    ] {
        let out = alice
            .ssh_command()
            .args(["-c", cipher, "echo ok"])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("ssh");
        assert_eq!(stdout(&out), "ok", "{cipher}: {}", stderr(&out));
    }
}

/// Hosts from an image without berth-agent (a custom image built on the
/// host image) still run sessions, through the engine's exec API.
#[test]
fn an_image_without_the_agent_still_runs_sessions_through_exec() {
    let image = derived_image(
        "berth-test-no-agent:latest",
        "RUN rm /usr/local/libexec/berth-agent",
    );
    let mut gateway = Gateway::start_with_image(&image);
    let alice = gateway.new_user();
    let out = alice.ssh("echo to-out; echo to-err >&2; exit 7");
    assert_eq!(out.status.code(), Some(7), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "to-out");
    assert!(stderr(&out).contains("to-err"), "stderr: {}", stderr(&out));
    let out = alice.ssh_with_stdin("wc -c", b"abcd");
    assert_eq!(stdout(&out), "4", "stderr: {}", stderr(&out));
    // berth-session is still in the image: a signal death is reported.
    let out = alice
        .ssh_command()
        .args(["-v", "kill -9 $$"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("ssh");
    assert_eq!(out.status.code(), Some(255), "stderr: {}", stderr(&out));
    assert!(stderr(&out).contains("rtype exit-signal"));
    let out = alice
        .ssh_command()
        .args(["-tt", "tty"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("ssh -tt");
    assert!(stdout(&out).contains("/dev/pts/"), "{}", stdout(&out));
    assert!(gateway.log().contains("no host agent"), "{}", gateway.log());
}
