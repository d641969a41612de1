"""labnotebook's Docker kernel provisioner for jupyter_client."""

from .errors import KernelLaunchError
from .provisioner import DockerKernelProvisioner

__all__ = ["DockerKernelProvisioner", "KernelLaunchError"]
__version__ = "0.1.0"
