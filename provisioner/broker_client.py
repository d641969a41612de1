"""`BrokerEngine`: the provisioner's engine when kernels start through the lab's kernel broker.

It is a `spec.KernelEngine`, like `local_engine.LocalEngine`, so the provisioner does not care
which one it drives; but instead of the Docker socket (which users in the lab hub cannot open)
it talks to the root-owned broker's Unix socket (`labnotebook.hub.broker`). Only the member's
`LaunchRequest` is sent: the broker decides the kernel's user, groups, mounts and network
itself; a refusal comes back as the same exception class the broker raised, with the broker's
message, for Jupyter to show the user.

Methods are called from the provisioner's thread pool, concurrently. Each call takes an idle
connection (or opens one: a local connect costs microseconds) and puts it back afterwards, so
concurrent calls never share a connection and sequential ones reuse it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import stat
import threading
from typing import Any

from .broker_protocol import (
    DEFAULT_SOCKET,
    JOB_RUNNER_OPS,
    JOB_TOKEN_ENV,
    MAX_LINE,
    encode,
    error_from_response,
    peer_credentials,
)
from .errors import EngineUnreachable, KernelLaunchError
from .request import LaunchRequest
from .spec import ContainerState, LaunchedContainer

# Answers can be longer than requests (a root peer listing every kernel), but still bounded.
MAX_RESPONSE = 16 * MAX_LINE

# Operations that are safe to send again when a reused connection turns out to be dead.
_IDEMPOTENT = frozenset({"hello", "state", "signal", "remove", "logs", "wait", "list"})


class _Connection:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = sock.makefile("rb")

    def alive(self) -> bool:
        """False if the broker closed it (or sent something unasked) while it sat idle."""
        try:
            self.sock.settimeout(0)  # a peek that never waits
            self.sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return True  # nothing to read: open and quiet, as it should be
        except OSError:
            return False
        return False  # end of stream, or stray bytes: either way not usable

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


class BrokerEngine:
    """A client of the lab's kernel broker: a `KernelEngine`, and the broker's other calls."""

    def __init__(
        self,
        socket_path: str = DEFAULT_SOCKET,
        timeout: float = 300.0,
        broker_uid: int | None = 0,
        max_idle: int = 4,
    ) -> None:
        """`broker_uid`: the UID the process serving the socket must have (root by default);
        the key of every kernel goes through the socket, so a socket served by anyone else is
        refused. None skips the check (a test broker run by an ordinary user)."""
        self.socket_path = socket_path
        self.timeout = timeout
        self.broker_uid = broker_uid
        self.max_idle = max_idle
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()
        self._owner = (os.getpid(), os.geteuid())
        # In a notebook job's runner container only (provisioner/job_runner.py): the job's
        # secret, which lets the broker launch the job's kernel for a process it cannot see.
        self.job_token = os.environ.get(JOB_TOKEN_ENV) or None

    def where(self) -> str:
        return f"the kernel broker at {self.socket_path}"

    # -- transport ---------------------------------------------------------------------------

    def _unreachable(self, problem: str) -> EngineUnreachable:
        return EngineUnreachable(
            f"Cannot reach the lab's kernel broker at {self.socket_path}: {problem}. Kernels in "
            "this lab start through the broker, which runs as root in the hub; ask the lab's "
            "admin to check that it is running (`make logs`)."
        )

    def _connect(self) -> _Connection:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
            if self.broker_uid is not None:
                _, uid, _ = peer_credentials(sock)
                if uid != self.broker_uid:
                    raise self._unreachable(
                        f"the socket is served by UID {uid}, not by the broker (UID "
                        f"{self.broker_uid}); refusing to send it the kernel's secrets"
                    )
        except FileNotFoundError:
            sock.close()
            raise self._unreachable(
                "the socket does not exist, so the broker is not running"
            ) from None
        except ConnectionRefusedError:
            sock.close()
            raise self._unreachable(
                "nothing accepts connections there (the broker stopped)"
            ) from None
        except PermissionError:
            sock.close()
            mode = ""
            with contextlib.suppress(OSError):
                mode = f" (mode {stat.S_IMODE(os.stat(self.socket_path).st_mode):o})"
            raise self._unreachable(f"this user may not connect to the socket{mode}") from None
        except OSError as e:
            sock.close()
            raise self._unreachable(str(e)) from None
        except BaseException:
            sock.close()
            raise
        return _Connection(sock)

    def _checkout(self) -> tuple[_Connection, bool]:
        with self._lock:
            if self._owner != (os.getpid(), os.geteuid()):
                # A forked child (or a process that changed user) must not speak on the
                # parent's connections: answers would interleave, and the broker would still
                # see the credentials of whoever opened them.
                self._idle, self._owner = [], (os.getpid(), os.geteuid())
            while self._idle:
                connection = self._idle.pop()
                if connection.alive():
                    return connection, True
                connection.close()
        return self._connect(), False

    def _checkin(self, connection: _Connection) -> None:
        with self._lock:
            if len(self._idle) < self.max_idle:
                self._idle.append(connection)
                return
        connection.close()

    def close(self) -> None:
        """Close idle connections (a later call opens new ones)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    def request(
        self, op: str, args: dict[str, Any] | None = None, io_timeout: float | None = None
    ) -> dict[str, Any]:
        """Send one request; return the broker's whole response (errors raised as exceptions).

        The response may carry more than the result (e.g. `engine_ms` for launches, which the
        benchmark uses to tell the broker's own cost from Docker's).
        """
        job = {"job": self.job_token} if self.job_token and op in JOB_RUNNER_OPS else {}
        line = encode({"op": op, **(args or {}), **job})
        io_timeout = self.timeout if io_timeout is None else io_timeout
        if len(line) > MAX_LINE:
            raise KernelLaunchError(f"The request to the kernel broker is too large ({op}).")
        for attempt in (1, 2):
            connection, reused = self._checkout()
            try:
                connection.sock.settimeout(io_timeout)
                connection.sock.sendall(line)
                answer = connection.reader.readline(MAX_RESPONSE)
                if not answer:
                    raise ConnectionResetError("the broker closed the connection")
            except TimeoutError:
                connection.close()
                raise KernelLaunchError(
                    f"The kernel broker did not answer {op!r} within {io_timeout:.0f} s; the "
                    "lab's admin will find the reason in the broker's log."
                ) from None
            except OSError as e:
                connection.close()
                if reused and attempt == 1 and op in _IDEMPOTENT:
                    continue  # the broker restarted meanwhile: one fresh try
                raise self._unreachable(f"the connection broke during {op!r} ({e})") from None
            except BaseException:
                connection.close()
                raise
            self._checkin(connection)
            try:
                response = json.loads(answer)
            except ValueError:
                raise KernelLaunchError(
                    f"The kernel broker sent an unreadable answer to {op!r}."
                ) from None
            if not isinstance(response, dict):
                raise KernelLaunchError(f"The kernel broker sent an unreadable answer to {op!r}.")
            if not response.get("ok"):
                raise error_from_response(response)
            return response
        raise AssertionError("unreachable")

    def call(self, op: str, **args: Any) -> Any:
        return self.request(op, args).get("result")

    # -- the KernelEngine interface -----------------------------------------------------------

    def launch(self, request: LaunchRequest) -> LaunchedContainer:
        """Ask the broker to start the request's kernel container (as *this* process's user):
        who the kernel runs as, the lab's mounts, network, name and labels are the broker's to
        decide. (The wire field is still called "spec", as in every earlier broker.)"""
        result = self.call("launch", spec=request.to_json())
        return LaunchedContainer(
            container_id=result["container_id"],
            name=result["name"],
            ip=result["ip"],
            ports={k: int(v) for k, v in result["ports"].items()},
            gpus=result.get("gpus", ""),
            # Absent from brokers older than the record of saved notebooks: then unknown.
            image_id=str(result.get("image_id") or ""),
            image_digests=tuple(result.get("image_digests") or ()),
            image_labels=dict(result.get("image_labels") or {}),
            idle_timeout=float(result.get("idle_timeout") or 0),
        )

    def state(self, container_id: str) -> ContainerState | None:
        """The container's state, or None if it no longer exists."""
        result = self.call("state", container=container_id)
        if result is None:
            return None
        known = {f.name for f in dataclasses.fields(ContainerState)}
        # Fields a newer or older broker adds are ignored, not a crash.
        return ContainerState(**{k: v for k, v in result.items() if k in known})

    def signal(self, container_id: str, signum: int) -> None:
        self.call("signal", container=container_id, signal=int(signum))

    def remove(self, container_id: str, restarting: bool = False) -> None:
        # Sent only when true, so that brokers from before the lab's GPU book understand it.
        extra = {"restarting": True} if restarting else {}
        self.call("remove", container=container_id, **extra)

    def gpus(self) -> list[dict[str, Any]]:
        """The lab's GPUs and who holds each (`labnotebook gpus`)."""
        return list(self.call("gpus"))

    def gpu_release(self, gpu: str) -> list[dict[str, Any]]:
        """Stop the kernels that hold `gpu` (the lab's admins only); the ones stopped."""
        return list(self.call("gpu_release", gpu=gpu))

    def logs(self, container_id: str, tail: int = 20) -> str:
        return str(self.call("logs", container=container_id, tail=int(tail)))

    def wait(self, container_id: str, timeout: float) -> int | None:
        """Block until the container exits (its exit code), or None after `timeout` seconds."""
        response = self.request(
            "wait", {"container": container_id, "timeout": timeout}, io_timeout=timeout + 60
        )
        result = response.get("result")
        return None if result is None else int(result)

    def kernel_containers(self, owner_uid: int | None = None) -> list[dict[str, Any]]:
        """This user's kernel containers (as `docker ps` summaries); root may see everyone's."""
        return list(self.call("list", owner_uid=owner_uid))

    # -- beyond the KernelEngine interface -----------------------------------------------------

    def hello(self) -> dict[str, Any]:
        """The broker's version and who it thinks we are (handy for `labnotebook` checks)."""
        return dict(self.call("hello"))

    def reap(self) -> list[str]:
        """Have the broker remove kernels whose server is gone now (root only)."""
        return list(self.call("reap"))

    # -- notebook jobs (provisioner/jobs.py is the member's API on top) ----------------------

    def job_submit(self, **fields: Any) -> dict[str, Any]:
        """Submit a notebook job (or a schedule, with `every`); the job as the broker has it."""
        return dict(self.call("job_submit", **fields))

    def jobs(self, everyone: bool = False) -> list[dict[str, Any]]:
        """Your jobs and schedules (an admin's `everyone`: the whole lab's)."""
        return list(self.call("jobs", everyone=everyone))

    def job_status(self, job: str) -> dict[str, Any]:
        return dict(self.call("job_status", job=job))

    def job_cancel(self, job: str, reason: str | None = None) -> dict[str, Any]:
        """Cancel a job or remove a schedule; `reason` (admins): what its error says."""
        fields: dict[str, Any] = {"job": job} if reason is None else {"job": job, "reason": reason}
        return dict(self.call("job_cancel", **fields))

    def job_logs(self, job: str, since: int = 0, wait: float = 0) -> dict[str, Any]:
        """The job's output lines from line `since` on: {"lines", "next", "done"}; `wait`:
        seconds to wait for a new line (or the end)."""
        response = self.request(
            "job_logs", {"job": job, "since": since, "wait": wait}, io_timeout=wait + 60
        )
        return dict(response.get("result") or {})
