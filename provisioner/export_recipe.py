"""The recipe of an export image: what `labnotebook export` puts on top of a recorded image.

One recipe, two builders. The image is the recorded image (`FROM` exactly its ID) plus:

* the runner: a venv in EXPORT_PREFIX with nbclient and JupyterLab from a wheelhouse (no
  network), `reproduce.py`, the recorded kernel's kernelspec, and a non-root user (UID
  EXPORT_UID) whose home is the member's when the notebook lives there - all done by ONE
  shell script, `setup_script`, that runs as root from TOOLS_DIR (`tools_tar`: the script,
  reproduce.py and the wheels);
* the notebook and its data at the paths they have here, owned by that user (`ImageFiles`:
  a tar unpacked at '/');
* the configuration `image_config`: user, home, working folder, entrypoint and labels.

The broker (hub/broker_exports.py) runs the script in a bounded build container and commits
it with that configuration (`build_image`); a laptop's engine builds `dockerfile`, which ADDs
the same two tars, RUNs the same script and spells the same configuration, so that its
layers are cached between exports. Both check the image the same way (`check_image`).

Every value from the notebook's record or from a path is data: in shell text it is quoted
with `shlex.quote`, in the Dockerfile it is a quoted word, and what neither could carry
safely (control characters, a home that would break /etc/passwd) is refused.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import re
import shlex
import tarfile
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from .build_container import (
    BUILD_CAPABILITIES,
    BuildContainer,
    BuildFailed,
    BuildLimits,
    BuildLog,
)
from .errors import KernelConfigError, KernelLaunchError

EXPORT_PREFIX = "/opt/labnotebook-export"
EXPORT_UID = 1000
EXPORT_USER = "researcher"
RUNNER_PACKAGES = ("nbclient", "nbformat", "jupyterlab")
HUB_WHEELHOUSE = "/opt/labnotebook/share/labnotebook/wheelhouse"
SHARED_ROOT = "/home/shared"
TOOLS_DIR = "/tmp/labnotebook-export-build"
SETUP_COMMAND = ["/bin/sh", f"{TOOLS_DIR}/setup.sh"]
"""How the setup script runs, in the build container and in the Dockerfile's RUN alike."""
IMAGE_ID = re.compile(r"sha256:[0-9a-f]{64}\Z")


class ExportRefused(KernelLaunchError):
    """An export that cannot be made as asked; the message says what to do."""


@dataclass(frozen=True)
class Item:
    source: str
    """The file as read here (symlinks resolved)."""
    target: str
    """Where it goes in the image: the absolute path the notebook knows it by."""
    size: int


@dataclass
class ExportPlan:
    notebook: Item
    record: dict[str, Any]
    data: list[Item]
    name: str
    home: str
    created: str = field(
        default_factory=lambda: datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    )

    @property
    def items(self) -> list[Item]:
        return [self.notebook, *self.data]

    @property
    def total(self) -> int:
        return sum(i.size for i in self.items)


def within(path: str, roots: list[str]) -> bool:
    """Whether `path` is one of `roots` or below one (by its text: no file is looked at)."""
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def has_control_characters(text: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in text)


# -- what the image is --------------------------------------------------------------------------


def export_labels(plan: ExportPlan) -> dict[str, str]:
    record = plan.record
    title = f"Reproduction of {os.path.basename(plan.notebook.target)}"
    return {
        "org.labnotebook.export.notebook": plan.notebook.target,
        "org.labnotebook.export.base-image-id": record["image_id"],
        "org.labnotebook.export.base-image": str(record.get("image") or ""),
        "org.labnotebook.export.created": plan.created,
        "org.opencontainers.image.created": plan.created,
        "org.opencontainers.image.title": title,
    }


def user_home(plan: ExportPlan) -> str:
    """HOME in the image: the member's home when the notebook lives there (so `~` paths in it
    keep working), else a home of the export's own user."""
    return plan.home if within(plan.notebook.target, [plan.home]) else f"/home/{EXPORT_USER}"


def kernel_argv(record: dict[str, Any]) -> list[str]:
    argv = record.get("kernel_argv")
    if isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv):
        return argv
    return ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"]


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


def _passwd_home(plan: ExportPlan) -> str:
    """The export user's home, refused if it would break the /etc/passwd line it goes in."""
    home = user_home(plan)
    if ":" in home or has_control_characters(home):
        raise ExportRefused(
            f"The home {home!r} has a ':' or a control character, which /etc/passwd cannot "
            "hold: export as a user whose home has a plain name."
        )
    return home


