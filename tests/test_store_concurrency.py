"""Fifty writers at once on one store, on SQLite and on PostgreSQL (``store_url``).

Two processes (the hub and the ``mliy`` service share the store that way), 25 threads
each, one :class:`Store` per process, all starting at one moment (the first query runs
the migrations, so they race there too). Each writer reports progress, records its
instance, tries to use a bootstrap code that four other writers try too, opens and
closes usage intervals and writes audit rows. Afterwards: no writer failed (no
"database is locked", no deadlock: every writer finished), no row is lost or doubled,
and every code was used. Then ten writers race for one bootstrap code, many times over:
exactly one gets its token each time.
"""

import multiprocessing
import threading
import traceback
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from mliy_spawner.costs import RUNNING, Interval
from mliy_spawner.store import Store

PROCESSES = 2
THREADS = 25  # per process: 50 writers in all
ROUNDS = 5
CODES = 10  # each code is tried by PROCESSES * THREADS // CODES writers
START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def code_id(n):
    return f"code-{n:02d}"


def writer_name(process, thread):
    return f"w{process}-{thread:02d}"


def one_writer(store, name, number, start_line):
    """One writer's work; returns what it won and wrote (the test checks the database)."""
    instance_id = f"i-{name}"
    won = []
    start_line.wait(60)
    for r in range(ROUNDS):
        store.add_progress(instance_id, f"step {r}", r * 20, False)
        store.record_instance(instance_id, name, "", f"stack-{r}", "us-east-1")
        if r == 0:
            code = code_id(number % CODES)
            if store.use_bootstrap_code(code) is not None:
                won.append(code)
        begin = START + timedelta(hours=r)
        interval = Interval(
            user=name,
            server="",
            group="analysts",
            config="python",
            instance_id=instance_id,
            instance_type="m4.large",
            region="us-east-1",
            state=RUNNING,
            start=begin,
            hourly_usd=Decimal("0.108"),
            hub="concurrency",
        )
        (opened,) = store.update_usage(open=[interval])
        store.update_usage(close=[(opened, begin + timedelta(minutes=30))])
        store.add_audit(
            "progress", actor=name, actor_kind="service", user=name, instance_id=instance_id
        )
    return won


def run_writers(url, process, barrier=None):
    """``THREADS`` writers on one store in this process; returns {"won": [...], "errors": [...]}."""
    store = Store(url)
    start_line = threading.Barrier(THREADS)
    won, errors = [], []
    lock = threading.Lock()

    def work(thread):
        try:
            got = one_writer(
                store, writer_name(process, thread), process * THREADS + thread, start_line
            )
            with lock:
                won.extend(got)
        except Exception:
            with lock:
                errors.append(traceback.format_exc())

    threads = [threading.Thread(target=work, args=(t,), daemon=True) for t in range(THREADS)]
    if barrier is not None:
        barrier.wait(120)  # the other process is ready too
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    hung = [t.name for t in threads if t.is_alive()]
    store.close()
    return {"won": won, "errors": errors, "hung": hung}


def _child(url, barrier, results):
    results.put(run_writers(url, 1, barrier))


def test_fifty_writers_lose_no_row_and_never_lock(store_url):
    setup = Store(store_url)
    for n in range(CODES):
        # one code per server: a new code replaces the server's earlier ones
        setup.add_bootstrap_code(code_id(n), f"owner{n}", "", f"sealed-{n}", ttl=600)
    setup.close()

    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(PROCESSES), ctx.Queue()
    child = ctx.Process(target=_child, args=(store_url, barrier, results))
    child.start()
    try:
        here = run_writers(store_url, 0, barrier)
        there = results.get(timeout=600)
    finally:
        child.join(60)
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0

    for outcome in (here, there):
        assert outcome["errors"] == []
        assert outcome["hung"] == []  # a writer still waiting: a deadlock

    # every code was used (that exactly one writer gets each: the test below)
    assert sorted(set(here["won"] + there["won"])) == [code_id(n) for n in range(CODES)]

    writers = [writer_name(p, t) for p in range(PROCESSES) for t in range(THREADS)]
    store = Store(store_url)
    try:
        for name in writers:
            steps = [(r.step, r.percent) for r in store.progress(f"i-{name}")]
            assert steps == [(f"step {r}", r * 20) for r in range(ROUNDS)], name
            owner = store.owner(f"i-{name}")
            assert (owner.user, owner.stack_id) == (name, f"stack-{ROUNDS - 1}")
        intervals = store.usage_between(START, START + timedelta(days=1), hub="concurrency")
        assert len(intervals) == len(writers) * ROUNDS
        assert len({i.id for i in intervals}) == len(intervals)
        assert all(i.end == i.start + timedelta(minutes=30) for i in intervals)
        assert sorted((i.user, i.start) for i in intervals) == sorted(
            (name, START + timedelta(hours=r)) for name in writers for r in range(ROUNDS)
        )
        entries = store.audit_entries(action="progress", limit=10_000)
        assert sorted(e.user for e in entries) == sorted(writers * ROUNDS)
    finally:
        store.close()


def test_one_bootstrap_code_raced_by_ten_writers_goes_to_exactly_one(store_url):
    store = Store(store_url)
    contenders, trials = 10, 20
    doubled = []
    try:
        for trial in range(trials):
            code = f"raced-{trial}"
            store.add_bootstrap_code(code, "alice", "", f"sealed-{trial}", ttl=600)
            start_line = threading.Barrier(contenders)
            tokens = []

            def use(code=code, start_line=start_line, tokens=tokens):
                start_line.wait(60)
                tokens.append(store.use_bootstrap_code(code))

            threads = [threading.Thread(target=use, daemon=True) for _ in range(contenders)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            assert not [t for t in threads if t.is_alive()]
            winners = [t for t in tokens if t is not None]
            if winners != [f"sealed-{trial}"]:
                doubled.append((trial, winners))
    finally:
        store.close()
    assert doubled == []
