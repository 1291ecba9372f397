//! Users and keys: the CLI, authorized_keys options and user certificates,
//! seen through real `ssh` logins.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn public_key_text(key: &Key) -> String {
    std::fs::read_to_string(&key.public).expect("read public key")
}

fn add_key_line(gateway: &Gateway, user: &str, line: &str) {
    let out = gateway.cli_with_stdin(&["key", "add", user, "-"], line.as_bytes());
    assert!(
        out.status.success(),
        "key add failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_key_added_by_the_cli_logs_in_without_a_restart() {
    let mut gateway = Gateway::start();
    let alice = gateway.user_without_keys();
    assert!(
        auth_refused(&alice.ssh("true")),
        "logged in before any key was added"
    );
    let out = gateway.cli_ok(&[
        "key",
        "add",
        &alice.name,
        alice.key.public.to_str().unwrap(),
    ]);
    assert!(
        out.contains("SHA256:"),
        "key add printed no fingerprint: {out}"
    );
    assert_eq!(alice.ssh_ok("echo in"), "in");
}

#[test]
fn a_removed_key_stops_working_for_new_connections() {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    assert_eq!(alice.ssh_ok("echo in"), "in");
    let listed = gateway.cli_ok(&["key", "list", &alice.name]);
    let fingerprint = listed
        .split_whitespace()
        .find(|w| w.starts_with("SHA256:"))
        .expect("fingerprint in key list")
        .to_string();
    gateway.cli_ok(&["key", "rm", &alice.name, &fingerprint]);
    assert!(
        auth_refused(&alice.ssh("true")),
        "removed key still logs in"
    );
}

#[test]
fn a_key_can_be_removed_by_its_comment() {
    let mut gateway = Gateway::start();
    let alice = gateway.user_without_keys();
    let line = format!(
        "{} laptop-key\n",
        public_key_text(&alice.key)
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    );
    add_key_line(&gateway, &alice.name, &line);
    gateway.cli_ok(&["key", "rm", &alice.name, "laptop-key"]);
    assert_eq!(gateway.cli_ok(&["key", "list", &alice.name]).trim(), "");
}

#[test]
fn a_user_with_two_keys_can_use_either() {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    let second = Key::generate_typed(gateway.state.path(), "second", "ecdsa");
    gateway.cli_ok(&["key", "add", &alice.name, second.public.to_str().unwrap()]);
    assert_eq!(alice.ssh_ok("echo first"), "first");
    let out = alice
        .ssh_command_as(&alice.name, &second)
        .arg("echo second")
        .output()
        .expect("ssh");
    assert_eq!(stdout(&out), "second", "stderr: {}", stderr(&out));
}

#[test]
fn an_rsa_key_logs_in_with_sha2_and_not_with_sha1() {
    let mut gateway = Gateway::start();
    let alice = gateway.user_without_keys();
    let rsa = Key::generate_typed(gateway.state.path(), &alice.name, "rsa");
    gateway.cli_ok(&["key", "add", &alice.name, rsa.public.to_str().unwrap()]);
    let out = alice
        .ssh_command_as(&alice.name, &rsa)
        .arg("echo rsa")
        .output()
        .expect("ssh");
    assert_eq!(stdout(&out), "rsa", "stderr: {}", stderr(&out));
    let out = alice
        .ssh_command_as(&alice.name, &rsa)
        .args(["-o", "PubkeyAcceptedAlgorithms=ssh-rsa", "true"])
        .output()
        .expect("ssh");
    assert!(auth_refused(&out), "SHA-1 ssh-rsa signature was accepted");
}

#[test]
fn from_is_enforced_against_the_client_address() {
    let mut gateway = Gateway::start();
    let alice = gateway.user_without_keys();
    let key = public_key_text(&alice.key);
    add_key_line(&gateway, &alice.name, &format!("from=\"10.0.0.0/8\" {key}"));
    assert!(
        auth_refused(&alice.ssh("true")),
        "from=10.0.0.0/8 let 127.0.0.1 in"
    );

    gateway.cli_ok(&["key", "rm", &alice.name, &format!("{}@test", alice.name)]);
    add_key_line(&gateway, &alice.name, &format!("from=\"127.0.0.1\" {key}"));
    assert_eq!(alice.ssh_ok("echo in"), "in");
}

#[test]
fn expiry_time_is_enforced() {
    let mut gateway = Gateway::start();
    let alice = gateway.user_without_keys();
    let key = public_key_text(&alice.key);
    add_key_line(
        &gateway,
        &alice.name,
        &format!("expiry-time=\"20200101\" {key}"),
    );
    assert!(auth_refused(&alice.ssh("true")), "an expired key logged in");

    gateway.cli_ok(&["key", "rm", &alice.name, &format!("{}@test", alice.name)]);
    add_key_line(
        &gateway,
        &alice.name,
        &format!("expiry-time=\"29991231\" {key}"),
    );
    assert_eq!(alice.ssh_ok("echo in"), "in");
}

#[test]
fn no_pty_refuses_a_terminal_but_not_the_command() {
    let mut gateway = Gateway::start();
    let alice = gateway.user_without_keys();
    let key = public_key_text(&alice.key);
    add_key_line(&gateway, &alice.name, &format!("no-pty {key}"));
    // OpenSSH treats a refused terminal as fatal when one was forced (-tt),
    // against berth as against sshd.
    let out = alice
        .ssh_command()
        .args(["-tt", "tty"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("ssh");
    assert!(
        stderr(&out).contains("PTY allocation request failed"),
        "a terminal was granted: {:?} {}",
        stdout(&out),
        stderr(&out)
    );
    assert!(!stdout(&out).contains("/dev/pts"));
    assert_eq!(alice.ssh_ok("echo in"), "in");
}

#[test]
fn a_broken_line_in_a_hand_edited_file_does_not_lock_out_the_good_keys() {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    let file = gateway
        .state
        .path()
        .join("users")
        .join(&alice.name)
        .join("authorized_keys");
    let good = std::fs::read_to_string(&file).expect("authorized_keys");
    std::fs::write(
        &file,
        format!("ssh-ed25519 AAAA!!broken junk\n\x01\x02\n{good}"),
    )
    .expect("hand edit");
    assert_eq!(alice.ssh_ok("echo in"), "in");
    assert!(
        gateway.log().contains("skipping authorized_keys line") && gateway.log().contains("line=1"),
        "no warning about the broken line:\n{}",
        gateway.log()
    );
}

#[test]
fn key_add_refuses_each_kind_of_malformed_line_and_changes_nothing() {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    let before = gateway.cli_ok(&["key", "list", &alice.name]);
    let good = public_key_text(&Key::generate(gateway.state.path(), "spare"));
    let good = good.trim();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "bad base64",
            format!("{good}\nssh-ed25519 AAAA$$$$ x\n").into_bytes(),
        ),
        (
            "truncated key",
            format!("{good}\n{}\n", &good[..40]).into_bytes(),
        ),
        (
            "unknown type",
            format!("{good}\nssh-foo AAAAB3NzaC1yc2E x\n").into_bytes(),
        ),
        (
            "1 MB line",
            format!("{good}\nssh-ed25519 {}\n", "A".repeat(1 << 20)).into_bytes(),
        ),
        ("binary junk", {
            let mut v = format!("{good}\n").into_bytes();
            v.extend_from_slice(&[0xff, 0xfe, 0x00, 0x01, b'\n']);
            v
        }),
    ];
    for (what, input) in cases {
        let out = gateway.cli_with_stdin(&["key", "add", &alice.name, "-"], &input);
        assert!(!out.status.success(), "{what} was accepted");
        assert!(
            stderr(&out).contains("line 2"),
            "{what}: error does not name line 2: {}",
            stderr(&out)
        );
    }
    assert_eq!(before, gateway.cli_ok(&["key", "list", &alice.name]));
}

#[test]
fn a_crlf_key_file_is_accepted_and_its_keys_log_in() {
    let mut gateway = Gateway::start();
    let alice = gateway.user_without_keys();
    let crlf = format!("{}\r\n", public_key_text(&alice.key).trim());
    add_key_line(&gateway, &alice.name, &crlf);
    assert_eq!(alice.ssh_ok("echo in"), "in");
}

#[test]
fn invalid_user_names_are_refused_by_the_cli() {
    let gateway = Gateway::start();
    for name in ["../x", "Alice", "a b", &"a".repeat(200), "", "ålice"] {
        let out = gateway.cli(&["user", "add", name]);
        assert!(!out.status.success(), "user add {name:?} succeeded");
        assert!(
            stderr(&out).contains("invalid user name"),
            "{}",
            stderr(&out)
        );
    }
    assert!(!gateway.state.path().join("x").exists());
}

#[test]
fn user_rm_keeps_the_users_host_and_volume() {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    alice.ssh_ok("true");
    gateway.cli_ok(&["user", "rm", &alice.name]);
    assert!(!gateway.cli_ok(&["user", "list"]).contains(&alice.name));
    assert!(auth_refused(&alice.ssh("true")));
    docker_ok(&["container", "inspect", &format!("berth-{}", alice.name)]);
    docker_ok(&["volume", "inspect", &format!("berth-{}-docker", alice.name)]);
}

/// A user CA made by ssh-keygen, and certificates it signs.
struct Ca {
    dir: tempfile::TempDir,
    key: PathBuf,
}

impl Ca {
    fn new() -> Ca {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("ca");
        let status = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "test-ca", "-f"])
            .arg(&key)
            .status()
            .expect("ssh-keygen");
        assert!(status.success());
        Ca { dir, key }
    }

    fn public(&self) -> PathBuf {
        self.dir.path().join("ca.pub")
    }

    /// Signs `key` for `principals` with validity `validity` and `serial`,
    /// leaving the certificate where ssh finds it (`<key>-cert.pub`).
    fn sign(&self, key: &Key, principals: &str, validity: &str, serial: u64) {
        let status = Command::new("ssh-keygen")
            .args(["-q", "-s"])
            .arg(&self.key)
            .args(["-I", "test-id", "-n", principals, "-V", validity, "-z"])
            .arg(serial.to_string())
            .arg(&key.public)
            .status()
            .expect("ssh-keygen -s");
        assert!(status.success());
    }
}

