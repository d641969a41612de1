"""The broker's exports: `labnotebook export` in the lab hub (see provisioner/export.py).

Like a kernel build, an export is a short conversation on the broker's socket (the upload,
status and cancel steps are every job's: hub/broker_jobs.py):

    export_base   {image}                         -> {exists}   (may the member start from it?)
    export        {name, image, notebook, size}   -> {export, chunk}   (checks; the member's slot)
    export_data   {export, data, last}            -> {received}        (the packed files)
    export_status {export, since, wait}           -> {lines, next, done, result | error}
    export_cancel {export}
    export_check  {export}                        -> {next}    (re-run it: status follows)
    export_save   {export}                        -> {data, done}      (`docker save`, in chunks)

What the broker trusts from the member is data, never instructions or paths it opens:

* the notebook and data files are read and packed by the member's own process (the root
  broker never opens a member's file), and arrive as a tar whose entries are checked here -
  regular files only, absolute paths in the member's home (from the user database, not
  $HOME) or /home/shared, no `..` - and re-packed by the broker with the export user's
  ownership, so nothing else of the tar (links, modes, owners) reaches the image;
* the recorded image is read from the notebook in that tar, must be the one announced, and
  must be an image the member may launch (a lab image by one of its tags, their own, or a
  published one): the export starts `FROM` exactly that ID;
* the runner (reproduce.py and the wheels of nbclient and JupyterLab) comes from the hub's own
  installation, never from the member; the steps that install it are the export recipe's
  (provisioner/export_recipe.py: setup_script) and run - like convention builds - in a bounded
  build container from the recorded image (provisioner/build_container.py: no network,
  dropped capabilities, no-new-privileges, memory and process limits, the lab's time limit),
  which is then committed with the export's command, user and labels. Not the engine's
  Dockerfile builder: it would run those steps with Docker's default capabilities and no
  process limit on an image the member may have made.

`export_check` runs the new image's own check (re-run the notebook, compare) in a container
like a kernel's - the image's non-root user, no network, no capabilities, the build's memory,
process and time limits - so a member who has no engine sees it reproduce before depositing.

The image is a member image like a kernel build's: `labnotebook-user/<member>/<NAME>:v<N>`,
with the owner labels, under the member's quota, one build or export per member at a time
and at most `BuildPolicy.max_builds` lab-wide (the slots are shared with kernel builds:
hub/build_slots.py). The
archive (`--archive`) is streamed back to the member's process, which writes it: the broker
never writes into homes.
"""

from __future__ import annotations

import base64
import contextlib
import fnmatch
import hashlib
import io
import json
import os
import pwd
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import docker.errors
from labnotebook.provisioner import export_recipe as X
from labnotebook.provisioner import labels as L
from labnotebook.provisioner import member_images as M
from labnotebook.provisioner.build_container import BuildLog
from labnotebook.provisioner.build_context import too_large
from labnotebook.provisioner.builds import quota_message
from labnotebook.provisioner.errors import KernelConfigError, KernelLaunchError, PermissionRefused
from labnotebook.provisioner.export_recipe import check_record
from labnotebook.provisioner.record import record_of
from labnotebook.provisioner.sizes import human_bytes
from traitlets import Int, Unicode
from traitlets.config import LoggingConfigurable

from .broker_arguments import arguments
from .broker_builds import ImageService
from .broker_jobs import CHUNK, Job, JobService
from .broker_policy import Peer

SAVE_CHUNK = 4 << 20
"""Image bytes per export_save answer: base64 of it stays well under an answer's limit."""


class ExportPolicy(LoggingConfigurable):
    """The admin's settings for members' exports through the broker (the build rules -
    quota, time, memory, slots - are BuildPolicy's)."""

    wheelhouse = Unicode(
        X.HUB_WHEELHOUSE,
        config=True,
        help="""Root-owned folder of the wheels an export installs on top of the recorded
        kernel image (nbclient, nbformat, JupyterLab and their dependencies), so exports
        build without the network. The hub image has them here; never a member's folder.""",
    )
    max_notebook = Int(
        100 << 20,
        config=True,
        help="""Largest notebook (bytes) the broker parses to read its record.""",
    )


@dataclass(kw_only=True)
class ExportJob(Job):
    home: str
    image_id: str
    notebook: str
    save: Iterator[bytes] | None = None
    save_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def slot_label(self) -> str:
        """How the export is named where a build is refused for it."""
        return f"export {self.name}"


