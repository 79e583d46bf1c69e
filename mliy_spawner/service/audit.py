"""The audit trail in the ``mliy`` service, for hub admins: the ``audit`` page and
``GET api/audit`` (JSON) / ``GET api/audit.csv``, and the retention task.

Both take the same query, every argument optional and given at most once:

- ``user``: the server's owner; ``actor``: who acted (a user, admin or service name);
- ``action`` (one of :data:`mliy_spawner.audit.ACTIONS`), ``outcome`` (``ok``,
  ``refused``, ``failed``);
- ``since``, ``until``: ISO 8601 dates or times (``2026-12-01``,
  ``2026-12-01T09:30:00+01:00``; no offset: UTC), ``since`` included, ``until`` not;
- ``limit``: how many rows, newest first (1..10,000; default 1,000 on the page and
  the API).

Anything else is a 400 naming the argument and what it allows. The rows hold no
secret: the spawner and the service record names, ids and reasons only.
"""

import asyncio
import csv
import io
import logging
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

from tornado import web

from .. import audit, costs, costviews
from ..util import run_blocking, shorten
from .handlers import APIError, BaseHandler, HubPage
from .validation import ReportError, check_query, decode_text

log = logging.getLogger("mliy.service")

QUERY = ("user", "actor", "action", "outcome", "since", "until", "limit")
DEFAULT_LIMIT = 1000
MAX_LIMIT = 10000
COLUMNS = (
    "id",
    "time",
    "actor",
    "actor_kind",
    "path",
    "action",
    "outcome",
    "reason",
    "user",
    "server_name",
    "stack_id",
    "instance_id",
)
#: How often the retention task deletes rows older than the retention (seconds).
PURGE_EVERY = 3600.0


class QueryError(Exception):
    """A bad query argument; the message names it and what is allowed."""


def _time(text, name):
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise QueryError(
            f"{name} {shorten(text)} is not an ISO 8601 date or time "
            "(e.g. 2026-12-01 or 2026-12-01T09:30:00Z)"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _choice(text, name, allowed):
    if text not in allowed:
        raise QueryError(f"{name} {shorten(text)} is unknown; one of {', '.join(allowed)}")
    return text


def _limit(text):
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise QueryError(f"limit {shorten(text)} is not a whole number from 1 to {MAX_LIMIT}")
    return int(text)


def parse_query(arguments):
    """tornado's ``query_arguments`` -> the keyword arguments of ``Store.audit_entries``;
    :class:`QueryError` naming the bad argument."""
    try:
        check_query(arguments, QUERY)
        values = {name: decode_text(raw[0], name) for name, raw in arguments.items()}
    except ReportError as e:
        raise QueryError(str(e)) from None
    query = {"limit": DEFAULT_LIMIT}
    try:
        for name in ("user", "actor"):
            if name in values:
                query[name] = costviews.check_name(values[name], name)
    except costs.CostError as e:
        raise QueryError(str(e)) from None
    if "action" in values:
        query["action"] = _choice(values["action"], "action", audit.ACTIONS)
    if "outcome" in values:
        query["outcome"] = _choice(values["outcome"], "outcome", audit.OUTCOMES)
    for name in ("since", "until"):
        if name in values:
            query[name] = _time(values[name], name)
    if "since" in query and "until" in query and query["since"] >= query["until"]:
        raise QueryError("since must come before until")
    if "limit" in values:
        query["limit"] = _limit(values["limit"])
    return query


def as_dict(record):
    row = {name: getattr(record, name) for name in COLUMNS}
    row["time"] = record.time.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return row


def as_csv(records):
    """The CSV export: a header and one row per entry (cells kept as text)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    for record in records:
        row = as_dict(record)
        writer.writerow([costviews.csv_cell(row[name]) for name in COLUMNS])
    return out.getvalue()


def _read(store, query):
    return store.audit_entries(**query)


class AuditAPIHandler(BaseHandler):
    """``GET api/audit`` (JSON: ``{"entries": [...], "limit": n}``) and ``GET
    api/audit.csv``, for hub admins; a token or, from the page, the login cookie."""

    async def get(self, fmt=""):
        model = await self.token_or_login_user()
        if not model.get("admin"):
            raise APIError(403, "the audit trail is for hub admins")
        try:
            query = parse_query(self.request.query_arguments)
        except QueryError as e:
            raise APIError(400, str(e)) from None
        records = await run_blocking(_read, self.context.store, query)
        if fmt == ".csv":
            self.set_header("Content-Type", "text/csv; charset=UTF-8")
            self.set_header("Content-Disposition", 'attachment; filename="mliy-audit.csv"')
            self.finish(as_csv(records))
        else:
            self.write_json(
                200, {"entries": [as_dict(r) for r in records], "limit": query["limit"]}
            )


class AuditPage(HubPage):
    """``GET audit``: the audit trail with its filters, for hub admins."""

    @web.authenticated
    async def get(self):
        if not self.current_user.get("admin"):
            return self.render_page(
                "service_error.html", status=403, message="the audit trail is for hub admins"
            )
        try:
            query = parse_query(self.request.query_arguments)
        except QueryError as e:
            return self.render_page("service_error.html", status=400, message=str(e))
        records = await run_blocking(_read, self.context.store, query)
        shown = {
            name: self.request.query_arguments[name][0].decode()
            for name in QUERY
            if name in self.request.query_arguments
        }
        self.render_page(
            "service_audit.html",
            entries=records,
            query=shown,
            limit=query["limit"],
            actions=audit.ACTIONS,
            outcomes=audit.OUTCOMES,
            csv_query=urlencode(shown),
        )


async def purge_forever(store, days, every=PURGE_EVERY, now=lambda: datetime.now(UTC)):
    """Delete audit rows older than ``days`` now and every ``every`` seconds (runs in
    the service until it stops; ``days`` 0 or less keeps every row)."""
    if days <= 0:
        return
    while True:
        before = now() - timedelta(days=days)
        try:
            removed = await run_blocking(store.purge_audit, before)
            if removed:
                log.info("Audit trail: removed %d entries older than %s days", removed, days)
        except Exception as e:
            log.error("Audit trail: could not remove old entries: %s", e)
        await asyncio.sleep(every)
