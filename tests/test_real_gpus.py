"""The real-GPU path (`make gpu-check`): runs unchanged on any host with one or more NVIDIA
GPUs, the driver and the NVIDIA Container Toolkit; skips with its reason everywhere else.

tests/test_gpu_sharing.py checks the broker's assignment on a stand-in engine; this checks
what only a real GPU can show: that a container given a device sees exactly that device, that
CUDA works on it, and that the lab's broker (its NVML inventory, read with the hub image)
gives two members' kernels two different GPUs at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator

import docker
import pytest
from labnotebook.provisioner.gpus import GpuRequest, engine_has_gpus

from .gpu_check import setting_default, why_not

if why_not():
    pytest.skip(why_not(), allow_module_level=True)

BASE_IMAGE = os.environ.get("LABNOTEBOOK_BASE_IMAGE", "labnotebook/base:bookworm")
# The broker reads the host's GPUs with NVML in a short-lived container of the hub image.
HUB_IMAGE = os.environ.get("LABNOTEBOOK_HUB_IMAGE", setting_default("HUB_IMAGE"))
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


def test_two_members_kernels_through_the_broker_get_two_different_gpus(engine, gpus) -> None:
    """As the lab runs them: two members' GPU kernels, launched through a root broker whose
    inventory is NVML's (no GPUS setting), each see exactly the one GPU the broker gave it."""
    if len(gpus) < 2:
        pytest.skip("one GPU here: two members' kernels at once need two")
    try:
        engine.images.get(HUB_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.skip(f"no {HUB_IMAGE} for the broker's NVML inventory (build it: make images)")
    from .broker_fixtures import (
        BrokerProcess,
        UserAgent,
        create_account,
        delete_account,
        kernel_spec,
    )

    tag = LABEL["labnotebook-test.gpu-check"]
    network = engine.networks.create(f"lnbgpucheck-{tag}", driver="bridge", labels=LABEL)
    config = (
        f"c.LaunchPolicy.network = {network.name!r}\n"
        f"c.LaunchPolicy.allowed_images = [{BASE_IMAGE!r}]\n"
        "c.KernelBroker.reap_interval = 0\n"
        f"c.GpuPolicy.inventory_image = {HUB_IMAGE!r}\n"
    )
    accounts = [create_account(f"lnbgpu{who}{tag[:4]}") for who in "ab"]
    scenarios = {"LNBTEST_SCENARIOS": "tests.kernel_build_scenarios"}  # `labnotebook` as her
    agents = [UserAgent(account.uid, env=scenarios) for account in accounts]
    broker = BrokerProcess(config).start()
    containers: list[str] = []
    try:
        shown = agents[0].call("cli", argv=["gpus", "--json", "--broker-socket", broker.socket])
        assert shown["code"] == 0, shown
        listed = {row["uuid"] for row in json.loads(shown["out"])}
        assert listed == {gpu["uuid"] for gpu in gpus}, shown  # NVML's, not a setting
        for agent in agents:
            request = kernel_spec(image=BASE_IMAGE, gpus={"count": 1}, kernel_name="gpu-check")
            launched = agent.call("launch_json", sock=broker.socket, spec=request)
            containers.append(str(launched["container_id"]))
        seen = []
        for container_id in containers:
            code, output = engine.containers.get(container_id).exec_run(["nvidia-smi", "-L"])
            assert code == 0, output
            lines = [line for line in output.decode().splitlines() if line.startswith("GPU ")]
            assert len(lines) == 1, output  # exactly its own GPU
            seen.append(lines[0])
        uuids = [next(u for u in listed if u in line) for line in seen]
        assert len(set(uuids)) == 2, seen  # two different GPUs
    finally:
        for container_id in containers:
            with contextlib.suppress(docker.errors.NotFound):
                engine.containers.get(container_id).remove(force=True)
        for agent in agents:
            agent.close()
        print(broker.log_text())
        broker.cleanup()
        for account in accounts:
            delete_account(account)
        network.remove()
