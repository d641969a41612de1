"""Prepare the hub container at every start, as root, before JupyterHub and the broker run.

`python3 -m labnotebook.hub.startup` (called by the image's entrypoint):

1. locks down the state volume and the Docker socket's folder (root only);
2. re-creates the lab's Unix accounts from the registry (the image's /etc is new each time);
3. applies the shared-folder layout and the sudo rule for lab admins;
4. makes sure a TLS certificate exists (unless PLAIN_HTTP=yes);
5. writes the system-wide Docker kernelspecs (the lab's Python kernel, and the sample kernels
   whose images the engine has), the users' Jupyter server defaults and the broker's
   configuration from the operator's settings.

Everything here is idempotent and derived from the settings and the state volume, so an
upgraded image simply writes the new version of each file.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from labnotebook.kernelspecs import bundled
from labnotebook.provisioner.errors import KernelConfigError

from . import gpu_inventory, sharing, tls, users
from .settings import (
    ADMIN_GROUP,
    BROKER_CONFIG,
    BROKER_DIR,
    BROKER_DROPINS,
    BROKER_SOCKET,
    ENGINE_SOCKET,
    FIRST_UID,
    KERNELSPEC_DIR,
    LEGACY_BROKER_OVERRIDES,
    LEGACY_BROKER_SOCKET,
    PROXY_PID_FILE,
    READONLY_DIR,
    STARTUP_WARNINGS,
    STATE_DIR,
    LabSettings,
)

log = logging.getLogger("labnotebook.startup")

SUDOERS_FILE = Path("/etc/sudoers.d/labnotebook")
SERVER_CONFIG = Path("/etc/jupyter/jupyter_server_config.json")


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def lock_down() -> None:
    """The state volume holds password hashes and keys; the engine socket is root on the host."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    os.chown(STATE_DIR, 0, 0)
    os.chmod(STATE_DIR, 0o700)
    engine_dir = ENGINE_SOCKET.parent
    if engine_dir.exists():
        os.chown(engine_dir, 0, 0)
        os.chmod(engine_dir, 0o700)
    # The broker's socket folder (the broker volume, shared read-only with kernels):
    # root-owned and writable by root only, so nobody can put a fake socket in its place;
    # readable by all so servers and kernels can connect.
    for folder in (BROKER_DIR, LEGACY_BROKER_SOCKET.parent):
        folder.mkdir(parents=True, exist_ok=True)
        os.chown(folder, 0, 0)
        os.chmod(folder, 0o755)
    # Never empty: Docker fills an empty volume from the image's folder at the mount point,
    # owner included, the first time a container mounts it, and a member's image could have
    # a folder there that the member owns. This file keeps the volume from ever being empty.
    _write(
        BROKER_DIR / "README",
        "The lab's kernel broker listens here (broker.sock). This folder is a Docker volume\n"
        "mounted read-only in every kernel container; only root may change it.\n",
    )
    # The socket's old place, for admins' habits and members' own configuration.
    LEGACY_BROKER_SOCKET.unlink(missing_ok=True)
    LEGACY_BROKER_SOCKET.symlink_to(BROKER_SOCKET)
    # No proxy runs yet: a PID file left by the previous run (`docker restart` keeps /run)
    # names some other process now, which JupyterHub would kill.
    for stale in (PROXY_PID_FILE, STATE_DIR / "jupyterhub-proxy.pid"):
        stale.unlink(missing_ok=True)


def report_warnings(warnings: list[str]) -> None:
    """What the admin must know about this start: `make up` prints the file after start."""
    text = "".join(f"- {w}\n" for w in warnings)
    _write(STARTUP_WARNINGS, text, 0o600)


def write_sudoers(nopasswd: bool) -> None:
    rule = f"%{ADMIN_GROUP} ALL=(ALL:ALL) {'NOPASSWD: ' if nopasswd else ''}ALL\n"
    text = (
        "# Written by labnotebook at every start: lab admins may use sudo in the hub.\n"
        "# Without ADMIN_SUDO_NOPASSWD=yes, sudo asks for the admin's hub password.\n" + rule
    )
    _write(SUDOERS_FILE, text, 0o440)
    subprocess.run(["visudo", "-cqf", str(SUDOERS_FILE)], check=True)


def lab_mounts(settings: LabSettings) -> list[str]:
    """The volumes every kernel mounts, where the hub has them: homes, and the readonly
    volume inside /home/shared (a mount point there too, so no kernel can rename it)."""
    return [f"{settings.homes_volume}:/home", f"{settings.readonly_volume}:{READONLY_DIR}"]


