#!/usr/bin/env bash
# Find or start the Docker engine that berth (and its tests) run against.
#
#   eval "export $(scripts/engine.sh)"    # prints exactly: DOCKER_HOST=unix:///...
#   scripts/engine.sh stop                # stop the private engine, if we started one
#
# Order of preference: the engine named by DOCKER_HOST, the machine's default
# socket, then a private dockerd of our own. The private one keeps all of its
# state apart (data root, exec root, socket, pid file) so it never collides with
# a system engine, and it is detached from the caller so it outlives `make` and
# CI steps: starting an engine is expensive, reusing one is not.
#
# Progress goes to stderr; stdout carries the single DOCKER_HOST line only, so
# the script is safe inside "$(...)".
set -euo pipefail

BASE_RUN=${BERTH_ENGINE_RUN:-/run/berth-engine}
DATA_ROOT=${BERTH_ENGINE_DATA:-/var/lib/berth-engine}
LOG=${BERTH_ENGINE_LOG:-/var/log/berth-engine.log}
SOCK="$BASE_RUN/docker.sock"
PIDFILE="$BASE_RUN/dockerd.pid"
EXEC_ROOT="$BASE_RUN/exec"
DEADLINE=${BERTH_ENGINE_TIMEOUT:-60}
DEFAULT_SOCK=/var/run/docker.sock