fn cert_gateway(ca: &Ca, revoked: &Path) -> Gateway {
    Gateway::start_with(&[
        "--trusted-user-ca",
        ca.public().to_str().unwrap(),
        "--revoked-keys",
        revoked.to_str().unwrap(),
    ])
}

fn cert_user(gateway: &mut Gateway) -> User {
    gateway.user_without_keys()
}

#[test]
fn a_valid_certificate_logs_in_without_a_key_file() {
    let ca = Ca::new();
    let revoked = ca.dir.path().join("revoked");
    std::fs::write(&revoked, "").unwrap();
    let mut gateway = cert_gateway(&ca, &revoked);
    let alice = cert_user(&mut gateway);
    ca.sign(&alice.key, &alice.name, "+1h", 1);
    assert_eq!(alice.ssh_ok("echo cert"), "cert");
}

#[test]
fn expired_and_not_yet_valid_certificates_are_refused() {
    let ca = Ca::new();
    let revoked = ca.dir.path().join("revoked");
    std::fs::write(&revoked, "").unwrap();
    let mut gateway = cert_gateway(&ca, &revoked);
    let alice = cert_user(&mut gateway);
    ca.sign(&alice.key, &alice.name, "-2h:-1h", 2);
    assert!(
        auth_refused(&alice.ssh("true")),
        "expired certificate logged in"
    );
    ca.sign(&alice.key, &alice.name, "+1h:+2h", 3);
    assert!(
        auth_refused(&alice.ssh("true")),
        "future certificate logged in"
    );
}

