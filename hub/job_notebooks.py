"""A submitted notebook, checked by the root broker without following a path she can change.

The broker runs as root and the notebook is in the member's home, where she can replace any
entry by a symlink at any moment. So the path is walked one folder at a time from `/` with
`O_NOFOLLOW | O_DIRECTORY` descriptors (hub/safefs.py), the notebook is opened relative to
its folder's descriptor with `O_NOFOLLOW`, and every check - a regular file, hers to read, a
folder hers to write - is made with `fstat` on those descriptors, as *her* permissions say.
A symlink anywhere on the way is refused. Whatever she swaps after the check gains her
nothing: the job's runner opens the notebook and writes its output as her, in a container
of her own, so it can only ever read and write what she can.

The notebook itself is read with nbformat (is it one?) and its `parameters` cell with
papermill's own inspection (is each parameter she passes one it declares?).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from labnotebook.provisioner.errors import KernelConfigError, PermissionRefused
from labnotebook.provisioner.identity import KernelIdentity
from labnotebook.provisioner.sizes import human_bytes

from .safefs import DIRECTORY_FLAGS, UnsafePath, open_dir

MAX_NOTEBOOK = 64 << 20
"""The largest notebook the broker reads to check it (outputs included)."""


@dataclass(frozen=True)
class CheckedNotebook:
    path: str
    folder: str
    output: str
    """The executed notebook's path: beside the original, a name nothing has."""
    cells: int
    language: str
    parameters: tuple[str, ...]
    """The names the notebook's `parameters` cell declares."""


def _may(identity: KernelIdentity, info: os.stat_result, want: int) -> bool:
    """Whether `identity` has the `want` bits (4 read, 2 write, 1 search) on the entry, by its
    owner, group and mode, as the kernel would decide for her (ACLs aside)."""
    mode = info.st_mode
    if info.st_uid == identity.uid:
        bits = (mode >> 6) & 7
    elif info.st_gid == identity.gid or info.st_gid in identity.groups:
        bits = (mode >> 3) & 7
    else:
        bits = mode & 7
    return bits & want == want


def normalized(path: Any, identity: KernelIdentity) -> str:
    """The notebook's absolute path, inside her home, or a refusal that says why."""
    if not isinstance(path, str) or not path or "\0" in path or len(path) > 4096:
        raise KernelConfigError("The notebook must be given as a path.")
    if not path.startswith("/"):
        raise KernelConfigError(
            f"The notebook path {path!r} is relative; give it from / (e.g. {identity.home}/"
            f"{path.lstrip('./')})."
        )
    clean = posixpath.normpath(path)
    clean = "/" + clean.lstrip("/")
    home = posixpath.normpath(identity.home)
    if not clean.startswith(home.rstrip("/") + "/"):
        raise PermissionRefused(
            f"{clean} is outside your home ({home}): jobs run notebooks from your own home "
            "only, and write their output beside them. Copy the notebook into your home and "
            "submit that copy."
        )
    if not clean.endswith(".ipynb"):
        raise KernelConfigError(f"{clean} is not a notebook (a notebook's name ends in .ipynb).")
    return clean


@contextlib.contextmanager
def _folder(path: str) -> Iterator[int]:
    """A descriptor of the folder `path`, each part opened without following symlinks."""
    fd = os.open("/", DIRECTORY_FLAGS)
    try:
        for part in [p for p in path.split("/") if p]:
            try:
                with open_dir(part, dir_fd=fd) as child:
                    new = os.dup(child)
            except UnsafePath as e:
                what = "missing" if "missing" in str(e) else "not a plain folder"
                raise KernelConfigError(
                    f"The notebook's folder {path} cannot be used: {part!r} is {what} (jobs "
                    "never follow symlinks; give the notebook's real path)."
                ) from None
            os.close(fd)
            fd = new
        yield fd
    finally:
        os.close(fd)