say() { printf 'engine: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# Answers when an engine serves its API at $1 (a DOCKER_HOST value). Uses the
# CLI when there is one, because DOCKER_HOST may be ssh:// or tcp://; falls
# back to curl for unix sockets on a machine that has no CLI yet.
answers() {
	local host=$1
	if command -v docker >/dev/null 2>&1; then
		DOCKER_HOST=$host DOCKER_CONTEXT='' timeout 20 docker version \
			--format '{{.Server.Version}}' </dev/null >/dev/null 2>&1
	elif [[ $host == unix://* ]] && command -v curl >/dev/null 2>&1; then
		[[ $(timeout 5 curl -fsS --unix-socket "${host#unix://}" http://engine/_ping 2>/dev/null) == OK ]]
	else
		return 1
	fi
}

emit() {
	# %q keeps `eval "export $(...)"` safe for any value the caller handed us.
	printf 'DOCKER_HOST=%q\n' "$1"
	exit 0
}

# Pid of our private dockerd if it is alive, empty otherwise.
running_pid() {
	local pid
	[[ -r $PIDFILE ]] || return 0
	pid=$(<"$PIDFILE")
	[[ $pid =~ ^[0-9]+$ ]] || return 0
	# The pid may have been recycled since the engine died: check it is dockerd.
	if [[ -r /proc/$pid/comm && $(</proc/"$pid"/comm) == dockerd ]]; then
		echo "$pid"
	fi
}

install_engine() {
	local need=()
	command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
	command -v iptables >/dev/null 2>&1 || need+=(iptables)
	command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
	((${#need[@]})) || return 0
	[[ $(id -u) == 0 ]] || die "missing ${need[*]} and not root: install them or set DOCKER_HOST"
	command -v apt-get >/dev/null 2>&1 || die "missing ${need[*]} and no apt-get: install them or set DOCKER_HOST"
	# Install the whole set at once: one apt transaction is much cheaper than three.
	need=(docker.io iptables debootstrap)
	say "installing ${need[*]} (apt-get)"
	export DEBIAN_FRONTEND=noninteractive
	apt-get -o DPkg::Lock::Timeout=300 -qq update </dev/null >&2
	apt-get -o DPkg::Lock::Timeout=300 -qq -y install --no-install-recommends "${need[@]}" </dev/null >&2
}

start_private() {
	mkdir -p "$BASE_RUN" "$EXEC_ROOT" "$DATA_ROOT" "$(dirname "$LOG")"
	# The whole check-spawn-wait sequence runs under one lock: two callers
	# racing (parallel make, several test binaries) must start one engine, and
	# a late caller must not delete the socket of an engine still starting.
	exec 9>"$BASE_RUN/lock"
	flock -w $((DEADLINE + 30)) 9 || die "timed out waiting for $BASE_RUN/lock"

	if [[ -S $SOCK ]] && answers "unix://$SOCK"; then
		say "using the private engine at $SOCK"
		exec 9>&-
		return 0
	fi
	local pid
	pid=$(running_pid)
	if [[ -n $pid ]]; then
		say "private dockerd already running (pid $pid), waiting for it to answer"
	else
		if [[ -e $PIDFILE ]]; then
			say "removing stale pid file $PIDFILE"
			rm -f "$PIDFILE"
		fi
		# A socket left by a dead engine would make callers connect to nothing.
		rm -f "$SOCK"
		say "starting private dockerd on $SOCK (log: $LOG)"
		printf '\n=== %s engine.sh starting dockerd ===\n' "$(date -Is)" >>"$LOG"
		(
			# Close every inherited descriptor (our lock included): a daemon
			# holding the caller's pipe open would make "$(scripts/engine.sh)"
			# or a CI log reader wait for ever. setsid takes it out of the
			# caller's session so Ctrl-C or a CI step's cleanup spares it.
			for fd in /proc/self/fd/*; do
				fd=${fd##*/}
				if ((fd > 2)); then
					eval "exec $fd>&-" 2>/dev/null || true
				fi
			done
			exec setsid nohup dockerd \
				--data-root "$DATA_ROOT" \
				--exec-root "$EXEC_ROOT" \
				--pidfile "$PIDFILE" \
				-H "unix://$SOCK" \
				</dev/null >>"$LOG" 2>&1
		) &
	fi

	local t0=$SECONDS
	while ((SECONDS - t0 < DEADLINE)); do
		if [[ -S $SOCK ]] && answers "unix://$SOCK"; then
			say "private dockerd answers after $((SECONDS - t0)) s"
			exec 9>&-
			return 0
		fi
		# Fail fast when the daemon has already died instead of sitting out
		# the whole deadline. (The pid file appears a moment after the spawn.)
		if ((SECONDS - t0 >= 3)) && [[ -z $(running_pid) ]]; then
			say "private dockerd exited during start-up; last lines of $LOG:"
			tail -n 40 "$LOG" >&2 || true
			exit 1
		fi
		sleep 0.5
	done
	say "private dockerd did not answer within ${DEADLINE} s; last lines of $LOG:"
	tail -n 40 "$LOG" >&2 || true
	exit 1
}

stop_private() {
	local pid
	pid=$(running_pid)
	if [[ -z $pid ]]; then
		say "private dockerd is not running"
		rm -f "$PIDFILE"
		return 0
	fi
	say "stopping private dockerd (pid $pid)"
	kill -TERM "$pid"
	local t0=$SECONDS
	# Wait well beyond dockerd's own 15 s container shutdown timeout: killing
	# it instead could corrupt the image store, so we never escalate.
	while [[ -d /proc/$pid ]] && ((SECONDS - t0 < 90)); do
		sleep 0.5
	done
	if [[ -d /proc/$pid ]]; then
		die "dockerd (pid $pid) still running after 90 s; see $LOG"
	fi
	say "stopped after $((SECONDS - t0)) s"
}

main() {
	case "${1:-start}" in
	start) ;;
	stop)
		stop_private
		return 0
		;;
	-h | --help | help)
		sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2
		return 0
		;;
	*) die "unknown command '$1' (use: start | stop)" ;;
	esac

	if [[ -n ${DOCKER_HOST:-} ]]; then
		if answers "$DOCKER_HOST"; then
			say "using DOCKER_HOST=$DOCKER_HOST"
			emit "$DOCKER_HOST"
		fi
		say "DOCKER_HOST=$DOCKER_HOST does not answer; looking for another engine"
	fi
	if [[ -S $DEFAULT_SOCK ]] && answers "unix://$DEFAULT_SOCK"; then
		say "using the default engine at $DEFAULT_SOCK"
		emit "unix://$DEFAULT_SOCK"
	fi
	# Our own engine may already be up: don't pay for apt or a spawn then.
	if [[ -S $SOCK ]] && answers "unix://$SOCK"; then
		say "using the private engine at $SOCK"
		emit "unix://$SOCK"
	fi

	install_engine
	# Installing docker.io may have started the distribution's own engine
	# (sysvinit/systemd postinst). Two dockerds both driving docker0 and the
	# DOCKER iptables chains fight each other, so prefer that one then.
	if [[ -S $DEFAULT_SOCK ]] && answers "unix://$DEFAULT_SOCK"; then
		say "using the default engine at $DEFAULT_SOCK"
		emit "unix://$DEFAULT_SOCK"
	fi
	[[ $(id -u) == 0 ]] || die "no engine answers and starting one needs root; set DOCKER_HOST"
	start_private
	emit "unix://$SOCK"
}

main "$@"
