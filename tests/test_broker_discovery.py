"""Every Jupyter client finds the lab's broker by itself, and its kernel starts in its folder.

No Docker: the provisioner's own decisions, against a real broker in this process (over a
stand-in engine, see test_broker_protocol.FakeEngine) where the broker answers. The hub tests
(tests/hub/test_clients_in_hub.py) run the real clients in a real hub.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.kernelspec import KernelSpec
from labnotebook.hub import settings as hub_settings
from labnotebook.provisioner import DockerKernelProvisioner, image_backends
from labnotebook.provisioner import broker_protocol as protocol
from labnotebook.provisioner.broker_client import BrokerEngine
from labnotebook.provisioner.errors import EngineUnreachable, KernelConfigError
from labnotebook.provisioner.local_engine import LocalEngine

from .broker_helpers import NOBODY
from .test_broker_protocol import start_in_process

IMAGE = "labnotebook/kernel-python:latest"


def make(**config: Any) -> DockerKernelProvisioner:
    spec = KernelSpec(argv=["python3", "-f", "{connection_file}"], display_name="t", language="py")
    settings = {"image": IMAGE, "uid": 4242, "username": "u", "home": "/home/u", **config}
    return DockerKernelProvisioner(kernel_id="k", kernel_spec=spec, **settings)


@pytest.fixture
def places(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Path]:
    """The lab's two usual places, moved into a temporary folder (this machine has neither)."""
    shared, legacy = tmp_path / "shared" / "broker.sock", tmp_path / "legacy" / "broker.sock"
    monkeypatch.setattr(image_backends, "SHARED_SOCKET", str(shared))
    monkeypatch.setattr(image_backends, "DEFAULT_SOCKET", str(legacy))
    monkeypatch.delenv("LABNOTEBOOK_BROKER_SOCKET", raising=False)
    return {"shared": shared, "legacy": legacy}