def check(
    path: Any,
    identity: KernelIdentity,
    job_id: str,
    parameters: dict[str, Any],
    kernel: str,
    language: str,
) -> CheckedNotebook:
    """The notebook at `path` as a job of `identity` would run it, or a clear refusal."""
    clean = normalized(path, identity)
    folder, name = posixpath.split(clean)
    with _folder(folder) as folder_fd:
        folder_info = os.fstat(folder_fd)
        if not _may(identity, folder_info, 2 | 1):
            raise PermissionRefused(
                f"You cannot write to {folder}, where the job writes the executed notebook. "
                "Move the notebook to a folder of yours."
            )
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=folder_fd)  # fmt: skip
        except FileNotFoundError:
            raise KernelConfigError(f"There is no notebook {clean}.") from None
        except OSError as e:
            raise KernelConfigError(
                f"{clean} cannot be opened ({e.strerror}); jobs never follow symlinks: give "
                "the notebook's real path."
            ) from None
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise KernelConfigError(f"{clean} is not a file.")
            if not _may(identity, info, 4):
                raise PermissionRefused(f"You may not read {clean}.")
            if info.st_size > MAX_NOTEBOOK:
                raise KernelConfigError(
                    f"{clean} is {human_bytes(info.st_size)}; jobs take notebooks up to "
                    f"{human_bytes(MAX_NOTEBOOK)}. Clear its outputs (Edit > Clear Outputs of "
                    "All Cells), save, and submit it again."
                )
            raw = f.read(MAX_NOTEBOOK + 1)
        output = output_name(name, job_id)
        with contextlib.suppress(FileNotFoundError):
            os.stat(output, dir_fd=folder_fd, follow_symlinks=False)
            raise KernelConfigError(f"{posixpath.join(folder, output)} exists already.")
    notebook = _read(raw, clean)
    declared = declared_parameters(notebook, kernel, language) if parameters else []
    _check_parameters(parameters, declared, clean)
    language = language or str(
        ((notebook.get("metadata") or {}).get("language_info") or {}).get("name") or ""
    )
    return CheckedNotebook(
        path=clean,
        folder=folder,
        output=posixpath.join(folder, output),
        cells=len(notebook.cells),
        language=language,
        parameters=tuple(declared),
    )


def output_name(name: str, job_id: str) -> str:
    """analysis.ipynb -> analysis.job-ID.ipynb: a job's own name, never an existing file's."""
    return f"{name.removesuffix('.ipynb')}.job-{job_id}.ipynb"


def _read(raw: bytes, path: str) -> Any:
    import nbformat

    try:
        notebook = nbformat.reads(raw.decode("utf-8"), as_version=4)
        nbformat.validate(notebook)
    except (UnicodeDecodeError, ValueError, nbformat.ValidationError) as e:
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise KernelConfigError(
            f"{path} is not a notebook Jupyter can read ({first}). Open it in JupyterLab to "
            "see what is wrong, or submit another file."
        ) from None
    except Exception as e:  # nbformat's reader raises several kinds on garbage
        raise KernelConfigError(
            f"{path} is not a notebook Jupyter can read ({type(e).__name__}: {e})."
        ) from None
    for cell in notebook.cells:  # as papermill's own reader has them
        cell.metadata.setdefault("tags", [])
    return notebook


def declared_parameters(notebook: Any, kernel: str, language: str) -> list[str]:
    """The names the `parameters` cell assigns, by papermill's own inspection."""
    from papermill.inspection import _infer_parameters

    try:
        found = _infer_parameters(notebook, name=kernel, language=language or None)
    except Exception as e:
        from papermill.utils import find_first_tagged_cell_index

        if find_first_tagged_cell_index(notebook, "parameters") < 0:
            return []
        raise KernelConfigError(
            f"papermill cannot read the parameters cell of this notebook for kernel {kernel!r} "
            f"({e}); submit it without -p."
        ) from None
    return [p.name for p in found]


def _check_parameters(parameters: dict[str, Any], declared: list[str], path: str) -> None:
    unknown = sorted(set(parameters) - set(declared))
    if not unknown:
        return
    names = ", ".join(unknown)
    if not declared:
        raise KernelConfigError(
            f"{path} declares no parameters, so it cannot take {names}. Tag the cell that "
            "sets the defaults with 'parameters' (the cell's property inspector in JupyterLab, "
            "as papermill documents), or submit without -p."
        )
    raise KernelConfigError(
        f"{path} has no parameter {names}: its parameters cell declares "
        f"{', '.join(declared)}. Check the spelling, or add it to that cell."
    )
