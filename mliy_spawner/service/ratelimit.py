"""Token buckets per key: ``rate`` requests a second, bursts of ``burst``.

The service keeps two: one per client address, checked before any token is (so a flood
of requests with made-up tokens costs the hub nothing), and one per instance for
progress reports. :func:`client_address` is the address a request came from, as
:mod:`mliy_spawner.auth` decides it for the login header: the socket peer, or, when that
peer is a trusted proxy (configurable-http-proxy), the last ``X-Forwarded-For`` entry it
added. Never tornado's ``remote_ip``, which believes ``X-Real-Ip`` from anyone.
"""

import time

# one rule for "who sent this", shared with the login header's check
from ..auth import _socket_peer, login_peer, parse_networks

#: Where configurable-http-proxy connects to the service from: the service listens on
#: 127.0.0.1 (:func:`~mliy_spawner.service.configure_service`).
DEFAULT_TRUSTED_PROXIES = ("127.0.0.1/32", "::1/128")


def trusted_networks(cidrs):
    """``("127.0.0.1/32", ...)`` -> networks; ValueError names a bad entry."""
    return parse_networks(tuple(cidrs))


def client_address(request, networks):
    """The address ``request`` came from (see the module docstring); "unknown" if none."""
    peer = login_peer(_socket_peer(request), request.headers.get_list("X-Forwarded-For"), networks)
    return peer or "unknown"


class RateLimiter:
    """Allow up to ``burst`` requests at once per key, refilled at ``rate`` per second.

    Idle keys whose bucket is full again are dropped once more than ``max_keys`` exist,
    so the table stays small.
    """

    def __init__(self, rate=10.0, burst=20, clock=time.monotonic, max_keys=10_000):
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate must be > 0 and burst >= 1, not rate={rate}, burst={burst}")
        self.rate = float(rate)
        self.burst = float(burst)
        self._clock = clock
        self._max_keys = max_keys
        self._buckets = {}  # key -> (tokens, last refill time)

    def _refill(self, key, now):
        tokens, last = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - last) * self.rate)

    def allow(self, key):
        """Take one token for ``key``: 0 if allowed, else the seconds until one is free."""
        now = self._clock()
        tokens = self._refill(key, now)
        if tokens >= 1 - 1e-9:  # tolerate float rounding of the clock arithmetic
            self._buckets[key] = (max(0.0, tokens - 1), now)
            if len(self._buckets) > self._max_keys:
                self._prune(now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1 - tokens) / self.rate

    def _prune(self, now):
        for key in [k for k in self._buckets if self._refill(k, now) >= self.burst]:
            del self._buckets[key]
