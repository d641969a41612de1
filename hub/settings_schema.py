"""Every setting `make up` takes, declared once: its name, type, default and help.

Everything else reads this table:

- hub/lab.sh applies the defaults (`python3 hub/settings_schema.py env`) and hands the hub
  container the settings it reads;
- make takes the names from it, and the defaults of the images it builds (`... make`,
  generated into build/settings.mk);
- the hub container reads its settings with `settings.LabSettings.from_env`, by type;
- docs/settings.md is this table as a reference (`make docs`; a test keeps them equal).

`make up` runs this file by path on a fresh clone, before anything is installed, so it uses the
standard library only.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import string
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

if __package__:
    from labnotebook.provisioner.defaults import KERNEL_IMAGE
else:  # run by path: labnotebook may not be installed; the file is next door in both layouts
    _defaults_file = Path(__file__).resolve().parent.parent / "provisioner" / "defaults.py"
    _spec = importlib.util.spec_from_file_location("labnotebook_defaults", _defaults_file)
    assert _spec is not None and _spec.loader is not None, _defaults_file
    _defaults = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_defaults)
    KERNEL_IMAGE = _defaults.KERNEL_IMAGE

Kind = Literal["text", "flag", "seconds", "count", "size", "cpus", "list", "path"]

KIND_TEXT: dict[Kind, str] = {
    "text": "text",
    "flag": "`yes` or `no`",
    "seconds": "seconds",
    "count": "whole number",
    "size": 'size (`"512m"`, `"8g"`)',
    "cpus": "CPUs",
    "list": "comma-separated",
    "path": "host path",
}
"""How the reference (docs/settings.md) names each kind of value."""


@dataclass(frozen=True)
class Setting:
    """One variable of `make up NAME=value`."""

    name: str
    default: str
    """What an unset or empty value becomes; `$LAB` stands for the LAB setting's value. Empty:
    the setting is off, or lab.sh works it out (its help says how)."""
    kind: Kind
    """How the hub reads it (a flag is on for yes, true, on or 1), and how the reference
    names it."""
    group: str
    """The heading it is listed under in the reference."""
    help: str
    field: str = ""
    """The `settings.LabSettings` attribute the hub container reads it into; empty: only
    hub/lab.sh, on the host, uses it (the container is not given it)."""
    missing: Literal["refuse", "default", "empty"] = "refuse"
    """What the hub container does when it is given no value for a setting with a default:
    refuse to start (it was not started by `make up`), or take the default or an empty value
    (a setting added after the others, which an older `make up` does not pass)."""
    make_default: bool = False
    """make needs the default itself (the images it builds before lab.sh runs)."""
    kept: bool = True
    """Written to the lab's settings file when given, so every later command of the lab uses
    it. False: it names what one command acts on (an archive, a member, a folder)."""

    def resolved(self, environ: Mapping[str, str], earlier: Mapping[str, str]) -> str:
        """The value from `environ`, or the default (with the value of the LAB it names, one of
        the `earlier` settings)."""
        return environ.get(self.name) or string.Template(self.default).substitute(earlier)


HUB, VOLUMES, ACCESS, MEMBERS, IDLE, RESOURCES, GPUS, BUILDS, JOBS, BACKUPS, DATA, COMMANDS = (
    "The lab and its hub",
    "Docker network and volumes",
    "HTTPS and sign-in",
    "Members' homes and rights",
    "Idle servers and kernels",
    "Resource bounds",
    "GPUs",
    "Kernel images members build",
    "Notebook jobs",
    "Backups",
    "Data in and out: imports and the move from the original labnotebook",
    "Commands: their settings file, logs and waiting for the hub",
)

SETTINGS: tuple[Setting, ...] = (
    # LAB first: the defaults after it are derived from its value.
    Setting("LAB", "labnotebook", "text", HUB, field="name", help="""The lab's name: its hub
        container, network and volumes are named after it, so a second lab (the tests') can
        run beside it. Give the same LAB to every `make` command of a lab."""),
    Setting("LAB_TITLE", "$LAB", "text", HUB, field="title", help="""The lab's name on every hub
        page and in the browser's title bar, e.g. "Smith Lab notebooks"."""),
    Setting("PORT", "8000", "count", HUB, help="The host port the hub is published on."),
    Setting("BIND", "", "text", HUB, help="""The host address the port is published on, e.g.
        127.0.0.1. Empty: all of the host's addresses."""),
    Setting("HUB_HOSTNAME", "$LAB", "text", HUB, help="The hub container's host name."),
    Setting("PUBLIC_URL", "", "text", HUB, field="public_url", help="""How members reach the
        hub: the URL `make up` prints. Empty: https://$(hostname -f):PORT/."""),
    Setting("HUB_IMAGE", "labnotebook/hub:latest", "text", HUB, field="hub_image",
        missing="default", make_default=True, help="""The hub's image; `make up` builds it
        when it is missing. The broker also reads the host's GPUs from NVML in it."""),
    Setting("KERNEL_IMAGE", KERNEL_IMAGE, "text", HUB, field="kernel_image", make_default=True,
        help="""The image of the lab's default Python kernel, and what a member's kernel build
        starts from; `make up` builds it when it is missing."""),
    Setting("DOCKER_SOCKET", "/var/run/docker.sock", "path", HUB, help="""The Docker engine's
        socket on the host; only the root-owned broker in the hub uses it."""),
    Setting("NETWORK", "$LAB", "text", VOLUMES, field="network",
        help="The Docker network the hub and the kernel containers share."),
    Setting("HOMES_VOLUME", "$LAB-homedirs", "text", VOLUMES, field="homes_volume",
        help="The volume mounted at /home in the hub and in every kernel container."),
    Setting("STATE_VOLUME", "$LAB-state", "text", VOLUMES, help="""The hub's state: its
        database, cookie secret, certificates, user registry and the admin's additions."""),
    Setting("READONLY_VOLUME", "$LAB-readonly", "text", VOLUMES, field="readonly_volume",
        help="""The volume mounted at /home/shared/readonly in the hub and every kernel. Being a
        mount point, it cannot be renamed or replaced by members, who may otherwise rename
        anything in /home/shared."""),
    Setting("BROKER_VOLUME", "$LAB-broker", "text", VOLUMES, field="broker_volume",
        missing="empty", help="""The volume holding the kernel broker's socket, mounted
        read-only in every kernel (`!labnotebook kernel ...` in a cell). It holds no data, so
        it is not backed up. (A hub container an older `make up` started without it
        gives kernels no broker socket.)"""),
    Setting("HOMES_PATH", "", "path", VOLUMES, help="""A host folder for the homes, ideally a
        file system of its own (a member who fills it then cannot fill the disk holding
        Docker, the hub's database and its logs). Empty: a volume in Docker's own storage."""),
    Setting("SSL_CERT", "", "path", ACCESS, help="""Your certificate (full chain), mounted
        read-only; give SSL_KEY too. Empty: a self-signed certificate generated once."""),
    Setting("SSL_KEY", "", "path", ACCESS, help="The key of SSL_CERT, mounted read-only."),
    Setting("PLAIN_HTTP", "", "flag", ACCESS, field="plain_http", help="""yes: serve plain HTTP.
        Passwords then cross the network in clear text: only behind a proxy that terminates
        TLS."""),
    Setting("TLS_HOSTNAMES", "labnotebook,localhost", "list", ACCESS, field="tls_hostnames",
        help="""The names the generated self-signed certificate is valid for (127.0.0.1 and ::1
        are always included)."""),
    Setting("SUBDOMAIN_HOST", "", "text", ACCESS, field="subdomain_host", help="""e.g.
        https://lab.example.org: each member's server gets its own origin
        (alice.lab.example.org), so a page a member's server serves cannot act on the hub or
        on other members' servers in a logged-in visitor's browser. Needs wildcard DNS and a
        wildcard certificate. Empty: every server shares the hub's origin."""),
    Setting("CLIENT_ADDRESS_HEADER", "X-Forwarded-For", "text", ACCESS,
        field="client_address_header", help="""The header naming a request's client address
        for the sign-up and login rate limits: X-Forwarded-For (appended by the hub's own
        proxy), or e.g. X-Real-IP when a reverse proxy in front of the lab sets it."""),
    Setting("TRUSTED_PROXIES", "0", "count", ACCESS, field="trusted_proxies", help="""Reverse
        proxies of the lab's in front of the hub's port, each appending to X-Forwarded-For
        (0: browsers connect to the port directly)."""),
    Setting("ADMIN_SUDO_NOPASSWD", "", "flag", MEMBERS, field="admin_sudo_nopasswd",
        help="""yes: lab admins use sudo in the hub without typing their password. no: sudo asks
        for the admin's hub password."""),
    Setting("PRIVATE_HOMES", "", "flag", MEMBERS, field="private_homes", help="""yes: new homes
        are 0700 (private). no: 0750, readable but not writable by the lab. Each member can
        change their own with `chmod 700 ~` or `chmod 750 ~`; the hub never resets an existing
        home's mode."""),
    Setting("KERNEL_IDLE_TIMEOUT", "7200", "seconds", IDLE, field="kernel_idle_timeout",
        help="""Seconds after which an idle kernel is shut down, even with its notebook still
        open in a forgotten browser tab (its memory and GPU are freed; files are kept). 0:
        never."""),
    Setting("SERVER_IDLE_TIMEOUT", "28800", "seconds", IDLE, field="server_idle_timeout",
        help="""Seconds without activity after which a member's server (and its kernels) is
        stopped. 0: never."""),
    Setting("SERVER_MAX_AGE", "0", "seconds", IDLE, field="server_max_age",
        help="Seconds after which a server is stopped even if active. 0: never."),
    Setting("KERNEL_MEMORY", "auto", "size", RESOURCES, field="kernel_memory", help="""Every
        kernel's memory limit, swap included, e.g. "8g". auto: an eighth of the host's
        memory, at least 1 GiB."""),
    Setting("KERNEL_CPUS", "auto", "cpus", RESOURCES, field="kernel_cpus", help="""Every
        kernel's CPU limit, e.g. "4". auto: half the host's CPUs, at least 1."""),
    Setting("MEMBER_MEMORY", "auto", "size", RESOURCES, field="member_memory", help="""The most
        kernel memory one member may hold at once (the sum of their kernels' limits). auto:
        half the host's memory."""),
    Setting("HUB_MEMORY", "auto", "size", RESOURCES, help="""Memory (no swap) of the hub
        container, where members' servers and terminals run. auto: a quarter of the host's
        memory."""),
    Setting("HUB_PIDS", "8192", "count", RESOURCES,
        help="Processes and threads in the hub container."),
    Setting("LOG_MAX_SIZE", "50m", "size", RESOURCES,
        help="The hub container's log, kept in 3 files of at most this size."),
    Setting("GPUS", "", "list", GPUS, field="gpus", help="""The host's GPUs the lab hands
        out, by index or UUID, e.g. 0,1,2,3 (`nvidia-smi -L` lists them; MIG instances as
        0:1 or MIG-...). Each GPU kernel gets GPUs of its own. Empty: the lab has no GPUs, and
        GPU kernels are refused with a message that says so."""),
    Setting("MEMBER_GPUS", "", "count", GPUS, field="member_gpus", help="""How many GPUs one
        member's kernels may hold at once. Empty: half the lab's GPUs, and at least 1."""),
    Setting("GPU_KERNEL_IDLE_TIMEOUT", "3600", "seconds", GPUS,
        field="gpu_kernel_idle_timeout", missing="default", help="""Seconds before an idle
        GPU kernel (any kernelspec that asks for GPUs, the lab's or a member's own) is shut
        down, giving its GPUs back (0: as other kernels, KERNEL_IDLE_TIMEOUT)."""),
    Setting("GPU_SHARING", "", "flag", GPUS, field="gpu_sharing", help="""yes: when no GPU
        is free, a GPU kernel shares the least-loaded one (its member is told). no: it is
        refused at once, with who holds each GPU."""),
    Setting("BUILD_QUOTA", "10g", "size", BUILDS, field="build_quota", missing="default",
        help="""The disk one member's kernel images (`labnotebook kernel build`) may add over
        their bases, e.g. "20g". none: no quota."""),
    Setting("BUILD_DOCKERFILE", "", "flag", BUILDS, field="build_dockerfile", help="""yes:
        members may build kernel images from a Dockerfile, whose RUN steps the engine's builder
        runs as root with Docker's default capabilities (the README says what that trusts
        members with). no: requirements.txt, apt.txt and postBuild only."""),
    Setting("JOBS_PER_MEMBER", "2", "count", JOBS, field="jobs_per_member", missing="default",
        help="""Notebook jobs (`labnotebook jobs submit`) one member may have running at once;
        more wait in her queue, oldest first. Each job's kernel counts against her
        MEMBER_MEMORY and MEMBER_GPUS like her other kernels."""),
    Setting("JOB_QUEUE_PER_MEMBER", "10", "count", JOBS, field="job_queue_per_member",
        missing="default", help="""Notebook jobs one member may have waiting at once; a
        submit beyond it is refused with a message."""),
    Setting("BACKUP_DIR", "backups", "path", BACKUPS,
        help="The folder `make backup` writes its archives to."),
    Setting("BACKUP_IMAGES", "recorded", "text", BACKUPS, help="""The kernel images a backup
        carries, so that notebooks re-run after a restore onto another host: `recorded`, those
        that members' notebooks record (and the lab's kernel image); `members`, every image
        members built or published too; `none`."""),
    Setting("BACKUP_KEEP", "7", "count", BACKUPS, help="""The archives of the nightly backup
        (`make backup-schedule`) kept in BACKUP_DIR; older ones are removed."""),
    Setting("BACKUP_AT", "03:00", "text", BACKUPS, help="""When the nightly backup runs, as
        the host's local time HH:MM (`make backup-schedule`)."""),
    Setting("RESTIC_REPOSITORY", "", "text", BACKUPS, help="""An off-host copy: after each
        backup, restic (Debian's `restic` package) stores BACKUP_DIR in this repository, e.g.
        sftp:backup@nas.example.org:/labnotebook or s3:s3.example.org/bucket. Empty: none."""),
    Setting("RESTIC_PASSWORD_FILE", "", "path", BACKUPS, help="""The root-only file with the
        restic repository's password (needed with RESTIC_REPOSITORY)."""),
    Setting("BACKUP", "", "path", BACKUPS, kept=False,
        help="The archive `make restore` restores."),
    Setting("MEMBER", "", "text", BACKUPS, kept=False, help="""`make restore BACKUP=...
        MEMBER=alice`: restore only alice's home, into the running lab, leaving everyone
        else's untouched."""),
    Setting("FORCE", "", "flag", BACKUPS, kept=False, help="""yes: `make restore` replaces
        the lab's existing volumes."""),
    Setting("SRC", "", "path", DATA, kept=False, help="""`make import`: the host folder or
        file to copy into the lab."""),
    Setting("DEST", "", "text", DATA, kept=False, help="""`make import`: where under
        /home/shared it goes, e.g. readonly/atlas-v2."""),
    Setting("FROM_HOMES", "", "text", DATA, kept=False, help="""`make migrate`: the volume
        holding the original labnotebook's /home (labnotebook-homedirs)."""),
    Setting("FROM_ETC", "", "text", DATA, kept=False, help="""`make migrate`: the volume
        holding the original labnotebook's /etc (labnotebook-etc)."""),
    Setting("SETTINGS_FILE", "lab-settings/$LAB.env", "path", COMMANDS, kept=False,
        help="""The lab's settings file (root-only, git-ignored): every setting given to a
        command is kept there for the later ones. `make settings` shows them."""),
    Setting("READY_TIMEOUT", "180", "seconds", COMMANDS,
        help="Seconds `make up` waits for the hub to answer."),
    Setting("TAIL", "200", "count", COMMANDS, kept=False,
        help="The log lines `make logs` shows first."),
    Setting("FOLLOW", "yes", "flag", COMMANDS, kept=False, help="""yes: `make logs` follows
        the log; no: it shows the last lines and ends."""),
)  # fmt: skip

