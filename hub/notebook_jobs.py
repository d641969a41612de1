"""Notebook jobs: notebooks run to the end by the broker, whatever happens to the browser.

`labnotebook jobs submit NOTEBOOK` (provisioner/jobs.py) sends the notebook's path, the
kernelspec and the parameters; `NotebookJobs.submit` checks them at once - the notebook
(hub/job_notebooks.py), the kernel's image against the lab's rules, the member's queue -
and books the job (hub/job_store.py). The broker's tending loop (`tend`, every second)
starts queued jobs as each member's running ones allow (`JobPolicy.jobs_per_member`), reads
running runners' progress and harvests the ones that ended (hub/job_runners.py), and turns
due schedules (croniter) into jobs. The runner's kernel goes through `op_launch` like any
kernel, so it counts against the member's memory and GPU caps.

Only a job's owner and the lab's admins see, cancel or read it.

At start (`recover`) the book is read back and checked against the engine's runner
containers: a runner that ended while the broker was away is harvested, a job whose runner
vanished ends `failed`, a runner the book does not know (its file lost) is adopted from its
labels or, if that cannot be done, removed.
"""

from __future__ import annotations

import datetime
import logging
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

from labnotebook.provisioner import labels as L
from labnotebook.provisioner.defaults import KERNEL_IMAGE
from labnotebook.provisioner.errors import KernelConfigError, KernelLaunchError, PermissionRefused
from labnotebook.provisioner.job_runner import progress_of, shown_lines
from labnotebook.provisioner.sizes import human_bytes, positive_size, size_in_bytes
from traitlets import Float, Int, Unicode, Union, validate
from traitlets.config import LoggingConfigurable

from . import job_notebooks
from .broker_policy import LaunchPolicy, Peer, username
from .job_runners import JobRunners
from .job_store import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    Job,
    JobStore,
    Schedule,
    now,
    parse_time,
)

PROVISIONER = "labnotebook-docker"
KEPT_LOG_LINES = 500


class JobPolicy(LoggingConfigurable):
    """The admin's rules for notebook jobs (`labnotebook jobs`), in the broker's config:

    c.JobPolicy.jobs_per_member = 2
    c.JobPolicy.queue_per_member = 10
    """

    jobs_per_member = Int(
        2,
        config=True,
        help="""Jobs one member may have running at once; more wait in her queue, oldest
        first. Each running job's kernel also counts against her kernel memory and GPUs.""",
    )
    queue_per_member = Int(
        10,
        config=True,
        help="""Jobs one member may have waiting at once; a submit beyond it is refused.""",
    )
    schedules_per_member = Int(
        10, config=True, help="Schedules (`jobs submit --every`) one member may have."
    )
    finished_kept = Int(
        50, config=True, help="Ended jobs kept per member for `jobs ls` (the newest)."
    )
    runner_image = Unicode(
        "labnotebook/hub:latest",
        config=True,
        help="""The image the jobs' runner containers run (papermill, jupyter_client and the
        provisioner): the hub's own.""",
    )
    runner_memory = Union(
        [Int(), Unicode()],
        default_value="1g",
        config=True,
        help="""Memory limit of a job's runner container (it holds the notebook and its
        outputs, not the member's data: that is the kernel's). Not counted against the
        member's kernel memory.""",
    )
    runner_cpus = Float(1.0, config=True, help="CPU limit of a job's runner container.")
    runner_pids = Int(256, config=True, help="Process limit of a job's runner container.")
    state_file = Unicode(
        "/srv/state/jobs.json",
        config=True,
        help="""The book of queued and ended jobs and schedules (root only), on the state
        volume so it outlives the hub container.""",
    )
    tend_interval = Float(1.0, config=True, help="Seconds between the broker's job rounds.")
    cancel_grace = Float(
        15.0,
        config=True,
        help="""Seconds a cancelled job's runner has to shut its kernel down and write the
        partial notebook before the broker removes it.""",
    )
    max_log_wait = Float(30.0, config=True, help="Longest a `jobs logs -f` request waits.")

    @validate("runner_memory")
    def _positive_size(self, proposal: dict[str, Any]) -> Any:
        return positive_size(proposal["value"], proposal["trait"].name)


def _new_id(taken: Callable[[str], bool]) -> str:
    while True:
        candidate = secrets.token_hex(4)
        if not taken(candidate) and not candidate.isdigit():
            return candidate


