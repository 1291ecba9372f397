#!/usr/bin/env bash
# Installs the client programs the end-to-end tests drive, when missing:
# tmux (interactive terminal tests), rsync, and OpenSSH's ssh/scp/sftp.
# Debian packages only; a no-op when everything is there.
set -euo pipefail

declare -A need=([tmux]=tmux [rsync]=rsync [ssh]=openssh-client [scp]=openssh-client [sftp]=openssh-client)
missing=()
for cmd in "${!need[@]}"; do
	command -v "$cmd" >/dev/null 2>&1 || missing+=("${need[$cmd]}")
done
((${#missing[@]})) || exit 0
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
printf 'test-deps: installing %s\n' "${missing[*]}" >&2
if [[ $(id -u) != 0 ]]; then
	printf 'test-deps: need root to install them (or install them yourself)\n' >&2
	exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
NEEDRESTART_SUSPEND=1 apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
