"""The real thing (marked `docker`, needs root): the broker as root in a subprocess on a private
socket, and throwaway accounts (`lnbtest*`) whose processes call it - the provisioner starting
a real kernel included - proving what a user can and cannot get."""

from __future__ import annotations

import grp
import json
import os
import re
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
import pytest
from labnotebook.provisioner import labels as L
from labnotebook.provisioner.broker_client import BrokerEngine
from labnotebook.provisioner.errors import (
    KernelLaunchError,
    PermissionRefused,
)

from .bench_broker import measure
from .broker_fixtures import (
    REPO,
    Account,
    BrokerProcess,
    UserAgent,
    create_account,
    delete_account,
    kernel_spec,
    launch_request,
)
from .conftest import KERNEL_IMAGE, REQUIRE_DOCKER, SESSION, SESSION_LABEL, TEST_NETWORK

# == the real thing: root broker, real users, real containers ================================


@dataclass
class Lab:
    broker: BrokerProcess
    alice: Account
    bob: Account
    group_gid: int
    homes: str
    shared: str
    reference: str
    other: str
    agents: dict[str, UserAgent]

    def kernelspec(self, account: Account, config: dict[str, Any]) -> tuple[list[str], str]:
        """Write a Docker kernelspec the account can read; returns (kernel_dirs, name)."""
        name = f"broker-{uuid.uuid4().hex[:8]}"
        folder = account.scratch / "kernels" / name
        folder.mkdir(parents=True)
        spec = {
            "argv": ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python (broker)",
            "language": "python",
            "metadata": {
                "kernel_provisioner": {"provisioner_name": "labnotebook-docker", "config": config}
            },
        }
        (folder / "kernel.json").write_text(json.dumps(spec))
        for path in (account.scratch / "kernels", folder, folder / "kernel.json"):
            os.chown(path, account.uid, account.gid)
        return [str(account.scratch / "kernels")], name


def needs_root() -> None:
    if os.geteuid() != 0:
        reason = "the broker tests run the broker as root and switch to test accounts"
        if REQUIRE_DOCKER:
            pytest.fail(f"LABNOTEBOOK_REQUIRE_DOCKER=1 but not root: {reason}", pytrace=False)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def lab(docker_client: docker.DockerClient) -> Iterator[Lab]:
    needs_root()
    tag = SESSION[:6]
    made_volumes = []
    accounts: list[Account] = []
    broker = agents = None
    group = f"lnbtestg{tag}"
    try:
        for role in ("homes", "shared", "reference", "other"):
            volume = docker_client.volumes.create(
                f"lnbtest-{role}-{SESSION}", labels={SESSION_LABEL: SESSION}
            )
            made_volumes.append(volume)
        subprocess.run(["groupadd", group], check=True, capture_output=True)
        alice = create_account(f"lnbtesta{tag}", groups=[group])
        accounts.append(alice)
        bob = create_account(f"lnbtestb{tag}")
        accounts.append(bob)
        homes, shared, reference, other = (v.name for v in made_volumes)
        # The lab's home volume holds the users' homes, as in the hub.
        docker_client.containers.run(
            KERNEL_IMAGE,
            ["sh", "-c", " && ".join(
                [f"mkdir -p /home/{a.name} && chmod 700 /home/{a.name}" for a in (alice, bob)]
                + [f"mkdir /home/{alice.name}/project",
                   f"ln -s /home/{bob.name} /home/{alice.name}/to-bob"]
                + [f"chown -hR {a.uid}:{a.gid} /home/{a.name}" for a in (alice, bob)]
            )],
            user="0:0",
            volumes={homes: {"bind": "/home", "mode": "rw"}},
            network_mode="none",
            labels={SESSION_LABEL: SESSION},
            remove=True,
        )  # fmt: skip
        broker = BrokerProcess(
            f"c.LaunchPolicy.network = {TEST_NETWORK!r}\n"
            f"c.LaunchPolicy.lab_mounts = ['{homes}:/home']\n"
            f"c.LaunchPolicy.allowed_mounts = ['{shared}:/shared', '{reference}:/reference:ro']\n"
            f"c.LaunchPolicy.allowed_labels = ['{SESSION_LABEL}']\n"
            "c.LaunchPolicy.max_memory = '2g'\n"
            "c.LaunchPolicy.max_cpus = 1.5\n"
            "c.KernelBroker.reap_interval = 0\n"
        ).start()
        agents = {
            "alice": UserAgent(alice.uid, env={"LNBTEST_SCRATCH": str(alice.scratch)}),
            "bob": UserAgent(bob.uid, env={"LNBTEST_SCRATCH": str(bob.scratch)}),
        }
        yield Lab(
            broker, alice, bob, grp.getgrnam(group).gr_gid, homes, shared, reference, other, agents
        )
    finally:
        for agent in (agents or {}).values():
            agent.close()
        if broker is not None:
            print(broker.log_text())
            broker.cleanup()
        for account in accounts:
            for container in docker_client.containers.list(
                all=True, filters={"label": f"{L.OWNER_UID}={account.uid}"}
            ):
                container.remove(force=True)
            delete_account(account)
        subprocess.run(["groupdel", group], check=False, capture_output=True)
        for volume in made_volumes:
            volume.remove(force=True)


