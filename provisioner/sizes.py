"""Sizes in bytes: read in Docker's notation ("512m", "8g"), printed in one unit system.

Docker reads "8g" as 8 GiB (powers of 1024), so everything the lab prints about sizes uses the
same binary units: a refusal states a limit in the units the admin wrote it in, and two sizes
in one message can be compared at a glance.
"""

from __future__ import annotations

from traitlets import TraitError

_BINARY_UNITS = (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10))


def size_in_bytes(value: int | str | None) -> int | None:
    """A size given as bytes or as Docker's "512m", "8g"; None (no limit) stays None."""
    if value is None:
        return None
    if not isinstance(value, str):
        return int(value)
    # Imported here: `labnotebook kernel ...` prints sizes in the lab's kernel images, which
    # have no Docker SDK.
    from docker.utils import parse_bytes

    return int(parse_bytes(value))


def human_bytes(n: float) -> str:
    """`n` bytes in binary units with at most one decimal: "8 GiB", "1.5 GiB", "512 MiB",
    "300 bytes"."""
    for unit, factor in _BINARY_UNITS:
        if n >= factor:
            return f"{n / factor:.1f}".removesuffix(".0") + f" {unit}"
    return f"{int(n)} bytes"


def positive_size(value: int | str | None, name: str) -> int | str | None:
    """`value` unchanged if it is a positive size (bytes, "512m", "8g") or None (no limit), for
    a traitlets @validate method; otherwise a TraitError that names the setting `name`."""
    try:
        size = size_in_bytes(value)
    except Exception:  # Docker's parse error, or int() of something that is no number
        size = -1
    if size is not None and size <= 0:
        raise TraitError(
            f'{name} must be a positive size such as 2147483648, "512m" or "8g"; got {value!r}'
        )
    return value
