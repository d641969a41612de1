"""Carrying out kernel container specs on a Docker engine with the Docker SDK.

`DockerEngine` knows containers, not members: it starts exactly the `KernelContainerSpec` it
is given (`launch_container`), whoever made it - `local_engine.LocalEngine` for a single
user, the broker's `op_launch` in the lab hub. Every method here blocks; callers run them in
a thread pool so no event loop waits on the engine. A launch either returns a started
container or removes whatever it created and raises a `KernelLaunchError` that says what to
fix.
"""

from __future__ import annotations

import io
import ipaddress
import json
import random
import tarfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, ClassVar, Generic, TypeVar

import docker
import docker.errors
import requests.exceptions
from docker.types import IPAMConfig, IPAMPool

from . import labels as L
from .errors import (
    AddressUnavailable,
    EngineUnreachable,
    ImageNotAvailable,
    KernelConfigError,
    KernelLaunchError,
)
from .gpus import GpuRequest, gpu_unavailable, is_gpu_driver_error, resolve_gpus
from .host_config import kernel_host_config
from .identity import merged_group, merged_passwd
from .image_checks import refuse_planted_links
from .mounts import is_mounted
from .spec import (
    CONNECTION_DIR,
    CONNECTION_FILE,
    ContainerState,
    KernelContainerSpec,
    LaunchedContainer,
)

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
PULL_POLICIES = ("never", "if-not-present", "always")


IMAGE_FACTS_KEPT = 256
"""Images whose facts (account files, link checks, inspection) one engine object keeps: the
long-lived broker sees every version every member builds, and must not grow without end."""


class _Recent(Generic[K, V]):
    """A thread-safe mapping that keeps only the `size` most recently used entries."""

    def __init__(self, size: int = IMAGE_FACTS_KEPT) -> None:
        self.size = size
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


def _engine_message(error: Exception) -> str:
    if isinstance(error, docker.errors.APIError):
        return str(error.explanation or error)
    return str(error)


