"""The host's GPUs: the admin's GPUS= setting, NVML (faked here, real where there is one), the
inventory container's JSON, and how the setting and NVML merge."""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace
from typing import Any

import pytest
from labnotebook.hub import gpu_inventory as I
from labnotebook.hub.gpu_book import Gpu
from labnotebook.hub.gpu_inventory import NvmlUnavailable, choose, from_setting
from labnotebook.provisioner.errors import KernelConfigError

A100 = "NVIDIA A100-SXM4-40GB"
UUID0 = "GPU-8c6e1b04-1111-2222-3333-444455556666"
UUID1 = "GPU-0f1e2d3c-1111-2222-3333-444455556666"
MIG = "MIG-5c89c3e2-aaaa-bbbb-cccc-ddddeeeeffff"


# -- the admin's setting -------------------------------------------------------------------


def test_an_empty_setting_lists_no_gpus() -> None:
    assert from_setting("") == [] and from_setting(None) == [] and from_setting(" , ") == []


def test_indexes_commas_or_spaces() -> None:
    assert from_setting("0,1,2,3") == [Gpu(index=i) for i in range(4)]
    assert [g.device_id for g in from_setting(" 2  0,\t1 ")] == ["2", "0", "1"]
    (mig,) = from_setting("0:1")
    assert (mig.mig, mig.mig_index, mig.device_id, mig.label) == (True, 1, "0:1", "MIG 0:1")


def test_uuids() -> None:
    gpus = from_setting(f"{UUID0} {UUID1.lower()},{MIG}")
    assert [g.device_id for g in gpus] == [UUID0, UUID1, MIG]  # the prefix is spelled GPU-
    assert [g.mig for g in gpus] == [False, False, True]
    assert [g.index for g in gpus] == [0, 1, 2]  # the lab's own numbering until NVML says


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("0,one", "'one' is neither a GPU index"),
        ("gpu0", "neither a GPU index"),
        ("-1", "neither a GPU index"),
        ("0;1", "neither a GPU index"),
        ("99999", "neither a GPU index"),
        ("GPU-", "neither a GPU index"),
        ("GPU-$(reboot)", "neither a GPU index"),
        ("all", "neither a GPU index"),
        ("0,1,0", "lists 0 twice"),
        (f"{UUID0},{UUID0.lower()}", "twice"),
        (f"0,{UUID1}", "mixes indexes and UUIDs"),
    ],
)
def test_garbage_and_duplicates_are_refused_clearly(text: str, complaint: str) -> None:
    with pytest.raises(KernelConfigError, match=r"GPUS=") as refused:
        from_setting(text)
    assert complaint in str(refused.value)


# -- merging with NVML -------------------------------------------------------------------------


NVML = [
    Gpu(index=0, uuid=UUID0, model=A100, memory=40 << 30),
    Gpu(index=1, uuid=UUID1, model=A100, memory=40 << 30),
    Gpu(index=2, uuid=MIG, model="NVIDIA A100 MIG 1g.5gb", memory=5 << 30, mig=True, mig_index=0),
]


def test_without_a_setting_nvml_is_the_list() -> None:
    assert choose([], NVML) == NVML
    assert choose([], None) == []


def test_without_nvml_the_setting_is_the_list() -> None:
    assert choose(from_setting("0,1"), None) == [Gpu(index=0), Gpu(index=1)]


def test_the_setting_picks_and_nvml_fills_in() -> None:
    chosen = choose(from_setting("1,2:0,5"), NVML)
    # Index 1: NVML's UUID, model and memory, so the book hands out the UUID.
    assert chosen[0] == NVML[1] and chosen[0].device_id == UUID1
    assert chosen[1] == NVML[2]
    # An index NVML does not list stays as the admin wrote it.
    assert chosen[2] == Gpu(index=5)
    # By UUID, NVML's index and the rest.
    by_uuid = choose(from_setting(f"{UUID1.lower()},{MIG}"), NVML)
    assert by_uuid == [NVML[1], NVML[2]]


# -- the inventory container's JSON ----------------------------------------------------------------


def test_the_json_round_trips() -> None:
    assert I.parse_inventory_json(I.to_json(NVML)) == NVML
    assert I.parse_inventory_json(b"starting...\n" + I.to_json(NVML).encode() + b"\n") == NVML


def test_bad_entries_in_the_json_are_skipped() -> None:
    good = {"index": 0, "uuid": UUID0, "model": A100, "memory": 40 << 30}
    records: list[Any] = [
        good,
        dict(good),  # a duplicate
        "GPU 1",
        {"index": "1", "uuid": UUID1},
        {"index": True},
        {"index": -1},
        {"index": 3, "uuid": "GPU-../../etc"},
        {"index": 4, "uuid": 4},
        {"index": 5, "mig": True},  # a MIG instance nothing can name
        {"index": 6, "model": "evil\x1b[2J" + "x" * 500, "memory": -5},
    ]
    gpus = I.parse_inventory_json(json.dumps({"gpus": records}))
    assert [g.device_id for g in gpus] == [UUID0, "6"]
    assert gpus[1].memory == 0 and "\x1b" not in gpus[1].model and len(gpus[1].model) <= 80


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("", "no JSON"),
        ("Traceback (most recent call last): ...", "no JSON"),
        ('{"error": "NVML cannot be read here (no NVIDIA driver?)"}', "no NVIDIA driver"),
        ('{"gpus": 3}', "no list of GPUs"),
        ("null", "no list of GPUs"),
        ("[" * 2 + "]" * 2 + " " * I.MAX_JSON, "too long"),
    ],
)
def test_output_that_is_not_an_inventory_raises(text: str, complaint: str) -> None:
    with pytest.raises(NvmlUnavailable, match=complaint):
        I.parse_inventory_json(text)


