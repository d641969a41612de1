"""Unit tests of the hub's pure parts: no Docker, no root, no running hub."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import pytest
from labnotebook.hub import bootstrap, names, startup
from labnotebook.hub.registry import Registry
from labnotebook.hub.settings import FIRST_UID, LabSettings


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("alice", None),
        ("bob_2", None),
        ("a-b", None),
        ("root", "reserved"),
        ("systemd-oom", "reserved"),
        ("lab", "reserved"),
        ("Alice", "lowercase"),
        ("al ice", "no spaces"),
        ("_apt", "start with a lowercase letter"),
        ("x" * 33, "at most 32"),
        ("", "choose a user name"),
    ],
)
def test_user_names(name: str, problem: str | None) -> None:
    found = names.name_problem(name)
    assert (found is None) if problem is None else (problem in (found or "")), found


def test_password_policy() -> None:
    pytest.importorskip("nativeauthenticator")
    from labnotebook.hub.passwords import password_problem, too_long

    assert password_problem("alice", "correct horse battery", 10) is None
    assert "at least 10" in (password_problem("alice", "short", 10) or "")
    assert "commonly used" in (password_problem("alice", "Password123", 10) or "")
    assert "user name" in (password_problem("alice", "xx-ALICE-xx-1", 10) or "")
    assert "few different" in (password_problem("alice", "abababababab", 10) or "")
    assert too_long("a" * 72) is None
    assert "74 bytes" in (too_long("ü" * 37) or "")


def test_registry_keeps_uids_forever(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    with Registry(path) as registry:
        alice = registry.member("alice")
        bob = registry.member("bob", taken_uids=iter([FIRST_UID + 1]))
    assert (alice.uid, bob.uid) == (FIRST_UID, FIRST_UID + 2)
    with Registry(path) as registry:
        registry.members["alice"].active = False
        registry.member("carol")
    again = Registry.load(path)
    assert again.members["carol"].uid == FIRST_UID + 3
    assert [m.name for m in again.active()] == ["bob", "carol"]
    with Registry(path) as registry:
        assert registry.member("alice").uid == FIRST_UID  # back, with her old UID
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_registry_is_not_saved_after_an_error(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    with pytest.raises(RuntimeError), Registry(path) as registry:
        registry.member("alice")
        raise RuntimeError("useradd failed")
    assert not path.exists()


def test_setup_token_is_one_time(tmp_path: Path) -> None:
    path = tmp_path / "token"
    token = bootstrap.ensure_token(path)
    assert bootstrap.ensure_token(path) == token
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert bootstrap.check_token(token, path)
    assert not bootstrap.check_token("guess", path)
    assert not bootstrap.check_token("", path)
    bootstrap.consume_token(path)
    assert not bootstrap.check_token(token, path)


LAB_SH_ENV = {
    "LAB": "lab2", "NETWORK": "lab2", "HOMES_VOLUME": "lab2-homedirs",
    "READONLY_VOLUME": "lab2-readonly", "KERNEL_IMAGE": "labnotebook/kernel-python:latest",
    "LAB_TITLE": "Lab Two", "TLS_HOSTNAMES": "hub.example.org, 10.0.0.5", "PLAIN_HTTP": "yes",
    "KERNEL_IDLE_TIMEOUT": "60", "SERVER_IDLE_TIMEOUT": "28800", "SERVER_MAX_AGE": "0",
    "KERNEL_MEMORY": "auto", "KERNEL_CPUS": "auto", "MEMBER_MEMORY": "24g",
    "CLIENT_ADDRESS_HEADER": "X-Forwarded-For", "TRUSTED_PROXIES": "0",
}  # fmt: skip
"""What hub/lab.sh hands the container (it always sets every one)."""


def lab_settings(monkeypatch: pytest.MonkeyPatch, **changes: str) -> LabSettings:
    for name, value in {**LAB_SH_ENV, **changes}.items():
        monkeypatch.setenv(name, value)
    return LabSettings.from_env()


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    lab = lab_settings(monkeypatch)
    assert (lab.homes_volume, lab.network, lab.title) == ("lab2-homedirs", "lab2", "Lab Two")
    assert lab.plain_http and lab.kernel_idle_timeout == 60
    assert lab.tls_hostnames == ("hub.example.org", "10.0.0.5")
    with pytest.raises(SystemExit, match="SERVER_IDLE_TIMEOUT must be a number"):
        lab_settings(monkeypatch, SERVER_IDLE_TIMEOUT="soon")
    # The defaults come from hub/settings_schema.py through lab.sh: without them, a clear
    # refusal, not a guess.
    monkeypatch.delenv("HOMES_VOLUME")
    with pytest.raises(SystemExit, match=r"HOMES_VOLUME is not set.*make up"):
        LabSettings.from_env()


def test_kernelspec_and_broker_config_follow_the_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lab = lab_settings(monkeypatch)
    spec = startup.kernelspec(lab)
    config = spec["metadata"]["kernel_provisioner"]["config"]
    assert spec["metadata"]["kernel_provisioner"]["provisioner_name"] == "labnotebook-docker"
    # No broker in any file: the provisioner finds it (image_backends.broker_socket), for
    # every client and kernelspec alike.
    assert "broker_socket" not in config
    assert "broker_socket" not in startup.server_config(lab)["DockerKernelProvisioner"]
    mounts = ["lab2-homedirs:/home", "lab2-readonly:/home/shared/readonly"]
    assert config["volumes"] == mounts and config["network"] == "lab2"
    broker = startup.broker_config(lab)
    assert broker["LaunchPolicy"]["lab_mounts"] == mounts
    assert broker["LaunchPolicy"]["network"] == "lab2"
    json.dumps(broker)  # data, not code
    server = startup.server_config(lab)
    assert server["MappingKernelManager"]["cull_idle_timeout"] == lab.kernel_idle_timeout


def test_gpu_settings_reach_the_broker_and_the_gpu_kernelspec(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lab = lab_settings(monkeypatch, GPUS="0, 1", MEMBER_GPUS="1", GPU_SHARING="yes")
    assert startup.broker_config(lab)["GpuPolicy"] == {
        "devices": ["0", "1"],
        "member_gpus": 1,
        "sharing": True,
        "inventory_image": lab.hub_image,
        "idle_timeout": min(3600, lab.kernel_idle_timeout),  # 3600: the setting's default
    }
    # The shorter of GPU_KERNEL_IDLE_TIMEOUT and KERNEL_IDLE_TIMEOUT culls GPU kernels; the
    # broker tells each GPU kernel at launch, so no kernelspec carries it.
    cases = [("7200", "3600", 3600), ("1800", "3600", 1800), ("0", "600", 600), ("1800", "0", 0)]
    for kernel, gpu, expected in cases:
        settings = lab_settings(
            monkeypatch, KERNEL_IDLE_TIMEOUT=kernel, GPU_KERNEL_IDLE_TIMEOUT=gpu
        )
        assert startup.broker_config(settings)["GpuPolicy"]["idle_timeout"] == expected
    gpu = startup.kernelspec(lab_settings(monkeypatch), "python-gpu-docker")
    assert gpu["metadata"]["kernel_provisioner"]["config"]["gpus"] == 1
    assert "cull_idle_timeout" not in gpu["metadata"]
    unset = lab_settings(monkeypatch, GPUS="", MEMBER_GPUS="")
    assert startup.broker_config(unset)["GpuPolicy"]["devices"] == []
    assert startup.broker_config(unset)["GpuPolicy"]["member_gpus"] is None
    with pytest.raises(SystemExit, match=r"GPUS: .*0"):
        startup.broker_config(lab_settings(monkeypatch, GPUS="0,0"))


def test_state_snapshot_copies_sqlite_consistently(tmp_path: Path) -> None:
    from labnotebook.hub.backup import snapshot_state

    state = tmp_path / "state"
    (state / "tls").mkdir(parents=True)
    (state / "tls" / "key.pem").write_text("key")
    (state / "users.json").write_text(json.dumps({"users": {}}))
    (state / "users.lock").write_text("")
    db = sqlite3.connect(state / "jupyterhub.sqlite")
    db.execute("create table t (x)")
    db.execute("insert into t values (1)")
    db.commit()
    db.execute("insert into t values (2)")  # not committed: must not be in the snapshot
    copy = tmp_path / "copy"
    assert snapshot_state(state, copy) == ["jupyterhub.sqlite"]
    db.rollback()
    db.close()
    rows = sqlite3.connect(copy / "jupyterhub.sqlite").execute("select x from t").fetchall()
    assert rows == [(1,)]
    assert (copy / "tls" / "key.pem").read_text() == "key"
    assert not (copy / "users.lock").exists()


def test_self_signed_certificate_names(tmp_path: Path) -> None:
    from labnotebook.hub import tls

    cert = tls.generate(tmp_path / "tls", ("labnotebook", "hub.example.org", "10.1.2.3"))
    text = subprocess.run(
        ["openssl", "x509", "-noout", "-text", "-in", str(cert.cert)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    for name in ("DNS:labnotebook", "DNS:hub.example.org", "IP Address:10.1.2.3", "127.0.0.1"):
        assert name in text
    assert oct(cert.key.stat().st_mode & 0o777) == "0o600"


def test_broker_dropins_extend_the_lab_policy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lab's settings as JSON, then the admin's broker.d files in name order."""
    from labnotebook.hub.broker import KernelBroker

    (tmp_path / "broker.json").write_text(
        json.dumps(startup.broker_config(lab_settings(monkeypatch)))
    )
    dropins = tmp_path / "broker.d"
    dropins.mkdir()
    (dropins / "50-images.py").write_text('c.LaunchPolicy.allowed_images.append("mylab/*")\n')
    (dropins / "60-limits.json").write_text('{"LaunchPolicy": {"max_memory": "8g"}}')
    (dropins / "README.txt").write_text("not a config file")
    broker = KernelBroker(engine=object())
    broker.initialize(["--config", str(tmp_path / "broker.json"), "--config-dir", str(dropins)])
    assert broker.policy.allowed_images[-1] == "mylab/*"
    assert "labnotebook/*" in broker.policy.allowed_images
    assert broker.policy.min_uid == FIRST_UID and broker.policy.max_memory == "8g"


def test_the_hub_configuration_loads_and_survives_being_copied(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """JupyterHub deep-copies its configuration at start (traitlets), template_vars with it:
    the hub's GPU lines must come through as the one shared reader."""
    from types import SimpleNamespace

    import labnotebook.hub
    from jupyterhub.app import JupyterHub
    from traitlets.config.loader import PyFileConfigLoader

    lab_settings(monkeypatch)
    folder = str(Path(labnotebook.hub.__file__).parent)  # the file JupyterHub loads
    loaded = PyFileConfigLoader("jupyterhub_config.py", folder).load_config()
    pages = loaded.JupyterHub.template_vars["lab_gpus"]
    hub = JupyterHub()
    hub.update_config(loaded)  # what JupyterHub's load_config_file does (deep copies)
    assert hub.template_vars["lab_gpus"] is pages
    assert loaded.JupyterHub.template_vars["lab_title"] == "Lab Two"
    assert pages(None) is None
    assert not pages(SimpleNamespace(name="alice", admin=False))  # no broker here: no lines
