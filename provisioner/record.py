"""The record a saved notebook keeps of the environment it ran in: `metadata.labnotebook`.

    "labnotebook": {
      "image": "labnotebook/kernel-python:latest",     # as the kernelspec named it
      "image_id": "sha256:3c33...",                    # what the container actually ran
      "repo_digests": ["registry/x@sha256:..."],       # when pushed or pulled
      "labels": {"org.opencontainers.image.title": ..., "org.labnotebook.owner": ...},
      "kernelspec": "python-docker",
      "kernel_argv": ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "language": "python",
      "gpus": "auto",
      "provisioner_version": "0.1.0",
      "recorded_at": "2026-11-26T10:50:00Z"
    }

Plain functions of plain data: the server extension (`server_extension.py`) makes and merges
records at every save, `export.py` reads them. `recorded_at` changes only when the image does,
so autosaves of an unchanged environment leave the file's metadata as it was.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

RECORD_KEY = "labnotebook"
PROVENANCE_LABELS = ("org.labnotebook.", "org.opencontainers.")
"""Image labels worth keeping: the lab's build provenance (owner, context digest of member-built
images, base image digest) and the OCI annotations (title, source, revision, created)."""


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_record(
    launched: dict[str, Any],
    *,
    argv: list[str] | None = None,
    language: str | None = None,
    recorded_at: str | None = None,
) -> dict[str, Any]:
    """The record of a kernel, from `DockerKernelProvisioner.launched_image()`."""
    from . import __version__

    labels = launched.get("image_labels") or {}
    record: dict[str, Any] = {
        "image": launched.get("image") or "",
        "image_id": launched.get("image_id") or "",
        "repo_digests": sorted(launched.get("repo_digests") or []),
        "labels": {k: str(v) for k, v in sorted(labels.items()) if k.startswith(PROVENANCE_LABELS)},
        "kernelspec": launched.get("kernelspec") or "",
        "gpus": _json_safe(launched.get("gpus")),
        "provisioner_version": __version__,
        "recorded_at": recorded_at or now(),
    }
    if argv:
        record["kernel_argv"] = list(argv)
    if language:
        record["language"] = language
    return record


def _json_safe(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        return str(value)


def merged(previous: dict[str, Any] | None, current: dict[str, Any]) -> dict[str, Any]:
    """`current`, keeping `previous`'s `recorded_at` when the image is the same: only a new
    image is a new record in time."""
    if (
        isinstance(previous, dict)
        and previous.get("image_id")
        and previous.get("image_id") == current.get("image_id")
        and previous.get("recorded_at")
    ):
        return {**current, "recorded_at": previous["recorded_at"]}
    return current


def newest(*records: Any) -> dict[str, Any] | None:
    """The most recently recorded of `records` (None and non-records skipped)."""
    valid = [r for r in records if valid_record(r)]
    if not valid:
        return None
    return max(valid, key=lambda r: str(r.get("recorded_at") or ""))


def valid_record(record: Any) -> bool:
    return isinstance(record, dict) and bool(record.get("image_id"))


def record_of(notebook: dict[str, Any]) -> dict[str, Any] | None:
    """A notebook's record, or None."""
    record = (notebook.get("metadata") or {}).get(RECORD_KEY)
    return record if valid_record(record) else None


def read_record(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The record of the notebook file at `path`, or None (no record, or not a notebook)."""
    try:
        with open(path, "rb") as f:
            notebook = json.load(f)
    except (OSError, ValueError):
        return None
    return record_of(notebook) if isinstance(notebook, dict) else None


def notebooks_naming_images(
    roots: Iterable[str | os.PathLike[str]], max_files: int = 20_000
) -> dict[str, list[str]]:
    """image ID -> the saved notebooks under `roots` whose record names it.

    For `labnotebook kernel ls` (mark images still named) and removals (ask for --force).
    Symlinks are not followed and hidden folders (.ipynb_checkpoints, .cache) are skipped.
    """
    named: dict[str, list[str]] = {}
    for path in _notebooks(roots, max_files):
        record = read_record(path)
        if record is not None:
            named.setdefault(record["image_id"], []).append(str(path))
    return named


def _notebooks(roots: Iterable[str | os.PathLike[str]], max_files: int) -> Iterator[Path]:
    seen = 0
    for root in roots:
        for folder, dirs, files in os.walk(root, followlinks=False):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in files:
                if name.endswith(".ipynb"):
                    seen += 1
                    if seen > max_files:
                        return
                    yield Path(folder) / name
