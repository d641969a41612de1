"""The broker's image operations: members build, list, remove and (admins) publish kernel images.

A build is a short conversation on the broker's socket, each step one request and one answer
like every other operation:

    build        {name, base, size}          -> {build, chunk}   (checks; holds the member's slot)
    build_data   {build, data, last}         -> {received}       (the packed context, in chunks)
    build_status {build, since, wait}        -> {lines, next, done, result | error}
    build_cancel {build}

The context is packed by the member's own process (provisioner/build_context.py) and spooled
into an unlinked temporary file, refused past the lab's size limit. The build runs in a
thread of its own (provisioner/builds.py) under the admin's `BuildPolicy`; `build_status`
long-polls its log, so the member sees each line as it comes. (That life - upload, thread,
status, cancel - is every job's: hub/broker_jobs.py.) Who asks is always the peer's
kernel-verified UID; images are tagged only in that member's namespace, with labels the
member cannot set, and removed only there.
"""

from __future__ import annotations

import contextlib
import datetime
import fnmatch
import grp
import hashlib
import os
import tarfile
import tempfile
from dataclasses import dataclass, field
from typing import Any

import docker.errors
from labnotebook.provisioner import member_images as M
from labnotebook.provisioner.build_container import BuildFailed, BuildLimits, BuildLog
from labnotebook.provisioner.build_context import Conventions, too_large
from labnotebook.provisioner.builds import (
    build_conventions,
    build_dockerfile,
    dockerfile_images,
    quota_message,
)
from labnotebook.provisioner.errors import KernelConfigError, PermissionRefused
from labnotebook.provisioner.sizes import human_bytes

from .broker_jobs import CHUNK, Job, JobService
from .broker_policy import LaunchPolicy, Peer
from .build_policy import BuildPolicy
from .build_slots import BuildSlots


@dataclass(kw_only=True)
class BuildJob(Job):
    base: dict[str, Any]
    """The inspected image the build starts from (the member may launch it)."""
    digest: Any = field(default_factory=hashlib.sha256)
    """Of the context as it arrives: an unchanged folder on the same base is not rebuilt."""
    images: list[M.MemberImage] | None = None
    """The member's images as the start listed them. Only the broker adds to a member's
    namespace, one job per member at a time, so the list holds until the build."""

    def write(self, chunk: bytes) -> None:
        super().write(chunk)
        self.digest.update(chunk)


@dataclass
class NewVersion:
    """Where a job's image goes: the member's next version of its name."""

    images: list[M.MemberImage]
    """The member's images before it."""
    room: int | None
    """Bytes the member's quota leaves (None: no quota)."""
    number: int
    repository: str

    @property
    def tag(self) -> str:
        return f"v{self.number}"

    @property
    def reference(self) -> str:
        return f"{self.repository}:{self.tag}"


