"""The kernel broker: kernels through a broker, never the Docker socket.

In the lab hub, users' Jupyter servers run as ordinary Unix users and must never reach the
Docker socket: whoever can talk to it is root on the host. This root-owned daemon is the only
thing in the hub that does. It listens on a world-connectable Unix socket and launches,
signals, inspects and removes kernel containers on the callers' behalf, deciding *as whom*
from the caller's credentials as the operating system reports them (SO_PEERCRED), never
from anything in the request, and deciding *what* from the admin's `LaunchPolicy`.

Run it as root inside the hub container::

    python3 -m labnotebook.hub.broker --socket /run/labnotebook/broker.sock \\
        --config /etc/labnotebook/broker_config.py

and point users' servers at it with ``c.DockerKernelProvisioner.broker_socket``. The wire
protocol is in `labnotebook.provisioner.broker_protocol`; the client is
`labnotebook.provisioner.broker_client.BrokerEngine`.

This module is the broker's transport: the socket, the callers' credentials, per-user limits
on connections and requests, one audit line per request, and draining at stop. What each
request does is `broker_operations.BrokerOperations`'s; what a launch may become is
`broker_policy.LaunchPolicy`'s. The Docker SDK blocks, so every engine call runs in a thread
pool while the asyncio loop keeps serving: one slow launch (a cold image, a busy engine) does
not hold up anybody else's.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import logging
import os
import pwd
import signal
import socket
import stat
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import docker.errors
from labnotebook.provisioner import __version__
from labnotebook.provisioner.broker_protocol import (
    DEFAULT_SOCKET,
    JOB_RUNNER_OPS,
    MAX_LINE,
    OPS,
    UNSEEN_PEER_OPS,
    encode,
    error_response,
    peer_credentials,
)
from labnotebook.provisioner.engine import DockerEngine
from labnotebook.provisioner.errors import (
    KernelConfigError,
    KernelLaunchError,
    PermissionRefused,
)
from traitlets import Any as AnyTrait
from traitlets import Float, Int, Unicode, default
from traitlets.config import Application, catch_config_error

from .broker_gpus import GpuPolicy
from .broker_operations import BrokerOperations
from .broker_policy import LaunchPolicy, Peer, username
from .notebook_jobs import JobPolicy

# Requests made every few seconds per kernel or build (polls, data chunks): logged at DEBUG.
QUIET_OPS = frozenset(
    {"state", "logs", "build_status", "build_data", "export_status", "export_data", "export_save"}
)


def _printable(text: str, limit: int) -> str:
    """For the log: what a request says, cut short, with no way to forge log lines."""
    return "".join(c if c.isprintable() else "?" for c in text[:limit])


class KernelBroker(Application):
    """The root daemon that carries out kernel container requests for the hub's users."""

    name = "labnotebook-broker"
    description = "Launch, signal, inspect and remove users' kernel containers for them."
    version = __version__
    classes: ClassVar[list[type]] = [LaunchPolicy, GpuPolicy, JobPolicy]
    aliases: ClassVar[dict[str, str]] = {
        "socket": "KernelBroker.socket_path",
        "config": "KernelBroker.config_file",
        "f": "KernelBroker.config_file",
        "config-dir": "KernelBroker.config_dir",
        "docker-host": "KernelBroker.docker_host",
        "network": "LaunchPolicy.network",
        "log-level": "Application.log_level",
    }

    socket_path = Unicode(
        DEFAULT_SOCKET,
        config=True,
        help="""Path of the Unix socket users' servers connect to. Its folder must belong to
        root and be writable by nobody else, so the socket cannot be swapped for a fake.""",
    )
    socket_mode = Int(
        0o666,
        config=True,
        help="""Permissions of the socket. World-connectable by default: authorisation is by
        the caller's UID, as the operating system reports it.""",
    )
    config_file = Unicode("", config=True, help="The broker's config file (.json or .py).")
    config_dir = Unicode(
        "",
        config=True,
        help="""A drop-in folder of further config files (*.json, *.py), loaded after
        config_file in name order, each adding to what came before: the lab hub's admins put
        their policy (images, data mounts, limits) in /srv/state/broker.d.""",
    )
    docker_host = Unicode(
        None,
        allow_none=True,
        config=True,
        help="The Docker engine's address; default: DOCKER_HOST, else the local socket.",
    )
    workers = Int(32, config=True, help="Threads for Docker calls (launches run concurrently).")
    max_requests_per_user = Int(
        16,
        config=True,
        help="""Requests one UID may have in progress at once; more wait their turn, so one
        user cannot take every worker.""",
    )
    max_waits_per_user = Int(
        2,
        config=True,
        help="""'wait' requests (which block until a kernel ends, up to `max_wait`) one UID
        may have in progress at once; more wait their turn behind that user's own. The
        waits share a pool of threads: without this, one member waiting on many kernels
        could hold all of them and stall everyone's kernel shutdowns.""",
    )
    max_connections_per_user = Int(
        64, config=True, help="Connections one UID may hold open; more are closed at once."
    )
    shutdown_grace = Float(
        30.0, config=True, help="Seconds a stopping broker waits for requests in progress."
    )
    max_kernels_per_user = Int(
        20,
        allow_none=True,
        config=True,
        help="""Kernel containers (running or not) one user may have at once; a launch beyond
        it is refused with a message. None: no limit.""",
    )
    max_wait = Float(600.0, config=True, help="Longest a 'wait' request may block, in seconds.")
    address_hold = Float(
        300.0,
        config=True,
        help="""Seconds a removed kernel's address stays reserved for its owner and kernel
        id, so a restart (remove, then launch the same kernel again) gets it back and no
        other member's kernel can take it in between.""",
    )
    reap_interval = Float(
        60.0,
        config=True,
        help="""Seconds between sweeps that remove kernel containers whose launching server
        process is gone (so a stopped user server leaves no kernels). 0: never.""",
    )
    engine = AnyTrait(None, help="The DockerEngine (tests may inject another).")

    @default("log_level")
    def _log_level_default(self) -> int:
        return logging.INFO  # one line per request is the broker's audit trail

    @default("log_format")
    def _log_format_default(self) -> str:
        return "%(asctime)s %(levelname)s [%(name)s] %(message)s"

    @catch_config_error
    def initialize(self, argv: list[str] | None = None) -> None:
        super().initialize(argv)
        if self.config_file:
            if not os.path.isfile(self.config_file):
                self.log.critical("The broker's config file %s does not exist.", self.config_file)
                self.exit(2)
            self.load_config_file(
                os.path.basename(self.config_file), path=os.path.dirname(self.config_file)
            )
        if self.config_dir and os.path.isdir(self.config_dir):
            for name in sorted(os.listdir(self.config_dir)):
                if name.endswith((".json", ".py")) and not name.startswith("."):
                    self.log.info("Loading %s", os.path.join(self.config_dir, name))
                    self.load_config_file(name, path=self.config_dir)
        self.policy = LaunchPolicy(parent=self, log=self.log)
        if self.engine is None:
            self.engine = DockerEngine(self.docker_host)
        self.operations = BrokerOperations(
            engine=self.engine,
            policy=self.policy,
            log=self.log,
            workers=self.workers,
            max_kernels_per_user=self.max_kernels_per_user,
            max_wait=self.max_wait,
            address_hold=self.address_hold,
        )
        self._slots: dict[int, asyncio.Semaphore] = {}
        self._wait_slots: dict[int, asyncio.Semaphore] = {}
        self._connections: dict[int, int] = defaultdict(int)
        # Open connections -> whether a request on it is being carried out right now.
        self._busy: dict[asyncio.StreamWriter, bool] = {}
        self._handlers: set[asyncio.Task[Any]] = set()
        self._stopping = False

    def start(self) -> None:
        asyncio.run(self.serve())

    # -- serving -----------------------------------------------------------------------------

    async def serve(self, stop: asyncio.Event | None = None) -> None:
        """Listen until SIGTERM/SIGINT (or `stop` is set), then remove the socket."""
        path = os.path.abspath(self.socket_path)
        self._prepare_socket_folder(path)
        server = await asyncio.start_unix_server(self._serve_connection, path=path, limit=MAX_LINE)
        os.chmod(path, self.socket_mode)
        if stop is None:
            stop = asyncio.Event()
            for signum in (signal.SIGINT, signal.SIGTERM):
                asyncio.get_running_loop().add_signal_handler(signum, stop.set)
        self.log.info(
            "Kernel broker %s listening on %s (network %s, images %s, lab mounts %s)",
            __version__,
            path,
            self.policy.network,
            ", ".join(self.policy.allowed_images),
            ", ".join(self.policy.lab_mounts) or "none",
        )
        await self.operations.run(self._check_engine)
        reaper = asyncio.create_task(self._reap_forever()) if self.reap_interval > 0 else None
        jobs = asyncio.create_task(self._tend_jobs_forever())
        gpu_watch = asyncio.create_task(self._watch_gpus_forever())
        try:
            await stop.wait()
        finally:
            server.close()  # no new connections; then finish what is in progress
            jobs.cancel()
            await self._drain()
            gpu_watch.cancel()
            if reaper:
                reaper.cancel()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            self.operations.shutdown()
            self.log.info("Kernel broker stopped.")

    async def _drain(self) -> None:
        """Stop: finish the requests in progress (a launch half-answered would leave an
        orphan kernel), close every connection, and give up on stragglers after a while."""
        self._stopping = True
        for writer, busy in list(self._busy.items()):
            if not busy:
                writer.close()
        handlers = [t for t in self._handlers if t is not asyncio.current_task()]
        if handlers:
            _, pending = await asyncio.wait(handlers, timeout=self.shutdown_grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def _prepare_socket_folder(self, path: str) -> None:
        folder = os.path.dirname(path)
        os.makedirs(folder, mode=0o755, exist_ok=True)
        info = os.lstat(folder)
        if (
            not stat.S_ISDIR(info.st_mode)
            or info.st_uid != os.geteuid()
            or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        ):
            self.log.critical(
                "Refusing to serve in %s: it must be a folder owned by UID %d that no one "
                "else can write to, or another user could replace the broker's socket.",
                folder,
                os.geteuid(),
            )
            self.exit(1)
        if os.path.lexists(path):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)  # left over from a broker that is gone
            else:
                self.log.critical("Another kernel broker is already serving %s.", path)
                self.exit(1)
            finally:
                probe.close()

    def _check_engine(self) -> None:
        """Warn early about an unreachable engine, or a Docker socket users could open."""
        try:
            self.engine.info()
        except Exception as e:
            self.log.warning("The Docker engine is not reachable yet: %s", e)
        where = self.engine.where() if hasattr(self.engine, "where") else ""
        if not where.startswith(("unix://", "http+unix://")):
            return
        try:
            info = os.stat(where.split("://", 1)[1])
        except OSError:
            return
        group_users: list[str] = []
        if info.st_mode & stat.S_IRWXG and info.st_gid != 0:
            with contextlib.suppress(KeyError):
                group_users = list(grp.getgrgid(info.st_gid).gr_mem)
            group_users += [p.pw_name for p in pwd.getpwall() if p.pw_gid == info.st_gid]
        if info.st_mode & stat.S_IRWXO or group_users:
            self.log.warning(
                "The Docker socket %s can be used without the broker (mode %o, group %s: %s). "
                "Users could start any container; make it root-only.",
                where,
                stat.S_IMODE(info.st_mode),
                info.st_gid,
                ", ".join(group_users) or "everyone",
            )

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            peer = Peer(*peer_credentials(writer.get_extra_info("socket")))
        except OSError:
            writer.close()
            return
        self._connections[peer.uid] += 1
        self._busy[writer] = False
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            if self._connections[peer.uid] > self.max_connections_per_user:
                self.log.warning("%s has too many connections open", username(peer.uid))
                refusal = PermissionRefused(
                    "Too many connections to the kernel broker from this user."
                )
                writer.write(encode(error_response(refusal)))
                await writer.drain()
                return
            while not self._stopping:
                try:
                    line = await reader.readline()
                except ValueError:  # longer than MAX_LINE: we cannot find the next request
                    refusal = KernelConfigError(
                        f"A request to the kernel broker must be one line under {MAX_LINE} bytes."
                    )
                    writer.write(encode(error_response(refusal)))
                    await writer.drain()
                    return
                if not line:
                    return
                if not line.strip():
                    continue
                self._busy[writer] = True
                writer.write(encode(await self.respond(peer, line)))
                await writer.drain()
                self._busy[writer] = False
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._connections[peer.uid] -= 1
            self._busy.pop(writer, None)
            self._handlers.discard(task)  # type: ignore[arg-type]
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    @contextlib.asynccontextmanager
    async def _user_slot(self, uid: int, op: str) -> AsyncIterator[None]:
        """Fairness: each user's requests queue behind their own, never behind others'."""
        slot = self._slots.setdefault(uid, asyncio.Semaphore(self.max_requests_per_user))
        if op != "wait":
            async with slot:
                yield
            return
        waits = self._wait_slots.setdefault(uid, asyncio.Semaphore(self.max_waits_per_user))
        async with waits, slot:
            yield

    async def respond(self, peer: Peer, line: bytes) -> dict[str, Any]:
        """One response for one request line, and one log line saying who did what."""
        started = time.perf_counter()
        op, target, outcome = "?", "-", "ok"
        try:
            try:
                request = json.loads(line)
            except (ValueError, RecursionError) as e:
                raise KernelConfigError(f"A broker request must be one JSON object: {e}") from None
            if not isinstance(request, dict):
                raise KernelConfigError("A broker request must be a JSON object.")
            op = _printable(str(request.get("op")), 32)
            if op not in OPS:
                raise KernelConfigError(
                    f"The kernel broker has no operation {op!r} (it knows {', '.join(OPS)})."
                )
            runner = False
            if op in JOB_RUNNER_OPS and "job" in request:
                # A notebook job's runner (hub/notebook_jobs.py): its secret says which job.
                runner = bool(await self.operations.run(
                    self.operations.jobs.runner_job, peer, request["job"]
                ))  # fmt: skip
                if op != "launch":  # the launch itself labels the kernel as the job's
                    del request["job"]
            if peer.pid <= 0 and op not in UNSEEN_PEER_OPS and not runner:
                raise PermissionRefused(
                    f"The kernel broker cannot see the process asking (it runs outside the "
                    f"hub, e.g. in a kernel's container), so it does not {op!r} for it: a "
                    "kernel is removed when the server that launched it is gone, which the "
                    "broker cannot tell for such a process. From there only the image "
                    "commands work (labnotebook kernel build, ls, rm, logs, publish); start "
                    "kernels from JupyterLab."
                )
            target = _printable(str(request.get("container") or "-"), 12)
            if op == "launch" and isinstance(request.get("spec"), dict):
                target = "kernel " + _printable(str(request["spec"].get("kernel_id")), 40)
            async with self._user_slot(peer.uid, op):
                response = await self.operations.handler(op)(peer, request)
            if op == "launch":
                target = response["result"]["name"]
            return response
        except Exception as e:
            if not isinstance(e, KernelLaunchError):
                if isinstance(e, docker.errors.APIError):
                    e = KernelLaunchError(f"The Docker engine refused: {e.explanation or e}")
                else:
                    self.log.exception("Broker failure on %s for UID %d", op, peer.uid)
                    e = KernelLaunchError(
                        f"The kernel broker failed ({type(e).__name__}: {e}); the lab's admin "
                        "will find details in the broker's log."
                    )
            outcome = type(e).__name__
            return error_response(e)
        finally:
            # Routine polls (state, every few seconds per kernel) would drown the log.
            level = logging.DEBUG if op in QUIET_OPS and outcome == "ok" else logging.INFO
            self.log.log(
                level,
                "%s(%d) pid %d %s %s: %s in %.1f ms",
                username(peer.uid),
                peer.uid,
                peer.pid,
                op,
                target,
                outcome,
                (time.perf_counter() - started) * 1000,
            )

    async def _tend_jobs_forever(self) -> None:
        """Notebook jobs: start queued ones, harvest ended ones, run due schedules."""
        jobs, last_failure = self.operations.jobs, ""
        try:
            await self.operations.run(jobs.warm_up)
        except ImportError as e:  # submits with parameters will say so themselves
            self.log.warning("Notebook jobs: papermill cannot be imported (%s)", e)
        while True:
            try:
                await self.operations.run(jobs.tend)
                last_failure = ""
            except Exception as e:
                if str(e) != last_failure:  # once per distinct failure, not every second
                    self.log.exception("Tending notebook jobs failed")
                last_failure = str(e)
            await asyncio.sleep(jobs.settings.tend_interval)

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self.reap_interval)
            try:
                await self.operations.run(self.operations.reap)
            except Exception:
                self.log.exception("Reaping kernel containers failed")

    async def _watch_gpus_forever(self) -> None:
        """Tell busy GPU kernels from idle ones (hub/gpu_activity.py), every
        GpuPolicy.activity_interval seconds."""
        gpus = self.operations.gpus
        interval = gpus.policy.activity_interval
        while interval > 0:
            await asyncio.sleep(interval)
            try:
                await self.operations.run(gpus.sample_activity)
            except Exception:
                self.log.exception("Looking at the GPU kernels' activity failed")


def main(argv: list[str] | None = None) -> None:
    """`python3 -m labnotebook.hub.broker --socket PATH --config FILE`."""
    KernelBroker.launch_instance(argv)


if __name__ == "__main__":
    main()
