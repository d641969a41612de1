"""The broker's admission control: one member's kernels add up to at most their memory cap."""

from __future__ import annotations

import asyncio
import logging
import os
import time

import pytest
from labnotebook.hub.broker_operations import BrokerOperations
from labnotebook.hub.broker_policy import Peer
from labnotebook.provisioner.errors import PermissionRefused

from .broker_fixtures import kernel_spec
from .broker_helpers import make_policy
from .test_broker_protocol import FakeEngine


async def test_a_launch_past_the_members_memory_cap_is_refused_naming_their_kernels() -> None:
    engine = FakeEngine()
    policy = make_policy(
        allow_root=True, max_memory="2g", max_memory_per_user="5g", network="labnotebook"
    )
    operations = BrokerOperations(engine=engine, policy=policy, log=logging.getLogger("test"))
    me = Peer(os.getpid(), 0, 0)
    try:
        for _ in range(2):  # 2 x 2g: within 5g
            answer = await operations.op_launch(me, {"spec": kernel_spec()})
            assert answer["ok"]
        with pytest.raises(PermissionRefused) as refused:
            await operations.op_launch(me, {"spec": kernel_spec()})
        message = str(refused.value)
        assert "6 GiB" in message and "5 GiB this lab allows per member" in message, message
        assert message.count("broker-test") == 2  # names the member's kernels
        # A smaller kernel still fits.
        small = kernel_spec(memory=1 << 30)
        assert (await operations.op_launch(me, {"spec": small}))["ok"]
        assert len(engine.kernel_containers(0)) == 3
    finally:
        operations.shutdown()


class SlowToReturnEngine(FakeEngine):
    """An engine whose launches return a while after their container exists (as a real one
    does while the kernel starts): concurrent launches overlap there."""

    def launch_container(self, spec):  # type: ignore[no-untyped-def]
        launched = super().launch_container(spec)
        time.sleep(0.3)
        return launched


async def test_concurrent_launches_up_to_the_cap_are_all_admitted() -> None:
    """A launch whose container exists already counts once (its reservation), not twice: a
    member who opens two notebooks at once under a cap of two kernels' memory gets both."""
    engine = SlowToReturnEngine()
    policy = make_policy(
        allow_root=True, max_memory="2g", max_memory_per_user="4g", network="labnotebook"
    )
    operations = BrokerOperations(engine=engine, policy=policy, log=logging.getLogger("test"))
    me = Peer(os.getpid(), 0, 0)
    try:
        answers = await asyncio.gather(
            *(operations.op_launch(me, {"spec": kernel_spec()}) for _ in range(2)),
            return_exceptions=True,
        )
        assert all(isinstance(a, dict) and a["ok"] for a in answers), answers
        with pytest.raises(PermissionRefused, match="4 GiB this lab allows per member"):
            await operations.op_launch(me, {"spec": kernel_spec()})
        assert len(engine.kernel_containers(0)) == 2
    finally:
        operations.shutdown()
