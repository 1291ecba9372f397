#!/usr/bin/env python3
"""berth's benchmarks against what users would run instead.

    bench/bench.py            # full run: >= 10 interleaved runs per workload,
                              # writes bench/RESULTS.md and bench/results.csv
    bench/bench.py --smoke    # one run each, tiny sizes; fails only when a
                              # workload cannot run at all

Baselines, built here on the same engine and measured in the same run:

- openssh-dind: berth's own host image plus openssh-server (sshd as the
  container's front door, the user's key copied in with `docker exec`),
  reached by the same OpenSSH client at the container's address;
- direct: `docker exec` into the user's berth host, and the inner engine's
  unix socket (<state>/run/<user>/docker.sock) used locally.

Needs root, a Docker engine named by DOCKER_HOST (`scripts/with-engine`),
the host image (`make image`) and a berth binary. Installs the OpenSSH
client and the docker CLI from Debian when they are missing. Standard
library only.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
HOST_IMAGE = os.environ.get("BERTH_BENCH_HOST_IMAGE", "berth-host:latest")
SSHD_IMAGE = "berth-bench-sshd:latest"
LOAD_IMAGE = "berth-bench-load:latest"
TINY_IMAGE = "berth-bench-tiny:latest"
CIPHERS = ["chacha20-poly1305@openssh.com", "aes128-gcm@openssh.com", "aes256-gcm@openssh.com"]
# The capability profile berth's hosts get where --privileged is refused;
# the baselines get exactly the same one.
HOST_PROFILE = [
    "--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE",
    "--security-opt", "seccomp=unconfined",
    "--security-opt", "apparmor=unconfined",
    "--security-opt", "systempaths=unconfined",
    "--device-cgroup-rule", "a *:* rwm",
    "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
]  # fmt: skip


class BenchError(Exception):
    """A workload could not run (as opposed to running slowly)."""


def say(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes


def run(cmd, *, env=None, input=None, timeout=600, check=True, capture=True):
    """Runs a command; raises BenchError with its stderr on failure."""
    try:
        out = subprocess.run(
            cmd,
            env=env,
            input=input,
            timeout=timeout,
            stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"{cmd_str(cmd)}: no answer in {timeout} s") from e
    if check and out.returncode != 0:
        err = out.stderr.decode(errors="replace").strip()[-2000:]
        raise BenchError(f"{cmd_str(cmd)} exited {out.returncode}: {err}")
    return out


def cmd_str(cmd) -> str:
    return " ".join(str(c) for c in cmd)


def docker(*args, **kw):
    return run(["docker", *args], **kw)


def docker_out(*args, **kw) -> str:
    return docker(*args, **kw).stdout.decode().strip()


def timed(cmd, *, env=None, timeout=600) -> float:
    """Seconds a command took to succeed (output discarded)."""
    start = time.perf_counter()
    run(cmd, env=env, timeout=timeout, capture=False)
    return time.perf_counter() - start


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no VmRSS for pid {pid}")


def proc_pss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ping(sock: Path, deadline_s: float = 120) -> None:
    """Tries /_ping until it answers 200: every 2 ms while there is no
    socket (as berth looks for it); once dockerd listens, the ping waits in
    the socket's queue until dockerd serves it."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if ping_ok(sock):
            return
        time.sleep(0.002)
    raise BenchError(f"no dockerd answered on {sock} in {deadline_s} s")


