"""The broker's book of notebook jobs and schedules: records, per-member queues, persistence.

Plain data, no Docker: `hub/notebook_jobs.py` decides, this module remembers. A job is
queued, then running (its runner container is the truth about that: the broker rebuilds the
running part of the book from the engine's containers at start), then succeeded, failed or
cancelled. What the engine cannot tell - the queue, finished jobs, schedules, the runners'
tokens - is kept in one root-only JSON file on the hub's state volume, written atomically
(a new file, fsync, rename), so a hub restarted or upgraded finds its book as it was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "queued", "running", "succeeded", "failed", "cancelled",
)  # fmt: skip
ENDED = frozenset({SUCCEEDED, FAILED, CANCELLED})
SCHEDULED = "scheduled"
FORMAT = 1
"""The state file's format version: a newer broker reads older files."""


def now() -> str:
    """A moment as the book and the members see it: ISO 8601, UTC, to the second."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime.datetime:
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)


@dataclass
class Job:
    """One run of a notebook. The public part (`public()`) is what its owner sees."""

    id: str
    owner: str
    owner_uid: int
    notebook: str
    output: str
    kernel: str
    image: str
    """The image as the kernelspec names it; `image_id` is what the kernel really ran."""
    kernelspec: dict[str, Any]
    """The kernelspec as it was at submit (the job runs exactly that)."""
    parameters: dict[str, Any] = field(default_factory=dict)
    state: str = QUEUED
    submitted: str = field(default_factory=now)
    started: str | None = None
    finished: str | None = None
    cell: int = 0
    cells: int = 0
    error: str = ""
    image_id: str = ""
    schedule: str | None = None
    """The schedule that made this run, if any."""
    container: str = ""
    """The runner container's ID while it runs."""
    token: str = ""
    """The runner's secret: what its kernel launches through the broker carry."""
    cancel_requested: float = 0.0
    """When the owner cancelled it while it ran (monotonic clock of this broker)."""
    log: list[str] = field(default_factory=list)
    """The runner's output lines, kept once it has ended (bounded)."""
    seq: int = 0
    """Its place in submission order (times are to the second only): the queue's order."""

    PUBLIC = (
        "id", "state", "owner", "notebook", "output", "kernel", "image", "image_id",
        "submitted", "started", "finished", "cell", "cells", "error", "schedule", "parameters",
    )  # fmt: skip

    def public(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.PUBLIC}

    @property
    def ended(self) -> bool:
        return self.state in ENDED


@dataclass
class Schedule:
    """A notebook run at the times of a cron expression; each run is a job."""

    id: str
    owner: str
    owner_uid: int
    notebook: str
    kernel: str
    image: str
    kernelspec: dict[str, Any]
    every: str
    next_run: str
    parameters: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=now)
    last_job: str | None = None
    state: str = SCHEDULED

    PUBLIC = (
        "id", "state", "owner", "notebook", "kernel", "image", "every", "next_run",
        "created", "last_job", "parameters",
    )  # fmt: skip

    def public(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.PUBLIC}


def _from_dict(cls: type[Any], data: dict[str, Any]) -> Any:
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in known})


class JobStore:
    """Jobs and schedules by ID, each member's queue in submission order, saved to `path`."""

    def __init__(self, path: str | os.PathLike[str] | None, finished_kept: int = 50) -> None:
        self.path = Path(path) if path else None
        self.finished_kept = finished_kept
        self.jobs: dict[str, Job] = {}
        self.schedules: dict[str, Schedule] = {}

    # -- persistence -------------------------------------------------------------------------

    def load(self) -> None:
        """Read the file (a missing one is an empty book)."""
        if self.path is None or not self.path.exists():
            return
        data = json.loads(self.path.read_text())
        self.jobs = {j["id"]: _from_dict(Job, j) for j in data.get("jobs", [])}
        self.schedules = {s["id"]: _from_dict(Schedule, s) for s in data.get("schedules", [])}

    def save(self) -> None:
        """Write the book atomically, readable by root only (it holds runners' tokens)."""
        if self.path is None:
            return
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        data = {
            "format": FORMAT,
            "jobs": [dataclasses.asdict(j) for j in self.jobs.values()],
            "schedules": [dataclasses.asdict(s) for s in self.schedules.values()],
        }
        fd, temporary = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                os.fchmod(f.fileno(), 0o600)
                json.dump(data, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise

    # -- questions ----------------------------------------------------------------------------

    def of_member(self, uid: int) -> list[Job]:
        return sorted((j for j in self.jobs.values() if j.owner_uid == uid), key=lambda j: j.seq)

    def running(self, uid: int | None = None) -> list[Job]:
        return [
            j
            for j in self.jobs.values()
            if j.state == RUNNING and (uid is None or j.owner_uid == uid)
        ]

    def queued(self, uid: int | None = None) -> list[Job]:
        """Queued jobs, oldest first (FIFO)."""
        waiting = [
            j
            for j in self.jobs.values()
            if j.state == QUEUED and (uid is None or j.owner_uid == uid)
        ]
        return sorted(waiting, key=lambda j: j.seq)

    def startable(self, per_member: int) -> list[Job]:
        """The queued jobs that may start now: each member's oldest, up to `per_member`
        running at once."""
        room: dict[int, int] = {}
        chosen = []
        for job in self.queued():
            if job.owner_uid not in room:
                room[job.owner_uid] = per_member - len(self.running(job.owner_uid))
            if room[job.owner_uid] > 0:
                chosen.append(job)
                room[job.owner_uid] -= 1
        return chosen

    def by_token(self, token: str) -> Job | None:
        if not token:
            return None
        for job in self.jobs.values():
            if job.state == RUNNING and job.token and job.token == token:
                return job
        return None

    def schedules_of(self, uid: int) -> list[Schedule]:
        return sorted(
            (s for s in self.schedules.values() if s.owner_uid == uid), key=lambda s: s.created
        )

    def taken(self, identifier: str) -> bool:
        return identifier in self.jobs or identifier in self.schedules

    # -- changes ------------------------------------------------------------------------------

    def add(self, job: Job) -> None:
        job.seq = max((j.seq for j in self.jobs.values()), default=0) + 1
        self.jobs[job.id] = job

    def add_schedule(self, schedule: Schedule) -> None:
        self.schedules[schedule.id] = schedule

    def forget_finished(self) -> list[str]:
        """Keep each member's newest `finished_kept` ended jobs; the IDs forgotten."""
        forgotten = []
        by_member: dict[int, list[Job]] = {}
        for job in self.jobs.values():
            if job.ended:
                by_member.setdefault(job.owner_uid, []).append(job)
        for jobs in by_member.values():
            jobs.sort(key=lambda j: (j.finished or j.submitted, j.seq))
            for job in jobs[: max(0, len(jobs) - self.finished_kept)]:
                del self.jobs[job.id]
                forgotten.append(job.id)
        return forgotten