class ImageService(JobService[BuildJob]):
    """Members' images through the broker: builds, listing, removal, publishing, launch rights."""

    kind = "build"
    complete = "This build has all its context already."
    cut_short = "The build context ended after {received} of {size} bytes."
    sent = "you sent"
    quick_polls = 0.5  # an unchanged context ends at once: no wait for that answer

    def __init__(self, engine: Any, launch: LaunchPolicy, policy: BuildPolicy, log: Any) -> None:
        super().__init__(log)
        self.engine = engine
        self.launch = launch
        self.policy = policy
        self.slots = BuildSlots(lambda: self.policy.max_builds)
        """The lab's build slots, shared with exports (hub/broker_exports.py)."""

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
            raise PermissionRefused(too_large(self.sent, self.policy.context_bytes))
        base_details = self.base_for(peer, base or self.policy.default_base)
        images = self.check_quota(peer.uid)
        job = BuildJob(
            uid=peer.uid,
            username=identity.username,
            name=name,
            base=base_details,
            images=images,
            size=size,
            file=tempfile.TemporaryFile(prefix="labnotebook-build-"),  # noqa: SIM115
            log=BuildLog(limit=self.policy.log_bytes),
        )
        with self._lock:
            self._forget_finished()
            try:
                self.slots.reserve(
                    job,
                    busy="You already have a kernel build running ({name!r}): one build per "
                    "member at a time. Wait for it to finish, or stop it (Ctrl-C where it runs).",
                    full="The lab is running {count} kernel builds already, the most at once "
                    "(BuildPolicy.max_builds). Try again in a few minutes.",
                )
            except PermissionRefused:
                job.file.close()
                raise
            # The member's earlier builds are let go: a new build is what they follow now.
            for stale in [j for j in self._jobs.values() if j.uid == peer.uid]:
                self._drop(stale)
            self._jobs[job.id] = job
        return {"build": job.id, "chunk": CHUNK}

    def check_quota(self, uid: int) -> list[M.MemberImage]:
        """Refuse a new image (a build's or an export's) to a member whose images fill their
        quota already; the finished image is checked against what is left. Returns the
        member's images, for the job to reuse: the engine lists images slowly (tens of ms)."""
        quota = self.policy.quota_bytes
        images = M.member_images(self.api, uid)
        if quota is not None:
            used = M.used_bytes(images)
            if used >= quota:
                raise PermissionRefused(
                    f"Your images already use {human_bytes(used)} of your {human_bytes(quota)} "
                    "quota. Remove versions you no longer need (`labnotebook kernel ls`, "
                    "`labnotebook kernel rm NAME:vN`), or ask the lab's admin for a larger quota."
                )
        return images

    @property
    def upload_limit(self) -> int:
        return self.policy.context_bytes

    def _ended(self, job: BuildJob) -> None:
        self._save_log(job)

    def _forget(self, job: BuildJob) -> None:
        super()._forget(job)
        self.slots.release(job)

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
        new = self.new_version(job)
        base = job.base
        digest = "sha256:" + job.digest.hexdigest()
        if not conventions.dockerfile:
            # The same folder on the same base makes the same image: the version that has it.
            same = [
                i for i in new.images if i.name == job.name and i.context_digest == digest
                and i.base == base["Id"]
            ]  # fmt: skip
            if same and M.inspect(self.api, same[-1].id) is not None:  # not removed meanwhile
                job.log.add(f"==> Unchanged since v{same[-1].version}: using that version")
                return self._result(same[-1], base)
        limits = self.policy.limits(new.room)
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
        labels = self.labels(job, new, digest, base)
        job.log.add(
            f"==> Building {new.reference} from {conventions.describe()} on "
            f"{(base.get('RepoTags') or [base['Id']])[0]}"
        )
        if conventions.dockerfile:
            image_id = build_dockerfile(
                self.api, context=job.file, labels=labels, repository=new.repository,
                tag=new.tag, limits=limits, log=job.log, cancel=job.cancel,
            )  # fmt: skip
        else:
            image_id = build_conventions(
                self.api, base=base, context=job.file, conventions=conventions, labels=labels,
                repository=new.repository, tag=new.tag, limits=limits, log=job.log,
                cancel=job.cancel,
            )  # fmt: skip
        return self._result(self.keep(job, new, image_id, limits), base)

    # -- a new version of a member's image (a build's or an export's) ----------------------------

    def new_version(self, job: Job) -> NewVersion:
        """The next version of the job's image, refused if its tag exists already."""
        listed = getattr(job, "images", None)
        images = listed if listed is not None else M.member_images(self.api, job.uid)
        quota = self.policy.quota_bytes
        new = NewVersion(
            images=images,
            room=None if quota is None else quota - M.used_bytes(images),
            number=M.next_version(images, job.name),
            repository=M.repository(job.username, job.uid, job.name),
        )
        if M.inspect(self.api, new.reference) is not None:
            # Only the broker tags here; a clash means a namespace shared by accident.
            raise PermissionRefused(
                f"{new.reference} already exists and is not a new version of yours; "
                "nothing was built. Ask the lab's admin to look at it."
            )
        return new

    @staticmethod
    def labels(job: Job, new: NewVersion, digest: str, base: dict[str, Any]) -> dict[str, str]:
        """The owner labels of the new version: the broker's, never the member's."""
        return M.image_labels(
            owner=job.username,
            owner_uid=job.uid,
            name=job.name,
            version=new.number,
            built=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            context_digest=digest,
            base_id=base["Id"],
            base_size=int(base.get("Size") or 0),
        )

    def keep(self, job: Job, new: NewVersion, image_id: str, limits: BuildLimits) -> M.MemberImage:
        """The image made, if it carries the member's labels and fits the room their quota
        left; untagged otherwise (what was built is not trusted until checked)."""
        built = M.MemberImage.of(self.api.inspect_image(image_id))
        if built is None or built.owner_uid != job.uid:
            self._untag(new.reference)
            raise BuildFailed("The built image does not carry your labels; nothing was kept.")
        if new.room is not None and built.added > new.room:
            self._untag(new.reference)
            raise PermissionRefused(quota_message(built.added, limits))
        return built

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
