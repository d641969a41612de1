"""The broker's protocol and the `BrokerEngine` client against an in-process broker driving a
fake engine: no Docker, no root."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
from labnotebook.hub.broker import KernelBroker
from labnotebook.provisioner import labels as L
from labnotebook.provisioner.broker_client import BrokerEngine
from labnotebook.provisioner.broker_protocol import MAX_LINE
from labnotebook.provisioner.errors import (
    EngineUnreachable,
    KernelDiedDuringStart,
    PermissionRefused,
)
from labnotebook.provisioner.spec import ContainerState, KernelContainerSpec, LaunchedContainer
from traitlets.config import Config

from .broker_fixtures import (
    REPO,
    BrokerProcess,
    launch_request,
)

# == protocol and client against an in-process broker (no Docker) ===========================


class FakeEngine:
    """DockerEngine's interface over a dict, enough for the broker's own logic."""

    def __init__(self) -> None:
        self.containers: dict[str, dict[str, Any]] = {}
        self.signals: list[tuple[str, int]] = []

    def info(self) -> dict[str, Any]:
        return {}

    def where(self) -> str:
        return "fake://"

    def add(self, labels: dict[str, str], name: str = "", ip: str = "10.9.8.7") -> str:
        container_id = uuid.uuid4().hex * 2
        name = name or f"c-{container_id[:8]}"
        self.containers[container_id] = {"Id": container_id, "Names": [f"/{name}"],
                                         "Labels": labels, "running": True, "ip": ip}  # fmt: skip
        return container_id

    def launch_container(self, spec: KernelContainerSpec) -> LaunchedContainer:
        if spec.argv[0] == "die":
            raise KernelDiedDuringStart("The kernel died (exit code 3).", exit_code=3, logs="boom")
        time.sleep(float(spec.env.get("FAKE_DELAY", 0)))
        ip = spec.ip or "10.9.8.7"
        container_id = self.add(spec.labels, spec.name or "", ip)
        return LaunchedContainer(container_id, spec.name or "", ip, spec.ports)

    def free_address(self, network: str, avoid: set[str]) -> str | None:
        used = avoid | {c["ip"] for c in self.containers.values()}
        return next(f"10.9.8.{n}" for n in range(10, 250) if f"10.9.8.{n}" not in used)

    def container(self, ref: str) -> dict[str, Any] | None:
        try:
            found = self._find(ref)
        except docker.errors.NotFound:
            return None
        return {"id": found["Id"], "labels": found["Labels"],
                "addresses": {"labnotebook": found["ip"]}}  # fmt: skip

    def _find(self, ref: str) -> dict[str, Any]:
        for container in self.containers.values():
            if container["Id"].startswith(ref) or container["Names"][0] == f"/{ref}":
                return container
        raise docker.errors.NotFound(f"No such container: {ref}")

    def state(self, container_id: str) -> ContainerState | None:
        container = self.containers.get(container_id)
        if container is None:
            return None
        return ContainerState(container["running"], None if container["running"] else 0)

    def signal(self, container_id: str, signum: int) -> None:
        self.signals.append((container_id, signum))

    def remove(self, container_id: str) -> None:
        self.containers.pop(container_id, None)

    def logs(self, container_id: str, tail: int = 20) -> str:
        return f"last {tail} lines"

    def wait(self, container_id: str, timeout: float) -> int | None:
        return None

    def kernel_containers(self, owner_uid: int | None = None) -> list[dict[str, Any]]:
        return [
            {"Id": c["Id"], "Names": c["Names"], "Labels": c["Labels"]}
            for c in self.containers.values()
            if c["Labels"].get(L.ROLE) == L.KERNEL_ROLE
            and (owner_uid is None or c["Labels"].get(L.OWNER_UID) == str(owner_uid))
        ]


@dataclass
class InProcessBroker:
    broker: KernelBroker
    engine: FakeEngine
    socket: str
    stop: asyncio.Event
    task: asyncio.Task[None]


async def start_in_process(
    folder: Path, policy: dict[str, Any] | None = None, **settings: Any
) -> InProcessBroker:
    """The real broker in this process, over a FakeEngine; `settings` are KernelBroker's,
    `policy` adds to LaunchPolicy's."""
    folder.mkdir(mode=0o755, exist_ok=True)
    path = str(folder / "broker.sock")
    engine = FakeEngine()
    config = Config(
        {
            "KernelBroker": {"socket_path": path, "reap_interval": 0, **settings},
            # The test process is the peer: as root it must be allowed, as a user it is.
            "LaunchPolicy": {"allow_root": True, **(policy or {})},
        }
    )
    broker = KernelBroker(engine=engine, config=config)
    broker.initialize([])
    stop = asyncio.Event()
    task = asyncio.create_task(broker.serve(stop))
    for _ in range(200):
        if os.path.exists(path):
            break
        await asyncio.sleep(0.01)
    return InProcessBroker(broker, engine, path, stop, task)


@pytest.fixture
async def fake_broker(tmp_path: Path) -> AsyncIterator[InProcessBroker]:
    running = await start_in_process(tmp_path / "broker")
    yield running
    running.stop.set()
    await running.task


