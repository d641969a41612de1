"""The lab's settings: where things live inside the hub container, and what the operator chose.

`make up` passes the operator's choices to the container as environment variables (listed in
`LabSettings.from_env`); everything else about the hub is in `jupyterhub_config.py`, and an
admin may override any JupyterHub setting in `/srv/state/jupyterhub_config.py`, which lives on
the state volume and so survives upgrades.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# -- fixed places inside the hub container ---------------------------------------------------

STATE_DIR = Path("/srv/state")
"""The state volume: database, cookie secret, generated certificates, user registry."""

HOMES_DIR = Path("/home")
"""The homes volume, mounted at the same path in every kernel container."""

SHARED_DIR = HOMES_DIR / "shared"
READONLY_DIR = SHARED_DIR / "readonly"

ENGINE_SOCKET = Path("/srv/engine/docker.sock")
"""Where `make up` mounts the host's Docker socket: inside a root-only folder, so no user can
reach it whatever group owns the socket on the host. Only the broker uses it."""

BROKER_DIR = Path("/run/labnotebook-broker")
"""The broker's socket folder: the broker volume, mounted here in the hub and read-only at the
same path in every kernel container, so `!labnotebook kernel ...` in a notebook cell reaches
the broker. Root's, and writable by root only (a socket can be connected to on a read-only
mount; nothing in it can be replaced)."""
BROKER_SOCKET = BROKER_DIR / "broker.sock"
LEGACY_BROKER_SOCKET = Path("/run/labnotebook/broker.sock")
"""Where the socket was before the broker volume: a link to BROKER_SOCKET, for old habits."""
PROXY_PID_FILE = Path("/run/labnotebook/jupyterhub-proxy.pid")
"""Not on the state volume: a PID from an earlier container means nothing in this one, and
JupyterHub kills whatever process has the PID it finds there."""
STARTUP_WARNINGS = Path("/run/labnotebook/startup-warnings.txt")
"""What the last start could not do (a member's account, a displaced folder): `make up` prints
it, and so does the hub's log."""
BROKER_CONFIG = Path("/etc/labnotebook/broker.json")
"""The broker's configuration from the operator's settings, as data; written at every start."""
BROKER_DROPINS = STATE_DIR / "broker.d"
"""The admin's additions to the broker policy (more images, data mounts, limits): *.json or
*.py files, loaded after BROKER_CONFIG in name order, on the state volume."""
LEGACY_BROKER_OVERRIDES = STATE_DIR / "broker_config.py"
"""Where admins' additions lived before broker.d; moved into it at the next start."""
HUB_OVERRIDES = STATE_DIR / "jupyterhub_config.py"
"""Optional admin additions to the JupyterHub configuration, loaded last."""
MOUNTED_TLS_DIR = Path("/srv/tls")
"""Where `make up SSL_CERT=… SSL_KEY=…` mounts the operator's certificate and key (read-only)."""

KERNELSPEC_DIR = Path("/usr/local/share/jupyter/kernels/python-docker")
"""System-wide, so every user's server sees it; re-written at every start from the settings."""

LAB_GROUP = "lab"
LAB_GID = 1500
ADMIN_GROUP = "labadmin"
ADMIN_GID = 1501
FIRST_UID = 2000
"""Lab users get UIDs from here up; a UID is never reused, even after the user is deleted, so a
leftover file never silently belongs to a newcomer."""


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "yes", "true", "on")


