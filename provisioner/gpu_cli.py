"""`labnotebook gpus`: the lab's GPUs and who holds each, from the lab's broker.

Any member may ask: sharing the lab's GPUs starts with seeing who holds them, and for how
long. `--json` gives the broker's rows as they are.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from .durations import human_duration
from .errors import KernelConfigError
from .sizes import human_bytes


def cmd_gpus(args: argparse.Namespace) -> int:
    from .broker_client import BrokerEngine
    from .image_backends import broker_socket

    socket = broker_socket(args.broker_socket)
    if socket is None:
        raise KernelConfigError(
            "`labnotebook gpus` shows the lab's GPUs, which the lab's kernel broker keeps: run "
            "it in the lab hub (a JupyterLab terminal). On your own machine, `nvidia-smi` "
            "shows your GPUs."
        )
    broker = BrokerEngine(socket)
    if args.release:
        stopped = broker.gpu_release(args.release)
        if args.json:
            print(json.dumps(stopped, indent=1))
        for holder in [] if args.json else stopped:
            print(
                f"Stopped {_clean(holder.get('username'))}'s kernel "
                f"'{_clean(holder.get('kernel_name'))}' on {_clean(holder.get('gpu'))}."
            )
        if not stopped and not args.json:
            print(f"No kernel held {args.release}: it is free.")
        return 0
    rows = broker.gpus()
    print(json.dumps(rows, indent=1) if args.json else describe_table(rows))
    return 0


def add_parser(groups: Any) -> None:
    gpus = groups.add_parser(
        "gpus",
        help="the lab's GPUs and who holds each",
        description="The lab's GPUs, and for each the kernels that hold it and for how long.",
    )
    gpus.add_argument("--json", action="store_true", help="the same as JSON, one row per GPU")
    gpus.set_defaults(release=None)
    actions = gpus.add_subparsers(dest="gpus_command", metavar="{release}")
    release = actions.add_parser(
        "release",
        help="(the lab's admins) stop the kernels that hold a GPU, to free it",
        description="""Stop the kernels that hold GPU, to free it for others. Each member is
        told why by her next kernel, and the broker's log keeps an audit line.""",
    )
    release.add_argument("release", metavar="GPU", help="its index (0), or its UUID")
    release.add_argument("--json", action="store_true", help="the stopped kernels as JSON")
    gpus.add_argument(
        "--broker-socket", help="the lab's broker socket (default: the hub's usual places)"
    )
    gpus.set_defaults(run=cmd_gpus)


def describe_table(rows: list[dict[str, Any]], now: float | None = None) -> str:
    """`labnotebook gpus` as text, one line per GPU, from `GpuBook.holders()` rows:

    GPU 0  NVIDIA A100 40 GiB  alice (kernel 'train', busy 2 h)  [73% busy, 31 GiB used]
    GPU 1  NVIDIA A100 40 GiB  bob (kernel 'lstm', idle 45 min)
    GPU 2  NVIDIA A100 40 GiB  free

    (the part in brackets: the lab's admins, where NVML can be read)
    """
    now = time.time() if now is None else now
    if not rows:
        return "This lab has no GPUs."
    names = []
    for row in rows:
        model = " ".join(p for p in (_clean(row.get("model"), 80), _memory(row.get("memory"))) if p)
        names.append((_clean(row.get("label")) or f"GPU {row.get('index')}", model))
    label_width = max(len(label) for label, _ in names)
    model_width = max(len(model) for _, model in names)
    lines = []
    for (label, model), row in zip(names, rows, strict=True):
        holders = []
        for h in row.get("holders") or []:
            how = holder_state(h, now)
            if h.get("shared"):
                how += ", shared"
            holders.append(
                f"{_clean(h.get('username')) or '?'} "
                f"(kernel '{_clean(h.get('kernel_name')) or '?'}', {how})"
            )
        columns = [label.ljust(label_width)]
        if model_width:
            columns.append(model.ljust(model_width))
        columns.append("; ".join(holders) or "free")
        usage = usage_text(row)
        if usage:
            columns.append(f"[{usage}]")
        lines.append("  ".join(columns).rstrip())
    return "\n".join(lines)


def holder_state(holder: dict[str, Any], now: float) -> str:
    """'busy 2 h', 'idle 45 min', '2 h' (not known yet), or 'starting' / 'restarting'."""
    state = holder.get("state", "running")
    if state != "running":
        return _clean(state)
    held = human_duration(now - _float(holder.get("since")))
    if holder.get("activity") == "idle" and holder.get("idle_since"):
        return f"idle {human_duration(now - _float(holder.get('idle_since')))}"
    return f"busy {held}" if holder.get("activity") == "busy" else held


def usage_text(row: dict[str, Any]) -> str:
    """'73% busy, 12.5 GiB used' where the broker gave it (admins, with NVML)."""
    parts = []
    if isinstance(row.get("utilization"), int):
        parts.append(f"{row['utilization']}% busy")
    if _int(row.get("memory_used")):
        parts.append(f"{human_bytes(row['memory_used'])} used")
    return ", ".join(parts)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _float(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _clean(value: Any, limit: int = 64) -> str:
    """A broker's text, fit for a terminal: printable, short."""
    if not isinstance(value, str):
        return ""
    return "".join(c for c in value if c.isprintable())[:limit]


def _memory(value: Any) -> str:
    return human_bytes(value) if isinstance(value, int) and value > 0 else ""
