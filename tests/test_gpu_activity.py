"""Busy and idle GPU kernels, as the broker tells them apart: from the CPU time the engine
reports for each GPU kernel's container (hub/gpu_activity.py).

The book here is the broker's own (GpuService, with GPUS=0,1) and the containers are real:
one computes, one sleeps. Which GPUs they hold is bookkeeping only, so the host's engine
serves (tests/test_gpu_sharing.py gives containers real device requests).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import docker
import pytest
from labnotebook.hub.broker_gpus import GpuPolicy, GpuService
from labnotebook.provisioner.engine import DockerEngine
from labnotebook.provisioner.gpu_cli import describe_table

from .conftest import SESSION

pytestmark = pytest.mark.docker

BASE_IMAGE = "labnotebook/base:bookworm"


@pytest.fixture
def kernels(docker_client: docker.DockerClient) -> Iterator[dict[str, str]]:
    """Two stand-in kernel containers: 'train' computes, 'eval' sleeps."""
    made = {}
    try:
        for name, command in (
            ("train", ["sh", "-c", "while :; do :; done"]),
            ("eval", ["sleep", "600"]),
        ):
            container = docker_client.containers.run(
                BASE_IMAGE, command, detach=True, name=f"lnbact-{SESSION[:6]}-{name}",
                labels={"org.labnotebook.test": SESSION}, nano_cpus=200_000_000,
            )  # fmt: skip
            made[name] = container.id
        yield made
    finally:
        for container_id in made.values():
            docker_client.api.remove_container(container_id, force=True)


def test_the_broker_tells_a_busy_gpu_kernel_from_an_idle_one(kernels: dict[str, str]) -> None:
    service = GpuService(
        DockerEngine(), GpuPolicy(devices=["0", "1"]), logging.getLogger("test_gpu_activity")
    )
    for uid, who, name in ((2001, "alice", "train"), (2002, "bob", "eval")):
        kernel_id = str(uuid.uuid4())
        service.book.assign(uid, who, kernel_id, name, 1)
        service.book.confirm(kernel_id, kernels[name])

    service.sample_activity()
    first = {h["kernel_name"]: h for row in service.book.holders() for h in row["holders"]}
    assert {h["activity"] for h in first.values()} == {""}  # one sample: not known yet
    for _ in range(2):
        service.sample_activity()  # the engine's stats advance about once a second

    held = {h["kernel_name"]: h for row in service.book.holders() for h in row["holders"]}
    assert held["train"]["activity"] == "busy" and held["train"]["idle_since"] is None
    assert held["eval"]["activity"] == "idle" and held["eval"]["idle_since"] > 0
    # (view() would first sync with the engine's kernel containers, which these are not.)
    table = describe_table(service.book.holders())
    assert "alice (kernel 'train', busy " in table and "bob (kernel 'eval', idle " in table

    # A container gone: it is forgotten at the next look.
    service.book.release(kernels["eval"])
    service.sample_activity()
    assert service.activity.state(kernels["eval"]) == ("", None)
