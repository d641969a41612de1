"""The kernel broker: users get kernels through it, never through the Docker socket.

Three layers:
- the launch policy alone (`LaunchPolicy.admit`), a pure function: no Docker, no root;
- the broker's protocol and the `BrokerEngine` client against an in-process broker driving a
  fake engine: no Docker, no root;
- the real thing (marked `docker`, needs root): the broker as root in a subprocess on a
  private socket, and throwaway accounts (`lnbtest*`) whose processes call it - the
  provisioner starting a real kernel included - proving what a user can and cannot get.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import grp
import inspect
import json
import os
import pwd
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
from labnotebook.hub.broker import KernelBroker
from labnotebook.hub.broker_policy import REVIEWED_FIELDS, LaunchPolicy, Peer
from labnotebook.provisioner import labels as L
from labnotebook.provisioner.broker_client import BrokerEngine
from labnotebook.provisioner.broker_protocol import MAX_LINE
from labnotebook.provisioner.engine import DockerEngine
from labnotebook.provisioner.errors import (
    EngineUnreachable,
    KernelConfigError,
    KernelDiedDuringStart,
    KernelLaunchError,
    PermissionRefused,
)
from labnotebook.provisioner.gpus import GpuRequest
from labnotebook.provisioner.identity import KernelIdentity
from labnotebook.provisioner.mounts import Mount
from labnotebook.provisioner.spec import ContainerState, KernelContainerSpec, LaunchedContainer
from traitlets.config import Config

from .bench_broker import measure
from .broker_fixtures import (
    REPO,
    Account,
    BrokerProcess,
    UserAgent,
    create_account,
    delete_account,
    kernel_spec,
)
from .conftest import KERNEL_IMAGE, REQUIRE_DOCKER, SESSION, SESSION_LABEL, TEST_NETWORK

try:
    NOBODY = pwd.getpwnam("nobody")
except KeyError:  # pragma: no cover - every Debian/Ubuntu/Alpine has it
    NOBODY = None
needs_nobody = pytest.mark.skipif(NOBODY is None, reason="no 'nobody' account on this machine")


def user_peer() -> Peer:
    assert NOBODY is not None
    return Peer(os.getpid(), NOBODY.pw_uid, NOBODY.pw_gid)


def make_policy(**settings: Any) -> LaunchPolicy:
    return LaunchPolicy(config=Config({"LaunchPolicy": settings}))


# == the launch policy ========================================================================


def test_every_spec_field_is_reviewed() -> None:
    """A new KernelContainerSpec field must be reviewed in broker_policy before users get it."""
    assert {f.name for f in fields(KernelContainerSpec)} == REVIEWED_FIELDS


def test_docker_engine_never_asks_for_privileges() -> None:
    """What DockerEngine sends to Docker: no privileges, namespaces, capabilities or devices."""
    sent: dict[str, Any] = {}

    class Api:
        def create_host_config(self, **kwargs: Any) -> dict[str, Any]:
            sent["host_config_kwargs"] = kwargs
            return dict(docker.types.HostConfig(version="1.41", **kwargs))

        def create_container(self, image: str, **kwargs: Any) -> dict[str, str]:
            sent["container_kwargs"] = kwargs
            return {"Id": "c0ffee"}

    engine = DockerEngine()
    engine._api = Api()  # type: ignore[assignment]
    spec = dataclasses.replace(
        KernelContainerSpec.from_json(kernel_spec()),
        identity=KernelIdentity("u", 1000, 1000, "/home/u", (1000, 1001), {1000: "u", 1001: "x"}),
        mounts=[Mount("homes", "/home")],
        allow_root=False,
    )
    engine._create(spec, GpuRequest(count=-1))
    host = sent["host_config_kwargs"]
    assert set(host) <= {
        "mounts", "network_mode", "init", "mem_limit", "nano_cpus", "shm_size", "pids_limit",
        "group_add", "device_requests", "port_bindings", "security_opt", "cap_drop",
    }  # fmt: skip
    assert host["security_opt"] == ["no-new-privileges:true"]
    assert host["cap_drop"] == ["ALL"] and host["group_add"] == ["1001"]
    assert [r["Capabilities"] for r in host["device_requests"]] == [[["gpu"]]]
    assert not {"privileged", "cap_add", "devices", "pid_mode", "ipc_mode", "userns_mode"} & set(
        sent["container_kwargs"]
    )
    # And the engine's source has no way to ask for them at all.
    source = inspect.getsource(DockerEngine)
    for word in ("privileged", "cap_add", "devices=", "pid_mode", "userns_mode", "ipc_mode"):
        assert word not in source


@needs_nobody
def test_identity_name_labels_and_network_come_from_the_broker() -> None:
    request = kernel_spec(network="host", labels={"team": "ml", "traefik.enable": "true"})
    request["env"] = {"HOME": "/root", "USER": "root", "MPLBACKEND": "agg"}
    spec = make_policy(network="labnet", allowed_labels=["team"]).admit(user_peer(), request)
    assert NOBODY is not None
    assert (spec.identity.uid, spec.identity.gid) == (NOBODY.pw_uid, NOBODY.pw_gid)
    assert spec.identity.username == "nobody" and spec.allow_root is False
    assert spec.network == "labnet"
    assert spec.name == f"labnotebook-nobody-{request['kernel_id']}"
    assert spec.labels[L.OWNER_UID] == str(NOBODY.pw_uid)
    assert spec.labels[L.OWNER] == "nobody"
    assert spec.labels[L.ROLE] == L.KERNEL_ROLE
    assert spec.labels[L.SERVER] == L.server_identity(os.getpid())
    assert spec.labels["team"] == "ml"
    assert "traefik.enable" not in spec.labels  # could make a reverse proxy route to it
    assert spec.env["HOME"] == NOBODY.pw_dir and spec.env["USER"] == "nobody"
    assert spec.env["MPLBACKEND"] == "agg"
    assert spec.pids_limit == 4096  # the default cap applies when nothing was asked


def test_root_and_system_accounts_are_refused() -> None:
    daemon = pwd.getpwnam("daemon")
    with pytest.raises(PermissionRefused, match=r"UID \d+ \(daemon\) is a system account"):
        make_policy().admit(Peer(1, daemon.pw_uid, daemon.pw_gid), kernel_spec())
    assert make_policy(min_uid=1).admit(Peer(1, daemon.pw_uid, 1), kernel_spec()).identity.uid
    root = Peer(os.getpid(), 0, 0)
    with pytest.raises(PermissionRefused, match="does not start kernels for root"):
        make_policy().admit(root, kernel_spec())
    spec = make_policy(allow_root=True).admit(root, kernel_spec())
    assert spec.identity.uid == 0 and spec.allow_root is True


@needs_nobody
def test_mounts_are_the_labs_plus_the_allowed_ones_only() -> None:
    policy = make_policy(
        lab_mounts=["homes:/home"],
        allowed_mounts=["datasets:/data:ro", "/srv/scratch/{username}:/scratch", "shared:/shared"],
    )

    def mounts(*requested: dict[str, Any]) -> list[tuple[str, str, bool]]:
        spec = policy.admit(user_peer(), kernel_spec(mounts=list(requested)))
        return [(m.source, m.target, m.read_only) for m in spec.mounts]

    assert mounts() == [("homes", "/home", False)]
    assert mounts({"source": "homes", "target": "/home", "read_only": True}) == [
        ("homes", "/home", True)
    ]
    assert mounts(
        {"source": "datasets", "target": "/data", "read_only": True},
        {"source": "/srv/scratch/nobody", "target": "/scratch/", "read_only": False},
        {"source": "shared", "target": "/shared", "read_only": True},  # stricter: fine
    ) == [
        ("homes", "/home", False),
        ("datasets", "/data", True),
        ("/srv/scratch/nobody", "/scratch", False),
        ("shared", "/shared", True),
    ]
    refused = [
        ({"source": "datasets", "target": "/data"}, "may only be mounted read-only"),
        ({"source": "/", "target": "/host", "read_only": True}, "may not mount '/'"),
        ({"source": "/var/run/docker.sock", "target": "/d.sock"}, "may not mount"),
        ({"source": "/srv/scratch/root", "target": "/scratch"}, "may not mount"),
        ({"source": "/srv/scratch/nobody/../root", "target": "/scratch"}, "may not mount"),
        ({"source": "other", "target": "/data", "read_only": True}, "may not mount 'other'"),
        ({"source": "datasets", "target": "/elsewhere", "read_only": True}, "may not mount"),
        ({"source": "other", "target": "/home"}, "already mounts something there"),
        ({"source": "shared", "target": "/shared", "propagation": "shared"}, "and nothing else"),
    ]
    for mount, message in refused:
        with pytest.raises(PermissionRefused, match=re.escape(message)):
            mounts(mount)


def test_working_dir_inside_a_mount_is_entered_by_the_kernel_as_the_user() -> None:
    root_policy = make_policy(lab_mounts=["homes:/home"], allow_root=True)
    for requested, docker_dir, entered in [
        (None, "/root", None),  # never the image's WORKDIR: a member's image may set anything
        ("/root", "/root", None),  # the home itself
        ("/opt/work", "/root", "/opt/work"),  # even the container's own files: as the user
        ("/home/bob/x", "/root", "/home/bob/x"),
        ("/proc/self/root/home/bob/x", "/root", "/proc/self/root/home/bob/x"),
        ("/proc/thread-self/cwd/x", "/root", "/proc/thread-self/cwd/x"),
        ("/dev/fd/3/x", "/root", "/dev/fd/3/x"),
        ("/dev/stdin/x", "/root", "/dev/stdin/x"),
        ("//home/bob/x", "/root", "/home/bob/x"),
        ("/home/../home/bob", "/root", "/home/bob"),
    ]:
        request = kernel_spec(working_dir=requested)
        if requested is None:
            del request["working_dir"]
        spec = root_policy.admit(Peer(1, 0, 0), request)
        assert spec.working_dir == docker_dir, requested
        if entered is None:
            assert spec.argv == ["sleep", "infinity"]
        else:
            assert spec.argv == [*root_policy.cwd_shim, entered, "sleep", "infinity"]
    shim = subprocess.run(
        [*root_policy.cwd_shim, "/nonexistent-dir", "sh", "-c", "pwd"],
        capture_output=True, text=True, cwd="/", check=True,
    )  # fmt: skip
    assert shim.stdout.strip() == "/" and "cannot enter /nonexistent-dir" in shim.stderr
    shim = subprocess.run([*root_policy.cwd_shim, "/tmp", "pwd"], capture_output=True, text=True)
    assert shim.stdout.strip() == "/tmp"


@pytest.mark.parametrize(
    "field",
    ["privileged", "cap_add", "devices", "pid_mode", "ipc_mode", "network_mode",
     "security_opt", "userns_mode", "volumes_from", "binds", "runtime", "sysctls"],
)  # fmt: skip
def test_fields_the_spec_does_not_have_are_refused(field: str) -> None:
    with pytest.raises(PermissionRefused, match=f"does not accept '{field}'"):
        make_policy(allow_root=True).admit(Peer(1, 0, 0), kernel_spec(**{field: True}))


@needs_nobody
def test_images_pull_policies_and_ports() -> None:
    policy = make_policy(allowed_images=["labnotebook/*", "ghcr.io/ourlab/*:2024*"])
    for image in ("labnotebook/kernel-python:latest", "ghcr.io/ourlab/r:2024.1"):
        assert policy.admit(user_peer(), kernel_spec(image=image)).image == image
    for image in ("debian:bookworm", "labnotebook-evil/x", "evil.io/labnotebook/x", "sha256:1f"):
        with pytest.raises(PermissionRefused, match="not one of this lab's kernel images"):
            policy.admit(user_peer(), kernel_spec(image=image))
    for pull in ("always", "if-not-present"):
        with pytest.raises(PermissionRefused, match=f"pull policy '{pull}' is not allowed"):
            policy.admit(user_peer(), kernel_spec(pull_policy=pull))
    opened = make_policy(allowed_pull_policies=["never", "if-not-present"])
    assert opened.admit(user_peer(), kernel_spec(pull_policy="if-not-present")).pull_policy
    with pytest.raises(PermissionRefused, match="never on ports published on the host"):
        policy.admit(user_peer(), kernel_spec(publish_ports=True))


@needs_nobody
def test_limits_are_capped_refused_or_clamped() -> None:
    caps = {"max_memory": "2g", "max_cpus": 1.5, "max_shm_size": "1g", "max_pids": 512}
    refuse, clamp = make_policy(**caps), make_policy(over_limit="clamp", **caps)
    spec = refuse.admit(user_peer(), kernel_spec(pids_limit=-1))
    assert (spec.memory, spec.nano_cpus, spec.shm_size, spec.pids_limit) == (
        2 << 30,
        1_500_000_000,
        1 << 30,
        512,
    )
    asked = {"memory": 1 << 30, "nano_cpus": 500_000_000, "shm_size": 64 << 20, "pids_limit": 64}
    spec = refuse.admit(user_peer(), kernel_spec(**asked))
    assert (spec.memory, spec.nano_cpus, spec.shm_size, spec.pids_limit) == tuple(asked.values())
    too_much = [
        ({"memory": 64 << 30}, "asks for 64g of memory, but this lab allows at most 2g"),
        ({"nano_cpus": 4_000_000_000}, "asks for 4 CPUs, but this lab allows at most 1.5 CPUs"),
        ({"shm_size": 8 << 30}, "8g of /dev/shm"),
        ({"pids_limit": 100_000}, "at most 512 processes"),
    ]
    for request, message in too_much:
        with pytest.raises(PermissionRefused, match=re.escape(message)):
            refuse.admit(user_peer(), kernel_spec(**request))
        spec = clamp.admit(user_peer(), kernel_spec(**request))
        assert (spec.memory, spec.nano_cpus, spec.shm_size, spec.pids_limit) == (
            2 << 30,
            1_500_000_000,
            1 << 30,
            512,
        )


@needs_nobody
def test_gpus_are_the_only_devices_and_can_be_switched_off() -> None:
    spec = make_policy().admit(user_peer(), kernel_spec(gpus={"count": 0, "device_ids": ["0"]}))
    assert spec.gpus == GpuRequest(device_ids=("0",))
    assert make_policy().admit(user_peer(), kernel_spec()).gpus == "auto"
    off = make_policy(allow_gpus=False)
    assert off.admit(user_peer(), kernel_spec()).gpus == GpuRequest()
    with pytest.raises(PermissionRefused, match="does not give kernels GPUs"):
        off.admit(user_peer(), kernel_spec(gpus={"count": -1, "device_ids": []}))
    with pytest.raises(KernelConfigError, match="Invalid GPU device IDs"):
        make_policy().admit(user_peer(), kernel_spec(gpus={"device_ids": ["0,1;rm"]}))


@needs_nobody
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"argv": []}, "'argv' must be a non-empty list"),
        ({"argv": "python3 -m ipykernel"}, "'argv' must be a non-empty list"),
        ({"kernel_id": "../../etc"}, "kernel_id"),
        ({"kernel_id": None}, "lacks kernel_id"),
        ({"connection": {"key": "k"}}, "shell_port must be a port number"),
        ({"env": {"A=B": "c"}}, "Invalid environment variable name"),
        ({"env": {"A": 1}}, "must be text"),
        ({"memory": "8g"}, "'memory' must be a whole number"),
        ({"memory": True}, "'memory' must be a whole number"),
        ({"mounts": "homes:/home"}, "'mounts' must be a list"),
        ({"labels": {"a": 1}}, "'labels' must be an object of text"),
        ({"working_dir": "relative"}, "absolute path"),
        ({"init": "yes"}, "'init' must be true or false"),
        ({"gpus": "all"}, "Invalid gpus request"),
    ],
)
def test_malformed_specs_get_clear_errors(change: dict[str, Any], message: str) -> None:
    with pytest.raises(KernelConfigError, match=re.escape(message)):
        make_policy().admit(user_peer(), kernel_spec(**change))


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

    def launch(self, spec: KernelContainerSpec) -> LaunchedContainer:
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


async def start_in_process(folder: Path, **settings: Any) -> InProcessBroker:
    folder.mkdir(mode=0o755, exist_ok=True)
    path = str(folder / "broker.sock")
    engine = FakeEngine()
    config = Config(
        {
            "KernelBroker": {"socket_path": path, "reap_interval": 0, **settings},
            # The test process is the peer: as root it must be allowed, as a user it is.
            "LaunchPolicy": {"allow_root": True},
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

    spec = KernelContainerSpec.from_json(kernel_spec())
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

    died = KernelContainerSpec.from_json(kernel_spec(argv=["die"]))
    with pytest.raises(KernelDiedDuringStart, match="exit code 3") as caught:
        await asyncio.to_thread(client.launch, died)
    assert (caught.value.exit_code, caught.value.logs) == (3, "boom")
    with pytest.raises(PermissionRefused, match="not one of this lab's kernel images"):
        await asyncio.to_thread(
            client.launch, KernelContainerSpec.from_json(kernel_spec(image="alpine"))
        )
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
    specs = [
        KernelContainerSpec.from_json(kernel_spec(env={"FAKE_DELAY": "0.3"})) for _ in range(10)
    ]
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
        specs = [KernelContainerSpec.from_json(kernel_spec(env={"FAKE_DELAY": "0.2"}))
                 for _ in range(5)]  # fmt: skip
        outcomes = await asyncio.gather(
            *(asyncio.to_thread(client.launch, s) for s in specs), return_exceptions=True
        )
        refused = [o for o in outcomes if isinstance(o, PermissionRefused)]
        assert len(running.engine.containers) == 3 and len(refused) == 2, outcomes
        assert "the most this lab allows per user is 3" in str(refused[0])
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


# == the real thing: root broker, real users, real containers ================================


@dataclass
class Lab:
    broker: BrokerProcess
    alice: Account
    bob: Account
    group_gid: int
    homes: str
    shared: str
    reference: str
    other: str
    agents: dict[str, UserAgent]

    def kernelspec(self, account: Account, config: dict[str, Any]) -> tuple[list[str], str]:
        """Write a Docker kernelspec the account can read; returns (kernel_dirs, name)."""
        name = f"broker-{uuid.uuid4().hex[:8]}"
        folder = account.scratch / "kernels" / name
        folder.mkdir(parents=True)
        spec = {
            "argv": ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python (broker)",
            "language": "python",
            "metadata": {
                "kernel_provisioner": {"provisioner_name": "labnotebook-docker", "config": config}
            },
        }
        (folder / "kernel.json").write_text(json.dumps(spec))
        for path in (account.scratch / "kernels", folder, folder / "kernel.json"):
            os.chown(path, account.uid, account.gid)
        return [str(account.scratch / "kernels")], name


def needs_root() -> None:
    if os.geteuid() != 0:
        reason = "the broker tests run the broker as root and switch to test accounts"
        if REQUIRE_DOCKER:
            pytest.fail(f"LABNOTEBOOK_REQUIRE_DOCKER=1 but not root: {reason}", pytrace=False)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def lab(docker_client: docker.DockerClient) -> Iterator[Lab]:
    needs_root()
    tag = SESSION[:6]
    made_volumes = []
    accounts: list[Account] = []
    broker = agents = None
    group = f"lnbtestg{tag}"
    try:
        for role in ("homes", "shared", "reference", "other"):
            volume = docker_client.volumes.create(
                f"lnbtest-{role}-{SESSION}", labels={SESSION_LABEL: SESSION}
            )
            made_volumes.append(volume)
        subprocess.run(["groupadd", group], check=True, capture_output=True)
        alice = create_account(f"lnbtesta{tag}", groups=[group])
        accounts.append(alice)
        bob = create_account(f"lnbtestb{tag}")
        accounts.append(bob)
        homes, shared, reference, other = (v.name for v in made_volumes)
        # The lab's home volume holds the users' homes, as in the hub.
        docker_client.containers.run(
            KERNEL_IMAGE,
            ["sh", "-c", " && ".join(
                [f"mkdir -p /home/{a.name} && chmod 700 /home/{a.name}" for a in (alice, bob)]
                + [f"mkdir /home/{alice.name}/project",
                   f"ln -s /home/{bob.name} /home/{alice.name}/to-bob"]
                + [f"chown -hR {a.uid}:{a.gid} /home/{a.name}" for a in (alice, bob)]
            )],
            user="0:0",
            volumes={homes: {"bind": "/home", "mode": "rw"}},
            network_mode="none",
            labels={SESSION_LABEL: SESSION},
            remove=True,
        )  # fmt: skip
        broker = BrokerProcess(
            f"c.LaunchPolicy.network = {TEST_NETWORK!r}\n"
            f"c.LaunchPolicy.lab_mounts = ['{homes}:/home']\n"
            f"c.LaunchPolicy.allowed_mounts = ['{shared}:/shared', '{reference}:/reference:ro']\n"
            f"c.LaunchPolicy.allowed_labels = ['{SESSION_LABEL}']\n"
            "c.LaunchPolicy.max_memory = '2g'\n"
            "c.LaunchPolicy.max_cpus = 1.5\n"
            "c.KernelBroker.reap_interval = 0\n"
        ).start()
        agents = {
            "alice": UserAgent(alice.uid, env={"LNBTEST_SCRATCH": str(alice.scratch)}),
            "bob": UserAgent(bob.uid, env={"LNBTEST_SCRATCH": str(bob.scratch)}),
        }
        yield Lab(
            broker, alice, bob, grp.getgrnam(group).gr_gid, homes, shared, reference, other, agents
        )
    finally:
        for agent in (agents or {}).values():
            agent.close()
        if broker is not None:
            print(broker.log_text())
            broker.cleanup()
        for account in accounts:
            for container in docker_client.containers.list(
                all=True, filters={"label": f"{L.OWNER_UID}={account.uid}"}
            ):
                container.remove(force=True)
            delete_account(account)
        subprocess.run(["groupdel", group], check=False, capture_output=True)
        for volume in made_volumes:
            volume.remove(force=True)


def no_container_for(client: docker.DockerClient, kernel_id: str) -> bool:
    return not client.containers.list(all=True, filters={"label": f"{L.KERNEL_ID}={kernel_id}"})


@pytest.mark.docker
def test_user_runs_a_kernel_through_the_broker_as_themselves(
    lab: Lab, docker_client: docker.DockerClient
) -> None:
    kernel_dirs, name = lab.kernelspec(
        lab.alice,
        {
            "image": KERNEL_IMAGE,
            "broker_socket": lab.broker.socket,
            "network": "host",  # the broker forces the lab's network
            "volumes": [f"{lab.homes}:/home"],  # the lab mounts it anyway: merged
            "labels": {SESSION_LABEL: SESSION},
        },
    )
    code = (
        "import os, pwd, json\n"
        "home = os.path.expanduser('~')\n"
        "open(os.path.join(home, 'proof.txt'), 'w').write('mine')\n"
        "print(json.dumps({'uid': os.getuid(), 'gid': os.getgid(), 'groups': os.getgroups(),\n"
        "    'user': pwd.getpwuid(os.getuid()).pw_name, 'home': home, 'cwd': os.getcwd(),\n"
        "    'proof_owner': os.stat(os.path.join(home, 'proof.txt')).st_uid}))\n"
    )
    project = f"/home/{lab.alice.name}/project"  # the notebook's folder, in the homes volume
    result = lab.agents["alice"].call(
        "run_kernel", kernel_dirs=kernel_dirs, kernel_name=name, code=code, cwd=project
    )
    assert result["engine"] == "BrokerEngine" and result["status"] == "ok", result
    seen = json.loads(result["stdout"])
    alice = lab.alice
    assert (seen["uid"], seen["gid"], seen["user"]) == (alice.uid, alice.gid, alice.name)
    assert lab.group_gid in seen["groups"] and 0 not in seen["groups"]
    assert seen["home"] == f"/home/{alice.name}" and seen["cwd"] == project
    assert seen["proof_owner"] == alice.uid
    assert result["container"].startswith(f"labnotebook-{alice.name}-")
    with pytest.raises(docker.errors.NotFound):  # shut down and removed
        docker_client.containers.get(result["container"])


@pytest.mark.docker
def test_test_accounts_really_cannot_use_docker(lab: Lab) -> None:
    alice = lab.agents["alice"]
    assert alice.call("whoami")["uid"] == lab.alice.uid
    assert alice.call("open_docker_socket") == "PermissionError"
    hello = alice.call("engine", sock=lab.broker.socket, method="hello", args=[])
    assert hello["peer"]["uid"] == lab.alice.uid and hello["peer"]["pid"] == alice.pid


@pytest.mark.docker
def test_forged_identity_and_labels_are_ignored_and_no_privileges_given(
    lab: Lab, docker_client: docker.DockerClient
) -> None:
    spec = kernel_spec(
        network="host", labels={SESSION_LABEL: SESSION, "traefik.http.routers.k.rule": "Host(`x`)"}
    )
    assert spec["identity"]["uid"] == 0 and spec["allow_root"] is True
    launched = lab.agents["alice"].call("launch_json", sock=lab.broker.socket, spec=spec)
    try:
        details = docker_client.api.inspect_container(launched["container_id"])
        alice = lab.alice
        assert details["Config"]["User"] == f"{alice.uid}:{alice.gid}"
        assert details["Name"] == f"/labnotebook-{alice.name}-{spec['kernel_id']}"
        labels = details["Config"]["Labels"]
        assert labels[L.OWNER_UID] == str(alice.uid) and labels[L.OWNER] == alice.name
        assert labels[L.SERVER] == L.server_identity(lab.agents["alice"].pid)
        assert labels[SESSION_LABEL] == SESSION and not any(k.startswith("traefik") for k in labels)
        assert f"HOME=/home/{alice.name}" in details["Config"]["Env"]
        host = details["HostConfig"]
        assert host["Privileged"] is False
        assert not host.get("CapAdd") and host["CapDrop"] == ["ALL"]
        assert not host.get("Devices") and not host.get("DeviceRequests")
        assert host["NetworkMode"] == TEST_NETWORK
        assert (host["PidMode"], host["UTSMode"], host["UsernsMode"]) == ("", "", "")
        assert host["IpcMode"] in ("private", "shareable")
        assert host["SecurityOpt"] == ["no-new-privileges:true"]
        assert not host.get("PortBindings") and not host.get("Binds")
        assert (host["Memory"], host["NanoCpus"], host["PidsLimit"]) == (2 << 30, 15 * 10**8, 4096)
        assert [str(lab.group_gid)] == host["GroupAdd"]
        assert [(m["Type"], m["Name"], m["Destination"]) for m in details["Mounts"]] == [
            ("volume", lab.homes, "/home")
        ]
    finally:
        lab.agents["alice"].call(
            "engine", sock=lab.broker.socket, method="remove", args=[launched["container_id"]]
        )
    assert no_container_for(docker_client, spec["kernel_id"])


@pytest.mark.docker
def test_root_gets_no_kernel_from_the_broker(lab: Lab, docker_client: docker.DockerClient) -> None:
    spec = KernelContainerSpec.from_json(kernel_spec(labels={SESSION_LABEL: SESSION}))
    with pytest.raises(PermissionRefused, match="does not start kernels for root"):
        BrokerEngine(lab.broker.socket).launch(spec)
    assert no_container_for(docker_client, spec.kernel_id)


REFUSALS: list[tuple[str, dict[str, Any], str]] = [
    ("privileged", {"privileged": True}, "does not accept 'privileged'"),
    ("cap-add", {"cap_add": ["SYS_ADMIN"]}, "does not accept 'cap_add'"),
    ("devices", {"devices": ["/dev/sda:/dev/sda"]}, "does not accept 'devices'"),
    ("host-pid", {"pid_mode": "host"}, "does not accept 'pid_mode'"),
    ("host-net", {"network_mode": "host"}, "does not accept 'network_mode'"),
    ("root-fs", {"mounts": [{"source": "/", "target": "/host"}]}, "may not mount '/'"),
    ("docker-sock", {"mounts": [{"source": "/var/run/docker.sock", "target": "/d"}]},
     "may not mount '/var/run/docker.sock'"),
    ("other-volume", {"mounts": [{"source": "{other}", "target": "/data"}]}, "may not mount"),
    ("moved-volume", {"mounts": [{"source": "{shared}", "target": "/etc"}]}, "may not mount"),
    ("rw-of-ro", {"mounts": [{"source": "{reference}", "target": "/reference"}]}, "read-only"),
    ("over-home", {"mounts": [{"source": "{other}", "target": "/home"}]}, "already mounts"),
    ("image", {"image": "debian:bookworm"}, "not one of this lab's kernel images"),
    ("publish", {"publish_ports": True}, "never on ports published on the host"),
    ("memory", {"memory": 64 << 30}, "asks for 64g of memory, but this lab allows at most 2g"),
    ("cpus", {"nano_cpus": 2 * 10**9}, "at most 1.5 CPUs"),
    ("pids", {"pids_limit": 100_000}, "at most 4096 processes"),
    ("pull", {"pull_policy": "always"}, "pull policy 'always' is not allowed"),
]  # fmt: skip


@pytest.mark.docker
@pytest.mark.parametrize(
    ("change", "message"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
def test_refused_requests_say_why_and_leave_nothing(
    lab: Lab, docker_client: docker.DockerClient, change: dict[str, Any], message: str
) -> None:
    names = {"other": lab.other, "shared": lab.shared, "reference": lab.reference}
    text = re.sub(r"\{(other|shared|reference)\}", lambda m: names[m.group(1)], json.dumps(change))
    change = json.loads(text)
    spec = kernel_spec(labels={SESSION_LABEL: SESSION}, **change)
    with pytest.raises(PermissionRefused, match=re.escape(message)):
        lab.agents["alice"].call("launch_json", sock=lab.broker.socket, spec=spec)
    assert no_container_for(docker_client, spec["kernel_id"])


@pytest.mark.docker
def test_failing_launch_leaves_nothing(lab: Lab, docker_client: docker.DockerClient) -> None:
    """Docker fails after the container exists (no init to exec the missing program)."""
    spec = kernel_spec(labels={SESSION_LABEL: SESSION}, argv=["/no/such/kernel"], init=False)
    with pytest.raises(KernelLaunchError, match="cannot run the kernel command"):
        lab.agents["alice"].call("launch_json", sock=lab.broker.socket, spec=spec)
    assert no_container_for(docker_client, spec["kernel_id"])
    spec = kernel_spec(labels={SESSION_LABEL: SESSION}, memory=1024)  # below Docker's minimum
    with pytest.raises(KernelLaunchError, match="Docker refused to create"):
        lab.agents["alice"].call("launch_json", sock=lab.broker.socket, spec=spec)
    assert no_container_for(docker_client, spec["kernel_id"])


@pytest.mark.docker
def test_working_dir_cannot_make_root_owned_folders_in_volumes(
    lab: Lab, docker_client: docker.DockerClient
) -> None:
    """Docker would mkdir a missing working_dir as root, through the user's symlinks."""
    alice, sock = lab.agents["alice"], lab.broker.socket
    targets = [f"/home/{lab.bob.name}/planted", f"/home/{lab.alice.name}/to-bob/via-link"]
    launched = [
        alice.call(
            "launch_json",
            sock=sock,
            spec=kernel_spec(labels={SESSION_LABEL: SESSION}, working_dir=target),
        )
        for target in targets
    ]
    try:
        for container in launched:
            state = alice.call(
                "engine", sock=sock, method="state", args=[container["container_id"]]
            )
            assert state["running"], state  # the kernel started anyway, in its home
        time.sleep(0.5)
        logs = alice.call("engine", sock=sock, method="logs", args=[launched[0]["container_id"]])
        assert "cannot enter" in logs
        listing = docker_client.containers.run(
            KERNEL_IMAGE, ["ls", "-A", f"/home/{lab.bob.name}"], user="0:0", network_mode="none",
            volumes={lab.homes: {"bind": "/home", "mode": "ro"}}, remove=True,
            labels={SESSION_LABEL: SESSION},
        )  # fmt: skip
        assert listing.decode().split() == []
    finally:
        for container in launched:
            alice.call("engine", sock=sock, method="remove", args=[container["container_id"]])


