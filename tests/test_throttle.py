"""The sign-up and login rate limits' parts: token buckets, client keys, client addresses."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from labnotebook.hub.client_address import client_address
from labnotebook.hub.throttle import TokenBuckets, address_key, minutes
from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_then_one_per_refill_period() -> None:
    clock = Clock()
    buckets = TokenBuckets(3, refill_seconds=60, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [0, 0, 0]
    assert buckets.take("a") == pytest.approx(60)
    assert buckets.take("b") == 0, "another client has its own burst"
    clock.now += 30
    assert buckets.wait_for("a") == pytest.approx(30)
    clock.now += 30
    assert buckets.take("a") == 0 and buckets.take("a") > 0
    clock.now += 3600
    assert [buckets.take("a") for _ in range(4)][:3] == [0, 0, 0], "never more than the burst"
    buckets.forgive("a")
    assert buckets.wait_for("a") == 0


def test_a_flood_of_new_keys_cannot_grow_memory_without_bound() -> None:
    buckets = TokenBuckets(1, 60, max_keys=100)
    for n in range(1000):
        buckets.take(f"10.0.{n // 256}.{n % 256}")
    assert len(buckets._buckets) == 100


def test_clients_are_counted_by_address_and_ipv6_by_its_64() -> None:
    assert address_key("192.0.2.7") == "192.0.2.7"
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::9")
    assert address_key("2001:db8:1:2::1") != address_key("2001:db8:1:3::1")
    assert minutes(1) == "1 minute" and minutes(61) == "2 minutes"


def _request(peer: str, **headers: str) -> HTTPServerRequest:
    connection = SimpleNamespace(context=SimpleNamespace(_orig_remote_ip=peer))
    request = HTTPServerRequest(
        headers=HTTPHeaders({"Host": "lab.example.org", **headers}),
        connection=connection,
        start_line=RequestStartLine("POST", "/hub/login", "HTTP/1.1"),
    )
    request.remote_ip = headers.get("X-Real-Ip", peer)  # what tornado's xheaders would do
    return request


def test_the_client_address_is_the_one_the_labs_proxy_appended() -> None:
    # configurable-http-proxy appends its peer; what the client wrote to the left is ignored,
    # and so is an X-Real-Ip header of the client's own (tornado would believe it).
    forged = _request(
        "127.0.0.1", **{"X-Forwarded-For": "6.6.6.6, 192.0.2.7", "X-Real-Ip": "1.1.1.1"}
    )
    assert client_address(forged) == "192.0.2.7"
    # One reverse proxy of the lab's in front: the entry it appended.
    assert (
        client_address(
            _request("127.0.0.1", **{"X-Forwarded-For": "6.6.6.6, 198.51.100.4, 10.0.0.2"}),
            proxies=1,
        )
        == "198.51.100.4"
    )
    # A proxy that sets X-Real-IP, as the operator configured.
    assert (
        client_address(_request("127.0.0.1", **{"X-Real-IP": "198.51.100.9"}), header="X-Real-IP")
        == "198.51.100.9"
    )
    # No header: the connection's own address.
    assert client_address(_request("203.0.113.5")) == "203.0.113.5"