def touch(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return str(path)


# -- where the broker is --------------------------------------------------------------------


def test_the_provisioner_knows_the_hubs_places() -> None:
    # The hub writes its socket where the provisioner looks (no file names it any more).
    assert str(hub_settings.BROKER_SOCKET) == protocol.SHARED_SOCKET
    assert str(hub_settings.LEGACY_BROKER_SOCKET) == protocol.DEFAULT_SOCKET


def test_no_broker_on_a_laptop_means_the_local_engine(places: dict[str, Path]) -> None:
    assert image_backends.broker_socket() is None
    provisioner = make()
    assert provisioner.broker() is None
    assert isinstance(provisioner.engine, LocalEngine)


def test_the_lab_broker_is_found_for_every_kernelspec(places: dict[str, Path]) -> None:
    legacy = touch(places["legacy"])
    assert make().broker() == legacy
    # The broker volume first: in a kernel container it is mounted read-only over whatever
    # a member's image has at the old place.
    shared = touch(places["shared"])
    provisioner = make()
    assert provisioner.broker() == shared
    engine = provisioner.engine
    assert isinstance(engine, BrokerEngine) and engine.socket_path == shared
    assert engine.broker_uid == 0, "a discovered socket must be served by root"


def test_settings_still_win(places: dict[str, Path]) -> None:
    touch(places["shared"])
    assert make(broker_socket="/elsewhere/broker.sock").broker() == "/elsewhere/broker.sock"
    # An engine named explicitly is the user's own: no broker is looked for.
    assert make(docker_host="tcp://gpu-box:2376").broker() is None


def test_the_variable_comes_first_and_a_wrong_option_is_an_error(
    places: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    touch(places["shared"])
    mine = touch(tmp_path / "mine.sock")
    monkeypatch.setenv("LABNOTEBOOK_BROKER_SOCKET", mine)
    assert make().broker() == mine
    with pytest.raises(KernelConfigError, match="no kernel broker socket at /nope"):
        image_backends.broker_socket("/nope")


@contextlib.contextmanager
def socket_served_by_a_member() -> Iterator[tuple[str, list[bytes]]]:
    """A Unix socket that another user serves (`nobody` when this test runs as root, else
    this very user, who is not root either), and what was sent to it."""
    folder = Path(tempfile.mkdtemp(prefix="lnb-member-"))  # pytest's folders are root's only
    try:
        with _served(folder, str(folder / "fake-broker.sock")) as served:
            yield served
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _served(folder: Path, path: str) -> Iterator[tuple[str, list[bytes]]]:
    received: list[bytes] = []
    if os.geteuid() != 0:
        server = socket.socket(socket.AF_UNIX)
        server.bind(path)
        server.listen()

        def serve() -> None:
            with contextlib.suppress(OSError):
                while True:
                    connection, _ = server.accept()
                    connection.settimeout(2)
                    with contextlib.suppress(OSError), connection:
                        received.append(connection.recv(65536))

        threading.Thread(target=serve, daemon=True).start()
        try:
            yield path, received
        finally:
            server.close()
        return
    assert NOBODY is not None, "no 'nobody' account to play the member"
    folder.chmod(0o777)
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the member's process
        try:
            os.close(read)
            os.setgid(NOBODY.pw_gid)
            os.setuid(NOBODY.pw_uid)
            server = socket.socket(socket.AF_UNIX)
            server.bind(path)
            os.chmod(path, 0o777)
            server.listen()
            os.write(write, b"ready\n")
            while True:
                connection, _ = server.accept()
                connection.settimeout(2)
                with contextlib.suppress(OSError):
                    data = connection.recv(65536)
                    os.write(write, (data.hex() or "-").encode() + b"\n")
                connection.close()
        finally:
            os._exit(0)
    os.close(write)
    lines = os.fdopen(read)
    assert lines.readline() == "ready\n"
    try:
        yield path, received
    finally:
        os.kill(child, 9)
        os.waitpid(child, 0)
        received.extend(bytes.fromhex(h) for h in lines.read().split() if h != "-")
        lines.close()


def test_a_members_socket_gets_no_secrets(
    places: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """She points the variable (or a link in her image) at a socket of hers: the client,
    root's included, refuses it before sending a byte (the kernel's key goes in a launch)."""
    with socket_served_by_a_member() as (path, received):
        monkeypatch.setenv("LABNOTEBOOK_BROKER_SOCKET", path)
        provisioner = make()
        assert provisioner.broker() == path
        with pytest.raises(EngineUnreachable, match=r"served by UID \d+, not by the broker"):
            provisioner.engine.hello()  # type: ignore[attr-defined]
    assert not any(received), received


# -- where the kernel starts ----------------------------------------------------------------


@contextlib.asynccontextmanager
async def lab_broker(folder: Path, lab_mounts: list[str]) -> AsyncIterator[str]:
    """The real broker, in this process (its peer), with the lab's mounts."""
    started = await start_in_process(folder, policy={"min_uid": 0, "lab_mounts": lab_mounts})
    try:
        yield started.socket
    finally:
        started.stop.set()
        await started.task


def through(path: str, **config: Any) -> DockerKernelProvisioner:
    provisioner = make(broker_socket=path, **config)
    # The test process serves the broker: whoever runs the tests must be its UID.
    provisioner._engine = BrokerEngine(path, broker_uid=os.geteuid())
    return provisioner


async def working_dir(provisioner: DockerKernelProvisioner, **kwargs: Any) -> str | None:
    launch = await provisioner.pre_launch(**kwargs)
    return launch["request"].working_dir


async def test_the_kernel_starts_in_the_clients_folder_inside_the_lab_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    homes = tmp_path / "homes"
    notebooks = homes / "u" / "analysis"
    (notebooks / "data").mkdir(parents=True)
    async with lab_broker(tmp_path / "broker", [f"homedirs:{homes}"]) as path:
        # A member's kernelspec names only its image: the broker says where the lab's are.
        provisioner = through(path)
        # nbclient, jupyter_server: the folder they ask for.
        assert await working_dir(provisioner, cwd=str(notebooks)) == str(notebooks)
        assert await working_dir(provisioner, cwd=f"{notebooks}/data/..") == str(notebooks)
        # papermill, `jupyter console`, `jupyter kernel`, nbconvert on a notebook beside it:
        # no cwd, so the client's own folder, as jupyter_client's LocalProvisioner does.
        monkeypatch.chdir(notebooks)
        assert await working_dir(provisioner) == str(notebooks)
        assert await working_dir(provisioner, cwd="data") == str(notebooks / "data")
        # `..` stays a path for the kernel to enter as the member (launch.entry): another
        # member's folder is hers only if her own UID may enter it.
        assert await working_dir(provisioner, cwd=f"{notebooks}/../../bob") == str(homes / "bob")
        # Outside the lab's folders: the home, and the client is told why.
        with caplog.at_level(logging.WARNING):
            assert await working_dir(provisioner, cwd=str(tmp_path / "elsewhere")) == "/home/u"
            assert await working_dir(provisioner, cwd=f"{homes}-not/u") == "/home/u"
        said = [r.getMessage() for r in caplog.records if "starts in the home" in r.getMessage()]
        assert len(said) == 2 and f"{tmp_path}/elsewhere is not in" in said[0], said
        assert str(homes) in said[0]


async def test_the_provisioners_own_volumes_need_no_broker_answer(tmp_path: Path) -> None:
    async with lab_broker(tmp_path / "broker", []) as path:
        provisioner = through(path, volumes=["/srv/data:/data"])
        assert await working_dir(provisioner, cwd="/srv/data/raw") == "/data/raw"
        # The broker has no folder for it, and neither has the kernelspec: the home.
        assert await working_dir(provisioner, cwd="/home/u/x") == "/home/u"


async def test_a_laptop_kernel_keeps_its_rules(
    tmp_path: Path, places: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    provisioner = make(volumes=[f"{tmp_path}:/work"])
    monkeypatch.chdir(tmp_path)
    assert provisioner.broker() is None
    assert await working_dir(provisioner) == "/work"
    assert await working_dir(provisioner, cwd="/not/mounted") == "/home/u"


@pytest.mark.parametrize(
    ("asked", "lab", "culled_after"),
    [
        (None, 3600, 3600),  # the kernelspec says nothing: the lab's GPU timeout
        (7200, 3600, 3600),  # it asks for longer: the lab's, shorter, wins
        (600, 3600, 600),  # it asks for less: that stays
        (None, 0, None),  # no timeout from the broker (no GPUs): nothing changes
    ],
)
def test_a_gpu_kernels_idle_timeout_lowers_its_kernelspecs(
    asked: int | None, lab: float, culled_after: int | None
) -> None:
    """jupyter_server's culler reads cull_idle_timeout from the kernel's kernelspec metadata
    (MappingKernelManager.cull_kernel_if_idle): the object the provisioner was given."""
    provisioner = make()
    if asked is not None:
        provisioner.kernel_spec.metadata["cull_idle_timeout"] = asked
    provisioner._apply_lab_idle_timeout(lab)
    assert provisioner.kernel_spec.metadata.get("cull_idle_timeout") == culled_after
