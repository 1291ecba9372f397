//! Shared fixtures for berth's end-to-end tests: a real Docker engine, the
//! real host image, the real `berth` binary and the real OpenSSH client.
//!
//! The engine and the image are set up once per test binary. Each test gets
//! its own gateway process (temp state dir, free port) and its own users,
//! whose hosts are removed when the test ends.

#![allow(dead_code)]

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The berth binary under test.
pub fn berth_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_berth"))
}

/// `DOCKER_HOST` of a working engine: the one in the environment if it
/// answers, else one found or started by `scripts/engine.sh`.
pub fn docker_host() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| {
        let out = Command::new(repo().join("scripts/engine.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/engine.sh");
        assert!(out.status.success(), "scripts/engine.sh failed");
        let line = String::from_utf8(out.stdout).expect("utf-8");
        line.trim()
            .strip_prefix("DOCKER_HOST=")
            .unwrap_or_else(|| panic!("engine.sh printed {line:?}"))
            .to_string()
    })
}

/// The host image name, built once per test binary (cheap when cached).
pub fn host_image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let image = "berth-host:latest".to_string();
        let status = Command::new(repo().join("hostimage/build.sh"))
            .arg(&image)
            .env("DOCKER_HOST", docker_host())
            .stdout(Stdio::null())
            .status()
            .expect("run hostimage/build.sh");
        assert!(status.success(), "hostimage/build.sh failed");
        image
    })
}

/// Runs the docker CLI against the test engine.
pub fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .env("DOCKER_HOST", docker_host())
        .output()
        .expect("run docker")
}

/// Runs the docker CLI and returns its trimmed stdout, failing the test on error.
pub fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("{prefix}{}x{n}", std::process::id())
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// A running `berth serve` process with its own state dir.
pub struct Gateway {
    pub state: tempfile::TempDir,
    pub addr: SocketAddr,
    child: Option<Child>,
    image: String,
    extra_args: Vec<String>,
    users: Vec<String>,
}

impl Gateway {
    /// Starts a gateway whose hosts run `image` instead of the host image.
    pub fn start_with_image(image: &str) -> Gateway {
        host_image();
        Gateway::start_inner(image, &[])
    }

    /// Starts a gateway on a free port with a fresh state dir.
    pub fn start() -> Gateway {
        Gateway::start_with(&[])
    }

    /// Starts a gateway with extra `berth serve` arguments.
    pub fn start_with(extra: &[&str]) -> Gateway {
        Gateway::start_inner(host_image(), extra)
    }

    fn start_inner(image: &str, extra: &[&str]) -> Gateway {
        let state = tempfile::Builder::new()
            .prefix("berth-test-")
            .tempdir()
            .expect("tempdir");
        let mut gateway = Gateway {
            state,
            addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            child: None,
            image: image.to_string(),
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            users: Vec::new(),
        };
        gateway.spawn();
        gateway
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.state.path().join("gateway.log"))
            .expect("log file");
        let child = Command::new(berth_bin())
            .arg("serve")
            .arg("--state-dir")
            .arg(self.state.path())
            .arg("--listen")
            .arg(self.addr.to_string())
            .arg("--image")
            .arg(&self.image)
            .args(&self.extra_args)
            .env("DOCKER_HOST", docker_host())
            .env("RUST_LOG", "info,berth=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start berth serve");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(self.addr).is_err() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("berth serve exited with {status}; log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "gateway did not listen; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the gateway process (SIGKILL) and starts it again on the same
    /// state dir and port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Kills the gateway process.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The gateway's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state.path().join("gateway.log")).unwrap_or_default()
    }

