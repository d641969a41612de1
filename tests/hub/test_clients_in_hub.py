"""Every Jupyter client a member starts in the hub gets the lab's Docker kernels (issue 18).

As alice, on the session's hub (conftest.py): `jupyter nbconvert --execute`, `papermill -p`
and `jupyter console` typed into a real JupyterLab terminal (the server's terminals
websocket, as the page does); `jupyter kernel` with a client attached, and her own Python
with jupyter_client's KernelManager in a login shell like the terminal's (`docker exec -u alice -w
FOLDER ... bash -l`: the terminal is a login shell, whose PATH /etc/profile sets). Each on the
lab's default kernel and on a kernel she built with `labnotebook kernel build`, whose
kernelspec names only its image.

Each kernel, while it runs, waits for the test to look at it: its container (the hostname it
reports) is a kernel of the lab's, alice's, on the lab's network, running the kernelspec's
image. It reports the notebook's folder as its working folder and reads a file beside the
notebook, and its container is gone when the client has exited. A hostile working folder
(another member's, through `..` or a link, or outside the homes) gives her only her home,
and a socket of hers posing as the broker gets nothing.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import nbformat
import pytest

from .conftest import Lab, run
from .hubclient import HubUser

pytestmark = [pytest.mark.hub, pytest.mark.docker, pytest.mark.timeout(1500)]

BUILT = "clientsk"
DEFAULT = "python-docker"
FOLDER = "/home/alice/batch"
HANDSHAKE = "/home/alice/.client-handshakes"
DATA = "beside the notebook"

PROBE = """
import json, os, pathlib, socket, time
here = pathlib.Path({handshake!r}) / {tag!r}
here.with_suffix(".running").write_text(socket.gethostname())
for _ in range(1800):  # the test looks at this kernel's container, then says go
    if here.with_suffix(".go").exists():
        break
    time.sleep(0.1)
print("PROBE " + json.dumps({{"tag": {tag!r}, "cwd": os.getcwd(), "host": socket.gethostname(),
    "uid": os.getuid(), "data": open("data/input.txt").read().strip(), "marker": marker}}))
"""


def probe(tag: str) -> str:
    return PROBE.format(handshake=HANDSHAKE, tag=tag)


def one_line(code: str) -> str:
    """Code for a prompt that reads one line at a time (`jupyter console --simple-prompt`)."""
    encoded = base64.b64encode(code.encode()).decode()
    return f"import base64; exec(base64.b64decode('{encoded}').decode())"


def login_shell(lab: Lab, command: str, folder: str = FOLDER) -> subprocess.CompletedProcess[str]:
    """`command` as alice types it in her terminal: a login shell in `folder`, with the
    terminal's user variables (HOME, USER, LOGNAME, LANG; /etc/profile sets PATH)."""
    return run(
        "docker", "exec", "-u", "alice", "-w", folder,
        "-e", "HOME=/home/alice", "-e", "USER=alice", "-e", "LOGNAME=alice",
        "-e", "LANG=C.UTF-8", "-e", "SHELL=/bin/bash",
        lab.name, "bash", "-lc", command, check=False,
    )  # fmt: skip


def write_as_alice(lab: Lab, path: str, text: str) -> None:
    lab.exec("sh", "-c", f"mkdir -p \"$(dirname '{path}')\" && cat > '{path}'", user="alice",
             stdin=text)  # fmt: skip


@dataclass
class Kernels:
    uid: int
    image: dict[str, str]
    """kernelspec name -> the image its kernels must run (an ID for hers)."""


@pytest.fixture(scope="module")
def kernels(lab: Lab, alice: HubUser) -> Iterator[Kernels]:
    """alice's server (for her terminal), her folder, and her kernel, built once: a postBuild
    that does nothing, from the lab's Python image. Her image is removed at the end."""
    alice.start_server()
    alice.api_token()  # made once, before the threads share the session
    lab.exec("sh", "-c", f"mkdir -p {FOLDER}/data {HANDSHAKE} && echo '{DATA}' > "
             f"{FOLDER}/data/input.txt", user="alice")  # fmt: skip
    built = login_shell(
        lab,
        f"mkdir -p ~/kernels/{BUILT} && cd ~/kernels/{BUILT} && printf '#!/bin/sh\\ntrue\\n' "
        f"> postBuild && chmod +x postBuild && labnotebook kernel build {BUILT}",
    )
    assert built.returncode == 0, built.stdout + built.stderr
    spec_file = f"/home/alice/.local/share/jupyter/kernels/{BUILT}/kernel.json"
    spec = json.loads(lab.exec("cat", spec_file).stdout)
    config = spec["metadata"]["kernel_provisioner"]["config"]
    assert set(config) == {"image"}, config  # no broker, network or mounts in hers
    lab_spec = json.loads(lab.exec("cat", "/usr/local/share/jupyter/kernels/python-docker/"
                                   "kernel.json").stdout)  # fmt: skip
    lab_image = lab_spec["metadata"]["kernel_provisioner"]["config"]["image"]
    uid = int(lab.exec("id", "-u", "alice").stdout)
    try:
        yield Kernels(uid, {DEFAULT: lab_image, BUILT: config["image"]})
    finally:
        run("docker", "image", "rm", "-f", config["image"], check=False)


