# Backups and restores of the lab (make backup, backup-schedule, restore). Sourced by
# hub/lab.sh, whose helpers (say, die, yes_flag, container_state, ensure_homes_volume) and
# settings it uses.

cmd_backup() {
    # The archive holds password hashes, the cookie secret and the TLS key: owner-only.
    umask 077
    mkdir -p "$BACKUP_DIR"
    local file
    file="$BACKUP_DIR/$LAB-$(date -u +%Y%m%d-%H%M%S).tar.gz"
    say "Backing up $STATE_VOLUME and $HOMES_VOLUME to $file"
    if [ "$(container_state)" = running ]; then
        docker exec -e "LAB=$LAB" "$LAB" python3 -m labnotebook.hub.backup create >"$file.part"
    else
        docker volume inspect "$STATE_VOLUME" >/dev/null 2>&1 || die "no volume $STATE_VOLUME"
        docker run --rm -e "LAB=$LAB" -v "$STATE_VOLUME:/srv/state:ro" -v "$HOMES_VOLUME:/home:ro" \
            -v "$READONLY_VOLUME:/home/shared/readonly:ro" "$HUB_IMAGE" python3 -m labnotebook.hub.backup create >"$file.part"
    fi
    mv "$file.part" "$file"
    say "Wrote $file ($(du -h "$file" | cut -f1)). Restore it with: make restore BACKUP=$file"
}

cmd_restore() {
    [ -n "$BACKUP" ] || die "say which archive: make restore BACKUP=backups/....tar.gz"
    [ -r "$BACKUP" ] || die "cannot read $BACKUP"
    [ -z "$(container_state)" ] || die "the hub $LAB exists; stop it first: make down"
    local volume
    for volume in "$HOMES_VOLUME" "$STATE_VOLUME" "$READONLY_VOLUME"; do
        if docker volume inspect "$volume" >/dev/null 2>&1; then
            yes_flag "$FORCE" || die "volume $volume exists: restore onto fresh volumes \
(another LAB=..., or remove it), or replace it with FORCE=yes"
            docker volume rm "$volume" >/dev/null
        fi
    done
    ensure_homes_volume
    for volume in "$STATE_VOLUME" "$READONLY_VOLUME"; do
        docker volume create --label "org.labnotebook.lab=$LAB" "$volume" >/dev/null
    done
    docker run --rm -i -v "$STATE_VOLUME:/srv/state" -v "$HOMES_VOLUME:/home" \
        -v "$READONLY_VOLUME:/home/shared/readonly" "$HUB_IMAGE" python3 -m labnotebook.hub.backup restore <"$BACKUP"
    say "Restored into $STATE_VOLUME, $HOMES_VOLUME and $READONLY_VOLUME. Start the hub: make up"
}

cmd_backup_schedule() {
    die "make backup-schedule is not built yet"
}
