"""labnotebook's Docker kernel provisioner for jupyter_client."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import KernelLaunchError

if TYPE_CHECKING:
    from .provisioner import DockerKernelProvisioner

__all__ = ["DockerKernelProvisioner", "KernelLaunchError"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Imported on first use: the provisioner needs the Docker SDK, which the lab's kernel
    # images lack, yet `labnotebook kernel ...` (this package's CLI) runs there through the
    # broker's socket.
    if name == "DockerKernelProvisioner":
        from .provisioner import DockerKernelProvisioner

        return DockerKernelProvisioner
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
