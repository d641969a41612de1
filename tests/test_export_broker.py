"""`labnotebook export` in the lab: through a real root broker, as a real non-root member.

The analysis notebook is run and saved on the lab's kernel image by a real Jupyter server
(notebook_server.py), then put in a member's home. The member exports it through the broker:
the image lands in the member's namespace, runs with `--network none` and reproduces; its
archive is written by the member's own process. Refusals - no record, the image gone, a file
the member cannot read, a path outside the home, a path the broker must not accept, a second
build at once - leave no image and no build container behind.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
from labnotebook.provisioner import labels as L
from labnotebook.provisioner import member_images as M
from labnotebook.provisioner.errors import KernelConfigError, PermissionRefused
from labnotebook.provisioner.export import HUB_IMAGE, EngineBuilder
from labnotebook.provisioner.record import RECORD_KEY

from .broker_fixtures import Account, BrokerProcess, UserAgent, create_account, delete_account
from .conftest import KERNEL_IMAGE, SESSION, SESSION_LABEL, TEST_NETWORK
from .notebook_server import (
    ALTERED_DATA,
    DATA,
    jupyter_server,
    make_workspace,
    run_and_save,
    write_kernelspec,
)
from .test_broker_engine import needs_root
from .test_kernel_builds import _remove_member_images

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1200)]  # builds on a shared engine
NOTEBOOK = "paper/analysis.ipynb"


@dataclass
class ExportLab:
    broker: BrokerProcess
    accounts: dict[str, Account]
    agents: dict[str, UserAgent]
    client: docker.DockerClient
    record: dict[str, Any]

    def home(self, who: str = "alice") -> Path:
        return Path(self.accounts[who].home)

    def export(self, *argv: str, who: str = "alice") -> dict[str, Any]:
        return self.agents[who].call(
            "cli",
            argv=["export", "--broker-socket", self.broker.socket, *argv],
            cwd=str(self.home(who)),
        )

    def request(self, op: str, who: str = "alice", **args: Any) -> Any:
        return self.agents[who].call("request", sock=self.broker.socket, op=op, args=args)

    def leftovers(self, who: str = "alice") -> set[str]:
        """What an export of `who` could leave: images and build containers of theirs."""
        uid = str(self.accounts[who].uid)
        images = self.client.api.images(all=True, filters={"label": f"{L.OWNER_UID}={uid}"})
        containers = self.client.api.containers(all=True, filters={"label": f"{L.OWNER_UID}={uid}"})
        return {i["Id"] for i in images} | {c["Id"] for c in containers}

    def put(self, who: str, relative: str, content: str | bytes, mode: int = 0o644) -> Path:
        """A file in a member's home, owned by the member (folders too)."""
        path = self.home(who) / relative
        account = self.accounts[who]
        for folder in reversed(path.relative_to(self.home(who)).parents):
            target = self.home(who) / folder
            target.mkdir(exist_ok=True)
            os.chown(target, account.uid, account.gid)
        (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)  # type: ignore[operator]
        os.chown(path, account.uid, account.gid)
        path.chmod(mode)
        return path


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The analysis notebook, run and saved on the lab's kernel image by a real server."""
    root = tmp_path_factory.mktemp("recorded")
    home = make_workspace(root)
    write_kernelspec(root / "jupyter", "docker-lab", KERNEL_IMAGE, home)
    with jupyter_server(home, root / "jupyter") as server:
        saved, _ = run_and_save(server, "analysis/analysis.ipynb", "docker-lab")
    return saved


