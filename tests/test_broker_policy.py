"""The kernel broker's launch policy alone (`LaunchPolicy.admit`), a pure function of
(peer, request, configuration): no Docker, no root. Also what DockerEngine sends to Docker."""

from __future__ import annotations

import dataclasses
import inspect
import os
import pwd
import re
import subprocess
from typing import Any

import docker
import docker.errors
import pytest
from labnotebook.hub.broker_policy import REVIEWED_FIELDS, LaunchPolicy, Peer
from labnotebook.provisioner import labels as L
from labnotebook.provisioner.engine import DockerEngine
from labnotebook.provisioner.errors import (
    KernelConfigError,
    PermissionRefused,
)
from labnotebook.provisioner.gpus import GpuRequest
from labnotebook.provisioner.identity import KernelIdentity
from labnotebook.provisioner.mounts import Mount
from labnotebook.provisioner.request import LaunchRequest
from labnotebook.provisioner.spec import KernelContainerSpec

from .broker_fixtures import (
    full_spec,
    kernel_spec,
)
from .broker_helpers import NOBODY, make_policy, needs_nobody, user_peer

# == the launch policy ========================================================================


def container(policy: LaunchPolicy, peer: Peer, request: dict[str, Any]) -> KernelContainerSpec:
    """What the broker's op_launch makes of `request`: admitted, then one container spec."""
    return policy.container_for(peer, policy.admit(peer, request))


def test_every_request_field_is_reviewed() -> None:
    """The broker's reviewed fields *are* the request type: a new LaunchRequest field must be
    reviewed in broker_policy before members get it."""
    assert LaunchRequest.field_names() == set(REVIEWED_FIELDS)


@pytest.mark.parametrize(
    ("field", "value"),
    [("identity", {"uid": 0}), ("name", "forged"), ("network", "host"), ("allow_root", True)],
)
def test_what_the_broker_decides_cannot_be_requested(field: str, value: Any) -> None:
    with pytest.raises(PermissionRefused, match=f"does not accept '{field}'"):
        make_policy().admit(user_peer(), kernel_spec(**{field: value}))


def test_docker_engine_never_asks_for_privileges() -> None:
    """What DockerEngine sends to Docker: no privileges, namespaces, capabilities or devices."""
    sent: dict[str, Any] = {}

    class Api:
        def create_host_config(self, **kwargs: Any) -> dict[str, Any]:
            sent["host_config_kwargs"] = kwargs
            return dict(docker.types.HostConfig(version="1.41", **kwargs))

        def create_container(self, image: str, **kwargs: Any) -> dict[str, str]:
            sent["container_kwargs"] = kwargs
            return {"Id": "c0ffee"}

    engine = DockerEngine()
    engine._api = Api()  # type: ignore[assignment]
    spec = dataclasses.replace(
        full_spec(),
        identity=KernelIdentity("u", 1000, 1000, "/home/u", (1000, 1001), {1000: "u", 1001: "x"}),
        mounts=[Mount("homes", "/home")],
        allow_root=False,
    )
    engine._create(spec, GpuRequest(count=-1))
    host = sent["host_config_kwargs"]
    assert set(host) <= {
        "mounts", "network_mode", "init", "mem_limit", "nano_cpus", "shm_size", "pids_limit",
        "group_add", "device_requests", "port_bindings", "security_opt", "cap_drop",
        "memswap_limit", "oom_score_adj", "log_config",
    }  # fmt: skip
    assert host["security_opt"] == ["no-new-privileges:true"]
    assert host["cap_drop"] == ["ALL"] and host["group_add"] == ["1001"]
    assert [r["Capabilities"] for r in host["device_requests"]] == [[["gpu"]]]
    assert not {"privileged", "cap_add", "devices", "pid_mode", "ipc_mode", "userns_mode"} & set(
        sent["container_kwargs"]
    )
    # And the engine's source has no way to ask for them at all.
    source = inspect.getsource(DockerEngine)
    for word in ("privileged", "cap_add", "devices=", "pid_mode", "userns_mode", "ipc_mode"):
        assert word not in source