def kernel_mounts(settings: LabSettings) -> list[str]:
    """What the broker mounts in every kernel: the lab's volumes, and the broker's socket
    folder read-only (`!labnotebook kernel ...` in a cell; a Unix socket can be connected to
    on a read-only mount, and nothing in the folder can be replaced from a kernel)."""
    mounts = lab_mounts(settings)
    if settings.broker_volume:
        mounts.append(f"{settings.broker_volume}:{BROKER_DIR}:ro")
    return mounts


def kernelspec(settings: LabSettings, name: str = "python-docker") -> dict[str, Any]:
    """A bundled Docker kernelspec with the lab's settings; python-docker runs the lab's image
    (KERNEL_IMAGE), the sample kernels the image their kernelspec names. The broker is not
    among them: the provisioner finds it (image_backends.broker_socket)."""
    spec: dict[str, Any] = json.loads((bundled()[name] / "kernel.json").read_text())
    provisioner = spec.setdefault("metadata", {}).setdefault("kernel_provisioner", {})
    provisioner["provisioner_name"] = "labnotebook-docker"
    config = provisioner.setdefault("config", {})
    if name == "python-docker":
        config["image"] = settings.kernel_image
    config.update(network=settings.network, volumes=lab_mounts(settings))
    return spec


def gpu_idle_timeout(settings: LabSettings) -> float:
    """Seconds after which an idle GPU kernel is shut down: the shorter of
    GPU_KERNEL_IDLE_TIMEOUT and KERNEL_IDLE_TIMEOUT (0: as other kernels). The broker tells
    each GPU kernel's provisioner at launch (GpuPolicy.idle_timeout), whatever kernelspec
    it came from."""
    if settings.gpu_kernel_idle_timeout <= 0:
        return 0
    timeouts = [settings.gpu_kernel_idle_timeout, settings.kernel_idle_timeout]
    return min(t for t in timeouts if t > 0)


def kernelspec_image(spec: dict[str, Any]) -> str:
    return str(spec["metadata"]["kernel_provisioner"]["config"]["image"])


def image_exists(image: str) -> bool | None:
    """Whether the engine has the image; None if the engine cannot say (root only: the
    engine's socket is root's)."""
    import docker
    import docker.errors

    try:
        client = docker.DockerClient(base_url=f"unix://{ENGINE_SOCKET}", timeout=30)
    except docker.errors.DockerException as e:
        log.warning("Cannot ask the Docker engine about %s: %s", image, e)
        return None
    try:
        client.images.get(image)
        return True
    except docker.errors.ImageNotFound:
        return False
    except docker.errors.DockerException as e:
        log.warning("Cannot ask the Docker engine about %s: %s", image, e)
        return None
    finally:
        client.close()


def write_sample_kernelspecs(settings: LabSettings) -> list[str]:
    """The sample kernels (`make kernel-r`, `make kernel-gpu`) whose image the engine has, next
    to the Python one. A launcher entry for a missing image could only fail, so those go (and
    stay if the engine cannot say). Returns the images offered. An image built after the
    hub started is offered from its next start."""
    offered = []
    for name in sorted(set(bundled()) - {"python-docker"}):
        spec = kernelspec(settings, name)
        folder = KERNELSPEC_DIR.parent / name
        exists = image_exists(kernelspec_image(spec))
        if exists:
            _write(folder / "kernel.json", json.dumps(spec, indent=2) + "\n")
            offered.append(kernelspec_image(spec))
            log.info("Offering the sample kernel %s (%s)", name, kernelspec_image(spec))
        elif exists is False:
            shutil.rmtree(folder, ignore_errors=True)
    return offered


def server_config(settings: LabSettings) -> dict[str, Any]:
    """Defaults for every user's Jupyter server (a user's ~/.jupyter may override them)."""
    return {
        "ServerApp": {"default_url": "/lab"},
        "MappingKernelManager": {
            "default_kernel_name": "python-docker",
            # Idle kernels hold memory (and GPUs) in their containers: free them.
            "cull_idle_timeout": settings.kernel_idle_timeout,
            "cull_interval": 300,
            "cull_connected": True,
            "cull_busy": False,
        },
        # The hub's own Python runs the servers, not kernels: kernels run in containers.
        "KernelSpecManager": {"ensure_native_kernel": False},
        # Members' own kernelspecs (`labnotebook kernel build/env`) name only their image: the
        # lab's settings come from here, so they never go stale in a member's file. The broker
        # is found by the provisioner itself, for clients that never read this file too.
        "DockerKernelProvisioner": {
            "network": settings.network,
            "volumes": lab_mounts(settings),
        },
    }


