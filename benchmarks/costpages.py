"""What the cost pages and the costs API cost for 200 users over a 31-day month.

A real hub on loopback (``tests/servicehub.py``: ``jupyterhub``, configurable-http-proxy,
the ``mliy`` service as its own process) reads a store seeded with a closed 31-day month
of usage: 200 users in 4 launch groups, each day 0-3 sessions a user (a running interval
each, stopped-with-volume between them), every 10th user a second ``gpu`` server, every
25th an instance type the catalog lacks (unknown price), every 5th without an extra
volume, every 20th still running at the month's end, every 40th orphaned (no server of
the hub records its instance). The store is SQLite in a temporary folder, then a
throw-away PostgreSQL (``tests/pg.py``, when Debian's ``postgresql`` is installed: the
service reads it through ``MLIY_STORE_URL``).

Timed through the proxy, in sequence, after one warm-up request each (p50 and p95 of
20): the Billing page as a hub admin, ``api/costs`` (JSON) and ``api/costs.csv`` as an
admin (every server), and one user's My costs page. Then in this process: what each
request computes (``costviews.read_report``: ``store.usage_between`` and
``costs.report``), before and after the speedup of both. "Before" runs the code as it
was: ``costs.py`` of commit ``BEFORE`` (``git show``) loaded as its own module, and the
old ``usage_between`` (the same query, each row through ``store._interval``); each
before/after pair is checked to give the same intervals and the same report to the cent.
Last, ``costs.report`` alone on 1,000 and 5,000 users' months built in memory.

Run: ``python benchmarks/costpages.py`` (``make bench`` does); it rewrites its block in
``benchmarks/RESULTS.md``.
"""

import importlib.util
import json
import logging
import math
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout
sys.path.insert(0, str(ROOT / "tests"))  # servicehub, pg

from results import postgres_databases, write_block  # noqa: E402  (benchmarks/results.py)
from servicehub import start_hub  # noqa: E402
from sqlalchemy import insert, select  # noqa: E402

from mliy_spawner import costs, costviews  # noqa: E402
from mliy_spawner.store import Store, _interval, _naive, _usage_row, usage  # noqa: E402

USERS = 200
GROUPS = ("students", "analysts", "research", "ops")
HUB = "bench"
REGION = "us-east-1"
TYPES = (("t3.medium", Decimal("0.0416")), ("t2.micro", Decimal("0.0116")))
GIB_MONTH = Decimal("0.08")
REQUESTS = 20
SCALES = (1_000, 5_000)
OLD_UP_TO = 1_000  # the old report takes about a minute at 5,000 users
# the last commit whose costs.py and usage_between are the ones before the speedup
BEFORE = "361c4082fb9a49e29bcfa8ee2796aab2ad0e0321"
ME = "user7"


def closed_month(now):
    """The latest month before ``now``'s with 31 days (UTC): nothing in it changes."""
    month = costs.month_of(now)
    while True:
        year, number = divmod(month.year * 12 + month.month - 2, 12)
        month = costs.Month(year, number + 1)
        if len(month.days()) == 31:
            return month


def month_usage(month, users):
    """The intervals of ``users`` users over ``month`` (see the module's docstring)."""
    rows = []
    for u in range(users):
        instance_type, hourly = TYPES[u % 2]
        if u % 25 == 3:
            instance_type, hourly = "x9.huge", None  # the catalog lacks it
        base = dict(
            hub=HUB,
            user=f"user{u}",
            group=GROUPS[u % len(GROUPS)],
            config="python" if u % 3 else "r",
            region=REGION,
            volume_gib=0 if u % 5 == 4 else 20,
            gib_month_usd=GIB_MONTH,
        )
        servers = [("", f"i-{u:017x}", instance_type, hourly)]
        if u % 10 == 0:
            servers.append(("gpu", f"i-{u + 1_000_000:017x}", "p2.xlarge", Decimal("0.90")))
        for server, instance_id, itype, price in servers:
            one = dict(base, server=server, instance_id=instance_id, instance_type=itype)
            if server == "gpu":
                one["volume_gib"] = 100
            cursor = month.start
            for day, day_start in enumerate(month._calendar.bounds[:-1]):
                sessions = (u + day) % 4 if server == "" else int(day % 6 == 0)
                for k in range(sessions):
                    on = day_start + timedelta(hours=8 + 4 * k, minutes=u % 60)
                    off = on + timedelta(hours=2, minutes=(u * 7 + day) % 90)
                    rows.append(costs.Interval(**one, state="stopped", start=cursor, end=on))
                    rows.append(
                        costs.Interval(**one, state="running", start=on, end=off, hourly_usd=price)
                    )
                    cursor = off
            # the month ends with it stopped (or, every 20th, running), still open
            last = "running" if u % 20 == 7 and server == "" else "stopped"
            rows.append(costs.Interval(**one, state=last, start=cursor, hourly_usd=price))
    return rows