@pytest.mark.docker
def test_allowed_volume_can_be_mounted_read_only(
    lab: Lab, docker_client: docker.DockerClient
) -> None:
    spec = kernel_spec(
        labels={SESSION_LABEL: SESSION},
        mounts=[
            {"source": lab.shared, "target": "/shared", "read_only": True},
            {"source": lab.reference, "target": "/reference", "read_only": True},
        ],
    )
    agent = lab.agents["alice"]
    launched = agent.call("launch_json", sock=lab.broker.socket, spec=spec)
    try:
        mounts = docker_client.api.inspect_container(launched["container_id"])["Mounts"]
        assert sorted((m["Name"], m["Destination"], m["RW"]) for m in mounts) == sorted(
            [(lab.homes, "/home", True), (lab.shared, "/shared", False),
             (lab.reference, "/reference", False)]
        )  # fmt: skip
    finally:
        agent.call("engine", sock=lab.broker.socket, method="remove",
                   args=[launched["container_id"]])  # fmt: skip


@pytest.mark.docker
def test_users_cannot_act_on_each_others_kernels(
    lab: Lab, docker_client: docker.DockerClient
) -> None:
    alice, bob, sock = lab.agents["alice"], lab.agents["bob"], lab.broker.socket
    launched = alice.call(
        "launch_json", sock=sock, spec=kernel_spec(labels={SESSION_LABEL: SESSION})
    )
    cid = launched["container_id"]
    # Not a kernel (no role label), though it claims to be Alice's.
    plain = docker_client.containers.run(
        KERNEL_IMAGE, ["sleep", "infinity"], detach=True, network_mode="none",
        labels={SESSION_LABEL: SESSION, L.OWNER_UID: str(lab.alice.uid)},
    )  # fmt: skip
    try:
        for ref in (cid, cid[:12], launched["name"]):
            for method, args in [("state", []), ("signal", [9]), ("remove", []), ("logs", []),
                                 ("wait", [1])]:  # fmt: skip
                with pytest.raises(PermissionRefused, match="not one of your kernels"):
                    bob.call("engine", sock=sock, method=method, args=[ref, *args])
        for method, args in [("state", []), ("signal", [9]), ("remove", [])]:
            with pytest.raises(PermissionRefused, match="not one of your kernels"):
                alice.call("engine", sock=sock, method=method, args=[plain.id, *args])
        assert bob.call("engine", sock=sock, method="kernel_containers", args=[]) == []
        with pytest.raises(PermissionRefused, match="only list your own"):
            bob.call("engine", sock=sock, method="kernel_containers", args=[lab.alice.uid])
        mine = alice.call("engine", sock=sock, method="kernel_containers", args=[])
        assert [c["Id"] for c in mine] == [cid]
        state = alice.call("engine", sock=sock, method="state", args=[cid])
        assert state["running"] is True
        plain.reload()
        assert plain.status == "running"
    finally:
        plain.remove(force=True)
        alice.call("engine", sock=sock, method="remove", args=[cid])


