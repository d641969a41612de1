"""What the kernel broker lets a member's launch request become.

A member's Jupyter server sends a `LaunchRequest` as JSON: the part of a launch that is hers
to decide (the command, environment, image among the lab's, limits up to the lab's caps).
`LaunchPolicy.admit` checks it field by field and returns the admitted `LaunchRequest`.
Everything that decides *who* the kernel is and *what it can reach* - the UID and groups, the
lab's mounts, the network, the labels the broker later trusts, the container name - is never
in a request: `launch.container_spec` adds it once, from the peer's kernel-verified identity
(`identity_of`) and the admin's `rules_for` it.

`admit` is a pure function of (peer, request, configuration): it never talks to the Docker
engine, so a refused request cannot have left anything behind, and the policy is
unit-testable without Docker.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import ipaddress
import pwd
import re
from typing import Any, NamedTuple

from labnotebook.provisioner import labels as L
from labnotebook.provisioner.errors import KernelConfigError, PermissionRefused
from labnotebook.provisioner.gpus import GpuRequest
from labnotebook.provisioner.identity import KernelIdentity
from labnotebook.provisioner.launch import LabRules, container_spec
from labnotebook.provisioner.mounts import Mount
from labnotebook.provisioner.request import PORT_NAMES, LaunchRequest
from labnotebook.provisioner.sizes import human_bytes, positive_size, size_in_bytes
from labnotebook.provisioner.spec import KernelContainerSpec
from traitlets import Bool, CaselessStrEnum, Float, Int, List, TraitError, Unicode, Union, validate
from traitlets.config import LoggingConfigurable

# Every field of a LaunchRequest - the member's part of a launch - and what the broker does
# with it. The request is the *only* thing a member sends; who the kernel runs as, the lab's
# mounts, the network, the name and the trusted labels come from `launch.container_spec` with
# the peer's kernel-verified identity and the admin's rules. A field added to LaunchRequest
# later is not in this table, so every launch carrying it is refused until someone reviews it
# here (tests/test_broker_policy.py::test_every_request_field_is_reviewed fails meanwhile);
# anything else in a request (identity, name, network, privileges...) is refused outright.
REVIEWED_FIELDS = {
    "kernel_id": "a safe token; it names the container",
    "kernel_name": "printable text, only shown in labels",
    "image": "must match allowed_images, or be the member's own or a published image",
    "argv": "the member's own program, run as the member",
    "connection": "ports and key, written into the member's container",
    "env": "the member's own environment; HOME/USER/LOGNAME forced to the account's",
    "working_dir": "entered by the kernel as the member (launch.entry)",
    "mounts": "lab mounts always; requested ones only from allowed_mounts",
    "publish_ports": "refused: nothing of a kernel is published on the host",
    "memory": "capped by max_memory",
    "nano_cpus": "capped by max_cpus",
    "shm_size": "capped by max_shm_size",
    "pids_limit": "capped by max_pids",
    "gpus": "allowed (allow_gpus): the only devices a kernel can get",
    "labels": "only allowed_labels; org.labnotebook.* always the broker's",
    "pull_policy": "must be in allowed_pull_policies",
    "init": "the member's choice",
    "ip": "only an address the broker holds for this member's kernel (addresses.py)",
    "host_ports": "refused with publish_ports",
}
REQUIRED_FIELDS = ("kernel_id", "kernel_name", "image", "argv", "connection")
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")
_DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}\Z")


class Peer(NamedTuple):
    """The process at the other end of the broker's socket, as the OS reports it."""

    pid: int
    uid: int
    gid: int

    @property
    def is_root(self) -> bool:
        return self.uid == 0


