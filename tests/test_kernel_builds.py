"""Members build their own kernels through a real root broker, as real non-root accounts.

Every build is network-free where it can be (requirements.txt installs a wheel made here);
apt.txt fetches one small Debian package from the mirror the build containers reach. A module
fixture runs the broker with Dockerfile builds switched on; the limits test runs a second
broker with a small quota, time limit and context limit, and Dockerfiles off (the default).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import requests
from labnotebook.provisioner import labels as L
from labnotebook.provisioner import member_images as M
from labnotebook.provisioner.errors import PermissionRefused

from .broker_fixtures import (
    REPO,
    Account,
    BrokerProcess,
    UserAgent,
    create_account,
    delete_account,
    kernel_spec,
)
from .conftest import KERNEL_IMAGE, SESSION, SESSION_LABEL, TEST_NETWORK
from .test_broker_engine import needs_root
from .wheels import make_wheel

pytestmark = pytest.mark.docker
FORBIDDEN = f"lnbtest-forbidden-{SESSION}:latest"


@dataclass
class BuildLab:
    broker: BrokerProcess
    homes: Path
    accounts: dict[str, Account]
    agents: dict[str, UserAgent]
    client: docker.DockerClient

    def home(self, who: str) -> Path:
        return self.homes / self.accounts[who].name

    def cli(self, who: str, *argv: str, broker: BrokerProcess | None = None) -> dict[str, Any]:
        sock = (broker or self.broker).socket
        return self.agents[who].call("cli", argv=["kernel", "--broker-socket", sock, *argv])

    def folder(self, who: str, name: str, files: dict[str, str | bytes]) -> str:
        """A build folder in the member's home, written as the member would."""
        folder = self.home(who) / "builds" / name
        for relative, content in files.items():
            path = folder / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content)
        account = self.accounts[who]
        for path in [folder.parent, folder, *folder.rglob("*")]:
            os.chown(path, account.uid, account.gid)
        return str(folder)

    def kernelspec(self, who: str, name: str) -> dict[str, Any]:
        return json.loads((self.home(who) / "data" / "kernels" / name / "kernel.json").read_text())

    def run_kernel(self, who: str, name: str, code: str) -> dict[str, Any]:
        config = {
            "broker_socket": self.broker.socket,
            "network": TEST_NETWORK,
            "labels": {SESSION_LABEL: SESSION},
        }
        return self.agents[who].call(
            "run_kernel_configured",
            kernel_dirs=[str(self.home(who) / "data" / "kernels")],
            kernel_name=name,
            code=code,
            config=config,
        )


def _remove_member_images(client: docker.DockerClient, uids: list[int]) -> None:
    for uid in uids:
        for image in client.api.images(filters={"label": f"{L.OWNER_UID}={uid}"}):
            for tag in image.get("RepoTags") or []:
                if tag != "<none>:<none>":
                    client.api.remove_image(tag, force=True)
            with contextlib.suppress(docker.errors.NotFound):
                client.api.remove_image(image["Id"], force=True)
        for container in client.containers.list(
            all=True, filters={"label": f"{L.OWNER_UID}={uid}"}
        ):
            container.remove(force=True)


