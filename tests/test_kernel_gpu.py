"""The sample GPU kernel (`make kernel-gpu`): its kernelspec starts on a host without GPUs and
says so clearly, and its image (PyTorch's CUDA wheels, GBs) is never built by `make images`,
`make test` or `make up`.

The image itself is not built here. Its first stage ("report": the lab's Python kernel plus
the GPU report, no PyTorch) is, and a kernel is started from it with the bundled
python-gpu-docker kernelspec's own argv and provisioner settings: that is everything the GPU
kernel does at start, through the real provisioner on this engine.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import docker.errors
import pytest
from labnotebook.kernelspecs import bundled
from labnotebook.provisioner import labels as L
from labnotebook.provisioner.gpus import engine_has_gpus

from .conftest import KERNEL_IMAGE, SESSION, run_code, session_containers

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "images" / "kernel-gpu"
REPORT_IMAGE = f"labnotebook-test/kernel-gpu-report:{SESSION}"
NO_GPU = "No GPU: this kernel sees no NVIDIA GPU"


def gpu_spec() -> dict[str, Any]:
    spec: dict[str, Any] = json.loads((bundled()["python-gpu-docker"] / "kernel.json").read_text())
    return spec


def test_the_kernelspec_asks_for_gpus_where_there_are_some() -> None:
    spec = gpu_spec()
    python = json.loads((bundled()["python-docker"] / "kernel.json").read_text())
    provisioner = spec["metadata"]["kernel_provisioner"]
    assert provisioner["provisioner_name"] == "labnotebook-docker"
    assert provisioner["config"]["image"] == "labnotebook/kernel-gpu:latest"
    # One GPU of its own: in the lab the broker picks a free one (hub/broker_gpus.py); "auto"
    # or "all" would hand every GPU kernel every GPU.
    assert provisioner["config"]["gpus"] == 1
    # The image is the lab's Python kernel underneath: the same command, encrypted the same.
    assert spec["argv"] == python["argv"]
    assert spec["metadata"]["supported_encryption"] == ["curve"]


def test_the_image_installs_cuda_pytorch_on_the_lab_kernel() -> None:
    dockerfile = (FOLDER / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", dockerfile, re.M | re.I)
    assert stages == [("${KERNEL_IMAGE}", "report"), ("report", "")]
    # The lab's Python kernel: the ARG has no default of its own, make passes the lab's.
    assert re.search(r"^ARG KERNEL_IMAGE$", dockerfile, re.M)
    assert "--build-arg KERNEL_IMAGE=$(KERNEL_IMAGE)" in (ROOT / "Makefile").read_text()
    assert "pip install" in dockerfile and "torch" in dockerfile
    # A CPU-only wheel must fail the build rather than make a GPU kernel without CUDA.
    assert "torch.version.cuda is None" in dockerfile
    # The extra CA bundle is trusted before pip reaches PyPI, as in the other images.
    assert dockerfile.index("extra-ca.crt") < dockerfile.index("pip install")


def make_dry_run(*targets: str) -> str:
    """What make would run for the targets, as if every image were missing."""
    absent = f"labnotebook-test/absent-{SESSION}"
    done = subprocess.run(
        ["make", "--no-print-directory", "-n", "-B", *targets,
         f"KERNEL_IMAGE={absent}-python:x", f"KERNEL_R_IMAGE={absent}-r:x",
         f"KERNEL_GPU_IMAGE={absent}-gpu:x", f"HUB_IMAGE={absent}-hub:x"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout


def test_only_make_kernel_gpu_builds_it() -> None:
    everyday = make_dry_run("images", "test", "up", "upgrade")
    assert "build.sh kernel-r " in everyday  # `make test` builds the R kernel when missing
    assert "kernel-gpu" not in everyday
    assert "build.sh kernel-gpu " in make_dry_run("kernel-gpu")


@pytest.fixture(scope="module")
def report_image(docker_client: Any) -> Any:
    """The GPU image's first stage, on the lab's Python kernel: seconds, no PyTorch."""
    subprocess.run(
        ["docker", "build", "-q", "--target", "report", "--build-arg",
         f"KERNEL_IMAGE={KERNEL_IMAGE}", "-t", REPORT_IMAGE, str(FOLDER)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    yield REPORT_IMAGE
    # An error here means a container still uses it: the session's own check reports that.
    with contextlib.suppress(docker.errors.APIError):
        docker_client.images.remove(REPORT_IMAGE)


@pytest.mark.docker
async def test_the_kernel_starts_and_says_whether_it_has_a_gpu(
    kernel_specs, start_kernel, report_image, docker_client
) -> None:
    spec = gpu_spec()
    # What the image itself says about the GPUs it got, on whatever this engine has: "auto"
    # (all where the engine has some, none elsewhere), not the kernelspec's 1, which a
    # single user's engine without GPUs refuses (the lab's broker picks one: test_gpu_book).
    config = {
        **spec["metadata"]["kernel_provisioner"]["config"],
        "image": report_image,
        "gpus": "auto",
    }
    name = kernel_specs(argv=spec["argv"], env=spec["env"], encrypted=True, **config)
    km, kc = await start_kernel(name)
    [container] = [
        c for c in session_containers(docker_client) if c.labels.get(L.KERNEL_ID) == km.kernel_id
    ]
    has_gpus = engine_has_gpus(docker_client.info())
    requests = container.attrs["HostConfig"]["DeviceRequests"]
    banner = (await kc.kernel_info(reply=True, timeout=30))["content"]["banner"]
    first = await run_code(kc, "print(6 * 7)")
    second = await run_code(kc, "print('again')")
    log = container.logs().decode()

    print(f"banner: {banner!r}\nfirst cell's stderr: {first['stderr']!r}")
    assert first["status"] == "ok" and first["stdout"].strip() == "42"
    if has_gpus:
        assert requests and requests[0]["Count"] == -1
        assert "GPUs in this kernel" in banner
        assert NO_GPU not in first["stderr"]
    else:
        # No GPU asked of the engine (so it started), and the member is told: in the
        # console's banner, in the kernel's log, and once, with the first cell's output.
        assert not requests
        assert NO_GPU in banner
        assert NO_GPU in log
        assert NO_GPU in first["stderr"] and "torch.cuda.is_available() is False" in first["stderr"]
        assert second == {"stdout": "again\n", "stderr": "", "status": "ok", "ename": None}
