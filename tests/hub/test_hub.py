"""The lab hub, driven for real: `make up`, sign-up, approval, login, kernels, upgrade, backup.

The tests tell one story in file order, on one hub (see conftest.py): the admin claims the
hub with the setup token, alice and bob sign up and are approved, alice works in a Docker
kernel, the hub is upgraded, backed up and restored. Fixtures make each test runnable alone.
"""

from __future__ import annotations

import json
import textwrap
import time

import pytest

from .conftest import PASSWORDS, Bootstrap, Lab, run
from .hubclient import HubUser

pytestmark = [pytest.mark.hub, pytest.mark.docker, pytest.mark.timeout(600)]

KERNEL_PROBE = textwrap.dedent(
    """
    import json, os, socket

    def can_write(path):
        try:
            with open(path, "a") as f:
                f.write("written by alice's kernel\\n")
            return True
        except OSError:
            return False

    def can_read(path):
        try:
            with open(path) as f:
                return bool(f.read())
        except OSError:
            return False

    def can_connect(path):
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(path)
            return True
        except OSError:
            return False
        finally:
            s.close()

    print(json.dumps({
        "uid": os.getuid(),
        "groups": sorted(os.getgroups()),
        "home": os.path.expanduser("~"),
        "write_home": can_write(os.path.expanduser("~/from-kernel.txt")),
        "write_shared": can_write("/home/shared/from-alice.txt"),
        "read_bob": can_read("/home/bob/.profile"),
        "list_bob": "notes.txt" in os.listdir("/home/bob"),
        "write_bob": can_write("/home/bob/from-alice.txt"),
        "read_readonly": can_read("/home/shared/readonly/data.csv"),
        "write_readonly": can_write("/home/shared/readonly/data.csv"),
        "new_in_readonly": can_write("/home/shared/readonly/new.txt"),
        "docker_socket": [p for p in ("/var/run/docker.sock", "/run/docker.sock",
                                      "/srv/engine/docker.sock") if os.path.exists(p)],
        "broker_socket": can_connect("/run/labnotebook/broker.sock"),
    }))
    """
)


def uid_of(lab: Lab, name: str) -> int:
    return int(lab.exec("id", "-u", name).stdout)


# -- sign-up and the admin bootstrap ----------------------------------------------------------


def test_admin_signup_needs_the_setup_token(lab: Lab, bootstrap: Bootstrap) -> None:
    assert len(bootstrap.token) >= 20
    logs = lab.make("logs", FOLLOW="no", TAIL="all")
    assert bootstrap.token in logs.stdout + logs.stderr, "the setup token is not in the hub's log"
    for refused in (bootstrap.without_token, bootstrap.wrong_token):
        assert refused.status == 400
        assert "needs the setup token" in refused.message
    assert bootstrap.with_token.alert == "alert-success", bootstrap.with_token
    # One-time: the token is gone, and nobody can sign up as admin again.
    assert lab.exec("test", "-e", "/srv/state/admin-setup-token", check=False).returncode == 1
    again = lab.user("admin").signup(token=bootstrap.token)
    assert again.status == 400 and "taken" in again.message
    assert lab.user("admin").login().status == 302


@pytest.mark.parametrize(
    ("name", "password", "confirmation", "message"),
    [
        ("root", None, None, "'root' is reserved for the system"),
        ("daemon", None, None, "'daemon' is reserved for the system"),
        ("shared", None, None, "'shared' is reserved"),
        ("bad name", None, None, "no spaces, dots or capitals"),
        ("dr.who", None, None, "no spaces, dots or capitals"),
        ("9lives", None, None, "start with a lowercase letter"),
        ("x" * 33, None, None, "at most 32 characters"),
        ("dave", "short", None, "at least 10 characters"),
        ("dave", "password123", None, "commonly used passwords"),
        ("dave", "dave-is-the-best", None, "must not contain the user name"),
        ("dave", "é" * 40, None, "at most 72 bytes long, and this one is 80 bytes"),
        ("dave", "wombat-lantern-73", "wombat-lantern-74", "confirmation differ"),
    ],
)
def test_signup_refuses_bad_input_with_a_message(
    lab: Lab, name: str, password: str | None, confirmation: str | None, message: str
) -> None:
    person = HubUser(lab.url, name, "wombat-lantern-73", str(lab.ca_file()))
    reply = person.signup(password=password, confirmation=confirmation)
    assert reply.status == 400, reply
    assert message in reply.message, reply
    registry = lab.exec("sh", "-c", "cat /srv/state/users.json 2>/dev/null || echo '{}'").stdout
    assert f'"{name}"' not in registry


