"""Notebook jobs in a real hub (issue 18, Done when): a 60-second job keeps running when its
owner's server is stopped and the hub container is restarted; it ends `succeeded`, and its
output notebook has every output and the image ID. Another member cannot see or cancel it.

alice submits with `labnotebook jobs submit` in a login shell like her terminal's (`docker
exec -u alice ... bash -l`), then her server is stopped and the hub restarted while the job
runs.
"""

from __future__ import annotations

import json
import time

import nbformat
import pytest

from .conftest import Lab, run
from .hubclient import HubUser

pytestmark = [pytest.mark.hub, pytest.mark.docker, pytest.mark.timeout(900)]

FOLDER = "/home/alice/jobs"


def as_member(lab: Lab, user: str, command: str) -> tuple[int, str]:
    result = run(
        "docker", "exec", "-u", user, "-w", f"/home/{user}",
        "-e", f"HOME=/home/{user}", "-e", f"USER={user}", "-e", "LANG=C.UTF-8",
        lab.name, "bash", "-lc", command, check=False,
    )  # fmt: skip
    return result.returncode, result.stdout + result.stderr


def status(lab: Lab, job: str, user: str = "alice") -> dict:
    code, text = as_member(lab, user, f"labnotebook jobs status {job} --json")
    assert code == 0, text
    return json.loads(text)


def test_a_minute_long_job_outlives_its_server_and_a_hub_restart(
    lab: Lab, alice: HubUser, frank: HubUser
) -> None:
    alice.start_server()
    frank.start_server()
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python-docker", "display_name": "Python"}
    parameters = nbformat.v4.new_code_cell("seconds = 1")
    parameters.metadata["tags"] = ["parameters"]
    notebook.cells = [
        parameters,
        nbformat.v4.new_code_cell("import time, os\nprint('start in', os.getcwd())"),
        nbformat.v4.new_code_cell("time.sleep(seconds)\nprint('slept', seconds)"),
        nbformat.v4.new_code_cell("print('the end')"),
    ]
    lab.exec("sh", "-c", f"mkdir -p {FOLDER} && cat > {FOLDER}/minute.ipynb", user="alice",
             stdin=nbformat.writes(notebook))  # fmt: skip
    started = time.monotonic()
    submit = f"labnotebook jobs submit {FOLDER}/minute.ipynb -p seconds 60"
    code, text = as_member(lab, "alice", submit)
    assert code == 0, text
    job = text.strip().splitlines()[-1]
    deadline = time.monotonic() + 120
    while status(lab, job)["state"] != "running" or status(lab, job)["cell"] < 3:
        assert time.monotonic() < deadline, status(lab, job)
        time.sleep(1)

    # Another member: not in her list, no status, no cancel, no logs.
    assert "labadmin" not in lab.exec("id", "-nG", "frank").stdout.split()  # admins may
    code, text = as_member(lab, "frank", "labnotebook jobs ls --json")
    assert code == 0 and job not in text, text
    for command in ("status", "cancel", "logs"):
        code, text = as_member(lab, "frank", f"labnotebook jobs {command} {job}")
        assert code != 0 and "is yours" in text, (command, text)

    alice.stop_server()
    restart_started = time.monotonic()
    run("docker", "restart", "--time", "30", lab.name)
    lab.wait_ready()
    restart_s = time.monotonic() - restart_started
    assert status(lab, job)["state"] == "running", "the job runs on through the restart"

    deadline = time.monotonic() + 240
    while (current := status(lab, job))["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, current
        time.sleep(2)
    total_s = time.monotonic() - started
    print(f"hub restart {restart_s:.0f} s; the 60 s job ended after {total_s:.0f} s")
    assert current["state"] == "succeeded", current
    image_id = run("docker", "image", "inspect", "-f", "{{.Id}}", current["image"]).stdout.strip()
    assert current["image_id"] == image_id
    executed = nbformat.reads(lab.exec("cat", current["output"], user="alice").stdout, 4)
    texts = ["".join(o.get("text", "") for o in c.get("outputs", [])) for c in executed.cells]
    assert f"start in {FOLDER}" in texts[2] and "slept 60" in texts[3], texts
    assert "the end" in texts[4], texts
    assert executed.metadata["labnotebook"]["image_id"] == image_id
    leftovers = run("docker", "ps", "-aq", "--filter", f"label=org.labnotebook.job-id={job}")
    assert not leftovers.stdout.strip()
