"""What the usage ledger costs the hub at 5,000 instances, per reflector cycle and per review.

Against a SQLite store in a temporary folder (and a throw-away PostgreSQL from
``tests/pg.py`` when Debian's ``postgresql`` is installed), with a :class:`Ledger` as the
spawner builds it and ``InstanceView`` objects as the reflector builds them (every tag the
hub sets, ``LaunchTime``, ``StateTransitionReason``'s time):

- upkeep (:meth:`Ledger.upkeep`, run in the pool after each reflector cycle, every 10 s):
  the first cycle (5,000 new instances: 5,000 intervals opened), a steady cycle (nothing
  changed: read the open intervals, compare, write nothing), and a cycle where 5 % of the
  instances changed state (250 closed and 250 opened, in one transaction);
- :meth:`Ledger.review` (the budget review, every 60 s: reads the whole month, builds the
  report, checks every budget) and :func:`costs.report` alone, for a month of 5,000
  servers: a quiet month (one running interval each since the 1st) and a busy one (each
  server started at 9:00 and stopped at 17:00 every day for 30 days: 60 intervals each,
  300,000 rows). Every user is in a launch group with a shared and a per-member budget,
  as the demo's students are.

The busy month is written with one bulk INSERT (the ledger writes it over a month). Times
are the median of several runs (best and worst beside). Run: ``python benchmarks/ledger.py``
(``make bench`` does); it rewrites its block in ``benchmarks/RESULTS.md``.
"""

import asyncio
import logging
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout

from results import postgres_databases, write_block  # noqa: E402  (benchmarks/results.py)
from sqlalchemy import insert  # noqa: E402

from mliy_spawner import costs, ledger  # noqa: E402
from mliy_spawner.reflector import HUB_TAG, InstanceView  # noqa: E402
from mliy_spawner.store import Store, _usage_row, usage  # noqa: E402

N = 5_000
CHANGED = 0.05
GROUPS = ("students", "analysts", "research", "ops")
HUB = "bench"
REGION = "us-east-1"
PRICE = Decimal("0.0116")
NOW = datetime(2026, 11, 30, 18, 0, tzinfo=UTC)  # late in the month: the most to read
MONTH = costs.month_of(NOW)
RUNS = 5


def views(n, state="running", changed=(), at=NOW):
    """``{instance id: InstanceView}`` for ``n`` instances, those in ``changed`` stopped."""
    found = {}
    for i in range(n):
        instance_id = f"i-{i:017x}"
        group = GROUPS[i % len(GROUPS)]
        tags = {
            HUB_TAG: HUB,
            "mliy:user": f"user{i}",
            "mliy:server": "",
            "mliy:launch-group": group,
            "mliy:software-config": "python",
            "mliy:volume-gib": "20",
            "aws:cloudformation:stack-id": f"arn:aws:cloudformation:{REGION}:1:stack/s{i}/x",
            "Name": f"mliy-{HUB}-user{i}",
        }
        stopped = i in changed
        found[instance_id] = InstanceView(
            instance_id=instance_id,
            state="stopped" if stopped else state,
            private_ip=None if stopped else f"10.0.{i // 250}.{i % 250}",
            instance_type="t3.medium" if i % 2 else "t2.micro",
            stack_id=tags["aws:cloudformation:stack-id"],
            tags=tags,
            launch_time=MONTH.start + timedelta(minutes=i % 600),
            transition_time=at - timedelta(seconds=5) if stopped else None,
        )
    return found


def settings():
    return ledger.CostSettings(
        hub_name=HUB,
        region=REGION,
        group_budgets={g: (Decimal("100000"), Decimal("200")) for g in GROUPS},
    )


def timed(fn, runs=RUNS):
    times = []
    result = None
    for _ in range(runs):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return times, result


def fmt(times):
    ms = [t * 1000 for t in times]
    if len(ms) == 1:
        return f"{ms[0]:8.1f} ms"
    return f"{statistics.median(ms):8.1f} ms (best {min(ms):.1f}, worst {max(ms):.1f})"


