"""What the engine receives for each `gpus` setting, and the `auto` decision on this engine."""

from __future__ import annotations

import pytest
from jupyter_client.kernelspec import KernelSpec
from labnotebook.provisioner import DockerKernelProvisioner
from labnotebook.provisioner.engine import DockerEngine
from labnotebook.provisioner.gpus import GpuRequest, engine_has_gpus, resolve_gpus
from labnotebook.provisioner.launch import LabRules, container_spec

from .conftest import KERNEL_IMAGE, SESSION, SESSION_LABEL, TEST_IDENTITY, TEST_NETWORK

pytestmark = pytest.mark.docker


async def created_device_requests(gpus: object) -> list | None:
    """Create (not start) the container the provisioner would, and read back its HostConfig."""
    spec = KernelSpec(
        argv=["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        display_name="t",
        language="python",
    )
    provisioner = DockerKernelProvisioner(
        kernel_id=f"gpu-{SESSION}",
        kernel_spec=spec,
        image=KERNEL_IMAGE,
        gpus=gpus,
        network=TEST_NETWORK,
        labels={SESSION_LABEL: SESSION},
        **TEST_IDENTITY,
    )
    request = (await provisioner.pre_launch())["request"]
    rules = LabRules(network=TEST_NETWORK)
    spec = container_spec(request, provisioner.identity(), rules)
    engine = DockerEngine.shared()
    engine._ensure_network(TEST_NETWORK)
    gpus = spec.gpus
    if not isinstance(gpus, GpuRequest):
        gpus = resolve_gpus(gpus, engine.info())
    container_id = engine._create(spec, gpus)
    try:
        return engine.api.inspect_container(container_id)["HostConfig"]["DeviceRequests"]
    finally:
        engine.remove(container_id)


@pytest.mark.parametrize(
    ("gpus", "count", "device_ids"),
    [("all", -1, None), (2, 2, None), (["0", "GPU-1234"], 0, ["0", "GPU-1234"])],
)
async def test_device_request_shape(gpus, count, device_ids, docker_client) -> None:
    [request] = await created_device_requests(gpus)
    assert request["Driver"] == ""
    assert request["Capabilities"] == [["gpu"]]
    assert request["Count"] == count
    assert (request["DeviceIDs"] or None) == device_ids


async def test_no_gpu_request_for_none(docker_client) -> None:
    assert not await created_device_requests("none")


async def test_auto_follows_the_engine(docker_client) -> None:
    info = docker_client.info()
    requests = await created_device_requests("auto")
    if engine_has_gpus(info):
        assert requests and requests[0]["Count"] == -1
    else:
        assert not requests  # this engine has no NVIDIA runtime: no request, so kernels start