def setup_script(plan: ExportPlan) -> str:
    """The one script that installs the runner, as root, with the tools in TOOLS_DIR (and,
    in the broker, the files already at their paths). Every value from the record or the
    plan is a `shlex.quote`d word: the record is the member's data."""
    check_record(plan.record)
    record = plan.record
    home = _passwd_home(plan)
    q = shlex.quote
    passwd = f"{EXPORT_USER}:x:{EXPORT_UID}:{EXPORT_UID}:{EXPORT_USER}:{home}:/bin/sh"
    has_uid = f"^[^:]*:[^:]*:{EXPORT_UID}:"
    kernelspec = str(record.get("kernelspec") or "python3")
    language = str(record.get("language") or "python")
    return f"""set -eu
python3 -m venv {EXPORT_PREFIX}
{EXPORT_PREFIX}/bin/pip install --no-index --no-cache-dir -q --disable-pip-version-check \\
    --find-links {TOOLS_DIR}/wheels {" ".join(RUNNER_PACKAGES)}
rm -rf {EXPORT_PREFIX}/share/jupyter/kernels/python3
cp {TOOLS_DIR}/reproduce.py {EXPORT_PREFIX}/reproduce.py
{EXPORT_PREFIX}/bin/python {EXPORT_PREFIX}/reproduce.py install-kernelspec \\
    {q(kernelspec)} {q(language)} {q(json.dumps(kernel_argv(record)))}
grep -q {q(has_uid)} /etc/passwd || echo {q(passwd)} >> /etc/passwd
grep -q {q(has_uid)} /etc/group || echo {q(f"{EXPORT_USER}:x:{EXPORT_UID}:")} >> /etc/group
mkdir -p {q(home)} /reproduce && chown {EXPORT_UID}:{EXPORT_UID} {q(home)} /reproduce
rm -rf {TOOLS_DIR}
echo '==> Runner installed'
"""


def image_config(plan: ExportPlan) -> dict[str, Any]:
    """The image's configuration: the broker commits with it; `dockerfile` spells it."""
    return {
        "User": f"{EXPORT_UID}:{EXPORT_UID}",
        "WorkingDir": os.path.dirname(plan.notebook.target),
        "Env": [
            f"HOME={user_home(plan)}",
            f"LABNOTEBOOK_NOTEBOOK={plan.notebook.target}",
            "LABNOTEBOOK_REPORT_DIR=/reproduce",
        ],
        "Entrypoint": [f"{EXPORT_PREFIX}/bin/python", f"{EXPORT_PREFIX}/reproduce.py"],
        "Cmd": ["check"],
        "ExposedPorts": {"8888/tcp": {}},
        "Labels": export_labels(plan),
    }


# -- what goes into the image -------------------------------------------------------------------


def tools_tar(plan: ExportPlan, wheelhouse: Path, out: IO[bytes]) -> None:
    """TOOLS_DIR's content: the setup script, reproduce.py and the wheelhouse's wheels."""
    with tarfile.open(fileobj=out, mode="w") as tar:

        def add_bytes(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))

        add_bytes("setup.sh", setup_script(plan).encode())
        add_bytes("reproduce.py", (Path(__file__).parent / "reproduce.py").read_bytes())
        wheels = sorted(p for p in wheelhouse.iterdir() if p.name.endswith(".whl"))
        if not wheels:
            raise ExportRefused(f"The wheelhouse {wheelhouse} holds no wheels.")
        for wheel in wheels:
            tar.add(str(wheel), f"wheels/{wheel.name}", recursive=False, filter=_plain)


