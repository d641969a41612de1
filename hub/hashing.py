"""bcrypt, off the hub's event loop.

NativeAuthenticator hashes and checks passwords on JupyterHub's single event loop: every
sign-up or login holds up every other request of the hub for a quarter of a second, and a
flood of them stalls it. Here the work runs in small thread pools of its own (bcrypt releases
the GIL), one for logins and one for new passwords, so a flood of sign-ups cannot make
members' logins queue behind it either.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import bcrypt


def _lower_priority() -> None:
    # Linux schedules threads separately: new passwords (sign-ups, a flood of them) yield
    # the CPU to members' logins.
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


_LOGINS = ThreadPoolExecutor(2, thread_name_prefix="bcrypt-login")
_NEW_PASSWORDS = ThreadPoolExecutor(1, "bcrypt-new", initializer=_lower_priority)

# A hash made ahead, off the loop, for the synchronous NativeAuthenticator method that is
# about to store it (create_user, change_password): (password, hash). Per request: each
# request's handler runs in its own asyncio task, with its own context.
_PREPARED: contextvars.ContextVar[tuple[str, bytes] | None] = contextvars.ContextVar(
    "labnotebook_prepared_hash", default=None
)


@functools.cache
def _no_such_user_hash() -> bytes:
    # Checked against when a name does not exist, so a login takes as long either way and
    # its timing does not tell who has an account.
    return bcrypt.hashpw(b"labnotebook: nobody has this password", bcrypt.gensalt())


def _check(password: str, stored: bytes | None) -> bool:
    hashed = stored if stored else _no_such_user_hash()
    try:
        return bcrypt.checkpw(password.encode(), hashed) and stored is not None
    except ValueError:  # a malformed stored hash, or a password bcrypt refuses
        return False


async def check(password: str, stored: bytes | None) -> bool:
    """Whether `password` matches the bcrypt hash `stored` (None: no such user - the same
    work is done, and the answer is False)."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_LOGINS, _check, password, stored)


async def new_hash(password: str) -> bytes:
    """A bcrypt hash of a new password, with a fresh salt."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(
        _NEW_PASSWORDS, lambda: bcrypt.hashpw(password.encode(), bcrypt.gensalt())
    )


@contextlib.contextmanager
def prepared(password: str, hashed: bytes) -> Iterator[None]:
    """While inside, `hash_for(password)` answers `hashed` without hashing again."""
    token = _PREPARED.set((password, hashed))
    try:
        yield
    finally:
        _PREPARED.reset(token)


def hash_for(password: str) -> bytes:
    """The prepared hash of `password` if this request made one, else a fresh one (slow: only
    for callers outside a request, such as scripts)."""
    ready = _PREPARED.get()
    if ready is not None and ready[0] == password:
        return ready[1]
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt())
