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

from . import safefs
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


def group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def ensure_lab_groups() -> None:
    """The `lab` and `labadmin` groups, with fixed GIDs (files on the volume refer to them)."""
    for name, gid in ((LAB_GROUP, LAB_GID), (ADMIN_GROUP, ADMIN_GID)):
        if not group_exists(name):
            _run("groupadd", "--gid", str(gid), name)


def home_of(name: str) -> Path:
    return HOMES_DIR / name


def is_lab_member(name: str) -> bool:
    """True when `name` is a lab account (not one of the image's system accounts)."""
    return name in Registry.load().members or (user_exists(name) and LAB_GROUP in _groups_of(name))


def _groups_of(name: str) -> set[str]:
    return {g.gr_name for g in grp.getgrall() if name in g.gr_mem}


class AccountProblem(RuntimeError):
    """A registry entry that cannot become a Unix account in this image (said to the admin)."""


def _collision(member: Member) -> str | None:
    """Why `member` cannot have their account here: their name or IDs belong to the image."""
    name, uid = member.name, member.uid
    try:
        existing = pwd.getpwnam(name)
    except KeyError:
        existing = None
    if existing is not None and existing.pw_uid != uid:
        return (
            f"{name!r} is the image's system account (UID {existing.pw_uid}), and the lab "
            f"registry gives the member {name!r} UID {uid}"
        )
    try:
        group = grp.getgrnam(name)
    except KeyError:
        group = None
    if group is not None and group.gr_gid != uid:
        return f"{name!r} is a system group of the image (GID {group.gr_gid})"
    try:
        owner = grp.getgrgid(uid)
    except KeyError:
        owner = None
    if owner is not None and owner.gr_name != name:
        return f"GID {uid}, {name!r}'s personal group, is the image's group {owner.gr_name!r}"
    return None


def _make_account(member: Member) -> None:
    """Create (or correct) the Unix user and personal group of a registry entry."""
    if problem := _collision(member):
        raise AccountProblem(
            f"The lab member {member.name!r} has no account in the hub: {problem}. "
            f"Their files stay on the homes volume, owned by UID {member.uid}. To fix it, "
            f"delete {member.name!r} in /hub/admin, have them sign up again under another "
            f"name, and give them their files: sudo chown -R NEWNAME: /home/{member.name}, "
            f"then move it to /home/NEWNAME."
        )
    name, uid = member.name, member.uid
    if not group_exists(name):
        _run("groupadd", "--gid", str(uid), name)
    groups = LAB_GROUP + (f",{ADMIN_GROUP}" if member.admin else "")
    if not user_exists(name):
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
    _set_hash(name, _local_hash(member))


def _local_hash(member: Member) -> str:
    """Only admins, who need it for sudo, have a usable local password: every other member's
    is locked ("!"), so nobody can guess it with `su` from a terminal, beside the web lockout."""
    return (member.password_hash or "!") if member.admin else "!"


def _set_hash(name: str, password_hash: str) -> None:
    # On stdin, not in argv: any user can read other processes' command lines.
    _run("chpasswd", "--encrypted", stdin=f"{name}:{password_hash}\n")


def _make_home(member: Member, private: bool) -> list[str]:
    """Create the home if missing, and the `~/shared` link; warnings for what was skipped.

    Runs as root in folders the member controls (their home), so through descriptors only
    (see `safefs`): a member's symlink is never followed. An existing home's mode is the
    user's choice: kept.
    """
    name, uid = member.name, member.uid
    with safefs.open_dir(str(HOMES_DIR)) as homes:
        kind = safefs.entry_kind(name, homes)
        if kind == "missing":
            _create_home(member, homes, private)
        elif kind != "a folder":
            return [f"/home/{name} is {kind}, not a folder: {name}'s home was left alone."]
        try:
            with safefs.open_dir(name, homes) as home:
                safefs.symlink(str(SHARED_DIR), "shared", home, uid, uid)
        except safefs.UnsafePath as problem:  # replaced between the two looks
            return [f"/home/{name}: {problem}"]
    return []


def _create_home(member: Member, homes: int, private: bool) -> None:
    name, uid = member.name, member.uid
    # Root's until the end, so nobody can change anything in it while it is filled.
    os.mkdir(name, 0o700, dir_fd=homes)
    home = home_of(name)
    shutil.copytree("/etc/skel", home, symlinks=True, dirs_exist_ok=True)
    for root, dirs, files in os.walk(home):
        for entry in dirs + files:
            os.lchown(os.path.join(root, entry), uid, uid)
    with safefs.open_dir(name, homes) as fd:
        # Group `lab` on the home itself: 0750 lets lab members look in, nobody else.
        safefs.set_owner_mode(fd, uid, LAB_GID, 0o700 if private else 0o750)
    log.info("Created %s (%s)", home, "private" if private else "readable by the lab")


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
    for warning in _make_home(member, private_home):
        log.warning("%s", warning)
    return member


def set_password_hash(name: str, password: str) -> None:
    """Give an admin's Unix account the same password as the hub account (for sudo).

    Other members' local passwords stay locked (see `_local_hash`).

    The hash is computed by `openssl passwd` (SHA-512 crypt, random salt), with the password
    on stdin so it never appears in a process list, and kept in the registry so that it
    survives the container.
    """
    password_hash = _run("openssl", "passwd", "-6", "-stdin", stdin=password + "\n").strip()
    with Registry() as registry:
        member = registry.members.get(name)
        if member is None:
            return
        member.password_hash = password_hash if member.admin else ""
    _set_hash(name, _local_hash(member))


def deactivate(name: str) -> None:
    """Remove the Unix account of a deleted hub user. The home and the UID are kept."""
    with Registry() as registry:
        member = registry.members.get(name)
        if member is None:
            return
        member.active = False
        member.admin = False
    if user_exists(name):
        end_processes(name)
        _run("userdel", name)
    if group_exists(name):
        _run("groupdel", name)


def end_processes(name: str) -> None:
    """Kill every process of a lab member in the hub container (none running is fine)."""
    if user_exists(name):
        with contextlib.suppress(RuntimeError):  # pkill exits 1 when nothing matched
            _run("pkill", "-KILL", "-u", name)


def restore_all(private_homes: bool = False) -> tuple[list[Member], list[str]]:
    """Re-create every active member's account: run as root at every container start.

    One entry that cannot be made (its name became a system group in a new image, say) is
    skipped with a warning for the admin, never a start that fails: the rest of the lab works.
    """
    ensure_lab_groups()
    restored, warnings = [], []
    for member in Registry.load().active():
        try:
            _make_account(member)
            warnings += _make_home(member, private_homes)
        except (AccountProblem, RuntimeError, OSError) as problem:
            warnings.append(str(problem))
            continue
        restored.append(member)
    for warning in warnings:
        log.warning("%s", warning)
    return restored, warnings