BY_NAME: dict[str, Setting] = {setting.name: setting for setting in SETTINGS}


def resolved_values(environ: Mapping[str, str]) -> dict[str, str]:
    """Every setting's value: from `environ` where set and not empty, else its default."""
    values: dict[str, str] = {}
    for setting in SETTINGS:
        values[setting.name] = setting.resolved(environ, values)
    return values


def _one_line(text: str) -> str:
    return " ".join(text.split())


# -- what the commands print ---------------------------------------------------------------


def shell_assignments(environ: Mapping[str, str]) -> str:
    """Bash for hub/lab.sh to eval: every setting with its value, then PASSED, the names of
    those the hub container is given."""
    lines = [f"{name}={shlex.quote(value)}" for name, value in resolved_values(environ).items()]
    lines.append(f"PASSED=({' '.join(s.name for s in SETTINGS if s.field)})")
    return "\n".join(lines) + "\n"


def make_variables() -> str:
    """build/settings.mk: the names make hands to hub/lab.sh, and the defaults make needs."""
    lines = [
        "# Generated from hub/settings_schema.py by make: edit the schema, not this file.",
        f"HUB_SETTINGS := {' '.join(s.name for s in SETTINGS)}",
    ]
    lines += [f"{s.name} ?= {s.default}" for s in SETTINGS if s.make_default]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return _one_line(text).replace("|", "\\|")