@pytest.fixture(scope="module")
def blab(docker_client: docker.DockerClient) -> Iterator[BuildLab]:
    needs_root()
    tag = SESSION[:6]
    homes = Path(tempfile.mkdtemp(prefix="lnbtest-homes-"))
    homes.chmod(0o755)
    admins = f"lnbtadm{tag}"
    accounts: dict[str, Account] = {}
    agents: dict[str, UserAgent] = {}
    broker = None
    try:
        subprocess.run(["groupadd", admins], check=True, capture_output=True)
        for who, groups in (("alice", None), ("bob", None), ("carol", [admins])):
            account = create_account(f"lnbtest{who[0]}k{tag}", groups=groups)
            accounts[who] = account
            home = homes / account.name
            (home / "data" / "kernels").mkdir(parents=True)
            for path in (home, home / "data", home / "data" / "kernels"):
                os.chown(path, account.uid, account.gid)
            home.chmod(0o700)
            # Homes at the same path on this machine and in kernels, as /home is in the hub.
            subprocess.run(["usermod", "-d", str(home), account.name], check=True)
            account.home = str(home)
        docker_client.api.tag(KERNEL_IMAGE, FORBIDDEN.split(":")[0], "latest")
        broker = BrokerProcess(
            f"c.LaunchPolicy.network = {TEST_NETWORK!r}\n"
            f"c.LaunchPolicy.lab_mounts = ['{homes}:{homes}']\n"
            f"c.LaunchPolicy.allowed_labels = ['{SESSION_LABEL}']\n"
            "c.LaunchPolicy.max_memory = '1g'\n"
            "c.KernelBroker.reap_interval = 0\n"
            "c.BuildPolicy.allow_dockerfile = True\n"
            f"c.BuildPolicy.default_base = {KERNEL_IMAGE!r}\n"
            f"c.BuildPolicy.admin_group = {admins!r}\n"
        )
        broker.config.write_text(
            broker.config.read_text() + f"c.BuildPolicy.log_dir = '{broker.folder}/logs'\n"
        )
        broker.start()
        for who, account in accounts.items():
            agents[who] = UserAgent(
                account.uid,
                env={
                    "LNBTEST_SCRATCH": account.home,
                    "LNBTEST_SCENARIOS": "tests.kernel_build_scenarios",
                    "JUPYTER_DATA_DIR": f"{account.home}/data",
                },
            )
        yield BuildLab(broker, homes, accounts, agents, docker_client)
    finally:
        for agent in agents.values():
            agent.close()
        if broker is not None:
            print(broker.log_text()[-20000:])
            broker.cleanup()
        _remove_member_images(docker_client, [a.uid for a in accounts.values()])
        for image in docker_client.api.images(name=M.PUBLISHED_NAMESPACE):
            for t in image.get("RepoTags") or []:
                if any(a.name in t for a in accounts.values()):
                    docker_client.api.remove_image(t, force=True)
        with contextlib.suppress(docker.errors.NotFound):
            docker_client.api.remove_image(FORBIDDEN)
        for account in accounts.values():
            delete_account(account)
        subprocess.run(["groupdel", admins], check=False, capture_output=True)
        shutil.rmtree(homes, ignore_errors=True)


@pytest.fixture(scope="module")
def wheelhouse(blab: BuildLab) -> dict[str, Path]:
    folder = Path(tempfile.mkdtemp(prefix="lnbtest-wheels-"))
    yield {
        "v1": make_wheel(folder / "v1", "lnbtinypkg", "1.0"),
        "v2": make_wheel(folder / "v2", "lnbtinypkg", "2.0"),
        "venv": make_wheel(folder / "venv", "lnbtvenvpkg", "1.0"),
    }
    shutil.rmtree(folder, ignore_errors=True)


def requirements_folder(blab: BuildLab, who: str, name: str, wheel: Path) -> str:
    return blab.folder(
        who,
        name,
        {
            f"wheels/{wheel.name}": wheel.read_bytes(),
            "requirements.txt": f"./wheels/{wheel.name}\n",
        },
    )


@pytest.fixture(scope="module")
def alice_kernel(blab: BuildLab, wheelhouse: dict[str, Path]) -> dict[str, Any]:
    """alice's requirements.txt kernel 'tiny', v1, while a Jupyter server already runs."""
    with jupyter_server(blab.home("alice") / "data") as server:
        before = server.kernelspecs()
        folder = requirements_folder(blab, "alice", "tiny1", wheelhouse["v1"])
        built = blab.cli("alice", "build", "tiny", folder)
        assert built["code"] == 0, built
        after = server.kernelspecs()
    return {
        "built": built,
        "before": before,
        "after": after,
        "spec": blab.kernelspec("alice", "tiny"),
    }


class jupyter_server:
    """A Jupyter server over a kernels folder, started before the build (REST API checks)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.token = uuid.uuid4().hex
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]

    def __enter__(self) -> jupyter_server:
        scratch = tempfile.mkdtemp(prefix="lnbtest-server-")
        self.scratch = scratch
        env = {
            **os.environ,
            "JUPYTER_DATA_DIR": str(self.data_dir),
            "JUPYTER_CONFIG_DIR": f"{scratch}/config",
            "JUPYTER_RUNTIME_DIR": f"{scratch}/runtime",
            "JUPYTER_PLATFORM_DIRS": "1",
        }
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "jupyter_server", "--no-browser", "--allow-root",
                f"--port={self.port}", "--ip=127.0.0.1", f"--IdentityProvider.token={self.token}",
                f"--ServerApp.root_dir={scratch}",
            ],
            env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{url}/api/status?token={self.token}", timeout=2).ok:
                    break
            except requests.RequestException:
                time.sleep(0.3)
        return self

    def kernelspecs(self) -> dict[str, Any]:
        """GET /api/kernelspecs, as JupyterLab's launcher does."""
        url = f"http://127.0.0.1:{self.port}/api/kernelspecs"
        answer = requests.get(url, params={"token": self.token}, timeout=10)
        answer.raise_for_status()
        return dict(answer.json()["kernelspecs"])

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(20)
        shutil.rmtree(self.scratch, ignore_errors=True)


