"""A real lab hub for the tests: `make up` with its own names on a free port.

The hub runs from a test tag of the hub image built from this work tree, on its own
network and volumes (`labnotebook-test-<session>-*`), published on 127.0.0.1 only. Everything
it creates - containers (the hub's and its kernels'), volumes, networks, the image tag,
backups - is removed at the end, also when a test fails. LABNOTEBOOK_KEEP_HUB=1 keeps the
first hub (and its image) for a look: `make down LAB=...`, then remove its volumes, network
and image by hand.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from .hubclient import HubUser, Reply

ROOT = Path(__file__).resolve().parents[2]
SESSION = uuid.uuid4().hex[:8]
PASSWORDS = {
    "admin": "tulip-kayak-91-orbit",
    "alice": "wombat-lantern-73",
    "bob": "quokka-saddle-58",
    "carol": "marmot-ladder-64",
    "dave": "puffin-harbor-27",
    "erin": "heron-cobalt-35",
    "frank": "walrus-meadow-19",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(*argv: str, check: bool = True, **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} exited with {result.returncode}\n"
            f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
        )
    return result


@dataclass
class Lab:
    """One hub started with `make up`, and what the tests need to drive it."""

    name: str
    port: int
    image: str
    backup_dir: Path
    certificate: Path | None = None
    """The operator's certificate given to `make up SSL_CERT=...`; None: the generated one."""
    up_output: str = ""
    docker_host: str | None = None
    """The engine this lab runs on (DOCKER_HOST for its every `docker` and `make`); None: the
    host's default engine."""

    @property
    def env(self) -> dict[str, str] | None:
        """The environment of this lab's `docker` and `make` commands (None: this process's)."""
        if self.docker_host is None:
            return None
        return {**os.environ, "DOCKER_HOST": self.docker_host}

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/"

    @property
    def settings(self) -> dict[str, str]:
        # Every name spelled out: a HOMES_VOLUME or NETWORK in the environment (an operator's
        # shell, a parent make) must never point a test hub at the lab's own volumes.
        return {
            "LAB": self.name,
            "NETWORK": self.name,
            "HOMES_VOLUME": f"{self.name}-homedirs",
            "STATE_VOLUME": f"{self.name}-state",
            "READONLY_VOLUME": f"{self.name}-readonly",
            "BROKER_VOLUME": f"{self.name}-broker",
            "PORT": str(self.port),
            "BIND": "127.0.0.1",
            "HUB_IMAGE": self.image,
            "BACKUP_DIR": str(self.backup_dir),
        }

    def make(
        self, target: str, check: bool = True, **extra: str
    ) -> subprocess.CompletedProcess[str]:
        variables = [f"{k}={v}" for k, v in {**self.settings, **extra}.items()]
        return run(
            "make", "--no-print-directory", "-C", str(ROOT), target, *variables,
            check=check, env=self.env,
        )  # fmt: skip

    def exec(
        self, *argv: str, user: str = "root", stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        flags = ["-i"] if stdin is not None else []
        return run(
            "docker", "exec", *flags, "-u", user, self.name, *argv,
            input=stdin, check=check, env=self.env,
        )  # fmt: skip

    def docker(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`docker ...` on this lab's engine."""
        return run("docker", *argv, check=check, env=self.env)

    def wait_ready(self, timeout: float = 120) -> None:
        """Wait until the hub answers /hub/health (after a restart)."""
        deadline = time.monotonic() + timeout
        session = requests.Session()
        session.trust_env = False
        session.verify = str(self.ca_file())
        while time.monotonic() < deadline:
            try:
                if session.get(self.url + "hub/health", timeout=5).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise AssertionError(f"{self.name} did not come back within {timeout:.0f}s")

    def ca_file(self) -> Path:
        """The certificate to trust: the operator's, or the one the hub generated."""
        if self.certificate is not None:
            return self.certificate
        path = self.backup_dir / f"{self.name}-cert.pem"
        path.write_text(self.exec("cat", "/srv/state/tls/cert.pem").stdout)
        return path

    def user(self, name: str) -> HubUser:
        """A fresh browser session for `name` (not logged in)."""
        return HubUser(self.url, name, PASSWORDS[name], str(self.ca_file()))

    def destroy(self) -> None:
        """Remove the hub container, its kernels, its volumes and its network."""
        self.docker("rm", "-f", self.name, check=False)
        kernels = self.docker(
            "ps", "-aq", "--filter", "label=org.labnotebook.role=kernel",
            "--filter", f"network={self.name}", check=False,
        ).stdout.split()  # fmt: skip
        # Notebook jobs' runners outlive hubs (tests/hub/test_jobs_in_hub.py): they go too.
        kernels += self.docker(
            "ps", "-aq", "--filter", "label=org.labnotebook.role=job",
            "--filter", f"network={self.name}", check=False,
        ).stdout.split()  # fmt: skip
        if kernels:
            self.docker("rm", "-f", *kernels, check=False)
        for volume in ("homedirs", "state", "readonly", "broker"):
            self.docker("volume", "rm", "-f", f"{self.name}-{volume}", check=False)
        self.docker("network", "rm", self.name, check=False)


@pytest.fixture(scope="session")
def lab_image() -> Iterator[str]:
    image = f"labnotebook/hub:test-{SESSION}"
    yield image
    if os.environ.get("LABNOTEBOOK_KEEP_HUB") != "1":
        image_id = run("docker", "image", "inspect", "-f", "{{.Id}}", image, check=False)
        run("docker", "image", "rm", "-f", image, check=False)
        # images/build.sh also gave this build an immutable `build-TIME` tag; it goes too,
        # unless the same image is the lab's own as well (an identical build).
        left = run("docker", "image", "inspect", "-f", "{{json .RepoTags}}",
                   image_id.stdout.strip() or "-", check=False)  # fmt: skip
        names = json.loads(left.stdout or "[]") if left.returncode == 0 else []
        if names and all(":build-" in name for name in names):
            run("docker", "image", "rm", *names, check=False)


@pytest.fixture(scope="session")
def backup_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lab-backups")


@pytest.fixture(scope="session")
def lab(lab_image: str, backup_dir: Path) -> Iterator[Lab]:
    hub = Lab(f"labnotebook-test-{SESSION}", free_port(), lab_image, backup_dir)
    try:
        hub.up_output = hub.make("up").stdout
        yield hub
    finally:
        if os.environ.get("LABNOTEBOOK_KEEP_HUB") != "1":
            hub.destroy()


@pytest.fixture(scope="session")
def second_lab(lab: Lab) -> Iterator[Lab]:
    """Names for a second hub (restored from a backup); removed at the end."""
    other = Lab(f"{lab.name}-restored", free_port(), lab.image, lab.backup_dir)
    try:
        yield other
    finally:
        other.destroy()


def _signed_up_and_approved(lab: Lab, name: str, admin: HubUser) -> HubUser:
    person = lab.user(name)
    reply = person.signup()
    assert reply.alert == "alert-info" or "taken" in reply.message, reply
    admin.approve(name)
    assert person.login().status == 302
    return person


@dataclass
class Bootstrap:
    """How the admin's sign-up went: the token `make up` printed, and the replies."""

    token: str
    without_token: Reply
    wrong_token: Reply
    with_token: Reply


@pytest.fixture(scope="session")
def bootstrap(lab: Lab) -> Bootstrap:
    """The admin claims the hub, after two attempts without the right setup token.

    Whichever test needs the admin first triggers this, so the claim is always made on a
    fresh hub, and test_admin_signup_needs_the_setup_token checks what happened.
    """
    match = re.search(r"setup token:\s+(\S+)", lab.up_output)
    assert match, lab.up_output
    person = lab.user("admin")
    without = person.signup()
    wrong = person.signup(token="not-the-token")
    assert person.login().status != 302
    right = person.signup(token=match.group(1))
    return Bootstrap(match.group(1), without, wrong, right)


@pytest.fixture(scope="session")
def admin(lab: Lab, bootstrap: Bootstrap) -> HubUser:
    """The lab's admin, signed up with the setup token and logged in."""
    assert bootstrap.with_token.alert == "alert-success", bootstrap.with_token
    person = lab.user("admin")
    reply = person.login()
    assert reply.status == 302, reply
    return person


@pytest.fixture(scope="session")
def alice(lab: Lab, admin: HubUser) -> HubUser:
    return _signed_up_and_approved(lab, "alice", admin)


@pytest.fixture(scope="session")
def bob(lab: Lab, admin: HubUser) -> HubUser:
    return _signed_up_and_approved(lab, "bob", admin)


@pytest.fixture(scope="session")
def frank(lab: Lab, admin: HubUser) -> HubUser:
    """A member whom no test makes an admin (test_hub.py promotes bob)."""
    return _signed_up_and_approved(lab, "frank", admin)