def test_people_wait_for_approval(lab: Lab, admin: HubUser) -> None:
    # Someone no other test of the session signs up (alice and bob are the fixtures').
    carol = lab.user("carol")
    assert carol.signup().alert == "alert-info"
    refused = carol.login()
    assert refused.status != 302
    assert "has not been authorized by an administrator yet" in refused.message
    assert lab.exec("id", "carol", check=False).returncode != 0, "account before approval"

    admin.approve("carol")
    # Approval makes the Unix account and the home, in the lab group, never in docker.
    groups = lab.exec("id", "-nG", "carol").stdout.split()
    assert "lab" in groups and "docker" not in groups and "labadmin" not in groups
    assert lab.exec("stat", "-c", "%U %G %a", "/home/carol").stdout.split() == [
        "carol", "lab", "750",
    ]  # fmt: skip
    assert lab.exec("readlink", "/home/carol/shared").stdout.strip() == "/home/shared"

    reply = carol.login()
    assert reply.status == 302, reply
    assert carol.logged_in


def test_login_messages(lab: Lab, admin: HubUser, alice: HubUser) -> None:
    alice = lab.user("alice")
    long = alice.login(password="x" * 73)
    assert long.status == 400 and "at most 72 bytes" in long.message
    assert alice.login(password="wrong-password-1").message == "Invalid username or password."

    # An expired or forged form gets JupyterHub's "try again", not a 500 (NativeAuthenticator
    # 1.3.0's login page cannot render errors on JupyterHub >= 5.3 without our fix).
    expired = alice.session.post(
        lab.url + "hub/login?next=",
        data={"_xsrf": "expired", "username": "alice", "password": PASSWORDS["alice"]},
        timeout=30,
    )
    assert expired.status_code == 403 and "Login form invalid or expired" in expired.text

    erin = lab.user("erin")
    erin.signup()
    for _ in range(5):
        assert erin.login(password="not-erins-password").status != 302
    locked = erin.login()  # even the right password, while locked
    assert locked.status == 403 and "Too many failed logins for 'erin'" in locked.message


# -- working in the lab ----------------------------------------------------------------------


def test_alice_works_in_a_docker_kernel(lab: Lab, admin: HubUser, alice: HubUser, bob: HubUser):
    admin.login()  # the admin's account is synced at login (labadmin group, sudo password)
    lab.exec("sh", "-c", "echo 'a,b' > /home/shared/readonly/data.csv", user="admin")
    lab.exec("sh", "-c", "echo hi > ~/notes.txt", user="bob")

    seconds = alice.start_server()
    print(f"alice's server started in {seconds:.1f} s")
    specs = alice.server_api("GET", "kernelspecs").json()
    assert specs["default"] == "python-docker"
    assert "python-docker" in specs["kernelspecs"] and "python3" not in specs["kernelspecs"]
    for name, found in specs["kernelspecs"].items():  # the sample kernels whose image exists too
        provisioner = found["spec"]["metadata"]["kernel_provisioner"]["provisioner_name"]
        assert provisioner == "labnotebook-docker", f"{name}: kernels run in containers only"
    started = time.monotonic()
    kernel = alice.start_kernel()
    print(f"her Docker kernel started in {time.monotonic() - started:.1f} s")
    try:
        run = alice.execute(kernel, KERNEL_PROBE)
        assert run.status == "ok", run
        facts = json.loads(run.stdout)
    finally:
        alice.shutdown_kernel(kernel)
    print(facts)
    assert facts["uid"] == uid_of(lab, "alice") >= 2000
    assert 1500 in facts["groups"] and 0 not in facts["groups"]
    assert facts["home"] == "/home/alice"
    assert facts["write_home"] and facts["write_shared"]
    assert facts["read_bob"] and facts["list_bob"] and not facts["write_bob"]
    assert facts["read_readonly"] and not facts["write_readonly"]
    assert not facts["new_in_readonly"]
    assert facts["docker_socket"] == [] and not facts["broker_socket"]

    # The same files, seen from the hub: hers, and the shared one writable by the lab.
    owner = lab.exec("stat", "-c", "%U", "/home/alice/from-kernel.txt").stdout.strip()
    assert owner == "alice"
    lab.exec("sh", "-c", "echo 'bob was here' >> /home/shared/from-alice.txt", user="bob")


