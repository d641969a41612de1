"""Kernel traffic is encrypted: someone on the kernel network who knows the ports reads nothing."""

from __future__ import annotations

import asyncio

import pytest
import zmq
import zmq.asyncio

from .conftest import run_code

pytestmark = pytest.mark.docker


async def eavesdrop(km, kc) -> list[bytes]:
    """Subscribe to the kernel's output stream as an outsider would: address and port only."""
    context = zmq.asyncio.Context()
    listener = context.socket(zmq.SUB)
    listener.setsockopt(zmq.SUBSCRIBE, b"")
    listener.connect(f"tcp://{km.ip}:{km.iopub_port}")
    await asyncio.sleep(0.5)  # let the subscription reach the kernel
    try:
        result = await run_code(kc, "print('the secret result is 42')")
        assert result["stdout"].strip() == "the secret result is 42"  # the owner reads it
        heard = []
        while await listener.poll(500):
            heard.append(b"".join(await listener.recv_multipart()))
        return heard
    finally:
        listener.close(linger=0)
        context.term()


async def test_an_outsider_reads_nothing_from_an_encrypted_kernel(kernel_specs, start_kernel):
    km, kc = await start_kernel(kernel_specs())
    assert km.curve_publickey and km.curve_secretkey
    heard = await eavesdrop(km, kc)
    assert not any(b"secret result" in frame for frame in heard)


async def test_without_encryption_the_output_stream_is_readable(kernel_specs, start_kernel):
    """The same eavesdropper against a kernel that does not declare curve: it hears all."""
    km, kc = await start_kernel(kernel_specs(encrypted=False))
    assert km.curve_publickey is None
    heard = await eavesdrop(km, kc)
    assert any(b"secret result" in frame for frame in heard)


async def test_encryption_required_but_not_declared_is_refused(kernel_specs) -> None:
    from jupyter_client.ioloop import AsyncIOLoopKernelManager

    name = kernel_specs(encrypted=False, encrypt_traffic="required")
    km = AsyncIOLoopKernelManager(kernel_name=name, kernel_spec_manager=kernel_specs.spec_manager)
    with pytest.raises(Exception, match='does not declare "curve"'):
        await km.start_kernel()
