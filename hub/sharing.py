"""The lab's shared folders on the homes volume, and who may write where.

    /home/NAME              owner NAME, group lab, 0750: the lab reads, only NAME writes
                            (0700 if the user or the operator chose a private home)
    /home/NAME/shared    -> /home/shared
    /home/shared            group lab, setgid, default ACLs: everyone in the lab reads and
                            writes, and so can the lab on every file and folder created in
                            it (notebook checkpoints included), whatever the creator's umask
    /home/shared/readonly   the readonly volume ($LAB-readonly), group labadmin, setgid: lab
                            admins write; the lab only reads. Its README.txt explains both.

/home/shared has no sticky bit, so that anyone can save (write a temporary file, rename it
over the old one) what others put there. The price: any member can rename or replace any
entry in it. So what the lab manages is not an entry a member can displace: `readonly` is a
mount point (of its own volume, in the hub and in every kernel), which nobody can rename or
remove, and the README lives inside it. And the code below, which runs as root at every
start, changes these folders only through descriptors (`safefs`): it never follows a path a
member can change, and a bad entry is logged and skipped, never a failed start.

Applied at every start to these folders only (never recursively: users' files are theirs).
Kernel containers mount the same volumes and run with the same UIDs and GIDs, so the same
permissions hold there.
"""

from __future__ import annotations

import logging

from . import safefs
from .settings import ADMIN_GID, HOMES_DIR, LAB_GID, READONLY_DIR, SHARED_DIR

log = logging.getLogger("labnotebook.sharing")

README = """\
About /home/shared

Everyone in the lab can read and change everything in /home/shared: files
created there stay writable by the whole lab.

This folder, readonly/, holds source data: the lab can read it, only the lab's
admins can change it. Ask an admin to put data here.
"""

SHARED_ACL = [("u", None, 7), ("g", None, 7), ("G", LAB_GID, 7), ("m", None, 7), ("o", None, 0)]
READONLY_ACL = [
    ("u", None, 7), ("g", None, 7), ("G", ADMIN_GID, 7), ("G", LAB_GID, 5),
    ("m", None, 7), ("o", None, 0),
]  # fmt: skip


def apply_layout() -> list[str]:
    """Create /home/shared and /home/shared/readonly with their owners, modes and ACLs.

    Returns warnings for the admin (also logged); an entry that is not what the lab put
    there is left alone.
    """
    warnings: list[str] = []
    with safefs.open_dir(str(HOMES_DIR)) as homes:
        safefs.set_owner_mode(homes, 0, 0, 0o755)
        try:
            with safefs.open_dir(SHARED_DIR.name, homes, create_mode=0o700) as shared:
                safefs.set_owner_mode(shared, 0, LAB_GID, 0o2775)
                acl = safefs.encode_acl(SHARED_ACL)
                # Default ACL: new files get group `lab` rw and new folders rwx, any umask.
                safefs.set_acl(shared, acl, acl)
                warnings += _readonly(shared)
        except safefs.UnsafePath as problem:
            warnings.append(f"{SHARED_DIR}: {problem}; left alone.")
    for warning in warnings:
        log.warning("%s", warning)
    return warnings


def _is_mount_point(path: str) -> bool:
    """From the kernel's mount table: volumes on one file system share st_dev, so comparing
    devices (os.path.ismount) cannot tell a volume mounted inside another."""
    with open("/proc/self/mountinfo") as mounts:
        return any(line.split()[4] == path for line in mounts if len(line.split()) > 4)


def _readonly(shared: int) -> list[str]:
    try:
        with safefs.open_dir(READONLY_DIR.name, shared, create_mode=0o700) as readonly:
            warnings = []
            if not _is_mount_point(str(READONLY_DIR)):
                warnings.append(
                    f"{READONLY_DIR} is not a mount point, so any member can rename it. "
                    "Start the hub with `make up`, which mounts the readonly volume there."
                )
            safefs.set_owner_mode(readonly, 0, ADMIN_GID, 0o2775)
            acl = safefs.encode_acl(READONLY_ACL)
            safefs.set_acl(readonly, acl, acl)
            safefs.create_file("README.txt", readonly, README, 0, ADMIN_GID, 0o664)
            return warnings
    except safefs.UnsafePath as problem:
        return [
            f"{READONLY_DIR}: {problem}; left alone. A member replaced it while it was not "
            "mounted: look at it as root, move it aside, and restart the hub."
        ]
