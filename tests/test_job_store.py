"""The book of notebook jobs without Docker: queues, limits, persistence, schedules' times,
the notebook checks' pure parts and the runner's output protocol."""

from __future__ import annotations

import datetime
import json
import stat
from pathlib import Path

import pytest
from labnotebook.hub.job_notebooks import normalized, output_name
from labnotebook.hub.job_store import CANCELLED, QUEUED, RUNNING, SUCCEEDED, Job, JobStore, now
from labnotebook.hub.notebook_jobs import kernelspec_image, next_run
from labnotebook.provisioner.errors import KernelConfigError, PermissionRefused
from labnotebook.provisioner.identity import KernelIdentity
from labnotebook.provisioner.job_runner import RESULT, progress_of, shown_lines


def job(identifier: str, uid: int, state: str = QUEUED) -> Job:
    return Job(
        id=identifier, owner=f"u{uid}", owner_uid=uid, notebook="/home/u/a.ipynb",
        output=f"/home/u/a.job-{identifier}.ipynb", kernel="python-docker",
        image="labnotebook/kernel-python:latest", kernelspec={}, state=state,
    )  # fmt: skip


def test_each_member_runs_her_oldest_jobs_up_to_her_limit() -> None:
    store = JobStore(None)
    for identifier, uid in [("a1", 1), ("b1", 2), ("a2", 1), ("a3", 1), ("b2", 2)]:
        store.add(job(identifier, uid))
    assert [j.id for j in store.startable(2)] == ["a1", "b1", "a2", "b2"]
    store.jobs["a1"].state = RUNNING
    store.jobs["a2"].state = RUNNING
    assert [j.id for j in store.startable(2)] == ["b1", "b2"]  # alice is full
    store.jobs["a1"].state = SUCCEEDED
    assert [j.id for j in store.startable(2)] == ["b1", "a3", "b2"]
    assert [j.id for j in store.queued(1)] == ["a3"]


def test_the_book_is_saved_atomically_for_root_only_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "state" / "jobs.json"
    store = JobStore(path)
    running = job("r1", 1, RUNNING)
    running.token, running.container = "secret", "c0ffee"
    store.add(job("q1", 1))
    store.add(running)
    store.save()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["jobs.json"]  # no temporary left
    again = JobStore(path)
    again.load()
    assert again.jobs["r1"].token == "secret" and again.jobs["q1"].state == QUEUED
    assert again.by_token("secret").id == "r1"  # type: ignore[union-attr]
    assert again.by_token("") is None and again.by_token("other") is None
    data = json.loads(path.read_text())
    data["jobs"][0]["from_a_newer_broker"] = 1
    path.write_text(json.dumps(data))
    JobStore(path).load()  # unknown fields are ignored


def test_only_a_running_jobs_token_counts() -> None:
    store = JobStore(None)
    ended = job("e1", 1, CANCELLED)
    ended.token = "old"
    store.add(ended)
    assert store.by_token("old") is None


def test_ended_jobs_are_kept_up_to_a_number_per_member() -> None:
    store = JobStore(None, finished_kept=2)
    for n in range(4):
        ended = job(f"e{n}", 1, SUCCEEDED)
        ended.finished = f"2026-01-0{n + 1}T00:00:00Z"
        store.add(ended)
    store.add(job("q", 1))
    assert sorted(store.forget_finished()) == ["e0", "e1"]
    assert sorted(store.jobs) == ["e2", "e3", "q"]


def test_schedules_next_run_and_bad_cron() -> None:
    base = datetime.datetime(2026, 5, 1, 10, 17, tzinfo=datetime.UTC)
    assert next_run("0 3 * * *", base) == "2026-05-02T03:00:00Z"
    assert next_run("*/30 * * * *", base) == "2026-05-01T10:30:00Z"
    for bad in ("every day", "", "61 * * * *", "* * *"):
        with pytest.raises(KernelConfigError, match="cron"):
            next_run(bad, base)


def test_paths_outside_the_home_are_refused_before_anything_is_opened() -> None:
    alice = KernelIdentity.build(username="alice", uid=2001, gid=2001, home="/home/alice")
    assert normalized("/home/alice/x/../a.ipynb", alice) == "/home/alice/a.ipynb"
    for path in ("/home/alice/../bob/a.ipynb", "/home/alicex/a.ipynb", "/etc/a.ipynb"):
        with pytest.raises(PermissionRefused, match="outside your home"):
            normalized(path, alice)
    with pytest.raises(KernelConfigError, match="relative"):
        normalized("a.ipynb", alice)
    with pytest.raises(KernelConfigError, match="not a notebook"):
        normalized("/home/alice/a.txt", alice)
    assert output_name("a.ipynb", "1f2e3d4c") == "a.job-1f2e3d4c.ipynb"


def test_only_docker_kernelspecs_run_jobs() -> None:
    docker = {"argv": ["x"], "metadata": {"kernel_provisioner": {
        "provisioner_name": "labnotebook-docker", "config": {"image": "me/k:1"}}}}  # fmt: skip
    assert kernelspec_image("k", docker) == "me/k:1"
    with pytest.raises(KernelConfigError, match="does not run in a container"):
        kernelspec_image("python3", {"argv": ["python3"], "metadata": {}})


def test_the_runners_output_says_progress_and_result() -> None:
    lines = [
        "job 1: /home/a/x.ipynb on kernel python-docker",
        "kernel python-docker: image k (sha256:" + "a" * 64 + ")",
        "cell 1/3",
        "cell 2/3",
        RESULT + json.dumps({"state": "failed", "error": "Cell 2 failed"}),
    ]
    found = progress_of(lines)
    assert (found["cell"], found["cells"]) == (2, 3)
    assert found["image_id"] == "sha256:" + "a" * 64
    assert found["result"]["state"] == "failed"
    assert shown_lines(lines)[-1] == "job failed: Cell 2 failed"
    assert now().endswith("Z")
