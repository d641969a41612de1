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


_SHOWN: dict[type[KernelLaunchError], type[KernelLaunchError]] = {}


def shown_by_jupyter_server(error: KernelLaunchError) -> KernelLaunchError:
    """The same error, made a tornado HTTPError too, so that jupyter_server's REST API (and so
    JupyterLab's dialog) gives the member its message: for any other exception it answers only
    "Unhandled error". Still of the error's own class, with the same str(). Without tornado (no
    Jupyter server here), the error as it is."""
    if isinstance(error, _ShownMixin):
        return error
    try:
        from tornado.web import HTTPError
    except ImportError:
        return error
    cls = _SHOWN.get(type(error))
    if cls is None:
        cls = type(type(error).__name__, (_ShownMixin, type(error), HTTPError), {})
        _SHOWN[type(error)] = cls
    shown = cls(*error.args)
    shown.__dict__.update(error.__dict__)
    status = 403 if isinstance(error, PermissionRefused) else 500
    # log_message is %-formatted only when args are given (none here).
    HTTPError.__init__(shown, status, str(error))  # type: ignore[arg-type]
    shown.args = error.args  # HTTPError.__init__ replaced them
    shown.__cause__ = error.__cause__
    shown.__traceback__ = error.__traceback__
    return shown


class _ShownMixin:
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
