"""Kernelspecs for the labnotebook Docker kernels, one folder each.

Install them with `labnotebook kernelspec install` or `jupyter kernelspec install FOLDER`.
"""

from pathlib import Path


def bundled() -> dict[str, Path]:
    """Name -> folder of every kernelspec shipped here."""
    here = Path(__file__).parent
    return {p.parent.name: p.parent for p in sorted(here.glob("*/kernel.json"))}
