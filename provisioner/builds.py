"""Building a kernel image from a packed context, on a Docker engine's API.

Conventions (apt.txt, environment.yml, requirements.txt, postBuild) are not built with
`docker build`: the legacy builder runs every step as root with the default capabilities, no
process or disk limit and whatever network. Instead one bounded build container from the base
image (build_container.py: memory, processes, no-new-privileges, only the capabilities apt
and dpkg need, bounded logs, a time limit, a watch on the disk it writes) runs the steps, and
is then committed with the base's own command, entrypoint, user and working folder, so the
image starts kernels exactly as its base does.

A `Dockerfile` goes to the engine's builder (the broker allows that only where the admin
switched it on, after checking every image it names).

The same code builds on a laptop (the member's own engine) and in the broker (for a member):
the caller decides the limits and the labels.
"""

from __future__ import annotations

import json
import re
import shlex
import threading
import time
from typing import IO, Any

import requests.exceptions

from . import labels as L
from . import member_images as M
from .build_container import (
    BUILD_CAPABILITIES,
    BuildContainer,
    BuildFailed,
    BuildLimits,
    BuildLog,
    Cancelled,
)
from .build_context import Conventions
from .durations import human_duration
from .errors import KernelConfigError, PermissionRefused
from .sizes import human_bytes

BUILD_DIR = "/tmp/labnotebook-build"
NO_CONDA_EXIT = 97
NO_PYTHON_EXIT = 98
STEP_MARK = "==> "


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


def _base_config(base: dict[str, Any]) -> dict[str, Any]:
    """What the committed image keeps of its base's configuration: how it starts kernels."""
    config = base.get("Config") or {}
    return {
        "Cmd": config.get("Cmd") or [],
        "Entrypoint": config.get("Entrypoint") or [],
        "User": config.get("User") or "",
        "WorkingDir": config.get("WorkingDir") or "",
    }


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
    owner_labels = {k: v for k, v in labels.items() if k in (L.OWNER, L.OWNER_UID)}
    with BuildContainer(
        api,
        base["Id"],
        limits=limits,
        log=log,
        labels={L.ROLE: M.BUILD_ROLE, **owner_labels},
        command=["/bin/sh", "-c", convention_script(conventions)],
        user="0:0",
        capabilities=BUILD_CAPABILITIES,
        cancel=cancel,
        over_room=lambda written: quota_message(written, limits),
    ) as container:
        container.put_dir(BUILD_DIR)
        container.put(BUILD_DIR, context)
        exit_code = container.run()
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
        conf = _base_config(base)
        conf["Labels"] = {**((base.get("Config") or {}).get("Labels") or {}), **labels}
        return container.commit(
            repository,
            tag,
            message=f"labnotebook kernel build ({conventions.describe()})",
            author=labels.get(L.OWNER, ""),
            conf=conf,
        )


def quota_message(added: int, limits: BuildLimits) -> str:
    return (
        f"This build adds {human_bytes(added)} to your images, over what is left of "
        f"{limits.quota_text} ({human_bytes(max(0, limits.disk_room or 0))}); nothing was kept. "
        "Remove versions you no longer need (`labnotebook kernel ls`, `labnotebook kernel rm "
        "NAME:vN`), or ask the lab's admin for a larger quota."
    )


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
    # docker-py's private request helpers, not APIClient.build, for two reasons:
    # * a cancel or the time limit stops the build by closing its HTTP response from the
    #   watchdog thread below; APIClient.build hands out only a generator over that response,
    #   which cannot be closed while another thread is blocked reading it;
    # * APIClient.build attaches every registry credential of the calling user (in the
    #   broker: root's ~/.docker/config.json) as X-Registry-Config to a build that a member's
    #   Dockerfile drives.
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
            f"The build took longer than {human_duration(limits.time_limit)}, the most this "
            "lab allows (BuildPolicy.time_limit); nothing was kept."
        )
    if error or not image_id:
        if "pull access denied" in error or "not found" in error.lower():
            error += " (the lab's builds never pull images: name one that is here)"
        raise BuildFailed(
            f"The Dockerfile build failed: {error or 'no image was made'}\n{log.tail()}"
        )
    return image_id
