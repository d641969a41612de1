"""A Docker kernel's whole life on a real engine: start, run, interrupt, restart, die, shut down."""

from __future__ import annotations

import asyncio
import time

import pytest
from labnotebook.provisioner import labels as L

from .conftest import run_code, session_containers

pytestmark = pytest.mark.docker


def kernel_containers(docker_client, km) -> list:
    return [
        c for c in session_containers(docker_client) if c.labels.get(L.KERNEL_ID) == km.kernel_id
    ]


async def test_start_run_and_shutdown_removes_the_container(
    kernel_specs, start_kernel, docker_client
) -> None:
    km, kc = await start_kernel(kernel_specs())
    result = await run_code(kc, "import numpy, scipy, pandas, matplotlib; print(6 * 7)")
    assert result["stdout"].strip() == "42"
    [container] = kernel_containers(docker_client, km)
    assert container.labels[L.ROLE] == "kernel"
    assert container.labels[L.SERVER] == L.server_identity()
    assert container.attrs["HostConfig"]["Init"] is True
    assert container.attrs["HostConfig"]["PortBindings"] in ({}, None)  # nothing on the host
    kc.stop_channels()
    await km.shutdown_kernel()
    assert kernel_containers(docker_client, km) == []


async def test_interrupt_stops_a_running_cell(kernel_specs, start_kernel) -> None:
    km, kc = await start_kernel(kernel_specs())
    started = time.monotonic()
    execution = asyncio.ensure_future(run_code(kc, "import time; time.sleep(60)", timeout=90))
    await asyncio.sleep(1.5)
    await km.interrupt_kernel()
    result = await asyncio.wait_for(execution, 30)
    assert result["status"] == "error"
    assert result["ename"] == "KeyboardInterrupt"
    assert time.monotonic() - started < 30  # far less than the cell's 60 s
    assert (await run_code(kc, "print('still alive')"))["stdout"].strip() == "still alive"


async def test_restart_gives_a_fresh_container_for_the_same_kernel(
    kernel_specs, start_kernel, docker_client
) -> None:
    km, kc = await start_kernel(kernel_specs())
    await run_code(kc, "x = 1")
    [before] = kernel_containers(docker_client, km)
    await km.restart_kernel()
    kc.stop_channels()
    kc = km.client()
    kc.start_channels()
    await kc.wait_for_ready(timeout=60)
    result = await run_code(kc, "print('x' in dir())")
    assert result["stdout"].strip() == "False"
    [after] = kernel_containers(docker_client, km)
    assert after.id != before.id
    assert after.labels[L.KERNEL_ID] == km.kernel_id
    kc.stop_channels()


async def test_kill_removes_the_container(kernel_specs, start_kernel, docker_client) -> None:
    km, _ = await start_kernel(kernel_specs())
    await km.shutdown_kernel(now=True)
    assert kernel_containers(docker_client, km) == []


async def test_kernel_killed_from_outside_is_restarted(
    kernel_specs, start_kernel, docker_client
) -> None:
    km, kc = await start_kernel(kernel_specs())
    [before] = kernel_containers(docker_client, km)
    old_ports = list(km.ports)
    restarted = asyncio.Event()
    km.add_restart_callback(restarted.set, "restart")
    before.kill()  # as `docker kill` would: the restarter must notice on its own
    await asyncio.wait_for(restarted.wait(), 60)
    for _ in range(300):
        if km.ports != old_ports and km.ready.done():
            break
        await asyncio.sleep(0.1)
    [after] = kernel_containers(docker_client, km)
    assert after.id != before.id
    kc.stop_channels()
    kc = km.client()
    kc.start_channels()
    await kc.wait_for_ready(timeout=60)
    assert (await run_code(kc, "print('back')"))["stdout"].strip() == "back"
    kc.stop_channels()


async def test_published_ports_on_loopback(kernel_specs, start_kernel, docker_client) -> None:
    km, kc = await start_kernel(kernel_specs(connect_via="published-ports"))
    assert km.ip == "127.0.0.1"
    [container] = kernel_containers(docker_client, km)
    bindings = container.attrs["HostConfig"]["PortBindings"]
    assert len(bindings) == 5
    assert all(b[0]["HostIp"] == "127.0.0.1" for b in bindings.values())
    assert (await run_code(kc, "print(1 + 1)"))["stdout"].strip() == "2"


async def test_docker_calls_never_block_the_event_loop(kernel_specs, start_kernel) -> None:
    """A ticker on the loop keeps ticking while kernels start and stop."""
    gaps: list[float] = []
    loop = asyncio.get_running_loop()

    async def ticker() -> None:
        last = loop.time()
        while True:
            await asyncio.sleep(0.005)
            now = loop.time()
            gaps.append(now - last)
            last = now

    tick = asyncio.ensure_future(ticker())
    started = loop.time()
    kernels = await asyncio.gather(start_kernel(kernel_specs()), start_kernel(kernel_specs()))
    for km, _ in kernels:
        await km.shutdown_kernel()
    elapsed = loop.time() - started
    tick.cancel()
    assert len(gaps) > 20
    # Docker calls take tens to hundreds of ms each; done on the loop they would show up here.
    assert max(gaps) < elapsed / 10, (max(gaps), elapsed)
