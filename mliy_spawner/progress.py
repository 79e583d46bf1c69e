"""What one start of a server shows on its progress page.

:class:`LaunchProgress` is made afresh by every ``start()``: it keeps the events shown
so far (replayed in full when the page reconnects), the stack events already turned
into messages, and the rule that the bar never moves backwards. Every event is also a
line of the ``mliy.launch`` log.
"""

import asyncio
import logging

from .stacks import event_message

log = logging.getLogger("mliy.launch")

#: Where stack events sit on the bar: from the stack's acceptance to the instance's boot.
STACK_EVENTS_START = 10
STACK_EVENTS_END = 80


class LaunchProgress:
    """The progress events of one start of one server."""

    def __init__(self, server_name=""):
        self.server_name = server_name  # for log lines: "alice/gpu"
        self.events = []
        self.stack_event_ids = set()

    @property
    def percent(self):
        return self.events[-1]["progress"] if self.events else 0

    def emit(self, message, percent=None):
        """Record an event at ``percent`` (default: where the bar is); never backwards."""
        percent = self.percent if percent is None else max(percent, self.percent)
        self.events.append({"progress": percent, "message": message})
        log.info("%s: %s", self.server_name, message)

    def add_stack_events(self, events):
        """Show the stack events not shown yet (``events`` oldest first)."""
        for event in events:
            if event["EventId"] in self.stack_event_ids:
                continue
            self.stack_event_ids.add(event["EventId"])
            step = STACK_EVENTS_START + 5 * len(self.stack_event_ids)
            self.emit(event_message(event), min(step, STACK_EVENTS_END))

    async def replay(self, interval=0.5):
        """Every event from the first, then new ones as they come (for ``progress()``)."""
        sent = 0
        while True:
            while sent < len(self.events):
                yield self.events[sent]
                sent += 1
            await asyncio.sleep(interval)
