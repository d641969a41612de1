"""Docker-out-of-Docker: a Jupyter server inside a container launches sibling kernel containers.

The server container (the kernel image, with this package and the Docker SDK copied in) sees
the engine through the mounted socket and reaches its kernels by their addresses on the
shared network, as the lab hub does. Nothing of the server's file system is bind-mounted
into the kernel: the connection file travels through the engine's API.
"""

from __future__ import annotations

import importlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from .conftest import KERNEL_IMAGE, SESSION, SESSION_LABEL, TEST_IDENTITY, TEST_NETWORK

pytestmark = pytest.mark.docker
ROOT = Path(__file__).resolve().parent.parent
SDK_PACKAGES = ("docker", "requests", "urllib3", "idna", "certifi", "charset_normalizer")


def server_files(kernel_spec: dict) -> bytes:
    """/srv with labnotebook, the Docker SDK, the test server and one kernelspec."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:

        def add_text(path: str, text: str) -> None:
            data = text.encode()
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        site = "srv/site"
        for package in SDK_PACKAGES:
            folder = Path(importlib.import_module(package).__file__).parent
            tar.add(folder, f"{site}/{package}", filter=_no_cache)
        tar.add(ROOT / "provisioner", f"{site}/labnotebook/provisioner", filter=_no_cache)
        add_text(
            f"{site}/labnotebook-0.0.dist-info/METADATA",
            "Metadata-Version: 2.1\nName: labnotebook\nVersion: 0.0\n",
        )
        add_text(
            f"{site}/labnotebook-0.0.dist-info/entry_points.txt",
            "[jupyter_client.kernel_provisioners]\n"
            "labnotebook-docker = labnotebook.provisioner:DockerKernelProvisioner\n",
        )
        tar.add(ROOT / "tests" / "servers", "srv/tests/servers", filter=_no_cache)
        add_text("srv/tests/__init__.py", "")
        add_text("srv/kernels/docker-in-docker/kernel.json", json.dumps(kernel_spec))
    return buffer.getvalue()


def _no_cache(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    return None if "__pycache__" in info.name else info


def test_server_in_a_container_runs_sibling_kernels(docker_client) -> None:
    kernel_spec = {
        "argv": ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "DooD",
        "language": "python",
        "metadata": {
            "kernel_provisioner": {
                "provisioner_name": "labnotebook-docker",
                "config": {
                    "image": KERNEL_IMAGE,
                    "network": TEST_NETWORK,
                    "labels": {SESSION_LABEL: SESSION},
                    **TEST_IDENTITY,
                },
            }
        },
    }
    docker_client.networks.get(TEST_NETWORK) if docker_client.networks.list(
        names=[TEST_NETWORK]
    ) else docker_client.networks.create(TEST_NETWORK, driver="bridge")
    server = docker_client.containers.create(
        KERNEL_IMAGE,
        [
            "python3",
            "-m",
            "tests.servers.kernel_server",
            "/srv/kernels",
            "docker-in-docker",
            "--code",
            "import os, socket; print(os.getuid(), socket.gethostname())",
        ],
        working_dir="/srv",
        environment={"PYTHONPATH": "/srv/site"},
        volumes={"/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"}},
        network=TEST_NETWORK,
        labels={SESSION_LABEL: SESSION},
        user="root",
    )
    try:
        server.put_archive("/", server_files(kernel_spec))
        server.start()
        exit_code = server.wait(timeout=180)["StatusCode"]
        output = server.logs().decode()
        assert exit_code == 0, output
        report = json.loads(output.strip().splitlines()[-1])
        uid, kernel_host = report["stdout"].split()
        assert int(uid) == TEST_IDENTITY["uid"]
        assert kernel_host != server.attrs["Config"]["Hostname"]  # a sibling, not the server
        assert report["ip"].count(".") == 3  # reached on its address on the shared network
    finally:
        server.remove(force=True)
