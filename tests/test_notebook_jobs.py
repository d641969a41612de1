"""Notebook jobs through a real root broker (marked `docker`, needs root): real accounts submit
with `labnotebook.provisioner.jobs` from their own processes, runners run from the hub's
image built from this work tree, kernels from the lab's Python kernel image."""

from __future__ import annotations

import datetime
import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import nbformat
import pytest
from labnotebook.provisioner import labels as L
from labnotebook.provisioner.errors import KernelConfigError, PermissionRefused

from .broker_fixtures import BrokerProcess, UserAgent
from .conftest import KERNEL_IMAGE, SESSION, SESSION_LABEL, TEST_NETWORK
from .job_fixtures import build_runner_image, lab_kernelspec, write_notebook
from .test_broker_engine import needs_root

pytestmark = pytest.mark.docker


# -- what the agents (the members' own processes) run --------------------------------------


def scenario_job(call: str, **args: Any) -> Any:
    from labnotebook.provisioner import jobs

    return getattr(jobs, call)(**args)


SCENARIOS = {"job": scenario_job}


# -- the lab ---------------------------------------------------------------------------------


@dataclass
class JobsLab:
    broker: BrokerProcess
    homes: Path
    state: Path
    members: dict[str, pwd.struct_passwd]
    agents: dict[str, UserAgent]
    kernel_image_id: str

    def home(self, name: str) -> Path:
        return Path(self.members[name].pw_dir)

    def job(self, name: str, call: str, **args: Any) -> Any:
        return self.agents[name].call("job", call=call, **args)

    def wait(
        self, name: str, job_id: str, until: Callable[[dict[str, Any]], bool], timeout: float
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            status = self.job(name, "status", job_id=job_id)
            if until(status):
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} did not get there: {status}\n{self.log()}")
            time.sleep(0.5)

    def ended(self, name: str, job_id: str, timeout: float = 120) -> dict[str, Any]:
        ends = ("succeeded", "failed", "cancelled")
        return self.wait(name, job_id, lambda s: s["state"] in ends, timeout)

    def log(self) -> str:
        return self.broker.log_text()[-6000:]


def _account(name: str, homes: Path) -> pwd.struct_passwd:
    subprocess.run(
        ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin",
         "--home-dir", str(homes / name), name],
        check=True, capture_output=True,
    )  # fmt: skip
    entry = pwd.getpwnam(name)
    home = homes / name
    home.mkdir(mode=0o700)
    os.chown(home, entry.pw_uid, entry.pw_gid)
    return entry


@pytest.fixture(scope="module")
def runner_image() -> Iterator[str]:
    given = os.environ.get("LABNOTEBOOK_RUNNER_IMAGE")
    if given:
        yield given
        return
    tag = f"labnotebook/hub:jobs-test-{SESSION}"
    seconds = build_runner_image(tag)
    print(f"built the runner image {tag} in {seconds:.0f} s")
    try:
        yield tag
    finally:
        subprocess.run(["docker", "image", "rm", "-f", tag], check=False, capture_output=True)


