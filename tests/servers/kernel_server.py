"""A minimal stand-in for a Jupyter server: starts one Docker kernel, runs code, reports.

Usage: python -m tests.servers.kernel_server KERNELS_DIR KERNEL_NAME [--code CODE] [--hold]
Prints one JSON line: {"kernel_id", "ip", "stdout"}; with --hold it then sleeps, so a test can
kill it like a crashed server.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from jupyter_client.ioloop import AsyncIOLoopKernelManager
from jupyter_client.kernelspec import KernelSpecManager


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kernels_dir")
    parser.add_argument("kernel_name")
    parser.add_argument("--code", default="import os; print(os.getuid())")
    parser.add_argument("--hold", action="store_true")
    args = parser.parse_args()
    km = AsyncIOLoopKernelManager(
        kernel_name=args.kernel_name,
        kernel_spec_manager=KernelSpecManager(kernel_dirs=[args.kernels_dir]),
    )
    await km.start_kernel()
    kc = km.client()
    kc.start_channels()
    await kc.wait_for_ready(timeout=120)
    out: list[str] = []

    def hook(msg: dict) -> None:
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])

    await kc.execute_interactive(args.code, output_hook=hook, timeout=60)
    print(json.dumps({"kernel_id": km.kernel_id, "ip": km.ip, "stdout": "".join(out)}), flush=True)
    if args.hold:
        await asyncio.sleep(3600)
    kc.stop_channels()
    await km.shutdown_kernel()


if __name__ == "__main__":
    asyncio.run(main())
