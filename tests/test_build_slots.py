"""The lab's build slots (hub/build_slots.py), shared by kernel builds and exports: one job
per member, `max_builds` in the lab, and nobody's finished job cancelled by another's start.

(The same question through a real broker: test_export_broker.py's
test_a_build_begun_after_an_export_does_not_cancel_its_check.)
"""

from __future__ import annotations

import io
import time

import pytest
from labnotebook.hub.broker_jobs import STALLED_UPLOAD, Job
from labnotebook.hub.build_slots import BuildSlots
from labnotebook.provisioner.build_container import BuildLog
from labnotebook.provisioner.errors import PermissionRefused

BUSY = "busy with {name!r}"
FULL = "full at {count}"


def _job(uid: int, name: str = "k") -> Job:
    return Job(uid=uid, username=f"u{uid}", name=name, size=1, file=io.BytesIO(), log=BuildLog())


def test_one_job_per_member_and_a_bound_for_the_lab() -> None:
    slots = BuildSlots(lambda: 2)
    first = _job(1001, "fig")
    slots.reserve(first, busy=BUSY, full=FULL, label="export fig")
    with pytest.raises(PermissionRefused, match="busy with 'export fig'"):
        slots.reserve(_job(1001), busy=BUSY, full=FULL)
    slots.reserve(_job(1002), busy=BUSY, full=FULL)
    with pytest.raises(PermissionRefused, match="full at 2"):
        slots.reserve(_job(1003), busy=BUSY, full=FULL)
    # A job that ends frees its slot, with nothing to hand back.
    first.state = "done"
    slots.reserve(_job(1003), busy=BUSY, full=FULL)
    assert first not in slots.held()


def test_a_start_does_not_cancel_the_members_finished_job() -> None:
    """An export that finished keeps its own cancel unset when the member starts a build, so
    its check, run later, is not stopped before it starts."""
    slots = BuildSlots(lambda: 4)
    export = _job(1001, "fig")
    slots.reserve(export, busy=BUSY, full=FULL)
    export.state = "done"
    build = _job(1001, "k")
    slots.reserve(build, busy=BUSY, full=FULL)
    assert not export.cancel.is_set()
    # The check waits for the build, then takes a slot, running.
    with pytest.raises(PermissionRefused, match="busy with 'k'"):
        slots.reserve(export, busy=BUSY, full=None, running=True)
    assert export.state == "done"
    build.state = "failed"
    slots.reserve(export, busy=BUSY, full=None, running=True)
    assert export.state == "running" and not export.cancel.is_set()
    assert slots.held() == [export]


def test_a_stalled_upload_loses_its_slot_for_good() -> None:
    slots = BuildSlots(lambda: 4)
    stalled = _job(1001)
    slots.reserve(stalled, busy=BUSY, full=FULL)
    stalled.touched = time.monotonic() - STALLED_UPLOAD - 1
    slots.reserve(_job(1001), busy=BUSY, full=FULL)
    assert stalled.cancel.is_set()  # its upload cannot resume next to the new job


def test_a_forgotten_job_is_released() -> None:
    slots = BuildSlots(lambda: 1)
    job = _job(1001)
    slots.reserve(job, busy=BUSY, full=FULL)
    slots.release(job)
    slots.reserve(_job(1002), busy=BUSY, full=FULL)
    assert not job.cancel.is_set()
