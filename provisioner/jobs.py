"""Notebook jobs, as every front end asks for them (`labnotebook jobs`, JupyterLab).

A job runs a notebook to the end in a container of its own, owned by the lab's broker
(hub/notebook_jobs.py), so it carries on when the member's browser, server or the hub
itself goes away. These functions run in the member's own process: they pick and read the
kernelspec as she sees it (hers or the lab's) and hand the request to the broker, which
checks everything again as root. Errors are `errors.py` exceptions whose message is what to
show her.
"""

from __future__ import annotations

import json
import os
from typing import Any

from .errors import KernelConfigError

DEFAULT_KERNEL = "python-docker"
"""The lab's own Python kernel (the hub writes it at every start): a job's kernel when
neither the member nor the notebook names a Docker kernel."""
PROVISIONER = "labnotebook-docker"


def broker() -> Any:
    from .broker_client import BrokerEngine
    from .image_backends import broker_socket

    socket = broker_socket()
    if socket is None:
        raise KernelConfigError(
            "Notebook jobs are run by the lab hub's kernel broker: run `labnotebook jobs` in "
            "the lab hub (a JupyterLab terminal). On your own machine, run the notebook with "
            "papermill or `jupyter nbconvert --execute`."
        )
    return BrokerEngine(socket)


def _kernelspecs() -> Any:
    from jupyter_client.kernelspec import KernelSpecManager

    # As the member's server sees them: the hub's own Python is no kernel of the lab.
    return KernelSpecManager(ensure_native_kernel=False)


def _is_docker(spec: Any) -> bool:
    provisioner = (getattr(spec, "metadata", None) or {}).get("kernel_provisioner") or {}
    return provisioner.get("provisioner_name") == PROVISIONER


def _notebook_kernel(path: str) -> str | None:
    """The kernel the notebook itself names (metadata.kernelspec.name), if it can be read."""
    try:
        with open(path, "rb") as f:
            notebook = json.load(f)
        name = notebook["metadata"]["kernelspec"]["name"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return name if isinstance(name, str) else None


def kernelspec_for(notebook: str, kernel: str | None) -> tuple[str, dict[str, Any]]:
    """The job's kernel name and its kernelspec as JSON: `kernel`; else the notebook's own
    kernel when it is one of the lab's Docker kernels; else the lab's default."""
    from jupyter_client.kernelspec import NoSuchKernel

    manager = _kernelspecs()
    candidates = [kernel] if kernel else [_notebook_kernel(notebook), DEFAULT_KERNEL]
    for name in [c for c in candidates if c]:
        try:
            spec = manager.get_kernel_spec(name)
        except NoSuchKernel:
            if kernel:
                raise KernelConfigError(
                    f"There is no kernel named {kernel!r}. `jupyter kernelspec list` shows the "
                    "kernels you have; `labnotebook kernel ls` the ones you built."
                ) from None
            continue
        if kernel or _is_docker(spec):
            return name, spec.to_dict()
    raise KernelConfigError(
        f"No Docker kernel found for {notebook}: name one with --kernel (`jupyter kernelspec "
        "list` shows the kernels you have)."
    )


def submit(
    notebook: str,
    kernel: str | None = None,
    parameters: dict[str, Any] | None = None,
    every: str | None = None,
) -> dict[str, Any]:
    """Submit `notebook` (an absolute path in your home) as a job, or with `every` (a cron
    expression) as a schedule; returns at once with the job (state "queued") or schedule."""
    path = os.path.abspath(os.path.expanduser(notebook))
    name, spec = kernelspec_for(path, kernel)
    fields: dict[str, Any] = {"notebook": path, "kernel": name, "kernelspec": spec}
    if parameters:
        fields["parameters"] = dict(parameters)
    if every is not None:
        fields["every"] = every
    return broker().job_submit(**fields)


def list_jobs(everyone: bool = False) -> list[dict[str, Any]]:
    """Your schedules, then your jobs, oldest first (an admin's `everyone`: the lab's)."""
    return broker().jobs(everyone)


def status(job_id: str) -> dict[str, Any]:
    return broker().job_status(job_id)


def cancel(job_id: str) -> dict[str, Any]:
    """Cancel a queued or running job (its partial notebook stays), or remove a schedule."""
    return broker().job_cancel(job_id)


def logs(job_id: str, since: int = 0, wait: float = 0) -> dict[str, Any]:
    """{"lines": [...], "next": int, "done": bool}: the job's progress lines from `since`;
    with `wait`, up to that many seconds for a new one."""
    return broker().job_logs(job_id, since, wait)