def _default_text(setting: Setting) -> str:
    if not setting.default:
        return "`no`" if setting.kind == "flag" else "empty"
    return f"`{setting.default}`"


def markdown() -> str:
    """docs/settings.md: every setting, by group, as a table."""
    out = [
        "<!-- Generated from hub/settings_schema.py: edit the schema, then `make docs`. -->",
        "# Settings of `make up`",
        "",
        "Every setting is a variable of `make`, e.g. `make up PORT=8443 KERNEL_MEMORY=8g`; an",
        "empty value means the default. Give `make down`, `logs`, `backup`, `restore` and",
        "`upgrade` the same `LAB` (and any name you changed) as `make up`. Settings apply when",
        "the hub container is (re-)created: `make down && make up VAR=…`. `$LAB` stands for the",
        "value of `LAB`.",
    ]
    groups = list(dict.fromkeys(setting.group for setting in SETTINGS))
    for group in groups:
        out += ["", f"## {group}", ""]
        out += ["| variable | default | type | meaning |", "| --- | --- | --- | --- |"]
        for s in (s for s in SETTINGS if s.group == group):
            out.append(
                f"| `{s.name}` | {_default_text(s)} | {KIND_TEXT[s.kind]} | {_cell(s.help)} |"
            )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("env", help="bash assignments of every setting, for hub/lab.sh")
    commands.add_parser("make", help="make variables: the names and make's own defaults")
    commands.add_parser("markdown", help="the reference, docs/settings.md")
    args = parser.parse_args(argv)
    if args.command == "env":
        sys.stdout.write(shell_assignments(os.environ))
    elif args.command == "make":
        sys.stdout.write(make_variables())
    else:
        sys.stdout.write(markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