@dataclass
class Seen:
    """What the test saw of one kernel: its container while it ran, and its report."""

    container: dict[str, Any]
    report: dict[str, Any]
    output: str


def looked_at(lab: Lab, tag: str, start: Callable[[], str], timeout: float = 300) -> Seen:
    """Start a client (`start` returns its output when it exits); when its kernel says it is
    running, inspect the kernel's container, then let the kernel go on."""
    result: dict[str, str] = {}

    def client() -> None:
        try:
            result["output"] = start()
        except BaseException as e:  # reported below, with what the client printed
            result["output"] = f"the client failed: {e!r}"

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    host = ""
    while not host and time.monotonic() < deadline and thread.is_alive():
        answer = lab.exec("cat", f"{HANDSHAKE}/{tag}.running", user="alice", check=False)
        host = answer.stdout.strip() if answer.returncode == 0 else ""
        if not host:
            time.sleep(0.3)
    container: dict[str, Any] = {}
    if host:
        inspected = run("docker", "inspect", host, check=False)
        container = json.loads(inspected.stdout)[0] if inspected.returncode == 0 else {}
        lab.exec("touch", f"{HANDSHAKE}/{tag}.go", user="alice")
    thread.join(max(1.0, deadline - time.monotonic()))
    output = result.get("output", "the client did not exit in time")
    assert host, f"{tag}: the kernel never ran. The client said:\n{output[-3000:]}"
    # Anywhere in a line: after a prompt (`In [1]: `), or the terminal's last prompt.
    reports = re.findall(r"PROBE (\{.*\})", output)
    report = json.loads(reports[-1]) if reports else {}
    return Seen(container, report, output)


def notebook(tag: str, kernel: str) -> str:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": kernel, "display_name": kernel, "language": "python"}
    parameters = nbformat.v4.new_code_cell('marker = "as written"')
    parameters.metadata["tags"] = ["parameters"]
    nb.cells = [parameters, nbformat.v4.new_code_cell(probe(tag))]
    return nbformat.writes(nb)


def report_in(lab: Lab, path: str) -> str:
    """The probe's line from an executed notebook, for `looked_at`."""
    text = lab.exec("cat", path, user="alice", check=False).stdout
    try:
        outputs = [o for c in nbformat.reads(text, 4).cells for o in c.get("outputs", [])]
    except Exception:
        return text
    return "".join(o.get("text", "") for o in outputs)


def in_terminal(alice: HubUser, command: str) -> str:
    marker = '"rc=$? =[$((6*7))]"'
    return alice.terminal(f"cd {FOLDER} && {command}; echo {marker}", until="=[42]", timeout=400)


def nbconvert(lab: Lab, alice: HubUser, tag: str, kernel: str) -> Callable[[], str]:
    """The notebook beside her, by its relative name: nbclient then asks for no folder."""
    write_as_alice(lab, f"{FOLDER}/{tag}.ipynb", notebook(tag, kernel))

    def start() -> str:
        screen = in_terminal(alice, f"jupyter nbconvert --to notebook --execute {tag}.ipynb")
        return screen + report_in(lab, f"{FOLDER}/{tag}.nbconvert.ipynb")

    return start


def papermill(lab: Lab, alice: HubUser, tag: str, kernel: str) -> Callable[[], str]:
    write_as_alice(lab, f"{FOLDER}/{tag}.ipynb", notebook(tag, kernel))

    def start() -> str:
        screen = in_terminal(alice, f"papermill {tag}.ipynb {tag}-out.ipynb -p marker {tag}")
        return screen + report_in(lab, f"{FOLDER}/{tag}-out.ipynb")

    return start


def console(lab: Lab, alice: HubUser, tag: str, kernel: str) -> Callable[[], str]:
    """Typed into her terminal, its input (what she would type at its prompt) from a file."""
    write_as_alice(lab, f"{FOLDER}/{tag}.in", one_line('marker = "console"\n' + probe(tag)) + "\n")
    return lambda: in_terminal(
        alice, f"jupyter console --simple-prompt --kernel {kernel} < {tag}.in"
    )


