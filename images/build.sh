#!/usr/bin/env bash
# Build one of the images in images/. Usage: images/build.sh NAME TAG [docker build args...]
#
# The build context is assembled in a temporary folder: the image's own folder, this project's
# source (for images that install it), and extra-ca.crt, the CA bundle named by EXTRA_CA_CERT
# (empty when unset). Labs behind a TLS-inspecting proxy set EXTRA_CA_CERT so that pip and npm
# inside the build trust the proxy.
set -euo pipefail

name=$1 tag=$2
shift 2
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
[ -f "$here/$name/Dockerfile" ] || { echo "error: no images/$name/Dockerfile" >&2; exit 1; }

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp -a "$here/$name/." "$context/"
if [ -n "${EXTRA_CA_CERT:-}" ]; then
    [ -r "$EXTRA_CA_CERT" ] || { echo "error: EXTRA_CA_CERT=$EXTRA_CA_CERT is not a readable file" >&2; exit 1; }
    cp "$EXTRA_CA_CERT" "$context/extra-ca.crt"
else
    : >"$context/extra-ca.crt"
fi
mkdir -p "$context/src"
(cd "$root" && git ls-files -z --cached --others --exclude-standard -- pyproject.toml README.md provisioner hub kernelspecs 2>/dev/null \
    || find pyproject.toml README.md provisioner hub kernelspecs -type f -print0) \
    | (cd "$root" && xargs -0 cp --parents -t "$context/src")

# One progress line per step; the whole output (pages of apt and pip) goes to a log file.
logs="$root/build/logs"
mkdir -p "$logs"
log="$logs/$name.log"
echo "Building $tag (full log: $log)"
# --force-rm: the legacy builder otherwise leaves the failed step's container behind.
set +e
docker build --force-rm --tag "$tag" "$@" "$context" 2>&1 \
    | tee "$log" \
    | grep --line-buffered -E '^Step [0-9]+/[0-9]+ : ' \
    | cut -c1-110 | sed -u 's/^/  /'
status=${PIPESTATUS[0]}
set -e
if [ "$status" -ne 0 ]; then
    echo "error: building $tag failed; its last lines (the whole log is $log):" >&2
    tail -n 25 "$log" >&2
    exit "$status"
fi
# A second, immutable tag per build (`REPO:build-UTC-TIME`): the next build moves `$tag` to
# the new image, but notebooks that recorded this image's ID (metadata.labnotebook) still find
# it by name and `docker image prune` (dangling images only) keeps it. A build that produced
# the same image again (every step cached) adds no new tag.
repo=$tag
last=${tag##*/}
[[ "$last" == *:* ]] && repo=${tag%:*}
image_id=$(docker image inspect --format '{{.Id}}' "$tag")
if ! docker image inspect --format '{{join .RepoTags "\n"}}' "$image_id" | grep -q "^$repo:build-"; then
    build_tag="$repo:build-$(date -u +%Y%m%dT%H%M%SZ)"
    docker tag "$image_id" "$build_tag"
    echo "Tagged $build_tag (${image_id:7:12}); remove old builds with docker rmi when no notebook names them"
fi
echo "Built $tag"