    /// Runs `berth ARGS` against this gateway's state dir.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(berth_bin())
            .args(args)
            .env("BERTH_STATE_DIR", self.state.path())
            .env("DOCKER_HOST", docker_host())
            .output()
            .expect("run berth")
    }

    /// Runs `berth ARGS` with `input` on stdin.
    pub fn cli_with_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        let mut child = Command::new(berth_bin())
            .args(args)
            .env("BERTH_STATE_DIR", self.state.path())
            .env("DOCKER_HOST", docker_host())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run berth");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .expect("write stdin");
        child.wait_with_output().expect("berth output")
    }

    /// A new user with a fresh Ed25519 key, added through `berth key add`.
    /// Their host is removed (volume too) when the gateway fixture drops.
    pub fn new_user(&mut self) -> User {
        let name = unique("t");
        let key = Key::generate(self.state.path(), &name);
        let out = self.cli(&["key", "add", &name, key.public.to_str().expect("path")]);
        assert!(
            out.status.success(),
            "key add failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.users.push(name.clone());
        User {
            name,
            key,
            addr: self.addr,
            known_hosts: self.state.path().join("known_hosts"),
        }
    }

    /// The user name reserved for a test that adds keys itself.
    pub fn reserve_user(&mut self) -> String {
        let name = unique("t");
        self.users.push(name.clone());
        name
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
        for user in &self.users {
            let _ = docker(&["rm", "-f", "-v", &format!("berth-{user}")]);
            let _ = docker(&["volume", "rm", "-f", &format!("berth-{user}-docker")]);
            let _ = docker(&["network", "rm", &format!("berth-{user}")]);
        }
        if std::thread::panicking() {
            eprintln!("--- gateway log ---\n{}", self.log());
        }
    }
}

/// A key pair made by `ssh-keygen`.
#[derive(Clone)]
pub struct Key {
    pub private: PathBuf,
    pub public: PathBuf,
}

impl Key {
    /// Generates an Ed25519 key pair under `dir`.
    pub fn generate(dir: &Path, name: &str) -> Key {
        Key::generate_typed(dir, name, "ed25519")
    }

    /// Generates a key pair of the given `ssh-keygen -t` type.
    pub fn generate_typed(dir: &Path, name: &str, typ: &str) -> Key {
        let private = dir.join(format!("{name}-{typ}-key"));
        let status = Command::new("ssh-keygen")
            .args(["-q", "-t", typ, "-N", "", "-C"])
            .arg(format!("{name}@test"))
            .arg("-f")
            .arg(&private)
            .status()
            .expect("run ssh-keygen");
        assert!(status.success());
        let public = private.with_extension("pub");
        let public = if public.exists() {
            public
        } else {
            PathBuf::from(format!("{}.pub", private.display()))
        };
        Key { private, public }
    }
}

/// A user of a test gateway, and how to reach it with OpenSSH.
pub struct User {
    pub name: String,
    pub key: Key,
    pub addr: SocketAddr,
    pub known_hosts: PathBuf,
}

impl User {
    /// An `ssh` command for this user, as `ssh -p PORT user@127.0.0.1`, with
    /// only this user's key and no interaction.
    pub fn ssh_command(&self) -> Command {
        self.ssh_command_as(&self.name, &self.key)
    }