ATTACH = """
import sys
from jupyter_client import BlockingKernelClient
kc = BlockingKernelClient(connection_file=sys.argv[1])
kc.load_connection_file()  # with the kernel's curve keys
kc.start_channels()
try:
    kc.wait_for_ready(timeout=120)
    reply = kc.execute_interactive(open(sys.argv[2]).read(), timeout=300)
    print("status", reply["content"]["status"])
finally:
    kc.stop_channels()
"""


def kernel_app(lab: Lab, tag: str, kernel: str) -> Callable[[], str]:
    """`jupyter kernel` in the background, a client attached to its connection file, then
    Ctrl-C to it. (Not `jupyter console --existing`: jupyter_client 8.10's console app drops
    the connection file's curve keys, so it cannot reach an encrypted kernel.)"""
    write_as_alice(lab, f"{FOLDER}/{tag}.py", 'marker = "jupyter kernel"\n' + probe(tag))
    write_as_alice(lab, f"{FOLDER}/attach.py", ATTACH)
    command = textwrap.dedent(f"""\
        jupyter kernel --kernel={kernel} 2> {tag}.log & app=$!
        for _ in $(seq 1200); do grep -q "To connect a client" {tag}.log && break; sleep 0.1; done
        file=$(sed -n 's/.*Connection file: //p' {tag}.log)
        /opt/labnotebook/bin/python3 attach.py "$file" {tag}.py
        kill -INT $app; wait $app; echo "kernel app exited: $?"; cat {tag}.log
        """)
    return lambda: _output(login_shell(lab, command))


OWN_PYTHON = """
import sys
from jupyter_client.manager import KernelManager
km = KernelManager(kernel_name=sys.argv[1])
km.start_kernel(**({"cwd": sys.argv[3]} if len(sys.argv) > 3 else {}))
kc = km.client()
kc.start_channels()
try:
    kc.wait_for_ready(timeout=120)
    reply = kc.execute_interactive(open(sys.argv[2]).read(), timeout=300)
    print("status", reply["content"]["status"])
finally:
    kc.stop_channels()
    km.shutdown_kernel()
"""


def own_python(lab: Lab, tag: str, kernel: str) -> Callable[[], str]:
    """Her script with the hub's Python, which has jupyter_client (README: Batch runs)."""
    write_as_alice(lab, f"{FOLDER}/{tag}.py", 'marker = "own python"\n' + probe(tag))
    write_as_alice(lab, f"{FOLDER}/own.py", OWN_PYTHON)
    command = f"/opt/labnotebook/bin/python3 own.py {kernel} {tag}.py"
    return lambda: _output(login_shell(lab, command))


def _output(done: subprocess.CompletedProcess[str]) -> str:
    return f"{done.stdout}\n{done.stderr}\nexit code {done.returncode}"


def kernel_containers(uid: int) -> list[str]:
    return run(
        "docker", "ps", "-aq", "--filter", "label=org.labnotebook.role=kernel",
        "--filter", f"label=org.labnotebook.owner-uid={uid}",
    ).stdout.split()  # fmt: skip


def check(lab: Lab, kernels: Kernels, seen: Seen, kernel: str, marker: str) -> None:
    labels = seen.container.get("Config", {}).get("Labels", {})
    assert labels.get("org.labnotebook.role") == "kernel", seen.output[-3000:]
    assert labels.get("org.labnotebook.owner-uid") == str(kernels.uid)
    assert lab.name in seen.container["NetworkSettings"]["Networks"]
    wanted = kernels.image[kernel]
    assert wanted in (seen.container["Image"], seen.container["Config"]["Image"]), wanted
    assert seen.report, seen.output[-3000:]
    assert seen.report["cwd"] == FOLDER and seen.report["data"] == DATA, seen.report
    assert seen.report["uid"] == kernels.uid and seen.report["marker"] == marker
    # Gone as soon as the client exited: not a single container of hers is left.
    gone = run("docker", "inspect", seen.container["Id"], check=False)
    assert gone.returncode != 0, f"the kernel's container is still there:\n{seen.output[-2000:]}"


CLIENTS = ["nbconvert", "papermill", "console", "jupyter-kernel", "own-python"]
MARKERS = {"nbconvert": "as written", "console": "console", "jupyter-kernel": "jupyter kernel",
           "own-python": "own python"}  # fmt: skip


@pytest.fixture(scope="module")
def runs(lab: Lab, alice: HubUser, kernels: Kernels) -> dict[tuple[str, str], Seen]:
    """Every client on both kernels, three at a time (the member's memory cap allows four
    kernels: see MEMBER_MEMORY), timed."""

    def one(client: str, kernel: str) -> Seen:
        tag = f"{client}-{kernel}"
        start = {
            "nbconvert": lambda: nbconvert(lab, alice, tag, kernel),
            "papermill": lambda: papermill(lab, alice, tag, kernel),
            "console": lambda: console(lab, alice, tag, kernel),
            "jupyter-kernel": lambda: kernel_app(lab, tag, kernel),
            "own-python": lambda: own_python(lab, tag, kernel),
        }[client]()
        return looked_at(lab, tag, start)

    started = time.monotonic()
    pairs = [(client, kernel) for kernel in (DEFAULT, BUILT) for client in CLIENTS]
    with ThreadPoolExecutor(max_workers=3) as pool:
        seen = dict(zip(pairs, pool.map(lambda pair: one(*pair), pairs), strict=True))
    print(f"{len(pairs)} client runs took {time.monotonic() - started:.1f} s")
    return seen


