"""Scenarios a test account's agent runs for the kernel build tests (see broker_fixtures).

Imported by the agent before it drops to the account (LNBTEST_SCENARIOS), so everything the
`labnotebook kernel` command needs is loaded while /root is still readable.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import tarfile  # noqa: F401 - used by the build, after /root is closed
import tempfile  # noqa: F401
from typing import Any

import jupyter_core.paths  # noqa: F401
import labnotebook.provisioner.build_context
import labnotebook.provisioner.builds
import labnotebook.provisioner.cli
import labnotebook.provisioner.image_backends
import labnotebook.provisioner.kernel_cli
import traitlets.config  # noqa: F401

with contextlib.suppress(ImportError):  # other command groups the CLI registers
    import labnotebook.provisioner.export
labnotebook.provisioner.cli.parser()  # imports whatever the parser imports


def scenario_cli(argv: list[str], cwd: str | None = None) -> dict[str, Any]:
    """`labnotebook ARGV` in this process, as the account; its exit code and output."""
    out, err = io.StringIO(), io.StringIO()
    previous = os.getcwd()
    try:
        if cwd:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = labnotebook.provisioner.cli.main(argv)
            except SystemExit as e:
                code = int(e.code or 0)
    finally:
        os.chdir(previous)
    return {"code": code, "out": out.getvalue(), "err": err.getvalue()}


def scenario_run(argv: list[str], cwd: str | None = None) -> dict[str, Any]:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300)
    return {"code": done.returncode, "out": done.stdout, "err": done.stderr}


def scenario_write(path: str, text: str, mode: int = 0o644) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def scenario_request(sock: str, op: str, args: dict[str, Any]) -> Any:
    """One raw broker request through the client; errors come back as their classes."""
    from labnotebook.provisioner.broker_client import BrokerEngine

    return BrokerEngine(sock).call(op, **args)


def scenario_run_kernel_configured(
    kernel_dirs: list[str], kernel_name: str, code: str, config: dict[str, Any]
) -> dict[str, Any]:
    """Like broker_fixtures' run_kernel, with the server's provisioner settings in config
    (as the hub's server has them) rather than in the kernelspec."""
    import asyncio

    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from traitlets.config import Config

    async def run() -> dict[str, Any]:
        km = AsyncKernelManager(
            kernel_name=kernel_name,
            kernel_spec_manager=KernelSpecManager(kernel_dirs=kernel_dirs),
            config=Config({"DockerKernelProvisioner": config}),
        )
        await km.start_kernel()
        try:
            kc = km.client()
            kc.start_channels()
            try:
                await kc.wait_for_ready(timeout=120)
                out: list[str] = []

                def hook(msg: dict[str, Any]) -> None:
                    if msg["msg_type"] == "stream":
                        out.append(msg["content"]["text"])
                    elif msg["msg_type"] == "error":
                        out.append("\n".join(msg["content"]["traceback"]))

                reply = await kc.execute_interactive(code, output_hook=hook, timeout=60)
            finally:
                kc.stop_channels()
        finally:
            await km.shutdown_kernel(now=True)
        return {"stdout": "".join(out), "status": reply["content"]["status"]}

    return asyncio.run(run())


SCENARIOS = {
    name.removeprefix("scenario_"): fn
    for name, fn in dict(globals()).items()
    if name.startswith("scenario_")
}
