"""The usage ledger kept true to EC2, and the budgets and limits checked before a launch.

**Upkeep.** The reflector's view is the truth about what runs, whoever changed it (the
hub, the console, the CLI). After each of its cycles :class:`Ledger` compares the view
with the ledger's open intervals (:func:`plan`) and writes the difference to the store:

- an instance that is pending or running has an open ``running`` interval; one that is
  stopping or stopped has an open ``stopped`` interval (its volume is still charged);
  one that is shutting down, terminated or gone from the view has none;
- a change of state, instance type or price closes the open interval and opens the next
  one at the same moment: no gap, no double count. Moments come from EC2 where it gives
  them (``LaunchTime`` for a start, the time in ``StateTransitionReason`` for a stop),
  kept between the interval's start and now, so a hub that was down while an instance
  stopped charges it until it stopped, not until the hub came back.
- after a hub restart the open intervals are simply still open: the first cycle keeps
  those that match and closes the rest.

**Before a launch** (:class:`SpendGate`, from the spawner's ``apply_user_options``
hook, before any AWS call): the per-user limits, then every budget in force. Checks are
serialised per hub and a passing spawn reserves its first hour until its start ends, so
two spawns at the edge of a budget cannot both pass.

**While servers run** (:meth:`Ledger.review`): notices at 80 % and 100 % of a budget, and
with ``budget_action = "stop"`` over-budget servers are stopped (their disks stay).
"""

import asyncio
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal

from . import costs, metrics
from .util import run_blocking

log = logging.getLogger("mliy.launch")

VOLUME_TAG = "mliy:volume-gib"
#: EC2 instance states, as the ledger counts them
RUNNING_STATES = frozenset({"pending", "running"})
STOPPED_STATES = frozenset({"stopping", "stopped"})
#: the shares of a budget at which users are told (and the hub logs it)
NOTICE_LEVELS = (Decimal("0.8"), Decimal("1"))
#: how long a passing spawn's first hour stays reserved if its start never ends
RESERVATION_TTL = 3600.0


def usage_state(ec2_state):
    """The ledger's state for an EC2 instance state: RUNNING, STOPPED or None (no usage)."""
    if ec2_state in RUNNING_STATES:
        return costs.RUNNING
    if ec2_state in STOPPED_STATES:
        return costs.STOPPED
    return None


def _volume_gib(tags):
    value = tags.get(VOLUME_TAG)
    if value is None:
        return None  # launched before the tag existed: not known
    try:
        gib = int(value)
    except ValueError:
        return None
    return gib if gib >= 0 else None


def _clamp(moment, low, high):
    if moment is None:
        return high
    return max(low, min(moment, high)) if low is not None else min(moment, high)


def plan(open_intervals, instances, *, hub, region, price_of, gib_month_usd, now, last_ends=None):
    """What the ledger must change for the view ``instances`` at ``now``.

    ``open_intervals``: the open :class:`~mliy_spawner.costs.Interval` of this hub and
    region; ``instances``: ``{instance id: InstanceView}``; ``price_of(instance_type)``:
    compute $/hour or None; ``gib_month_usd``: the volume price (None: unknown);
    ``last_ends``: ``{instance id: datetime}`` of the latest closed interval of instances
    that have no open one (a new interval never starts before it). Returns
    ``(close, open)``: ``[(interval id, end)]`` and new intervals.
    """
    last_ends = last_ends or {}
    close, opened = [], []
    current = {}
    for interval in sorted(open_intervals, key=lambda i: (i.start, i.id or 0)):
        if interval.instance_id in current:  # two open ones (never expected): keep the last
            close.append((current[interval.instance_id].id, interval.start))
        current[interval.instance_id] = interval

    def wanted(view, start):
        tags = view.tags or {}
        state = usage_state(view.state)
        return costs.Interval(
            hub=hub,
            user=tags.get("mliy:user", ""),
            server=tags.get("mliy:server", ""),
            group=tags.get("mliy:launch-group", ""),
            config=tags.get("mliy:software-config", ""),
            instance_id=view.instance_id,
            instance_type=view.instance_type,
            region=region,
            state=state,
            start=start,
            hourly_usd=price_of(view.instance_type) if state == costs.RUNNING else None,
            volume_gib=_volume_gib(tags),
            gib_month_usd=gib_month_usd,
        )

    def same(a, b):
        keys = ("state", "instance_type", "hourly_usd", "volume_gib", "gib_month_usd")
        keys += ("user", "server", "group", "config")
        return all(getattr(a, k) == getattr(b, k) for k in keys)

    def moment_of(view, state):
        """When EC2 says the instance entered ``state``, or None."""
        if state == costs.RUNNING:
            return getattr(view, "launch_time", None)
        return getattr(view, "transition_time", None)

    for instance_id, interval in current.items():
        view = instances.get(instance_id)
        state = usage_state(view.state) if view is not None else None
        if state is None:
            end = getattr(view, "transition_time", None) if view is not None else None
            close.append((interval.id, _clamp(end, interval.start, now)))
            continue
        if interval.state == state:
            want = wanted(view, now)
            if same(interval, want):
                continue
            at = now  # a new type or price: from now on
        else:
            at = _clamp(moment_of(view, state), interval.start, now)
            want = wanted(view, at)
        close.append((interval.id, at))
        opened.append(replace(want, start=at))
    for instance_id, view in instances.items():
        if instance_id in current:
            continue
        state = usage_state(view.state)
        if state is None:
            continue
        start = _clamp(moment_of(view, state), last_ends.get(instance_id), now)
        opened.append(wanted(view, start))
    return close, opened


