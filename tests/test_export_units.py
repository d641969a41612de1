"""The export's checks that need no engine: the broker's path and record checks, names in the
hub, which images saved notebooks name (also large ones, read from their tail)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from labnotebook.hub.broker_exports import check_record, check_target
from labnotebook.provisioner.errors import KernelConfigError, PermissionRefused
from labnotebook.provisioner.export import ExportRefused, hub_name
from labnotebook.provisioner.record import images_named, matching_images, recorded_image_id

HOME = "/home/alice"
ID = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    "path",
    [
        f"{HOME}/paper/analysis.ipynb",
        f"{HOME}/paper/data set/cohort 1.csv",
        "/home/shared/readonly/atlas/v2/x.nii",
    ],
)
def test_plain_paths_in_the_home_and_shared_are_kept(path: str) -> None:
    assert check_target(path, HOME) == path


@pytest.mark.parametrize(
    ("path", "error", "message"),
    [
        ("paper/x.csv", KernelConfigError, "absolute"),
        (f"{HOME}/../bob/x.csv", KernelConfigError, "not a plain path"),
        (f"{HOME}/./x.csv", KernelConfigError, "not a plain path"),
        (f"{HOME}//x.csv", KernelConfigError, "not a plain path"),
        (f"{HOME}/x\n.csv", KernelConfigError, "not a plain path"),
        ("/home/bob/x.csv", PermissionRefused, "outside your home"),
        ("/home/alice2/x.csv", PermissionRefused, "outside your home"),
        ("/etc/passwd", PermissionRefused, "outside your home"),
        (HOME, PermissionRefused, "outside your home"),
    ],
)
def test_the_broker_refuses_other_paths(path: str, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        check_target(path, HOME)


def test_the_broker_bounds_the_records_fields() -> None:
    argv = ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    good = {"image_id": ID, "image": "labnotebook/kernel-python:latest"}
    check_record({**good, "kernelspec": "python-docker", "language": "python", "kernel_argv": argv})
    for bad in (
        {"kernelspec": "x; rm -rf /"},
        {"language": "$(id)"},
        {"kernel_argv": "python3 -c evil"},
        {"kernel_argv": []},
        {"image": "x" * 600},
    ):
        with pytest.raises(KernelConfigError, match="unusable"):
            check_record({"image_id": ID, **bad})


def test_names_in_the_hub_are_versioned_kernel_names() -> None:
    assert hub_name(None, "/home/a/My Analysis (final).ipynb") == "my-analysis-final-export"
    assert hub_name("smith2026-figure3", "x.ipynb") == "smith2026-figure3"
    with pytest.raises(ExportRefused, match="give only the NAME"):
        hub_name("smith2026-figure3:v1", "x.ipynb")
    with pytest.raises(ExportRefused, match="--name"):
        hub_name("Figure_3", "x.ipynb")


def _notebook(image_id: str, padding: int = 0) -> str:
    cell = {"cell_type": "code", "source": "", "metadata": {}, "outputs": [],
            "execution_count": None, "pad": "x" * padding}  # fmt: skip
    return json.dumps(
        {"cells": [cell], "metadata": {"labnotebook": {"image": "i", "image_id": image_id}},
         "nbformat": 4, "nbformat_minor": 5}, indent=1, sort_keys=True,
    )  # fmt: skip


def test_images_named_by_saved_notebooks(tmp_path: Path) -> None:
    other = "sha256:" + "cd" * 32
    (tmp_path / "a").mkdir()
    (tmp_path / "a/one.ipynb").write_text(_notebook(ID))
    (tmp_path / "a/.ipynb_checkpoints").mkdir()
    (tmp_path / "a/.ipynb_checkpoints/one-checkpoint.ipynb").write_text(_notebook(other))
    big = tmp_path / "big.ipynb"
    big.write_text(_notebook(other, padding=9 << 20))  # past the full parse: read from the tail
    (tmp_path / "plain.ipynb").write_text("{}")
    assert recorded_image_id(big) == other
    named = images_named([tmp_path])
    assert named == {ID: [str(tmp_path / "a/one.ipynb")], other: [str(big)]}


def test_which_images_kernel_rm_means() -> None:
    rows = [
        {"id": "sha256:1", "name": "fig", "version": 1, "owner": "alice", "owner_uid": 1001,
         "tags": ["labnotebook-user/alice/fig:v1"]},
        {"id": "sha256:2", "name": "fig", "version": 2, "owner": "alice", "owner_uid": 1001,
         "tags": ["labnotebook-user/alice/fig:v2"]},
        {"id": "sha256:3", "name": "fig", "version": 1, "owner": "bob", "owner_uid": 1002,
         "tags": ["labnotebook-user/bob/fig:v1", "labnotebook-published/bob/fig:v1"]},
    ]  # fmt: skip

    def ids(reference: str) -> list[str]:
        return [r["id"] for r in matching_images(rows, reference, 1001)]

    assert ids("fig") == ["sha256:1", "sha256:2"]
    assert ids("fig:v2") == ["sha256:2"]
    assert ids("alice/fig:v1") == ["sha256:1"]
    assert ids("labnotebook-user/alice/fig:v2") == ["sha256:2"]
    assert ids("sha256:2") == ["sha256:2"]
    assert ids("bob/fig") == [] and ids("sha256:3") == []
