"""Which user names the lab accepts: names `useradd` takes that are no user or group of the
hub image (the lab's own groups included)."""

from __future__ import annotations

import re

MAX_LENGTH = 32
"""useradd's limit on Linux (UT_NAMESIZE)."""

# Lowercase, starting with a letter: Debian's useradd/adduser default (NAME_REGEX), without the
# trailing "$" of machine accounts and without the leading "_" of system accounts.
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_-]*$")

RESERVED = frozenset(
    """
    root daemon bin sys sync games man lp mail news uucp proxy www-data backup list irc gnats
    nobody nogroup systemd-network systemd-resolve systemd-timesync messagebus sshd polkitd
    docker sudo adm wheel staff users operator shadow utmp tty disk kmem dialout fax voice
    cdrom floppy tape audio video plugdev netdev input render sgx kvm crontab ftp postgres
    mysql lab labadmin shared readonly jupyter jupyterhub hub labnotebook kernel kernels
    """.split()  # noqa: SIM905 - a word list reads better than 70 quoted names
)
"""Names that are, or could become, system accounts or groups in the hub or kernel images,
and the names of the lab's own groups and folders (/home/shared)."""


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a lab member's name, or None when it can."""
    if not name:
        return "Please choose a user name."
    if len(name) > MAX_LENGTH:
        return f"User names are at most {MAX_LENGTH} characters long."
    if not NAME_PATTERN.match(name):
        return (
            "User names start with a lowercase letter (a-z) and contain only lowercase "
            "letters, digits, '-' and '_' - no spaces, dots or capitals."
        )
    if name in RESERVED or name.startswith("systemd-"):
        return f"{name!r} is reserved for the system. Please choose another user name."
    # Every user *and group* of the hub image that is not one of ours is the system's: a
    # member called `staff` or `src` would get an account whose personal group cannot exist.
    from .users import group_exists, is_lab_member, user_exists

    if (user_exists(name) or group_exists(name)) and not is_lab_member(name):
        return f"{name!r} is reserved for the system. Please choose another user name."
    return None
