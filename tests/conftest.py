"""Shared fixtures: a real Docker engine, the real kernel image, real kernels.

Docker tests skip (with the reason) when no engine answers on a developer's machine, and
fail instead when LABNOTEBOOK_REQUIRE_DOCKER=1 (set by .ci/run), so CI cannot go green by
skipping. Every kernel container a test starts carries the label `labnotebook-test.session`;
at the end of the session no container with it, and no test network, may remain.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
from jupyter_client.ioloop import AsyncIOLoopKernelManager
from jupyter_client.kernelspec import KernelSpecManager

KERNEL_IMAGE = os.environ.get("LABNOTEBOOK_KERNEL_IMAGE", "labnotebook/kernel-python:latest")
SESSION = uuid.uuid4().hex[:10]
SESSION_LABEL = "labnotebook-test.session"
TEST_NETWORK = f"labnotebook-test-{SESSION}"
REQUIRE_DOCKER = os.environ.get("LABNOTEBOOK_REQUIRE_DOCKER") == "1"
# When the suite runs as root, kernels run as this made-up, unprivileged identity.
TEST_IDENTITY = {"uid": 4242, "gid": 4242, "username": "labtest", "home": "/home/labtest"}


def _docker_problem() -> str | None:
    try:
        client = docker.from_env(timeout=10)
        client.ping()
        client.images.get(KERNEL_IMAGE)
    except docker.errors.ImageNotFound:
        return f"kernel image {KERNEL_IMAGE} is missing (build it: make images)"
    except Exception as e:
        return f"no Docker engine: {e}"
    return None


_PROBLEM = _docker_problem()


def pytest_runtest_setup(item: pytest.Item) -> None:
    if _PROBLEM is not None and "docker" in item.keywords:
        if REQUIRE_DOCKER:
            pytest.fail(f"LABNOTEBOOK_REQUIRE_DOCKER=1 but {_PROBLEM}", pytrace=False)
        pytest.skip(_PROBLEM)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The suite must leave no kernel containers or test networks behind."""
    if _PROBLEM is not None:
        return
    client = docker.from_env()
    leftovers = client.containers.list(all=True, filters={"label": f"{SESSION_LABEL}={SESSION}"})
    networks = client.networks.list(names=[TEST_NETWORK])
    if leftovers or networks:
        names = [c.name for c in leftovers] + [n.name for n in networks]
        print(f"\nFAILED: the test session left Docker objects behind: {names}")
        for c in leftovers:
            c.remove(force=True)
        for n in networks:
            n.remove()
        session.exitstatus = 1


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    client = docker.from_env()
    yield client
    for network in client.networks.list(names=[TEST_NETWORK]):
        for container in network.containers:
            network.disconnect(container, force=True)
        network.remove()
    client.close()


@pytest.fixture(scope="session")
def identity() -> dict[str, Any]:
    """The identity kernels run as: this user, or a made-up one when the suite runs as root."""
    if os.getuid() == 0:
        return dict(TEST_IDENTITY)
    import pwd

    me = pwd.getpwuid(os.getuid())
    return {"uid": me.pw_uid, "gid": me.pw_gid, "username": me.pw_name, "home": me.pw_dir}


@pytest.fixture
def kernel_specs(
    tmp_path: Path, identity: dict[str, Any], docker_client: Any
) -> Callable[..., str]:
    """Write a Docker kernelspec with the given provisioner config; returns its name."""
    root = tmp_path / "kernels"
    counter = iter(range(1000))

    def make(
        argv: list[str] | None = None,
        env: dict[str, str] | None = None,
        encrypted: bool = True,
        **config: Any,
    ) -> str:
        name = f"docker-test-{next(counter)}"
        settings = {
            "image": KERNEL_IMAGE,
            "network": TEST_NETWORK,
            "labels": {SESSION_LABEL: SESSION},
            **(identity if os.getuid() == 0 else {}),
            **config,
        }
        spec = {
            "argv": argv or ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": f"Test {name}",
            "language": "python",
            "interrupt_mode": "signal",
            "env": env or {},
            "metadata": {
                "kernel_provisioner": {
                    "provisioner_name": "labnotebook-docker",
                    "config": settings,
                },
                # The kernel image's ipykernel takes CurveZMQ keys (see the bundled kernelspec).
                "supported_encryption": ["curve"] if encrypted else [],
            },
        }
        folder = root / name
        folder.mkdir(parents=True)
        (folder / "kernel.json").write_text(json.dumps(spec))
        return name

    make.spec_manager = KernelSpecManager(kernel_dirs=[str(root)])  # type: ignore[attr-defined]
    return make


@pytest.fixture
async def start_kernel(kernel_specs: Any) -> AsyncIterator[Callable[..., Any]]:
    """Start a kernel (manager, ready client) from a kernelspec name; shut all down after."""
    started: list[tuple[AsyncIOLoopKernelManager, Any]] = []

    async def start(name: str, **kwargs: Any) -> tuple[AsyncIOLoopKernelManager, Any]:
        km = AsyncIOLoopKernelManager(
            kernel_name=name, kernel_spec_manager=kernel_specs.spec_manager
        )
        await km.start_kernel(**kwargs)
        kc = km.client()
        kc.start_channels()
        started.append((km, kc))
        await kc.wait_for_ready(timeout=120)
        return km, kc

    yield start
    for km, kc in started:
        kc.stop_channels()
        if km.has_kernel:
            await km.shutdown_kernel(now=True)


async def run_code(kc: Any, code: str, timeout: float = 60) -> dict[str, Any]:
    """Execute code; return stdout, stderr, the reply status and the error name if any."""
    out: list[str] = []
    err: list[str] = []

    def output(msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "stream":
            (out if msg["content"]["name"] == "stdout" else err).append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            err.append(msg["content"]["ename"])

    reply = await kc.execute_interactive(code, output_hook=output, timeout=timeout)
    content = reply["content"]
    return {
        "stdout": "".join(out),
        "stderr": "".join(err),
        "status": content["status"],
        "ename": content.get("ename"),
    }


def session_containers(client: docker.DockerClient) -> list[Any]:
    return client.containers.list(all=True, filters={"label": f"{SESSION_LABEL}={SESSION}"})
