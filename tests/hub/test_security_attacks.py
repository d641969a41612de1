"""A hostile lab member (and an outsider) attacks a real hub started by `make up`.

Each test performs an attack for real - from the member's terminal (`docker exec -u NAME`
into the hub is what JupyterLab's terminal gives them), through the kernel broker's socket,
from a kernel, or over HTTPS - asserts that it fails, and that the lab still works after it
(the hub restarts, people log in, kernels start).
"""

from __future__ import annotations

import json
import re
import tarfile
import textwrap

import pytest

from .conftest import PASSWORDS, Lab, free_port, run
from .hubclient import HubUser

pytestmark = [pytest.mark.hub, pytest.mark.docker, pytest.mark.timeout(600)]


def as_member(lab: Lab, name: str, script: str, check: bool = False):
    """Run a shell script as `name` in the hub, as their JupyterLab terminal would."""
    return lab.exec("sh", "-c", script, user=name, check=check)


def restart(lab: Lab) -> None:
    """`docker restart`: the container's own /etc and /run are kept, so anything root wrote
    for an attacker at the last start would still be there."""
    run("docker", "restart", "--time", "30", lab.name)
    lab.wait_ready()


# -- 1. root and the members' folders ----------------------------------------------------------


def test_members_cannot_displace_what_the_lab_manages_in_shared(lab: Lab, alice: HubUser) -> None:
    assert lab.exec("mountpoint", "-q", "/home/shared/readonly", check=False).returncode == 0
    for attack in (
        "mv /home/shared/readonly /home/shared/moved",
        "rm -rf /home/shared/readonly",
        "ln -sfn /srv/state /home/shared/readonly",
        "mv /home/shared/readonly/README.txt /home/shared/",
        "echo x > /home/shared/readonly/README.txt",
    ):
        assert as_member(lab, "alice", attack).returncode != 0, attack
    assert lab.exec("stat", "-c", "%U %G %F", "/home/shared/readonly").stdout.split() == [
        "root", "labadmin", "directory",
    ]  # fmt: skip
    assert "only the lab's" in lab.exec("cat", "/home/shared/readonly/README.txt").stdout

    # Nor from a kernel, which mounts the same volumes (readonly a mount point there too).
    alice.start_server()
    kernel = alice.start_kernel()
    try:
        result = alice.execute(
            kernel,
            "import os\ntry:\n    os.rename('/home/shared/readonly', '/home/shared/moved')\n"
            "    print('MOVED')\nexcept OSError as e:\n    print('REFUSED', e.strerror)",
            timeout=120,
        )
        assert "REFUSED" in result.stdout, result
    finally:
        alice.shutdown_kernel(kernel)


def test_root_follows_no_member_symlink_at_start(lab: Lab, alice: HubUser, bob: HubUser) -> None:
    as_member(lab, "bob", "mkdir -p ~/private && chmod 700 ~/private && echo s > ~/private/s")
    # What got root to create /etc/ld.so.preload group-writable, or to hand out the state
    # volume or bob's home, before: symlinks where root used to write, chown and chmod.
    for plant in (
        "ln -sfn /etc/ld.so.preload /home/shared/README.txt",
        "rm -f ~/shared && ln -s /etc/ld.so.preload ~/shared",
        "ln -sfn /home/bob/private /home/shared/private-of-bob",
    ):
        as_member(lab, "alice", plant, check=True)
    restart(lab)

    assert lab.exec("test", "-e", "/etc/ld.so.preload", check=False).returncode != 0
    assert lab.exec("readlink", "/home/alice/shared").stdout.strip() == "/etc/ld.so.preload"
    assert lab.exec("stat", "-c", "%U %a", "/home/bob/private").stdout.split() == ["bob", "700"]
    assert as_member(lab, "alice", "cat /home/bob/private/s").returncode != 0
    assert lab.exec("stat", "-c", "%U %a", "/srv/state").stdout.split() == ["root", "700"]
    # The lab still works: people log in, kernels start.
    assert lab.user("alice").login().status == 302
    # Alice puts her own link back; root never overwrote it.
    as_member(lab, "alice", "rm ~/shared /home/shared/README.txt /home/shared/private-of-bob")
    as_member(lab, "alice", "ln -s /home/shared ~/shared", check=True)


