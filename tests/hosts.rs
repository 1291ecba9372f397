//! The per-user host lifecycle: provisioned once however many logins race,
//! adopted after a gateway crash, stopped cleanly when idle, limited,
//! isolated, preloaded, and removed or purged by the admin CLI.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn container(user: &User) -> String {
    format!("berth-{}", user.name)
}

fn volume(user: &User) -> String {
    format!("berth-{}-docker", user.name)
}

/// Objects of one kind (`ps -a`, `volume ls`, `network ls`) labelled for `user`.
fn labelled(kind: &[&str], user: &User) -> usize {
    let filter = format!("label=io.berth.user={}", user.name);
    let mut args = kind.to_vec();
    args.extend(["-q", "--filter", &filter]);
    docker_ok(&args).lines().count()
}

fn volume_exists(name: &str) -> bool {
    docker(&["volume", "inspect", name]).status.success()
}

/// Makes a one-file image (busybox) inside the user's host.
fn import_probe_image(user: &User) {
    user.ssh_ok(
        "set -e; d=$(mktemp -d); mkdir $d/bin; cp /bin/busybox $d/bin/; \
         tar -C $d -c . | docker import - probe:1 >/dev/null",
    );
}

fn has_probe_image(user: &User) -> bool {
    !user.ssh_ok("docker images -q probe:1").is_empty()
}

fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A config file in its own temp dir, rewritable between gateway restarts.
struct ConfigFile {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl ConfigFile {
    fn new(text: &str) -> ConfigFile {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("berth.toml");
        std::fs::write(&path, text).expect("write config");
        ConfigFile { _dir: dir, path }
    }

    fn arg(&self) -> &str {
        self.path.to_str().expect("utf-8 path")
    }

    fn rewrite(&self, text: &str) {
        std::fs::write(&self.path, text).expect("write config");
    }
}

fn sessions_record(state: &Path, user: &User) -> String {
    std::fs::read_to_string(state.join("sessions").join(&user.name)).unwrap_or_default()
}

#[test]
fn twenty_concurrent_logins_of_one_user_make_one_host_and_all_succeed() {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    let outputs: Vec<_> = std::thread::scope(|s| {
        let logins: Vec<_> = (0..20)
            .map(|i| {
                let alice = &alice;
                s.spawn(move || {
                    alice.ssh(&format!(
                        "docker version -f '{{{{.Server.Version}}}}' && echo login-{i}"
                    ))
                })
            })
            .collect();
        logins
            .into_iter()
            .map(|t| t.join().expect("login thread"))
            .collect()
    });
    for (i, out) in outputs.iter().enumerate() {
        assert!(out.status.success(), "login {i} failed: {}", stderr(out));
        assert!(
            stdout(out).ends_with(&format!("login-{i}")),
            "{}",
            stdout(out)
        );
    }
    assert_eq!(labelled(&["ps", "-a"], &alice), 1, "containers");
    assert_eq!(labelled(&["volume", "ls"], &alice), 1, "volumes");
    let created = outputs
        .iter()
        .filter(|o| stderr(o).contains("created your Docker host"))
        .count();
    assert_eq!(created, 1, "more than one login created the host");
}

#[test]
fn five_users_logging_in_at_once_get_five_hosts() {
    let mut gateway = Gateway::start();
    let users: Vec<User> = (0..5).map(|_| gateway.new_user()).collect();
    let engine_ids: Vec<String> = std::thread::scope(|s| {
        let logins: Vec<_> = users
            .iter()
            .map(|u| s.spawn(move || u.ssh_ok("docker info --format '{{.ID}}'")))
            .collect();
        logins
            .into_iter()
            .map(|t| t.join().expect("login thread"))
            .collect()
    });
    for user in &users {
        assert_eq!(
            labelled(&["ps", "-a"], user),
            1,
            "{}'s containers",
            user.name
        );
        assert_eq!(
            labelled(&["volume", "ls"], user),
            1,
            "{}'s volumes",
            user.name
        );
    }
    let mut distinct = engine_ids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        5,
        "engines shared between users: {engine_ids:?}"
    );
}

