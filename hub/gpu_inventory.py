"""What GPUs the host has: the admin's `GPUS=` setting, NVML, and how the two make the lab's list.

NVML (NVIDIA's own bindings, `nvidia-ml-py`, imported as `pynvml`) needs the driver's library,
which the hub container does not have. So the broker runs

    python3 -m labnotebook.hub.gpu_inventory --json

in a short-lived container started with all GPUs, and reads its output with
`parse_inventory_json`. The admin's setting (`make up GPUS=0,1,2,3`, indexes or UUIDs)
overrides that, or stands in where NVML cannot be read; `choose` merges the two.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
from collections.abc import Callable
from typing import Any

from labnotebook.provisioner.errors import KernelConfigError
from labnotebook.provisioner.sizes import human_bytes

from .gpu_book import Gpu

MAX_GPUS = 1024
"""More devices than any host has: a setting or an output listing more is garbage."""
MAX_JSON = 1 << 20

_UUID = re.compile(r"^(GPU|MIG)-[0-9A-Za-z][0-9A-Za-z/_.-]{0,127}$", re.IGNORECASE)
"""GPU-<uuid>, and MIG-<uuid> or the older MIG-GPU-<uuid>/<gi>/<ci>."""
_INDEX = re.compile(r"^(\d{1,4})(?::(\d{1,2}))?$")
"""0, or 0:1 for MIG instance 1 of GPU 0 (the NVIDIA runtime's own notation)."""


class NvmlUnavailable(RuntimeError):
    """NVML cannot be read here: no nvidia-ml-py, no driver, or no GPU given to this process."""


# -- the admin's setting -----------------------------------------------------------------------


def from_setting(text: str | None) -> list[Gpu]:
    """The GPUs of `GPUS=`: indexes ("0,1,2,3", "0:1" for a MIG instance) or UUIDs
    ("GPU-...", "MIG-..."), separated by commas or spaces. Empty: []."""
    items = [item for item in re.split(r"[\s,]+", (text or "").strip()) if item]
    if len(items) > MAX_GPUS:
        raise KernelConfigError(f"GPUS lists {len(items)} devices; no host has that many.")
    gpus: list[Gpu] = []
    forms = set()
    for position, item in enumerate(items):
        index_form = _INDEX.match(item)
        if index_form and int(index_form.group(1)) < MAX_GPUS:
            forms.add("index")
            mig_index = index_form.group(2)
            gpus.append(
                Gpu(
                    index=int(index_form.group(1)),
                    mig=mig_index is not None,
                    mig_index=None if mig_index is None else int(mig_index),
                )
            )
        elif _UUID.match(item):
            forms.add("uuid")
            prefix, rest = item.split("-", 1)
            # The lab's own numbering, until NVML tells the host's (see choose()).
            gpus.append(
                Gpu(index=position, uuid=f"{prefix.upper()}-{rest}", mig=prefix.upper() == "MIG")
            )
        else:
            raise KernelConfigError(
                f"GPUS={text!r}: {item[:40]!r} is neither a GPU index (0, 1, ... or 0:1 for a "
                "MIG instance) nor a GPU UUID (GPU-... or MIG-..., as `nvidia-smi -L` shows "
                "them). Example: make up GPUS=0,1"
            )
    if len(forms) > 1:
        # The same device could then be listed twice, once by index and once by UUID.
        raise KernelConfigError(
            f"GPUS={text!r} mixes indexes and UUIDs; list the GPUs one way (make up GPUS=0,1, "
            "or their UUIDs from `nvidia-smi -L`)."
        )
    seen: set[str] = set()
    for gpu in gpus:
        key = gpu.device_id.lower()
        if key in seen:
            raise KernelConfigError(f"GPUS={text!r} lists {gpu.device_id} twice.")
        seen.add(key)
    return gpus


def choose(setting: list[Gpu], nvml: list[Gpu] | None) -> list[Gpu]:
    """The lab's GPUs. The admin's setting wins where there is one; where it names devices NVML
    knows, NVML fills in what the setting did not say (UUID, model, memory; by UUID, the
    host's index), so the book hands out UUIDs, which stay put across reboots."""
    if not setting:
        return list(nvml or [])
    if not nvml:
        return list(setting)
    by_uuid = {g.uuid.lower(): g for g in nvml if g.uuid}
    by_index = {(g.index, g.mig_index if g.mig else None): g for g in nvml}
    chosen = []
    for gpu in setting:
        if gpu.uuid:
            known = by_uuid.get(gpu.uuid.lower())
        else:
            known = by_index.get((gpu.index, gpu.mig_index if gpu.mig else None))
        # A device NVML does not list is kept as the admin wrote it: the admin knows the host
        # (NVML may have been read in a container given fewer devices).
        chosen.append(known or gpu)
    return chosen


# -- NVML --------------------------------------------------------------------------------------


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _nvml() -> Any:
    try:
        import pynvml  # nvidia-ml-py
    except ImportError as e:
        raise NvmlUnavailable(
            "nvidia-ml-py is not installed (pip install nvidia-ml-py), so NVML cannot be read"
        ) from e
    try:
        pynvml.nvmlInit()
    except Exception as e:  # pynvml.NVMLError, and OSError-like failures to load the library
        raise NvmlUnavailable(f"NVML cannot be read here (no NVIDIA driver?): {e}") from e
    return pynvml


def _mig_handles(pynvml: Any, handle: Any) -> list[tuple[int, Any]]:
    """The MIG instances of a GPU in MIG mode, by slot; [] for a GPU not in MIG mode."""
    try:
        current, _pending = pynvml.nvmlDeviceGetMigMode(handle)
    except Exception:  # NVMLError_NotSupported: a GPU that cannot be partitioned
        return []
    if current != getattr(pynvml, "NVML_DEVICE_MIG_ENABLE", 1):
        return []
    instances = []
    for slot in range(pynvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
        try:
            instances.append((slot, pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)))
        except Exception:  # NVMLError_NotFound: an empty slot
            continue
    return instances


def _walk(visit: Callable[[Any, int, Any, int | None], Any]) -> list[Any]:
    """visit(pynvml, index, handle, mig slot) for every device NVML lists: each GPU, or, for a
    GPU in MIG mode with instances, each instance instead (what containers are given)."""
    pynvml = _nvml()
    try:
        results = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            instances = _mig_handles(pynvml, handle)
            if instances:
                results.extend(visit(pynvml, index, h, slot) for slot, h in instances)
            else:
                results.append(visit(pynvml, index, handle, None))
        return results
    except NvmlUnavailable:
        raise
    except Exception as e:
        raise NvmlUnavailable(f"NVML failed while listing the GPUs: {e}") from e
    finally:
        with contextlib.suppress(Exception):  # nothing to do about a failed shutdown
            pynvml.nvmlShutdown()


def from_nvml() -> list[Gpu]:
    """The GPUs NVML lists here (raises NvmlUnavailable where it cannot be read)."""

    def gpu(pynvml: Any, index: int, handle: Any, slot: int | None) -> Gpu:
        return Gpu(
            index=index,
            uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
            model=_text(pynvml.nvmlDeviceGetName(handle)),
            memory=int(pynvml.nvmlDeviceGetMemoryInfo(handle).total),
            mig=slot is not None,
            mig_index=slot,
        )

    return _walk(gpu)


def usage_from_nvml() -> dict[str, dict[str, Any]]:
    """device id -> {"utilization": % or None, "memory_used": bytes}, for the admins' view.
    MIG instances report no utilization (NVML does not give it per instance)."""

    def usage(pynvml: Any, index: int, handle: Any, slot: int | None) -> tuple[str, dict]:
        try:
            utilization: int | None = int(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        except Exception:
            utilization = None
        device = Gpu(index=index, uuid=_text(pynvml.nvmlDeviceGetUUID(handle)))
        used = int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
        return device.device_id, {"utilization": utilization, "memory_used": used}

    return dict(_walk(usage))


# -- the inventory container's output ----------------------------------------------------------


def to_json(gpus: list[Gpu], usage: dict[str, dict[str, Any]] | None = None) -> str:
    records = [
        {
            "index": g.index,
            "uuid": g.uuid,
            "model": g.model,
            "memory": g.memory,
            "mig": g.mig,
            "mig_index": g.mig_index,
        }
        for g in gpus
    ]
    document: dict[str, Any] = {"gpus": records}
    if usage is not None:
        document["usage"] = usage
    return json.dumps(document)


def _int(value: Any, low: int, high: int) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        return None
    return value


def parse_inventory_json(text: str | bytes) -> list[Gpu]:
    """The GPUs in `main --json`'s output. The container that printed it ran an image, and
    its output is not the broker's: an entry that is not what main prints is skipped, and a
    document that is not JSON, or says NVML failed, raises NvmlUnavailable."""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    if len(text) > MAX_JSON:
        raise NvmlUnavailable("The GPU inventory's output is too long to be one")
    # The last non-empty line: an image's entrypoint may print a banner first.
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise NvmlUnavailable("The GPU inventory printed no JSON (nothing at all)")
    try:
        document = json.loads(lines[-1])
    except ValueError as e:
        raise NvmlUnavailable(f"The GPU inventory printed no JSON: {text[-200:]!r}") from e
    if isinstance(document, dict) and isinstance(document.get("error"), str):
        raise NvmlUnavailable(document["error"][:500])
    records = document.get("gpus") if isinstance(document, dict) else document
    if not isinstance(records, list):
        raise NvmlUnavailable("The GPU inventory's output has no list of GPUs")
    gpus: list[Gpu] = []
    seen: set[str] = set()
    for record in records[:MAX_GPUS]:
        if not isinstance(record, dict):
            continue
        index = _int(record.get("index"), 0, MAX_GPUS)
        uuid = record.get("uuid", "")
        if index is None or not isinstance(uuid, str) or (uuid and not _UUID.match(uuid)):
            continue
        mig = record.get("mig") is True
        mig_index = _int(record.get("mig_index"), 0, 63) if mig else None
        model = record.get("model", "")
        model = "".join(c for c in model if c.isprintable())[:80] if isinstance(model, str) else ""
        memory = _int(record.get("memory"), 0, 1 << 50) or 0
        gpu = Gpu(index=index, uuid=uuid, model=model, memory=memory, mig=mig, mig_index=mig_index)
        if gpu.mig and not gpu.uuid and gpu.mig_index is None:
            continue  # no way to name it to the engine
        if gpu.device_id.lower() in seen:
            continue
        seen.add(gpu.device_id.lower())
        gpus.append(gpu)
    return gpus


def parse_usage_json(text: str | bytes) -> dict[str, dict[str, Any]]:
    """Device id -> {"utilization": % or None, "memory_used": bytes}, from `main --json
    --usage`'s output; {} where it has none. Checked as `parse_inventory_json` checks."""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    lines = [line for line in text[:MAX_JSON].splitlines() if line.strip()]
    try:
        document = json.loads(lines[-1]) if lines else {}
    except ValueError:
        return {}
    usage = document.get("usage") if isinstance(document, dict) else None
    if not isinstance(usage, dict):
        return {}
    rows: dict[str, dict[str, Any]] = {}
    for device_id, row in list(usage.items())[:MAX_GPUS]:
        if not isinstance(device_id, str) or not isinstance(row, dict) or len(device_id) > 80:
            continue
        rows[device_id] = {
            "utilization": _int(row.get("utilization"), 0, 100),
            "memory_used": _int(row.get("memory_used"), 0, 1 << 50) or 0,
        }
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m labnotebook.hub.gpu_inventory",
        description="List this host's NVIDIA GPUs from NVML.",
    )
    parser.add_argument("--json", action="store_true", help="one JSON document, for the broker")
    parser.add_argument("--usage", action="store_true", help="add utilization and memory used")
    args = parser.parse_args(argv)
    try:
        gpus = from_nvml()
        usage = usage_from_nvml() if args.usage else None
    except NvmlUnavailable as e:
        if args.json:
            print(json.dumps({"error": str(e)}))
        else:
            print(e, file=sys.stderr)
        return 1
    if args.json:
        print(to_json(gpus, usage))
        return 0
    for gpu in gpus:
        line = f"{gpu.describe()}  {gpu.device_id}"
        if usage and gpu.device_id in usage:
            row = usage[gpu.device_id]
            busy = "?" if row["utilization"] is None else f"{row['utilization']}%"
            line += f"  busy {busy}, {human_bytes(row['memory_used'])} used"
        print(line)
    if not gpus:
        print("NVML lists no GPUs here.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