@needs_nobody
def test_identity_name_labels_and_network_come_from_the_broker() -> None:
    request = kernel_spec(labels={"team": "ml", "traefik.enable": "true"})
    request["env"] = {"HOME": "/root", "USER": "root", "MPLBACKEND": "agg"}
    spec = container(make_policy(network="labnet", allowed_labels=["team"]), user_peer(), request)
    assert NOBODY is not None
    assert (spec.identity.uid, spec.identity.gid) == (NOBODY.pw_uid, NOBODY.pw_gid)
    assert spec.identity.username == "nobody" and spec.allow_root is False
    assert spec.network == "labnet"
    assert spec.name == f"labnotebook-nobody-{request['kernel_id']}"
    assert spec.labels[L.OWNER_UID] == str(NOBODY.pw_uid)
    assert spec.labels[L.OWNER] == "nobody"
    assert spec.labels[L.ROLE] == L.KERNEL_ROLE
    assert spec.labels[L.SERVER] == L.server_identity(os.getpid())
    assert spec.labels["team"] == "ml"
    assert "traefik.enable" not in spec.labels  # could make a reverse proxy route to it
    assert spec.env["HOME"] == NOBODY.pw_dir and spec.env["USER"] == "nobody"
    assert spec.env["MPLBACKEND"] == "agg"
    assert spec.pids_limit == 4096  # the default cap applies when nothing was asked


def test_root_and_system_accounts_are_refused() -> None:
    daemon = pwd.getpwnam("daemon")
    with pytest.raises(PermissionRefused, match=r"UID \d+ \(daemon\) is a system account"):
        make_policy().admit(Peer(1, daemon.pw_uid, daemon.pw_gid), kernel_spec())
    assert container(make_policy(min_uid=1), Peer(1, daemon.pw_uid, 1), kernel_spec()).identity.uid
    root = Peer(os.getpid(), 0, 0)
    with pytest.raises(PermissionRefused, match="does not start kernels for root"):
        make_policy().admit(root, kernel_spec())
    spec = container(make_policy(allow_root=True), root, kernel_spec())
    assert spec.identity.uid == 0 and spec.allow_root is True


@needs_nobody
def test_mounts_are_the_labs_plus_the_allowed_ones_only() -> None:
    policy = make_policy(
        lab_mounts=["homes:/home"],
        allowed_mounts=["datasets:/data:ro", "/srv/scratch/{username}:/scratch", "shared:/shared"],
    )

    def mounts(*requested: dict[str, Any]) -> list[tuple[str, str, bool]]:
        spec = container(policy, user_peer(), kernel_spec(mounts=list(requested)))
        return [(m.source, m.target, m.read_only) for m in spec.mounts]

    assert mounts() == [("homes", "/home", False)]
    assert mounts({"source": "homes", "target": "/home", "read_only": True}) == [
        ("homes", "/home", True)
    ]
    assert mounts(
        {"source": "datasets", "target": "/data", "read_only": True},
        {"source": "/srv/scratch/nobody", "target": "/scratch/", "read_only": False},
        {"source": "shared", "target": "/shared", "read_only": True},  # stricter: fine
    ) == [
        ("homes", "/home", False),
        ("datasets", "/data", True),
        ("/srv/scratch/nobody", "/scratch", False),
        ("shared", "/shared", True),
    ]
    refused = [
        ({"source": "datasets", "target": "/data"}, "may only be mounted read-only"),
        ({"source": "/", "target": "/host", "read_only": True}, "may not mount '/'"),
        ({"source": "/var/run/docker.sock", "target": "/d.sock"}, "may not mount"),
        ({"source": "/srv/scratch/root", "target": "/scratch"}, "may not mount"),
        ({"source": "/srv/scratch/nobody/../root", "target": "/scratch"}, "may not mount"),
        ({"source": "other", "target": "/data", "read_only": True}, "may not mount 'other'"),
        ({"source": "datasets", "target": "/elsewhere", "read_only": True}, "may not mount"),
        ({"source": "other", "target": "/home"}, "already mounts something there"),
        ({"source": "shared", "target": "/shared", "propagation": "shared"}, "and nothing else"),
    ]
    for mount, message in refused:
        with pytest.raises(PermissionRefused, match=re.escape(message)):
            mounts(mount)