# -- the conventions ----------------------------------------------------------------------------


def test_a_requirements_kernel_is_pinned_listed_at_once_and_runs(
    blab: BuildLab, alice_kernel: dict[str, Any]
) -> None:
    assert "tiny" not in alice_kernel["before"] and "tiny" in alice_kernel["after"]
    out = alice_kernel["built"]["out"]
    assert "==> Step 1/1: requirements.txt" in out and "Successfully installed lnbtinypkg" in out
    spec = alice_kernel["spec"]
    config = spec["metadata"]["kernel_provisioner"]["config"]
    assert list(config) == ["image"] and config["image"].startswith("sha256:")
    image = blab.client.api.inspect_image(config["image"])
    labels = image["Config"]["Labels"]
    alice = blab.accounts["alice"]
    assert labels[L.OWNER_UID] == str(alice.uid) and labels[L.OWNER] == alice.name
    assert labels[M.CONTEXT_DIGEST].startswith("sha256:") and labels[M.BUILT]
    assert f"{M.USER_NAMESPACE}/{alice.name}/tiny:v1" in image["RepoTags"]
    ran = blab.run_kernel("alice", "tiny", "import lnbtinypkg; print(lnbtinypkg.hello())")
    assert ran["status"] == "ok" and "lnbtinypkg 1.0 says hello" in ran["stdout"], ran


def test_a_rebuild_is_a_new_version_and_the_old_one_stays(
    blab: BuildLab, alice_kernel: dict[str, Any], wheelhouse: dict[str, Path]
) -> None:
    first = alice_kernel["spec"]["metadata"]["kernel_provisioner"]["config"]["image"]
    folder = requirements_folder(blab, "alice", "tiny2", wheelhouse["v2"])
    built = blab.cli("alice", "build", "tiny", folder)
    assert built["code"] == 0, built
    second = blab.kernelspec("alice", "tiny")["metadata"]["kernel_provisioner"]["config"]["image"]
    assert second != first
    listed = json.loads(blab.cli("alice", "ls", "--json")["out"])
    versions = {row["version"]: row["id"] for row in listed if row["name"] == "tiny"}
    assert versions == {1: first, 2: second}
    table = blab.cli("alice", "ls")["out"]
    line = next(row for row in table.splitlines() if row.startswith("tiny") and " v2 " in row)
    assert "kernelspec uses this" in line
    assert "==> The build succeeded" in blab.cli("alice", "logs", "tiny")["out"]
    ran = blab.run_kernel("alice", "tiny", "import lnbtinypkg; print(lnbtinypkg.hello())")
    assert "lnbtinypkg 2.0 says hello" in ran["stdout"], ran


def test_apt_and_postbuild_kernel_runs_and_its_build_got_no_privileges(blab: BuildLab) -> None:
    post_build = (
        "#!/bin/sh\nset -e\necho built-by-postbuild > /usr/local/share/lnbtest-proof\n"
        "{ ls -l /var/run/docker.sock /run/docker.sock 2>&1 || true\n"
        "  grep CapEff /proc/self/status\n  cat /proc/net/dev\n"
        "  ls /host /srv/engine 2>&1 || true; } > /usr/local/share/lnbtest-findings\n"
    )
    folder = blab.folder("alice", "jq", {"apt.txt": "# a small one\njq\n", "postBuild": post_build})
    built = blab.cli("alice", "build", "jqkernel", folder)
    assert built["code"] == 0, built
    assert "==> Step 1/2: apt.txt" in built["out"] and "==> Step 2/2: postBuild" in built["out"]
    code = (
        "import subprocess\n"
        "print(subprocess.run(['jq', '-n', '1+41'], capture_output=True, text=True).stdout)\n"
        "print(open('/usr/local/share/lnbtest-proof').read())\n"
        "print(open('/usr/local/share/lnbtest-findings').read())\n"
    )
    ran = blab.run_kernel("alice", "jqkernel", code)
    assert ran["status"] == "ok", ran
    assert "42" in ran["stdout"] and "built-by-postbuild" in ran["stdout"]
    findings = ran["stdout"].split("built-by-postbuild", 1)[1]
    assert "No such file" in findings and "docker.sock ->" not in findings
    capabilities = int(findings.split("CapEff:")[1].split()[0], 16)
    # CHOWN, DAC_OVERRIDE, FOWNER, FSETID, KILL, SETGID, SETUID (bits 0-7 but 2): no NET_RAW,
    # MKNOD, SYS_CHROOT... that Docker gives by default.
    assert capabilities & ~0xFB == 0, hex(capabilities)
    assert "docker0" not in findings and "eth0" in findings


