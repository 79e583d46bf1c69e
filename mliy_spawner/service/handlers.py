"""HTTP handlers of the ``mliy`` service. Every API answer is JSON: ``{"status": ..., ...}``.

Every request, on every endpoint, first passes the per-address rate limit
(:class:`Guarded`), before any token is looked at, so a flood costs the hub nothing.
Authentication is the hub's: ``Authorization: token <token>`` checked with
:class:`jupyterhub.services.auth.HubAuth` (tokens in the URL are not accepted, so they
cannot end up in access logs). No token, or one the hub does not know: 401. Progress
needs the scope :data:`~mliy_spawner.service.PROGRESS_SCOPE` on the instance's server,
which only the API token the hub gave that server holds.
"""

import json
import logging
import math

from jupyterhub.services.auth import (
    HubOAuthCallbackHandler,
    HubOAuthenticated,
    UserNotAllowed,
)
from tornado import web

from .. import audit
from ..store import ProgressLimitError
from ..util import StatusError, run_blocking, shorten
from . import progress_scope
from .actions import ACTIONS, ActionError, refusal
from .ratelimit import client_address
from .validation import (
    ReportError,
    check_instance_id,
    check_query,
    decode_text,
    parse_json_report,
    parse_mliy_report,
    token_from_header,
)

log = logging.getLogger("mliy.service")


class APIError(StatusError):
    """A :class:`~mliy_spawner.util.StatusError` answered with extra ``headers``
    (``WWW-Authenticate``, ``Retry-After``)."""

    def __init__(self, status, message, headers=None):
        super().__init__(status, message)
        self.headers = headers or {}


class QuietLogs:
    """Log errors with the request's path only: a query may hold a token or OAuth code."""

    def log_exception(self, typ, value, tb):
        if isinstance(value, StatusError):
            answer = (value.status, value.message)
        elif isinstance(value, web.HTTPError):
            answer = (value.status_code, value.log_message or "")
        else:
            log.error(
                "%s %s failed", self.request.method, self.request.path, exc_info=(typ, value, tb)
            )
            return
        log.info("%s %s -> %d %s", self.request.method, self.request.path, *answer)


#: what each URL part is called in messages (the routes' named groups)
PART_NAMES = {"instance_id": "instance id", "tail": "progress path", "action": "action"}


class Guarded(QuietLogs):
    """Every handler of the service: the per-address rate limit and quiet logs."""

    def initialize(self, context):
        self.context = context

    def client_address(self):
        """The client's address: the socket peer, or the last ``X-Forwarded-For`` entry
        added by a trusted proxy (``MLIY_TRUSTED_PROXIES``); never ``X-Real-Ip``."""
        return client_address(self.request, self.context.trusted_proxies)

    def address_wait(self):
        """Take one request from the client address's bucket: 0, or seconds to wait."""
        address = self.client_address()
        wait = self.context.address_limiter.allow(address)
        if wait:  # the request log shows the 429 too; this says from where
            log.debug(
                "%s %s from %s: over the address rate limit",
                self.request.method,
                self.request.path,
                address,
            )
        return wait

    def refuse_flood_page(self):
        """For the HTML handlers: answer 429 (plain text) if over the limit; True if so."""
        wait = self.address_wait()
        if not wait:
            return False
        self.set_status(429)
        self.set_header("Retry-After", str(_seconds(wait)))
        self.set_header("Content-Type", "text/plain; charset=UTF-8")
        self.finish("Too many requests from your address; try again later.\n")
        return True


def _seconds(wait):
    return max(1, math.ceil(wait))


