"""Kernel addresses on the lab network: a restarted kernel gets its old one back, and nobody
else's kernel can take it in between.

A restart is two broker requests: `remove` (the old container), then `launch` (the new one,
asking for the old address, so that clients made before the restart find the kernel again).
Docker frees the address at the removal, and its own allocator would hand it to the next
container that asks for any address. So the broker gives every kernel its address itself,
from the network's subnet, and keeps a removed kernel's address for its owner and kernel id
for `hold` seconds. A launch may ask for an address only when it is held for that member and
that kernel; anything else is `AddressUnavailable`, and the member's server starts the kernel
on a new address with new ports instead.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

from labnotebook.provisioner.errors import AddressUnavailable
from labnotebook.provisioner.spec import KernelContainerSpec, LaunchedContainer


@dataclass
class _Hold:
    uid: int
    kernel_id: str
    until: float


class AddressBook:
    """The addresses the broker holds for restarting kernels, and how launches get one."""

    def __init__(self, network: str, hold: float, log: logging.Logger | Any) -> None:
        self.network = network
        self.hold = hold
        self.log = log
        self._holds: dict[str, _Hold] = {}
        self._in_use: dict[str, tuple[str, int, str]] = {}
        """container id -> (address, owner uid, kernel id), from the launch: a stopped
        container no longer reports its address, and a kernel stops before its removal."""
        self._lock = threading.RLock()  # launch() holds it while held() takes it again
        self._fixed_addresses = True
        """False once the engine refused a fixed address on this network (no configured
        subnet): launches then take whatever address Docker gives."""

    def release(self, container_id: str) -> None:
        """A kernel's container is gone: keep its address for the same kernel a while."""
        with self._lock:
            address, uid, kernel_id = self._in_use.pop(container_id, ("", 0, ""))
            if address and kernel_id and self.hold > 0:
                self._holds[address] = _Hold(uid, kernel_id, time.monotonic() + self.hold)

    def _record(self, launched: LaunchedContainer, uid: int, kernel_id: str) -> None:
        with self._lock:
            self._in_use[launched.container_id] = (launched.ip, uid, kernel_id)

    def held(self) -> set[str]:
        now = time.monotonic()
        with self._lock:
            for address in [a for a, h in self._holds.items() if h.until < now]:
                del self._holds[address]
            return set(self._holds)

    def launch(self, spec: KernelContainerSpec, uid: int, engine: Any) -> LaunchedContainer:
        """Launch `spec` on an address the broker chose, or on the one it asks for if that
        is held for this member's kernel."""
        launched = self._launch(spec, uid, engine)
        self._record(launched, uid, spec.kernel_id)
        return launched

    def _launch(self, spec: KernelContainerSpec, uid: int, engine: Any) -> LaunchedContainer:
        if spec.ip:
            self._claim(spec.ip, uid, spec.kernel_id)
            return engine.launch_container(spec)
        address = None
        if self._fixed_addresses:
            with self._lock:  # concurrent launches must not pick the same free address
                address = engine.free_address(self.network, self.held())
                if address:
                    # Held for this launch while it runs; released below if it fails.
                    self._holds[address] = _Hold(uid, spec.kernel_id, time.monotonic() + 60)
        if address is None:
            return engine.launch_container(spec)
        try:
            launched = engine.launch_container(replace(spec, ip=address))
        except AddressUnavailable as refused:
            self.log.warning(
                "Kernels on network %s cannot keep their address across restarts: %s. "
                "Re-create the network with a configured subnet (see the README).",
                self.network,
                refused,
            )
            self._fixed_addresses = False
            launched = engine.launch_container(spec)
        finally:
            with self._lock:
                self._holds.pop(address, None)
        return launched

    def _claim(self, address: str, uid: int, kernel_id: str) -> None:
        self.held()  # forget expired holds
        with self._lock:
            hold = self._holds.get(address)
            if hold is None or (hold.uid, hold.kernel_id) != (uid, kernel_id):
                raise AddressUnavailable(
                    f"The address {address} is not held for this kernel (a restarted kernel "
                    "gets its own old address back only)."
                )
            del self._holds[address]