def _utcnow():
    return datetime.now(UTC)


@dataclass
class CostSettings:
    """What the ledger and the budget checks read of the spawner's settings."""

    hub_name: str
    region: str
    gib_month_usd: Decimal | None = Decimal("0.08")
    timezone: str = "UTC"
    budget_action: str = "notify"  # or "stop"
    user_budgets: dict = field(default_factory=dict)  # {user: Decimal}
    #: {launch group: (shared amount or None, per-member amount or None)}
    group_budgets: dict = field(default_factory=dict)
    review_interval: float = 60.0
    metrics_per_user: bool = False  # also report each user's spend (a user label)


class Ledger:
    """Keeps the store's usage intervals true to one reflector's view (one per region/hub).

    ``price_of(instance_type)`` gives compute $/hour (blocking: it may reload the price
    file); ``clock()`` the aware UTC now (tests pass their own). ``stop_server(user,
    server, reason)`` (a coroutine, in a real hub) stops an over-budget server; ``is_active
    (user, server)`` tells whether JupyterHub runs it.
    """

    def __init__(
        self,
        store,
        settings,
        price_of,
        *,
        clock=_utcnow,
        stop_server=None,
        is_active=None,
    ):
        self.store = store
        self.settings = settings
        self.price_of = price_of
        self.clock = clock
        self.stop_server = stop_server
        self.is_active = is_active
        self.upkeeps = 0
        self.last_upkeep_seconds = None
        self.notices = {}  # {user: [text]}: the latest review's notices
        self._told = set()  # (budget, month, level) logged already
        self._stopping = set()
        self._last_review = None

    # ---- upkeep (blocking parts run in the pool) -------------------------------------

    def upkeep(self, instances, now=None):
        """Bring the ledger in line with ``instances``; returns ``(closed, opened)``."""
        started = time.perf_counter()
        now = now or self.clock()
        open_intervals = self.store.open_usage(self.settings.hub_name, self.settings.region)
        known = {i.instance_id for i in open_intervals}
        new = [i for i, v in instances.items() if i not in known and usage_state(v.state)]
        last_ends = self.store.last_usage_ends(new) if new else {}
        prices = {}

        def price_of(instance_type):
            if instance_type not in prices:
                prices[instance_type] = self.price_of(instance_type)
            return prices[instance_type]

        close, opened = plan(
            open_intervals,
            instances,
            hub=self.settings.hub_name,
            region=self.settings.region,
            price_of=price_of,
            gib_month_usd=self.settings.gib_month_usd,
            now=now,
            last_ends=last_ends,
        )
        if close or opened:
            self.store.update_usage(close, opened)
        self.upkeeps += 1
        self.last_upkeep_seconds = time.perf_counter() - started
        return close, opened

    async def on_cycle(self, reflector):
        """The reflector's listener: upkeep after each successful cycle, then a review
        every ``review_interval`` seconds."""
        try:
            await run_blocking(self.upkeep, reflector.instances)
        except Exception as e:
            log.warning("Usage ledger of hub %s: upkeep failed (%s)", self.settings.hub_name, e)
            return
        due = self._last_review is None or (
            time.monotonic() - self._last_review >= self.settings.review_interval
        )
        if due:
            self._last_review = time.monotonic()
            try:
                await self.review()
            except Exception as e:
                log.warning("Budgets of hub %s: review failed (%s)", self.settings.hub_name, e)

    # ---- budgets while servers run ---------------------------------------------------

    def month_report(self, now=None, user=None, group=None):
        """This month's :class:`~mliy_spawner.costs.Report` of this hub (blocking)."""
        now = now or self.clock()
        month = costs.month_of(now, self.settings.timezone)
        intervals = self.store.usage_between(
            month.start, month.end, hub=self.settings.hub_name, user=user, group=group
        )
        return costs.report(intervals, month, now)

    def _budgets_in(self, report):
        """Every budget in force this month, with its spend: ``[(Budget, spent)]``."""
        # one pass over the lines (what costs.spent sums per budget, for all at once:
        # asking costs.spent per user budget would read every line once per user)
        found = []
        users_by_group = {}
        by_group = defaultdict(lambda: Decimal("0.00"))
        by_user = defaultdict(lambda: Decimal("0.00"))
        for line in report.lines:
            users_by_group.setdefault(line.group, set()).add(line.user)
            known = line.known_cost
            by_group[line.group] += known
            by_user[(line.user, line.group)] += known
        for group, (shared, member) in self.settings.group_budgets.items():
            if shared is not None:
                found.append((costs.Budget("group", group, group, shared), by_group[group]))
            for user in sorted(users_by_group.get(group, ())):
                amount = self.settings.user_budgets.get(user, member)
                if amount is not None:
                    budget = costs.Budget("user", user, group, amount)
                    found.append((budget, by_user[(user, group)]))
        return found

    async def review(self):
        """Notices at 80 % and 100 % of each budget; with ``budget_action = "stop"``,
        stop the running servers under a spent budget (their disks stay)."""
        report = await run_blocking(self.month_report)
        metrics.record_spend(report, per_user=self.settings.metrics_per_user)
        notices = {}
        over = []
        for budget, used in self._budgets_in(report):
            if budget.amount <= 0:
                share = Decimal(1)
            else:
                share = used / budget.amount
            level = max((lv for lv in NOTICE_LEVELS if share >= lv), default=None)
            if level is None:
                continue
            text = (
                f"{budget.label[0].upper()}{budget.label[1:]} is {int(min(share, 9) * 100)} % "
                f"spent: ${costs.money(used)} of ${costs.money(budget.amount)} this month."
            )
            members = (
                {ln.user for ln in report.lines if ln.group == budget.group}
                if budget.kind == "group"
                else {budget.name}
            )
            for user in members:
                notices.setdefault(user, []).append(text)
            told = (budget, report.month.key, level)
            if told not in self._told:
                self._told.add(told)
                log.warning("Budget notice (hub %s): %s", self.settings.hub_name, text)
            if level >= 1:
                over.append(budget)
        self.notices = notices
        if self.settings.budget_action == "stop" and over and self.stop_server is not None:
            await self._stop_over_budget(report, over)

    async def _stop_over_budget(self, report, over):
        for line in report.lines:
            if line.state != costs.RUNNING:
                continue
            for budget in over:
                if budget.group != line.group or (
                    budget.kind == "user" and budget.name != line.user
                ):
                    continue
                key = (line.user, line.server)
                if key in self._stopping:
                    break
                if self.is_active is not None and not self.is_active(line.user, line.server):
                    break
                reason = f"{budget.label} is spent (${costs.money(budget.amount)})"
                self._stopping.add(key)
                try:
                    log.warning(
                        "Stopping %s's server %r: %s", line.user, line.server or "(default)", reason
                    )
                    await self.stop_server(line.user, line.server, reason)
                    await run_blocking(
                        self.store.add_audit,
                        "budget-stop",
                        actor="mliy",
                        actor_kind="automatic",
                        path="automatic",
                        reason=reason,
                        user=line.user,
                        server_name=line.server,
                        instance_id=line.instance_id,
                    )
                except Exception as e:
                    log.error("Could not stop %s's server %r: %s", line.user, line.server, e)
                finally:
                    self._stopping.discard(key)
                break