def test_stopping_a_server_removes_its_kernel_containers(lab: Lab, alice: HubUser) -> None:
    alice.start_server()
    alice.start_kernel()
    assert _kernel_containers(lab, "alice")
    alice.stop_server()
    # The server shuts its kernels down as it stops (the broker's reaper, every 60 s, would
    # only catch what a crashed server leaves behind).
    deadline = time.monotonic() + 20
    while _kernel_containers(lab, "alice") and time.monotonic() < deadline:
        time.sleep(1)
    assert not _kernel_containers(lab, "alice")


def _kernel_containers(lab: Lab, owner: str) -> list[str]:
    return run(
        "docker", "ps", "-aq", "--filter", f"network={lab.name}",
        "--filter", f"label=org.labnotebook.owner={owner}",
    ).stdout.split()  # fmt: skip


def test_shared_notebooks_and_checkpoints_stay_lab_writable(lab: Lab, alice: HubUser, bob):
    alice.start_server()
    notebook = {
        "type": "notebook",
        "content": {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5},
    }
    reply = alice.server_api("PUT", "contents/shared/analysis.ipynb", json=notebook)
    assert reply.status_code in (200, 201), reply.text
    reply = alice.server_api("POST", "contents/shared/analysis.ipynb/checkpoints")
    assert reply.status_code == 201, reply.text
    for path in (
        "/home/shared/analysis.ipynb",
        "/home/shared/.ipynb_checkpoints",
        "/home/shared/.ipynb_checkpoints/analysis-checkpoint.ipynb",
    ):
        assert lab.exec("test", "-w", path, user="bob", check=False).returncode == 0, path


def test_nobody_reaches_the_docker_engine(lab: Lab, alice: HubUser) -> None:
    for name in ("alice", "bob", "admin"):
        assert "docker" not in lab.exec("id", "-nG", name).stdout.split()
    probe = lab.exec(
        "python3", "-c",
        "import socket; s = socket.socket(socket.AF_UNIX); "
        "s.connect('/srv/engine/docker.sock')",
        user="alice", check=False,
    )  # fmt: skip
    assert probe.returncode != 0 and "PermissionError" in probe.stderr

    # The broker is reachable, but decides who and what itself: no host paths, no root.
    ask = textwrap.dedent(
        """
        from labnotebook.provisioner.broker_client import BrokerEngine
        from labnotebook.provisioner.mounts import Mount
        from labnotebook.provisioner.request import LaunchRequest, PORT_NAMES
        request = LaunchRequest(
            kernel_id="evil", kernel_name="evil", image="labnotebook/kernel-python:latest",
            argv=["sleep", "60"], connection={"key": "k", **{p: 40000 + i for i, p in
            enumerate(PORT_NAMES)}},
            mounts=[Mount("/", "/host")],
        )
        engine = BrokerEngine("/run/labnotebook/broker.sock")
        # As a member's own code can: the host's root folder, and root's identity sent raw.
        as_root = {**request.to_json(), "mounts": [], "identity": {"uid": 0, "gid": 0}}
        refusals = []
        for attempt in (lambda: engine.launch(request),
                        lambda: engine.request("launch", {"spec": as_root})):
            try:
                attempt()
                print("LAUNCHED")
            except Exception as e:
                refusals.append(str(e))
        if len(refusals) == 2:
            print("REFUSED", " | ".join(refusals))
        """
    )
    answer = lab.exec("python3", "-c", ask, user="alice", check=False)
    assert answer.stdout.startswith("REFUSED"), answer.stdout + answer.stderr
    assert "may not mount '/'" in answer.stdout and "does not accept 'identity'" in answer.stdout


