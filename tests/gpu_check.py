"""`make gpu-check`: the real-GPU path, on a lab's GPU host; one clear line elsewhere.

On a host with NVIDIA GPUs, the driver and the NVIDIA Container Toolkit, it runs
tests/test_real_gpus.py: the host's GPUs as NVML lists them, each GPU given alone to a
container that sees exactly it (`nvidia-smi -L`), a CUDA tensor operation on each (with the
GPU kernel image, when built: `make kernel-gpu`), and two members' kernels on two different
GPUs at once through the lab's broker. Elsewhere it says why it skipped, and succeeds.
"""

from __future__ import annotations

import os
import sys

import docker
import pytest
from labnotebook.provisioner.gpus import engine_has_gpus


def setting_default(name: str) -> str:
    """A `make up` setting's default, from its one declaration (hub/settings_schema.py)."""
    from labnotebook.hub.settings_schema import SETTINGS

    return next(s.default for s in SETTINGS if s.name == name)


def why_not() -> str:
    """Why this host cannot run the real-GPU checks ('' when it can)."""
    try:
        info = docker.from_env(timeout=30).info()
    except docker.errors.DockerException as e:
        return f"no Docker engine answers ({e})"
    if not engine_has_gpus(info):
        return (
            "this host's Docker engine has no NVIDIA runtime or CDI GPU devices (no GPU, or "
            "no NVIDIA Container Toolkit: see docs/gpus.md)"
        )
    return ""


def main() -> int:
    reason = why_not()
    if reason:
        print(f"gpu-check: skipped: {reason}.")
        return 0
    here = os.path.dirname(os.path.abspath(__file__))
    return int(pytest.main(["-v", "-ra", os.path.join(here, "test_real_gpus.py")]))


if __name__ == "__main__":
    sys.exit(main())
