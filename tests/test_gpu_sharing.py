"""GPU sharing through a real broker, on a Docker engine that accepts GPU requests.

No GPU here: `tests/fake_gpu/dockerd-fake-gpu.sh` starts a private engine whose `nvidia`
device driver is registered by a stand-in hook, exactly as the NVIDIA Container Toolkit's
makes it on a GPU host (see its header). Members' kernels go through a real root broker as
real test accounts, and every test reads the devices each container really got: the
DeviceIDs of its device request (`docker inspect`) and NVIDIA_VISIBLE_DEVICES in the
environment of its first process (what CUDA inside would see).
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import docker
import docker.errors
import pytest
from labnotebook.hub.gpu_pages import GpuPages
from labnotebook.provisioner import labels as L
from labnotebook.provisioner.broker_client import BrokerEngine
from labnotebook.provisioner.errors import GpuUnavailable, PermissionRefused

from .broker_fixtures import (
    Account,
    BrokerProcess,
    UserAgent,
    create_account,
    delete_account,
    kernel_spec,
)
from .conftest import SESSION
from .fake_gpu_engine import (  # noqa: F401 (the fixtures)
    BASE_IMAGE,
    GpuEngine,
    gpu_engine_fixture,
    gpu_engine_images_fixture,
)

pytestmark = pytest.mark.docker

NETWORK = f"lnbgpu-{SESSION[:6]}"
GPU_IDLE_TIMEOUT = 900  # GPU_KERNEL_IDLE_TIMEOUT, as startup.gpu_idle_timeout writes it


@dataclass
class GpuLab:
    broker: BrokerProcess
    engine: docker.DockerClient
    accounts: dict[str, Account]
    agents: dict[str, UserAgent]
    config: str

    def launch(self, who: str, gpus: int | str = 1, kernel_id: str | None = None) -> str:
        """`who`'s GPU kernel (a `sleep` in the base image); its container's ID."""
        request = kernel_spec(
            image=BASE_IMAGE,
            gpus="auto" if gpus == "auto" else {"count": -1 if gpus == "all" else gpus},
            kernel_id=kernel_id or str(uuid.uuid4()),
            kernel_name=f"{who}-train",
        )
        result = self.agents[who].call("launch_json", sock=self.broker.socket, spec=request)
        return str(result["container_id"])

    def remove(self, who: str, container_id: str, restarting: bool = False) -> None:
        args: list[Any] = [container_id, True] if restarting else [container_id]
        self.agents[who].call("engine", sock=self.broker.socket, method="remove", args=args)

    def devices(self, container_id: str) -> tuple[list[str], str]:
        """What the container got: its request's DeviceIDs, and NVIDIA_VISIBLE_DEVICES as
        its first process sees it."""
        container = self.engine.containers.get(container_id)
        requests = container.attrs["HostConfig"]["DeviceRequests"] or []
        ids = [i for r in requests for i in (r.get("DeviceIDs") or [])]
        # As the container's own user (the member's): root in it has no capabilities, so
        # another user's /proc/1/environ is closed to it.
        code, output = container.exec_run(["cat", "/proc/1/environ"])
        assert code == 0, output
        environ = output.decode()
        visible = dict(v.split("=", 1) for v in environ.split("\0") if "=" in v)
        return ids, visible.get("NVIDIA_VISIBLE_DEVICES", "")

    def gpus(self, who: str) -> dict[str, Any]:
        return self.agents[who].call(
            "cli", argv=["gpus", "--json", "--broker-socket", self.broker.socket]
        )

    def restart_broker(self) -> None:
        self.broker.stop()
        self.broker = BrokerProcess(self.config, folder=str(self.broker.folder)).start()

    def containers(self) -> list[Any]:
        return self.engine.containers.list(all=True, filters={"label": f"{L.ROLE}={L.KERNEL_ROLE}"})

    def clean(self) -> None:
        for container in self.containers():
            container.remove(force=True)


@pytest.fixture(scope="module")
def gpu_lab(gpu_engine: GpuEngine) -> Iterator[GpuLab]:
    tag = SESSION[:6]
    accounts: dict[str, Account] = {}
    agents: dict[str, UserAgent] = {}
    config = (
        f"c.KernelBroker.docker_host = {gpu_engine.host!r}\n"
        f"c.LaunchPolicy.network = {NETWORK!r}\n"
        f"c.LaunchPolicy.allowed_images = [{BASE_IMAGE!r}]\n"
        "c.KernelBroker.reap_interval = 0\n"
        "c.GpuPolicy.devices = ['0', '1']\n"
        # No NVML in this image (nor a GPU here): the inventory fails, and GPUS stands in.
        f"c.GpuPolicy.inventory_image = {BASE_IMAGE!r}\n"
        "c.GpuPolicy.member_gpus = 1\n"
        f"c.GpuPolicy.idle_timeout = {GPU_IDLE_TIMEOUT}\n"
    )
    broker = None
    # Its subnet from the engine's own pool, clear of the host engine's.
    network = gpu_engine.client.networks.create(NETWORK, driver="bridge")
    try:
        for who in ("alice", "bob", "carol"):
            accounts[who] = create_account(f"lnbtest{who[0]}g{tag}")
            agents[who] = UserAgent(
                accounts[who].uid, env={"LNBTEST_SCENARIOS": "tests.kernel_build_scenarios"}
            )
        broker = BrokerProcess(config).start()
        lab = GpuLab(broker, gpu_engine.client, accounts, agents, config)
        yield lab
        broker = lab.broker
        lab.clean()
    finally:
        for agent in agents.values():
            agent.close()
        if broker is not None:
            print(broker.log_text())
            broker.cleanup()
        for account in accounts.values():
            delete_account(account)
        network.remove()


@pytest.fixture
def lab(gpu_lab: GpuLab) -> Iterator[GpuLab]:
    """The module's lab with no kernels, before and after each test."""
    gpu_lab.clean()
    yield gpu_lab
    gpu_lab.clean()


