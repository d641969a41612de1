"""Members make their own kernels in the hub: a terminal build, the kernel, a notebook cell.

On the session's hub (see conftest.py; this file runs after test_hub.py's story): alice
uploads a wheel to a folder in her home, and in a JupyterLab terminal writes requirements.txt
and runs `labnotebook kernel build`; the kernel appears in her server's kernelspecs without a
restart and imports the package; `!labnotebook kernel ls` in a notebook cell reaches the broker
through the socket mounted read-only in her kernel, where the broker lets her use only the
image operations; bob cannot launch her image by its ID. The sample kernels whose images the
engine has are offered to everyone.
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from ..wheels import make_wheel
from .conftest import Lab, run
from .hubclient import HubUser

pytestmark = [pytest.mark.hub, pytest.mark.docker]

NAME = "hubpkg"
PACKAGE = "lnbhubpkg"
SHARED_SOCKET = "/run/labnotebook-broker/broker.sock"
SAMPLES = {
    "r-docker": "labnotebook/kernel-r:latest",
    "python-gpu-docker": "labnotebook/kernel-gpu:latest",
}


@dataclass
class Built:
    screen: str
    spec: dict[str, Any]

    @property
    def image(self) -> str:
        return str(self.spec["metadata"]["kernel_provisioner"]["config"]["image"])


def _kernelspecs(user: HubUser) -> dict[str, Any]:
    reply = user.server_api("GET", "kernelspecs")
    assert reply.status_code == 200, reply.text
    return dict(reply.json()["kernelspecs"])


def _upload(user: HubUser, path: str, data: bytes) -> None:
    """As JupyterLab's upload does: the contents API, folders first."""
    parts = path.split("/")
    for depth in range(1, len(parts)):
        folder = "/".join(parts[:depth])
        reply = user.server_api("PUT", f"contents/{folder}", json={"type": "directory"})
        assert reply.status_code in (200, 201), reply.text
    content = {"type": "file", "format": "base64", "content": base64.b64encode(data).decode()}
    reply = user.server_api("PUT", f"contents/{path}", json=content)
    assert reply.status_code in (200, 201), reply.text