def test_admins_get_sudo_and_others_do_not(lab: Lab, admin: HubUser, alice: HubUser) -> None:
    admin.login()
    as_admin = lab.exec(
        "sudo", "-S", "-k", "-p", "", "id", "-u", user="admin", stdin=PASSWORDS["admin"] + "\n"
    )
    assert as_admin.stdout.strip() == "0"
    as_alice = lab.exec(
        "sudo", "-S", "-k", "-p", "", "true", user="alice", stdin=PASSWORDS["alice"] + "\n",
        check=False,
    )  # fmt: skip
    assert as_alice.returncode != 0
    assert lab.exec("test", "-w", "/home/shared/readonly", user="alice", check=False).returncode


def test_promoted_admins_get_admin_rights_at_their_next_login(lab: Lab, admin, bob) -> None:
    assert "labadmin" not in lab.exec("id", "-nG", "bob").stdout.split()
    admin.login()
    reply = admin.hub_api("PATCH", "users/bob", json={"admin": True})
    assert reply.status_code == 200, reply.text
    assert lab.user("bob").login().status == 302
    assert "labadmin" in lab.exec("id", "-nG", "bob").stdout.split()
    lab.exec("touch", "/home/shared/readonly/from-bob.txt", user="bob")
    registry = json.loads(lab.exec("cat", "/srv/state/users.json").stdout)
    assert registry["users"]["bob"]["admin"] is True


def test_deleted_users_lose_their_account_but_keep_home_and_uid(lab: Lab, admin) -> None:
    dave = lab.user("dave")
    assert dave.signup().alert == "alert-info"
    admin.login()
    admin.approve("dave")
    assert dave.login().status == 302
    uid = uid_of(lab, "dave")
    reply = admin.hub_api("DELETE", "users/dave")
    assert reply.status_code == 204, reply.text
    assert lab.exec("id", "dave", check=False).returncode != 0
    assert lab.exec("stat", "-c", "%u", "/home/dave").stdout.strip() == str(uid)
    # Signing up again under the same name gives the same UID back, so the files follow.
    assert dave.signup().alert == "alert-info"
    admin.approve("dave")
    assert uid_of(lab, "dave") == uid
    assert dave.login().status == 302


def test_idle_culling_is_configured(lab: Lab) -> None:
    processes = lab.exec("ps", "-o", "user=,args=", "-C", "python3").stdout
    culler = [line for line in processes.splitlines() if "jupyterhub_idle_culler" in line]
    assert culler and culler[0].split()[0] == "nobody", processes
    assert "--timeout=28800" in culler[0]
    server = json.loads(lab.exec("cat", "/etc/jupyter/jupyter_server_config.json").stdout)
    assert server["MappingKernelManager"]["cull_idle_timeout"] == 7200


# -- upgrades and backups ---------------------------------------------------------------------


def test_a_restarted_hub_comes_back(lab: Lab, alice: HubUser) -> None:
    # `docker restart` keeps the container's own files (/etc, /run): nothing stale may break
    # the start, e.g. the proxy's PID file naming some other process by now.
    run("docker", "restart", "--time", "30", lab.name)
    lab.wait_ready()
    again = lab.user("alice")
    assert again.login().status == 302
    again.start_server()
    assert uid_of(lab, "alice") >= 2000
    assert "broker" in lab.exec("ps", "-o", "args=", "-C", "python3").stdout


