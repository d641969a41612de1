"""`labnotebook export`: a notebook run and saved through a real Jupyter server becomes an
image FROM the recorded image ID, which re-runs it with no network and proves the results."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import requests
from labnotebook.provisioner.record import RECORD_KEY

from .conftest import KERNEL_IMAGE, SESSION
from .notebook_server import (
    ALTERED_DATA,
    analysis_notebook,
    free_port,
    jupyter_server,
    make_workspace,
    run_and_save,
    write_kernelspec,
)

pytestmark = pytest.mark.docker
PREFIX = f"labnotebook-test-{SESSION}"
NOTEBOOK = "analysis/analysis.ipynb"


def export(home: Path, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "labnotebook.provisioner.cli", "export", *args],
        env={**os.environ, "HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=600,
        check=check,
    )


def run_image(client: docker.DockerClient, image: str, **kwargs: Any) -> tuple[int, str]:
    container = client.containers.run(image, detach=True, network_mode="none", **kwargs)
    try:
        code = container.wait(timeout=300)["StatusCode"]
        return code, container.logs().decode()
    finally:
        container.remove(force=True)


@pytest.fixture(scope="module")
def images(docker_client: Any) -> Iterator[list[str]]:
    """Names of images the tests make; removed afterwards."""
    made: list[str] = []
    yield made
    for name in reversed(made):
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(name, force=True)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, images: list[str]) -> dict[str, Any]:
    """A home whose analysis notebook was run on the rebuilt-later image and on the lab's."""
    client = docker.from_env()
    root = tmp_path_factory.mktemp("export")
    home = make_workspace(root)
    # An image the lab rebuilds later: version 1 now (with its immutable per-build tag, as
    # images/build.sh makes), version 2 after the notebook ran.
    moving = f"{PREFIX}-kernel:latest"
    v1, _ = client.images.build(
        fileobj=_dockerfile(f"FROM {KERNEL_IMAGE}\nLABEL org.opencontainers.image.version=1\n"),
        tag=moving,
        rm=True,
    )
    client.api.tag(v1.id, f"{PREFIX}-kernel", "build-1")
    images += [moving, f"{PREFIX}-kernel:build-1"]
    write_kernelspec(root / "jupyter", "docker-lab", KERNEL_IMAGE, home)
    write_kernelspec(root / "jupyter", "docker-moving", moving, home)
    with jupyter_server(home, root / "jupyter") as server:
        run_and_save(server, NOTEBOOK, "docker-lab")
        run_and_save(server, "analysis/rebuilt.ipynb", "docker-moving")
        server.save("analysis/never-run.ipynb", analysis_notebook())
    client.images.build(
        fileobj=_dockerfile(f"FROM {KERNEL_IMAGE}\nLABEL org.opencontainers.image.version=2\n"),
        tag=moving,
        rm=True,
    )
    name = f"{PREFIX}-export:v1"
    started = time.perf_counter()
    result = export(
        home, str(home / NOTEBOOK), "--data", str(home / "analysis/data"), "--name", name
    )
    images.append(name)
    assert result.returncode == 0, result.stdout + result.stderr
    return {
        "home": home,
        "image": name,
        "output": result.stdout,
        "seconds": time.perf_counter() - started,
        "v1": v1.id,
        "client": client,
    }


def _dockerfile(text: str) -> Any:
    import io

    return io.BytesIO(text.encode())


def test_export_is_built_from_the_recorded_image_with_only_the_named_files(lab: dict) -> None:
    client, home = lab["client"], lab["home"]
    record = json.loads((home / NOTEBOOK).read_text())["metadata"][RECORD_KEY]
    image = client.images.get(lab["image"])
    labels = image.labels
    assert record["image"] == KERNEL_IMAGE
    assert labels["org.labnotebook.export.base-image-id"] == record["image_id"]
    assert record["image_id"] in image.history()[-1]["Id"] or any(
        layer["Id"] == record["image_id"] for layer in image.history()
    )
    # What went in is listed, with sizes, and the reminder to de-identify.
    out = lab["output"]
    assert f"{home / NOTEBOOK}" in out
    assert f"{home / 'analysis/data/measurements.csv'}" in out
    assert "identif" in out
    # Non-root, owning its files; nothing else from the home (never-run.ipynb, rebuilt.ipynb).
    assert image.attrs["Config"]["User"] == "1000:1000"
    code, listing = run_image(
        client,
        lab["image"],
        entrypoint=["sh", "-c", f"id -u; find {home} -type f -exec stat -c '%u %n' {{}} +"],
    )
    assert code == 0, listing
    lines = listing.split()
    assert lines[0] == "1000"
    files = sorted(listing.splitlines()[1:])
    assert files == sorted(
        [f"1000 {home / NOTEBOOK}", f"1000 {home / 'analysis/data/measurements.csv'}"]
    )


