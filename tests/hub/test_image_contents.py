"""The hub image `make up` runs has every data file of the packages installed (templates,
kernelspecs, scripts): see tests/test_packaging.py for the wheel."""

from __future__ import annotations

import subprocess

import pytest

from ..test_packaging import data_files
from .conftest import Lab

pytestmark = [pytest.mark.hub, pytest.mark.docker]


def test_every_data_file_is_in_the_hub_image(lab: Lab) -> None:
    """The image `make up` ran (the test hub's), as installed in its Python environment."""
    listing = subprocess.run(
        ["docker", "run", "--rm", lab.image, "python3", "-c",
         "import os, labnotebook.hub as h\n"
         "root = os.path.dirname(os.path.dirname(os.path.dirname(h.__file__)))\n"
         "for d, _, fs in os.walk(os.path.join(root, 'labnotebook')):\n"
         "    for f in fs: print(os.path.relpath(os.path.join(d, f), root))"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    installed = set(listing)
    missing = sorted(path for path, where in data_files().items() if where not in installed)
    assert not missing, f"not installed in {lab.image}: {missing}"


def test_the_labs_jupyterlab_extension_is_built_into_the_hub_image(lab: Lab) -> None:
    """hub/labextension, built in the image's own stage: JupyterLab lists it as enabled."""
    listed = subprocess.run(
        ["docker", "run", "--rm", lab.image, "jupyter", "labextension", "list"],
        capture_output=True, text=True,
    )  # fmt: skip
    lines = [
        line for line in (listed.stdout + listed.stderr).splitlines() if "@labnotebook/lab" in line
    ]
    assert lines and "enabled" in lines[0] and "OK" in lines[0], listed.stdout + listed.stderr
