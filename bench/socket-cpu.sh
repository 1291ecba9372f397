#!/usr/bin/env bash
# Where the CPU goes when `docker load` runs through berth: CPU seconds of
# the OpenSSH client, the gateway and the whole machine (/proc/stat) for one
# load through `ssh -L …:/var/run/docker.sock`, beside the same load on the
# host's inner socket. On a machine with few cores this shows the ceiling
# any SSH path has against the local socket.
#
#   scripts/with-engine bench/socket-cpu.sh [CIPHER] [BERTH]
#
# CIPHER defaults to chacha20-poly1305@openssh.com, BERTH to
# target/release/berth. Loads berth-bench-load:latest when the bench has
# built it, else the host image. Each load runs once first so both sides
# load an image whose layers are already present, as `make bench` does.
set -euo pipefail

CIPHER=${1:-chacha20-poly1305@openssh.com}
BERTH=${2:-target/release/berth}
IMAGE=berth-bench-load:latest
docker image inspect "$IMAGE" >/dev/null 2>&1 || IMAGE=berth-host:latest

WORK=$(mktemp -d /tmp/berth-socket-cpu.XXXXXX)
USER_NAME=cpu$$
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
GW='' FW=''
cleanup() {
	[[ -n $FW ]] && kill "$FW" 2>/dev/null || :
	[[ -n $GW ]] && kill "$GW" 2>/dev/null || :
	sleep 1
	docker rm -f -v "berth-$USER_NAME" >/dev/null 2>&1 || :
	docker volume rm -f "berth-$USER_NAME-docker" >/dev/null 2>&1 || :
	docker network rm "berth-$USER_NAME" >/dev/null 2>&1 || :
	rm -rf "$WORK"
}
trap cleanup EXIT

docker save "$IMAGE" -o "$WORK/load.tar"
SIZE=$(stat -c %s "$WORK/load.tar")
ssh-keygen -q -t ed25519 -N '' -f "$WORK/key"
BERTH_STATE_DIR=$WORK/state "$BERTH" key add "$USER_NAME" "$WORK/key.pub" >/dev/null
"$BERTH" serve --state-dir "$WORK/state" --listen "127.0.0.1:$PORT" --image berth-host:latest \
	>"$WORK/gateway.log" 2>&1 &
GW=$!
SSH=(ssh -c "$CIPHER" -i "$WORK/key" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
	-o LogLevel=ERROR -p "$PORT" "$USER_NAME@127.0.0.1")
for _ in $(seq 100); do "${SSH[@]}" true 2>/dev/null && break; sleep 0.1; done
"${SSH[@]}" -N -L "$WORK/fwd.sock:/var/run/docker.sock" &
FW=$!
for _ in $(seq 100); do [[ -S $WORK/fwd.sock ]] && break; sleep 0.1; done
INNER=$WORK/state/run/$USER_NAME/docker.sock

ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
busy() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }
hz=$(getconf CLK_TCK)

measure() { # label socket
	docker -H "unix://$2" load -i "$WORK/load.tar" >/dev/null
	local g0 s0 b0 t0 g1 s1 b1 ms
	g0=$(ticks "$GW") s0=$(ticks "$FW") b0=$(busy) t0=$(date +%s%N)
	docker -H "unix://$2" load -i "$WORK/load.tar" >/dev/null
	ms=$((($(date +%s%N) - t0) / 1000000))
	g1=$(ticks "$GW") s1=$(ticks "$FW") b1=$(busy)
	awk -v l="$1" -v ms="$ms" -v size="$SIZE" -v hz="$hz" -v g=$((g1 - g0)) -v s=$((s1 - s0)) -v b=$((b1 - b0)) \
		'BEGIN { printf "%-22s %6d ms %5d MB/s   CPU s: machine %.2f, gateway %.2f, ssh client %.2f\n", l, ms, size / 1000 / ms, b / hz, g / hz, s / hz }'
}

echo "docker load of $IMAGE ($((SIZE / 1000000)) MB), $CIPHER"
measure "through berth ssh -L" "$WORK/fwd.sock"
measure "local inner socket" "$INNER"
