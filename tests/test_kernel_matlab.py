"""The MATLAB recipe (images/kernel-matlab): it takes the licence server's address as a build
argument and refuses anything else before downloading anything; no licence file is ever in
the repository. MATLAB itself cannot be built here (MathWorks' download, a licence)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "images" / "kernel-matlab"
# What FlexNet licence files hold: SERVER host hostid port, and INCREMENT/FEATURE lines for
# the MLM vendor daemon (MATLAB's), or the file names they come under.
LICENCE_TEXT = re.compile(
    r"^\s*(?:(?:INCREMENT|FEATURE)\s+\S+\s+MLM\b|SERVER\s+\S+\s+(?:ID=\d+|[0-9A-Fa-f]{12})\b)",
    re.M,
)
LICENCE_NAME = re.compile(r"(?:^|/)(?:licen[cs]e\.dat|[^/]*\.lic)$", re.I)


def make_matlab(*settings: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", "kernel-matlab", *settings,
         "KERNEL_MATLAB_IMAGE=labnotebook-test/kernel-matlab-refused:never"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_no_licence_file_is_committed() -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split("\0")
    named = [path for path in tracked if LICENCE_NAME.search(path)]
    assert not named, f"licence files are tracked: {named}"
    holding = []
    for path in filter(None, tracked):
        file = ROOT / path
        small = file.is_file() and file.stat().st_size < 1_000_000
        if small and LICENCE_TEXT.search(file.read_text(errors="replace")):
            holding.append(path)
    assert not holding, f"files with licence text are tracked: {holding}"


def test_licence_files_stay_out_of_commits_and_builds() -> None:
    for ignore in (".gitignore", ".dockerignore"):
        patterns = (FOLDER / ignore).read_text().split()
        assert "*.lic" in patterns, ignore
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "images/kernel-matlab/license.dat"], cwd=ROOT
    )
    assert ignored.returncode == 0, "a license.dat dropped into the recipe would be committable"


def test_the_recipe_takes_the_server_address_only() -> None:
    dockerfile = (FOLDER / "Dockerfile").read_text()
    assert "ARG LICENSE_SERVER=" in dockerfile
    assert "MLM_LICENSE_FILE=${LICENSE_SERVER}" in dockerfile
    # Nothing is copied into the image but the CA bundle (no licence file, whatever is here).
    copies = re.findall(r"^COPY\s+(.+)$", dockerfile, re.M)
    assert copies == ["extra-ca.crt /usr/local/share/ca-certificates/labnotebook-extra-ca.crt"]
    spec = json.loads((FOLDER / "kernelspec" / "kernel.json").read_text())
    assert spec["argv"][1:3] == ["-m", "jupyter_matlab_kernel"]
    assert spec["metadata"]["kernel_provisioner"]["provisioner_name"] == "labnotebook-docker"
    assert spec["metadata"]["kernel_provisioner"]["config"]["image"] == (
        "labnotebook/kernel-matlab:latest"
    )


def test_make_kernel_matlab_needs_the_licence_server() -> None:
    done = make_matlab()
    assert done.returncode != 0
    assert "set LICENSE_SERVER" in done.stderr and "27000@" in done.stderr


@pytest.mark.docker
@pytest.mark.parametrize("value", ["/opt/licenses/license.dat", "27000@host; rm -rf /"])
def test_anything_but_an_address_is_refused_before_downloading(value: str, docker_client) -> None:
    done = make_matlab(f"LICENSE_SERVER={value}")
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "LICENSE_SERVER must be PORT@HOST" in output
    # Refused by the recipe's first RUN step, before apt, mpm or pip ran.
    steps = re.findall(r"Step \d+/\d+ : (.*)", output)
    assert steps[-1].startswith('RUN case "${LICENSE_SERVER}"'), steps
