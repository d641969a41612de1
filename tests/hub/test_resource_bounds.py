"""Resource bounds on a real hub: limits on the hub container and every kernel, bounded logs,
and a revoked member's access ending at once."""

from __future__ import annotations

import contextlib
import glob
import html
import json
import os
import re
import statistics
import subprocess
import time
from collections.abc import Iterator

import nbformat
import pytest
from labnotebook.provisioner.sizes import human_bytes

from .conftest import Lab, _signed_up_and_approved, free_port, run
from .hubclient import Execution, HubUser

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
    # A long notebook job and a schedule of his: the broker owns them, outside the hub.
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python-docker", "display_name": "Python"}
    notebook.cells = [nbformat.v4.new_code_cell("import time; time.sleep(600)")]
    long = "/home/dave/long.ipynb"
    lab.exec("sh", "-c", f"cat > {long}", user="dave", stdin=nbformat.writes(notebook))
    submit = f"labnotebook jobs submit {long}"
    jobs = [
        _as_member(lab, "dave", f"{submit} {extra}").split()[-1]
        for extra in ("", "--every '0 3 * * *'")
    ]
    deadline = time.monotonic() + 120
    while _job(lab, jobs[0])["state"] != "running":
        assert time.monotonic() < deadline, _job(lab, jobs[0])
        time.sleep(1)

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
    # His job is cancelled with the reason, his schedule gone, and nothing of them is left.
    ended = _job(lab, jobs[0])
    assert ended["state"] == "cancelled" and "access to the lab was revoked" in ended["error"]
    assert jobs[1] not in _as_member(lab, "root", "labnotebook jobs ls --all --json")
    deadline = time.monotonic() + 60
    while left := run(
        "docker", "ps", "-aq", "--filter", f"label=org.labnotebook.job-id={jobs[0]}"
    ).stdout.split():
        assert time.monotonic() < deadline, f"the revoked member's job still runs: {left}"
        time.sleep(1)


def _as_member(lab: Lab, user: str, command: str) -> str:
    """`command` in a login shell of `user`'s (as her terminal runs it); its output."""
    home = "/root" if user == "root" else f"/home/{user}"
    done = run("docker", "exec", "-u", user, "-e", f"HOME={home}", lab.name, "bash", "-lc", command)
    return done.stdout


def _job(lab: Lab, job: str) -> dict:
    """The job as an admin sees it (root in the hub is one)."""
    return json.loads(_as_member(lab, "root", f"labnotebook jobs status {job} --json"))


# -- one member's runaway code, contained ------------------------------------------------------


def _still_works(lab: Lab, member: HubUser, kernel: str) -> None:
    """Other members are unaffected: a fresh login, their server, their running kernel, and
    the hub's database."""
    fresh = lab.user(member.name)
    assert fresh.login().status == 302, "another member could not log in"
    assert member.server_api("GET", "status").status_code == 200
    assert member.execute(kernel, "print(6 * 7)").stdout.strip() == "42"
    check = lab.exec("sqlite3", "/srv/state/jupyterhub.sqlite", "PRAGMA integrity_check;")
    assert check.stdout.strip() == "ok", check.stdout


def _a_kernel_of(member: HubUser) -> Iterator[str]:
    member.login()
    member.start_server()
    kernel = member.start_kernel()
    yield kernel
    member.shutdown_kernel(kernel)


@pytest.fixture
def bobs_kernel(bob: HubUser) -> Iterator[str]:
    """Another member's kernel, running while alice misbehaves."""
    yield from _a_kernel_of(bob)


@pytest.fixture
def alices_kernel(alice: HubUser) -> Iterator[str]:
    yield from _a_kernel_of(alice)


def _execute_until_killed(member: HubUser, kernel: str, code: str, then: str) -> Execution:
    """Run `code`, which ends its kernel; then run `then` until the restarted kernel answers,
    and return that first answer. The dying kernel never replies, so the first wait is
    short."""
    with contextlib.suppress(Exception):
        member.execute(kernel, code, timeout=20)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            return member.execute(kernel, then, timeout=10)
        time.sleep(2)
    raise AssertionError("the kernel never came back")


