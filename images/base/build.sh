#!/usr/bin/env bash
# Build a minimal Debian base image locally with debootstrap, for engines that cannot pull
# from a registry. Usage: images/base/build.sh [IMAGE] [SUITE] [MIRROR]
set -euo pipefail

image=${1:-labnotebook/base:bookworm}
suite=${2:-bookworm}
mirror=${3:-http://deb.debian.org/debian}

if [ "$(id -u)" -ne 0 ]; then
    echo "error: debootstrap needs root. Run: sudo $0 $*" >&2
    exit 1
fi
if ! command -v debootstrap >/dev/null; then
    echo "error: debootstrap is not installed. Install it: apt-get install -y debootstrap" >&2
    exit 1
fi

rootfs=$(mktemp -d /var/tmp/labnotebook-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT

echo "Bootstrapping Debian $suite into $rootfs (about a minute or two)..."
# minbase: only essential packages; anything with virtual dependencies is installed later
# with apt inside a Dockerfile, where its configuration runs properly.
debootstrap --variant=minbase "$suite" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || {
    echo "error: debootstrap failed; last lines of its log:" >&2
    tail -n 20 "$rootfs.log" >&2
    rm -f "$rootfs.log"
    exit 1
}
rm -f "$rootfs.log"
# Keep images small and apt quiet, as the official Debian images do.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb
printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
    >"$rootfs/etc/apt/apt.conf.d/99labnotebook-no-recommends"

tar -C "$rootfs" -c . | docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    --message "debootstrap --variant=minbase $suite" \
    - "$image" >/dev/null
echo "Built $image"
