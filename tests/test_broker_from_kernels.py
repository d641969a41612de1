"""`!labnotebook kernel ...` from a kernel's container: a caller the broker cannot see by PID.

In the hub the broker runs in the hub container's PID namespace and a kernel's processes in
their container's: SO_PEERCRED then gives the broker their UID but PID 0. The broker removes a
kernel when the process that launched it is gone, which it cannot tell for such a caller, so
these callers may use only the image operations. Here a real root broker runs in a PID
namespace of its own (`unshare --pid`), so every caller on this machine is unseen by it, as
kernels are in the hub; and a container from the lab's kernel image, as a non-root account,
reaches the broker's socket through a read-only mount and builds with `labnotebook kernel`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
from labnotebook.provisioner.broker_protocol import SHARED_SOCKET
from labnotebook.provisioner.errors import PermissionRefused

from .broker_fixtures import (
    Account,
    BrokerProcess,
    UserAgent,
    create_account,
    delete_account,
    kernel_spec,
)
from .conftest import KERNEL_IMAGE, SESSION, SESSION_LABEL, TEST_NETWORK
from .test_broker_engine import needs_root
from .test_kernel_builds import _remove_member_images
from .wheels import make_wheel

pytestmark = pytest.mark.docker
UNSEEN = "cannot see the process asking"


@dataclass
class Unseen:
    broker: BrokerProcess
    account: Account
    agent: UserAgent


@pytest.fixture(scope="module")
def unseen(docker_client: docker.DockerClient) -> Iterator[Unseen]:
    needs_root()
    if not shutil.which("unshare"):
        pytest.skip("needs unshare (util-linux) to run the broker in a PID namespace")
    account = create_account(f"lnbtestk{SESSION[:6]}")
    broker = agent = None
    try:
        logs = tempfile.mkdtemp(prefix="lnbtest-build-logs-")
        broker = BrokerProcess(
            f"c.LaunchPolicy.network = {TEST_NETWORK!r}\n"
            f"c.LaunchPolicy.allowed_labels = ['{SESSION_LABEL}']\n"
            "c.KernelBroker.reap_interval = 0\n"
            f"c.BuildPolicy.default_base = {KERNEL_IMAGE!r}\n"
            f"c.BuildPolicy.log_dir = {logs!r}\n",
            # Its own PID namespace: nothing on this machine is visible to it by PID, as a
            # kernel's processes are not to the broker in the hub.
            prefix=["unshare", "--pid", "--fork", "--kill-child=SIGTERM"],
        ).start()
        agent = UserAgent(account.uid)
        yield Unseen(broker, account, agent)
    finally:
        if agent is not None:
            agent.close()
        if broker is not None:
            print(broker.log_text())
            broker.cleanup()
        _remove_member_images(docker_client, [account.uid])
        delete_account(account)
        shutil.rmtree(logs, ignore_errors=True)


def test_an_unseen_caller_may_not_launch_but_may_use_images(
    unseen: Unseen, docker_client: docker.DockerClient
) -> None:
    sock, agent = unseen.broker.socket, unseen.agent
    hello = agent.call("engine", sock=sock, method="hello", args=[])
    assert hello["peer"]["uid"] == unseen.account.uid and hello["peer"]["pid"] == 0
    spec = kernel_spec(labels={SESSION_LABEL: SESSION})
    with pytest.raises(PermissionRefused, match=UNSEEN) as refused:
        agent.call("launch_json", sock=sock, spec=spec)
    assert "'launch'" in str(refused.value) and "start kernels from JupyterLab" in str(
        refused.value
    )
    for method, args in (("kernel_containers", []), ("state", ["0123456789ab"])):
        with pytest.raises(PermissionRefused, match=UNSEEN):
            agent.call("engine", sock=sock, method=method, args=args)
    assert not docker_client.containers.list(
        all=True, filters={"label": f"org.labnotebook.owner_uid={unseen.account.uid}"}
    )
    # The image operations pass the door: their own answers, not the PID refusal.
    images, log = agent.call(
        "raw",
        sock=sock,
        lines=[json.dumps({"op": "images"}), json.dumps({"op": "build_log", "name": "nothing"})],
    )
    assert images["ok"] and all(i.get("published") for i in images["result"]), images
    assert log["error"] == "KernelConfigError" and "not built" in log["message"], log
    assert "pid 0 launch" in unseen.broker.log_text()


def test_labnotebook_in_a_kernel_container_builds_through_the_mounted_socket(
    unseen: Unseen, docker_client: docker.DockerClient
) -> None:
    account = unseen.account
    home = Path(tempfile.mkdtemp(prefix="lnbtest-kernel-home-"))
    try:
        name = f"lnbk{uuid.uuid4().hex[:6]}"
        folder = home / "kernels" / "mine"
        make_wheel(folder / "wheels", name)
        (folder / "requirements.txt").write_text(f"./wheels/{name}-1.0-py3-none-any.whl\n")
        for path in [home, *home.rglob("*")]:
            os.chown(path, account.uid, account.gid)
        script = (
            # The socket's folder is read-only here, and the Docker SDK absent: the CLI's
            # broker path must not need it.
            f"touch {os.path.dirname(SHARED_SOCKET)}/x 2>/dev/null && echo WROTE; "
            "python3 -c 'import docker' 2>/dev/null && echo HAS_DOCKER; "
            "cd ~/kernels/mine && labnotebook kernel build mine && labnotebook kernel ls"
        )
        output = docker_client.containers.run(
            KERNEL_IMAGE,
            ["sh", "-c", script],
            user=f"{account.uid}:{account.gid}",
            environment={"HOME": "/scratch"},
            volumes={
                str(home): {"bind": "/scratch", "mode": "rw"},
                str(unseen.broker.folder): {"bind": os.path.dirname(SHARED_SOCKET), "mode": "ro"},
            },
            network_mode="none",
            labels={SESSION_LABEL: SESSION},
            remove=True,
            stderr=True,
        ).decode()
        print(output)
        assert "WROTE" not in output and "HAS_DOCKER" not in output
        assert "==> " in output and "Built " in output
        assert "kernelspec uses this" in output
        spec = (home / ".local/share/jupyter/kernels/mine/kernel.json").read_text()
        assert '"sha256:' in spec
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(home)
