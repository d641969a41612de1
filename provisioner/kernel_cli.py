"""`labnotebook kernel ...`: members make their own kernels.

    labnotebook kernel build NAME [FOLDER] [--from IMAGE]  an image from FOLDER, and its kernel
    labnotebook kernel env NAME PATH [--from IMAGE]        an environment in your home as a kernel
    labnotebook kernel ls                                  your images, versions, published ones,
                                                           and which saved notebooks name them
    labnotebook kernel rm NAME[:vN] [--force]              remove versions (all: and the kernel);
                                                           --force if saved notebooks name them
    labnotebook kernel logs NAME                           the last build's log
    labnotebook kernel publish MEMBER/NAME:vN [--withdraw] (admins) a lab-wide kernel

The kernelspec goes to ~/.local/share/jupyter/kernels/NAME/kernel.json and names the image by
its ID, so the kernel keeps running exactly what was built even after a rebuild; JupyterLab's
launcher shows it without a restart. It holds only what is yours - the image, the name - while
the lab's settings (broker, network, mounts) stay in the server's configuration.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from . import member_images as M
from .image_backends import DEFAULT_BASE, Images, backend
from .sizes import human_bytes

PROVISIONER = "labnotebook-docker"


def kernels_dir() -> Path:
    from jupyter_core.paths import jupyter_data_dir

    return Path(jupyter_data_dir()) / "kernels"


def write_kernelspec(
    name: str,
    *,
    image: str,
    display_name: str,
    argv: list[str],
    language: str,
    env: dict[str, str] | None = None,
) -> Path:
    """Write (atomically) the member's kernelspec for `image`."""
    folder = kernels_dir() / name
    folder.mkdir(parents=True, exist_ok=True)
    spec: dict[str, Any] = {
        "argv": argv,
        "display_name": display_name,
        "language": language,
        "metadata": {
            "kernel_provisioner": {"provisioner_name": PROVISIONER, "config": {"image": image}}
        },
    }
    if env:
        spec["env"] = env
    temporary = folder / ".kernel.json.new"
    temporary.write_text(json.dumps(spec, indent=2) + "\n")
    os.replace(temporary, folder / "kernel.json")
    return folder / "kernel.json"


