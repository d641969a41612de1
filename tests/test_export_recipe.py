"""The export recipe (provisioner/export_recipe.py): its shell text is safe whatever the names,
homes and paths, and a laptop's Dockerfile and the broker's build container make the same
image from it.

The setup script runs in a real `sh` here, with its absolute paths moved into a temporary
folder and the commands that would install things (python3, pip, chown) recording their
arguments instead: every hostile value must arrive as exactly one argument, and nothing in it
may run.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shlex
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
from labnotebook.hub.broker_exports import ExportJob, ExportPolicy, ExportService
from labnotebook.provisioner import export_recipe as X
from labnotebook.provisioner.build_container import BuildLog
from labnotebook.provisioner.errors import KernelConfigError
from labnotebook.provisioner.export import pack_files, plan_export
from labnotebook.provisioner.record import RECORD_KEY

from .conftest import SESSION

IMAGE_ID = "sha256:" + "ab" * 32
HOSTILE = 'it\'s "q" $(touch {root}/pwned) `touch {root}/pwned2` ;& |x \\ end $HOME'
HOSTILE_ARGV = [
    "python3",
    "-c",
    "$(touch {root}/pwned3) `id` 'single' \"double\"\n; echo newline",
    "{connection_file}",
]


def _plan(home: str, *, record: dict[str, Any] | None = None) -> X.ExportPlan:
    notebook = X.Item(f"{home}/paper/nb.ipynb", f"{home}/paper/nb.ipynb", 10)
    return X.ExportPlan(
        notebook=notebook,
        record={"image_id": IMAGE_ID, "image": "lab/kernel:1", **(record or {})},
        data=[],
        name="x:latest",
        home=home,
    )


def _recorder(path: Path, calls: Path, body: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        f"with open({str(calls)!r}, 'a') as f:\n"
        "    f.write(json.dumps([os.path.basename(sys.argv[0]), *sys.argv[1:]]) + '\\n')\n" + body
    )
    path.chmod(0o755)


def _run_setup(script: str, root: Path) -> tuple[list[list[str]], subprocess.CompletedProcess]:
    """The script in a real sh, with its absolute paths under `root`; the recorded calls."""
    for real, moved in (
        (X.EXPORT_PREFIX, f"{root}/prefix"),
        (X.TOOLS_DIR, f"{root}/tools"),
        ("/etc/passwd", f"{root}/passwd"),
        ("/etc/group", f"{root}/group"),
        (" /reproduce", f" {root}/reproduce"),
    ):
        script = script.replace(real, moved)
    calls = root / "calls.jsonl"
    bin_dir = root / "bin"
    # `python3 -m venv PREFIX` makes PREFIX/bin/pip and PREFIX/bin/python: recorders too.
    venv = (
        "if sys.argv[1:3] == ['-m', 'venv']:\n"
        "    import shutil\n"
        "    os.makedirs(sys.argv[3] + '/bin')\n"
        "    for name in ('pip', 'python'):\n"
        "        recorder = sys.argv[0].replace('python3', 'recorder')\n"
        "        shutil.copy(recorder, sys.argv[3] + '/bin/' + name)\n"
    )
    _recorder(bin_dir / "python3", calls, venv)
    _recorder(bin_dir / "recorder", calls)
    _recorder(bin_dir / "chown", calls)
    (root / "tools").mkdir()
    (root / "tools/reproduce.py").write_text("# reproduce\n")
    (root / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "group").write_text("root:x:0:\n")
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": "/nonexistent"}
    done = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True)
    recorded = [json.loads(line) for line in calls.read_text().splitlines()]
    return recorded, done


def test_the_setup_script_passes_hostile_values_as_single_words(tmp_path: Path) -> None:
    root = tmp_path
    home = f"{root}/home/" + HOSTILE.format(root=root)
    argv = [a.replace("{root}", str(root)) for a in HOSTILE_ARGV]
    language = "c++ # not a comment"
    plan = _plan(home, record={"kernelspec": "k-1.x", "language": language, "kernel_argv": argv})
    script = X.setup_script(plan)
    subprocess.run(["sh", "-n", "-c", script], check=True)  # it parses
    calls, done = _run_setup(script, root)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "==> Runner installed" in done.stdout
    prefix = f"{root}/prefix"
    assert calls[0] == ["python3", "-m", "venv", prefix]
    assert calls[1][0] == "pip" and calls[1][-3:] == list(X.RUNNER_PACKAGES)
    assert calls[2] == [
        "python", f"{prefix}/reproduce.py", "install-kernelspec", "k-1.x", language,
        json.dumps(argv),
    ]  # fmt: skip
    assert json.loads(calls[2][-1]) == argv
    assert calls[3] == ["chown", f"{X.EXPORT_UID}:{X.EXPORT_UID}", home, f"{root}/reproduce"]
    passwd = (root / "passwd").read_text().splitlines()
    assert passwd[-1] == f"researcher:x:1000:1000:researcher:{home}:/bin/sh"
    assert (root / "group").read_text().splitlines()[-1] == "researcher:x:1000:"
    assert Path(home).is_dir() and (root / "reproduce").is_dir()
    assert not [p for p in root.iterdir() if p.name.startswith("pwned")]
    assert not (root / "tools").exists()  # the tools go
    # The same words as Python's own shell lexer reads them.
    line = next(x for x in script.splitlines() if x.startswith("mkdir -p"))
    assert shlex.split(line) == [
        "mkdir", "-p", home, "/reproduce", "&&", "chown", "1000:1000", home, "/reproduce",
    ]  # fmt: skip


@pytest.mark.parametrize("home", ["/home/a:b", "/home/a\nroot::0:0::/:/bin/sh", "/home/a\tb"])
def test_a_home_that_would_break_etc_passwd_is_refused(tmp_path: Path, home: str) -> None:
    with pytest.raises(X.ExportRefused, match="/etc/passwd"):
        X.setup_script(_plan(home))


@pytest.mark.parametrize(
    "record", [{"kernelspec": "$(id)"}, {"language": "`id`"}, {"kernel_argv": "id"}]
)
def test_records_the_recipe_cannot_carry_are_refused(tmp_path: Path, record: dict) -> None:
    with pytest.raises(KernelConfigError, match="unusable"):
        X.setup_script(_plan("/home/alice", record=record))


def test_the_dockerfile_runs_the_one_setup_script_and_quotes_its_words(tmp_path: Path) -> None:
    home = "/home/" + HOSTILE.format(root="/tmp")
    plan = _plan(home)
    text = X.dockerfile(plan)
    assert f"RUN {json.dumps(X.SETUP_COMMAND)}" in text
    assert "ADD tools.tar" in text and "ADD files.tar /" in text
    workdir = next(x for x in text.splitlines() if x.startswith("WORKDIR "))
    assert "\\$(touch" in workdir and '\\"q\\"' in workdir and "\\\\ end" in workdir
    with pytest.raises(X.ExportRefused, match="control character"):
        X.dockerfile(_plan("/home/a\nRUN id"))
    bad = _plan("/home/alice")
    bad.record["image_id"] = IMAGE_ID + "\nRUN id"
    with pytest.raises(X.ExportRefused, match="not an image ID"):
        X.dockerfile(bad)


def _entries(tar_bytes: bytes) -> list[tuple[Any, ...]]:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        rows = []
        for m in tar.getmembers():
            content = tar.extractfile(m).read() if m.isfile() else b""  # type: ignore[union-attr]
            rows.append((m.name, m.type, m.uid, m.gid, m.mode, m.size, int(m.mtime), content))
        return rows


def _workspace(tmp_path: Path) -> tuple[Path, Path]:
    """A home whose folder and file names a Dockerfile or a shell could misread."""
    home = tmp_path / "home" / "alice x"
    paper = home / 'pa"per \\ $HOME'
    (paper / "data set").mkdir(parents=True)
    notebook = {
        "cells": [], "nbformat": 4, "nbformat_minor": 5,
        "metadata": {RECORD_KEY: {"image_id": IMAGE_ID, "image": "lab/k:1",
                                  "kernelspec": "python3", "language": "python"}},
    }  # fmt: skip
    (paper / "it's $(x).ipynb").write_text(json.dumps(notebook))
    (paper / "data set" / 'a "b".csv').write_text("x\n1\n")
    return home, paper / "it's $(x).ipynb"


def test_the_laptop_and_the_broker_make_the_same_files_script_and_config(
    tmp_path: Path,
) -> None:
    """The same notebook planned by the member's process and re-planned by the broker from
    what that process sends: the same files layer, setup script and configuration."""
    home, notebook = _workspace(tmp_path)
    local = plan_export(str(notebook), [str(notebook.parent / "data set")], "x", str(home))
    local_files = io.BytesIO()
    X.image_files(local, local_files)
    sent = io.BytesIO()
    pack_files(local, sent)
    service = ExportService(None, ExportPolicy(), logging.getLogger("test"))  # type: ignore[arg-type]
    job = ExportJob(
        uid=1000, username="alice", home=str(home), name="x", image_id=IMAGE_ID,
        notebook=str(notebook), size=len(sent.getvalue()), file=sent, log=BuildLog(),
    )  # fmt: skip
    broker_files = io.BytesIO()
    remote, _ = service._plan(job, broker_files)
    remote.name, remote.created = local.name, local.created
    assert _entries(broker_files.getvalue()) == _entries(local_files.getvalue())
    assert X.setup_script(remote) == X.setup_script(local)
    assert X.image_config(remote) == X.image_config(local)
    entries = _entries(local_files.getvalue())
    # Everything below the top folder is the export user's; the top folder stays the image's.
    assert {uid for _, _, uid, *_ in entries} == {X.EXPORT_UID}
    names = {name for name, *_ in entries}
    top = str(home).lstrip("/").split("/")[0]
    assert top not in names and str(home).lstrip("/") in names
    assert str(notebook.parent / "data set" / 'a "b".csv').lstrip("/") in names


@pytest.mark.docker
def test_the_dockerfile_gives_the_image_the_config_the_broker_commits(tmp_path: Path) -> None:
    """A laptop's Dockerfile of a plan with hostile paths, built by the real engine (with a
    stand-in setup step): its configuration is image_config's, which the broker commits, and
    its files land at their paths, owned by the export's user."""
    client = docker.from_env()
    try:
        base = client.api.inspect_image("labnotebook/base:bookworm")
    except docker.errors.ImageNotFound:
        pytest.skip("no labnotebook/base:bookworm image")
    home, notebook = _workspace(tmp_path)
    plan = plan_export(str(notebook), [str(notebook.parent / "data set")], "x", str(home))
    plan.record["image_id"] = base["Id"]
    tag = f"labnotebook-test-recipe-{SESSION}:1"
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add("Dockerfile", X.dockerfile(plan).encode())
        tools = io.BytesIO()
        with tarfile.open(fileobj=tools, mode="w") as inner:
            script = b"echo a stand-in for the setup\n"
            info = tarfile.TarInfo("setup.sh")
            info.size = len(script)
            inner.addfile(info, io.BytesIO(script))
        add("tools.tar", tools.getvalue())
        files = io.BytesIO()
        X.image_files(plan, files)
        add("files.tar", files.getvalue())
    context.seek(0)
    try:
        for chunk in client.api.build(
            fileobj=context, custom_context=True, tag=tag, rm=True, forcerm=True, decode=True
        ):
            assert "error" not in chunk, chunk
        config = client.api.inspect_image(tag)["Config"]
        expected = X.image_config(plan)
        assert config["User"] == expected["User"]
        assert config["WorkingDir"] == expected["WorkingDir"]
        assert set(expected["Env"]) <= set(config["Env"])
        assert config["Entrypoint"] == expected["Entrypoint"]
        assert config["Cmd"] == expected["Cmd"]
        assert config["ExposedPorts"] == expected["ExposedPorts"]
        assert expected["Labels"].items() <= config["Labels"].items()
        container = client.api.create_container(tag, command=["true"])["Id"]
        try:
            stream, _ = client.api.get_archive(container, str(notebook))
            with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
                [member] = tar.getmembers()
                assert member.uid == X.EXPORT_UID
                assert tar.extractfile(member).read() == notebook.read_bytes()  # type: ignore[union-attr]
        finally:
            client.api.remove_container(container, force=True)
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):
            client.api.remove_image(tag, force=True)
