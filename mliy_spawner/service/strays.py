"""The reconcilers' findings in the ``mliy`` service, for hub admins: the ``strays`` page
and ``GET api/strays`` (JSON).

Each hub's reconciler (:mod:`mliy_spawner.reconcile`, in the hub) writes what its latest
cycle found to the store, per region, replacing what it found before: orphaned stacks,
servers whose stack is gone, stacks whose delete failed (being retried, or given up on),
dormant servers. An empty list means the latest cycles found nothing (or no reconciler
has run yet: ``reconcile_interval`` 0, or no server polled since the hub started).
Neither takes a query argument.
"""

from datetime import UTC

from tornado import web

from ..util import run_blocking
from .handlers import APIError, BaseHandler, HubPage
from .validation import ReportError, check_query

FIELDS = (
    "hub",
    "region",
    "kind",
    "stack_id",
    "stack_name",
    "user",
    "server_name",
    "reason",
    "since",
    "seen",
)


def _iso(moment):
    return None if moment is None else moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def as_dict(record):
    row = {name: getattr(record, name) for name in FIELDS}
    row["since"], row["seen"] = _iso(record.since), _iso(record.seen)
    return row


class StraysAPIHandler(BaseHandler):
    """``GET api/strays``: ``{"findings": [...]}``, for hub admins."""

    async def get(self):
        model = await self.token_or_login_user()
        if not model.get("admin"):
            raise APIError(403, "the reconciler's findings are for hub admins")
        try:
            check_query(self.request.query_arguments)
        except ReportError as e:
            raise APIError(400, str(e)) from None
        records = await run_blocking(self.context.store.findings)
        self.write_json(200, {"findings": [as_dict(r) for r in records]})


class StraysPage(HubPage):
    """``GET strays``: the reconcilers' latest findings, for hub admins."""

    @web.authenticated
    async def get(self):
        if not self.current_user.get("admin"):
            return self.render_page(
                "service_error.html", status=403, message="strays are shown to hub admins"
            )
        try:
            check_query(self.request.query_arguments)
        except ReportError as e:
            return self.render_page("service_error.html", status=400, message=str(e))
        records = await run_blocking(self.context.store.findings)
        self.render_page("service_strays.html", findings=records)
