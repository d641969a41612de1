"""The hub's TLS certificate: the operator's, or a self-signed one made at first start.

`make up SSL_CERT=/path/cert.pem SSL_KEY=/path/key.pem` mounts the operator's files (e.g. from
Let's Encrypt or the institution) read-only at /srv/tls. Without them, a self-signed pair is
generated once into the state volume - never into the image, where every lab would share the
key - and reused at every start, so browsers' "accept the risk" exceptions keep working.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .settings import MOUNTED_TLS_DIR, STATE_DIR

log = logging.getLogger("labnotebook.tls")

GENERATED_DIR = STATE_DIR / "tls"
VALID_DAYS = 825
"""The longest validity browsers accept for a certificate (CA/Browser Forum)."""


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path
    self_signed: bool


def _subject_alt_names(hostnames: tuple[str, ...]) -> str:
    entries = []
    for name in (*hostnames, "127.0.0.1", "::1"):
        try:
            ipaddress.ip_address(name)
            entries.append(f"IP:{name}")
        except ValueError:
            entries.append(f"DNS:{name}")
    return ",".join(dict.fromkeys(entries))


def generate(directory: Path, hostnames: tuple[str, ...]) -> Certificate:
    """A new self-signed certificate (ECDSA P-256) for `hostnames`, and its key (root-only)."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-days", str(VALID_DAYS), "-subj", f"/O=labnotebook/CN={hostnames[0]}",
            "-addext", f"subjectAltName={_subject_alt_names(hostnames)}",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    os.chmod(key, 0o600)
    os.chmod(cert, 0o644)
    return Certificate(cert, key, self_signed=True)


def certificate(hostnames: tuple[str, ...]) -> Certificate:
    """The certificate the hub serves: mounted by the operator, else generated once."""
    mounted = Certificate(MOUNTED_TLS_DIR / "cert.pem", MOUNTED_TLS_DIR / "key.pem", False)
    if mounted.cert.exists() or mounted.key.exists():
        for path in (mounted.cert, mounted.key):
            if not os.access(path, os.R_OK):
                raise SystemExit(f"TLS: {path} (from SSL_CERT/SSL_KEY) is missing or unreadable.")
        return mounted
    generated = Certificate(GENERATED_DIR / "cert.pem", GENERATED_DIR / "key.pem", True)
    if generated.cert.exists() and generated.key.exists():
        return generated
    log.warning(
        "No certificate given (make up SSL_CERT=... SSL_KEY=...): generating a self-signed one "
        "for %s in %s. Browsers will warn until you install a real one.",
        ", ".join(hostnames),
        GENERATED_DIR,
    )
    return generate(GENERATED_DIR, hostnames)
