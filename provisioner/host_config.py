"""Every container's Docker host config, in one place: what bounds and hardens it.

The lab runs two kinds of containers on a member's behalf: kernels (the member's code, for
hours, as the member) and build containers (a kernel build's steps, an export's setup and an
export's check: minutes, the setup as root). Both get the same hardening, declared once in
`_hardened`:

* no new privileges: a setuid binary in the image gains its process nothing;
* every capability dropped, only the few a build's package manager needs added back;
* an init as PID 1, so orphaned processes are reaped and signals reach the command;
* Docker's json-file log, capped, so a container printing without end fills little disk;
* memory and swap together equal to the memory limit: a runaway process meets the OOM
  killer, rather than swapping until the whole host crawls.

`kernel_host_config` adds what a kernel has (its mounts, network, ports, GPUs, groups) and
`build_host_config` what a build has (the build's limits and network).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from docker.types import DeviceRequest, LogConfig

from .gpus import GpuRequest
from .spec import KernelContainerSpec

NO_NEW_PRIVILEGES = "no-new-privileges:true"
KERNEL_LOG_OPTIONS = {"max-size": "10m", "max-file": "2"}
"""Docker's json-file log of a kernel container: at most 20 MB whatever the kernel prints."""
BUILD_LOG_OPTIONS = {"max-size": "10m", "max-file": "1"}
"""A build container's: the build's own log (BuildLog) is what the member reads."""
KERNEL_OOM_SCORE_ADJ = 500
"""Above the hub's processes (0) and the engine's (-500): under memory pressure, the kernel
that uses the most memory goes first."""


def _hardened(
    api: Any,
    *,
    memory: int | None,
    log_options: dict[str, str],
    drop_capabilities: bool = True,
    init: bool | None = True,
    **settings: Any,
) -> dict[str, Any]:
    """The host config every container of the lab has, with the kind's own `settings`."""
    return api.create_host_config(
        mem_limit=memory,
        memswap_limit=memory,
        security_opt=[NO_NEW_PRIVILEGES],
        cap_drop=["ALL"] if drop_capabilities else None,
        init=init,
        log_config=LogConfig(type="json-file", config=log_options),
        **settings,
    )


def kernel_host_config(
    api: Any,
    spec: KernelContainerSpec,
    gpus: GpuRequest,
    port_bindings: dict[str, Any] | None,
) -> dict[str, Any]:
    """A kernel container's host config: the spec's bounds, mounts and network, its GPUs."""
    identity = spec.identity
    return _hardened(
        api,
        memory=spec.memory,
        log_options=KERNEL_LOG_OPTIONS,
        # Root's kernels (an admin's own engine) keep Docker's default capabilities.
        drop_capabilities=identity.uid != 0,
        init=spec.init,
        mounts=[m.docker_mount() for m in spec.mounts],
        network_mode=spec.network,
        nano_cpus=spec.nano_cpus,
        shm_size=spec.shm_size,
        pids_limit=spec.pids_limit,
        group_add=[str(g) for g in identity.supplementary_groups] or None,
        device_requests=[DeviceRequest(**_snake(r)) for r in gpus.device_requests()] or None,
        port_bindings=port_bindings,
        # Kernels are killed first when the host runs out of memory, before the hub, the
        # broker or the engine.
        oom_score_adj=KERNEL_OOM_SCORE_ADJ,
    )


def build_host_config(
    api: Any,
    *,
    memory: int | None,
    nano_cpus: int | None,
    pids: int | None,
    network: str,
    capabilities: Iterable[str] = (),
) -> dict[str, Any]:
    """A build container's host config (provisioner/build_container.py): the build's limits,
    no capabilities but `capabilities`."""
    added = list(capabilities)
    return _hardened(
        api,
        memory=memory,
        log_options=BUILD_LOG_OPTIONS,
        nano_cpus=nano_cpus,
        pids_limit=pids,
        network_mode=network,
        cap_add=added or None,
    )


def inventory_host_config(api: Any) -> dict[str, Any]:
    """The broker's GPU inventory container (hub/broker_gpus.py): every GPU with the driver's
    utilities (NVML), nothing else - no network, small bounds, no capabilities."""
    every_gpu = {"Driver": "", "Count": -1, "DeviceIDs": None, "Options": {}}
    every_gpu["Capabilities"] = [["gpu", "utility"]]
    return _hardened(
        api,
        memory=256 << 20,
        log_options=BUILD_LOG_OPTIONS,
        network_mode="none",
        pids_limit=64,
        device_requests=[DeviceRequest(**_snake(every_gpu))],
    )


def _snake(request: dict[str, Any]) -> dict[str, Any]:
    """A DeviceRequest as the API spells it -> docker-py's keyword arguments."""
    return {
        "driver": request["Driver"],
        "count": request["Count"],
        "device_ids": request["DeviceIDs"],
        "capabilities": request["Capabilities"],
        "options": request["Options"],
    }
