"""The broker's GPU book: distinct devices per kernel, caps, refusals that name the holders,
sharing, restarts, release when containers end, and the book rebuilt from labels."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from labnotebook.hub import gpu_book as G
from labnotebook.hub.gpu_activity import KernelActivity
from labnotebook.hub.gpu_book import ALL, Gpu, GpuBook
from labnotebook.hub.gpu_inventory import parse_usage_json
from labnotebook.provisioner import labels as L
from labnotebook.provisioner.durations import human_duration
from labnotebook.provisioner.errors import GpuUnavailable, KernelConfigError, PermissionRefused
from labnotebook.provisioner.gpu_cli import describe_table

ALICE, BOB, CAROL, DAVE = 2001, 2002, 2003, 2004
NAMES = {ALICE: "alice", BOB: "bob", CAROL: "carol", DAVE: "dave"}
T0 = 1_700_000_000.0


class Clocks:
    """The book's two clocks: monotonic (restart holds) and wall (since, durations)."""

    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall = T0

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds


def lab(n: int = 2, **options: Any) -> tuple[GpuBook, Clocks]:
    clocks = Clocks()
    settings: dict[str, Any] = {"sharing": False, "member_cap": None, "allow_all": False}
    settings.update(options)
    book = GpuBook(
        [Gpu(index=i, model="NVIDIA A100", memory=40 << 30) for i in range(n)],
        clock=lambda: clocks.mono,
        wall=lambda: clocks.wall,
        **settings,
    )
    return book, clocks


def start(book: GpuBook, uid: int, kernel_id: str, name: str = "train", count: int = 1) -> str:
    """assign + confirm, as the broker does around a successful launch; the container id."""
    book.assign(uid, NAMES[uid], kernel_id, name, count)
    container_id = f"{kernel_id:0<12}-container"
    book.confirm(kernel_id, container_id)
    return container_id


def devices_of(book: GpuBook, kernel_id: str) -> list[str]:
    return [h.device_id for h in book.holds() if h.kernel_id == kernel_id]


def listing(book: GpuBook, state: str = "running") -> list[dict[str, Any]]:
    """What `docker ps` would list for the book's running kernels: their labels, as the
    launch set them."""
    by_container: dict[str, list[G.GpuHold]] = {}
    for hold in book.holds():
        if hold.container_id:
            by_container.setdefault(hold.container_id, []).append(hold)
    entries = []
    for container_id, holds in by_container.items():
        first = holds[0]
        labels = L.kernel_labels(
            kernel_id=first.kernel_id,
            kernel_name=first.kernel_name,
            owner=first.username,
            owner_uid=first.uid,
            extra={},
            server="hub/1/1",
        )
        assignment = G.Assignment(tuple(h.device_id for h in holds), first.shared, first.since)
        labels.update(G.labels(assignment))
        entries.append({"Id": container_id, "Labels": labels, "State": state})
    return entries


# -- assignment --------------------------------------------------------------------------------


def test_two_members_get_distinct_devices_lowest_index_first() -> None:
    book, _ = lab(2, member_cap=1)
    first = book.assign(ALICE, "alice", "ka", "train", 1)
    second = book.assign(BOB, "bob", "kb", "eval", 1)
    assert first == G.Assignment(("0",), False, T0)
    assert second.devices == ("1",) and not second.shared
    # What the launch asks the engine for: exactly those device IDs.
    assert first.request().device_requests() == [
        {"Driver": "", "Capabilities": [["gpu"]], "Options": {}, "Count": 0, "DeviceIDs": ["0"]}
    ]


def test_device_ids_are_uuids_when_known() -> None:
    gpu = Gpu(index=3, uuid="GPU-8c6e1b04-aaaa", model="NVIDIA A100", memory=40 << 30)
    assert gpu.device_id == "GPU-8c6e1b04-aaaa"
    assert gpu.label == "GPU 3"
    assert Gpu(index=3).device_id == "3"
    assert Gpu(index=0, mig=True, mig_index=1).device_id == "0:1"
    book = GpuBook([gpu], sharing=False, member_cap=None, allow_all=False)
    assert book.assign(ALICE, "alice", "k", "t", 1).devices == ("GPU-8c6e1b04-aaaa",)