def kernelspec_image(name: str) -> str | None:
    try:
        spec = json.loads((kernels_dir() / name / "kernel.json").read_text())
        return str(spec["metadata"]["kernel_provisioner"]["config"]["image"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _images(args: argparse.Namespace) -> Images:
    return backend(args.broker_socket, args.docker_host)


def cmd_build(args: argparse.Namespace) -> int:
    name = M.check_name(args.name)
    folder = os.path.abspath(args.folder)

    def say(line: str) -> None:
        print(line, flush=True)

    result = _images(args).build(name, folder, args.base, say)
    display = args.display_name or f"{name} (v{result['version']})"
    where = write_kernelspec(
        name,
        image=result["image"],
        display_name=display,
        argv=list(result["argv"]),
        language=str(result["language"]),
    )
    print(f"Built {result['repository']}:{result['tag']} ({result['image'][:19]})")
    print(f"Kernel {display!r} installed in {where.parent}: pick it in JupyterLab's launcher.")
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    name = M.check_name(args.name)
    home = os.path.realpath(os.path.expanduser("~"))
    path = os.path.realpath(os.path.expanduser(args.path))
    if os.path.commonpath([home, path]) != home:
        print(
            f"error: {args.path} is not in your home ({home}); kernels see only homes, so the "
            "environment must live there.",
            file=sys.stderr,
        )
        return 2
    python = os.path.join(path, "bin", "python")
    if not os.path.exists(python):
        print(
            f"error: {path} has no bin/python: give the folder of a venv (python3 -m venv "
            "--system-site-packages PATH) or a conda environment.",
            file=sys.stderr,
        )
        return 2
    where = write_kernelspec(
        name,
        image=args.base or os.environ.get("LABNOTEBOOK_KERNEL_IMAGE", DEFAULT_BASE),
        display_name=args.display_name or f"{name} (env {args.path})",
        argv=[python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        language="python",
        env={"VIRTUAL_ENV": path},
    )
    print(f"Kernel {name!r} runs {python} in a lab image; installed in {where.parent}.")
    print("It needs ipykernel in that environment (pip install ipykernel) or system site packages.")
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    from .record import images_named

    rows = _images(args).images()
    # Saved notebooks (in the home and /home/shared, read as this user) that record an image:
    # removing it would leave them unreproducible.
    named = images_named() if rows else {}
    for row in rows:
        row["notebooks"] = named.get(row["id"], [])
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    if not rows:
        print("No kernel images yet: `labnotebook kernel build NAME FOLDER` makes one.")
        return 0
    me = os.getuid()
    print(f"{'KERNEL':<24}{'VERSION':<9}{'OWNER':<14}{'BUILT':<22}{'ADDS':>10}  IMAGE ID      NOTE")
    for row in rows:
        notes = []
        if row["owner_uid"] == me and kernelspec_image(row["name"]) == row["id"]:
            notes.append("kernelspec uses this")
        if row.get("published"):
            notes.append("published")
        if row["notebooks"]:
            notes.append(f"named by {len(row['notebooks'])} saved notebook(s)")
        built = row["built"].replace("T", " ")[:19]
        print(
            f"{row['name']:<24}v{row['version']:<8}{row['owner']:<14}{built:<22}"
            f"{human_bytes(row['added']):>10}  {row['id'].removeprefix('sha256:')[:12]}  "
            + ", ".join(notes)
        )
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    from .record import removal_refusal

    images = _images(args)
    refusal = None if args.force else removal_refusal(images.images(), args.image, os.getuid())
    if refusal:
        print(f"error: {refusal}", file=sys.stderr)
        return 1
    removed = images.remove(args.image)
    for tag in removed:
        print(f"Removed {tag}")
    name = args.image.rpartition("/")[2].partition(":")[0]
    if "/" not in args.image and ":" not in args.image and (kernels_dir() / name).is_dir():
        shutil.rmtree(kernels_dir() / name)
        print(f"Removed the kernel {name!r} from your kernels.")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    sys.stdout.write(_images(args).log(M.check_name(args.name)))
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    tag = _images(args).publish(args.image, args.withdraw)
    verb = "Withdrew" if args.withdraw else "Published"
    print(f"{verb} {tag} ({datetime.date.today()}).")
    if not args.withdraw:
        print("Members run it by its ID or this tag: `labnotebook kernel ls` lists it.")
    return 0


def add_parser(groups: Any) -> None:
    """Register `labnotebook kernel ...` on the top-level subparsers."""
    kernel = groups.add_parser(
        "kernel",
        help="make your own kernels (build, env, ls, rm, logs, publish)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    kernel.add_argument(
        "--broker-socket", help="the lab's kernel broker (default: found where the hub has it)"
    )
    commands = kernel.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build an image from a folder and install its kernel")
    build.add_argument("name", help="the kernel's name: lowercase letters, digits, '-'")
    build.add_argument("folder", nargs="?", default=".", help="the folder to build (default: .)")
    build.add_argument("--from", dest="base", help="base image (default: the lab's kernel image)")
    build.add_argument("--display-name", help="the name in JupyterLab's launcher")
    build.set_defaults(run=cmd_build)
    env = commands.add_parser("env", help="a Python environment in your home as a kernel")
    env.add_argument("name")
    env.add_argument("path", help="the environment's folder (a venv or a conda env)")
    env.add_argument("--from", dest="base", help="the lab image it runs in")
    env.add_argument("--display-name")
    env.set_defaults(run=cmd_env)
    ls = commands.add_parser("ls", help="your kernel images and their versions, and published ones")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(run=cmd_ls)
    rm = commands.add_parser("rm", help="remove a kernel image (NAME: every version)")
    rm.add_argument("image", help="NAME or NAME:vN")
    rm.add_argument(
        "--force", action="store_true", help="remove it even if saved notebooks record it"
    )
    rm.set_defaults(run=cmd_rm)
    logs = commands.add_parser("logs", help="the last build's log")
    logs.add_argument("name")
    logs.set_defaults(run=cmd_logs)
    publish = commands.add_parser("publish", help="(admins) make a member's image a lab kernel")
    publish.add_argument("image", help="MEMBER/NAME:vN")
    publish.add_argument("--withdraw", action="store_true", help="unpublish it")
    publish.set_defaults(run=cmd_publish)
