"""Jupyter server extension: every saved notebook records the kernel image it ran on.

Enabled in the lab's hub image (a `jupyter_server_config.d` file installed with the package);
on a laptop: `jupyter server extension enable --user labnotebook.provisioner.server_extension`.

It registers a contents manager pre-save hook (jupyter_server's own extension point, no
JupyterLab change). At each save of a notebook it finds the notebook's session, the session's
kernel and that kernel's provisioner; if the provisioner is ours, the notebook's
`metadata.labnotebook` gets the record of `record.py`. Every other notebook is saved exactly
as it came.

It also serves the member's notebook jobs to JupyterLab (jobs_handlers.py, under
/labnotebook/api/jobs), for the lab's JupyterLab extension (hub/labextension).

Clients never see what the hook writes (JupyterLab keeps its own copy of the metadata), so a
save without a kernel keeps the newest record of the two it knows: the one the client sent
and the one in the file on disk.
"""

from __future__ import annotations

import json
from typing import Any

from traitlets import Bool
from traitlets.config import LoggingConfigurable

from .record import RECORD_KEY, make_record, merged, newest


class NotebookRecorder(LoggingConfigurable):  # type: ignore[misc]
    """The pre-save hook, with the server's session and kernel managers."""

    enabled = Bool(
        True,
        config=True,
        help="""Record the kernel image (name, image ID, digests, build labels) in the
        metadata of every notebook saved while a labnotebook Docker kernel is attached.""",
    )

    def __init__(self, session_manager: Any, kernel_manager: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.session_manager = session_manager
        self.kernel_manager = kernel_manager

    def pre_save(self, model: dict[str, Any], path: str, contents_manager: Any, **_: Any) -> None:
        if not self.enabled or model.get("type") != "notebook":
            return
        notebook = model.get("content")
        if not isinstance(notebook, dict):
            return
        metadata = notebook.get("metadata")
        if not isinstance(metadata, dict):
            return
        incoming = metadata.get(RECORD_KEY)
        current = self._current_record(path)
        if current is None:
            # No kernel of ours: keep the newest record known (the client may send none, or
            # one older than what an earlier save wrote to the file).
            keep = newest(incoming, self._on_disk(path, contents_manager))
            if keep is not None and keep != incoming:
                metadata[RECORD_KEY] = keep
            return
        previous = incoming
        if not (isinstance(incoming, dict) and incoming.get("image_id") == current["image_id"]):
            previous = self._on_disk(path, contents_manager)
        record = merged(previous, current)
        if record != incoming:
            metadata[RECORD_KEY] = record

    def _current_record(self, path: str) -> dict[str, Any] | None:
        """The record of the labnotebook kernel of the notebook's session, if any."""
        for kernel_id in self._session_kernels(path):
            try:
                km = self.kernel_manager.get_kernel(kernel_id)
            except KeyError:
                continue
            provisioner = getattr(km, "provisioner", None)
            describe = getattr(provisioner, "launched_image", None)
            launched = describe() if callable(describe) else None
            if not launched or not launched.get("image_id"):
                continue
            spec = getattr(km, "kernel_spec", None)
            return make_record(
                launched,
                argv=list(getattr(spec, "argv", None) or []),
                language=getattr(spec, "language", None),
            )
        return None

    def _session_kernels(self, path: str) -> list[str]:
        # The session table is SQLite behind a synchronous cursor; the hook itself is
        # synchronous (jupyter_server calls it inside save), so it reads the table directly.
        wanted = path.strip("/")
        try:
            rows = self.session_manager.cursor.execute(
                "SELECT path, kernel_id FROM session"
            ).fetchall()
        except Exception as e:
            self.log.warning("labnotebook: cannot read the server's sessions: %s", e)
            return []
        return [kernel_id for p, kernel_id in rows if kernel_id and (p or "").strip("/") == wanted]

    def _on_disk(self, path: str, contents_manager: Any) -> dict[str, Any] | None:
        """The record in the notebook file as last saved (None if none or unreadable)."""
        os_path = getattr(contents_manager, "_get_os_path", None)
        if os_path is None:
            return None
        try:
            with open(os_path(path), "rb") as f:
                record = (json.load(f).get("metadata") or {}).get(RECORD_KEY)
        except (OSError, ValueError, AttributeError):
            return None
        return record if isinstance(record, dict) else None


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "labnotebook.provisioner.server_extension"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    recorder = NotebookRecorder(
        serverapp.session_manager, serverapp.kernel_manager, parent=serverapp
    )
    serverapp.contents_manager.register_pre_save_hook(recorder.pre_save)
    # The member's notebook jobs, for JupyterLab's "Run as job" and Jobs panel.
    from .jobs_handlers import setup_handlers

    setup_handlers(serverapp.web_app)
    serverapp.log.info(
        "labnotebook: saved notebooks record their kernel image (metadata.%s)%s",
        RECORD_KEY,
        "" if recorder.enabled else " - disabled by NotebookRecorder.enabled",
    )


# jupyter_server < 2 looked for the unprefixed names.
load_jupyter_server_extension = _load_jupyter_server_extension