@pytest.mark.docker
def test_owner_signals_waits_and_removes(lab: Lab) -> None:
    alice, sock = lab.agents["alice"], lab.broker.socket
    launched = alice.call(
        "launch_json", sock=sock, spec=kernel_spec(labels={SESSION_LABEL: SESSION})
    )
    cid = launched["container_id"]
    try:
        with pytest.raises(PermissionRefused, match="Signal 19 cannot be sent"):
            alice.call("engine", sock=sock, method="signal", args=[cid, int(signal.SIGSTOP)])
        alice.call("engine", sock=sock, method="signal", args=[cid, 0])
        assert alice.call("engine", sock=sock, method="wait", args=[cid, 0.5]) is None
        alice.call("engine", sock=sock, method="signal", args=[cid, int(signal.SIGTERM)])
        assert alice.call("engine", sock=sock, method="wait", args=[cid, 30]) == 143
        state = alice.call("engine", sock=sock, method="state", args=[cid])
        assert state["running"] is False and state["exit_code"] == 143
    finally:
        alice.call("engine", sock=sock, method="remove", args=[cid])
    assert alice.call("engine", sock=sock, method="state", args=[cid]) is None


@pytest.mark.docker
def test_eight_concurrent_launches_do_not_block_others(lab: Lab) -> None:
    alice, bob, sock = lab.agents["alice"], lab.agents["bob"], lab.broker.socket
    specs = [kernel_spec(labels={SESSION_LABEL: SESSION}) for _ in range(8)]
    outcome: dict[str, Any] = {}
    launching = threading.Thread(
        target=lambda: outcome.update(alice.call("launch_many", sock=sock, specs=specs))
    )
    launching.start()
    hellos = []
    time.sleep(0.2)  # the launches are in flight
    while launching.is_alive() and len(hellos) < 20:
        hellos.append(bob.call("timed_hello", sock=sock))
        time.sleep(0.05)
    launching.join()
    results = outcome["results"]
    try:
        assert all(r["ok"] for r in results), results
        assert len({r["container_id"] for r in results}) == 8
        serial = sum(r["client_ms"] for r in results)
        print(
            f"8 concurrent launches: wall {outcome['wall_ms']:.0f} ms, each "
            f"{min(r['client_ms'] for r in results):.0f}-{max(r['client_ms'] for r in results):.0f}"
            f" ms; another user's requests meanwhile: max {max(hellos):.1f} ms"
        )
        assert outcome["wall_ms"] < serial  # they overlapped
        assert hellos and max(hellos) < 250  # the slow launches held nobody else up
    finally:
        for r in results:
            if r.get("ok"):
                alice.call("engine", sock=sock, method="remove", args=[r["container_id"]])