    /// An `ssh` command logging in as `login` with `key`.
    pub fn ssh_command_as(&self, login: &str, key: &Key) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.args(ssh_options(&self.known_hosts))
            .arg("-i")
            .arg(&key.private)
            .arg("-p")
            .arg(self.addr.port().to_string())
            .arg(format!("{login}@{}", self.addr.ip()));
        cmd
    }

    /// Runs a command over ssh with empty stdin.
    pub fn ssh(&self, command: &str) -> Output {
        self.ssh_command()
            .arg(command)
            .stdin(Stdio::null())
            .output()
            .expect("run ssh")
    }

    /// Runs a command over ssh, asserting it succeeds; returns stdout.
    pub fn ssh_ok(&self, command: &str) -> String {
        let out = self.ssh(command);
        assert!(
            out.status.success(),
            "ssh {command:?} exited {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Runs a command over ssh with `input` on stdin.
    pub fn ssh_with_stdin(&self, command: &str, input: &[u8]) -> Output {
        let mut child = self
            .ssh_command()
            .arg(command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run ssh");
        let mut stdin = child.stdin.take().expect("stdin");
        let input = input.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let out = child.wait_with_output().expect("ssh output");
        writer.join().expect("stdin writer");
        out
    }
}

/// Options that make OpenSSH non-interactive and blind to ~/.ssh.
pub fn ssh_options(known_hosts: &Path) -> Vec<String> {
    vec![
        "-F".into(),
        "/dev/null".into(),
        "-o".into(),
        "BatchMode=yes".into(),
        "-o".into(),
        "StrictHostKeyChecking=no".into(),
        "-o".into(),
        format!("UserKnownHostsFile={}", known_hosts.display()),
        "-o".into(),
        "IdentitiesOnly=yes".into(),
        "-o".into(),
        "IdentityAgent=none".into(),
        "-o".into(),
        "LogLevel=ERROR".into(),
        "-o".into(),
        "ConnectTimeout=30".into(),
    ]
}

/// Stdout as trimmed text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

impl Gateway {
    /// A user name with a fresh key pair that is NOT on file yet.
    pub fn user_without_keys(&mut self) -> User {
        let name = self.reserve_user();
        let key = Key::generate(self.state.path(), &name);
        User {
            name,
            key,
            addr: self.addr,
            known_hosts: self.state.path().join("known_hosts"),
        }
    }

    /// Runs `berth ARGS`, asserting success; returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "berth {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }
}

/// True when OpenSSH reports an authentication failure.
pub fn auth_refused(out: &Output) -> bool {
    out.status.code() == Some(255) && stderr(out).contains("Permission denied")
}

impl Gateway {
    /// The `berth serve` process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Starts a gateway with a config file holding `toml`.
    pub fn start_with_config(toml: &str) -> Gateway {
        let dir = tempfile::Builder::new()
            .prefix("berth-conf-")
            .tempdir()
            .expect("tempdir");
        let path = dir.keep().join("berth.toml");
        std::fs::write(&path, toml).expect("write config");
        Gateway::start_with(&["--config", path.to_str().expect("path")])
    }
}

impl User {
    /// Names the processes in this user's host whose command line contains
    /// `pattern` (`pid args` lines), as `ps` inside the host sees them.
    pub fn host_processes(&self, pattern: &str) -> Vec<String> {
        let container = format!("berth-{}", self.name);
        let out = docker_ok(&["exec", &container, "ps", "-eo", "pid=,args="]);
        out.lines()
            .filter(|l| l.contains(pattern))
            .map(|l| l.trim().to_string())
            .collect()
    }

    /// The `ssh` options and key for this user as other OpenSSH programs
    /// (scp, sftp, rsync's `-e ssh …`) take them, without the port.
    pub fn ssh_args(&self) -> Vec<String> {
        let mut args = ssh_options(&self.known_hosts);
        args.push("-i".into());
        args.push(self.key.private.display().to_string());
        args
    }
}

/// A client machine's view of a test user: a temp HOME whose `.ssh/config`,
/// `.ssh/known_hosts` and `ssh` on PATH reach the gateway as that user, so
/// clients that run plain `ssh` (the docker CLI) or read `~/.ssh/config`
/// (docker-py's paramiko transport) work unchanged.
pub struct ClientHome {
    pub dir: tempfile::TempDir,
    /// `ssh://USER@127.0.0.1:PORT`.
    pub docker_host: String,
}

impl User {
    /// What a paramiko script needs to log in as this user from `client`:
    /// host, port, user name, private key, known_hosts.
    pub fn paramiko_login(&self, client: &ClientHome) -> Vec<String> {
        vec![
            self.addr.ip().to_string(),
            self.addr.port().to_string(),
            self.name.clone(),
            self.key.private.display().to_string(),
            client
                .dir
                .path()
                .join(".ssh/known_hosts")
                .display()
                .to_string(),
        ]
    }

    /// Sets up a [`ClientHome`] for this user.
    pub fn client_home(&self) -> ClientHome {
        let dir = tempfile::Builder::new()
            .prefix("berth-client-")
            .tempdir()
            .expect("tempdir");
        let ssh_dir = dir.path().join(".ssh");
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&ssh_dir).expect("mkdir .ssh");
        std::fs::create_dir_all(&bin).expect("mkdir bin");
        let state = self.known_hosts.parent().expect("state dir");
        let host_key = Command::new("ssh-keygen")
            .arg("-y")
            .arg("-f")
            .arg(state.join("ssh_host_ed25519_key"))
            .output()
            .expect("ssh-keygen -y");
        assert!(host_key.status.success(), "{}", stderr(&host_key));
        let known_hosts = ssh_dir.join("known_hosts");
        std::fs::write(
            &known_hosts,
            format!(
                "[127.0.0.1]:{} {}\n",
                self.addr.port(),
                String::from_utf8_lossy(&host_key.stdout).trim()
            ),
        )
        .expect("known_hosts");
        let config = ssh_dir.join("config");
        std::fs::write(
            &config,
            format!(
                "Host 127.0.0.1\n  IdentityFile {}\n  IdentitiesOnly yes\n  IdentityAgent none\n  \
                 StrictHostKeyChecking yes\n  UserKnownHostsFile {}\n  BatchMode yes\n  LogLevel ERROR\n",
                self.key.private.display(),
                known_hosts.display()
            ),
        )
        .expect("ssh config");
        // OpenSSH finds ~/.ssh through the password database, not $HOME:
        // an `ssh` on PATH that names the config makes HOME's config count.
        let real_ssh = Command::new("sh")
            .args(["-c", "command -v ssh"])
            .output()
            .expect("find ssh");
        let wrapper = bin.join("ssh");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nexec {} -F {} \"$@\"\n",
                String::from_utf8_lossy(&real_ssh.stdout).trim(),
                config.display()
            ),
        )
        .expect("ssh wrapper");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        ClientHome {
            dir,
            docker_host: format!("ssh://{}@127.0.0.1:{}", self.name, self.addr.port()),
        }
    }

    /// Imports a one-layer busybox image as `tag` into this user's inner
    /// engine (every applet linked, so `echo`, `sh`, `httpd` work).
    pub fn import_busybox(&self, tag: &str) {
        self.ssh_ok(&format!(
            "set -e; d=$(mktemp -d); mkdir -p $d/bin $d/tmp $d/www; cp /bin/busybox $d/bin/; \
             for a in $(/bin/busybox --list); do [ -e $d/bin/$a ] || ln -s busybox $d/bin/$a; done; \
             tar -C $d -c . | docker import -c 'CMD [\"sh\"]' - {tag} >/dev/null; rm -rf $d"
        ));
    }
}