@pytest.mark.parametrize("kernel", [DEFAULT, BUILT])
@pytest.mark.parametrize("client", CLIENTS)
def test_each_client_runs_a_lab_kernel_in_the_notebooks_folder(
    lab: Lab, kernels: Kernels, runs: dict[tuple[str, str], Seen], client: str, kernel: str
) -> None:
    seen = runs[(client, kernel)]
    check(lab, kernels, seen, kernel, MARKERS.get(client, f"{client}-{kernel}"))
    if client in ("nbconvert", "papermill", "console"):  # typed in her terminal
        assert "rc=0 =[42]" in seen.output, seen.output[-3000:]
    if client == "jupyter-kernel":
        assert "kernel app exited: 0" in seen.output, seen.output[-3000:]


def test_no_kernel_of_hers_is_left(kernels: Kernels, runs: dict[tuple[str, str], Seen]) -> None:
    assert kernel_containers(kernels.uid) == []


HOSTILE = """
import json, os, socket, sys, threading
from jupyter_client.manager import KernelManager

def where(cwd):
    km = KernelManager(kernel_name="python-docker")
    km.start_kernel(cwd=cwd)
    kc = km.client()
    kc.start_channels()
    out = []
    try:
        kc.wait_for_ready(timeout=120)
        code = ("import os, json\\n"
                "def can(p):\\n"
                "    try:\\n        return open(p).read()\\n"
                "    except OSError as e:\\n        return type(e).__name__\\n"
                "print(json.dumps([os.getcwd(), can('/home/bob/secret/key.txt')]))")
        kc.execute_interactive(code, output_hook=lambda m: out.append(m["content"].get("text", "")))
    finally:
        kc.stop_channels()
        km.shutdown_kernel()
    return json.loads("".join(out))

results = {cwd: where(cwd) for cwd in sys.argv[1:]}

# A socket of hers, posing as the broker: nothing is sent to it.
path = "/home/alice/fake-broker.sock"
if os.path.exists(path):
    os.unlink(path)
server = socket.socket(socket.AF_UNIX)
server.bind(path)
server.listen()
got = []
def serve():
    conn, _ = server.accept()
    conn.settimeout(3)
    try:
        got.append(conn.recv(65536))
    except OSError:
        got.append(b"")
threading.Thread(target=serve, daemon=True).start()
os.environ["LABNOTEBOOK_BROKER_SOCKET"] = path
km = KernelManager(kernel_name="python-docker")
try:
    km.start_kernel()
    refused = "started!"
except Exception as e:
    refused = str(e)
import time; time.sleep(0.5)
print("HOSTILE " + json.dumps({"results": results, "refused": refused,
                               "sent": b"".join(got).decode(errors="replace")}))
"""


def test_a_hostile_folder_gives_her_only_her_home(lab: Lab, kernels: Kernels, bob: HubUser) -> None:
    lab.exec("sh", "-c", "mkdir -p ~/secret && echo bobs > ~/secret/key.txt && chmod 700 "
             "~/secret", user="bob")  # fmt: skip
    lab.exec("ln", "-sfn", "/home/bob/secret", f"{FOLDER}/to-bob", user="alice")
    write_as_alice(lab, f"{FOLDER}/hostile.py", HOSTILE)
    attempts = [
        "/home/bob/secret",  # another member's private folder
        f"{FOLDER}/../../bob/secret",  # the same through `..`
        f"{FOLDER}/to-bob",  # and through a link of hers
        "/proc/1/root/home/bob/secret",  # the hub's root, as root sees it
        "/tmp",  # outside the homes: not the kernel's own /tmp either
    ]
    done = login_shell(lab, "/opt/labnotebook/bin/python3 hostile.py " + " ".join(attempts))
    lines = [line for line in done.stdout.splitlines() if line.startswith("HOSTILE ")]
    assert lines, done.stdout + done.stderr
    facts = json.loads(lines[0][len("HOSTILE ") :])
    for cwd in attempts:
        folder, secret = facts["results"][cwd]
        assert folder == "/home/alice", (cwd, folder)
        assert secret == "PermissionError", (cwd, secret)
    assert "not by the broker" in facts["refused"] and facts["sent"] == "", facts
    assert kernel_containers(kernels.uid) == []
