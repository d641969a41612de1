"""Saved notebooks record the kernel image they ran on: a real Jupyter server with the server
extension, real Docker kernels, notebooks run and saved the way JupyterLab does it."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from labnotebook.provisioner import __version__
from labnotebook.provisioner.record import RECORD_KEY, merged, newest

from .conftest import KERNEL_IMAGE
from .notebook_server import (
    Server,
    analysis_notebook,
    jupyter_server,
    make_workspace,
    run_and_save,
    write_kernelspec,
)

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def lab(
    tmp_path_factory: pytest.TempPathFactory, docker_client: Any
) -> Iterator[tuple[Server, Path]]:
    root = tmp_path_factory.mktemp("record")
    home = make_workspace(root)
    write_kernelspec(root / "jupyter", "docker-record", KERNEL_IMAGE, home)
    with jupyter_server(home, root / "jupyter") as server:
        yield server, home


@pytest.fixture(scope="module")
def recorded(lab: tuple[Server, Path]) -> dict[str, Any]:
    server, _ = lab
    saved, _ = run_and_save(server, "analysis/analysis.ipynb", "docker-record", end=False)
    return saved


def test_saved_notebook_names_the_image_it_ran_on(recorded: dict[str, Any]) -> None:
    image = docker.from_env().images.get(KERNEL_IMAGE)
    record = recorded["metadata"][RECORD_KEY]
    assert record["image"] == KERNEL_IMAGE
    assert record["image_id"] == image.id  # the immutable ID, not the moving tag
    assert record["repo_digests"] == sorted(image.attrs.get("RepoDigests") or [])
    assert record["labels"]["org.opencontainers.image.title"] == "labnotebook Python kernel"
    assert record["labels"]["org.labnotebook.kernel"] == "python3"
    assert all(k.startswith(("org.labnotebook.", "org.opencontainers.")) for k in record["labels"])
    assert record["kernelspec"] == "docker-record"
    assert record["kernel_argv"][:3] == ["python3", "-m", "ipykernel_launcher"]
    assert record["gpus"] == "auto"
    assert record["provisioner_version"] == __version__
    assert record["recorded_at"].endswith("Z")
    # The analysis really ran in the container: the data file was read.
    assert "4 rows" in recorded["cells"][5]["outputs"][0]["text"]


def test_autosaves_do_not_churn_the_record(lab: tuple[Server, Path], recorded: dict) -> None:
    server, home = lab
    path = "analysis/analysis.ipynb"
    before = (home / path).read_bytes()
    # The client's copy never saw the record (JupyterLab keeps its own metadata).
    client_copy = copy.deepcopy(recorded)
    del client_copy["metadata"][RECORD_KEY]
    server.save(path, client_copy)
    assert (home / path).read_bytes() == before


def test_a_save_without_a_kernel_keeps_the_last_record(
    lab: tuple[Server, Path], recorded: dict
) -> None:
    server, _ = lab
    path = "analysis/kept.ipynb"
    saved, _ = run_and_save(server, path, "docker-record")  # ends the session
    record = saved["metadata"][RECORD_KEY]
    edited = copy.deepcopy(saved)
    del edited["metadata"][RECORD_KEY]
    edited["cells"][0]["source"] += "\n# edited later, kernel shut down"
    server.save(path, edited)
    again = server.load(path)
    assert again["metadata"][RECORD_KEY] == record
    assert again["cells"][0]["source"].endswith("kernel shut down")


def test_unrelated_notebook_is_saved_as_it_came(lab: tuple[Server, Path]) -> None:
    server, _ = lab
    nb = analysis_notebook()
    nb.metadata["custom"] = {"keep": [1, 2]}
    server.save("unrelated.ipynb", nb)
    saved = server.load("unrelated.ipynb")
    assert RECORD_KEY not in saved["metadata"]
    assert saved["metadata"] == nb.metadata
    assert [c["source"] for c in saved["cells"]] == [c.source for c in nb.cells]


def test_record_merging_keeps_time_unless_the_image_changes() -> None:
    old = {"image_id": "sha256:aa", "recorded_at": "2026-01-01T00:00:00Z", "gpus": "auto"}
    same = {"image_id": "sha256:aa", "recorded_at": "2026-02-02T00:00:00Z", "gpus": "all"}
    other = {"image_id": "sha256:bb", "recorded_at": "2026-02-02T00:00:00Z"}
    assert merged(old, same) == {**same, "recorded_at": "2026-01-01T00:00:00Z"}
    assert merged(old, other) == other
    assert newest(old, None, other, {"no": "id"}) == other
    assert newest(None, {"no": "id"}) is None
