"""Prometheus metrics of the hub's process, in ``prometheus_client``'s default registry.

JupyterHub serves that registry at ``/hub/metrics`` (its ``MetricsHandler``:
``generate_latest(REGISTRY)``, behind the ``read:metrics`` scope unless
``JupyterHub.authenticate_prometheus = False``), so these appear beside the hub's own
``jupyterhub_*`` metrics. Names follow Prometheus' conventions: a ``mliy_`` prefix, base
units in the name (``_seconds``, ``_usd``), ``_total`` on counters.

No label carries a user name (user names make unbounded label sets), except
``mliy_user_month_spend_usd`` when ``MLiySpawner.metrics_per_user`` is set.

Who moves what:

- the spawner: ``mliy_spawn_duration_seconds`` (:func:`spawn_succeeded`) and
  ``mliy_spawn_failures_total`` (:func:`spawn_failed`, with :func:`failure_reason`);
- the reflector: ``mliy_reflector_cycle_duration_seconds``, ``mliy_reflector_errors_total``,
  and it registers itself (:func:`track_reflector`) so that ``mliy_stacks``,
  ``mliy_instances`` and ``mliy_reflector_cache_age_seconds`` are read from the live
  reflectors' views when Prometheus scrapes (an age set at the end of a cycle would
  stop growing exactly when the reflector is stuck);
- :mod:`mliy_spawner.aws`: ``mliy_aws_calls_total`` (:func:`count_aws_call`);
- the reconciler: ``mliy_reconciler_findings`` (:func:`set_findings`);
- the ledger's budget review: ``mliy_cost_rate_usd_per_hour``, ``mliy_month_spend_usd``
  (:func:`record_spend`).

Money is Decimal everywhere else; ``float()`` here, at the metric boundary, only.
"""

import asyncio
import threading
import weakref
from collections import Counter as Tally
from decimal import Decimal

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

from . import costs

INF = float("inf")

# ---- spawns --------------------------------------------------------------------------

#: a launch takes minutes (stack, boot, user data), a resume well under one
SPAWN_BUCKETS = (10, 30, 60, 120, 180, 300, 450, 600, 900, 1200, 1800, INF)

SPAWN_DURATION = Histogram(
    "mliy_spawn_duration_seconds",
    "Seconds from Spawner.start() to a ready server, for starts that succeeded "
    "(launches and resumes), by software configuration",
    ["software_config"],
    buckets=SPAWN_BUCKETS,
)

#: the reasons of ``mliy_spawn_failures_total``; each exists (at 0) from the start
FAILURE_REASONS = ("stack", "timeout", "instance_setup", "budget", "limit", "validation", "other")

SPAWN_FAILURES = Counter(
    "mliy_spawn_failures_total",
    "Starts that failed or were refused, by reason: stack (CloudFormation failed or "
    "refused), timeout, instance_setup (the instance's user data failed), budget, "
    "limit, validation (bad options or configuration), other",
    ["reason"],
)
for _reason in FAILURE_REASONS:
    SPAWN_FAILURES.labels(_reason)

# the spawner's SpawnException reasons (mliy_spawner.util.user_error) -> metric reasons
_SPAWN_REASONS = {
    "stack": "stack",
    "create-stack": "stack",
    "stack-taken": "stack",
    "delete-pending": "stack",
    "instance-setup": "instance_setup",
    "invalid-options": "validation",
    "user-data": "validation",
    "budget": "budget",
    "limit": "limit",
}


def failure_reason(error, elapsed=None, start_timeout=None):
    """The ``mliy_spawn_failures_total`` reason for ``error`` raised by a start, or None
    when it is no failure.

    A cancelled start is a timeout when it ran for (about) ``start_timeout``: JupyterHub
    cancels ``start()`` at its ``start_timeout`` (``asyncio.wait_for``). Cancelled
    earlier, someone stopped the pending spawn: not counted.
    """
    if isinstance(error, asyncio.CancelledError):
        if start_timeout and elapsed is not None and elapsed >= 0.9 * start_timeout:
            return "timeout"
        return None
    if isinstance(error, TimeoutError):
        return "timeout"
    reason = _SPAWN_REASONS.get(getattr(error, "mliy_reason", None))
    if reason is not None:
        return reason
    if getattr(error, "status_code", None) == 400:
        return "validation"
    return "other"


