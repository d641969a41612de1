"""The broker's image operations: members build, list, remove and (admins) publish kernel images.

A build is a short conversation on the broker's socket, each step one request and one answer
like every other operation:

    build        {name, base, size}          -> {build, chunk}   (checks; holds the member's slot)
    build_data   {build, data, last}         -> {received}       (the packed context, in chunks)
    build_status {build, since, wait}        -> {lines, next, done, result | error}
    build_cancel {build}

The context is packed by the member's own process (provisioner/build_context.py) and spooled
here into an unlinked temporary file, refused past the lab's size limit. The build runs in a
thread of its own (provisioner/builds.py) under the admin's `BuildPolicy`; `build_status`
long-polls its log, so the member sees each line as it comes. Who asks is always the peer's
kernel-verified UID; images are tagged only in that member's namespace, with labels the
member cannot set, and removed only there.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime
import fnmatch
import grp
import hashlib
import os
import tarfile
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import IO, Any

import docker.errors
from labnotebook.provisioner import member_images as M
from labnotebook.provisioner.build_context import Conventions, too_large
from labnotebook.provisioner.builds import (
    BuildFailed,
    BuildLog,
    build_conventions,
    build_dockerfile,
    dockerfile_images,
    human,
    quota_message,
)
from labnotebook.provisioner.errors import KernelConfigError, KernelLaunchError, PermissionRefused

from .broker_policy import LaunchPolicy, Peer
from .build_policy import BuildPolicy

CHUNK = 512 << 10
"""Context bytes per build_data request: base64 of it stays well under a request line."""
STALLED_UPLOAD = 120.0
"""Seconds after which an upload nobody continues no longer holds the member's build slot."""
KEEP_FINISHED = 600.0
MAX_STATUS_LINES = 500


@dataclass
class BuildJob:
    id: str
    uid: int
    username: str
    name: str
    base: dict[str, Any]
    size: int
    file: IO[bytes]
    log: BuildLog
    received: int = 0
    state: str = "upload"  # upload, running, done, failed
    touched: float = field(default_factory=time.monotonic)
    result: dict[str, Any] | None = None
    error: KernelLaunchError | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    digest: Any = field(default_factory=hashlib.sha256)

    @property
    def active(self) -> bool:
        if self.state == "upload":
            return time.monotonic() - self.touched < STALLED_UPLOAD
        return self.state == "running"


