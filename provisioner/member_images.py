"""Members' kernel images: their names, the labels they carry, and who may run them.

A member's image lives in their own namespace, `labnotebook-user/<member>/<NAME>:v<N>`; every
rebuild is a new version and old ones stay (old notebooks re-run on them). Labels record the
owner (name and UID), the build time, the context's digest and the base's size, from which
the disk a version adds (not the shared base layers) is counted against the member's quota.
An admin publishes a version by tagging it `labnotebook-published/<member>/<NAME>:v<N>`: a
namespace only the broker writes, so "published" is a fact of the engine, not of a file.

Who may launch an image is decided from these labels and tags on the image itself, found by
its ID or tag, never from a pattern on the reference (image IDs are in members' kernelspecs).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from . import labels as L
from .errors import KernelConfigError

USER_NAMESPACE = "labnotebook-user"
PUBLISHED_NAMESPACE = "labnotebook-published"
MEMBER_IMAGE_ROLE = "member-image"
BUILD_ROLE = "build"
IMAGE_NAME = f"{L.PREFIX}.image-name"
VERSION = f"{L.PREFIX}.version"
BUILT = f"{L.PREFIX}.built"
CONTEXT_DIGEST = f"{L.PREFIX}.context-digest"
BASE = f"{L.PREFIX}.base"
BASE_SIZE = f"{L.PREFIX}.base-size"
KERNEL = f"{L.PREFIX}.kernel"
"""Set by the lab's kernel images: which kernel they run (python3, ir)."""

# A Docker repository path component: lowercase alphanumerics joined by one '.', one or two
# '_', or dashes.
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*\Z")
_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?\Z")
_TAG = re.compile(r"v([0-9]{1,6})\Z")


def check_name(name: str) -> str:
    """A kernel NAME: it is a kernelspec folder and a Docker path component."""
    if not _NAME.match(name):
        raise KernelConfigError(
            f"{name!r} cannot name a kernel: use lowercase letters, digits and '-' (at most 64, "
            "starting and ending with a letter or digit), e.g. 'genomics' or 'py-gdal'."
        )
    return name


def member_component(username: str, uid: int) -> str:
    """The member's path component. Member names may end in '-' or '_' (or hold '__-'),
    which Docker references cannot: those get a cleaned name and their UID after a '.', a
    character no member name has, so two members never share a namespace."""
    if _COMPONENT.match(username):
        return username
    cleaned = re.sub(r"[^a-z0-9]+", "-", username.lower()).strip("-") or "member"
    return f"{cleaned}.{uid}"


def repository(username: str, uid: int, name: str) -> str:
    return f"{USER_NAMESPACE}/{member_component(username, uid)}/{check_name(name)}"


def published_repository(repo: str) -> str:
    return PUBLISHED_NAMESPACE + repo.removeprefix(USER_NAMESPACE)


@dataclass
class MemberImage:
    """One version of a member's kernel image, as the engine describes it."""

    id: str
    name: str
    version: int
    owner: str
    owner_uid: int
    built: str
    context_digest: str
    base: str
    size: int
    added: int
    tags: list[str]

    @property
    def published(self) -> bool:
        return any(t.startswith(PUBLISHED_NAMESPACE + "/") for t in self.tags)

    @classmethod
    def of(cls, details: dict[str, Any]) -> MemberImage | None:
        """From `docker images` or `docker inspect` output; None if not a member's image."""
        labels = details.get("Labels") or (details.get("Config") or {}).get("Labels") or {}
        if labels.get(L.ROLE) != MEMBER_IMAGE_ROLE:
            return None
        try:
            uid = int(labels.get(L.OWNER_UID, ""))
            version = int(labels.get(VERSION, "0"))
            base_size = int(labels.get(BASE_SIZE, "0"))
        except ValueError:
            return None
        size = int(details.get("Size") or 0)
        return cls(
            id=details["Id"],
            name=labels.get(IMAGE_NAME, ""),
            version=version,
            owner=labels.get(L.OWNER, ""),
            owner_uid=uid,
            built=labels.get(BUILT, ""),
            context_digest=labels.get(CONTEXT_DIGEST, ""),
            base=labels.get(BASE, ""),
            size=size,
            added=max(0, size - base_size),
            tags=[t for t in details.get("RepoTags") or [] if t != "<none>:<none>"],
        )

    def as_json(self) -> dict[str, Any]:
        return {**self.__dict__, "published": self.published}


def inspect(api: Any, reference: str) -> dict[str, Any] | None:
    # Here, not at the top: `labnotebook kernel` imports this module in kernel images, which
    # have no Docker SDK (it needs the SDK only on an engine).
    import docker.errors

    try:
        return api.inspect_image(reference)
    except docker.errors.ImageNotFound:
        return None
    except docker.errors.APIError as e:
        if e.status_code in (400, 404):  # an invalid reference names no image
            return None
        raise


def member_images(api: Any, owner_uid: int | None = None) -> list[MemberImage]:
    """Every member image (of one owner), oldest version first."""
    filters = [f"{L.ROLE}={MEMBER_IMAGE_ROLE}"]
    if owner_uid is not None:
        filters.append(f"{L.OWNER_UID}={owner_uid}")
    found = [MemberImage.of(d) for d in api.images(filters={"label": filters})]
    images = [i for i in found if i is not None and (owner_uid is None or i.owner_uid == owner_uid)]
    return sorted(images, key=lambda i: (i.owner, i.name, i.version))


def next_version(images: list[MemberImage], name: str) -> int:
    return 1 + max((i.version for i in images if i.name == name), default=0)


def used_bytes(images: list[MemberImage]) -> int:
    """What a member's images add to the engine's disk, their bases not counted."""
    return sum(i.added for i in images)


def image_labels(
    *,
    owner: str,
    owner_uid: int,
    name: str,
    version: int,
    built: str,
    context_digest: str,
    base_id: str,
    base_size: int,
) -> dict[str, str]:
    """The labels the builder sets on a member's image; they override any the base or a
    Dockerfile set (a Dockerfile's LABEL cannot claim another owner)."""
    return {
        L.ROLE: MEMBER_IMAGE_ROLE,
        L.OWNER: owner,
        L.OWNER_UID: str(owner_uid),
        IMAGE_NAME: name,
        VERSION: str(version),
        BUILT: built,
        CONTEXT_DIGEST: context_digest,
        BASE: base_id,
        BASE_SIZE: str(base_size),
    }


def kernel_argv(base_labels: dict[str, str]) -> list[str]:
    """The kernel command for an image, from the lab image it descends from."""
    if base_labels.get(KERNEL) == "ir":
        return ["R", "--slave", "-e", "IRkernel::main()", "--args", "{connection_file}"]
    return ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"]


def kernel_language(base_labels: dict[str, str]) -> str:
    return "R" if base_labels.get(KERNEL) == "ir" else "python"