def test_a_dockerfile_kernel_and_a_hostile_dockerfile_gets_nothing(
    blab: BuildLab, wheelhouse: dict[str, Path]
) -> None:
    wheel = wheelhouse["v1"]
    folder = blab.folder(
        "alice",
        "dockerfile",
        {
            f"{wheel.name}": wheel.read_bytes(),
            "Dockerfile": (
                f"FROM {KERNEL_IMAGE}\nCOPY {wheel.name} /tmp/\n"
                f"RUN pip install --break-system-packages /tmp/{wheel.name}\n"
                # What a hostile step can see: no engine socket, no host paths, no host network.
                "RUN { ls -l /var/run/docker.sock 2>&1; cat /proc/net/dev; "
                "ls /srv/engine /host 2>&1; cat /proc/1/cmdline; } > /lnbtest-findings || true\n"
                f"LABEL {L.OWNER_UID}=0 {L.OWNER}=root\n"
            ),
        },
    )
    built = blab.cli("alice", "build", "fromdockerfile", folder)
    assert built["code"] == 0, built
    image = blab.kernelspec("alice", "fromdockerfile")["metadata"]["kernel_provisioner"]["config"]
    labels = blab.client.api.inspect_image(image["image"])["Config"]["Labels"]
    assert labels[L.OWNER_UID] == str(blab.accounts["alice"].uid)  # its LABEL claimed root's
    ran = blab.run_kernel(
        "alice",
        "fromdockerfile",
        "import lnbtinypkg; print(lnbtinypkg.hello()); print(open('/lnbtest-findings').read())",
    )
    assert ran["status"] == "ok" and "says hello" in ran["stdout"], ran
    assert "No such file" in ran["stdout"] and "docker0" not in ran["stdout"]
    assert "/srv/engine" in ran["stdout"] and "dockerd" not in ran["stdout"]


@pytest.mark.parametrize(
    ("dockerfile", "message"),
    [
        (f"FROM {FORBIDDEN}\n", "cannot build FROM"),
        (f"FROM {KERNEL_IMAGE}\nCOPY --from={FORBIDDEN} /etc/hostname /x\n", "cannot build FROM"),
        (f"FROM {KERNEL_IMAGE}\nONBUILD COPY --from={FORBIDDEN} /a /b\n", "cannot build FROM"),
        ("ARG B\nFROM $B\n", "cannot be checked"),
        (f"FROM {KERNEL_IMAGE}\nADD http://169.254.169.254/ /x\n", "ADD from a URL"),
        (f"FROM lnbtest-missing-{SESSION}/x:1\n", "cannot build FROM"),
    ],
)
def test_dockerfiles_naming_other_images_are_refused(
    blab: BuildLab, dockerfile: str, message: str
) -> None:
    folder = blab.folder("bob", f"bad-{uuid.uuid4().hex[:6]}", {"Dockerfile": dockerfile})
    refused = blab.cli("bob", "build", "bad", folder)
    assert refused["code"] == 1 and message in refused["err"], refused
    assert not M.member_images(blab.client.api, blab.accounts["bob"].uid)