#[test]
fn an_idle_host_is_stopped_cleanly_and_the_next_login_finds_its_images() {
    let mut gateway = Gateway::start_with(&["--idle-timeout", "5s"]);
    let alice = gateway.new_user();
    import_probe_image(&alice);
    let name = container(&alice);
    wait_until("the idle host to stop", Duration::from_secs(120), || {
        docker_ok(&["container", "inspect", "-f", "{{.State.Running}}", &name]) == "false"
    });
    // Exit 0 is dockerd returning from its own shutdown after SIGTERM; a
    // kill would be 137.
    let state = docker_ok(&[
        "container",
        "inspect",
        "-f",
        "{{.State.ExitCode}} {{.State.OOMKilled}}",
        &name,
    ]);
    assert_eq!(state, "0 false", "host did not stop cleanly");
    let logs = docker(&["logs", &name]);
    let logs = format!("{}{}", stdout(&logs), stderr(&logs));
    assert!(
        logs.contains("Processing signal 'terminated'"),
        "dockerd log:\n{logs}"
    );
    assert!(
        logs.contains("Daemon shutdown complete"),
        "dockerd log:\n{logs}"
    );
    let stop_line = format!("host idle; stopping it cleanly user={}", alice.name);
    assert!(
        gateway.log().contains(&stop_line),
        "log:\n{}",
        gateway.log()
    );

    let out = alice.ssh("docker images -q probe:1");
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert!(
        !stdout(&out).is_empty(),
        "image loaded before the stop is gone"
    );
    assert!(
        stderr(&out).contains("started your Docker host"),
        "stderr: {}",
        stderr(&out)
    );
}

#[test]
fn a_host_in_use_is_not_stopped_for_idleness() {
    let mut gateway = Gateway::start_with(&["--idle-timeout", "2s"]);
    let alice = gateway.new_user();
    // One session lasting three idle timeouts.
    let out = alice.ssh("sleep 7; docker version -f '{{.Server.Version}}'");
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let stop_line = format!("host idle; stopping it cleanly user={}", alice.name);
    assert!(
        !gateway.log().contains(&stop_line),
        "log:\n{}",
        gateway.log()
    );
}

#[test]
fn a_gateway_killed_while_a_host_runs_adopts_it_after_restart() {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    alice.ssh_ok("true");
    let first = docker_ok(&["container", "inspect", "-f", "{{.Id}}", &container(&alice)]);
    gateway.restart(); // SIGKILL, then the same state dir and port
    let adopted = format!("adopted host user={} container={first}", alice.name);
    assert!(gateway.log().contains(&adopted), "log:\n{}", gateway.log());
    let out = alice.ssh("echo again");
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert_eq!(stderr(&out), "", "the restarted gateway re-provisioned");
    let second = docker_ok(&["container", "inspect", "-f", "{{.Id}}", &container(&alice)]);
    assert_eq!(first, second, "a second container was made");
    assert_eq!(labelled(&["volume", "ls"], &alice), 1);
}

#[test]
fn a_half_made_host_is_re_created_and_its_volume_kept() {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    import_probe_image(&alice);
    let name = container(&alice);
    // What a crash between "create" and "start" leaves: a container that
    // never ran, with the user's volume.
    docker_ok(&["rm", "-f", &name]);
    docker_ok(&[
        "create",
        "--name",
        &name,
        "--label",
        "io.berth.managed=true",
        "--label",
        &format!("io.berth.user={}", alice.name),
        "-v",
        &format!("{}:/var/lib/docker", volume(&alice)),
        host_image(),
    ]);
    let stale = docker_ok(&["container", "inspect", "-f", "{{.Id}}", &name]);
    assert!(has_probe_image(&alice), "the volume's images were lost");
    let fresh = docker_ok(&["container", "inspect", "-f", "{{.Id}}", &name]);
    assert_ne!(stale, fresh, "the half-made container was used as is");
}