class ImageService:
    """Members' images through the broker: builds, listing, removal, publishing, launch rights."""

    def __init__(self, engine: Any, launch: LaunchPolicy, policy: BuildPolicy, log: Any) -> None:
        self.engine = engine
        self.launch = launch
        self.policy = policy
        self.log = log
        self._jobs: dict[str, BuildJob] = {}
        self._lock = threading.Lock()

    @property
    def api(self) -> Any:
        return self.engine.api

    # -- who may use which image ---------------------------------------------------------------

    def _lab_image(self, reference: str) -> bool:
        return any(fnmatch.fnmatchcase(reference, p) for p in self.launch.allowed_images)

    def launchable(self, peer: Peer, reference: Any) -> bool:
        """True if `reference` is a member image `peer` may run (their own, or published);
        False if it is not a member image (the launch policy's patterns decide); a refusal
        naming the owner if it is someone else's unpublished image."""
        if not isinstance(reference, str) or not reference or self._lab_image(reference):
            return False
        if getattr(self.engine, "api", None) is None:
            return False  # an engine without images (tests' fakes): the patterns decide
        details = M.inspect(self.api, reference)
        image = M.MemberImage.of(details) if details else None
        if image is None:
            return False
        if image.owner_uid == peer.uid or image.published:
            return True
        raise PermissionRefused(
            f"The image {reference} is {image.owner}'s kernel {image.name!r} (v{image.version}), "
            "which is not published: only its owner can run it. Ask them, or a lab admin, to "
            f"publish it (`labnotebook kernel publish {image.owner}/{image.name}:v"
            f"{image.version}`)."
        )

    def base_for(self, peer: Peer, reference: str) -> dict[str, Any]:
        """The image `reference` as a build's base, if the member may launch it."""
        details = M.inspect(self.api, reference)
        allowed = self._lab_image(reference) or (
            details is not None and self.launchable(peer, reference)
        )
        if not allowed:
            raise PermissionRefused(
                f"You cannot build FROM {reference!r}: a kernel image may start only from the "
                f"lab's images ({', '.join(self.launch.allowed_images)}), your own, or published "
                "ones (`labnotebook kernel ls` lists them)."
            )
        if details is None:
            raise KernelConfigError(
                f"The image {reference!r} is not on the lab's engine, and builds never pull: "
                "name an image listed by `labnotebook kernel ls` or the lab's kernel image."
            )
        return details

    # -- a build ---------------------------------------------------------------------------------

    def begin(self, peer: Peer, name: str, base: str | None, size: int) -> dict[str, Any]:
        if not self.policy.enabled:
            raise PermissionRefused("This lab does not build kernel images (BuildPolicy.enabled).")
        identity = self.launch.identity_of(peer)
        if identity.uid == 0:
            raise PermissionRefused("Root builds with `docker build`, not through the broker.")
        M.check_name(name)
        if size < 0 or size > self.policy.context_bytes:
            raise PermissionRefused(too_large("you sent", self.policy.context_bytes))
        base_details = self.base_for(peer, base or self.policy.default_base)
        quota = self.policy.quota_bytes
        if quota is not None:
            used = M.used_bytes(M.member_images(self.api, peer.uid))
            if used >= quota:
                raise PermissionRefused(
                    f"Your images already use {human(used)} of your {human(quota)} quota. "
                    "Remove versions you no longer need (`labnotebook kernel ls`, `labnotebook "
                    "kernel rm NAME:vN`), or ask the lab's admin for a larger quota."
                )
        with self._lock:
            self._forget_finished()
            mine = [j for j in self._jobs.values() if j.uid == peer.uid and j.active]
            if mine:
                raise PermissionRefused(
                    f"You already have a kernel build running ({mine[0].name!r}): one build per "
                    "member at a time. Wait for it to finish, or stop it (Ctrl-C where it runs)."
                )
            running = [j for j in self._jobs.values() if j.active]
            if len(running) >= self.policy.max_builds:
                raise PermissionRefused(
                    f"The lab is running {len(running)} kernel builds already, the most at once "
                    "(BuildPolicy.max_builds). Try again in a few minutes."
                )
            for stale in [j for j in self._jobs.values() if j.uid == peer.uid]:
                self._drop(stale)
            job = BuildJob(
                id=uuid.uuid4().hex,
                uid=peer.uid,
                username=identity.username,
                name=name,
                base=base_details,
                size=size,
                file=tempfile.TemporaryFile(prefix="labnotebook-build-"),  # noqa: SIM115
                log=BuildLog(limit=self.policy.log_bytes),
            )
            self._jobs[job.id] = job
        return {"build": job.id, "chunk": CHUNK}

    def _drop(self, job: BuildJob) -> None:
        job.cancel.set()
        if job.state != "running":
            job.file.close()
            self._jobs.pop(job.id, None)

    def _forget_finished(self) -> None:
        now = time.monotonic()
        for job in list(self._jobs.values()):
            if job.state in ("done", "failed") and now - job.touched > KEEP_FINISHED:
                self._jobs.pop(job.id, None)
            elif job.state == "upload" and not job.active:
                self._drop(job)

    def _job(self, peer: Peer, build: str) -> BuildJob:
        with self._lock:
            job = self._jobs.get(build)
        if job is None or job.uid != peer.uid:
            raise KernelConfigError(
                "No such build of yours (it finished long ago, or was abandoned)."
            )
        job.touched = time.monotonic()
        return job

    def data(self, peer: Peer, build: str, data: str, last: bool) -> dict[str, Any]:
        job = self._job(peer, build)
        if job.state != "upload":
            raise KernelConfigError("This build has all its context already.")
        try:
            chunk = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise KernelConfigError("build_data: 'data' must be base64.") from None
        job.received += len(chunk)
        if job.received > job.size or job.received > self.policy.context_bytes:
            with self._lock:
                self._drop(job)
            raise PermissionRefused(too_large("you sent", self.policy.context_bytes))
        job.file.write(chunk)
        job.digest.update(chunk)
        if last:
            if job.received != job.size:
                with self._lock:
                    self._drop(job)
                raise KernelConfigError(
                    f"The build context ended after {job.received} of {job.size} bytes."
                )
            job.state = "running"
            threading.Thread(
                target=self._run, args=(job,), name=f"build-{job.username}", daemon=True
            ).start()
        return {"received": job.received}

    async def status(self, peer: Peer, build: str, since: int, wait: float) -> dict[str, Any]:
        job = self._job(peer, build)
        called = time.monotonic()
        deadline = called + max(0.0, min(wait, 10.0))
        while True:
            lines, following = job.log.since(since)
            finished = job.state in ("done", "failed")
            now = time.monotonic()
            # New lines go out in batches of about a second: prompt, and not a request per line.
            if finished or now >= deadline or (lines and now - called >= min(wait, 1.0)):
                break
            await asyncio.sleep(0.02 if now - called < 0.5 else 0.1)  # quick builds: no wait
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

    def cancel(self, peer: Peer, build: str) -> None:
        job = self._job(peer, build)
        with self._lock:
            self._drop(job)

    def _run(self, job: BuildJob) -> None:
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
            self.log.exception("Build %s of %s failed", job.name, job.username)
            job.error = KernelLaunchError(
                f"The kernel broker failed during the build ({type(e).__name__}); the lab's "
                "admin will find details in the broker's log."
            )
            job.state = "failed"
        finally:
            job.file.close()
            job.touched = time.monotonic()
            self._save_log(job)
            self.log.info(
                "%s(%d) build %s: %s in %.0f s",
                job.username,
                job.uid,
                job.name,
                "ok" if job.state == "done" else type(job.error).__name__,
                time.monotonic() - started,
            )

    def _build(self, job: BuildJob) -> dict[str, Any]:
        peer = Peer(0, job.uid, 0)
        job.file.seek(0)
        with tarfile.open(fileobj=job.file) as tar:
            conventions = Conventions.read(tar)
            dockerfile = ""
            if conventions.dockerfile:
                member = tar.getmember("Dockerfile")
                if member.size > 1 << 20:
                    raise KernelConfigError("The Dockerfile is larger than 1 MiB.")
                extracted = tar.extractfile(member)
                dockerfile = extracted.read().decode(errors="replace") if extracted else ""
        job.file.seek(0)
        images = M.member_images(self.api, job.uid)
        quota = self.policy.quota_bytes
        used = M.used_bytes(images)
        room = None if quota is None else quota - used
        version = M.next_version(images, job.name)
        repository = M.repository(job.username, job.uid, job.name)
        tag = f"v{version}"
        existing = M.inspect(self.api, f"{repository}:{tag}")
        if existing is not None:
            # Only the broker tags here; a clash means a namespace shared by accident.
            raise PermissionRefused(
                f"{repository}:{tag} already exists and is not a new version of yours; "
                "nothing was built. Ask the lab's admin to look at it."
            )
        base = job.base
        digest = "sha256:" + job.digest.hexdigest()
        if not conventions.dockerfile:
            # The same folder on the same base makes the same image: the version that has it.
            same = [
                i for i in images if i.name == job.name and i.context_digest == digest
                and i.base == base["Id"]
            ]  # fmt: skip
            if same:
                job.log.add(f"==> Unchanged since v{same[-1].version}: using that version")
                return self._result(same[-1], base)
        limits = self.policy.limits(room)
        if conventions.dockerfile:
            if not self.policy.allow_dockerfile:
                raise PermissionRefused(
                    "This lab builds kernels from requirements.txt, apt.txt, environment.yml "
                    "and postBuild, not from a Dockerfile (the admin has not enabled "
                    "BuildPolicy.allow_dockerfile). Remove the Dockerfile and use those files."
                )
            named, final = dockerfile_images(dockerfile)
            for reference in named:
                if self.policy.allow_pulls and M.inspect(self.api, reference) is None:
                    continue
                details = self.base_for(peer, reference)
                if reference == final:
                    base = details
        labels = M.image_labels(
            owner=job.username,
            owner_uid=job.uid,
            name=job.name,
            version=version,
            built=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            context_digest=digest,
            base_id=base["Id"],
            base_size=int(base.get("Size") or 0),
        )
        job.log.add(
            f"==> Building {repository}:{tag} from {conventions.describe()} on "
            f"{(base.get('RepoTags') or [base['Id']])[0]}"
        )
        if conventions.dockerfile:
            image_id = build_dockerfile(
                self.api, context=job.file, labels=labels, repository=repository, tag=tag,
                limits=limits, log=job.log, cancel=job.cancel,
            )  # fmt: skip
        else:
            image_id = build_conventions(
                self.api, base=base, context=job.file, conventions=conventions, labels=labels,
                repository=repository, tag=tag, limits=limits, log=job.log, cancel=job.cancel,
            )  # fmt: skip
        built = M.MemberImage.of(self.api.inspect_image(image_id))
        if built is None or built.owner_uid != job.uid:
            self._untag(f"{repository}:{tag}")
            raise BuildFailed("The built image does not carry your labels; nothing was kept.")
        if room is not None and built.added > room:
            self._untag(f"{repository}:{tag}")
            raise PermissionRefused(quota_message(built.added, limits))
        return self._result(built, base)

    @staticmethod
    def _result(image: M.MemberImage, base: dict[str, Any]) -> dict[str, Any]:
        base_labels = (base.get("Config") or {}).get("Labels") or {}
        own = [t for t in image.tags if t.startswith(M.USER_NAMESPACE + "/")]
        repository, _, tag = (own[0] if own else f":v{image.version}").rpartition(":")
        return {
            "image": image.id,
            "repository": repository,
            "tag": tag,
            "version": image.version,
            "name": image.name,
            "added": image.added,
            "argv": M.kernel_argv(base_labels),
            "language": M.kernel_language(base_labels),
        }

    def _untag(self, reference: str) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self.api.remove_image(reference, noprune=False)

    # -- build logs ------------------------------------------------------------------------------

    def _log_path(self, uid: int, name: str, create: bool = False) -> str:
        # Root-only folders named by the UID and a checked name: nothing a member can swap.
        folder = os.path.join(self.policy.log_dir, str(int(uid)))
        if create:
            os.makedirs(folder, mode=0o700, exist_ok=True)
        return os.path.join(folder, M.check_name(name) + ".log")

    def _save_log(self, job: BuildJob) -> None:
        try:
            path = self._log_path(job.uid, job.name, create=True)
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
            outcome = "succeeded" if job.state == "done" else f"failed: {job.error}"
            with os.fdopen(os.open(path, flags, 0o600), "w") as out:
                out.write(job.log.text())
                out.write(f"==> The build {outcome}\n")
        except OSError as e:
            self.log.warning("Could not keep the build log of %s: %s", job.username, e)

    def build_log(self, peer: Peer, name: str) -> str:
        try:
            with open(self._log_path(peer.uid, name), errors="replace") as f:
                return f.read()[-(self.policy.log_bytes) :]
        except FileNotFoundError:
            raise KernelConfigError(f"You have not built a kernel {name!r} yet.") from None

    # -- listing, removing, publishing --------------------------------------------------------

    def images(self, peer: Peer) -> list[dict[str, Any]]:
        """The member's images and every published one."""
        rows = M.member_images(self.api)
        return [i.as_json() for i in rows if i.owner_uid == peer.uid or i.published]

    def _resolve(self, peer: Peer, reference: str) -> list[M.MemberImage]:
        """`NAME`, `NAME:vN`, `member/NAME[:vN]`, a full tag or an image ID -> images."""
        owner_name, _, rest = reference.rpartition("/") if "/" in reference else ("", "", reference)
        name, _, version = rest.partition(":")
        candidates = M.member_images(self.api)
        if reference.startswith("sha256:") or reference.startswith(M.USER_NAMESPACE + "/"):
            details = M.inspect(self.api, reference)
            found = M.MemberImage.of(details) if details else None
            return [found] if found else []
        owner = owner_name.split("/")[-1] if owner_name else None
        matches = [
            i
            for i in candidates
            if i.name == name
            and ((owner is None and i.owner_uid == peer.uid) or owner in (i.owner, None))
            and (not version or f"v{i.version}" == version)
        ]
        if owner is not None:
            matches = [i for i in matches if i.owner == owner]
        return matches

    def remove(self, peer: Peer, reference: str) -> list[str]:
        images = self._resolve(peer, reference)
        if not images:
            raise KernelConfigError(
                f"No kernel image {reference!r} of yours (`labnotebook kernel ls` lists them)."
            )
        foreign = [i for i in images if i.owner_uid != peer.uid]
        if foreign:
            raise PermissionRefused(
                f"{reference} is {foreign[0].owner}'s image: you can only remove your own."
            )
        removed = []
        for image in images:
            for tag in image.tags:
                if tag.startswith(M.USER_NAMESPACE + "/"):
                    try:
                        self.api.remove_image(tag)
                    except docker.errors.APIError as e:
                        if e.status_code == 409:
                            raise PermissionRefused(
                                f"{tag} is in use by a running kernel; shut it down first."
                            ) from None
                        raise
                    removed.append(tag)
        return removed

    def is_admin(self, peer: Peer) -> bool:
        if peer.is_root:
            return True
        try:
            group = grp.getgrnam(self.policy.admin_group)
        except KeyError:
            return False
        return peer.gid == group.gr_gid or any(g == group.gr_gid for g in _groups_of(peer.uid))

    def publish(self, peer: Peer, reference: str, withdraw: bool) -> str:
        if not self.is_admin(peer):
            raise PermissionRefused(
                f"Only the lab's admins (group {self.policy.admin_group}) publish kernel images."
            )
        images = self._resolve(peer, reference)
        if len(images) != 1:
            raise KernelConfigError(
                f"{reference!r} must name one version of a member's kernel, as MEMBER/NAME:vN "
                f"({len(images)} match)."
            )
        image = images[0]
        own = [t for t in image.tags if t.startswith(M.USER_NAMESPACE + "/")]
        if not own:
            raise KernelConfigError(f"{reference} has no tag in its owner's namespace.")
        repo, _, tag = own[0].rpartition(":")
        target = M.published_repository(repo)
        if withdraw:
            with contextlib.suppress(docker.errors.NotFound):
                self.api.remove_image(f"{target}:{tag}")
        else:
            self.api.tag(image.id, target, tag)
        return f"{target}:{tag}"


def _groups_of(uid: int) -> list[int]:
    import pwd

    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        return []
    return os.getgrouplist(entry.pw_name, entry.pw_gid)
