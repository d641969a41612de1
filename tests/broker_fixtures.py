"""Fixtures and helpers for the kernel broker's tests and benchmark.

The broker decides everything from the caller's UID as the kernel reports it, so the tests
must call it from processes that really are other users. A `UserAgent` is a helper Python
process, started as root, that imports what it needs, drops to a test account for good
(initgroups, setgid, setuid) and then runs the scenarios the test sends it over a pipe, one
JSON line each. It imports first because this machine's Python lives under /root, which an
ordinary user cannot read.

Run as a module (`python -m tests.broker_fixtures --uid N`) it *is* that agent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

from labnotebook.provisioner.broker_protocol import ERROR_CLASSES, error_from_response
from labnotebook.provisioner.identity import KernelIdentity
from labnotebook.provisioner.launch import LabRules, container_spec
from labnotebook.provisioner.request import PORT_NAMES, LaunchRequest
from labnotebook.provisioner.spec import KernelContainerSpec

REPO = Path(__file__).resolve().parents[1]
KERNEL_IMAGE = os.environ.get("LABNOTEBOOK_KERNEL_IMAGE", "labnotebook/kernel-python:latest")


# -- the broker in a subprocess ------------------------------------------------------------


class BrokerProcess:
    """`python -m labnotebook.hub.broker` as root on a private socket, with a config file."""

    def __init__(
        self, config: str, folder: str | None = None, prefix: list[str] | None = None
    ) -> None:
        """`prefix`: a command the broker runs under, e.g. `unshare --pid --fork`."""
        self.prefix = prefix or []
        self.folder = Path(folder or tempfile.mkdtemp(prefix="lnbtest-broker-"))
        self.folder.mkdir(parents=True, exist_ok=True)
        self.folder.chmod(0o755)  # users must reach the socket; only root may write here
        self.socket = str(self.folder / "broker.sock")
        self.config = self.folder / "broker_config.py"
        self.config.write_text(config)
        self.log = self.folder / "broker.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> BrokerProcess:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [
                    *self.prefix,
                    sys.executable,
                    "-m",
                    "labnotebook.hub.broker",
                    "--socket",
                    self.socket,
                    "--config",
                    str(self.config),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"The broker exited at start:\n{self.log_text()}")
            with contextlib.closing(socket.socket(socket.AF_UNIX)) as probe:
                try:
                    probe.connect(self.socket)
                    return self
                except OSError:
                    time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"The broker did not listen within {timeout} s:\n{self.log_text()}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> BrokerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


# -- throwaway accounts ----------------------------------------------------------------------


@dataclasses.dataclass
class Account:
    name: str
    uid: int
    gid: int
    home: str
    scratch: Path  # a private folder on this machine (Jupyter's runtime files, kernelspecs)


def create_account(name: str, groups: list[str] | None = None) -> Account:
    """A new user (name must start with 'lnbtest'); remove it with `delete_account`."""
    assert name.startswith("lnbtest") and len(name) <= 32, name
    command = ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin"]
    command += ["--home-dir", f"/home/{name}"]
    if groups:
        command += ["--groups", ",".join(groups)]
    subprocess.run([*command, name], check=True, capture_output=True)
    entry = pwd.getpwnam(name)
    scratch = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    os.chown(scratch, entry.pw_uid, entry.pw_gid)
    return Account(name, entry.pw_uid, entry.pw_gid, entry.pw_dir, scratch)


def delete_account(account: Account) -> None:
    subprocess.run(["userdel", account.name], check=False, capture_output=True)
    shutil.rmtree(account.scratch, ignore_errors=True)


# -- the user's side ---------------------------------------------------------------------------


class AgentError(Exception):
    """A scenario failed in the agent with an exception that is not a kernel launch error."""


class UserAgent:
    """A process running as `uid` that carries out scenarios (see SCENARIOS below)."""

    def __init__(self, uid: int, env: dict[str, str] | None = None) -> None:
        entry = pwd.getpwuid(uid)
        scratch = (env or {}).get("LNBTEST_SCRATCH") or ""
        self._own_scratch = not scratch
        scratch = scratch or tempfile.mkdtemp(prefix="lnbagent-")
        self.scratch = scratch
        os.chown(scratch, uid, entry.pw_gid)
        environment = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": scratch,
            "USER": entry.pw_name,
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "JUPYTER_RUNTIME_DIR": f"{scratch}/runtime",
            "JUPYTER_DATA_DIR": f"{scratch}/data",
            "JUPYTER_CONFIG_DIR": f"{scratch}/config",
            "JUPYTER_PLATFORM_DIRS": "1",
            "IPYTHONDIR": f"{scratch}/ipython",
            **(env or {}),
        }
        self.uid = uid
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.broker_fixtures", "--uid", str(uid)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=REPO,
            env=environment,
            text=True,
        )
        self._lock = threading.Lock()
        ready = self.process.stdout.readline() if self.process.stdout else ""
        if json.loads(ready or "{}").get("uid") != uid:
            self.close()
            raise RuntimeError(f"The agent for UID {uid} did not start: {ready!r}")

    @property
    def pid(self) -> int:
        return self.process.pid

    def call(self, scenario: str, **args: Any) -> Any:
        """Run a scenario as the user; broker errors come back as their own classes."""
        assert self.process.stdin and self.process.stdout
        with self._lock:
            self.process.stdin.write(json.dumps({"call": scenario, "args": args}) + "\n")
            self.process.stdin.flush()
            line = self.process.stdout.readline()
        if not line:
            raise AgentError(f"The agent for UID {self.uid} died during {scenario}")
        reply = json.loads(line)
        if reply["ok"]:
            return reply["result"]
        if reply["error"] in ERROR_CLASSES:
            raise error_from_response(reply)
        raise AgentError(f"{reply['error']}: {reply['message']}")

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(OSError):
                assert self.process.stdin
                self.process.stdin.close()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._own_scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)

    def __enter__(self) -> UserAgent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def kernel_spec(
    *,
    image: str = KERNEL_IMAGE,
    argv: list[str] | None = None,
    labels: dict[str, str] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """A launch request (JSON) whose labels claim to be root's: the broker must not care.

    Fields that are not a LaunchRequest's (identity, name, network, ...) can be added through
    `fields`, to see them refused."""
    kernel_id = str(uuid.uuid4())
    ports = dict(zip(PORT_NAMES, range(41000, 41005), strict=True))
    request = LaunchRequest(
        kernel_id=kernel_id,
        kernel_name="broker-test",
        image=image,
        argv=["sleep", "infinity"] if argv is None else argv,
        connection={"ip": "0.0.0.0", "transport": "tcp", "key": uuid.uuid4().hex, **ports},
        labels={
            "org.labnotebook.owner-uid": "0",
            "org.labnotebook.owner": "root",
            **(labels or {}),
        },
        gpus="auto",
    ).to_json()
    request.update(fields)
    return request


def launch_request(**request_fields: Any) -> LaunchRequest:
    """`kernel_spec`'s request as the provisioner hands it to its engine."""
    return LaunchRequest.from_json(kernel_spec(**request_fields))


