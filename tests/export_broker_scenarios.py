"""Scenarios for the export tests through the broker (see test_export_broker.py): the kernel
build ones, plus what `labnotebook export` imports late, loaded while /root is readable."""

from __future__ import annotations

import gzip  # noqa: F401 - used by --archive, after /root is closed

import labnotebook.provisioner.broker_client
import labnotebook.provisioner.export
import labnotebook.provisioner.member_images
import labnotebook.provisioner.record
import labnotebook.provisioner.reproduce  # noqa: F401

from .kernel_build_scenarios import SCENARIOS as BUILD_SCENARIOS

SCENARIOS = dict(BUILD_SCENARIOS)
