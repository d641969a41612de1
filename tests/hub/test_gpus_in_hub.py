"""GPU sharing as new members meet it through the hub (issue 17's "done when").

A real `make up GPUS=0,1 MEMBER_GPUS=1` on a private stand-in GPU engine
(tests/fake_gpu_engine.py: GPU requests work there as on a GPU host with the NVIDIA toolkit,
with no GPU). alice, bob and carol sign up, are approved, log in and start their servers
through the hub's forms; their GPU kernels start as JupyterLab starts them, through their
Jupyter server's REST API with the lab's `python-gpu-docker` kernelspec. Every step reads the
devices each kernel container really got: the DeviceIDs of its device request (`docker
inspect`) and NVIDIA_VISIBLE_DEVICES of its first process, read by code run in the kernel
(what CUDA in it would see).

The tests tell one story in file order, on one lab for the module.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from labnotebook.provisioner import labels as L
from labnotebook.provisioner.defaults import KERNEL_IMAGE

from ..fake_gpu_engine import (
    BASE_IMAGE,
    GpuEngine,
    forwarding_allowed,
    gpu_engine_fixture,  # noqa: F401
)
from .conftest import ROOT, SESSION, Lab, _signed_up_and_approved, free_port, run
from .hubclient import HubUser

pytestmark = [pytest.mark.hub, pytest.mark.docker, pytest.mark.timeout(1800)]

GPU_KERNELSPEC = "python-gpu-docker"
GPU_IMAGE = json.loads((ROOT / "kernelspecs" / GPU_KERNELSPEC / "kernel.json").read_text())[
    "metadata"
]["kernel_provisioner"]["config"]["image"]

# Run in a kernel: what its first process (what CUDA would see) was given.
VISIBLE = (
    "print(dict(v.split('=', 1) for v in open('/proc/1/environ').read().split('\\0')"
    " if '=' in v).get('NVIDIA_VISIBLE_DEVICES', ''))"
)


@pytest.fixture(scope="module")
def hub_image(lab_image: str) -> str:
    """The hub test image, built on the host's engine (as `make up` builds it) so that it
    can be copied into the private one."""
    env = {k: v for k, v in os.environ.items() if k != "DOCKER_HOST"}
    run("make", "--no-print-directory", "-C", str(ROOT), "hub-image-if-missing",
        f"HUB_IMAGE={lab_image}", env=env)  # fmt: skip
    return lab_image


@pytest.fixture(scope="module")
def gpu_engine_images(hub_image: str) -> dict[str, str]:
    # The GPU kernel image is the lab's Python kernel image under the GPU kernelspec's name:
    # the stand-in needs no CUDA, and the hub offers that kernelspec only where it exists.
    return {
        BASE_IMAGE: BASE_IMAGE,
        KERNEL_IMAGE: KERNEL_IMAGE,
        hub_image: hub_image,
        GPU_IMAGE: KERNEL_IMAGE,
    }


@dataclass
class GpuHub:
    lab: Lab
    engine: GpuEngine
    members: dict[str, HubUser] = field(default_factory=dict)
    kernels: dict[str, str] = field(default_factory=dict)
    """Each member's running GPU kernel (its id), as the story goes."""

    def start(self, who: str) -> tuple[int, str, float]:
        """`who` starts a GPU kernel as JupyterLab does: the status, the kernel id or the
        message the member is shown, and the seconds it took."""
        started = time.monotonic()
        reply = self.members[who].server_api("POST", "kernels", json={"name": GPU_KERNELSPEC})
        elapsed = time.monotonic() - started
        body = reply.json()
        return reply.status_code, body.get("id") or body.get("message", ""), elapsed

    def container(self, kernel_id: str) -> Any:
        [container] = self.engine.client.containers.list(
            filters={"label": f"{L.KERNEL_ID}={kernel_id}"}
        )
        return container

    def devices(self, who: str, kernel_id: str) -> list[str]:
        """The device IDs the kernel's container was given; its own environment must say
        the same."""
        container = self.container(kernel_id)
        assert container.labels[L.OWNER] == who
        requests = container.attrs["HostConfig"]["DeviceRequests"] or []
        ids = [i for r in requests for i in (r.get("DeviceIDs") or [])]
        ran = self.members[who].execute(kernel_id, VISIBLE)
        assert ran.status == "ok", ran
        assert ran.stdout.strip() == ",".join(ids), (ran.stdout, ids)
        return ids

    def gpus(self, who: str) -> list[dict[str, Any]]:
        """`labnotebook gpus --json`, run by the member in the hub (as in her terminal)."""
        return json.loads(self.lab.exec("labnotebook", "gpus", "--json", user=who).stdout)

    def held(self) -> dict[str, list[str]]:
        """Each running kernel container's devices, by container ID (what the engine says)."""
        found = self.engine.client.containers.list(filters={"label": f"{L.ROLE}={L.KERNEL_ROLE}"})
        return {
            c.id: [i for r in c.attrs["HostConfig"]["DeviceRequests"] or []
                   for i in r.get("DeviceIDs") or []]
            for c in found
        }  # fmt: skip


