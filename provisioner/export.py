# ruff: noqa: E501 - the REPRODUCING.md template keeps its own line lengths
"""`labnotebook export`: a saved notebook -> a stand-alone image that re-runs it and checks.

The image is built `FROM` the exact image ID the notebook's record names (`record.py`), with
the notebook and only the files named with `--data`, at the paths they have here (so relative
and absolute paths in the notebook keep working), owned by a non-root user who runs it. On top
come a small venv with nbclient and JupyterLab, installed from a wheelhouse the lab already
has (the hub image's), so exports build without the network, and `reproduce.py`, which re-runs
the notebook and compares outputs cell by cell (`docker run IMAGE`) or serves JupyterLab
(`docker run IMAGE serve`).

Everything that can be refused is refused before anything is built: no record, the recorded
image gone, a data file that cannot be read or lies outside the home. What the image is - the
setup script, the configuration, the labels - is export_recipe.py's, for both builders. Who
builds is a `Builder`: `EngineBuilder` talks to the Docker engine (a laptop); in the hub,
members have no engine, and the build goes through the kernel broker (`BrokerBuilder`).
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, Protocol

from . import labels as L
from . import member_images as M
from .build_container import BuildLimits, BuildLog
from .errors import KernelLaunchError
from .export_recipe import (
    EXPORT_PREFIX,
    EXPORT_UID,
    HUB_WHEELHOUSE,
    RUNNER_PACKAGES,
    SHARED_ROOT,
    ExportPlan,
    ExportRefused,
    Item,
    check_image,
    within,
    write_context,
)
from .image_backends import broker_socket
from .record import read_record
from .sizes import human_bytes

HUB_IMAGE = os.environ.get("LABNOTEBOOK_HUB_IMAGE", "labnotebook/hub:latest")
_NAME = re.compile(
    r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*(?::[\w][\w.-]{0,127})?$"
)


# -- planning: every refusal happens here, before anything is built ---------------------------


def allowed_roots(home: str | None = None) -> list[str]:
    """Where exported files may come from: the member's home and the lab's shared folder."""
    return [os.path.abspath(home or os.path.expanduser("~")), SHARED_ROOT]


def _readable(path: str, shown: str) -> int:
    try:
        with open(path, "rb") as f:
            f.read(1)
            return os.fstat(f.fileno()).st_size
    except PermissionError:
        raise ExportRefused(
            f"Cannot read {shown}: permission denied. Only files you can read go into an "
            "export; ask their owner to share them (or leave them out)."
        ) from None
    except IsADirectoryError:
        raise
    except OSError as e:
        raise ExportRefused(f"Cannot read {shown}: {e.strerror or e}.") from None


def _item(given: str, roots: list[str]) -> Iterator[Item]:
    """The files of one --data argument (a file, or a folder's files)."""
    target = os.path.abspath(given)
    real = os.path.realpath(target)
    for path, what in ((target, "is"), (real, "leads to")):
        if not within(path, roots):
            raise ExportRefused(
                f"{given} {what} {path}, outside your home ({roots[0]}) and {SHARED_ROOT}. Only "
                "files from there go into an export: copy what the analysis needs into your "
                "home (de-identified) and name that copy."
            )
    try:
        os.lstat(target)
    except PermissionError:
        raise ExportRefused(
            f"Cannot read {given}: permission denied (on a folder on its way). Only files you "
            "can read go into an export."
        ) from None
    except OSError:
        raise ExportRefused(f"{given}: no such file or folder.") from None
    if os.path.isdir(real):
        if not os.access(real, os.R_OK | os.X_OK):
            raise ExportRefused(f"Cannot read the folder {given}: permission denied.")
        for folder, dirs, files in os.walk(target, followlinks=False):
            dirs.sort()
            for name in sorted(files):
                yield from _item(os.path.join(folder, name), roots)
        return
    yield Item(real, target, _readable(real, given))


def plan_export(
    notebook: str, data: list[str], name: str | None = None, home: str | None = None
) -> ExportPlan:
    roots = allowed_roots(home)
    [nb] = list(_item(notebook, roots))
    record = read_record(nb.source)
    if record is None:
        raise ExportRefused(
            f"{notebook} records no kernel image (no metadata.labnotebook): it was not saved "
            "while a labnotebook Docker kernel was attached. Open it in the lab (or in "
            "JupyterLab with the labnotebook server extension), run it on a Docker kernel, "
            "save it, then export."
        )
    items: dict[str, Item] = {}
    for given in data:
        for item in _item(given, roots):
            if item.target != nb.target:
                items.setdefault(item.target, item)
    return ExportPlan(
        notebook=nb,
        record=record,
        data=list(items.values()),
        name=image_name(name, nb.target),
        home=roots[0],
    )


def image_name(name: str | None, notebook: str) -> str:
    if name is None:
        stem = re.sub(r"[^a-z0-9]+", "-", Path(notebook).stem.lower()).strip("-") or "notebook"
        name = f"{stem}-export"
    if not _NAME.match(name):
        raise ExportRefused(
            f"{name!r} is not a valid image name: lowercase letters, digits, '.', '_', '-' and "
            "'/', optionally ':TAG', e.g. --name smith2026-figure3:v1."
        )
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def missing_image_message(plan: ExportPlan, notebook: str, where: str) -> str:
    record = plan.record
    labels = record.get("labels") or {}
    rebuild = (
        "rebuild it from its context with `labnotebook kernel build` (its context digest "
        f"{labels['org.labnotebook.context-digest']} tells whether a context is the same)"
        if "org.labnotebook.context-digest" in labels
        else "a rebuild makes a different image, so re-running is the way back"
    )
    return (
        f"The image {notebook} ran on is gone from {where}: {record['image_id'][:19]}... "
        f"({record.get('image')}, recorded {record.get('recorded_at')}). An export must start "
        f"from exactly that image. Load it again if you have an archive of it (`docker load "
        f"-i FILE.tar.gz`), or {rebuild}: re-run the notebook on a current kernel image "
        "(Kernel > Restart Kernel and Run All Cells), save it - its record then names the new "
        "image - check the results, and export again."
    )


# -- the files the member's process sends the broker --------------------------------------------


def pack_files(plan: ExportPlan, out: IO[bytes]) -> None:
    """The notebook and data as a tar named by their paths in the image (no leading '/'),
    read by this process - the member's - from the files that were checked (the broker
    re-packs them as export_recipe.ImageFiles)."""
    with tarfile.open(fileobj=out, mode="w") as tar:
        for item in plan.items:
            with open(item.source, "rb") as f:
                status = os.fstat(f.fileno())
                info = tarfile.TarInfo(item.target.lstrip("/"))
                info.size, info.mode, info.mtime = status.st_size, 0o644, int(status.st_mtime)
                tar.addfile(info, f)


# -- wheelhouse: what the lab already has ------------------------------------------------------


def find_wheelhouse(given: str | None, builder: Builder) -> Path:
    """The wheels of nbclient, nbformat and JupyterLab, from (in order) --wheelhouse /
    LABNOTEBOOK_WHEELHOUSE, the hub's venv, the hub image, ~/.cache/labnotebook/wheelhouse."""
    candidates = [given, os.environ.get("LABNOTEBOOK_WHEELHOUSE"), HUB_WHEELHOUSE]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir() and any(Path(candidate).glob("*.whl")):
            return Path(candidate)
    if given:
        raise ExportRefused(f"--wheelhouse {given}: no folder with wheels there.")
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "labnotebook"
    extracted = builder.wheelhouse_from_image(HUB_IMAGE, cache)
    if extracted is not None:
        return extracted
    mine = cache / "wheelhouse"
    if mine.is_dir() and any(mine.glob("*.whl")):
        return mine
    raise ExportRefused(
        "No wheelhouse for the runner (nbclient, nbformat, JupyterLab): the hub image "
        f"{HUB_IMAGE} is not on this engine and {mine} is empty. Build the hub image "
        "(`make hub-image` in the labnotebook checkout), or fetch the wheels once with "
        f"`{sys.executable} -m pip wheel -w {mine} {' '.join(RUNNER_PACKAGES)}`."
    )


# -- builders ----------------------------------------------------------------------------------


class Builder(Protocol):
    def where(self) -> str: ...

    def image_exists(self, image_id: str) -> bool: ...

    def image_size(self, ref: str) -> int: ...

    def wheelhouse_from_image(self, image: str, cache: Path) -> Path | None: ...

    def build(self, context: IO[bytes], tag: str, progress: Callable[[str], None]) -> str:
        """Build and tag; the image ID. On failure nothing is tagged; raise with the output."""
        ...

    def check(self, ref: str, say: Callable[[str], None]) -> int: ...

    def save(self, ref: str, out: IO[bytes]) -> None: ...

    def remove(self, ref: str) -> None: ...


class EngineBuilder:
    """Exports on a Docker engine the member may use directly (a laptop, a workstation)."""

    def __init__(self, base_url: str | None = None) -> None:
        from .engine import DockerEngine

        self.engine = DockerEngine.shared(base_url)

    def where(self) -> str:
        return f"the Docker engine at {self.engine.where()}"

    def image_exists(self, image_id: str) -> bool:
        import docker.errors

        try:
            self.engine.call(self.engine.api.inspect_image, image_id)
            return True
        except docker.errors.ImageNotFound:
            return False

    def image_size(self, ref: str) -> int:
        return int(self.engine.call(self.engine.api.inspect_image, ref)["Size"])

    def wheelhouse_from_image(self, image: str, cache: Path) -> Path | None:
        """The hub image's wheelhouse, copied out once per image ID (no network)."""
        import docker.errors

        api = self.engine.api
        try:
            image_id = self.engine.call(api.inspect_image, image)["Id"]
        except docker.errors.ImageNotFound:
            return None
        folder = cache / f"wheelhouse-{image_id.split(':')[-1][:12]}"
        if folder.is_dir() and any(folder.glob("*.whl")):
            return folder
        container = self.engine.call(api.create_container, image_id, command=["true"])["Id"]
        try:
            stream, _ = api.get_archive(container, HUB_WHEELHOUSE + "/.")
            staging = Path(tempfile.mkdtemp(prefix="wheelhouse-", dir=_mkdir(cache)))
            with tarfile.open(fileobj=_Chunks(stream), mode="r|") as tar:
                for member in tar:
                    if member.isfile() and member.name.endswith(".whl"):
                        extracted = tar.extractfile(member)
                        assert extracted is not None
                        with open(staging / os.path.basename(member.name), "wb") as f:
                            shutil.copyfileobj(extracted, f)
        except docker.errors.NotFound:
            return None  # a hub image from before exports
        finally:
            self.engine.remove(container)
        if not any(staging.glob("*.whl")):
            shutil.rmtree(staging, ignore_errors=True)
            return None
        staging.rename(folder)
        return folder

    def build(self, context: IO[bytes], tag: str, progress: Callable[[str], None]) -> str:
        api = self.engine.api
        output: list[str] = []
        image_id = ""
        for chunk in api.build(
            fileobj=context, custom_context=True, tag=tag, rm=True, forcerm=True, decode=True
        ):
            if "error" in chunk:
                tail = "".join(output[-25:])
                raise KernelLaunchError(
                    f"Building the export failed: {chunk['error'].strip()}\nIts last lines:\n{tail}"
                )
            text = chunk.get("stream", "")
            if text:
                output.append(text)
                if text.startswith("Step "):
                    progress("  " + text.strip()[:110])
            if "aux" in chunk:
                image_id = chunk["aux"].get("ID", image_id)
        return image_id or api.inspect_image(tag)["Id"]

    def check(self, ref: str, say: Callable[[str], None]) -> int:
        """The image's own check with no network, as the broker runs it; its exit code."""
        return check_image(
            self.engine.api,
            ref,
            labels={L.ROLE: M.BUILD_ROLE},
            limits=BuildLimits(network="none"),
            log=BuildLog(on_line=lambda line: say("  " + line)),
        )

    def save(self, ref: str, out: IO[bytes]) -> None:
        for chunk in self.engine.call(self.engine.api.get_image, ref):
            out.write(chunk)

    def remove(self, ref: str) -> None:
        self.engine.call(self.engine.api.remove_image, ref)


class BrokerBuilder:
    """Exports in the lab hub, where members have no engine: through the kernel broker.

    This process - the member's - reads and packs the notebook and the data files (the root
    broker never opens a member's file); the broker checks the paths and the recorded image,
    adds the runner from the hub's own wheelhouse, builds in a bounded container (never from
    anything the member wrote as build instructions) and tags the image in the member's
    namespace under the lab's quota (hub/broker_exports.py).
    """

    def __init__(self, socket_path: str, broker_uid: int | None = 0) -> None:
        from .broker_client import BrokerEngine

        self.client = BrokerEngine(socket_path, broker_uid=broker_uid)
        self.export_id: str | None = None

    def where(self) -> str:
        return "the lab's engine"

    def image_exists(self, image_id: str) -> bool:
        # Refused (not False) when the image is someone else's unpublished one.
        return bool(self.client.call("export_base", image=image_id)["exists"])

    def image_size(self, ref: str) -> int:  # pragma: no cover - the broker reports sizes
        raise NotImplementedError

    def wheelhouse_from_image(self, image: str, cache: Path) -> Path | None:
        return None  # the broker adds its own wheelhouse

    def build(self, context: IO[bytes], tag: str, progress: Callable[[str], None]) -> str:
        raise NotImplementedError("exports through the broker send files, not a context")

    def export(self, plan: ExportPlan, name: str, say: Callable[[str], None]) -> dict[str, Any]:
        """Send the files, follow the broker's build; its result (image, repository, tag...)."""
        with tempfile.TemporaryFile(prefix="labnotebook-export-") as packed:
            pack_files(plan, packed)
            size = packed.tell()
            packed.seek(0)
            begun = self.client.call(
                "export",
                name=name,
                image=plan.record["image_id"],
                notebook=plan.notebook.target,
                size=size,
            )
            self.export_id, chunk = str(begun["export"]), int(begun["chunk"])
            say(f"Sending the files to the lab's builder ({human_bytes(size)})")
            try:
                sent = 0
                while True:
                    data = packed.read(chunk)
                    sent += len(data)
                    last = sent >= size
                    self.client.call(
                        "export_data",
                        export=self.export_id,
                        data=base64.b64encode(data).decode(),
                        last=last,
                    )
                    if last:
                        break
                return self._follow(say)
            except KeyboardInterrupt:
                self.client.call("export_cancel", export=self.export_id)
                raise

    def check(self, ref: str, say: Callable[[str], None]) -> int:
        """The image's own check, run by the broker with no network; its exit code."""
        started = self.client.call("export_check", export=self.export_id)
        result = self._follow(say, int(started["next"]))
        return int(result.get("check_exit", 1))

    def _follow(self, say: Callable[[str], None], since: int = 0) -> dict[str, Any]:
        from .broker_protocol import error_from_response

        while True:
            status = self.client.call("export_status", export=self.export_id, since=since, wait=5.0)
            for line in status["lines"]:
                say("  " + line)
            since = status["next"]
            if status["done"]:
                if status.get("error"):
                    raise error_from_response(status)
                return dict(status["result"])

    def save(self, ref: str, out: IO[bytes]) -> None:
        """`docker save` of the export just built, streamed back by the broker; written here,
        by the member's process, where the member can write."""
        while True:
            answer = self.client.call("export_save", export=self.export_id)
            out.write(base64.b64decode(answer["data"]))
            if answer["done"]:
                return

    def remove(self, ref: str) -> None:  # pragma: no cover - `labnotebook kernel rm`
        raise NotImplementedError


def hub_name(given: str | None, notebook: str) -> str:
    """The export's NAME in the member's namespace (`labnotebook-user/MEMBER/NAME:vN`)."""
    if given is None:
        stem = re.sub(r"[^a-z0-9]+", "-", Path(notebook).stem.lower()).strip("-") or "notebook"
        given = f"{stem[:57].rstrip('-')}-export"
    if ":" in given or "/" in given:
        raise ExportRefused(
            f"--name {given}: in the lab an export is a versioned image in your namespace, "
            f"{M.USER_NAMESPACE}/YOU/NAME:vN (numbered like kernel builds), so give only the "
            "NAME, e.g. --name smith2026-figure3."
        )
    try:
        return M.check_name(given)
    except KernelLaunchError as e:
        raise ExportRefused(f"--name: {e}") from None


class _Chunks(io.RawIOBase):
    """A file over an iterator of byte chunks (the engine's archive stream)."""

    def __init__(self, chunks: Any) -> None:
        self._chunks = iter(chunks)
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        while not self._buffer:
            try:
                self._buffer = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(target), len(self._buffer))
        target[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


# -- the command -------------------------------------------------------------------------------


def export(
    notebook: str,
    data: list[str],
    *,
    name: str | None,
    builder: Builder,
    archive: bool = False,
    output: str | None = None,
    wheelhouse: str | None = None,
    compress_level: int = 6,
    check: bool = False,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    remote = isinstance(builder, BrokerBuilder)
    kernel_name = hub_name(name, notebook) if remote else ""
    plan = plan_export(notebook, data, None if remote else name)
    if remote:
        plan.name = kernel_name
    if not builder.image_exists(plan.record["image_id"]):
        raise ExportRefused(missing_image_message(plan, notebook, builder.where()))
    archive_dir = Path(output or f"{plan.name.split(':')[0].replace('/', '-')}-export")
    if archive and archive_dir.exists() and not archive_dir.is_dir():
        raise ExportRefused(f"--output {archive_dir} exists and is not a folder.")
    wheels = None if remote else find_wheelhouse(wheelhouse, builder)

    say(f"Exporting {notebook} as {plan.name}, FROM {plan.record['image_id']}")
    say(f"  ({plan.record.get('image')}, recorded {plan.record.get('recorded_at')})")
    say("What goes into the image:")
    for item in plan.items:
        say(f"  {human_bytes(item.size):>9}  {item.target}")
    say(f"  {human_bytes(plan.total):>9}  in {len(plan.items)} file(s)")
    say(
        "Anyone who gets this image can read every file listed: remove names, IDs, dates of "
        "birth and anything else that identifies people (in the data and in the notebook's "
        "outputs) before you share it."
    )
    if isinstance(builder, BrokerBuilder):
        built = builder.export(plan, kernel_name, say)
        plan.name = f"{built['repository']}:{built['tag']}"
        image_id, added = str(built["image"]), int(built["added"])
    else:
        assert wheels is not None
        with tempfile.TemporaryFile(prefix="labnotebook-export-") as context:
            write_context(plan, wheels, context)
            context.seek(0)
            image_id = builder.build(context, plan.name, say)
        added = builder.image_size(image_id) - builder.image_size(plan.record["image_id"])
    result: dict[str, Any] = {
        "image": plan.name,
        "image_id": image_id,
        "base_image_id": plan.record["image_id"],
        "added_bytes": added,
        "files": [{"path": i.target, "size": i.size} for i in plan.items],
    }
    say(f"Built {plan.name} ({image_id[:19]}), {human_bytes(added)} over its base image.")
    if remote and not check:
        say("  --check runs its check here in the lab; with Docker (after --archive, docker load):")
    say(
        f"  docker run --rm --network none {plan.name}          # re-run and compare, exit 0 if reproduced"
    )
    say(
        f"  docker run --rm -p 127.0.0.1:8888:8888 {plan.name} serve   # JupyterLab (token in the log)"
    )
    if check:
        say(f"Checking {plan.name}: re-running the notebook with no network")
        code = builder.check(plan.name, say)
        result["reproduced"] = code == 0
        say(
            "Reproduced: every required output matches."
            if code == 0
            else f"NOT reproduced (exit code {code}): the cells above differ."
        )
    if archive:
        archive_dir.mkdir(parents=True, exist_ok=True)
        base = plan.name.replace("/", "-").replace(":", "-")
        tarball = archive_dir / f"{base}.tar.gz"
        partial = tarball.with_suffix(".gz.partial")
        try:
            with gzip.open(partial, "wb", compresslevel=compress_level) as out:
                builder.save(plan.name, out)  # type: ignore[arg-type]
            partial.rename(tarball)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        (archive_dir / "REPRODUCING.md").write_text(reproducing_md(plan, image_id, tarball.name))
        result["archive"] = str(tarball.resolve())
        say(
            f"Wrote {tarball} ({human_bytes(tarball.stat().st_size)}) and {archive_dir / 'REPRODUCING.md'}"
        )
    return result


def reproducing_md(plan: ExportPlan, image_id: str, tarball: str) -> str:
    record = plan.record
    notebook = os.path.basename(plan.notebook.target)
    files = "\n".join(f"| `{i.target}` | {human_bytes(i.size)} |" for i in plan.items)
    from . import reproduce

    compared = (reproduce.__doc__ or "").split("What is compared (the documented normalisations):")[
        -1
    ]
    return f"""# Reproducing {notebook}

This archive holds a container image (`{tarball}`, made with `docker save`) that contains
the notebook `{notebook}`, the data it reads, and the exact software environment it ran in,
and re-runs the notebook to check that it gives the same results.

## Run it

Needs Docker (or Podman) on Linux, macOS or Windows; no network is needed.

```bash
docker load -i {tarball}
docker run --rm --network none {plan.name}
```

It re-executes every cell and compares the new outputs with the saved ones, cell by cell,
printing one line per cell; the exit status is 0 only if every required output matches.
To keep the report (`report.md`, `report.json`) and the re-executed notebook:

```bash
docker run --name reproduce --network none {plan.name}; docker cp reproduce:/reproduce ./reproduce; docker rm reproduce
```

To explore it in JupyterLab:

```bash
docker run --rm -p 127.0.0.1:8888:8888 {plan.name} serve
```

and open the `http://127.0.0.1:8888/lab?token=...` address it prints (`-e JUPYTER_TOKEN=...`
chooses the token).

## What is in it

* the kernel image the notebook was run on: `{record.get("image")}`, image ID
  `{record["image_id"]}` (recorded {record.get("recorded_at")}){", repo digests " + ", ".join(f"`{d}`" for d in record.get("repo_digests") or []) if record.get("repo_digests") else ""};
* on top of it (image `{image_id}`): nbclient and JupyterLab in `{EXPORT_PREFIX}`, the
  checking script `{EXPORT_PREFIX}/reproduce.py`, and these files, at the paths they had:

| file | size |
| --- | --- |
{files}

Everything runs as an unprivileged user (UID {EXPORT_UID}).

## What is compared
{compared}"""


def main(args: Any) -> int:
    # In the hub (and its kernels) members have the broker's socket and no engine: exports go
    # through the broker, found as `labnotebook kernel` finds it; --docker-host names an engine.
    broker = None if args.docker_host else broker_socket(args.broker_socket)
    if broker:
        builder: Builder = BrokerBuilder(broker)
    else:
        builder = EngineBuilder(args.docker_host)
    result = export(
        args.notebook,
        args.data or [],
        name=args.name,
        builder=builder,
        archive=args.archive,
        output=args.output,
        wheelhouse=args.wheelhouse,
        compress_level=args.compress_level,
        check=args.check,
    )
    if args.json:
        print(json.dumps(result, indent=1))
    return 0 if result.get("reproduced", True) else 3