@pytest.fixture(scope="module")
def xlab(docker_client: docker.DockerClient, recorded: dict[str, Any]) -> Iterator[ExportLab]:
    needs_root()
    tag = SESSION[:6]
    homes = Path(tempfile.mkdtemp(prefix="lnbtest-xhomes-"))
    homes.chmod(0o755)
    # The broker's wheelhouse: root's, from the hub image, as the hub has it.
    wheels = Path(tempfile.mkdtemp(prefix="lnbtest-xwheels-"))
    found = EngineBuilder().wheelhouse_from_image(HUB_IMAGE, wheels)
    assert found is not None, f"{HUB_IMAGE} has no wheelhouse: `make hub-image` first"
    accounts: dict[str, Account] = {}
    agents: dict[str, UserAgent] = {}
    broker = None
    try:
        for who in ("alice", "bob"):
            account = create_account(f"lnbtest{who[0]}x{tag}")
            accounts[who] = account
            home = homes / account.name
            (home / "data" / "kernels").mkdir(parents=True)
            for path in (home, home / "data", home / "data" / "kernels"):
                os.chown(path, account.uid, account.gid)
            home.chmod(0o700)
            subprocess.run(["usermod", "-d", str(home), account.name], check=True)
            account.home = str(home)
        broker = BrokerProcess(
            f"c.LaunchPolicy.network = {TEST_NETWORK!r}\n"
            f"c.LaunchPolicy.lab_mounts = ['{homes}:{homes}']\n"
            f"c.LaunchPolicy.allowed_labels = ['{SESSION_LABEL}']\n"
            "c.KernelBroker.reap_interval = 0\n"
            f"c.BuildPolicy.default_base = {KERNEL_IMAGE!r}\n"
            f"c.ExportPolicy.wheelhouse = '{found}'\n"
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
                    "LNBTEST_SCENARIOS": "tests.export_broker_scenarios",
                    "JUPYTER_DATA_DIR": f"{account.home}/data",
                },
            )
        lab = ExportLab(broker, accounts, agents, docker_client, recorded["metadata"][RECORD_KEY])
        lab.put("alice", NOTEBOOK, json.dumps(recorded))
        lab.put("alice", "paper/data/measurements.csv", DATA)
        lab.put("alice", "paper/notes-not-exported.txt", "private\n")
        yield lab
    finally:
        for agent in agents.values():
            agent.close()
        if broker is not None:
            print(broker.log_text()[-20000:])
            broker.cleanup()
        _remove_member_images(docker_client, [a.uid for a in accounts.values()])
        for account in accounts.values():
            delete_account(account)
        shutil.rmtree(homes, ignore_errors=True)
        shutil.rmtree(wheels, ignore_errors=True)


@pytest.fixture(scope="module")
def exported(xlab: ExportLab) -> dict[str, Any]:
    started = time.perf_counter()
    result = xlab.export(
        NOTEBOOK,
        "--data",
        "paper/data/measurements.csv",
        "--name",
        "figure3",
        "--archive",
        "--output",
        "deposit",
        "--compress-level",
        "1",
        "--check",
        "--json",
    )
    assert result["code"] == 0, result
    out = result["out"]
    return {
        "result": json.loads(out[out.index("{\n") :]),
        "out": out,
        "seconds": time.perf_counter() - started,
    }


def test_the_export_lands_in_the_members_namespace_from_the_recorded_image(
    xlab: ExportLab, exported: dict[str, Any]
) -> None:
    alice = xlab.accounts["alice"]
    result = exported["result"]
    assert result["image"] == f"{M.USER_NAMESPACE}/{alice.name}/figure3:v1"
    # --check: the broker re-ran it with no network, and the member saw it reproduce.
    assert result["reproduced"] is True and "Reproduced: every required" in exported["out"]
    assert result["base_image_id"] == xlab.record["image_id"]
    print(f"export through the broker: {exported['seconds']:.0f} s (archive included)")
    details = xlab.client.api.inspect_image(result["image"])
    labels = details["Config"]["Labels"]
    assert labels[L.OWNER_UID] == str(alice.uid) and labels[L.OWNER] == alice.name
    assert labels["org.labnotebook.export.base-image-id"] == xlab.record["image_id"]
    assert labels[M.BASE] == xlab.record["image_id"]
    assert details["Config"]["User"] == "1000:1000"
    # The recorded image is the parent: FROM exactly that ID.
    history = xlab.client.api.history(result["image"])
    assert any(h["Id"] == xlab.record["image_id"] for h in history)
    # The member sees it with their kernel images.
    listed = xlab.request("images")
    assert any(r["id"] == details["Id"] and r["name"] == "figure3" for r in listed)
    # What went in is listed with sizes, and a reminder about identifying data.
    assert "measurements.csv" in exported["out"] and "identifies people" in exported["out"]
    assert {f["path"] for f in result["files"]} == {
        str(xlab.home() / NOTEBOOK),
        str(xlab.home() / "paper/data/measurements.csv"),
    }