def broker_config(settings: LabSettings, sample_images: list[str] | None = None) -> dict[str, Any]:
    """The broker's configuration from the operator's settings: data, not generated code.

    Admins add to it with files in broker.d (see BROKER_DROPINS), e.g. 50-data.json with
    {"LaunchPolicy": {"allowed_mounts": ["/data/raw:/data:ro"]}}, or a .py file with
    c.LaunchPolicy.allowed_images.append("mylab/*") to extend a list. `sample_images`: the
    sample kernels' images offered (write_sample_kernelspecs), which kernels may run too.
    """
    try:
        gpu_inventory.from_setting(",".join(settings.gpus))
    except KernelConfigError as e:
        raise SystemExit(f"GPUS: {e}") from None
    return {
        "KernelBroker": {"docker_host": f"unix://{ENGINE_SOCKET}"},
        "LaunchPolicy": {
            "network": settings.network,
            "lab_mounts": kernel_mounts(settings),
            "allowed_images": sorted(
                {"labnotebook/*", settings.kernel_image, *(sample_images or [])}
            ),
            # Only lab members (UIDs from FIRST_UID) get kernels, not the image's system
            # accounts.
            "min_uid": FIRST_UID,
            # Every kernel gets these limits (a request without one gets the cap).
            "max_memory": resolve_memory(settings.kernel_memory, eighths=1),
            "max_cpus": resolve_cpus(settings.kernel_cpus),
            "max_memory_per_user": resolve_memory(settings.member_memory, eighths=4),
        },
        "GpuPolicy": {
            "devices": list(settings.gpus),
            "member_gpus": settings.member_gpus,
            "sharing": settings.gpu_sharing,
            "inventory_image": settings.hub_image,
            "idle_timeout": gpu_idle_timeout(settings),
        },
        "JobPolicy": {
            "jobs_per_member": settings.jobs_per_member,
            "queue_per_member": settings.job_queue_per_member,
            "runner_image": settings.hub_image,
            "state_file": str(STATE_DIR / "jobs.json"),
        },
        "BuildPolicy": {
            "default_base": settings.kernel_image,
            "quota": None if settings.build_quota.lower() == "none" else settings.build_quota,
            "allow_dockerfile": settings.build_dockerfile,
            "log_dir": str(STATE_DIR / "build-logs"),
            "admin_group": ADMIN_GROUP,
        },
    }


def host_memory() -> int:
    """The host's memory in bytes (a container sees the host's /proc/meminfo)."""
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


def resolve_memory(setting: str, eighths: int) -> str:
    """A size setting, or "auto": that many eighths of the host's memory, at least 1 GiB."""
    if setting.strip().lower() != "auto":
        return setting.strip()
    mib = max(1024, host_memory() * eighths // 8 // (1 << 20))
    return f"{mib}m"


def resolve_cpus(setting: str) -> float:
    """A CPU count, or "auto": half the host's CPUs, at least 1 (never more than the host
    has, which Docker would refuse)."""
    available = os.cpu_count() or 1
    wanted = max(1.0, available / 2) if setting.strip().lower() == "auto" else float(setting)
    if wanted <= 0:
        raise SystemExit(f"KERNEL_CPUS must be a positive number or auto; got {setting!r}")
    return min(wanted, float(available))


def prepare_broker_dropins() -> list[str]:
    """The admin's drop-in folder; an old single overrides file moves into it."""
    BROKER_DROPINS.mkdir(mode=0o700, exist_ok=True)
    if LEGACY_BROKER_OVERRIDES.is_file() and not LEGACY_BROKER_OVERRIDES.is_symlink():
        target = BROKER_DROPINS / "50-broker_config.py"
        if not target.exists():
            os.replace(LEGACY_BROKER_OVERRIDES, target)
            return [f"Moved {LEGACY_BROKER_OVERRIDES} to {target} (broker.d is read in order)."]
    return []


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s [labnotebook] %(message)s"
    )
    if os.geteuid() != 0:
        sys.exit("labnotebook.hub.startup must run as root (it is the hub image's entrypoint).")
    settings = LabSettings.from_env()
    lock_down()
    members, warnings = users.restore_all(settings.private_homes)
    log.info("Restored %d lab account(s) from the registry", len(members))
    warnings += sharing.apply_layout()
    warnings += prepare_broker_dropins()
    report_warnings(warnings)
    write_sudoers(settings.admin_sudo_nopasswd)
    if not settings.plain_http:
        cert = tls.certificate(settings.tls_hostnames)
        log.info("TLS certificate: %s%s", cert.cert, " (self-signed)" if cert.self_signed else "")
    _write(KERNELSPEC_DIR / "kernel.json", json.dumps(kernelspec(settings), indent=2) + "\n")
    samples = write_sample_kernelspecs(settings)
    _write(SERVER_CONFIG, json.dumps(server_config(settings), indent=2) + "\n")
    _write(BROKER_CONFIG, json.dumps(broker_config(settings, samples), indent=2) + "\n", 0o600)


if __name__ == "__main__":
    main()
