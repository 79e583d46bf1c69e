"""The ``mliy`` service's tornado application and its settings (from the environment).

JupyterHub starts the service with ``JUPYTERHUB_SERVICE_URL`` (where to listen),
``JUPYTERHUB_SERVICE_PREFIX`` (``/services/mliy/``), ``JUPYTERHUB_API_URL`` and
``JUPYTERHUB_API_TOKEN`` (the service's own token). :func:`configure_service` adds:

``MLIY_STORE_URL``         SQLAlchemy URL of the shared store (default: ``mliy.sqlite`` in
                           the working folder)
``MLIY_AWS_ENDPOINT_URL``  AWS endpoint for CloudFormation (a stand-in such as moto);
                           empty for AWS itself
``MLIY_LOG_DIR``           folder for auth.log, aws.log, launch.log, service.log
``MLIY_LOG_LEVELS``        ``area=LEVEL,...``, e.g. ``service=DEBUG,aws=INFO``
``MLIY_PROGRESS_RATE``     progress reports per second and instance (default 10)
``MLIY_PROGRESS_BURST``    reports allowed at once per instance (default 20)
``MLIY_ADDRESS_RATE``      requests per second per client address, checked before any
                           token (default 20)
``MLIY_ADDRESS_BURST``     requests allowed at once per client address (default 100)
``MLIY_TRUSTED_PROXIES``   ``,``-separated networks whose ``X-Forwarded-For`` names the
                           client (default ``127.0.0.1/32,::1/128``: the hub's proxy)
``MLIY_STOP_TIMEOUT``      seconds restart/terminate wait for a server to stop (300)
``MLIY_TEMPLATE_PATHS``    folders (``:``-separated) searched before the shipped templates
``MLIY_BOOTSTRAP_CHECK_ADDRESS`` ``0``: take a bootstrap code from any address (NAT, the demo)
``MLIY_COST_TIMEZONE``     the time zone cost months are counted in (default ``UTC``; the
                           spawner's ``cost_timezone``)
``MLIY_TEAM_VISIBILITY``   ``members`` (default): a launch group's costs are shown to its
                           members; ``admins``: only to the group's admins
``MLIY_GROUP_ADMINS``      JSON ``{"group": ["user", ...]}``: each launch group's admins
"""

import json
import logging
import os
from dataclasses import dataclass, field
from urllib.parse import urlparse

from jupyterhub.services.auth import HubAuth, HubOAuth
from tornado import web

from .. import costs
from ..store import Store, store_url_from_env
from ..util import run_blocking, template_environment
from .actions import InstanceActions
from .audit import AuditAPIHandler, AuditPage
from .bootstrap import BootstrapHandler
from .costs import BillingPage, CostsAPIHandler, MyCostsPage, TeamPage
from .handlers import (
    InstanceActionHandler,
    InstancesPage,
    MLiyProgressHandler,
    NotFoundHandler,
    OAuthCallbackHandler,
    ProgressHandler,
)
from .hub import HubClient
from .metrics import MetricsHandler, observe_request
from .ratelimit import DEFAULT_TRUSTED_PROXIES, RateLimiter, trusted_networks
from .strays import StraysAPIHandler, StraysPage

log = logging.getLogger("mliy.service")


def _number(environ, name, default, kind=float, minimum=0):
    raw = environ.get(name, "")
    if not raw.strip():
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a {kind.__name__}") from None
    if value <= minimum:
        raise ValueError(f"{name}={raw!r} must be greater than {minimum}")
    return value


def _networks(environ, name, default):
    raw = environ.get(name, "")
    if not raw.strip():
        return tuple(default)
    cidrs = tuple(part.strip() for part in raw.split(","))
    try:
        trusted_networks(cidrs)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None
    return cidrs


def _timezone(environ, name):
    value = environ.get(name, "").strip() or "UTC"
    try:
        costs.zone(value)
    except costs.CostError:
        raise ValueError(
            f"{name}={value!r} is not a time zone name like UTC or Europe/Paris"
        ) from None
    return value


TEAM_VISIBILITY = ("members", "admins")


def _choice(environ, name, allowed):
    value = environ.get(name, "").strip() or allowed[0]
    if value not in allowed:
        raise ValueError(f"{name}={value!r}; allowed: {', '.join(allowed)}")
    return value


