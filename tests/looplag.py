"""A monitor that fails a test when the event loop was blocked (asyncio debug mode's
slow-callback warning, as a test helper).

``async with loop_lag_monitor(limit=0.25) as lag:`` runs a ticker on the loop: every
``interval`` it notes how late it woke. Leaving the block raises AssertionError when one
wake-up came more than ``limit`` seconds late, naming the lag; ``lag.worst`` and
``lag.samples`` are there to read. A blocking call made on the loop (botocore loading
its models, a file read, a database query) shows as one long lag.
"""

import asyncio
import contextlib
from dataclasses import dataclass, field


@dataclass
class LoopLag:
    samples: list = field(default_factory=list)

    @property
    def worst(self):
        return max(self.samples, default=0.0)


@contextlib.asynccontextmanager
async def loop_lag_monitor(limit=0.25, interval=0.01):
    loop = asyncio.get_running_loop()
    lag = LoopLag()

    async def tick():
        while True:
            expected = loop.time() + interval
            await asyncio.sleep(interval)
            lag.samples.append(max(0.0, loop.time() - expected))

    ticker = loop.create_task(tick())
    try:
        yield lag
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
    assert lag.worst <= limit, f"the event loop was blocked for {lag.worst:.3f} s (limit {limit} s)"