class BaseHandler(Guarded, web.RequestHandler):
    """JSON errors, quiet logs (path only, never the query or headers), token auth."""

    def prepare(self):
        # before any token check: a rejected request costs no hub API call
        wait = self.address_wait()
        if wait:
            raise APIError(
                429,
                f"too many requests from your address; at most "
                f"{self.context.address_limiter.rate:g} per second",
                headers={"Retry-After": str(_seconds(wait))},
            )

    def decode_argument(self, value, name=None):
        """URL parts and query arguments as text; not UTF-8: 400 naming the part."""
        try:
            return decode_text(value, PART_NAMES.get(name, name or "URL path"))
        except ReportError as e:
            raise APIError(400, str(e)) from None

    def check_query(self, *allowed):
        """400 for query arguments other than ``allowed`` or repeated ones."""
        try:
            check_query(self.request.query_arguments, allowed)
        except ReportError as e:
            raise APIError(400, str(e)) from None

    def set_default_headers(self):
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")

    def write_json(self, status, payload):
        self.set_status(status)
        self.finish(json.dumps(payload))

    def write_error(self, status_code, **kwargs):
        """Every error as JSON. A :class:`~mliy_spawner.util.StatusError` (raised here or
        by the actions and the hub client) answers with its status and message; tornado
        sends anything but an HTTPError here as a 500 first."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, StatusError):
            status_code, message = exc.status, exc.message
            self.set_status(status_code)
            for name, value in getattr(exc, "headers", {}).items():
                self.set_header(name, value)
        elif status_code == 405:
            message = f"method {self.request.method} is not allowed here"
            allowed = [m for m in ("GET", "POST") if self._implements(m)]
            self.set_header("Allow", ", ".join(allowed))
        else:
            message = self._reason
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps({"status": status_code, "message": message}))

    def _implements(self, method):
        own = getattr(type(self), method.lower(), None)
        return own is not None and own is not getattr(web.RequestHandler, method.lower())

    async def authenticate(self):
        """The hub's model of the token's owner; 401 without a token the hub knows."""
        hub_auth = self.context.hub_auth
        # the Authorization header only: HubAuth.get_token would also read ?token= from
        # requests that say they are websockets, and URLs end up in access logs. A
        # header holding no well-formed token is refused without asking the hub.
        token, problem = token_from_header(self.request.headers.get("Authorization", ""))
        if problem:
            raise APIError(401, problem, headers={"WWW-Authenticate": "token"})
        model = await hub_auth.user_for_token(token, sync=False)
        if not model:
            raise APIError(
                401,
                "the hub does not recognise this token (expired, revoked or mistyped)",
                headers={"WWW-Authenticate": "token"},
            )
        return model

    async def token_or_login_user(self):
        """The caller's model: from the token when one is sent, else the hub login cookie.

        The JSON reports are read both by scripts (a token) and by the pages' own
        download links (a browser logged in to the hub).
        """
        if "Authorization" in self.request.headers:
            return await self.authenticate()
        model = await self.context.hub_oauth.get_user(self, sync=False)
        if not model:
            raise APIError(
                401,
                "send Authorization: token <token> (or log in to the hub to use the pages)",
                headers={"WWW-Authenticate": "token"},
            )
        return model

    async def instance(self, instance_id, status_if_unknown):
        try:
            check_instance_id(instance_id)
        except ReportError as e:
            raise APIError(400, str(e)) from None
        record = await run_blocking(self.context.store.owner, instance_id)
        if record is None:
            raise APIError(
                status_if_unknown,
                f"instance {shorten(instance_id)} is unknown: no server of this hub runs on it",
            )
        return record


class ProgressHandler(BaseHandler):
    """Progress ingest, JSON form: ``POST api/progress/<instance-id>``."""

    async def post(self, instance_id):
        record = await self.authorize(instance_id)
        self.check_query()
        try:
            report = parse_json_report(self.request.body)
        except ReportError as e:
            raise APIError(400, str(e)) from None
        await self.save(record, report)

    async def authorize(self, instance_id):
        """Only the server's own API token may report, at most ``rate`` per second per
        instance (refused reports count too)."""
        model = await self.authenticate()
        record = await self.instance(instance_id, 400)
        if model.get("kind", "user") != "user" or model.get("name") != record.user:
            who = f"{model.get('kind', 'user')} {model.get('name')!r}"
            raise APIError(
                403,
                f"the token of {who} may not report progress for instance "
                f"{shorten(instance_id)}: only its owner's tokens may",
            )
        # the exact scope on this server: the owner's other tokens hold it for the user
        # (!user=...) at most, never for one server, unless they were made for that
        needed = progress_scope(record.user, record.server_name)
        if needed not in (model.get("scopes") or ()):
            raise APIError(
                403,
                f"this token of {record.user!r} may not report progress for instance "
                f"{shorten(instance_id)}: only the API token the hub gave its server "
                f"(JUPYTERHUB_API_TOKEN) may; it lacks the scope {needed!r}",
            )
        wait = self.context.limiter.allow(instance_id)
        if wait:
            raise APIError(
                429,
                f"too many progress reports for instance {shorten(instance_id)}; at most "
                f"{self.context.limiter.rate:g} per second",
                headers={"Retry-After": str(_seconds(wait))},
            )
        return record

    async def save(self, record, report):
        try:
            saved = await run_blocking(
                self.context.store.add_progress,
                record.instance_id,
                report.step,
                report.percent,
                report.failed,
            )
        except ProgressLimitError as e:
            raise APIError(429, str(e)) from None
        log.info(
            "progress of %s (%s): %d%% %r%s",
            record.instance_id,
            record.user,
            saved.percent,
            saved.step,
            " FAILED" if saved.failed else "",
        )
        self.write_json(
            200,
            {
                "status": 200,
                "id": saved.id,
                "instance_id": saved.instance_id,
                "step": saved.step,
                "percent": saved.percent,
                "failed": saved.failed,
            },
        )


class MLiyProgressHandler(ProgressHandler):
    """Progress ingest, MLiy's form: ``GET|POST ajax/progress/<instance-id>/<step>(<percent>)``.

    MLiy's scripts called it with curl's GET; the step arrives URL-decoded.
    ``?failed=true`` marks a failed step.
    """

    async def get(self, instance_id, tail):
        record = await self.authorize(instance_id)
        self.check_query("failed")
        try:
            report = parse_mliy_report(tail, self.get_query_argument("failed", None))
        except ReportError as e:
            raise APIError(400, str(e)) from None
        await self.save(record, report)

    async def post(self, instance_id, tail):
        await self.get(instance_id, tail)


class InstanceActionHandler(BaseHandler):
    """Instance control: ``POST api/instances/<instance-id>/<start|stop|restart|terminate>``."""

    async def post(self, instance_id, action):
        model = await self.authenticate()
        self.check_query()
        if action not in ACTIONS:
            raise APIError(400, f"action {shorten(action)} is unknown; one of {', '.join(ACTIONS)}")
        record = await self.instance(instance_id, 404)
        actor = audit.actor_header_value(model, record.user)
        reason = refusal(model, record, action)
        if reason:
            await self._audit(record, actor, "refused", f"{action}: {reason}")
            raise APIError(403, reason)
        log.info(
            "%s of instance %s (%s/%s) requested by %s",
            action,
            record.instance_id,
            record.user,
            record.server_name,
            model.get("name"),
        )
        try:
            result = await self.context.actions.run(record, action, actor=actor)
        except ActionError as e:  # answered with its status
            await self._audit(record, actor, "failed", f"{action}: {e.message}")
            raise
        await self._audit(record, actor, "ok", f"{action}: {result.status}")
        self.write_json(
            result.http_status,
            {
                "status": result.http_status,
                "instance_id": record.instance_id,
                "user": record.user,
                "server_name": record.server_name,
                "action": action,
                "state": result.status,
            },
        )

    async def _audit(self, record, actor, outcome, reason):
        """Record the call in the audit trail (the hub's spawner records what it then
        does to the server, with this actor and the path ``control-api``)."""
        kind, _, name = actor.partition(":")
        try:
            await run_blocking(
                self.context.store.add_audit,
                "control-api",
                actor=name,
                actor_kind=kind,
                path="control-api",
                outcome=outcome,
                reason=reason,
                user=record.user,
                server_name=record.server_name,
                stack_id=record.stack_id,
                instance_id=record.instance_id,
            )
        except Exception as e:  # the trail must not turn an answer into a 500
            log.error("Audit trail: could not record %s of %s: %s", reason, record.instance_id, e)


class NotFoundHandler(BaseHandler):
    """Any other path under the service's prefix: a JSON 404."""

    def prepare(self):
        super().prepare()
        raise APIError(404, f"no such endpoint: {shorten(self.request.path)}")


