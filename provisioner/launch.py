"""One pure function from (request, identity, lab rules) to the container description.

Both launch paths use it: the provisioner on a single user's engine, and the lab's broker for
a member's request. Nothing here talks to Docker or reads the environment, so what a launch
becomes can be read, and tested, in one place.
"""

from __future__ import annotations

import posixpath
import string
from dataclasses import dataclass

from . import labels as L
from .identity import KernelIdentity
from .mounts import Mount
from .request import LaunchRequest
from .spec import KernelContainerSpec


@dataclass(frozen=True)
class LabRules:
    """What the launcher decides, whatever the request says."""

    network: str
    """The Docker network every kernel joins."""
    lab_mounts: tuple[Mount, ...] = ()
    """Mounts every kernel gets; a request for the same source and target is merged."""
    allow_root: bool = False
    cwd_shim: tuple[str, ...] | None = None
    """None: Docker enters the working folder itself (a single user's own engine). A command
    prefix: Docker only ever starts the kernel in its home, and this prefix (called with the
    folder, then the kernel's argv) enters the folder as the user; see `entry`."""


def safe_name(name: str) -> str:
    """The container-name-safe form of a user name."""
    allowed = string.ascii_letters + string.digits + "_.-"
    return "".join(c if c in allowed else "-" for c in name) or "user"


def container_name(username: str, kernel_id: str) -> str:
    return f"labnotebook-{safe_name(username)}-{kernel_id}"


def merged_mounts(lab: tuple[Mount, ...], requested: list[Mount]) -> list[Mount]:
    """The lab's mounts, then the requested ones; asking for a lab mount read-only makes it so."""
    result = list(lab)
    for mount in requested:
        same = [m for m in result if (m.source, m.target) == (mount.source, mount.target)]
        if not same:
            result.append(mount)
        elif mount.read_only and not same[0].read_only:
            result[result.index(same[0])] = mount
    return result


def entry(
    working_dir: str | None,
    argv: list[str],
    identity: KernelIdentity,
    cwd_shim: tuple[str, ...] | None,
) -> tuple[str | None, list[str]]:
    """Docker's working folder and the command, for starting in `working_dir`.

    Docker (runc) creates and enters the working folder as root, before the kernel drops to
    the user, following whatever the path names: a member's symlinks in volumes,
    `/proc/self/root/...`, `/dev/fd/N/...`, symlinks in a member's own image. So with a shim,
    Docker only ever gets the user's home (in /home, which only root can change), and any
    other folder is entered by the kernel's own process, as the user: it then sees exactly
    what the user may see. No list of bad prefixes could be complete.
    """
    if cwd_shim is None:
        return working_dir, argv
    if working_dir is None:
        return identity.home, argv
    path = "/" + posixpath.normpath(working_dir).lstrip("/")  # '//home/x' is '/home/x' to runc
    if path == identity.home:
        return path, argv
    return identity.home, [*cwd_shim, path, *argv]


def container_spec(
    request: LaunchRequest,
    identity: KernelIdentity,
    rules: LabRules,
    server: str | None = None,
    launcher_labels: dict[str, str] | None = None,
) -> KernelContainerSpec:
    """The container for `request`, run as `identity`, under `rules`.

    `server` names the launching Jupyter server process (see labels.server_identity; default:
    this process), so that the reaper removes kernels whose server is gone.
    `launcher_labels`: the launcher's own facts about the container (the broker's record of
    its GPUs), which a request's labels can never set.
    """
    working_dir, argv = entry(request.working_dir, list(request.argv), identity, rules.cwd_shim)
    return KernelContainerSpec(
        kernel_id=request.kernel_id,
        kernel_name=request.kernel_name,
        image=request.image,
        argv=argv,
        identity=identity,
        connection=dict(request.connection),
        env={**request.env, **identity.environment()},
        working_dir=working_dir,
        mounts=merged_mounts(rules.lab_mounts, request.mounts),
        network=rules.network,
        publish_ports=request.publish_ports,
        memory=request.memory,
        nano_cpus=request.nano_cpus,
        shm_size=request.shm_size,
        pids_limit=request.pids_limit,
        gpus=request.gpus,
        labels=L.kernel_labels(
            kernel_id=request.kernel_id,
            kernel_name=request.kernel_name,
            owner=identity.username,
            owner_uid=identity.uid,
            extra=request.labels,
            server=server,
            memory=request.memory,
        )
        | (launcher_labels or {}),
        pull_policy=request.pull_policy,
        name=container_name(identity.username, request.kernel_id),
        init=request.init,
        allow_root=rules.allow_root and (identity.uid == 0 or identity.gid == 0),
        ip=request.ip,
        host_ports=dict(request.host_ports),
    )
