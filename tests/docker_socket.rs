//! A laptop's docker tools drive the user's host through the gateway:
//! `DOCKER_HOST=ssh://` (the docker CLI's `docker system dial-stdio`),
//! docker-py over paramiko, and `ssh -L` to the Docker socket. Only the
//! user's own inner socket is ever reached.

mod common;

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn docker_version_over_ssh_reaches_the_users_own_engine() {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    let client = alice.client_home();
    let version = client.docker_ok(&["version", "--format", "{{.Server.Version}}"]);
    assert!(!version.is_empty(), "no server version");
    let id = client.docker_ok(&["info", "--format", "{{.ID}}"]);
    assert_eq!(id, alice.ssh_ok("docker info --format '{{.ID}}'"));
    assert_ne!(id, docker_ok(&["info", "--format", "{{.ID}}"]));
}

#[test]
fn docker_run_over_ssh_prints_what_the_container_prints() {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    alice.import_busybox("bb:1");
    let client = alice.client_home();
    assert_eq!(
        client.docker_ok(&["run", "--rm", "bb:1", "echo", "hi"]),
        "hi"
    );
}

#[test]
fn docker_build_sends_its_context_over_the_channel() {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    alice.import_busybox("bb:1");
    let client = alice.client_home();
    let context = tempfile::tempdir().unwrap();
    std::fs::write(
        context.path().join("Dockerfile"),
        "FROM bb:1\nCOPY payload.txt /payload.txt\nRUN wc -c < /payload.txt > /size\n",
    )
    .unwrap();
    let payload = "built on the laptop\n".repeat(50_000);
    std::fs::write(context.path().join("payload.txt"), &payload).unwrap();
    let out = client
        .command("docker")
        .args(["build", "-q", "-t", "built:1"])
        .arg(context.path())
        // The classic builder: the context travels as one tar over the API.
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .unwrap();
    assert!(out.status.success(), "build failed: {}", stderr(&out));
    let size = client.docker_ok(&["run", "--rm", "built:1", "cat", "/size"]);
    assert_eq!(size, payload.len().to_string());
}

#[test]
fn a_100_mb_image_survives_save_and_load_with_the_same_id() {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    alice.import_busybox("bb:1");
    alice.ssh_ok(
        "set -e; d=$(mktemp -d); printf 'FROM bb:1\\nRUN head -c 100000000 /dev/urandom > /blob\\n' \
         > $d/Dockerfile; DOCKER_BUILDKIT=0 docker build -q -t big:1 $d >/dev/null; rm -rf $d",
    );
    let client = alice.client_home();
    let id = client.docker_ok(&["image", "inspect", "-f", "{{.Id}}", "big:1"]);
    let tar = client.dir.path().join("big.tar");
    let out = client
        .command("docker")
        .args(["save", "-o"])
        .arg(&tar)
        .arg("big:1")
        .output()
        .unwrap();
    assert!(out.status.success(), "save failed: {}", stderr(&out));
    let size = std::fs::metadata(&tar).unwrap().len();
    assert!(size > 100_000_000, "saved only {size} bytes");

    client.docker_ok(&["rmi", "big:1"]);
    let out = client
        .command("docker")
        .args(["load", "-q", "-i"])
        .arg(&tar)
        .output()
        .unwrap();
    assert!(out.status.success(), "load failed: {}", stderr(&out));
    assert_eq!(
        client.docker_ok(&["image", "inspect", "-f", "{{.Id}}", "big:1"]),
        id
    );
}

