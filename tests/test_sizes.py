"""Sizes: Docker's notation in, one binary unit system out, one validator for every setting."""

from __future__ import annotations

import pytest
from labnotebook.hub.broker_policy import LaunchPolicy
from labnotebook.hub.build_policy import BuildPolicy
from labnotebook.provisioner.sizes import human_bytes, positive_size, size_in_bytes
from traitlets import TraitError


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (2147483648, 2 << 30),
        ("2147483648", 2 << 30),
        ("512m", 512 << 20),
        ("8g", 8 << 30),
        ("8G", 8 << 30),
        ("1.5g", 3 << 29),
        ("64k", 64 << 10),
    ],
)
def test_sizes_are_read_as_docker_reads_them(value: int | str | None, expected: int) -> None:
    assert size_in_bytes(value) == expected


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 bytes"),
        (1023, "1023 bytes"),
        (1024, "1 KiB"),
        (512 << 20, "512 MiB"),
        (8 << 30, "8 GiB"),  # what Docker means by "8g"
        (3 << 29, "1.5 GiB"),
        (123_456_789, "117.7 MiB"),
        (10 << 40, "10 TiB"),
    ],
)
def test_sizes_are_printed_in_binary_units(n: int, text: str) -> None:
    assert human_bytes(n) == text


def test_a_limit_reads_the_same_in_and_out() -> None:
    for setting in ("512m", "2g", "10g"):
        amount, unit = setting[:-1], setting[-1].upper()
        assert human_bytes(size_in_bytes(setting) or 0) == f"{amount} {unit}iB"


@pytest.mark.parametrize("value", [None, 1, "1", "512m", "8g"])
def test_positive_sizes_pass_unchanged(value: int | str | None) -> None:
    assert positive_size(value, "memory") == value


@pytest.mark.parametrize("value", [0, -5, "0", "-1g", "lots", "8x", ""])
def test_other_sizes_are_refused_with_the_forms_that_work(value: int | str) -> None:
    message = f'memory must be a positive size such as 2147483648, "512m" or "8g"; got {value!r}'
    with pytest.raises(TraitError) as refused:
        positive_size(value, "memory")
    assert str(refused.value) == message


@pytest.mark.parametrize(
    ("configurable", "setting"),
    [
        (LaunchPolicy, "max_memory"),
        (LaunchPolicy, "max_shm_size"),
        (LaunchPolicy, "max_memory_per_user"),
        (BuildPolicy, "quota"),
        (BuildPolicy, "max_context"),
        (BuildPolicy, "memory"),
    ],
)
def test_every_size_setting_uses_the_one_validator(configurable: type, setting: str) -> None:
    with pytest.raises(TraitError, match=f"{setting} must be a positive size such as"):
        configurable(**{setting: "lots"})
    assert getattr(configurable(**{setting: "3g"}), setting) == "3g"