#[test]
fn a_certificate_for_another_principal_is_refused() {
    let ca = Ca::new();
    let revoked = ca.dir.path().join("revoked");
    std::fs::write(&revoked, "").unwrap();
    let mut gateway = cert_gateway(&ca, &revoked);
    let alice = cert_user(&mut gateway);
    ca.sign(&alice.key, "somebody-else", "+1h", 4);
    assert!(
        auth_refused(&alice.ssh("true")),
        "wrong principal logged in"
    );
}

#[test]
fn a_certificate_from_an_untrusted_ca_is_refused() {
    let ca = Ca::new();
    let other = Ca::new();
    let revoked = ca.dir.path().join("revoked");
    std::fs::write(&revoked, "").unwrap();
    let mut gateway = cert_gateway(&ca, &revoked);
    let alice = cert_user(&mut gateway);
    other.sign(&alice.key, &alice.name, "+1h", 5);
    assert!(
        auth_refused(&alice.ssh("true")),
        "untrusted CA's certificate logged in"
    );
}

#[test]
fn revoked_certificates_are_refused_by_serial_and_by_key() {
    let ca = Ca::new();
    let revoked = ca.dir.path().join("revoked");
    std::fs::write(&revoked, "").unwrap();
    let mut gateway = cert_gateway(&ca, &revoked);
    let alice = cert_user(&mut gateway);
    ca.sign(&alice.key, &alice.name, "+1h", 42);
    assert_eq!(alice.ssh_ok("echo before"), "before");

    // The list is re-read when it changes: no restart.
    std::fs::write(&revoked, "serial: 42\n").unwrap();
    assert!(auth_refused(&alice.ssh("true")), "revoked serial logged in");

    ca.sign(&alice.key, &alice.name, "+1h", 43);
    assert_eq!(alice.ssh_ok("echo other-serial"), "other-serial");
    std::fs::write(&revoked, public_key_text(&alice.key)).unwrap();
    assert!(auth_refused(&alice.ssh("true")), "revoked key logged in");
}