def test_everyone_still_saves_what_others_put_in_shared(
    lab: Lab, alice: HubUser, bob: HubUser
) -> None:
    """The reason /home/shared has no sticky bit: JupyterLab saves by writing a temporary
    file and renaming it over the old one, which a sticky folder forbids for others' files."""
    alice.login()
    alice.start_server()
    notebook = {
        "type": "notebook",
        "content": {
            "cells": [{"cell_type": "markdown", "metadata": {}, "source": "alice's notes"}],
            "metadata": {}, "nbformat": 4, "nbformat_minor": 5,
        },
    }  # fmt: skip
    reply = alice.server_api("PUT", "contents/shared/alice-top.ipynb", json=notebook)
    assert reply.status_code in (200, 201), reply.text
    assert lab.exec("stat", "-c", "%U", "/home/shared/alice-top.ipynb").stdout.strip() == "alice"

    bob.login()
    bob.start_server()
    opened = bob.server_api("GET", "contents/shared/alice-top.ipynb")
    assert opened.status_code == 200, opened.text
    model = opened.json()
    model["content"]["cells"][0]["source"] = "alice's notes, edited by bob"
    saved = bob.server_api(
        "PUT", "contents/shared/alice-top.ipynb",
        json={"type": "notebook", "content": model["content"]},
    )  # fmt: skip
    assert saved.status_code == 200, saved.text
    again = alice.server_api("GET", "contents/shared/alice-top.ipynb").json()
    assert again["content"]["cells"][0]["source"] == "alice's notes, edited by bob"


# -- 2. a kernel's working folder ---------------------------------------------------------------

ESCAPE = textwrap.dedent(
    """
    import json, sys
    from labnotebook.provisioner.broker_client import BrokerEngine
    from labnotebook.provisioner.request import LaunchRequest, PORT_NAMES

    engine = BrokerEngine("/run/labnotebook/broker.sock")
    found = {}
    for n, path in enumerate(sys.argv[1:]):
        request = LaunchRequest(
            kernel_id=f"escape-{n}", kernel_name="escape",
            image="labnotebook/kernel-python:latest",
            argv=["python3", "-c", "import os; print('CWD', os.getcwd()); print(os.listdir('.'))"],
            connection={"key": "k", **{p: 41000 + i for i, p in enumerate(PORT_NAMES)}},
            working_dir=path,
        )
        try:
            launched = engine.launch(request)
        except Exception as e:
            found[path] = f"REFUSED {e}"
            continue
        engine.wait(launched.container_id, 60)
        found[path] = engine.logs(launched.container_id, tail=20)
        engine.remove(launched.container_id)
    print(json.dumps(found))
    """
)


def test_a_kernel_never_starts_in_another_members_folder(
    lab: Lab, alice: HubUser, bob: HubUser
) -> None:
    as_member(lab, "bob", "mkdir -p ~/private && chmod 700 ~/private && echo s > ~/private/s")
    paths = [
        "/proc/self/root/home/bob/private",
        "/proc/1/root/home/bob/private",
        "/proc/thread-self/root/home/bob/private",
        "/proc/self/cwd/../bob/private",
        "/dev/fd/3/private",
        "/home/bob/private",
        "/proc/self/root/home/bob/planted",
    ]
    answer = lab.exec(
        "python3", "-c", ESCAPE.replace("network=\"labnotebook\"", f"network={lab.name!r}"),
        *paths, user="alice", check=False,
    )  # fmt: skip
    assert answer.returncode == 0, answer.stderr
    found = json.loads(answer.stdout)
    for path, logs in found.items():
        # Started in her home (the kernel could not enter the folder as alice), never in bob's.
        assert "CWD /home/alice" in logs or logs.startswith("REFUSED"), (path, logs)
        assert "'s'" not in logs, (path, logs)
    # And nothing root-owned was planted in bob's home.
    assert lab.exec("test", "-e", "/home/bob/planted", check=False).returncode != 0


# -- 3. user names that are the image's groups -------------------------------------------------


@pytest.mark.parametrize("name", ["src", "dip", "sasl", "staff", "users", "plugdev"])
def test_names_of_system_groups_are_refused(lab: Lab, admin: HubUser, name: str) -> None:
    assert lab.exec("getent", "group", name, check=False).returncode == 0, "not a group here"
    person = HubUser(lab.url, name, "wombat-lantern-73", str(lab.ca_file()))
    reply = person.signup()
    assert reply.status == 400 and "reserved for the system" in reply.message, reply