def _plain(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o644
    return info


class ImageFiles:
    """The notebook and data as a tar to unpack at '/' in the image: each file at its path,
    owned by the export's user with a plain mode, and the folders below the top one (the
    home, and what is under it) made and owned by that user too; the top one, /home, stays
    the image's. Nothing of the files' own metadata but their size and time goes in."""

    def __init__(self, out: IO[bytes]) -> None:
        self._tar = tarfile.open(fileobj=out, mode="w")  # noqa: SIM115 - closed by close()
        self._folders: set[str] = set()

    def add(self, target: str, size: int, mtime: float, content: IO[bytes]) -> None:
        parts = target.strip("/").split("/")
        for depth in range(2, len(parts)):
            folder = "/".join(parts[:depth])
            if folder not in self._folders:
                self._folders.add(folder)
                info = tarfile.TarInfo(folder)
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                info.uid = info.gid = EXPORT_UID
                self._tar.addfile(info)
        info = tarfile.TarInfo(target.lstrip("/"))
        info.size, info.mode, info.mtime = size, 0o644, int(mtime)
        info.uid = info.gid = EXPORT_UID
        self._tar.addfile(info, content)

    def close(self) -> None:
        self._tar.close()

    def __enter__(self) -> ImageFiles:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def image_files(plan: ExportPlan, out: IO[bytes]) -> None:
    """The plan's files, read by this process from the files that were checked."""
    with ImageFiles(out) as files:
        for item in plan.items:
            with open(item.source, "rb") as f:
                status = os.fstat(f.fileno())
                files.add(item.target, status.st_size, status.st_mtime, f)


# -- the broker's builder: a bounded build container ---------------------------------------------


def build_image(
    api: Any,
    *,
    base: dict[str, Any],
    plan: ExportPlan,
    wheelhouse: Path,
    files: IO[bytes],
    labels: dict[str, str],
    container_labels: dict[str, str],
    limits: BuildLimits,
    log: BuildLog,
    author: str,
    cancel: threading.Event | None = None,
    over_room: Callable[[int], str] | None = None,
) -> str:
    """The export's image, tagged `plan.name`: the setup script in a bounded build container
    from the recorded image `base` (no network: the runner installs from the wheels), with
    `files` (an ImageFiles tar), committed with image_config and the base's and `labels`;
    its ID. The container goes whatever happens."""
    with BuildContainer(
        api,
        base["Id"],
        limits=limits,
        log=log,
        labels=container_labels,
        command=SETUP_COMMAND,
        user="0:0",
        network="none",
        capabilities=BUILD_CAPABILITIES,
        cancel=cancel,
        over_room=over_room,
    ) as container:
        with tempfile.TemporaryFile(prefix="labnotebook-export-tools-") as tools:
            tools_tar(plan, wheelhouse, tools)
            tools.seek(0)
            container.put_dir(TOOLS_DIR)
            container.put(TOOLS_DIR, tools)
        container.put("/", files)
        exit_code = container.run()
        if exit_code != 0:
            raise BuildFailed(
                f"Installing the runner on the recorded image failed (exit code "
                f"{exit_code}); its last lines:\n{log.tail()}\nThe image needs python3 "
                "with venv; ask the lab's admin if it is a lab image."
            )
        conf = image_config(plan)
        conf["Labels"] = {**((base.get("Config") or {}).get("Labels") or {}), **labels}
        repository, _, tag = plan.name.rpartition(":")
        return container.commit(
            repository,
            tag,
            message=f"labnotebook export of {plan.notebook.target}",
            author=author,
            conf=conf,
        )


def check_image(
    api: Any,
    reference: str,
    *,
    labels: dict[str, str],
    limits: BuildLimits,
    log: BuildLog,
    cancel: threading.Event | None = None,
) -> int:
    """The export's own check (re-run the notebook, compare) as a reader runs it - the
    image's user (UID EXPORT_UID) and command - in a bounded container with no network and
    no capabilities; its exit code."""
    with BuildContainer(
        api, reference, limits=limits, log=log, labels=labels, network="none", cancel=cancel
    ) as container:
        return container.run()


# -- a laptop's builder: the same recipe as a Dockerfile ----------------------------------------


def dockerfile(plan: ExportPlan) -> str:
    """The Dockerfile of write_context's build context: the recorded image, the tools and
    the setup script (tools.tar), the files (files.tar, whose owners ADD keeps), and
    image_config's configuration."""
    image_id = str(plan.record["image_id"])
    if not IMAGE_ID.match(image_id):
        raise ExportRefused(f"The record names {image_id!r}, which is not an image ID.")
    config = image_config(plan)
    labels = " ".join(f"{_word(k)}={_word(v)}" for k, v in config["Labels"].items())
    env = " ".join(f"{k}={_word(v)}" for k, v in (e.split("=", 1) for e in config["Env"]))
    ports = " ".join(config["ExposedPorts"])
    return "\n".join(
        [
            f"# Generated by `labnotebook export` ({plan.created}): re-runs the notebook on",
            "# the exact image it ran on, and compares the outputs with the saved ones.",
            f"FROM {image_id}",
            "USER root",
            f"ADD tools.tar {TOOLS_DIR}/",
            f"RUN {json.dumps(SETUP_COMMAND)}",
            "ADD files.tar /",
            f"LABEL {labels}",
            f"ENV {env}",
            f"USER {config['User']}",
            f"WORKDIR {_word(config['WorkingDir'])}",
            f"EXPOSE {ports}",
            f"ENTRYPOINT {json.dumps(config['Entrypoint'])}",
            f"CMD {json.dumps(config['Cmd'])}",
            "",
        ]
    )


def _word(value: str) -> str:
    """`value` as one double-quoted Dockerfile word: no variable substitution, no quote or
    backslash ending it. A line break cannot be spelled in a Dockerfile: refused."""
    if has_control_characters(value):
        raise ExportRefused(
            f"{value!r} has a control character (a line break?), which an image's label, "
            "environment or working folder cannot carry: rename it."
        )
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
    return f'"{escaped}"'


def write_context(plan: ExportPlan, wheelhouse: Path, out: IO[bytes]) -> None:
    """The build context as a tar: the Dockerfile, tools.tar and files.tar - nothing else."""
    with tarfile.open(fileobj=out, mode="w") as tar:

        def add_file(name: str, data: IO[bytes]) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode = data.seek(0, os.SEEK_END), 0o644
            data.seek(0)
            tar.addfile(info, data)

        add_file("Dockerfile", io.BytesIO(dockerfile(plan).encode()))
        for name, write in (
            ("tools.tar", lambda f: tools_tar(plan, wheelhouse, f)),
            ("files.tar", lambda f: image_files(plan, f)),
        ):
            with tempfile.TemporaryFile(prefix="labnotebook-export-") as part:
                write(part)
                add_file(name, part)