@pytest.fixture(scope="module")
def lab(docker_client: docker.DockerClient, runner_image: str) -> Iterator[JobsLab]:
    needs_root()
    tag = SESSION[:6]
    homes = Path(tempfile.mkdtemp(prefix="lnbtest-homes-"))
    homes.chmod(0o755)
    state = Path(tempfile.mkdtemp(prefix="lnbtest-jobstate-"))
    members: dict[str, pwd.struct_passwd] = {}
    broker = None
    agents: dict[str, UserAgent] = {}
    try:
        for role in ("a", "b"):
            members[role] = _account(f"lnbtestj{role}{tag}", homes)
        folder = Path(tempfile.mkdtemp(prefix="lnbtest-jobbroker-"))
        broker = BrokerProcess(
            f"c.LaunchPolicy.network = {TEST_NETWORK!r}\n"
            f"c.LaunchPolicy.lab_mounts = ['{homes}:{homes}', "
            f"'{folder}:/run/labnotebook-broker:ro']\n"
            f"c.LaunchPolicy.allowed_labels = ['{SESSION_LABEL}']\n"
            "c.LaunchPolicy.max_memory = '1g'\n"
            "c.LaunchPolicy.max_cpus = 1\n"
            "c.KernelBroker.reap_interval = 0\n"
            f"c.JobPolicy.runner_image = {runner_image!r}\n"
            f"c.JobPolicy.state_file = '{state}/jobs.json'\n"
            "c.JobPolicy.jobs_per_member = 1\n"
            "c.JobPolicy.queue_per_member = 2\n"
            "c.JobPolicy.cancel_grace = 5\n"
            "c.JobPolicy.tend_interval = 0.5\n",
            folder=str(folder),
        ).start()
        for role, entry in members.items():
            scratch = tempfile.mkdtemp(prefix=f"{entry.pw_name}-")
            os.chown(scratch, entry.pw_uid, entry.pw_gid)
            agents[role] = UserAgent(
                entry.pw_uid,
                env={
                    "LNBTEST_SCRATCH": scratch,
                    "LNBTEST_SCENARIOS": "tests.test_notebook_jobs",
                    "LABNOTEBOOK_BROKER_SOCKET": broker.socket,
                },
            )
            spec = lab_kernelspec(KERNEL_IMAGE, TEST_NETWORK, {SESSION_LABEL: SESSION})
            _install(Path(scratch) / "data" / "kernels", "python-docker", spec, entry)
            small = lab_kernelspec(
                KERNEL_IMAGE, TEST_NETWORK, {SESSION_LABEL: SESSION}, memory="200m"
            )
            _install(Path(scratch) / "data" / "kernels", "small-docker", small, entry)
            evil = lab_kernelspec("evil/kernel:1", TEST_NETWORK, {})
            _install(Path(scratch) / "data" / "kernels", "evil-docker", evil, entry)
        image_id = docker_client.images.get(KERNEL_IMAGE).id
        yield JobsLab(broker, homes, state, members, agents, image_id)
    finally:
        for agent in agents.values():
            shutil.rmtree(agent.scratch, ignore_errors=True)
            agent.close()
        if broker is not None:
            print(broker.log_text()[-20000:])
            broker.cleanup()
        for entry in members.values():
            for container in docker_client.containers.list(
                all=True, filters={"label": f"{L.OWNER_UID}={entry.pw_uid}"}
            ):
                container.remove(force=True)
            subprocess.run(["userdel", entry.pw_name], check=False, capture_output=True)
        shutil.rmtree(homes, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)


def _install(folder: Path, name: str, spec: dict[str, Any], owner: pwd.struct_passwd) -> None:
    target = folder / name
    target.mkdir(parents=True, exist_ok=True)
    (target / "kernel.json").write_text(json.dumps(spec))
    for path in (folder.parent, folder, target, target / "kernel.json"):
        os.chown(path, owner.pw_uid, owner.pw_gid)


def job_containers(client: docker.DockerClient, job_id: str) -> list[Any]:
    return client.containers.list(all=True, filters={"label": f"{L.JOB_ID}={job_id}"})


