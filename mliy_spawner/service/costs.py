"""Costs in the ``mliy`` service: the My costs, Team and Billing pages and the costs API.

Every view reads the store's usage ledger through :mod:`mliy_spawner.costviews`, so the
pages, ``api/costs`` (JSON), ``api/costs.csv`` and the ``mliy-costs`` CLI show the same
cents. Who sees what (:func:`visible`):

- everyone sees their own servers;
- a launch group's costs (``group=``) are shown to its members, or only to the group's
  admins (``MLIY_TEAM_VISIBILITY=admins`` and ``MLIY_GROUP_ADMINS``);
- hub admins see everything.

Launch groups are JupyterHub groups of the same name, so membership is the hub's.
"""

import logging
from datetime import UTC, datetime
from decimal import Decimal
from urllib.parse import urlencode

from tornado import web

from .. import costs, costviews
from ..util import run_blocking
from .handlers import APIError, BaseHandler, HubPage
from .validation import ReportError, check_query

log = logging.getLogger("mliy.service")

QUERY = ("month", "user", "group")
TOP_SPENDERS = 10


class Forbidden(Exception):
    """A view the asker may not see; the message says what they may see."""


def visible(model, user, group, visibility="members", group_admins=None):
    """``(user, group)`` to read for the hub model ``model`` asking for ``user`` and
    ``group`` (None: not given), or :class:`Forbidden`.

    ``visibility``: ``"members"`` (a launch group's members see its costs) or
    ``"admins"`` (only the names in ``group_admins[group]`` do). Hub admins see all.
    """
    me = model.get("name")
    if model.get("admin"):
        return user, group
    if group is not None:
        if visibility == "members":
            allowed = group in (model.get("groups") or ())
            who = "its members"
        else:
            allowed = me in (group_admins or {}).get(group, ())
            who = "its admins"
        if not allowed:
            raise Forbidden(f"the costs of group {group!r} are shown only to {who} and hub admins")
        return user, group
    if user is not None and user != me:
        raise Forbidden(
            f"you may see only your own costs (user={me!r}), a launch group's you belong to "
            "(group=...), or, as a hub admin, anyone's"
        )
    return me, None


def _query_values(handler):
    """The query's ``month``, ``user`` and ``group`` as text; :class:`~mliy_spawner.costs.
    CostError` for any other argument, or one given twice."""
    try:
        check_query(handler.request.query_arguments, QUERY)
    except ReportError as e:
        raise costs.CostError(str(e)) from None
    # the raw values: tornado's get_query_argument would quietly turn control
    # characters into spaces and strip them, so "ann\x00" would read as "ann"
    values = {}
    for name in QUERY:
        raw = handler.request.query_arguments.get(name)
        if raw:
            try:
                values[name] = raw[0].decode("utf-8")
            except UnicodeDecodeError:
                raise costs.CostError(f"{name} is not UTF-8") from None
    return values


class CostsAPIHandler(BaseHandler):
    """``GET api/costs`` (JSON) and ``GET api/costs.csv``, with ``?month=YYYY-MM``,
    ``&user=``, ``&group=``.

    A REST client sends ``Authorization: token <token>``; a browser on the pages may
    use its login cookie instead (the CSV download link).
    """

    async def get(self, fmt=""):
        settings = self.context.settings
        model = await self.token_or_login_user()
        try:
            month, user, group = costviews.parse_query(_query_values(self), settings.cost_timezone)
        except costs.CostError as e:
            raise APIError(400, str(e)) from None
        try:
            user, group = visible(
                model, user, group, settings.team_visibility, settings.group_admins
            )
        except Forbidden as e:
            raise APIError(403, str(e)) from None
        report = await run_blocking(
            costviews.read_report, self.context.store, month, user=user, group=group
        )
        if fmt == ".csv":
            self.set_header("Content-Type", "text/csv; charset=UTF-8")
            self.set_header(
                "Content-Disposition", f'attachment; filename="mliy-costs-{month.key}.csv"'
            )
            self.finish(costviews.as_csv(report))
        else:
            self.finish(costviews.as_json(report))