def test_each_kernel_gets_its_own_gpu_and_the_next_is_refused_naming_the_holders(
    lab: GpuLab,
) -> None:
    alice = lab.launch("alice")
    bob = lab.launch("bob")
    (alice_ids, alice_visible), (bob_ids, bob_visible) = lab.devices(alice), lab.devices(bob)
    assert len(alice_ids) == len(bob_ids) == 1 and {*alice_ids, *bob_ids} == {"0", "1"}
    assert (alice_visible, bob_visible) == (alice_ids[0], bob_ids[0])

    started = time.monotonic()
    with pytest.raises(GpuUnavailable) as refused:
        lab.launch("carol")
    assert time.monotonic() - started < 10  # at once: never a hang, never a later CUDA OOM
    message = str(refused.value)
    assert "All 2 GPUs are in use" in message and "Try again later" in message
    assert lab.accounts["alice"].name in message and lab.accounts["bob"].name in message
    assert "alice-train" in message  # which kernel, so she can be asked to let go

    with pytest.raises(PermissionRefused) as capped:
        lab.launch("alice")
    assert "MEMBER_GPUS=1" in str(capped.value) and "alice-train" in str(capped.value)
    assert len(lab.containers()) == 2  # the refusals left nothing behind

    lab.remove("alice", alice)
    carol = lab.launch("carol")
    assert lab.devices(carol) == (alice_ids, alice_ids[0])


def test_a_members_view_shows_who_holds_which(lab: GpuLab) -> None:
    alice = lab.launch("alice")
    shown = lab.gpus("carol")
    assert shown["code"] == 0, shown
    rows = json.loads(shown["out"])
    [held] = [r for r in rows if r["holders"]]
    [ids] = [lab.devices(alice)[0]]
    assert held["device_id"] == ids[0]
    [holder] = held["holders"]
    assert holder["username"] == lab.accounts["alice"].name
    assert holder["kernel_name"] == "alice-train"
    assert holder["container_id"] == ""  # another member's container stays hers to name
    assert [r for r in rows if not r["holders"]]  # the other GPU is shown free
    text = lab.agents["carol"].call("cli", argv=["gpus", "--broker-socket", lab.broker.socket])[
        "out"
    ]
    assert f"{lab.accounts['alice'].name} (kernel 'alice-train'" in text and "free" in text


def test_a_gpu_is_free_the_moment_its_container_ends(lab: GpuLab) -> None:
    alice = lab.launch("alice")
    bob = lab.launch("bob")
    lab.engine.containers.get(alice).kill()  # died, OOM-killed, removed by the admin...
    carol = lab.launch("carol")
    assert (
        lab.devices(carol)[0]
        == lab.engine.containers.get(alice).attrs["HostConfig"]["DeviceRequests"][0]["DeviceIDs"]
    )
    assert lab.devices(carol)[0] != lab.devices(bob)[0]


def test_a_restarted_kernel_keeps_its_gpu(lab: GpuLab) -> None:
    kernel_id = str(uuid.uuid4())
    first = lab.launch("alice", kernel_id=kernel_id)
    ids, _ = lab.devices(first)
    lab.launch("bob")
    lab.remove("alice", first, restarting=True)
    with pytest.raises(GpuUnavailable):  # held for alice's restart, not free for carol
        lab.launch("carol")
    again = lab.launch("alice", kernel_id=kernel_id)
    assert lab.devices(again) == (ids, ids[0])


def test_a_kernel_restarted_after_a_broker_restart_keeps_its_gpu(lab: GpuLab) -> None:
    kernel_id = str(uuid.uuid4())
    first = lab.launch("alice", kernel_id=kernel_id)
    ids, _ = lab.devices(first)
    lab.launch("bob")
    lab.restart_broker()  # the new broker has not used its book yet
    lab.remove("alice", first, restarting=True)
    with pytest.raises(GpuUnavailable):
        lab.launch("carol")
    assert lab.devices(lab.launch("alice", kernel_id=kernel_id)) == (ids, ids[0])


