"""Building a kernel image from a packed context, on a Docker engine's API.

Conventions (apt.txt, environment.yml, requirements.txt, postBuild) are not built with
`docker build`: the legacy builder runs every step as root with the default capabilities, no
process or disk limit and whatever network. Instead one container from the base image runs
the steps with kernel-style bounds - memory, processes, no-new-privileges, only the
capabilities apt and dpkg need, bounded logs, a time limit, a watch on the disk it writes -
and is then committed with the base's own command, entrypoint, user and working folder, so
the image starts kernels exactly as its base does.

A `Dockerfile` goes to the engine's builder (the broker allows that only where the admin
switched it on, after checking every image it names).

The same code builds on a laptop (the member's own engine) and in the broker (for a member):
the caller decides the limits and the labels.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import tarfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

import docker.errors
import requests.exceptions
from docker.types import LogConfig

from . import labels as L
from . import member_images as M
from .build_context import Conventions
from .errors import KernelConfigError, KernelLaunchError, PermissionRefused

BUILD_DIR = "/tmp/labnotebook-build"
# Capabilities apt and dpkg need as root in the build container: file ownership and modes
# (dpkg unpacking), and dropping to the _apt user for downloads. Not NET_RAW, MKNOD,
# SYS_CHROOT, AUDIT_WRITE... that Docker grants by default.
BUILD_CAPABILITIES = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "SETUID", "SETGID", "KILL"]
NO_CONDA_EXIT = 97
NO_PYTHON_EXIT = 98
STEP_MARK = "==> "


class BuildFailed(KernelLaunchError):
    """The build's own steps failed (a package that does not exist, a script error)."""


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


def convention_script(conventions: Conventions) -> str:
    """The build container's shell script: the conventions in repo2docker's order."""
    steps: list[tuple[str, str]] = []
    if conventions.apt:
        packages = " ".join(shlex.quote(p) for p in conventions.apt)
        steps.append(
            (
                f"apt.txt: Debian packages {' '.join(conventions.apt)}",
                "apt-get update\n"
                f"apt-get install -y --no-install-recommends -- {packages}\n"
                "apt-get clean && rm -rf /var/lib/apt/lists/*",
            )
        )
    if conventions.environment:
        steps.append(
            (
                "environment.yml: conda environment",
                '"$CONDA" env update --name base --file environment.yml\n'
                '"$CONDA" clean --all --yes || true',
            )
        )
    if conventions.requirements:
        steps.append(
            ("requirements.txt: pip packages", "python3 -m pip install -r requirements.txt")
        )
    if conventions.post_build:
        steps.append(("postBuild: your script", "chmod +x ./postBuild\n./postBuild"))
    lines = [
        "set -eu",
        f"cd {BUILD_DIR}",
        "export DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore",
        "export PIP_BREAK_SYSTEM_PACKAGES=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1",
    ]
    if conventions.environment:
        # Before anything else: a base without conda fails at once, not after apt.
        lines.append(
            "CONDA=$(command -v mamba || command -v micromamba || command -v conda || true)\n"
            f'[ -n "$CONDA" ] || exit {NO_CONDA_EXIT}'
        )
    if conventions.requirements:
        lines.append(f"command -v python3 >/dev/null || exit {NO_PYTHON_EXIT}")
    for number, (title, body) in enumerate(steps, 1):
        lines.append(f"echo {shlex.quote(f'{STEP_MARK}Step {number}/{len(steps)}: {title}')}")
        lines.append(body)
    lines.append(f"cd / && rm -rf {BUILD_DIR}")
    lines.append(f"echo {shlex.quote(STEP_MARK + 'Steps done')}")
    return "\n".join(lines) + "\n"


def _base_config(api: Any, base: dict[str, Any]) -> dict[str, Any]:
    config = base.get("Config") or {}
    return {
        "Cmd": config.get("Cmd") or [],
        "Entrypoint": config.get("Entrypoint") or [],
        "User": config.get("User") or "",
        "WorkingDir": config.get("WorkingDir") or "",
    }


