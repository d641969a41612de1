"""Volumes a kernel container mounts, and how the notebook's folder maps into the container."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from .errors import KernelConfigError


@dataclass(frozen=True)
class Mount:
    """A named volume or a host path, mounted at `target` inside the kernel container."""

    source: str
    target: str
    read_only: bool = False

    @property
    def is_host_path(self) -> bool:
        return self.source.startswith("/")

    @classmethod
    def parse(cls, spec: str, substitutions: dict[str, str] | None = None) -> Mount:
        """Parse Docker's `-v` syntax, `SOURCE:TARGET[:ro|rw]`, after `{name}` substitutions."""
        try:
            text = spec.format(**(substitutions or {}))
        except (KeyError, IndexError, ValueError) as e:
            raise KernelConfigError(
                f"Volume {spec!r} uses an unknown placeholder {e}; "
                "known ones are {username}, {uid}, {home}."
            ) from None
        parts = text.split(":")
        mode = "rw"
        if len(parts) == 3:
            source, target, mode = parts
        elif len(parts) == 2:
            source, target = parts
        else:
            raise KernelConfigError(
                f"Volume {spec!r} is not SOURCE:TARGET or SOURCE:TARGET:ro "
                "(SOURCE: a named volume or an absolute host path)."
            )
        if mode not in ("ro", "rw"):
            raise KernelConfigError(f"Volume {spec!r}: the mode must be 'ro' or 'rw', not {mode!r}")
        if not source or not target.startswith("/"):
            raise KernelConfigError(
                f"Volume {spec!r}: the source must be a volume name or an absolute host path, "
                "and the target an absolute path in the container."
            )
        if not source.startswith("/") and not _is_volume_name(source):
            raise KernelConfigError(
                f"Volume {spec!r}: {source!r} is neither an absolute host path nor a valid "
                "volume name (letters, digits, '_', '.', '-')."
            )
        return cls(
            posixpath.normpath(source) if source.startswith("/") else source,
            posixpath.normpath(target),
            mode == "ro",
        )

    def docker_mount(self) -> dict[str, object]:
        """The HostConfig.Mounts entry, as the Docker API spells it."""
        return {
            "Type": "bind" if self.is_host_path else "volume",
            "Source": self.source,
            "Target": self.target,
            "ReadOnly": self.read_only,
        }


def _is_volume_name(name: str) -> bool:
    return name[0].isalnum() and all(c.isalnum() or c in "_.-" for c in name)


def _under(path: str, prefix: str) -> str | None:
    """The part of `path` below `prefix` ('' for the prefix itself), or None."""
    if prefix == "/":
        return path.lstrip("/")
    if path == prefix:
        return ""
    if path.startswith(prefix + "/"):
        return path[len(prefix) + 1 :]
    return None


def is_mounted(path: str, mounts: list[Mount]) -> bool:
    return any(_under(path, m.target) is not None for m in mounts)


def container_path(
    server_path: str, mounts: list[Mount], translations: dict[str, str]
) -> str | None:
    """Where a server-side folder appears inside the kernel container, if it does at all.

    Tried in order, longest prefix first within each step:
    1. `path_translations` given by the admin (server prefix -> container prefix);
    2. host-path mounts (the server sees the host's paths when it runs on the host);
    3. the mount targets themselves (the server mounts the same volume at the same place,
       as the lab hub does with /home).
    The result must lie inside a mount, since only mounted folders are shared.
    """
    path = posixpath.normpath(server_path)
    steps = [
        sorted(translations.items(), key=lambda kv: -len(kv[0])),
        sorted(
            ((m.source, m.target) for m in mounts if m.is_host_path), key=lambda kv: -len(kv[0])
        ),
        sorted(((m.target, m.target) for m in mounts), key=lambda kv: -len(kv[0])),
    ]
    for pairs in steps:
        for server_prefix, target_prefix in pairs:
            rest = _under(path, posixpath.normpath(server_prefix))
            if rest is None:
                continue
            candidate = posixpath.join(target_prefix, rest) if rest else target_prefix
            if is_mounted(candidate, mounts):
                return candidate
    return None
