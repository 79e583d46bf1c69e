"""Following an instance's first boot.

The instance's user-data script reports its steps to the ``mliy`` service, which writes
them to the shared store (:mod:`mliy_spawner.store`). The spawner reads them back here
and turns them into progress messages; a step reported as failed fails the spawn with
the step's text.
"""

import asyncio
import time

from .util import backoff, run_blocking

#: Where instance-reported steps sit on the spawn's progress bar (0-100 of the boot
#: becomes BOOT_START..BOOT_END of the whole spawn).
BOOT_START = 40
BOOT_END = 95


#: Longest pause between two reads of the store while a boot is awaited. The store is
#: local and the read is one indexed query, so a short pause costs little and the
#: server is ready within about this long after its notebook answers.
STORE_POLL_MAX = 0.5


class BootFailed(Exception):
    """The instance reported a failed step; the message is the step's text."""


def overall_percent(percent):
    """Map an instance-reported percent (0-100) onto the spawn's progress bar."""
    percent = max(0, min(100, int(percent)))
    return BOOT_START + (BOOT_END - BOOT_START) * percent // 100


def boot_message(record):
    """The progress message for one reported step (shown as text, never as HTML)."""
    if record.failed:
        return f"Setup failed: {record.step}"
    return f"Instance: {record.step}"


def is_done(record):
    return not record.failed and record.percent >= 100


async def wait_for_boot(
    store, instance_id, emit, check_alive, limit, start_delay=1.0, silence_limit=None, log=None
):
    """Emit the instance's reported steps until it reports 100 %; raise on a failed step.

    ``emit(message, percent)`` records a progress event; ``await check_alive()`` raises when the
    instance went away meanwhile; ``limit`` bounds the wait in seconds. When the instance
    reports nothing at all for ``silence_limit`` seconds (its script does not report, or
    cannot reach the service), stop waiting and let the hub wait for the server itself.
    Store reads run in the shared executor (database I/O never blocks the hub's loop).
    """
    started = time.monotonic()
    deadline = started + limit
    pauses = backoff(min(start_delay, STORE_POLL_MAX), STORE_POLL_MAX)
    after = 0
    while True:
        records = await run_blocking(store.progress, instance_id, after)
        for record in records:
            after = record.id
            emit(boot_message(record), overall_percent(record.percent))
            if record.failed:
                raise BootFailed(record.step)
            if is_done(record):
                return
        await check_alive()
        now = time.monotonic()
        if not after and silence_limit is not None and now - started > silence_limit:
            if log is not None:
                log.warning(
                    "Instance %s reported no progress in %.0f s; is MLiySpawner.service_url "
                    "reachable from instances? Leaving the wait to the hub.",
                    instance_id,
                    silence_limit,
                )
            emit("The instance reports no progress; waiting for its notebook server", BOOT_START)
            return
        if now > deadline:
            raise TimeoutError(f"instance {instance_id} did not finish its setup in {limit:.0f} s")
        await asyncio.sleep(next(pauses))