def test_a_registry_entry_that_collides_is_skipped_with_a_warning(
    lab: Lab, admin: HubUser, alice: HubUser
) -> None:
    """An image upgrade may bring a system group named like an existing member."""
    add = textwrap.dedent(
        """
        import json
        path = "/srv/state/users.json"
        data = json.load(open(path))
        data["users"]["sasl"] = {"uid": 2999, "admin": False, "active": True,
                                 "password_hash": ""}
        json.dump(data, open(path, "w"), indent=2)
        """
    )
    lab.exec("python3", "-c", add)
    try:
        restart(lab)
        up = lab.make("up").stdout  # on a running hub: says so, and what needs attention
        assert "needs an admin's attention" in up and "'sasl' is a system group" in up, up
        assert "sudo chown -R NEWNAME" in up  # says how to fix it
        assert lab.user("alice").login().status == 302
        assert lab.exec("id", "-u", "alice").stdout.strip() != ""
        assert lab.exec("id", "sasl", check=False).returncode != 0
    finally:
        lab.exec(
            "python3", "-c",
            "import json; p='/srv/state/users.json'; d=json.load(open(p)); "
            "d['users'].pop('sasl', None); json.dump(d, open(p, 'w'), indent=2)",
        )  # fmt: skip


# -- 4. same-origin requests --------------------------------------------------------------------