def no_container_for(client: docker.DockerClient, kernel_id: str) -> bool:
    return not client.containers.list(all=True, filters={"label": f"{L.KERNEL_ID}={kernel_id}"})


@pytest.mark.docker
def test_user_runs_a_kernel_through_the_broker_as_themselves(
    lab: Lab, docker_client: docker.DockerClient
) -> None:
    kernel_dirs, name = lab.kernelspec(
        lab.alice,
        {
            "image": KERNEL_IMAGE,
            "broker_socket": lab.broker.socket,
            "network": "host",  # the broker forces the lab's network
            "volumes": [f"{lab.homes}:/home"],  # the lab mounts it anyway: merged
            "labels": {SESSION_LABEL: SESSION},
        },
    )
    code = (
        "import os, pwd, json\n"
        "home = os.path.expanduser('~')\n"
        "open(os.path.join(home, 'proof.txt'), 'w').write('mine')\n"
        "print(json.dumps({'uid': os.getuid(), 'gid': os.getgid(), 'groups': os.getgroups(),\n"
        "    'user': pwd.getpwuid(os.getuid()).pw_name, 'home': home, 'cwd': os.getcwd(),\n"
        "    'proof_owner': os.stat(os.path.join(home, 'proof.txt')).st_uid}))\n"
    )
    project = f"/home/{lab.alice.name}/project"  # the notebook's folder, in the homes volume
    result = lab.agents["alice"].call(
        "run_kernel", kernel_dirs=kernel_dirs, kernel_name=name, code=code, cwd=project
    )
    assert result["engine"] == "BrokerEngine" and result["status"] == "ok", result
    seen = json.loads(result["stdout"])
    alice = lab.alice
    assert (seen["uid"], seen["gid"], seen["user"]) == (alice.uid, alice.gid, alice.name)
    assert lab.group_gid in seen["groups"] and 0 not in seen["groups"]
    assert seen["home"] == f"/home/{alice.name}" and seen["cwd"] == project
    assert seen["proof_owner"] == alice.uid
    assert result["container"].startswith(f"labnotebook-{alice.name}-")
    with pytest.raises(docker.errors.NotFound):  # shut down and removed
        docker_client.containers.get(result["container"])


@pytest.mark.docker
def test_test_accounts_really_cannot_use_docker(lab: Lab) -> None:
    alice = lab.agents["alice"]
    assert alice.call("whoami")["uid"] == lab.alice.uid
    assert alice.call("open_docker_socket") == "PermissionError"
    hello = alice.call("engine", sock=lab.broker.socket, method="hello", args=[])
    assert hello["peer"]["uid"] == lab.alice.uid and hello["peer"]["pid"] == alice.pid


