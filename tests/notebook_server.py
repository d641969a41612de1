"""A real Jupyter server with the labnotebook provisioner and server extension, driven as
JupyterLab drives it: contents API to save, sessions API to start a kernel, the kernel's
websocket to execute cells. Used by test_record.py, test_export.py and the benchmark."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nbformat
import requests
import websocket

from .conftest import SESSION, SESSION_LABEL, TEST_IDENTITY, TEST_NETWORK

EXTENSION = "labnotebook.provisioner.server_extension"
EXTENSION_CONFIG = (
    Path(__file__).resolve().parent.parent / "provisioner" / "labnotebook-server-extension.json"
)

# The analysis of the issue: reads a data file, prints a DataFrame, a bare plot (its repr
# holds an address), a warning (its location is a temporary path, its message holds one).
ANALYSIS_CELLS: list[tuple[str, list[str]]] = [
    ("import tempfile, warnings\nimport pandas as pd\nimport matplotlib.pyplot as plt", []),
    ('df = pd.read_csv("data/measurements.csv")\nprint(df)', []),
    ("df.describe()", []),
    ('plt.plot(df["x"], df["y"])', []),
    ('warnings.warn(f"scratch files kept in {tempfile.mkdtemp()}")', []),
    ("print(len(df), 'rows')", []),
    ("import time\nprint(time.time())", ["labnotebook:volatile"]),
]
DATA = "x,y\n1,2.5\n2,3.9\n3,6.1\n4,8.2\n"
ALTERED_DATA = "x,y\n1,2.5\n2,3.9\n3,6.7\n4,8.2\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def analysis_notebook() -> Any:
    nb = nbformat.v4.new_notebook()
    for source, tags in ANALYSIS_CELLS:
        cell = nbformat.v4.new_code_cell(source)
        if tags:
            cell.metadata["tags"] = tags
        nb.cells.append(cell)
    return nb


def make_workspace(root: Path) -> Path:
    """A home with analysis/data/measurements.csv that the kernel's user (another UID when
    the suite runs as root) can read."""
    home = root / "home"
    data = home / "analysis" / "data"
    data.mkdir(parents=True)
    for folder in (root, home, home / "analysis", data):
        folder.chmod(0o777)
    (data / "measurements.csv").write_text(DATA)
    (data / "measurements.csv").chmod(0o644)
    return home


def write_kernelspec(folder: Path, name: str, image: str, home: Path) -> None:
    config = {
        "image": image,
        "network": TEST_NETWORK,
        "labels": {SESSION_LABEL: SESSION},
        "volumes": [f"{home}:{home}"],
        **(TEST_IDENTITY if os.getuid() == 0 else {}),
    }
    spec = {
        "argv": ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"Test {name}",
        "language": "python",
        "interrupt_mode": "signal",
        "metadata": {
            "kernel_provisioner": {"provisioner_name": "labnotebook-docker", "config": config},
            "supported_encryption": ["curve"],
        },
    }
    (folder / "kernels" / name).mkdir(parents=True, exist_ok=True)
    (folder / "kernels" / name / "kernel.json").write_text(json.dumps(spec))


class Server:
    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"token {token}"

    def save(self, path: str, nb: Any) -> dict[str, Any]:
        body = {"type": "notebook", "format": "json", "content": nb}
        r = self.http.put(f"{self.url}/api/contents/{path}", json=body, timeout=30)
        r.raise_for_status()
        return dict(r.json())

    def load(self, path: str) -> dict[str, Any]:
        r = self.http.get(f"{self.url}/api/contents/{path}", params={"content": 1}, timeout=30)
        r.raise_for_status()
        return dict(r.json()["content"])

    def start_session(self, path: str, kernel: str) -> dict[str, Any]:
        body = {"path": path, "type": "notebook", "name": "", "kernel": {"name": kernel}}
        r = self.http.post(f"{self.url}/api/sessions", json=body, timeout=180)
        r.raise_for_status()
        return dict(r.json())

    def end_session(self, session: dict[str, Any]) -> None:
        self.http.delete(f"{self.url}/api/sessions/{session['id']}", timeout=60).raise_for_status()

    def execute(self, kernel_id: str, nb: Any, timeout: float = 120) -> None:
        """Run every code cell of `nb` in the kernel, filling in outputs as JupyterLab does."""
        ws_url = self.url.replace("http", "ws", 1) + f"/api/kernels/{kernel_id}/channels"
        ws = websocket.create_connection(
            ws_url, header=[f"Authorization: token {self.token}"], timeout=timeout
        )
        try:
            for count, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
                msg_id = uuid.uuid4().hex
                ws.send(json.dumps(_execute_request(msg_id, cell.source)))
                cell.outputs = []
                while True:
                    msg = json.loads(ws.recv())
                    if msg.get("parent_header", {}).get("msg_id") != msg_id:
                        continue
                    kind = msg["msg_type"]
                    if msg["channel"] == "iopub" and kind in (
                        "stream",
                        "display_data",
                        "execute_result",
                        "error",
                    ):
                        cell.outputs.append(nbformat.v4.output_from_msg(msg))
                    elif kind == "status" and msg["content"]["execution_state"] == "idle":
                        break
                cell.execution_count = count + 1
        finally:
            ws.close()


def _execute_request(msg_id: str, code: str) -> dict[str, Any]:
    return {
        "header": {
            "msg_id": msg_id,
            "msg_type": "execute_request",
            "username": "test",
            "session": uuid.uuid4().hex,
            "version": "5.3",
            "date": "",
        },
        "parent_header": {},
        "metadata": {},
        "channel": "shell",
        "content": {
            "code": code,
            "silent": False,
            "store_history": True,
            "user_expressions": {},
            "allow_stdin": False,
            "stop_on_error": True,
        },
        "buffers": [],
    }


@contextmanager
def jupyter_server(
    root: Path, config_dir: Path, extension: bool = True, log: Path | None = None
) -> Iterator[Server]:
    """`jupyter server` on a free port with our provisioner (and the recording extension)."""
    port, token = free_port(), uuid.uuid4().hex
    env = {
        **os.environ,
        "JUPYTER_PATH": str(config_dir),
        "JUPYTER_CONFIG_DIR": str(config_dir / "config"),
        "JUPYTER_RUNTIME_DIR": str(config_dir / "runtime"),
        "JUPYTER_PLATFORM_DIRS": "1",
    }
    argv = [
        sys.executable,
        "-m",
        "jupyter_server",
        "--no-browser",
        f"--port={port}",
        "--ip=127.0.0.1",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--KernelSpecManager.ensure_native_kernel=False",
        "--allow-root",
    ]
    if extension:
        # The very file the package installs into etc/jupyter/jupyter_server_config.d.
        dropins = config_dir / "config" / "jupyter_server_config.d"
        dropins.mkdir(parents=True, exist_ok=True)
        shutil.copy(EXTENSION_CONFIG, dropins / EXTENSION_CONFIG.name)
    out = open(log or config_dir / "server.log", "wb")  # noqa: SIM115 - closed below
    server = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{url}/api/status", params={"token": token}, timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    "jupyter server did not start:\n" + Path(out.name).read_text()[-3000:]
                )
            time.sleep(0.2)
        yield Server(url, token)
    finally:
        server.terminate()  # SIGTERM: the server shuts its kernels down first
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        out.close()


def run_and_save(
    server: Server, path: str, kernel: str, nb: Any | None = None, end: bool = True
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Save `nb` (the analysis by default), run it on `kernel` through the server and save
    it again, as a person would in JupyterLab. Returns (saved notebook, session)."""
    nb = nb if nb is not None else analysis_notebook()
    server.save(path, nb)
    session = server.start_session(path, kernel)
    server.execute(session["kernel"]["id"], nb)
    server.save(path, nb)
    saved = server.load(path)
    if end:
        server.end_session(session)
    return saved, session