#[test]
fn docker_py_lists_runs_and_makes_20_calls_at_once() {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    alice.import_busybox("bb:1");
    let client = alice.client_home();
    let out = run_python(
        &client,
        r#"
import sys, threading, docker
c = docker.DockerClient(base_url=sys.argv[1], use_ssh_client=False, max_pool_size=25)
assert c.containers.list(all=True) == [], "a fresh host has containers"
out = c.containers.run("bb:1", ["echo", "from docker-py"], remove=True)
assert out == b"from docker-py\n", out
c.containers.run("bb:1", ["sleep", "600"], detach=True, name="keep")
results, errors = [], []
def call():
    try:
        results.append([x.name for x in c.containers.list()])
    except Exception as e:
        errors.append(repr(e))
threads = [threading.Thread(target=call) for _ in range(20)]
for t in threads: t.start()
for t in threads: t.join(120)
assert not errors, errors
assert results == [["keep"]] * 20, results
print("ok")
"#,
        &[&client.docker_host],
    );
    assert_eq!(stdout(&out), "ok", "stderr: {}", stderr(&out));
}

#[test]
fn fifty_dial_stdio_channels_share_one_connection_and_a_stuck_one_stalls_none() {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    alice.import_busybox("bb:1");
    // A container that never reads its stdin: bytes sent to an attach of
    // it back up into the gateway, on that one channel.
    let stuck = alice.ssh_ok("docker run -d -i bb:1 sleep 600");
    let client = alice.client_home();
    let login = alice.paramiko_login(&client);
    let out = run_python(
        &client,
        r#"
import sys, threading, time, paramiko
host, port, user, key, known, container = sys.argv[1:7]
ssh = paramiko.SSHClient()
ssh.load_host_keys(known)
ssh.set_missing_host_key_policy(paramiko.RejectPolicy())
ssh.connect(host, int(port), user, key_filename=key, allow_agent=False, look_for_keys=False)
t = ssh.get_transport()

def dial():
    ch = t.open_session(timeout=30)
    ch.settimeout(30)
    ch.exec_command("docker system dial-stdio")
    return ch

def read_response(ch):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = ch.recv(65536)
        if not chunk:
            break
        data += chunk
    return data

# The stuck channel: hijack the attach stream, then push 12 MiB the
# container will never read (more than russh queues for one channel).
stuck = dial()
stuck.sendall(("POST /containers/%s/attach?stream=1&stdin=1 HTTP/1.1\r\nHost: d\r\n"
               "Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n" % container).encode())
head = read_response(stuck)
assert b" 101 " in head.split(b"\r\n")[0] or b" 200 " in head.split(b"\r\n")[0], head
pushed = [0]
def push():
    block = b"x" * 32768
    while pushed[0] < 12 * 1024 * 1024:
        stuck.sendall(block)
        pushed[0] += len(block)
threading.Thread(target=push, daemon=True).start()
deadline = time.time() + 60
while pushed[0] < 12 * 1024 * 1024:
    assert time.time() < deadline, "the connection stalled after %d bytes" % pushed[0]
    time.sleep(0.05)
time.sleep(1)

# Fifty more channels, all open at once, each asking for /_ping.
channels = [dial() for _ in range(50)]
for ch in channels:
    ch.sendall(b"GET /_ping HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n")
ok = 0
for ch in channels:
    data = b""
    while True:
        chunk = ch.recv(65536)
        if not chunk:
            break
        data += chunk
    if data.startswith(b"HTTP/1.1 200") and data.endswith(b"OK"):
        ok += 1
    ch.recv_exit_status()
print(ok)
"#,
        &[login.as_slice(), &[stuck]].concat(),
    );
    assert_eq!(stdout(&out), "50", "stderr: {}", stderr(&out));
}

#[test]
fn dial_stdio_for_another_socket_is_refused() {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    for command in [
        "docker --host=unix:///run/containerd/containerd.sock system dial-stdio",
        "docker -H tcp://127.0.0.1:2375 system dial-stdio",
    ] {
        let out = alice.ssh(command);
        assert_eq!(out.status.code(), Some(1), "{command}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("refused"),
            "{command}: {}",
            stderr(&out)
        );
        assert_eq!(stdout(&out), "", "{command}");
    }
}