def test_working_dir_inside_a_mount_is_entered_by_the_kernel_as_the_user() -> None:
    root_policy = make_policy(lab_mounts=["homes:/home"], allow_root=True)
    for requested, docker_dir, entered in [
        (None, "/root", None),  # never the image's WORKDIR: a member's image may set anything
        ("/root", "/root", None),  # the home itself
        ("/opt/work", "/root", "/opt/work"),  # even the container's own files: as the user
        ("/home/bob/x", "/root", "/home/bob/x"),
        ("/proc/self/root/home/bob/x", "/root", "/proc/self/root/home/bob/x"),
        ("/proc/thread-self/cwd/x", "/root", "/proc/thread-self/cwd/x"),
        ("/dev/fd/3/x", "/root", "/dev/fd/3/x"),
        ("/dev/stdin/x", "/root", "/dev/stdin/x"),
        ("//home/bob/x", "/root", "/home/bob/x"),
        ("/home/../home/bob", "/root", "/home/bob"),
    ]:
        request = kernel_spec(working_dir=requested)
        if requested is None:
            del request["working_dir"]
        spec = container(root_policy, Peer(1, 0, 0), request)
        assert spec.working_dir == docker_dir, requested
        if entered is None:
            assert spec.argv == ["sleep", "infinity"]
        else:
            assert spec.argv == [*root_policy.cwd_shim, entered, "sleep", "infinity"]
    shim = subprocess.run(
        [*root_policy.cwd_shim, "/nonexistent-dir", "sh", "-c", "pwd"],
        capture_output=True, text=True, cwd="/", check=True,
    )  # fmt: skip
    assert shim.stdout.strip() == "/" and "cannot enter /nonexistent-dir" in shim.stderr
    shim = subprocess.run([*root_policy.cwd_shim, "/tmp", "pwd"], capture_output=True, text=True)
    assert shim.stdout.strip() == "/tmp"


@pytest.mark.parametrize(
    "field",
    ["privileged", "cap_add", "devices", "pid_mode", "ipc_mode", "network_mode",
     "security_opt", "userns_mode", "volumes_from", "binds", "runtime", "sysctls"],
)  # fmt: skip
def test_fields_the_spec_does_not_have_are_refused(field: str) -> None:
    with pytest.raises(PermissionRefused, match=f"does not accept '{field}'"):
        make_policy(allow_root=True).admit(Peer(1, 0, 0), kernel_spec(**{field: True}))


@needs_nobody
def test_images_pull_policies_and_ports() -> None:
    policy = make_policy(allowed_images=["labnotebook/*", "ghcr.io/ourlab/*:2024*"])
    for image in ("labnotebook/kernel-python:latest", "ghcr.io/ourlab/r:2024.1"):
        assert policy.admit(user_peer(), kernel_spec(image=image)).image == image
    for image in ("debian:bookworm", "labnotebook-evil/x", "evil.io/labnotebook/x", "sha256:1f"):
        with pytest.raises(PermissionRefused, match="not one of this lab's kernel images"):
            policy.admit(user_peer(), kernel_spec(image=image))
    for pull in ("always", "if-not-present"):
        with pytest.raises(PermissionRefused, match=f"pull policy '{pull}' is not allowed"):
            policy.admit(user_peer(), kernel_spec(pull_policy=pull))
    opened = make_policy(allowed_pull_policies=["never", "if-not-present"])
    assert opened.admit(user_peer(), kernel_spec(pull_policy="if-not-present")).pull_policy
    with pytest.raises(PermissionRefused, match="never on ports published on the host"):
        policy.admit(user_peer(), kernel_spec(publish_ports=True))


