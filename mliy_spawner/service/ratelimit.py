"""A token bucket per key (an instance id): ``rate`` requests a second, bursts of ``burst``."""

import time


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
