"""Whole notebooks on the Docker kernel, and many kernels at once."""

from __future__ import annotations

import asyncio

import nbformat
import pytest
from jupyter_client.ioloop import AsyncIOLoopKernelManager
from nbclient import NotebookClient

from .conftest import TEST_NETWORK, run_code, session_containers

pytestmark = pytest.mark.docker


async def test_notebook_runs_with_nbclient(kernel_specs, docker_client) -> None:
    name = kernel_specs()
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("import numpy as np, pandas as pd\nx = np.arange(10)"),
        nbformat.v4.new_code_cell("df = pd.DataFrame({'x': x, 'y': x ** 2})\nprint(df.y.sum())"),
        nbformat.v4.new_code_cell(
            "import matplotlib.pyplot as plt\nplt.plot(df.x, df.y)\nplt.show()"
        ),
    ]
    km = AsyncIOLoopKernelManager(kernel_name=name, kernel_spec_manager=kernel_specs.spec_manager)
    client = NotebookClient(nb, km=km, kernel_name=name, timeout=120)
    await client.async_execute()
    assert nb.cells[1].outputs[0]["text"].strip() == "285"
    assert "image/png" in nb.cells[2].outputs[0]["data"]
    await km.shutdown_kernel()  # nbclient leaves a kernel it did not start running
    assert session_containers(docker_client) == []


async def test_eight_kernels_start_concurrently(kernel_specs, start_kernel, docker_client) -> None:
    network = f"{TEST_NETWORK}-eight"  # absent: all eight race to create it
    name = kernel_specs(network=network)
    kernels = await asyncio.gather(*(start_kernel(name) for _ in range(8)))
    results = await asyncio.gather(
        *(run_code(kc, "import os; print(os.uname().nodename)") for _, kc in kernels)
    )
    hostnames = {r["stdout"].strip() for r in results}
    assert len(hostnames) == 8  # eight separate containers
    assert len({km.ip for km, _ in kernels}) == 8
    [created] = [n for n in docker_client.networks.list(names=[network]) if n.name == network]
    for km, kc in kernels:
        kc.stop_channels()
        await km.shutdown_kernel()
    created.remove()