class ExportService(JobService[ExportJob]):
    """Members' exports, sharing the ImageService's engine, rules and build slots."""

    kind = "export"
    complete = "This export has all its files already."
    cut_short = "The export's files ended after {received} of {size} bytes."
    sent = "the notebook and its data"

    def __init__(self, images: ImageService, policy: ExportPolicy, log: Any) -> None:
        super().__init__(log)
        self.images = images
        self.policy = policy

    @property
    def api(self) -> Any:
        return self.images.api

    # -- the recorded image ----------------------------------------------------------------------

    def base(self, peer: Peer, image: str) -> dict[str, Any] | None:
        """The recorded image if the member may start from it; None if it is gone."""
        if not isinstance(image, str) or not X.IMAGE_ID.match(image):
            raise KernelConfigError(
                f"{image!r} is not an image ID (sha256:64 hex digits): the notebook's record "
                "is damaged. Re-run the notebook on a lab kernel and save it."
            )
        details = M.inspect(self.api, image)
        if details is None:
            return None
        tags = [t for t in details.get("RepoTags") or [] if t != "<none>:<none>"]
        patterns = self.images.launch.allowed_images
        if any(fnmatch.fnmatchcase(t, p) for t in tags for p in patterns):
            return details
        if self.images.launchable(peer, image):  # raises for others' unpublished images
            return details
        # Its names are not told: the image may be anybody's.
        raise PermissionRefused(
            f"The image {image[:19]}... is not one of this lab's kernel images, nor one of "
            "your own or a published one: exports start only from images you may run as "
            "kernels."
        )

    # -- the conversation ------------------------------------------------------------------------

    def begin(self, peer: Peer, name: str, image: str, notebook: str, size: int) -> dict[str, Any]:
        build_policy = self.images.policy
        if not build_policy.enabled:
            raise PermissionRefused(
                "This lab does not build images for members (BuildPolicy.enabled), exports "
                "included. Export on a machine with Docker instead."
            )
        identity = self.images.launch.identity_of(peer)
        if identity.uid == 0:
            raise PermissionRefused("Root exports with its own engine, not through the broker.")
        M.check_name(name)
        if size <= 0 or size > build_policy.context_bytes:
            raise PermissionRefused(too_large(self.sent, build_policy.context_bytes))
        home = member_home(peer.uid)
        check_target(notebook, home)
        if self.base(peer, image) is None:
            raise KernelConfigError(
                f"The image {image[:19]}... the notebook records is gone from the lab's engine."
            )
        wheelhouse = Path(self.policy.wheelhouse)
        if not wheelhouse.is_dir() or not any(wheelhouse.glob("*.whl")):
            raise KernelLaunchError(
                "The lab's hub has no wheelhouse for exports (ExportPolicy.wheelhouse "
                f"{wheelhouse}); ask the lab's admin to rebuild the hub image."
            )
        self.images.check_quota(peer.uid)
        job = ExportJob(
            uid=peer.uid,
            username=identity.username,
            home=home,
            name=name,
            image_id=image,
            notebook=notebook,
            size=size,
            file=tempfile.TemporaryFile(prefix="labnotebook-export-"),  # noqa: SIM115
            log=BuildLog(limit=build_policy.log_bytes),
        )
        with self._lock:
            self._forget_finished()
        # One build or export per member: the slots are shared with kernel builds.
        try:
            self.images.slots.reserve(
                job,
                label=job.slot_label,
                busy="You already have a build or export running ({name!r}): one per member at "
                "a time. Wait for it to finish, or stop it (Ctrl-C where it runs).",
                full="The lab is running {count} image builds already, the most at once "
                "(BuildPolicy.max_builds). Try again in a few minutes.",
            )
        except PermissionRefused:
            job.file.close()
            raise
        with self._lock:
            self._jobs[job.id] = job
        return {"export": job.id, "chunk": CHUNK}

    @property
    def upload_limit(self) -> int:
        return self.images.policy.context_bytes

    def _forget(self, job: ExportJob) -> None:
        """Also let go of the `docker save` stream, and of the member's slot."""
        super()._forget(job)
        self._close_save(job)
        self.images.slots.release(job)

    @staticmethod
    def _close_save(job: ExportJob) -> None:
        if job.save is not None:
            with contextlib.suppress(Exception):
                job.save.close()  # type: ignore[attr-defined]
            job.save = None

    def save(self, peer: Peer, export: str) -> dict[str, Any]:
        """The next chunk of `docker save` of the export's image (its tag in the member's
        namespace, so `docker load` names it again)."""
        job = self._job(peer, export)
        if job.state != "done" or job.result is None:
            raise KernelConfigError("This export has no image to save (it did not finish).")
        with job.save_lock:
            if job.save is None:
                reference = f"{job.result['repository']}:{job.result['tag']}"
                job.save = iter(self.api.get_image(reference, chunk_size=SAVE_CHUNK))
            buffer = bytearray()
            done = False
            while len(buffer) < SAVE_CHUNK:
                try:
                    buffer += next(job.save)
                except StopIteration:
                    done = True
                    break
            if done:
                self._close_save(job)
        return {"data": base64.b64encode(bytes(buffer)).decode(), "done": done}

    def check(self, peer: Peer, export: str) -> dict[str, Any]:
        """Start the export's check; its lines and exit code come through `status`."""
        job = self._job(peer, export)
        if job.state != "done" or job.result is None:
            raise KernelConfigError("This export has no image to check (it did not finish).")
        # The check takes the member's slot again (its own, not the export's old one: a
        # build begun since has not cancelled it), running from now on.
        self.images.slots.reserve(
            job,
            label=job.slot_label,
            busy="You have a build or export running ({name!r}): one per member at a time. "
            "Check when it has finished.",
            full=None,
            running=True,
        )
        job.result.pop("check_exit", None)
        _, following = job.log.since(0)
        threading.Thread(
            target=self._check, args=(job,), name=f"export-check-{job.username}", daemon=True
        ).start()
        return {"next": following}

    def _check(self, job: ExportJob) -> None:
        assert job.result is not None
        api = self.api
        limits = self.images.policy.limits(None)
        reference = f"{job.result['repository']}:{job.result['tag']}"
        job.log.add(f"==> Checking {reference}: re-running the notebook with no network")
        try:
            code = X.check_image(
                api,
                reference,
                labels=_container_labels(job),
                limits=limits,
                log=job.log,
                cancel=job.cancel,
            )
            job.result["check_exit"] = code
            job.log.add(
                "==> Reproduced: every required output matches"
                if code == 0
                else f"==> Not reproduced (exit code {code}): see the cells above"
            )
        except KernelLaunchError as e:
            job.error = e
        except docker.errors.APIError as e:
            job.error = KernelLaunchError(f"The Docker engine refused: {e.explanation or e}")
        except Exception as e:
            self.log.exception("Checking the export %s of %s failed", job.name, job.username)
            job.error = KernelLaunchError(
                f"The kernel broker failed during the check ({type(e).__name__})."
            )
        finally:
            job.state = "done" if job.error is None else "failed"
            job.touched = time.monotonic()

    # -- the build ---------------------------------------------------------------------------

    def _build(self, job: ExportJob) -> dict[str, Any]:
        peer = Peer(0, job.uid, 0)
        base = self.base(peer, job.image_id)
        if base is None:
            raise KernelConfigError(
                f"The image {job.image_id[:19]}... is gone from the lab's engine."
            )
        with tempfile.TemporaryFile(prefix="labnotebook-export-files-") as files:
            plan, digest = self._plan(job, files)
            new = self.images.new_version(job)
            plan.name = new.reference
            labels = {**self.images.labels(job, new, digest, base), **X.export_labels(plan)}
            limits = self.images.policy.limits(new.room)
            job.log.add(
                f"==> Building {new.reference} FROM {base['Id'][:19]} "
                f"({', '.join((base.get('RepoTags') or [])[:1]) or 'untagged'})"
            )
            files.seek(0)
            # The runner installs from the hub's wheels: no network, whatever builds use.
            image_id = X.build_image(
                self.api,
                base=base,
                plan=plan,
                wheelhouse=Path(self.policy.wheelhouse),
                files=files,
                labels=labels,
                container_labels=_container_labels(job),
                limits=limits,
                log=job.log,
                author=job.username,
                cancel=job.cancel,
                over_room=lambda written: quota_message(written, limits),
            )
        built = self.images.keep(job, new, image_id, limits)
        return {
            "image": built.id,
            "repository": new.repository,
            "tag": new.tag,
            "version": new.number,
            "name": job.name,
            "added": built.added,
            "base_image_id": base["Id"],
        }

    def _plan(self, job: ExportJob, out: IO[bytes]) -> tuple[X.ExportPlan, str]:
        """The member's tar, checked, re-packed into `out` for the image (X.ImageFiles: owner
        UID 1000, plain modes, the folders below the top one too); the plan and a digest."""
        items: list[X.Item] = []
        record: dict[str, Any] | None = None
        digest = hashlib.sha256()
        job.file.seek(0)
        with (
            tarfile.open(fileobj=job.file, mode="r:") as tar,
            X.ImageFiles(out) as packed,
        ):
            for member in tar:
                target = check_target("/" + member.name, job.home)
                if not member.isfile():
                    raise KernelConfigError(
                        f"{target}: only regular files go into an export (not links or devices)."
                    )
                if any(i.target == target for i in items):
                    raise KernelConfigError(f"{target} came twice.")
                extracted = tar.extractfile(member)
                assert extracted is not None
                if target == job.notebook:
                    if member.size > self.policy.max_notebook:
                        raise PermissionRefused(
                            f"The notebook is larger than {human_bytes(self.policy.max_notebook)}."
                        )
                    content = extracted.read()
                    try:
                        notebook = json.loads(content)
                    except (ValueError, RecursionError):
                        raise KernelConfigError(f"{target} is not a notebook (JSON).") from None
                    record = record_of(notebook) if isinstance(notebook, dict) else None
                    if record is not None:
                        check_record(record)
                    extracted = io.BytesIO(content)
                packed.add(target, member.size, member.mtime, _Hashing(extracted, digest))
                digest.update(target.encode() + b"\0")
                items.append(X.Item(source=target, target=target, size=member.size))
        notebook_item = next((i for i in items if i.target == job.notebook), None)
        if notebook_item is None:
            raise KernelConfigError(f"The notebook {job.notebook} was not among the files sent.")
        if record is None:
            raise KernelConfigError(
                f"{job.notebook} records no kernel image (no metadata.labnotebook): run it on a "
                "lab kernel and save it, then export."
            )
        if record["image_id"] != job.image_id:
            raise KernelConfigError(
                f"{job.notebook} records {record['image_id'][:19]}..., not the image announced "
                "at the start of the export; was it saved meanwhile? Export again."
            )
        plan = X.ExportPlan(
            notebook=notebook_item,
            record=record,
            data=[i for i in items if i is not notebook_item],
            name=job.name,
            home=job.home,
        )
        return plan, "sha256:" + digest.hexdigest()


