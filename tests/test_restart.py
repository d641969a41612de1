"""A restarted kernel keeps its address: clients made before the restart find it again.

`restart_kernel()` gives a fresh container; the provisioner asks for the old container's
address (on a network with a configured subnet) and keeps the ports, the key and the curve
keys, as jupyter_client's LocalProvisioner keeps them. Where the address cannot be kept, the
ports change too: never the same ports on a new address.
"""

from __future__ import annotations

import asyncio
import uuid

import docker
import pytest
from jupyter_client import BlockingKernelClient

from .conftest import SESSION, SESSION_LABEL, run_code

pytestmark = pytest.mark.docker

KEPT = ("ip", "shell_port", "iopub_port", "stdin_port", "control_port", "hb_port", "key")


def _connection(km) -> dict:
    info = km.get_connection_info()
    return {k: info[k] for k in (*KEPT, "curve_publickey", "curve_secretkey") if k in info}


async def test_a_client_made_before_a_restart_works_after_it(kernel_specs, start_kernel):
    km, kc = await start_kernel(kernel_specs())
    before = _connection(km)
    assert before["curve_secretkey"], "the bundled kernel runs encrypted"
    # A client holding only the connection info, as jupyter console, nbclient, papermill
    # and scripts do.
    outsider = BlockingKernelClient()
    outsider.load_connection_info(km.get_connection_info())
    outsider.start_channels()
    try:
        outsider.wait_for_ready(timeout=60)
        assert outsider.execute_interactive("x = 41", timeout=60)["content"]["status"] == "ok"

        await km.restart_kernel()
        assert _connection(km) == before  # address, ports, key and curve keys all kept

        # The old clients reach the new kernel (a fresh one: x is gone).
        await kc.wait_for_ready(timeout=120)
        result = await run_code(kc, "print('alive', 'x' in globals())")
        assert result["stdout"].strip() == "alive False", result
        reply = await asyncio.to_thread(
            outsider.execute_interactive, "print('outsider again')", timeout=120
        )
        assert reply["content"]["status"] == "ok"
    finally:
        outsider.stop_channels()


async def test_restart_with_new_ports_changes_them(kernel_specs, start_kernel):
    km, _kc = await start_kernel(kernel_specs())
    before = _connection(km)
    await km.restart_kernel(newports=True)
    after = _connection(km)
    assert after["shell_port"] != before["shell_port"]
    fresh = km.client()
    fresh.start_channels()
    try:
        await fresh.wait_for_ready(timeout=120)
    finally:
        fresh.stop_channels()


async def test_without_a_configured_subnet_the_ports_change_with_the_address(
    kernel_specs, start_kernel, docker_client: docker.DockerClient
):
    """A network made without a subnet (a lab from before): no fixed addresses there."""
    name = f"labnotebook-test-{SESSION}-plain-{uuid.uuid4().hex[:6]}"
    network = docker_client.networks.create(name, labels={SESSION_LABEL: SESSION})
    try:
        km, _kc = await start_kernel(kernel_specs(network=name))
        before = _connection(km)
        await km.restart_kernel()
        after = _connection(km)
        # The engine refused the old address, so the ports changed too (even when Docker's
        # allocator happens to hand out the same address again).
        assert after["shell_port"] != before["shell_port"], "same ports on a new address"
        # jupyter_server rebuilds its channels when the ports change; a new client works.
        fresh = km.client()
        fresh.start_channels()
        try:
            await fresh.wait_for_ready(timeout=120)
            result = await run_code(fresh, "print('reached')")
            assert result["stdout"].strip() == "reached"
        finally:
            fresh.stop_channels()
        await km.shutdown_kernel(now=True)
    finally:
        for container in network.containers:
            network.disconnect(container, force=True)
        network.remove()