#[test]
fn ssh_l_to_the_docker_socket_serves_docker_info() {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    let expected = alice.ssh_ok("docker info --format '{{.ID}}'");
    for remote in ["/var/run/docker.sock", "/run/berth/docker.sock"] {
        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().join("d.sock");
        let _forward = Forward::start(&alice, &local, remote);
        let out = Command::new("docker")
            .arg("-H")
            .arg(format!("unix://{}", local.display()))
            .args(["info", "--format", "{{.ID}}"])
            .env_remove("DOCKER_HOST")
            .output()
            .unwrap();
        assert!(out.status.success(), "{remote}: {}", stderr(&out));
        assert_eq!(stdout(&out), expected, "{remote}");
    }
}

#[test]
fn ssh_l_to_a_socket_outside_the_allow_list_is_refused() {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    alice.ssh_ok("true");
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("c.sock");
    let forward = Forward::start(&alice, &local, "/run/containerd/containerd.sock");
    let mut conn = UnixStream::connect(&local).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = Vec::new();
    let _ = conn.read_to_end(&mut buf);
    assert!(
        buf.is_empty(),
        "got {} bytes from a refused socket",
        buf.len()
    );
    let log = forward.stop();
    assert!(
        log.contains("administratively prohibited") && log.contains("Docker socket"),
        "ssh said: {log}"
    );
    assert!(gateway.log().contains("refused socket forward"));
}

#[test]
fn swapping_the_socket_for_a_symlink_reaches_no_engine() {
    // A short readiness wait: after the swap the host never looks ready.
    let mut gateway = Gateway::start_with_config("[hosts]\nready_timeout = \"3s\"\n");
    let alice = gateway.new_user();
    let outer_id = docker_ok(&["info", "--format", "{{.ID}}"]);
    let outer_socket = docker_host()
        .strip_prefix("unix://")
        .expect("the test engine is a unix socket");
    // As the tenant: root in the host, the socket's directory is theirs.
    alice.ssh_ok(&format!(
        "ln -s {outer_socket} /run/berth/evil && mv -f /run/berth/evil /run/berth/docker.sock \
         && test -L /run/berth/docker.sock"
    ));
    let client = alice.client_home();
    let out = client.docker(&["info", "--format", "{{.ID}}"]);
    assert!(
        !out.status.success(),
        "docker info through the swapped socket answered {}",
        stdout(&out)
    );
    assert_ne!(
        stdout(&out),
        outer_id,
        "the tenant reached the outer engine"
    );
    assert!(stderr(&out).contains("not a socket"), "{}", stderr(&out));

    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("d.sock");
    let forward = Forward::start(&alice, &local, "/var/run/docker.sock");
    let out = Command::new("docker")
        .arg("-H")
        .arg(format!("unix://{}", local.display()))
        .args(["info", "--format", "{{.ID}}"])
        .env_remove("DOCKER_HOST")
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "docker info through ssh -L answered {}",
        stdout(&out)
    );
    assert_ne!(
        stdout(&out),
        outer_id,
        "the tenant reached the outer engine"
    );
    drop(forward);
    assert!(gateway.log().contains("not a socket"));
}

/// `ssh -N -L LOCAL:REMOTE` for a user, up once LOCAL exists.
struct Forward {
    child: Option<Child>,
    log: PathBuf,
}

impl Forward {
    fn start(user: &User, local: &Path, remote: &str) -> Forward {
        let log = local.with_extension("ssh.log");
        let mut child = Command::new("ssh")
            .args(["-o", "LogLevel=INFO"])
            .args(ssh_options(&user.known_hosts))
            .args([
                "-o",
                "ExitOnForwardFailure=yes",
                "-o",
                "StreamLocalBindUnlink=yes",
            ])
            .arg("-i")
            .arg(&user.key.private)
            .arg("-p")
            .arg(user.addr.port().to_string())
            .arg("-N")
            .arg("-L")
            .arg(format!("{}:{remote}", local.display()))
            .arg(format!("{}@127.0.0.1", user.name))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !local.exists() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "ssh -L exited with {status}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "ssh -L never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        Forward {
            child: Some(child),
            log,
        }
    }

    /// Ends the forward and returns what ssh said.
    fn stop(mut self) -> String {
        self.kill();
        std::fs::read_to_string(&self.log).unwrap_or_default()
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
