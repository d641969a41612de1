"""Back up and restore the lab: the state volume and the homes volume, in one archive.

    python3 -m labnotebook.hub.backup create  > lab.tar.gz   # in the hub image, volumes mounted
    python3 -m labnotebook.hub.backup restore < lab.tar.gz   # onto fresh volumes

`make backup` and `make restore BACKUP=...` run these in the hub container (or in a one-off
container of the hub image when the hub is down). The archive is a gzipped GNU tar with
numeric owners, permissions and ACLs, so UIDs, the shared folders' default ACLs and private
homes come back exactly. The SQLite database is copied with SQLite's online backup API: a
consistent snapshot even while the hub writes to it (a plain file copy could catch it
half-way through a transaction).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .settings import HOMES_DIR, READONLY_DIR, SHARED_DIR, STATE_DIR

MANIFEST = "labnotebook-backup.json"
FORMAT = 1
TAR_OPTIONS = ["--acls", "--xattrs", "--numeric-owner"]
SQLITE_SUFFIXES = (".sqlite", ".db")
SKIPPED = ("-journal", "-wal", "-shm", ".lock")


def snapshot_state(state: Path, into: Path) -> list[str]:
    """Copy the state folder into `into`; databases through SQLite's backup API."""
    databases = []
    into.mkdir(parents=True)
    shutil.copystat(state, into)
    for entry in sorted(state.rglob("*")):
        relative = entry.relative_to(state)
        target = into / relative
        if entry.is_dir() and not entry.is_symlink():
            target.mkdir(exist_ok=True)
            shutil.copystat(entry, target)
        elif entry.name.endswith(SKIPPED):
            continue
        elif entry.suffix in SQLITE_SUFFIXES:
            source = sqlite3.connect(f"file:{entry}?mode=ro", uri=True)
            copy = sqlite3.connect(target)
            with copy:
                source.backup(copy)
            source.close()
            copy.close()
            shutil.copystat(entry, target)
            databases.append(str(relative))
        else:
            shutil.copy2(entry, target, follow_symlinks=False)
        os.lchown(target, entry.lstat().st_uid, entry.lstat().st_gid)
    return databases


def create(out: int) -> None:
    with tempfile.TemporaryDirectory(prefix="labnotebook-backup.") as tmp:
        root = Path(tmp)
        databases = snapshot_state(STATE_DIR, root / STATE_DIR.relative_to("/"))
        manifest = {
            "format": FORMAT,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "lab": os.environ.get("LAB", ""),
            "databases": databases,
        }
        (root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        subprocess.run(
            ["tar", *TAR_OPTIONS, "-czf", "-", "-C", tmp, MANIFEST, "srv/state",
             "-C", "/", str(HOMES_DIR.relative_to("/"))],
            stdout=out,
            check=True,
        )  # fmt: skip


def _is_empty(path: Path) -> bool:
    """Nothing but what Docker makes for mounts: lost+found, and on /home the empty folders
    on the way to the readonly volume's mount point (/home/shared/readonly)."""
    for entry in path.iterdir():
        if entry.name == "lost+found":
            continue
        mount_path_only = (
            path == HOMES_DIR
            and entry == SHARED_DIR
            and not entry.is_symlink()
            and all(p == READONLY_DIR and not any(p.iterdir()) for p in entry.iterdir())
        )
        if not mount_path_only:
            return False
    return True


def restore(source: int, force: bool) -> None:
    for folder in (STATE_DIR, HOMES_DIR):
        if not force and folder.exists() and not _is_empty(folder):
            sys.exit(
                f"restore: {folder} is not empty. Restore onto fresh volumes (the default of "
                "`make restore`), or pass --force to overwrite."
            )
    # Only the archive's known members are extracted; GNU tar refuses absolute paths and "..".
    subprocess.run(
        ["tar", *TAR_OPTIONS, "--same-permissions", "--same-owner", "-xzf", "-", "-C", "/",
         MANIFEST, "srv/state", str(HOMES_DIR.relative_to("/"))],
        stdin=source,
        check=True,
    )  # fmt: skip
    manifest = json.loads(Path("/", MANIFEST).read_text())
    if manifest.get("format") != FORMAT:
        sys.exit(f"restore: unknown backup format {manifest.get('format')!r}")
    print(f"restored the backup of {manifest.get('lab') or 'a lab'} from {manifest['created']}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python3 -m labnotebook.hub.backup")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("create", help="write a backup archive to stdout")
    restoring = commands.add_parser("restore", help="read a backup archive from stdin")
    restoring.add_argument("--force", action="store_true", help="overwrite non-empty volumes")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("backups must run as root (in the hub image)")
    if args.command == "create":
        if sys.stdout.isatty():
            sys.exit("create writes the archive to stdout: redirect it to a file")
        sys.stdout.flush()
        create(sys.stdout.fileno())
    else:
        restore(sys.stdin.fileno(), args.force)


if __name__ == "__main__":
    main()
