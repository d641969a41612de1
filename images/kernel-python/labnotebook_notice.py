"""IPython extension: tell the member, in the notebook, why the previous kernel ended.

The labnotebook provisioner sets LABNOTEBOOK_KERNEL_NOTICE for a kernel that replaces one the
system stopped (out of memory). JupyterLab itself only says the kernel "appears to have
died"; this prints the reason once, above the output of the first cell run afterwards.
Loaded for every IPython kernel of the image by /etc/ipython/ipython_kernel_config.py.
"""

import os
import sys

NOTICE_ENV = "LABNOTEBOOK_KERNEL_NOTICE"


def load_ipython_extension(ipython):
    notice = os.environ.pop(NOTICE_ENV, "")
    if not notice:
        return

    def tell(*_):
        ipython.events.unregister("pre_run_cell", tell)
        print(f"\N{WARNING SIGN} labnotebook: {notice}\n", file=sys.stderr, flush=True)

    ipython.events.register("pre_run_cell", tell)
