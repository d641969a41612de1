"""Peers and policies for the broker's unit tests (in the test process only: the agents that
run as other users import broker_fixtures, which must not need pytest or the hub package)."""

from __future__ import annotations

import os
import pwd
from typing import Any

import pytest
from labnotebook.hub.broker_policy import LaunchPolicy, Peer
from traitlets.config import Config

try:
    NOBODY = pwd.getpwnam("nobody")
except KeyError:  # pragma: no cover - every Debian/Ubuntu/Alpine has it
    NOBODY = None
needs_nobody = pytest.mark.skipif(NOBODY is None, reason="no 'nobody' account on this machine")


def user_peer() -> Peer:
    assert NOBODY is not None
    return Peer(os.getpid(), NOBODY.pw_uid, NOBODY.pw_gid)


def make_policy(**settings: Any) -> LaunchPolicy:
    return LaunchPolicy(config=Config({"LaunchPolicy": settings}))