def kernelspec_image(kernel: str, kernelspec: Any) -> str:
    """The image a submitted kernelspec runs, or a refusal if it is not a Docker kernel."""
    if not isinstance(kernelspec, dict) or not isinstance(kernelspec.get("argv"), list):
        raise KernelConfigError(f"The kernelspec of {kernel!r} is not a kernelspec.")
    provisioner = (kernelspec.get("metadata") or {}).get("kernel_provisioner") or {}
    if provisioner.get("provisioner_name") != PROVISIONER:
        raise KernelConfigError(
            f"The kernel {kernel!r} does not run in a container of the lab, so it cannot run "
            "a job (jobs run apart from your server). Choose one of the lab's Docker kernels "
            "(`jupyter kernelspec list`, e.g. --kernel python-docker) or one you built "
            "(`labnotebook kernel ls`)."
        )
    image = (provisioner.get("config") or {}).get("image") or KERNEL_IMAGE
    if not isinstance(image, str):
        raise KernelConfigError(f"The kernelspec of {kernel!r} names no image.")
    return image


class NotebookJobs:
    """The broker's notebook jobs. Methods block (engine calls): the operations run them in
    the broker's thread pool; one lock keeps the book consistent."""

    def __init__(
        self,
        engine: Any,
        policy: LaunchPolicy,
        job_policy: JobPolicy,
        log: logging.Logger | Any,
        *,
        is_admin: Callable[[Peer], bool],
        may_run_image: Callable[[Peer, str], bool],
        remove_kernel: Callable[[str], None],
    ) -> None:
        self.engine = engine
        self.policy = policy
        self.settings = job_policy
        self.log = log
        self.is_admin = is_admin
        self.may_run_image = may_run_image
        self.store = JobStore(job_policy.state_file or None, job_policy.finished_kept)
        self.runners = JobRunners(
            engine,
            policy,
            image=job_policy.runner_image,
            memory=size_in_bytes(job_policy.runner_memory),
            nano_cpus=int(job_policy.runner_cpus * 1e9) if job_policy.runner_cpus else None,
            pids_limit=job_policy.runner_pids,
            remove_kernel=remove_kernel,
        )
        self._lock = threading.RLock()
        self._loaded = False
        self._folders: dict[str, tuple[str, str]] = {}
        """job -> (folder, language), from the check at submit, for starting it."""

    # -- the member's operations ------------------------------------------------------------

    def submit(
        self,
        peer: Peer,
        notebook: str,
        kernel: str,
        kernelspec: dict[str, Any],
        parameters: dict[str, Any] | None,
        every: str | None,
    ) -> dict[str, Any]:
        parameters = dict(parameters or {})
        if not all(isinstance(k, str) and k.isidentifier() for k in parameters):
            raise KernelConfigError("Parameter names must be names (letters, digits, _).")
        if not isinstance(kernel, str) or not kernel or len(kernel) > 255:
            raise KernelConfigError("A job needs the name of its kernel.")
        image = kernelspec_image(kernel, kernelspec)
        if not self.may_run_image(peer, image):
            raise PermissionRefused(
                f"The kernel {kernel!r} runs the image {image!r}, which is not one of this "
                "lab's kernel images nor one you may use. Choose another kernel, or ask the "
                "lab's admin to allow it (LaunchPolicy.allowed_images)."
            )
        if not self._image_exists(image):
            raise KernelConfigError(
                f"The kernel {kernel!r} runs the image {image!r}, which the lab's Docker engine "
                "does not have. Rebuild your kernel (`labnotebook kernel build`) or choose "
                "another one."
            )
        identity = self.policy.identity_of(peer)
        language = str(kernelspec.get("language") or "")
        with self._lock:
            self._ensure_loaded()
            identifier = _new_id(self.store.taken)
            checked = job_notebooks.check(
                notebook, identity, identifier, parameters, kernel, language
            )
            if every is not None:
                return self._schedule(peer, identifier, checked, kernel, image, kernelspec,
                                      parameters, every)  # fmt: skip
            self._refuse_full_queue(peer.uid)
            job = Job(
                id=identifier,
                owner=identity.username,
                owner_uid=peer.uid,
                notebook=checked.path,
                output=checked.output,
                kernel=kernel,
                image=image,
                kernelspec=kernelspec,
                parameters=parameters,
                cells=checked.cells,
            )
            self.store.add(job)
            self._folders[job.id] = (checked.folder, checked.language)
            self.store.save()
        self.log.info("%s submitted job %s: %s on %s", job.owner, job.id, job.notebook, kernel)
        return job.public()

    def jobs(self, peer: Peer, everyone: bool) -> list[dict[str, Any]]:
        if everyone and not self.is_admin(peer):
            raise PermissionRefused("Only the lab's admins may list everyone's jobs.")
        with self._lock:
            self._ensure_loaded()
            jobs = [
                j
                for j in sorted(self.store.jobs.values(), key=lambda j: j.seq)
                if everyone or j.owner_uid == peer.uid
            ]
            schedules = [
                s
                for s in sorted(self.store.schedules.values(), key=lambda s: s.created)
                if everyone or s.owner_uid == peer.uid
            ]
            return [s.public() for s in schedules] + [self._live(j) for j in jobs]

    def status(self, peer: Peer, identifier: str) -> dict[str, Any]:
        with self._lock:
            self._ensure_loaded()
            item = self._visible(peer, identifier)
            return item.public() if isinstance(item, Schedule) else self._live(item)

    def cancel(self, peer: Peer, identifier: str, reason: str | None = None) -> dict[str, Any]:
        """Cancel a job or remove a schedule. `reason`, an admin's only (the hub's when it
        revokes a member), is what the job's error then says."""
        if reason is not None and not self.is_admin(peer):
            raise PermissionRefused("Only the lab's admins give a reason for a cancel.")
        with self._lock:
            self._ensure_loaded()
            item = self._visible(peer, identifier)
            who = username(peer.uid)
            if isinstance(item, Schedule):
                del self.store.schedules[item.id]
                self.store.save()
                self.log.info("%s removed schedule %s of %s", who, item.id, item.owner)
                return {**item.public(), "state": CANCELLED}
            if item.ended:
                raise KernelConfigError(f"Job {item.id} has ended already ({item.state}).")
            if item.state == RUNNING and item.container:
                self.runners.stop(item.container)
                item.cancel_requested = time.monotonic()
            item.state, item.finished = CANCELLED, now()
            item.error = reason or "cancelled by " + (
                "its owner" if peer.uid == item.owner_uid else who
            )
            self.store.save()
            self.log.info("%s cancelled job %s of %s", who, item.id, item.owner)
            return item.public()

    def logs(self, peer: Peer, identifier: str, since: int) -> dict[str, Any]:
        with self._lock:
            self._ensure_loaded()
            item = self._visible(peer, identifier)
            if isinstance(item, Schedule):
                raise KernelConfigError(
                    f"{item.id} is a schedule; each of its runs is a job with its own log "
                    "(`labnotebook jobs ls` lists them)."
                )
            if item.state == RUNNING and item.container:
                lines = shown_lines(self.runners.output(item.container))
            else:
                lines = list(item.log)
                if item.state == QUEUED:
                    lines = [f"job {item.id} is queued: it starts when one of your running "
                             "jobs ends."]  # fmt: skip
            since = max(0, since)
            done = item.ended and not item.container
            return {"lines": lines[since:], "next": max(since, len(lines)), "done": done}

    def runner_job(self, peer: Peer, token: Any) -> str:
        """The ID of the running job whose runner holds `token`, if `peer` is its owner."""
        with self._lock:
            self._ensure_loaded()
            job = self.store.by_token(token if isinstance(token, str) else "")
            if job is None or job.owner_uid != peer.uid:
                raise PermissionRefused(
                    "That is not the secret of a running job of yours; kernels for jobs are "
                    "launched by their runner only."
                )
            return job.id

    # -- the broker's rounds ----------------------------------------------------------------

    def recover(self) -> None:
        """At the broker's start: the book from its file, checked against the engine."""
        with self._lock:
            self._ensure_loaded()

    def warm_up(self) -> None:
        """Import papermill's notebook inspection now, in the background at the broker's
        start, so that the first submit with parameters answers at once (the import takes
        seconds; job_notebooks imports it where it is used)."""
        import papermill.inspection  # noqa: F401

    def tend(self) -> None:
        """One round: harvest ended runners, start queued jobs, turn due schedules into jobs."""
        with self._lock:
            self._ensure_loaded()
            changed = self._harvest()
            changed |= self._run_schedules()
            changed |= self._start_queued()
            if changed:
                self.store.forget_finished()
                self.store.save()

    # -- inside --------------------------------------------------------------------------------

    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        try:
            self.store.load()
        except (OSError, ValueError) as e:
            self.log.error("Cannot read the jobs' book %s: %s; starting empty", self.store.path, e)
        self._loaded = True
        known = {j.container: j for j in self.store.jobs.values() if j.container}
        changed = False
        for container in self.runners.containers():
            labels = container.get("Labels") or {}
            job = self.store.jobs.get(labels.get(L.JOB_ID, ""))
            if job is None or container["Id"] not in known:
                # A runner the book does not know (its file lost or older): without its
                # token it could never launch its kernel, so it goes.
                self.log.warning("Removing runner %s of an unknown job", container["Id"][:12])
                self.runners.remove(labels.get(L.JOB_ID, "-"), container["Id"])
                changed = True
        present = {c["Id"] for c in self.runners.containers()}
        for job in self.store.running():
            if job.container not in present:
                job.container = ""
                self._end(job, FAILED, "its runner container disappeared while the hub was "
                          "down (removed by hand?)")  # fmt: skip
                changed = True
        if self.store.running():
            self.log.info("Jobs still running: %s", ", ".join(j.id for j in self.store.running()))
        if self._harvest() or changed:
            self.store.save()

    def _visible(self, peer: Peer, identifier: Any) -> Job | Schedule:
        item = None
        if isinstance(identifier, str):
            item = self.store.jobs.get(identifier) or self.store.schedules.get(identifier)
        if item is None or (item.owner_uid != peer.uid and not self.is_admin(peer)):
            raise PermissionRefused(
                f"No job {str(identifier)[:40]!r} is yours: `labnotebook jobs ls` lists your "
                "jobs. Only a job's owner and the lab's admins can see, cancel or read it."
            )
        return item

    def _live(self, job: Job) -> dict[str, Any]:
        """The job as it is now: a running one's progress read from its runner."""
        if job.state == RUNNING and job.container:
            found = progress_of(self.runners.output(job.container))
            job.cell = found.get("cell", job.cell)
            job.cells = found.get("cells", job.cells)
            job.image_id = found.get("image_id", job.image_id)
        return job.public()

    def _image_exists(self, image: str) -> bool:
        import docker.errors

        try:
            self.engine.call(self.engine.api.inspect_image, image)
        except docker.errors.ImageNotFound:
            return False
        return True

    def _refuse_full_queue(self, uid: int) -> None:
        waiting = len(self.store.queued(uid))
        if waiting >= self.settings.queue_per_member:
            raise PermissionRefused(
                f"Your queue is full: {waiting} jobs are waiting (the lab allows "
                f"{self.settings.queue_per_member}, and runs {self.settings.jobs_per_member} "
                "of yours at once). Wait for some to run, or cancel some "
                "(`labnotebook jobs cancel ID`)."
            )

    def _schedule(
        self,
        peer: Peer,
        identifier: str,
        checked: job_notebooks.CheckedNotebook,
        kernel: str,
        image: str,
        kernelspec: dict[str, Any],
        parameters: dict[str, Any],
        every: str,
    ) -> dict[str, Any]:
        if len(self.store.schedules_of(peer.uid)) >= self.settings.schedules_per_member:
            raise PermissionRefused(
                f"You have {self.settings.schedules_per_member} schedules, the most the lab "
                "allows; cancel one first (`labnotebook jobs cancel ID`)."
            )
        schedule = Schedule(
            id=identifier,
            owner=username(peer.uid),
            owner_uid=peer.uid,
            notebook=checked.path,
            kernel=kernel,
            image=image,
            kernelspec=kernelspec,
            every=every,
            next_run=next_run(every),
            parameters=parameters,
        )
        self.store.add_schedule(schedule)
        self.store.save()
        self.log.info("%s scheduled %s: %s at %r", schedule.owner, schedule.id, schedule.notebook,
                      every)  # fmt: skip
        return schedule.public()

    def _run_schedules(self) -> bool:
        changed = False
        moment = datetime.datetime.now(datetime.UTC)
        for schedule in list(self.store.schedules.values()):
            if parse_time(schedule.next_run) > moment:
                continue
            changed = True
            # One run for a time missed while the broker was down, never a burst.
            schedule.next_run = next_run(schedule.every, moment)
            identifier = _new_id(self.store.taken)
            schedule.last_job = identifier
            job = Job(
                id=identifier,
                owner=schedule.owner,
                owner_uid=schedule.owner_uid,
                notebook=schedule.notebook,
                output="",
                kernel=schedule.kernel,
                image=schedule.image,
                kernelspec=schedule.kernelspec,
                parameters=schedule.parameters,
                schedule=schedule.id,
            )
            try:
                peer = Peer(0, schedule.owner_uid, -1)
                checked = job_notebooks.check(
                    schedule.notebook, self.policy.identity_of(peer), identifier,
                    schedule.parameters, schedule.kernel,
                    str(schedule.kernelspec.get("language") or ""),
                )  # fmt: skip
                self._refuse_full_queue(schedule.owner_uid)
            except KernelLaunchError as e:
                job.state, job.finished, job.error = FAILED, now(), str(e)
                job.log = [f"job failed: {e}"]
            else:
                job.output, job.cells = checked.output, checked.cells
                self._folders[job.id] = (checked.folder, checked.language)
            self.store.add(job)
        return changed

    def _start_queued(self) -> bool:
        changed = False
        for job in self.store.startable(self.settings.jobs_per_member):
            changed = True
            folder, language = self._folders.pop(job.id, (job.notebook.rpartition("/")[0], ""))
            job.token = secrets.token_urlsafe(32)
            job.state, job.started = RUNNING, now()
            try:
                job.container = self.runners.start(job, folder, language)
            except KernelLaunchError as e:
                self._end(job, FAILED, f"its runner container did not start: {e}")
                self.log.warning("Job %s of %s did not start: %s", job.id, job.owner, e)
                continue
            self.log.info("Started job %s of %s (runner %s)", job.id, job.owner, job.container[:12])
        return changed

    def _harvest(self) -> bool:
        """End the jobs whose runner exited, and the cancelled ones whose grace is over."""
        changed = False
        for job in [j for j in self.store.jobs.values() if j.container]:
            state = self.runners.state(job.container)
            overdue = (
                job.cancel_requested
                and time.monotonic() - job.cancel_requested > self.settings.cancel_grace
            )
            if state is not None and state.running and not overdue:
                continue
            changed = True
            lines = self.runners.output(job.container) if state is not None else []
            found = progress_of(lines)
            result = found.get("result") or {}
            job.cell = found.get("cell", job.cell)
            job.cells = found.get("cells", job.cells)
            job.image_id = str(result.get("image_id") or found.get("image_id") or job.image_id)
            job.log = shown_lines(lines)[-KEPT_LOG_LINES:]
            if job.state == RUNNING:
                outcome, error = self._outcome(job, state, result)
                self._end(job, outcome, error)
            self.runners.remove(job.id, job.container)
            job.container, job.token = "", ""
            self.log.info("Job %s of %s %s", job.id, job.owner, job.state)
        return changed

    def _outcome(self, job: Job, state: Any, result: dict[str, Any]) -> tuple[str, str]:
        limit = self.runners.kernel_ended_for_memory(job.id)
        if limit is not None:
            what = f"its memory limit of {human_bytes(limit)}" if limit else "its memory limit"
            return FAILED, (
                f"out of memory: the job's kernel was stopped because it used all of {what} "
                f"(at cell {job.cell} of {job.cells}). Use less memory (load data in parts), "
                "or ask the lab's admin about the kernel memory limit (KERNEL_MEMORY)."
            )
        if result.get("state") in (SUCCEEDED, FAILED, CANCELLED):
            return str(result["state"]), str(result.get("error") or "")[:20000]
        if state is None:
            return FAILED, "its runner container was removed before it ended."
        if state.oom_killed:
            return FAILED, (
                "out of memory: the job's runner (which holds the notebook and its outputs) "
                f"used all of its {human_bytes(state.memory_limit)}; make the outputs smaller, "
                "or ask the lab's admin to raise JobPolicy.runner_memory."
            )
        return FAILED, f"its runner ended with exit code {state.exit_code} and no result."

    def _end(self, job: Job, state: str, error: str) -> None:
        job.state, job.error, job.finished = state, error, job.finished or now()
        if state == FAILED and not job.log:
            job.log = [f"job failed: {error}"]


def next_run(every: str, after: datetime.datetime | None = None) -> str:
    """The next time of the cron expression `every` after `after` (default: now), or a
    refusal that says what a cron expression is."""
    from croniter import croniter

    if not isinstance(every, str) or not every.strip() or len(every) > 200:
        raise KernelConfigError("--every needs a cron expression, e.g. '0 6 * * *'.")
    base = after or datetime.datetime.now(datetime.UTC)
    try:
        if not croniter.is_valid(every):
            raise ValueError(every)
        moment = croniter(every, base).get_next(datetime.datetime)
    except (ValueError, KeyError, TypeError):
        raise KernelConfigError(
            f"{every!r} is not a cron expression. Give five fields - minute hour day-of-month "
            "month day-of-week - e.g. '0 6 * * *' (every day at 06:00 UTC) or '*/30 * * * *' "
            "(every half hour)."
        ) from None
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