def _tar_dir(name: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
    return buffer.getvalue()


class Cancelled(KernelLaunchError):
    """The member stopped the build."""


def build_conventions(
    api: Any,
    *,
    base: dict[str, Any],
    context: IO[bytes],
    conventions: Conventions,
    labels: dict[str, str],
    repository: str,
    tag: str,
    limits: BuildLimits,
    log: BuildLog,
    cancel: threading.Event | None = None,
) -> str:
    """Run the conventions' steps in a bounded container from `base`, commit it as
    `repository:tag`; the new image's ID. The container goes whatever happens."""
    script = convention_script(conventions)
    host_config = api.create_host_config(
        mem_limit=limits.memory,
        memswap_limit=limits.memory,
        nano_cpus=limits.nano_cpus,
        pids_limit=limits.pids,
        network_mode=limits.network,
        security_opt=["no-new-privileges:true"],
        cap_drop=["ALL"],
        cap_add=BUILD_CAPABILITIES,
        init=True,
        log_config=LogConfig(type="json-file", config={"max-size": "10m", "max-file": "1"}),
    )
    owner_labels = {k: v for k, v in labels.items() if k in (L.OWNER, L.OWNER_UID)}
    container = api.create_container(
        base["Id"],
        entrypoint=["/bin/sh", "-c"],
        command=[script],
        user="0:0",
        labels={L.ROLE: M.BUILD_ROLE, **owner_labels},
        host_config=host_config,
        detach=True,
    )["Id"]
    try:
        api.put_archive(container, "/", _tar_dir(BUILD_DIR.lstrip("/")))
        api.put_archive(container, BUILD_DIR, context)
        api.start(container)
        follower = threading.Thread(target=_follow, args=(api, container, log), daemon=True)
        follower.start()
        exit_code = _wait(api, container, limits, cancel)
        follower.join(10)
        if exit_code == NO_CONDA_EXIT:
            raise KernelConfigError(
                "environment.yml needs conda (or mamba) in the base image, and this base has "
                "none. Put pip packages in requirements.txt and Debian ones in apt.txt, or "
                "build --from an image with conda."
            )
        if exit_code == NO_PYTHON_EXIT:
            raise KernelConfigError(
                "requirements.txt needs python3 and pip in the base image, and this base has "
                "no python3. Build --from the lab's Python kernel image."
            )
        if exit_code != 0:
            raise BuildFailed(
                f"The build failed (exit code {exit_code}); its last lines:\n{log.tail()}\n"
                "Fix the step that failed and build again (`labnotebook kernel logs NAME` shows "
                "the whole log)."
            )
        conf = _base_config(api, base)
        conf["Labels"] = {**((base.get("Config") or {}).get("Labels") or {}), **labels}
        committed = api.commit(
            container,
            repository=repository,
            tag=tag,
            message=f"labnotebook kernel build ({conventions.describe()})",
            author=labels.get(L.OWNER, ""),
            conf=conf,
        )
        return str(committed["Id"])
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            api.remove_container(container, force=True, v=True)


def _follow(api: Any, container: str, log: BuildLog) -> None:
    pending = b""
    try:
        for chunk in api.logs(container, stream=True, follow=True, stdout=True, stderr=True):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                log.add(line.decode(errors="replace"))
    except (docker.errors.APIError, requests.exceptions.RequestException):
        pass
    if pending:
        log.add(pending.decode(errors="replace"))


def _wait(api: Any, container: str, limits: BuildLimits, cancel: threading.Event | None) -> int:
    started = time.monotonic()
    last_disk_check = started
    while True:
        try:
            return int(api.wait(container, timeout=1).get("StatusCode", -1))
        except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
            pass
        now = time.monotonic()
        if cancel is not None and cancel.is_set():
            raise Cancelled("The build was cancelled; nothing was kept.")
        if limits.time_limit is not None and now - started > limits.time_limit:
            raise PermissionRefused(
                f"The build took longer than {_duration(limits.time_limit)}, the most this lab "
                "allows (BuildPolicy.time_limit); nothing was kept. Install fewer packages per "
                "image, or build on top of an image you built before (--from)."
            )
        if limits.disk_room is not None and now - last_disk_check >= 3:
            last_disk_check = now
            rows = api.containers(all=True, filters={"id": container}, size=True)
            written = int(rows[0].get("SizeRw") or 0) if rows else 0
            if written > limits.disk_room:
                raise PermissionRefused(quota_message(written, limits))


def quota_message(added: int, limits: BuildLimits) -> str:
    return (
        f"This build adds {human(added)} to your images, over what is left of "
        f"{limits.quota_text} ({human(max(0, limits.disk_room or 0))}); nothing was kept. "
        "Remove versions you no longer need (`labnotebook kernel ls`, `labnotebook kernel rm "
        "NAME:vN`), or ask the lab's admin for a larger quota."
    )


def _duration(seconds: float) -> str:
    return f"{seconds / 60:g} minutes" if seconds >= 120 else f"{seconds:g} seconds"


def human(n: int) -> str:
    for unit, factor in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= factor:
            return f"{n / factor:.1f} {unit}"
    return f"{n} bytes"


# -- Dockerfiles --------------------------------------------------------------------------------

_FLAG_FROM = re.compile(r"--from=(\S+)", re.IGNORECASE)


def dockerfile_images(text: str) -> tuple[list[str], str | None]:
    """Every image a Dockerfile names (FROM, COPY --from, also inside ONBUILD), stage names
    and `scratch` aside, and the last FROM's image (None: a stage or scratch); refusals for
    what cannot be checked or would reach out."""
    stages: set[str] = set()
    images: list[str] = []
    final: str | None = None
    logical = re.sub(r"\\\r?\n", " ", text)
    for raw in logical.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        words = line.split()
        instruction = words[0].upper()
        if instruction == "ONBUILD" and len(words) > 1:
            words = words[1:]
            instruction = words[0].upper()
        if instruction == "FROM":
            args = [w for w in words[1:] if not w.startswith("--")]
            if not args:
                raise KernelConfigError(f"Dockerfile: {line!r} names no image.")
            if "$" in args[0]:
                raise KernelConfigError(
                    f"Dockerfile: {line!r}: a FROM with a variable cannot be checked; name the "
                    "image itself."
                )
            final = None
            if args[0].lower() not in stages and args[0] != "scratch":
                images.append(args[0])
                final = args[0]
            if len(args) >= 3 and args[1].upper() == "AS":
                stages.add(args[2].lower())
        elif instruction in ("COPY", "ADD"):
            for match in _FLAG_FROM.finditer(line):
                source = match.group(1)
                if "$" in source:
                    raise KernelConfigError(f"Dockerfile: {line!r}: --from with a variable.")
                if source.lower() not in stages and not source.isdigit():
                    images.append(source)
            if instruction == "ADD" and re.search(r"\b[a-z][a-z0-9+.-]*://", line, re.I):
                raise PermissionRefused(
                    f"Dockerfile: {line!r}: ADD from a URL is fetched by the engine itself, "
                    "outside any container; download it in a RUN step instead."
                )
    return images, final


def build_dockerfile(
    api: Any,
    *,
    context: IO[bytes],
    labels: dict[str, str],
    repository: str,
    tag: str,
    limits: BuildLimits,
    log: BuildLog,
    cancel: threading.Event | None = None,
) -> str:
    """`docker build` of the context on the engine's builder, never pulling; the image's ID."""
    params: dict[str, Any] = {
        "t": f"{repository}:{tag}",
        "labels": json.dumps(labels),
        "networkmode": limits.network,
        "pull": 0,
        "rm": 1,
        "forcerm": 1,
    }
    if limits.memory:
        params.update(memory=limits.memory, memswap=limits.memory)
    response = api._post(
        api._url("/build"),
        data=context,
        params=params,
        headers={"Content-Type": "application/x-tar"},
        stream=True,
        timeout=None,
    )
    api._raise_for_status(response)
    stop = threading.Event()

    def guard() -> None:
        # Closing the request makes the engine abandon the build and remove its containers.
        deadline = None if limits.time_limit is None else time.monotonic() + limits.time_limit
        while not stop.wait(0.5):
            if (cancel is not None and cancel.is_set()) or (
                deadline is not None and time.monotonic() > deadline
            ):
                response.close()
                return

    watchdog = threading.Thread(target=guard, daemon=True)
    watchdog.start()
    image_id = ""
    error = ""
    try:
        for raw in response.iter_lines():
            try:
                message = json.loads(raw)
            except ValueError:
                continue
            for line in str(message.get("stream") or "").splitlines():
                if line.startswith("Step "):
                    log.add(STEP_MARK + line)
                elif line.strip():
                    log.add(line)
            if message.get("error"):
                error = str(message["error"])
                log.add(error)
            aux = message.get("aux") or {}
            if isinstance(aux, dict) and aux.get("ID"):
                image_id = str(aux["ID"])
    except (requests.exceptions.RequestException, AttributeError, ValueError):
        pass
    finally:
        stop.set()
    if cancel is not None and cancel.is_set():
        raise Cancelled("The build was cancelled; nothing was kept.")
    if not image_id and not error and limits.time_limit is not None:
        raise PermissionRefused(
            f"The build took longer than {_duration(limits.time_limit)}, the most this lab "
            "allows (BuildPolicy.time_limit); nothing was kept."
        )
    if error or not image_id:
        if "pull access denied" in error or "not found" in error.lower():
            error += " (the lab's builds never pull images: name one that is here)"
        raise BuildFailed(
            f"The Dockerfile build failed: {error or 'no image was made'}\n{log.tail()}"
        )
    return image_id