def bench_upkeep(url, lines):
    store = Store(url)
    book = ledger.Ledger(store, settings(), lambda t: PRICE)
    steady = views(N)
    (first,), (close, opened) = timed(lambda: book.upkeep(steady, now=NOW), runs=1)
    assert (len(close), len(opened)) == (0, N), (len(close), len(opened))
    later = NOW + timedelta(seconds=10)
    steady_times, result = timed(lambda: book.upkeep(steady, now=later))
    assert result == ([], [])
    # each run stops another 5 % (and the next starts them again): 250 closed, 250 opened
    count = int(N * CHANGED)
    change_times = []
    for run in range(RUNS):
        at = later + timedelta(seconds=10 * (run + 1))
        picked = set(range(run * count, (run + 1) * count))
        changed = views(N, changed=picked, at=at)
        started = time.perf_counter()
        close, opened = book.upkeep(changed, now=at)
        change_times.append(time.perf_counter() - started)
        assert (len(close), len(opened)) == (count, count), (len(close), len(opened))
        book.upkeep(steady, now=at + timedelta(seconds=5))  # back to running (not timed)
    lines.append(f"  first cycle ({N:,} intervals opened):  {fmt([first])}")
    lines.append(f"  steady cycle (nothing changed):     {fmt(steady_times)}")
    lines.append(f"  {CHANGED:.0%} changed ({count} closed + {count} opened): {fmt(change_times)}")
    ratio = statistics.median(steady_times) / first
    lines.append(
        f"  steady / first: {ratio:.2f}x; per instance in a steady cycle: "
        f"{statistics.median(steady_times) / N * 1e6:.0f} us"
    )
    store.close()
    return statistics.median(steady_times)


def month_rows(busy):
    """Closed intervals for the month up to NOW (and the open ones at the end)."""
    rows = []
    for i in range(N):
        base = dict(
            hub=HUB,
            user=f"user{i}",
            server="",
            group=GROUPS[i % len(GROUPS)],
            config="python",
            instance_id=f"i-{i:017x}",
            instance_type="t3.medium" if i % 2 else "t2.micro",
            region=REGION,
            volume_gib=20,
            gib_month_usd=Decimal("0.08"),
        )
        if not busy:
            rows.append(
                costs.Interval(**base, state="running", start=MONTH.start, hourly_usd=PRICE)
            )
            continue
        cursor = MONTH.start
        for day in range(30):
            on = MONTH.start + timedelta(days=day, hours=9)
            off = on + timedelta(hours=8)
            is_last = day == 29
            rows.append(costs.Interval(**base, state="stopped", start=cursor, end=on))
            rows.append(
                costs.Interval(
                    **base,
                    state="running",
                    start=on,
                    end=None if is_last and off > NOW else min(off, NOW),
                    hourly_usd=PRICE,
                )
            )
            cursor = off
        if cursor < NOW:
            rows.append(costs.Interval(**base, state="stopped", start=cursor))
    return rows


def bench_month(url, busy, lines):
    store = Store(url)
    rows = month_rows(busy)
    started = time.perf_counter()
    with store._write() as conn, conn.begin():
        for chunk in range(0, len(rows), 10_000):
            conn.execute(insert(usage), [_usage_row(r) for r in rows[chunk : chunk + 10_000]])
    written = time.perf_counter() - started
    book = ledger.Ledger(store, settings(), lambda t: PRICE, clock=lambda: NOW)
    read_times, intervals = timed(
        lambda: store.usage_between(MONTH.start, MONTH.end, hub=HUB), runs=3
    )
    report_times, report = timed(lambda: costs.report(intervals, MONTH, NOW), runs=3)
    budget_times, budgets = timed(lambda: book._budgets_in(report), runs=3)
    review_times, _ = timed(lambda: asyncio.run(book.review()), runs=3)
    assert len(report.lines) == N and len(budgets) == len(GROUPS) + N
    label = "busy" if busy else "quiet"
    lines.append(
        f"  {label} month: {len(rows):,} intervals (written in {written:.1f} s), "
        f"{len(report.lines):,} servers, total ${report.total:,}"
    )
    lines.append(f"    store.usage_between (the month):  {fmt(read_times)}")
    lines.append(f"    costs.report:                     {fmt(report_times)}")
    lines.append(f"    budgets checked ({len(budgets):,}):         {fmt(budget_times)}")
    lines.append(f"    Ledger.review (all of it):        {fmt(review_times)}")
    store.close()


def run_all(url, name, lines):
    lines.append(f"{name}: upkeep per reflector cycle, {N:,} instances")
    bench_upkeep(url, lines)
    for busy in (False, True):
        lines.append(f"{name}: budget review and month report, {N:,} servers")
        bench_month(url.replace("upkeep", "busy" if busy else "quiet"), busy, lines)


def with_postgres(lines):
    with postgres_databases([f"ledger_{n}" for n in ("upkeep", "quiet", "busy")], lines) as urls:
        if urls:
            run_all(urls["ledger_upkeep"], "PostgreSQL", lines)


def write_results(lines):
    write_block("ledger.py", "## Ledger (`python benchmarks/ledger.py`)", lines)


def main():
    logging.getLogger("mliy").setLevel(logging.ERROR)  # the review's budget notices
    lines = [
        f"Python {sys.version.split()[0]} on {sys.platform}; median of {RUNS} (3 for the month)"
    ]
    with tempfile.TemporaryDirectory(prefix="mliy-bench-ledger-") as tmp:
        run_all(f"sqlite:///{tmp}/upkeep.sqlite", "SQLite", lines)
    with_postgres(lines)
    print("\n".join(lines))
    write_results(lines)


if __name__ == "__main__":
    main()
