"""Every setting and default is declared once (hub/settings_schema.py), and everything that
needs one reads it from there: lab.sh, make, the hub container and the docs."""

from __future__ import annotations

import ast
import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from labnotebook.hub import settings_schema as schema
from labnotebook.hub.settings import LabSettings
from labnotebook.kernelspecs import bundled
from labnotebook.provisioner.defaults import KERNEL_IMAGE

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "hub" / "settings_schema.py"


def test_the_reference_is_the_schema() -> None:
    committed = (ROOT / "docs" / "settings.md").read_text()
    assert committed == schema.markdown(), "docs/settings.md is stale: run `make docs`"
    for setting in schema.SETTINGS:
        assert f"| `{setting.name}` |" in committed


def test_names_are_unique_and_derived_defaults_come_after_lab() -> None:
    names = [s.name for s in schema.SETTINGS]
    assert len(names) == len(set(names))
    assert names[0] == "LAB"
    assert all(s.kind in schema.KIND_TEXT for s in schema.SETTINGS)
    for setting in schema.SETTINGS:
        for named in re.findall(r"\$(\w+)", setting.default):
            assert names.index(named) < names.index(setting.name), setting.name


def test_the_hub_reads_exactly_the_settings_it_is_given() -> None:
    fields = {f.name for f in dataclasses.fields(LabSettings)}
    assert fields == {s.field for s in schema.SETTINGS if s.field}
    renamed = {s.name: s.field for s in schema.SETTINGS if s.field and s.field != s.name.lower()}
    assert renamed == {"LAB": "name", "LAB_TITLE": "title"}  # as LabSettings' docstring says
    passed = re.search(r"^PASSED=\((.*)\)$", schema.shell_assignments({}), re.M)
    assert passed and set(passed.group(1).split()) == {s.name for s in schema.SETTINGS if s.field}


def _run_by_path(*argv: str, env: dict[str, str] | None = None) -> str:
    # -S -I: no site-packages and no PYTHON* variables, as on a fresh clone with nothing
    # installed. It must still find the kernel image's name (provisioner/defaults.py).
    done = subprocess.run(
        [sys.executable, "-S", "-I", str(SCHEMA), *argv],
        capture_output=True, text=True, check=True, env=env or {}, cwd="/",
    )  # fmt: skip
    return done.stdout