def test_the_export_reproduces_with_no_network(xlab: ExportLab, exported: dict[str, Any]) -> None:
    image = exported["result"]["image"]
    run = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", image],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "match" in run.stdout
    # Only the named files, owned by the export's user; nothing else of the home.
    home = xlab.home()
    check = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "--entrypoint", "/bin/sh", image, "-c",
         f"stat -c %u {home / 'paper/data/measurements.csv'} {home / NOTEBOOK}; "
         f"test -e {home / 'paper/notes-not-exported.txt'} && echo LEAKED; id -u"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert check.stdout.split() == ["1000", "1000", "1000"], check.stdout + check.stderr


def test_the_archive_is_written_by_the_member(xlab: ExportLab, exported: dict[str, Any]) -> None:
    alice = xlab.accounts["alice"]
    folder = xlab.home() / "deposit"
    tarball = Path(exported["result"]["archive"])
    assert tarball.parent.resolve() == folder.resolve() and tarball.stat().st_uid == alice.uid
    reproducing = (folder / "REPRODUCING.md").read_text()
    assert f"docker run --rm --network none {exported['result']['image']}" in reproducing
    assert folder.stat().st_uid == alice.uid
    with gzip.open(tarball) as raw, tarfile.open(fileobj=raw, mode="r|") as tar:
        manifest = None
        for member in tar:
            if member.name == "manifest.json":
                extracted = tar.extractfile(member)
                assert extracted is not None
                manifest = json.loads(extracted.read())
    assert manifest and manifest[0]["RepoTags"] == [exported["result"]["image"]]


def test_altered_data_is_reported_by_the_check(xlab: ExportLab, exported: dict[str, Any]) -> None:
    """The same notebook with its data file altered: the check names the cells that differ,
    and the command exits 3."""
    xlab.put("alice", "altered/analysis.ipynb", (xlab.home() / NOTEBOOK).read_text())
    xlab.put("alice", "altered/data/measurements.csv", ALTERED_DATA)
    result = xlab.export(
        "altered/analysis.ipynb", "--data", "altered/data", "--name", "altered", "--check"
    )
    assert result["code"] == 3, result
    assert "NOT reproduced" in result["out"]
    assert "differs" in result["out"]


def _refused(xlab: ExportLab, *argv: str) -> str:
    before = xlab.leftovers()
    result = xlab.export(*argv)
    assert result["code"] == 1, result
    assert xlab.leftovers() == before
    return str(result["err"])


def test_refusals_leave_nothing_behind(xlab: ExportLab, exported: dict[str, Any]) -> None:
    # No record: a notebook never run on a Docker kernel.
    never = json.loads((xlab.home() / NOTEBOOK).read_text())
    del never["metadata"][RECORD_KEY]
    xlab.put("alice", "paper/never-run.ipynb", json.dumps(never))
    err = _refused(xlab, "paper/never-run.ipynb")
    assert "records no kernel image" in err
    # The recorded image is gone from the lab's engine.
    gone = json.loads((xlab.home() / NOTEBOOK).read_text())
    gone["metadata"][RECORD_KEY]["image_id"] = "sha256:" + "0" * 64
    xlab.put("alice", "paper/gone.ipynb", json.dumps(gone))
    err = _refused(xlab, "paper/gone.ipynb")
    assert "is gone from the lab's engine" in err and "re-run the notebook" in err
    # A --data file the member cannot read (root's, in her own home).
    secret = xlab.home() / "paper/data/secret.csv"
    secret.write_text("name\nsomeone\n")
    secret.chmod(0o600)
    err = _refused(xlab, NOTEBOOK, "--data", "paper/data/secret.csv")
    assert "Cannot read" in err and "permission denied" in err
    # Outside the home: directly, and through a symlink.
    err = _refused(xlab, NOTEBOOK, "--data", "/etc/hostname")
    assert "outside your home" in err
    link = xlab.home() / "paper/sneaky"
    link.symlink_to("/etc/hostname")
    err = _refused(xlab, NOTEBOOK, "--data", "paper/sneaky")
    assert "outside your home" in err
    link.unlink()
    # A name with a tag: in the lab versions are numbered.
    err = _refused(xlab, NOTEBOOK, "--name", "figure3:final")
    assert "give only the" in err
    assert not (xlab.home() / "figure3-export").exists()