def test_export_reproduces_with_no_network(lab: dict) -> None:
    code, logs = run_image(lab["client"], lab["image"])
    assert code == 0, logs
    assert "REPRODUCED" in logs
    assert "differs" not in logs


def test_export_check_runs_as_the_brokers_does(lab: dict) -> None:
    """`--check` on a laptop: the image's own check in the same bounded container as the
    broker's (no network, no capabilities), its lines shown as they come; nothing is left."""
    from labnotebook.provisioner.export import EngineBuilder

    client = lab["client"]
    lines: list[str] = []
    code = EngineBuilder().check(lab["image"], lines.append)
    assert code == 0, "\n".join(lines)
    assert any("REPRODUCED" in line for line in lines)
    assert all(line.startswith("  ") for line in lines)
    assert not client.containers.list(all=True, filters={"ancestor": lab["image"]})


def test_altered_data_reports_exactly_the_differing_cells(lab: dict, tmp_path: Path) -> None:
    altered = tmp_path / "measurements.csv"
    altered.write_text(ALTERED_DATA)
    altered.chmod(0o644)
    tmp_path.chmod(0o755)
    target = str(lab["home"] / "analysis/data/measurements.csv")
    code, logs = run_image(
        lab["client"],
        lab["image"],
        volumes={str(altered): {"bind": target, "mode": "ro"}},
        entrypoint=["sh", "-c", '"$0" "$@" check; s=$?; cat /reproduce/report.json; exit $s'],
        command=["/opt/labnotebook-export/bin/python", "/opt/labnotebook-export/reproduce.py"],
    )
    assert code == 1, logs
    report = json.loads(logs[logs.index('{\n "notebook"') :])
    statuses = {c["cell"]: c["status"] for c in report["cells"]}
    # print(df) and df.describe() differ; the plot's pixels are reported, not failed; the
    # Line2D repr, the warning with its temporary paths and the row count match; the
    # volatile clock cell differs without failing.
    assert [c for c, s in statuses.items() if s == "differs"] == [1, 2]
    assert statuses[3] == "images-differ"
    assert statuses[4] == statuses[5] == statuses[0] == "match"
    assert statuses[6] == "volatile"
    assert report["reproduced"] is False
    assert "NOT REPRODUCED: cells 1, 2 differ." in logs