def parse_group_admins(text, name="MLIY_GROUP_ADMINS"):
    """``'{"students": ["ann"]}'`` -> ``{"students": frozenset({"ann"})}``."""
    if not (text or "").strip():
        return {}
    try:
        raw = json.loads(text)
    except ValueError as e:
        raise ValueError(f"{name} is not JSON ({e})") from None
    if not isinstance(raw, dict) or not all(
        isinstance(k, str) and isinstance(v, list) and all(isinstance(u, str) for u in v)
        for k, v in raw.items()
    ):
        raise ValueError(f'{name} must be a JSON object like {{"students": ["ann", "bob"]}}')
    return {group: frozenset(users) for group, users in raw.items()}


def parse_log_levels(text):
    """``"service=DEBUG, aws=info"`` -> ``{"service": "DEBUG", "aws": "info"}``."""
    levels = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        name, sep, level = item.partition("=")
        if not sep or not name.strip() or not level.strip():
            raise ValueError(f"MLIY_LOG_LEVELS item {item!r} is not area=LEVEL")
        levels[name.strip()] = level.strip()
    return levels


@dataclass
class Settings:
    """What the service needs to run; :meth:`from_env` reads it as the hub passes it."""

    service_url: str
    prefix: str
    api_url: str
    api_token: str
    store_url: str
    aws_endpoint_url: str = ""
    log_dir: str = ""
    log_levels: dict | None = None
    progress_rate: float = 10.0
    progress_burst: int = 20
    address_rate: float = 20.0
    address_burst: int = 100
    trusted_proxies: tuple = DEFAULT_TRUSTED_PROXIES
    stop_timeout: float = 300.0
    template_paths: tuple = ()
    # refuse a bootstrap code posted from another address than the instance's own
    bootstrap_check_address: bool = True
    cost_timezone: str = "UTC"
    team_visibility: str = "members"
    # days the audit trail keeps an entry; 0 keeps every entry
    audit_retention_days: float = 365.0
    group_admins: dict = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ=None):
        env = os.environ if environ is None else environ
        missing = [
            name
            for name in ("JUPYTERHUB_SERVICE_URL", "JUPYTERHUB_API_URL", "JUPYTERHUB_API_TOKEN")
            if not env.get(name)
        ]
        if missing:
            raise ValueError(
                f"{', '.join(missing)} not set: run the service from JupyterHub "
                "(c.JupyterHub.services, see mliy_spawner.service.configure_service)"
            )
        prefix = env.get("JUPYTERHUB_SERVICE_PREFIX") or "/services/mliy/"
        return cls(
            service_url=env["JUPYTERHUB_SERVICE_URL"],
            prefix="/" + prefix.strip("/") + "/",
            api_url=env["JUPYTERHUB_API_URL"],
            api_token=env["JUPYTERHUB_API_TOKEN"],
            store_url=store_url_from_env(env),
            aws_endpoint_url=env.get("MLIY_AWS_ENDPOINT_URL", ""),
            log_dir=env.get("MLIY_LOG_DIR", ""),
            log_levels=parse_log_levels(env.get("MLIY_LOG_LEVELS", "")),
            progress_rate=_number(env, "MLIY_PROGRESS_RATE", 10.0),
            progress_burst=_number(env, "MLIY_PROGRESS_BURST", 20, kind=int),
            address_rate=_number(env, "MLIY_ADDRESS_RATE", 20.0),
            address_burst=_number(env, "MLIY_ADDRESS_BURST", 100, kind=int),
            trusted_proxies=_networks(env, "MLIY_TRUSTED_PROXIES", DEFAULT_TRUSTED_PROXIES),
            stop_timeout=_number(env, "MLIY_STOP_TIMEOUT", 300.0),
            bootstrap_check_address=env.get("MLIY_BOOTSTRAP_CHECK_ADDRESS", "1") != "0",
            template_paths=tuple(
                p for p in env.get("MLIY_TEMPLATE_PATHS", "").split(os.pathsep) if p
            ),
            cost_timezone=_timezone(env, "MLIY_COST_TIMEZONE"),
            team_visibility=_choice(env, "MLIY_TEAM_VISIBILITY", TEAM_VISIBILITY),
            audit_retention_days=_number(env, "MLIY_AUDIT_RETENTION_DAYS", 365.0),
            group_admins=parse_group_admins(env.get("MLIY_GROUP_ADMINS", "")),
        )

    @property
    def listen(self):
        """``(host, port)`` to bind, from ``service_url``."""
        url = urlparse(self.service_url)
        return url.hostname or "127.0.0.1", url.port or (443 if url.scheme == "https" else 80)

    def __repr__(self):
        # never show the token
        return f"Settings(service_url={self.service_url!r}, prefix={self.prefix!r}, ...)"


