"""The real-GPU path (`make gpu-check`): runs unchanged on any host with one or more NVIDIA
GPUs, the driver and the NVIDIA Container Toolkit; skips with its reason everywhere else.

tests/test_gpu_sharing.py checks the broker's assignment on a stand-in engine; this checks
what only a real GPU can show: that a container given a device sees exactly that device, and
that CUDA works on it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import docker
import pytest
from labnotebook.provisioner.gpus import GpuRequest, engine_has_gpus

from .gpu_check import why_not

if why_not():
    pytest.skip(why_not(), allow_module_level=True)

BASE_IMAGE = os.environ.get("LABNOTEBOOK_BASE_IMAGE", "labnotebook/base:bookworm")
GPU_IMAGE = os.environ.get("LABNOTEBOOK_GPU_IMAGE", "labnotebook/kernel-gpu:latest")
LABEL = {"labnotebook-test.gpu-check": uuid.uuid4().hex[:8]}


@pytest.fixture(scope="module")
def engine() -> Iterator[docker.DockerClient]:
    client = docker.from_env(timeout=300)
    assert engine_has_gpus(client.info())
    yield client
    for container in client.containers.list(all=True, filters={"label": list(LABEL)}):
        container.remove(force=True)


def run(engine: docker.DockerClient, image: str, command: list[str], gpus: GpuRequest) -> str:
    """`command`'s output in a container given exactly `gpus` (as the broker asks for them),
    with the driver's utilities (nvidia-smi) mounted in."""
    [request] = gpus.device_requests()
    output = engine.containers.run(
        image,
        command,
        device_requests=[
            docker.types.DeviceRequest(
                count=request["Count"],
                device_ids=request["DeviceIDs"],
                capabilities=[["gpu", "utility", "compute"]],
            )
        ],
        labels=LABEL,
        remove=True,
    )
    return output.decode()


@pytest.fixture(scope="module")
def gpus(engine: docker.DockerClient) -> list[dict[str, str]]:
    """The host's GPUs: index, UUID and name, as NVML (through nvidia-smi) lists them."""
    query = ["nvidia-smi", "--query-gpu=index,uuid,name", "--format=csv,noheader"]
    text = run(engine, BASE_IMAGE, query, GpuRequest(count=-1))
    rows = [[p.strip() for p in line.split(",", 2)] for line in text.splitlines() if line]
    found = [{"index": i, "uuid": u, "name": n} for i, u, n in rows]
    assert found, text
    return found


def test_each_gpu_alone_is_all_its_container_sees(engine, gpus) -> None:
    for gpu in gpus:
        listed = run(
            engine, BASE_IMAGE, ["nvidia-smi", "-L"], GpuRequest(device_ids=(gpu["uuid"],))
        )
        lines = [line for line in listed.splitlines() if line.startswith("GPU ")]
        assert len(lines) == 1 and gpu["uuid"] in lines[0], listed


def test_cuda_works_on_each_gpu(engine, gpus) -> None:
    try:
        engine.images.get(GPU_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.skip(f"no {GPU_IMAGE} (build it with `make kernel-gpu`)")
    program = (
        "import torch; x = torch.ones(1024, 1024, device='cuda'); "
        "print(torch.cuda.device_count(), float((x @ x).sum()))"
    )
    for gpu in gpus:
        out = run(
            engine, GPU_IMAGE, ["python3", "-c", program], GpuRequest(device_ids=(gpu["uuid"],))
        )
        assert out.split() == ["1", str(float(1024**3))], out


def test_two_kernels_at_once_see_two_different_gpus(engine, gpus) -> None:
    if len(gpus) < 2:
        pytest.skip("one GPU here: two kernels at once need two")
    first, second = (
        engine.containers.run(
            BASE_IMAGE,
            ["sh", "-c", "nvidia-smi -L; sleep 30"],
            device_requests=[
                docker.types.DeviceRequest(
                    device_ids=[gpu["uuid"]], capabilities=[["gpu", "utility", "compute"]]
                )
            ],
            labels=LABEL,
            detach=True,
        )
        for gpu in gpus[:2]
    )
    try:
        for container, gpu in ((first, gpus[0]), (second, gpus[1])):
            seen = ""
            for _ in range(30):
                seen = container.logs().decode()
                if "GPU " in seen:
                    break
                container.reload()
            assert gpu["uuid"] in seen and gpus[1 - gpus.index(gpu)]["uuid"] not in seen, seen
    finally:
        first.remove(force=True)
        second.remove(force=True)
