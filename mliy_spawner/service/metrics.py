"""The ``mliy`` service's Prometheus metrics, served at ``GET <prefix>metrics``.

The service runs in its own process, so its metrics live in that process's default
registry (``prometheus_client.REGISTRY``) and Prometheus scrapes the service apart from
the hub's ``/hub/metrics``. Every request is observed once, when it ends
(:func:`observe_request`, from the application's log function), so no handler has to
remember to count: the latency of each handler, the requests refused (4xx) by reason,
the progress reports saved and the bootstrap exchanges by outcome.

``GET metrics`` is authenticated as JupyterHub's own ``/hub/metrics`` is by default
(``authenticate_prometheus``): a hub token (``Authorization: token <token>``) that holds
the ``read:metrics`` scope; admins' tokens do. No token: 401; a token without it: 403.
"""

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest

from .handlers import APIError, BaseHandler

METRICS_SCOPE = "read:metrics"

REQUEST_DURATION = Histogram(
    "mliy_service_request_duration_seconds",
    "Seconds the mliy service took to answer a request, by handler, method and status code",
    ["handler", "method", "code"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, float("inf")),
)

PROGRESS_REPORTS = Counter(
    "mliy_service_progress_reports_total",
    "Progress reports from instances saved (JSON api/progress and MLiy's ajax/progress)",
)

#: outcomes of ``mliy_service_bootstrap_exchanges_total``, by the answer's status
BOOTSTRAP_OUTCOMES = {200: "ok", 403: "refused", 409: "not_seen_yet"}

BOOTSTRAP_EXCHANGES = Counter(
    "mliy_service_bootstrap_exchanges_total",
    "Bootstrap code exchanges (an instance trading its code for its API token), by "
    "outcome: ok, refused (403: unknown, used, expired code, wrong instance or address), "
    "not_seen_yet (409), invalid (another 4xx: a malformed request), error (5xx)",
    ["outcome"],
)
for _outcome in ("ok", "refused", "not_seen_yet", "invalid", "error"):
    BOOTSTRAP_EXCHANGES.labels(_outcome)

#: the reasons of ``mliy_service_rejections_total``, by status code
REJECTION_REASONS = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}

REJECTIONS = Counter(
    "mliy_service_rejections_total",
    "Requests the mliy service refused (4xx), by handler and reason: "
    + ", ".join(sorted(set(REJECTION_REASONS.values()) | {"client_error"})),
    ["handler", "reason"],
)

_PROGRESS_HANDLERS = frozenset({"ProgressHandler", "MLiyProgressHandler"})


def rejection_reason(status):
    """The ``mliy_service_rejections_total`` reason of an answer's ``status`` (None: not
    a refusal)."""
    if not 400 <= status < 500:
        return None
    return REJECTION_REASONS.get(status, "client_error")


def bootstrap_outcome(status):
    if status in BOOTSTRAP_OUTCOMES:
        return BOOTSTRAP_OUTCOMES[status]
    return "error" if status >= 500 else "invalid"


def observe_request(handler):
    """Count a finished request of the tornado ``handler`` (the application's log function)."""
    name = type(handler).__name__
    status = handler.get_status()
    REQUEST_DURATION.labels(name, handler.request.method, str(status)).observe(
        handler.request.request_time()
    )
    reason = rejection_reason(status)
    if reason is not None:
        REJECTIONS.labels(name, reason).inc()
    if name in _PROGRESS_HANDLERS and status == 200:
        PROGRESS_REPORTS.inc()
    elif name == "BootstrapHandler":
        BOOTSTRAP_EXCHANGES.labels(bootstrap_outcome(status)).inc()


class MetricsHandler(BaseHandler):
    """``GET <prefix>metrics``: this process's metrics, for a token with ``read:metrics``."""

    async def get(self):
        self.check_query()
        model = await self.authenticate()
        if METRICS_SCOPE not in (model.get("scopes") or ()):
            raise APIError(
                403,
                f"this token of {model.get('kind', 'user')} {model.get('name')!r} may not "
                f"read the metrics: it lacks the scope {METRICS_SCOPE!r} (admins' tokens "
                "hold it; a service or role can be given it)",
            )
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(generate_latest(REGISTRY))
