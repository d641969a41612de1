"""Where `labnotebook kernel ...` builds and keeps images: the lab's broker, or your own engine.

In the lab hub (and in its kernels, through the socket mounted there) members have no engine:
`BrokerImages` packs the folder in the member's own process and sends it to the kernel broker,
which builds under the lab's rules (hub/broker_builds.py). On a laptop `EngineImages` runs the
very same build steps (provisioner/builds.py) on the Docker engine the user already controls,
without the lab's quota or time limit.
"""

from __future__ import annotations

import base64
import datetime
import getpass
import os
import tarfile
import threading
from collections.abc import Callable
from typing import Any, Protocol

from . import member_images as M
from .broker_client import BrokerEngine
from .broker_protocol import DEFAULT_SOCKET, SHARED_SOCKET, error_from_response
from .build_context import DEFAULT_CONTEXT_LIMIT, Conventions, pack
from .defaults import KERNEL_IMAGE
from .errors import KernelConfigError, KernelLaunchError
from .sizes import human_bytes

DEFAULT_BASE = KERNEL_IMAGE
"""What a build without --from starts from: the lab's Python kernel."""


class Images(Protocol):
    def build(
        self, name: str, folder: str, base: str | None, say: Callable[[str], None]
    ) -> dict[str, Any]: ...
    def images(self) -> list[dict[str, Any]]: ...
    def remove(self, reference: str) -> list[str]: ...
    def log(self, name: str) -> str: ...
    def publish(self, reference: str, withdraw: bool) -> str: ...


def broker_socket(explicit: str | None = None) -> str | None:
    """The broker's socket if this machine has one: the option, $LABNOTEBOOK_BROKER_SOCKET, or
    the lab hub's usual places (in the hub, and in its kernels' containers). The one place
    that knows: the `labnotebook` commands and the kernel provisioner ask here.

    Whatever is found, `BrokerEngine` sends nothing to a socket not served by root, so a
    member's own socket (her variable, a link in her image) fools only herself and is
    refused even then. The broker volume comes before the old link: in a kernel container it
    is mounted read-only over whatever the image has there."""
    if explicit:  # asked for: that one, never another one instead
        if os.path.exists(explicit):
            return explicit
        raise KernelConfigError(f"There is no kernel broker socket at {explicit}.")
    for candidate in (os.environ.get("LABNOTEBOOK_BROKER_SOCKET"), SHARED_SOCKET, DEFAULT_SOCKET):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


class BrokerImages:
    """Images through the lab's kernel broker."""

    def __init__(self, socket_path: str, broker_uid: int | None = 0) -> None:
        self.client = BrokerEngine(socket_path, broker_uid=broker_uid)

    def build(
        self, name: str, folder: str, base: str | None, say: Callable[[str], None]
    ) -> dict[str, Any]:
        M.check_name(name)
        Conventions.of_folder(folder)  # refusals before packing anything
        context = pack(folder, DEFAULT_CONTEXT_LIMIT << 4)  # the broker says its own limit
        try:
            begun = self.client.call("build", name=name, base=base, size=context.size)
            build, chunk = begun["build"], int(begun["chunk"])
            say(f"Sending the build folder ({human_bytes(context.size)})")
            try:
                sent = 0
                while True:
                    data = context.file.read(chunk)
                    sent += len(data)
                    last = sent >= context.size
                    self.client.call(
                        "build_data", build=build, data=base64.b64encode(data).decode(), last=last
                    )
                    if last:
                        break
                return self._follow(build, say)
            except KeyboardInterrupt:
                self.client.call("build_cancel", build=build)
                raise
        finally:
            context.close()

    def _follow(self, build: str, say: Callable[[str], None]) -> dict[str, Any]:
        since = 0
        while True:
            status = self.client.call("build_status", build=build, since=since, wait=5.0)
            for line in status["lines"]:
                say(line)
            since = status["next"]
            if status["done"]:
                if status.get("error"):
                    raise error_from_response(status)
                return dict(status["result"])

    def images(self) -> list[dict[str, Any]]:
        return list(self.client.call("images"))

    def remove(self, reference: str) -> list[str]:
        return list(self.client.call("image_remove", image=reference))

    def log(self, name: str) -> str:
        return str(self.client.call("build_log", name=name))

    def publish(self, reference: str, withdraw: bool) -> str:
        return str(self.client.call("image_publish", image=reference, withdraw=withdraw))