def test_when_all_are_held_the_refusal_names_holders_and_durations() -> None:
    book, clocks = lab(2, member_cap=1)
    start(book, ALICE, "ka", "train")
    clocks.advance(75 * 60)
    start(book, BOB, "kb", "eval")
    clocks.advance(45 * 60)
    with pytest.raises(GpuUnavailable) as refused:
        book.assign(CAROL, "carol", "kc", "fit", 1)
    assert str(refused.value) == (
        "All 2 GPUs are in use: GPU 0 by alice (kernel 'train', held 2 h), GPU 1 by bob "
        "(kernel 'eval', held 45 min). Try again later or ask them."
    )


def test_a_kernel_starting_or_restarting_is_named_as_such() -> None:
    book, _ = lab(2, member_cap=1)
    book.assign(ALICE, "alice", "ka", "train", 1)  # launch in flight
    book.release(start(book, BOB, "kb", "eval"), restarting=True)
    with pytest.raises(GpuUnavailable, match=r"alice \(kernel 'train', starting\).*bob "):
        book.assign(CAROL, "carol", "kc", "fit", 1)
    with pytest.raises(GpuUnavailable, match=r"bob \(kernel 'eval', restarting\)"):
        book.assign(CAROL, "carol", "kc", "fit", 1)


def test_asking_for_more_than_is_free_or_than_the_lab_has() -> None:
    book, _ = lab(3, member_cap=3)
    start(book, BOB, "kb", "eval")
    with pytest.raises(GpuUnavailable, match="asks for 3 GPUs, but only 2 of the lab's 3 are"):
        book.assign(ALICE, "alice", "ka", "train", 3)
    with pytest.raises(GpuUnavailable, match="asks for 4 GPUs, but this lab has only 3"):
        book.assign(ALICE, "alice", "ka", "train", 4)


def test_a_lab_without_gpus_says_what_the_admin_sets() -> None:
    book, _ = lab(0)
    with pytest.raises(GpuUnavailable, match=r"This lab has no GPUs.*make up GPUS="):
        book.assign(ALICE, "alice", "ka", "train", 1)


@pytest.mark.parametrize("count", [0, -2, True, 1.0, "1", None])
def test_a_count_is_a_positive_number_or_all(count: Any) -> None:
    book, _ = lab(2)
    with pytest.raises(KernelConfigError):
        book.assign(ALICE, "alice", "ka", "train", count)


