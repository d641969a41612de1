"""Unix accounts for lab members, inside the hub container.

Every approved hub user is a Unix user here: their server runs as them, and their kernels run
with their UID and groups. Accounts are made from the registry (see `registry.py`), so the
same person always gets the same UID, in every container made from every image.

Groups: each user has a personal group (GID = UID), and belongs to `lab`; lab admins also
belong to `labadmin`, which may use sudo and write /home/shared/readonly. No user is ever in
the `docker` group: kernels are started by the root-owned broker.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import pwd
import shutil
import subprocess
from pathlib import Path

from .registry import Member, Registry
from .settings import (
    ADMIN_GID,
    ADMIN_GROUP,
    HOMES_DIR,
    LAB_GID,
    LAB_GROUP,
    SHARED_DIR,
)

log = logging.getLogger("labnotebook.users")


def _run(*argv: str, stdin: str | None = None) -> str:
    result = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr.strip() or result.stdout}")
    return result.stdout


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def ensure_lab_groups() -> None:
    """The `lab` and `labadmin` groups, with fixed GIDs (files on the volume refer to them)."""
    for name, gid in ((LAB_GROUP, LAB_GID), (ADMIN_GROUP, ADMIN_GID)):
        if not _group_exists(name):
            _run("groupadd", "--gid", str(gid), name)


def home_of(name: str) -> Path:
    return HOMES_DIR / name


def is_lab_member(name: str) -> bool:
    """True when `name` is a lab account (not one of the image's system accounts)."""
    return name in Registry.load().members or (_user_exists(name) and LAB_GROUP in _groups_of(name))


def _groups_of(name: str) -> set[str]:
    return {g.gr_name for g in grp.getgrall() if name in g.gr_mem}


def _make_account(member: Member) -> None:
    """Create (or correct) the Unix user and personal group of a registry entry."""
    name, uid = member.name, member.uid
    try:
        existing = pwd.getpwnam(name)
    except KeyError:
        existing = None
    if existing is not None and existing.pw_uid != uid:
        raise RuntimeError(
            f"The account {name!r} exists with UID {existing.pw_uid}, but the lab registry "
            f"gives it UID {uid}. Refusing to guess which is right; fix /srv/state/users.json."
        )
    try:
        group = grp.getgrgid(uid)
        if group.gr_name != name:
            raise RuntimeError(f"GID {uid}, {name!r}'s personal group, is taken by {group.gr_name}")
    except KeyError:
        _run("groupadd", "--gid", str(uid), name)
    groups = LAB_GROUP + (f",{ADMIN_GROUP}" if member.admin else "")
    if existing is None:
        _run(
            "useradd",
            "--uid", str(uid),
            "--gid", str(uid),
            "--groups", groups,
            "--home-dir", str(home_of(name)),
            "--no-create-home",
            "--shell", "/bin/bash",
            name,
        )  # fmt: skip
    else:
        _run("usermod", "--groups", groups, name)
    # The hub password's hash, so that sudo can ask for it; "!" (locked) until the first login.
    _set_hash(name, member.password_hash or "!")


def _set_hash(name: str, password_hash: str) -> None:
    # On stdin, not in argv: any user can read other processes' command lines.
    _run("chpasswd", "--encrypted", stdin=f"{name}:{password_hash}\n")


def _make_home(member: Member, private: bool) -> None:
    """Create the home if missing. An existing home's mode is the user's choice: kept."""
    home = home_of(member.name)
    if not home.exists():
        shutil.copytree("/etc/skel", home, symlinks=True, dirs_exist_ok=True)
        for root, dirs, files in os.walk(home):
            for entry in (root, *(os.path.join(root, x) for x in dirs + files)):
                os.lchown(entry, member.uid, member.uid)
        # Group `lab` on the home itself: 0750 lets lab members look in, nobody else.
        os.chown(home, member.uid, LAB_GID)
        os.chmod(home, 0o700 if private else 0o750)
        log.info("Created %s (%s)", home, "private" if private else "readable by the lab")
    link = home / "shared"
    if not os.path.lexists(link):
        # Created as root in a folder the user owns: never follow what the user put there.
        os.symlink(SHARED_DIR, link)
        os.lchown(link, member.uid, member.uid)


def ensure_account(name: str, *, admin: bool | None = None, private_home: bool = False) -> Member:
    """Make sure `name` has a lab account and a home; set its admin flag if given.

    Safe to call at every login and spawn: it only changes what differs.
    """
    ensure_lab_groups()
    with Registry() as registry:
        taken = (p.pw_uid for p in pwd.getpwall() if p.pw_name != name)
        member = registry.member(name, taken_uids=taken)
        if admin is not None:
            member.admin = admin
    _make_account(member)
    _make_home(member, private_home)
    return member


def set_password_hash(name: str, password: str) -> None:
    """Give the Unix account the same password as the hub account (for sudo).

    The hash is computed by `openssl passwd` (SHA-512 crypt, random salt), with the password
    on stdin so it never appears in a process list, and kept in the registry so that it
    survives the container.
    """
    password_hash = _run("openssl", "passwd", "-6", "-stdin", stdin=password + "\n").strip()
    with Registry() as registry:
        member = registry.members.get(name)
        if member is None:
            return
        member.password_hash = password_hash
    _set_hash(name, password_hash)


def deactivate(name: str) -> None:
    """Remove the Unix account of a deleted hub user. The home and the UID are kept."""
    with Registry() as registry:
        member = registry.members.get(name)
        if member is None:
            return
        member.active = False
        member.admin = False
    if _user_exists(name):
        with contextlib.suppress(RuntimeError):
            _run("pkill", "-KILL", "-u", name)
        _run("userdel", name)
    if _group_exists(name):
        _run("groupdel", name)


def restore_all(private_homes: bool = False) -> list[Member]:
    """Re-create every active member's account: run as root at every container start."""
    ensure_lab_groups()
    members = Registry.load().active()
    for member in members:
        _make_account(member)
        _make_home(member, private_homes)
    return members
