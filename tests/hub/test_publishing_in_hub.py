"""Publishing an analysis in the hub: the record at save, the export in a terminal, the check.

On the session's hub (see conftest.py; this file runs after test_kernel_builds_in_hub.py's
story): alice uploads a data file and creates a notebook through the contents API, opens a
session on it with the lab's Python kernel and runs its cells, and saves it as JupyterLab
does - the save records the kernel container's image ID in metadata.labnotebook. In a
JupyterLab terminal she runs `labnotebook export` (through the broker: she has no engine);
the image lands in her namespace and, run from the host with no network, re-runs the notebook
and reproduces every output.
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from typing import Any

import nbformat
import pytest
from labnotebook.provisioner import labels as L

from ..notebook_server import DATA, analysis_notebook
from .conftest import Lab, run
from .hubclient import HubUser

pytestmark = [pytest.mark.hub, pytest.mark.docker]

FOLDER = "paper2026"
NOTEBOOK = f"{FOLDER}/analysis.ipynb"
NAME = "hubfigure"


def _put(user: HubUser, path: str, model: dict[str, Any]) -> dict[str, Any]:
    reply = user.server_api("PUT", f"contents/{path}", json=model)
    assert reply.status_code in (200, 201), reply.text
    return dict(reply.json())


def _outputs(messages: list[dict[str, Any]]) -> list[Any]:
    """A cell's outputs from its iopub messages, as JupyterLab keeps them."""
    kinds = ("stream", "display_data", "execute_result", "error")
    return [nbformat.v4.output_from_msg(m) for m in messages if m["msg_type"] in kinds]


@pytest.fixture(scope="module")
def saved(lab: Lab, alice: HubUser) -> Iterator[dict[str, Any]]:
    """alice's analysis, run on the lab's kernel in a session and saved; the kernel's image."""
    alice.start_server()
    for folder in (FOLDER, f"{FOLDER}/data"):
        _put(alice, folder, {"type": "directory"})
    data = base64.b64encode(DATA.encode()).decode()
    _put(
        alice,
        f"{FOLDER}/data/measurements.csv",
        {"type": "file", "format": "base64", "content": data},
    )
    nb = analysis_notebook()
    _put(alice, NOTEBOOK, {"type": "notebook", "format": "json", "content": nb})
    body = {"path": NOTEBOOK, "type": "notebook", "name": "", "kernel": {"name": "python-docker"}}
    reply = alice.server_api("POST", "sessions", json=body)
    assert reply.status_code == 201, reply.text
    session = reply.json()
    kernel = session["kernel"]["id"]
    try:
        # The kernel's container, and the image it really runs.
        container = run(
            "docker", "ps", "-q", "--filter", f"label={L.KERNEL_ID}={kernel}",
        ).stdout.split()  # fmt: skip
        assert len(container) == 1, container
        image_id = run("docker", "inspect", "-f", "{{.Image}}", container[0]).stdout.strip()
        for count, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
            result = alice.execute(kernel, cell.source, timeout=120)
            assert result.status == "ok", (cell.source, result)
            cell.outputs = _outputs(result.messages)
            cell.execution_count = count + 1
        _put(alice, NOTEBOOK, {"type": "notebook", "format": "json", "content": nb})
    finally:
        alice.server_api("DELETE", f"sessions/{session['id']}")
    reply = alice.server_api("GET", f"contents/{NOTEBOOK}", params={"content": 1})
    assert reply.status_code == 200, reply.text
    image = f"labnotebook-user/alice/{NAME}:v1"
    try:
        yield {"notebook": reply.json()["content"], "image_id": image_id, "image": image}
    finally:
        run("docker", "image", "rm", "-f", image, check=False)


@pytest.mark.timeout(1500)  # the first test here may start the session's hub (an image build)
def test_the_save_records_the_kernels_image(saved: dict[str, Any]) -> None:
    record = saved["notebook"]["metadata"]["labnotebook"]
    assert record["image_id"] == saved["image_id"], record
    assert record["image"] == "labnotebook/kernel-python:latest"
    assert record["kernelspec"] == "python-docker"


@pytest.mark.timeout(900)
def test_a_terminal_export_reproduces_with_no_network(
    saved: dict[str, Any], alice: HubUser
) -> None:
    # The marker is computed by the shell, so the echoed command line never matches it.
    command = (
        f"cd ~/{FOLDER} && labnotebook export analysis.ipynb --data data/measurements.csv "
        f'--name {NAME} --check; echo "rc=$? =[$((6*7))]"'
    )
    screen = alice.terminal(command, until="=[42]", timeout=840)
    print(screen)
    assert "rc=0 =[42]" in screen, screen[-3000:]
    assert f"Built {saved['image']}" in screen
    assert "/home/alice/paper2026/data/measurements.csv" in screen  # the listing
    # --check: the lab ran it for her (she has no engine), and she saw it reproduce.
    assert "Reproduced: every required output matches" in screen
    labels = json.loads(
        run("docker", "inspect", "-f", "{{json .Config.Labels}}", saved["image"]).stdout
    )
    assert labels["org.labnotebook.export.base-image-id"] == saved["image_id"]
    assert labels["org.labnotebook.owner"] == "alice"
    check = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", saved["image"]],
        capture_output=True,
        text=True,
        timeout=600,
    )
    print(check.stdout + check.stderr)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "match" in check.stdout