def seed(store, rows):
    with store._write() as conn, conn.begin():
        for chunk in range(0, len(rows), 10_000):
            conn.execute(insert(usage), [_usage_row(r) for r in rows[chunk : chunk + 10_000]])
    for r in rows:
        if r.start == rows[0].start and int(r.user[4:]) % 40 != 39:
            store.record_instance(r.instance_id, r.user, r.server, "", REGION)


def old_costs():
    """``costs.py`` as it was at ``BEFORE``, as its own module (None without git)."""
    try:
        source = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{BEFORE}:mliy_spawner/costs.py"],
            capture_output=True,
            check=True,
            text=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = Path(tempfile.mkdtemp(prefix="mliy-bench-costs-")) / "costs_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("costs_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def old_usage_between(store, start, end, hub):
    """``Store.usage_between`` as it was: the same query, each row through ``_interval``."""
    query = select(usage).where(
        usage.c.start < _naive(end),
        (usage.c.end.is_(None)) | (usage.c.end > _naive(start)),
        usage.c.hub == hub,
    )
    with store._read() as conn:
        return [_interval(row) for row in conn.execute(query.order_by(usage.c.id))]


def percentile(values, p):
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def ms(seconds):
    return f"{seconds * 1000:7.1f} ms"


def timed(fn, runs):
    times, result = [], None
    for _ in range(runs):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return times, result


def spread(times):
    return f"p50 {ms(percentile(times, 50))}, p95 {ms(percentile(times, 95))}"


def bench_pages(hub, month, lines):
    """Time the four requests through the proxy; returns the admin's JSON."""
    admin = hub.browser("root")
    mine = hub.browser(ME)
    token = {"Authorization": f"token {hub.tokens['root']}"}
    query = f"month={month.key}"
    calls = [
        ("Billing page (admin)", admin, f"costs/billing?{query}", {}),
        ("api/costs JSON (admin)", hub.session, f"api/costs?{query}", token),
        ("api/costs.csv (admin)", hub.session, f"api/costs.csv?{query}", token),
        (f"My costs page ({ME})", mine, f"costs?{query}", {}),
    ]
    answers = {}
    try:
        for label, session, path, headers in calls:
            url = f"{hub.service_url}/{path}"

            def get(session=session, url=url, headers=headers):
                r = session.get(url, headers=headers, timeout=120)
                assert r.status_code == 200, (url, r.status_code, r.text[:300])
                return r

            get()  # warm-up: the login's OAuth round trip, template loading
            times, r = timed(get, REQUESTS)
            answers[path] = r
            lines.append(f"  {label:26} {spread(times)}; {len(r.content):>9,} bytes")
    finally:
        admin.close()
        mine.close()
    return answers[f"api/costs?{query}"].json()


