"""The wire protocol between users' Jupyter servers and the lab's root-owned kernel broker.

One JSON object per line over a Unix stream socket, strictly request then response:

    {"op": "launch", "spec": {...}}            ->  {"ok": true, "result": {...}}
    {"op": "state", "container": "3f2a..."}    ->  {"ok": false, "error": "PermissionRefused",
                                                    "message": "..."}

Who is asking is never part of a request: the broker reads the caller's UID from the kernel
(SO_PEERCRED). Error names are the exception classes of `errors.py`, so the client re-raises
the very class (and message) the broker raised and users see the broker's explanation.
It lives in the provisioner package because both sides need it and the hub already depends on
the provisioner, never the other way round.
"""

from __future__ import annotations

import json
import signal
import socket
import struct
from typing import Any

from .errors import (
    AddressUnavailable,
    EngineUnreachable,
    GpuUnavailable,
    ImageNotAvailable,
    KernelConfigError,
    KernelDiedDuringStart,
    KernelLaunchError,
    PermissionRefused,
)

DEFAULT_SOCKET = "/run/labnotebook/broker.sock"

# In the lab hub the socket lives in a folder of its own on a volume shared with every kernel
# container (read-only there), so `!labnotebook kernel ...` in a notebook cell reaches the
# broker too; DEFAULT_SOCKET is a link to it in the hub.
SHARED_SOCKET = "/run/labnotebook-broker/broker.sock"

# A launch request carries argv, env and the connection file: generous, but bounded, so one
# connection cannot make the root daemon buffer without limit.
MAX_LINE = 1 << 20

# The operations a user may ask for; "reap" additionally needs a root peer. The image ones
# (hub/broker_builds.py): a build is build, build_data..., build_status... on one connection;
# an export (hub/broker_exports.py) likewise export, export_data..., export_status...
OPS = (
    "hello", "launch", "state", "signal", "remove", "logs", "wait", "list", "reap", "gpus",
    "gpu_release",
    "build", "build_data", "build_status", "build_cancel", "build_log",
    "images", "image_remove", "image_publish",
    "export_base", "export", "export_data", "export_status", "export_cancel", "export_check",
    "export_save",
    "job_submit", "jobs", "job_status", "job_cancel", "job_logs",
)  # fmt: skip

# Notebook jobs (hub/notebook_jobs.py). A job's runner is a container of its own, so the
# broker cannot see its PID either; its kernel operations carry the job's secret ("job": the
# token the broker gave the runner in JOB_TOKEN_ENV), and only those, of that member's
# running job, are carried out for it. Its kernel is then the job's: never reaped as an
# orphan, removed when the job ends.
JOB_RUNNER_OPS = frozenset({"launch", "state", "signal", "remove", "logs", "wait"})
JOB_TOKEN_ENV = "LABNOTEBOOK_JOB_TOKEN"

# What a caller the broker cannot see by PID may ask for (a process in another PID namespace,
# e.g. `!labnotebook kernel ...` in a kernel's container, has peer PID 0): the image
# operations, whose state the broker keeps per member. Not launches: the broker removes a
# kernel when the process that launched it is gone, which it cannot tell for such a caller.
UNSEEN_PEER_OPS = frozenset(
    {
        "hello", "gpus", "build", "build_data", "build_status", "build_cancel", "build_log",
        "images", "image_remove", "image_publish",
        "export_base", "export", "export_data", "export_status", "export_cancel",
        "export_check", "export_save",
        "job_submit", "jobs", "job_status", "job_cancel", "job_logs",
    }
)  # fmt: skip

# Signals a kernel's owner may send: interrupt, the usual ways to stop, and the user signals
# some kernels use. Not SIGSTOP/SIGCONT (a stopped kernel looks dead to its server), nor
# anything that would reach the container's init in surprising ways. 0 checks existence.
ALLOWED_SIGNALS = frozenset(
    {
        0,
        signal.SIGINT,
        signal.SIGTERM,
        signal.SIGKILL,
        signal.SIGHUP,
        signal.SIGUSR1,
        signal.SIGUSR2,
        signal.SIGQUIT,
    }
)

ERROR_CLASSES: dict[str, type[KernelLaunchError]] = {
    cls.__name__: cls
    for cls in (
        KernelLaunchError,
        AddressUnavailable,
        KernelConfigError,
        EngineUnreachable,
        ImageNotAvailable,
        GpuUnavailable,
        KernelDiedDuringStart,
        PermissionRefused,
    )
}

_UCRED = struct.Struct("3i")


def peer_credentials(sock: Any) -> tuple[int, int, int]:
    """`(pid, uid, gid)` of the process at the other end of a connected Unix socket.

    The kernel records them when the connection is made, so they cannot be forged by what the
    peer sends. Works on plain sockets and on asyncio's TransportSocket wrappers.
    """
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return pid, uid, gid


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def error_response(error: BaseException) -> dict[str, Any]:
    """The wire form of a refusal or failure; unknown exception types become KernelLaunchError."""
    name = type(error).__name__
    for cls in type(error).__mro__:
        if cls.__name__ in ERROR_CLASSES and issubclass(cls, KernelLaunchError):
            name = cls.__name__
            break
    else:
        name = KernelLaunchError.__name__
    response: dict[str, Any] = {"ok": False, "error": name, "message": str(error)}
    if isinstance(error, KernelDiedDuringStart):
        response.update(exit_code=error.exit_code, logs=error.logs)
    return response


def error_from_response(response: dict[str, Any]) -> KernelLaunchError:
    """The exception a failed response stands for, with the broker's own message."""
    cls = ERROR_CLASSES.get(str(response.get("error")), KernelLaunchError)
    message = str(response.get("message") or "The kernel broker refused the request.")
    if cls is KernelDiedDuringStart:
        return KernelDiedDuringStart(
            message, exit_code=response.get("exit_code"), logs=str(response.get("logs") or "")
        )
    return cls(message)