@pytest.mark.docker
def test_kernels_of_a_stopped_server_are_reaped(
    lab: Lab, docker_client: docker.DockerClient
) -> None:
    with UserAgent(lab.alice.uid, env={"LNBTEST_SCRATCH": str(lab.alice.scratch)}) as server:
        launched = server.call(
            "launch_json", sock=lab.broker.socket, spec=kernel_spec(labels={SESSION_LABEL: SESSION})
        )
        assert launched["name"] not in BrokerEngine(lab.broker.socket).reap()  # server runs
    # That "server" has exited; its kernel container is still there...
    docker_client.containers.get(launched["container_id"])
    with pytest.raises(PermissionRefused, match="Only root may"):
        lab.agents["bob"].call("engine", sock=lab.broker.socket, method="reap", args=[])
    # ...until the broker reaps (it does so periodically; root may ask for it now).
    assert launched["name"] in BrokerEngine(lab.broker.socket).reap()
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(launched["container_id"])


@pytest.mark.docker
def test_every_request_is_logged_with_who_what_and_how_long(lab: Lab) -> None:
    lab.agents["bob"].call("engine", sock=lab.broker.socket, method="hello", args=[])
    log = lab.broker.log_text()
    bob = re.escape(f"{lab.bob.name}({lab.bob.uid}) pid {lab.agents['bob'].pid}")
    assert re.search(bob + r" hello -: ok in \d+\.\d ms", log), log[-2000:]
    alice = re.escape(f"{lab.alice.name}({lab.alice.uid})")
    name = re.escape(lab.alice.name)
    assert re.search(alice + rf" pid \d+ launch labnotebook-{name}-[-0-9a-f]+: ok in", log)
    assert re.search(alice + r" pid \d+ launch kernel [-0-9a-f]+: PermissionRefused in", log)


@pytest.mark.docker
def test_broker_latency(lab: Lab) -> None:
    """The broker adds at most 30 ms (median) to a launch; the numbers go to the report."""
    result = measure(
        n=int(os.environ.get("LNBTEST_BROKER_BENCH_N", "8")),
        network=TEST_NETWORK,
        labels={SESSION_LABEL: SESSION},
    )
    print("broker latency:", json.dumps(result))
    artifacts = REPO / "tests" / "artifacts"
    artifacts.mkdir(exist_ok=True)
    (artifacts / "broker_latency.json").write_text(json.dumps(result, indent=1))
    assert result["broker_overhead_median_ms"] <= 30, result
