"""`DockerKernelProvisioner`: every Jupyter kernel in its own sibling Docker container.

Selected by a kernelspec with::

    "metadata": {"kernel_provisioner": {"provisioner_name": "labnotebook-docker",
                                        "config": {"image": "ourlab/kernel:1"}}}

The kernelspec's `argv` is the command run *inside* the container; `{connection_file}` becomes
the in-container path of the connection file, which is copied into the container before it
starts (no bind mount of a server path, so Docker-out-of-Docker and remote engines work).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import dataclasses
import functools
import os
import posixpath
import random
import signal as signals
import uuid
import weakref
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

import zmq
from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning.provisioner_base import KernelProvisionerBase
from traitlets import (
    Any as AnyTrait,
)
from traitlets import (
    Bool,
    CaselessStrEnum,
    Dict,
    Float,
    Int,
    List,
    TraitError,
    Unicode,
    Union,
    validate,
)

from .defaults import KERNEL_IMAGE
from .engine import PULL_POLICIES, DockerEngine
from .errors import (
    AddressUnavailable,
    EngineUnreachable,
    KernelConfigError,
    KernelDiedDuringStart,
    KernelLaunchError,
    shown_by_jupyter_server,
)
from .gpus import parse_gpus
from .identity import KernelIdentity
from .launch import LabRules
from .local_engine import LocalEngine
from .mounts import Mount, container_path, is_mounted
from .notices import NOTICE_ENV, out_of_memory
from .reaper import prune
from .request import PORT_NAMES, LaunchRequest
from .sizes import positive_size, size_in_bytes
from .spec import (
    CONNECTION_FILE,
    ContainerState,
    KernelEngine,
    LaunchedContainer,
)

# Docker calls block; they run here so the server's event loop never waits on the engine.
# Own pool: kernels must not starve (or be starved by) the loop's default executor.
_DOCKER_CALLS = ThreadPoolExecutor(max_workers=32, thread_name_prefix="labnotebook-docker")

_reaped = False
_LAUNCHED: weakref.WeakSet[DockerKernelProvisioner] = weakref.WeakSet()
"""This process's provisioners that have launched a container (see _remove_forgotten_kernels)."""
# How often a starting kernel's container is checked for an early exit.
STATE_CHECK_INTERVAL = 0.4

# ipykernel >= 7 exits at start when JPY_PARENT_PID names a process it cannot see (our init).
_NEVER_PASSED = frozenset({"JPY_PARENT_PID", "PYTHONEXECUTABLE"})


