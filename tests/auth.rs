//! Who gets in: public keys on file, nothing else.

mod common;

use std::process::Command;

use common::*;

fn refused(out: &std::process::Output) -> bool {
    out.status.code() == Some(255) && stderr(out).contains("Permission denied")
}

#[test]
fn a_key_not_on_file_is_refused() {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    let stranger = Key::generate(gateway.state.path(), "stranger");
    let out = alice
        .ssh_command_as(&alice.name, &stranger)
        .arg("true")
        .output()
        .expect("ssh");
    assert!(refused(&out), "stranger's key got in: {}", stderr(&out));
}

#[test]
fn an_unknown_user_is_refused() {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    let out = alice
        .ssh_command_as("nobody-here", &alice.key)
        .arg("true")
        .output()
        .expect("ssh");
    assert!(refused(&out), "unknown user got in: {}", stderr(&out));
}

#[test]
fn another_users_key_is_refused() {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    let bob = gateway.new_user();
    let out = alice
        .ssh_command_as(&bob.name, &alice.key)
        .arg("true")
        .output()
        .expect("ssh");
    assert!(
        refused(&out),
        "alice's key logged in as bob: {}",
        stderr(&out)
    );
    assert!(
        docker(&["container", "inspect", &format!("berth-{}", bob.name)])
            .status
            .code()
            != Some(0),
        "a refused login created bob's host"
    );
}

#[test]
fn an_invalid_user_name_is_refused_without_touching_disk_or_engine() {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    for login in ["../etc", "Alice", "a%20b"] {
        let out = alice
            .ssh_command_as(login, &alice.key)
            .arg("true")
            .output()
            .expect("ssh");
        assert!(refused(&out), "{login} got in: {}", stderr(&out));
    }
    assert!(
        !gateway.state.path().join("run").exists() || {
            std::fs::read_dir(gateway.state.path().join("run"))
                .map(|d| d.count() == 0)
                .unwrap_or(true)
        }
    );
}

fn host_key_of(gateway: &Gateway) -> String {
    let out = Command::new("ssh-keyscan")
        .args([
            "-t",
            "ed25519",
            "-p",
            &gateway.addr.port().to_string(),
            "127.0.0.1",
        ])
        .output()
        .expect("ssh-keyscan");
    let text = stdout(&out);
    text.lines()
        .find(|l| l.contains("ssh-ed25519"))
        .unwrap_or_else(|| panic!("no host key scanned: {text} {}", stderr(&out)))
        .split_whitespace()
        .last()
        .expect("key")
        .to_string()
}

#[test]
fn the_host_key_is_the_same_after_a_restart() {
    let mut gateway = Gateway::start();
    let before = host_key_of(&gateway);
    gateway.restart();
    let after = host_key_of(&gateway);
    assert_eq!(before, after);
    let file = gateway.state.path().join("ssh_host_ed25519_key");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&file)
            .expect("host key file")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "host key mode {mode:o}");
}

#[test]
fn key_add_with_a_malformed_file_names_the_line_and_keeps_existing_keys() {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    let before = gateway.cli(&["key", "list", &alice.name]);
    assert!(before.status.success());

    let good = std::fs::read_to_string(&Key::generate(gateway.state.path(), "other").public)
        .expect("read key");
    let bad = format!("{good}ssh-ed25519 AAAA!!notbase64!! broken@test\n");
    let out = gateway.cli_with_stdin(&["key", "add", &alice.name, "-"], bad.as_bytes());
    assert!(!out.status.success(), "malformed key was accepted");
    assert!(stderr(&out).contains("line 2"), "stderr: {}", stderr(&out));

    let after = gateway.cli(&["key", "list", &alice.name]);
    assert_eq!(
        stdout(&before),
        stdout(&after),
        "keys changed after a refused add"
    );
    // The good key on line 1 was not added either: all or nothing.
    assert_eq!(stdout(&after).lines().count(), 1);
    // And the original key still logs in.
    assert_eq!(alice.ssh_ok("echo ok"), "ok");
}