class HubPage(Guarded, HubOAuthenticated, web.RequestHandler):
    """A page for browsers, who log in through the hub's OAuth (``HubOAuth``)."""

    #: what the page's HTML may load: styles from the hub (same origin through the
    #: proxy) and inline SVG; no script at all
    content_security_policy = "default-src 'none'; style-src 'self' 'unsafe-inline'"

    def initialize(self, context):
        self.context = context
        self.hub_auth = context.hub_oauth

    async def prepare(self):
        if self.refuse_flood_page():  # before the cookie's token goes to the hub
            return
        # the mixin's get_current_user asks the hub synchronously; ask here without
        # blocking the event loop and leave the answer where get_current_user looks
        model = await self.hub_auth.get_user(self, sync=False)
        try:
            self._hub_auth_user_cache = self.check_hub_user(model) if model else None
        except UserNotAllowed:
            self._hub_auth_user_cache = None
            raise web.HTTPError(403, "not allowed to use this service") from None

    def render_page(self, name, status=200, **context):
        """Render the template ``name`` with ``user``, ``hub_url``, ``service_url`` and
        ``is_admin`` (for the navigation) plus ``context``."""
        template = self.context.templates.get_template(name)
        self.set_status(status)
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Content-Security-Policy", self.content_security_policy)
        model = self.current_user or {}
        self.finish(
            template.render(
                user=model.get("name"),
                is_admin=bool(model.get("admin")),
                hub_url=self.hub_auth.hub_prefix,
                service_url=self.context.settings.prefix,
                **context,
            )
        )


class InstancesPage(HubPage):
    """``GET <prefix>``: the logged-in user's instances and their latest step (HTML)."""

    @web.authenticated
    async def get(self):
        user = self.current_user["name"]
        rows = await run_blocking(self._rows, user)
        self.render_page("service_instances.html", rows=rows)

    def _rows(self, user):
        store = self.context.store
        rows = []
        for record in store.instances_for_user(user):
            latest = store.latest_progress(record.instance_id)
            rows.append(
                {
                    "server_name": record.server_name,
                    "instance_id": record.instance_id,
                    "stack_id": record.stack_id,
                    "region": record.region,
                    "updated": record.updated,
                    "step": latest.step if latest else None,
                    "percent": latest.percent if latest else None,
                    "failed": latest.failed if latest else None,
                    "reported": latest.created if latest else None,
                }
            )
        return rows


class OAuthCallbackHandler(Guarded, HubOAuthCallbackHandler):
    """``<prefix>oauth_callback``: finishes the hub's OAuth login for the page."""

    def initialize(self, context):
        self.context = context
        self.hub_auth = context.hub_oauth

    def prepare(self):
        self.refuse_flood_page()  # before the code is traded with the hub
