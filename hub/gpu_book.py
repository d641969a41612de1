"""The broker's book of who holds which GPU: each kernel gets GPUs of its own, members have a
cap, a restarted kernel gets its GPUs back, and everyone can see who holds what.

A GPU request without device IDs makes the engine give a container *every* GPU (or the first
N): two members' kernels then land on the same device and the second dies of CUDA
out-of-memory. So the broker picks the devices itself and asks the engine for exactly those
(DeviceIDs). This module is that choice and its bookkeeping, and nothing else: no Docker
calls, so the broker's thread pool may call it concurrently (one lock) and tests need no GPU.

The engine is the truth. Every GPU kernel container carries the labels `labels()` makes
(`org.labnotebook.gpus` and friends, set by the root broker; `provisioner.labels` drops any
`org.labnotebook.*` label a member asks for), and `sync()` takes the engine's listing: holds
whose container has ended are released, and labelled containers the book does not know (the
broker restarted) are added back. A kernel's restart is `release(restarting=True)` then a new
launch: its devices are kept for that kernel id for `restart_hold` seconds, as `addresses.py`
keeps its address, because to its member it is the same kernel.

Around a launch, the broker calls:

    mark = book.mark(); book.sync(engine.kernel_containers(), mark=mark)
    assignment = book.assign(uid, username, kernel_id, kernel_name, count)  # or refusal
    try: launched = launch(..., DeviceIDs=assignment.devices, labels=labels(assignment))
    except: book.abandon(kernel_id); raise
    book.confirm(kernel_id, launched.container_id)
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from labnotebook.provisioner import labels as L
from labnotebook.provisioner.durations import human_duration
from labnotebook.provisioner.errors import (
    GpuUnavailable,
    KernelConfigError,
    KernelLaunchError,
    PermissionRefused,
)
from labnotebook.provisioner.gpus import GpuRequest
from labnotebook.provisioner.sizes import human_bytes

ALL = -1
"""`assign`'s count for all of the lab's GPUs (only where the admin allows it)."""

GPUS = f"{L.PREFIX}.gpus"
"""The device IDs the container was given, comma-joined (as in its DeviceRequest)."""
GPUS_SINCE = f"{L.PREFIX}.gpus-since"
"""When the kernel first got them, in epoch seconds: a restart keeps it, and so does the book
rebuilt after a broker restart."""
GPUS_SHARED = f"{L.PREFIX}.gpus-shared"
""""1" when the devices were handed out shared (GPU_SHARING=yes and none free), else "0"."""

RUNNING_STATES = frozenset({"running", "paused", "restarting"})
"""Container states in which a container holds its devices. A "created" container has not
been given them yet (its launch is in flight, and held as such); an exited one has let go."""

_MAX_TEXT = 64
_MAX_RELEASED = 4096


def default_member_cap(gpu_count: int) -> int:
    """MEMBER_GPUS when unset: half the lab's GPUs, and at least 1."""
    return max(1, gpu_count // 2)


def human_memory(n: int) -> str:
    """A GPU's memory for people; empty when unknown."""
    return human_bytes(n) if n > 0 else ""


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _clean(value: Any, limit: int = _MAX_TEXT) -> str:
    """Text from a label, fit to put in a message other members read: printable, short."""
    if not isinstance(value, str):
        return ""
    text = "".join(c for c in value if c.isprintable())
    return text[:limit]


@dataclass(frozen=True)
class Gpu:
    """One device the lab can hand out: a whole GPU, or a MIG instance of one."""

    index: int
    """The host's NVML index (the parent GPU's for a MIG instance); the lab's own numbering
    where only UUIDs are known."""
    uuid: str = ""
    model: str = ""
    memory: int = 0
    """Total memory in bytes (0 if unknown)."""
    mig: bool = False
    mig_index: int | None = None
    """A MIG instance's slot on its GPU, where known."""

    @property
    def device_id(self) -> str:
        """What the container's DeviceRequest names: the UUID when known, since it stays the
        same across reboots and driver updates; else the index ("0", or "0:1" for MIG)."""
        if self.uuid:
            return self.uuid
        if self.mig and self.mig_index is not None:
            return f"{self.index}:{self.mig_index}"
        return str(self.index)

    @property
    def label(self) -> str:
        """How messages name it: 'GPU 0', or 'MIG 0:1' for an instance of GPU 0."""
        if self.mig:
            return (
                f"MIG {self.index}:{self.mig_index}"
                if self.mig_index is not None
                else (f"GPU {self.index} (MIG)")
            )
        return f"GPU {self.index}"

    @property
    def aliases(self) -> frozenset[str]:
        """Every ID a container label may use for it (the book's ids may change form, index
        to UUID, when NVML becomes readable between broker runs)."""
        names = {self.device_id, self.uuid.lower()} if self.uuid else {self.device_id}
        if self.mig and self.mig_index is not None:
            names.add(f"{self.index}:{self.mig_index}")
        elif not self.mig:
            names.add(str(self.index))
        return frozenset(n for n in names if n)

    def describe(self) -> str:
        parts = [self.label, self.model, human_memory(self.memory)]
        return "  ".join(p for p in parts if p)


@dataclass(frozen=True)
class GpuHold:
    """One device held by one kernel."""

    device_id: str
    uid: int
    """The owner's uid (from the broker's peer credentials); -1 if a rebuilt container's
    labels did not say."""
    username: str
    kernel_id: str
    kernel_name: str
    container_id: str = ""
    """ "" while the launch is in flight."""
    since: float = 0.0
    """Wall-clock epoch seconds, so that it survives a broker restart (via GPUS_SINCE)."""
    shared: bool = False
    restarting: bool = False
    """Held for the kernel's restart: no container now, the same kernel id gets it back."""

    @property
    def state(self) -> str:
        if self.restarting:
            return "restarting"
        return "running" if self.container_id else "starting"


@dataclass(frozen=True)
class Assignment:
    """The devices a launch is to ask the engine for."""

    devices: tuple[str, ...]
    shared: bool
    since: float = 0.0

    def request(self) -> GpuRequest:
        """The GpuRequest naming exactly these devices (its device_requests() is what goes
        into HostConfig.DeviceRequests)."""
        return GpuRequest(device_ids=self.devices)


@dataclass(frozen=True)
class SyncReport:
    """What a sync changed, for the broker's log."""

    released: tuple[GpuHold, ...] = ()
    adopted: tuple[GpuHold, ...] = ()


def labels(assignment: Assignment, since: float | None = None) -> dict[str, str]:
    """The GPU labels of the container launched for `assignment`."""
    when = assignment.since if since is None else since
    return {
        GPUS: ",".join(assignment.devices),
        GPUS_SINCE: str(int(when)),
        GPUS_SHARED: "1" if assignment.shared else "0",
    }


@dataclass
class _Claim:
    """One kernel's devices: in flight (no container yet), running, or held for a restart."""

    uid: int
    username: str
    kernel_id: str
    kernel_name: str
    devices: tuple[str, ...]
    since: float
    shared: bool
    container_id: str = ""
    mark: int = 0
    """The book's generation at confirm (or adoption): a sync whose listing is older than
    this must not release it."""
    restart_until: float | None = None

    def holds(self) -> list[GpuHold]:
        return [
            GpuHold(
                device_id=device,
                uid=self.uid,
                username=self.username,
                kernel_id=self.kernel_id,
                kernel_name=self.kernel_name,
                container_id=self.container_id,
                since=self.since,
                shared=self.shared,
                restarting=self.restart_until is not None,
            )
            for device in self.devices
        ]


def _same_container(a: str, b: str) -> bool:
    """Full or short (12+ characters) IDs of the same container."""
    if not a or not b:
        return False
    short, long = sorted((a, b), key=len)
    return len(short) >= 12 and long.startswith(short)


def _state_of(container: Mapping[str, Any]) -> str:
    state = container.get("State")
    if isinstance(state, Mapping):  # `docker inspect` spells it as an object
        state = state.get("Status")
    return state.lower() if isinstance(state, str) else ""


class GpuBook:
    """Who holds which of the lab's GPUs, and how a launch gets some."""

    def __init__(
        self,
        gpus: Iterable[Gpu],
        *,
        sharing: bool,
        member_cap: int | None,
        allow_all: bool,
        restart_hold: float = 300,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.gpus: tuple[Gpu, ...] = tuple(
            sorted(gpus, key=lambda g: (g.index, -1 if g.mig_index is None else g.mig_index))
        )
        ids = [g.device_id for g in self.gpus]
        if len(set(ids)) != len(ids):
            raise ValueError(f"The lab's GPUs must be distinct devices: {ids}")
        if member_cap is not None and (isinstance(member_cap, bool) or member_cap < 0):
            raise ValueError(f"member_cap must be a count of GPUs, not {member_cap!r}")
        self.sharing = sharing
        self.member_cap = default_member_cap(len(self.gpus)) if member_cap is None else member_cap
        self.cap_is_default = member_cap is None
        self.allow_all = allow_all
        self.restart_hold = restart_hold
        self._clock = clock
        self._wall = wall
        self.activity: Callable[[str], tuple[str, float | None]] = lambda _: ("", None)
        """Container id -> ("idle", since) | ("busy", None) | ("", None) while unknown: how
        the holders are described (the broker's `gpu_activity.KernelActivity.state`)."""
        self._by_id = {g.device_id: g for g in self.gpus}
        self._alias = {alias: g.device_id for g in self.gpus for alias in g.aliases}
        self._claims: list[_Claim] = []
        """In flight and running; a kernel's restart hold is in _restarting."""
        self._restarting: dict[str, _Claim] = {}
        self._released: dict[str, int] = {}
        """short container id -> the generation it was released at: a listing older than that
        must not add it back."""
        self._generation = 0
        self._lock = threading.Lock()

    # -- a launch ------------------------------------------------------------------------------

    def assign(
        self, uid: int, username: str, kernel_id: str, kernel_name: str, count: int
    ) -> Assignment:
        """Devices for a kernel's launch, held for it until `confirm` or `abandon`; or a
        refusal at once (GpuUnavailable, or PermissionRefused for the lab's rules).

        uid and username are the broker's (from the peer's kernel-verified credentials), never
        a request's."""
        if isinstance(uid, bool) or not isinstance(uid, int) or uid < 0:
            raise ValueError(f"uid must be the broker's uid of the member, not {uid!r}")
        if not isinstance(kernel_id, str) or not kernel_id:
            raise ValueError("A GPU launch needs the kernel id")
        if isinstance(count, bool) or not isinstance(count, int) or (count < 1 and count != ALL):
            raise KernelConfigError(
                f"A kernel asks for a number of GPUs (1 or more) or 'all', not {count!r}."
            )
        with self._lock:
            self._expire()
            if not self.gpus:
                raise GpuUnavailable(
                    "This lab has no GPUs, so GPU kernels cannot start here. The lab's admin "
                    "gives it the host's GPUs with `make up GPUS=0,1` (their indexes or UUIDs, "
                    "on a host with the NVIDIA driver and Container Toolkit). Until then, use "
                    "a kernel without GPUs."
                )
            if count == ALL and not self.allow_all:
                raise PermissionRefused(
                    "This kernel asks for all of the lab's GPUs, which the lab's admin has not "
                    "allowed. Ask for a number of GPUs instead (gpus: 1)."
                )
            want = len(self.gpus) if count == ALL else count
            if want > len(self.gpus):
                raise GpuUnavailable(
                    f"This kernel asks for {_plural(want, 'GPU')}, but this lab has only "
                    f"{len(self.gpus)}. Ask for {len(self.gpus)} or fewer."
                )
            if self._in_flight(kernel_id) is not None:
                raise GpuUnavailable(
                    "A kernel with this id is already starting; wait for that start to finish."
                )
            claim = self._restart_claim(uid, kernel_id, want)
            if claim is None:
                claim = self._new_claim(uid, username, kernel_id, kernel_name, count, want)
            self._claims.append(claim)
            return Assignment(claim.devices, claim.shared, claim.since)

    def confirm(self, kernel_id: str, container_id: str) -> None:
        """The launch of `kernel_id` made `container_id`: its devices are held by it now."""
        if not container_id:
            raise ValueError("confirm needs the container's id")
        with self._lock:
            claim = self._in_flight(kernel_id)
            if claim is None:
                raise KeyError(f"No GPU launch in flight for kernel {kernel_id}")
            self._generation += 1
            claim.container_id = container_id
            claim.mark = self._generation

    def abandon(self, kernel_id: str) -> None:
        """The launch of `kernel_id` failed: its devices are free at once."""
        with self._lock:
            claim = self._in_flight(kernel_id)
            if claim is not None:
                self._claims.remove(claim)

    def release(self, container_id: str, restarting: bool = False) -> bool:
        """`container_id` is gone (or going). With `restarting`, its devices stay held for its
        kernel id for restart_hold seconds; otherwise they are free now. False if the book did
        not know the container.

        For a restart, call this before removing the container (so no sync frees the devices
        in between); for a shutdown, after the removal (so nobody gets a device whose memory
        the old kernel still holds)."""
        with self._lock:
            claim = next(
                (c for c in self._claims if _same_container(c.container_id, container_id)),
                None,
            )
            if claim is None:
                return False
            self._drop(claim)
            if restarting and self.restart_hold > 0:
                claim.restart_until = self._clock() + self.restart_hold
                claim.container_id = ""
                self._restarting[claim.kernel_id] = claim
            return True

    # -- the engine's truth --------------------------------------------------------------------

    def mark(self) -> int:
        """Take this just before listing the engine's containers, and pass it to sync: holds
        confirmed after it are not in that listing, and must not be released for it."""
        with self._lock:
            return self._generation

    def sync(
        self, containers: Iterable[Mapping[str, Any]], *, mark: int | None = None
    ) -> SyncReport:
        """Make the book agree with the engine's listing of kernel containers (`docker ps`
        entries: Id, Labels, State). Running holds whose container is not running are
        released; running containers with GPU labels that the book does not know are added
        (how the book is rebuilt after a broker restart). In-flight launches and restart holds
        are not the engine's to judge (restart holds expire by themselves)."""
        running: dict[str, Mapping[str, Any]] = {}
        for container in containers:
            if not isinstance(container, Mapping):
                continue
            container_id = container.get("Id")
            if (
                isinstance(container_id, str)
                and container_id
                and (_state_of(container) in RUNNING_STATES)
            ):
                running[container_id] = container
        with self._lock:
            listed_at = self._generation if mark is None else mark
            self._expire()
            released = []
            for claim in list(self._claims):
                if not claim.container_id or claim.mark > listed_at:
                    continue
                if not any(_same_container(claim.container_id, c) for c in running):
                    self._drop(claim)
                    released.extend(claim.holds())
            adopted = []
            for container_id, container in running.items():
                if any(_same_container(c.container_id, container_id) for c in self._claims):
                    continue
                if self._released.get(container_id[:12], -1) > listed_at:
                    continue  # released since the listing was taken
                claim = self._claim_from_labels(container_id, container.get("Labels"))
                if claim is None:
                    continue
                if any(c.kernel_id == claim.kernel_id and not c.container_id for c in self._claims):
                    continue  # the launch in flight made it; its confirm follows
                self._generation += 1
                claim.mark = self._generation
                self._claims.append(claim)
                adopted.extend(claim.holds())
            return SyncReport(tuple(released), tuple(adopted))

    # -- who holds which -----------------------------------------------------------------------

    def holds(self) -> list[GpuHold]:
        with self._lock:
            self._expire()
            return [h for c in self._all_claims() for h in c.holds()]

    def holders(self) -> list[dict[str, Any]]:
        """One row per GPU, for `labnotebook gpus` (--json) and the hub's pages. Rows name
        members and kernels; the caller decides who may see container ids."""
        by_device: dict[str, list[GpuHold]] = {g.device_id: [] for g in self.gpus}
        for hold in self.holds():
            by_device.setdefault(hold.device_id, []).append(hold)
        return [
            {
                "index": gpu.index,
                "label": gpu.label,
                "device_id": gpu.device_id,
                "uuid": gpu.uuid,
                "model": gpu.model,
                "memory": gpu.memory,
                "mig": gpu.mig,
                "holders": [
                    {
                        "username": h.username,
                        "uid": h.uid,
                        "kernel_id": h.kernel_id,
                        "kernel_name": h.kernel_name,
                        "container_id": h.container_id,
                        "since": h.since,
                        "shared": h.shared,
                        "state": h.state,
                        **self._activity_of(h.container_id),
                    }
                    for h in sorted(by_device[gpu.device_id], key=lambda h: h.since)
                ],
            }
            for gpu in self.gpus
        ]

    def _activity_of(self, container_id: str) -> dict[str, Any]:
        """{"activity": "idle" | "busy" | "", "idle_since": epoch seconds or None}."""
        activity, idle_since = self.activity(container_id) if container_id else ("", None)
        return {"activity": activity, "idle_since": idle_since}

    # -- inside the lock -----------------------------------------------------------------------

    def _all_claims(self) -> list[_Claim]:
        return [*self._claims, *self._restarting.values()]

    def _in_flight(self, kernel_id: str) -> _Claim | None:
        return next(
            (c for c in self._claims if c.kernel_id == kernel_id and not c.container_id), None
        )

    def _drop(self, claim: _Claim) -> None:
        self._claims.remove(claim)
        if claim.container_id:
            self._generation += 1
            self._released[claim.container_id[:12]] = self._generation
            while len(self._released) > _MAX_RELEASED:
                del self._released[next(iter(self._released))]

    def _expire(self) -> None:
        now = self._clock()
        for kernel_id, claim in list(self._restarting.items()):
            if claim.restart_until is not None and claim.restart_until <= now:
                del self._restarting[kernel_id]

    def _load(self) -> dict[str, int]:
        load = dict.fromkeys(self._by_id, 0)
        for claim in self._all_claims():
            for device in claim.devices:
                if device in load:
                    load[device] += 1
        return load

    def _restart_claim(self, uid: int, kernel_id: str, want: int) -> _Claim | None:
        """The kernel's own devices back, when its member restarts it within the hold asking
        for as many. (Its cap was checked when it first got them.) A hold is only ever its
        owner's: a kernel id comes from the member's request, so another member could name it.
        """
        claim = self._restarting.get(kernel_id)
        if claim is None or claim.uid != uid:
            return None
        if len(claim.devices) != want:
            return None  # it asks for a different number now: a new assignment, see below
        del self._restarting[kernel_id]
        claim.restart_until = None
        claim.shared = any(self._load().get(d, 0) for d in claim.devices)
        return claim

    def _new_claim(
        self, uid: int, username: str, kernel_id: str, kernel_name: str, count: int, want: int
    ) -> _Claim:
        # The kernel's own restart hold, if it asks for a different number now, is given up
        # for this assignment, and kept if the assignment is refused.
        previous = self._restarting.get(kernel_id)
        if previous is not None and previous.uid == uid:
            del self._restarting[kernel_id]
        else:
            previous = None
        try:
            return self._pick(uid, username, kernel_id, kernel_name, count, want)
        except KernelLaunchError:
            if previous is not None:
                self._restarting[kernel_id] = previous
            raise

    def _pick(
        self, uid: int, username: str, kernel_id: str, kernel_name: str, count: int, want: int
    ) -> _Claim:
        self._check_cap(uid, count, want)
        load = self._load()
        free = [g.device_id for g in self.gpus if load[g.device_id] == 0]
        if len(free) >= want:
            devices, shared = tuple(free[:want]), False
        elif self.sharing:
            order = sorted(self.gpus, key=lambda g: load[g.device_id])  # stable: lowest index
            devices, shared = tuple(g.device_id for g in order[:want]), True
        else:
            raise GpuUnavailable(self._busy_message(uid, want, len(free)))
        return _Claim(
            uid=uid,
            username=_clean(username) or f"uid{uid}",
            kernel_id=kernel_id,
            kernel_name=_clean(kernel_name),
            devices=devices,
            since=self._wall(),
            shared=shared,
        )

    def _check_cap(self, uid: int, count: int, want: int) -> None:
        mine = [c for c in self._all_claims() if c.uid == uid]
        held = sum(len(c.devices) for c in mine)
        cap = self.member_cap
        if held + want <= cap:
            return
        setting = f"MEMBER_GPUS={cap}"
        asked = f"all {len(self.gpus)} of the lab's GPUs" if count == ALL else _plural(want, "GPU")
        if cap == 0:
            raise PermissionRefused(
                f"This lab lets no member hold GPUs ({setting}); ask the lab's admin."
            )
        if held == 0:
            raise PermissionRefused(
                f"This kernel asks for {asked}, more than the {cap} one member may hold at once "
                f"in this lab ({setting}). Ask for {cap} or fewer."
            )
        kernels = "; ".join(self._describe_own(c) for c in mine)
        shut = "Shut it down" if len(mine) == 1 else "Shut one down"
        if held >= cap:
            raise PermissionRefused(
                f"You hold {_plural(held, 'GPU')} already, the most one member may hold at once "
                f"in this lab ({setting}): {kernels}. {shut} (Kernel > Shut Down Kernel) to "
                "use this one."
            )
        raise PermissionRefused(
            f"This kernel asks for {asked}, but you hold {held} already and one member may "
            f"hold at most {cap} at once in this lab ({setting}): {kernels}. {shut} (Kernel > "
            "Shut Down Kernel) or ask for fewer GPUs."
        )

    def _labels_of(self, devices: Iterable[str]) -> str:
        return ", ".join(self._by_id[d].label if d in self._by_id else d for d in devices)

    def _describe_own(self, claim: _Claim) -> str:
        text = f"{self._labels_of(claim.devices)} by your kernel '{claim.kernel_name or '?'}'"
        if claim.restart_until is not None:
            return text + " (restarting)"
        return text if claim.container_id else text + " (starting)"

    def _describe_holder(self, claim: _Claim, uid: int, now: float) -> str:
        who = "you" if claim.uid == uid else claim.username if claim.uid >= 0 else "a kernel"
        if claim.restart_until is not None:
            how = "restarting"
        elif not claim.container_id:
            how = "starting"
        else:
            activity, idle_since = self.activity(claim.container_id)
            if activity == "idle" and idle_since is not None:
                how = f"idle {human_duration(now - idle_since)}"
            else:
                how = f"{activity or 'held'} {human_duration(now - claim.since)}"
        return f"by {who} (kernel '{claim.kernel_name or '?'}', {how})"

    def _busy_message(self, uid: int, want: int, free: int) -> str:
        now = self._wall()
        claims = self._all_claims()
        parts = []
        everyone_is_me = True
        for gpu in self.gpus:
            holders = [c for c in claims if gpu.device_id in c.devices]
            if not holders:
                continue
            everyone_is_me &= all(c.uid == uid for c in holders)
            who = " and ".join(self._describe_holder(c, uid, now) for c in holders)
            parts.append(f"{gpu.label} {who}")
        held = ", ".join(parts)
        if free == 0:
            head = f"All {_plural(len(self.gpus), 'GPU')} are in use: {held}."
            if len(self.gpus) == 1:
                head = f"The lab's only GPU is in use: {held}."
        else:
            head = (
                f"This kernel asks for {_plural(want, 'GPU')}, but only {free} of the lab's "
                f"{len(self.gpus)} {'is' if free == 1 else 'are'} free: {held}."
            )
        if everyone_is_me:
            return f"{head} Shut down one of your GPU kernels (Kernel > Shut Down Kernel)."
        tail = " Try again later or ask them."
        return head + (tail if free == 0 else " Try again later, ask them, or ask for fewer.")

    def _claim_from_labels(self, container_id: str, raw: Any) -> _Claim | None:
        """A running container's claim, from its labels; None if it has no usable GPU labels.
        The labels are root's, but a container may outlive a version of this code, or an
        admin may have made one by hand: anything malformed is skipped, never trusted."""
        if not isinstance(raw, Mapping):
            return None
        text = raw.get(GPUS)
        if not isinstance(text, str) or not text.strip() or len(text) > 8192:
            return None
        devices: list[str] = []
        for part in text.split(","):
            device = self._alias.get(part.strip()) or self._alias.get(part.strip().lower())
            if device and device not in devices:
                devices.append(device)
        if not devices:
            return None  # devices this lab does not hand out: not the book's to count
        uid = -1
        owner_uid = raw.get(L.OWNER_UID)
        if isinstance(owner_uid, str) and owner_uid.isdigit() and len(owner_uid) < 11:
            uid = int(owner_uid)
        now = self._wall()
        since = now
        try:
            value = float(raw.get(GPUS_SINCE, ""))
            if math.isfinite(value) and value > 0:
                since = min(value, now)
        except (TypeError, ValueError):
            pass
        shared = _clean(raw.get(GPUS_SHARED)).lower() in ("1", "true", "yes")
        return _Claim(
            uid=uid,
            username=_clean(raw.get(L.OWNER)) or (f"uid{uid}" if uid >= 0 else "unknown"),
            kernel_id=_clean(raw.get(L.KERNEL_ID), 128),
            kernel_name=_clean(raw.get(L.KERNEL_NAME)),
            devices=tuple(devices),
            since=since,
            shared=shared,
            container_id=container_id,
        )
