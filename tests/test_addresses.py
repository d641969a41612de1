"""The broker's address book: a restarted kernel gets its old address back, nobody else can."""

from __future__ import annotations

import logging
import time

import pytest
from labnotebook.hub.addresses import AddressBook
from labnotebook.provisioner.errors import AddressUnavailable
from labnotebook.provisioner.spec import KernelContainerSpec

from .broker_fixtures import full_spec
from .test_broker_protocol import FakeEngine

ALICE, BOB = 2001, 2002


def spec(kernel_id: str, ip: str | None = None) -> KernelContainerSpec:
    return full_spec(kernel_id=kernel_id, ip=ip)


def test_a_removed_kernels_address_is_held_for_its_restart_only() -> None:
    engine = FakeEngine()
    book = AddressBook("labnotebook", hold=60, log=logging.getLogger("test"))
    first = book.launch(spec("k1"), ALICE, engine)
    address = first.ip
    engine.remove(first.container_id)
    book.release(first.container_id)

    # Nobody else gets it: not another member asking for it, not alice's other kernel, and
    # not a launch that asks for any address.
    with pytest.raises(AddressUnavailable, match="not held for this kernel"):
        book.launch(spec("k9", ip=address), BOB, engine)
    with pytest.raises(AddressUnavailable):
        book.launch(spec("k2", ip=address), ALICE, engine)
    other = book.launch(spec("k3"), BOB, engine)
    assert other.ip != address

    # The restart of the same kernel by the same member gets it back, once.
    again = book.launch(spec("k1", ip=address), ALICE, engine)
    assert again.ip == address
    with pytest.raises(AddressUnavailable):
        book.launch(spec("k1", ip=address), ALICE, engine)


def test_a_hold_expires() -> None:
    engine = FakeEngine()
    book = AddressBook("labnotebook", hold=0.01, log=logging.getLogger("test"))
    first = book.launch(spec("k1"), ALICE, engine)
    engine.remove(first.container_id)
    book.release(first.container_id)
    time.sleep(0.05)
    assert first.ip not in book.held()
    with pytest.raises(AddressUnavailable):
        book.launch(spec("k1", ip=first.ip), ALICE, engine)
