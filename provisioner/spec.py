"""The complete, engine-neutral description of one kernel container.

The provisioner builds a `KernelContainerSpec` from its configuration; an engine (the Docker
SDK directly, or the lab's root-owned broker) turns it into a running container. The spec is
plain data that round-trips through JSON, so the broker can check every field before acting.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from .gpus import GpuRequest
from .identity import KernelIdentity
from .mounts import Mount

CONNECTION_DIR = "/run/labnotebook"
CONNECTION_FILE = f"{CONNECTION_DIR}/kernel.json"
PORT_NAMES = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")


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
        return {name: int(self.connection[name]) for name in PORT_NAMES}

    def request_json(self) -> dict[str, Any]:
        """The member's part of this spec (`request.LaunchRequest`'s fields), as JSON: what
        the broker is sent; it derives the rest itself."""
        from .request import LaunchRequest

        data = self.to_json()
        return {k: v for k, v in data.items() if k in LaunchRequest.field_names()}

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["identity"]["group_names"] = {str(k): v for k, v in self.identity.group_names.items()}
        if isinstance(self.gpus, str):
            data["gpus"] = self.gpus
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KernelContainerSpec:
        data = dict(data)
        ident = dict(data.pop("identity"))
        ident["groups"] = tuple(int(g) for g in ident.get("groups", ()))
        ident["group_names"] = {int(k): str(v) for k, v in ident.get("group_names", {}).items()}
        gpus = data.pop("gpus", None)
        if isinstance(gpus, dict):
            gpus = GpuRequest(
                count=int(gpus.get("count", 0)), device_ids=tuple(gpus.get("device_ids", ()))
            )
        elif gpus != "auto":
            gpus = GpuRequest()
        mounts = [Mount(**m) for m in data.pop("mounts", [])]
        return cls(identity=KernelIdentity(**ident), gpus=gpus, mounts=mounts, **data)


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


@dataclass(frozen=True)
class ContainerState:
    running: bool
    exit_code: int | None
    oom_killed: bool = False
    error: str = ""
    memory_limit: int = 0
    """The container's memory limit in bytes (0: none), to say what an OOM kill hit."""


class KernelEngine(Protocol):
    """What carries out specs: `engine.DockerEngine` (the Docker SDK, for a single user with
    Docker access) or `broker_client.BrokerEngine` (the lab hub's root-owned broker). The
    methods block; the provisioner calls them from a thread pool."""

    def where(self) -> str:
        """Where the engine is, for messages."""

    def launch(self, spec: KernelContainerSpec) -> LaunchedContainer:
        """Create, prepare and start the container; on failure leave nothing and raise."""

    def state(self, container_id: str) -> ContainerState | None:
        """The container's state, or None once it is gone."""

    def signal(self, container_id: str, signum: int) -> None:
        """Deliver a signal to the container's init, which forwards it to the kernel."""

    def remove(self, container_id: str) -> None:
        """Remove the container, running or not; a missing one is fine."""

    def logs(self, container_id: str, tail: int = 20) -> str:
        """The container's last output lines."""

    def wait(self, container_id: str, timeout: float) -> int | None:
        """The exit code once the container exits, or None after `timeout` seconds."""

    def kernel_containers(self, owner_uid: int | None = None) -> list[dict[str, Any]]:
        """Kernel containers (the engine's listing entries), optionally of one owner."""
