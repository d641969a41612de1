"""Which GPUs this kernel has, said where a member looks: in the console's banner, in the
kernel's log, and, when there is none, once in the output of the first cell they run.

Installed in the lab's GPU kernel image and loaded by /etc/ipython/ipython_kernel_config.py.
A GPU kernel on a host without GPUs starts anyway (the kernelspec asks for gpus "auto"), so
without this note its code would quietly run on the CPU.
"""

from __future__ import annotations

import glob
import shutil
import subprocess
import sys
from typing import Any

NO_GPU = (
    "No GPU: this kernel sees no NVIDIA GPU, so PyTorch computes on the CPU "
    "(torch.cuda.is_available() is False). This host has no GPU, or its Docker engine lacks "
    "the NVIDIA Container Toolkit; the lab's admin can check with nvidia-smi "
    "(README: Sample kernels, GPU)."
)


def visible_gpus() -> list[str]:
    """The NVIDIA GPUs this container may use: nvidia-smi's list, else the device nodes."""
    # nvidia-smi is not in the image: the NVIDIA Container Toolkit mounts the host driver's
    # copy into containers given GPUs (capability "utility", see the Dockerfile).
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20)
            if listed.returncode == 0:
                return [line.strip() for line in listed.stdout.splitlines() if line.strip()]
        except (OSError, subprocess.TimeoutExpired):
            pass
    return [f"NVIDIA device {path}" for path in sorted(glob.glob("/dev/nvidia[0-9]*"))]


def report(gpus: list[str]) -> str:
    if not gpus:
        return NO_GPU
    return f"GPUs in this kernel ({len(gpus)}): " + "; ".join(gpus)


def install(shell: Any) -> None:
    """Put the report in the banner and the log; with no GPU, before the first cell too."""
    try:
        gpus = visible_gpus()
        text = report(gpus)
        shell.banner2 = text + "\n"
        print(f"labnotebook: {text}", file=sys.__stderr__, flush=True)
        if gpus:
            return

        def once(info: Any = None) -> None:
            # Only a member's own cell (stored in history): not the startup lines, nor the
            # silent requests front ends send for completions and variable viewers.
            if info is not None and not getattr(info, "store_history", True):
                return
            shell.events.unregister("pre_run_cell", once)
            print(text, file=sys.stderr, flush=True)

        shell.events.register("pre_run_cell", once)
    except Exception as e:  # a report must never keep the kernel from starting
        print(f"labnotebook: could not check for GPUs: {e}", file=sys.__stderr__, flush=True)