class SpendGate:
    """Budgets and limits before a launch, serialised per hub, with reservations.

    One per hub process (and hub name). :meth:`check` raises :class:`LimitExceeded`, or
    returns a token; :meth:`release` it when the start ends.
    """

    def __init__(self):
        self._lock = asyncio.Lock()
        self._reserved = {}  # {token: (monotonic time, {Budget: Decimal})}
        self._next = 0

    def reserved(self):
        now = time.monotonic()
        totals = {}
        for token, (when, amounts) in list(self._reserved.items()):
            if now - when > RESERVATION_TTL:
                del self._reserved[token]
                continue
            for budget, amount in amounts.items():
                totals[budget] = totals.get(budget, Decimal(0)) + amount
        return totals

    async def check(self, budgets, read_report, first_hour):
        """Refuse (:class:`BudgetExceeded`) when a budget cannot take ``first_hour`` more;
        else reserve it and return a token for :meth:`release`.

        ``read_report()`` (blocking) gives the month's report with the spend that the
        budgets count; it is read under the lock, so concurrent checks see each other.
        """
        if not budgets:
            return None
        async with self._lock:
            report = await run_blocking(read_report)
            refusal = costs.check(budgets, report, first_hour, self.reserved())
            if refusal is not None:
                raise BudgetExceeded(refusal)
            self._next += 1
            token = self._next
            self._reserved[token] = (time.monotonic(), dict.fromkeys(budgets, first_hour))
            return token

    def release(self, token):
        if token is not None:
            self._reserved.pop(token, None)


class BudgetExceeded(Exception):
    def __init__(self, refusal):
        super().__init__(refusal.message)
        self.refusal = refusal


_gates = {}


def shared_gate(key):
    loop = asyncio.get_running_loop()
    full_key = (id(loop), *key)
    gate = _gates.get(full_key)
    if gate is None:
        gate = _gates[full_key] = SpendGate()
    return gate


__all__ = [
    "BudgetExceeded",
    "CostSettings",
    "Ledger",
    "SpendGate",
    "plan",
    "shared_gate",
    "usage_state",
]