def _process_count(lab: Lab, user: str) -> int:
    return int(lab.exec("pgrep", "-c", "-u", user, check=False).stdout.strip() or 0)


def _answers_again(member: HubUser, kernel: str, code: str, expected: str) -> bool:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if member.execute(kernel, code, timeout=30).stdout == expected:
                return True
        time.sleep(3)
    return False


def test_a_kernel_past_its_memory_limit_is_stopped_and_the_notebook_says_why(
    lab: Lab, alice: HubUser, alices_kernel: str, bob: HubUser, bobs_kernel: str
) -> None:
    kernel = alices_kernel
    container = _kernel_container(kernel)
    limit = _inspect(container)["HostConfig"]["Memory"]
    # Grows 64 MiB at a time, touching every page, until the limit stops it.
    grow = "chunks = []\nwhile True:\n    chunks.append(b'x' * (64 << 20))"
    told = _execute_until_killed(alice, kernel, grow, then="print('after')")
    # Jupyter restarted it in a new container; the server's log says why the old one ended.
    log = run("docker", "logs", lab.name).stderr
    assert _kernel_container(kernel) not in ("", container)
    assert "exited unexpectedly with code 137 (out of memory)" in log
    assert "stopped because it used all of its memory limit" in told.stderr, told.stderr
    assert human_bytes(limit) in told.stderr
    assert told.stdout.strip() == "after"
    # Told once: the next cell is quiet.
    assert "labnotebook" not in alice.execute(kernel, "print(1)").stderr
    _still_works(lab, bob, bobs_kernel)


BOMB = "b() { if [ $1 -gt 0 ]; then b $(($1-1)) & b $(($1-1)) & fi; sleep 15; }; b {depth}"
"""A fork bomb that ends by itself: 2^depth processes at most, each gone after 15 s."""


def test_a_fork_bomb_in_a_kernel_is_contained(
    lab: Lab, alice: HubUser, alices_kernel: str, bob: HubUser, bobs_kernel: str
) -> None:
    kernel = alices_kernel
    container = _kernel_container(kernel)
    limit = _inspect(container)["HostConfig"]["PidsLimit"]
    bomb = BOMB.replace("{depth}", "13")  # 8192 processes wanted
    alice.execute(kernel, f"import subprocess\np = subprocess.Popen(['bash', '-c', {bomb!r}])")
    time.sleep(5)
    pids = int(run("docker", "top", container, "-eo", "pid").stdout.count("\n")) - 1
    print(f"fork bomb in a kernel: {pids} processes (limit {limit})")
    assert pids <= limit
    _still_works(lab, bob, bobs_kernel)
    # The bomb ends by itself, and the member's own kernel is still there after it (while
    # it lasts, the kernel itself may be unable to start a thread).
    assert _answers_again(alice, kernel, "p.wait(); print('over')", "over\n")


def test_a_fork_bomb_in_a_members_terminal_is_contained(
    lab: Lab, alice: HubUser, bob: HubUser, bobs_kernel: str
) -> None:
    alice.start_server()
    bomb = BOMB.replace("{depth}", "12")  # 4096 processes wanted, in the hub container
    before = _process_count(lab, "alice")
    # Its own session, so closing the terminal (SIGHUP) does not end it early.
    alice.terminal(f"setsid bash -c '{bomb}' >/dev/null 2>&1 & echo BOMB-STARTED", "BOMB-STARTED")
    time.sleep(5)
    # Counted as root from outside: alice's own shell may be unable to fork a `pgrep` now.
    counted = _process_count(lab, "alice")
    print(f"fork bomb in a terminal: {counted} processes of alice's")
    assert 100 < counted <= 2048 + 16, "a member's processes are not bounded"
    _still_works(lab, bob, bobs_kernel)
    deadline = time.monotonic() + 120
    while _process_count(lab, "alice") > before:
        assert time.monotonic() < deadline, "the bounded fork bomb did not end by itself"
        time.sleep(2)