class DockerEngine:
    """A connection to one Docker engine, shared by all kernels of a server process."""

    _shared: ClassVar[dict[str, DockerEngine]] = {}
    _shared_lock = threading.Lock()

    def __init__(self, base_url: str | None = None, timeout: float = 120) -> None:
        self.base_url = base_url
        self.timeout = timeout
        self._api: docker.APIClient | None = None
        self._lock = threading.Lock()
        # Facts of immutable image IDs, so that a launch asks the engine only once per image.
        self._image_files: _Recent[str, tuple[str, str]] = _Recent()
        self._plain_images: _Recent[tuple[str, tuple[str, ...]], bool] = _Recent()
        self._image_details: _Recent[str, dict[str, Any]] = _Recent()
        self._networks: set[str] = set()
        self._network_lock = threading.Lock()
        self._info: dict[str, Any] | None = None

    @classmethod
    def shared(cls, base_url: str | None = None) -> DockerEngine:
        """One engine object per address and process: it caches image and network facts."""
        key = base_url or ""
        with cls._shared_lock:
            if key not in cls._shared:
                cls._shared[key] = cls(base_url)
            return cls._shared[key]

    # -- connection ------------------------------------------------------------------------

    def where(self) -> str:
        return self.base_url or docker.utils.kwargs_from_env().get(
            "base_url", "unix:///var/run/docker.sock"
        )

    @property
    def api(self) -> docker.APIClient:
        with self._lock:
            if self._api is None:
                kwargs = docker.utils.kwargs_from_env()
                if self.base_url:
                    kwargs["base_url"] = self.base_url
                try:
                    self._api = docker.APIClient(
                        version="auto", timeout=self.timeout, max_pool_size=64, **kwargs
                    )
                except docker.errors.DockerException as e:
                    raise self._unreachable(e) from None
            return self._api

    def _unreachable(self, error: Exception) -> EngineUnreachable:
        return EngineUnreachable(
            f"Cannot reach the Docker engine at {self.where()}: {error}. Is Docker running "
            "(`systemctl start docker`), and may this user use it? In the lab hub, kernels "
            "start through the kernel broker; ask the lab's admin to check `make logs`."
        )

    @contextmanager
    def _talking(self) -> Iterator[None]:
        """Turn transport failures into EngineUnreachable."""
        try:
            yield
        except (requests.exceptions.ConnectionError, ConnectionError) as e:
            raise self._unreachable(e) from None

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        with self._talking():
            return fn(*args, **kwargs)

    def info(self) -> dict[str, Any]:
        if self._info is None:
            self._info = self.call(self.api.info)
        return self._info

    # -- launching -------------------------------------------------------------------------

    def launch_container(self, spec: KernelContainerSpec) -> LaunchedContainer:
        """Create, prepare and start the container `spec` describes; on failure leave
        nothing and raise."""
        spec.identity.refuse_root(spec.allow_root)
        with self._talking():
            image_id = self._ensure_image(spec.image, spec.pull_policy)
            self._ensure_network(spec.network)
            self._check_volumes(spec)
            gpus = (
                spec.gpus
                if isinstance(spec.gpus, GpuRequest)
                else resolve_gpus(spec.gpus, self.info())
            )
            container_id = self._create(spec, gpus)
            try:
                self._check_plain_paths(spec, image_id, container_id)
                self.api.put_archive(
                    container_id, "/", self._files_archive(spec, image_id, container_id)
                )
                self._start(container_id, spec, gpus)
                return self._describe(container_id, spec, gpus)
            except BaseException:
                self.remove(container_id)
                raise

    def _ensure_image(self, image: str, policy: str) -> str:
        if policy not in PULL_POLICIES:
            raise KernelConfigError(
                f"image_pull_policy must be one of {', '.join(PULL_POLICIES)}, not {policy!r}"
            )
        if policy == "always":
            self._pull(image)
        try:
            return self.api.inspect_image(image)["Id"]
        except docker.errors.ImageNotFound:
            if policy == "never":
                raise ImageNotAvailable(
                    f"The kernel image {image!r} is not on the Docker engine at {self.where()}. "
                    "Build it (in the labnotebook checkout: `make images`), or pull it "
                    f"(`docker pull {image}`), or let kernels pull it by setting "
                    "image_pull_policy to 'if-not-present'."
                ) from None
        self._pull(image)
        return self.api.inspect_image(image)["Id"]

    def _pull(self, image: str) -> None:
        repository, _, tag = (
            image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "")
        )
        try:
            self.api.pull(repository, tag=tag or "latest")
        except docker.errors.APIError as e:
            raise ImageNotAvailable(
                f"Pulling the kernel image {image!r} failed: {_engine_message(e)}. Check the "
                "name and the registry login, or build the image locally (`make images`)."
            ) from None

    def _ensure_network(self, name: str) -> None:
        if name in ("host", "none"):
            raise KernelConfigError(
                f"network {name!r} cannot be used for kernels: the server must reach the "
                "kernel's ports on its own address. Use a bridge network such as 'labnotebook'."
            )
        if name in self._networks or name == "bridge":
            return
        with self._network_lock:  # concurrent first launches must not create it twice
            if name in self._networks:
                return
            if not self._networks_named(name):
                self._create_network(name)
            self._networks.add(name)

    def _create_network(self, name: str) -> None:
        """Create the kernel network with the subnet the engine picks, pinned in its
        configuration: Docker gives containers fixed addresses (a restarted kernel keeps its
        old one) only on networks with a configured subnet, and letting the engine choose
        from its address pools keeps clear of the ranges the site's admin set aside."""
        try:
            probe = self.api.create_network(f"{name}-subnet-probe", driver="bridge")
            try:
                ipam = self.api.inspect_network(probe["Id"])["IPAM"]["Config"][0]
            finally:
                self.api.remove_network(probe["Id"])
            pool = IPAMPool(subnet=ipam["Subnet"], gateway=ipam.get("Gateway"))
            self.api.create_network(
                name, driver="bridge", ipam=IPAMConfig(pool_configs=[pool]),
                labels={L.ROLE: "network", f"{L.PREFIX}.subnet": "configured"},
            )  # fmt: skip
        except docker.errors.APIError as e:
            if not self._networks_named(name):
                raise KernelLaunchError(
                    f"Could not create the kernel network {name!r}: {_engine_message(e)}"
                ) from None
        # Another server may have created it at the same moment (Docker allows duplicate
        # names): keep the oldest, remove the rest.
        for extra in sorted(self._networks_named(name), key=lambda n: n["Created"])[1:]:
            with suppress(docker.errors.APIError):
                self.api.remove_network(extra["Id"])

    def free_address(self, network: str, avoid: set[str]) -> str | None:
        """An address on `network` that no container has and that is not in `avoid`; None
        when the network has no IPv4 subnet. (Only fixed-address launches on a network with
        a configured subnet can use it: see AddressUnavailable.)"""
        with self._talking():
            self._ensure_network(network)  # made with a configured subnet if missing
            details = self.api.inspect_network(network)
        configs = (details.get("IPAM") or {}).get("Config") or []
        subnets = [c for c in configs if ":" not in c.get("Subnet", ":")]
        if not subnets:
            return None
        subnet = ipaddress.ip_network(subnets[0]["Subnet"], strict=False)
        taken = set(avoid) | {str(subnet.network_address), str(subnet.broadcast_address)}
        if subnets[0].get("Gateway"):
            taken.add(subnets[0]["Gateway"])
        else:
            taken.add(str(subnet.network_address + 1))  # Docker's default gateway
        for container in (details.get("Containers") or {}).values():
            taken.add(container.get("IPv4Address", "").split("/")[0])
        size = subnet.num_addresses
        for _ in range(256):
            candidate = str(subnet.network_address + random.randrange(2, size - 1))
            if candidate not in taken:
                return candidate
        return None

    def _networks_named(self, name: str) -> list[dict[str, Any]]:
        # The engine's name filter matches substrings; keep exact matches only.
        return [n for n in self.api.networks(names=[name]) if n["Name"] == name]

    def _check_volumes(self, spec: KernelContainerSpec) -> None:
        for mount in spec.mounts:
            if mount.is_host_path:
                continue
            try:
                self.api.inspect_volume(mount.source)
            except docker.errors.NotFound:
                # Docker would silently create an empty volume; a typo must not do that.
                raise KernelConfigError(
                    f"The kernel's volume {mount.source!r} (mounted at {mount.target}) does not "
                    f"exist. Create it with `docker volume create {mount.source}`, or fix the "
                    "volume name in the kernelspec."
                ) from None

    def _create(self, spec: KernelContainerSpec, gpus: GpuRequest) -> str:
        identity = spec.identity
        port_bindings = (
            {port: ("127.0.0.1", spec.host_ports.get(name)) for name, port in spec.ports.items()}
            if spec.publish_ports
            else None
        )
        networking = None
        if spec.ip and not spec.publish_ports:
            networking = self.api.create_networking_config(
                {spec.network: self.api.create_endpoint_config(ipv4_address=spec.ip)}
            )
        host_config = kernel_host_config(self.api, spec, gpus, port_bindings)
        try:
            created = self.api.create_container(
                spec.image,
                command=spec.argv,
                user=f"{identity.uid}:{identity.gid}",
                environment=spec.env,
                working_dir=spec.working_dir,
                labels=spec.labels,
                name=spec.name,
                host_config=host_config,
                ports=list(spec.ports.values()) if spec.publish_ports else None,
                networking_config=networking,
                detach=True,
            )
        except docker.errors.APIError as e:
            if _address_problem(_engine_message(e)):
                raise AddressUnavailable(
                    f"The kernel cannot have the address {spec.ip} again: {_engine_message(e)}"
                ) from None
            if e.status_code == 409 and spec.name:
                # A leftover of this same kernel (a crashed server, say): replace it.
                self._remove_leftover(spec)
                return self._create(spec, gpus)
            raise KernelLaunchError(
                f"Docker refused to create the kernel container: {_engine_message(e)}"
            ) from None
        return created["Id"]

    def _remove_leftover(self, spec: KernelContainerSpec) -> None:
        try:
            old = self.api.inspect_container(spec.name)
        except docker.errors.NotFound:
            return
        old_labels = old["Config"]["Labels"] or {}
        if old_labels.get(L.KERNEL_ID) != spec.kernel_id or old_labels.get(L.OWNER_UID) != str(
            spec.identity.uid
        ):
            raise KernelLaunchError(
                f"A container named {spec.name!r} already exists and is not this kernel's."
            )
        self.remove(old["Id"])

    def _image_account_files(self, image_id: str, container_id: str) -> tuple[str, str]:
        """The image's own /etc/passwd and /etc/group (cached per image ID)."""
        known = self._image_files.get(image_id)
        if known is None:
            texts = []
            for path in ("/etc/passwd", "/etc/group"):
                try:
                    stream, _ = self.api.get_archive(container_id, path)
                    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
                        member = tar.next()
                        extracted = tar.extractfile(member) if member else None
                        texts.append(extracted.read().decode() if extracted else "")
                except docker.errors.NotFound:
                    texts.append("")  # scratch or distroless images may have none
            known = (texts[0], texts[1])
            self._image_files.put(image_id, known)
        return known

    def _check_plain_paths(
        self, spec: KernelContainerSpec, image_id: str, container_id: str
    ) -> None:
        """Refuse an image whose paths the launch writes are symlinks (image_checks.py)."""
        folders = [CONNECTION_DIR]
        if not is_mounted(spec.identity.home, spec.mounts):
            folders.append(spec.identity.home)
        key = (image_id, tuple(folders))
        if self._plain_images.get(key) is None:
            refuse_planted_links(
                self.api, container_id, spec.image, ["/etc/passwd", "/etc/group"], folders
            )
            self._plain_images.put(key, True)

    def _files_archive(self, spec: KernelContainerSpec, image_id: str, container_id: str) -> bytes:
        """One tar with the user's account entries, the connection file and, if unmounted, home."""
        passwd, group = self._image_account_files(image_id, container_id)
        identity = spec.identity
        now = time.time()
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:

            def add(path: str, mode: int, uid: int, gid: int, data: bytes | None = None) -> None:
                info = tarfile.TarInfo(path.lstrip("/"))
                info.mode, info.uid, info.gid, info.mtime = mode, uid, gid, now
                if data is None:
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
                else:
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))

            add("/etc/passwd", 0o644, 0, 0, merged_passwd(passwd, identity).encode())
            add("/etc/group", 0o644, 0, 0, merged_group(group, identity).encode())
            add(CONNECTION_DIR, 0o700, identity.uid, identity.gid)
            add(
                CONNECTION_FILE,
                0o600,
                identity.uid,
                identity.gid,
                json.dumps(spec.connection, indent=1).encode(),
            )
            if not is_mounted(identity.home, spec.mounts):
                # No shared home: give the user a private scratch home inside the container.
                add(identity.home, 0o700, identity.uid, identity.gid)
        return buffer.getvalue()

    def _start(self, container_id: str, spec: KernelContainerSpec, gpus: GpuRequest) -> None:
        try:
            self.api.start(container_id)
        except docker.errors.APIError as e:
            message = _engine_message(e)
            if (spec.ip or spec.host_ports) and _address_problem(message):
                raise AddressUnavailable(
                    f"The kernel cannot have its previous address again: {message}"
                ) from None
            if gpus.wanted and is_gpu_driver_error(message):
                raise gpu_unavailable(gpus, message) from None
            if "executable file not found" in message or "no such file or directory" in message:
                raise KernelLaunchError(
                    f"The image {spec.image!r} cannot run the kernel command {spec.argv[0]!r}: "
                    f"{message}. Use an image that has it (rebuild with `make images`), or fix "
                    "the kernelspec's argv."
                ) from None
            raise KernelLaunchError(
                f"Docker could not start the kernel container: {message}"
            ) from None

    def _describe(
        self, container_id: str, spec: KernelContainerSpec, gpus: GpuRequest
    ) -> LaunchedContainer:
        details = self.api.inspect_container(container_id)
        settings = details["NetworkSettings"]
        if spec.publish_ports:
            ip = "127.0.0.1"
            published = settings.get("Ports") or {}
            ports = {}
            for name, port in spec.ports.items():
                # No binding: the container exited already; the caller sees it from the state.
                bindings = published.get(f"{port}/tcp") or [{"HostPort": port}]
                ports[name] = int(bindings[0]["HostPort"])
        else:
            network = (settings.get("Networks") or {}).get(spec.network) or {}
            ip = network.get("IPAddress") or ""
            ports = spec.ports
        image_id = details.get("Image") or ""
        image = self._image_facts(image_id)
        return LaunchedContainer(
            container_id,
            details["Name"].lstrip("/"),
            ip,
            ports,
            gpus.describe() if gpus.wanted else "",
            image_id=image_id,
            image_digests=tuple(image.get("RepoDigests") or ()),
            image_labels=dict((image.get("Config") or {}).get("Labels") or {}),
        )

    def _image_facts(self, image_id: str) -> dict[str, Any]:
        """The image's inspection (an ID names immutable content: cached per ID)."""
        facts = self._image_details.get(image_id)
        if facts is None:
            try:
                facts = self.api.inspect_image(image_id)
            except docker.errors.NotFound:
                return {}  # removed meanwhile (`docker rmi -f`): the ID is still the truth
            self._image_details.put(image_id, facts)
        return facts

    # -- running containers ----------------------------------------------------------------

    def container(self, container: str) -> dict[str, Any] | None:
        """A container's ID, labels and addresses (network -> IPv4); None once it is gone."""
        try:
            details = self.call(self.api.inspect_container, container)
        except docker.errors.NotFound:
            return None
        networks = (details.get("NetworkSettings") or {}).get("Networks") or {}
        return {
            "id": details["Id"],
            "labels": (details.get("Config") or {}).get("Labels") or {},
            "addresses": {name: net.get("IPAddress") or "" for name, net in networks.items()},
        }

    def state(self, container_id: str) -> ContainerState | None:
        """The container's state, or None if it no longer exists."""
        try:
            details = self.call(self.api.inspect_container, container_id)
        except docker.errors.NotFound:
            return None
        state = details["State"]
        running = bool(state.get("Running"))
        return ContainerState(
            running=running,
            exit_code=None if running else int(state.get("ExitCode", -1)),
            oom_killed=bool(state.get("OOMKilled")),
            error=state.get("Error") or "",
            memory_limit=int((details.get("HostConfig") or {}).get("Memory") or 0),
        )

    def signal(self, container_id: str, signum: int) -> None:
        try:
            self.call(self.api.kill, container_id, signal=int(signum))
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:
            if e.status_code != 409:  # 409: not running, which is what a signal wanted anyway
                raise

    def remove(self, container_id: str) -> None:
        try:
            self.call(self.api.remove_container, container_id, force=True, v=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:
            if e.status_code != 409 or "already in progress" not in str(e):
                raise

    def logs(self, container_id: str, tail: int = 20) -> str:
        try:
            raw = self.call(self.api.logs, container_id, tail=tail, stdout=True, stderr=True)
        except docker.errors.NotFound:
            return ""
        return raw.decode(errors="replace").rstrip()

    def wait(self, container_id: str, timeout: float) -> int | None:
        """Block until the container exits (its exit code), or None after `timeout` seconds."""
        try:
            # Not through self.call: docker-py reports a read timeout as a ConnectionError,
            # which here means "still running", not "engine unreachable".
            result = self.api.wait(container_id, timeout=timeout)
        except docker.errors.NotFound:
            return -1
        except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
            return None
        return int(result.get("StatusCode", -1))

    # -- finding kernels -------------------------------------------------------------------

    def kernel_containers(self, owner_uid: int | None = None) -> list[dict[str, Any]]:
        filters = [f"{L.ROLE}={L.KERNEL_ROLE}"]
        if owner_uid is not None:
            filters.append(f"{L.OWNER_UID}={owner_uid}")
        return self.call(self.api.containers, all=True, filters={"label": filters})


def _address_problem(message: str) -> bool:
    """The engine's ways of saying a fixed address or host port cannot be had."""
    lowered = message.lower()
    return any(
        phrase in lowered
        for phrase in (
            "user configured subnets",
            "address already in use",
            "no available ip",
            "port is already allocated",
            "invalid address",
            "is not in",  # "... is not in the subnet of the network"
        )
    )
