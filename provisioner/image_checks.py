"""Before root writes into a container: the paths it writes must be plain in the image.

The launch copies the member's account entries and the connection file into a created (not
yet started) kernel container through the engine's archive API, which runs as root and
resolves paths inside the container *with its volumes mounted*. An image a member built can
hold `/etc -> /home/bob/.ssh` or `/run/labnotebook -> /home/bob`: the copy would then write,
as root, into another member's home. So every path the launch writes, and every folder above
it, must be a real folder or file of the image, not a symlink. The container is not running,
so nothing can change between this check and the copy.
"""

from __future__ import annotations

import base64
import json
import posixpath
from typing import Any

from .errors import PermissionRefused

_SYMLINK = 1 << 27  # Go's os.ModeSymlink, as the engine reports a path's mode
_DIR = 1 << 31  # os.ModeDir
_TYPE = _DIR | _SYMLINK | (1 << 26) | (1 << 25) | (1 << 24) | (1 << 23) | (1 << 21) | (1 << 19)


def _stat(api: Any, container: str, path: str) -> dict[str, Any] | None:
    response = api.head(api._url("/containers/{0}/archive", container), params={"path": path})
    if response.status_code == 404:
        return None
    api._raise_for_status(response)
    header = response.headers.get("X-Docker-Container-Path-Stat", "")
    return json.loads(base64.b64decode(header)) if header else None


def _with_parents(path: str) -> list[str]:
    parts = posixpath.normpath(path).strip("/").split("/")
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


def refuse_planted_links(
    api: Any, container: str, image: str, files: list[str], folders: list[str]
) -> None:
    """Raise PermissionRefused if any of `files` (or a folder above one) or `folders` is a
    symlink, or is not the kind of thing the launch writes there."""
    kinds = {p: "folder" for f in [*files, *folders] for p in _with_parents(f)}
    kinds.update({f: "file" for f in files})
    kinds.update({f: "folder" for f in folders})
    for path in sorted(kinds, key=len):
        stat = _stat(api, container, path)
        if stat is None:
            continue  # missing: the copy creates it inside the image
        mode = int(stat.get("mode", 0))
        is_link = bool(mode & _SYMLINK) or bool(stat.get("linkTarget"))
        is_dir = bool(mode & _DIR)
        wrong = is_link or (is_dir if kinds[path] == "file" else not is_dir)
        if not wrong and kinds[path] == "file" and mode & _TYPE:
            wrong = True  # a device, pipe or socket
        if wrong:
            what = (
                f"a symlink to {stat.get('linkTarget')}"
                if is_link
                else "not a plain " + kinds[path]
            )
            raise PermissionRefused(
                f"The image {image} cannot run kernels: its {path} is {what}. The lab writes the "
                "kernel's account and connection files there, and will not follow links out of "
                "an image. Rebuild the image without replacing that path."
            )
