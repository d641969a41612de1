"""The lab's settings: where things live inside the hub container, and what the operator chose.

`make up` passes the operator's choices to the container as environment variables (declared,
with their defaults and help, in `settings_schema.py`; `LabSettings.from_env` reads them);
everything else about the hub is in `jupyterhub_config.py`, and an admin may override any
JupyterHub setting in `/srv/state/jupyterhub_config.py`, which lives on the state volume and
so survives upgrades.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .settings_schema import SETTINGS, Setting

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


def _text(setting: Setting, value: str) -> str:
    return value


def _flag(setting: Setting, value: str) -> bool:
    return value.lower() in ("1", "yes", "true", "on")


def _seconds(setting: Setting, value: str) -> int:
    try:
        seconds = int(value)
    except ValueError:
        raise SystemExit(
            f"{setting.name} must be a number of seconds (0: never); got {value!r}"
        ) from None
    if seconds < 0:
        raise SystemExit(f"{setting.name} must be 0 or more seconds; got {value!r}")
    return seconds


def _count(setting: Setting, value: str) -> int | None:
    if not value:
        return None  # a count with no default, left empty: its help says what that means
    if not value.isdigit():
        raise SystemExit(f"{setting.name} must be a whole number, 0 or more; got {value!r}")
    return int(value)


def _names(setting: Setting, value: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in value.split(",") if name.strip())


_READERS: dict[str, Callable[[Setting, str], Any]] = {
    "flag": _flag,
    "seconds": _seconds,
    "count": _count,
    "list": _names,
}
"""How the hub reads each kind of setting (settings_schema.Kind); any other kind is text."""


def _value(setting: Setting, environ: Mapping[str, str]) -> Any:
    """The setting as `make up` passed it, read by its kind."""
    value = environ.get(setting.name, "").strip()
    if not value and setting.default:
        if setting.missing == "refuse":
            raise SystemExit(
                f"{setting.name} is not set. The hub container gets every setting from `make up` "
                "(hub/lab.sh, with the defaults of hub/settings_schema.py); start it that way."
            )
        value = setting.default if setting.missing == "default" else ""
    return _READERS.get(setting.kind, _text)(setting, value)


@dataclass(frozen=True)
class LabSettings:
    """What the operator chose with `make up VAR=…`: one field per setting of
    hub/settings_schema.py that the hub container is given (its `field`; the variable is the
    field's name in capitals but for LAB and LAB_TITLE), where each one's default and meaning
    are declared. No defaults here: hub/lab.sh applies the schema's, and hands the hub
    container every setting explicitly."""

    name: str  # LAB
    title: str  # LAB_TITLE
    public_url: str
    kernel_image: str
    hub_image: str
    network: str
    homes_volume: str
    readonly_volume: str
    broker_volume: str
    plain_http: bool
    tls_hostnames: tuple[str, ...]
    subdomain_host: str
    client_address_header: str
    trusted_proxies: int
    admin_sudo_nopasswd: bool
    private_homes: bool
    kernel_idle_timeout: int
    server_idle_timeout: int
    server_max_age: int
    kernel_memory: str
    kernel_cpus: str
    member_memory: str
    build_quota: str
    build_dockerfile: bool
    gpus: tuple[str, ...]
    member_gpus: int | None
    gpu_sharing: bool
    gpu_kernel_idle_timeout: int
    jobs_per_member: int
    job_queue_per_member: int

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> LabSettings:
        """The settings `make up` (hub/lab.sh) passed to the container."""
        return cls(**{s.field: _value(s, environ) for s in SETTINGS if s.field})
