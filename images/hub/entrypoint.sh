#!/bin/sh
# The hub image's entrypoint (PID 1 is tini, which reaps zombies and forwards signals).
#
# Starting the hub (the image's default command): prepare the container as root from the state
# volume (accounts, shared folders, certificate, kernelspec, broker config), start the kernel
# broker as root, then JupyterHub. Any other command (a backup, `jupyterhub upgrade-db`, a
# shell) runs as given, without touching anything.
set -eu

case "${1:-} ${2:-}" in
    "jupyterhub "|"jupyterhub -"*) ;;
    *) exec "$@" ;;
esac

python3 -m labnotebook.hub.startup

# The broker is the only process that talks to the Docker engine. It is restarted if it dies,
# so a crash cannot leave the lab without kernels until the next container restart. It runs in
# its own session: `docker stop` signals JupyterHub (tini -g: its process group) and the broker
# keeps serving while the users' servers shut their kernels down; it ends with the container.
setsid sh -c '
    while :; do
        python3 -m labnotebook.hub.broker \
            --socket /run/labnotebook-broker/broker.sock \
            --config /etc/labnotebook/broker.json \
            --config-dir /srv/state/broker.d || true
        echo "labnotebook: the kernel broker exited; restarting it in 2 s" >&2
        sleep 2
    done' &

exec "$@"