def _required(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise SystemExit(
            f"{name} is not set. The hub container gets every setting from `make up` "
            "(hub/lab.sh, where their defaults are); start it that way."
        )
    return value


def _seconds(name: str) -> int:
    value = _required(name)
    try:
        seconds = int(value)
    except ValueError:
        raise SystemExit(f"{name} must be a number of seconds (0: never); got {value!r}") from None
    if seconds < 0:
        raise SystemExit(f"{name} must be 0 or more seconds; got {value!r}")
    return seconds


def _count(name: str) -> int:
    value = _required(name)
    if not value.isdigit():
        raise SystemExit(f"{name} must be a whole number, 0 or more; got {value!r}")
    return int(value)


@dataclass(frozen=True)
class LabSettings:
    """What the operator chose with `make up VAR=…`. Each field names its variable.

    No defaults here: hub/lab.sh is the one place `make up`'s defaults live, and it hands the
    hub container every setting explicitly."""

    name: str
    """LAB: the lab's name; its container, volumes and network are named after it."""

    homes_volume: str
    """HOMES_VOLUME: the Docker volume mounted at /home here and in every kernel container."""

    readonly_volume: str
    """READONLY_VOLUME: the Docker volume mounted at /home/shared/readonly here and in every
    kernel container. Being a mount point, it cannot be renamed or replaced by members, who
    may otherwise rename anything in /home/shared."""

    network: str
    """NETWORK: the Docker network the hub and the kernel containers share."""

    kernel_image: str
    """KERNEL_IMAGE: the image of the lab's default Python kernel."""

    public_url: str
    """PUBLIC_URL: how users reach the hub, printed by `make up` (informational)."""

    plain_http: bool
    """PLAIN_HTTP=yes: serve plain HTTP. Passwords then cross the network in clear text; use it
    only behind a TLS-terminating proxy."""

    subdomain_host: str
    """SUBDOMAIN_HOST: e.g. "https://lab.example.org": each member's server gets its own
    origin (alice.lab.example.org), so a page a member's server serves cannot act on the
    hub or on other members' servers in a logged-in visitor's browser. Needs wildcard DNS
    and a wildcard certificate. Empty: every server shares the hub's origin."""

    title: str
    """LAB_TITLE: the lab's name on every hub page and in the browser's title bar, e.g.
    "Smith Lab notebooks". Empty: the LAB name."""

    tls_hostnames: tuple[str, ...]
    """TLS_HOSTNAMES: comma-separated names the generated self-signed certificate is valid for
    (127.0.0.1 and ::1 are always included)."""

    admin_sudo_nopasswd: bool
    """ADMIN_SUDO_NOPASSWD=yes: lab admins use sudo in the hub without typing their password.
    By default sudo asks for the admin's hub password."""

    private_homes: bool
    """PRIVATE_HOMES=yes: new homes are 0700 (private). By default they are 0750, readable but
    not writable by the lab. Each user can change their own with `chmod 700 ~` or
    `chmod 750 ~`; the hub never resets an existing home's mode."""

    kernel_idle_timeout: int
    """KERNEL_IDLE_TIMEOUT: seconds after which an idle kernel is shut down, even with a
    notebook still open in a forgotten browser tab (its memory and GPU are freed; files are
    kept). 0: never."""

    server_idle_timeout: int
    """SERVER_IDLE_TIMEOUT: seconds without activity after which a user's server (and its
    kernels) is stopped by jupyterhub-idle-culler. 0: never."""

    server_max_age: int
    """SERVER_MAX_AGE: seconds after which a server is stopped even if active. 0: never."""

    kernel_memory: str
    """KERNEL_MEMORY: every kernel's memory limit (swap included), e.g. "8g"; "auto": an
    eighth of the host's memory, at least 1 GiB."""

    kernel_cpus: str
    """KERNEL_CPUS: every kernel's CPU limit, e.g. "4"; "auto": half the host's CPUs, at
    least 1."""

    member_memory: str
    """MEMBER_MEMORY: the most kernel memory one member may hold at once (the sum of their
    kernels' limits); "auto": half the host's memory."""

    client_address_header: str
    """CLIENT_ADDRESS_HEADER: the header naming a request's client address for the sign-up
    and login rate limits: X-Forwarded-For (appended by the hub's own proxy), or e.g.
    X-Real-IP when a reverse proxy in front of the lab sets it."""

    trusted_proxies: int
    """TRUSTED_PROXIES: reverse proxies of the lab's in front of the hub's port, each
    appending to X-Forwarded-For (0: browsers connect to the port directly)."""

    build_quota: str = "10g"
    """BUILD_QUOTA: the disk one member's kernel images (`labnotebook kernel build`) may add
    over their bases, e.g. "20g"; "none": no quota."""

    broker_volume: str = ""
    """BROKER_VOLUME: the Docker volume holding the broker's socket (BROKER_DIR), mounted
    read-only in every kernel container. Empty: kernels get no broker socket."""

    build_dockerfile: bool = False
    """BUILD_DOCKERFILE=yes: members may build kernel images from a Dockerfile, whose RUN
    steps the engine's builder runs as root with Docker's default capabilities (the README
    says what that trusts members with). Off: requirements.txt, apt.txt, postBuild only."""

    @classmethod
    def from_env(cls) -> LabSettings:
        """The settings `make up` (hub/lab.sh) passed to the container."""
        hostnames = tuple(h.strip() for h in _required("TLS_HOSTNAMES").split(",") if h.strip())
        return cls(
            name=_required("LAB"),
            homes_volume=_required("HOMES_VOLUME"),
            readonly_volume=_required("READONLY_VOLUME"),
            network=_required("NETWORK"),
            kernel_image=_required("KERNEL_IMAGE"),
            public_url=os.environ.get("PUBLIC_URL", "").strip(),
            title=_required("LAB_TITLE"),
            subdomain_host=os.environ.get("SUBDOMAIN_HOST", "").strip(),
            plain_http=_flag("PLAIN_HTTP"),
            tls_hostnames=hostnames,
            admin_sudo_nopasswd=_flag("ADMIN_SUDO_NOPASSWD"),
            private_homes=_flag("PRIVATE_HOMES"),
            kernel_idle_timeout=_seconds("KERNEL_IDLE_TIMEOUT"),
            server_idle_timeout=_seconds("SERVER_IDLE_TIMEOUT"),
            server_max_age=_seconds("SERVER_MAX_AGE"),
            kernel_memory=_required("KERNEL_MEMORY"),
            kernel_cpus=_required("KERNEL_CPUS"),
            member_memory=_required("MEMBER_MEMORY"),
            client_address_header=_required("CLIENT_ADDRESS_HEADER"),
            trusted_proxies=_count("TRUSTED_PROXIES"),
            # Added after the others: older `make up` callers (and tests) may not pass them.
            build_quota=os.environ.get("BUILD_QUOTA", "").strip() or "10g",
            build_dockerfile=_flag("BUILD_DOCKERFILE"),
            broker_volume=os.environ.get("BROKER_VOLUME", "").strip(),
        )
