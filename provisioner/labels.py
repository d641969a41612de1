"""Labels on kernel containers, and the identity of the server that launched them.

Labels make every kernel container self-describing (`docker ps --filter label=...`) and let
a later server or `labnotebook kernels prune` tell leftovers from live kernels.
"""

from __future__ import annotations

import os
import socket

PREFIX = "org.labnotebook"
ROLE = f"{PREFIX}.role"
KERNEL_ID = f"{PREFIX}.kernel-id"
KERNEL_NAME = f"{PREFIX}.kernel-name"
OWNER = f"{PREFIX}.owner"
OWNER_UID = f"{PREFIX}.owner-uid"
SERVER = f"{PREFIX}.server"
MEMORY = f"{PREFIX}.memory"
"""The kernel's memory limit in bytes: what the broker's per-member cap adds up."""
KERNEL_ROLE = "kernel"
JOB_ID = f"{PREFIX}.job-id"
"""On a notebook job's runner container and on the kernel it runs (hub/notebook_jobs.py): which
job they belong to. The broker removes both when the job ends, and never reaps the kernel as
an orphan meanwhile (its server is the job, not a process in the hub)."""
JOB_ROLE = "job"
"""The role of a notebook job's runner container."""


def _process_start_ticks(pid: int) -> str:
    """The process's start time in clock ticks since boot; with the PID it names one process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # Field 22; the command name (field 2) may contain spaces, so split after it.
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "0"


def server_identity(pid: int | None = None) -> str:
    """`host/pid/start-ticks` of a Jupyter server process (this one by default)."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}/{pid}/{_process_start_ticks(pid)}"


def server_is_gone(identity: str) -> bool | None:
    """True if the server is known to be gone, False if alive, None if it cannot be told.

    Only servers on this host (same hostname, hence the same PID namespace in the lab's hub
    container) can be checked; the start time guards against a recycled PID.
    """
    try:
        host, pid, ticks = identity.split("/")
        pid_number = int(pid)
    except ValueError:
        return None
    if host != socket.gethostname():
        return None
    if not os.path.exists(f"/proc/{pid_number}"):
        return True
    return _process_start_ticks(pid_number) != ticks


def kernel_labels(
    *,
    kernel_id: str,
    kernel_name: str,
    owner: str,
    owner_uid: int,
    extra: dict[str, str],
    server: str | None = None,
    memory: int | None = None,
) -> dict[str, str]:
    """The extra labels (never ours: org.labnotebook.* are dropped), then ours."""
    labels = {k: str(v) for k, v in extra.items() if not k.startswith(PREFIX + ".")}
    labels.update(
        {
            ROLE: KERNEL_ROLE,
            KERNEL_ID: kernel_id,
            KERNEL_NAME: kernel_name,
            OWNER: owner,
            OWNER_UID: str(owner_uid),
            SERVER: server or server_identity(),
            MEMORY: str(memory or 0),
        }
    )
    return labels