@pytest.fixture(scope="module")
def built(lab: Lab, alice: HubUser, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    """alice's kernel, built in her terminal; her image is removed at the end (the engine is
    shared with the lab and other sessions, so only this very image ID)."""
    alice.start_server()
    wheel = make_wheel(tmp_path_factory.mktemp("wheels"), PACKAGE, "1.0")
    _upload(alice, f"kernels/{NAME}/wheels/{wheel.name}", wheel.read_bytes())
    # The marker is computed by the shell, so the echoed command line never matches it.
    command = (
        f"cd ~/kernels/{NAME} && echo ./wheels/{wheel.name} > requirements.txt && "
        f'labnotebook kernel build {NAME}; echo "rc=$? =[$((6*7))]"'
    )
    screen = alice.terminal(command, until="=[42]", timeout=600)
    print(screen)
    spec = _kernelspecs(alice).get(NAME, {}).get("spec", {})
    built = Built(screen, spec)
    try:
        yield built
    finally:
        if spec:
            run("docker", "image", "rm", "-f", built.image, check=False)


@pytest.mark.timeout(1500)  # the first test here may start the session's hub (an image build)
def test_a_member_builds_a_kernel_in_a_terminal(built: Built, alice: HubUser) -> None:
    assert "rc=0 =[42]" in built.screen, built.screen[-3000:]
    assert "==> Step" in built.screen  # a progress line per step, as it goes
    assert f"Built labnotebook-user/alice/{NAME}:v1" in built.screen
    # Listed by her server's REST API without a restart, pinned to the image's ID.
    assert built.image.startswith("sha256:"), built.spec
    assert built.spec["display_name"] == f"{NAME} (v1)"


def test_her_kernel_runs_what_she_installed(built: Built, alice: HubUser) -> None:
    kernel = alice.start_kernel(NAME)
    try:
        run_ = alice.execute(kernel, f"import {PACKAGE}; print({PACKAGE}.hello())", timeout=120)
    finally:
        alice.shutdown_kernel(kernel)
    assert run_.status == "ok", run_
    assert f"{PACKAGE} 1.0 says hello" in run_.stdout


PROBE = f"""
import json, os
from labnotebook.provisioner.broker_client import BrokerEngine
folder = os.path.dirname({SHARED_SOCKET!r})
info = os.stat(folder)
try:
    open(os.path.join(folder, "fake.sock"), "w")
    wrote = True
except OSError:
    wrote = False
try:
    BrokerEngine({SHARED_SOCKET!r}).kernel_containers()
    refused = ""
except Exception as e:
    refused = f"{{type(e).__name__}}: {{e}}"
print(json.dumps({{"owner": info.st_uid, "mode": info.st_mode & 0o777, "wrote": wrote,
                  "refused": refused}}))
"""


def test_labnotebook_works_in_a_notebook_cell(built: Built, alice: HubUser) -> None:
    kernel = alice.start_kernel()
    try:
        listing = alice.execute(kernel, "!labnotebook kernel ls", timeout=120)
        probe = alice.execute(kernel, PROBE)
    finally:
        alice.shutdown_kernel(kernel)
    print(listing.stdout + listing.stderr)
    assert listing.status == "ok", listing
    row = next((line for line in listing.stdout.splitlines() if line.startswith(NAME)), "")
    assert "kernelspec uses this" in row and "alice" in row, listing.stdout
    # The socket's folder is root's and read-only in the kernel (nobody swaps the socket),
    # and the broker, which cannot see the kernel's processes by PID, launches nothing for
    # them: it could not tell when their server is gone.
    assert probe.status == "ok", probe
    facts = json.loads(probe.stdout)
    assert facts["owner"] == 0 and not facts["mode"] & 0o022 and not facts["wrote"], facts
    assert facts["refused"].startswith("PermissionRefused") and "cannot see" in facts["refused"]


def test_bob_cannot_launch_alices_kernel_image(lab: Lab, built: Built, bob: HubUser) -> None:
    """Her image's ID is in her kernelspec, readable by the lab; the broker decides by the
    owner recorded on the image, not by the name a kernelspec gives."""
    bob.start_server()
    spec = {key: built.spec[key] for key in ("argv", "language", "metadata")}
    spec["display_name"] = "alice's, borrowed"
    folder = "/home/bob/.local/share/jupyter/kernels/borrowed"
    lab.exec(
        "sh", "-c", f"mkdir -p {folder} && cat > {folder}/kernel.json",
        user="bob", stdin=json.dumps(spec),
    )  # fmt: skip
    assert "borrowed" in _kernelspecs(bob)
    reply = bob.server_api("POST", "kernels", json={"name": "borrowed"})
    assert reply.status_code >= 400, reply.text
    assert f"alice's kernel '{NAME}'" in reply.text and "not published" in reply.text
    lab.exec("rm", "-rf", folder, user="bob")
    containers = run(
        "docker", "ps", "-aq", "--filter", f"network={lab.name}",
        "--filter", "label=org.labnotebook.owner=bob", "--filter", f"ancestor={built.image}",
    ).stdout.split()  # fmt: skip
    assert not containers


def _image_exists(image: str) -> bool:
    return (
        subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode == 0
    )


def test_the_hub_offers_the_sample_kernels_whose_images_exist(lab: Lab, alice: HubUser) -> None:
    specs = _kernelspecs(alice)
    for name, image in SAMPLES.items():
        assert (name in specs) == _image_exists(image), (name, sorted(specs))
    config = json.loads(lab.exec("cat", "/etc/labnotebook/broker.json").stdout)
    policy = config["LaunchPolicy"]
    assert f"{lab.name}-broker:/run/labnotebook-broker:ro" in policy["lab_mounts"]
    if "r-docker" not in specs:
        pytest.skip("no labnotebook/kernel-r image on this engine (make kernel-r)")
    assert SAMPLES["r-docker"] in policy["allowed_images"]
    kernel = alice.start_kernel("r-docker")
    try:
        result = alice.execute(kernel, "cat(6 * 7, R.version$language)", timeout=120)
    finally:
        alice.shutdown_kernel(kernel)
    assert result.status == "ok" and "42 R" in result.stdout, result
