"""File-system changes made as root in folders that lab members can write to.

The homes volume is full of places members control: their homes, and /home/shared, where any
member may rename or replace any entry. Code that runs as root there (the shared-folder
layout, homes, `~/shared` links) must never follow a path a member can change: a member who
replaces `README.txt` by a symlink to `/etc/ld.so.preload` would otherwise have root create
that file for them.

So every change here goes through directory file descriptors: each folder is opened with
`O_NOFOLLOW | O_DIRECTORY` relative to its parent's descriptor, checked with `fstat`, and
then changed through the descriptor (`fchown`, `fchmod`, ACLs with `fsetxattr`). A symlink or
a file where a folder belongs is refused with `UnsafePath`, which callers log and skip: one
bad entry never stops the hub from starting.
"""

from __future__ import annotations

import contextlib
import os
import stat
import struct
from collections.abc import Iterator

DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePath(Exception):
    """An entry is not what the lab put there (a symlink, a file instead of a folder, ...)."""


@contextlib.contextmanager
def open_dir(name: str, dir_fd: int | None = None, create_mode: int | None = None) -> Iterator[int]:
    """A descriptor of the folder `name` (relative to `dir_fd`), never through a symlink.

    With `create_mode`, a missing folder is created first (by root: nobody else can touch it
    until its owner and mode are set through the descriptor).
    """
    if create_mode is not None:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, create_mode, dir_fd=dir_fd)
    try:
        fd = os.open(name, DIRECTORY_FLAGS, dir_fd=dir_fd)
    except OSError as error:
        kind = entry_kind(name, dir_fd)
        raise UnsafePath(f"{name} is {kind}, not a folder ({error.strerror})") from None
    try:
        yield fd
    finally:
        os.close(fd)


def entry_kind(name: str, dir_fd: int | None) -> str:
    """'missing', 'a symlink', 'a file', 'a folder' or 'something else' (never followed)."""
    try:
        mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
    except FileNotFoundError:
        return "missing"
    if stat.S_ISLNK(mode):
        return "a symlink"
    if stat.S_ISREG(mode):
        return "a file"
    return "a folder" if stat.S_ISDIR(mode) else "something else"


def set_owner_mode(fd: int, uid: int, gid: int, mode: int) -> None:
    """Owner first, then mode: chown clears the setgid bit that the mode sets."""
    os.fchown(fd, uid, gid)
    os.fchmod(fd, mode)


def create_file(name: str, dir_fd: int, text: str, uid: int, gid: int, mode: int) -> bool:
    """Create `name` with `text` unless something (anything, a symlink too) is there already.

    O_CREAT | O_EXCL never follows a symlink. True when the file was created.
    """
    try:
        fd = os.open(
            name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
            dir_fd=dir_fd,
        )  # fmt: skip
    except FileExistsError:
        return False
    try:
        os.write(fd, text.encode())
        set_owner_mode(fd, uid, gid, mode)
    finally:
        os.close(fd)
    return True


def symlink(target: str, name: str, dir_fd: int, uid: int, gid: int) -> bool:
    """Create the symlink `name` -> `target` owned by uid:gid, unless `name` exists."""
    try:
        os.symlink(target, name, dir_fd=dir_fd)
    except FileExistsError:
        return False
    os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
    return True


# -- POSIX ACLs through the descriptor ---------------------------------------------------------
# `setfacl` takes a path and follows symlinks; the kernel's ACL extended attributes can be set
# on a descriptor. Their format is Linux's `posix_acl_xattr`: a version, then (tag, perm, id)
# entries sorted by tag and id.

_ACL_VERSION = 2
_TAGS = {"u": 0x01, "U": 0x02, "g": 0x04, "G": 0x08, "m": 0x10, "o": 0x20}
_NO_ID = 0xFFFFFFFF


def encode_acl(entries: list[tuple[str, int | None, int]]) -> bytes:
    """(kind, id, perm) with kind one of user_obj 'u', user 'U', group_obj 'g', group 'G',
    mask 'm', other 'o'; perm as rwx bits (0-7)."""
    packed = sorted(
        ((_TAGS[kind], perm, _NO_ID if ident is None else ident) for kind, ident, perm in entries),
        key=lambda entry: (entry[0], entry[2]),  # the kernel wants them by tag, then id
    )
    return struct.pack("<I", _ACL_VERSION) + b"".join(struct.pack("<HHI", *e) for e in packed)


def set_acl(fd: int, access: bytes, default: bytes | None = None) -> None:
    """Replace the access ACL (and the default ACL of a folder) of an open file."""
    os.setxattr(fd, "system.posix_acl_access", access)
    if default is not None:
        os.setxattr(fd, "system.posix_acl_default", default)