def test_the_broker_checks_what_the_member_process_could_forge(
    xlab: ExportLab, exported: dict[str, Any]
) -> None:
    """A member's process talking to the broker directly: the broker's own checks."""
    image_id = xlab.record["image_id"]
    notebook = str(xlab.home() / NOTEBOOK)
    before = xlab.leftovers()
    for path in ("/etc/passwd", f"{xlab.home()}/../{xlab.accounts['bob'].name}/x.ipynb"):
        with pytest.raises((PermissionRefused, KernelConfigError)):
            xlab.request("export", name="forged", image=image_id, notebook=path, size=10)
    # bob's home is not alice's, whatever the files say.
    with pytest.raises(PermissionRefused, match="outside your home"):
        xlab.request(
            "export",
            name="forged",
            image=image_id,
            notebook=str(xlab.home("bob") / "x.ipynb"),
            size=10,
        )

    def forged(entries: list[tarfile.TarInfo], data: dict[str, bytes]) -> str:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for info in entries:
                content = data.get(info.name)
                tar.addfile(info, io.BytesIO(content) if content is not None else None)
        packed = buffer.getvalue()
        begun = xlab.request(
            "export", name="forged", image=image_id, notebook=notebook, size=len(packed)
        )
        xlab.request(
            "export_data",
            export=begun["export"],
            data=base64.b64encode(packed).decode(),
            last=True,
        )
        while True:
            status = xlab.request("export_status", export=begun["export"], since=0, wait=5)
            if status["done"]:
                return str(status.get("message"))

    content = (xlab.home() / NOTEBOOK).read_bytes()
    nb = tarfile.TarInfo(notebook.lstrip("/"))
    nb.size = len(content)
    link = tarfile.TarInfo(notebook.lstrip("/").replace("analysis.ipynb", "shadow"))
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/shadow"
    message = forged([nb, link], {nb.name: content})
    assert "only regular files" in message
    up = tarfile.TarInfo(notebook.lstrip("/").replace("analysis.ipynb", "../../../etc/cron.d/x"))
    up.size = 1
    message = forged([nb, up], {nb.name: content, up.name: b"x"})
    assert "not a plain path" in message
    assert xlab.leftovers() == before


def test_one_build_or_export_per_member_at_a_time(
    xlab: ExportLab, exported: dict[str, Any]
) -> None:
    image_id = xlab.record["image_id"]
    notebook = str(xlab.home() / NOTEBOOK)
    begun = xlab.request("export", name="held", image=image_id, notebook=notebook, size=100)
    try:
        with pytest.raises(PermissionRefused, match="one per member at a time"):
            xlab.request("export", name="second", image=image_id, notebook=notebook, size=100)
        folder = xlab.put("alice", "kernels/k/requirements.txt", "lnbtnothing==1.0\n").parent
        built = xlab.agents["alice"].call(
            "cli", argv=["kernel", "--broker-socket", xlab.broker.socket, "build", "k", str(folder)]
        )
        assert built["code"] == 1 and "already have" in built["err"], built
    finally:
        xlab.request("export_cancel", export=begun["export"])
    # Another member is not held up by alice's.
    begun = xlab.request("export", name="held", image=image_id, notebook=notebook, size=100)
    try:
        other = xlab.request(
            "export", who="bob", name="b", image=image_id,
            notebook=f"{xlab.home('bob')}/n.ipynb", size=1,
        )  # fmt: skip
        xlab.request("export_cancel", who="bob", export=other["export"])
    finally:
        xlab.request("export_cancel", export=begun["export"])