def test_a_kernel_printing_without_end_fills_no_disk(
    lab: Lab, alice: HubUser, alices_kernel: str, bob: HubUser, bobs_kernel: str
) -> None:
    kernel = alices_kernel
    container = _kernel_container(kernel)
    # 300 MB straight to the container's output (the engine's log), and a print loop
    # through the notebook's channel for 10 s.
    alice.execute(
        kernel, "import os; os.system('yes labnotebook | head -c 300000000')", timeout=180
    )
    printed = alice.execute(
        kernel,
        "import time\nend = time.time() + 10\nwhile time.time() < end:\n    print('y' * 1000)",
        timeout=120,
    )
    log_path = _inspect(container)["LogPath"]
    logged = sum(os.path.getsize(p) for p in glob.glob(log_path + "*"))
    print(f"a kernel printing without end: {logged / 1e6:.1f} MB of logs kept")
    assert logged <= 2 * 10 * 1024 * 1024 + 1024 * 1024  # max-size 10m, 2 files
    # The member's server kept up (Jupyter's output rate limit steps in), others too.
    assert "rate exceeded" in (printed.stdout + printed.stderr) or len(printed.stdout) > 0
    _still_works(lab, bob, bobs_kernel)


# -- outsiders ----------------------------------------------------------------------------------

FLOOD = r"""
import collections, http.cookiejar, json, re, ssl, sys, threading
import urllib.error, urllib.parse, urllib.request
base, count = sys.argv[1], int(sys.argv[2])
context = ssl.create_default_context()
context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
results = collections.defaultdict(collections.Counter)

def post(opener, path, fields):
    page = opener.open(base + path, timeout=120).read().decode()
    fields["_xsrf"] = re.search(r'name="_xsrf"\s+value="([^"]+)"', page).group(1)
    try:
        return opener.open(base + path, urllib.parse.urlencode(fields).encode(), timeout=120).status
    except urllib.error.HTTPError as e:
        return e.code

def worker(first):
    opener = urllib.request.build_opener(
        urllib.request.HTTPSHandler(context=context),
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    for n in range(first, count, 8):
        password = "correct-horse-battery-%d" % n
        results["signup"][post(opener, "hub/signup", {"username": "flood%d" % n,
            "signup_password": password, "signup_password_confirmation": password})] += 1
        guess = {"username": "admin", "password": password}
        results["login"][post(opener, "hub/login", guess)] += 1

threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(results))
"""


def _login_seconds(lab: Lab, name: str) -> float:
    person = lab.user(name)
    started = time.perf_counter()
    assert person.login().status == 302
    return time.perf_counter() - started