def spawn_succeeded(software_config, seconds):
    SPAWN_DURATION.labels(software_config or "").observe(seconds)


def spawn_failed(reason):
    """Count a failed or refused start (``reason`` from :data:`FAILURE_REASONS`; None:
    nothing to count)."""
    if reason is not None:
        SPAWN_FAILURES.labels(reason if reason in FAILURE_REASONS else "other").inc()


# ---- the reconciler ------------------------------------------------------------------

#: What a reconciler finds (:class:`mliy_spawner.reconcile.Finding` kinds).
FINDING_KINDS = ("orphan", "missing-stack", "delete-failed", "delete-gave-up", "dormant")

RECONCILER_FINDINGS = Gauge(
    "mliy_reconciler_findings",
    "What the reconciler's latest cycle found, by region and kind: orphan (a stack of "
    "this hub no server names), missing-stack (a server whose stack is gone), "
    "delete-failed (being deleted again), delete-gave-up (retries used up: needs an "
    "admin), dormant (stopped longer than dormant_after)",
    ["region", "kind"],
)


def set_findings(region, counts):
    """Set ``mliy_reconciler_findings`` for ``region`` from ``counts`` ({kind: n})."""
    for kind in FINDING_KINDS:
        RECONCILER_FINDINGS.labels(region, kind).set(counts.get(kind, 0))


# ---- the reflector -------------------------------------------------------------------

REFLECTOR_CYCLE_DURATION = Histogram(
    "mliy_reflector_cycle_duration_seconds",
    "Seconds one reflector cycle spent reading AWS (DescribeInstances, DescribeStacks), "
    "failed cycles included",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, INF),
)

REFLECTOR_ERRORS = Counter(
    "mliy_reflector_errors_total",
    "Reflector cycles that failed; the reflector keeps its last view and backs off",
)

_reflectors = weakref.WeakSet()
_reflectors_lock = threading.Lock()


def track_reflector(reflector):
    """Report ``reflector``'s view in the fleet gauges while its task runs."""
    with _reflectors_lock:
        _reflectors.add(reflector)


def _live_reflectors():
    with _reflectors_lock:
        reflectors = list(_reflectors)
    live = []
    for reflector in reflectors:
        task = getattr(reflector, "_task", None)
        if task is None or task.done() or getattr(reflector, "_stopping", False):
            continue
        if task.get_loop().is_closed():
            continue
        live.append(reflector)
    return live


def fleet_counts(reflectors):
    """``(stacks by status, instances by (state, type))`` over the views of ``reflectors``."""
    by_status = Tally()
    by_state = Tally()
    for reflector in reflectors:
        for view in list(reflector.stacks.values()):
            by_status[view.status] += 1
        for view in list(reflector.instances.values()):
            by_state[(view.state, view.instance_type)] += 1
    return by_status, by_state


class FleetCollector:
    """``mliy_stacks``, ``mliy_instances`` and ``mliy_reflector_cache_age_seconds``,
    read from the live reflectors at each scrape."""

    def describe(self):
        return self._families()

    def _families(self):
        return [
            GaugeMetricFamily(
                "mliy_stacks",
                "This hub's CloudFormation stacks in the reflectors' view, by stack status",
                labels=["status"],
            ),
            GaugeMetricFamily(
                "mliy_instances",
                "This hub's EC2 instances in the reflectors' view, by state and instance type",
                labels=["state", "instance_type"],
            ),
            GaugeMetricFamily(
                "mliy_reflector_cache_age_seconds",
                "Seconds since the oldest running reflector's last successful cycle began "
                "(+Inf before its first); absent while no reflector runs",
            ),
        ]

    def collect(self):
        stacks, instances, age = self._families()
        reflectors = _live_reflectors()
        by_status, by_state = fleet_counts(reflectors)
        for status, count in sorted(by_status.items()):
            stacks.add_metric([status], count)
        for (state, instance_type), count in sorted(by_state.items()):
            instances.add_metric([state, instance_type], count)
        if reflectors:
            age.add_metric([], max(r.age for r in reflectors))
        return [stacks, instances, age]