def ping_ok(sock: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(str(sock))
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            head = s.recv(64)
            return head.split(b"\r\n", 1)[0].split(b" ")[1:2] == [b"200"]
    except (OSError, IndexError):
        return False


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(-(-p * len(s) // 100)) - 1))
    return s[k]


# ---------------------------------------------------------------- the rig


class Rig:
    """Everything a run sets up: work dir, keys, gateway, baselines."""

    def __init__(self, args):
        self.args = args
        self.smoke = args.smoke
        self.tag = f"{os.getpid() % 100000}"
        self.work = Path(tempfile.mkdtemp(prefix="berth-bench-"))
        self.state = self.work / "state"
        self.berth = Path(args.berth).resolve()
        self.children: list[subprocess.Popen] = []
        self.containers: list[str] = []
        self.volumes: list[str] = []
        self.networks: list[str] = []
        self.users: list[str] = []
        self.gateway: subprocess.Popen | None = None
        self.port = 0
        self.user = f"bench{self.tag}"
        self.sshd_name = f"berth-bench-sshd-{self.tag}"
        self.sshd_ip = ""
        self.key = self.work / "id_ed25519"
        self.ssh_config = self.work / "ssh_config"
        self.bin = self.work / "bin"

    # -- environment

    def env(self, **extra) -> dict:
        env = dict(os.environ)
        env["PATH"] = f"{self.bin}:{env.get('PATH', '')}"
        env.update(extra)
        return env

    def ssh(self, host: str, *args, login: str | None = None, cipher: str | None = None) -> list:
        cmd = ["/usr/bin/ssh", "-F", str(self.ssh_config)]
        if cipher:
            cmd += ["-c", cipher]
        if login:
            cmd += ["-l", login]
        return [*cmd, host, *args]

    def berth_cli(self, *args, **kw):
        env = dict(os.environ, BERTH_STATE_DIR=str(self.state))
        return run([str(self.berth), *args], env=env, **kw)

    # -- setup

    def setup(self) -> None:
        ensure_tools()
        if not self.berth.is_file():
            raise BenchError(f"no berth binary at {self.berth}; run `cargo build --release`")
        if docker("image", "inspect", HOST_IMAGE, check=False).returncode != 0:
            raise BenchError(f"no host image {HOST_IMAGE}; run `make image`")
        self.bin.mkdir()
        # The docker CLI runs `ssh` from PATH for ssh:// hosts and takes no
        # ssh options: this wrapper gives it the bench's config.
        wrapper = self.bin / "ssh"
        wrapper.write_text(f'#!/bin/sh\nexec /usr/bin/ssh -F {self.ssh_config} "$@"\n')
        wrapper.chmod(0o755)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f", str(self.key)])
        self.build_sshd_image()
        self.start_gateway()
        self.add_user(self.user)
        self.start_sshd_baseline()
        self.write_ssh_config()
        # First logins: create the berth host, learn host keys.
        say(f"creating berth host for {self.user}")
        run(self.ssh("berth", "docker info >/dev/null"), timeout=300)
        run(self.ssh("sshd", "true"), timeout=120)

    def build_sshd_image(self) -> None:
        say(f"building {SSHD_IMAGE} (FROM {HOST_IMAGE} + openssh-server; cached after the first time)")
        docker("build", "-q", "--build-arg", f"BASE={HOST_IMAGE}", "-t", SSHD_IMAGE,
               str(BENCH / "openssh-dind"), timeout=1200)  # fmt: skip

    def start_gateway(self) -> None:
        self.state.mkdir()
        self.port = free_port()
        log = open(self.work / "gateway.log", "ab")
        cmd = [str(self.berth), "serve", "--state-dir", str(self.state),
               "--listen", f"127.0.0.1:{self.port}", "--image", HOST_IMAGE,
               "--idle-timeout", "0"]  # fmt: skip
        say(f"starting {cmd_str(cmd)}")
        self.gateway = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        self.children.append(self.gateway)
        end = time.monotonic() + 30
        while True:
            if self.gateway.poll() is not None:
                raise BenchError(f"berth serve exited {self.gateway.returncode}: {self.gateway_log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > end:
                    raise BenchError("berth serve did not listen in 30 s") from None
                time.sleep(0.05)

    def gateway_log(self) -> str:
        return (self.work / "gateway.log").read_text(errors="replace")[-3000:]

    def add_user(self, name: str) -> None:
        self.users.append(name)
        self.berth_cli("key", "add", name, f"{self.key}.pub")

    def drop_user_host(self, name: str) -> None:
        docker("rm", "-f", "-v", f"berth-{name}", check=False)
        docker("volume", "rm", "-f", f"berth-{name}-docker", check=False)
        docker("network", "rm", f"berth-{name}", check=False)

    def start_sshd_baseline(self) -> None:
        net = f"berth-bench-{self.tag}"
        vol = f"{self.sshd_name}-docker"
        docker("network", "create", net)
        self.networks.append(net)
        self.volumes.append(vol)
        self.containers.append(self.sshd_name)
        docker("run", "-d", "--name", self.sshd_name, "--network", net,
               "-v", f"{vol}:/var/lib/docker", *HOST_PROFILE, SSHD_IMAGE)  # fmt: skip
        end = time.monotonic() + 120
        while docker("exec", self.sshd_name, "docker", "version", check=False).returncode != 0:
            if time.monotonic() > end:
                logs = docker("logs", "--tail", "20", self.sshd_name, check=False)
                raise BenchError(f"openssh-dind baseline never got ready: {logs.stderr.decode()}")
            time.sleep(0.2)
        # The adduserkey habit: copy the key in through the engine.
        docker("exec", "-i", self.sshd_name, "sh", "-c",
               "umask 077; mkdir -p /root/.ssh; cat >>/root/.ssh/authorized_keys",
               input=Path(f"{self.key}.pub").read_bytes())  # fmt: skip
        self.sshd_ip = docker_out("inspect", "-f",
                                  "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                                  self.sshd_name)  # fmt: skip
        end = time.monotonic() + 30
        while True:
            try:
                socket.create_connection((self.sshd_ip, 22), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > end:
                    raise BenchError(f"sshd at {self.sshd_ip}:22 never answered") from None
                time.sleep(0.1)

    def write_ssh_config(self) -> None:
        self.ssh_config.write_text(
            f"""Host berth
  HostName 127.0.0.1
  Port {self.port}
  User {self.user}
Host sshd
  HostName {self.sshd_ip}
  Port 22
  User root
Host *
  BatchMode yes
  StrictHostKeyChecking no
  UserKnownHostsFile {self.work}/known_hosts
  UpdateHostKeys no
  IdentitiesOnly yes
  IdentityAgent none
  IdentityFile {self.key}
  LogLevel ERROR
  ConnectTimeout 30
  ControlMaster no
  ControlPath none
"""
        )

    # -- facts

    @property
    def berth_host(self) -> str:
        return f"berth-{self.user}"

    @property
    def inner_sock(self) -> Path:
        return self.state / "run" / self.user / "docker.sock"

    def negotiated(self, host: str) -> str:
        out = run(self.ssh(host, "-v", "true"), check=False)
        err = out.stderr.decode(errors="replace")
        kex = re.search(r"kex: algorithm: (\S+)", err)
        key = re.search(r"kex: host key algorithm: (\S+)", err)
        cipher = re.search(r"kex: server->client cipher: (\S+)", err)
        return ", ".join(m.group(1) for m in (kex, key, cipher) if m)

    # -- teardown

    def close(self) -> None:
        for child in self.children:
            if child.poll() is None:
                child.terminate()
        for child in self.children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
        for c in self.containers:
            docker("rm", "-f", "-v", c, check=False)
        for user in self.users:
            self.drop_user_host(user)
        for v in self.volumes:
            docker("volume", "rm", "-f", v, check=False)
        for n in self.networks:
            docker("network", "rm", n, check=False)
        if self.args.keep:
            say(f"kept {self.work}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)


def ensure_tools() -> None:
    """Installs the OpenSSH client and the docker CLI when missing."""
    want = {"ssh": "openssh-client", "ssh-keygen": "openssh-client", "docker": "docker.io"}
    missing = sorted({pkg for tool, pkg in want.items() if shutil.which(tool) is None})
    if not missing:
        return
    if os.geteuid() != 0:
        raise BenchError(f"missing {', '.join(missing)} and not root to install them")
    say(f"installing {' '.join(missing)} (apt-get)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "-o", "DPkg::Lock::Timeout=300", "-qq", "update"], env=env, timeout=900)
    run(["apt-get", "-o", "DPkg::Lock::Timeout=300", "-qq", "-y", "install",
         "--no-install-recommends", *missing], env=env, timeout=900)  # fmt: skip


# ---------------------------------------------------------------- results


class Results:
    """Raw samples and the summary rows built from them."""

    def __init__(self):
        self.samples: list[dict] = []
        self.rows: list[dict] = []
        self.errors: list[str] = []
        self.notes: list[str] = []

    def add(self, workload: str, variant: str, run_no: int, value: float, unit: str) -> None:
        self.samples.append(
            {"workload": workload, "variant": variant, "run": run_no, "value": value, "unit": unit}
        )

    def values(self, workload: str, variant: str) -> list[float]:
        return [s["value"] for s in self.samples if s["workload"] == workload and s["variant"] == variant]

    def median(self, workload: str, variant: str) -> float | None:
        v = self.values(workload, variant)
        return statistics.median(v) if v else None

    def row(self, workload, measure, berth, baseline, baseline_name, ratio, target, ok, unit) -> None:
        self.rows.append(
            {"workload": workload, "measure": measure, "berth": berth, "baseline": baseline,
             "baseline_name": baseline_name, "ratio": ratio, "target": target, "ok": ok, "unit": unit}
        )  # fmt: skip


def interleave(res: Results, workload: str, variants: dict, runs: int, unit: str, warmup: bool) -> None:
    """Runs each variant `runs` times, A B C then C B A, recording each value."""
    names = list(variants)
    if warmup:
        for name in names:
            variants[name]()
    for i in range(runs):
        order = names if i % 2 == 0 else list(reversed(names))
        for name in order:
            res.add(workload, name, i, variants[name](), unit)


def compare(res, workload, measure, berth_v, base_v, target_op, target, unit, higher_is_better) -> None:
    b = res.median(workload, berth_v)
    o = res.median(workload, base_v)
    if b is None or o is None or o == 0:
        return
    ratio = b / o
    ok = ratio >= target if target_op == ">=" else ratio <= target
    res.row(workload, measure, b, o, base_v, ratio, f"{target_op} {target} x {base_v}", ok, unit)


# ---------------------------------------------------------------- workloads


def w_warm_login(rig: Rig, res: Results, runs: int, warmup: bool) -> None:
    w = "1 warm login: ssh HOST true"
    interleave(res, w, {
        "berth": lambda: timed(rig.ssh("berth", "true")),
        "openssh-dind": lambda: timed(rig.ssh("sshd", "true")),
        "direct (docker exec)": lambda: timed(["docker", "exec", rig.berth_host, "true"]),
    }, runs, "s", warmup)  # fmt: skip
    compare(res, w, "median s", "berth", "openssh-dind", "<=", 0.8, "s", False)
    compare(res, w, "median s", "berth", "direct (docker exec)", "<=", float("inf"), "s", False)


def w_api_round_trip(rig: Rig, res: Results, runs: int, warmup: bool) -> None:
    w = "2 docker API round trip: docker version"
    cmd = ["docker", "version"]
    interleave(res, w, {
        "berth ssh://": lambda: timed(cmd, env=rig.env(DOCKER_HOST="ssh://berth")),
        "openssh-dind ssh://": lambda: timed(cmd, env=rig.env(DOCKER_HOST="ssh://sshd")),
        "direct (local inner socket)": lambda: timed(cmd, env=rig.env(DOCKER_HOST=f"unix://{rig.inner_sock}")),
    }, runs, "s", warmup)  # fmt: skip
    compare(res, w, "median s", "berth ssh://", "openssh-dind ssh://", "<=", 0.6, "s", False)
    compare(res, w, "median s", "berth ssh://", "direct (local inner socket)", "<=", float("inf"), "s", False)


def read_all(cmd: list, size: int) -> float:
    """Runs `cmd`, counts its stdout; returns MB/s. The count must be `size`."""
    start = time.perf_counter()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    n = 0
    fd = p.stdout.fileno()
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            break
        n += len(chunk)
    err = p.stderr.read()
    rc = p.wait()
    elapsed = time.perf_counter() - start
    if rc != 0 or n != size:
        raise BenchError(f"{cmd_str(cmd)}: exit {rc}, {n} of {size} bytes: {err.decode(errors='replace')[-500:]}")
    return size / elapsed / 1e6


def write_all(cmd: list, size: int) -> float:
    """Feeds `size` zero bytes to `cmd` (which runs `wc -c`); returns MB/s."""
    start = time.perf_counter()
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out: list[bytes] = []
    reader = threading.Thread(target=lambda: out.append(p.stdout.read()))
    reader.start()
    block = bytes(1 << 20)
    left = size
    try:
        while left:
            n = min(left, len(block))
            p.stdin.write(block[:n] if n < len(block) else block)
            left -= n
        p.stdin.close()
    except BrokenPipeError:
        pass
    rc = p.wait()
    reader.join()
    elapsed = time.perf_counter() - start
    got = out[0].strip() if out else b""
    if rc != 0 or got != str(size).encode():
        err = p.stderr.read().decode(errors="replace")[-500:]
        raise BenchError(f"{cmd_str(cmd)}: exit {rc}, remote counted {got!r} of {size}: {err}")
    return size / elapsed / 1e6


def offers_cipher(rig: Rig, host: str, cipher: str) -> bool:
    """Whether `host` negotiates `cipher`; any other failure is an error."""
    out = run(rig.ssh(host, "true", cipher=cipher), check=False, timeout=60)
    if out.returncode == 0:
        return True
    err = run(rig.ssh(host, "-v", "true", cipher=cipher), check=False, timeout=60).stderr.decode(errors="replace")
    if "no matching cipher" in err:
        return False
    raise BenchError(f"ssh -c {cipher} {host} true failed: {err[-500:]}")


def w_channel_throughput(rig: Rig, res: Results, runs: int, warmup: bool, size: int) -> None:
    for cipher in CIPHERS:
        short = cipher.split("@")[0]
        missing = [h for h in ("berth", "sshd") if not offers_cipher(rig, h, cipher)]
        if missing:
            who = " and ".join("berth" if h == "berth" else "openssh-dind" for h in missing)
            res.notes.append(f"workload 3: {who} does not offer {cipher}; not measured")
            if missing == ["berth"]:
                res.row(f"3 channel throughput ({short})", "cipher offered", None, None, "openssh-dind",
                        None, "offered by both", False, "MB/s")  # fmt: skip
            continue
        w = f"3 channel throughput down ({short}): ssh HOST 'head -c {human(size)} /dev/zero'"
        down = f"head -c {size} /dev/zero"
        interleave(res, w, {
            "berth": lambda: read_all(rig.ssh("berth", down, cipher=cipher), size),
            "openssh-dind": lambda: read_all(rig.ssh("sshd", down, cipher=cipher), size),
        }, runs, "MB/s", warmup)  # fmt: skip
        compare(res, w, "median MB/s", "berth", "openssh-dind", ">=", 1.0, "MB/s", True)
        w = f"3 channel throughput up ({short}): ssh HOST 'wc -c' <{human(size)}"
        interleave(res, w, {
            "berth": lambda: write_all(rig.ssh("berth", "wc -c", cipher=cipher), size),
            "openssh-dind": lambda: write_all(rig.ssh("sshd", "wc -c", cipher=cipher), size),
        }, runs, "MB/s", warmup)  # fmt: skip
        compare(res, w, "median MB/s", "berth", "openssh-dind", ">=", 1.0, "MB/s", True)
    # Where the bytes go without any SSH: the engine's exec stream alone.
    w = f"3 channel throughput down (no ssh): docker exec HOST head -c {human(size)}"
    interleave(res, w, {
        "direct (docker exec)": lambda: read_all(["docker", "exec", rig.berth_host, "head", "-c", str(size), "/dev/zero"], size),
    }, runs, "MB/s", warmup)  # fmt: skip


def human(n: int) -> str:
    for unit, f in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= f and n % f == 0:
            return f"{n // f}{unit}"
    return str(n)


def make_load_tar(rig: Rig) -> tuple[Path, str]:
    """An image tar to `docker load`: ~450 MB (full) or ~1 MB (smoke)."""
    tar = rig.work / "load.tar"
    if rig.smoke:
        root = rig.work / "tiny"
        root.mkdir()
        (root / "blob").write_bytes(os.urandom(1 << 20))
        layer = rig.work / "tiny.tar"
        run(["tar", "-C", str(root), "-cf", str(layer), "."])
        docker("import", str(layer), TINY_IMAGE)
        image = TINY_IMAGE
    else:
        # berth-host (~365 MB) plus 85 MB that does not compress or dedupe.
        dockerfile = f"FROM {HOST_IMAGE}\nRUN head -c 89128960 /dev/urandom >/blob\n"
        if docker("image", "inspect", LOAD_IMAGE, check=False).returncode != 0:
            say(f"building {LOAD_IMAGE}")
            docker("build", "-q", "-t", LOAD_IMAGE, "-", input=dockerfile.encode(), timeout=900)
        image = LOAD_IMAGE
    docker("save", "-o", str(tar), image, timeout=900)
    return tar, image


def w_socket_throughput(rig: Rig, res: Results, runs: int, warmup: bool) -> None:
    tar, image = make_load_tar(rig)
    size = tar.stat().st_size
    fwd = rig.work / "fwd.sock"
    fwd_sshd = rig.work / "fwd-sshd.sock"
    for host, sock in (("berth", fwd), ("sshd", fwd_sshd)):
        p = subprocess.Popen(
            rig.ssh(host, "-N", "-o", "ExitOnForwardFailure=yes", "-L", f"{sock}:/var/run/docker.sock"),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        rig.children.append(p)
        end = time.monotonic() + 30
        while not sock.exists():
            if p.poll() is not None or time.monotonic() > end:
                raise BenchError(f"ssh -L to {host} failed: {p.stderr.read().decode(errors='replace') if p.poll() is not None else 'timeout'}")
            time.sleep(0.05)

    def load(docker_host: str) -> float:
        start = time.perf_counter()
        run(["docker", "load", "-q", "-i", str(tar)], env=rig.env(DOCKER_HOST=docker_host), timeout=1800)
        return size / (time.perf_counter() - start) / 1e6

    w = f"4 socket throughput: docker load {size / 1e6:.0f} MB"
    # Each run loads an image the inner engine already holds (one load is
    # done first, below), so the engine verifies every layer but writes
    # none: this measures the socket path, not the disk.
    load(f"unix://{rig.inner_sock}")
    load(f"unix://{fwd_sshd}")
    interleave(res, w, {
        "berth ssh -L": lambda: load(f"unix://{fwd}"),
        "berth ssh://": lambda: load("ssh://berth"),
        "openssh-dind ssh -L": lambda: load(f"unix://{fwd_sshd}"),
        "openssh-dind ssh://": lambda: load("ssh://sshd"),
        "direct (local inner socket)": lambda: load(f"unix://{rig.inner_sock}"),
    }, runs, "MB/s", warmup)  # fmt: skip
    compare(res, w, "median MB/s", "berth ssh -L", "direct (local inner socket)", ">=", 0.9, "MB/s", True)
    compare(res, w, "median MB/s", "berth ssh://", "direct (local inner socket)", ">=", 0.9, "MB/s", True)
    compare(res, w, "median MB/s", "berth ssh -L", "openssh-dind ssh -L", ">=", 0.0, "MB/s", True)
    compare(res, w, "median MB/s", "berth ssh://", "openssh-dind ssh://", ">=", 0.0, "MB/s", True)
    tar.unlink()


def raw_host(rig: Rig, name: str, own_network: bool) -> tuple[Path, list[str]]:
    """A raw host laid out like berth's (same image, profile, volume and run
    dir), registered for cleanup: its run dir and its `docker run` arguments.
    With `own_network`, on a bridge network of its own, made now (before any
    clock starts, as `berth key add` makes berth's)."""
    rd = rig.work / "raw-run" / name
    rd.mkdir(parents=True)
    rig.containers.append(name)
    rig.volumes.append(f"{name}-docker")
    network = []
    if own_network:
        docker("network", "create", name)
        rig.networks.append(name)
        network = ["--network", name]
    return rd, ["run", "-d", "--name", name, "-v", f"{name}-docker:/var/lib/docker",
                "-v", f"{rd}:/run/berth", *network, *HOST_PROFILE, HOST_IMAGE]  # fmt: skip


def w_cold_start(rig: Rig, res: Results, runs: int, warmup: bool) -> None:
    counter = iter(range(10_000))

    def berth_cold() -> float:
        user = f"{rig.user}c{next(counter)}"
        rig.add_user(user)
        try:
            return timed(rig.ssh("berth", "docker info >/dev/null", login=user), timeout=300)
        finally:
            rig.drop_user_host(user)

    def raw_cold(own_network: bool) -> float:
        name = f"berth-bench-raw-{rig.tag}-{next(counter)}"
        rd, run_args = raw_host(rig, name, own_network)
        try:
            start = time.perf_counter()
            docker(*run_args)
            wait_ping(rd / "docker.sock")
            return time.perf_counter() - start
        finally:
            docker("rm", "-f", "-v", name, check=False)
            docker("volume", "rm", "-f", f"{name}-docker", check=False)
            if own_network:
                docker("network", "rm", name, check=False)

    # berth puts each host on a bridge network of its own (isolation);
    # the raw engine on its default bridge skips that, so a raw run on a
    # network of its own is shown beside it to price the difference.
    w = "5 cold start: first login until docker info"
    interleave(res, w, {
        "berth": berth_cold,
        "raw docker run + /_ping": lambda: raw_cold(False),
        "raw docker run, own bridge + /_ping": lambda: raw_cold(True),
    }, runs, "s", warmup)  # fmt: skip
    compare(res, w, "median s", "berth", "raw docker run + /_ping", "<=", 1.15, "s", False)
    compare(res, w, "median s", "berth", "raw docker run, own bridge + /_ping", "<=", float("inf"), "s", False)

    # Resume: one stopped host each, started again every run.
    resume_user = f"{rig.user}r"
    rig.add_user(resume_user)
    run(rig.ssh("berth", "true", login=resume_user), timeout=300)
    raws = {}
    for own_network in (False, True):
        raw = f"berth-bench-raw-{rig.tag}-resume{'-net' if own_network else ''}"
        rd, run_args = raw_host(rig, raw, own_network)
        docker(*run_args)
        wait_ping(rd / "docker.sock")
        raws[own_network] = (raw, rd)

    def berth_resume() -> float:
        rig.berth_cli("host", "stop", resume_user, timeout=120)
        return timed(rig.ssh("berth", "docker info >/dev/null", login=resume_user), timeout=300)

    def raw_resume(own_network: bool) -> float:
        raw, rd = raws[own_network]
        docker("stop", "-t", "60", raw, timeout=120)
        start = time.perf_counter()
        docker("start", raw)
        wait_ping(rd / "docker.sock")
        return time.perf_counter() - start

    w = "5 resume: stopped host until docker info"
    interleave(res, w, {
        "berth": berth_resume,
        "raw docker start + /_ping": lambda: raw_resume(False),
        "raw docker start, own bridge + /_ping": lambda: raw_resume(True),
    }, runs, "s", warmup)  # fmt: skip
    compare(res, w, "median s", "berth", "raw docker start + /_ping", "<=", 1.15, "s", False)
    compare(res, w, "median s", "berth", "raw docker start, own bridge + /_ping", "<=", float("inf"), "s", False)


def hold_sessions(rig: Rig, host: str, n: int, hold_s: int, logins: list[str] | None = None) -> list:
    """Opens n sessions that each print a line and then sleep; returns once all printed."""
    procs: list[subprocess.Popen] = []
    # At most 20 logins in flight at a time, as a busy team would, not a SYN flood.
    slots = threading.Semaphore(20)
    failed: list[str] = []

    def watch(p):
        line = p.stdout.readline()
        if line.strip() != b"ready":
            failed.append(p.stderr.read(2000).decode(errors="replace") if p.poll() is not None else "no output")
        slots.release()

    for i in range(n):
        login = logins[i % len(logins)] if logins else None
        slots.acquire()
        p = subprocess.Popen(
            rig.ssh(host, f"echo ready; exec sleep {hold_s}", login=login),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        procs.append(p)
        rig.children.append(p)
        threading.Thread(target=watch, args=(p,), daemon=True).start()
    for _ in range(20):
        slots.acquire()
    if failed:
        raise BenchError(f"{len(failed)} of {n} sessions to {host} failed: {failed[0]}")
    return procs


def end_sessions(rig: Rig, procs: list, container: str) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        rig.children.remove(p)
    # The sleeps are bounded anyway; end them now so the next step starts clean.
    docker("exec", container, "sh", "-c", "pkill -x sleep || true", check=False)


def w_idle_sessions(rig: Rig, res: Results, counts: list[int], hold_s: int) -> None:
    gw = rig.gateway.pid
    for n in counts:
        w = f"6 load: {n} idle sessions held open"
        time.sleep(1)
        rss0 = proc_rss_mib(gw)
        cpu0 = proc_cpu_seconds(gw)
        t0 = time.perf_counter()
        procs = hold_sessions(rig, "berth", n, hold_s)
        opened = time.perf_counter() - t0
        cpu1 = proc_cpu_seconds(gw)
        time.sleep(3)
        cpu2 = proc_cpu_seconds(gw)
        time.sleep(10)
        cpu3 = proc_cpu_seconds(gw)
        rss = proc_rss_mib(gw)
        res.add(w, "berth gateway RSS", 0, rss, "MiB")
        res.add(w, "berth gateway RSS before", 0, rss0, "MiB")
        res.add(w, "berth gateway CPU s to open all", 0, cpu1 - cpu0, "s")
        res.add(w, "berth gateway CPU % while idle", 0, (cpu3 - cpu2) / 10 * 100, "%")
        res.add(w, "time to open all", 0, opened, "s")
        end_sessions(rig, procs, rig.berth_host)
        if n == counts[-1]:
            res.row(w, "gateway RSS MiB", rss, None, "", None, "< 150 MiB", rss < 150, "MiB")
        # For scale: what sshd in the baseline container uses for the same count.
        procs = hold_sessions(rig, "sshd", n, hold_s)
        time.sleep(3)
        pids = docker_out("top", rig.sshd_name, "-eo", "pid,comm").splitlines()[1:]
        pss = sum(proc_pss_mib(int(l.split()[0])) for l in pids if l.split()[1:2] == ["sshd"])
        res.add(w, "openssh-dind sshd PSS (all sshd processes)", 0, pss, "MiB")
        end_sessions(rig, procs, rig.sshd_name)


def w_simultaneous_logins(rig: Rig, res: Results, logins: int, users: int, runs: int) -> None:
    names = [rig.user] + [f"{rig.user}l{i}" for i in range(1, users)]
    for name in names[1:]:
        rig.add_user(name)
        run(rig.ssh("berth", "true", login=name), timeout=300)
    w = f"6 load: {logins} simultaneous logins ({users} users), time to first byte"

    def burst(host: str, spread: bool) -> list[float]:
        barrier = threading.Barrier(logins)
        out: list[float] = []
        errs: list[str] = []

        def one(i):
            login = names[i % len(names)] if spread else None
            cmd = rig.ssh(host, "echo x", login=login)
            barrier.wait()
            start = time.perf_counter()
            p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            first = p.stdout.read(1)
            t = time.perf_counter() - start
            p.stdout.read()
            err = p.stderr.read()
            if p.wait() != 0 or first != b"x":
                errs.append(err.decode(errors="replace")[-300:])
            else:
                out.append(t)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(logins)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errs:
            raise BenchError(f"{len(errs)} of {logins} logins to {host} failed: {errs[0]}")
        return out

    for i in range(runs):
        order = [("berth", True), ("sshd", False)]
        if i % 2:
            order.reverse()
        for host, spread in order:
            variant = "berth" if host == "berth" else "openssh-dind (one host)"
            for v in burst(host, spread):
                res.add(w, variant, i, v, "s")
    b = res.values(w, "berth")
    o = res.values(w, "openssh-dind (one host)")
    p99 = percentile(b, 99)
    res.row(w, "p50 s", percentile(b, 50), percentile(o, 50), "openssh-dind (one host)",
            percentile(b, 50) / percentile(o, 50), "(none)", None, "s")  # fmt: skip
    res.row(w, "p99 s", p99, percentile(o, 99), "openssh-dind (one host)", p99 / percentile(o, 99),
            "p99 < 1 s", p99 < 1.0, "s")  # fmt: skip


# ---------------------------------------------------------------- report


def machine_facts(rig: Rig) -> list[tuple[str, str]]:
    def sh(cmd) -> str:
        try:
            return run(cmd, check=False, timeout=30).stdout.decode(errors="replace").strip()
        except BenchError:
            return "?"

    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = "?"
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    commit = sh(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    if sh(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"]):
        commit += " (with uncommitted changes)"
    return [
        ("date", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")),
        ("cores", f"{os.cpu_count()} ({cpu})"),
        ("memory", mem),
        ("kernel", platform.release()),
        ("load average at start", " ".join(f"{x:.2f}" for x in os.getloadavg())),
        ("engine", docker_out("version", "-f", "{{.Server.Version}} (API {{.Server.APIVersion}})")),
        ("docker CLI", docker_out("version", "-f", "{{.Client.Version}}")),
        ("OpenSSH client", sh(["ssh", "-V"]) or run(["ssh", "-V"], check=False).stderr.decode().strip()),
        ("berth", f"{sh([str(rig.berth), '--version'])}, commit {commit}"),
        ("berth negotiates", rig.negotiated("berth")),
        ("openssh-dind negotiates", rig.negotiated("sshd")),
    ]


def fmt(v, unit: str) -> str:
    if v is None:
        return "–"
    if unit == "s":
        return f"{v * 1000:.1f} ms" if v < 1 else f"{v:.2f} s"
    if unit == "MB/s":
        return f"{v:.0f} MB/s"
    if unit == "MiB":
        return f"{v:.1f} MiB"
    if unit == "%":
        return f"{v:.1f} %"
    return f"{v:.3g} {unit}"


def write_report(path: Path, facts, res: Results, mode: str, command: str) -> None:
    lines = [
        "# berth benchmarks",
        "",
        f"Regenerated by `{command}` ({mode}); do not edit by hand.",
        "",
    ]
    lines += [
        "> Preliminary: measured on a shared machine while other work was running on it.",
        "",
    ] if os.environ.get("BENCH_PRELIMINARY") else []
    lines += ["## Machine", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in facts]
    lines += ["", "## Targets", "",
              "| workload | measure | berth | baseline | baseline is | ratio | target | result |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in res.rows:
        ratio = "–" if r["ratio"] is None else f"{r['ratio']:.2f}"
        ok = {True: "pass", False: "**miss**", None: "–"}[r["ok"]]
        if r["target"].startswith(("<= inf", ">= 0.0")):
            target, ok = "(for scale)", "–"
        else:
            target = r["target"]
        lines.append(
            f"| {r['workload']} | {r['measure']} | {fmt(r['berth'], r['unit'])} | "
            f"{fmt(r['baseline'], r['unit'])} | {r['baseline_name']} | {ratio} | {target} | {ok} |"
        )
    lines += ["", "## All medians", "", "| workload | variant | runs | median | min | max |", "|---|---|---|---|---|---|"]
    seen = []
    for s in res.samples:
        key = (s["workload"], s["variant"])
        if key not in seen:
            seen.append(key)
    for w, v in seen:
        vals = res.values(w, v)
        unit = next(s["unit"] for s in res.samples if s["workload"] == w and s["variant"] == v)
        lines.append(
            f"| {w} | {v} | {len(vals)} | {fmt(statistics.median(vals), unit)} | "
            f"{fmt(min(vals), unit)} | {fmt(max(vals), unit)} |"
        )
    if res.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in res.notes]
    if res.errors:
        lines += ["", "## Workloads that could not run", ""] + [f"- {e}" for e in res.errors]
    lines.append("")
    path.write_text("\n".join(lines))


def write_csv(path: Path, res: Results) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["workload", "variant", "run", "value", "unit"])
        w.writeheader()
        w.writerows(res.samples)


# ---------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="one run each, tiny sizes (for CI)")
    ap.add_argument("--berth", default=str(REPO / "target/release/berth"), help="berth binary")
    ap.add_argument("--runs", type=int, default=None, help="runs per variant (full: 10)")
    ap.add_argument("--size", default=None, help="bytes per channel throughput run (full: 2G)")
    ap.add_argument("--only", default="", help="comma-separated workload numbers, e.g. 1,2,6")
    ap.add_argument("--sessions", default=None, help="idle session counts (full: 100,500)")
    ap.add_argument("--logins", type=int, default=None, help="simultaneous logins (full: 50)")
    ap.add_argument("--login-users", type=int, default=None, help="users they spread over (full: 10)")
    ap.add_argument("--out", default=None, help="where RESULTS.md and results.csv go (full: bench/)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    ap.add_argument("--deadline", type=int, default=None, help="seconds before giving up (smoke: 600)")
    args = ap.parse_args()

    smoke = args.smoke
    runs = args.runs or (1 if smoke else 10)
    size = parse_size(args.size) if args.size else (1 << 20 if smoke else 2 << 30)
    sessions = [int(x) for x in (args.sessions or ("5" if smoke else "100,500")).split(",")]
    logins = args.logins or (5 if smoke else 50)
    login_users = args.login_users or (2 if smoke else 10)
    only = set(args.only.split(",")) - {""}
    warmup = not smoke
    out_dir = Path(args.out) if args.out else None

    # 500 sessions need more descriptors than the usual 1024 (the gateway
    # inherits this limit too).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    # Nothing here may hang for ever (a stuck login would stall CI): past
    # the deadline the workload in progress fails, loudly.
    def deadline(*_):
        raise BenchError(f"bench deadline ({limit} s) passed")

    limit = args.deadline or (600 if smoke else 4 * 3600)
    signal.signal(signal.SIGALRM, deadline)
    signal.alarm(limit)
    if "DOCKER_HOST" not in os.environ:
        say("DOCKER_HOST is not set; using the docker CLI's default engine")

    rig = Rig(args)
    res = Results()
    started = time.monotonic()
    workloads = [
        ("1", "warm login", lambda: w_warm_login(rig, res, runs * (1 if smoke else 3), warmup)),
        ("2", "docker API round trip", lambda: w_api_round_trip(rig, res, runs * (1 if smoke else 3), warmup)),
        ("3", "channel throughput", lambda: w_channel_throughput(rig, res, runs, warmup, size)),
        ("4", "socket throughput", lambda: w_socket_throughput(rig, res, runs, warmup)),
        ("5", "cold start and resume", lambda: w_cold_start(rig, res, runs * (1 if smoke else 3), False)),
        ("6a", "idle sessions", lambda: w_idle_sessions(rig, res, sessions, 60 if smoke else 300)),
        ("6b", "simultaneous logins", lambda: w_simultaneous_logins(rig, res, logins, login_users, runs)),
    ]
    facts = []
    try:
        rig.setup()
        facts = machine_facts(rig)
        for key, name, fn in workloads:
            if only and key not in only and key.rstrip("ab") not in only:
                continue
            say(f"workload {key}: {name}")
            t = time.monotonic()
            try:
                fn()
            except BenchError as e:
                res.errors.append(f"{key} {name}: {e}")
                say(f"workload {key} FAILED: {e}")
            say(f"workload {key} took {time.monotonic() - t:.0f} s")
        if rig.gateway.poll() is not None:
            res.errors.append(f"berth serve died (exit {rig.gateway.returncode}): {rig.gateway_log()}")
    except BenchError as e:
        res.errors.append(f"setup: {e}")
    finally:
        signal.alarm(0)
        log_tail = rig.gateway_log() if (rig.work / "gateway.log").exists() else ""
        rig.close()

    res.notes += [
        f"runs per variant: {runs} (workloads 1, 2 and 5: {runs * (1 if smoke else 3)}), interleaved A B C / C B A"
        + (", after one warm-up run each (none in workload 5: each of its runs is a first start)" if warmup else ""),
        "workload 5: berth's user is added with `berth key add` (which makes the user's volume and network) "
        "before the clock starts; the own-bridge raw variant gets its network made before its clock starts too",
        "openssh-dind: berth-host + openssh-server, sshd with UsePAM no and MaxStartups 200, key copied in "
        "with docker exec; same capability profile and engine as berth's hosts; reached at its container address",
        "workload 4 loads an image the inner engine already holds (loaded once before timing): the layers are "
        "read and verified, not written, so the socket path is what is measured",
        f"workload 6b: {logins} logins spread over {login_users} berth users whose hosts are running "
        f"(one dind host per user; {login_users} hosts instead of {logins} keeps the bench's memory bounded); "
        "the OpenSSH baseline takes all logins on its single host",
        f"total bench time: {time.monotonic() - started:.0f} s",
    ]
    mode = "smoke" if smoke else "full"
    extra = " ".join(a for a in sys.argv[1:] if a not in ("--smoke", "--keep"))
    command = "make bench-smoke" if smoke else f'make bench BENCH_ARGS="{extra}"' if extra else "make bench"
    if out_dir is None and smoke:
        out_dir = Path(tempfile.gettempdir()) / "berth-bench-smoke"
    out_dir = out_dir or BENCH
    out_dir.mkdir(parents=True, exist_ok=True)
    if facts:
        write_report(out_dir / "RESULTS.md", facts, res, mode, command)
        write_csv(out_dir / "results.csv", res)
        say(f"wrote {out_dir / 'RESULTS.md'} and {out_dir / 'results.csv'}")
        if smoke:
            print((out_dir / "RESULTS.md").read_text())
    if res.errors:
        for e in res.errors:
            say(f"ERROR: {e}")
        if log_tail:
            say(f"gateway log tail:\n{log_tail}")
        return 1
    return 0


def parse_size(s: str) -> int:
    m = re.fullmatch(r"(\d+)([KMG]?)", s.strip().upper())
    if not m:
        raise SystemExit(f"bad size {s!r}; use e.g. 64M or 2G")
    return int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[m.group(2)]


if __name__ == "__main__":
    sys.exit(main())
