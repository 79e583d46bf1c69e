"""Money from usage intervals: pure functions, no I/O.

The usage ledger (:mod:`mliy_spawner.ledger`, kept in the store) holds intervals: one
instance in one state (running, or stopped with its volume) from a start to an end
(``None`` while open), with the prices in force when it opened. This module turns
intervals and a month into money, the same way for the pages, the API, the CSV export,
the CLI and the budget check, so their numbers agree to the cent:

- **Exact.** Money is :class:`~decimal.Decimal` throughout; a float never appears.
- **One rounding.** A server's month is rounded once (half up, to the cent); its days
  share those cents (largest remainders first), a user's or group's total is the sum of
  its servers', the month's the sum of everything: every view adds up exactly.
- **Unknown is unknown.** A price the catalog lacks is ``None``; a cost that needs it is
  ``None`` too, never 0. Totals carry the known part and count what is unknown.
- **Volumes** are charged per GiB-month, prorated by the hours of the calendar month the
  usage falls in, running or stopped (the disk exists either way). Compute is charged
  per hour while running.

Months are calendar months in a configurable time zone (UTC by default): a month key is
``"YYYY-MM"``.
"""

import re
from bisect import bisect_right
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal, InvalidOperation
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

CENT = Decimal("0.01")
_ZERO_CENTS = Decimal("0.00")
HOUR = Decimal(3600)
RUNNING = "running"
STOPPED = "stopped"
STATES = (RUNNING, STOPPED)
_MONTH_RE = re.compile(r"\A([0-9]{4})-([0-9]{2})\Z")
# a budget amount as an admin writes it: plain decimal dollars, at most cents
_AMOUNT_RE = re.compile(r"\A[0-9]{1,9}(\.[0-9]{1,2})?\Z")


class CostError(ValueError):
    """A month, time zone or amount that cannot be used; the message names it."""


def money(value):
    """``value`` (Decimal) rounded half up to the cent."""
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


def as_text(value):
    """A Decimal as the decimal string the API and CSV carry (None stays None)."""
    return None if value is None else f"{value:f}"


def parse_amount(value, where):
    """A budget amount (``"100"``, ``"12.50"``, an int or a Decimal) as a Decimal.

    Floats are refused (0.1 is not a number of cents); so are negatives, NaN and more
    than two decimal places. ``where`` names the setting in the error.
    """
    if isinstance(value, bool) or isinstance(value, float):
        raise CostError(f"{where}: give dollars as a string or an integer, not {value!r}")
    if isinstance(value, int):
        value = str(value)
    if isinstance(value, Decimal):
        value = format(value, "f")
    if not isinstance(value, str) or not _AMOUNT_RE.match(value.strip()):
        raise CostError(f"{where}: {value!r} is not an amount of dollars like '100' or '12.50'")
    return Decimal(value.strip())


_PRICE_RE = re.compile(r"\A[0-9]{1,9}(\.[0-9]{1,10})?\Z")


def parse_price(value, where):
    """A unit price (``"0.08"``, ``"0.0116"``) as a Decimal; :class:`CostError` naming
    ``where`` otherwise (floats, negatives, NaN and exponents are refused)."""
    if isinstance(value, Decimal):
        value = format(value, "f")
    if not isinstance(value, str) or not _PRICE_RE.match(value.strip()):
        raise CostError(f"{where}: {value!r} is not a price in dollars like '0.08'")
    return Decimal(value.strip())


