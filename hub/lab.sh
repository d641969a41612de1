#!/usr/bin/env bash
# The lab hub's lifecycle on one Docker host: up, down, logs, backup, restore, upgrade.
# Called by `make` (hub/hub.mk), which passes every setting as an environment variable, empty
# where the operator gave none. hub/settings_schema.py declares them with their defaults
# (docs/settings.md lists them); every name is derived from LAB, so a second hub (tests) can
# run beside the lab's. The hub container gets the settings it reads (PASSED) explicitly.
set -euo pipefail

# Every setting with its value, or its default where unset or empty; then PASSED. The schema
# is stdlib Python, run by path: this works on a fresh clone before anything is installed.
settings=$(python3 "$(dirname "${BASH_SOURCE[0]}")/settings_schema.py" env) \
    || { printf 'error: cannot read the settings (hub/settings_schema.py)\n' >&2; exit 1; }
eval "$settings"

say() { printf '%s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
yes_flag() { case "${1,,}" in 1|yes|true|on) return 0 ;; *) return 1 ;; esac; }

container_state() { docker container inspect -f '{{.State.Status}}' "$LAB" 2>/dev/null || true; }
scheme() { if yes_flag "$PLAIN_HTTP"; then echo http; else echo https; fi; }
local_url() { echo "$(scheme)://127.0.0.1:$PORT/"; }

# The hub answers /hub/health once the proxy, the hub and its database are up.
wait_ready() {
    local deadline=$((SECONDS + READY_TIMEOUT))
    while ((SECONDS < deadline)); do
        if [ "$(container_state)" != running ]; then
            docker logs --tail 60 "$LAB" >&2 || true
            die "the hub container $LAB stopped during start (its last log lines are above)"
        fi
        if curl -ksf -o /dev/null --max-time 5 "$(local_url)hub/health"; then
            return 0
        fi
        sleep 1
    done
    docker logs --tail 60 "$LAB" >&2 || true
    die "the hub did not answer on $(local_url) within ${READY_TIMEOUT}s (its last log lines are above)"
}

# remove_kernels [jobs]: the lab's kernel containers. Not those of notebook jobs, nor their
# runners: jobs outlive the hub (its restarts and upgrades), and the broker removes them when
# each job ends. With `jobs`, those too (their jobs end failed, and their owners are told).
remove_kernels() {
    local ids jobs
    ids=$(docker ps -a --filter label=org.labnotebook.role=kernel --filter "network=$NETWORK" \
        --format '{{.ID}} {{.Label "org.labnotebook.job-id"}}' | awk '$2 == "" {print $1}')
    if [ -n "$ids" ]; then
        say "Removing the lab's kernel containers"
        # shellcheck disable=SC2086
        docker rm -f $ids >/dev/null
    fi
    if [ "${1:-}" = jobs ]; then
        jobs=$(docker ps -aq --filter label=org.labnotebook.job-id --filter "network=$NETWORK")
        if [ -n "$jobs" ]; then
            say "Stopping the lab's notebook jobs (root must move files in /home/shared alone)"
            # shellcheck disable=SC2086
            docker rm -f $jobs >/dev/null
        fi
    fi
}

