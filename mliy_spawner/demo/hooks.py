"""The demo's ``MLiySpawner.connect_address_hook``: connect to the local instance runner.

On AWS the hub connects to an instance's private IP. In the demo, instances are moto
records with made-up 10.x addresses, and :mod:`.runner` serves each instance's notebook
on ``127.0.0.1:<port>``, listed in ``addresses.json``. The hook waits until the runner
has listed the instance and returns that address::

    from mliy_spawner.demo.hooks import local_address_hook
    c.MLiySpawner.connect_address_hook = local_address_hook("demo-data/addresses.json")
"""

import asyncio
import logging
import time
from pathlib import Path

from ..util import run_blocking
from .runner import read_addresses

log = logging.getLogger("mliy.demo")


class LocalAddressHook:
    """``await hook(spawner, instance) -> ("127.0.0.1", port)`` from the runner's file.

    Polls ``path`` every ``interval`` seconds for up to ``timeout`` seconds; raises
    TimeoutError (the spawn fails with that message) if the runner never lists the
    instance, and ValueError if it lists something other than a loopback address.
    """

    def __init__(self, path, timeout=120.0, interval=0.2):
        self.path = Path(path)
        self.timeout = timeout
        self.interval = interval

    async def __call__(self, spawner, instance):
        deadline = time.monotonic() + self.timeout
        while True:
            addresses = await run_blocking(read_addresses, self.path)
            address = addresses.get(instance.instance_id)
            if address is not None:
                host, port = address
                if host != "127.0.0.1":
                    raise ValueError(
                        f"{self.path}: {instance.instance_id} is at {host!r}; "
                        "the demo runner serves on 127.0.0.1 only"
                    )
                return host, port
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the demo's instance runner did not start {instance.instance_id} "
                    f"within {self.timeout:.0f} s (is `python -m mliy_spawner.demo` running?)"
                )
            await asyncio.sleep(self.interval)

    def __repr__(self):
        return f"LocalAddressHook({str(self.path)!r})"


def local_address_hook(path, timeout=120.0):
    """The hook for an addresses file written by :class:`.runner.InstanceRunner`."""
    return LocalAddressHook(path, timeout=timeout)
