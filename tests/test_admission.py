"""The broker's admission control: one member's kernels add up to at most their memory cap."""

from __future__ import annotations

import logging
import os

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