FLEET = FleetCollector()
REGISTRY.register(FLEET)

# ---- AWS calls -----------------------------------------------------------------------

AWS_CALLS = Counter(
    "mliy_aws_calls_total",
    "Requests sent to AWS (each attempt: botocore's retries count, as AWS's rate limits "
    "count them), by service, operation and outcome: ok, throttled, error",
    ["service", "operation", "outcome"],
)

#: the error codes AWS answers a throttled request with
THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "RequestThrottled",
        "RequestThrottledException",
        "SlowDown",
        "PriorRequestNotComplete",
    }
)


def call_outcome(error_code):
    """``ok``, ``throttled`` or ``error`` for an answer with ``error_code`` (None: none)."""
    if not error_code:
        return "ok"
    return "throttled" if error_code in THROTTLING_CODES else "error"


def count_aws_call(service, operation, outcome):
    AWS_CALLS.labels(service, operation, outcome).inc()


# ---- money ---------------------------------------------------------------------------

COST_RATE = Gauge(
    "mliy_cost_rate_usd_per_hour",
    "Dollars per hour of the servers running now (compute, at the catalog's price; "
    "unknown prices not included), by launch group; updated at each budget review",
    ["launch_group"],
)

MONTH_SPEND = Gauge(
    "mliy_month_spend_usd",
    "Dollars spent this month (the usage ledger's known costs), by launch group; "
    "updated at each budget review",
    ["launch_group"],
)

USER_MONTH_SPEND = Gauge(
    "mliy_user_month_spend_usd",
    "Dollars spent this month by each user; only with MLiySpawner.metrics_per_user",
    ["user"],
)

_money_lock = threading.Lock()
_set_labels = {}  # {gauge: set of label tuples set last time}


def _replace(gauge, values):
    """Set ``gauge`` to ``values`` ({label tuple: Decimal}); labels gone since the last
    call are removed (a group with no server this month is no longer reported)."""
    with _money_lock:
        previous = _set_labels.get(gauge, set())
        for labels in previous - set(values):
            try:
                gauge.remove(*labels)
            except KeyError:
                pass
        for labels, value in values.items():
            gauge.labels(*labels).set(float(value))  # the one place money becomes float
        _set_labels[gauge] = set(values)


def spend_by_group(report):
    """``({group: $/hour of its running servers}, {group: month-to-date spend})`` of a
    :class:`~mliy_spawner.costs.Report` (Decimals)."""
    rates, spend = {}, {}
    for line in report.lines:
        spend[line.group] = spend.get(line.group, Decimal("0.00")) + line.known_cost
        rates.setdefault(line.group, Decimal("0"))
        if line.state == costs.RUNNING and line.hourly_usd is not None:
            rates[line.group] += line.hourly_usd
    return rates, spend


def spend_by_user(report):
    spend = {}
    for line in report.lines:
        spend[line.user] = spend.get(line.user, Decimal("0.00")) + line.known_cost
    return spend


def record_spend(report, per_user=False):
    """Set the money gauges from this month's report (the ledger's review)."""
    rates, spend = spend_by_group(report)
    _replace(COST_RATE, {(group,): value for group, value in rates.items()})
    _replace(MONTH_SPEND, {(group,): value for group, value in spend.items()})
    users = spend_by_user(report) if per_user else {}
    _replace(USER_MONTH_SPEND, {(user,): value for user, value in users.items()})