# -- NVML, faked: the calls from_nvml makes ------------------------------------------------------


class NotSupported(Exception):
    pass


class FakePynvml:
    """Two GPUs: 0 plain, 1 in MIG mode with instances in slots 0 and 2 (slot 1 empty)."""

    NVML_DEVICE_MIG_ENABLE = 1

    def __init__(self) -> None:
        self.shut_down = False

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        self.shut_down = True

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> tuple[int, int | None]:
        return (index, None)

    def nvmlDeviceGetMigMode(self, handle: tuple[int, int | None]) -> tuple[int, int]:
        if handle[0] == 0:
            raise NotSupported("not MIG capable")
        return (1, 1)

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: tuple[int, int | None]) -> int:
        return 3

    def nvmlDeviceGetMigDeviceHandleByIndex(
        self, handle: tuple[int, int | None], slot: int
    ) -> tuple[int, int]:
        if slot == 1:
            raise NotSupported("empty slot")
        return (handle[0], slot)

    def nvmlDeviceGetUUID(self, handle: tuple[int, int | None]) -> bytes | str:
        index, slot = handle
        return UUID0.encode() if slot is None else f"MIG-{index}-{slot}-uuid"

    def nvmlDeviceGetName(self, handle: tuple[int, int | None]) -> str:
        return A100 if handle[1] is None else "NVIDIA A100 MIG 3g.20gb"

    def nvmlDeviceGetMemoryInfo(self, handle: tuple[int, int | None]) -> SimpleNamespace:
        total = 40 << 30 if handle[1] is None else 20 << 30
        return SimpleNamespace(total=total, used=1 << 30, free=total - (1 << 30))

    def nvmlDeviceGetUtilizationRates(self, handle: tuple[int, int | None]) -> SimpleNamespace:
        if handle[1] is not None:
            raise NotSupported("not per MIG instance")
        return SimpleNamespace(gpu=37, memory=10)


def test_nvml_lists_gpus_and_mig_instances(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakePynvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert I.from_nvml() == [
        Gpu(index=0, uuid=UUID0, model=A100, memory=40 << 30),
        Gpu(1, "MIG-1-0-uuid", "NVIDIA A100 MIG 3g.20gb", 20 << 30, mig=True, mig_index=0),
        Gpu(1, "MIG-1-2-uuid", "NVIDIA A100 MIG 3g.20gb", 20 << 30, mig=True, mig_index=2),
    ]
    assert fake.shut_down
    assert I.usage_from_nvml() == {
        UUID0: {"utilization": 37, "memory_used": 1 << 30},
        "MIG-1-0-uuid": {"utilization": None, "memory_used": 1 << 30},
        "MIG-1-2-uuid": {"utilization": None, "memory_used": 1 << 30},
    }


def test_main_prints_what_the_broker_parses(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", FakePynvml())
    assert I.main(["--json"]) == 0
    assert I.parse_inventory_json(capsys.readouterr().out) == I.from_nvml()


def test_no_nvml_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    with pytest.raises(NvmlUnavailable, match="nvidia-ml-py is not installed"):
        I.from_nvml()
    assert I.main(["--json"]) == 1
    with pytest.raises(NvmlUnavailable, match="nvidia-ml-py is not installed"):
        I.parse_inventory_json(capsys.readouterr().out)

    class NoDriver(FakePynvml):
        def nvmlInit(self) -> None:
            raise OSError("NVML Shared Library Not Found")

    monkeypatch.setitem(sys.modules, "pynvml", NoDriver())
    with pytest.raises(NvmlUnavailable, match="no NVIDIA driver"):
        I.from_nvml()


# -- NVML, real: only on a GPU host ----------------------------------------------------------------


def _nvml_problem() -> str | None:
    try:
        import pynvml
    except ImportError:
        return "needs NVML: nvidia-ml-py (pynvml) is not installed"
    try:
        pynvml.nvmlInit()
    except Exception as e:
        return f"needs NVML: no NVIDIA driver here ({e})"
    pynvml.nvmlShutdown()
    return None


NVML_PROBLEM = _nvml_problem()


@pytest.mark.skipif(NVML_PROBLEM is not None, reason=str(NVML_PROBLEM))
def test_real_nvml_lists_this_hosts_gpus() -> None:
    gpus = I.from_nvml()
    assert gpus, "NVML answered but listed no GPU"
    assert all(g.uuid.startswith(("GPU-", "MIG-")) and g.model and g.memory > 0 for g in gpus)
    assert set(I.usage_from_nvml()) == {g.device_id for g in gpus}