def test_an_image_with_planted_symlinks_runs_no_kernel(blab: BuildLab) -> None:
    bob_home = blab.home("bob")
    folder = blab.folder(
        "alice", "planted", {"postBuild": f"#!/bin/sh\nln -s {bob_home} /run/labnotebook\n"}
    )
    built = blab.cli("alice", "build", "planted", folder)
    assert built["code"] == 0, built
    image = blab.kernelspec("alice", "planted")["metadata"]["kernel_provisioner"]["config"]["image"]
    spec = kernel_spec(image=image, labels={SESSION_LABEL: SESSION})
    with pytest.raises(PermissionRefused, match="/run/labnotebook is a symlink"):
        blab.agents["alice"].call("launch_json", sock=blab.broker.socket, spec=spec)
    assert not (bob_home / "kernel.json").exists()
    assert not blab.client.containers.list(
        all=True, filters={"label": f"{L.KERNEL_ID}={spec['kernel_id']}"}
    )


# -- who may do what ------------------------------------------------------------------------------


def test_bob_cannot_run_or_remove_alices_image_until_an_admin_publishes_it(
    blab: BuildLab, alice_kernel: dict[str, Any]
) -> None:
    image = alice_kernel["spec"]["metadata"]["kernel_provisioner"]["config"]["image"]
    alice = blab.accounts["alice"].name
    spec = kernel_spec(image=image, labels={SESSION_LABEL: SESSION})
    with pytest.raises(PermissionRefused, match="not published"):
        blab.agents["bob"].call("launch_json", sock=blab.broker.socket, spec=spec)
    removed = blab.cli("bob", "rm", f"{alice}/tiny:v1")
    assert removed["code"] == 1 and "you can only remove your own" in removed["err"], removed
    removed = blab.cli("bob", "rm", image)
    assert removed["code"] == 1 and "you can only remove your own" in removed["err"], removed
    assert blab.client.api.inspect_image(image)
    refused = blab.cli("bob", "publish", f"{alice}/tiny:v1")
    assert refused["code"] == 1 and "Only the lab's admins" in refused["err"], refused

    published = blab.cli("carol", "publish", f"{alice}/tiny:v1")
    assert published["code"] == 0, published
    assert f"{M.PUBLISHED_NAMESPACE}/{alice}/tiny:v1" in published["out"]
    launched = blab.agents["bob"].call("launch_json", sock=blab.broker.socket, spec=spec)
    blab.agents["bob"].call(
        "engine", sock=blab.broker.socket, method="remove", args=[launched["container_id"]]
    )
    listed = json.loads(blab.cli("bob", "ls", "--json")["out"])
    assert any(row["id"] == image and row["published"] for row in listed)
    assert blab.cli("carol", "publish", "--withdraw", f"{alice}/tiny:v1")["code"] == 0
    with pytest.raises(PermissionRefused, match="not published"):
        blab.agents["bob"].call(
            "launch_json", sock=blab.broker.socket, spec=kernel_spec(image=image)
        )


def test_names_stay_in_the_members_namespace(blab: BuildLab) -> None:
    folder = blab.folder("bob", "ns", {"requirements.txt": "\n"})
    alice = blab.accounts["alice"].name
    for name in (f"{alice}/tiny", "../tiny", "Tiny", "x:v1", f"{M.USER_NAMESPACE}/{alice}/tiny"):
        refused = blab.cli("bob", "build", name, folder)
        assert refused["code"] != 0 and "cannot name a kernel" in refused["err"], refused
    with pytest.raises(Exception, match="cannot name a kernel"):
        blab.agents["bob"].call(
            "request", sock=blab.broker.socket, op="build",
            args={"name": f"../{alice}/tiny", "base": None, "size": 10},
        )  # fmt: skip
    assert M.member_component("ann_", 2001) == "ann.2001" and M.member_component("a-b", 1) == "a-b"
    assert M.member_component("ann-", 2002) == "ann.2002"


def test_one_build_per_member_at_a_time(blab: BuildLab) -> None:
    sock = blab.broker.socket
    agent = blab.agents["bob"]
    first = agent.call(
        "request", sock=sock, op="build", args={"name": "one", "base": None, "size": 10}
    )
    try:
        with pytest.raises(PermissionRefused, match="already have a kernel build running"):
            agent.call(
                "request", sock=sock, op="build", args={"name": "two", "base": None, "size": 10}
            )
        # Another member is not held up by it.
        other = blab.agents["carol"].call(
            "request", sock=sock, op="build", args={"name": "three", "base": None, "size": 10}
        )
        blab.agents["carol"].call(
            "request", sock=sock, op="build_cancel", args={"build": other["build"]}
        )
    finally:
        agent.call("request", sock=sock, op="build_cancel", args={"build": first["build"]})