def zone(name):
    """The time zone months are counted in (an IANA name such as ``"UTC"``)."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise CostError(f"cost_timezone: unknown time zone {name!r}") from None


@dataclass(frozen=True)
class _Calendar:
    """A month's boundaries, computed once per (year, month, time zone): its days, each
    day's start (local midnight) as aware UTC, the month's end after them, its hours."""

    tz: ZoneInfo
    days: tuple  # the month's dates in its time zone
    bounds: tuple  # bounds[i]: the start of days[i]; bounds[-1]: the month's end
    hours: Decimal
    index: dict  # {date: i}


@lru_cache(maxsize=256)
def _calendar(year, month, tz):
    tzinfo = zone(tz)
    first = date(year, month, 1)
    last = date(year + 1, 1, 1) if month == 12 else date(year, month + 1, 1)
    days = tuple(first + timedelta(days=n) for n in range((last - first).days))
    bounds = tuple(
        datetime(d.year, d.month, d.day, tzinfo=tzinfo).astimezone(UTC) for d in (*days, last)
    )
    hours = Decimal(int((bounds[-1] - bounds[0]).total_seconds())) / HOUR
    return _Calendar(tzinfo, days, bounds, hours, {d: i for i, d in enumerate(days)})


@dataclass(frozen=True)
class Month:
    """A calendar month in a time zone: ``[start, end)`` as aware UTC datetimes."""

    year: int
    month: int
    tz: str = "UTC"

    @property
    def key(self):
        return f"{self.year:04d}-{self.month:02d}"

    @property
    def _calendar(self):
        return _calendar(self.year, self.month, self.tz)

    @property
    def start(self):
        return self._calendar.bounds[0]

    @property
    def end(self):
        return self._calendar.bounds[-1]

    def next(self):
        if self.month == 12:
            return Month(self.year + 1, 1, self.tz)
        return Month(self.year, self.month + 1, self.tz)

    @property
    def hours(self):
        """Hours in the month (a volume's GiB-month is prorated over them)."""
        return self._calendar.hours

    def days(self):
        """The month's days, as dates in its time zone."""
        return list(self._calendar.days)

    def day_start(self, day):
        return datetime(day.year, day.month, day.day, tzinfo=zone(self.tz)).astimezone(UTC)


def parse_month(text, tz="UTC", where="month"):
    """``"YYYY-MM"`` as a :class:`Month`; :class:`CostError` naming ``where`` otherwise."""
    match = _MONTH_RE.match(text) if isinstance(text, str) else None
    if not match or not 1 <= int(match.group(2)) <= 12 or int(match.group(1)) < 1970:
        raise CostError(f"{where}: {str(text)[:40]!r} is not a month like 2026-11 (YYYY-MM)")
    return Month(int(match.group(1)), int(match.group(2)), tz)


def month_of(moment, tz="UTC"):
    """The :class:`Month` holding the aware datetime ``moment``."""
    local = moment.astimezone(zone(tz))
    return Month(local.year, local.month, tz)


@dataclass(frozen=True)
class Interval:
    """One instance in one state over time, with the prices in force when it opened."""

    user: str
    server: str
    group: str
    config: str
    instance_id: str
    instance_type: str
    region: str
    state: str  # RUNNING or STOPPED
    start: datetime
    end: datetime | None = None  # None while open
    hourly_usd: Decimal | None = None  # compute $/hour; None: the catalog lacks it
    volume_gib: int | None = 0  # the extra volume; None: not known
    gib_month_usd: Decimal | None = None  # volume $/GiB-month
    hub: str = ""
    id: int | None = None

    @property
    def open(self):
        return self.end is None

    @property
    def server_key(self):
        return (self.user, self.server, self.instance_id)


def _piece_costs(interval, month_hours):
    """``cost(seconds)`` of one piece of ``interval`` (compute while running, plus its
    volume prorated over the month's hours), or None when a price it needs is unknown.

    Compute is ``hourly * seconds / 3600``, volume ``GiB * $/GiB-month * (seconds / 3600)
    / hours``, in that order: Decimal rounds at 28 digits, so the order is part of the result.
    """
    if interval.state != RUNNING:
        hourly = None
    elif interval.hourly_usd is None:
        return None
    else:
        hourly = interval.hourly_usd
    if interval.volume_gib == 0:
        per_month = None
    elif interval.volume_gib is None or interval.gib_month_usd is None:
        return None
    else:
        per_month = Decimal(interval.volume_gib) * interval.gib_month_usd

    def cost(seconds):
        seconds = Decimal(seconds)
        compute = Decimal(0) if hourly is None else hourly * seconds / HOUR
        volume = Decimal(0) if per_month is None else per_month * (seconds / HOUR) / month_hours
        return compute + volume

    return cost


@dataclass
class Line:
    """One server (user, server, instance) in one month: what the API's ``servers`` lists."""

    user: str
    server: str
    group: str
    config: str
    instance_id: str
    instance_type: str = ""
    state: str = ""  # the latest interval's state; "gone" once it closed for good
    hourly_usd: Decimal | None = None  # the latest running price
    running_seconds: int = 0
    days: dict = field(default_factory=dict)  # {date: Decimal cents, or None if unknown}
    _latest: datetime | None = None

    @property
    def hours(self):
        return (Decimal(self.running_seconds) / HOUR).quantize(CENT, rounding=ROUND_HALF_UP)

    @property
    def known_cost(self):
        """The sum of the days whose cost is known (Decimal, cents)."""
        return sum((v for v in self.days.values() if v is not None), Decimal("0.00"))

    @property
    def cost(self):
        """The month's cost (cents), or None when any of it is unknown."""
        if any(v is None for v in self.days.values()):
            return None
        return self.known_cost


@dataclass
class Report:
    """A month's costs: one :class:`Line` per server, and sums that agree with them."""

    month: Month
    lines: list

    @property
    def total(self):
        """The known total: every line's known part (cents)."""
        return sum((line.known_cost for line in self.lines), Decimal("0.00"))

    @property
    def unknown_lines(self):
        return sum(1 for line in self.lines if line.cost is None)

    def per_day(self):
        """``{date: known cents}`` over every day of the month (the bar chart)."""
        days = dict.fromkeys(self.month.days(), Decimal("0.00"))
        for line in self.lines:
            for day, value in line.days.items():
                if value is not None:
                    days[day] += value
        return days

    def by(self, attribute):
        """``{user | group | config: (known cents, unknown lines)}``, largest first."""
        sums = defaultdict(lambda: [Decimal("0.00"), 0])
        for line in self.lines:
            entry = sums[getattr(line, attribute)]
            entry[0] += line.known_cost
            entry[1] += line.cost is None
        ordered = sorted(sums.items(), key=lambda kv: (-kv[1][0], kv[0]))
        return {key: (value[0], value[1]) for key, value in ordered}

    def filtered(self, user=None, group=None):
        lines = [
            line
            for line in self.lines
            if (user is None or line.user == user) and (group is None or line.group == group)
        ]
        return Report(self.month, lines)


def _day_pieces(start, end, month):
    """Split ``[start, end)`` (``month.start <= start < end <= month.end``) at the month's
    local midnights: ``[(date, seconds)]``."""
    calendar = month._calendar
    days, bounds = calendar.days, calendar.bounds
    pieces = []
    cursor = start
    # a piece's day is the local date of its start: the first piece's is looked up, each
    # later one starts at a local midnight, the last day whose midnight it is (a day a
    # zone skipped, such as Apia's 30 December 2011, starts when the next one does)
    index = calendar.index.get(start.astimezone(calendar.tz).date())
    if index is None:  # a zone whose clocks turn back across the 1st's midnight
        index = bisect_right(bounds, start) - 1
    last = len(days) - 1
    while cursor < end:
        stop = min(end, bounds[index + 1])
        pieces.append((days[index], int((stop - cursor).total_seconds())))
        cursor = stop
        index += 1
        while index < last and bounds[index + 1] <= cursor:
            index += 1
    return pieces


def _allocate(days):
    """Cents per day for exact ``{day: Decimal}``, summing to the rounded total of all days
    (the largest remainders get the spare cents), so a server's month is exact to the cent
    and its days add up to it."""
    total = money(sum(days.values(), Decimal(0)))
    floors = {day: value.quantize(CENT, rounding=ROUND_FLOOR) for day, value in days.items()}
    spare = int((total - sum(floors.values(), Decimal(0))) / CENT)
    by_remainder = sorted(days, key=lambda day: (floors[day] - days[day], day))
    for day in by_remainder[: max(spare, 0)]:
        floors[day] += CENT
    return floors


def report(intervals, month, now):
    """The :class:`Report` of ``month`` from ``intervals`` (any order), as of ``now``.

    Open intervals count up to ``now``; nothing after ``now`` or outside the month counts.
    """
    calendar = month._calendar
    month_start, month_end = calendar.bounds[0], calendar.bounds[-1]
    lines = {}
    # exact costs per (server, day) before the one rounding
    exact = defaultdict(lambda: Decimal(0))
    unknown = set()
    window_end = min(month_end, now)
    for interval in intervals:
        start = max(interval.start, month_start)
        end = min(interval.end or now, window_end)
        if interval.start >= window_end or (interval.end is not None and end <= month_start):
            continue  # wholly outside the month (or after now)
        key = interval.server_key
        line = lines.get(key)
        if line is None:
            line = lines[key] = Line(
                interval.user,
                interval.server,
                interval.group,
                interval.config,
                interval.instance_id,
            )
        running = interval.state == RUNNING
        if line._latest is None or interval.start >= line._latest:
            line._latest = interval.start
            line.instance_type = interval.instance_type
            line.group, line.config = interval.group, interval.config
            line.state = interval.state if interval.open else "gone"
            if running:
                line.hourly_usd = interval.hourly_usd
        if end <= start:
            continue
        cost = _piece_costs(interval, calendar.hours)
        days = line.days
        for day, seconds in _day_pieces(start, end, month):
            if running:
                line.running_seconds += seconds
            cell = (key, day)
            if cost is None:
                unknown.add(cell)
            else:
                exact[cell] += cost(seconds)
            if day not in days:
                days[day] = _ZERO_CENTS
    by_line = defaultdict(dict)
    for (key, day), value in exact.items():
        by_line[key][day] = value
    for key, days in by_line.items():
        lines[key].days.update(_allocate(days))
    for key, day in unknown:
        lines[key].days[day] = None
    ordered = sorted(lines.values(), key=lambda ln: (ln.user, ln.server, ln._latest))
    return Report(month, ordered)


def hourly_cost(hourly_usd, volume_gib, gib_month_usd, month):
    """What one hour of a choice costs (compute plus volume), or None if unknown."""
    volume = Decimal(0)
    if volume_gib:
        if gib_month_usd is None:
            return None
        volume = Decimal(volume_gib) * gib_month_usd / month.hours
    return None if hourly_usd is None else hourly_usd + volume


# ---- budgets ------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    """One monthly budget in force for a spawn: a group's shared amount, or one user's."""

    kind: str  # "group" (shared by the launch group's members) or "user"
    name: str  # the group's name, or the user's
    group: str  # the launch group it applies in
    amount: Decimal

    @property
    def label(self):
        if self.kind == "group":
            return f"the {self.group} group's monthly budget"
        return f"{self.name}'s monthly budget in {self.group}"


def budgets_for(user, group, group_budget=None, member_budget=None, user_budgets=None):
    """The budgets a spawn of ``user`` in launch group ``group`` must fit.

    ``group_budget``: the amount shared by the group's members (None: none);
    ``member_budget``: the default amount for each member (None: none);
    ``user_budgets``: ``{user: amount}`` overrides, which replace the member default.
    """
    found = []
    if group_budget is not None:
        found.append(Budget("group", group, group, group_budget))
    mine = (user_budgets or {}).get(user, member_budget)
    if mine is not None:
        found.append(Budget("user", user, group, mine))
    return found


def spent(report, budget):
    """Known month-to-date spend under ``budget`` (Decimal cents)."""
    if budget.kind == "group":
        return report.filtered(group=budget.group).total
    return report.filtered(user=budget.name, group=budget.group).total


@dataclass(frozen=True)
class Refusal:
    budget: Budget
    spent: Decimal
    price: Decimal | None  # the first hour of the choice; None: unknown
    resets: datetime

    @property
    def message(self):
        price = "unknown" if self.price is None else f"${money(self.price)}/hour"
        if self.price is None:
            why = "its price is unknown, so it cannot be checked against the budget"
        elif self.spent >= self.budget.amount:
            why = "the budget is spent"
        else:
            why = "its first hour would go over the budget"
        return (
            f"Cannot start this server: {why}. {self.budget.label[0].upper()}"
            f"{self.budget.label[1:]} is ${money(self.budget.amount)}; "
            f"${money(self.spent)} is spent this month; this choice costs {price}. "
            f"The budget resets on {self.resets:%Y-%m-%d %H:%M} UTC."
        )


def check(budgets, report, first_hour, reserved=None):
    """The first budget that a choice costing ``first_hour`` (None: unknown) would break,
    as a :class:`Refusal`, or None. ``reserved``: ``{budget: Decimal}`` already promised
    to spawns under way (so two at the edge cannot both pass)."""
    for budget in budgets:
        used = spent(report, budget) + (reserved or {}).get(budget, Decimal(0))
        if first_hour is None or used + first_hour > budget.amount:
            return Refusal(budget, used, first_hour, report.month.end)
    return None


def decimal_or_none(text):
    """A Decimal read back from the store's text, or None."""
    if text is None or text == "":
        return None
    try:
        return Decimal(text)
    except InvalidOperation:
        return None
