"""The kernel broker's operations: what each request does, for whom.

Each `op_NAME(peer, request)` checks its arguments, decides with the `LaunchPolicy` and the
caller's kernel-verified identity, and answers a response object. The operations talk to the
engine only through its interface (`DockerEngine`'s public methods: launch_container,
container, free_address, state, signal, remove, logs, wait, kernel_containers), so a test
engine needs nothing else. The transport - socket, peer credentials, per-user limits,
draining - is `broker.KernelBroker`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

from labnotebook.provisioner import __version__
from labnotebook.provisioner import labels as L
from labnotebook.provisioner.broker_protocol import ALLOWED_SIGNALS, MAX_LINE, OPS
from labnotebook.provisioner.errors import KernelConfigError, KernelLaunchError, PermissionRefused
from labnotebook.provisioner.sizes import human_bytes, size_in_bytes

from .addresses import AddressBook
from .broker_arguments import arguments
from .broker_builds import ImageService
from .broker_exports import ExportOperations, ExportPolicy, ExportService
from .broker_gpus import GpuPolicy, GpuService
from .broker_policy import _TOKEN, LaunchPolicy, Peer, username
from .build_policy import BuildPolicy
from .notebook_jobs import JobPolicy, NotebookJobs

T = TypeVar("T")


def _container_ref(value: str) -> str:
    if not _TOKEN.match(value):
        raise KernelConfigError(f"{value!r} is not a container ID or name.")
    return value


def _memory_of(container: dict[str, Any]) -> int:
    """A kernel's memory limit, from the label the launch put on it."""
    try:
        return int((container.get("Labels") or {}).get(L.MEMORY, 0))
    except ValueError:
        return 0


def _describe(container: dict[str, Any]) -> str:
    labels = container.get("Labels") or {}
    name = labels.get(L.KERNEL_NAME, "kernel")
    memory = _memory_of(container)
    return f"{name} {labels.get(L.KERNEL_ID, '')[:8]} ({human_bytes(memory)})"


