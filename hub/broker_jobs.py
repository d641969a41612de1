"""A member's long job in the broker - a kernel build or an export - and the conversation
that feeds, follows and stops it.

Both are the same few steps on the broker's socket, each one request and one answer:

    KIND          {...}                      -> {KIND, chunk}   (the service's own checks)
    KIND_data     {KIND, data, last}         -> {received}      (the member's bytes, in chunks)
    KIND_status   {KIND, since, wait}        -> {lines, next, done, result | error}
    KIND_cancel   {KIND}

where KIND is the service's `kind` ("build", "export"). `JobService` carries out the last
three and the job's life around them: the chunks are spooled into an unlinked temporary file
and refused past the announced size or the lab's limit; the last one starts `_build` in a
thread of its own; status long-polls the job's log; a job whose upload nobody continues loses
its place, and a finished one is forgotten once nobody has asked about it for a while.
Subclasses say what starting a job checks and what `_build` does.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import IO, Any, ClassVar, Generic, TypeVar

import docker.errors
from labnotebook.provisioner.build_container import BuildFailed, BuildLog
from labnotebook.provisioner.build_context import too_large
from labnotebook.provisioner.errors import KernelConfigError, KernelLaunchError, PermissionRefused

from .broker_policy import Peer

CHUNK = 512 << 10
"""Upload bytes per KIND_data request: base64 of it stays well under a request line."""
STALLED_UPLOAD = 120.0
"""Seconds after which an upload nobody continues no longer holds the member's slot."""
KEEP_FINISHED = 600.0
"""Seconds a finished job's outcome stays for status (and export_save) after the last ask."""
MAX_STATUS_LINES = 500
"""Log lines per status answer: a long log comes in several answers, each under the limit."""


@dataclass(kw_only=True)
class Job:
    """One member's job: its upload, its log, where it is, and how it ended."""

    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    uid: int
    username: str
    name: str
    size: int
    """The bytes announced: the upload must be exactly this long."""
    file: IO[bytes]
    log: BuildLog
    received: int = 0
    state: str = "upload"  # upload, running, done, failed
    touched: float = field(default_factory=time.monotonic)
    result: dict[str, Any] | None = None
    error: KernelLaunchError | None = None
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def active(self) -> bool:
        """Whether the job holds its member's slot: running, or an upload still coming."""
        if self.state == "upload":
            return time.monotonic() - self.touched < STALLED_UPLOAD
        return self.state == "running"

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed")

    def touch(self) -> None:
        """Someone asked about the job: it is not abandoned."""
        self.touched = time.monotonic()

    def write(self, chunk: bytes) -> None:
        self.file.write(chunk)


J = TypeVar("J", bound=Job)


