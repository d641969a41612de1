"""Who a kernel runs as, and the passwd/group entries that make that user real in any image.

A kernel container runs with the launching user's numeric UID, GID and supplementary groups.
For `whoami`, `pwd.getpwuid()` and `~` to work inside an image that has never heard of the
user, the provisioner writes the user's entry into a copy of the *image's own* /etc/passwd and
/etc/group before the container starts. Nothing is baked into images and the server's /etc is
never mounted, so images of other distributions keep working and the hub's files stay private.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass, field

from .errors import KernelConfigError, PermissionRefused


@dataclass(frozen=True)
class KernelIdentity:
    """The Unix identity a kernel container runs as."""

    username: str
    uid: int
    gid: int
    home: str
    groups: tuple[int, ...] = ()
    group_names: dict[int, str] = field(default_factory=dict)
    shell: str = "/bin/bash"

    @classmethod
    def of_uid(cls, uid: int, extra_groups: tuple[int, ...] = ()) -> KernelIdentity:
        """The identity of an existing account on this (server) machine."""
        try:
            entry = pwd.getpwuid(uid)
        except KeyError:
            raise KernelConfigError(
                f"UID {uid} has no account on this server, so the kernel's user name and home "
                "are unknown. Create the account, or configure username and home explicitly."
            ) from None
        groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
        return cls.build(
            username=entry.pw_name,
            uid=uid,
            gid=entry.pw_gid,
            home=entry.pw_dir,
            groups=groups + tuple(extra_groups),
            shell=entry.pw_shell or "/bin/bash",
        )

    @classmethod
    def build(
        cls,
        *,
        username: str,
        uid: int,
        gid: int,
        home: str,
        groups: tuple[int, ...] = (),
        shell: str = "/bin/bash",
    ) -> KernelIdentity:
        """An identity with group names looked up on this machine where they exist."""
        all_gids = tuple(dict.fromkeys((gid, *groups)))
        names = {}
        for g in all_gids:
            try:
                names[g] = grp.getgrgid(g).gr_name
            except KeyError:
                names[g] = username if g == gid else f"group{g}"
        identity = cls(username, uid, gid, home, all_gids, names, shell)
        identity.validate()
        return identity

    def validate(self) -> None:
        if not self.username or ":" in self.username or "\n" in self.username:
            raise KernelConfigError(f"Invalid user name for a kernel: {self.username!r}")
        if not os.path.isabs(self.home) or ":" in self.home:
            raise KernelConfigError(f"A kernel user's home must be an absolute path: {self.home!r}")
        for number in (self.uid, self.gid, *self.groups):
            if not 0 <= number < 2**32 - 1:
                raise KernelConfigError(f"Invalid UID/GID for a kernel: {number}")

    def refuse_root(self, allow_root: bool) -> None:
        if (self.uid == 0 or self.gid == 0) and not allow_root:
            raise PermissionRefused(
                f"Refusing to run a kernel container as root (user {self.username!r}, UID "
                f"{self.uid}, GID {self.gid}). Start Jupyter as an ordinary user, configure "
                "uid/gid for the kernel, or - if you really mean it - set allow_root = True."
            )

    @property
    def supplementary_groups(self) -> list[int]:
        return [g for g in self.groups if g != self.gid]

    def environment(self) -> dict[str, str]:
        return {"HOME": self.home, "USER": self.username, "LOGNAME": self.username}


def _entries(text: str) -> list[list[str]]:
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def merged_passwd(image_passwd: str, identity: KernelIdentity) -> str:
    """The image's /etc/passwd with the kernel user's entry replacing any clash by name or UID."""
    kept = [
        e
        for e in _entries(image_passwd)
        if len(e) >= 3 and e[0] != identity.username and e[2] != str(identity.uid)
    ]
    if not any(e[0] == "root" for e in kept):
        kept.insert(0, ["root", "x", "0", "0", "root", "/root", "/bin/sh"])
    own = [
        identity.username,
        "x",
        str(identity.uid),
        str(identity.gid),
        identity.username,
        identity.home,
        identity.shell,
    ]
    return "\n".join(":".join(e) for e in [*kept, own]) + "\n"


def merged_group(image_group: str, identity: KernelIdentity) -> str:
    """The image's /etc/group with the kernel user's groups (server names and GIDs) added."""
    ours = {g: identity.group_names.get(g, f"group{g}") for g in identity.groups}
    kept = [
        e
        for e in _entries(image_group)
        if len(e) >= 3 and e[0] not in ours.values() and e[2] not in {str(g) for g in ours}
    ]
    own = [
        [name, "x", str(gid), "" if gid == identity.gid else identity.username]
        for gid, name in ours.items()
    ]
    return "\n".join(":".join(e) for e in [*kept, *own]) + "\n"