@pytest.mark.docker
def test_forged_identity_and_labels_are_ignored_and_no_privileges_given(
    lab: Lab, docker_client: docker.DockerClient
) -> None:
    spec = kernel_spec(labels={SESSION_LABEL: SESSION, "traefik.http.routers.k.rule": "Host(`x`)"})
    assert spec["labels"][L.OWNER_UID] == "0"  # claims to be root's
    launched = lab.agents["alice"].call("launch_json", sock=lab.broker.socket, spec=spec)
    try:
        details = docker_client.api.inspect_container(launched["container_id"])
        alice = lab.alice
        assert details["Config"]["User"] == f"{alice.uid}:{alice.gid}"
        assert details["Name"] == f"/labnotebook-{alice.name}-{spec['kernel_id']}"
        labels = details["Config"]["Labels"]
        assert labels[L.OWNER_UID] == str(alice.uid) and labels[L.OWNER] == alice.name
        assert labels[L.SERVER] == L.server_identity(lab.agents["alice"].pid)
        assert labels[SESSION_LABEL] == SESSION and not any(k.startswith("traefik") for k in labels)
        assert f"HOME=/home/{alice.name}" in details["Config"]["Env"]
        host = details["HostConfig"]
        assert host["Privileged"] is False
        assert not host.get("CapAdd") and host["CapDrop"] == ["ALL"]
        assert not host.get("Devices") and not host.get("DeviceRequests")
        assert host["NetworkMode"] == TEST_NETWORK
        assert (host["PidMode"], host["UTSMode"], host["UsernsMode"]) == ("", "", "")
        assert host["IpcMode"] in ("private", "shareable")
        assert host["SecurityOpt"] == ["no-new-privileges:true"]
        assert not host.get("PortBindings") and not host.get("Binds")
        assert (host["Memory"], host["NanoCpus"], host["PidsLimit"]) == (2 << 30, 15 * 10**8, 4096)
        assert [str(lab.group_gid)] == host["GroupAdd"]
        assert [(m["Type"], m["Name"], m["Destination"]) for m in details["Mounts"]] == [
            ("volume", lab.homes, "/home")
        ]
    finally:
        lab.agents["alice"].call(
            "engine", sock=lab.broker.socket, method="remove", args=[launched["container_id"]]
        )
    assert no_container_for(docker_client, spec["kernel_id"])


@pytest.mark.docker
def test_root_gets_no_kernel_from_the_broker(lab: Lab, docker_client: docker.DockerClient) -> None:
    spec = launch_request(labels={SESSION_LABEL: SESSION})
    with pytest.raises(PermissionRefused, match="does not start kernels for root"):
        BrokerEngine(lab.broker.socket).launch(spec)
    assert no_container_for(docker_client, spec.kernel_id)


REFUSALS: list[tuple[str, dict[str, Any], str]] = [
    ("privileged", {"privileged": True}, "does not accept 'privileged'"),
    ("cap-add", {"cap_add": ["SYS_ADMIN"]}, "does not accept 'cap_add'"),
    ("devices", {"devices": ["/dev/sda:/dev/sda"]}, "does not accept 'devices'"),
    ("host-pid", {"pid_mode": "host"}, "does not accept 'pid_mode'"),
    ("host-net", {"network_mode": "host"}, "does not accept 'network_mode'"),
    ("root-fs", {"mounts": [{"source": "/", "target": "/host"}]}, "may not mount '/'"),
    ("docker-sock", {"mounts": [{"source": "/var/run/docker.sock", "target": "/d"}]},
     "may not mount '/var/run/docker.sock'"),
    ("other-volume", {"mounts": [{"source": "{other}", "target": "/data"}]}, "may not mount"),
    ("moved-volume", {"mounts": [{"source": "{shared}", "target": "/etc"}]}, "may not mount"),
    ("rw-of-ro", {"mounts": [{"source": "{reference}", "target": "/reference"}]}, "read-only"),
    ("over-home", {"mounts": [{"source": "{other}", "target": "/home"}]}, "already mounts"),
    ("image", {"image": "debian:bookworm"}, "not one of this lab's kernel images"),
    ("publish", {"publish_ports": True}, "never on ports published on the host"),
    ("memory", {"memory": 64 << 30}, "for 64 GiB of memory, but this lab allows at most 2 GiB"),
    ("cpus", {"nano_cpus": 2 * 10**9}, "at most 1.5 CPUs"),
    ("pids", {"pids_limit": 100_000}, "at most 4096 processes"),
    ("pull", {"pull_policy": "always"}, "pull policy 'always' is not allowed"),
]  # fmt: skip