def test_refused_files_say_why(blab: BuildLab) -> None:
    for name, reason in (("install.R", "CRAN"), ("runtime.txt", "another Python")):
        folder = blab.folder("bob", f"refused-{name}", {name: "x\n", "requirements.txt": "\n"})
        refused = blab.cli("bob", "build", "refused", folder)
        assert refused["code"] == 1 and reason in refused["err"], refused
    folder = blab.folder("bob", "conda", {"environment.yml": "dependencies: [numpy]\n"})
    refused = blab.cli("bob", "build", "conda", folder)
    assert refused["code"] == 1 and "has none" in refused["err"] and "conda" in refused["err"]
    assert not M.member_images(blab.client.api, blab.accounts["bob"].uid)


def test_quota_time_and_size_limits_and_dockerfiles_off_by_default(blab: BuildLab) -> None:
    limits = BrokerProcess(
        f"c.LaunchPolicy.network = {TEST_NETWORK!r}\n"
        "c.KernelBroker.reap_interval = 0\n"
        "c.BuildPolicy.quota = '3m'\n"
        "c.BuildPolicy.time_limit = 8.0\n"
        "c.BuildPolicy.max_context = '1m'\n"
        f"c.BuildPolicy.default_base = {KERNEL_IMAGE!r}\n"
    )
    limits.config.write_text(
        limits.config.read_text() + f"c.BuildPolicy.log_dir = '{limits.folder}/logs'\n"
    )
    bob = blab.accounts["bob"]
    try:
        limits.start()
        big = blab.folder("bob", "big", {"requirements.txt": "\n", "data.bin": os.urandom(1 << 21)})
        refused = blab.cli("bob", "build", "big", big, broker=limits)
        assert refused["code"] == 1 and "larger than 1 MiB" in refused["err"], refused

        heavy = blab.folder(
            "bob", "heavy", {"postBuild": "#!/bin/sh\nhead -c 6000000 /dev/urandom > /opt/big\n"}
        )
        refused = blab.cli("bob", "build", "heavy", heavy, broker=limits)
        assert refused["code"] == 1 and "quota" in refused["err"], refused

        slow = blab.folder("bob", "slow", {"postBuild": "#!/bin/sh\nsleep 120\n"})
        started = time.monotonic()
        refused = blab.cli("bob", "build", "slow", slow, broker=limits)
        assert refused["code"] == 1 and "took longer than 8 s," in refused["err"], refused
        assert time.monotonic() - started < 60
        assert "quota" in blab.cli("bob", "logs", "heavy", broker=limits)["out"]

        dockerfile = blab.folder("bob", "df", {"Dockerfile": f"FROM {KERNEL_IMAGE}\n"})
        refused = blab.cli("bob", "build", "df", dockerfile, broker=limits)
        assert refused["code"] == 1 and "not from a Dockerfile" in refused["err"], refused
    finally:
        limits.cleanup()
    assert not M.member_images(blab.client.api, bob.uid)
    assert not blab.client.containers.list(all=True, filters={"label": f"{L.OWNER_UID}={bob.uid}"})


def test_a_venv_in_the_home_is_a_kernel(blab: BuildLab, wheelhouse: dict[str, Path]) -> None:
    home = blab.home("alice")
    wheel = home / wheelhouse["venv"].name
    shutil.copy(wheelhouse["venv"], wheel)
    os.chown(wheel, blab.accounts["alice"].uid, blab.accounts["alice"].gid)
    agent = blab.agents["alice"]
    made = agent.call(
        "run", argv=["/usr/bin/python3", "-m", "venv", "--system-site-packages", f"{home}/venv"]
    )
    assert made["code"] == 0, made
    installed = agent.call(
        "run",
        argv=[f"{home}/venv/bin/python", "-m", "pip", "install", "-q", "--no-index", str(wheel)],
    )
    assert installed["code"] == 0, installed
    made = blab.cli("alice", "env", "myvenv", f"{home}/venv")
    assert made["code"] == 0, made
    ran = blab.run_kernel(
        "alice", "myvenv", "import sys, lnbtvenvpkg; print(lnbtvenvpkg.hello(), sys.prefix)"
    )
    assert ran["status"] == "ok" and "lnbtvenvpkg 1.0 says hello" in ran["stdout"], ran
    assert f"{home}/venv" in ran["stdout"]
    outside = blab.cli("alice", "env", "elsewhere", "/usr")
    assert outside["code"] == 2