class BrokerOperations(ExportOperations):
    """The operations of `broker_protocol.OPS`, carried out on `engine` under `policy`."""

    def __init__(
        self,
        *,
        engine: Any,
        policy: LaunchPolicy,
        log: logging.Logger | Any,
        workers: int = 32,
        max_kernels_per_user: int | None = 20,
        max_wait: float = 600.0,
        address_hold: float = 300.0,
        build_policy: BuildPolicy | None = None,
        gpu_policy: GpuPolicy | None = None,
        job_policy: JobPolicy | None = None,
    ) -> None:
        self.engine = engine
        self.policy = policy
        self.log = log
        self.max_kernels_per_user = max_kernels_per_user
        self.max_wait = max_wait
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="broker-docker")
        # Waits block for long; they get their own threads so they never delay launches.
        # The broker lets each member hold only a few (max_waits_per_user), so these
        # threads go round: a few dozen members can wait at once.
        self._wait_pool = ThreadPoolExecutor(64, thread_name_prefix="broker-wait")
        # Launches in progress, per member: (kernel ID, memory). Guarded by _kernel_locks[uid].
        self._launching: dict[int, list[tuple[str, int]]] = defaultdict(list)
        self._kernel_locks: dict[int, threading.Lock] = {}
        self.addresses = AddressBook(policy.network, address_hold, log)
        self.build_policy = build_policy or BuildPolicy(config=policy.config, log=log)
        self.images = ImageService(engine, policy, self.build_policy, log)
        self.gpus = GpuService(engine, gpu_policy or GpuPolicy(config=policy.config, log=log), log)
        self.exports = ExportService(self.images, ExportPolicy(config=policy.config, log=log), log)
        self.jobs = NotebookJobs(
            engine,
            policy,
            job_policy or JobPolicy(config=policy.config, log=log),
            log,
            is_admin=self.images.is_admin,
            may_run_image=self._may_run_image,
            remove_kernel=self._remove_kernel,
        )

    def handler(self, op: str) -> Callable[[Peer, dict[str, Any]], Any]:
        assert op in OPS
        return getattr(self, f"op_{op}")

    async def run(self, fn: Callable[..., T], *args: Any, pool: Any = None) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(pool or self._pool, partial(fn, *args))

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._wait_pool.shutdown(wait=False, cancel_futures=True)

    async def op_hello(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        arguments(request, "hello")
        return {
            "ok": True,
            "result": {
                "broker": __version__,
                "peer": {**peer._asdict(), "username": username(peer.uid)},
                "network": self.policy.network,
                "folders": self._kernel_folders(peer),
            },
        }

    def _kernel_folders(self, peer: Peer) -> list[str]:
        """Where the peer's kernels see the lab's volumes. The hub mounts them at the same
        paths, so a client in the hub (nbconvert, papermill, `jupyter console`) whose folder
        lies inside one starts its kernel there (provisioner.py `pre_launch`); the kernel
        enters it as the member (launch.entry)."""
        try:
            identity = self.policy.identity_of(peer)
        except KernelLaunchError:
            return []  # root, a system account: no kernels, so no folders
        return sorted({m.target for m in self.policy.rules_for(identity).lab_mounts})

    async def op_launch(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        args = arguments(request, "launch", spec=dict, job=(str, None))
        if not isinstance(args["spec"], dict):
            raise KernelConfigError("A launch request needs a 'spec' object.")

        def launch() -> tuple[dict[str, Any], float]:
            # A notebook job's runner launching its kernel: the kernel is the job's (never
            # reaped for want of a server process; removed when the job ends).
            job = self.jobs.runner_job(peer, args["job"]) if args["job"] is not None else None
            server = f"job/{job}" if job else None
            job_labels = {L.JOB_ID: job} if job else {}
            member_image = self.images.launchable(peer, args["spec"].get("image"))
            admitted = self.policy.admit(peer, args["spec"], member_image=member_image)
            with (
                self._reserve_kernel(peer.uid, admitted.memory or 0, admitted.kernel_id),
                self.gpus.assigned(peer, admitted) as (request, gpus),
            ):
                # Launched for the peer process itself: when it is gone, the reaper removes
                # it. Its GPUs (if any) are exactly the ones the book gave it.
                spec = self.policy.container_for(
                    peer, request, server=server, launcher_labels=gpus | job_labels
                )
                started = time.perf_counter()
                launched = self.addresses.launch(spec, peer.uid, self.engine)
                engine_ms = (time.perf_counter() - started) * 1000
                self.gpus.confirm(spec, launched.container_id)
                if gpus:
                    launched = dataclasses.replace(
                        launched, idle_timeout=self.gpus.policy.idle_timeout
                    )
                return dataclasses.asdict(launched), engine_ms

        result, engine_ms = await self.run(launch)
        return {"ok": True, "result": result, "engine_ms": round(engine_ms, 3)}

    @contextlib.contextmanager
    def _reserve_kernel(self, uid: int, memory: int, kernel_id: str) -> Iterator[None]:
        """Admission control: hold one of the member's places - max_kernels_per_user
        kernels, and max_memory_per_user bytes of kernel memory limits - while the launch runs.

        Counting and reserving happen under the member's lock, so concurrent launches cannot
        all see room for one more. A launch in progress counts once: by its reservation, not
        also by the container it may have created already (its kernel ID; the engine refuses
        a second container of the same kernel, whose name holds the ID).
        """
        cap, memory_cap = self.max_kernels_per_user, self.policy.max_memory_per_user
        entry = (kernel_id, memory)
        with self._kernel_locks.setdefault(uid, threading.Lock()):
            launching = self._launching[uid]
            starting = {kernel for kernel, _ in launching}
            existing = [
                c
                for c in self.engine.kernel_containers(uid)
                if (c.get("Labels") or {}).get(L.KERNEL_ID) not in starting
            ]
            count = len(existing) + len(launching)
            if cap is not None and count >= cap:
                raise PermissionRefused(
                    f"You already have {count} kernel containers; the most this lab allows "
                    f"per member is {cap}. Shut down kernels you no longer use."
                )
            if memory_cap is not None and memory:
                limit = size_in_bytes(memory_cap) or 0
                held = sum(m for _, m in launching) + sum(_memory_of(c) for c in existing)
                if held + memory > limit:
                    names = ", ".join(_describe(c) for c in existing) or "kernels starting now"
                    if existing and launching:
                        names += f", and {len(launching)} starting now"
                    raise PermissionRefused(
                        f"This kernel's {human_bytes(memory)} of memory would bring your "
                        f"kernels to {human_bytes(held + memory)}, over the "
                        f"{human_bytes(limit)} this lab allows per member. Your kernels: "
                        f"{names}. Shut one down (Kernel > Shut Down Kernel) and try again."
                    )
            launching.append(entry)
        try:
            yield
        finally:
            with self._kernel_locks[uid]:
                self._launching[uid].remove(entry)

    def _owned(self, peer: Peer, container: str) -> dict[str, Any] | None:
        """The container if it is one of the peer's kernels (see DockerEngine.container);
        None if it is gone."""
        details = self.engine.container(container)
        if details is None:
            return None
        labels = details["labels"]
        if labels.get(L.ROLE) != L.KERNEL_ROLE or (
            not peer.is_root and labels.get(L.OWNER_UID) != str(peer.uid)
        ):
            raise PermissionRefused(
                f"Container {container} is not one of your kernels; you can only act on kernel "
                "containers you started."
            )
        return details

    async def _on_owned(
        self, peer: Peer, container: str, action: Callable[[str], T], missing: T, pool: Any = None
    ) -> dict[str, Any]:
        def checked() -> T:
            details = self._owned(peer, _container_ref(container))
            return missing if details is None else action(details["id"])

        return {"ok": True, "result": await self.run(checked, pool=pool)}

    async def op_state(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        args = arguments(request, "state", container=str)

        def state(container_id: str) -> dict[str, Any] | None:
            current = self.engine.state(container_id)
            if current is None:
                return None
            answer = dataclasses.asdict(current)
            if not current.running and (reason := self.gpus.ended_reason(container_id)):
                answer["error"] = reason  # the member's server tells her next kernel
            return answer

        return await self._on_owned(peer, args["container"], state, None)

    async def op_signal(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        args = arguments(request, "signal", container=str, signal=int)
        if args["signal"] not in ALLOWED_SIGNALS:
            names = (signal.Signals(s).name if s else "0" for s in sorted(ALLOWED_SIGNALS))
            raise PermissionRefused(
                f"Signal {args['signal']} cannot be sent to kernels through the broker (allowed: "
                f"{', '.join(names)})."
            )

        def send(container_id: str) -> None:
            if args["signal"] != 0:  # 0 only asks whether the kernel is there: checked already
                self.engine.signal(container_id, args["signal"])

        return await self._on_owned(peer, args["container"], send, None)

    async def op_remove(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        args = arguments(request, "remove", container=str, restarting=(bool, False))

        def remove() -> None:
            details = self._owned(peer, _container_ref(args["container"]))
            if details is None:
                return
            if args["restarting"] and self.gpus.holds_gpus(details["labels"]):
                # Before the removal: no sync in between may hand its GPUs to another kernel.
                self.gpus.release(details["id"], restarting=True)
            self.engine.remove(details["id"])
            # After it: nobody gets a GPU whose memory the old kernel still holds.
            self.gpus.release(details["id"])
            self.addresses.release(details["id"])

        return {"ok": True, "result": await self.run(remove)}

    async def op_logs(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        args = arguments(request, "logs", container=str, tail=(int, 20))
        tail = max(0, min(args["tail"], 2_000))
        return await self._on_owned(
            peer, args["container"], lambda cid: self.engine.logs(cid, tail)[-(MAX_LINE // 2) :], ""
        )

    async def op_wait(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        args = arguments(request, "wait", container=str, timeout=((int, float), 60.0))
        timeout = max(0.0, min(float(args["timeout"]), self.max_wait))
        return await self._on_owned(
            peer,
            args["container"],
            lambda cid: self.engine.wait(cid, timeout),
            -1,
            pool=self._wait_pool,
        )

    async def op_list(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        args = arguments(request, "list", owner_uid=(int, None))
        owner = args["owner_uid"]
        if not peer.is_root:
            if owner is not None and owner != peer.uid:
                raise PermissionRefused("You can only list your own kernels.")
            owner = peer.uid
        return {"ok": True, "result": await self.run(self.engine.kernel_containers, owner)}

    async def op_gpus(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        arguments(request, "gpus")
        admin = await self.run(self.images.is_admin, peer)
        return {"ok": True, "result": await self.run(self.gpus.view, peer, admin)}

    async def op_gpu_release(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        args = arguments(request, "gpu_release", gpu=str)
        if not self.images.is_admin(peer):
            raise PermissionRefused(
                "Only the lab's admins may free a GPU that another member's kernel holds; ask "
                "its holder (`labnotebook gpus` shows who), or an admin."
            )
        admin = username(peer.uid)
        stopped = await self.run(self.gpus.release_by_admin, args["gpu"][:128], admin)
        for holder in stopped:
            self.log.warning(
                "AUDIT %s freed %s: stopped kernel %s (%r) of %s", admin, holder["gpu"],
                holder["kernel_id"], holder["kernel_name"], holder["username"],
            )  # fmt: skip
        return {"ok": True, "result": stopped}

    async def op_reap(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        arguments(request, "reap")
        if not peer.is_root:
            raise PermissionRefused("Only root may ask the broker to reap kernels.")
        return {"ok": True, "result": await self.run(self.reap)}

    def reap(self) -> list[str]:
        """Remove kernel containers whose launching server process is known to be gone."""
        removed = []
        for container in self.engine.kernel_containers():
            labels = container.get("Labels") or {}
            server = labels.get(L.SERVER, "")
            if labels.get(L.JOB_ID) or not server or L.server_is_gone(server) is not True:
                continue
            name = ((container.get("Names") or [""])[0] or container["Id"][:12]).lstrip("/")
            self.engine.remove(container["Id"])
            self.gpus.release(container["Id"])
            self.log.info(
                "Reaped kernel container %s of %s: its server %s is gone",
                name,
                labels.get(L.OWNER, "?"),
                server,
            )
            removed.append(name)
        return removed

    # -- members' images (hub/broker_builds.py) ----------------------------------------------

    async def op_build(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        args = arguments(request, "build", name=str, base=(str, None), size=int)
        result = await self.run(self.images.begin, peer, args["name"], args["base"], args["size"])
        return {"ok": True, "result": result}

    async def op_build_data(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        args = arguments(request, "build_data", build=str, data=str, last=(bool, False))
        result = await self.run(self.images.data, peer, args["build"], args["data"], args["last"])
        return {"ok": True, "result": result}

    async def op_build_status(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        args = arguments(
            request, "build_status", build=str, since=(int, 0), wait=((int, float), 2.0)
        )
        result = await self.images.status(peer, args["build"], args["since"], float(args["wait"]))
        return {"ok": True, "result": result}

    async def op_build_cancel(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        args = arguments(request, "build_cancel", build=str)
        await self.run(self.images.cancel, peer, args["build"])
        return {"ok": True, "result": None}

    async def op_build_log(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        args = arguments(request, "build_log", name=str)
        text = await self.run(self.images.build_log, peer, args["name"])
        return {"ok": True, "result": text[-(MAX_LINE // 2) :]}

    async def op_images(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        arguments(request, "images")
        return {"ok": True, "result": await self.run(self.images.images, peer)}

    async def op_image_remove(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        args = arguments(request, "image_remove", image=str)
        return {"ok": True, "result": await self.run(self.images.remove, peer, args["image"])}

    async def op_image_publish(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        args = arguments(request, "image_publish", image=str, withdraw=(bool, False))
        result = await self.run(self.images.publish, peer, args["image"], args["withdraw"])
        return {"ok": True, "result": result}

    # -- notebook jobs (hub/notebook_jobs.py) ------------------------------------------------

    def _may_run_image(self, peer: Peer, image: str) -> bool:
        """Whether a kernel of `peer` may run `image` (what `op_launch` would let through);
        someone else's unpublished image is refused with its own message."""
        if self.images.launchable(peer, image):
            return True
        try:
            self.policy._image(image)
        except PermissionRefused:
            return False
        return True

    def _remove_kernel(self, container_id: str) -> None:
        self.engine.remove(container_id)
        self.gpus.release(container_id)
        self.addresses.release(container_id)

    async def op_job_submit(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        args = arguments(
            request, "job_submit", notebook=str, kernel=str, kernelspec=dict,
            parameters=(dict, None), every=(str, None),
        )  # fmt: skip
        result = await self.run(
            self.jobs.submit, peer, args["notebook"], args["kernel"], args["kernelspec"],
            args["parameters"], args["every"],
        )  # fmt: skip
        return {"ok": True, "result": result}

    async def op_jobs(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        args = arguments(request, "jobs", everyone=(bool, False))
        return {"ok": True, "result": await self.run(self.jobs.jobs, peer, args["everyone"])}

    async def op_job_status(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        args = arguments(request, "job_status", job=str)
        return {"ok": True, "result": await self.run(self.jobs.status, peer, args["job"])}

    async def op_job_cancel(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        args = arguments(request, "job_cancel", job=str, reason=(str, None))
        result = await self.run(self.jobs.cancel, peer, args["job"], args["reason"])
        return {"ok": True, "result": result}

    async def op_job_logs(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        args = arguments(request, "job_logs", job=str, since=(int, 0), wait=((int, float), 0))
        wait = max(0.0, min(float(args["wait"]), self.jobs.settings.max_log_wait))
        deadline = time.monotonic() + wait
        while True:
            result = await self.run(self.jobs.logs, peer, args["job"], args["since"])
            if result["lines"] or result["done"] or time.monotonic() >= deadline:
                return {"ok": True, "result": result}
            await asyncio.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