@needs_nobody
def test_limits_are_capped_refused_or_clamped() -> None:
    caps = {"max_memory": "2g", "max_cpus": 1.5, "max_shm_size": "1g", "max_pids": 512}
    refuse, clamp = make_policy(**caps), make_policy(over_limit="clamp", **caps)
    spec = refuse.admit(user_peer(), kernel_spec(pids_limit=-1))
    assert (spec.memory, spec.nano_cpus, spec.shm_size, spec.pids_limit) == (
        2 << 30,
        1_500_000_000,
        1 << 30,
        512,
    )
    asked = {"memory": 1 << 30, "nano_cpus": 500_000_000, "shm_size": 64 << 20, "pids_limit": 64}
    spec = refuse.admit(user_peer(), kernel_spec(**asked))
    assert (spec.memory, spec.nano_cpus, spec.shm_size, spec.pids_limit) == tuple(asked.values())
    too_much = [
        ({"memory": 64 << 30}, "asks for 64 GiB of memory, but this lab allows at most 2 GiB"),
        ({"nano_cpus": 4_000_000_000}, "asks for 4 CPUs, but this lab allows at most 1.5 CPUs"),
        ({"shm_size": 8 << 30}, "8 GiB of /dev/shm"),
        ({"pids_limit": 100_000}, "at most 512 processes"),
    ]
    for request, message in too_much:
        with pytest.raises(PermissionRefused, match=re.escape(message)):
            refuse.admit(user_peer(), kernel_spec(**request))
        spec = clamp.admit(user_peer(), kernel_spec(**request))
        assert (spec.memory, spec.nano_cpus, spec.shm_size, spec.pids_limit) == (
            2 << 30,
            1_500_000_000,
            1 << 30,
            512,
        )


@needs_nobody
def test_gpus_are_the_only_devices_and_can_be_switched_off() -> None:
    spec = make_policy().admit(user_peer(), kernel_spec(gpus={"count": 0, "device_ids": ["0"]}))
    assert spec.gpus == GpuRequest(device_ids=("0",))
    assert make_policy().admit(user_peer(), kernel_spec()).gpus == "auto"
    off = make_policy(allow_gpus=False)
    assert off.admit(user_peer(), kernel_spec()).gpus == GpuRequest()
    with pytest.raises(PermissionRefused, match="does not give kernels GPUs"):
        off.admit(user_peer(), kernel_spec(gpus={"count": -1, "device_ids": []}))
    with pytest.raises(KernelConfigError, match="Invalid GPU device IDs"):
        make_policy().admit(user_peer(), kernel_spec(gpus={"device_ids": ["0,1;rm"]}))


@needs_nobody
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"argv": []}, "'argv' must be a non-empty list"),
        ({"argv": "python3 -m ipykernel"}, "'argv' must be a non-empty list"),
        ({"kernel_id": "../../etc"}, "kernel_id"),
        ({"kernel_id": None}, "lacks kernel_id"),
        ({"connection": {"key": "k"}}, "shell_port must be a port number"),
        ({"env": {"A=B": "c"}}, "Invalid environment variable name"),
        ({"env": {"A": 1}}, "must be text"),
        ({"memory": "8g"}, "'memory' must be a whole number"),
        ({"memory": True}, "'memory' must be a whole number"),
        ({"mounts": "homes:/home"}, "'mounts' must be a list"),
        ({"labels": {"a": 1}}, "'labels' must be an object of text"),
        ({"working_dir": "relative"}, "absolute path"),
        ({"init": "yes"}, "'init' must be true or false"),
        ({"gpus": "all"}, "Invalid gpus request"),
    ],
)
def test_malformed_specs_get_clear_errors(change: dict[str, Any], message: str) -> None:
    with pytest.raises(KernelConfigError, match=re.escape(message)):
        make_policy().admit(user_peer(), kernel_spec(**change))
