"""The broker's GPUs: the lab's devices, who may hold how many, and each GPU kernel's own.

`GpuPolicy` is the admin's part (`make up GPUS=0,1 MEMBER_GPUS=1 GPU_SHARING=yes`, written
into the broker's configuration by hub/startup.py). `GpuService` is what the broker's
operations call around a kernel's launch and removal; the bookkeeping itself is
`gpu_book.GpuBook`'s, and the engine's running containers are its truth (`sync` before
every assignment and view), so a kernel's GPUs are free the moment its container ends,
however it ended, and a restarted broker finds every holder again from the containers'
labels.

In the lab, a kernel asks for a number of GPUs (the GPU kernelspec asks for 1). Its
`gpus: auto` means none here: on the lab's shared GPUs a kernel gets devices only by asking,
never all of them by default.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import docker.errors
from labnotebook.provisioner import labels as L
from labnotebook.provisioner.errors import KernelConfigError, PermissionRefused
from labnotebook.provisioner.gpus import GpuRequest, engine_has_gpus
from labnotebook.provisioner.host_config import inventory_host_config
from labnotebook.provisioner.notices import NOTICE_ENV
from labnotebook.provisioner.request import LaunchRequest
from labnotebook.provisioner.spec import KernelContainerSpec
from traitlets import Bool, Float, Int, List, TraitError, Unicode, validate
from traitlets.config import LoggingConfigurable

from . import gpu_activity, gpu_book, gpu_inventory
from .broker_policy import Peer, username


class GpuPolicy(LoggingConfigurable):
    """How the lab shares its GPUs."""

    devices = List(
        Unicode(),
        default_value=[],
        config=True,
        help="""The lab's GPUs, by NVML index ("0", "1", "0:1" for a MIG instance) or UUID
        ("GPU-...", "MIG-..."): `make up GPUS=0,1`. Empty: the lab has no GPUs, and GPU
        kernels are refused with a message that says so.""",
    )
    sharing = Bool(
        False,
        config=True,
        help="""Hand out a GPU that another kernel holds when none is free, least-loaded
        first (`make up GPU_SHARING=yes`); the member is told it is shared. Off: a start
        that finds no free GPU is refused at once, naming who holds each.""",
    )
    member_gpus = Int(
        None,
        allow_none=True,
        config=True,
        help="""How many GPUs one member's kernels may hold at once (`make up MEMBER_GPUS=`).
        None: half the lab's GPUs, and at least 1.""",
    )
    allow_all = Bool(
        False,
        config=True,
        help="""Let a kernel ask for all of the lab's GPUs (gpus: "all"); it still counts
        against member_gpus.""",
    )
    inventory_image = Unicode(
        "",
        config=True,
        help="""An image with labnotebook and nvidia-ml-py (the hub's own): the broker runs
        `python3 -m labnotebook.hub.gpu_inventory` in it, with every GPU, to read the host's
        GPUs from NVML, once, before its first GPU launch. Its UUIDs, models and memory fill
        in `devices`, or stand for them where `devices` is empty. Empty: `devices` only.""",
    )
    idle_timeout = Float(
        3600.0,
        config=True,
        help="""Seconds after which an idle GPU kernel is shut down, giving its GPUs back
        (`make up GPU_KERNEL_IDLE_TIMEOUT=`): an idle GPU is the lab's most expensive waste.
        The broker tells each GPU kernel's provisioner at launch, which lowers the
        kernel's cull_idle_timeout to it in the member's Jupyter server, for every
        kernelspec, the lab's and the members' own. 0: as other kernels.""",
    )
    activity_interval = Float(
        30.0,
        config=True,
        help="""Seconds between two looks at the CPU time of each GPU kernel's container,
        which tell busy kernels from idle ones ("idle 45 min" in `labnotebook gpus` and in
        refusals; hub/gpu_activity.py). 0: never look; holders are only "held".""",
    )
    usage_cache = Float(
        15.0,
        config=True,
        help="""Seconds the GPUs' utilization and memory used (read from NVML, for the
        admins' view) are reused before they are read again.""",
    )
    restart_hold = Float(
        300.0,
        config=True,
        help="""Seconds a restarted kernel's GPUs stay held for it between its old
        container's removal and its new one's launch.""",
    )

    @validate("devices")
    def _valid_devices(self, proposal: dict[str, Any]) -> Any:
        try:
            gpu_inventory.from_setting(",".join(proposal["value"]))
        except KernelConfigError as e:
            raise TraitError(f"GpuPolicy.devices: {e}") from None
        return proposal["value"]

    @validate("member_gpus")
    def _valid_cap(self, proposal: dict[str, Any]) -> Any:
        value = proposal["value"]
        if value is not None and value < 0:
            raise TraitError(f"GpuPolicy.member_gpus must be 0 or more, not {value}")
        return value

    def book(self, nvml: list[gpu_book.Gpu] | None = None) -> gpu_book.GpuBook:
        """The lab's book of its GPUs: `devices`, with what NVML told (`nvml`) filled in."""
        setting = gpu_inventory.from_setting(",".join(self.devices))
        return gpu_book.GpuBook(
            gpu_inventory.choose(setting, nvml) if setting else list(nvml or []),
            sharing=self.sharing,
            member_cap=self.member_gpus,
            allow_all=self.allow_all,
            restart_hold=self.restart_hold,
        )