def test_export_of_a_rebuilt_image_uses_the_old_id(lab: dict, images: list[str]) -> None:
    client, home = lab["client"], lab["home"]
    record = json.loads((home / "analysis/rebuilt.ipynb").read_text())["metadata"][RECORD_KEY]
    assert record["image_id"] == lab["v1"]
    assert client.images.get(f"{PREFIX}-kernel:latest").id != lab["v1"]  # rebuilt since
    name = f"{PREFIX}-rebuilt:1"
    images.append(name)
    result = export(home, str(home / "analysis/rebuilt.ipynb"), "--data", "analysis/data",
                    "--name", name)  # fmt: skip
    # A relative --data path is taken from where the command runs: here not the home.
    assert result.returncode == 1 and "analysis/data" in result.stderr
    result = subprocess.run(
        [sys.executable, "-m", "labnotebook.provisioner.cli", "export", "rebuilt.ipynb",
         "--data", "data/measurements.csv", "--name", name],
        env={**os.environ, "HOME": str(home)}, cwd=home / "analysis",
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    exported = client.images.get(name)
    assert exported.labels["org.labnotebook.export.base-image-id"] == lab["v1"]
    assert exported.labels["org.opencontainers.image.version"] == "1"


def _no_new_images(client: docker.DockerClient, run: Any) -> subprocess.CompletedProcess[str]:
    # Other work may run on the same engine: count what an export could leave, exports.
    exports = {"label": "org.labnotebook.export.notebook"}
    before = {i.id for i in client.images.list(all=True, filters=exports)}
    result = run()
    assert {i.id for i in client.images.list(all=True, filters=exports)} == before
    assert result.returncode == 1
    return result


def test_refusals_leave_nothing_behind(lab: dict, tmp_path: Path) -> None:
    client, home = lab["client"], lab["home"]
    name = f"{PREFIX}-refused"
    # No record: the notebook was saved but never run on a Docker kernel.
    r = _no_new_images(
        client, lambda: export(home, str(home / "analysis/never-run.ipynb"), "--name", name)
    )
    assert "records no kernel image" in r.stderr
    # The recorded image is gone.
    gone = json.loads((home / NOTEBOOK).read_text())
    gone["metadata"][RECORD_KEY]["image_id"] = "sha256:" + "0" * 64
    (home / "analysis/gone.ipynb").write_text(json.dumps(gone))
    r = _no_new_images(client, lambda: export(home, str(home / "analysis/gone.ipynb")))
    assert "is gone" in r.stderr and "re-run the notebook" in r.stderr
    # A data file outside the home, directly or through a symlink.
    r = _no_new_images(
        client, lambda: export(home, str(home / NOTEBOOK), "--data", "/etc/hostname")
    )
    assert "outside your home" in r.stderr
    (home / "analysis/sneaky").symlink_to("/etc/hostname")
    r = _no_new_images(
        client, lambda: export(home, str(home / NOTEBOOK), "--data", str(home / "analysis/sneaky"))
    )
    assert "outside your home" in r.stderr
    (home / "analysis/sneaky").unlink()
    assert not list(Path.cwd().glob("*-export"))


def test_a_file_the_member_cannot_read_is_refused(lab: dict) -> None:
    """As a member (not root, who reads everything): the refusal comes before the engine."""
    # A home the member can enter (pytest's own folders are root's only).
    home = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-member-"))
    home.chmod(0o755)
    (home / "analysis").mkdir(mode=0o755)
    shutil.copy(lab["home"] / NOTEBOOK, home / NOTEBOOK)
    (home / NOTEBOOK).chmod(0o644)
    secret = home / "analysis/secret.csv"
    secret.write_text("name\nsomeone\n")
    secret.chmod(0o600)
    try:
        uid = 4243 if os.getuid() == 0 else os.getuid()
        if os.getuid() != 0 and os.access(secret, os.R_OK):
            pytest.skip("needs a file this user cannot read: run as root")
        code = (
            # Imported as root (this Python's files are root's), then the member's UID.
            "import os, sys\n"
            "from labnotebook.provisioner import cli, engine, export\n"
            f"args = cli.parser().parse_args(['export', {str(home / NOTEBOOK)!r}, "
            f"'--data', {str(secret)!r}])\n"
            f"os.setgroups([]); os.setgid({uid}); os.setuid({uid})\n"
            "try:\n    sys.exit(args.run(args))\n"
            "except export.ExportRefused as e:\n    sys.exit(f'error: {e}')\n"
        )
        r = subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "HOME": str(home)},
            capture_output=True,
            text=True,
            timeout=60,
            cwd="/",
        )
        if r.returncode != 0 and "Permission denied" in r.stderr and "python" in r.stderr:
            pytest.skip(f"this Python cannot run as UID {uid}: {r.stderr[-200:]}")
        assert r.returncode == 1, r.stdout + r.stderr
        assert "Cannot read" in r.stderr and "permission denied" in r.stderr
    finally:
        shutil.rmtree(home)


def test_serve_answers_with_its_token_only(lab: dict) -> None:
    client = lab["client"]
    port = free_port()
    container = client.containers.run(
        lab["image"],
        ["serve"],
        detach=True,
        environment={"JUPYTER_TOKEN": "reproduce-me"},
        ports={"8888/tcp": ("127.0.0.1", port)},
    )
    try:
        url = f"http://127.0.0.1:{port}/api/status"
        deadline = time.monotonic() + 90
        while True:
            try:
                answer = requests.get(url, params={"token": "reproduce-me"}, timeout=2)
                if answer.status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, container.logs().decode()[-2000:]
            time.sleep(0.5)
        assert requests.get(url, timeout=5).status_code == 403
        assert requests.get(url, params={"token": "wrong"}, timeout=5).status_code == 403
        lab_page = requests.get(
            f"http://127.0.0.1:{port}/lab", params={"token": "reproduce-me"}, timeout=10
        )
        assert lab_page.status_code == 200 and "JupyterLab" in lab_page.text
    finally:
        container.remove(force=True)


def test_archive_and_reproducing_md(lab: dict, tmp_path: Path) -> None:
    home = lab["home"]
    out = tmp_path / "deposit"
    result = export(
        home,
        str(home / NOTEBOOK),
        "--data",
        str(home / "analysis/data"),
        "--name",
        lab["image"],
        "--archive",
        "--output",
        str(out),
        "--compress-level",
        "1",
    )
    assert result.returncode == 0, result.stderr
    tarball = out / f"{lab['image'].replace(':', '-')}.tar.gz"
    with gzip.open(tarball) as f:
        manifest_seen = False
        import tarfile

        with tarfile.open(fileobj=f, mode="r|") as tar:
            for member in tar:
                if member.name == "manifest.json":
                    manifest = json.loads(tar.extractfile(member).read())  # type: ignore[union-attr]
                    manifest_seen = lab["image"] in manifest[0]["RepoTags"]
                    break
    assert manifest_seen
    text = (out / "REPRODUCING.md").read_text()
    assert f"docker load -i {tarball.name}" in text
    assert f"docker run --rm --network none {lab['image']}" in text
    assert "labnotebook:volatile" in text and "0x" in text
    assert not list(out.glob("*.partial"))
