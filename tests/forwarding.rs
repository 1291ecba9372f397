//! `ssh -L` into the user's own host; every forward elsewhere refused.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn ssh_l_to_localhost_reaches_a_port_published_inside_the_host() {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    alice.import_busybox("bb:1");
    alice.ssh_ok(
        "docker run -d -p 8080:8080 bb:1 sh -c \
         'echo served-from-alice > /www/file.txt; exec httpd -f -p 8080 -h /www' >/dev/null",
    );
    let forward = Forward::start(&alice, "localhost:8080");
    let body = http_get(forward.port, "/file.txt");
    assert!(body.ends_with("served-from-alice\n"), "response: {body:?}");
}

#[test]
fn a_forward_to_another_users_host_is_refused() {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    let bob = gateway.new_user();
    bob.import_busybox("bb:1");
    bob.ssh_ok("docker run -d -p 8080:8080 bb:1 httpd -f -p 8080 -h /www >/dev/null");
    alice.ssh_ok("true");
    let bob_ip = docker_ok(&[
        "container",
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        &format!("berth-{}", bob.name),
    ]);
    // Bob's port answers (through his own forward)...
    let bobs = Forward::start(&bob, "localhost:8080");
    assert!(http_get(bobs.port, "/").starts_with("HTTP/1."));
    // ...but not to Alice, by address or by name.
    for target in [format!("{bob_ip}:8080"), format!("berth-{}:8080", bob.name)] {
        let forward = Forward::start(&alice, &target);
        let got = read_all(forward.port);
        assert!(got.is_empty(), "{target} answered: {got:?}");
        let said = forward.stop();
        assert!(
            said.contains("administratively prohibited") && said.contains("outside your host"),
            "ssh said: {said}"
        );
    }
    assert!(gateway.log().contains("refused port forward"));
}

#[test]
fn localhost_is_the_host_not_the_gateway() {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    // Something listens on the gateway machine's loopback...
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    // ...yet localhost:PORT through the gateway is the host's, where
    // nothing listens.
    let forward = Forward::start(&alice, &format!("localhost:{port}"));
    let got = read_all(forward.port);
    assert!(got.is_empty(), "got {got:?}");
    assert!(
        listener.accept().is_err(),
        "the forward reached the gateway's own loopback"
    );
    let said = forward.stop();
    assert!(said.contains("open failed"), "ssh said: {said}");
}

#[test]
fn remote_forwarding_is_refused() {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    let out = alice
        .ssh_command()
        .args([
            "-o",
            "ExitOnForwardFailure=yes",
            "-N",
            "-R",
            "0:localhost:22",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(255), "stderr: {}", stderr(&out));
    assert!(
        stderr(&out).contains("remote port forwarding failed"),
        "stderr: {}",
        stderr(&out)
    );
    assert!(gateway.log().contains("refused remote forwarding"));
}

#[test]
fn a_key_with_no_port_forwarding_cannot_forward() {
    let mut gateway = Gateway::start();
    let alice = gateway.user_without_keys();
    let public = std::fs::read_to_string(&alice.key.public).unwrap();
    let line = format!("no-port-forwarding {public}");
    let out = gateway.cli_with_stdin(&["key", "add", &alice.name, "-"], line.as_bytes());
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(alice.ssh_ok("echo still-a-shell"), "still-a-shell");
    let forward = Forward::start(&alice, "localhost:8080");
    assert!(read_all(forward.port).is_empty());
    let said = forward.stop();
    assert!(said.contains("no-port-forwarding"), "ssh said: {said}");
}

/// `ssh -N -L FREEPORT:TARGET` for a user, up once FREEPORT accepts.
struct Forward {
    port: u16,
    child: Option<Child>,
    log: tempfile::NamedTempFile,
}

impl Forward {
    fn start(user: &User, target: &str) -> Forward {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut child = Command::new("ssh")
            // First value wins: INFO so ssh reports refused channel opens.
            .args(["-o", "LogLevel=INFO"])
            .args(ssh_options(&user.known_hosts))
            .arg("-i")
            .arg(&user.key.private)
            .arg("-p")
            .arg(user.addr.port().to_string())
            .arg("-N")
            .arg("-L")
            .arg(format!("127.0.0.1:{port}:{target}"))
            .arg(format!("{}@127.0.0.1", user.name))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "ssh -L exited with {status}: {}",
                    std::fs::read_to_string(log.path()).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "ssh -L never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        Forward {
            port,
            child: Some(child),
            log,
        }
    }

    /// Ends the forward and returns what ssh said.
    fn stop(mut self) -> String {
        self.kill();
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `GET path` on a local port; the whole response as text.
fn http_get(port: u16, path: &str) -> String {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        conn,
        "GET {path} HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    response
}

/// Connects to a local port, sends a line, and returns whatever comes back
/// before the connection closes.
fn read_all(port: u16) -> Vec<u8> {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let _ = conn.write_all(b"GET / HTTP/1.0\r\n\r\n");
    let mut got = Vec::new();
    let _ = conn.read_to_end(&mut got);
    got
}
