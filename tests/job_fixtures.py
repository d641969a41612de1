"""What the notebook-job tests share: a runner image from this work tree, a root broker with
real accounts whose homes the broker and the containers see at the same path, notebooks.

The broker runs on this machine as root (as in tests/test_broker_engine.py), and reads the
member's notebook from her home as root, as it does in the hub. So the homes are a host
folder mounted at the same path in every container (`lab_mounts = ['H:H']`), and each test
account's home is in it.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from .broker_fixtures import REPO

BASE_HUB_IMAGE = os.environ.get("LABNOTEBOOK_HUB_IMAGE", "labnotebook/hub:latest")
CA_BUNDLE = Path(os.environ.get("EXTRA_CA_CERT", "/etc/ssl/certs/ca-certificates.crt"))

RUNNER_DOCKERFILE = """\
FROM {base}
COPY ca.crt /tmp/ca.crt
RUN python3 -c "import papermill, croniter" 2>/dev/null \\
 || PIP_CERT=/tmp/ca.crt pip install --no-cache-dir -q 'papermill>=2.6' 'croniter>=2'
COPY src /tmp/src
RUN pip install --no-cache-dir -q --no-deps /tmp/src && rm -rf /tmp/src /tmp/ca.crt \\
 && python3 -c "import labnotebook.provisioner.job_runner, papermill"
"""


def build_runner_image(tag: str) -> float:
    """The hub's image with this work tree's labnotebook (and papermill, if it lacks it), as
    `tag`; the seconds it took."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lnbtest-runner-") as context:
        root = Path(context)
        (root / "Dockerfile").write_text(RUNNER_DOCKERFILE.format(base=BASE_HUB_IMAGE))
        shutil.copy(CA_BUNDLE, root / "ca.crt")
        for part in ("pyproject.toml", "README.md", "provisioner", "hub", "kernelspecs"):
            source = REPO / part
            if source.is_dir():
                shutil.copytree(
                    source, root / "src" / part, ignore=shutil.ignore_patterns("__pycache__")
                )
            else:
                (root / "src").mkdir(exist_ok=True)
                shutil.copy(source, root / "src" / part)
        subprocess.run(
            ["docker", "build", "-q", "-t", tag, str(root)], check=True, capture_output=True
        )
    return time.perf_counter() - started


def write_notebook(
    path: Path,
    cells: list[str],
    owner: pwd.struct_passwd,
    parameters: str | None = None,
    kernel: str = "python-docker",
) -> Path:
    """A notebook of code cells (`parameters`: the source of a cell tagged 'parameters',
    first), owned by `owner`."""
    import nbformat

    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": kernel, "display_name": kernel, "language": "python"}
    if parameters is not None:
        cell = nbformat.v4.new_code_cell(parameters)
        cell.metadata["tags"] = ["parameters"]
        notebook.cells.append(cell)
    notebook.cells += [nbformat.v4.new_code_cell(source) for source in cells]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, str(path))
    os.chown(path, owner.pw_uid, owner.pw_gid)
    return path


def lab_kernelspec(image: str, network: str, labels: dict[str, str], **config: Any) -> dict:
    """A Docker kernelspec like the lab's python-docker."""
    return {
        "argv": ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (Docker)",
        "language": "python",
        "interrupt_mode": "signal",
        "metadata": {
            "kernel_provisioner": {
                "provisioner_name": "labnotebook-docker",
                "config": {"image": image, "network": network, "labels": labels, **config},
            },
            "supported_encryption": ["curve"],
        },
    }


def install_kernelspec(folder: Path, name: str, spec: dict, owner: pwd.struct_passwd) -> None:
    target = folder / name
    target.mkdir(parents=True, exist_ok=True)
    (target / "kernel.json").write_text(json.dumps(spec))
    for path in (folder, target, target / "kernel.json"):
        os.chown(path, owner.pw_uid, owner.pw_gid)