def _fingerprint(lab: Lab) -> dict[str, object]:
    files = [
        "/home/alice/from-kernel.txt",
        "/home/shared/from-alice.txt",
        "/home/bob/notes.txt",
        "/home/shared/readonly/data.csv",
    ]
    return {
        "uids": {name: uid_of(lab, name) for name in ("admin", "alice", "bob")},
        "files": lab.exec("stat", "-c", "%n %U %G %a", *files).stdout,
        "acl": lab.exec("getfacl", "-p", "/home/shared", "/home/shared/readonly").stdout,
        "content": lab.exec("cat", "/home/shared/from-alice.txt").stdout,
    }


def test_upgrade_keeps_users_uids_homes_and_approvals(lab: Lab, alice: HubUser, bob) -> None:
    before = _fingerprint(lab)
    registry = json.loads(lab.exec("cat", "/srv/state/users.json").stdout)
    container_id = _container_id(lab)
    old_image = run("docker", "inspect", "-f", "{{.Image}}", lab.name).stdout.strip()
    started = time.monotonic()
    try:
        lab.make("upgrade")
    finally:
        # The rebuilt image took over the test tag; the old one is ours to remove.
        run("docker", "image", "rm", old_image, check=False)
    print(f"make upgrade took {time.monotonic() - started:.1f} s")
    assert _container_id(lab) != container_id, "the container was not re-created"
    assert _fingerprint(lab) == before
    assert json.loads(lab.exec("cat", "/srv/state/users.json").stdout) == registry

    again = lab.user("alice")
    assert again.login().status == 302, "alice's approval or password was lost"
    again.start_server()
    reply = again.server_api("GET", "contents/from-kernel.txt")
    assert reply.status_code == 200 and "alice's kernel" in reply.json()["content"]
    admin = lab.user("admin")
    assert admin.login().status == 302
    assert admin.hub_api("GET", "users/admin").json()["admin"] is True


def _container_id(lab: Lab) -> str:
    return run("docker", "inspect", "-f", "{{.Id}}", lab.name).stdout.strip()


def test_backup_and_restore_onto_fresh_volumes(
    lab: Lab, second_lab: Lab, alice: HubUser, bob: HubUser
) -> None:
    before = _fingerprint(lab)
    started = time.monotonic()
    out = lab.make("backup").stdout
    archives = sorted(lab.backup_dir.glob(f"{lab.name}-*.tar.gz"))
    assert archives, out
    assert archives[-1].stat().st_mode & 0o077 == 0, "backups hold secrets: owner-only"
    print(f"make backup took {time.monotonic() - started:.1f} s: {archives[-1].stat().st_size} B")

    second_lab.make("restore", BACKUP=str(archives[-1]))
    # This time with the operator's own certificate, which the hub must serve.
    cert, key = lab.backup_dir / "operator-cert.pem", lab.backup_dir / "operator-key.pem"
    run(
        "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-nodes", "-days", "2", "-subj", "/CN=operator-test", "-keyout", str(key),
        "-out", str(cert), "-addext", "subjectAltName=IP:127.0.0.1",
    )  # fmt: skip
    second_lab.make("up", SSL_CERT=str(cert), SSL_KEY=str(key))
    second_lab.certificate = cert
    assert _fingerprint(second_lab) == before
    restored = second_lab.user("alice")
    assert restored.login().status == 302
    assert second_lab.user("bob").login().status == 302
    # The database snapshot is a sound SQLite database.
    check = second_lab.exec(
        "sqlite3", "/srv/state/jupyterhub.sqlite", "PRAGMA integrity_check;"
    )  # fmt: skip
    assert check.stdout.strip() == "ok"

    # Restoring over existing volumes is refused unless forced.
    second_lab.make("down")
    refused = second_lab.make("restore", check=False, BACKUP=str(archives[-1]))
    assert refused.returncode != 0 and "exists" in refused.stderr
