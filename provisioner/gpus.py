"""Turning a kernel's `gpus` setting into the device request the Docker engine receives.

Accepted values: "none", "all", "auto", a count (int or numeric string), or a list of device
IDs/UUIDs. "auto" asks for all GPUs only when the engine can provide them (an NVIDIA runtime is
registered, or CDI devices are discovered), so one kernelspec works on GPU hosts and laptops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import GpuUnavailable, KernelConfigError

KEYWORDS = ("none", "all", "auto")


@dataclass(frozen=True)
class GpuRequest:
    """What to ask the engine for: nothing, all GPUs, a count, or specific devices."""

    count: int = 0  # -1 means all
    device_ids: tuple[str, ...] = ()

    @property
    def wanted(self) -> bool:
        return self.count != 0 or bool(self.device_ids)

    def device_requests(self) -> list[dict[str, Any]]:
        """The HostConfig.DeviceRequests entries, as the Docker API spells them."""
        if not self.wanted:
            return []
        request: dict[str, Any] = {"Driver": "", "Capabilities": [["gpu"]], "Options": {}}
        if self.device_ids:
            request.update(Count=0, DeviceIDs=list(self.device_ids))
        else:
            request.update(Count=self.count, DeviceIDs=None)
        return [request]

    def describe(self) -> str:
        if self.device_ids:
            return "GPU devices " + ",".join(self.device_ids)
        return "all GPUs" if self.count == -1 else f"{self.count} GPU(s)"


def parse_gpus(value: Any) -> str | GpuRequest:
    """Validate a `gpus` setting; returns "auto" or a concrete GpuRequest."""
    if value is None:
        return GpuRequest()
    if isinstance(value, bool):
        return GpuRequest(count=-1 if value else 0)
    if isinstance(value, int):
        if value < 0:
            raise KernelConfigError(f"gpus must not be negative, got {value}")
        return GpuRequest(count=value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "auto":
            return "auto"
        if text in ("none", "", "0"):
            return GpuRequest()
        if text == "all":
            return GpuRequest(count=-1)
        if text.isdigit():
            return GpuRequest(count=int(text))
        if text.startswith("device="):
            value = text.removeprefix("device=").split(",")
        else:
            raise KernelConfigError(
                f"Unknown gpus value {value!r}: use 'none', 'all', 'auto', a number of GPUs, "
                "or a list of device IDs such as ['0', '1']."
            )
    if isinstance(value, list | tuple):
        ids = tuple(str(v).strip() for v in value)
        if not ids or any(not i or "," in i for i in ids):
            raise KernelConfigError(f"gpus device list must hold non-empty device IDs: {value!r}")
        return GpuRequest(device_ids=ids)
    raise KernelConfigError(f"Unknown gpus value {value!r} ({type(value).__name__})")


def engine_has_gpus(info: dict[str, Any]) -> bool:
    """Whether `docker info` shows a way to give containers NVIDIA GPUs."""
    runtimes = info.get("Runtimes") or {}
    if any("nvidia" in name for name in runtimes):
        return True
    # Docker >= 27 lists CDI devices it discovered (nvidia-ctk cdi generate).
    for device in info.get("DiscoveredDevices") or []:
        if device.get("Source") == "cdi" and "nvidia.com/gpu" in str(device.get("ID", "")):
            return True
    return False


def resolve_gpus(setting: str | GpuRequest, engine_info: dict[str, Any]) -> GpuRequest:
    if setting == "auto":
        return GpuRequest(count=-1) if engine_has_gpus(engine_info) else GpuRequest()
    assert isinstance(setting, GpuRequest)
    return setting


def is_gpu_driver_error(message: str) -> bool:
    return "could not select device driver" in message and "gpu" in message


def gpu_unavailable(request: GpuRequest, engine_message: str) -> GpuUnavailable:
    return GpuUnavailable(
        f"This kernel asks for {request.describe()}, but the Docker engine cannot provide GPUs "
        f"({engine_message.strip()}). On a GPU host, install the NVIDIA driver and the NVIDIA "
        "Container Toolkit, run `nvidia-ctk runtime configure --runtime=docker` and restart "
        "Docker. Otherwise set the kernel's gpus to 'auto' (GPUs only where available) or 'none'."
    )
