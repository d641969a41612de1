"""The hub image's exact versions (requirements.lock) and pyproject.toml's floors are at or
above the published security fixes listed in images/hub/security-floors.txt."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
HUB = ROOT / "images" / "hub"


def floors() -> dict[str, Version]:
    table = {}
    for line in (HUB / "security-floors.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, minimum = line.split()[:2]
            table[canonicalize_name(name)] = Version(minimum)
    return table


def locked() -> dict[str, Version]:
    pins = {}
    for line in (HUB / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            match = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)==([^\s;]+)", line.strip())
            assert match, f"requirements.lock: not an exact pin: {line!r}"
            pins[canonicalize_name(match.group(1))] = Version(match.group(2))
    return pins


def test_the_floors_table_is_not_empty() -> None:
    assert {"jupyterhub", "jupyter-server", "jupyterlab", "tornado"} <= set(floors())


def test_every_locked_version_is_at_or_above_its_floor() -> None:
    pins = locked()
    missing = sorted(name for name in floors() if name not in pins)
    assert not missing, f"requirements.lock does not pin {missing}"
    below = {
        name: f"{pins[name]} < {minimum}"
        for name, minimum in floors().items()
        if pins[name] < minimum
    }
    assert not below, f"locked below the published fixes: {below}; run `make lock`"


def test_pyproject_floors_are_at_or_above_the_fixes() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(r) for r in project["dependencies"]]
    requirements += [Requirement(r) for r in project["optional-dependencies"]["hub"]]
    declared = {canonicalize_name(r.name): r.specifier for r in requirements}
    for name, minimum in floors().items():
        specifier = declared.get(name)
        assert specifier is not None, f"pyproject.toml has no floor for {name}"
        lowest = [Version(s.version) for s in specifier if s.operator in (">=", "==")]
        assert lowest and max(lowest) >= minimum, f"{name}{specifier} allows below {minimum}"


def test_the_lock_satisfies_pyproject() -> None:
    pins = locked()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for line in project["dependencies"] + project["optional-dependencies"]["hub"]:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"requirements.lock lacks {name}"
        assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} vs {line}"