def full_spec(**request_fields: Any) -> KernelContainerSpec:
    """A whole container description from `kernel_spec`'s request, as root (what a launcher
    hands `DockerEngine.launch_container`)."""
    request = launch_request(**request_fields)
    root = KernelIdentity("root", 0, 0, "/root", (0,), {0: "root"})
    return container_spec(request, root, LabRules(network="labnotebook", allow_root=True))


# -- scenarios: run inside the agent, as the user ------------------------------------------------

_engines: dict[str, Any] = {}


def _engine(sock: str) -> Any:
    from labnotebook.provisioner.broker_client import BrokerEngine

    if sock not in _engines:
        _engines[sock] = BrokerEngine(sock)
    return _engines[sock]


def _plain(value: Any) -> Any:
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


def scenario_whoami() -> dict[str, Any]:
    return {"uid": os.getuid(), "gid": os.getgid(), "groups": sorted(os.getgroups())}


def scenario_open_docker_socket(path: str = "/var/run/docker.sock") -> str:
    with contextlib.closing(socket.socket(socket.AF_UNIX)) as s:
        try:
            s.connect(path)
        except OSError as e:
            return type(e).__name__
    return "connected"


def scenario_raw(sock: str, lines: list[str]) -> list[Any]:
    """Send lines as they are on one connection; the parsed answers (None after a close)."""
    answers: list[Any] = []
    with contextlib.closing(socket.socket(socket.AF_UNIX)) as s:
        s.settimeout(60)
        s.connect(sock)
        reader = s.makefile("rb")
        for line in lines:
            try:
                s.sendall(line.encode() + b"\n")
                answer = reader.readline()
            except OSError:
                answer = b""
            answers.append(json.loads(answer) if answer else None)
    return answers


def scenario_engine(sock: str, method: str, args: list[Any]) -> Any:
    """Call one BrokerEngine method; a launch request is passed as its JSON."""
    engine = _engine(sock)
    if method == "launch":
        args = [LaunchRequest.from_json(args[0])]
    return _plain(getattr(engine, method)(*args))


