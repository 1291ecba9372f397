#!/usr/bin/env bash
# Entry point of `make bench` / `make bench-smoke`: makes sure Python 3 is
# there (a fresh Debian machine may lack it), then runs bench/bench.py.
set -euo pipefail
if ! command -v python3 >/dev/null 2>&1; then
	[[ $(id -u) == 0 ]] || { echo "bench: python3 is missing and we are not root" >&2; exit 1; }
	echo "bench: installing python3 (apt-get)" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get -o DPkg::Lock::Timeout=300 -qq update </dev/null >&2
	apt-get -o DPkg::Lock::Timeout=300 -qq -y install --no-install-recommends python3 </dev/null >&2
fi
exec python3 "$(dirname "${BASH_SOURCE[0]}")/bench.py" "$@"
