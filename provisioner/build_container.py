"""One bounded build container: how the lab runs steps on an image and keeps the result.

A member's convention build (builds.py), an export's setup and an export's check
(export_recipe.py, used by the broker and by a laptop's `labnotebook export` alike) all do
the same: create a container from an image with the build's bounds (host_config.py), put
files into it, run it while its output goes to a bounded `BuildLog`, stop it at the time
limit, when it writes more than the member's quota leaves, or when the member cancels - and
remove it whatever happens, after committing it as an image if the caller wants one.

    with BuildContainer(api, image, limits=..., log=..., command=[...], ...) as container:
        container.put_dir("/tmp/work")
        container.put("/tmp/work", tar)
        exit_code = container.run()
        image_id = container.commit(repository, tag, message=..., author=..., conf=...)

`BuildLimits` are the caller's (the lab's BuildPolicy in the broker, none on a laptop).
"""

from __future__ import annotations

import contextlib
import io
import tarfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import IO, Any

import docker.errors
import requests.exceptions

from .durations import human_duration
from .errors import KernelLaunchError, PermissionRefused
from .host_config import build_host_config

# Capabilities apt and dpkg need as root in the build container: file ownership and modes
# (dpkg unpacking), and dropping to the _apt user for downloads. Not NET_RAW, MKNOD,
# SYS_CHROOT, AUDIT_WRITE... that Docker grants by default.
BUILD_CAPABILITIES = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "SETUID", "SETGID", "KILL"]
DISK_CHECK_SECONDS = 3.0
"""How often a container's written bytes are compared with the room the quota leaves."""


@dataclass
class BuildLimits:
    """What a build container may use; None: no bound (a laptop's own engine)."""

    memory: int | None = None
    nano_cpus: int | None = None
    pids: int | None = 1024
    time_limit: float | None = None
    network: str = "bridge"
    log_bytes: int = 4 << 20
    disk_room: int | None = None
    """Bytes the build may still add before the member's quota is exceeded."""
    quota_text: str = ""
    """How the quota is described in a refusal (e.g. 'your 5g quota')."""


@dataclass
class BuildLog:
    """The build's output as it comes, bounded (the tail is kept), for a caller to follow."""

    limit: int = 4 << 20
    lines: list[str] = field(default_factory=list)
    dropped: int = 0
    _size: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    on_line: Callable[[str], None] | None = None

    def add(self, line: str) -> None:
        line = line.rstrip("\n")[:4000]
        with self._lock:
            self.lines.append(line)
            self._size += len(line) + 1
            while self._size > self.limit and len(self.lines) > 1:
                self._size -= len(self.lines.pop(0)) + 1
                self.dropped += 1
        if self.on_line:
            self.on_line(line)

    def since(self, index: int) -> tuple[list[str], int]:
        """Lines after the `index`-th line ever added, and the next index."""
        with self._lock:
            start = max(0, index - self.dropped)
            return self.lines[start:], self.dropped + len(self.lines)

    def text(self) -> str:
        with self._lock:
            head = f"[{self.dropped} earlier lines dropped]\n" if self.dropped else ""
            return head + "\n".join(self.lines) + "\n"

    def tail(self, n: int = 15) -> str:
        with self._lock:
            return "\n".join(self.lines[-n:])


class BuildFailed(KernelLaunchError):
    """The build's own steps failed (a package that does not exist, a script error)."""


class Cancelled(KernelLaunchError):
    """The member stopped the build."""


