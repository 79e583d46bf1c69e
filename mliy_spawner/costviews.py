"""What the cost pages, the API, the CSV export and the CLI show, from one report.

:mod:`mliy_spawner.costs` computes; this module turns a :class:`~mliy_spawner.costs.Report`
into the API's JSON, the CSV and the per-day bar chart, and checks the query values they
all take (``month``, ``user``, ``group``), so every view shows the same cents.
"""

import csv
import io
import unicodedata
from datetime import UTC, datetime
from decimal import Decimal

from markupsafe import Markup, escape

from . import costs

#: the columns of the CSV export, in order (the API's server fields plus the month)
CSV_COLUMNS = (
    "month",
    "user",
    "server",
    "group",
    "software_config",
    "instance_id",
    "instance_type",
    "state",
    "hourly_usd",
    "hours",
    "cost_usd",
)
# JupyterHub's own limit for names is the database column; ours is a sane bound
MAX_NAME = 255
UNKNOWN = "unknown"


def dollars(value):
    """``$12.34`` (rounded half up to the cent), or ``unknown`` for None: pages and forms."""
    return UNKNOWN if value is None else f"${costs.money(value):,}"


def rate(value):
    """``$0.0116``: an hourly price as exact as the catalog gives it (at least cents)."""
    if value is None:
        return UNKNOWN
    text = f"{value.normalize():f}"
    whole, _, cents = text.partition(".")
    return f"${whole}.{cents.ljust(2, '0')}"


def check_name(value, parameter):
    """A user or group name from a query: text, 1..255 characters, no control or
    format characters (NUL, newlines, bidi overrides). Returns it unchanged."""
    if not value:
        raise costs.CostError(f"{parameter} is empty; give a name or leave {parameter} out")
    if len(value) > MAX_NAME:
        raise costs.CostError(f"{parameter} is {len(value)} characters long; at most {MAX_NAME}")
    for ch in value:
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            raise costs.CostError(
                f"{parameter} holds the character U+{ord(ch):04X}; "
                "control, format and unassigned characters are not allowed"
            )
    return value


def parse_query(values, tz="UTC", now=None):
    """``{"month"?, "user"?, "group"?}`` (text) -> ``(Month, user or None, group or None)``.

    A missing month is the current one (in ``tz``). Raises
    :class:`~mliy_spawner.costs.CostError` naming the parameter.
    """
    month_text = values.get("month")
    if month_text is None:
        month = costs.month_of(now or datetime.now(UTC), tz)
    else:
        month = costs.parse_month(month_text, tz)
    user = values.get("user")
    group = values.get("group")
    return (
        month,
        None if user is None else check_name(user, "user"),
        None if group is None else check_name(group, "group"),
    )


def read_report(store, month, now=None, *, hub=None, user=None, group=None):
    """The month's :class:`~mliy_spawner.costs.Report` from the store (blocking)."""
    now = now or datetime.now(UTC)
    intervals = store.usage_between(month.start, month.end, hub=hub, user=user, group=group)
    return costs.report(intervals, month, now)


def _text(value):
    return UNKNOWN if value is None else costs.as_text(value)


def server_rows(report):
    """The API's ``servers``: one dict per line, money as decimal strings (None: unknown)."""
    rows = []
    for line in report.lines:
        cost = line.cost
        rows.append(
            {
                "user": line.user,
                "server": line.server,
                "group": line.group,
                "software_config": line.config,
                "instance_id": line.instance_id,
                "instance_type": line.instance_type,
                "state": line.state,
                "hourly_usd": None if line.hourly_usd is None else costs.as_text(line.hourly_usd),
                "hours": costs.as_text(line.hours),
                "cost_usd": None if cost is None else costs.as_text(cost),
                "known_cost_usd": costs.as_text(line.known_cost),
            }
        )
    return rows


def as_json(report):
    """The API's answer. ``total_usd`` adds every known cost; ``unknown_servers`` counts
    the lines some of whose cost is unknown (their ``cost_usd`` is null)."""
    return {
        "month": report.month.key,
        "timezone": report.month.tz,
        "currency": "USD",
        "total_usd": costs.as_text(report.total),
        "unknown_servers": report.unknown_lines,
        "servers": server_rows(report),
    }


def csv_cell(value):
    """``value`` as a CSV cell that stays text in a spreadsheet."""
    # a spreadsheet reads =, +, -, @ (and tab/CR) at a cell's start as a formula: a user
    # or server name must stay text
    text = "" if value is None else str(value)
    if text[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + text
    return text


def as_csv(report):
    """The CSV export: a header and one row per server; unknown money is ``unknown``."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for row in server_rows(report):
        writer.writerow(
            [csv_cell(report.month.key)]
            + [
                csv_cell(UNKNOWN if row[column] is None else row[column])
                for column in CSV_COLUMNS[1:]
            ]
        )
    return out.getvalue()


def as_text(report):
    """A plain-text table for the terminal (the CLI), with the total."""
    header = ("user", "server", "group", "config", "type", "state", "$/hour", "hours", "cost")
    rows = [
        (
            line.user,
            line.server or "(default)",
            line.group,
            line.config,
            line.instance_type,
            line.state,
            _text(line.hourly_usd),
            costs.as_text(line.hours),
            _text(line.cost),
        )
        for line in report.lines
    ]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    ]
    total = f"Total {report.month.key} ({report.month.tz}): ${costs.as_text(report.total)}"
    if report.unknown_lines:
        total += f" known; {report.unknown_lines} server(s) with an unknown price"
    return "\n".join([*lines, "", total]) + "\n"


def bar_chart(per_day, width=640, height=160):
    """An SVG bar chart of ``{date: Decimal}`` (one bar per day), as safe markup.

    Drawn on the server: no JavaScript. Each bar has a ``<title>`` with its date and
    amount, which browsers show on hover and screen readers read.
    """
    days = list(per_day)
    if not days:
        return Markup("")
    top = max(per_day.values(), default=Decimal(0))
    top = top if top > 0 else Decimal(1)
    pad_left, pad_bottom = 48, 18
    plot_w, plot_h = width - pad_left, height - pad_bottom
    slot = Decimal(plot_w) / len(days)
    parts = [
        f'<svg class="mliy-chart" role="img" viewBox="0 0 {width} {height}" width="100%" '
        f'xmlns="http://www.w3.org/2000/svg"><title>Cost per day</title>',
        f'<text x="0" y="12" font-size="11">${escape(costs.as_text(costs.money(top)))}</text>',
        f'<line x1="{pad_left}" y1="{plot_h}" x2="{width}" y2="{plot_h}" stroke="#999"/>',
    ]
    for i, day in enumerate(days):
        value = per_day[day]
        h = (Decimal(plot_h - 4) * value / top).quantize(Decimal("0.1"))
        x = (pad_left + slot * i + slot / 10).quantize(Decimal("0.1"))
        w = (slot * 8 / 10).quantize(Decimal("0.1"))
        label = escape(f"{day:%Y-%m-%d}: ${costs.as_text(value)}")
        parts.append(
            f'<rect x="{x}" y="{plot_h - h}" width="{w}" height="{h}" fill="#f37524">'
            f"<title>{label}</title></rect>"
        )
        if day.day == 1 or day.day % 5 == 0:
            parts.append(f'<text x="{x}" y="{height - 4}" font-size="10">{day.day}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


__all__ = [
    "CSV_COLUMNS",
    "as_csv",
    "as_json",
    "as_text",
    "bar_chart",
    "check_name",
    "parse_query",
    "read_report",
    "server_rows",
]