def gone(client: docker.DockerClient, job_id: str, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while job_containers(client, job_id):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


# -- the tests ---------------------------------------------------------------------------------


def test_a_job_runs_to_the_end_with_every_output_and_the_image_id(
    lab: JobsLab, docker_client: docker.DockerClient
) -> None:
    alice = lab.members["a"]
    folder = lab.home("a") / "project"
    notebook = write_notebook(
        folder / "analysis.ipynb",
        [
            "import os, getpass\nprint(os.getcwd(), getpass.getuser())",
            "print(n * 2)",
            "open('result.txt', 'w').write('done')",
        ],
        alice,
        parameters="n = 1",
    )
    os.chown(folder, alice.pw_uid, alice.pw_gid)
    before = notebook.read_bytes()
    started = time.perf_counter()
    job = lab.job("a", "submit", notebook=str(notebook), parameters={"n": 21})
    submit_s = time.perf_counter() - started
    assert job["state"] == "queued" and job["kernel"] == "python-docker", job
    assert job["output"] == str(folder / f"analysis.job-{job['id']}.ipynb")
    done = lab.ended("a", job["id"])
    run_s = time.perf_counter() - started
    print(f"submit answered in {submit_s * 1000:.0f} ms; the job ended after {run_s:.1f} s")
    assert done["state"] == "succeeded", (done, lab.log())
    for key in ("id", "state", "notebook", "output", "kernel", "image", "started", "finished",
                "cell", "cells", "error"):  # fmt: skip
        assert key in done
    assert done["image_id"] == lab.kernel_image_id and done["image"] == KERNEL_IMAGE
    assert (done["cell"], done["cells"]) == (5, 5)  # parameters, injected, three cells
    output = Path(done["output"])
    assert output.stat().st_uid == alice.pw_uid
    executed = nbformat.read(str(output), as_version=4)
    texts = ["".join(o.get("text", "") for o in c.get("outputs", [])) for c in executed.cells]
    assert f"{folder} {alice.pw_name}" in texts[2], texts
    assert texts[3].strip() == "42", texts
    assert executed.metadata["labnotebook"]["image_id"] == lab.kernel_image_id
    assert (folder / "result.txt").stat().st_uid == alice.pw_uid
    assert notebook.read_bytes() == before  # the original untouched
    logs = lab.job("a", "logs", job_id=job["id"])
    assert "cell 5/5" in logs["lines"] and logs["done"], logs
    assert logs["lines"][-1] == "job succeeded"
    assert gone(docker_client, job["id"]), "the runner and its kernel are removed"


def test_a_failed_cell_keeps_the_partial_notebook_and_says_which_cell_and_why(
    lab: JobsLab, docker_client: docker.DockerClient
) -> None:
    notebook = write_notebook(
        lab.home("a") / "broken.ipynb",
        ["x = 1\nprint('first')", "1 / 0", "print('never')"],
        lab.members["a"],
    )
    job = lab.job("a", "submit", notebook=str(notebook))
    done = lab.ended("a", job["id"])
    assert done["state"] == "failed", done
    assert "Cell 2" in done["error"] and "ZeroDivisionError" in done["error"], done["error"]
    assert "1 / 0" in done["error"]  # the traceback
    executed = nbformat.read(done["output"], as_version=4)
    code = [c for c in executed.cells if c.cell_type == "code"]
    assert "first" in code[0].outputs[0]["text"]
    assert code[1].outputs[0]["ename"] == "ZeroDivisionError"
    assert not code[2].outputs
    assert executed.metadata["labnotebook"]["image_id"] == lab.kernel_image_id
    assert gone(docker_client, job["id"])


def test_only_the_owner_sees_cancels_or_reads_a_job_and_cancel_stops_it(
    lab: JobsLab, docker_client: docker.DockerClient
) -> None:
    notebook = write_notebook(
        lab.home("a") / "long.ipynb", ["import time\ntime.sleep(600)"], lab.members["a"]
    )
    job = lab.job("a", "submit", notebook=str(notebook))
    lab.wait("a", job["id"], lambda s: s["state"] == "running" and s["cell"] == 1, 90)
    for call in ("status", "cancel", "logs"):
        with pytest.raises(PermissionRefused, match="is yours"):
            lab.job("b", call, job_id=job["id"])
    assert job["id"] not in [j["id"] for j in lab.job("b", "list_jobs")]
    with pytest.raises(PermissionRefused, match="admins"):
        lab.job("b", "list_jobs", everyone=True)
    assert lab.job("a", "status", job_id=job["id"])["state"] == "running"  # bob changed nothing
    cancelled = lab.job("a", "cancel", job_id=job["id"])
    assert cancelled["state"] == "cancelled"
    assert gone(docker_client, job["id"], timeout=30), "runner and kernel removed"
    assert lab.job("a", "status", job_id=job["id"])["state"] == "cancelled"
    assert Path(cancelled["output"]).exists()  # the partial notebook stays


def test_jobs_queue_behind_jobs_per_member_and_a_full_queue_is_refused(lab: JobsLab) -> None:
    notebook = write_notebook(
        lab.home("a") / "short.ipynb", ["import time\ntime.sleep(4)"], lab.members["a"]
    )
    first = lab.job("a", "submit", notebook=str(notebook))
    lab.wait("a", first["id"], lambda s: s["state"] == "running", 60)
    second = lab.job("a", "submit", notebook=str(notebook))
    third = lab.job("a", "submit", notebook=str(notebook))
    with pytest.raises(PermissionRefused, match="queue is full"):
        lab.job("a", "submit", notebook=str(notebook))
    ids = {first["id"], second["id"], third["id"]}
    deadline = time.monotonic() + 180
    while True:
        mine = [j for j in lab.job("a", "list_jobs") if j["id"] in ids]
        assert sum(j["state"] == "running" for j in mine) <= 1, mine  # JOBS_PER_MEMBER = 1
        if all(j["state"] == "succeeded" for j in mine):
            break
        assert time.monotonic() < deadline, mine
        time.sleep(0.5)
    by_id = {j["id"]: j for j in mine}
    assert by_id[second["id"]]["started"] <= by_id[third["id"]]["started"]  # FIFO
    assert by_id[first["id"]]["finished"] <= by_id[second["id"]]["started"]


def test_bad_input_is_refused_at_submit_and_leaves_nothing(
    lab: JobsLab, docker_client: docker.DockerClient
) -> None:
    alice, bob = lab.members["a"], lab.members["b"]
    home = lab.home("a")
    good = write_notebook(home / "params.ipynb", ["print(alpha)"], alice, parameters="alpha = 1")
    theirs = write_notebook(lab.home("b") / "theirs.ipynb", ["print(1)"], bob)
    (home / "link.ipynb").symlink_to(theirs)
    os.lchown(home / "link.ipynb", alice.pw_uid, alice.pw_gid)
    (home / "garbage.ipynb").write_text("not json {")
    os.chown(home / "garbage.ipynb", alice.pw_uid, alice.pw_gid)
    before = sorted(p.name for p in home.iterdir())
    jobs_before = lab.job("a", "list_jobs")
    cases: list[tuple[dict[str, Any], type[Exception], str]] = [
        ({"notebook": str(theirs)}, PermissionRefused, "outside your home"),
        ({"notebook": "/etc/passwd.ipynb"}, PermissionRefused, "outside your home"),
        ({"notebook": str(home / "link.ipynb")}, KernelConfigError, "never follow symlinks"),
        ({"notebook": str(home / "missing.ipynb")}, KernelConfigError, "There is no notebook"),
        ({"notebook": str(home / "garbage.ipynb")}, KernelConfigError, "is not a notebook"),
        ({"notebook": str(good), "kernel": "nosuch"}, KernelConfigError, "no kernel named"),
        ({"notebook": str(good), "kernel": "evil-docker"}, PermissionRefused, "not one of"),
        ({"notebook": str(good), "parameters": {"beta": 2}}, KernelConfigError,
         "no parameter beta"),
        ({"notebook": str(good), "every": "every day"}, KernelConfigError,
         "not a cron expression"),
    ]  # fmt: skip
    for args, error, message in cases:
        with pytest.raises(error, match=message):
            lab.job("a", "submit", **args)
    assert sorted(p.name for p in home.iterdir()) == before
    assert lab.job("a", "list_jobs") == jobs_before
    assert not docker_client.containers.list(
        all=True, filters={"label": [f"{L.ROLE}={L.JOB_ROLE}", f"{L.OWNER_UID}={alice.pw_uid}"]}
    )


def test_an_out_of_memory_kernel_fails_the_job_with_that_reason(
    lab: JobsLab, docker_client: docker.DockerClient
) -> None:
    notebook = write_notebook(
        lab.home("a") / "hungry.ipynb",
        ["x = bytearray(1 << 30)\nx[::4096] = b'1' * len(x[::4096])"],
        lab.members["a"],
    )
    job = lab.job("a", "submit", notebook=str(notebook), kernel="small-docker")
    done = lab.ended("a", job["id"])
    assert done["state"] == "failed", done
    assert "out of memory" in done["error"] and "200 MiB" in done["error"], done["error"]
    assert gone(docker_client, job["id"])


def test_a_schedule_knows_its_next_run_and_can_be_cancelled(lab: JobsLab) -> None:
    from croniter import croniter

    notebook = write_notebook(lab.home("a") / "nightly.ipynb", ["print(1)"], lab.members["a"])
    before = datetime.datetime.now(datetime.UTC)
    schedule = lab.job("a", "submit", notebook=str(notebook), every="0 3 * * *")
    assert schedule["state"] == "scheduled" and schedule["every"] == "0 3 * * *"
    expected = croniter("0 3 * * *", before).get_next(datetime.datetime)
    assert schedule["next_run"] == expected.strftime("%Y-%m-%dT%H:%M:%SZ")
    listed = [j for j in lab.job("a", "list_jobs") if j["id"] == schedule["id"]]
    assert listed and listed[0]["next_run"] == schedule["next_run"]
    with pytest.raises(PermissionRefused):
        lab.job("b", "cancel", job_id=schedule["id"])
    assert lab.job("a", "cancel", job_id=schedule["id"])["state"] == "cancelled"
    assert schedule["id"] not in [j["id"] for j in lab.job("a", "list_jobs")]


def test_a_due_schedule_runs_as_a_job(lab: JobsLab) -> None:
    notebook = write_notebook(lab.home("b") / "minutely.ipynb", ["print(7)"], lab.members["b"])
    schedule = lab.job("b", "submit", notebook=str(notebook), every="* * * * *")
    try:
        deadline = time.monotonic() + 150
        while True:
            runs = [j for j in lab.job("b", "list_jobs") if j.get("schedule") == schedule["id"]]
            if runs:
                break
            assert time.monotonic() < deadline, "no run within two minutes"
            time.sleep(1)
        assert lab.ended("b", runs[0]["id"])["state"] == "succeeded"
    finally:
        lab.job("b", "cancel", job_id=schedule["id"])


def test_a_restarted_broker_rebuilds_its_book_from_the_engine_and_its_file(
    lab: JobsLab, docker_client: docker.DockerClient
) -> None:
    notebook = write_notebook(
        lab.home("a") / "survivor.ipynb",
        ["import time\ntime.sleep(8)", "print('after the restart')"],
        lab.members["a"],
    )
    running = lab.job("a", "submit", notebook=str(notebook))
    lab.wait("a", running["id"], lambda s: s["state"] == "running" and s["cell"] >= 1, 90)
    queued = lab.job("a", "submit", notebook=str(notebook))
    lab.broker.stop()
    try:
        time.sleep(2)
        runners = job_containers(docker_client, running["id"])
        assert any(c.status == "running" for c in runners), "the job runs on without the broker"
    finally:
        lab.broker.start()
    first = lab.ended("a", running["id"], timeout=120)
    assert first["state"] == "succeeded", (first, lab.log())
    executed = nbformat.read(first["output"], as_version=4)
    assert "after the restart" in executed.cells[1].outputs[0]["text"]
    second = lab.ended("a", queued["id"], timeout=120)
    assert second["state"] == "succeeded", second
    assert (lab.state / "jobs.json").stat().st_mode & 0o777 == 0o600