def visible_devices(container: Any) -> list[str]:
    """NVIDIA_VISIBLE_DEVICES of the container's first process (/proc/1/environ), read as
    the container's own user."""
    code, output = container.exec_run(["cat", "/proc/1/environ"])
    assert code == 0, output
    environ = dict(v.split("=", 1) for v in output.decode().split("\0") if "=" in v)
    return [i for i in environ.get("NVIDIA_VISIBLE_DEVICES", "").split(",") if i]


def network_bridge(lab: Lab) -> str:
    """The host bridge of the lab's network on the private engine."""
    return "br-" + lab.docker("network", "inspect", "-f", "{{.Id}}", lab.name).stdout[:12]


@pytest.fixture(scope="module")
def gpu_hub(gpu_engine: GpuEngine, hub_image: str, backup_dir: Path) -> Iterator[GpuHub]:
    print(f"\ncopied {gpu_engine.copied} into the private engine in {gpu_engine.copy_seconds:.1f}s")
    lab = Lab(
        f"labnotebook-gputest-{SESSION}", free_port(), hub_image, backup_dir,
        docker_host=gpu_engine.host,
    )  # fmt: skip
    try:
        started = time.monotonic()
        lab.up_output = lab.make(
            "up", GPUS="0,1", MEMBER_GPUS="1", DOCKER_SOCKET=str(gpu_engine.socket)
        ).stdout
        print(f"make up: {time.monotonic() - started:.1f}s")
        with forwarding_allowed(network_bridge(lab)):
            yield GpuHub(lab, gpu_engine)
    finally:
        lab.destroy()


@pytest.fixture(scope="module")
def members(gpu_hub: GpuHub) -> dict[str, HubUser]:
    """The admin claims the hub with its setup token; alice, bob and carol sign up, are
    approved, log in and start their servers, as new members do."""
    lab = gpu_hub.lab
    match = re.search(r"setup token:\s+(\S+)", lab.up_output)
    assert match, lab.up_output
    admin = lab.user("admin")
    assert admin.signup(token=match.group(1)).alert == "alert-success"
    assert admin.login().status == 302
    for who in ("alice", "bob", "carol"):
        gpu_hub.members[who] = _signed_up_and_approved(lab, who, admin)
        gpu_hub.members[who].start_server()
    return gpu_hub.members


