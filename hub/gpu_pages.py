"""Who holds which GPU, on the hub's pages: a one-line summary on every member's home page,
and the whole table on the admin page (templates/home.html, templates/admin.html).

JupyterHub renders its pages with `template_vars`, whose callables it calls with the
page's user; `GpuPages` is one, asking the lab's broker (`op_gpus`, as the hub's root) at
most every `ttl` seconds, so that no page waits on the broker, and a broker that does not
answer only hides the GPU lines.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from labnotebook.provisioner.broker_client import BrokerEngine
from labnotebook.provisioner.errors import KernelLaunchError
from labnotebook.provisioner.gpu_cli import holder_state, usage_text


class GpuPages:
    """`template_vars["lab_gpus"]`: for the page's user, a `GpuLines` (false where the lab has
    no GPUs). JupyterHub calls this for every page; only the pages that show GPU lines ask
    the broker, when they read them."""

    def __init__(self, socket_path: str, ttl: float = 15.0) -> None:
        self.socket_path = socket_path
        self.ttl = ttl
        self._rows: list[dict[str, Any]] = []
        self._read_at = -float("inf")
        self._lock = threading.Lock()

    def __deepcopy__(self, memo: dict[int, Any]) -> GpuPages:
        # JupyterHub's config is deep-copied (traitlets), template_vars with it: one shared
        # reader (and its lock and cache) is what every page should use.
        return self

    def __call__(self, user: Any) -> GpuLines | None:
        return None if user is None else GpuLines(self, user)

    def rows(self) -> list[dict[str, Any]]:
        with self._lock:
            if time.monotonic() - self._read_at > self.ttl:
                self._read_at = time.monotonic()
                try:
                    self._rows = BrokerEngine(self.socket_path, timeout=2).gpus()
                except (KernelLaunchError, OSError):
                    self._rows = []  # the broker restarting: no GPU lines for a moment
            return self._rows


class GpuLines:
    """What one user's page shows about the GPUs, read from the broker when first used."""

    def __init__(self, pages: GpuPages, user: Any) -> None:
        self._pages = pages
        self._name = str(getattr(user, "name", ""))
        self._admin = bool(getattr(user, "admin", False))

    def __bool__(self) -> bool:
        return bool(self._pages.rows())

    @property
    def summary(self) -> str:
        return summary(self._pages.rows(), self._name)

    @property
    def rows(self) -> list[dict[str, str]]:
        """The admin page's table (admins only)."""
        return table(self._pages.rows()) if self._admin else []


def summary(rows: list[dict[str, Any]], username: str) -> str:
    """'GPUs: 1 of 2 free. Yours: GPU 0 (kernel 'train').' for `username`'s home page."""
    free = sum(1 for row in rows if not row.get("holders"))
    mine = [
        f"{row.get('label')} (kernel '{holder.get('kernel_name')}')"
        for row in rows
        for holder in row.get("holders") or []
        if holder.get("username") == username
    ]
    line = f"GPUs: {free} of {len(rows)} free."
    if mine:
        line += " Yours: " + ", ".join(mine) + "."
    return line + " `labnotebook gpus` in a terminal shows who holds which."


def table(rows: list[dict[str, Any]], now: float | None = None) -> list[dict[str, str]]:
    """One row per GPU for the admin page: the GPU, its model and who holds it, how long."""
    now = time.time() if now is None else now
    shown = []
    for row in rows:
        holders = [
            f"{h.get('username')} (kernel '{h.get('kernel_name')}', {holder_state(h, now)}"
            f"{', shared' if h.get('shared') else ''})"
            for h in row.get("holders") or []
        ]
        shown.append(
            {
                "gpu": str(row.get("label") or row.get("index")),
                "model": str(row.get("model") or ""),
                "holders": "; ".join(holders) or "free",
                "usage": usage_text(row),
            }
        )
    return shown
