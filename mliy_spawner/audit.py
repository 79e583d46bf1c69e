"""The audit trail: who did what to which server, by which path, and how it ended.

Rows live in the store's ``audit`` table (:meth:`~mliy_spawner.store.Store.add_audit`).
Each names:

- the **actor**: a user (on their own server), an admin (on someone else's), a service
  (by its name), the idle culler (a service named in ``MLiySpawner.culler_services``) or
  ``automatic`` (this package on its own: budget stops, the reconciler; the hub itself,
  e.g. stopping servers at shut-down, shows as ``hub``);
- the **path**: ``form`` (the hub's spawn page), ``rest`` (the hub REST API with a token),
  ``admin-panel`` (the admin page's calls, made with the admin's login cookie),
  ``hub-page`` (another hub page, e.g. the home page's stop button), ``control-api``
  (the mliy service's instance control API, on behalf of the user it names) or
  ``automatic``;
- the **action** (:data:`ACTIONS`), the **outcome** (:data:`OUTCOMES`) and a reason.

A spawner is not told who asked for a stop or a removal: JupyterHub calls ``stop()`` and
``delete_forever()`` from the request handler that serves the request (``Spawner.handler``
is set only for a start). :func:`request_handler` finds that handler: the running
coroutines' frames first, then the hub's running requests, matched by the server they
name. Never pass a secret as a reason: the trail is shown to admins and exported.
"""

import asyncio
import contextlib
import contextvars
import sys
from dataclasses import dataclass
from urllib.parse import quote

from tornado.web import RequestHandler

ACTIONS = (
    "launch",
    "resume",
    "stop",
    "terminate",
    "remove",
    "instance-type-change",
    "control-api",
    "budget-stop",
    "reconcile-delete-orphan",
    "reconcile-clear-state",
    "reconcile-retry-delete",
    "reconcile-dormant-notice",
    "reconcile-dormant-remove",
)
OUTCOMES = ("ok", "refused", "failed")
ACTOR_KINDS = ("user", "admin", "service", "culler", "automatic")
PATHS = ("form", "rest", "admin-panel", "hub-page", "control-api", "automatic")

#: The header the mliy service sends on the hub API calls of its control API:
#: ``<user|admin>:<name>``, who asked the service. Trusted only from that service.
ACTOR_HEADER = "X-MLiy-Actor"
#: The longest actor name kept (the store's column).
MAX_ACTOR = 255


@dataclass(frozen=True)
class Actor:
    name: str
    kind: str
    path: str


#: This package acting on its own (budget stops, the reconciler).
AUTOMATIC = Actor("mliy", "automatic", "automatic")
#: The hub acting without a request (shut-down, a start's clean-up, restarts).
HUB = Actor("hub", "automatic", "automatic")

_acting = contextvars.ContextVar("mliy_audit_actor", default=None)


@contextlib.contextmanager
def acting_as(actor, reason=""):
    """Within the block (and the tasks it starts), :func:`actor_for` answers ``actor``
    and :func:`acting_reason` ``reason`` (why this package acts on its own)."""
    token = _acting.set((actor, reason))
    try:
        yield actor
    finally:
        _acting.reset(token)


def acting_reason():
    """The reason :func:`acting_as` gave for the block running now, or ""."""
    acting = _acting.get()
    return acting[1] if acting else ""


def actor_header_value(model, owner):
    """The :data:`ACTOR_HEADER` value the service sends for hub user ``model``."""
    name = str(model.get("name") or "")
    kind = "admin" if model.get("admin") and name != owner else "user"
    return f"{kind}:{name}"


def _parse_actor_header(value):
    kind, sep, name = (value or "").partition(":")
    if not sep or kind not in ("user", "admin") or not name or not name.isprintable():
        return None
    return kind, name[:MAX_ACTOR]


def _request_path(handler):
    request = handler.request
    if "/api/" not in request.path:
        return "form" if "/spawn" in request.path else "hub-page"
    if "Authorization" in request.headers or "token" in request.query_arguments:
        return "rest"
    referer = request.headers.get("Referer", "")
    return "admin-panel" if "/hub/admin" in referer else "hub-page"


def actor_from_handler(handler, owner, culler_services=(), control_service="mliy"):
    """Who made the hub request ``handler`` serves, and by which path."""
    try:
        current = handler.current_user
    except RuntimeError:  # JupyterHub's: the request was not authenticated (yet)
        current = None
    if current is None:
        return HUB
    name = str(getattr(current, "name", "") or "")[:MAX_ACTOR]
    path = _request_path(handler)
    if getattr(current, "kind", "user") == "service":
        if name == control_service:
            parsed = _parse_actor_header(handler.request.headers.get(ACTOR_HEADER))
            if parsed:
                return Actor(parsed[1], parsed[0], "control-api")
            return Actor(name, "service", "control-api")
        return Actor(name, "culler" if name in culler_services else "service", path)
    if getattr(current, "admin", False) and name != owner:
        return Actor(name, "admin", path)
    return Actor(name, "user", path)


def _handler_in_frames(frame):
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, RequestHandler):
            return candidate
        frame = frame.f_back
    return None


def _names_server(handler, owner, server_name):
    """Whether ``handler``'s request is about ``owner``'s server ``server_name``."""
    path = handler.request.path
    user_part = "/users/" + quote(owner, safe="")
    if server_name:
        return path.endswith(f"{user_part}/servers/{quote(server_name, safe='')}")
    return path.endswith((user_part, user_part + "/server"))


def request_handler(spawner):
    """The hub request handler this call of ``spawner`` serves, or None.

    ``spawner.handler`` during a start; else the handler in the running call chain (a
    stop, awaited by the handler's coroutines); else a running request naming this
    server (a removal, which JupyterHub runs in a task of its own).
    """
    handler = getattr(spawner, "handler", None)
    if isinstance(handler, RequestHandler):
        return handler
    handler = _handler_in_frames(sys._getframe(1))
    if handler is not None:
        return handler
    owner, server_name = spawner.user.name, spawner.name or ""
    try:
        tasks = asyncio.all_tasks()
    except RuntimeError:
        return None
    for task in tasks:
        coro = task.get_coro()
        frame = getattr(coro, "cr_frame", None)
        candidate = frame.f_locals.get("self") if frame is not None else None
        if isinstance(candidate, RequestHandler) and candidate.request.method == "DELETE":
            if _names_server(candidate, owner, server_name):
                return candidate
    return None


def actor_for(spawner, culler_services=(), control_service="mliy"):
    """Who is acting on ``spawner``'s server now (see the module's docstring)."""
    acting = _acting.get()
    if acting is not None:
        return acting[0]
    handler = request_handler(spawner)
    if handler is None:
        return HUB
    return actor_from_handler(handler, spawner.user.name, culler_services, control_service)