class Context:
    """The objects every handler shares."""

    def __init__(self, settings, store=None):
        self.settings = settings
        self.store = store or Store(settings.store_url)
        self.hub_auth = HubAuth(
            api_url=settings.api_url,
            api_token=settings.api_token,
            base_url=settings.prefix,
            allow_token_in_url=False,
            cache_max_age=60,
        )
        self.hub = HubClient(settings.api_url, settings.api_token)
        self.limiter = RateLimiter(settings.progress_rate, settings.progress_burst)
        # per client address, before any token check: see handlers.Guarded
        self.address_limiter = RateLimiter(settings.address_rate, settings.address_burst)
        self.trusted_proxies = trusted_networks(settings.trusted_proxies)
        self.actions = InstanceActions(
            self.hub,
            self.store,
            run_blocking=run_blocking,
            aws_endpoint_url=settings.aws_endpoint_url,
            stop_timeout=settings.stop_timeout,
        )

    _hub_oauth = None

    @property
    def hub_oauth(self):
        """HubOAuth for the browser page (needs the OAuth client the hub sets up)."""
        if self._hub_oauth is None:
            self._hub_oauth = HubOAuth(
                api_url=self.settings.api_url,
                api_token=self.settings.api_token,
                base_url=self.settings.prefix,
                allow_token_in_url=False,
                cache_max_age=60,
            )
        return self._hub_oauth

    @property
    def templates(self):
        """The page templates: ``MLIY_TEMPLATE_PATHS`` first, then the shipped ones."""
        return template_environment(tuple(self.settings.template_paths))


def _log_request(handler):
    observe_request(handler)  # latency, refusals, progress and bootstrap counts
    # the path only: a query string could hold a token someone put there
    status = handler.get_status()
    level = logging.DEBUG if status < 400 else logging.INFO if status < 500 else logging.WARNING
    log.log(
        level,
        "%d %s %s %.1fms",
        status,
        handler.request.method,
        handler.request.path,
        handler.request.request_time() * 1000,
    )


def make_app(settings, store=None):
    """The tornado application serving under ``settings.prefix``."""
    context = Context(settings, store)
    prefix = settings.prefix
    args = {"context": context}
    handlers = [
        (prefix, InstancesPage, args),
        (prefix + "oauth_callback", OAuthCallbackHandler, args),
        (prefix + "costs", MyCostsPage, args),
        (prefix + "costs/team", TeamPage, args),
        (prefix + "costs/billing", BillingPage, args),
        (prefix + r"api/costs(?P<fmt>\.csv|)", CostsAPIHandler, args),
        (prefix + "audit", AuditPage, args),
        (prefix + r"api/audit(?P<fmt>\.csv|)", AuditAPIHandler, args),
        (prefix + "strays", StraysPage, args),
        (prefix + "api/strays", StraysAPIHandler, args),
        # named groups name a URL part that is not UTF-8 in the 400 (decode_argument)
        (prefix + r"api/progress/(?P<instance_id>[^/]+)", ProgressHandler, args),
        (prefix + r"api/bootstrap/(?P<instance_id>[^/]+)", BootstrapHandler, args),
        (prefix + r"ajax/progress/(?P<instance_id>[^/]+)/(?P<tail>.+)", MLiyProgressHandler, args),
        (
            prefix + r"api/instances/(?P<instance_id>[^/]+)/(?P<action>[^/]+)",
            InstanceActionHandler,
            args,
        ),
        (prefix + "metrics", MetricsHandler, args),
        # add routes above: anything else under the prefix is a JSON 404
        (prefix + r".*", NotFoundHandler, args),
    ]
    app = web.Application(
        handlers,
        log_function=_log_request,
        # signs the OAuth state and login cookies of the page; a restart only means
        # users pass through the hub's OAuth again (without a prompt)
        cookie_secret=os.urandom(32),
        xsrf_cookies=False,
    )
    app.mliy_context = context
    return app
