"""Following an instance's first boot, and the names and records that go with it.

The instance's user-data script reports its steps to the ``mliy`` service, which writes
them to the shared store (:mod:`mliy_spawner.store`). The spawner reads them back here
and turns them into progress messages; a step reported as failed fails the spawn with
the step's text.
"""

import asyncio
import hashlib
import re
import time

from . import aws

#: Where instance-reported steps sit on the spawn's progress bar (0-100 of the boot
#: becomes BOOT_START..BOOT_END of the whole spawn).
BOOT_START = 40
BOOT_END = 95


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


async def wait_for_boot(store, instance_id, emit, check_alive, limit, start_delay=1.0):
    """Emit the instance's reported steps until it reports 100 %; raise on a failed step.

    ``emit(message, percent)`` records a progress event; ``check_alive()`` raises when the
    instance went away meanwhile; ``limit`` bounds the wait in seconds. Store reads run
    in the shared executor (SQLite or PostgreSQL I/O never blocks the hub's loop).
    """
    deadline = time.monotonic() + limit
    delay = start_delay
    after = 0
    while True:
        records = await aws.run_in_executor(store.progress, instance_id, after)
        for record in records:
            after = record.id
            emit(boot_message(record), overall_percent(record.percent))
            if record.failed:
                raise BootFailed(record.step)
            if is_done(record):
                return
        check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"instance {instance_id} did not finish its setup in {limit:.0f} s")
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 5.0)


def dns_label(user_name, server_name):
    """A DNS label for a server (``[a-z0-9-]``, at most 63 characters), stable per server."""
    raw = f"{user_name}-{server_name}" if server_name else user_name
    label = re.sub(r"[^a-z0-9]+", "-", raw.lower()).strip("-")
    if label == raw and len(label) <= 63:
        return label
    digest = hashlib.sha256(raw.encode()).hexdigest()[:8]
    return f"{label[:54].strip('-')}-{digest}".strip("-")
