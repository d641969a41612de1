"""A private Docker engine whose GPU requests work on a machine with no GPU (test fixture).

`tests/fake_gpu/dockerd-fake-gpu.sh` starts it: its `nvidia` device driver is registered by
a stand-in hook, exactly as the NVIDIA Container Toolkit's makes it on a GPU host, so a
container that asks for device 1 starts with NVIDIA_VISIBLE_DEVICES=1 (see the script's
header and ../shared/fake-gpu/README.md). Its state is all under one folder, removed at the
end with everything in it: containers, images, volumes, networks and their host bridges.

A test module imports `gpu_engine_fixture` (the fixture `gpu_engine`: one engine for the
module) and either `gpu_engine_images_fixture` (the base image) or a fixture of its own
named `gpu_engine_images` that says which images to copy in.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import subprocess
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors
import pytest

from .conftest import REQUIRE_DOCKER, SESSION

FAKE_GPU = Path(__file__).parent / "fake_gpu"
BASE_IMAGE = os.environ.get("LABNOTEBOOK_BASE_IMAGE", "labnotebook/base:bookworm")
HOST_ENGINE = "unix:///var/run/docker.sock"


@dataclass
class GpuEngine:
    """A running private engine: its DOCKER_HOST, its socket, an SDK client for it."""

    host: str
    folder: Path
    client: docker.DockerClient
    copied: list[str] = field(default_factory=list)
    copy_seconds: float = 0.0
    """How long copying `copied` in from the host's engine took (one `docker save | load`)."""

    @property
    def socket(self) -> Path:
        return Path(self.host.removeprefix("unix://"))

    def env(self) -> dict[str, str]:
        """An environment whose `docker` is this engine's."""
        return {**os.environ, "DOCKER_HOST": self.host}