def _container_labels(job: ExportJob) -> dict[str, str]:
    """The export's build and check containers: the member's, for the reaper and the admin."""
    return {L.ROLE: M.BUILD_ROLE, L.OWNER: job.username, L.OWNER_UID: str(job.uid)}


class _Hashing(io.RawIOBase):
    """A file read into the repacked tar, hashed on the way (the export's context digest)."""

    def __init__(self, source: IO[bytes], digest: Any) -> None:
        self.source = source
        self.digest = digest

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size)
        self.digest.update(data)
        return data


def member_home(uid: int) -> str:
    """The member's home from the user database (not $HOME, which the member sets)."""
    try:
        return os.path.normpath(pwd.getpwuid(uid).pw_dir)
    except KeyError:
        raise PermissionRefused(f"UID {uid} has no account here.") from None


def check_target(path: Any, home: str) -> str:
    """A path in the image: absolute, plain (no '.', '..', empty parts or control
    characters), in the member's home or /home/shared - kept as the notebook knows it."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise KernelConfigError(f"{path!r}: paths in an export are absolute.")
    parts = path[1:].split("/")
    if any(p in ("", ".", "..") for p in parts) or any(ord(c) < 32 for c in path):
        raise KernelConfigError(
            f"{path!r} is not a plain path (no '.', '..', empty parts or control characters)."
        )
    if not X.within(path, [home, X.SHARED_ROOT]) or path in (home, X.SHARED_ROOT):
        raise PermissionRefused(
            f"{path} is outside your home ({home}) and {X.SHARED_ROOT}: only files from there "
            "go into an export."
        )
    return path


class ExportOperations:
    """The export operations of BrokerOperations (a mixin: it has `exports` and `run`)."""

    exports: ExportService

    async def run(self, fn: Any, *args: Any, pool: Any = None) -> Any:  # pragma: no cover
        raise NotImplementedError

    async def op_export_base(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        args = arguments(request, "export_base", image=str)
        details = await self.run(self.exports.base, peer, args["image"])
        return {"ok": True, "result": {"exists": details is not None}}

    async def op_export(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        args = arguments(request, "export", name=str, image=str, notebook=str, size=int)
        result = await self.run(
            self.exports.begin, peer, args["name"], args["image"], args["notebook"], args["size"]
        )
        return {"ok": True, "result": result}

    async def op_export_data(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        args = arguments(request, "export_data", export=str, data=str, last=(bool, False))
        result = await self.run(self.exports.data, peer, args["export"], args["data"], args["last"])
        return {"ok": True, "result": result}

    async def op_export_status(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        args = arguments(
            request, "export_status", export=str, since=(int, 0), wait=((int, float), 2.0)
        )
        result = await self.exports.status(peer, args["export"], args["since"], float(args["wait"]))
        return {"ok": True, "result": result}

    async def op_export_cancel(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        args = arguments(request, "export_cancel", export=str)
        await self.run(self.exports.cancel, peer, args["export"])
        return {"ok": True, "result": None}

    async def op_export_check(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        args = arguments(request, "export_check", export=str)
        return {"ok": True, "result": await self.run(self.exports.check, peer, args["export"])}

    async def op_export_save(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        args = arguments(request, "export_save", export=str)
        return {"ok": True, "result": await self.run(self.exports.save, peer, args["export"])}
