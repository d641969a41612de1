"""How long each GPU kernel has been idle, from the CPU time its container used.

An idle GPU is the lab's most expensive waste, and "held 2 h" does not tell a member whether
to wait or to ask: "busy 2 h" and "idle 45 min" do. The broker cannot see a kernel's
messages (its member's Jupyter server does), so it judges from what only the engine can say
and no member can forge: the CPU time of the kernel's container. Every kernel that computes,
on the CPU or by driving a GPU, uses CPU time; an idle IPython kernel uses almost none (its
heartbeat and a poll now and then).

`KernelActivity` is the bookkeeping, with no engine in it: samples in, idle-since out. The
broker samples the GPU kernels' containers every `GpuPolicy.activity_interval` seconds
(`GpuService.sample_activity`), so a kernel is known idle or busy from its second sample on.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

BUSY_CPU_SHARE = 0.02
"""A kernel is busy between two samples when it used more than this share of one CPU."""


@dataclass
class _Seen:
    cpu_seconds: float
    at: float
    idle_since: float | None
    """Wall-clock epoch seconds; None while it is busy, or before its second sample."""
    known: bool = False


class KernelActivity:
    """Container id -> since when its kernel has been idle (thread-safe)."""

    def __init__(self) -> None:
        self._seen: dict[str, _Seen] = {}
        self._lock = threading.Lock()

    def observe(self, container_id: str, cpu_seconds: float, at: float) -> None:
        """One sample: the container's total CPU time (seconds) at wall-clock time `at`."""
        with self._lock:
            before = self._seen.get(container_id)
            if before is None or at <= before.at or cpu_seconds < before.cpu_seconds:
                # The first sample (or a new container under the same id): no rate yet.
                self._seen[container_id] = _Seen(cpu_seconds, at, idle_since=None)
                return
            share = (cpu_seconds - before.cpu_seconds) / (at - before.at)
            if share > BUSY_CPU_SHARE:
                idle_since = None
            else:
                idle_since = before.idle_since if before.idle_since is not None else before.at
            self._seen[container_id] = _Seen(cpu_seconds, at, idle_since, known=True)

    def state(self, container_id: str) -> tuple[str, float | None]:
        """("idle", since) or ("busy", None); ("", None) while not known yet."""
        with self._lock:
            seen = self._seen.get(container_id)
        if seen is None or not seen.known:
            return "", None
        return ("idle", seen.idle_since) if seen.idle_since is not None else ("busy", None)

    def keep_only(self, container_ids: set[str]) -> None:
        """Forget the containers that hold no GPU any more."""
        with self._lock:
            for gone in set(self._seen) - container_ids:
                del self._seen[gone]
