"""Resource bounds on a real hub: limits on the hub container and every kernel, bounded logs,
and a revoked member's access ending at once."""

from __future__ import annotations

import html
import json
import re

import pytest

from .conftest import Lab, _signed_up_and_approved, run
from .hubclient import HubUser

pytestmark = [pytest.mark.hub, pytest.mark.docker, pytest.mark.timeout(600)]


def _inspect(container: str) -> dict:
    return json.loads(run("docker", "inspect", container).stdout)[0]


def _kernel_container(kernel_id: str) -> str:
    ids = run(
        "docker", "ps", "-aq", "--filter", f"label=org.labnotebook.kernel-id={kernel_id}"
    ).stdout.split()  # fmt: skip
    assert len(ids) <= 1, ids
    return ids[0] if ids else ""


def test_the_hub_container_is_bounded(lab: Lab) -> None:
    host = _inspect(lab.name)["HostConfig"]
    assert host["Memory"] > 0 and host["MemorySwap"] == host["Memory"]  # no swap
    assert host["PidsLimit"] == 8192
    assert host["LogConfig"]["Config"] == {"max-size": "50m", "max-file": "3"}


def test_every_kernel_is_bounded(lab: Lab, alice: HubUser) -> None:
    alice.login()
    alice.start_server()
    kernel = alice.start_kernel()
    try:
        host = _inspect(_kernel_container(kernel))["HostConfig"]
        assert host["Memory"] > 0 and host["MemorySwap"] == host["Memory"]
        assert host["NanoCpus"] > 0 and host["PidsLimit"] == 4096
        assert host["OomScoreAdj"] == 500
        assert host["LogConfig"]["Config"] == {"max-size": "10m", "max-file": "2"}
        # The member's server and what it starts are the OOM killer's first choice in the hub.
        server_pid = lab.exec("pgrep", "-u", "alice", "-f", "jupyterhub-singleuser").stdout
        score = lab.exec("cat", f"/proc/{server_pid.split()[0]}/oom_score_adj").stdout
        assert int(score) == 500
    finally:
        alice.shutdown_kernel(kernel)


def test_revoking_a_member_ends_their_access_at_once(lab: Lab, admin: HubUser) -> None:
    dave = _signed_up_and_approved(lab, "dave", admin)
    dave.start_server()
    kernel = dave.start_kernel()
    assert _kernel_container(kernel)
    lab.exec("su", "-s", "/bin/sh", "dave", "-c", "sleep 600 >/dev/null 2>&1 &")

    admin.login()
    # The Revoke button on /hub/authorize: its form, as the browser would send it.
    page = admin.session.get(lab.url + "hub/authorize").text
    row = re.search(r'<tr id="user-dave".*?</tr>', page, re.S)
    assert row and "Revoke" in row.group(0)
    fields = dict(re.findall(r'name="(\w+)" value="([^"]*)"', row.group(0)))
    assert fields["authorized"] == "no"
    reply = admin.session.post(
        lab.url + "hub/authorize/dave", data={k: html.unescape(v) for k, v in fields.items()}
    )
    assert reply.status_code == 200, reply.status_code

    # Their browser session, their server and its kernels, their processes: all gone now.
    home = dave.session.get(lab.url + "hub/home", allow_redirects=False)
    assert home.status_code in (302, 403), home.status_code
    assert not _kernel_container(kernel), "the revoked member's kernel still runs"
    assert lab.exec("pgrep", "-u", "dave", check=False).returncode != 0
    assert "has not been authorized" in lab.user("dave").login().message