def test_a_build_begun_after_an_export_does_not_cancel_its_check(xlab: ExportLab) -> None:
    """A kernel build's start lets go of the member's finished jobs. The export's check, run
    after it (export_check on the same export), must not find itself cancelled by that: each
    job stops only by its own cancel (once, an export's placeholder in the build table shared
    the export's cancel, and the build's start set it)."""
    notebook = xlab.home() / NOTEBOOK
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in (notebook, xlab.home() / "paper/data/measurements.csv"):
            content = path.read_bytes()
            info = tarfile.TarInfo(str(path).lstrip("/"))
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    packed = buffer.getvalue()

    def finished(export: str, since: int = 0) -> dict[str, Any]:
        while True:
            status = xlab.request("export_status", export=export, since=since, wait=5)
            since = status["next"]
            if status["done"]:
                return dict(status)

    begun = xlab.request(
        "export", name="recheck", image=xlab.record["image_id"], notebook=str(notebook),
        size=len(packed),
    )  # fmt: skip
    export = begun["export"]
    xlab.request("export_data", export=export, data=base64.b64encode(packed).decode(), last=True)
    built = finished(export)
    assert not built.get("error"), built
    # A build begins (dropping the member's finished jobs) and is stopped.
    build = xlab.request("build", name="between", base=None, size=10)
    xlab.request("build_cancel", build=build["build"])
    started = xlab.request("export_check", export=export)
    checked = finished(export, int(started["next"]))
    assert not checked.get("error"), checked
    assert checked["result"]["check_exit"] == 0, checked
    # The check held the member's one slot while it ran, and let go of it.
    again = xlab.request("build", name="between", base=None, size=10)
    xlab.request("build_cancel", build=again["build"])


def test_kernel_ls_marks_images_saved_notebooks_name_and_rm_needs_force(
    xlab: ExportLab, exported: dict[str, Any]
) -> None:
    """An image a saved notebook records (here the export, run and saved as a notebook would
    be) is marked by `kernel ls`; removing it names the notebook and needs --force."""
    image_id = xlab.client.api.inspect_image(exported["result"]["image"])["Id"]
    nb = json.loads((xlab.home() / NOTEBOOK).read_text())
    nb["metadata"][RECORD_KEY]["image_id"] = image_id
    saved = xlab.put("alice", "later/rerun.ipynb", json.dumps(nb))
    sock = xlab.broker.socket
    listed = xlab.agents["alice"].call("cli", argv=["kernel", "--broker-socket", sock, "ls"])
    line = next(x for x in listed["out"].splitlines() if x.startswith("figure3"))
    assert "named by 1 saved notebook(s)" in line, listed
    as_json = xlab.agents["alice"].call(
        "cli", argv=["kernel", "--broker-socket", sock, "ls", "--json"]
    )
    rows = json.loads(as_json["out"])
    assert next(r for r in rows if r["id"] == image_id)["notebooks"] == [str(saved)]
    refused = xlab.agents["alice"].call(
        "cli", argv=["kernel", "--broker-socket", sock, "rm", "figure3:v1"]
    )
    assert refused["code"] == 1 and str(saved) in refused["err"] and "--force" in refused["err"]
    xlab.client.api.inspect_image(image_id)  # still there
    forced = xlab.agents["alice"].call(
        "cli", argv=["kernel", "--broker-socket", sock, "rm", "figure3:v1", "--force"]
    )
    assert forced["code"] == 0, forced
    with pytest.raises(docker.errors.ImageNotFound):
        xlab.client.api.inspect_image(image_id)