#[test]
fn configured_limits_daemon_arguments_and_environment_reach_the_host() {
    let global = r#"
[hosts]
memory = "512m"
cpus = 0.5
pids_limit = 300
dockerd_args = ["--insecure-registry", "10.77.0.1:5000"]
env = { BERTH_TEST_ENV = "no" }
"#;
    // BERTH_* is reserved; the test's own variable uses another prefix.
    let global = global.replace("BERTH_TEST_ENV", "HOSTS_TEST_ENV");
    let config = ConfigFile::new(&global);
    let mut gateway = Gateway::start_with(&["--config", config.arg()]);
    let alice = gateway.new_user();
    let bob = gateway.new_user();
    config.rewrite(&format!(
        "{global}\n[hosts.users.{}]\nmemory = \"768m\"\ndockerd_args = [\"--insecure-registry\", \"10.88.0.1:5000\"]\nenv = {{ HOSTS_TEST_ENV = \"alice\" }}\n",
        alice.name
    ));
    gateway.restart();
    alice.ssh_ok("true");
    bob.ssh_ok("true");

    let limits = |u: &User| {
        docker_ok(&[
            "container",
            "inspect",
            "-f",
            "{{.HostConfig.Memory}} {{.HostConfig.NanoCpus}} {{.HostConfig.PidsLimit}}",
            &container(u),
        ])
    };
    assert_eq!(limits(&alice), format!("{} 500000000 300", 768 << 20));
    assert_eq!(limits(&bob), format!("{} 500000000 300", 512 << 20));

    let registries = alice.ssh_ok("docker info 2>/dev/null");
    assert!(registries.contains("10.77.0.1:5000"), "{registries}");
    assert!(registries.contains("10.88.0.1:5000"), "{registries}");
    let registries = bob.ssh_ok("docker info 2>/dev/null");
    assert!(registries.contains("10.77.0.1:5000"), "{registries}");
    assert!(!registries.contains("10.88.0.1:5000"), "{registries}");

    assert_eq!(alice.ssh_ok("echo $HOSTS_TEST_ENV"), "alice");
    assert_eq!(bob.ssh_ok("echo $HOSTS_TEST_ENV"), "no");
}

fn host_ip(user: &User) -> String {
    docker_ok(&[
        "container",
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        &container(user),
    ])
}

#[test]
fn alices_host_cannot_reach_bobs_host() {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    let bob = gateway.new_user();
    alice.ssh_ok("true");
    // A listener in bob's host that outlives the session (it is re-parented
    // to the host's init when the exec ends).
    bob.ssh_ok("nohup nc -lk 8080 </dev/null >/dev/null 2>&1 &");
    let bob_ip = host_ip(&bob);
    assert!(!bob_ip.is_empty(), "bob's host has no address");
    let probe = format!("nc -z -w 3 {bob_ip} 8080");
    wait_until("bob's listener", Duration::from_secs(30), || {
        bob.ssh(&probe).status.success()
    });
    let out = alice.ssh(&probe);
    assert!(
        !out.status.success(),
        "alice's host ({}) connected to bob's host at {bob_ip}; alice's routes:\n{}",
        host_ip(&alice),
        alice.ssh_ok("ip route; ip -br addr")
    );
    // The listener is still up: the refusal was isolation, not a dead port.
    assert!(bob.ssh(&probe).status.success());
    // And the gateway engine's socket is not in either host.
    let mounts = docker_ok(&[
        "container",
        "inspect",
        "-f",
        "{{range .Mounts}}{{.Source}} {{end}}",
        &container(&alice),
    ]);
    assert!(!mounts.contains("docker.sock"), "mounts: {mounts}");
}

/// A tiny image on the gateway's engine (busybox from the host image), removed on drop.
struct OuterImage {
    name: String,
}

impl OuterImage {
    fn busybox() -> OuterImage {
        let name = format!("berth-preload-probe:{}", std::process::id());
        let tmp = format!("berth-preload-src-{}", std::process::id());
        docker_ok(&["create", "--name", &tmp, host_image()]);
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "docker cp {tmp}:/bin/busybox - | docker import - {name}"
            ))
            .env("DOCKER_HOST", docker_host())
            .stdout(Stdio::null())
            .status()
            .expect("sh");
        let _ = docker(&["rm", "-f", "-v", &tmp]);
        assert!(status.success(), "could not make {name}");
        OuterImage { name }
    }
}