def raw_exchange(path: str, *lines: bytes) -> list[dict[str, Any] | None]:
    with contextlib.closing(socket.socket(socket.AF_UNIX)) as s:
        s.settimeout(10)
        s.connect(path)
        reader = s.makefile("rb")
        answers = []
        for line in lines:
            try:
                s.sendall(line + b"\n")
                answer = reader.readline()
            except OSError:
                answer = b""
            answers.append(json.loads(answer) if answer else None)
        return answers


async def test_client_speaks_for_this_process_and_maps_errors(fake_broker: InProcessBroker) -> None:
    client = BrokerEngine(fake_broker.socket, broker_uid=os.geteuid())
    hello = await asyncio.to_thread(client.hello)
    assert hello["peer"]["uid"] == os.getuid() and hello["peer"]["pid"] == os.getpid()

    spec = launch_request()
    launched = await asyncio.to_thread(client.launch, spec)
    # The broker gives the kernel its address itself (see hub/addresses.py).
    assert isinstance(launched, LaunchedContainer) and launched.ip.startswith("10.9.8.")
    assert launched.ports == spec.ports
    state = await asyncio.to_thread(client.state, launched.container_id)
    assert state == ContainerState(True, None)
    assert await asyncio.to_thread(client.logs, launched.container_id, 5) == "last 5 lines"
    assert await asyncio.to_thread(client.wait, launched.container_id, 0.1) is None
    await asyncio.to_thread(client.signal, launched.container_id, signal.SIGINT)
    assert fake_broker.engine.signals == [(launched.container_id, signal.SIGINT)]
    with pytest.raises(PermissionRefused, match=r"Signal 19 cannot be sent .*SIGINT"):
        await asyncio.to_thread(client.signal, launched.container_id, signal.SIGSTOP)
    listed = await asyncio.to_thread(client.kernel_containers)
    assert [c["Id"] for c in listed] == [launched.container_id]
    await asyncio.to_thread(client.remove, launched.container_id)
    assert await asyncio.to_thread(client.state, launched.container_id) is None
    assert await asyncio.to_thread(client.logs, "gone-container") == ""

    died = launch_request(argv=["die"])
    with pytest.raises(KernelDiedDuringStart, match="exit code 3") as caught:
        await asyncio.to_thread(client.launch, died)
    assert (caught.value.exit_code, caught.value.logs) == (3, "boom")
    with pytest.raises(PermissionRefused, match="not one of this lab's kernel images"):
        await asyncio.to_thread(client.launch, launch_request(image="alpine"))
    # Sequential calls, failures included, went over one reused connection.
    assert len(client._idle) == 1


async def test_foreign_and_non_kernel_containers_are_refused(
    fake_broker: InProcessBroker,
) -> None:
    engine = fake_broker.engine
    me = os.getuid()
    others = engine.add({L.ROLE: L.KERNEL_ROLE, L.OWNER_UID: str(me + 1)}, name="others")
    plain = engine.add({L.OWNER_UID: str(me)}, name="not-a-kernel")
    client = BrokerEngine(fake_broker.socket, broker_uid=None)
    targets = [plain] if me == 0 else [others, "others", plain]  # root may manage all kernels
    for target in targets:
        for method, args in [("state", ()), ("signal", (9,)), ("remove", ()), ("logs", ()),
                             ("wait", (1,))]:  # fmt: skip
            with pytest.raises(PermissionRefused, match="not one of your kernels"):
                await asyncio.to_thread(getattr(client, method), target, *args)
    assert others in engine.containers and plain in engine.containers
    assert engine.signals == []


async def test_concurrent_calls_from_threads(fake_broker: InProcessBroker) -> None:
    client = BrokerEngine(fake_broker.socket, broker_uid=None)
    specs = [launch_request(env={"FAKE_DELAY": "0.3"}) for _ in range(10)]
    started = time.perf_counter()
    launched = await asyncio.gather(*(asyncio.to_thread(client.launch, s) for s in specs))
    elapsed = time.perf_counter() - started
    assert len({c.container_id for c in launched}) == 10
    assert elapsed < 1.5, f"10 launches of 0.3 s took {elapsed:.2f} s: they were serialised"
    assert len(client._idle) <= client.max_idle


async def test_kernels_per_user_are_capped(tmp_path: Path) -> None:
    running = await start_in_process(tmp_path / "b", max_kernels_per_user=3)
    client = BrokerEngine(running.socket, broker_uid=None)
    try:
        specs = [launch_request(env={"FAKE_DELAY": "0.2"})
                 for _ in range(5)]  # fmt: skip
        outcomes = await asyncio.gather(
            *(asyncio.to_thread(client.launch, s) for s in specs), return_exceptions=True
        )
        refused = [o for o in outcomes if isinstance(o, PermissionRefused)]
        assert len(running.engine.containers) == 3 and len(refused) == 2, outcomes
        assert "the most this lab allows per member is 3" in str(refused[0])
        await asyncio.to_thread(client.remove, next(iter(running.engine.containers)))
        await asyncio.to_thread(client.launch, specs[0])
    finally:
        running.stop.set()
        await running.task


