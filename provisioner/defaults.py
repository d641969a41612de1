"""Defaults the provisioner and the lab hub share, each declared here once.

The provisioner is usable without the hub, so the defaults it needs live in this package and
the hub's settings schema (hub/settings_schema.py) takes them from here. Plain constants and
the standard library only: `make up` reads this file by path on a fresh clone, before
anything is installed.
"""

from __future__ import annotations

KERNEL_IMAGE = "labnotebook/kernel-python:latest"
"""The lab's Python kernel (images/kernel-python): what `make images` builds, what `make up`
offers as the lab's default kernel (KERNEL_IMAGE), and what a member's `labnotebook kernel
build` starts from without --from."""
