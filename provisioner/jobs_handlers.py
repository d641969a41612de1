"""The member's notebook jobs over the Jupyter server's HTTP API, for JupyterLab's "Run as job"
and Jobs panel (hub/labextension/src/jobs/).

    GET  /labnotebook/api/jobs              her jobs (and schedules)
    POST /labnotebook/api/jobs              submit {path, kernel, parameters} -> 201, the job
    GET  /labnotebook/api/jobs/ID           one job
    POST /labnotebook/api/jobs/ID/cancel    cancel it -> the job

Registered by the lab's server extension (server_extension.py). Every handler is a
jupyter_server `APIHandler` behind `@web.authenticated`: only the server's owner reaches it,
and a POST made with her cookies but without the XSRF token (another site's form or script)
is refused by jupyter_server before it gets here. Who may see or cancel which job is the
broker's business (jobs.py asks it as the member); this module only translates.

`path` is a contents path, as the file browser shows it; it becomes an absolute path inside
the contents manager's root folder, and a path that leaves that folder, also through a
symbolic link, is refused. The jobs API blocks on the broker's socket, so it runs in a thread,
never on the server's event loop.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any, TypeVar

from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web

from .errors import EngineUnreachable, KernelConfigError, KernelLaunchError, PermissionRefused

API_ROOT = "labnotebook/api/jobs"
_JOB_ID = r"(?P<job_id>[A-Za-z0-9_.-]{1,100})"

T = TypeVar("T")


def _jobs_api() -> Any:
    # Imported per call, not at start: the server extension (and the notebook records it
    # keeps) must load even in an environment without the jobs client.
    try:
        from . import jobs
    except ImportError as error:
        raise web.HTTPError(
            503, f"Notebook jobs are not available on this server ({error}): ask the lab's admin."
        ) from error
    return jobs


def contents_os_path(root_dir: str, path: str) -> str:
    """The absolute path of the contents path `path` (as JupyterLab names files) under
    `root_dir`, with every symbolic link resolved; refused if it is not inside `root_dir`."""
    if not isinstance(path, str) or not path.strip("/"):
        raise KernelConfigError(
            "No notebook given: send the notebook's path as the file browser shows it "
            '("path": "analysis/run.ipynb").'
        )
    if "\0" in path:
        raise KernelConfigError(f"The path {path!r} contains a NUL character.")
    parts = PurePosixPath(path.strip("/")).parts
    if ".." in parts:
        raise PermissionRefused(
            f"The path {path} goes up out of your server's folder (..): give the notebook's "
            "path as the file browser shows it."
        )
    root = os.path.realpath(root_dir)
    full = os.path.realpath(os.path.join(root, *parts))
    if os.path.commonpath([root, full]) != root:
        raise PermissionRefused(
            f"{path} leads out of your server's folder {root} (a symbolic link to {full}): "
            "run a notebook that is inside it."
        )
    return full


def contents_path(root_dir: str, os_path: str | None) -> str | None:
    """The contents path of `os_path` under `root_dir` (None: elsewhere or unknown)."""
    if not isinstance(os_path, str) or not os_path:
        return None
    root = os.path.realpath(root_dir)
    try:
        full = os.path.realpath(os_path)
        if os.path.commonpath([root, full]) != root:
            return None
    except (OSError, ValueError):
        return None
    relative = os.path.relpath(full, root)
    return None if relative == "." else PurePosixPath(*relative.split(os.sep)).as_posix()


def _status_of(error: Exception) -> int:
    if isinstance(error, PermissionRefused):
        return 403
    if isinstance(error, EngineUnreachable):
        return 503
    if isinstance(error, LookupError):
        return 404
    return 400


class _JobsHandler(APIHandler):  # type: ignore[misc]
    """What every jobs handler shares: the root folder, the thread, the error replies."""

    @property
    def root_dir(self) -> str:
        root = getattr(self.contents_manager, "root_dir", None)
        if not isinstance(root, str) or not root:
            raise web.HTTPError(
                501, "Notebook jobs need a contents manager on the file system (root_dir)."
            )
        return root

    async def call(self, function: Callable[..., T], *args: Any) -> T:
        """`function(*args)` of the jobs API in a thread; its refusals become HTTP errors whose
        message (shown by JupyterLab in a dialog) is the API's own clear text."""
        try:
            return await asyncio.to_thread(function, *args)
        except (KernelLaunchError, ValueError, LookupError) as error:
            raise web.HTTPError(_status_of(error), str(error)) from error

    def view(self, job: dict[str, Any]) -> dict[str, Any]:
        """The job as the API gave it, plus its notebook and output as contents paths."""
        shown = dict(job)
        root = self.root_dir
        shown["notebook_path"] = contents_path(root, job.get("notebook"))
        shown["output_path"] = contents_path(root, job.get("output"))
        return shown

    def reply(self, body: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(body, default=str))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        # The message alone, as the jobs API worded it (APIHandler would add a traceback for
        # anything but an HTTPError; those are logged, not shown).
        error = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(error, web.HTTPError) and error.log_message:
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps({"message": error.log_message, "reason": error.reason}))
        else:
            super().write_error(status_code, **kwargs)


class JobsHandler(_JobsHandler):
    @web.authenticated
    async def get(self) -> None:
        jobs = await self.call(_jobs_api().list_jobs)
        self.reply([self.view(job) for job in jobs])

    @web.authenticated
    async def post(self) -> None:
        body = self.get_json_body()
        if not isinstance(body, dict):
            raise web.HTTPError(
                400, 'Send a JSON object: {"path": ..., "kernel": ..., "parameters": {...}}.'
            )
        unknown = sorted(set(body) - {"path", "kernel", "parameters"})
        if unknown:
            raise web.HTTPError(
                400, f"Unknown fields {', '.join(unknown)}: a job takes path, kernel, parameters."
            )
        kernel = body.get("kernel") or None
        if kernel is not None and not isinstance(kernel, str):
            raise web.HTTPError(400, "kernel must be a kernel's name (text), or null.")
        parameters = body.get("parameters") or None
        if parameters is not None and not isinstance(parameters, dict):
            raise web.HTTPError(400, "parameters must be an object of names and values.")
        try:
            notebook = contents_os_path(self.root_dir, body.get("path"))  # type: ignore[arg-type]
        except KernelLaunchError as error:
            raise web.HTTPError(_status_of(error), str(error)) from error
        job = await self.call(_jobs_api().submit, notebook, kernel, parameters)
        self.log.info("labnotebook: job %s submitted for %s", job.get("id"), notebook)
        self.reply(self.view(job), status=201)


class JobHandler(_JobsHandler):
    @web.authenticated
    async def get(self, job_id: str) -> None:
        self.reply(self.view(await self.call(_jobs_api().status, job_id)))


class JobCancelHandler(_JobsHandler):
    @web.authenticated
    async def post(self, job_id: str) -> None:
        job = await self.call(_jobs_api().cancel, job_id)
        self.log.info("labnotebook: job %s cancelled", job_id)
        self.reply(self.view(job))


def setup_handlers(web_app: Any) -> None:
    """Add the jobs API to the server's tornado application."""
    base = url_path_join(web_app.settings["base_url"], API_ROOT)
    web_app.add_handlers(
        ".*$",
        [
            (base, JobsHandler),
            (url_path_join(base, _JOB_ID), JobHandler),
            (url_path_join(base, _JOB_ID, "cancel"), JobCancelHandler),
        ],
    )
