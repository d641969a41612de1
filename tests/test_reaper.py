"""Kernel containers of a server that died are found and removed, on demand and automatically."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from labnotebook.provisioner import labels as L

from .conftest import session_containers

pytestmark = pytest.mark.docker
ROOT = Path(__file__).resolve().parent.parent


def start_server(kernel_specs, name: str) -> tuple[subprocess.Popen, dict]:
    """A separate server process holding one live Docker kernel."""
    folder = kernel_specs.spec_manager.kernel_dirs[0]
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.servers.kernel_server", folder, name, "--hold"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    line = server.stdout.readline()
    assert line, "the server process did not start its kernel"
    return server, json.loads(line)


def containers_of(docker_client, kernel_id: str) -> list:
    return [c for c in session_containers(docker_client) if c.labels[L.KERNEL_ID] == kernel_id]


def labnotebook(*args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "labnotebook.provisioner.cli", *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def test_prune_removes_only_kernels_whose_server_is_gone(kernel_specs, docker_client) -> None:
    name = kernel_specs()
    crashed, crashed_kernel = start_server(kernel_specs, name)
    alive, alive_kernel = start_server(kernel_specs, name)
    try:
        os.kill(crashed.pid, signal.SIGKILL)  # a crash: no chance to clean up
        crashed.wait()
        assert containers_of(docker_client, crashed_kernel["kernel_id"])

        listing = {k["kernel_id"]: k for k in json.loads(labnotebook("kernels", "ls", "--json"))}
        assert listing[crashed_kernel["kernel_id"]]["orphaned"] is True
        assert listing[alive_kernel["kernel_id"]]["orphaned"] is False

        report = labnotebook("kernels", "prune")
        assert crashed_kernel["kernel_id"] in report
        assert containers_of(docker_client, crashed_kernel["kernel_id"]) == []
        assert containers_of(docker_client, alive_kernel["kernel_id"])  # untouched
    finally:
        alive.terminate()
        alive.wait()
    # SIGTERM is a crash too, as far as the kernel is concerned: prune what is left.
    labnotebook("kernels", "prune")
    assert containers_of(docker_client, alive_kernel["kernel_id"]) == []


def test_next_server_reaps_orphans_automatically(kernel_specs, docker_client) -> None:
    name = kernel_specs()
    crashed, orphan = start_server(kernel_specs, name)
    os.kill(crashed.pid, signal.SIGKILL)
    crashed.wait()
    assert containers_of(docker_client, orphan["kernel_id"])
    # Another server starts a kernel; in the background it removes the orphan.
    folder = kernel_specs.spec_manager.kernel_dirs[0]
    subprocess.run(
        [sys.executable, "-m", "tests.servers.kernel_server", folder, name],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    for _ in range(50):
        if not containers_of(docker_client, orphan["kernel_id"]):
            break
        time.sleep(0.2)
    assert containers_of(docker_client, orphan["kernel_id"]) == []
