#!/usr/bin/env bash
# Resolve the hub image's Python dependencies afresh and write them, exactly pinned, to
# images/hub/requirements.lock. Usage: images/hub/lock.sh IMAGE (an image with python3-venv:
# the hub image itself). Resolution runs in a throwaway container, on the image's Python.
set -euo pipefail
image=${1:-labnotebook/hub:latest}
here=$(cd "$(dirname "$0")" && pwd)
# The same requirements as the Dockerfile's dependency layer (pyproject's [hub] floors).
requirements=$(sed -n "/^ && pip install --no-cache-dir -c/,/^ && rm -rf/p" "$here/Dockerfile" \
    | grep -o "'[^']*'" | tr -d "'")
[ -n "$requirements" ] || { echo "error: no requirements found in $here/Dockerfile" >&2; exit 1; }
# shellcheck disable=SC2086
frozen=$(docker run --rm --network bridge --entrypoint sh "$image" -c '
    python3 -m venv /tmp/lock >/dev/null && /tmp/lock/bin/pip install -q --no-cache-dir "$@" \
    >&2 && /tmp/lock/bin/pip freeze --exclude-editable' sh $requirements)
{
    sed -n '1,/^[^#]/{/^#/p}' "$here/requirements.lock"
    printf '%s\n' "$frozen" | grep -v '^labnotebook'
} >"$here/requirements.lock.new"
mv "$here/requirements.lock.new" "$here/requirements.lock"
echo "Wrote $here/requirements.lock ($(grep -vc '^#' "$here/requirements.lock") packages)."
echo "Check it against the published fixes: make test (tests/test_locks.py) and make audit."
