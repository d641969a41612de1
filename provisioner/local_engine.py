"""`LocalEngine`: a single user's own Docker engine, as the provisioner's `KernelEngine`.

Without the lab's broker, the Jupyter server itself is the launcher: its kernels run as the
identity the provisioner is configured with (by default the server's own user), under the
single-user rules (no lab mounts, Docker enters the working folder itself). Like the broker,
this turns the member's `LaunchRequest` into a container spec in one place,
`launch.container_spec`, and hands that to `engine.DockerEngine`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .engine import DockerEngine
from .identity import KernelIdentity
from .launch import LabRules, container_spec
from .request import LaunchRequest
from .spec import ContainerState, LaunchedContainer


class LocalEngine:
    """Launches requests on `docker` as `identity()`, under `rules`."""

    def __init__(
        self, docker: DockerEngine, rules: LabRules, identity: Callable[[], KernelIdentity]
    ) -> None:
        """`identity` is asked at each launch (it reads the account database, and refuses
        root unless allowed), not when the engine is made: a server that only watches a
        kernel it found again never needs it."""
        self.docker = docker
        self.rules = rules
        self.identity = identity

    def where(self) -> str:
        return self.docker.where()

    def launch(self, request: LaunchRequest) -> LaunchedContainer:
        return self.docker.launch_container(container_spec(request, self.identity(), self.rules))

    def state(self, container_id: str) -> ContainerState | None:
        return self.docker.state(container_id)

    def signal(self, container_id: str, signum: int) -> None:
        self.docker.signal(container_id, signum)

    def remove(self, container_id: str, restarting: bool = False) -> None:
        self.docker.remove(container_id)  # a single user's engine keeps no GPU book

    def logs(self, container_id: str, tail: int = 20) -> str:
        return self.docker.logs(container_id, tail)

    def wait(self, container_id: str, timeout: float) -> int | None:
        return self.docker.wait(container_id, timeout)

    def kernel_containers(self, owner_uid: int | None = None) -> list[dict[str, Any]]:
        return self.docker.kernel_containers(owner_uid)