async def in_thread(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(
        _DOCKER_CALLS, partial(fn, *args, **kwargs)
    )


T = TypeVar("T")


def _shown(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """A launch error's message reaches the member: jupyter_server answers "Unhandled
    error" for anything but its HTTPError (see errors.shown_by_jupyter_server)."""

    @functools.wraps(method)
    async def wrapper(self: Any, *args: Any, **kwargs: Any) -> T:
        try:
            return await method(self, *args, **kwargs)
        except KernelLaunchError as e:
            raise shown_by_jupyter_server(e) from e.__cause__

    return wrapper


class DockerKernelProvisioner(KernelProvisionerBase):  # type: ignore[misc]
    """Launches each kernel in its own container on a Docker engine, as the launching user."""

    # -- what runs ---------------------------------------------------------------------------

    image = Unicode(
        "",
        config=True,
        help=f"""The kernel's Docker image, e.g. "{KERNEL_IMAGE}". Required.
        The image must contain the kernelspec's argv[0] (for Python kernels: python3 with
        ipykernel). The image's own users, /etc and default environment are kept.""",
    )
    image_pull_policy = CaselessStrEnum(
        PULL_POLICIES,
        default_value="never",
        config=True,
        help="""When to pull the image from a registry: "never" (the default: a missing image
        is an error that says how to build it, never a silent multi-minute download),
        "if-not-present", or "always" (pull before every start).""",
    )
    init = Bool(
        True,
        config=True,
        help="""Run Docker's init process as PID 1 in the container. It forwards signals
        (interrupts reach the kernel) and reaps zombie processes. Leave on.""",
    )

    # -- where it runs -----------------------------------------------------------------------

    docker_host = Unicode(
        None,
        allow_none=True,
        config=True,
        help="""Address of the Docker engine, e.g. "unix:///var/run/docker.sock" or
        "tcp://host:2376". Default: DOCKER_HOST from the environment, else the local socket.
        Setting it means this engine, even where a lab broker is found.""",
    )
    broker_socket = Unicode(
        None,
        allow_none=True,
        config=True,
        help="""Path of the lab's kernel broker socket. Kernels are then launched, signalled
        and removed by the root-owned broker (which decides the user, groups and mounts
        itself) instead of by talking to the Docker engine. Default: the lab's broker when
        this machine has one (in the lab hub, for every client and kernelspec:
        `image_backends.broker_socket`), else the Docker engine (a laptop). The socket must
        be served by root, or nothing is sent to it.""",
    )
    network = Unicode(
        "labnotebook",
        config=True,
        help="""User-defined bridge network the kernel containers join; created when absent.
        A Jupyter server that itself runs in a container must be attached to it.""",
    )
    connect_via = CaselessStrEnum(
        ["container-ip", "published-ports"],
        default_value="container-ip",
        config=True,
        help="""How the server reaches the kernel's ports. "container-ip" (default): the
        container's address on `network`; nothing is published on the host. "published-ports":
        Docker publishes the ports on the host's 127.0.0.1 only, for engines whose container
        addresses the server cannot route to (Docker Desktop on macOS or Windows).""",
    )
    encrypt_traffic = CaselessStrEnum(
        ["auto", "required", "disabled"],
        default_value="auto",
        config=True,
        help="""CurveZMQ encryption of the kernel's traffic, with a fresh key pair per launch
        that only the server and the kernel know. Without it, messages are signed but not
        encrypted, so anyone on the kernel network who finds the ports could read the output
        stream. "auto" (default): on when the kernelspec declares "curve" in its
        metadata.supported_encryption (jupyter_client's convention; the kernel must support
        it, e.g. ipykernel >= 7.4) and this jupyter_client can use it. "required": refuse to
        start otherwise. "disabled": never.""",
    )
    launch_timeout = Float(
        120.0,
        config=True,
        help="""Seconds to wait for the kernel inside the container to open its ports. A
        kernel that exits earlier is reported at once, with its last log lines.""",
    )

    # -- who runs it -------------------------------------------------------------------------

    uid = Int(
        None,
        allow_none=True,
        config=True,
        help="""UID the kernel runs as. Default: the UID of the Jupyter server process, with
        its primary group, supplementary groups, name and home from the server's account
        database. Set it (with username and home if the UID has no account on the server)
        only when a privileged server launches kernels for others.""",
    )
    gid = Int(None, allow_none=True, config=True, help="Primary GID; default: the user's.")
    username = Unicode(
        None, allow_none=True, config=True, help="User name inside the kernel; default: the user's."
    )
    home = Unicode(
        None,
        allow_none=True,
        config=True,
        help="Home folder inside the kernel; default: the user's.",
    )
    extra_groups = List(
        Union([Int(), Unicode()]),
        default_value=[],
        config=True,
        help="""Additional groups (GIDs or group names known to the server) the kernel
        process belongs to, besides the user's own supplementary groups.""",
    )
    allow_root = Bool(
        False,
        config=True,
        help="""Allow kernels to run as UID 0 or GID 0. Off: a server started as root
        refuses to start Docker kernels rather than hand out root containers.""",
    )

    # -- what it sees ------------------------------------------------------------------------

    volumes = List(
        Unicode(),
        default_value=[],
        config=True,
        help="""Mounts in Docker's `-v` syntax, SOURCE:TARGET[:ro]. SOURCE is a named volume
        (which must exist: a typo must not create an empty one) or an absolute host path
        (as the *engine's host* sees it). Placeholders {username}, {uid} and {home} are
        filled in per user. Example: ["labnotebook-homedirs:/home", "/data/raw:/data:ro"].""",
    )
    path_translations = Dict(
        Unicode(),
        default_value={},
        config=True,
        help="""Server path prefix -> container path prefix, for finding the notebook's folder
        inside the kernel when the server sees a mounted folder under another path.
        Host-path volumes and volumes mounted at the same path as on the server are
        translated without this. The kernel starts in the notebook's folder when it is
        mounted, else in $HOME.""",
    )
    env_allowlist = List(
        Unicode(),
        default_value=["LANG", "LC_ALL", "LC_CTYPE", "TZ", "JPY_SESSION_NAME"],
        config=True,
        help="""Names of the server's environment variables passed to the kernel. Only these
        and the kernelspec's `env` reach the kernel, never the server's whole environment
        (it holds tokens). HOME, USER and LOGNAME are always set for the kernel user.""",
    )

    # -- limits and devices ------------------------------------------------------------------

    memory = Union(
        [Int(), Unicode()],
        default_value=None,
        allow_none=True,
        config=True,
        help="""Memory limit, in bytes or with a unit: "8g", "512m". Default: no limit.""",
    )
    cpus = Float(
        None,
        allow_none=True,
        config=True,
        help="Number of CPUs the kernel may use, e.g. 2 or 0.5. Default: no limit.",
    )
    shm_size = Union(
        [Int(), Unicode()],
        default_value="1g",
        allow_none=True,
        config=True,
        help="""Size of /dev/shm. Docker's 64 MB default breaks PyTorch data loaders and
        multiprocessing with large arrays; default "1g".""",
    )
    pids_limit = Int(
        4096,
        allow_none=True,
        config=True,
        help="""Maximum number of processes and threads in the kernel container, so a fork
        bomb in one notebook cannot take the host down. None or -1: no limit.""",
    )
    gpus = AnyTrait(
        "auto",
        config=True,
        help="""GPUs for the kernel: "none", "all", a count (2), a list of device IDs or UUIDs
        (["0", "GPU-3f2a..."]), or "auto" (default): all GPUs when the engine has the NVIDIA
        runtime or CDI devices, none otherwise, so one kernelspec works everywhere.""",
    )
    labels = Dict(
        Unicode(),
        default_value={},
        config=True,
        help="""Extra labels for the kernel containers. Labels under "org.labnotebook." are
        reserved (kernel id, owner, launching server) and cannot be overridden.""",
    )

    reap_orphans = Bool(
        True,
        config=True,
        help="""At the first kernel start, remove (in the background) kernel containers whose
        launching server on this host has exited, e.g. after a crash. With a broker, the
        broker does this instead.""",
    )

    # -- validation of settings --------------------------------------------------------------

    @validate("memory", "shm_size")
    def _positive_size(self, proposal: dict[str, Any]) -> Any:
        return positive_size(proposal["value"], proposal["trait"].name)

    @validate("cpus")
    def _valid_cpus(self, proposal: dict[str, Any]) -> Any:
        value = proposal["value"]
        if value is not None and value <= 0:
            raise TraitError(f"cpus must be a positive number such as 2 or 0.5; got {value!r}")
        return value

    @validate("pids_limit")
    def _valid_pids(self, proposal: dict[str, Any]) -> Any:
        value = proposal["value"]
        if value is not None and value != -1 and value <= 0:
            raise TraitError(f"pids_limit must be positive (or -1 for no limit); got {value!r}")
        return value

    @validate("gpus")
    def _valid_gpus(self, proposal: dict[str, Any]) -> Any:
        try:
            parse_gpus(proposal["value"])
        except KernelConfigError as e:
            raise TraitError(str(e)) from None
        return proposal["value"]

    @validate("volumes")
    def _valid_volumes(self, proposal: dict[str, Any]) -> Any:
        placeholders = {"username": "u", "uid": "0", "home": "/h"}
        for spec in proposal["value"]:
            try:
                Mount.parse(spec, placeholders)
            except KernelConfigError as e:
                raise TraitError(str(e)) from None
        return proposal["value"]

    # -- state -------------------------------------------------------------------------------

    container_id: str | None = None
    container_name: str | None = None
    _engine: KernelEngine | None = None
    _shutting_down = False
    _exit_reported = False
    _exit_watch: asyncio.Future[int | None] | None = None
    _cwd: str | None = None
    _broker_path: str | None = None
    _broker_looked_for = False
    _previous: tuple[dict[str, Any], LaunchedContainer] | None = None
    """The last launch's connection info and container: what a restart keeps."""
    _notice: str | None = None
    """Why the last kernel ended, for the next one to tell its member (notices.py)."""

    @property
    def engine(self) -> KernelEngine:
        """The engine that carries out launches: the Docker SDK, or the lab's kernel broker."""
        if self._engine is None:
            socket_path = self.broker()
            if socket_path:
                from .broker_client import BrokerEngine

                self._engine = BrokerEngine(socket_path)  # served by root, or refused
            else:
                # The volumes are the request's: on a single user's engine, no lab adds its own.
                rules = LabRules(network=self.network, allow_root=self.allow_root)
                self._engine = LocalEngine(
                    DockerEngine.shared(self.docker_host), rules, self.identity
                )
        return self._engine

    def broker(self) -> str | None:
        """The broker's socket this provisioner launches through, or None (its own engine).

        Configured, or found where the lab puts it, so that every Jupyter client in the hub
        (nbconvert, papermill, `jupyter console`, a script's KernelManager) and every
        kernelspec (members' own carry only their image) gets the lab's kernels: those
        clients never read the Jupyter server's configuration. An explicit docker_host
        names an engine of one's own instead."""
        if not self._broker_looked_for:
            if self.broker_socket or self.docker_host:
                self._broker_path = self.broker_socket or None
            else:
                from .image_backends import broker_socket

                self._broker_path = broker_socket()
            self._broker_looked_for = True
        return self._broker_path

    @property
    def has_process(self) -> bool:
        return self.container_id is not None

    # -- launching ---------------------------------------------------------------------------

    def identity(self) -> KernelIdentity:
        """The kernel's user: the server's, or an account/identity configured explicitly."""
        extra = tuple(_gid(g) for g in self.extra_groups)
        uid = os.getuid() if self.uid is None else self.uid
        if self.username is not None and self.home is not None:
            identity = KernelIdentity.build(
                username=self.username,
                uid=uid,
                gid=self.gid if self.gid is not None else os.getgid() if self.uid is None else uid,
                home=self.home,
                groups=extra,
            )
        else:
            identity = KernelIdentity.of_uid(uid, extra)
            if self.gid is not None and self.gid != identity.gid:
                identity = KernelIdentity.build(
                    username=identity.username,
                    uid=uid,
                    gid=self.gid,
                    home=identity.home,
                    groups=identity.groups,
                )
        identity.refuse_root(self.allow_root)
        return identity

    def _finalize_env(self, env: dict[str, str]) -> None:
        """jupyter_client's hook on the kernel's environment: the base class's `pre_launch`
        hands over the server's whole environment (with the kernelspec's `env` substituted
        into it), which holds the server's secrets (JUPYTERHUB_API_TOKEN, JPY_API_TOKEN, ...).
        Only the kernelspec's own variables and `env_allowlist` go on into the container."""
        super()._finalize_env(env)
        wanted = set(self.env_allowlist) | set(self.kernel_spec.env if self.kernel_spec else {})
        for key in list(env):
            if key not in wanted or key in _NEVER_PASSED:
                del env[key]

    @_shown
    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        """Build the launch request: image, command, mounts, env, limits and the connection
        file. Who the kernel runs as and the lab's part of the container are the engine's
        (`LocalEngine`, or the lab's broker), so only the request goes to `launch_kernel`."""
        kwargs = await super().pre_launch(**kwargs)  # the environment, via _finalize_env
        if not self.image:
            raise KernelConfigError(
                f"The kernelspec {self._kernel_name()!r} uses the labnotebook-docker provisioner "
                'but names no image. Add it to kernel.json: "metadata": {"kernel_provisioner": '
                '{"provisioner_name": "labnotebook-docker", "config": {"image": '
                f'"{KERNEL_IMAGE}"'
                "}}}."
            )
        km = self.parent
        identity = self.identity()
        substitutions = {
            "username": identity.username,
            "uid": str(identity.uid),
            "home": identity.home,
        }
        mounts = [Mount.parse(v, substitutions) for v in self.volumes]
        gpus = parse_gpus(self.gpus)

        connection, address, host_ports = self._connection_for_launch(km)
        extra_arguments = kwargs.pop("extra_arguments", [])
        argv = [
            a.replace("{connection_file}", CONNECTION_FILE)
            for a in self.kernel_spec.argv + extra_arguments
        ]
        argv = [a.replace("{resource_dir}", self.kernel_spec.resource_dir) for a in argv]

        self._cwd = await self._working_dir(kwargs.get("cwd"), mounts) or identity.home

        env = kwargs.pop("env")  # jupyter_client's, filtered by _finalize_env
        if self._notice:
            env[NOTICE_ENV] = self._notice
        request = LaunchRequest(
            kernel_id=self.kernel_id or str(uuid.uuid4()),
            kernel_name=self._kernel_name(),
            image=self.image,
            argv=argv,
            connection=connection,
            env=env,
            working_dir=self._cwd,
            mounts=mounts,
            publish_ports=self.connect_via == "published-ports",
            memory=size_in_bytes(self.memory),
            nano_cpus=int(self.cpus * 1e9) if self.cpus else None,
            shm_size=size_in_bytes(self.shm_size),
            pids_limit=self.pids_limit,
            gpus=gpus,
            labels=dict(self.labels),
            pull_policy=self.image_pull_policy,
            init=self.init,
            ip=address,
            host_ports=host_ports,
        )
        kwargs["request"] = request
        kwargs["cmd"] = argv
        return kwargs

    async def _working_dir(self, cwd: Any, mounts: list[Mount]) -> str | None:
        """Where in the container the kernel starts: the folder the client asks for (as
        jupyter_client's LocalProvisioner, its own working folder when it names none:
        papermill, `jupyter console`, nbconvert on a notebook beside it), if the container
        sees it; None (the home) otherwise.

        The lab's mounts are the broker's (members' kernelspecs and clients outside the
        Jupyter server know none), so the broker says which folders they are; the kernel then
        enters the folder as the member (launch.entry), and sees only what she may."""
        try:
            folder = os.path.abspath(str(cwd)) if cwd else os.getcwd()
        except OSError:  # the client's folder was removed under it
            return None
        working_dir = container_path(folder, mounts, self.path_translations)
        lab_folders: list[str] = []
        if working_dir is None and self.broker():
            hello = await in_thread(self.engine.hello)  # type: ignore[attr-defined]
            # A broker from before this question has no answer: the home, as it always gave.
            lab_folders = [str(f) for f in hello.get("folders") or []]
            if any(is_mounted(folder, [Mount("lab", f)]) for f in lab_folders):
                working_dir = posixpath.normpath(folder)
        if working_dir is None:
            self.log.warning(
                "Kernel %s starts in the home folder: %s is not in a folder its container "
                "sees (%s).",
                self.kernel_id,
                folder,
                ", ".join(lab_folders or [m.target for m in mounts]) or "no volumes mounted",
            )
        return working_dir

    def _connection_for_launch(self, km: Any) -> tuple[dict[str, Any], str | None, dict[str, int]]:
        """The connection info, and the address and host ports to ask for.

        A restart keeps everything, as jupyter_client's LocalProvisioner does: the ports, the
        key, the curve keys, and (new here, since each launch is a new container) the
        container's address, so every client made before the restart - `jupyter console`,
        nbclient, papermill, `km.client()` - finds the kernel again. A first start, or a
        restart with new ports (`restart_kernel(newports=True)` clears the manager's ports),
        gets fresh ones.
        """
        previous = self._previous
        if previous is not None and (km is None or getattr(km, "shell_port", 0)):
            connection, launched = previous
            if self.connect_via == "published-ports":
                return dict(connection), None, dict(launched.ports)
            return dict(connection), launched.ip, {}
        return self._fresh_connection(km), None, {}

    def _fresh_connection(self, km: Any) -> dict[str, Any]:
        ports = random.sample(range(20000, 60000), len(PORT_NAMES))
        key = km.session.key.decode() if km is not None else uuid.uuid4().hex
        connection: dict[str, Any] = {
            "ip": "0.0.0.0",
            "transport": "tcp",
            "key": key,
            "signature_scheme": km.session.signature_scheme if km is not None else "hmac-sha256",
            "kernel_name": self._kernel_name(),
            **dict(zip(PORT_NAMES, ports, strict=True)),
        }
        if self._curve_wanted():
            public, secret = zmq.curve_keypair()
            connection["curve_publickey"] = public.decode("ascii")
            connection["curve_secretkey"] = secret.decode("ascii")
        return connection

    def _curve_wanted(self) -> bool:
        declared = (self.kernel_spec.metadata or {}).get("supported_encryption") or []
        if isinstance(declared, str):
            declared = [declared]
        # On by default wherever the kernel can (jupyter_client >= 8.10, this package's floor,
        # configures its client sockets from the curve keys it is given): jupyter_client's own
        # KernelManager.transport_encryption defaults to off, which would leave nbclient,
        # papermill and laptops unencrypted.
        kernel_can = "curve" in {str(d).strip().lower() for d in declared}
        if self.encrypt_traffic == "required" and not kernel_can:
            raise KernelConfigError(
                f"encrypt_traffic is 'required', but the kernelspec {self._kernel_name()!r} "
                'does not declare "curve" in metadata.supported_encryption (the kernel must '
                "support it)."
            )
        return self.encrypt_traffic != "disabled" and kernel_can

    @_shown
    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        request: LaunchRequest = kwargs["request"]
        self._reap_orphans_once()
        self._shutting_down = False
        self._exit_reported = False
        self._exit_watch = None
        try:
            launched: LaunchedContainer = await in_thread(self.engine.launch, request)
        except AddressUnavailable as e:
            # Never the same ports on a new address: jupyter_server rebuilds its channels only
            # when the ports change, and a client that kept the old address would hang.
            self.log.warning(
                "Kernel %s restarts on a new address and new ports: %s", self.kernel_id, e
            )
            fresh = self._fresh_connection(self.parent)
            if "curve_secretkey" in request.connection:
                fresh["curve_publickey"] = request.connection["curve_publickey"]
                fresh["curve_secretkey"] = request.connection["curve_secretkey"]
            request = dataclasses.replace(request, connection=fresh, ip=None, host_ports={})
            launched = await in_thread(self.engine.launch, request)
        self.container_id = launched.container_id
        self.container_name = launched.name
        _LAUNCHED.add(self)
        try:
            if request.publish_ports:
                # docker-proxy accepts connections before the kernel listens; nothing to probe.
                await self._check_still_running()
            else:
                await self._wait_until_listening(launched)
        except BaseException:
            await self._remove_container()
            raise
        self.log.info(
            "Kernel %s started in container %s (%s, image %s%s)",
            self.kernel_id,
            launched.name,
            launched.ip,
            request.image,
            f", {launched.gpus}" if launched.gpus else "",
        )
        self._previous = (dict(request.connection), launched)
        self._notice = None  # told once, by the kernel that followed
        self._apply_lab_idle_timeout(launched.idle_timeout)
        info = dict(request.connection)
        info.update(launched.ports)
        info["ip"] = launched.ip
        info["key"] = request.connection["key"].encode()
        self.connection_info = info
        return self.connection_info

    def _reap_orphans_once(self) -> None:
        """Remove, in the background, kernel containers left behind by servers that died."""
        global _reaped
        if _reaped or not self.reap_orphans or self.broker():
            return
        _reaped = True
        owner = None if os.getuid() == 0 else os.getuid()

        def reap() -> None:
            try:
                for kernel in prune(self.engine, owner_uid=owner):
                    self.log.info(
                        "Removed orphaned kernel container %s (owner %s)", kernel.name, kernel.owner
                    )
            except Exception as e:  # never let housekeeping break a kernel start
                self.log.warning("Could not prune orphaned kernel containers: %s", e)

        _DOCKER_CALLS.submit(reap)

    def _apply_lab_idle_timeout(self, seconds: float) -> None:
        """The lab wants this kernel culled after `seconds` idle (its GPUs: the broker says
        so at launch). jupyter_server's culler reads cull_idle_timeout from the kernel's
        kernelspec metadata, the very object this provisioner was given, so lowering it
        here holds for every kernelspec, the lab's and those members write, and never
        raises a shorter timeout the kernelspec asked for."""
        if seconds <= 0 or self.kernel_spec is None:
            return
        metadata = self.kernel_spec.metadata
        asked = metadata.get("cull_idle_timeout")
        if not isinstance(asked, int | float) or asked <= 0 or asked > seconds:
            metadata["cull_idle_timeout"] = int(seconds)
            self.log.info(
                "Kernel %s holds GPUs: it is shut down after %d s idle (the lab's setting)",
                self.kernel_id, int(seconds),
            )  # fmt: skip

    async def _wait_until_listening(self, launched: LaunchedContainer) -> None:
        """Return once the kernel accepts connections; raise at once if its container exits.

        Probing the shell port on the container's address costs a refused SYN per try, and lets
        the client connect as soon as the kernel binds (instead of after ZeroMQ's reconnect
        back-off), so the wait is on the start's critical path anyway.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.launch_timeout
        next_state_check = loop.time() + STATE_CHECK_INTERVAL
        state_check: asyncio.Future[Any] | None = None
        delay = 0.005
        while True:
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(launched.ip, launched.ports["shell_port"]), 1.0
                )
                writer.close()
                return
            except (TimeoutError, OSError):
                pass
            now = loop.time()
            if state_check is not None and state_check.done():
                state = state_check.result()
                if state is None or not state.running:
                    await self._raise_died(state)
                state_check = None
            if state_check is None and now >= next_state_check:
                # Rarely: under load, many kernels asking the engine constantly slow it down.
                state_check = asyncio.ensure_future(
                    in_thread(self.engine.state, launched.container_id)
                )
                next_state_check = now + STATE_CHECK_INTERVAL
            if now > deadline:
                if state_check is not None:
                    state_check.cancel()
                raise KernelLaunchError(
                    f"The kernel in container {launched.name} did not open its ports within "
                    f"{self.launch_timeout:.0f} s. Its last output:\n"
                    + await in_thread(self.engine.logs, launched.container_id)
                )
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.05)

    async def _check_still_running(self) -> None:
        state = await in_thread(self.engine.state, self.container_id)
        if state is None or not state.running:
            await self._raise_died(state)

    async def _raise_died(self, state: ContainerState | None) -> None:
        logs = await in_thread(self.engine.logs, self.container_id) if self.container_id else ""
        code = state.exit_code if state else None
        hint = ""
        if code == 127 or ("exec" in logs and "failed" in logs):
            hint = (
                f" The image {self.image!r} does not have the kernel's program "
                f"{self.kernel_spec.argv[0]!r}; use an image that does, or fix argv."
            )
        elif state is not None and state.oom_killed:
            hint = " It ran out of memory; raise the kernel's memory limit."
        raise KernelDiedDuringStart(
            f"The kernel's container exited during start (exit code {code}).{hint}"
            + (f"\nIts last log lines:\n{logs}" if logs else " It printed nothing."),
            exit_code=code,
            logs=logs,
        )

    # -- running -----------------------------------------------------------------------------

    async def poll(self) -> int | None:
        if self.container_id is None:
            return 0
        if self._exit_watch is not None:
            try:
                code = await asyncio.wait_for(asyncio.shield(self._exit_watch), 0.1)
            except TimeoutError:
                return None
            except EngineUnreachable:
                code = None
            if code is not None:
                return code
            self._exit_watch = None  # the watch timed out: ask the engine
        try:
            state = await in_thread(self.engine.state, self.container_id)
        except EngineUnreachable as e:
            # The engine restarting is not the kernel dying: no restart storm, just a warning.
            self.log.warning("Kernel %s: cannot check its container: %s", self.kernel_id, e)
            return None
        if state is not None and state.running:
            return None
        code = state.exit_code if state is not None else -1
        if not self._shutting_down and not self._exit_reported:
            self._exit_reported = True
            if state is not None and state.oom_killed:
                self._notice = out_of_memory(state.memory_limit)
            elif state is not None and state.error:
                self._notice = state.error  # e.g. the lab's admin freed its GPU
            logs = await in_thread(self.engine.logs, self.container_id)
            self.log.warning(
                "Kernel %s: container %s exited unexpectedly with code %s%s. Last log lines:\n%s",
                self.kernel_id,
                self.container_name,
                code,
                " (out of memory)" if state is not None and state.oom_killed else "",
                logs,
            )
        return code

    async def wait(self) -> int | None:
        while (code := await self.poll()) is None:
            await asyncio.sleep(0.05)
        return code

    async def send_signal(self, signum: int) -> None:
        if self.container_id is None:
            return
        if signum == 0:
            return
        await in_thread(self.engine.signal, self.container_id, signum)

    async def shutdown_requested(self, restart: bool = False) -> None:
        self._shutting_down = True
        if self.container_id is not None:
            # Learn of the exit the moment it happens, not at the manager's next 0.1 s poll.
            self._exit_watch = asyncio.ensure_future(
                in_thread(self.engine.wait, self.container_id, self.get_shutdown_wait_time())
            )

    async def kill(self, restart: bool = False) -> None:
        self._shutting_down = True
        await self.send_signal(signals.SIGKILL)

    async def terminate(self, restart: bool = False) -> None:
        self._shutting_down = True
        await self.send_signal(signals.SIGTERM)

    async def cleanup(self, restart: bool = False) -> None:
        await self._remove_container(restarting=restart)

    async def _remove_container(self, restarting: bool = False) -> None:
        self._exit_watch = None
        if self.container_id is not None:
            self._shutting_down = True
            await in_thread(self.engine.remove, self.container_id, restarting=restarting)
            self.container_id = None

    def get_shutdown_wait_time(self, recommended: float = 5.0) -> float:
        return max(recommended, 5.0)

    def resolve_path(self, path: str) -> str | None:
        if path.startswith("~"):
            return None
        return path if os.path.isabs(path) else None

    def launched_image(self) -> dict[str, Any] | None:
        """What the current kernel was launched from - the image as chosen, the ID of the
        image its container actually runs, that image's digests and labels - with the
        kernelspec and GPU request; None before the first launch. `record.py` turns it into
        the notebook's record at every save."""
        if self._previous is None:
            return None
        launched = self._previous[1]
        return {
            "image": self.image,
            "image_id": launched.image_id,
            "repo_digests": list(launched.image_digests),
            "image_labels": dict(launched.image_labels),
            "kernelspec": self._kernel_name(),
            "gpus": self.gpus,
        }

    async def get_provisioner_info(self) -> dict[str, Any]:
        info = await super().get_provisioner_info()
        info.update(container_id=self.container_id, container_name=self.container_name)
        return info

    async def load_provisioner_info(self, provisioner_info: dict[str, Any]) -> None:
        await super().load_provisioner_info(provisioner_info)
        self.container_id = provisioner_info.get("container_id")
        self.container_name = provisioner_info.get("container_name")

    def _kernel_name(self) -> str:
        return getattr(self.kernel_spec, "name", None) or getattr(
            self.parent, "kernel_name", "docker"
        )


def _gid(group: int | str) -> int:
    if isinstance(group, int) or str(group).isdigit():
        return int(group)
    import grp

    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise KernelConfigError(f"extra_groups: no group named {group!r} on the server") from None


@atexit.register
def _remove_forgotten_kernels() -> None:
    """At this process's exit, remove the containers of kernels it launched and never shut
    down through their manager: `jupyter console` ends its kernel with a shutdown message and
    exits, a member's script forgets `shutdown_kernel()`. Nobody can reach those kernels any
    more; the broker's reaper would remove them within a minute, this does it at once."""
    for provisioner in list(_LAUNCHED):
        container, engine = provisioner.container_id, provisioner._engine
        if container is not None and engine is not None:
            with contextlib.suppress(Exception):  # the engine or broker may be gone too
                engine.remove(container)
