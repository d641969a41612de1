"""`make bench`: how fast Docker kernels start and stop, against references measured in this run.

Machines are noisy, so every figure is a ratio against a reference measured in the same run,
with the runs interleaved:

* floor  - what the Docker SDK alone needs: create + put connection file + start + first
           kernel_info reply (same image, network, user and init as ours);
* local  - a plain local ipykernel process (jupyter_client's LocalProvisioner);
* ours   - DockerKernelProvisioner through jupyter_client's kernel manager.

Then, for the lab hub: what the kernel broker adds per launch against DockerEngine.launch
directly (tests/bench_broker.py), and login -> server ready on a throwaway hub
(tests/hub/bench_hub.py), and a requirements.txt kernel build through the broker against
`docker build` of the same steps, cold and warm (tests/bench_builds.py).
`python -m tests.bench [kernels] [broker] [builds] [hub]` runs a part.

Start = start_kernel() -> first kernel_info reply. Shutdown = shutdown_kernel() -> container
gone (process gone, for local). Concurrent = wall time until 8 kernels started together are
all ready (median of 3 interleaved bursts), ours against the same 8 done concurrently with
the SDK.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import statistics
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import docker
from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.ioloop import AsyncIOLoopKernelManager
from jupyter_client.kernelspec import KernelSpecManager

IMAGE = os.environ.get("LABNOTEBOOK_KERNEL_IMAGE", "labnotebook/kernel-python:latest")
NETWORK = f"labnotebook-bench-{uuid.uuid4().hex[:8]}"
IDENTITY = {"uid": 4242, "gid": 4242, "username": "labbench", "home": "/home/labbench"}
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "7"))
CONCURRENT = 8
CONCURRENT_ROUNDS = 3  # one burst is noisy: the median of three, interleaved
ARGV = ["python3", "-m", "ipykernel_launcher", "-f", "/run/labnotebook/kernel.json"]
PORT_NAMES = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")


def kernelspecs(folder: Path) -> KernelSpecManager:
    config = {"image": IMAGE, "network": NETWORK, "labels": {"labnotebook-bench": "1"}}
    if os.getuid() == 0:
        config.update(IDENTITY)
    docker_spec = {
        "argv": ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "bench",
        "language": "python",
        "metadata": {
            "kernel_provisioner": {"provisioner_name": "labnotebook-docker", "config": config}
        },
    }
    local_spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "local",
        "language": "python",
    }
    for name, spec in (("bench-docker", docker_spec), ("bench-local", local_spec)):
        (folder / name).mkdir(parents=True)
        (folder / name / "kernel.json").write_text(json.dumps(spec))
    return KernelSpecManager(kernel_dirs=[str(folder)])


async def ready(client: AsyncKernelClient, heartbeat: bool = True) -> None:
    # Without a kernel manager, "alive" can only come from heartbeats, which start late.
    client.start_channels(hb=heartbeat)
    await client.wait_for_ready(timeout=120)


# -- ours and local ----------------------------------------------------------------------------


async def managed_start(ksm: KernelSpecManager, name: str) -> tuple[float, Any]:
    km = AsyncIOLoopKernelManager(kernel_name=name, kernel_spec_manager=ksm)
    started = time.perf_counter()
    await km.start_kernel()
    client = km.client()
    await ready(client)
    elapsed = time.perf_counter() - started
    client.stop_channels()
    return elapsed, km


async def managed_shutdown(km: AsyncIOLoopKernelManager, sdk: docker.DockerClient) -> float:
    container = getattr(km.provisioner, "container_id", None)
    started = time.perf_counter()
    await km.shutdown_kernel()
    if container:
        assert not sdk.containers.list(all=True, filters={"id": container})
    return time.perf_counter() - started


# -- the floor: the Docker SDK directly ----------------------------------------------------------


def _connection_tar(info: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        # ipykernel rewrites its connection file, so the kernel's user must own it.
        folder = tarfile.TarInfo("run/labnotebook")
        folder.type, folder.mode = tarfile.DIRTYPE, 0o700
        folder.uid = folder.gid = IDENTITY["uid"]
        tar.addfile(folder)
        data = json.dumps(info).encode()
        entry = tarfile.TarInfo("run/labnotebook/kernel.json")
        entry.size, entry.mode = len(data), 0o600
        entry.uid = entry.gid = IDENTITY["uid"]
        tar.addfile(entry, io.BytesIO(data))
    return buffer.getvalue()


def sdk_launch(sdk: docker.DockerClient) -> tuple[Any, dict[str, Any]]:
    ports = dict(zip(PORT_NAMES, random.sample(range(20000, 60000), 5), strict=True))
    info = {
        "ip": "0.0.0.0",
        "transport": "tcp",
        "key": uuid.uuid4().hex,
        "signature_scheme": "hmac-sha256",
        **ports,
    }
    container = sdk.containers.create(
        IMAGE,
        ARGV,
        user=f"{IDENTITY['uid']}:{IDENTITY['gid']}",
        network=NETWORK,
        init=True,
        environment={"HOME": "/tmp"},
        labels={"labnotebook-bench": "1"},
    )
    container.put_archive("/", _connection_tar(info))
    container.start()
    container.reload()
    info["ip"] = container.attrs["NetworkSettings"]["Networks"][NETWORK]["IPAddress"]
    return container, info


async def floor_start(sdk: docker.DockerClient) -> tuple[float, Any]:
    started = time.perf_counter()
    container, info = await asyncio.to_thread(sdk_launch, sdk)
    client = AsyncKernelClient()
    client.load_connection_info(info)
    await ready(client, heartbeat=False)
    elapsed = time.perf_counter() - started
    return elapsed, (container, client)


async def floor_shutdown(handle: tuple[Any, AsyncKernelClient]) -> float:
    container, client = handle
    started = time.perf_counter()
    client.shutdown()
    await asyncio.to_thread(container.wait, timeout=30)
    await asyncio.to_thread(container.remove, force=True)
    client.stop_channels()
    return time.perf_counter() - started


# -- running -----------------------------------------------------------------------------------


async def wall_time(starts: list[Callable[[], Awaitable[tuple[float, Any]]]]) -> tuple[float, list]:
    started = time.perf_counter()
    results = await asyncio.gather(*(start() for start in starts))
    return time.perf_counter() - started, [handle for _, handle in results]


async def main() -> dict[str, float]:
    sdk = docker.from_env()
    sdk.networks.create(NETWORK, driver="bridge")
    times: dict[str, list[float]] = {
        k: [] for k in ("ours", "floor", "local", "ours_stop", "floor_stop", "local_stop")
    }
    with tempfile.TemporaryDirectory() as tmp:
        ksm = kernelspecs(Path(tmp))
        try:
            # Warm-up: image layers in the page cache, network and image facts cached.
            _, km = await managed_start(ksm, "bench-docker")
            await managed_shutdown(km, sdk)
            _, handle = await floor_start(sdk)
            await floor_shutdown(handle)
            for _ in range(ROUNDS):
                order = ["ours", "floor", "local"]
                random.shuffle(order)
                for kind in order:
                    if kind == "floor":
                        elapsed, handle = await floor_start(sdk)
                        times["floor"].append(elapsed)
                        times["floor_stop"].append(await floor_shutdown(handle))
                    else:
                        elapsed, km = await managed_start(
                            ksm, "bench-docker" if kind == "ours" else "bench-local"
                        )
                        times[kind].append(elapsed)
                        times[f"{kind}_stop"].append(await managed_shutdown(km, sdk))
            ours_walls, floor_walls = [], []
            for _ in range(CONCURRENT_ROUNDS):
                wall, kms = await wall_time(
                    [lambda: managed_start(ksm, "bench-docker")] * CONCURRENT
                )
                ours_walls.append(wall)
                await asyncio.gather(*(km.shutdown_kernel() for km in kms))
                wall, handles = await wall_time([lambda: floor_start(sdk)] * CONCURRENT)
                floor_walls.append(wall)
                await asyncio.gather(*(floor_shutdown(h) for h in handles))
            ours_wall = statistics.median(ours_walls)
            floor_wall = statistics.median(floor_walls)
        finally:
            for container in sdk.containers.list(
                all=True, filters={"label": "labnotebook-bench=1"}
            ):
                container.remove(force=True)
            sdk.networks.get(NETWORK).remove()

    median = {k: statistics.median(v) for k, v in times.items()}
    results = {
        "start_ours_s": median["ours"],
        "start_floor_s": median["floor"],
        "start_local_s": median["local"],
        "start_ratio_vs_floor": median["ours"] / median["floor"],
        "start_ratio_vs_local": median["ours"] / median["local"],
        "shutdown_ours_s": median["ours_stop"],
        "shutdown_floor_s": median["floor_stop"],
        "shutdown_local_s": median["local_stop"],
        "shutdown_ratio_vs_floor": median["ours_stop"] / median["floor_stop"],
        "concurrent8_ours_s": ours_wall,
        "concurrent8_floor_s": floor_wall,
        "concurrent_ratio_vs_floor": ours_wall / floor_wall,
    }
    return results


def report(results: dict[str, float]) -> None:
    print(f"\nlabnotebook benchmark ({ROUNDS} interleaved rounds, image {IMAGE})")
    for key, value in results.items():
        unit = next(
            (
                u
                for suffix, u in (("_ms", " ms"), ("_mb", " MB"), ("_s", " s"))
                if key.endswith(suffix)
            ),
            "",
        )
        print(f"  {key:<28} {value:8.3f}{unit}")
    print(json.dumps({k: round(v, 4) for k, v in results.items()}))


def broker_figures() -> dict[str, float]:
    """What the lab's kernel broker adds per launch (needs root: it runs the broker)."""
    from .bench_broker import measure

    figures = measure(ROUNDS)
    return {
        f"broker_{k}" if not k.startswith("broker") else k: float(v)
        for k, v in figures.items()
        if isinstance(v, int | float) and k != "n"
    }


def build_figures() -> dict[str, float]:
    """A requirements.txt kernel build through the broker against `docker build` of the same
    steps, cold and warm (tests/bench_builds.py; needs root: it runs the broker)."""
    from .bench_builds import measure

    return measure(max(3, ROUNDS // 2))


def hub_figures() -> dict[str, float]:
    """Login to server ready, on a throwaway hub started with `make up`."""
    from .hub.bench_hub import measure

    return measure(max(3, ROUNDS // 2))


if __name__ == "__main__":
    parts = sys.argv[1:] or ["kernels", "broker", "builds", "hub", "export"]
    results: dict[str, float] = {}
    if "kernels" in parts:
        results.update(asyncio.run(main()))
    if "broker" in parts:
        if os.geteuid() == 0:
            results.update(broker_figures())
        else:
            print("(broker figures skipped: they need root, which runs the broker)")
    if "builds" in parts:
        if os.geteuid() == 0:
            results.update(build_figures())
        else:
            print("(build figures skipped: they need root, which runs the broker)")
    if "hub" in parts:
        results.update(hub_figures())
    if "export" in parts:
        results.update(__import__("tests.bench_export", fromlist=["measure"]).measure())
    report(results)