impl ClientHome {
    /// A command run on the client: HOME and PATH point at this client
    /// home, DOCKER_HOST at the gateway.
    pub fn command(&self, program: &str) -> Command {
        let path = format!(
            "{}:{}",
            self.dir.path().join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut cmd = Command::new(program);
        cmd.env("HOME", self.dir.path())
            .env("PATH", path)
            .env("DOCKER_HOST", &self.docker_host)
            .env("DOCKER_CONFIG", self.dir.path().join(".docker"))
            .env_remove("DOCKER_CONTEXT")
            .stdin(Stdio::null());
        cmd
    }

    /// The docker CLI with `DOCKER_HOST=ssh://…`.
    pub fn docker(&self, args: &[&str]) -> Output {
        self.command("docker")
            .args(args)
            .output()
            .expect("run docker")
    }

    /// The docker CLI over SSH, asserting success; returns trimmed stdout.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "DOCKER_HOST=ssh:// docker {args:?} failed: {}",
            stderr(&out)
        );
        stdout(&out)
    }
}

/// A python3 that has docker-py and paramiko: the one on PATH if it does,
/// else a virtualenv under target/ made once with pip.
pub fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let has_sdk = |python: &Path| {
            Command::new(python)
                .args(["-c", "import docker, paramiko"])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        let system = PathBuf::from("python3");
        if has_sdk(&system) {
            return system;
        }
        let venv = repo().join("target/test-python");
        let python = venv.join("bin/python3");
        // Test binaries may run at once: one of them makes the virtualenv.
        let lock = std::fs::File::create(repo().join("target/test-python.lock"))
            .expect("create the virtualenv lock");
        lock.lock().expect("lock the virtualenv");
        if !has_sdk(&python) {
            let status = Command::new("python3")
                .args(["-m", "venv"])
                .arg(&venv)
                .status()
                .expect("run python3 -m venv");
            assert!(
                status.success(),
                "python3 -m venv failed (apt install python3-venv)"
            );
            let status = Command::new(&python)
                .args(["-m", "pip", "install", "--quiet", "docker", "paramiko"])
                .status()
                .expect("run pip");
            assert!(status.success(), "pip install docker paramiko failed");
        }
        python
    })
}

/// Runs a Python script (from stdin) with `args`, HOME at the client home.
pub fn run_python<S: AsRef<std::ffi::OsStr>>(
    client: &ClientHome,
    script: &str,
    args: &[S],
) -> Output {
    let mut child = client
        .command(python().to_str().unwrap())
        .arg("-")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Builds `tag` from the host image plus `steps` (Dockerfile lines), with
/// the classic builder and no context.
pub fn derived_image(tag: &str, steps: &str) -> String {
    let dockerfile = format!("FROM {}\n{steps}\n", host_image());
    let mut child = Command::new("docker")
        .args(["build", "-q", "-t", tag, "-"])
        .env("DOCKER_HOST", docker_host())
        .env("DOCKER_BUILDKIT", "0")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("docker build");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(dockerfile.as_bytes())
        .expect("write Dockerfile");
    let out = child.wait_with_output().expect("docker build");
    assert!(
        out.status.success(),
        "docker build {tag}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    tag.to_string()
}
