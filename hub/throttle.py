"""Rate limits per client: token buckets keyed by a client's address (or anything else).

A bucket holds up to `capacity` tokens and gains one every `refill_seconds`; each attempt
takes one. So a person can make a burst of `capacity` attempts, then one per refill period,
and a flood from one address is refused cheaply after the burst - before any password is
hashed. The buckets live in memory: a restart of the hub forgives everyone, which is the
right failure mode for a lab (nobody stays locked out by a stale record).
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


def address_key(address: str) -> str:
    """The key one client is counted under: its IPv4 address, or its IPv6 /64 network (one
    host usually owns a whole /64 and could rotate through it to escape a per-address
    limit)."""
    try:
        ip = ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        return address.strip()[:64] or "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{ip}/64", strict=False))
    return str(ip)


@dataclass
class _Bucket:
    tokens: float
    updated: float


class TokenBuckets:
    """Attempts per key: a burst of `capacity`, then one per `refill_seconds`."""

    def __init__(
        self,
        capacity: int,
        refill_seconds: float,
        max_keys: int = 50_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if capacity < 1 or refill_seconds <= 0:
            raise ValueError("A rate limit needs capacity >= 1 and refill_seconds > 0.")
        self.capacity = capacity
        self.refill_seconds = refill_seconds
        self.max_keys = max_keys
        self._clock = clock
        # Oldest-touched first, so a flood of new keys forgets the stalest ones, never grows
        # without bound.
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def _bucket(self, key: str) -> _Bucket:
        now = self._clock()
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            bucket = _Bucket(float(self.capacity), now)
        else:
            gained = (now - bucket.updated) / self.refill_seconds
            bucket = _Bucket(min(float(self.capacity), bucket.tokens + gained), now)
        self._buckets[key] = bucket
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return bucket

    def wait_for(self, key: str) -> float:
        """Seconds until `key` may make an attempt; 0 means now (nothing is taken)."""
        bucket = self._bucket(key)
        if bucket.tokens >= 1:
            return 0.0
        return (1 - bucket.tokens) * self.refill_seconds

    def take(self, key: str) -> float:
        """Take one attempt for `key`: 0 if it was allowed, else the seconds to wait."""
        bucket = self._bucket(key)
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) * self.refill_seconds

    def forgive(self, key: str) -> None:
        """Give `key` its whole burst back (a successful login clears its failures)."""
        self._buckets.pop(key, None)


def minutes(seconds: float) -> str:
    """'1 minute', '4 minutes': how long to wait, rounded up, for a message."""
    count = max(1, int(-(-seconds // 60)))
    return f"{count} minute{'s' if count != 1 else ''}"
