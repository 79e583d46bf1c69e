"""Small helpers every module shares, written once.

- :func:`run_blocking`: the one road for a blocking call (boto3, the store, DNS plugins,
  file reads, template rendering). It runs on one shared, bounded thread pool, so the
  hub's event loop never waits on I/O.
- :func:`take_turn`: a turnstile that lets tasks on one per iteration of the event
  loop, so a burst of spawns does not run its synchronous steps back to back.
- :func:`shorten`: a value made short enough for a message or a log line.
- :func:`control_character`: the first control or invisible character of a text.
- :func:`user_error`: the error JupyterHub shows a user as it is (a spawn, a login).
- :class:`StatusError`: an error that carries the HTTP status to answer with.
- :func:`template_environment`: jinja2 with the admin's folders before the shipped ones.
- :func:`backoff`: the growing pauses of every retry or wait loop.
- :func:`for_users`: AWS's error text without account ids and ARNs.
"""

import asyncio
import collections
import functools
import re
import threading
import unicodedata
import weakref
from concurrent.futures import ThreadPoolExecutor

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, PackageLoader
from tornado import web

try:  # JupyterHub 6: a policy failure, shown to the user without a traceback
    from jupyterhub.spawner import SpawnException
except ImportError:  # JupyterHub 5.x
    SpawnException = None

# boto3 clients are thread-safe; the pool bounds how many blocking calls run at once
# (EC2 throttles mutating calls at about 5/s, so more threads would only queue there).
POOL_WORKERS = 16
_pool = None
_pool_lock = threading.Lock()


def blocking_pool():
    """The shared thread pool for blocking calls (created on first use)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(POOL_WORKERS, thread_name_prefix="mliy-blocking")
        return _pool


async def run_blocking(fn, /, *args, **kwargs):
    """Run ``fn(*args, **kwargs)`` on the shared pool and await its result."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(blocking_pool(), functools.partial(fn, *args, **kwargs))


class _Turnstile:
    """The tasks of one event loop that take turns, one per iteration of that loop."""

    def __init__(self):
        # (no reference to the loop: it is the key of the weak map that holds this)
        self.waiting = collections.deque()
        # True while a task went on in this iteration or others wait for their turn
        self.busy = False

    def enter(self, loop):
        if not self.busy:
            self.busy = True
            loop.call_soon(self.turn, loop)
            return None
        waiter = loop.create_future()
        self.waiting.append(waiter)
        return waiter

    def turn(self, loop):
        # The waiter's task resumes in the next iteration, and so does this call, which
        # lets the next waiter on only after that task ran up to its next await.
        while self.waiting:
            waiter = self.waiting.popleft()
            if not waiter.done():  # a cancelled wait gives its place up
                waiter.set_result(None)
                loop.call_soon(self.turn, loop)
                return
        self.busy = False


_turnstiles = weakref.WeakKeyDictionary()


def take_turn():
    """A turn in the running loop's turnstile, which lets tasks on one per iteration.

    Returns None when the caller may go on at once (no other task went on in this
    iteration, none waits), else a future that is done on the caller's turn. A task that
    takes a turn before a synchronous stretch (no await for some milliseconds) runs that
    stretch in an iteration of its own, so timers and requests get their turn between
    those of a burst instead of after all of them, while a lone task never waits.
    JupyterHub's own steps at the start of each spawn are such a stretch (see
    ``MLiySpawner.server_token_scopes``).
    """
    loop = asyncio.get_running_loop()
    turnstile = _turnstiles.get(loop)
    if turnstile is None:
        turnstile = _turnstiles[loop] = _Turnstile()
    return turnstile.enter(loop)


def shorten(value, limit=80):
    """``repr(value)`` cut to ``limit`` characters: user values can be megabytes long."""
    text = repr(value)
    if len(text) <= limit:
        return text
    if isinstance(value, str):
        return f"{text[: limit - 1]}… ({len(value)} characters)"
    return text[: limit - 1] + "…"


def control_character(text):
    """The first control or invisible character in ``text`` (Unicode category C, or a
    line or paragraph separator), or None when there is none."""
    for c in text:
        category = unicodedata.category(c)
        if category[0] == "C" or category in ("Zl", "Zp"):
            return c
    return None


def user_error(status_code, message, reason=None):
    """An error whose ``message`` JupyterHub shows the user as it is (escaped).

    With a ``reason`` (a failed or refused spawn) and JupyterHub 6, a ``SpawnException``:
    the spawn page and the REST API show its message without a traceback. Otherwise an
    ``HTTPError`` carrying ``jupyterhub_message``, which the hub's error page shows.
    """
    if reason is not None and SpawnException is not None:
        error = SpawnException(message, reason=reason, status_code=status_code)
    else:
        # "%s" keeps tornado from %-formatting a message that holds user input
        error = web.HTTPError(status_code, "%s", message)
    error.jupyterhub_message = message
    # the failure's reason for metrics and the audit trail, on JupyterHub 5.x as on 6
    # (tornado's own ``reason`` is the HTTP reason phrase)
    error.mliy_reason = reason
    return error


class StatusError(Exception):
    """An error to answer with HTTP ``status``; ``message`` is safe to show the caller."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


@functools.lru_cache(maxsize=16)
def template_environment(admin_paths=()):
    """A jinja2 environment (autoescape on) over ``admin_paths``, then the shipped
    ``mliy_spawner/templates``, so admins can override any template by its name."""
    loader = ChoiceLoader(
        [FileSystemLoader(list(admin_paths)), PackageLoader("mliy_spawner", "templates")]
    )
    return Environment(loader=loader, autoescape=True)


def backoff(start, maximum, factor=1.5):
    """Pauses for a wait or retry loop: ``start``, then ``factor`` times longer each
    time, never above ``maximum``."""
    delay = start
    while True:
        yield delay
        delay = min(delay * factor, maximum)


_ARN = re.compile(r"arn:aws[a-z-]*:[^\s\"',)]*")
_ACCOUNT = re.compile(r"(?<![0-9])[0-9]{12}(?![0-9])")


def for_users(text, limit=300):
    """AWS's error or status text as a user may see it: ARNs and 12-digit account ids
    taken out, cut to ``limit`` characters. The full text belongs in the log."""
    text = _ACCOUNT.sub("<account>", _ARN.sub("<arn>", str(text)))
    return text if len(text) <= limit else text[: limit - 1] + "…"
