"""The lab's build slots: one build or export per member at a time, and at most
`BuildPolicy.max_builds` in the whole lab.

Kernel builds (hub/broker_builds.py) and exports (hub/broker_exports.py) are jobs of two
services that share these slots. A job holds its slot from `reserve` for as long as it is
active (hub/broker_jobs.py: running, or an upload still coming); after that the slot is free
again, with nothing to hand back. A reservation touches no other job but one: an upload that
stalled while it held a slot loses it for good (its own cancel is set), so that it cannot
resume next to the job that took its place. A finished job is never cancelled by somebody
else's start: its check (an export's) may still run later, taking a slot of its own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from labnotebook.provisioner.errors import PermissionRefused

from .broker_jobs import Job


class BuildSlots:
    """Who holds the lab's build slots (the jobs themselves, by ID)."""

    def __init__(self, most: Callable[[], int]) -> None:
        """`most()`: how many jobs may hold a slot at once (read at each reservation)."""
        self._most = most
        self._holders: dict[str, tuple[Job, str]] = {}
        self._lock = threading.Lock()

    def reserve(
        self,
        job: Job,
        *,
        busy: str,
        full: str | None,
        label: str | None = None,
        running: bool = False,
    ) -> None:
        """Give `job` a slot, or refuse: `busy` while its member has an active job (its
        `{name!r}` is the holder's label), `full` (None: no lab-wide bound) while `most()`
        jobs hold one (`{count}`). `label` names the job in others' refusals (its name);
        `running` marks it running as it takes the slot (a finished export's check)."""
        with self._lock:
            self._let_go()
            mine = [label for held, label in self._holders.values() if held.uid == job.uid]
            if mine:
                raise PermissionRefused(busy.format(name=mine[0]))
            if full is not None and len(self._holders) >= self._most():
                raise PermissionRefused(full.format(count=len(self._holders)))
            if running:
                job.state = "running"
            self._holders[job.id] = (job, label or job.name)

    def release(self, job: Job) -> None:
        """`job` is forgotten by its service: whatever it held is free."""
        with self._lock:
            self._holders.pop(job.id, None)

    def held(self) -> list[Job]:
        """The jobs that hold a slot now."""
        with self._lock:
            self._let_go()
            return [job for job, _ in self._holders.values()]

    def _let_go(self) -> None:
        """Under the lock: free the slots of jobs no longer active."""
        for key, (job, _) in list(self._holders.items()):
            if not job.active:
                if not job.finished:
                    job.cancel.set()  # a stalled upload: it may not resume
                del self._holders[key]
