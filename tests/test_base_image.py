"""Where the base image comes from: the registry when the engine can pull, else debootstrap.

This machine's engine cannot pull, so the choice is tested with stand-ins on PATH: a `docker`
whose `pull` succeeds or fails as the test says (it records every call), and a `debootstrap`
that makes a tiny root file system. images/base/build.sh itself runs unchanged.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "images" / "base" / "build.sh"
DIGEST = "debian@sha256:" + "ab" * 32

FAKE_DOCKER = f"""#!/bin/sh
# A stand-in for the docker CLI: records its arguments (and stdin for build/import).
log="$FAKE_LOG"
case "$1" in
    pull)
        printf '%s\\n' "pull $*" >>"$log"
        if [ "$FAKE_PULL" = ok ]; then exit 0; fi
        echo 'Error response from daemon: no route to registry' >&2; exit 1 ;;
    image)
        printf '%s\\n' "inspect $*" >>"$log"
        echo "{DIGEST}" ;;
    build)
        printf '%s\\n' "build $*" >>"$log"
        cat >>"$log" ;;
    import)
        printf '%s\\n' "import $*" >>"$log"
        tar -tf - | head -n 3 >>"$log" ;;
    *) printf '%s\\n' "other $*" >>"$log" ;;
esac
"""

FAKE_DEBOOTSTRAP = """#!/bin/sh
# A stand-in for debootstrap: a root file system with the folders build.sh touches.
echo "debootstrap $*" >>"$FAKE_LOG"
mkdir -p "$3/etc/apt/apt.conf.d" "$3/var/lib/apt/lists" "$3/var/cache/apt/archives" "$3/bin"
"""

FAKE_APT = """#!/bin/sh
# A stand-in for apt-get: "installing" debootstrap puts the fake one on PATH.
echo "apt-get $*" >>"$FAKE_LOG"
case "$*" in
    *install*debootstrap*) cp "$FAKE_DIR/debootstrap.fake" "$FAKE_DIR/debootstrap" ;;
esac
"""


def _stand_ins(tmp_path: Path, *, debootstrap: bool, apt: bool, uid: int | None) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(FAKE_DOCKER)
    (bin_dir / "debootstrap.fake").write_text(FAKE_DEBOOTSTRAP)
    if debootstrap:
        (bin_dir / "debootstrap").write_text(FAKE_DEBOOTSTRAP)
    if apt:
        (bin_dir / "apt-get").write_text(FAKE_APT)
    if uid is not None:
        (bin_dir / "id").write_text(f"#!/bin/sh\necho {uid}\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    return bin_dir


def build(
    tmp_path: Path,
    *,
    pull: bool,
    debootstrap: bool = True,
    apt: bool = False,
    uid: int | None = 0,
    source: str = "auto",
) -> tuple[subprocess.CompletedProcess[str], str]:
    bin_dir = _stand_ins(tmp_path, debootstrap=debootstrap, apt=apt, uid=uid)
    log = tmp_path / "calls.log"
    log.touch()
    # Only the stand-ins and the basic tools: no real docker, debootstrap or apt-get.
    basics = tmp_path / "basics"
    basics.mkdir()
    for tool in ("sh", "bash", "mktemp", "rm", "tar", "tail", "head", "printf", "cat", "mkdir",
                 "cp", "timeout", "env"):  # fmt: skip
        found = subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True, text=True)
        if found.stdout.strip().startswith("/"):
            (basics / tool).symlink_to(found.stdout.strip())
    env = {
        "PATH": f"{bin_dir}:{basics}",
        "FAKE_LOG": str(log),
        "FAKE_DIR": str(bin_dir),
        "FAKE_PULL": "ok" if pull else "fail",
        "BASE_SOURCE": source,
        "HOME": str(tmp_path),
    }
    result = subprocess.run(
        ["bash", str(BUILD), "labnotebook/base:test"], env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    return result, log.read_text()


def test_the_registry_is_used_when_the_engine_can_pull(tmp_path: Path) -> None:
    result, calls = build(tmp_path, pull=True)
    assert result.returncode == 0, result.stderr
    assert "pull pull --quiet debian:bookworm-slim" in calls
    assert f"FROM {DIGEST}" in calls  # the exact digest, not the moving tag
    assert f'org.labnotebook.base.digest="{DIGEST}"' in calls
    assert "debootstrap" not in calls
    assert f"Using {DIGEST}" in result.stdout  # printed for the operator


def test_debootstrap_when_the_engine_cannot_pull(tmp_path: Path) -> None:
    result, calls = build(tmp_path, pull=False)
    assert result.returncode == 0, result.stderr
    assert "cannot pull debian:bookworm-slim: Error response from daemon" in result.stdout
    assert "debootstrap --variant=minbase bookworm" in calls
    assert "org.labnotebook.base.source=debootstrap" in calls
    assert "build " not in calls


def test_debootstrap_is_installed_where_apt_can(tmp_path: Path) -> None:
    result, calls = build(tmp_path, pull=False, debootstrap=False, apt=True)
    assert result.returncode == 0, result.stderr
    assert "Installing debootstrap" in result.stdout
    assert "apt-get install -y -qq debootstrap" in calls
    assert "debootstrap --variant=minbase" in calls


def test_without_pull_or_debootstrap_the_message_says_what_to_run(tmp_path: Path) -> None:
    result, calls = build(tmp_path, pull=False, debootstrap=False, apt=False, uid=0)
    assert result.returncode != 0
    assert "docker pull debian:bookworm-slim" in result.stderr
    assert "apt-get install -y debootstrap" in result.stderr
    assert "import" not in calls


def test_a_non_root_user_is_told_to_use_sudo(tmp_path: Path) -> None:
    result, _ = build(tmp_path, pull=False, debootstrap=True, uid=1000)
    assert result.returncode != 0 and "sudo make images" in result.stderr


def test_registry_only_fails_clearly(tmp_path: Path) -> None:
    result, calls = build(tmp_path, pull=False, source="registry")
    assert result.returncode != 0 and "BASE_SOURCE=registry" in result.stderr
    assert "debootstrap" not in calls
