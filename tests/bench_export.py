"""`make bench` figures of `labnotebook export`: the export time of the analysis notebook of
tests/test_export.py once its base layers are cached, and the size it adds to its base."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker

from .conftest import KERNEL_IMAGE, SESSION, TEST_NETWORK
from .notebook_server import jupyter_server, make_workspace, run_and_save, write_kernelspec


def measure(rounds: int = 3) -> dict[str, float]:
    client = docker.from_env()
    name = f"labnotebook-bench-{SESSION}-export:latest"
    with tempfile.TemporaryDirectory(prefix="labnotebook-bench-") as tmp:
        root = Path(tmp)
        home = make_workspace(root)
        write_kernelspec(root / "jupyter", "docker-bench", KERNEL_IMAGE, home)
        with jupyter_server(home, root / "jupyter") as server:
            run_and_save(server, "analysis/analysis.ipynb", "docker-bench")
        argv = [sys.executable, "-m", "labnotebook.provisioner.cli", "export",
                str(home / "analysis/analysis.ipynb"), "--data", str(home / "analysis/data"),
                "--name", name]  # fmt: skip
        env = {**os.environ, "HOME": str(home)}
        try:
            subprocess.run(argv, env=env, check=True, capture_output=True)  # warms the cache
            times = []
            for _ in range(rounds):
                started = time.perf_counter()
                subprocess.run(argv, env=env, check=True, capture_output=True)
                times.append(time.perf_counter() - started)
            image = client.images.get(name)
            base = client.images.get(image.labels["org.labnotebook.export.base-image-id"])
            added = image.attrs["Size"] - base.attrs["Size"]
        finally:
            with contextlib.suppress(docker.errors.ImageNotFound):
                client.images.remove(name, force=True)
            for network in client.networks.list(names=[TEST_NETWORK]):
                network.remove()
    times.sort()
    return {"export_cached_base_s": times[len(times) // 2], "export_added_mb": added / 1e6}