class EngineImages:
    """Images on the user's own Docker engine (a laptop)."""

    def __init__(self, docker_host: str | None = None) -> None:
        from .engine import DockerEngine

        self.engine = DockerEngine.shared(docker_host)
        self.uid = os.getuid()
        self.username = getpass.getuser()

    @property
    def api(self) -> Any:
        return self.engine.api

    def _log_path(self, name: str) -> str:
        from jupyter_core.paths import jupyter_data_dir

        folder = os.path.join(jupyter_data_dir(), "labnotebook-build-logs")
        os.makedirs(folder, exist_ok=True)
        return os.path.join(folder, M.check_name(name) + ".log")

    def build(
        self, name: str, folder: str, base: str | None, say: Callable[[str], None]
    ) -> dict[str, Any]:
        # Here, not at the top: builds.py needs the Docker SDK, which kernel images (where
        # BrokerImages runs) lack.
        from .builds import (
            BuildLimits,
            BuildLog,
            build_conventions,
            build_dockerfile,
            dockerfile_images,
        )

        M.check_name(name)
        Conventions.of_folder(folder)
        log = BuildLog(on_line=say)
        context = pack(folder)
        ok = False
        try:
            with tarfile.open(fileobj=context.file) as tar:
                conventions = Conventions.read(tar)
                dockerfile = ""
                if conventions.dockerfile:
                    extracted = tar.extractfile("Dockerfile")
                    dockerfile = extracted.read().decode(errors="replace") if extracted else ""
            context.file.seek(0)
            base_ref = base or DEFAULT_BASE
            if conventions.dockerfile:
                _, final = dockerfile_images(dockerfile)
                base_ref = final or base_ref
            base_details = M.inspect(self.api, base_ref)
            if base_details is None:
                raise KernelConfigError(
                    f"The image {base_ref!r} is not on this engine; build it first (`make "
                    "images` in the labnotebook checkout) or name another with --from."
                )
            images = M.member_images(self.api, self.uid)
            version = M.next_version(images, name)
            repository = M.repository(self.username, self.uid, name)
            labels = M.image_labels(
                owner=self.username,
                owner_uid=self.uid,
                name=name,
                version=version,
                built=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                context_digest=context.digest,
                base_id=base_details["Id"],
                base_size=int(base_details.get("Size") or 0),
            )
            log.add(f"==> Building {repository}:v{version} from {conventions.describe()}")
            common = {
                "context": context.file,
                "labels": labels,
                "repository": repository,
                "tag": f"v{version}",
                "limits": BuildLimits(),
                "log": log,
                "cancel": threading.Event(),
            }
            if conventions.dockerfile:
                image_id = build_dockerfile(self.api, **common)
            else:
                image_id = build_conventions(
                    self.api, base=base_details, conventions=conventions, **common
                )
            ok = True
            base_labels = (base_details.get("Config") or {}).get("Labels") or {}
            return {
                "image": image_id,
                "repository": repository,
                "tag": f"v{version}",
                "version": version,
                "name": name,
                "argv": M.kernel_argv(base_labels),
                "language": M.kernel_language(base_labels),
            }
        finally:
            context.close()
            try:
                with open(self._log_path(name), "w") as out:
                    out.write(log.text() + f"==> The build {'succeeded' if ok else 'failed'}\n")
            except OSError:
                pass

    def images(self) -> list[dict[str, Any]]:
        return [i.as_json() for i in M.member_images(self.api)]

    def remove(self, reference: str) -> list[str]:
        name, _, version = reference.rpartition("/")[2].partition(":")
        removed = []
        for image in M.member_images(self.api, self.uid):
            if image.name == name and (not version or f"v{image.version}" == version):
                for tag in image.tags:
                    self.api.remove_image(tag)
                    removed.append(tag)
        if not removed:
            raise KernelConfigError(f"No kernel image {reference!r} (`labnotebook kernel ls`).")
        return removed

    def log(self, name: str) -> str:
        try:
            with open(self._log_path(name)) as f:
                return f.read()
        except FileNotFoundError:
            raise KernelConfigError(f"You have not built a kernel {name!r} yet.") from None

    def publish(self, reference: str, withdraw: bool) -> str:
        raise KernelLaunchError("Publishing is for the lab hub: on your own engine, tag it.")


def backend(broker: str | None = None, docker_host: str | None = None) -> Images:
    """The broker where there is one (the hub, its kernels), else the user's own engine."""
    if docker_host:
        return EngineImages(docker_host)
    socket_path = broker_socket(broker)
    if socket_path:
        return BrokerImages(socket_path)
    try:
        import docker  # noqa: F401
    except ImportError:
        # A kernel container without the lab's socket (a kernel started outside the hub, or
        # a hub from before the broker volume): say where we looked, not a traceback.
        raise KernelConfigError(
            f"No kernel broker here (looked for {DEFAULT_SOCKET} and {SHARED_SOCKET}), and "
            "no Docker SDK to build on an engine of your own. In the lab hub, run it in a "
            "JupyterLab terminal, or ask the admin to restart the hub (`make down && make "
            "up`) so kernels get the broker's socket; elsewhere, pip install docker."
        ) from None
    return EngineImages()