def test_a_flood_from_one_address_is_refused_and_members_log_in_as_usual(
    lab: Lab, admin: HubUser, alice: HubUser
) -> None:
    usual = statistics.median(_login_seconds(lab, "alice") for _ in range(5))
    # The flooding client is a container on the lab's network: its own address, as an
    # outsider's would be (clients through the host's loopback all look like the gateway).
    flood = subprocess.Popen(
        ["docker", "run", "--rm", "--network", lab.name, "--label", "org.labnotebook.test=flood",
         "labnotebook/kernel-python:latest", "python3", "-c", FLOOD,
         f"https://{lab.name}:8000/", "150"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(4)  # the flood is under way
        during = []
        while flood.poll() is None and len(during) < 8:
            during.append(_login_seconds(lab, "alice"))
        out, err = flood.communicate(timeout=600)
    finally:
        if flood.poll() is None:
            flood.kill()
    assert flood.returncode == 0, err[-3000:]
    results = json.loads(out)
    stored = int(
        lab.exec(
            "sqlite3", "/srv/state/jupyterhub.sqlite",
            "SELECT count(*) FROM users_info WHERE username LIKE 'flood%';",
        ).stdout
    )  # fmt: skip
    print(
        f"flood of 150 sign-ups and 150 admin logins from one address: {results}; "
        f"{stored} sign-ups stored; alice's login {usual:.2f} s usually, during it "
        f"{statistics.median(during) if during else float('nan'):.2f} s ({len(during)} logins)"
    )
    assert stored <= 40, "most of the flood's sign-ups should have been refused"
    assert results["signup"].get("429", 0) >= 100
    assert len(during) >= 3, "the flood ended before alice's logins were measured"
    assert statistics.median(during) <= 2 * usual
    # The outsider's failures locked out the outsider, not the admin.
    assert lab.user("admin").login().status == 302
    # The flood's sign-ups wait for approval; an admin clears them.
    lab.exec(
        "sqlite3", "/srv/state/jupyterhub.sqlite",
        "DELETE FROM users_info WHERE username LIKE 'flood%';",
    )  # fmt: skip


def test_deleting_a_member_ends_their_access_at_once(lab: Lab, admin: HubUser) -> None:
    carol = _signed_up_and_approved(lab, "carol", admin)
    carol.start_server()
    kernel = carol.start_kernel()
    assert _kernel_container(kernel)
    lab.exec("su", "-s", "/bin/sh", "carol", "-c", "sleep 600 >/dev/null 2>&1 &")
    admin.login()
    reply = admin.hub_api("DELETE", "users/carol")
    assert reply.status_code == 204, (reply.status_code, reply.text)
    assert carol.session.get(lab.url + "hub/home", allow_redirects=False).status_code in (302, 403)
    deadline = time.monotonic() + 30
    while _kernel_container(kernel) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _kernel_container(kernel), "the deleted member's kernel still runs"
    assert lab.exec("pgrep", "-u", "carol", check=False).returncode != 0


# -- a full disk ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_homes_lab(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """A second hub whose homes are on a 160 MB file system of their own (HOMES_PATH): a
    loop-mounted ext4 image file, as an admin would give the homes a disk of their own."""
    folder = tmp_path_factory.mktemp("small-homes")
    image, mount = folder / "homes.img", folder / "homes"
    mount.mkdir()
    run("truncate", "-s", "160M", str(image))
    run("mkfs.ext4", "-q", str(image))
    run("mount", "-o", "loop", str(image), str(mount))
    other = Lab(f"{lab.name}-small", free_port(), lab.image, lab.backup_dir)
    try:
        other.up_output = other.make("up", HOMES_PATH=str(mount)).stdout
        yield other
    finally:
        other.destroy()
        run("umount", "-l", str(mount), check=False)


def test_a_full_home_leaves_logins_and_the_database_working(small_homes_lab: Lab) -> None:
    lab = small_homes_lab
    assert "The homes live in" in lab.up_output, lab.up_output
    token = re.search(r"setup token:\s+(\S+)", lab.up_output)
    assert token, lab.up_output
    admin = lab.user("admin")
    assert admin.signup(token=token.group(1)).alert == "alert-success"
    assert admin.login().status == 302
    alice = _signed_up_and_approved(lab, "alice", admin)
    alice.start_server()
    kernel = alice.start_kernel()
    fill = (
        "import errno, os\nwritten = 0\n"
        "try:\n"
        "    with open(os.path.expanduser('~/fill'), 'wb') as f:\n"
        "        while True:\n"
        "            f.write(b'x' * (1 << 20)); f.flush(); written += 1\n"
        "except OSError as e:\n"
        "    print(errno.errorcode[e.errno], written)"
    )
    filled = alice.execute(kernel, fill, timeout=180)
    print(f"a home filled to its file system's limit: {filled.stdout.strip()} MiB")
    assert filled.stdout.startswith("ENOSPC"), filled
    df = lab.exec("df", "--output=avail", "-B1", "/home").stdout.split()[-1]
    assert int(df) < 16 * 1024 * 1024, df  # full, but for root's reserve

    # The hub's database and logins are elsewhere, and keep working: a login (which writes
    # to the database), a sign-up, an approval, the member's own server.
    assert lab.user("admin").login().status == 302
    bob = _signed_up_and_approved(lab, "bob", admin)
    bob.start_server()
    check = lab.exec("sqlite3", "/srv/state/jupyterhub.sqlite", "PRAGMA integrity_check;")
    assert check.stdout.strip() == "ok"
    assert alice.server_api("GET", "contents").status_code == 200
    # Freeing the space is all it takes.
    alice.execute(kernel, "os.remove(os.path.expanduser('~/fill'))")
    assert alice.execute(kernel, "open(os.path.expanduser('~/ok'), 'w').write('ok')").error == ""
    alice.shutdown_kernel(kernel)
