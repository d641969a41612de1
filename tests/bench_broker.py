"""What the kernel broker adds to a kernel container's launch, against DockerEngine directly.

`measure(n)` launches the same container n times each way, alternating so drift in the engine
hits both alike: directly with `DockerEngine.launch` in this (root) process, and through a
broker subprocess from a process running as an ordinary user with `BrokerEngine.launch`.
Docker's own launch time varies by tens of ms from one start to the next, so besides the two
medians and their difference it reports the broker's *own* cost per launch, exactly: the
time the client waited minus the time the broker spent inside `DockerEngine.launch`
(which the broker reports with each launch).

    python -m tests.bench_broker [N]      # as root, with the kernel image built
"""

from __future__ import annotations

import json
import os
import pwd
import statistics
import sys
import time
from typing import Any

from labnotebook.hub.broker_policy import LaunchPolicy, Peer
from labnotebook.provisioner.engine import DockerEngine

from .broker_fixtures import BrokerProcess, UserAgent, kernel_spec


def measure(
    n: int = 10,
    *,
    network: str = "labnotebook",
    labels: dict[str, str] | None = None,
    user: str = "nobody",
) -> dict[str, Any]:
    """Median direct vs brokered launch time (ms) and what the broker adds; needs root."""
    if os.geteuid() != 0:
        raise RuntimeError("measuring the broker needs root: it runs the broker as root")
    account = pwd.getpwnam(user)
    engine = DockerEngine()
    policy = LaunchPolicy()
    policy.network = network
    policy.allowed_labels = list(labels or {})
    direct: list[float] = []
    brokered: list[float] = []
    overhead: list[float] = []
    launched: list[str] = []
    broker = BrokerProcess(
        f"c.LaunchPolicy.network = {network!r}\n"
        f"c.LaunchPolicy.allowed_labels = {list(labels or {})!r}\n"
    )
    agent = None
    try:
        broker.start()
        agent = UserAgent(account.pw_uid)

        def via_engine() -> float:
            peer = Peer(agent.pid, account.pw_uid, account.pw_gid)
            spec = policy.container_for(peer, policy.admit(peer, request()))
            started = time.perf_counter()
            container = engine.launch_container(spec)
            elapsed = (time.perf_counter() - started) * 1000
            launched.append(container.container_id)
            return elapsed

        def via_broker() -> tuple[float, float]:
            result = agent.call("launch_json", sock=broker.socket, spec=request())
            launched.append(result["container_id"])
            return result["client_ms"], result["client_ms"] - result["engine_ms"]

        def request() -> dict[str, Any]:
            return kernel_spec(labels=labels)

        def clean() -> None:
            while launched:
                engine.remove(launched.pop())

        # Warm both paths (image facts, network, connections) before measuring.
        via_engine()
        via_broker()
        clean()
        for i in range(n):
            if i % 2:
                direct.append(via_engine())
                ms, extra = via_broker()
            else:
                ms, extra = via_broker()
                direct.append(via_engine())
            brokered.append(ms)
            overhead.append(extra)
            clean()
    finally:
        if agent is not None:
            agent.close()
        broker.cleanup()
        for container_id in launched:
            engine.remove(container_id)
    return {
        "n": n,
        "direct_median_ms": round(statistics.median(direct), 1),
        "brokered_median_ms": round(statistics.median(brokered), 1),
        "difference_ms": round(statistics.median(brokered) - statistics.median(direct), 1),
        "broker_overhead_median_ms": round(statistics.median(overhead), 2),
        "broker_overhead_max_ms": round(max(overhead), 2),
    }


if __name__ == "__main__":
    print(json.dumps(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 10), indent=1))