def unavailable(reason: str) -> None:
    if REQUIRE_DOCKER:
        pytest.fail(f"LABNOTEBOOK_REQUIRE_DOCKER=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def copy_images(engine: GpuEngine, images: list[str], tags: dict[str, str]) -> None:
    """One `docker save | docker load` for all `images`: the layers they share (the base
    image's) cross once, not once per image as FAKEGPU_IMAGES copies them. `tags`: new name
    -> image, made in the private engine only."""
    started = time.monotonic()
    wanted = [i for i in dict.fromkeys(images) if not _has_image(engine.client, i)]
    if wanted:
        with subprocess.Popen(
            ["docker", "-H", HOST_ENGINE, "save", *wanted],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        ) as save:  # fmt: skip
            load = subprocess.run(
                ["docker", "-H", engine.host, "load", "--quiet"],
                stdin=save.stdout, capture_output=True, text=True, check=False,
            )  # fmt: skip
            save_error = save.stderr.read().decode() if save.stderr else ""
        assert save.returncode == 0, f"docker save {' '.join(wanted)}: {save_error}"
        assert load.returncode == 0, f"docker load: {load.stderr}"
    for name, image in tags.items():
        engine.client.images.get(image).tag(name)
    engine.copied, engine.copy_seconds = wanted, time.monotonic() - started


def _has_image(client: docker.DockerClient, image: str) -> bool:
    try:
        client.images.get(image)
        return True
    except docker.errors.ImageNotFound:
        return False


def _free_pool(folder: Path) -> str:
    """Subnets of the engine's own, clear of the host engine's (both would allocate from the
    same default ranges otherwise) and of other private engines' bridges: a /22 in
    10.252.0.0/16 (up to four networks) that no host route touches, the first free one from
    a place picked by the folder's name."""
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
    used = [ipaddress.ip_network(r.split()[0], strict=False) for r in routes.splitlines()
            if r[:1].isdigit()]  # fmt: skip
    start = zlib.crc32(str(folder).encode()) % 64
    for step in range(64):
        pool = ipaddress.ip_network(f"10.252.{(start + step) % 64 * 4}.0/22")
        if not any(pool.overlaps(route) for route in used):
            return str(pool)
    raise AssertionError(f"no free /22 in 10.252.0.0/16 for a private engine:\n{routes}")


@contextlib.contextmanager
def private_gpu_engine(folder: Path) -> Iterator[GpuEngine]:
    """Start a private stand-in GPU engine under `folder` (short: socket paths); on exit,
    remove its networks (dockerd leaves their host bridges behind otherwise), stop it and
    delete the folder."""
    if os.geteuid() != 0:
        unavailable("the stand-in GPU engine needs root")
    for tool in ("dockerd", "docker", "ip", "curl"):
        if shutil.which(tool) is None:
            unavailable(f"the stand-in GPU engine needs {tool}")
    # An "nvidia" runtime too, as the toolkit registers on a GPU host (`docker info` shows it,
    # so the broker tries NVML); here it is plain runc.
    runc = shutil.which("runc") or "/usr/sbin/runc"
    pool = _free_pool(folder)
    started = subprocess.run(
        ["sh", str(FAKE_GPU / "dockerd-fake-gpu.sh"), str(folder),
         f"--add-runtime=nvidia={runc}",
         # Published ports through docker-proxy: the engine writes no iptables rules, but a
         # hub's port on 127.0.0.1 still answers, as `make up` expects.
         "--userland-proxy=true",
         f"--default-address-pool=base={pool},size=24"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    engine = None
    try:
        assert started.returncode == 0, started.stderr
        host = started.stdout.strip()
        engine = GpuEngine(host, folder, docker.DockerClient(base_url=host, timeout=120))
        yield engine
    finally:
        if engine is not None:
            for network in engine.client.networks.list():
                if network.name not in ("bridge", "host", "none"):
                    with contextlib.suppress(docker.errors.DockerException):
                        network.reload()
                        for container in network.attrs.get("Containers") or {}:
                            engine.client.containers.get(container).remove(force=True)
                        network.remove()
            engine.client.close()
        subprocess.run(
            ["sh", str(FAKE_GPU / "stop-dockerd-fake-gpu.sh"), str(folder)],
            capture_output=True, timeout=120,
        )  # fmt: skip
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def forwarding_allowed(bridge: str) -> Iterator[None]:
    """Let containers on the private engine's `bridge` reach each other.

    The host's engine sets the FORWARD policy to DROP, and with br_netfilter loaded traffic
    between two containers on one bridge passes that chain: the private engine writes no
    iptables rules (--iptables=false), so a hub could not reach its kernels. One ACCEPT rule
    for this bridge only, in DOCKER-USER (the chain the host's engine leaves to its admin),
    removed on exit.
    """
    chain = "DOCKER-USER"
    if subprocess.run(["iptables", "-S", chain], capture_output=True).returncode != 0:
        chain = "FORWARD"
    rule = ["-i", bridge, "-o", bridge, "-m", "comment", "--comment",
            f"labnotebook-test-{SESSION}", "-j", "ACCEPT"]  # fmt: skip
    subprocess.run(["iptables", "-I", chain, *rule], check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run(["iptables", "-D", chain, *rule], capture_output=True)


@pytest.fixture(scope="module", name="gpu_engine_images")
def gpu_engine_images_fixture() -> dict[str, str]:
    """The images a module's engine needs, as name -> source image (from the host's engine;
    a name other than its source is a tag made in the private engine). Override per module."""
    return {BASE_IMAGE: BASE_IMAGE}


# Named apart from their fixtures, so that a module imports them without its tests'
# parameters shadowing the import.
@pytest.fixture(scope="module", name="gpu_engine")
def gpu_engine_fixture(
    docker_client: docker.DockerClient, gpu_engine_images: dict[str, str]
) -> Iterator[GpuEngine]:
    """A private engine with GPU requests and the module's images, for this module."""
    with private_gpu_engine(Path(f"/tmp/lnbfg-{SESSION[:6]}")) as engine:
        sources = list(gpu_engine_images.values())
        tags = {name: image for name, image in gpu_engine_images.items() if name != image}
        copy_images(engine, sources, tags)
        yield engine