def directory_tar(path: str) -> bytes:
    """A tar of one empty folder `path` (relative), for put_archive: the engine puts files
    only into folders that exist."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(path)
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
    return buffer.getvalue()


class BuildContainer:
    """A container from `image` that runs `command` (or the image's own) within `limits`,
    its output in `log`; created on entering the `with`, removed on leaving it."""

    def __init__(
        self,
        api: Any,
        image: str,
        *,
        limits: BuildLimits,
        log: BuildLog,
        labels: dict[str, str],
        command: list[str] | None = None,
        user: str | None = None,
        network: str | None = None,
        capabilities: Iterable[str] = (),
        cancel: threading.Event | None = None,
        over_room: Callable[[int], str] | None = None,
    ) -> None:
        """`command` replaces the image's entrypoint and command (None: they run);
        `network` defaults to the limits'; `over_room(written)` is the refusal of a build
        that wrote more than `limits.disk_room`."""
        self.api = api
        self.image = image
        self.limits = limits
        self.log = log
        self.labels = labels
        self.command = command
        self.user = user
        self.network = network or limits.network
        self.capabilities = list(capabilities)
        self.cancel = cancel
        self.over_room = over_room or (
            lambda written: (
                f"The build wrote {written} bytes, more than the "
                f"{limits.disk_room} it may; nothing was kept."
            )
        )
        self.id = ""

    def __enter__(self) -> BuildContainer:
        limits = self.limits
        host_config = build_host_config(
            self.api,
            memory=limits.memory,
            nano_cpus=limits.nano_cpus,
            pids=limits.pids,
            network=self.network,
            capabilities=self.capabilities,
        )
        command: dict[str, Any] = {}
        if self.command is not None:
            command = {"entrypoint": self.command[:1], "command": self.command[1:]}
        self.id = self.api.create_container(
            self.image,
            user=self.user,
            labels=self.labels,
            host_config=host_config,
            detach=True,
            **command,
        )["Id"]
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self.api.remove_container(self.id, force=True, v=True)

    def put_dir(self, path: str) -> None:
        """Make the (empty) folder `path` in the container."""
        self.api.put_archive(self.id, "/", directory_tar(path.lstrip("/")))

    def put(self, path: str, archive: bytes | IO[bytes]) -> None:
        """Unpack the tar `archive` into the container's folder `path`."""
        self.api.put_archive(self.id, path, archive)

    def run(self) -> int:
        """Start the container and wait for its exit code, its output going to the log as it
        comes; Cancelled, or refused past the time limit or the disk room."""
        self.api.start(self.id)
        follower = threading.Thread(target=self._follow, daemon=True)
        follower.start()
        code = self._wait()
        follower.join(10)
        return code

    def commit(
        self, repository: str, tag: str, *, message: str, author: str, conf: dict[str, Any]
    ) -> str:
        """The stopped container as the image `repository:tag`, with `conf` (its command,
        user, labels...); the image's ID."""
        committed = self.api.commit(
            self.id, repository=repository, tag=tag, message=message, author=author, conf=conf
        )
        return str(committed["Id"])

    def _follow(self) -> None:
        pending = b""
        try:
            for chunk in self.api.logs(self.id, stream=True, follow=True, stdout=True, stderr=True):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    self.log.add(line.decode(errors="replace"))
        except (docker.errors.APIError, requests.exceptions.RequestException):
            pass
        if pending:
            self.log.add(pending.decode(errors="replace"))

    def _wait(self) -> int:
        limits = self.limits
        started = time.monotonic()
        last_disk_check = started
        while True:
            try:
                return int(self.api.wait(self.id, timeout=1).get("StatusCode", -1))
            except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
                pass
            now = time.monotonic()
            if self.cancel is not None and self.cancel.is_set():
                raise Cancelled("The build was cancelled; nothing was kept.")
            if limits.time_limit is not None and now - started > limits.time_limit:
                raise PermissionRefused(
                    f"The build took longer than {human_duration(limits.time_limit)}, the most "
                    "this lab allows (BuildPolicy.time_limit); nothing was kept. Install fewer "
                    "packages per image, or build on top of an image you built before (--from)."
                )
            if limits.disk_room is not None and now - last_disk_check >= DISK_CHECK_SECONDS:
                last_disk_check = now
                rows = self.api.containers(all=True, filters={"id": self.id}, size=True)
                written = int(rows[0].get("SizeRw") or 0) if rows else 0
                if written > limits.disk_room:
                    raise PermissionRefused(self.over_room(written))
