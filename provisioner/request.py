"""`LaunchRequest`: what a member decides about a kernel launch, and nothing else.

The Jupyter server builds one from the kernelspec and its settings, and hands it to its
engine (`spec.KernelEngine.launch`). Who the kernel runs as, what it mounts beyond the
request, which network it joins, its name and the labels others trust are not the member's
to say: `launch.container_spec` adds them from the member's identity and the lab's rules,
once, where the container is made (`local_engine.LocalEngine` on a single user's engine, the
broker's `op_launch` in the lab hub). On the lab hub the request is the only thing that
crosses the broker's socket, so its fields are exactly the fields the broker reviews
(`hub/broker_policy.py`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .gpus import GpuRequest
from .mounts import Mount

PORT_NAMES = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
"""The connection file's ports, one per ZeroMQ channel."""


@dataclass
class LaunchRequest:
    kernel_id: str
    kernel_name: str
    image: str
    argv: list[str]
    """The kernel's command inside the container, `{connection_file}` already filled in."""
    connection: dict[str, Any]
    """Ports, key, signature scheme and curve keys: the kernel's connection file."""
    env: dict[str, str] = field(default_factory=dict)
    working_dir: str | None = None
    """The folder to start in, as the container sees it (the notebook's); None: the home."""
    mounts: list[Mount] = field(default_factory=list)
    """Mounts the member asks for. The launcher adds its own (`LabRules.lab_mounts`) in
    `launch.container_spec`; the broker lets through only its allowed_mounts, and asking for
    a lab mount read-only makes it so."""
    publish_ports: bool = False
    memory: int | None = None
    nano_cpus: int | None = None
    shm_size: int | None = None
    pids_limit: int | None = None
    gpus: str | GpuRequest = field(default_factory=GpuRequest)
    labels: dict[str, str] = field(default_factory=dict)
    """Extra labels; the org.labnotebook.* ones are always the launcher's."""
    pull_policy: str = "never"
    init: bool = True
    ip: str | None = None
    """The address a restarted kernel had, to have it again; None: any."""
    host_ports: dict[str, int] = field(default_factory=dict)
    """With publish_ports, the host ports a restarted kernel had."""

    @property
    def ports(self) -> dict[str, int]:
        return {name: int(self.connection[name]) for name in PORT_NAMES}

    @classmethod
    def field_names(cls) -> frozenset[str]:
        return frozenset(f.name for f in fields(cls))

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        if isinstance(self.gpus, str):
            data["gpus"] = self.gpus
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LaunchRequest:
        """For trusted data (tests, the server's own requests); the broker checks raw JSON
        field by field instead (`LaunchPolicy.admit`)."""
        data = dict(data)
        gpus = data.pop("gpus", None)
        if isinstance(gpus, dict):
            gpus = GpuRequest(
                count=int(gpus.get("count", 0)), device_ids=tuple(gpus.get("device_ids", ()))
            )
        elif gpus != "auto":
            gpus = GpuRequest()
        mounts = [m if isinstance(m, Mount) else Mount(**m) for m in data.pop("mounts", [])]
        return cls(gpus=gpus, mounts=mounts, **data)
