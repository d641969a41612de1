"""A kernel build's context: a member's folder packed into one tar, and what its files ask for.

The context is packed by the member's own process (`labnotebook kernel build`), so it holds
exactly what the member can read, never what root could; the broker only ever sees the tar.
Packing is deterministic (sorted names, no owners, no times), so the same folder always has
the same digest, which the image records in a label.

`Conventions.read` decides what a folder means, in repo2docker's words: `Dockerfile`, or any
of `apt.txt`, `environment.yml`, `requirements.txt`, `postBuild`; files that need a source the
lab cannot reach are refused with the reason.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import tarfile
import tempfile
from dataclasses import dataclass, field
from typing import IO

from .errors import KernelConfigError
from .sizes import human_bytes

DEFAULT_CONTEXT_LIMIT = 200 << 20
"""Largest packed context a member may send, unless the lab says otherwise."""

# Files repo2docker knows that this lab cannot honour, and why.
REFUSED_FILES = {
    "install.R": (
        "install.R installs R packages from CRAN, which the lab's builds cannot reach. Put the "
        "Debian packages (r-cran-*) in apt.txt instead, FROM the lab's R kernel image."
    ),
    "runtime.txt": (
        "runtime.txt asks for another Python (or R) version, which would have to be downloaded "
        "from outside the lab. Remove it: kernels use the base image's Python; pick another "
        "base with --from if you need a different one."
    ),
}
CONVENTION_FILES = ("apt.txt", "environment.yml", "requirements.txt", "postBuild")
# Debian package names (with an optional =version or /release), nothing apt would read as
# an option.
_APT_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]+(?::[a-z0-9-]+)?(?:[=/][A-Za-z0-9.+~:-]+)?\Z")
_SKIPPED = frozenset({".git", ".ipynb_checkpoints", "__pycache__"})


@dataclass
class PackedContext:
    """A packed build context in a temporary file (rewound), with its size and digest."""

    file: IO[bytes]
    size: int
    digest: str

    def close(self) -> None:
        self.file.close()


def pack(folder: str, limit: int = DEFAULT_CONTEXT_LIMIT) -> PackedContext:
    """Tar `folder` as this process can read it: regular files, folders and symlinks (kept
    as links); anything else (sockets, devices) is skipped. Past `limit` bytes: a clear error."""
    if not os.path.isdir(folder):
        raise KernelConfigError(f"{folder!r} is not a folder; give the folder to build from.")
    spool: IO[bytes] = tempfile.TemporaryFile(prefix="labnotebook-context-")  # noqa: SIM115 - returned open
    counter = _Limited(spool, limit, folder)
    try:
        with tarfile.open(fileobj=counter, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path, name in _walk(folder):
                info = tar.gettarinfo(path, arcname=name)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mtime = 0
                info.mode = (info.mode & 0o755) | (0o644 if info.isfile() else 0)
                if info.isfile():
                    with open(path, "rb") as data:
                        tar.addfile(info, data)
                elif info.isdir() or info.issym():
                    tar.addfile(info)
    except PermissionError as e:
        spool.close()
        raise KernelConfigError(
            f"Cannot read {e.filename}: you can only build from files you can read."
        ) from None
    except BaseException:
        spool.close()
        raise
    spool.seek(0)
    return PackedContext(spool, counter.size, "sha256:" + counter.hash.hexdigest())


def _walk(folder: str) -> list[tuple[str, str]]:
    entries = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in _SKIPPED)
        relative = os.path.relpath(root, folder)
        for name in [*dirs, *sorted(files)]:
            path = os.path.join(root, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode):
                entries.append((path, os.path.normpath(os.path.join(relative, name))))
    return sorted(entries, key=lambda e: e[1])


class _Limited(io.RawIOBase):
    """A write-only stream that counts, hashes and stops past the limit."""

    def __init__(self, target: IO[bytes], limit: int, folder: str) -> None:
        self.target, self.limit, self.folder = target, limit, folder
        self.size = 0
        self.hash = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.size

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.size += len(data)
        if self.size > self.limit:
            raise KernelConfigError(too_large(self.folder, self.limit))
        self.hash.update(data)
        return self.target.write(data)


def too_large(folder: str, limit: int) -> str:
    return (
        f"The build folder {folder} is larger than {human_bytes(limit)}, the most a kernel build "
        "may send. Build from a folder with only the files the image needs (requirements.txt, "
        "apt.txt, wheels...), not your whole project or data."
    )


@dataclass
class Conventions:
    """What a context's top-level files ask for."""

    dockerfile: bool = False
    apt: list[str] = field(default_factory=list)
    environment: bool = False
    requirements: bool = False
    post_build: bool = False

    @property
    def empty(self) -> bool:
        return not (
            self.dockerfile or self.apt or self.environment or self.requirements or self.post_build
        )

    def describe(self) -> str:
        if self.dockerfile:
            return "Dockerfile"
        parts = [
            name
            for name, wanted in (
                ("apt.txt", bool(self.apt)),
                ("environment.yml", self.environment),
                ("requirements.txt", self.requirements),
                ("postBuild", self.post_build),
            )
            if wanted
        ]
        return ", ".join(parts)

    @classmethod
    def read(cls, tar: tarfile.TarFile) -> Conventions:
        """The conventions of a packed context (only its top-level files count)."""
        top = {m.name.removeprefix("./"): m for m in tar.getmembers() if "/" not in m.name}
        for name, reason in REFUSED_FILES.items():
            if name in top:
                raise KernelConfigError(f"Cannot build from this folder: {reason}")
        found = cls(
            dockerfile="Dockerfile" in top,
            environment="environment.yml" in top,
            requirements="requirements.txt" in top,
            post_build="postBuild" in top,
        )
        for name in ("Dockerfile", *CONVENTION_FILES):
            if name in top and not top[name].isfile():
                raise KernelConfigError(f"{name} must be a plain file (not a link or folder).")
        if "apt.txt" in top:
            found.apt = apt_packages(_text(tar, top["apt.txt"]))
        if found.empty:
            raise KernelConfigError(
                "Nothing to build: the folder has none of requirements.txt (pip packages), "
                "apt.txt (Debian packages), environment.yml (conda), postBuild (a script) or "
                "a Dockerfile."
            )
        return found

    @classmethod
    def of_folder(cls, folder: str) -> Conventions:
        """The same, from a folder on this machine (to fail before packing)."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for name in ("Dockerfile", *CONVENTION_FILES, *REFUSED_FILES):
                path = os.path.join(folder, name)
                if os.path.lexists(path):
                    tar.add(path, arcname=name, recursive=False)
        buffer.seek(0)
        with tarfile.open(fileobj=buffer) as tar:
            return cls.read(tar)


def _text(tar: tarfile.TarFile, member: tarfile.TarInfo) -> str:
    if member.size > 1 << 20:
        raise KernelConfigError(f"{member.name} is larger than 1 MiB.")
    data = tar.extractfile(member)
    return data.read().decode("utf-8", errors="replace") if data else ""


def apt_packages(text: str) -> list[str]:
    """apt.txt's package names: one or more per line, '#' comments; anything else refused."""
    packages = []
    for number, line in enumerate(text.splitlines(), 1):
        for word in line.split("#", 1)[0].split():
            if not _APT_PACKAGE.match(word):
                raise KernelConfigError(
                    f"apt.txt line {number}: {word!r} is not a Debian package name. List "
                    "package names only (e.g. 'jq' or 'libgdal-dev'), one or more per line."
                )
            packages.append(word)
    return packages
