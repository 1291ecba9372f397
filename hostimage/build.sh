#!/usr/bin/env bash
# Build the berth host image on the engine named by DOCKER_HOST.
#
#   hostimage/build.sh [IMAGE]          # default berth-host:latest
#
# Works without any image registry: when debian:bookworm-slim is neither
# present nor pullable, it is made here with debootstrap from the Debian
# mirror this machine's apt uses, and imported. Both steps are skipped when
# their result already exists, so an unchanged rebuild costs seconds.
#
# Environment: BERTH_DEBIAN_MIRROR overrides the mirror; DOCKER_BUILDKIT is
# respected when set.
set -euo pipefail

IMAGE=${1:-berth-host:latest}
BASE=debian:bookworm-slim
SUITE=bookworm
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

say() { printf 'hostimage: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# First URI apt uses for suite $1 (one-line and deb822 sources alike), so the
# image fetches from the same mirror, proxy or snapshot as the machine does.
apt_uri() {
	local suite=$1 f
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
		[[ -r $f ]] || continue
		awk -v s="$suite" '
			$1 == "deb" {
				i = 2
				if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
				if ($(i + 1) == s) { print $i; exit }
			}' "$f"
	done
	for f in /etc/apt/sources.list.d/*.sources; do
		[[ -r $f ]] || continue
		# A deb822 stanza ends at a blank line; judge it once it is complete.
		awk -v s="$suite" '
			function judge() {
				if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " s " ") && enabled != "no" && uris != "") {
					split(uris, u, " "); print u[1]; found = 1; exit
				}
				types = suites = uris = enabled = ""
			}
			/^[ \t]*#/ { next }
			/^[ \t]*$/ { judge(); next }
			{ key = tolower($1); sub(/^[^:]*:[ \t]*/, "") }
			key == "types:" { types = $0 }
			key == "suites:" { suites = $0 }
			key == "uris:" { uris = $0 }
			key == "enabled:" { enabled = tolower($0) }
			END { if (!found) judge() }' "$f"
	done
}

install_debootstrap() {
	command -v debootstrap >/dev/null 2>&1 && return 0
	[[ $(id -u) == 0 ]] || die "debootstrap is missing and we are not root"
	say "installing debootstrap (apt-get)"
	export DEBIAN_FRONTEND=noninteractive
	apt-get -o DPkg::Lock::Timeout=300 -qq update </dev/null >&2
	apt-get -o DPkg::Lock::Timeout=300 -qq -y install --no-install-recommends debootstrap </dev/null >&2
}

ROOTFS=''
cleanup() {
	[[ -n $ROOTFS && -d $ROOTFS ]] || return 0
	# debootstrap mounts proc/sys inside the target and may leave them behind
	# when it fails: never let rm descend into the machine's /proc or /sys.
	local m
	awk -v r="$ROOTFS" 'index($2, r "/") == 1 { print $2 }' /proc/mounts | sort -r |
		while read -r m; do umount -l "$m" 2>/dev/null || :; done
	rm -rf --one-file-system "$ROOTFS"
}
trap cleanup EXIT