async def test_protocol_errors_are_clear(fake_broker: InProcessBroker) -> None:
    answers = await asyncio.to_thread(
        raw_exchange,
        fake_broker.socket,
        b"this is not json",
        b"[1, 2]",
        b'{"op": "format_disk"}',
        b'{"op": "launch"}',
        b'{"op": "launch", "spec": "x"}',
        b'{"op": "state"}',
        b'{"op": "signal", "container": "abc", "signal": "9"}',
        b'{"op": "state", "container": "../../x"}',
        b'{"op": "list", "uid": 0}',
        b'{"op": "hello", "peer": {"uid": 0}}',
        b"[" * 100_000,
        b'{"op": "hello"}',
    )
    expected = [
        "must be one JSON object",
        "must be a JSON object",
        "has no operation 'format_disk'",
        "needs 'spec'",
        "has the wrong type",
        "needs 'container'",
        "'signal' has the wrong type",
        "is not a container ID or name",
        "takes no 'uid'. (Who is asking is never part of a request",
        "takes no 'peer'",
        "must be one JSON object",
    ]
    for answer, message in zip(answers, expected, strict=False):
        assert answer is not None and answer["ok"] is False, answer
        assert answer["error"] == "KernelConfigError" and message in answer["message"], answer
    assert answers[-1] is not None and answers[-1]["ok"] is True  # the connection survived
    long = await asyncio.to_thread(
        raw_exchange, fake_broker.socket, b'{"op": "hello", "x": "' + b"a" * MAX_LINE + b'"}'
    )
    assert long[0] is not None and "must be one line under" in long[0]["message"]
    assert fake_broker.engine.containers == {}


async def test_unreachable_broker_says_what_to_do(tmp_path: Path) -> None:
    missing = BrokerEngine(str(tmp_path / "nothing.sock"))
    with pytest.raises(EngineUnreachable, match="does not exist, so the broker is not running"):
        await asyncio.to_thread(missing.state, "abc")
    stale = tmp_path / "stale.sock"
    with contextlib.closing(socket.socket(socket.AF_UNIX)) as s:
        s.bind(str(stale))  # a socket file with nobody listening
    with pytest.raises(EngineUnreachable, match="nothing accepts connections there"):
        await asyncio.to_thread(BrokerEngine(str(stale)).state, "abc")

    running = await start_in_process(tmp_path / "b")
    try:
        impostor = BrokerEngine(running.socket, broker_uid=os.geteuid() + 4321)
        with pytest.raises(EngineUnreachable, match="refusing to send it the kernel's secrets"):
            await asyncio.to_thread(impostor.hello)
        client = BrokerEngine(running.socket, broker_uid=os.geteuid())
        await asyncio.to_thread(client.hello)
    finally:
        running.stop.set()
        await running.task
    # The broker stopped: the idle connection is noticed dead, and the error is helpful.
    with pytest.raises(EngineUnreachable, match="Kernels in this lab start through the broker"):
        await asyncio.to_thread(client.hello)
    # A new broker on the same socket: the same client object just works again.
    running = await start_in_process(tmp_path / "b")
    try:
        assert (await asyncio.to_thread(client.hello))["peer"]["pid"] == os.getpid()
    finally:
        running.stop.set()
        await running.task


async def test_periodic_reaper_removes_kernels_of_gone_servers(tmp_path: Path) -> None:
    running = await start_in_process(tmp_path / "b", reap_interval=0.05)
    engine = running.engine
    try:
        gone = engine.add({L.ROLE: L.KERNEL_ROLE, L.SERVER: f"{socket.gethostname()}/1/999999"})
        alive = engine.add({L.ROLE: L.KERNEL_ROLE, L.SERVER: L.server_identity()})
        elsewhere = engine.add({L.ROLE: L.KERNEL_ROLE, L.SERVER: "other-host/1/2"})
        for _ in range(100):
            if gone not in engine.containers:
                break
            await asyncio.sleep(0.02)
        assert gone not in engine.containers
        assert alive in engine.containers and elsewhere in engine.containers
    finally:
        running.stop.set()
        await running.task


def run_broker_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "labnotebook.hub.broker", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def test_broker_refuses_a_socket_folder_others_can_write(tmp_path: Path) -> None:
    folder = tmp_path / "open"
    folder.mkdir()
    folder.chmod(0o1777)
    result = run_broker_command("--socket", str(folder / "broker.sock"))
    assert result.returncode == 1
    assert "no one else can write to" in result.stderr
    assert not (folder / "broker.sock").exists()


def test_only_one_broker_per_socket(tmp_path: Path) -> None:
    with BrokerProcess("", folder=str(tmp_path / "b")) as broker:
        result = run_broker_command("--socket", broker.socket)
        assert result.returncode == 1 and "already serving" in result.stderr
        assert BrokerEngine(broker.socket, broker_uid=os.geteuid()).hello()["broker"]
    result = run_broker_command("--socket", "/tmp/x.sock", "--config", str(tmp_path / "none.py"))
    assert result.returncode == 2 and "does not exist" in result.stderr