def wanted_count(gpus: str | GpuRequest) -> int:
    """How many GPUs an admitted request asks the lab for (0: none; gpu_book.ALL: all)."""
    if not isinstance(gpus, GpuRequest) or not gpus.wanted:
        return 0  # "auto": none in the lab (module docstring)
    if gpus.device_ids:
        raise PermissionRefused(
            "In this lab the broker picks a kernel's GPUs: ask for a number of GPUs (gpus: 1) "
            "instead of naming devices. `labnotebook gpus` shows who holds which."
        )
    return gpu_book.ALL if gpus.count == -1 else gpus.count


def shared_notice(assignment: gpu_book.Assignment) -> str:
    devices = ", ".join(assignment.devices)
    return (
        f"This kernel shares its GPU ({devices}) with another kernel: every GPU of the lab is "
        "in use, and the lab shares them (GPU_SHARING). Memory and time on it are split, so "
        "large models may run out of GPU memory; `labnotebook gpus` shows who else is on it."
    )


class GpuService:
    """The lab's GPUs as the broker's operations use them."""

    def __init__(self, engine: Any, policy: GpuPolicy, log: Any) -> None:
        self.engine = engine
        self.policy = policy
        self.log = log
        self._book: gpu_book.GpuBook | None = None
        self._book_lock = threading.Lock()
        self._ended: dict[str, str] = {}
        """container id -> why the broker stopped it (kept until its removal)."""
        self.activity = gpu_activity.KernelActivity()
        self._nvml_read = False
        """Whether NVML could be read at the book's making: only then is usage asked for."""
        self._usage: tuple[float, dict[str, dict[str, Any]]] = (-math.inf, {})
        self._usage_lock = threading.Lock()

    @property
    def book(self) -> gpu_book.GpuBook:
        """The book, made at first use: with the host's GPUs from NVML where it can be read."""
        with self._book_lock:
            if self._book is None:
                nvml = self._nvml_inventory()
                self._nvml_read = bool(nvml)
                self._book = self.policy.book(nvml)
                self._book.activity = self.activity.state
                devices = ", ".join(g.describe() for g in self._book.gpus) or "none"
                self.log.info("The lab's GPUs: %s", devices)
            return self._book

    def _nvml_inventory(self) -> list[gpu_book.Gpu] | None:
        """The host's GPUs from NVML, read in a short-lived container given every GPU; None
        where that cannot be done (no image for it, no GPU runtime, no driver)."""
        if not self.policy.inventory_image:
            return None
        try:
            if not engine_has_gpus(self.engine.info()):
                return None
            return gpu_inventory.parse_inventory_json(self._run_inventory())
        except Exception as e:  # the setting stands in: never a broker that cannot start
            self.log.warning("Cannot read the host's GPUs from NVML (%s); using GPUS only.", e)
            return None

    def _run_inventory(self, *flags: str) -> bytes:
        """`gpu_inventory --json FLAGS`'s output, from a short-lived container with every
        GPU, as nobody."""
        api = self.engine.api
        container = api.create_container(
            self.policy.inventory_image,
            command=["python3", "-m", "labnotebook.hub.gpu_inventory", "--json", *flags],
            entrypoint=[],
            user="65534:65534",
            labels={L.ROLE: "gpu-inventory"},
            host_config=inventory_host_config(api),
        )["Id"]
        try:
            api.start(container)
            api.wait(container, timeout=120)
            return bytes(api.logs(container, stdout=True, stderr=False))
        finally:
            # v=True: the image may declare volumes (the hub image does: /home, /srv/state),
            # which would otherwise stay behind, two more at every inventory.
            api.remove_container(container, force=True, v=True)

    def usage(self) -> dict[str, dict[str, Any]]:
        """Device id -> utilization (%) and memory used, from NVML (at most every
        `usage_cache` seconds); {} where NVML could not be read."""
        if self._book is None or not self._nvml_read:
            return {}
        with self._usage_lock:
            read_at, usage = self._usage
            if time.monotonic() - read_at < self.policy.usage_cache:
                return usage
            try:
                usage = gpu_inventory.parse_usage_json(self._run_inventory("--usage"))
            except Exception as e:
                self.log.warning("Cannot read the GPUs' usage from NVML: %s", e)
                usage = {}
            self._usage = (time.monotonic(), usage)
            return usage

    def sample_activity(self) -> None:
        """Look at the CPU time of every GPU kernel's container (hub/gpu_activity.py): a few
        containers, each one engine call, side by side."""
        if self._book is None:
            return  # no GPU kernel yet
        containers = {h.container_id for h in self._book.holds() if h.container_id}
        self.activity.keep_only(containers)
        if not containers:
            return

        def sample(container_id: str) -> None:
            try:
                stats = self.engine.api.stats(container_id, stream=False, one_shot=True)
                used = stats["cpu_stats"]["cpu_usage"]["total_usage"]
            except (docker.errors.APIError, KeyError, TypeError):
                return  # ended meanwhile: the next sync frees its GPUs
            self.activity.observe(container_id, used / 1e9, time.time())

        with ThreadPoolExecutor(max_workers=min(8, len(containers))) as pool:
            list(pool.map(sample, containers))

    def sync(self) -> None:
        """Agree with the engine's running kernel containers (labels and states)."""
        mark = self.book.mark()
        report = self.book.sync(self.engine.kernel_containers(), mark=mark)
        for hold in report.released:
            self.log.info(
                "GPU %s free again: kernel %s of %s ended", hold.device_id, hold.kernel_id,
                hold.username,
            )  # fmt: skip
        for hold in report.adopted:
            self.log.info(
                "GPU %s held by kernel %s of %s (found running)", hold.device_id,
                hold.kernel_id, hold.username,
            )  # fmt: skip

    @contextlib.contextmanager
    def assigned(
        self, peer: Peer, request: LaunchRequest
    ) -> Iterator[tuple[LaunchRequest, dict[str, str]]]:
        """The request with exactly its own GPUs, and the labels that record them, while the
        launch runs: a launch that fails frees them at once; `confirm` keeps them."""
        count = wanted_count(request.gpus)
        if count == 0:
            yield dataclasses.replace(request, gpus=GpuRequest()), {}
            return
        self.sync()
        assignment = self.book.assign(
            peer.uid, username(peer.uid), request.kernel_id, request.kernel_name, count
        )
        env = dict(request.env)
        if assignment.shared:
            # Told in the kernel's first cell (notices.py), with any notice already there.
            told = env.get(NOTICE_ENV, "")
            env[NOTICE_ENV] = "\n\n".join(filter(None, [told, shared_notice(assignment)]))
        try:
            yield (
                dataclasses.replace(request, gpus=assignment.request(), env=env),
                gpu_book.labels(assignment, assignment.since or time.time()),
            )
        except BaseException:
            self.book.abandon(request.kernel_id)
            raise

    def confirm(self, spec: KernelContainerSpec, container_id: str) -> None:
        """The launch made `container_id`: its GPUs are held by it now."""
        if spec.labels.get(gpu_book.GPUS):
            self.book.confirm(spec.kernel_id, container_id)

    @staticmethod
    def holds_gpus(labels: dict[str, str]) -> bool:
        """Whether a kernel container was given GPUs (the broker's own label says)."""
        return bool(labels.get(gpu_book.GPUS))

    def release(self, container_id: str, restarting: bool = False) -> None:
        if restarting:
            # Its GPUs are held for it: the book must know the kernel (a broker restarted
            # since its launch finds it in the engine's listing; the container still runs).
            self.sync()
            self.book.release(container_id, restarting=True)
        elif self._book is not None:
            # Before the book's first use there is nothing to release, and a shutdown must
            # not wait for the GPU inventory.
            self._book.release(container_id)
        if not restarting:
            self._ended.pop(container_id, None)

    def release_by_admin(self, gpu: str, admin: str) -> list[dict[str, Any]]:
        """Stop every kernel holding `gpu` (an index such as "0", "GPU 0", a MIG "0:1" or a
        UUID; an index names all its MIG instances) for the lab's admin; the stopped
        kernels' holds, for the audit line. Each
        kernel's state then says why it ended (`ended_reason`), and the member's next kernel
        tells her (notices.py)."""
        self.sync()
        wanted = gpu.strip().removeprefix("GPU ").removeprefix("MIG ").lower()
        rows = [
            r
            for r in self.book.holders()
            if wanted in {str(r["index"]), r["device_id"].lower(), r["uuid"].lower()}
        ]
        if not rows:
            known = ", ".join(g.device_id for g in self.book.gpus) or "none"
            raise KernelConfigError(f"The lab has no GPU {gpu!r} (its GPUs: {known}).")
        stopped = []
        for row in rows:
            for holder in row["holders"]:
                if not holder["container_id"]:
                    continue  # starting or restarting: its launch is refused below
                self._ended[holder["container_id"]] = (
                    f"The lab's admin ({admin}) stopped this kernel to free {row['label']} "
                    "for others. Start the kernel again to get a free GPU, or ask the admin."
                )
                self.engine.signal(holder["container_id"], signal.SIGKILL)
                self.book.release(holder["container_id"])
                stopped.append({**holder, "gpu": row["label"]})
        return stopped

    def ended_reason(self, container_id: str) -> str:
        """Why the broker stopped this kernel ('' if it did not)."""
        return self._ended.get(container_id, "")

    def view(self, peer: Peer, admin: bool = False) -> list[dict[str, Any]]:
        """Who holds which GPU, for `labnotebook gpus`: any member sees holders, kernel
        names and how long each is busy or idle; container ids only for the holder's own
        kernels (and root); the lab's admins also each GPU's utilization and memory used,
        where NVML can be read."""
        self.sync()
        rows = self.book.holders()
        usage = self.usage() if admin or peer.is_root else {}
        for row in rows:
            for holder in row["holders"]:
                if not peer.is_root and holder["uid"] != peer.uid:
                    holder["container_id"] = ""
            if row["device_id"] in usage:
                row.update(usage[row["device_id"]])
        return rows
