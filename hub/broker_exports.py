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
  installation, never from the member; the steps that install it are generated here
  (export.setup_script) and run - like convention builds - in a bounded container from the
  recorded image (no network, dropped capabilities, no-new-privileges, memory and process
  limits, the lab's time limit), which is then committed with the export's command, user and
  labels. Not the engine's Dockerfile builder: it would run those steps with Docker's default
  capabilities and no process limit on an image the member may have made.

`export_check` runs the new image's own check (re-run the notebook, compare) in a container
like a kernel's - the image's non-root user, no network, no capabilities, the build's memory,
process and time limits - so a member who has no engine sees it reproduce before depositing.

The image is a member image like a kernel build's: `labnotebook-user/<member>/<NAME>:v<N>`,
with the owner labels, under the member's quota, one build or export per member at a time
(the slot is shared with kernel builds) and at most `BuildPolicy.max_builds` lab-wide. The
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
import re
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import docker.errors
from docker.types import LogConfig
from labnotebook.provisioner import export as X
from labnotebook.provisioner import labels as L
from labnotebook.provisioner import member_images as M
from labnotebook.provisioner.build_context import too_large
from labnotebook.provisioner.builds import (
    BUILD_CAPABILITIES,
    BuildFailed,
    BuildLimits,
    BuildLog,
    _follow,
    _tar_dir,
    _wait,
    human,
)
from labnotebook.provisioner.errors import KernelConfigError, KernelLaunchError, PermissionRefused
from labnotebook.provisioner.record import record_of
from traitlets import Int, Unicode
from traitlets.config import LoggingConfigurable

from .broker_builds import BuildJob, ImageService
from .broker_jobs import CHUNK, Job, JobService
from .broker_policy import Peer

SAVE_CHUNK = 4 << 20
"""Image bytes per export_save answer: base64 of it stays well under an answer's limit."""
_IMAGE_ID = re.compile(r"sha256:[0-9a-f]{64}\Z")
_EXPORT_ROLE = "export"


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
    slot: BuildJob
    """The placeholder in the ImageService's jobs: one build or export per member. The export
    shares its `cancel`, and keeps its state and time, so the ImageService counts it."""
    save: Iterator[bytes] | None = None
    save_lock: threading.Lock = field(default_factory=threading.Lock)

    def touch(self) -> None:
        self.touched = self.slot.touched = time.monotonic()


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
        if not isinstance(image, str) or not _IMAGE_ID.match(image):
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
        images = self.images
        images.check_quota(peer.uid)
        # One build or export per member, shared with kernel builds: a placeholder job in the
        # ImageService's table (under its lock) that its own checks count. Its ID is never
        # told to anyone, so no build operation can act on it.
        with images._lock:
            images._forget_finished()
            with self._lock:
                self._forget_finished()
            images.check_slots(
                peer.uid,
                busy="You already have a build or export running ({name!r}): one per member at "
                "a time. Wait for it to finish, or stop it (Ctrl-C where it runs).",
                full="The lab is running {count} image builds already, the most at once "
                "(BuildPolicy.max_builds). Try again in a few minutes.",
            )
            slot = BuildJob(
                uid=peer.uid,
                username=identity.username,
                name=f"export {name}",
                base={},
                size=0,
                file=io.BytesIO(),
                log=BuildLog(limit=1),
            )
            images._jobs[slot.id] = slot
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
                slot=slot,
                cancel=slot.cancel,
            )
            with self._lock:
                self._jobs[job.id] = job
        return {"export": job.id, "chunk": CHUNK}

    @property
    def upload_limit(self) -> int:
        return self.images.policy.context_bytes

    def _start(self, job: ExportJob) -> None:
        """The slot runs with the export: it is the member's one job now."""
        job.slot.state = "running"
        super()._start(job)

    def _ended(self, job: ExportJob) -> None:
        """The slot ends with the export, so the member may start another."""
        job.slot.state = job.state

    def _forget(self, job: ExportJob) -> None:
        """Also let go of the `docker save` stream, and free the member's slot."""
        super()._forget(job)
        self._close_save(job)
        if job.slot.state in ("upload", "running"):
            job.slot.state = "failed"
        job.slot.touched = time.monotonic()

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
        images = self.images
        with images._lock:
            busy = [
                j
                for j in images._jobs.values()
                if j.uid == peer.uid and j.active and j is not job.slot
            ]
            if busy:
                raise PermissionRefused(
                    f"You have a build or export running ({busy[0].name!r}): one per member "
                    "at a time. Check when it has finished."
                )
            job.state = job.slot.state = "running"
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
        container = None
        try:
            host_config = _bounded(api, limits)
            # The image's own user (the export's, UID 1000) and command: what a reader runs.
            container = api.create_container(
                reference,
                labels={L.ROLE: M.BUILD_ROLE, L.OWNER: job.username, L.OWNER_UID: str(job.uid)},
                host_config=host_config,
                detach=True,
            )["Id"]
            code = _run_logged(api, container, job, limits)
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
            if container is not None:
                with contextlib.suppress(docker.errors.NotFound):
                    api.remove_container(container, force=True, v=True)
            job.state = job.slot.state = "done" if job.error is None else "failed"
            job.touched = job.slot.touched = time.monotonic()

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
            # The runner installs from local wheels: no network, whatever builds use.
            limits.network = "none"
            job.log.add(
                f"==> Building {new.reference} FROM {base['Id'][:19]} "
                f"({', '.join((base.get('RepoTags') or [])[:1]) or 'untagged'})"
            )
            files.seek(0)
            image_id = self._container_build(job, base, plan, files, labels, limits)
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
        """The member's tar, checked, re-packed into `out` for the image (owner UID 1000,
        plain modes, the folders below the top one too); the plan and a digest of it."""
        items: list[X.Item] = []
        record: dict[str, Any] | None = None
        digest = hashlib.sha256()
        folders: set[str] = set()
        job.file.seek(0)
        with (
            tarfile.open(fileobj=job.file, mode="r:") as tar,
            tarfile.open(fileobj=out, mode="w") as packed,
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
                            f"The notebook is larger than {human(self.policy.max_notebook)}."
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
                # Folders below the top one belong to the export's user, as the Dockerfile's
                # COPY --chown makes them (the top one, /home, stays the image's).
                parts = target.strip("/").split("/")
                for depth in range(2, len(parts)):
                    folder = "/".join(parts[:depth])
                    if folder not in folders:
                        folders.add(folder)
                        info = tarfile.TarInfo(folder)
                        info.type, info.mode = tarfile.DIRTYPE, 0o755
                        info.uid = info.gid = X.EXPORT_UID
                        packed.addfile(info)
                info = tarfile.TarInfo(target.lstrip("/"))
                info.size, info.mode, info.mtime = member.size, 0o644, member.mtime
                info.uid = info.gid = X.EXPORT_UID
                packed.addfile(info, _Hashing(extracted, digest))
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

    def _container_build(
        self,
        job: ExportJob,
        base: dict[str, Any],
        plan: X.ExportPlan,
        files: IO[bytes],
        labels: dict[str, str],
        limits: BuildLimits,
    ) -> str:
        """Like builds.build_conventions: the generated setup script in a bounded container
        from the recorded image, committed with the export's configuration."""
        api = self.api
        host_config = _bounded(api, limits, cap_add=BUILD_CAPABILITIES)
        container = api.create_container(
            base["Id"],
            entrypoint=["/bin/sh", "-c"],
            command=[X.setup_script(plan)],
            user="0:0",
            labels={L.ROLE: M.BUILD_ROLE, L.OWNER: job.username, L.OWNER_UID: str(job.uid)},
            host_config=host_config,
            detach=True,
        )["Id"]
        try:
            with tempfile.TemporaryFile(prefix="labnotebook-export-tools-") as tools:
                X.tools_tar(Path(self.policy.wheelhouse), tools)
                tools.seek(0)
                api.put_archive(container, "/", _tar_dir(X.TOOLS_DIR.lstrip("/")))
                api.put_archive(container, X.TOOLS_DIR, tools)
            api.put_archive(container, "/", files)
            exit_code = _run_logged(api, container, job, limits)
            if exit_code != 0:
                raise BuildFailed(
                    f"Installing the runner on the recorded image failed (exit code "
                    f"{exit_code}); its last lines:\n{job.log.tail()}\nThe image needs python3 "
                    "with venv; ask the lab's admin if it is a lab image."
                )
            conf = X.image_config(plan)
            conf["Labels"] = {**((base.get("Config") or {}).get("Labels") or {}), **labels}
            repository, _, tag = plan.name.rpartition(":")
            committed = api.commit(
                container,
                repository=repository,
                tag=tag,
                message=f"labnotebook export of {plan.notebook.target}",
                author=job.username,
                conf=conf,
            )
            return str(committed["Id"])
        finally:
            with contextlib.suppress(docker.errors.NotFound):
                api.remove_container(container, force=True, v=True)


def _bounded(api: Any, limits: BuildLimits, **more: Any) -> dict[str, Any]:
    """The host config of a container the broker runs on a member's image (the export's
    setup, its check): the build's limits, no network, no capabilities but `more`'s."""
    return api.create_host_config(
        mem_limit=limits.memory,
        memswap_limit=limits.memory,
        nano_cpus=limits.nano_cpus,
        pids_limit=limits.pids,
        network_mode="none",
        security_opt=["no-new-privileges:true"],
        cap_drop=["ALL"],
        init=True,
        log_config=LogConfig(type="json-file", config={"max-size": "10m", "max-file": "1"}),
        **more,
    )


def _run_logged(api: Any, container: str, job: ExportJob, limits: BuildLimits) -> int:
    """Start `container` and wait for its exit code (or the time limit, or a cancel), its
    output going to the job's log as it comes."""
    api.start(container)
    follower = threading.Thread(target=_follow, args=(api, container, job.log))
    follower.daemon = True
    follower.start()
    code = _wait(api, container, limits, job.cancel)
    follower.join(10)
    return code


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


_KERNELSPEC = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")
_LANGUAGE = re.compile(r"[A-Za-z0-9+#._ -]{1,32}\Z")


def check_record(record: dict[str, Any]) -> None:
    """The record's fields that reach the image (labels, the kernelspec the runner installs):
    the member's data, so bounded and plain. Shell-quoted where used, checked anyway."""
    problems = []
    if not isinstance(record.get("image") or "", str) or len(str(record.get("image"))) > 512:
        problems.append("image")
    if record.get("kernelspec") and not _KERNELSPEC.match(str(record["kernelspec"])):
        problems.append("kernelspec")
    if record.get("language") and not _LANGUAGE.match(str(record["language"])):
        problems.append("language")
    argv = record.get("kernel_argv")
    if argv is not None and not (
        isinstance(argv, list)
        and 0 < len(argv) <= 32
        and all(isinstance(a, str) and 0 < len(a) <= 4096 and "\0" not in a for a in argv)
    ):
        problems.append("kernel_argv")
    if problems:
        raise KernelConfigError(
            f"The notebook's record (metadata.labnotebook) has unusable {', '.join(problems)}: "
            "re-run the notebook on a lab kernel and save it, which writes a new record."
        )


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
    if not X._within(path, [home, X.SHARED_ROOT]) or path in (home, X.SHARED_ROOT):
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

    @staticmethod
    def _export_arguments(request: dict[str, Any], op: str, **fields: Any) -> dict[str, Any]:
        from .broker_operations import _arguments

        return _arguments(request, op, **fields)

    async def op_export_base(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        args = self._export_arguments(request, "export_base", image=str)
        details = await self.run(self.exports.base, peer, args["image"])
        return {"ok": True, "result": {"exists": details is not None}}

    async def op_export(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        args = self._export_arguments(
            request, "export", name=str, image=str, notebook=str, size=int
        )
        result = await self.run(
            self.exports.begin, peer, args["name"], args["image"], args["notebook"], args["size"]
        )
        return {"ok": True, "result": result}

    async def op_export_data(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        args = self._export_arguments(
            request, "export_data", export=str, data=str, last=(bool, False)
        )
        result = await self.run(self.exports.data, peer, args["export"], args["data"], args["last"])
        return {"ok": True, "result": result}

    async def op_export_status(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        args = self._export_arguments(
            request, "export_status", export=str, since=(int, 0), wait=((int, float), 2.0)
        )
        result = await self.exports.status(peer, args["export"], args["since"], float(args["wait"]))
        return {"ok": True, "result": result}

    async def op_export_cancel(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        args = self._export_arguments(request, "export_cancel", export=str)
        await self.run(self.exports.cancel, peer, args["export"])
        return {"ok": True, "result": None}

    async def op_export_check(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        args = self._export_arguments(request, "export_check", export=str)
        return {"ok": True, "result": await self.run(self.exports.check, peer, args["export"])}

    async def op_export_save(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        args = self._export_arguments(request, "export_save", export=str)
        return {"ok": True, "result": await self.run(self.exports.save, peer, args["export"])}
