"""The kernel is the launching user, in an image that has never heard of them."""

from __future__ import annotations

import json
import os

import pytest

from .conftest import run_code

pytestmark = pytest.mark.docker

PROBE = """
import getpass, grp, json, os, pwd, subprocess
entry = pwd.getpwuid(os.getuid())
print(json.dumps({
    "uid": os.getuid(), "gid": os.getgid(), "groups": sorted(os.getgroups()),
    "whoami": subprocess.run(["whoami"], capture_output=True, text=True).stdout.strip(),
    "pw_name": entry.pw_name, "pw_dir": entry.pw_dir, "HOME": os.environ.get("HOME"),
    "tilde": os.path.expanduser("~"), "cwd": os.getcwd(),
    "group_names": sorted(grp.getgrgid(g).gr_name for g in os.getgroups()),
    "env": {k: v for k, v in os.environ.items()},
}))
"""


async def probe(kc) -> dict:
    result = await run_code(kc, PROBE)
    assert result["status"] == "ok", result
    return json.loads(result["stdout"])


async def test_kernel_runs_as_the_user_with_their_home_and_groups(
    kernel_specs, start_kernel, identity, tmp_path
) -> None:
    shared = tmp_path / "shared"
    (shared / "project").mkdir(parents=True)
    shared.chmod(0o777)
    (shared / "project").chmod(0o777)
    name = kernel_specs(
        volumes=[f"{shared}:/lab"],
        extra_groups=[4343],
        env={"ANALYSIS": "run-${LANG}"},
    )
    os.environ["LABNOTEBOOK_TEST_SECRET"] = "server-only"
    try:
        _km, kc = await start_kernel(name, cwd=str(shared / "project"))
    finally:
        del os.environ["LABNOTEBOOK_TEST_SECRET"]
    seen = await probe(kc)
    user, home = identity["username"], identity["home"]
    assert (seen["uid"], seen["gid"]) == (identity["uid"], identity["gid"])
    assert seen["whoami"] == seen["pw_name"] == user
    assert seen["pw_dir"] == seen["HOME"] == seen["tilde"] == home
    assert 4343 in seen["groups"]
    # The notebook's folder is mounted (at another path): the kernel starts there.
    assert seen["cwd"] == "/lab/project"
    # Only the kernelspec's env and the allow-list reach the kernel.
    env = seen["env"]
    assert "LABNOTEBOOK_TEST_SECRET" not in env
    assert "JPY_PARENT_PID" not in env
    assert env["ANALYSIS"].startswith("run-")
    # Files the kernel writes belong to the user on the shared folder.
    await run_code(kc, "open('/lab/project/out.txt', 'w').write('hi')")
    assert (shared / "project" / "out.txt").stat().st_uid == identity["uid"]
    # No shared home mounted: the home is a private, writable scratch folder.
    result = await run_code(
        kc,
        "import pathlib; pathlib.Path('~/x').expanduser().write_text('1');"
        "print(oct(pathlib.Path('~').expanduser().stat().st_mode))",
    )
    assert result["stdout"].strip().endswith("700")


async def test_unmounted_notebook_folder_falls_back_to_home(
    kernel_specs, start_kernel, identity
) -> None:
    _km, kc = await start_kernel(kernel_specs(), cwd="/somewhere/not/mounted")
    assert (await probe(kc))["cwd"] == identity["home"]


async def test_kernel_cannot_gain_privileges(kernel_specs, start_kernel) -> None:
    _km, kc = await start_kernel(kernel_specs())
    result = await run_code(kc, "print(open('/proc/self/status').read())")
    status = dict(line.split(":\t", 1) for line in result["stdout"].splitlines() if ":\t" in line)
    assert status["NoNewPrivs"].strip() == "1"
    assert int(status["CapEff"].strip(), 16) == 0
    assert int(status["CapBnd"].strip(), 16) == 0
