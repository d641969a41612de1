"""Finding and removing kernel containers that no live Jupyter server owns any more.

A server that crashes (or a hub container that is re-created) cannot remove its kernels'
containers. Each container carries its launching server's identity (labels.SERVER); a
container whose server is known to be gone is an orphan. Servers on other hosts cannot be
checked and are left alone unless asked explicitly (`labnotebook kernels prune --all`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import labels as L


@dataclass(frozen=True)
class KernelContainer:
    container_id: str
    name: str
    kernel_id: str
    owner: str
    owner_uid: str
    server: str
    status: str
    image: str
    created: int

    @classmethod
    def from_listing(cls, entry: dict[str, Any]) -> KernelContainer:
        labels = entry.get("Labels") or {}
        return cls(
            container_id=entry["Id"],
            name=(entry.get("Names") or ["?"])[0].lstrip("/"),
            kernel_id=labels.get(L.KERNEL_ID, ""),
            owner=labels.get(L.OWNER, ""),
            owner_uid=labels.get(L.OWNER_UID, ""),
            server=labels.get(L.SERVER, ""),
            status=entry.get("Status", entry.get("State", "")),
            image=entry.get("Image", ""),
            created=int(entry.get("Created", 0)),
        )

    @property
    def orphaned(self) -> bool:
        return L.server_is_gone(self.server) is True


def kernel_containers(engine: Any, owner_uid: int | None = None) -> list[KernelContainer]:
    return [KernelContainer.from_listing(e) for e in engine.kernel_containers(owner_uid)]


def prune(
    engine: Any,
    *,
    everything: bool = False,
    owner_uid: int | None = None,
    dry_run: bool = False,
) -> list[KernelContainer]:
    """Remove orphaned kernel containers (or all); returns what was (or would be) removed."""
    doomed = [k for k in kernel_containers(engine, owner_uid) if everything or k.orphaned]
    if not dry_run:
        for kernel in doomed:
            engine.remove(kernel.container_id)
    return doomed
