"""A broker request's arguments, checked against what the operation takes.

Every operation (hub/broker_operations.py, hub/broker_exports.py) names its fields and their
types; anything else in the request - above all, who is asking - is refused, since the broker
learns who asks from the operating system, never from the request.
"""

from __future__ import annotations

from typing import Any

from labnotebook.provisioner.errors import KernelConfigError

_NOT_GIVEN = object()


def arguments(request: dict[str, Any], op: str, **fields: Any) -> dict[str, Any]:
    """The op's arguments, checked: `fields` maps name -> type, or (type, default)."""
    unknown = set(request) - set(fields) - {"op"}
    if unknown:
        raise KernelConfigError(
            f"The broker's {op!r} takes no {', '.join(sorted(map(repr, unknown)))}. (Who is "
            "asking is never part of a request: the broker asks the operating system.)"
        )
    values = {}
    for name, kind in fields.items():
        kind, default = kind if isinstance(kind, tuple) else (kind, _NOT_GIVEN)
        value = request.get(name, default)
        if value is _NOT_GIVEN:
            raise KernelConfigError(f"The broker's {op!r} needs {name!r}.")
        if value is not None and (
            not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool)
        ):
            raise KernelConfigError(f"The broker's {op!r}: {name!r} has the wrong type.")
        values[name] = value
    return values
