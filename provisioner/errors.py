"""Errors a kernel launch can end in, each with a message that says what to do about it.

jupyter_server shows an exception's message to the person who started the kernel, so every
message here names the cause and the fix in plain words.
"""

from __future__ import annotations


class KernelLaunchError(RuntimeError):
    """A Docker kernel could not be started; nothing was left behind on the engine."""


class KernelConfigError(KernelLaunchError, ValueError):
    """The provisioner's configuration (kernelspec or Jupyter config file) is invalid."""


class EngineUnreachable(KernelLaunchError):
    """The Docker engine (or the lab's kernel broker) could not be reached."""


class ImageNotAvailable(KernelLaunchError):
    """The kernel image is not on the engine and the pull policy does not allow pulling it."""


class GpuUnavailable(KernelLaunchError):
    """GPUs were requested but the engine has no GPU driver configured."""


class KernelDiedDuringStart(KernelLaunchError):
    """The kernel's container exited before the kernel was listening."""

    def __init__(self, message: str, exit_code: int | None = None, logs: str = "") -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.logs = logs


class AddressUnavailable(KernelLaunchError):
    """The address asked for (a restarted kernel's old one) cannot be given to the container:
    the network has no configured subnet, or the address is taken. The caller starts the
    kernel on a new address instead, with new ports."""


class PermissionRefused(KernelLaunchError, PermissionError):
    """A request would break the lab's security policy (root kernels, foreign containers...)."""