impl Drop for OuterImage {
    fn drop(&mut self) {
        let _ = docker(&["rmi", "-f", &self.name]);
    }
}

#[test]
fn a_preloaded_image_is_present_in_a_brand_new_host() {
    let image = OuterImage::busybox();
    let config = ConfigFile::new(&format!("[hosts]\npreload_images = [\"{}\"]\n", image.name));
    let mut gateway = Gateway::start_with(&["--config", config.arg()]);
    let alice = gateway.new_user();
    let out = alice.ssh_ok(&format!(
        "docker run --rm {} /busybox echo preloaded",
        image.name
    ));
    assert_eq!(out, "preloaded");
    let log = gateway.log();
    assert!(
        log.contains("preloading image into the host"),
        "log:\n{log}"
    );
    assert!(log.contains("image preloaded"), "log:\n{log}");
}

#[test]
fn host_rm_keeps_the_volume_and_the_next_login_still_has_the_images() {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    import_probe_image(&alice);
    gateway.cli_ok(&["host", "rm", &alice.name]);
    assert_eq!(labelled(&["ps", "-a"], &alice), 0, "container still there");
    assert!(volume_exists(&volume(&alice)), "host rm removed the volume");
    assert!(has_probe_image(&alice), "images gone after host rm");
}

#[test]
fn host_purge_removes_the_volume() {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    import_probe_image(&alice);
    gateway.cli_ok(&["host", "purge", "--yes", &alice.name]);
    assert_eq!(labelled(&["ps", "-a"], &alice), 0, "container still there");
    assert!(!volume_exists(&volume(&alice)), "volume still there");
    assert!(
        !has_probe_image(&alice),
        "a purged host still had its images"
    );
}

#[test]
fn host_purge_asks_and_does_nothing_without_a_yes() {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    alice.ssh_ok("true");
    let out = gateway.cli_with_stdin(&["host", "purge", &alice.name], b"n\n");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("everything in it is lost"),
        "{}",
        stderr(&out)
    );
    assert!(volume_exists(&volume(&alice)));
}

#[test]
fn host_purge_refuses_while_a_session_is_live_unless_forced() {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    alice.ssh_ok("true");
    let mut session = alice
        .ssh_command()
        .arg("sleep 120")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ssh");
    let state = gateway.state.path().to_path_buf();
    wait_until("the session to be counted", Duration::from_secs(30), || {
        sessions_record(&state, &alice).contains("sessions=1")
    });
    let out = gateway.cli(&["host", "purge", "--yes", &alice.name]);
    assert!(!out.status.success(), "purged a host in use");
    assert!(stderr(&out).contains("live session"), "{}", stderr(&out));
    assert!(volume_exists(&volume(&alice)));

    gateway.cli_ok(&["host", "purge", "--yes", "--force", &alice.name]);
    assert!(!volume_exists(&volume(&alice)));
    let _ = session.kill();
    let _ = session.wait();
}

#[test]
fn host_list_shows_state_uptime_and_sessions() {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    let bob = gateway.new_user();
    alice.ssh_ok("true");
    bob.ssh_ok("true");
    gateway.cli_ok(&["host", "stop", &bob.name]);
    let list = gateway.cli_ok(&["host", "list"]);
    let row = |u: &User| {
        list.lines()
            .find(|l| l.starts_with(&format!("{} ", u.name)))
            .unwrap_or_else(|| panic!("{} not listed:\n{list}", u.name))
            .to_string()
    };
    let id = docker_ok(&["container", "inspect", "-f", "{{.Id}}", &container(&alice)]);
    let alice_row = row(&alice);
    assert!(alice_row.contains(" running "), "{alice_row}");
    assert!(alice_row.contains(&id[..12]), "{alice_row}");
    assert!(
        alice_row.contains("up ") && alice_row.contains("idle "),
        "{alice_row}"
    );
    let bob_row = row(&bob);
    assert!(bob_row.contains(" exited "), "{bob_row}");
    assert!(bob_row.contains("stopped "), "{bob_row}");
}

