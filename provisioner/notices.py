"""What a restarted kernel tells its member about why the previous one ended.

JupyterLab only says a kernel "appears to have died". When the engine reports that the
container was killed for memory, the provisioner hands the next kernel of the same notebook a
short explanation in `NOTICE_ENV`; the lab's kernel images print it once, above the output
of the first cell run after the restart (`images/kernel-python/labnotebook_notice.py`, an
IPython extension). The server's log says the same for the admin.
"""

from __future__ import annotations

from .sizes import human_bytes

NOTICE_ENV = "LABNOTEBOOK_KERNEL_NOTICE"


def out_of_memory(limit: int) -> str:
    """The notice for a kernel the kernel's memory limit stopped (`limit` in bytes, 0 if
    unknown)."""
    what = f"its memory limit of {human_bytes(limit)}" if limit > 0 else "its memory limit"
    return (
        f"The previous kernel of this notebook was stopped because it used all of {what} "
        "(swap included). Everything it held in memory is gone: run the cells you need "
        "again. To use less, load data in parts or delete large objects you no longer need "
        "(`del x`); if the analysis needs more, ask the lab's admin about the kernel memory "
        "limit (KERNEL_MEMORY)."
    )
