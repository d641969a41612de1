"""The lab's user registry: who has an account, with which UID, and who is a lab admin.

The hub container's /etc comes from the image and is thrown away whenever the container is
re-created (an upgrade, `make restore`, a host reboot with a new image). The registry lives on
the state volume instead, and every start re-creates the Unix accounts from it, so a user keeps
their UID - and so their files - across containers and images.

A name keeps its UID forever, even after the user is deleted, so that files left behind never
silently change hands to a newcomer with a new name.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .settings import FIRST_UID, STATE_DIR

REGISTRY_FILE = STATE_DIR / "users.json"


@dataclass
class Member:
    """One lab member's entry."""

    name: str
    uid: int
    admin: bool = False
    active: bool = True
    """False once the user was deleted from the hub: the UID stays reserved for the name."""
    password_hash: str = ""
    """crypt(3) hash of the hub password, so `sudo` can ask admins for it. Updated at login."""


class Registry:
    """The registry file, read and written under an exclusive lock.

    Use it as a context manager for a read-modify-write; changes are saved atomically
    (write to a temporary file, then rename) when the block exits without an error.
    """

    def __init__(self, path: Path = REGISTRY_FILE) -> None:
        self.path = path
        self.members: dict[str, Member] = {}
        self.next_uid = FIRST_UID
        self._lock: Any = None

    # -- reading -------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: Path = REGISTRY_FILE) -> Registry:
        """A snapshot of the registry, for reading only."""
        registry = cls(path)
        registry._read()
        return registry

    def _read(self) -> None:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        self.next_uid = int(data.get("next_uid", FIRST_UID))
        self.members = {
            name: Member(name=name, **{k: v for k, v in entry.items() if k != "name"})
            for name, entry in data.get("users", {}).items()
        }

    def active(self) -> list[Member]:
        return sorted((m for m in self.members.values() if m.active), key=lambda m: m.uid)

    # -- changing ------------------------------------------------------------------------------

    def __enter__(self) -> Registry:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.path.with_suffix(".lock"), "a")  # held until __exit__
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        self._read()
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        try:
            if exc_type is None:
                self._save()
        finally:
            self._lock.close()
            self._lock = None

    def _save(self) -> None:
        data = {
            "version": 1,
            "next_uid": self.next_uid,
            "users": {
                m.name: {k: v for k, v in asdict(m).items() if k != "name"}
                for m in sorted(self.members.values(), key=lambda m: m.uid)
            },
        }
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".users.", suffix=".json")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=2)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)  # password hashes: root only
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def member(self, name: str, taken_uids: Iterator[int] | None = None) -> Member:
        """The entry for `name`, allocating the next free UID for a newcomer."""
        existing = self.members.get(name)
        if existing is not None:
            existing.active = True
            return existing
        taken = {m.uid for m in self.members.values()} | set(taken_uids or ())
        uid = max(self.next_uid, FIRST_UID)
        while uid in taken:
            uid += 1
        self.next_uid = uid + 1
        member = Member(name=name, uid=uid)
        self.members[name] = member
        return member