class JobService(Generic[J]):
    """The members' jobs of one kind, by ID; the upload, status, cancel and run steps."""

    kind: ClassVar[str]
    """The operations' prefix and the job's word in messages, logs and thread names."""
    complete: ClassVar[str]
    """The refusal of more data once the last chunk came."""
    cut_short: ClassVar[str]
    """The refusal of a last chunk before the announced size ({received}, {size})."""
    sent: ClassVar[str]
    """What the member sent, for `too_large`."""
    quick_polls: ClassVar[float] = 0.0
    """Seconds of a status call polled quickly, so jobs that end at once answer at once."""

    def __init__(self, log: Any) -> None:
        self.log = log
        self._jobs: dict[str, J] = {}
        self._lock = threading.Lock()

    # -- what a kind of job says ---------------------------------------------------------------

    @property
    def upload_limit(self) -> int:
        """The most bytes a member may send for one job (the lab's, whatever they announce)."""
        raise NotImplementedError

    def _build(self, job: J) -> dict[str, Any]:
        """The work, in the job's thread: its result, or a KernelLaunchError for the member."""
        raise NotImplementedError

    def _ended(self, job: J) -> None:
        """After the job's work, failed or not (its file is closed)."""

    # -- the table of jobs (under self._lock) --------------------------------------------------

    def _forget_finished(self) -> None:
        """Let go of jobs nobody follows any more: finished ones after KEEP_FINISHED, uploads
        that stalled or were stopped from elsewhere."""
        now = time.monotonic()
        for job in list(self._jobs.values()):
            if job.finished and now - job.touched > KEEP_FINISHED:
                self._forget(job)
            elif job.state == "upload" and (not job.active or job.cancel.is_set()):
                self._drop(job)

    def _drop(self, job: J) -> None:
        """Stop `job`; forget it unless it is running (its thread sees `cancel` and ends)."""
        job.cancel.set()
        if job.state != "running":
            self._forget(job)

    def _forget(self, job: J) -> None:
        job.file.close()
        self._jobs.pop(job.id, None)

    def _job(self, peer: Peer, job_id: str) -> J:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None or job.uid != peer.uid:
            raise KernelConfigError(
                f"No such {self.kind} of yours (it finished long ago, or was abandoned)."
            )
        job.touch()
        return job

    # -- the conversation ----------------------------------------------------------------------

    def data(self, peer: Peer, job_id: str, data: str, last: bool) -> dict[str, Any]:
        job = self._job(peer, job_id)
        if job.state != "upload":
            raise KernelConfigError(self.complete)
        if job.cancel.is_set():
            raise KernelConfigError(f"This {self.kind} was stopped.")
        try:
            chunk = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise KernelConfigError(f"{self.kind}_data: 'data' must be base64.") from None
        job.received += len(chunk)
        if job.received > job.size or job.received > self.upload_limit:
            with self._lock:
                self._drop(job)
            raise PermissionRefused(too_large(self.sent, self.upload_limit))
        job.write(chunk)
        if last:
            if job.received != job.size:
                with self._lock:
                    self._drop(job)
                raise KernelConfigError(self.cut_short.format(received=job.received, size=job.size))
            self._start(job)
        return {"received": job.received}

    def _start(self, job: J) -> None:
        job.state = "running"
        threading.Thread(
            target=self._run, args=(job,), name=f"{self.kind}-{job.username}", daemon=True
        ).start()

    async def status(self, peer: Peer, job_id: str, since: int, wait: float) -> dict[str, Any]:
        job = self._job(peer, job_id)
        called = time.monotonic()
        deadline = called + max(0.0, min(wait, 10.0))
        while True:
            lines, following = job.log.since(since)
            finished = job.finished
            now = time.monotonic()
            # New lines go out in batches of about a second: prompt, and not a request per line.
            if finished or now >= deadline or (lines and now - called >= min(wait, 1.0)):
                break
            await asyncio.sleep(0.02 if now - called < self.quick_polls else 0.1)
        lines = lines[:MAX_STATUS_LINES]
        answer: dict[str, Any] = {
            "lines": lines,
            "next": since + len(lines) if len(lines) == MAX_STATUS_LINES else following,
            "done": finished and len(lines) < MAX_STATUS_LINES,
        }
        if answer["done"]:
            answer["result"] = job.result
            if job.error is not None:
                answer["error"] = type(job.error).__name__
                answer["message"] = str(job.error)
        return answer

    def cancel(self, peer: Peer, job_id: str) -> None:
        job = self._job(peer, job_id)
        with self._lock:
            self._drop(job)

    # -- the job's thread ----------------------------------------------------------------------

    def _run(self, job: J) -> None:
        """`_build`, its failures turned into what the member reads, and one line in the log."""
        started = time.monotonic()
        try:
            job.result = self._build(job)
            job.state = "done"
            job.log.add(f"==> Built {job.result['repository']}:{job.result['tag']}")
        except KernelLaunchError as e:
            job.error, job.state = e, "failed"
        except docker.errors.APIError as e:
            job.error = BuildFailed(f"The Docker engine refused: {e.explanation or e}")
            job.state = "failed"
        except Exception as e:
            # A bug or a surprise of ours: the member learns only that, the admin the details.
            self.log.exception("%s %s of %s failed", self.kind.capitalize(), job.name, job.username)
            job.error = KernelLaunchError(
                f"The kernel broker failed during the {self.kind} ({type(e).__name__}); the lab's "
                "admin will find details in the broker's log."
            )
            job.state = "failed"
        finally:
            job.file.close()
            job.touch()
            self._ended(job)
            self.log.info(
                "%s(%d) %s %s: %s in %.0f s",
                job.username,
                job.uid,
                self.kind,
                job.name,
                "ok" if job.state == "done" else type(job.error).__name__,
                time.monotonic() - started,
            )
