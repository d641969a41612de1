"""Every way a start can fail ends in a clear message, and leaves nothing on the engine."""

from __future__ import annotations

import time

import docker
import pytest
from jupyter_client.ioloop import AsyncIOLoopKernelManager
from labnotebook.provisioner.errors import (
    EngineUnreachable,
    GpuUnavailable,
    ImageNotAvailable,
    KernelConfigError,
    KernelDiedDuringStart,
    KernelLaunchError,
)

from .conftest import session_containers

pytestmark = pytest.mark.docker


async def failed_start(kernel_specs, name: str) -> tuple[BaseException, float]:
    km = AsyncIOLoopKernelManager(kernel_name=name, kernel_spec_manager=kernel_specs.spec_manager)
    started = time.monotonic()
    with pytest.raises(KernelLaunchError) as info:
        await km.start_kernel()
    elapsed = time.monotonic() - started
    assert not km.has_kernel
    return info.value, elapsed


@pytest.fixture(autouse=True)
def nothing_left_behind(docker_client):
    yield
    assert session_containers(docker_client) == [], "a failed start left a container behind"


async def test_engine_unreachable(kernel_specs) -> None:
    error, _ = await failed_start(
        kernel_specs, kernel_specs(docker_host="unix:///nonexistent/docker.sock")
    )
    assert isinstance(error, EngineUnreachable)
    assert "Cannot reach the Docker engine at unix:///nonexistent/docker.sock" in str(error)
    assert "Is Docker running" in str(error)


async def test_missing_image_names_it_and_how_to_build_it(kernel_specs) -> None:
    error, _ = await failed_start(kernel_specs, kernel_specs(image="labnotebook/no-such:1.0"))
    assert isinstance(error, ImageNotAvailable)
    assert "'labnotebook/no-such:1.0' is not on the Docker engine" in str(error)
    assert "make images" in str(error)
    assert "if-not-present" in str(error)


async def test_image_without_the_kernel_program(kernel_specs) -> None:
    name = kernel_specs(argv=["no-such-kernel", "-f", "{connection_file}"])
    error, _ = await failed_start(kernel_specs, name)
    assert "does not have the kernel's program 'no-such-kernel'" in str(error)


async def test_kernel_exiting_during_start_is_noticed_at_once_with_its_logs(kernel_specs) -> None:
    name = kernel_specs(
        argv=["python3", "-c", "import sys; print('cannot import numpy: boom'); sys.exit(3)"],
        launch_timeout=100.0,
    )
    error, elapsed = await failed_start(kernel_specs, name)
    assert isinstance(error, KernelDiedDuringStart)
    assert error.exit_code == 3
    assert "cannot import numpy: boom" in str(error)
    assert elapsed < 100.0 / 5  # noticed from the container's exit, not at the launch timeout


async def test_missing_named_volume_is_not_silently_created(kernel_specs, docker_client) -> None:
    error, _ = await failed_start(kernel_specs, kernel_specs(volumes=["lnb-typo-volume:/data"]))
    assert isinstance(error, KernelConfigError)
    assert "volume 'lnb-typo-volume'" in str(error)
    with pytest.raises(docker.errors.NotFound):
        docker_client.volumes.get("lnb-typo-volume")


async def test_gpu_request_without_a_gpu_driver(kernel_specs) -> None:
    error, _ = await failed_start(kernel_specs, kernel_specs(gpus="all"))
    assert isinstance(error, GpuUnavailable)
    assert "asks for all GPUs" in str(error)
    assert "NVIDIA Container Toolkit" in str(error)
    assert "'auto'" in str(error)


async def test_root_kernels_are_refused(kernel_specs) -> None:
    name = kernel_specs(uid=0, gid=0, username="root", home="/root")
    error, _ = await failed_start(kernel_specs, name)
    assert "Refusing to run a kernel container as root" in str(error)


async def test_bad_setting_in_kernelspec(kernel_specs) -> None:
    km = AsyncIOLoopKernelManager(
        kernel_name=kernel_specs(memory="-5g"), kernel_spec_manager=kernel_specs.spec_manager
    )
    with pytest.raises(Exception, match="memory must be a positive size"):
        await km.start_kernel()


async def test_pull_policy_pulls_only_when_asked_and_says_why_a_pull_failed(kernel_specs) -> None:
    name = kernel_specs(image="labnotebook/no-such:1.0", image_pull_policy="if-not-present")
    error, _ = await failed_start(kernel_specs, name)
    assert isinstance(error, ImageNotAvailable)
    assert "Pulling the kernel image 'labnotebook/no-such:1.0' failed" in str(error)
    assert "make images" in str(error)