@pytest.mark.docker
@pytest.mark.parametrize(
    ("change", "message"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
def test_refused_requests_say_why_and_leave_nothing(
    lab: Lab, docker_client: docker.DockerClient, change: dict[str, Any], message: str
) -> None:
    names = {"other": lab.other, "shared": lab.shared, "reference": lab.reference}
    text = re.sub(r"\{(other|shared|reference)\}", lambda m: names[m.group(1)], json.dumps(change))
    change = json.loads(text)
    spec = kernel_spec(labels={SESSION_LABEL: SESSION}, **change)
    with pytest.raises(PermissionRefused, match=re.escape(message)):
        lab.agents["alice"].call("launch_json", sock=lab.broker.socket, spec=spec)
    assert no_container_for(docker_client, spec["kernel_id"])


@pytest.mark.docker
def test_failing_launch_leaves_nothing(lab: Lab, docker_client: docker.DockerClient) -> None:
    """Docker fails after the container exists (no init to exec the missing program)."""
    spec = kernel_spec(labels={SESSION_LABEL: SESSION}, argv=["/no/such/kernel"], init=False)
    with pytest.raises(KernelLaunchError, match="cannot run the kernel command"):
        lab.agents["alice"].call("launch_json", sock=lab.broker.socket, spec=spec)
    assert no_container_for(docker_client, spec["kernel_id"])
    spec = kernel_spec(labels={SESSION_LABEL: SESSION}, memory=1024)  # below Docker's minimum
    with pytest.raises(KernelLaunchError, match="Docker refused to create"):
        lab.agents["alice"].call("launch_json", sock=lab.broker.socket, spec=spec)
    assert no_container_for(docker_client, spec["kernel_id"])


@pytest.mark.docker
def test_working_dir_cannot_make_root_owned_folders_in_volumes(
    lab: Lab, docker_client: docker.DockerClient
) -> None:
    """Docker would mkdir a missing working_dir as root, through the user's symlinks."""
    alice, sock = lab.agents["alice"], lab.broker.socket
    targets = [f"/home/{lab.bob.name}/planted", f"/home/{lab.alice.name}/to-bob/via-link"]
    launched = [
        alice.call(
            "launch_json",
            sock=sock,
            spec=kernel_spec(labels={SESSION_LABEL: SESSION}, working_dir=target),
        )
        for target in targets
    ]
    try:
        for container in launched:
            state = alice.call(
                "engine", sock=sock, method="state", args=[container["container_id"]]
            )
            assert state["running"], state  # the kernel started anyway, in its home
        time.sleep(0.5)
        logs = alice.call("engine", sock=sock, method="logs", args=[launched[0]["container_id"]])
        assert "cannot enter" in logs
        listing = docker_client.containers.run(
            KERNEL_IMAGE, ["ls", "-A", f"/home/{lab.bob.name}"], user="0:0", network_mode="none",
            volumes={lab.homes: {"bind": "/home", "mode": "ro"}}, remove=True,
            labels={SESSION_LABEL: SESSION},
        )  # fmt: skip
        assert listing.decode().split() == []
    finally:
        for container in launched:
            alice.call("engine", sock=sock, method="remove", args=[container["container_id"]])


@pytest.mark.docker
def test_allowed_volume_can_be_mounted_read_only(
    lab: Lab, docker_client: docker.DockerClient
) -> None:
    spec = kernel_spec(
        labels={SESSION_LABEL: SESSION},
        mounts=[
            {"source": lab.shared, "target": "/shared", "read_only": True},
            {"source": lab.reference, "target": "/reference", "read_only": True},
        ],
    )
    agent = lab.agents["alice"]
    launched = agent.call("launch_json", sock=lab.broker.socket, spec=spec)
    try:
        mounts = docker_client.api.inspect_container(launched["container_id"])["Mounts"]
        assert sorted((m["Name"], m["Destination"], m["RW"]) for m in mounts) == sorted(
            [(lab.homes, "/home", True), (lab.shared, "/shared", False),
             (lab.reference, "/reference", False)]
        )  # fmt: skip
    finally:
        agent.call("engine", sock=lab.broker.socket, method="remove",
                   args=[launched["container_id"]])  # fmt: skip


@pytest.mark.docker
def test_users_cannot_act_on_each_others_kernels(
    lab: Lab, docker_client: docker.DockerClient
) -> None:
    alice, bob, sock = lab.agents["alice"], lab.agents["bob"], lab.broker.socket
    launched = alice.call(
        "launch_json", sock=sock, spec=kernel_spec(labels={SESSION_LABEL: SESSION})
    )
    cid = launched["container_id"]
    # Not a kernel (no role label), though it claims to be Alice's.
    plain = docker_client.containers.run(
        KERNEL_IMAGE, ["sleep", "infinity"], detach=True, network_mode="none",
        labels={SESSION_LABEL: SESSION, L.OWNER_UID: str(lab.alice.uid)},
    )  # fmt: skip
    try:
        for ref in (cid, cid[:12], launched["name"]):
            for method, args in [("state", []), ("signal", [9]), ("remove", []), ("logs", []),
                                 ("wait", [1])]:  # fmt: skip
                with pytest.raises(PermissionRefused, match="not one of your kernels"):
                    bob.call("engine", sock=sock, method=method, args=[ref, *args])
        for method, args in [("state", []), ("signal", [9]), ("remove", [])]:
            with pytest.raises(PermissionRefused, match="not one of your kernels"):
                alice.call("engine", sock=sock, method=method, args=[plain.id, *args])
        assert bob.call("engine", sock=sock, method="kernel_containers", args=[]) == []
        with pytest.raises(PermissionRefused, match="only list your own"):
            bob.call("engine", sock=sock, method="kernel_containers", args=[lab.alice.uid])
        mine = alice.call("engine", sock=sock, method="kernel_containers", args=[])
        assert [c["Id"] for c in mine] == [cid]
        state = alice.call("engine", sock=sock, method="state", args=[cid])
        assert state["running"] is True
        plain.reload()
        assert plain.status == "running"
    finally:
        plain.remove(force=True)
        alice.call("engine", sock=sock, method="remove", args=[cid])


@pytest.mark.docker
def test_owner_signals_waits_and_removes(lab: Lab) -> None:
    alice, sock = lab.agents["alice"], lab.broker.socket
    launched = alice.call(
        "launch_json", sock=sock, spec=kernel_spec(labels={SESSION_LABEL: SESSION})
    )
    cid = launched["container_id"]
    try:
        with pytest.raises(PermissionRefused, match="Signal 19 cannot be sent"):
            alice.call("engine", sock=sock, method="signal", args=[cid, int(signal.SIGSTOP)])
        alice.call("engine", sock=sock, method="signal", args=[cid, 0])
        assert alice.call("engine", sock=sock, method="wait", args=[cid, 0.5]) is None
        alice.call("engine", sock=sock, method="signal", args=[cid, int(signal.SIGTERM)])
        assert alice.call("engine", sock=sock, method="wait", args=[cid, 30]) == 143
        state = alice.call("engine", sock=sock, method="state", args=[cid])
        assert state["running"] is False and state["exit_code"] == 143
    finally:
        alice.call("engine", sock=sock, method="remove", args=[cid])
    assert alice.call("engine", sock=sock, method="state", args=[cid]) is None


@pytest.mark.docker
def test_eight_concurrent_launches_do_not_block_others(lab: Lab) -> None:
    alice, bob, sock = lab.agents["alice"], lab.agents["bob"], lab.broker.socket
    specs = [kernel_spec(labels={SESSION_LABEL: SESSION}) for _ in range(8)]
    outcome: dict[str, Any] = {}
    launching = threading.Thread(
        target=lambda: outcome.update(alice.call("launch_many", sock=sock, specs=specs))
    )
    launching.start()
    hellos = []
    time.sleep(0.2)  # the launches are in flight
    while launching.is_alive() and len(hellos) < 20:
        hellos.append(bob.call("timed_hello", sock=sock))
        time.sleep(0.05)
    launching.join()
    results = outcome["results"]
    try:
        assert all(r["ok"] for r in results), results
        assert len({r["container_id"] for r in results}) == 8
        serial = sum(r["client_ms"] for r in results)
        print(
            f"8 concurrent launches: wall {outcome['wall_ms']:.0f} ms, each "
            f"{min(r['client_ms'] for r in results):.0f}-{max(r['client_ms'] for r in results):.0f}"
            f" ms; another user's requests meanwhile: max {max(hellos):.1f} ms"
        )
        assert outcome["wall_ms"] < serial  # they overlapped
        assert hellos and max(hellos) < 250  # the slow launches held nobody else up
    finally:
        for r in results:
            if r.get("ok"):
                alice.call("engine", sock=sock, method="remove", args=[r["container_id"]])


@pytest.mark.docker
def test_one_member_holding_many_waits_does_not_stall_others_shutdowns(lab: Lab) -> None:
    """Waits block a broker thread each until a kernel ends; one member's pile of them must
    queue behind that member only."""
    alice, bob, sock = lab.agents["alice"], lab.agents["bob"], lab.broker.socket
    held = [
        alice.call("launch_json", sock=sock, spec=kernel_spec(labels={SESSION_LABEL: SESSION}))
        for _ in range(2)
    ]
    hold_seconds = 90.0
    try:
        alice.call(
            "hold_waits", sock=sock, containers=[k["container_id"] for k in held], count=60,
            timeout=hold_seconds,
        )  # fmt: skip
        time.sleep(1)  # alice's waits are in the broker now
        bobs = bob.call("launch_json", sock=sock, spec=kernel_spec(labels={SESSION_LABEL: SESSION}))
        started = time.monotonic()
        bob.call("engine", sock=sock, method="signal", args=[bobs["container_id"], 15])
        code = bob.call("engine", sock=sock, method="wait", args=[bobs["container_id"], 60])
        elapsed = time.monotonic() - started
        bob.call("engine", sock=sock, method="remove", args=[bobs["container_id"]])
        print(f"bob's shutdown with 60 of alice's waits in flight: {elapsed:.2f} s")
        assert code == 143
        # Relative to what alice holds: her waits end after hold_seconds; bob's shutdown
        # must not have queued behind them.
        assert elapsed < hold_seconds / 6, elapsed
    finally:
        for kernel in held:
            alice.call("engine", sock=sock, method="remove", args=[kernel["container_id"]])


@pytest.mark.docker
def test_kernels_of_a_stopped_server_are_reaped(
    lab: Lab, docker_client: docker.DockerClient
) -> None:
    with UserAgent(lab.alice.uid, env={"LNBTEST_SCRATCH": str(lab.alice.scratch)}) as server:
        launched = server.call(
            "launch_json", sock=lab.broker.socket, spec=kernel_spec(labels={SESSION_LABEL: SESSION})
        )
        assert launched["name"] not in BrokerEngine(lab.broker.socket).reap()  # server runs
    # That "server" has exited; its kernel container is still there...
    docker_client.containers.get(launched["container_id"])
    with pytest.raises(PermissionRefused, match="Only root may"):
        lab.agents["bob"].call("engine", sock=lab.broker.socket, method="reap", args=[])
    # ...until the broker reaps (it does so periodically; root may ask for it now).
    assert launched["name"] in BrokerEngine(lab.broker.socket).reap()
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(launched["container_id"])


@pytest.mark.docker
def test_every_request_is_logged_with_who_what_and_how_long(lab: Lab) -> None:
    lab.agents["bob"].call("engine", sock=lab.broker.socket, method="hello", args=[])
    log = lab.broker.log_text()
    bob = re.escape(f"{lab.bob.name}({lab.bob.uid}) pid {lab.agents['bob'].pid}")
    assert re.search(bob + r" hello -: ok in \d+\.\d ms", log), log[-2000:]
    alice = re.escape(f"{lab.alice.name}({lab.alice.uid})")
    name = re.escape(lab.alice.name)
    assert re.search(alice + rf" pid \d+ launch labnotebook-{name}-[-0-9a-f]+: ok in", log)
    assert re.search(alice + r" pid \d+ launch kernel [-0-9a-f]+: PermissionRefused in", log)


@pytest.mark.docker
def test_broker_latency(lab: Lab) -> None:
    """The broker adds at most 30 ms (median) to a launch; the numbers go to the report."""
    result = measure(
        n=int(os.environ.get("LNBTEST_BROKER_BENCH_N", "8")),
        network=TEST_NETWORK,
        labels={SESSION_LABEL: SESSION},
    )
    print("broker latency:", json.dumps(result))
    artifacts = REPO / "tests" / "artifacts"
    artifacts.mkdir(exist_ok=True)
    (artifacts / "broker_latency.json").write_text(json.dumps(result, indent=1))
    assert result["broker_overhead_median_ms"] <= 30, result
