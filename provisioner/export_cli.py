"""`labnotebook export NOTEBOOK ...`: its command line (export.py does the work).

A module of its own so that `labnotebook` starts without the Docker SDK: in a kernel image,
whose `labnotebook` reaches only the broker, export.py's engine side cannot be imported, and
the CLI imports every command's parser at start.
"""

from __future__ import annotations

from typing import Any


def export_doc() -> str | None:
    try:
        from . import export
    except ImportError:  # no Docker SDK here: the help is shorter, nothing else changes
        return None
    return export.__doc__


def run(args: Any) -> int:
    from .export import main

    return main(args)


def add_parser(groups: Any) -> None:
    """`labnotebook export ...` (registered by cli.py)."""
    p = groups.add_parser(
        "export",
        help="build a stand-alone image that re-runs a saved notebook and checks its results",
        description=export_doc(),
    )
    p.add_argument("notebook", help="the saved notebook (.ipynb) whose record names its image")
    p.add_argument(
        "--data",
        nargs="+",
        action="extend",
        metavar="PATH",
        help="files or folders the notebook reads (only these go in, at the same paths)",
    )
    p.add_argument("--name", help="image name[:tag] (default: NOTEBOOK-export:latest)")
    p.add_argument(
        "--archive", action="store_true", help="also write `docker save | gzip` and REPRODUCING.md"
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="run the export's check right away (no network; exit 3 if not reproduced)",
    )
    p.add_argument("--output", help="folder for --archive (default: NAME-export)")
    p.add_argument("--compress-level", type=int, default=6, choices=range(1, 10), metavar="1-9")
    p.add_argument("--wheelhouse", help="folder of nbclient/JupyterLab wheels (default: the lab's)")
    p.add_argument("--broker-socket", help="export through the lab's kernel broker (in the hub)")
    p.add_argument("--json", action="store_true", help="print what was built as JSON")
    p.set_defaults(run=run)