def bench_compute(store, month, now, before, lines):
    """``read_report`` in this process, after and before; the results must agree."""
    runs = 5
    read_after, intervals = timed(
        lambda: store.usage_between(month.start, month.end, hub=HUB), runs
    )
    report_after, report = timed(lambda: costs.report(intervals, month, now), runs)
    read_before, old_intervals = timed(
        lambda: old_usage_between(store, month.start, month.end, HUB), runs
    )
    assert [repr(i) for i in old_intervals] == [repr(i) for i in intervals]
    lines.append(f"  {len(intervals):,} intervals, {len(report.lines):,} servers")
    lines.append(
        f"  store.usage_between:  after {ms(min(read_after))}, before {ms(min(read_before))}"
        f"  ({min(read_before) / min(read_after):.1f}x)"
    )
    if before is None:
        lines.append(f"  costs.report:         after {ms(min(report_after))} (no git: no before)")
    else:
        old_month = before.Month(month.year, month.month, month.tz)
        report_before, old_report = timed(lambda: before.report(intervals, old_month, now), 3)
        assert costviews.as_json(old_report) == costviews.as_json(report)
        assert old_report.per_day() == report.per_day()
        lines.append(
            f"  costs.report:         after {ms(min(report_after))}, before "
            f"{ms(min(report_before))}  ({min(report_before) / min(report_after):.1f}x)"
        )
    total = min(read_after) + min(report_after)
    per = total / len(intervals) * 1e6
    lines.append(f"  read_report (both):   after {ms(total)}, per interval {per:.1f} us")
    return report


def bench_scale(month, now, before, lines):
    lines.append("costs.report alone on months built in memory (best of 3)")
    for users in SCALES:
        rows = month_usage(month, users)
        after, report = timed(partial(costs.report, rows, month, now), 3)
        text = f"  {users:>5,} users, {len(rows):>9,} intervals: after {ms(min(after))}"
        if before is not None and users <= OLD_UP_TO:
            old_month = before.Month(month.year, month.month, month.tz)
            old, old_report = timed(partial(before.report, rows, old_month, now), 1)
            assert costviews.as_json(old_report) == costviews.as_json(report)
            text += f", before {ms(min(old))} ({min(old) / min(after):.1f}x)"
        lines.append(text)


def run_hub(name, root, month, now, rows, before, lines, store_url=None):
    environment = {"MLIY_ADDRESS_RATE": "1000", "MLIY_ADDRESS_BURST": "100000"}
    if store_url is not None:
        environment["MLIY_STORE_URL"] = store_url
    hub = start_hub(root, environment=environment)
    try:
        store = Store(store_url or hub.store_url)
        started = time.perf_counter()
        seed(store, rows)
        seeded = time.perf_counter() - started
        hub.create_user("root", admin=True)
        hub.create_user(ME)
        hub.tokens = {"root": hub.user_token("root")}
        lines.append(
            f"{name}: {USERS} users, {len(rows):,} intervals in {month.key} "
            f"(seeded in {seeded:.1f} s); through the proxy, {REQUESTS} requests each"
        )
        data = bench_pages(hub, month, lines)
        lines.append(f"{name}: what each request computes, in this process (best of 5)")
        report = bench_compute(store, month, now, before, lines)
        assert data == json.loads(json.dumps(costviews.as_json(report)))
        store.close()
    finally:
        hub.stop()


def with_postgres(root, month, now, rows, before, lines):
    with postgres_databases(["costpages"], lines) as urls:
        if urls:
            url = urls["costpages"]
            run_hub("PostgreSQL", root, month, now, rows, before, lines, store_url=url)


def write_results(lines):
    write_block("costpages.py", "## Cost pages (`python benchmarks/costpages.py`)", lines)


def main():
    logging.getLogger("mliy").setLevel(logging.ERROR)
    now = datetime.now(UTC)
    month = closed_month(now)
    rows = month_usage(month, USERS)
    before = old_costs()
    lines = [f"Python {sys.version.split()[0]} on {sys.platform}; month {month.key}"]
    with tempfile.TemporaryDirectory(prefix="mliy-bench-costpages-") as tmp:
        run_hub("SQLite", Path(tmp) / "sqlite", month, now, rows, before, lines)
        with_postgres(Path(tmp) / "postgresql", month, now, rows, before, lines)
    bench_scale(month, now, before, lines)
    print("\n".join(lines))
    write_results(lines)


if __name__ == "__main__":
    main()