make_base() {
	[[ $(id -u) == 0 ]] || die "making $BASE with debootstrap needs root"
	install_debootstrap
	local mirror security
	mirror=${BERTH_DEBIAN_MIRROR:-$(apt_uri "$SUITE" | head -n 1)}
	mirror=${mirror:-http://deb.debian.org/debian}
	security=$(apt_uri "$SUITE-security" | head -n 1)
	security=${security:-http://deb.debian.org/debian-security}
	local include=()
	# apt can only use an https mirror with the CA bundle in place.
	[[ $mirror == https:* ]] && include=(--include=ca-certificates)

	ROOTFS=$(mktemp -d /var/tmp/berth-rootfs.XXXXXX)
	say "debootstrap $SUITE from $mirror (about a minute)"
	debootstrap --variant=minbase "${include[@]}" "$SUITE" "$ROOTFS" "$mirror" >&2

	# Shape it like the official slim image: same apt sources layout (with
	# security updates), no docs, man pages or locales, no apt caches, and no
	# traces of the machine it was made on.
	rm -f "$ROOTFS/etc/apt/sources.list"
	cat >"$ROOTFS/etc/apt/sources.list.d/debian.sources" <<-EOF
		Types: deb
		URIs: $mirror
		Suites: $SUITE $SUITE-updates
		Components: main
		Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

		Types: deb
		URIs: $security
		Suites: $SUITE-security
		Components: main
		Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
	EOF
	cat >"$ROOTFS/etc/dpkg/dpkg.cfg.d/docker" <<-'EOF'
		path-exclude /usr/share/doc/*
		path-include /usr/share/doc/*/copyright
		path-exclude /usr/share/info/*
		path-exclude /usr/share/linda/*
		path-exclude /usr/share/lintian/overrides/*
		path-exclude /usr/share/locale/*
		path-exclude /usr/share/man/*
	EOF
	cat >"$ROOTFS/etc/apt/apt.conf.d/docker-clean" <<-'EOF'
		DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
		APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
		Dir::Cache::pkgcache "";
		Dir::Cache::srcpkgcache "";
	EOF
	echo 'Acquire::Languages "none";' >"$ROOTFS/etc/apt/apt.conf.d/docker-no-languages"
	echo 'Apt::AutoRemove::SuggestsImportant "false";' >"$ROOTFS/etc/apt/apt.conf.d/docker-autoremove-suggests"
	find "$ROOTFS/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
	find "$ROOTFS/usr/share/doc" -mindepth 1 -type d -empty -delete
	rm -rf "$ROOTFS"/usr/share/{info,man,locale,lintian,linda}/* \
		"$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/* \
		"$ROOTFS"/var/cache/debconf/*-old "$ROOTFS"/var/log/* "$ROOTFS"/tmp/*
	: >"$ROOTFS/etc/resolv.conf"
	: >"$ROOTFS/etc/machine-id"
	echo localhost >"$ROOTFS/etc/hostname"

	say "importing the root file system as $BASE"
	tar -C "$ROOTFS" --numeric-owner -c . |
		docker import \
			--change 'CMD ["bash"]' \
			--change 'LABEL io.berth.base=debootstrap' \
			--message "debootstrap --variant=minbase $SUITE" \
			- "$BASE" >/dev/null
	cleanup
	ROOTFS=''
}

main() {
	local t0=$SECONDS
	command -v docker >/dev/null 2>&1 || die "no docker CLI: run scripts/engine.sh first"
	docker version --format '{{.Server.Version}}' >/dev/null 2>&1 </dev/null ||
		die "no engine answers at ${DOCKER_HOST:-the default socket}; try: eval \"export \$(scripts/engine.sh)\""

	if docker image inspect "$BASE" >/dev/null 2>&1; then
		say "base image $BASE present"
	elif docker pull "$BASE" >&2 </dev/null; then
		say "pulled $BASE"
	else
		say "cannot pull $BASE; making it locally"
		make_base
	fi

	# The CLI (v23 and later) wants buildx for BuildKit; without it, ask for
	# the classic builder explicitly, which every engine version supports.
	if [[ -z ${DOCKER_BUILDKIT:-} ]] && ! docker buildx version >/dev/null 2>&1; then
		export DOCKER_BUILDKIT=0
	fi
	build_agent
	say "building $IMAGE"
	docker build -t "$IMAGE" "$HERE" </dev/null >&2
	say "built $IMAGE in $((SECONDS - t0)) s"
}

# berth-agent, linked statically (it runs on the image's libc, not ours), into
# the build context. Its own target dir: this may run under `cargo test`,
# which holds the workspace's.
build_agent() {
	local triple
	command -v cargo >/dev/null 2>&1 || die "cargo is needed to build berth-agent"
	triple=$(rustc -vV | awk '$1 == "host:" { print $2 }')
	say "building berth-agent ($triple, static)"
	RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --release --locked \
		--manifest-path "$HERE/../Cargo.toml" -p berth-agent \
		--target "$triple" --target-dir "$HERE/../target/hostimage" >&2
	# Copied under a name of its own and renamed into place: two builds at
	# once (make run beside make test) must not trip over each other.
	install -m 0755 "$HERE/../target/hostimage/$triple/release/berth-agent" "$HERE/berth-agent.$$"
	mv -f "$HERE/berth-agent.$$" "$HERE/berth-agent"
}

main "$@"