# The homes volume; with HOMES_PATH, a named volume bound to that host folder, so the hub and
# every kernel keep mounting it by name.
ensure_homes_volume() {
    if [ -z "$HOMES_PATH" ]; then
        docker volume inspect "$HOMES_VOLUME" >/dev/null 2>&1 \
            || docker volume create --label "org.labnotebook.lab=$LAB" "$HOMES_VOLUME" >/dev/null
        return
    fi
    case "$HOMES_PATH" in /*) ;; *) die "HOMES_PATH must be an absolute path; got $HOMES_PATH" ;; esac
    [ -d "$HOMES_PATH" ] && [ ! -L "$HOMES_PATH" ] \
        || die "HOMES_PATH=$HOMES_PATH is not a folder on this host: create it (ideally mount a file system of its own there) first"
    local device
    if device=$(docker volume inspect -f '{{index .Options "device"}}' "$HOMES_VOLUME" 2>/dev/null); then
        [ "$device" = "$HOMES_PATH" ] || die "the volume $HOMES_VOLUME already holds the homes \
(${device:-in the storage of Docker}), not HOMES_PATH=$HOMES_PATH. To move them: make backup, make down, \
docker volume rm $HOMES_VOLUME, then make restore BACKUP=... HOMES_PATH=$HOMES_PATH"
        return
    fi
    docker volume create --label "org.labnotebook.lab=$LAB" --driver local --opt type=none \
        --opt o=bind --opt "device=$HOMES_PATH" "$HOMES_VOLUME" >/dev/null
    say "The homes live in $HOMES_PATH ($(df -h --output=size "$HOMES_PATH" | tail -1 | tr -d ' ') file system)"
}

cmd_up() {
    case "$(container_state)" in
        running) say "The hub $LAB is already running."; print_welcome; return ;;
        "") ;;
        *) docker rm -f "$LAB" >/dev/null ;;  # stopped: re-create with the current settings
    esac
    command -v curl >/dev/null || die "curl is needed to check that the hub is up"
    [ -S "$DOCKER_SOCKET" ] || die "no Docker socket at $DOCKER_SOCKET (set DOCKER_SOCKET=...)"
    ensure_network
    ensure_homes_volume
    docker volume inspect "$STATE_VOLUME" >/dev/null 2>&1 \
        || docker volume create --label "org.labnotebook.lab=$LAB" "$STATE_VOLUME" >/dev/null
    # Holds only the broker's socket (no data: nothing to back up). Kernels mount it read-only.
    docker volume inspect "$BROKER_VOLUME" >/dev/null 2>&1 \
        || docker volume create --label "org.labnotebook.lab=$LAB" "$BROKER_VOLUME" >/dev/null
    local migrate=""
    if ! docker volume inspect "$READONLY_VOLUME" >/dev/null 2>&1; then
        docker volume create --label "org.labnotebook.lab=$LAB" "$READONLY_VOLUME" >/dev/null
        migrate=yes
    fi
    # No member's process may run while root moves files in the homes volume: the hub is
    # down here, and kernels left from its last run go too, so nobody can swap a path
    # meanwhile. Notebook jobs run on unless there is something to move (once, at the upgrade
    # that gave readonly/ its own volume): otherwise root only renames a path there.
    if [ -n "$migrate" ]; then remove_kernels jobs; else remove_kernels; fi
    prepare_homes "$migrate"

    local hub_memory=$HUB_MEMORY
    if [ "$hub_memory" = auto ]; then
        hub_memory=$(( $(docker info -f '{{.MemTotal}}') / 4 / 1048576 ))m
    fi
    local args=(
        --detach --name "$LAB" --hostname "$HUB_HOSTNAME" --network "$NETWORK"
        # Members' servers and terminals run in here: bounded, so a runaway cannot take the
        # host, and ranked for the OOM killer above the hub's own processes (spawner.py).
        --memory "$hub_memory" --memory-swap "$hub_memory" --pids-limit "$HUB_PIDS"
        --log-opt max-size="$LOG_MAX_SIZE" --log-opt max-file=3
        --restart unless-stopped --label "org.labnotebook.lab=$LAB"
        --publish "${BIND:+$BIND:}$PORT:8000"
        --volume "$HOMES_VOLUME:/home" --volume "$STATE_VOLUME:/srv/state"
        --volume "$READONLY_VOLUME:/home/shared/readonly"
        # The broker's socket folder, shared with every kernel (read-only there: startup.py).
        --volume "$BROKER_VOLUME:/run/labnotebook-broker"
        # Only the root-owned broker inside uses it; its folder there is root-only.
        --volume "$DOCKER_SOCKET:/srv/engine/docker.sock"
    )
    local name
    for name in "${PASSED[@]}"; do
        args+=(--env "$name=${!name}")
    done
    if [ -n "$SSL_CERT$SSL_KEY" ]; then
        [ -n "$SSL_CERT" ] && [ -n "$SSL_KEY" ] || die "give both SSL_CERT=... and SSL_KEY=..."
        local cert key
        cert=$(readlink -f "$SSL_CERT") key=$(readlink -f "$SSL_KEY")  # Let's Encrypt: symlinks
        [ -r "$cert" ] || die "SSL_CERT=$SSL_CERT is not a readable file"
        [ -r "$key" ] || die "SSL_KEY=$SSL_KEY is not a readable file"
        args+=(--volume "$cert:/srv/tls/cert.pem:ro" --volume "$key:/srv/tls/key.pem:ro")
    fi
    say "Starting the hub $LAB ($HUB_IMAGE) on port $PORT"
    docker run "${args[@]}" "$HUB_IMAGE" >/dev/null
    wait_ready
    print_welcome
}

# The lab's network has a configured subnet (the one the engine picks, pinned): Docker gives
# a container a fixed address only there, and a restarted kernel keeps its address (clients
# made before the restart find it again). A network from before (no pinned subnet) is made
# again here when nothing is attached to it, which is the case at `make up` after a stop.
ensure_network() {
    if docker network inspect "$NETWORK" >/dev/null 2>&1; then
        local pinned attached
        pinned=$(docker network inspect -f '{{index .Labels "org.labnotebook.subnet"}}' "$NETWORK")
        [ "$pinned" = configured ] && return 0
        attached=$(docker network inspect -f '{{len .Containers}}' "$NETWORK")
        if [ "$attached" != 0 ]; then
            say "Note: the network $NETWORK has no configured subnet, so restarted kernels get"
            say "new addresses. It is re-made at the next 'make down && make up'."
            return 0
        fi
        say "Re-making the network $NETWORK with a configured subnet (kernels keep their"
        say "address across restarts)"
        docker network rm "$NETWORK" >/dev/null
    fi
    local probe="$NETWORK-subnet-probe" subnet gateway
    docker network create "$probe" >/dev/null
    subnet=$(docker network inspect -f '{{(index .IPAM.Config 0).Subnet}}' "$probe")
    gateway=$(docker network inspect -f '{{(index .IPAM.Config 0).Gateway}}' "$probe")
    docker network rm "$probe" >/dev/null
    docker network create --label "org.labnotebook.lab=$LAB" \
        --label org.labnotebook.subnet=configured \
        --subnet "$subnet" ${gateway:+--gateway "$gateway"} "$NETWORK" >/dev/null
}

# Before the hub starts, as root, with no member's process running: Docker mounts the readonly
# volume at /home/shared/readonly and would follow a symlink there (to /home/bob, say) - a
# member may have planted one in a lab from before the readonly volume, when it was a folder
# anyone could rename. Such an entry is moved aside (never followed) and a folder takes its
# place. With MIGRATE=yes (the readonly volume is new), the old folder's contents move into
# the volume first, owners, modes and ACLs kept.
prepare_homes() {
    docker run --rm --network none -e MIGRATE="$1" \
        -v "$HOMES_VOLUME:/from" -v "$READONLY_VOLUME:/to" \
        --entrypoint /bin/sh "$HUB_IMAGE" -c '
            set -e
            old=/from/shared/readonly
            if [ "$MIGRATE" = yes ] && [ -d "$old" ] && [ ! -L "$old" ] \
                    && [ -n "$(ls -A "$old")" ]; then
                tar -C "$old" --acls --xattrs --numeric-owner -cf - . \
                    | tar -C /to --acls --xattrs --numeric-owner --same-owner -xpf -
                find "$old" -xdev -mindepth 1 -delete
                echo "Moved /home/shared/readonly into its own volume"
            fi
            if [ -L "$old" ] || { [ -e "$old" ] && [ ! -d "$old" ]; }; then
                aside="$old.displaced-$(date +%Y%m%d-%H%M%S)"
                mv -- "$old" "$aside"
                echo "WARNING: /home/shared/readonly was not a folder (a member replaced it);"
                echo "moved it aside to ${aside#/from} and made the folder again."
            fi' || die "could not prepare /home/shared/readonly on $HOMES_VOLUME"
}

print_warnings() {
    local warnings
    warnings=$(docker exec "$LAB" cat /run/labnotebook/startup-warnings.txt 2>/dev/null || true)
    if [ -n "$warnings" ]; then
        say ""
        say "WARNING: the hub started, but needs an admin's attention:"
        say "$warnings"
    fi
}

print_welcome() {
    local token host
    host=${PUBLIC_URL:-$(scheme)://$(hostname -f 2>/dev/null || hostname):$PORT/}
    token=$(docker exec "$LAB" cat /srv/state/admin-setup-token 2>/dev/null || true)
    say ""
    say "The lab hub is up: $host   (on this machine: $(local_url))"
    if yes_flag "$PLAIN_HTTP"; then
        say "PLAIN_HTTP=yes: passwords cross the network in clear text. Serve it only behind a"
        say "proxy that terminates TLS, or leave PLAIN_HTTP out to get HTTPS."
    elif [ -z "$SSL_CERT" ]; then
        say "It uses a self-signed certificate: browsers warn until you give it a real one"
        say "(make up SSL_CERT=/path/fullchain.pem SSL_KEY=/path/privkey.pem)."
    fi
    if [ -n "$token" ]; then
        say ""
        say "Next: open ${host}hub/signup and sign up as 'admin' with this one-time setup token:"
        say ""
        say "    $token"
        say ""
        say "Then lab members sign up there too, and you approve them at ${host}hub/authorize."
    else
        say "Lab members sign up at ${host}hub/signup; admins approve them at ${host}hub/authorize."
    fi
    say "Logs: make logs    Stop: make down    Back up: make backup"
    print_warnings
}

cmd_down() {
    if [ -n "$(container_state)" ]; then
        say "Stopping the hub $LAB (users' servers stop; homes and state stay in the volumes)"
        docker stop --time 30 "$LAB" >/dev/null || true
        docker rm -f "$LAB" >/dev/null
    fi
    remove_kernels
}

cmd_logs() {
    local args=(--tail "$TAIL")
    yes_flag "$FOLLOW" && args+=(--follow)
    docker logs "${args[@]}" "$LAB"
}

cmd_upgrade() {
    # The new image is built by make before this runs; only the container changes.
    docker volume inspect "$STATE_VOLUME" >/dev/null 2>&1 || die "no volume $STATE_VOLUME: make up"
    cmd_down
    say "Migrating the hub database (JupyterHub keeps a copy of the old one in the state volume)"
    docker run --rm -v "$STATE_VOLUME:/srv/state" "$HUB_IMAGE" \
        sh -c 'test ! -e /srv/state/jupyterhub.sqlite ||
               jupyterhub upgrade-db --db=sqlite:////srv/state/jupyterhub.sqlite'
    cmd_up
}

# Each further part of the lab's life has a file of its own beside this one, sharing the
# helpers above: backups and restores, data coming in, and the move from the original
# labnotebook.
here=$(dirname "${BASH_SOURCE[0]}")
# shellcheck source=hub/lab_backup.sh
source "$here/lab_backup.sh"
# shellcheck source=hub/lab_import.sh
source "$here/lab_import.sh"
# shellcheck source=hub/lab_migrate.sh
source "$here/lab_migrate.sh"

case "${1:-}" in
    up|down|logs|backup|restore|upgrade|import|migrate) "cmd_$1" ;;
    backup-schedule) cmd_backup_schedule ;;
    *) die "usage: $0 up|down|logs|backup|backup-schedule|restore|upgrade|import|migrate" ;;
esac
