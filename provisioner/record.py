"""The record a saved notebook keeps of the environment it ran in: `metadata.labnotebook`.

    "labnotebook": {
      "image": "ourlab/kernel:1",                      # as the kernelspec named it
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
import re
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


# -- which images saved notebooks still name (`labnotebook kernel ls` and `rm`) ----------------

SHARED_ROOT = "/home/shared"
_FULL_PARSE = 8 << 20
_TAIL = 1 << 20
_RECORDED_ID = re.compile(
    rb'"labnotebook"\s*:\s*\{[^{}]*?"image_id"\s*:\s*"(sha256:[0-9a-f]{64})"', re.S
)


def search_roots(home: str | None = None) -> list[str]:
    """Where a member's saved notebooks are: their home and the lab's shared folder, read by
    the member's own process (so only what the member can read counts)."""
    roots = [os.path.realpath(home or os.path.expanduser("~"))]
    if os.path.isdir(SHARED_ROOT) and not roots[0].startswith(SHARED_ROOT + "/"):
        roots.append(SHARED_ROOT)
    return roots


def recorded_image_id(path: str | os.PathLike[str]) -> str | None:
    """The image ID a saved notebook records. Large notebooks (images in their outputs) are
    not parsed whole: nbformat writes the metadata after the cells, so their tail holds it."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size <= _FULL_PARSE:
                notebook = json.loads(f.read())
                record = record_of(notebook) if isinstance(notebook, dict) else None
                return str(record["image_id"]) if record else None
            f.seek(size - _TAIL)
            tail = f.read()
    except (OSError, ValueError, RecursionError):
        return None
    found = _RECORDED_ID.findall(tail)
    return found[-1].decode() if found else None


def images_named(
    roots: Iterable[str | os.PathLike[str]] | None = None, max_files: int = 20_000
) -> dict[str, list[str]]:
    """image ID -> the saved notebooks under `roots` (default: search_roots()) naming it."""
    named: dict[str, list[str]] = {}
    for path in _notebooks(search_roots() if roots is None else roots, max_files):
        image_id = recorded_image_id(path)
        if image_id:
            named.setdefault(image_id, []).append(str(path))
    return named


def matching_images(rows: list[dict[str, Any]], reference: str, uid: int) -> list[dict[str, Any]]:
    """The rows of `labnotebook kernel ls --json` that `kernel rm REFERENCE` removes:
    NAME, NAME:vN, MEMBER/NAME[:vN], a full tag or an image ID, of the member's own."""
    mine = [r for r in rows if r.get("owner_uid") == uid]
    if reference.startswith("sha256:"):
        return [r for r in mine if r["id"] == reference]
    if "/" in reference and reference.count("/") >= 2:
        return [r for r in mine if reference in (r.get("tags") or [])]
    owner, _, rest = reference.rpartition("/")
    name, _, version = rest.partition(":")
    return [
        r
        for r in mine
        if r["name"] == name
        and (not owner or r.get("owner") == owner)
        and (not version or f"v{r['version']}" == version)
    ]


def removal_refusal(rows: list[dict[str, Any]], reference: str, uid: int) -> str | None:
    """Why `kernel rm REFERENCE` needs --force (saved notebooks record those images), or None."""
    targets = {r["id"] for r in matching_images(rows, reference, uid)}
    if not targets:
        return None
    named = images_named()
    notebooks = sorted(n for image_id in targets for n in named.get(image_id, []))
    if not notebooks:
        return None
    more = f" and {len(notebooks) - 5} more" if len(notebooks) > 5 else ""
    shown = ", ".join(notebooks[:5]) + more
    return (
        f"{reference} is the image that {len(notebooks)} saved notebook(s) record: {shown}. "
        "Re-running or exporting them needs exactly that image (`labnotebook export` starts "
        "FROM it). Export or archive them first (`labnotebook export NOTEBOOK --archive`), "
        "or re-run them on another kernel and save; to remove it anyway, add --force."
    )