def test_identity_must_be_the_brokers() -> None:
    book, _ = lab(2)
    for uid in (-1, "2001", True, None):
        with pytest.raises(ValueError):
            book.assign(uid, "alice", "ka", "train", 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        book.assign(ALICE, "alice", "", "train", 1)


# -- caps and all ------------------------------------------------------------------------------


def test_the_cap_refusal_names_the_members_own_kernels() -> None:
    book, _ = lab(2, member_cap=1)
    start(book, ALICE, "ka", "train")
    with pytest.raises(PermissionRefused) as refused:
        book.assign(ALICE, "alice", "ka2", "other", 1)
    assert str(refused.value) == (
        "You hold 1 GPU already, the most one member may hold at once in this lab "
        "(MEMBER_GPUS=1): GPU 0 by your kernel 'train'. Shut it down (Kernel > Shut Down "
        "Kernel) to use this one."
    )
    # Bob is not held back by alice's cap.
    assert book.assign(BOB, "bob", "kb", "eval", 1).devices == ("1",)


def test_the_default_cap_is_half_the_lab_and_at_least_one() -> None:
    assert [G.default_member_cap(n) for n in (0, 1, 2, 3, 4, 8)] == [1, 1, 1, 1, 2, 4]
    book, _ = lab(4)
    assert book.member_cap == 2
    start(book, ALICE, "k1")
    with pytest.raises(PermissionRefused, match="you hold 1 already and one member may hold"):
        book.assign(ALICE, "alice", "k2", "big", 2)
    with pytest.raises(PermissionRefused, match="more than the 2 one member may hold"):
        book.assign(BOB, "bob", "kb", "big", 3)


def test_all_is_refused_unless_the_admin_allows_it() -> None:
    book, _ = lab(2, member_cap=2)
    with pytest.raises(PermissionRefused, match="the lab's admin has not allowed"):
        book.assign(ALICE, "alice", "ka", "train", ALL)
    allowed, _ = lab(2, member_cap=2, allow_all=True)
    assert allowed.assign(ALICE, "alice", "ka", "train", ALL).devices == ("0", "1")
    # All still counts against the member's cap.
    capped, _ = lab(4, allow_all=True)
    with pytest.raises(PermissionRefused, match="all 4 of the lab's GPUs, more than the 2"):
        capped.assign(ALICE, "alice", "ka", "train", ALL)


# -- sharing -----------------------------------------------------------------------------------


def test_sharing_hands_out_the_least_loaded_device_and_says_so() -> None:
    book, _ = lab(2, sharing=True, member_cap=4)
    assert book.assign(ALICE, "alice", "k1", "a", 1).devices == ("0",)
    assert not book.assign(BOB, "bob", "k2", "b", 1).shared
    third = book.assign(CAROL, "carol", "k3", "c", 1)
    assert third.devices == ("0",) and third.shared
    fourth = book.assign(ALICE, "alice", "k4", "d", 1)
    assert fourth.devices == ("1",) and fourth.shared
    book.abandon("k4")
    # GPU 1 carries one kernel, GPU 0 two: the next goes to GPU 1.
    assert book.assign(BOB, "bob", "k5", "e", 1).devices == ("1",)
    assert G.labels(third)[G.GPUS_SHARED] == "1"


def test_without_sharing_no_device_is_handed_out_twice_under_concurrent_assigns() -> None:
    book, _ = lab(8, member_cap=1)
    barrier = threading.Barrier(32)
    got: list[tuple[str, ...]] = []
    refused: list[Exception] = []

    def launch(uid: int) -> None:
        barrier.wait()
        try:
            assignment = book.assign(uid, f"user{uid}", f"kernel-{uid}", "k", 1)
        except GpuUnavailable as e:
            refused.append(e)
            return
        got.append(assignment.devices)
        book.confirm(f"kernel-{uid}", f"container-{uid:08d}")

    threads = [threading.Thread(target=launch, args=(3000 + i,)) for i in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    devices = [d for ds in got for d in ds]
    assert sorted(devices) == [str(i) for i in range(8)]
    assert len(refused) == 24


# -- confirm, abandon, release, restart --------------------------------------------------------


def test_a_failed_launch_frees_its_devices_at_once() -> None:
    book, _ = lab(1)
    book.assign(ALICE, "alice", "ka", "train", 1)
    with pytest.raises(GpuUnavailable, match="already starting"):
        book.assign(ALICE, "alice", "ka", "train", 1)
    book.abandon("ka")
    assert book.assign(BOB, "bob", "kb", "eval", 1).devices == ("0",)


def test_a_shutdown_frees_the_device_at_once() -> None:
    book, _ = lab(2, member_cap=1)
    alices = start(book, ALICE, "ka")
    start(book, BOB, "kb")
    assert book.release(alices) is True
    assert book.release(alices) is False
    assert book.assign(CAROL, "carol", "kc", "fit", 1).devices == ("0",)


def test_a_restart_keeps_its_devices_for_the_same_kernel_only_within_the_hold() -> None:
    book, clocks = lab(2, member_cap=1, restart_hold=300)
    started = clocks.wall
    old = start(book, ALICE, "ka")
    clocks.advance(600)
    book.release(old, restarting=True)
    # Nobody else gets GPU 0 meanwhile: not bob, and not carol naming alice's kernel id.
    assert book.assign(BOB, "bob", "kb", "eval", 1).devices == ("1",)
    with pytest.raises(GpuUnavailable, match="alice"):
        book.assign(CAROL, "carol", "ka", "train", 1)
    # Alice's other kernel is at her cap: the held GPU counts.
    with pytest.raises(PermissionRefused, match=r"your kernel 'train' \(restarting\)"):
        book.assign(ALICE, "alice", "ka2", "other", 1)
    clocks.advance(299)
    again = book.assign(ALICE, "alice", "ka", "train", 1)
    assert again.devices == ("0",) and again.since == started  # the same kernel, held 10 min+
    assert G.labels(again)[G.GPUS_SINCE] == str(int(started))
    book.confirm("ka", "ka-new-container")

    # Once the hold has passed, the device is anyone's.
    book.release("ka-new-container", restarting=True)
    clocks.advance(301)
    book.release(book.holds()[0].container_id)  # bob's
    assert book.assign(CAROL, "carol", "kc", "fit", 1).devices == ("0",)


def test_a_restart_asking_for_a_different_number_gets_a_new_assignment() -> None:
    book, _ = lab(3, member_cap=3)
    book.release(start(book, ALICE, "ka", count=2), restarting=True)
    assert book.assign(ALICE, "alice", "ka", "train", 1).devices == ("0",)
    assert devices_of(book, "ka") == ["0"]


# -- the engine's truth ------------------------------------------------------------------------


def test_sync_releases_holds_whose_container_ended() -> None:
    book, _ = lab(3, member_cap=1)
    alices = start(book, ALICE, "ka")
    bobs = start(book, BOB, "kb")
    start(book, CAROL, "kc")
    entries = listing(book)
    entries = [e for e in entries if e["Id"] != alices]  # removed, culled, engine restarted
    for entry in entries:
        if entry["Id"] == bobs:
            entry["State"] = "exited"  # died, OOM-killed
    report = book.sync(entries)
    assert sorted(h.kernel_id for h in report.released) == ["ka", "kb"]
    assert [h.kernel_id for h in book.holds()] == ["kc"]
    # An ended container's devices are not held for a restart: only release(restarting) does.
    assert book.assign(DAVE, "dave", "kd", "new", 1).devices == ("0",)


def test_sync_leaves_launches_in_flight_and_holds_confirmed_after_its_listing() -> None:
    book, _ = lab(2, member_cap=1)
    book.assign(ALICE, "alice", "ka", "train", 1)  # created, not yet confirmed
    mark = book.mark()
    entries: list[dict[str, Any]] = []  # the listing, taken now
    start(book, BOB, "kb")  # confirmed after the listing was taken
    report = book.sync(entries, mark=mark)
    assert report.released == ()
    assert sorted(h.kernel_id for h in book.holds()) == ["ka", "kb"]
    # A later listing is the truth for it.
    book.sync([])
    assert [h.kernel_id for h in book.holds()] == ["ka"]


def test_a_fresh_book_is_rebuilt_from_the_running_containers_labels() -> None:
    before, clocks = lab(3, member_cap=1)
    start(before, ALICE, "ka", "train")
    clocks.advance(3600)
    start(before, BOB, "kb", "eval")
    clocks.advance(300)
    entries = listing(before)

    # The broker restarted: a new book, the same engine.
    after = GpuBook(
        before.gpus,
        sharing=False,
        member_cap=1,
        allow_all=False,
        clock=lambda: clocks.mono,
        wall=lambda: clocks.wall,
    )
    report = after.sync(entries)
    assert sorted(h.username for h in report.adopted) == ["alice", "bob"]
    assert after.holders() == before.holders()
    assert after.sync(entries).adopted == ()  # once
    # Nothing handed out twice, caps still apply, and the durations come from the labels.
    assert after.assign(CAROL, "carol", "kc", "fit", 1).devices == ("2",)
    with pytest.raises(PermissionRefused, match="your kernel 'train'"):
        after.assign(ALICE, "alice", "ka2", "x", 1)
    with pytest.raises(GpuUnavailable, match=r"alice \(kernel 'train', held 1 h 5 min\)"):
        after.assign(DAVE, "dave", "kd", "x", 1)
    # The rebuilt holds are released like any when their containers end.
    after.sync([e for e in entries if e["Labels"][L.OWNER] != "alice"])
    assert after.assign(DAVE, "dave", "kd", "x", 1).devices == ("0",)


def test_a_container_released_after_the_listing_is_not_added_back() -> None:
    book, _ = lab(2, member_cap=1)
    alices = start(book, ALICE, "ka")
    mark = book.mark()
    entries = listing(book)  # still lists alice's kernel
    book.release(alices)  # removed meanwhile
    assert book.sync(entries, mark=mark).adopted == ()
    assert book.holds() == []


def test_garbage_labels_are_ignored_and_never_crash_the_sync() -> None:
    book, _ = lab(2, member_cap=1)
    garbage: list[Any] = [
        "not a dict",
        {"Id": 42, "Labels": {G.GPUS: "0"}, "State": "running"},
        {"Id": "c-no-labels-0000", "State": "running"},
        {"Id": "c-labels-list-0", "Labels": ["0"], "State": "running"},
        {"Id": "c-not-running-0", "Labels": {G.GPUS: "0"}, "State": "exited"},
        {"Id": "c-no-state-0000", "Labels": {G.GPUS: "0"}},
        {"Id": "c-unknown-dev-0", "Labels": {G.GPUS: "7,GPU-nope,../x"}, "State": "running"},
        {"Id": "c-empty-gpus-00", "Labels": {G.GPUS: " , "}, "State": "running"},
        {"Id": "c-number-gpus-0", "Labels": {G.GPUS: 1}, "State": "running"},
    ]
    assert book.sync(garbage) == G.SyncReport()
    assert book.holds() == []

    # A container that does hold a lab device, with garbage elsewhere, still blocks it: the
    # book must never hand out a device a running container has.
    odd = {
        G.GPUS: "1, 1,9",
        G.GPUS_SINCE: "nan",
        G.GPUS_SHARED: ["yes"],
        L.OWNER_UID: "-5",
        L.OWNER: "\x1b[31mevil\x1b[0m" + "x" * 500,
        L.KERNEL_NAME: None,
    }
    report = book.sync([{"Id": "c-odd-000000000", "Labels": odd, "State": {"Status": "running"}}])
    (hold,) = report.adopted
    assert (hold.device_id, hold.uid, hold.shared) == ("1", -1, False)
    assert "\x1b" not in hold.username and len(hold.username) <= 64
    assert hold.since == T0
    assert book.assign(ALICE, "alice", "ka", "train", 1).devices == ("0",)
    with pytest.raises(GpuUnavailable, match=r"GPU 1 by a kernel"):
        book.assign(BOB, "bob", "kb", "train", 1)

    future = {G.GPUS: "0", G.GPUS_SINCE: str(T0 + 10**9), L.OWNER_UID: "2002"}
    fresh, _ = lab(2)
    (hold,) = fresh.sync([{"Id": "c-future-000000", "Labels": future, "State": "running"}]).adopted
    assert hold.since == T0 and hold.uid == BOB


def test_labels_from_an_older_form_of_device_ids_still_match() -> None:
    """GPUS=0,1 by index, then NVML became readable and the book speaks UUIDs."""
    gpus = [Gpu(index=0, uuid="GPU-aaaa"), Gpu(index=1, uuid="GPU-bbbb")]
    book = GpuBook(gpus, sharing=False, member_cap=2, allow_all=False)
    entry = {"Id": "c-old-form-0000", "Labels": {G.GPUS: "1", L.OWNER_UID: "2001"}}
    entry["State"] = "running"
    (hold,) = book.sync([entry]).adopted
    assert hold.device_id == "GPU-bbbb"


# -- who holds which ---------------------------------------------------------------------------


def test_holders_and_the_table() -> None:
    book, clocks = lab(2, member_cap=1, sharing=False)
    start(book, ALICE, "ka", "train")
    clocks.advance(2 * 3600 + 5 * 60)
    rows = book.holders()
    assert [r["index"] for r in rows] == [0, 1]
    assert rows[0]["holders"] == [
        {
            "username": "alice",
            "uid": ALICE,
            "kernel_id": "ka",
            "kernel_name": "train",
            "container_id": "ka0000000000-container",
            "since": T0,
            "shared": False,
            "state": "running",
            "activity": "",
            "idle_since": None,
        }
    ]
    assert rows[1]["holders"] == [] and rows[1]["model"] == "NVIDIA A100"
    assert describe_table(rows, now=clocks.wall) == (
        "GPU 0  NVIDIA A100 40 GiB  alice (kernel 'train', 2 h 5 min)\n"
        "GPU 1  NVIDIA A100 40 GiB  free"
    )
    assert describe_table([]) == "This lab has no GPUs."


def test_human_durations() -> None:
    assert [human_duration(s) for s in (-3, 40, 60, 45 * 60, 7200, 7500, 90000, 86400)] == [
        "0 s",
        "40 s",
        "1 min",
        "45 min",
        "2 h",
        "2 h 5 min",
        "1 d 1 h",
        "1 d",
    ]


def test_short_and_full_container_ids_are_the_same_container() -> None:
    book, _ = lab(2, member_cap=1)
    full = "ab" * 32
    book.assign(ALICE, "alice", "ka", "train", 1)
    book.confirm("ka", full[:12])
    entry = {"Id": full, "Labels": {G.GPUS: "0", L.OWNER_UID: str(ALICE)}, "State": "running"}
    assert book.sync([entry]) == G.SyncReport()
    mark = book.mark()
    assert book.release(full) is True
    assert book.sync([entry], mark=mark).adopted == ()


# -- busy or idle ------------------------------------------------------------------------------


def test_a_kernel_is_idle_from_the_first_sample_that_shows_no_work() -> None:
    activity = KernelActivity()
    activity.observe("c1", 10.0, 1000.0)
    assert activity.state("c1") == ("", None)  # one sample: no rate yet
    activity.observe("c1", 40.0, 1030.0)  # a whole CPU for 30 s
    assert activity.state("c1") == ("busy", None)
    activity.observe("c1", 40.1, 1060.0)  # 0.3 % of a CPU: a heartbeat
    assert activity.state("c1") == ("idle", 1030.0)
    activity.observe("c1", 40.2, 1090.0)
    assert activity.state("c1") == ("idle", 1030.0)  # idle since the last busy sample
    activity.observe("c1", 55.0, 1120.0)
    assert activity.state("c1") == ("busy", None)
    activity.observe("c1", 1.0, 1150.0)  # CPU time went back: another container, start over
    assert activity.state("c1") == ("", None)
    activity.keep_only(set())
    assert activity.state("c1") == ("", None)


def test_refusals_and_the_table_say_busy_or_idle() -> None:
    book, clocks = lab(2, member_cap=1, sharing=False)
    activity = KernelActivity()
    book.activity = activity.state
    start(book, ALICE, "ka", "train")
    start(book, BOB, "kb", "eval")
    began = clocks.wall
    activity.observe("ka0000000000-container", 5.0, began)
    activity.observe("ka0000000000-container", 5.0 + 3600, began + 3600)  # computing
    activity.observe("kb0000000000-container", 2.0, began)
    activity.observe("kb0000000000-container", 2.0, began + 60)  # idle from the start
    clocks.advance(2 * 3600)
    with pytest.raises(GpuUnavailable) as refused:
        book.assign(CAROL, "carol", "kc", "lstm", 1)
    assert str(refused.value) == (
        "All 2 GPUs are in use: GPU 0 by alice (kernel 'train', busy 2 h), GPU 1 by bob "
        "(kernel 'eval', idle 2 h). Try again later or ask them."
    )
    rows = book.holders()
    assert rows[0]["holders"][0]["activity"] == "busy"
    assert rows[1]["holders"][0]["idle_since"] == began
    rows[0].update(utilization=73, memory_used=31 << 30)  # what an admin's view adds
    assert describe_table(rows, now=clocks.wall) == (
        "GPU 0  NVIDIA A100 40 GiB  alice (kernel 'train', busy 2 h)  [73% busy, 31 GiB used]\n"
        "GPU 1  NVIDIA A100 40 GiB  bob (kernel 'eval', idle 2 h)"
    )


def test_usage_from_the_inventory_container_is_checked() -> None:
    document = {
        "gpus": [],
        "usage": {
            "GPU-aaaa": {"utilization": 40, "memory_used": 1 << 30},
            "GPU-bbbb": {"utilization": "lots", "memory_used": -5},
            "x" * 200: {"utilization": 1},
            "GPU-cccc": "not a row",
        },
    }
    assert parse_usage_json("banner\n" + json.dumps(document)) == {
        "GPU-aaaa": {"utilization": 40, "memory_used": 1 << 30},
        "GPU-bbbb": {"utilization": None, "memory_used": 0},
    }
    assert parse_usage_json("not json") == {} and parse_usage_json("") == {}