def username(uid: int) -> str:
    """An account's name, for logs and messages ('uid1234' for a UID with no account)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid{uid}"


def _text(field: str, value: Any, *, limit: int = 4096, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise KernelConfigError(f"Kernel spec field {field!r} must be text, not {value!r}")
    if (not value and not allow_empty) or len(value) > limit or "\0" in value:
        raise KernelConfigError(f"Kernel spec field {field!r} is empty, too long or has NUL")
    return value


def _int(field: str, value: Any) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise KernelConfigError(f"Kernel spec field {field!r} must be a whole number or null")
    return value


class LaunchPolicy(LoggingConfigurable):
    """The admin's rules for kernel containers started through the broker.

    Configure in the broker's config file, e.g.::

        c.LaunchPolicy.lab_mounts = ["labnotebook-homedirs:/home"]
        c.LaunchPolicy.allowed_mounts = ["labnotebook-datasets:/data:ro"]
        c.LaunchPolicy.max_memory = "16g"
    """

    lab_mounts = List(
        Unicode(),
        default_value=[],
        config=True,
        help="""Mounts every kernel gets, in Docker's -v syntax SOURCE:TARGET[:ro], with
        {username}, {uid} and {home} filled in for the user; e.g.
        ["labnotebook-homedirs:/home"]. A user's request for the same mount is merged.""",
    )
    allowed_mounts = List(
        Unicode(),
        default_value=[],
        config=True,
        help="""Further mounts a kernelspec may ask for, SOURCE:TARGET[:ro], matched
        exactly on source and target (placeholders as for lab_mounts). An entry ending in :ro
        may only be mounted read-only; a read-write entry may also be asked for read-only.
        Any other host path or volume is refused.""",
    )
    network = Unicode(
        "labnotebook",
        config=True,
        help="""The Docker network every kernel joins, whatever the request says. The hub
        must be attached to it to reach the kernels' ports.""",
    )
    allowed_images = List(
        Unicode(),
        default_value=["labnotebook/*"],
        config=True,
        help="""Shell-style patterns (fnmatch, case-sensitive) of the images kernels may run,
        matched against the image reference as requested, e.g. ["labnotebook/*"].""",
    )
    allowed_pull_policies = List(
        CaselessStrEnum(["never", "if-not-present", "always"]),
        default_value=["never"],
        config=True,
        help="""Pull policies a kernelspec may use. Only "never" by default: the lab builds
        its images (`make images`), and a pull would let any user fill the engine's disk
        with whatever an allowed name resolves to in a public registry.""",
    )
    allowed_labels = List(
        Unicode(),
        default_value=[],
        config=True,
        help="""Shell-style patterns of label keys a kernelspec may put on its container;
        other labels are dropped. None by default: tools that watch Docker read labels (a
        reverse proxy would route traffic by `traefik.*` labels), so users must not set
        arbitrary ones. The broker's own org.labnotebook.* labels are always set.""",
    )
    min_uid = Int(
        1000,
        config=True,
        help="""Lowest UID that gets kernels (root aside, see allow_root): system accounts
        such as www-data have no business starting containers.""",
    )
    allow_root = Bool(
        False,
        config=True,
        help="""Let root (UID 0) peers start kernels, which then run as root. Off: root has
        the Docker socket anyway and should not need the broker.""",
    )
    allow_gpus = Bool(
        True,
        config=True,
        help="""Let kernels ask for GPUs (the only devices a kernel container can get).""",
    )
    over_limit = CaselessStrEnum(
        ["refuse", "clamp"],
        default_value="refuse",
        config=True,
        help="""What to do with a request above a max_* cap: "refuse" it with a message that
        names the cap (the default: users learn why), or "clamp" it to the cap. A request with
        no limit always gets the cap.""",
    )
    cwd_shim = List(
        Unicode(),
        default_value=[
            "/bin/sh",
            "-c",
            'cd -- "$0" 2>/dev/null || echo "labnotebook: cannot enter $0; starting in $HOME" >&2;'
            ' exec "$@"',
        ],
        config=True,
        help="""Command prefix that makes the kernel start in a folder inside a mounted volume
        (the notebook's folder): it is called with that folder, then the kernel's argv, and
        must change into the folder as the user and exec the rest. Needs /bin/sh in the
        image. (Docker's own working_dir would create a missing folder as root.)""",
    )
    max_memory = Union(
        [Int(), Unicode()],
        default_value=None,
        allow_none=True,
        config=True,
        help="""Largest memory limit a kernel may have, in bytes or as "16g". None: no cap.""",
    )
    max_cpus = Float(
        None,
        allow_none=True,
        config=True,
        help="Largest number of CPUs a kernel may use, e.g. 4. None: no cap.",
    )
    max_shm_size = Union(
        [Int(), Unicode()],
        default_value=None,
        allow_none=True,
        config=True,
        help="Largest /dev/shm a kernel may have, as for max_memory. None: no cap.",
    )
    max_memory_per_user = Union(
        [Int(), Unicode()],
        default_value=None,
        allow_none=True,
        config=True,
        help="""The most kernel memory one member may hold at once: the sum of the memory limits
        of their kernels, as "32g" or bytes. A launch past it is refused, naming their
        kernels. None: no cap.""",
    )
    max_pids = Int(
        4096,
        allow_none=True,
        config=True,
        help="""Largest number of processes and threads in a kernel container, so that a fork
        bomb cannot take the host down. None: no cap (not recommended).""",
    )

    @validate("max_memory", "max_shm_size", "max_memory_per_user")
    def _positive_size(self, proposal: dict[str, Any]) -> Any:
        return positive_size(proposal["value"], proposal["trait"].name)

    @validate("lab_mounts", "allowed_mounts")
    def _valid_mounts(self, proposal: dict[str, Any]) -> Any:
        for entry in proposal["value"]:
            try:
                Mount.parse(entry, {"username": "u", "uid": "1000", "home": "/home/u"})
            except KernelConfigError as e:
                raise TraitError(f"{proposal['trait'].name}: {e}") from None
        return proposal["value"]

    # -- the decision -----------------------------------------------------------------------

    def admit(self, peer: Peer, request: Any, member_image: bool = False) -> LaunchRequest:
        """The request as the broker will launch it for `peer`, or a refusal that says why.

        `member_image`: the broker found the requested image to be one the peer may run by
        its recorded owner (their own, or published: hub/broker_builds.py); otherwise the
        image must match allowed_images."""
        if not isinstance(request, dict):
            raise KernelConfigError("A launch needs a 'spec' object: a LaunchRequest as JSON.")
        unknown = sorted(set(request) - (set(REVIEWED_FIELDS) & LaunchRequest.field_names()))
        if unknown:
            raise PermissionRefused(
                f"The kernel broker does not accept {', '.join(map(repr, unknown))} in a launch "
                "request. The broker decides who a kernel runs as, its network, name and "
                "labels; kernels never get privileges, host namespaces, extra capabilities or "
                "devices other than GPUs. Remove these settings."
            )
        missing = [f for f in REQUIRED_FIELDS if request.get(f) is None]
        if missing:
            raise KernelConfigError(f"The kernel spec lacks {', '.join(missing)}.")

        identity = self.identity_of(peer)
        kernel_id = _text("kernel_id", request["kernel_id"], limit=128)
        if not _TOKEN.match(kernel_id):
            raise KernelConfigError(
                f"kernel_id {kernel_id!r} must be letters, digits, '_', '.', '-' (a UUID)."
            )
        kernel_name = _text("kernel_name", request["kernel_name"], limit=255)
        if not kernel_name.isprintable():
            raise KernelConfigError("kernel_name must be printable text.")
        image = _text("image", request["image"], limit=512)
        if not member_image:
            image = self._image(image)
        pull_policy = str(request.get("pull_policy") or "never").lower()
        if pull_policy not in [p.lower() for p in self.allowed_pull_policies]:
            raise PermissionRefused(
                f"Image pull policy {pull_policy!r} is not allowed in this lab (allowed: "
                f"{', '.join(self.allowed_pull_policies)}). Set image_pull_policy accordingly."
            )
        ip = request.get("ip")
        if ip is not None:
            try:
                ip = str(ipaddress.IPv4Address(_text("ip", ip, limit=15)))
            except ValueError:
                raise KernelConfigError(
                    f"Kernel spec field 'ip' is not an address: {ip!r}"
                ) from None
        if request.get("publish_ports") or request.get("host_ports"):
            raise PermissionRefused(
                "Kernels in this lab are reached on the kernel network, never on ports "
                "published on the host. Set connect_via = 'container-ip' (the default)."
            )
        init = request.get("init", True)
        if not isinstance(init, bool):
            raise KernelConfigError("Kernel spec field 'init' must be true or false.")
        working_dir = request.get("working_dir")
        if working_dir is not None and not _text("working_dir", working_dir).startswith("/"):
            raise KernelConfigError(f"working_dir must be an absolute path: {working_dir!r}")
        mounts = self._mounts(request.get("mounts") or [], identity)

        return LaunchRequest(
            kernel_id=kernel_id,
            kernel_name=kernel_name,
            image=image,
            argv=self._argv(request["argv"]),
            connection=self._connection(request["connection"]),
            env=self._env(request.get("env") or {}),
            working_dir=working_dir,
            mounts=mounts,
            publish_ports=False,
            memory=self._capped(
                "memory", _int("memory", request.get("memory")), size_in_bytes(self.max_memory)
            ),
            nano_cpus=self._capped(
                "nano_cpus",
                _int("nano_cpus", request.get("nano_cpus")),
                int(self.max_cpus * 1e9) if self.max_cpus else None,
            ),
            shm_size=self._capped(
                "shm_size",
                _int("shm_size", request.get("shm_size")),
                size_in_bytes(self.max_shm_size),
            ),
            pids_limit=self._capped(
                "pids_limit", _int("pids_limit", request.get("pids_limit")), self.max_pids
            ),
            gpus=self._gpus(request.get("gpus")),
            labels=self._labels(request.get("labels") or {}),
            pull_policy=pull_policy,
            init=init,
            ip=ip,
        )

    def container_for(
        self,
        peer: Peer,
        admitted: LaunchRequest,
        server: str | None = None,
        launcher_labels: dict[str, str] | None = None,
    ) -> KernelContainerSpec:
        """The container an admitted request becomes for `peer`: `launch.container_spec`
        with the peer's identity and the lab's rules. `server` names the launching process
        for the reaper (default: the peer's own); `launcher_labels` are the broker's own."""
        identity = self.identity_of(peer)
        if server is None:
            server = L.server_identity(peer.pid) if peer.pid > 0 else "unknown"
        rules = self.rules_for(identity)
        return container_spec(admitted, identity, rules, server, launcher_labels)

    def job_runner_for(
        self,
        owner_uid: int,
        *,
        job_id: str,
        image: str,
        argv: list[str],
        env: dict[str, str],
        working_dir: str,
        memory: int | None,
        nano_cpus: int | None,
        pids_limit: int | None,
        labels: dict[str, str],
    ) -> KernelContainerSpec:
        """The runner container of a notebook job (hub/notebook_jobs.py): the member's own
        container like her kernels - her UID and groups, the lab's mounts and network, the
        same hardening (`host_config.kernel_host_config`) - with the runner's small limits
        and no ports or GPUs. Its kernel is launched through the broker like any other
        (`admit`, the member's caps), so nothing here widens what a member can get."""
        identity = self.identity_of(Peer(0, owner_uid, -1))
        request = LaunchRequest(
            kernel_id=f"job-{job_id}",
            kernel_name=f"notebook job {job_id}",
            image=image,
            argv=list(argv),
            connection={},
            env=dict(env),
            working_dir=working_dir,
            memory=memory,
            nano_cpus=nano_cpus,
            pids_limit=pids_limit,
            labels=self._labels(labels),
        )
        return container_spec(
            request,
            identity,
            self.rules_for(identity),
            server=f"job/{job_id}",
            launcher_labels={L.ROLE: L.JOB_ROLE, L.JOB_ID: job_id},
        )

    def rules_for(self, identity: KernelIdentity) -> LabRules:
        """What the lab decides for every kernel of `identity`, whatever the request says."""
        return LabRules(
            network=self.network,
            lab_mounts=self._lab_mounts(identity),
            allow_root=self.allow_root,
            cwd_shim=tuple(self.cwd_shim),
        )

    def _lab_mounts(self, identity: KernelIdentity) -> tuple[Mount, ...]:
        return tuple(Mount.parse(m, _placeholders(identity)) for m in self.lab_mounts)

    def identity_of(self, peer: Peer) -> KernelIdentity:
        """The peer's account, from this machine's user database - never from the request."""
        identity = KernelIdentity.of_uid(peer.uid)
        if 0 < identity.uid < self.min_uid:
            raise PermissionRefused(
                f"UID {identity.uid} ({identity.username}) is a system account; kernels are "
                f"for the lab's users (UID {self.min_uid} and up, LaunchPolicy.min_uid)."
            )
        if identity.uid == 0 or identity.gid == 0:
            if not self.allow_root:
                raise PermissionRefused(
                    f"The kernel broker does not start kernels for root (UID {identity.uid}, "
                    f"GID {identity.gid}). Start Jupyter as an ordinary user; the lab's admin "
                    "can allow root kernels with LaunchPolicy.allow_root = True."
                )
            return identity
        if 0 in identity.groups:
            # Membership of the root group on the hub must not become GID 0 in a kernel.
            groups = tuple(g for g in identity.groups if g != 0)
            identity = dataclasses.replace(
                identity,
                groups=groups,
                group_names={g: n for g, n in identity.group_names.items() if g != 0},
            )
        return identity

    # -- the parts ---------------------------------------------------------------------------

    def _image(self, image: str) -> str:
        if not any(fnmatch.fnmatchcase(image, pattern) for pattern in self.allowed_images):
            raise PermissionRefused(
                f"The image {image!r} is not one of this lab's kernel images (allowed: "
                f"{', '.join(self.allowed_images) or 'none'}). Use a lab image, or ask the "
                "lab's admin to add yours to LaunchPolicy.allowed_images."
            )
        return image

    @staticmethod
    def _argv(argv: Any) -> list[str]:
        if not isinstance(argv, list) or not argv:
            raise KernelConfigError("Kernel spec field 'argv' must be a non-empty list of text.")
        return [_text("argv", a, allow_empty=True) for a in argv]

    @staticmethod
    def _connection(connection: Any) -> dict[str, Any]:
        if not isinstance(connection, dict):
            raise KernelConfigError("Kernel spec field 'connection' must be an object.")
        for name in PORT_NAMES:
            port = connection.get(name)
            if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
                raise KernelConfigError(f"The connection's {name} must be a port number.")
        for key, value in connection.items():
            if not isinstance(key, str) or not isinstance(value, str | int | float | type(None)):
                raise KernelConfigError(f"The connection's {key!r} must be a plain value.")
            if isinstance(value, str):
                _text(f"connection.{key}", value, allow_empty=True)
        return dict(connection)

    @staticmethod
    def _env(env: Any) -> dict[str, str]:
        if not isinstance(env, dict):
            raise KernelConfigError("Kernel spec field 'env' must be an object of text.")
        for key, value in env.items():
            if not key or "=" in key or "\0" in key:
                raise KernelConfigError(f"Invalid environment variable name {key!r}")
            _text(f"env.{key}", value, limit=65536, allow_empty=True)
        return dict(env)  # HOME/USER/LOGNAME: the account's (launch.container_spec)

    def _mounts(self, requested: Any, identity: KernelIdentity) -> list[Mount]:
        """The requested mounts the lab allows. Not merged with the lab's own mounts:
        `launch.merged_mounts` does that, once, for every launcher."""
        if not isinstance(requested, list):
            raise KernelConfigError("Kernel spec field 'mounts' must be a list.")
        lab = self._lab_mounts(identity)
        allowed = [Mount.parse(m, _placeholders(identity)) for m in self.allowed_mounts]
        result: list[Mount] = []
        for item in requested:
            mount = self._requested_mount(item)
            key = (mount.source, mount.target)
            same = [m for m in (*lab, *result) if (m.source, m.target) == key]
            if same:
                if mount.read_only and not same[0].read_only:
                    # Asked to be stricter than the lab, or than an earlier entry: fine.
                    result = [m for m in result if (m.source, m.target) != key] + [mount]
                continue
            if any(m.target == mount.target for m in (*lab, *result)):
                raise PermissionRefused(
                    f"The kernel may not mount {mount.source} at {mount.target}: the lab "
                    "already mounts something there."
                )
            grant = next(
                (a for a in allowed if (a.source, a.target) == (mount.source, mount.target)),
                None,
            )
            if grant is None:
                offered = ", ".join(self.allowed_mounts) or "none"
                raise PermissionRefused(
                    f"The kernel may not mount {mount.source!r} at {mount.target}: "
                    f"{'host paths' if mount.is_host_path else 'volumes'} are mounted only "
                    f"as the lab's admin allows (allowed: {offered}). Remove it from the "
                    "kernelspec's volumes, or ask the admin to add it to "
                    "LaunchPolicy.allowed_mounts."
                )
            if grant.read_only and not mount.read_only:
                raise PermissionRefused(
                    f"{mount.source}:{mount.target} may only be mounted read-only in this lab; "
                    "add ':ro' to it in the kernelspec's volumes."
                )
            result.append(mount)
        return result

    @staticmethod
    def _requested_mount(item: Any) -> Mount:
        if not isinstance(item, dict) or set(item) - {"source", "target", "read_only"}:
            raise PermissionRefused(
                f"A mount must be {{source, target, read_only}} and nothing else: {item!r}"
            )
        source, target = item.get("source"), item.get("target")
        read_only = item.get("read_only", False)
        if not isinstance(source, str) or not isinstance(target, str):
            raise KernelConfigError(f"A mount's source and target must be text: {item!r}")
        if not isinstance(read_only, bool):
            raise KernelConfigError(f"A mount's read_only must be true or false: {item!r}")
        if "{" in source + target or "\0" in source + target:
            raise KernelConfigError(f"Invalid mount {item!r}")
        # Mount.parse normalises ('/data/../etc' -> '/etc') and rejects ':' tricks.
        return Mount.parse(f"{source}:{target}:{'ro' if read_only else 'rw'}")

    def _capped(self, field: str, value: int | None, cap: int | None) -> int | None:
        if value is not None and value <= 0:
            if field != "pids_limit":
                raise KernelConfigError(f"Kernel spec field {field!r} must be positive.")
            value = None  # -1/0: "no limit" for pids
        if cap is None:
            return value
        if value is None:
            return cap
        if value <= cap:
            return value
        if self.over_limit == "clamp":
            self.log.info("Clamped %s from %s to the lab's cap %s", field, value, cap)
            return cap
        what, trait = {
            "memory": (lambda n: f"{human_bytes(n)} of memory", "max_memory"),
            "shm_size": (lambda n: f"{human_bytes(n)} of /dev/shm", "max_shm_size"),
            "nano_cpus": (lambda n: f"{n / 1e9:g} CPUs", "max_cpus"),
            "pids_limit": (lambda n: f"{n} processes", "max_pids"),
        }[field]
        setting = {"nano_cpus": "cpus"}.get(field, field)
        raise PermissionRefused(
            f"This kernel asks for {what(value)}, but this lab allows at most {what(cap)} per "
            f"kernel. Lower '{setting}' in the kernelspec, or ask the lab's admin to raise "
            f"LaunchPolicy.{trait}."
        )

    def _gpus(self, gpus: Any) -> str | GpuRequest:
        if gpus is None or gpus == "auto":
            request: str | GpuRequest = "auto" if gpus else GpuRequest()
        elif isinstance(gpus, dict) and not set(gpus) - {"count", "device_ids"}:
            count, ids = gpus.get("count", 0), gpus.get("device_ids") or []
            if not isinstance(count, int) or isinstance(count, bool) or count < -1:
                raise KernelConfigError(f"Invalid GPU count {count!r}")
            if not isinstance(ids, list) or not all(
                isinstance(i, str) and _DEVICE_ID.match(i) for i in ids
            ):
                raise KernelConfigError(f"Invalid GPU device IDs {ids!r}")
            request = GpuRequest(count=count, device_ids=tuple(ids))
        else:
            raise KernelConfigError(f"Invalid gpus request {gpus!r}")
        if not self.allow_gpus:
            if isinstance(request, GpuRequest) and request.wanted:
                raise PermissionRefused(
                    "This lab does not give kernels GPUs; set the kernel's gpus to 'none'."
                )
            return GpuRequest()
        return request

    def _labels(self, labels: Any) -> dict[str, str]:
        """The request's extra labels that allowed_labels lets through (ours are added by
        launch.container_spec, whatever the request says)."""
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and len(k) + len(v) < 4096
            for k, v in labels.items()
        ):
            raise KernelConfigError("Kernel spec field 'labels' must be an object of text.")
        result = {
            k: v
            for k, v in labels.items()
            if not k.startswith(L.PREFIX + ".")
            and any(fnmatch.fnmatchcase(k, pattern) for pattern in self.allowed_labels)
        }
        dropped = sorted(set(labels) - set(result) - {k for k in labels if k.startswith(L.PREFIX)})
        if dropped:
            self.log.info("Dropped labels not in LaunchPolicy.allowed_labels: %s", dropped)
        return result


def _placeholders(identity: KernelIdentity) -> dict[str, str]:
    """What {username}, {uid} and {home} in the admin's mounts stand for."""
    return {"username": identity.username, "uid": str(identity.uid), "home": identity.home}