class CostPage(HubPage):
    """What the three cost pages share: the query, the report, the navigation."""

    template = ""

    @web.authenticated
    async def get(self):
        settings = self.context.settings
        now = datetime.now(UTC)
        try:
            values = _query_values(self)
            month, user, group = costviews.parse_query(values, settings.cost_timezone, now)
        except costs.CostError as e:
            return self.render_page("service_error.html", status=400, message=str(e))
        try:
            context = await self.view(month, user, group, now)
        except Forbidden as e:
            return self.render_page("service_error.html", status=403, message=str(e))
        report = context["report"]
        this_month = costs.month_of(now, settings.cost_timezone)
        self.render_page(
            self.template,
            month=month,
            previous_month=_shift(month, -1),
            next_month=None if month.key >= this_month.key else _shift(month, 1),
            money=costviews.dollars,
            rate=costviews.rate,
            chart=costviews.bar_chart(report.per_day()),
            csv_query=_csv_query(month, context.get("csv_user"), context.get("csv_group")),
            **context,
        )

    def read(self, month, user=None, group=None):
        return run_blocking(
            costviews.read_report, self.context.store, month, user=user, group=group
        )


class MyCostsPage(CostPage):
    """``GET costs``: the logged-in user's servers, per server and per day."""

    template = "service_costs.html"

    async def view(self, month, user, group, now):
        if group is not None or user not in (None, self.current_user["name"]):
            # the pages for others' costs are Team and Billing
            raise Forbidden("this page shows only your own costs; see Team or Billing")
        me = self.current_user["name"]
        return {"report": await self.read(month, user=me), "csv_user": me}


class TeamPage(CostPage):
    """``GET costs/team?group=G``: a launch group's members, per user and configuration."""

    template = "service_team.html"

    async def view(self, month, user, group, now):
        settings = self.context.settings
        model = self.current_user
        mine = sorted(model.get("groups") or ())
        if settings.team_visibility != "members":
            mine = sorted(g for g, names in settings.group_admins.items() if model["name"] in names)
        if group is None and mine:
            group = mine[0]
        if group is None:
            return {"report": costs.Report(month, []), "groups": mine, "group": None}
        user, group = visible(model, user, group, settings.team_visibility, settings.group_admins)
        report = await self.read(month, user=user, group=group)
        return {"report": report, "groups": mine, "group": group, "csv_group": group}


class BillingPage(CostPage):
    """``GET costs/billing``: everything, for hub admins."""

    template = "service_billing.html"

    async def view(self, month, user, group, now):
        if not self.current_user.get("admin"):
            raise Forbidden("the Billing page is for hub admins")
        report = await self.read(month)
        known = await run_blocking(self.context.store.instance_ids)
        running = [line for line in report.lines if line.state == costs.RUNNING]
        flagged = [(line, why) for line in report.lines if (why := _flags(line, known))]
        return {
            "report": report,
            "by_group": report.by("group"),
            "by_config": report.by("config"),
            "top_users": list(report.by("user").items())[:TOP_SPENDERS],
            "running": running,
            "running_hourly": _sum_known(line.hourly_usd for line in running),
            "flagged": flagged,
        }


def _flags(line, known_instances):
    flags = []
    if line.cost is None:
        flags.append("unknown price")
    if line.state in costs.STATES and line.instance_id not in known_instances:
        flags.append("orphaned: no server of this hub records this instance")
    return flags


def _sum_known(values):
    return sum((v for v in values if v is not None), Decimal(0))


def _shift(month, step):
    year, number = divmod(month.year * 12 + month.month - 1 + step, 12)
    return costs.Month(year, number + 1, month.tz)


def _csv_query(month, user=None, group=None):
    values = {"month": month.key}
    if user is not None:
        values["user"] = user
    if group is not None:
        values["group"] = group
    return urlencode(values)


__all__ = [
    "BillingPage",
    "CostsAPIHandler",
    "Forbidden",
    "MyCostsPage",
    "TeamPage",
    "visible",
]
