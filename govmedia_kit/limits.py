"""Per-client rate limits of the public endpoints (GCRA: one timestamp per client).

Held in the process: with several replicas each enforces its own limit, so the
effective limit is replicas × rate; a shared store is for when that matters."""
from __future__ import annotations

import ipaddress
import math
import time

from .errors import AppError


class RateLimiter:
    def __init__(self, per_minute: int, max_clients: int = 100_000):
        self.interval = 60.0 / per_minute
        self.burst = per_minute  # a whole minute's worth may come at once, then one per interval
        self.max_clients = max_clients
        self._tat: dict[str, float] = {}  # theoretical arrival time of each client's next request

    def hit(self, client: str, now: float | None = None) -> float:
        """Count one request; returns 0 when allowed, else the seconds to wait."""
        now = time.monotonic() if now is None else now
        tat = max(self._tat.get(client, now), now)
        wait = tat - now - (self.burst - 1) * self.interval
        if wait > 0:
            return wait
        if client not in self._tat and len(self._tat) >= self.max_clients:
            self._forget_idle(now)
        self._tat[client] = tat + self.interval
        return 0.0

    def admit(self, client: str) -> None:
        """Count one request; over the limit, 429 `rate_limited` with Retry-After."""
        wait = self.hit(bucket(client))
        if wait:
            seconds = retry_after(wait)
            raise AppError(429, "rate_limited", "请求过于频繁，请稍后再试", {"retry_after": seconds},
                           headers={"Retry-After": str(seconds)})

    def _forget_idle(self, now: float) -> None:
        # A client whose arrival time has passed is indistinguishable from a new one.
        self._tat = {c: t for c, t in self._tat.items() if t > now}
        if len(self._tat) >= self.max_clients:  # a flood of distinct addresses: start over
            self._tat.clear()


def retry_after(wait: float) -> int:
    return max(1, math.ceil(wait))


def bucket(client: str) -> str:
    """The limiter's key for a client: an IPv6 address counts by its /64 (one subscriber's
    network, in which a client may pick any address), an IPv4-mapped one as IPv4; anything else
    (an API key's id, `unknown`) as it is."""
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return client
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return client
