"""The complete, engine-neutral description of one kernel container, and the engine contract.

`launch.container_spec` makes a `KernelContainerSpec` from a member's `LaunchRequest`, her
identity and the lab's rules; `engine.DockerEngine.launch_container` turns it into a running
container. The provisioner never builds a spec itself: it hands its request to a
`KernelEngine` (a single user's `local_engine.LocalEngine`, or the lab's `BrokerEngine`),
which makes the spec where the container is made.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from .gpus import GpuRequest
from .identity import KernelIdentity
from .mounts import Mount
from .request import PORT_NAMES, LaunchRequest

CONNECTION_DIR = "/run/labnotebook"
CONNECTION_FILE = f"{CONNECTION_DIR}/kernel.json"


@dataclass
class KernelContainerSpec:
    kernel_id: str
    kernel_name: str
    image: str
    argv: list[str]
    identity: KernelIdentity
    connection: dict[str, Any]
    env: dict[str, str] = field(default_factory=dict)
    working_dir: str | None = None
    mounts: list[Mount] = field(default_factory=list)
    network: str = "labnotebook"
    publish_ports: bool = False
    memory: int | None = None
    nano_cpus: int | None = None
    shm_size: int | None = None
    pids_limit: int | None = None
    gpus: str | GpuRequest = field(default_factory=GpuRequest)
    labels: dict[str, str] = field(default_factory=dict)
    pull_policy: str = "never"
    name: str | None = None
    init: bool = True
    allow_root: bool = False
    ip: str | None = None
    """The address the container must have on `network` (a restarted kernel keeps its old
    one); None: any. Docker gives fixed addresses only on networks with a configured subnet."""
    host_ports: dict[str, int] = field(default_factory=dict)
    """With publish_ports: the host ports to publish on (a restarted kernel keeps its old
    ones); empty: any free ones."""

    @property
    def ports(self) -> dict[str, int]:
        # A job's runner container (hub/notebook_jobs.py) listens on nothing: no ports.
        return {name: int(self.connection[name]) for name in PORT_NAMES if name in self.connection}


@dataclass(frozen=True)
class LaunchedContainer:
    """What the engine reports back about a started kernel container."""

    container_id: str
    name: str
    ip: str
    ports: dict[str, int]
    gpus: str = ""
    image_id: str = ""
    """The ID of the image the container runs (its `Image` attribute): immutable, unlike the
    name it was launched by. Recorded in saved notebooks (`record.py`)."""
    image_digests: tuple[str, ...] = ()
    """That image's repo digests (`name@sha256:...`), when it was pushed or pulled."""
    image_labels: dict[str, str] = field(default_factory=dict)
    """That image's own labels (build provenance: `org.labnotebook.*`, `org.opencontainers.*`)."""
    idle_timeout: float = 0.0
    """Seconds of idleness after which the lab wants this kernel shut down, whatever its
    kernelspec says (the lab's broker sets it for GPU kernels: GPU_KERNEL_IDLE_TIMEOUT);
    0: the client's own culling."""


@dataclass(frozen=True)
class ContainerState:
    running: bool
    exit_code: int | None
    oom_killed: bool = False
    error: str = ""
    memory_limit: int = 0
    """The container's memory limit in bytes (0: none), to say what an OOM kill hit."""


class KernelEngine(Protocol):
    """What carries out launch requests: `local_engine.LocalEngine` (the Docker SDK, for a
    single user with Docker access) or `broker_client.BrokerEngine` (the lab hub's root-owned
    broker). The methods block; the provisioner calls them from a thread pool."""

    def where(self) -> str:
        """Where the engine is, for messages."""

    def launch(self, request: LaunchRequest) -> LaunchedContainer:
        """Make the request's container (as whom, and under which rules, is the engine's to
        decide), prepare and start it; on failure leave nothing and raise."""

    def state(self, container_id: str) -> ContainerState | None:
        """The container's state, or None once it is gone."""

    def signal(self, container_id: str, signum: int) -> None:
        """Deliver a signal to the container's init, which forwards it to the kernel."""

    def remove(self, container_id: str, restarting: bool = False) -> None:
        """Remove the container, running or not; a missing one is fine. `restarting`: the
        same kernel starts again at once (the lab keeps its GPUs for it)."""

    def logs(self, container_id: str, tail: int = 20) -> str:
        """The container's last output lines."""

    def wait(self, container_id: str, timeout: float) -> int | None:
        """The exit code once the container exits, or None after `timeout` seconds."""

    def kernel_containers(self, owner_uid: int | None = None) -> list[dict[str, Any]]:
        """Kernel containers (the engine's listing entries), optionally of one owner."""
