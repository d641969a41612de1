"""Hub benchmark: login-to-server-ready, on a real hub started with `make up`.

    python3 -m tests.hub.bench_hub [RUNS]

Starts a throwaway hub (own names, free port, 127.0.0.1 only), signs up and approves a user,
then RUNS times: log in through the form, start the server, wait until JupyterLab answers, stop
the server. Prints the median and spread, and removes everything it created. `main()` returns
the figures for `make bench` to include.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from .conftest import Lab, free_port


def measure(runs: int = 5) -> dict[str, float]:
    session = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory() as tmp:
        lab = Lab(f"labnotebook-bench-{session}", free_port(), "labnotebook/hub:latest", Path(tmp))
        try:
            lab.make("up")
            admin = lab.user("admin")
            token = lab.exec("cat", "/srv/state/admin-setup-token").stdout.strip()
            assert admin.signup(token=token).alert == "alert-success"
            assert admin.login().status == 302
            alice = lab.user("alice")
            alice.signup()
            admin.approve("alice")
            timings = []
            for _ in range(runs):
                started = time.monotonic()
                assert alice.login().status == 302
                alice.start_server()
                timings.append(time.monotonic() - started)
                alice.stop_server()
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    user = alice.hub_api("GET", "users/alice").json()
                    if not user.get("servers"):
                        break
                    time.sleep(0.2)
        finally:
            lab.destroy()
    return {
        "login_to_server_ready_median_s": statistics.median(timings),
        "login_to_server_ready_min_s": min(timings),
        "login_to_server_ready_max_s": max(timings),
    }


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = sys.argv[1:] if argv is None else argv
    figures = measure(int(args[0]) if args else 5)
    for name, value in figures.items():
        print(f"{name:36s} {value:6.2f}")
    return figures


if __name__ == "__main__":
    main()
