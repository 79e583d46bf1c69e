"""What the reconciler's read of JupyterHub's database costs the hub's event loop.

Every ``reconcile_interval`` (600 s by default) each region's reconciler reads every
server's state from the hub's own database (:func:`reconcile.hub_server_states`). That
session is bound to the hub's loop, so the read runs on it and the hub answers nothing
meanwhile. For N = 100, 1,000 and 5,000 users, each with a default server holding mliy
state (one in ten running) and a named server without it, in JupyterHub's own tables
(``jupyterhub.orm``) on SQLite in a temporary folder and on a throw-away PostgreSQL
(``tests/pg.py``, when Debian's ``postgresql`` is installed), it times:

- the read as it is: one query for the columns it needs, joined to the users;
- the read as it was before (``per_row``, kept here to compare): every ``orm.Spawner``
  loaded, then its ``user`` and its ``server`` reached per row, each a query of its own.

Statements are counted with SQLAlchemy's ``before_cursor_execute`` event; each read starts
from a fresh session, as a cycle ten minutes after the last finds the rows expired. Run:
``python benchmarks/hubread.py`` (``make bench`` does); it rewrites its block in
``benchmarks/RESULTS.md``.
"""

import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout

from jupyterhub import orm  # noqa: E402
from results import postgres_databases, write_block  # noqa: E402  (benchmarks/results.py)
from sqlalchemy import create_engine, event, insert  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from mliy_spawner import reconcile  # noqa: E402

SIZES = [100, 1_000, 5_000]
RUNS = 5
RUNNING = 10  # one server in this many is running


def per_row(db):
    """The read before: an ``orm.Spawner`` per row, its user and server loaded apart."""
    found = []
    for row in db.query(orm.Spawner):
        mine = (row.state or {}).get("mliy") or {}
        active = row.server is not None
        if (mine.get("stack_id") or active) and row.user is not None:
            found.append((row.user.name, row.name, mine.get("stack_id"), active))
    return found


def fill(engine, n):
    """``n`` users, each with a default server holding mliy state and a named one without."""
    orm.Base.metadata.drop_all(engine)
    orm.Base.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert(orm.User), [{"id": i + 1, "name": f"user{i}"} for i in range(n)])
        running = range(0, n, RUNNING)
        conn.execute(
            insert(orm.Server),
            [{"id": k + 1, "base_url": f"/user/user{i}/"} for k, i in enumerate(running)],
        )
        server_of = {i: k + 1 for k, i in enumerate(running)}
        state = {"region": "us-east-1", "version": 1, "instance_id": "i-0123456789abcdef0"}
        rows = []
        for i in range(n):
            stack = f"arn:aws:cloudformation:us-east-1:123456789012:stack/mliy-user{i}/{i:08x}"
            rows.append(
                {
                    "user_id": i + 1,
                    "name": "",
                    "server_id": server_of.get(i),
                    "state": {"mliy": {**state, "stack_id": stack}},
                }
            )
            rows.append({"user_id": i + 1, "name": "scratch", "server_id": None, "state": {}})
        conn.execute(insert(orm.Spawner), rows)


def timed(engine, read):
    """``read(session)``'s median time (best and worst beside) and statements, fresh each run."""
    statements = []

    def count(*args):
        statements.append(1)

    times, answers = [], None
    event.listen(engine, "before_cursor_execute", count)
    try:
        for _ in range(RUNS):
            statements.clear()
            with Session(engine) as db:
                started = time.perf_counter()
                answers = read(db)
                times.append(time.perf_counter() - started)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    return times, len(statements), len(answers)


def bench(url, label, lines):
    engine = create_engine(url)
    lines.append(f"{label}:")
    try:
        for n in SIZES:
            fill(engine, n)
            now, now_sql, now_found = timed(engine, reconcile.hub_server_states)
            old, old_sql, old_found = timed(engine, per_row)
            assert now_found == old_found == n, (now_found, old_found)
            lines.append(
                f"  {n:>5,} users ({2 * n:,} spawner rows): now {ms(now)} in {now_sql} statement"
                f"{'s' if now_sql != 1 else ''}; per row {ms(old)} in {old_sql:,} statements;"
                f" {statistics.median(old) / statistics.median(now):.0f}x"
            )
    finally:
        engine.dispose()


def ms(times):
    return (
        f"{statistics.median(times) * 1000:7.1f} ms"
        f" ({min(times) * 1000:.1f}-{max(times) * 1000:.1f})"
    )


def with_postgres(lines):
    with postgres_databases(["hubread"], lines) as urls:
        if urls:
            bench(urls["hubread"], "PostgreSQL (tests/pg.py: no fsync)", lines)


def main():
    lines = [
        f"Python {sys.version.split()[0]} on {sys.platform}; the reconciler's read of the hub's"
        f" database, on the hub's loop; median of {RUNS} (best-worst)"
    ]
    with tempfile.TemporaryDirectory(prefix="mliy-bench-hubread-") as tmp:
        bench(f"sqlite:///{tmp}/jupyterhub.sqlite", "SQLite", lines)
    with_postgres(lines)
    print("\n".join(lines))
    write_block(
        "hubread.py",
        "## The reconciler's read of the hub's database (`python benchmarks/hubread.py`)",
        lines,
    )


if __name__ == "__main__":
    main()