def scenario_launch_json(sock: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Launch a raw request JSON (may hold fields LaunchRequest does not know)."""
    started = time.perf_counter()
    response = _engine(sock).request("launch", {"spec": spec})
    return {
        **response["result"],
        "client_ms": (time.perf_counter() - started) * 1000,
        "engine_ms": response.get("engine_ms"),
    }


def scenario_launch_many(sock: str, specs: list[dict[str, Any]]) -> dict[str, Any]:
    """Launch all specs at once from threads sharing one BrokerEngine, as a server would."""
    from concurrent.futures import ThreadPoolExecutor

    def one(spec: dict[str, Any]) -> dict[str, Any]:
        try:
            return {"ok": True, **scenario_launch_json(sock, spec)}
        except Exception as e:
            return {"ok": False, "error": f"{type(e).__name__}: {e}"}

    started = time.perf_counter()
    with ThreadPoolExecutor(len(specs)) as pool:
        results = list(pool.map(one, specs))
    return {"results": results, "wall_ms": (time.perf_counter() - started) * 1000}


def scenario_hold_waits(sock: str, containers: list[str], count: int, timeout: float) -> int:
    """Start `count` waits on the broker (each its own connection), round-robin over
    `containers`, and return at once: the waits stay in flight in this process."""
    from labnotebook.provisioner.broker_client import BrokerEngine

    def hold(container: str) -> None:
        with contextlib.suppress(Exception):
            BrokerEngine(sock).wait(container, timeout)

    for n in range(count):
        threading.Thread(target=hold, args=(containers[n % len(containers)],), daemon=True).start()
    return count


def scenario_timed_hello(sock: str) -> float:
    started = time.perf_counter()
    _engine(sock).hello()
    return (time.perf_counter() - started) * 1000


def scenario_run_kernel(
    kernel_dirs: list[str], kernel_name: str, code: str, cwd: str | None = None
) -> dict[str, Any]:
    """Start a kernel with jupyter_client and the labnotebook provisioner; run code in it."""
    import asyncio

    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    async def run() -> dict[str, Any]:
        km = AsyncKernelManager(
            kernel_name=kernel_name, kernel_spec_manager=KernelSpecManager(kernel_dirs=kernel_dirs)
        )
        await km.start_kernel(**({"cwd": cwd} if cwd else {}))
        try:
            container = km.provisioner.container_name
            engine = type(km.provisioner.engine).__name__
            kc = km.client()
            kc.start_channels()
            try:
                await kc.wait_for_ready(timeout=120)
                out: list[str] = []

                def hook(msg: dict[str, Any]) -> None:
                    if msg["msg_type"] == "stream":
                        out.append(msg["content"]["text"])
                    elif msg["msg_type"] == "error":
                        out.append("\n".join(msg["content"]["traceback"]))

                reply = await kc.execute_interactive(code, output_hook=hook, timeout=60)
            finally:
                kc.stop_channels()
        finally:
            await km.shutdown_kernel(now=True)
        return {
            "stdout": "".join(out),
            "status": reply["content"]["status"],
            "container": container,
            "engine": engine,
        }

    return asyncio.run(run())


SCENARIOS = {
    name.removeprefix("scenario_"): fn
    for name, fn in dict(globals()).items()
    if name.startswith("scenario_")
}


def _preload() -> None:
    """Import (and warm up) everything the scenarios touch, while /root is still readable."""
    import asyncio  # noqa: F401
    import concurrent.futures
    import concurrent.futures.thread  # noqa: F401 - a lazy submodule
    import grp  # noqa: F401
    import string  # noqa: F401

    import jupyter_client.asynchronous
    import jupyter_client.blocking
    import jupyter_client.channels
    import jupyter_client.ioloop
    import jupyter_client.manager
    import jupyter_client.provisioning.local_provisioner  # noqa: F401
    import labnotebook.provisioner.broker_client
    import labnotebook.provisioner.provisioner  # noqa: F401 - the package imports it lazily
    import zmq.asyncio  # noqa: F401
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.provisioning.factory import KernelProvisionerFactory

    with contextlib.suppress(ImportError):
        import ipykernel.kernelspec  # noqa: F401
    # Reads the installed entry points (in site-packages) once, now.
    KernelProvisionerFactory.instance()
    KernelSpecManager(kernel_dirs=[])
    "".encode("idna")


def _agent_main(uid: int) -> None:
    _preload()
    # More scenarios from other test modules (imported now, while /root is readable).
    for module in filter(None, os.environ.get("LNBTEST_SCENARIOS", "").split(",")):
        extra = __import__(module, fromlist=["SCENARIOS"])
        SCENARIOS.update(extra.SCENARIOS)
    entry = pwd.getpwuid(uid)
    os.initgroups(entry.pw_name, entry.pw_gid)
    os.setgid(entry.pw_gid)
    os.setuid(uid)  # for good: real, effective and saved
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything a library prints goes to stderr, not into the replies
    replies.write(json.dumps({"uid": os.getuid()}) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        try:
            result = SCENARIOS[request["call"]](**request.get("args", {}))
            reply = {"ok": True, "result": result}
        except Exception as e:
            message = str(e)
            if type(e).__name__ not in ERROR_CLASSES:
                message += "\n" + traceback.format_exc()
            reply = {"ok": False, "error": type(e).__name__, "message": message}
        replies.write(json.dumps(reply, default=str) + "\n")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--uid":
        _agent_main(int(sys.argv[2]))
    else:
        sys.exit("usage: python -m tests.broker_fixtures --uid UID")
