"""`labnotebook`: list and prune kernel containers, install the Docker kernelspecs.

labnotebook kernels ls [--all-users]
labnotebook kernels prune [--all] [--dry-run]
labnotebook kernelspec install [--user | --sys-prefix | --prefix DIR] [--image IMAGE] [NAME]
labnotebook kernelspec list
labnotebook gpus [--json] | labnotebook gpus release GPU
labnotebook jobs submit|ls|status|logs|cancel   notebooks run to the end (jobs_cli.py)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import KernelLaunchError
from .reaper import kernel_containers, prune

if TYPE_CHECKING:
    from .engine import DockerEngine


def bundled_kernelspecs() -> dict[str, Path]:
    """Kernelspecs shipped with labnotebook: the repository's kernelspecs/ folder."""
    from labnotebook.kernelspecs import bundled

    return bundled()


def _engine(args: argparse.Namespace) -> DockerEngine:
    # Here, not at the top: the Docker SDK is absent in kernel images, where `labnotebook
    # kernel ...` runs through the broker.
    from .engine import DockerEngine

    return DockerEngine.shared(args.docker_host)


def cmd_kernels_ls(args: argparse.Namespace) -> int:
    owner = None if args.all_users or os.getuid() == 0 else os.getuid()
    rows = kernel_containers(_engine(args), owner)
    if args.json:
        print(json.dumps([k.__dict__ | {"orphaned": k.orphaned} for k in rows], indent=1))
        return 0
    print(f"{'CONTAINER':<14}{'OWNER':<12}{'KERNEL ID':<38}{'CREATED':<18}{'ORPHAN':<8}STATUS")
    for k in rows:
        created = datetime.datetime.fromtimestamp(k.created).strftime("%Y-%m-%d %H:%M")
        print(
            f"{k.container_id[:12]:<14}{k.owner:<12}{k.kernel_id:<38}{created:<18}"
            f"{'yes' if k.orphaned else 'no':<8}{k.status}"
        )
    return 0


def cmd_kernels_prune(args: argparse.Namespace) -> int:
    owner = None if os.getuid() == 0 else os.getuid()
    removed = prune(_engine(args), everything=args.all, owner_uid=owner, dry_run=args.dry_run)
    verb = "Would remove" if args.dry_run else "Removed"
    for k in removed:
        print(f"{verb} {k.name} (owner {k.owner}, kernel {k.kernel_id})")
    print(f"{verb} {len(removed)} kernel container(s).")
    return 0


def cmd_kernelspec_install(args: argparse.Namespace) -> int:
    from jupyter_client.kernelspec import KernelSpecManager

    specs = bundled_kernelspecs()
    names = args.names or sorted(specs)
    unknown = [n for n in names if n not in specs]
    if unknown:
        print(
            f"error: no bundled kernelspec {', '.join(unknown)}; known: {', '.join(sorted(specs))}",
            file=sys.stderr,
        )
        return 2
    for name in names:
        with tempfile.TemporaryDirectory() as tmp:
            staged = Path(tmp) / name
            shutil.copytree(specs[name], staged)
            spec_file = staged / "kernel.json"
            spec = json.loads(spec_file.read_text())
            config = spec["metadata"]["kernel_provisioner"].setdefault("config", {})
            if args.image:
                config["image"] = args.image
            for item in args.set or []:
                key, _, value = item.partition("=")
                config[key] = _setting_value(value)
            spec_file.write_text(json.dumps(spec, indent=2) + "\n")
            where = KernelSpecManager().install_kernel_spec(
                str(staged),
                kernel_name=args.kernel_name or name,
                user=args.user,
                prefix=sys.prefix if args.sys_prefix else args.prefix,
            )
        print(f"Installed kernelspec {args.kernel_name or name} in {where}")
    return 0


def _setting_value(text: str) -> object:
    """JSON where it parses (numbers, lists, true/false), else the plain string ("8g")."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def cmd_kernelspec_list(args: argparse.Namespace) -> int:
    for name, path in sorted(bundled_kernelspecs().items()):
        print(f"{name:<20}{path}")
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="labnotebook",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--docker-host", help="Docker engine address (default: DOCKER_HOST)")
    groups = top.add_subparsers(dest="group", required=True)

    kernels = groups.add_parser("kernels", help="kernel containers").add_subparsers(
        dest="command", required=True
    )
    ls = kernels.add_parser("ls", help="list kernel containers (your own unless root)")
    ls.add_argument("--all-users", action="store_true", help="everyone's (needs root)")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(run=cmd_kernels_ls)
    pr = kernels.add_parser("prune", help="remove kernel containers whose server is gone")
    pr.add_argument("--all", action="store_true", help="remove every kernel container, live or not")
    pr.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    pr.set_defaults(run=cmd_kernels_prune)

    specs = groups.add_parser("kernelspec", help="Docker kernelspecs").add_subparsers(
        dest="command", required=True
    )
    inst = specs.add_parser("install", help="install bundled kernelspecs for Jupyter")
    inst.add_argument("names", nargs="*", help="kernelspecs to install (default: all)")
    where = inst.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="for this user only")
    where.add_argument("--sys-prefix", action="store_true", help="into this Python environment")
    where.add_argument("--prefix", help="under this prefix")
    inst.add_argument("--name", dest="kernel_name", help="install under another name")
    inst.add_argument("--image", help="kernel image to use instead of the bundled default")
    inst.add_argument(
        "--set",
        action="append",
        metavar="TRAIT=VALUE",
        help="another provisioner setting, e.g. --set memory=8g (repeatable)",
    )
    inst.set_defaults(run=cmd_kernelspec_install)
    lst = specs.add_parser("list", help="list bundled kernelspecs")
    lst.set_defaults(run=cmd_kernelspec_list)

    from .kernel_cli import add_parser as add_kernel

    add_kernel(groups)

    from .export_cli import add_parser as add_export

    add_export(groups)

    from .gpu_cli import add_parser as add_gpus

    add_gpus(groups)

    from .jobs_cli import add_parser as add_jobs

    add_jobs(groups)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.run(args))
    except KernelLaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