def test_the_book_is_rebuilt_after_a_broker_restart(lab: GpuLab) -> None:
    alice = lab.launch("alice")
    bob = lab.launch("bob")
    held = {lab.devices(alice)[0][0], lab.devices(bob)[0][0]}
    lab.restart_broker()
    with pytest.raises(GpuUnavailable) as refused:  # no device handed out twice
        lab.launch("carol")
    assert lab.accounts["alice"].name in str(refused.value)
    rows = json.loads(lab.gpus("carol")["out"])
    assert {r["device_id"] for r in rows if r["holders"]} == held
    lab.remove("bob", bob)
    carol = lab.launch("carol")
    assert lab.devices(carol)[0] == [*held - {lab.devices(alice)[0][0]}]


def test_kernels_that_ask_for_no_gpu_get_none(lab: GpuLab) -> None:
    plain = lab.launch("alice", gpus="auto")  # the lab's Python kernelspec: none here
    assert lab.devices(plain) == ([], "")
    with pytest.raises(PermissionRefused, match="has not allowed"):
        lab.launch("bob", gpus="all")
    assert len(lab.containers()) == 1
    with contextlib.suppress(docker.errors.NotFound):
        lab.remove("alice", plain)


def test_an_admin_frees_a_gpu_and_its_member_is_told_why(lab: GpuLab) -> None:
    alice = lab.launch("alice")
    [device], _ = lab.devices(alice)
    refused = lab.agents["bob"].call(
        "cli", argv=["gpus", "--broker-socket", lab.broker.socket, "release", device]
    )
    assert refused["code"] == 1 and "Only the lab's admins" in refused["err"], refused
    assert lab.engine.containers.get(alice).status == "running"

    stopped = BrokerEngine(lab.broker.socket).gpu_release(device)  # root is the lab's admin
    assert [s["username"] for s in stopped] == [lab.accounts["alice"].name]
    state = lab.agents["alice"].call("engine", sock=lab.broker.socket, method="state", args=[alice])
    assert state["running"] is False and "stopped this kernel to free GPU" in state["error"]
    assert "AUDIT" in lab.broker.log_text() and "freed GPU" in lab.broker.log_text()
    carol = lab.launch("carol")  # the GPU is free at once
    assert lab.devices(carol)[0] == [device]


def test_where_nvml_cannot_be_read_the_setting_stands_in(lab: GpuLab) -> None:
    alice = lab.launch("alice")  # the book's first use: the inventory ran, and failed
    assert lab.devices(alice)[0] in (["0"], ["1"])
    assert "Cannot read the host's GPUs from NVML" in lab.broker.log_text()
    assert "The lab's GPUs: GPU 0, GPU 1" in lab.broker.log_text()
    leftovers = lab.engine.containers.list(all=True, filters={"label": f"{L.ROLE}=gpu-inventory"})
    assert leftovers == []


def test_the_hub_pages_say_who_holds_which(lab: GpuLab) -> None:
    lab.launch("alice")
    pages = GpuPages(lab.broker.socket, ttl=0)
    alice, bob = lab.accounts["alice"].name, lab.accounts["bob"].name
    mine = pages(SimpleNamespace(name=alice, admin=False))
    assert mine and mine.summary.startswith("GPUs: 1 of 2 free. Yours: GPU ")
    assert "(kernel 'alice-train')" in mine.summary and mine.rows == []  # the table: admins'
    theirs = pages(SimpleNamespace(name=bob, admin=False))
    assert theirs.summary.startswith("GPUs: 1 of 2 free.") and "Yours" not in theirs.summary
    admin = pages(SimpleNamespace(name="admin", admin=True))
    assert [r["holders"].startswith(f"{alice} (kernel 'alice-train', ") for r in admin.rows] in (
        [True, False],
        [False, True],
    )
    assert "free" in [r["holders"] for r in admin.rows]
    assert pages(None) is None  # the login page asks nothing


def test_gpu_kernels_are_told_their_shorter_idle_timeout(lab: GpuLab) -> None:
    """The broker tells a GPU kernel's provisioner its idle timeout at launch (which then
    lowers the kernel's cull_idle_timeout: test_hub_units); a kernel without GPUs hears none."""
    results = {}
    for who, gpus in (("alice", {"count": 1}), ("bob", "auto")):
        request = kernel_spec(image=BASE_IMAGE, gpus=gpus, kernel_name=f"{who}-idle")
        results[who] = lab.agents[who].call("launch_json", sock=lab.broker.socket, spec=request)
    assert lab.devices(results["alice"]["container_id"])[0]  # it holds a GPU
    assert results["alice"]["idle_timeout"] == GPU_IDLE_TIMEOUT
    assert lab.devices(results["bob"]["container_id"]) == ([], "")
    assert not results["bob"].get("idle_timeout")
