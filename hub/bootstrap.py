"""The one-time setup token that the first `admin` sign-up requires.

Whoever reaches a fresh hub's port first must not become its administrator. Until an admin
account exists, the hub keeps a random token in the state volume (readable by root only) and
prints it in its log; `make up` prints it too. Signing up under an admin name requires it,
and a successful admin sign-up consumes it.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
from pathlib import Path

from .settings import STATE_DIR

TOKEN_FILE = STATE_DIR / "admin-setup-token"


def ensure_token(path: Path = TOKEN_FILE) -> str:
    """The pending setup token, created on first use."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    token = secrets.token_urlsafe(18)
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL: two processes racing to create it agree on the first one's token.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def check_token(candidate: str, path: Path = TOKEN_FILE) -> bool:
    """True when `candidate` is the pending token (compared in constant time)."""
    try:
        expected = path.read_text().strip()
    except FileNotFoundError:
        return False
    return bool(expected) and hmac.compare_digest(candidate.strip().encode(), expected.encode())


def consume_token(path: Path = TOKEN_FILE) -> None:
    """Invalidate the token once the admin account exists."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