def test_each_member_gets_a_gpu_of_their_own(gpu_hub: GpuHub, members: dict[str, HubUser]) -> None:
    hub = gpu_hub
    specs = members["alice"].server_api("GET", "kernelspecs").json()["kernelspecs"]
    assert GPU_KERNELSPEC in specs  # offered: the engine has its image

    status, alice, _ = hub.start("alice")
    assert status == 201, alice
    status, bob, _ = hub.start("bob")
    assert status == 201, bob
    alice_ids, bob_ids = hub.devices("alice", alice), hub.devices("bob", bob)
    assert len(alice_ids) == len(bob_ids) == 1 and {*alice_ids, *bob_ids} == {"0", "1"}
    hub.kernels.update(alice=alice, bob=bob)

    # Carol finds both taken: told at once (the bound), and by whom.
    status, message, elapsed = hub.start("carol")
    assert status != 201 and elapsed < 10, (status, message, elapsed)
    assert "All 2 GPUs are in use" in message and "Try again later" in message, message
    assert "alice" in message and "bob" in message, message

    # Alice at her cap: told so, and which kernel holds her GPU.
    status, message, _ = hub.start("alice")
    assert status != 201 and "MEMBER_GPUS=1" in message, message
    assert len(hub.held()) == 2  # the refusals left no container behind

    # Alice lets go; carol's next start gets alice's former device.
    members["alice"].shutdown_kernel(alice)
    assert alice not in [k["id"] for k in members["alice"].server_api("GET", "kernels").json()]
    status, carol, _ = hub.start("carol")
    assert status == 201, carol
    assert hub.devices("carol", carol) == alice_ids
    del hub.kernels["alice"]
    hub.kernels["carol"] = carol

    # Any member sees who holds which: alice, who holds none now, too.
    rows = {r["device_id"]: r for r in hub.gpus("alice")}
    assert {d: [h["username"] for h in r["holders"]] for d, r in rows.items()} == {
        bob_ids[0]: ["bob"],
        alice_ids[0]: ["carol"],
    }
    text = hub.lab.exec("labnotebook", "gpus", user="alice").stdout
    assert "bob (kernel" in text and "carol (kernel" in text, text


def test_a_hub_restarted_under_running_kernels_keeps_the_book(
    gpu_hub: GpuHub, members: dict[str, HubUser]
) -> None:
    hub = gpu_hub
    assert set(hub.kernels) == {"bob", "carol"}, "runs after test_each_member_gets_..."
    before = {who: hub.container(k) for who, k in hub.kernels.items()}
    devices = {who: hub.devices(who, k) for who, k in hub.kernels.items()}

    # The hub goes down abruptly (the OOM killer, a crash) and comes back: its servers could
    # not shut their kernels down, so these still run and hold their GPUs, and the broker
    # must rebuild its book from the engine. (A `docker restart` lets the servers end their
    # kernels first: nothing would be left to remember.)
    started = time.monotonic()
    hub.lab.docker("kill", hub.lab.name)
    hub.lab.docker("start", hub.lab.name)
    hub.lab.wait_ready()
    print(f"hub killed and started again: {time.monotonic() - started:.1f}s")
    for who, container in before.items():
        container.reload()
        assert container.status == "running", who
        assert visible_devices(container) == devices[who]  # the same kernel, the same GPU

    # Any member sees who holds which, as before the restart.
    rows = {r["device_id"]: [h["username"] for h in r["holders"]] for r in hub.gpus("alice")}
    assert rows == {devices["bob"][0]: ["bob"], devices["carol"][0]: ["carol"]}, rows

    # No device handed out twice: alice's new kernel is refused, naming who holds them.
    assert members["alice"].login().status == 302
    members["alice"].start_server()
    status, message, elapsed = hub.start("alice")
    assert status != 201 and elapsed < 10, (status, message, elapsed)
    assert "All 2 GPUs are in use" in message, message
    assert "bob" in message and "carol" in message, message
    assert set(hub.held()) == {c.id for c in before.values()}


def test_gpus_come_back_and_nothing_is_left_behind(
    gpu_hub: GpuHub, members: dict[str, HubUser]
) -> None:
    hub = gpu_hub
    # Bob's and carol's kernels lost their servers with the hub: the broker's reaper removes
    # them (every 60 s), and their GPUs are free again.
    deadline = time.monotonic() + 150
    while hub.held() and time.monotonic() < deadline:
        time.sleep(2)
    assert hub.held() == {}, "kernel containers outlived their servers"
    assert all(not r["holders"] for r in hub.gpus("bob"))

    assert members["bob"].login().status == 302
    members["bob"].start_server()
    status, alice, _ = hub.start("alice")
    assert status == 201, alice
    status, bob, _ = hub.start("bob")
    assert status == 201, bob
    assert {*hub.devices("alice", alice), *hub.devices("bob", bob)} == {"0", "1"}
    members["alice"].shutdown_kernel(alice)
    members["bob"].shutdown_kernel(bob)
    assert hub.held() == {}  # a shut-down kernel's container is gone at once

    hub.lab.make("down")
    hub.lab.destroy()
    engine = hub.engine.client
    assert engine.containers.list(all=True) == []
    assert engine.volumes.list() == []
    assert sorted(n.name for n in engine.networks.list()) == ["bridge", "host", "none"]
