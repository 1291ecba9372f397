#!/usr/bin/env bash
# Host lifecycle timings: berth's cold provision and resume, each as seen by
# a user (`ssh USER true`, wall clock), beside the raw engine doing the same
# work with the same image, flags and volume layout (`docker run` or
# `docker start`, then polling the inner dockerd's /_ping until 200).
# Median of N runs (default 5).
#
#   bench/lifecycle.sh [N]
#
# Needs a working engine (DOCKER_HOST, or scripts/engine.sh finds one), the
# host image (`make image`) and a built berth (BERTH=path; default
# target/release/berth, else target/debug/berth).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

N=${1:-5}
IMAGE=${IMAGE:-berth-host:latest}
if ! docker info >/dev/null 2>&1; then
	eval "export $(scripts/engine.sh)"
fi
BERTH=${BERTH:-}
if [[ -z $BERTH ]]; then
	for b in target/release/berth target/debug/berth; do
		[[ -x $b ]] && BERTH=$b && break
	done
fi
[[ -x $BERTH ]] || { echo "no berth binary; run cargo build --release" >&2; exit 1; }

WORK=$(mktemp -d /tmp/berth-lifecycle.XXXXXX)
STATE=$WORK/state
PORT=$((20000 + RANDOM % 20000))
TAG=lc$$
USERS=()
RAW=()
SERVE_PID=
cleanup() {
	[[ -n $SERVE_PID ]] && kill "$SERVE_PID" 2>/dev/null && wait "$SERVE_PID" 2>/dev/null
	for u in "${USERS[@]}"; do
		docker rm -f -v "berth-$u" >/dev/null 2>&1 || :
		docker volume rm -f "berth-$u-docker" >/dev/null 2>&1 || :
		docker network rm "berth-$u" >/dev/null 2>&1 || :
	done
	for c in "${RAW[@]}"; do
		docker rm -f -v "$c" >/dev/null 2>&1 || :
		docker volume rm -f "$c-docker" >/dev/null 2>&1 || :
		docker network rm "$c" >/dev/null 2>&1 || :
	done
	rm -rf "$WORK"
}
trap cleanup EXIT

now_ms() { echo $(($(date +%s%N) / 1000000)); }
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

ssh-keygen -q -t ed25519 -N '' -f "$WORK/key"
"$BERTH" serve --state-dir "$STATE" --listen "127.0.0.1:$PORT" --image "$IMAGE" \
	--idle-timeout 0 >"$WORK/serve.log" 2>&1 &
SERVE_PID=$!
for _ in $(seq 100); do
	(exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
	sleep 0.1
done
SSH=(ssh -F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=no
	-o "UserKnownHostsFile=$WORK/known_hosts" -o IdentitiesOnly=yes
	-o IdentityAgent=none -o LogLevel=ERROR -i "$WORK/key" -p "$PORT")
login() { "${SSH[@]}" "$1@127.0.0.1" true 2>/dev/null; }

wait_ping() {
	until curl -sf --max-time 2 --unix-socket "$WORK/run-$1/docker.sock" http://d/_ping >/dev/null 2>&1; do
		sleep 0.002
	done
}
# Raw engine: the same volume and run-dir layout as a berth host, and the
# profile berth uses: --privileged, or where the engine refuses it (as on
# this project's machines) the explicit capability profile.
explicit=(--cap-add ALL --cap-drop SYS_RESOURCE
	--security-opt seccomp=unconfined --security-opt apparmor=unconfined
	--security-opt systempaths=unconfined --device-cgroup-rule 'a *:* rwm'
	-v /sys/fs/cgroup:/sys/fs/cgroup:rw)
raw_privileged=()
if docker run --rm --privileged "$IMAGE" true >/dev/null 2>&1; then
	raw_privileged=(--privileged)
fi

cold=() resume=() warm=() raw_run=() raw_start=()
for i in $(seq "$N"); do
	u=${TAG}u$i
	USERS+=("$u")
	"$BERTH" --state-dir "$STATE" key add "$u" "$WORK/key.pub" >/dev/null
	t=$(now_ms); login "$u"; cold+=($(($(now_ms) - t)))
	t=$(now_ms); login "$u"; warm+=($(($(now_ms) - t)))
	"$BERTH" --state-dir "$STATE" host stop "$u" >/dev/null
	t=$(now_ms); login "$u"; resume+=($(($(now_ms) - t)))

	c=${TAG}raw$i
	RAW+=("$c")
	mkdir -p "$WORK/run-$c"
	docker network create "$c" >/dev/null
	flags=(-v "$c-docker:/var/lib/docker" -v "$WORK/run-$c:/run/berth"
		--network "$c" --stop-timeout 60)
	if ((${#raw_privileged[@]})); then
		flags+=(--privileged)
	else
		flags+=("${explicit[@]}")
	fi
	t=$(now_ms)
	docker run -d --name "$c" "${flags[@]}" "$IMAGE" >/dev/null
	wait_ping "$c"
	raw_run+=($(($(now_ms) - t)))
	docker stop "$c" >/dev/null
	t=$(now_ms)
	docker start "$c" >/dev/null
	wait_ping "$c"
	raw_start+=($(($(now_ms) - t)))
done

printf '%-44s %8s\n' "median of $N, ms" "ms"
printf '%-44s %8s\n' "berth cold provision (ssh u true, 1st login)" "$(median "${cold[@]}")"
printf '%-44s %8s\n' "raw docker run + first /_ping" "$(median "${raw_run[@]}")"
printf '%-44s %8s\n' "berth resume (ssh u true, host stopped)" "$(median "${resume[@]}")"
printf '%-44s %8s\n' "raw docker start + first /_ping" "$(median "${raw_start[@]}")"
printf '%-44s %8s\n' "berth warm login (ssh u true, host running)" "$(median "${warm[@]}")"
echo "runs: cold=${cold[*]} raw_run=${raw_run[*]} resume=${resume[*]} raw_start=${raw_start[*]} warm=${warm[*]}"
