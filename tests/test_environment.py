"""What reaches a kernel's environment: the kernelspec's `env`, the allow-list and the user's
HOME/USER/LOGNAME; never the Jupyter server's secrets (JupyterHub's API token, the server's
token), which jupyter_client's base provisioner would otherwise hand over whole."""

from __future__ import annotations

import json

import pytest

from .conftest import run_code

pytestmark = pytest.mark.docker

SERVER_SECRETS = {
    "JUPYTERHUB_API_TOKEN": "hub-token-secret",
    "JPY_API_TOKEN": "jpy-token-secret",
    "JUPYTERHUB_COOKIE_SECRET": "cookie-secret",
    "JUPYTER_TOKEN": "server-token-secret",
    "AWS_SECRET_ACCESS_KEY": "cloud-secret",
    "JPY_PARENT_PID": "1",
}
DUMP = "import json, os; print(json.dumps(dict(os.environ)))"


async def test_no_server_secret_reaches_a_kernel(
    kernel_specs, start_kernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in SERVER_SECRETS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("LANG", "C.UTF-8")
    monkeypatch.setenv("LAB_PROJECT", "galaxies")
    name = kernel_specs(env={"FROM_SPEC": "yes", "PROJECT": "${LAB_PROJECT}-2026"})
    _, kc = await start_kernel(name)
    result = await run_code(kc, DUMP)
    env = json.loads(result["stdout"])
    leaked = sorted(set(SERVER_SECRETS) & set(env))
    assert not leaked, f"server variables reached the kernel: {leaked}"
    assert not any(value in json.dumps(env) for value in SERVER_SECRETS.values() if len(value) > 1)
    # What should arrive does: the kernelspec's env (substituted), the allow-list, the user.
    assert env["FROM_SPEC"] == "yes" and env["PROJECT"] == "galaxies-2026"
    assert env["LANG"] == "C.UTF-8"
    assert "LAB_PROJECT" not in env
    assert env["HOME"] and env["USER"]
