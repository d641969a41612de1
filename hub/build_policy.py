"""What the kernel broker lets a member's image build use: the admin's rules for builds.

Configure in the broker's config (the hub writes the settings from `make up`; admins add to
them in /srv/state/broker.d), e.g.::

    c.BuildPolicy.quota = "20g"
    c.BuildPolicy.allow_dockerfile = True
"""

from __future__ import annotations

from typing import Any

from labnotebook.provisioner.build_context import DEFAULT_CONTEXT_LIMIT
from labnotebook.provisioner.builds import BuildLimits
from labnotebook.provisioner.defaults import KERNEL_IMAGE
from labnotebook.provisioner.sizes import human_bytes, positive_size, size_in_bytes
from traitlets import Bool, Float, Int, TraitError, Unicode, Union, validate
from traitlets.config import LoggingConfigurable

from .settings_schema import BY_NAME


class BuildPolicy(LoggingConfigurable):
    """The admin's rules for members' kernel image builds through the broker."""

    enabled = Bool(
        True,
        config=True,
        help="""Let members build kernel images (`labnotebook kernel build`). Off: every
        build is refused with a message; existing images keep working.""",
    )
    allow_dockerfile = Bool(
        False,
        config=True,
        help="""Build folders that hold a Dockerfile. Off by default: the engine's builder
        runs a Dockerfile's RUN steps as root with Docker's default capabilities, no process
        or disk limit and on the build network, so this trusts members with that much of
        the host (never the engine's socket, host paths or the host's network). The images
        a Dockerfile names are checked either way.""",
    )
    default_base = Unicode(
        KERNEL_IMAGE,
        config=True,
        help="""The image a build without --from (and without a Dockerfile) starts from:
        the lab's default kernel image, so its kernel and user handling carry over.""",
    )
    allow_pulls = Bool(
        False,
        config=True,
        help="""Let a Dockerfile name images that are not on the engine (the builder would
        pull them from a registry). Off: only images here, which the member may launch.""",
    )
    quota = Union(
        [Int(), Unicode()],
        default_value=BY_NAME["BUILD_QUOTA"].default,  # make up's BUILD_QUOTA
        allow_none=True,
        config=True,
        help="""Disk one member's images may add, as "20g" or bytes: the layers each version
        adds over its base (the lab's shared base layers do not count). A build past it is
        refused and nothing kept. None: no quota.""",
    )
    max_context = Union(
        [Int(), Unicode()],
        default_value=DEFAULT_CONTEXT_LIMIT,
        config=True,
        help="""Largest build folder a member may send (packed), as "200m" or bytes.""",
    )
    time_limit = Float(
        1800.0,
        config=True,
        help="""Seconds a build may take; a longer one is stopped and nothing kept.""",
    )
    memory = Union(
        [Int(), Unicode()],
        default_value="2g",
        allow_none=True,
        config=True,
        help="""Memory (swap included) of a build's container, as "2g" or bytes.""",
    )
    cpus = Float(1.0, allow_none=True, config=True, help="CPUs a build's container may use.")
    pids = Int(1024, config=True, help="Most processes and threads in a build's container.")
    network = Unicode(
        "bridge",
        config=True,
        help="""The Docker network builds run on (apt and pip need one). Never the kernels'
        network, so a build cannot reach other members' kernels; "none" for offline labs
        (then only local wheels in the build folder can be installed).""",
    )
    max_builds = Int(
        2,
        config=True,
        help="""Builds running at once, lab-wide (each member has at most one); more are
        refused with a message to try again shortly.""",
    )
    log_dir = Unicode(
        "/var/lib/labnotebook/build-logs",
        config=True,
        help="""Root-only folder where the broker keeps each member's last build log per
        kernel (`labnotebook kernel logs NAME`). The hub puts it on the state volume.""",
    )
    log_bytes = Int(4 << 20, config=True, help="Most bytes of a build's log that are kept.")
    admin_group = Unicode(
        "labadmin",
        config=True,
        help="""Members of this Unix group are the lab's admins: they may publish a
        member's image as a lab-wide kernel (`labnotebook kernel publish`).""",
    )

    @validate("quota", "max_context", "memory")
    def _positive_size(self, proposal: dict[str, Any]) -> Any:
        return positive_size(proposal["value"], proposal["trait"].name)

    @validate("network")
    def _not_host(self, proposal: dict[str, Any]) -> Any:
        if proposal["value"] in ("host", "") or proposal["value"].startswith("container:"):
            raise TraitError("BuildPolicy.network must be a bridge network or 'none'")
        return proposal["value"]

    @property
    def quota_bytes(self) -> int | None:
        return size_in_bytes(self.quota)

    @property
    def context_bytes(self) -> int:
        return int(size_in_bytes(self.max_context) or DEFAULT_CONTEXT_LIMIT)

    def limits(self, disk_room: int | None) -> BuildLimits:
        quota = self.quota_bytes
        return BuildLimits(
            memory=size_in_bytes(self.memory),
            nano_cpus=int(self.cpus * 1e9) if self.cpus else None,
            pids=self.pids,
            time_limit=self.time_limit,
            network=self.network,
            log_bytes=self.log_bytes,
            disk_room=disk_room,
            quota_text=f"your {human_bytes(quota)} quota" if quota else "",
        )
