"""The lab's shared folders on the homes volume, and who may write where.

    /home/NAME              owner NAME, group lab, 0750: the lab reads, only NAME writes
                            (0700 if the user or the operator chose a private home)
    /home/NAME/shared    -> /home/shared
    /home/shared            group lab, setgid, default ACLs: everyone in the lab reads and
                            writes, and so can the lab on every file and folder created in
                            it (notebook checkpoints included), whatever the creator's umask
    /home/shared/readonly   group labadmin, setgid: lab admins write; the lab only reads

Applied at every start to these folders only (never recursively: users' files are theirs).
Kernel containers mount the same volume and run with the same UIDs and GIDs, so the same
permissions hold there.
"""

from __future__ import annotations

import os
import subprocess

from .settings import (
    ADMIN_GID,
    ADMIN_GROUP,
    HOMES_DIR,
    LAB_GID,
    LAB_GROUP,
    READONLY_DIR,
    SHARED_DIR,
)

README = """\
This folder is shared by everyone in the lab: all of you can read and change
everything in it. Files created here stay writable by the whole lab.

readonly/ holds source data: the lab can read it, only the lab's admins can
change it. Ask an admin to put data there.
"""


def _setfacl(path: os.PathLike[str] | str, access: str, default: str) -> None:
    """Replace the access and default ACLs of a folder (`--set` drops inherited entries)."""
    for args in (["--set", access], ["-d", "--set", default]):
        subprocess.run(["setfacl", *args, str(path)], check=True, capture_output=True, text=True)


def apply_layout() -> None:
    """Create /home/shared and /home/shared/readonly with their owners, modes and ACLs."""
    os.chown(HOMES_DIR, 0, 0)
    os.chmod(HOMES_DIR, 0o755)

    SHARED_DIR.mkdir(exist_ok=True)
    os.chown(SHARED_DIR, 0, LAB_GID)
    os.chmod(SHARED_DIR, 0o2775)
    # Default ACL: new files get group `lab` rw and new folders rwx, whatever the umask.
    _setfacl(
        SHARED_DIR,
        f"u::rwx,g::rwx,g:{LAB_GROUP}:rwx,m::rwx,o::---",
        f"u::rwx,g::rwx,g:{LAB_GROUP}:rwx,m::rwx,o::---",
    )

    READONLY_DIR.mkdir(exist_ok=True)
    os.chown(READONLY_DIR, 0, ADMIN_GID)
    os.chmod(READONLY_DIR, 0o2775)
    _setfacl(
        READONLY_DIR,
        f"u::rwx,g::rwx,g:{ADMIN_GROUP}:rwx,g:{LAB_GROUP}:r-x,m::rwx,o::---",
        f"u::rwx,g::rwx,g:{ADMIN_GROUP}:rwx,g:{LAB_GROUP}:r-x,m::rwx,o::---",
    )

    readme = SHARED_DIR / "README.txt"
    if not readme.exists():
        readme.write_text(README)
        os.chown(readme, 0, LAB_GID)
        os.chmod(readme, 0o664)
