"""Every file the code loads at run time ships: in a wheel built from the repository, and in
the hub image's installed package - never only in the source tree.

The hub image once lacked hub/templates/ (the package data listed only the kernelspecs), so
JupyterHub fell back to NativeAuthenticator's stock sign-up page, which has no setup-token
field, and no lab could be set up. Tests that run from the work tree cannot notice that.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"hub": "labnotebook/hub", "provisioner": "labnotebook/provisioner",
            "kernelspecs": "labnotebook/kernelspecs"}  # fmt: skip
BUILT_ELSEWHERE = ("hub/labextension/",)


def data_files() -> dict[str, str]:
    """Every non-Python file git tracks in the packages' folders -> its path when installed."""
    tracked = subprocess.run(
        ["git", "ls-files", "--", *PACKAGES], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    files = {}
    for path in tracked:
        # The JupyterLab extension's source is built into the hub image (images/hub), never
        # loaded from the package: only its build ships.
        if path.endswith(".py") or path.startswith(BUILT_ELSEWHERE):
            continue
        folder, _, rest = path.partition("/")
        files[path] = f"{PACKAGES[folder]}/{rest}"
    return files


def test_there_are_data_files_to_check() -> None:
    found = data_files()
    assert "hub/templates/signup.html" in found
    assert "kernelspecs/python-docker/kernel.json" in found


def test_every_data_file_is_in_the_wheel(tmp_path: Path) -> None:
    # A copy of the tracked files only: what a clean clone builds, without touching the tree.
    source = tmp_path / "source"
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split("\0")
    for path in filter(None, tracked):
        target = source / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / path).is_file():
            target.write_bytes((ROOT / path).read_bytes())
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
         "-w", str(tmp_path / "dist"), str(source)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("labnotebook-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(path for path, installed in data_files().items() if installed not in names)
    assert not missing, f"not in {wheel.name} (add them to pyproject's package-data): {missing}"


def test_the_command_line_starts_without_the_docker_sdk() -> None:
    """The lab's kernel image has `labnotebook` (it reaches the broker) but not the Docker
    SDK: every command's parser must load without it (images/kernel-python checks `labnotebook
    kernel --help` at build)."""
    program = (
        "import sys; sys.modules['docker'] = None\n"  # `import docker` now raises ImportError
        "from labnotebook.provisioner import cli\n"
        "cli.parser().parse_args(['kernel', '--help'])\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "usage: labnotebook kernel" in done.stdout, done.stdout