def test_a_members_page_cannot_approve_people_through_an_admins_browser(
    lab: Lab, admin: HubUser
) -> None:
    """A page a member's server serves is on the hub's origin: its links and images arrive
    with Sec-Fetch-Site: same-origin. GETs change nothing; forms need the XSRF token."""
    lab.user("erin").signup()
    admin.login()
    for path in ("hub/authorize/erin", "hub/discard/erin"):
        forged = admin.session.get(
            lab.url + path, headers={"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "no-cors"}
        )
        assert forged.status_code == 405, (path, forged.status_code)
    forged = admin.session.post(lab.url + "hub/authorize/erin", data={"authorized": "yes"})
    assert forged.status_code == 403
    assert "has not been authorized" in lab.user("erin").login().message


# -- 5. local password guessing ------------------------------------------------------------------


def _su(lab: Lab, member: str, target: str, password: str) -> str:
    """`su TARGET -c id` typed in MEMBER's terminal (a real pty: su insists on one)."""
    result = lab.exec(
        "script", "-qec", f"su {target} -c 'id -un'", "/dev/null",
        user=member, stdin=password + "\n", check=False,
    )  # fmt: skip
    return result.stdout + result.stderr


def test_members_cannot_guess_passwords_locally(lab: Lab, admin: HubUser, alice: HubUser) -> None:
    admin.login()
    alice.login()
    shadow = {
        name: lab.exec("getent", "shadow", name).stdout.split(":")[1] for name in ("alice", "admin")
    }
    assert shadow["alice"].startswith("!"), "a member without sudo has a usable local password"
    assert shadow["admin"].startswith("$6$"), "the admin needs a local password for sudo"

    # su is for lab admins only: alice is refused even with the right password.
    answer = _su(lab, "alice", "admin", PASSWORDS["admin"])
    assert not re.search(r"^admin\r?$", answer, re.M), answer
    assert "permission denied" in answer.lower() or "failure" in answer.lower(), answer

    # Failed local attempts are rate-limited: after 5 wrong passwords, the right one fails too.
    try:
        for _ in range(5):
            lab.exec(
                "sudo", "-S", "-k", "-p", "", "true", user="admin", stdin="wrong-guess-1\n",
                check=False,
            )  # fmt: skip
        locked = lab.exec(
            "sudo", "-S", "-k", "-p", "", "id", "-u", user="admin",
            stdin=PASSWORDS["admin"] + "\n", check=False,
        )  # fmt: skip
        assert locked.stdout.strip() != "0", "no lockout after 5 failures"
    finally:
        lab.exec("faillock", "--user", "admin", "--reset")
    unlocked = lab.exec(
        "sudo", "-S", "-k", "-p", "", "id", "-u", user="admin", stdin=PASSWORDS["admin"] + "\n"
    )
    assert unlocked.stdout.strip() == "0"


# -- what a kernel inherits ---------------------------------------------------------------------


def test_no_server_secret_reaches_a_kernel_in_the_hub(lab: Lab, alice: HubUser) -> None:
    """The server holds JupyterHub's API token for alice: her kernels (whose environment any
    code she runs, or any notebook she opens, can read) never get it."""
    alice.login()
    alice.start_server()
    kernel = alice.start_kernel()
    try:
        result = alice.execute(kernel, "import json, os; print(json.dumps(sorted(os.environ)))")
        names = json.loads(result.stdout)
        leaked = [n for n in names if n.startswith(("JUPYTERHUB_", "JPY_")) or "TOKEN" in n]
        assert not leaked, leaked
        assert "HOME" in names and "USER" in names
    finally:
        alice.shutdown_kernel(kernel)


# -- kernel addresses ---------------------------------------------------------------------------


def _kernel_address(lab: Lab, kernel_id: str) -> str:
    ids = run(
        "docker", "ps", "-q", "--filter", f"label=org.labnotebook.kernel-id={kernel_id}"
    ).stdout.split()  # fmt: skip
    assert len(ids) == 1, ids
    return run(
        "docker", "inspect", "-f",
        f"{{{{(index .NetworkSettings.Networks {lab.name!r}).IPAddress}}}}".replace("'", '"'),
        ids[0],
    ).stdout.strip()  # fmt: skip


def test_a_restarted_kernel_keeps_its_address_through_the_broker(lab: Lab, alice: HubUser) -> None:
    alice.login()
    alice.start_server()
    kernel = alice.start_kernel()
    try:
        assert alice.execute(kernel, "x = 1", timeout=120).status == "ok"
        before = _kernel_address(lab, kernel)
        reply = alice.server_api("POST", f"kernels/{kernel}/restart")
        assert reply.status_code == 200, reply.text
        assert _kernel_address(lab, kernel) == before
        result = alice.execute(kernel, "print('x' in globals())", timeout=120)
        assert result.stdout.strip() == "False"  # a fresh kernel, same address
    finally:
        alice.shutdown_kernel(kernel)


# -- paths root handles outside the running hub: backups, and the homes volume before a start --


def test_a_backup_stores_a_members_symlink_as_a_symlink(lab: Lab, alice: HubUser) -> None:
    as_member(lab, "alice", "ln -sfn /srv/state ~/state-link", check=True)
    try:
        lab.make("backup")
        newest = max(lab.backup_dir.glob(f"{lab.name}-*.tar.gz"), key=lambda p: p.stat().st_mtime)
        with tarfile.open(newest) as archive:
            names = archive.getnames()
            link = archive.getmember("home/alice/state-link")
        assert link.issym() and link.linkname == "/srv/state"
        assert not [n for n in names if n.startswith("home/alice/state-link/")]
    finally:
        as_member(lab, "alice", "rm -f ~/state-link")


def _old_style_lab(lab: Lab, suffix: str, script: str) -> Lab:
    """A lab from before the readonly volume: its homes volume prepared by `script` (as root),
    no readonly volume yet."""
    old = Lab(f"{lab.name}-{suffix}", free_port(), lab.image, lab.backup_dir)
    run("docker", "volume", "create", f"{old.name}-homedirs")
    run(
        "docker", "run", "--rm", "--network", "none", "-v", f"{old.name}-homedirs:/home",
        "--entrypoint", "/bin/sh", lab.image, "-c", script,
    )  # fmt: skip
    return old


def test_an_old_readonly_folder_moves_into_its_volume(lab: Lab) -> None:
    old = _old_style_lab(
        lab, "migrated",
        "mkdir -p /home/shared/readonly && echo 'a,b' > /home/shared/readonly/data.csv",
    )  # fmt: skip
    try:
        up = old.make("up").stdout
        assert "Moved /home/shared/readonly into its own volume" in up, up
        assert old.exec("mountpoint", "-q", "/home/shared/readonly", check=False).returncode == 0
        assert old.exec("cat", "/home/shared/readonly/data.csv").stdout == "a,b\n"
    finally:
        old.destroy()


def test_a_planted_readonly_symlink_is_moved_aside_never_mounted_over(lab: Lab) -> None:
    """Docker would follow a symlink at the mount's target and cover bob's home with the
    readonly volume; root would copy bob's files into it."""
    old = _old_style_lab(
        lab, "planted",
        "mkdir -p /home/shared /home/bob && echo secret > /home/bob/secret.txt"
        " && chmod 700 /home/bob && ln -s ../bob /home/shared/readonly",
    )  # fmt: skip
    try:
        up = old.make("up").stdout
        assert "was not a folder (a member replaced it)" in up, up
        assert old.exec("mountpoint", "-q", "/home/shared/readonly", check=False).returncode == 0
        assert old.exec("mountpoint", "-q", "/home/bob", check=False).returncode != 0
        assert old.exec("cat", "/home/bob/secret.txt").stdout == "secret\n"
        assert old.exec("ls", "-A", "/home/shared/readonly").stdout.split() == ["README.txt"]
        displaced = old.exec("sh", "-c", "readlink /home/shared/readonly.displaced-*").stdout
        assert displaced.strip() == "../bob"
    finally:
        old.destroy()
