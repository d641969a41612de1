"""`labnotebook jobs ...`: notebooks run to the end by the lab, apart from your browser.

    labnotebook jobs submit NOTEBOOK [--kernel NAME] [-p NAME VALUE]... [--every CRON]
    labnotebook jobs ls [--all]                   your jobs and schedules (next runs)
    labnotebook jobs status ID [--json]
    labnotebook jobs logs ID [-f]                 progress: "cell 12/40"
    labnotebook jobs cancel ID                    a job, or a schedule

`submit` returns at once; the last line it prints is the job's ID. The executed notebook is
written beside the original, as NAME.job-ID.ipynb. docs/jobs.md has the details.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from . import jobs


def parameter_value(text: str) -> Any:
    """A `-p` value as papermill's own command line reads it (numbers, booleans, None)."""
    try:
        from papermill.cli import _resolve_type
    except ImportError:
        return _resolve(text)
    return _resolve_type(text)


def _resolve(text: str) -> Any:
    """papermill's rules, for a hub without papermill."""
    if text in ("True", "true"):
        return True
    if text in ("False", "false"):
        return False
    if text in ("None", "none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _clean(value: Any, limit: int = 200) -> str:
    text = "" if value is None else str(value)
    return "".join(c for c in text if c.isprintable())[:limit]


def cmd_submit(args: argparse.Namespace) -> int:
    parameters = {name: parameter_value(value) for name, value in args.parameters or []}
    item = jobs.submit(args.notebook, args.kernel, parameters, args.every)
    if item.get("state") == "scheduled":
        print(
            f"Scheduled {_clean(item['notebook'])} on kernel {_clean(item['kernel'])} at "
            f"{_clean(item['every'])!r} (UTC); next run {_clean(item['next_run'])}."
        )
        print(f"Each run is a job (`labnotebook jobs ls`); stop: labnotebook jobs cancel "
              f"{item['id']}")  # fmt: skip
    else:
        print(
            f"Submitted {_clean(item['notebook'])} on kernel {_clean(item['kernel'])} "
            f"({item['state']}). Output: {_clean(item['output'])}"
        )
        print(f"Watch it: labnotebook jobs logs {item['id']} -f")
    print(item["id"])
    return 0


def progress(job: dict[str, Any]) -> str:
    if job.get("state") == "scheduled":
        return f"next {_clean(job.get('next_run'))}"
    if job.get("cells"):
        return f"cell {job.get('cell') or 0}/{job['cells']}"
    return ""


def cmd_ls(args: argparse.Namespace) -> int:
    rows = jobs.list_jobs(everyone=args.all)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    if not rows:
        print("No jobs. Submit one: labnotebook jobs submit NOTEBOOK")
        return 0
    owner = "OWNER      " if args.all else ""
    print(f"{'ID':<10}{owner}{'STATE':<11}{'PROGRESS':<28}{'SUBMITTED':<22}NOTEBOOK")
    for row in rows:
        when = row.get("submitted") or row.get("created") or ""
        who = f"{_clean(row.get('owner'), 10):<11}" if args.all else ""
        print(
            f"{_clean(row['id'], 9):<10}{who}{_clean(row['state'], 10):<11}"
            f"{progress(row):<28}{_clean(when, 21):<22}{_clean(row.get('notebook'))}"
        )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    job = jobs.status(args.id)
    if args.json:
        print(json.dumps(job, indent=1))
        return 0
    for key in ("id", "state", "notebook", "output", "kernel", "image", "image_id", "every",
                "next_run", "submitted", "started", "finished"):  # fmt: skip
        if job.get(key):
            print(f"{key + ':':<11}{_clean(job[key], 300)}")
    if job.get("cells"):
        print(f"{'progress:':<11}{progress(job)}")
    if job.get("error"):
        print(f"{'error:':<11}{job['error']}")
    return 0 if job.get("state") != "failed" else 1


def cmd_logs(args: argparse.Namespace) -> int:
    since = 0
    while True:
        answer = jobs.logs(args.id, since, wait=20 if args.follow else 0)
        for line in answer.get("lines") or []:
            print(line, flush=True)
        since = int(answer.get("next") or since)
        if not args.follow or answer.get("done"):
            return 0
        if not answer.get("lines"):
            time.sleep(0.5)


def cmd_cancel(args: argparse.Namespace) -> int:
    item = jobs.cancel(args.id)
    kind = "schedule" if item.get("every") else "job"
    print(f"Cancelled {kind} {item['id']} ({_clean(item.get('notebook'))}).")
    return 0


def add_parser(groups: Any) -> None:
    top = groups.add_parser(
        "jobs",
        help="run notebooks to the end, apart from your browser and server",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = top.add_subparsers(dest="jobs_command", required=True)
    submit = commands.add_parser("submit", help="run a notebook as a job (returns at once)")
    submit.add_argument("notebook", help="the notebook, in your home")
    submit.add_argument("--kernel", help="kernelspec name (default: the notebook's own)")
    submit.add_argument(
        "-p", "--parameter", dest="parameters", nargs=2, action="append",
        metavar=("NAME", "VALUE"), help="a parameter, as papermill takes it (repeatable)",
    )  # fmt: skip
    submit.add_argument(
        "--every", metavar="CRON", help="a schedule: run at these times (cron, UTC)"
    )
    submit.set_defaults(run=cmd_submit)
    ls = commands.add_parser("ls", help="your jobs and schedules")
    ls.add_argument("--all", action="store_true", help="(admins) everyone's")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(run=cmd_ls)
    status = commands.add_parser("status", help="a job's state, progress and error")
    status.add_argument("id")
    status.add_argument("--json", action="store_true")
    status.set_defaults(run=cmd_status)
    logs = commands.add_parser("logs", help="a job's progress lines")
    logs.add_argument("id")
    logs.add_argument("-f", "--follow", action="store_true", help="until the job ends")
    logs.set_defaults(run=cmd_logs)
    cancel = commands.add_parser("cancel", help="cancel a job, or remove a schedule")
    cancel.add_argument("id")
    cancel.set_defaults(run=cmd_cancel)
