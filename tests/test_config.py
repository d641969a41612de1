"""Settings are validated when the provisioner is created, with messages that say what to fix."""

from __future__ import annotations

import pytest
from jupyter_client.kernelspec import KernelSpec
from labnotebook.provisioner import DockerKernelProvisioner
from labnotebook.provisioner.errors import KernelConfigError
from labnotebook.provisioner.gpus import GpuRequest, engine_has_gpus, parse_gpus, resolve_gpus
from labnotebook.provisioner.identity import KernelIdentity, merged_group, merged_passwd
from labnotebook.provisioner.mounts import Mount, container_path
from traitlets import TraitError
from traitlets.config import Config


def make(**config: object) -> DockerKernelProvisioner:
    spec = KernelSpec(argv=["python3"], display_name="t", language="python")
    return DockerKernelProvisioner(kernel_id="k", kernel_spec=spec, **config)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"memory": "-1g"}, "memory must be a positive size"),
        ({"memory": "lots"}, "memory must be a positive size"),
        ({"shm_size": 0}, "shm_size must be a positive size"),
        ({"cpus": -2.0}, "cpus must be a positive number"),
        ({"pids_limit": 0}, "pids_limit must be positive"),
        ({"gpus": "some"}, "Unknown gpus value"),
        ({"gpus": -1}, "gpus must not be negative"),
        ({"volumes": ["/data"]}, "is not SOURCE:TARGET"),
        ({"volumes": ["data:/d:rx"]}, "the mode must be 'ro' or 'rw'"),
        ({"volumes": ["bad name:/d"]}, "neither an absolute host path nor a valid volume name"),
        ({"volumes": ["{nope}:/d"]}, "unknown placeholder"),
        ({"image_pull_policy": "sometimes"}, "image_pull_policy"),
        ({"cpus": "two"}, "cpus"),
        ({"connect_via": "carrier-pigeon"}, "connect_via"),
    ],
)
def test_bad_settings_are_refused_with_a_message(config: dict, message: str) -> None:
    with pytest.raises(TraitError, match=message):
        make(**config)


def test_settings_come_from_jupyter_config_files_and_kernelspec_wins() -> None:
    config = Config()
    config.DockerKernelProvisioner.memory = "4g"
    config.DockerKernelProvisioner.cpus = 2.0
    spec = KernelSpec(argv=["python3"], display_name="t", language="python")
    p = DockerKernelProvisioner(kernel_id="k", kernel_spec=spec, config=config, cpus=1.5)
    assert p.memory == "4g"
    assert p.cpus == 1.5


async def test_missing_image_is_a_clear_error() -> None:
    with pytest.raises(KernelConfigError, match="names no image"):
        await make(uid=4242, username="u", home="/home/u").pre_launch()


async def test_root_is_refused_unless_allowed() -> None:
    with pytest.raises(PermissionError, match="Refusing to run a kernel container as root"):
        make(image="x", uid=0, username="root", home="/root").identity()
    assert (
        make(image="x", uid=0, username="root", home="/root", allow_root=True).identity().uid == 0
    )


def test_gpu_settings() -> None:
    assert parse_gpus("none") == GpuRequest()
    assert parse_gpus("all").device_requests()[0]["Count"] == -1
    assert parse_gpus(2).device_requests()[0]["Count"] == 2
    assert parse_gpus(["0", "GPU-abc"]).device_requests()[0]["DeviceIDs"] == ["0", "GPU-abc"]
    assert parse_gpus("auto") == "auto"
    assert resolve_gpus("auto", {"Runtimes": {"runc": {}}}) == GpuRequest()
    assert resolve_gpus("auto", {"Runtimes": {"nvidia": {}}}).count == -1
    cdi = {"DiscoveredDevices": [{"Source": "cdi", "ID": "nvidia.com/gpu=all"}]}
    assert engine_has_gpus(cdi)


def test_passwd_and_group_merge_replace_clashes_and_keep_the_image_s_own() -> None:
    me = KernelIdentity(
        "alice", 1000, 1000, "/home/alice", (1000, 2000), {1000: "alice", 2000: "lab"}
    )
    passwd = merged_passwd(
        "root:x:0:0:root:/root:/bin/bash\nubuntu:x:1000:1000::/home/ubuntu:/bin/sh\n", me
    )
    assert "ubuntu" not in passwd
    assert "alice:x:1000:1000:alice:/home/alice:/bin/bash" in passwd
    assert passwd.startswith("root:")
    group = merged_group("root:x:0:\nusers:x:100:\nlab:x:999:\n", me)
    assert "lab:x:2000:alice" in group
    assert "lab:x:999" not in group
    assert "users:x:100:" in group


def test_notebook_folder_is_translated_into_the_container() -> None:
    mounts = [Mount.parse("homes:/home"), Mount.parse("/srv/data:/data:ro")]
    assert container_path("/home/alice/project", mounts, {}) == "/home/alice/project"
    assert container_path("/srv/data/raw", mounts, {}) == "/data/raw"
    assert container_path("/mnt/lab/alice", mounts, {"/mnt/lab": "/home"}) == "/home/alice"
    assert container_path("/tmp/elsewhere", mounts, {}) is None