#[test]
fn adding_a_user_makes_their_volume_and_network_on_the_gateways_engine() {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    assert_eq!(labelled(&["network", "ls"], &alice), 1, "no network");
    assert_eq!(labelled(&["volume", "ls"], &alice), 1, "no volume");
    assert_eq!(labelled(&["ps", "-a"], &alice), 0, "a container already");

    // Without DOCKER_HOST the CLI uses the engine the gateway recorded.
    docker_ok(&["volume", "rm", &volume(&alice)]);
    docker_ok(&["network", "rm", &container(&alice)]);
    let cli_without_docker_host = |state: &Path, args: &[&str]| {
        Command::new(berth_bin())
            .args(args)
            .env("BERTH_STATE_DIR", state)
            .env_remove("DOCKER_HOST")
            .output()
            .expect("run berth")
    };
    let out = cli_without_docker_host(gateway.state.path(), &["user", "add", &alice.name]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(labelled(&["network", "ls"], &alice), 1, "no network");
    assert_eq!(labelled(&["volume", "ls"], &alice), 1, "no volume");
    let out = cli_without_docker_host(gateway.state.path(), &["host", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // Where no gateway ever ran, the CLI does not guess an engine.
    let fresh = tempfile::tempdir().expect("tempdir");
    let bob = format!("{}b", alice.name);
    let out = cli_without_docker_host(fresh.path(), &["user", "add", &bob]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
    let networks = docker_ok(&["network", "ls", "--format", "{{.Name}}"]);
    assert!(!networks.lines().any(|n| n == format!("berth-{bob}")));

    let version = alice.ssh_ok("docker info -f '{{.ServerVersion}}'");
    assert!(!version.is_empty(), "no version from the inner engine");
    assert_eq!(labelled(&["ps", "-a"], &alice), 1, "the login made no host");
}

#[test]
fn a_dockerd_that_dies_while_starting_is_reported_to_the_session() {
    // dockerd makes its sockets, then fails on the storage driver and exits.
    let mut gateway = Gateway::start_with_config(
        "[hosts]\nready_timeout = \"30s\"\ndockerd_args = [\"--storage-driver=berth-none\"]\n",
    );
    let alice = gateway.new_user();
    for command in ["docker info", "echo hello"] {
        let out = alice.ssh(command);
        assert!(
            stderr(&out).contains("berth: host for")
                && stderr(&out).contains("driver not supported"),
            "{command}: {}",
            stderr(&out)
        );
    }
    let out = alice.ssh("docker info");
    assert!(
        !out.status.success(),
        "docker info answered without dockerd"
    );
}

#[test]
fn user_adds_racing_a_first_login_make_one_network() {
    let mut gateway = Gateway::start();
    let alice = gateway.new_user();
    // As if the user had been added before berth made networks.
    docker_ok(&["volume", "rm", &volume(&alice)]);
    docker_ok(&["network", "rm", &container(&alice)]);
    let adds: Vec<_> = (0..6)
        .map(|_| {
            Command::new(berth_bin())
                .args(["user", "add", &alice.name])
                .env("BERTH_STATE_DIR", gateway.state.path())
                .env("DOCKER_HOST", docker_host())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("run berth")
        })
        .collect();
    let login = alice.ssh("true");
    for add in adds {
        let out = add.wait_with_output().expect("berth user add");
        assert!(out.status.success(), "{}", stderr(&out));
    }
    assert!(login.status.success(), "login: {}", stderr(&login));
    let named = docker_ok(&["network", "ls", "--format", "{{.Name}}"])
        .lines()
        .filter(|n| *n == container(&alice))
        .count();
    assert_eq!(named, 1, "networks named {}", container(&alice));
    assert_eq!(alice.ssh_ok("echo again"), "again");
}
