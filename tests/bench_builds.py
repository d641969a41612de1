"""A requirements.txt kernel build through the broker, against `docker build` of the same steps.

Both install the same wheels from a local wheelhouse in the build folder (so the network does
not decide the figure), on the same base image, alternating:

* reference - `docker build` (the engine's builder) of FROM base, COPY the folder, RUN pip
  install -r requirements.txt, with no cache (cold) and then again with its cache (warm);
* ours      - `labnotebook kernel build` as an ordinary user through a root broker: pack,
  send, the bounded build container, commit, tag, kernelspec; cold is a new folder, warm the
  same folder again (the broker reuses the version built from the same folder and base).

    python -m tests.bench_builds [ROUNDS]      # as root, with the kernel image built
"""

from __future__ import annotations

import io
import json
import os
import pwd
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import docker
import docker.errors
from labnotebook.provisioner import labels as L

from .broker_fixtures import BrokerProcess, UserAgent
from .wheels import make_wheel

IMAGE = os.environ.get("LABNOTEBOOK_KERNEL_IMAGE", "labnotebook/kernel-python:latest")
WHEELS = 8


def _folder(root: Path, salt: str, uid: int, gid: int) -> Path:
    folder = root / f"ctx-{salt}"
    names = []
    for n in range(WHEELS):
        wheel = make_wheel(folder / "wheels", f"lnbbench{n}", "1.0", f"SALT = {salt!r}\n")
        names.append(f"./wheels/{wheel.name}")
    (folder / "requirements.txt").write_text("\n".join(names) + "\n")
    for path in [folder, *folder.rglob("*")]:
        os.chown(path, uid, gid)
    return folder


def _reference_context(folder: Path) -> io.BytesIO:
    dockerfile = (
        f"FROM {IMAGE}\nCOPY . /tmp/labnotebook-build\n"
        "RUN cd /tmp/labnotebook-build && PIP_NO_CACHE_DIR=1 PIP_BREAK_SYSTEM_PACKAGES=1 "
        "python3 -m pip install -r requirements.txt && cd / && rm -rf /tmp/labnotebook-build\n"
    )
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(folder, arcname=".")
        data = dockerfile.encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return buffer


def _docker_build(api: Any, folder: Path, tag: str, nocache: bool) -> float:
    started = time.perf_counter()
    for line in api.build(
        fileobj=_reference_context(folder), custom_context=True, tag=tag, nocache=nocache,
        rm=True, forcerm=True, pull=False, decode=True,
    ):  # fmt: skip
        if "error" in line:
            raise RuntimeError(line["error"])
    return (time.perf_counter() - started) * 1000


def measure(rounds: int = 3, user: str = "nobody") -> dict[str, float]:
    if os.geteuid() != 0:
        raise RuntimeError("the build benchmark runs the broker as root")
    account = pwd.getpwnam(user)
    client = docker.from_env()
    api = client.api
    root = Path(tempfile.mkdtemp(prefix="lnbbench-builds-"))
    root.chmod(0o755)
    scratch = root / "scratch"
    scratch.mkdir()
    os.chown(scratch, account.pw_uid, account.pw_gid)
    reference_tag = f"lnbbench-build-{uuid.uuid4().hex[:8]}"
    times: dict[str, list[float]] = {k: [] for k in ("ref_cold", "ref_warm", "cold", "warm")}
    broker = BrokerProcess(
        "c.KernelBroker.reap_interval = 0\n"
        f"c.BuildPolicy.default_base = {IMAGE!r}\n"
        "c.BuildPolicy.cpus = None\n"  # the reference is not bounded either
    )
    broker.config.write_text(
        broker.config.read_text() + f"c.BuildPolicy.log_dir = '{broker.folder}/logs'\n"
    )
    agent = None
    try:
        broker.start()
        agent = UserAgent(
            account.pw_uid,
            env={
                "LNBTEST_SCRATCH": str(scratch),
                "LNBTEST_SCENARIOS": "tests.kernel_build_scenarios",
            },
        )

        def ours(folder: Path) -> float:
            started = time.perf_counter()
            done = agent.call(
                "cli",
                argv=["kernel", "--broker-socket", broker.socket, "build", "lnbbench", str(folder)],
            )
            if done["code"] != 0:
                raise RuntimeError(done)
            return (time.perf_counter() - started) * 1000

        for n in range(rounds):
            folder = _folder(root, f"{n}-{uuid.uuid4().hex[:6]}", account.pw_uid, account.pw_gid)
            # Alternate which goes first, so drift in the engine hits both alike.
            if n % 2 == 0:
                times["ref_cold"].append(_docker_build(api, folder, f"{reference_tag}:{n}", True))
                times["cold"].append(ours(folder))
            else:
                times["cold"].append(ours(folder))
                times["ref_cold"].append(_docker_build(api, folder, f"{reference_tag}:{n}", True))
            times["ref_warm"].append(_docker_build(api, folder, f"{reference_tag}:{n}", False))
            times["warm"].append(ours(folder))
    finally:
        if agent is not None:
            agent.close()
        broker.cleanup()
        for image in api.images(filters={"label": f"{L.OWNER_UID}={account.pw_uid}"}):
            for tag in image.get("RepoTags") or []:
                if tag.startswith("labnotebook-user/") and "/lnbbench:" in tag:
                    api.remove_image(tag, force=True)
        for image in api.images(name=reference_tag):
            for tag in image.get("RepoTags") or []:
                api.remove_image(tag, force=True)
        shutil.rmtree(root, ignore_errors=True)
    median = {k: statistics.median(v) for k, v in times.items()}
    return {
        "build_ref_cold_ms": median["ref_cold"],
        "build_cold_ms": median["cold"],
        "build_cold_ratio": median["cold"] / median["ref_cold"],
        "build_ref_warm_ms": median["ref_warm"],
        "build_warm_ms": median["warm"],
        "build_warm_ratio": median["warm"] / median["ref_warm"],
    }


if __name__ == "__main__":
    print(json.dumps(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 3), indent=1))
