#!/usr/bin/env bash
# Build the lab's Debian base image, the FROM of every other image.
# Usage: images/base/build.sh [IMAGE] [SUITE] [MIRROR]
#
# BASE_SOURCE chooses where Debian comes from:
#   auto (default)  the registry's debian:SUITE-slim when the engine can pull it, else debootstrap
#   registry        only the registry (fail if the engine cannot pull)
#   debootstrap     only debootstrap (for engines that must not or cannot pull)
# Either way the image records where it came from in its labels (org.labnotebook.base.*); from
# the registry, with the exact digest the engine pulled.
set -euo pipefail

image=${1:-labnotebook/base:bookworm}
suite=${2:-bookworm}
mirror=${3:-http://deb.debian.org/debian}
source=${BASE_SOURCE:-auto}
rootfs=""
upstream="debian:$suite-slim"

say() { printf '%s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

case "$source" in auto|registry|debootstrap) ;; *)
    die "BASE_SOURCE=$source: use auto, registry or debootstrap" ;;
esac

from_registry() {
    say "Pulling $upstream from the engine's registry..."
    local why
    if ! why=$(timeout "${PULL_TIMEOUT:-300}" docker pull --quiet "$upstream" 2>&1 >/dev/null); then
        say "The engine cannot pull $upstream: $(printf '%s' "${why:-timed out}" | head -n 1)"
        return 1
    fi
    local digest
    digest=$(docker image inspect --format '{{index .RepoDigests 0}}' "$upstream" 2>/dev/null) \
        || digest=""
    [ -n "$digest" ] || die "pulled $upstream but the engine reports no digest for it"
    say "Using $digest"
    # FROM the digest, not the tag: the base is exactly what was pulled and recorded here.
    docker build --quiet --tag "$image" - >/dev/null <<EOF
FROM $digest
RUN printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
      >/etc/apt/apt.conf.d/99labnotebook-no-recommends
LABEL org.labnotebook.base.source="registry" \
      org.labnotebook.base.image="$upstream" \
      org.labnotebook.base.digest="$digest"
EOF
}

ensure_debootstrap() {
    command -v debootstrap >/dev/null && return 0
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
        say "Installing debootstrap (apt-get install -y debootstrap)..."
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap; } \
            >/dev/null 2>&1 || die "could not install debootstrap with apt-get; install it by hand"
        command -v debootstrap >/dev/null || die "apt-get installed no debootstrap command"
        return 0
    fi
    die "the engine cannot pull $upstream, and debootstrap is not installed to build Debian
       locally instead. Either let the engine pull (docker pull $upstream), or install
       debootstrap and run this as root: sudo apt-get install -y debootstrap && sudo make images"
}

from_debootstrap() {
    [ "$(id -u)" -eq 0 ] || die "building Debian with debootstrap needs root: sudo make images"
    ensure_debootstrap
    local log
    rootfs=$(mktemp -d /var/tmp/labnotebook-rootfs.XXXXXX)
    log="$rootfs.log"
    trap 'rm -rf "$rootfs"' EXIT  # global: the trap runs after this function returns
    say "Bootstrapping Debian $suite with debootstrap (a minute or two; log: $log)..."
    # minbase: only essential packages; anything with virtual dependencies is installed later
    # with apt inside a Dockerfile, where its configuration runs properly.
    debootstrap --variant=minbase "$suite" "$rootfs" "$mirror" >"$log" 2>&1 || {
        tail -n 20 "$log" >&2
        die "debootstrap failed; its last lines are above, the whole log is $log"
    }
    # Keep images small and apt quiet, as the official Debian images do.
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb
    printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
        >"$rootfs/etc/apt/apt.conf.d/99labnotebook-no-recommends"
    tar -C "$rootfs" -c . | docker import \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' \
        --change "LABEL org.labnotebook.base.source=debootstrap org.labnotebook.base.suite=$suite" \
        --message "debootstrap --variant=minbase $suite" \
        - "$image" >/dev/null
    rm -f "$log"
}

case "$source" in
    registry) from_registry || die "BASE_SOURCE=registry, but the engine cannot pull $upstream" ;;
    debootstrap) from_debootstrap ;;
    auto) from_registry || { say "Building Debian locally instead."; from_debootstrap; } ;;
esac
say "Built $image"
