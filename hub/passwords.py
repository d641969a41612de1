"""The lab's password policy, with a message for each way a password can be refused."""

from __future__ import annotations

from functools import cache
from pathlib import Path

BCRYPT_MAX_BYTES = 72
"""bcrypt only looks at the first 72 bytes; bcrypt >= 5 raises on longer passwords."""


@cache
def _common_passwords() -> frozenset[str]:
    import nativeauthenticator

    listing = Path(nativeauthenticator.__file__).parent / "common-credentials.txt"
    return frozenset(listing.read_text(errors="ignore").splitlines())


def too_long(password: str) -> str | None:
    """The message for a password bcrypt cannot hash, or None."""
    size = len(password.encode())
    if size <= BCRYPT_MAX_BYTES:
        return None
    return (
        f"Passwords can be at most {BCRYPT_MAX_BYTES} bytes long, and this one is {size} bytes "
        "(letters outside A-Z count as 2-4 bytes). Please choose a shorter one."
    )


def password_problem(username: str, password: str, minimum_length: int) -> str | None:
    """Why `password` is refused for `username`, or None when it is acceptable.

    The rules follow NIST SP 800-63B: a minimum length, no known-breached or common
    passwords, nothing derived from the user name - and no arbitrary composition rules.
    """
    if len(password) < minimum_length:
        return f"Passwords must be at least {minimum_length} characters long."
    if message := too_long(password):
        return message
    lowered = password.lower()
    if lowered in _common_passwords() or password in _common_passwords():
        return "This password is on a list of commonly used passwords. Please choose another."
    if username and username.lower() in lowered:
        return "Passwords must not contain the user name."
    if len(set(password)) < 4:
        return "This password repeats too few different characters. Please choose another."
    return None