def test_lab_sh_gets_every_value_or_its_default_from_stdlib_python() -> None:
    out = _run_by_path("env", env={"LAB": "lab2", "PORT": "", "KERNEL_MEMORY": "8g"})
    values = dict(line.split("=", 1) for line in out.splitlines() if "=(" not in line)
    assert values["LAB"] == "lab2" and values["HOMES_VOLUME"] == "lab2-homedirs"
    assert values["PORT"] == "8000"  # empty: the default, as `make up` passes unset ones
    assert values["KERNEL_MEMORY"] == "8g" and values["KERNEL_IMAGE"] == KERNEL_IMAGE
    assert set(values) == {s.name for s in schema.SETTINGS}
    # Quoted for bash: a value cannot run anything.
    hostile = "x'; touch /tmp/pwned; '$(id)"
    shell = _run_by_path("env", env={"LAB_TITLE": hostile})
    echoed = subprocess.run(
        ["bash", "-c", 'eval "$1"; printf %s "$LAB_TITLE"', "-", shell],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert echoed.stdout == hostile


def test_lab_sh_and_make_declare_no_defaults_of_their_own() -> None:
    lab_sh = (ROOT / "hub" / "lab.sh").read_text()
    # Only a setting the schema gives no default may be worked out at run time (PUBLIC_URL:
    # from the host's name).
    for name in re.findall(r"\$\{([A-Z_]+):-", lab_sh):
        assert schema.BY_NAME[name].default == "", f"lab.sh repeats {name}'s default"
    assert 'settings_schema.py" env' in lab_sh
    generated = _run_by_path("make")
    assert f"HUB_SETTINGS := {' '.join(s.name for s in schema.SETTINGS)}\n" in generated
    assert f"KERNEL_IMAGE ?= {KERNEL_IMAGE}\n" in generated
    dry_run = subprocess.run(
        ["make", "--no-print-directory", "-n", "down", "LAB=labnotebook-test-schema"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert f'KERNEL_IMAGE="{KERNEL_IMAGE}"' in dry_run
    for setting in schema.SETTINGS:
        assert f"{setting.name}=" in dry_run


def _source_lines(needle: str) -> list[str]:
    """Lines of non-test code (Python, shell, make, Dockerfiles) that contain `needle`."""
    files = [ROOT / "Makefile"]
    for folder in ("provisioner", "hub", "images", "kernelspecs"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.is_file() and (
                path.suffix in (".py", ".sh", ".mk") or path.name == "Dockerfile"
            ):
                files.append(path)
    return [
        f"{path.relative_to(ROOT)}: {line.strip()}"
        for path in files
        for line in path.read_text(errors="replace").splitlines()
        if needle in line
    ]


@pytest.mark.parametrize(
    ("needle", "owner"),
    [('"10g"', "hub/settings_schema.py"), (KERNEL_IMAGE, "provisioner/defaults.py")],
)
def test_each_default_is_declared_once(needle: str, owner: str) -> None:
    found = _source_lines(needle.strip('"'))
    assert len(found) == 1 and found[0].startswith(f"{owner}: "), found


def test_the_bundled_kernelspec_names_the_lab_s_kernel_image() -> None:
    # A kernelspec must be complete for `jupyter kernelspec install kernelspecs/python-docker`,
    # so the JSON keeps the name; it must be the one the code means.
    spec = json.loads((bundled()["python-docker"] / "kernel.json").read_text())
    assert spec["metadata"]["kernel_provisioner"]["config"]["image"] == KERNEL_IMAGE


def test_the_hub_refuses_missing_settings_but_takes_newer_ones_default() -> None:
    environ = schema.resolved_values({"LAB": "lab3"})
    for setting in ("BUILD_QUOTA", "BROKER_VOLUME", "BUILD_DOCKERFILE", "PUBLIC_URL"):
        del environ[setting]  # what an older `make up` did not pass
    lab = LabSettings.from_env(environ)
    assert (lab.name, lab.homes_volume, lab.title) == ("lab3", "lab3-homedirs", "lab3")
    assert lab.build_quota == schema.BY_NAME["BUILD_QUOTA"].default
    assert (lab.broker_volume, lab.build_dockerfile, lab.public_url) == ("", False, "")
    assert lab.tls_hostnames == ("labnotebook", "localhost") and lab.kernel_idle_timeout == 7200
    assert LabSettings.from_env({**environ, "PLAIN_HTTP": " Yes "}).plain_http
    with pytest.raises(SystemExit, match=r"KERNEL_MEMORY is not set.*make up"):
        LabSettings.from_env({**environ, "KERNEL_MEMORY": " "})
    with pytest.raises(SystemExit, match="TRUSTED_PROXIES must be a whole number"):
        LabSettings.from_env({**environ, "TRUSTED_PROXIES": "-1"})


def test_jupyterhub_config_does_not_repeat_the_authenticator_s_defaults() -> None:
    pytest.importorskip("nativeauthenticator")
    from labnotebook.hub.authenticator import LabAuthenticator

    tree = ast.parse((ROOT / "hub" / "jupyterhub_config.py").read_text())
    for node in ast.walk(tree):
        if not isinstance(node, ast.Assign) or not isinstance(node.value, ast.Constant):
            continue
        target = ast.unparse(node.targets[0])
        if target.startswith(("c.LabAuthenticator.", "c.Authenticator.")):
            trait = LabAuthenticator.class_traits()[target.rsplit(".", 1)[1]]
            assert node.value.value != trait.default_value, f"{target} repeats the default"
