"""The tables the spawner (in the hub) and the ``mliy`` service (its own process) share.

- ``instances``: which JupyterHub server (user, server name) owns which EC2 instance, and
  the CloudFormation stack and region it lives in. The spawner writes a row when it
  launches; the service reads it to authorise progress reports and control requests.
- ``progress``: the steps an instance reports while it boots (``step``, ``percent``,
  ``failed``), in arrival order. The service writes them; the spawner's ``progress()``
  reads them.

:class:`Store` is synchronous (SQLAlchemy 2 Core). Callers on an event loop run its
methods in a thread. By default it is a SQLite file next to the hub's database
(:func:`default_store_url`); any SQLAlchemy URL (PostgreSQL) works. With SQLite two
processes share the file safely: WAL journal, a busy timeout, and write transactions
that take the write lock up front (``BEGIN IMMEDIATE``), so a reader never has to
upgrade its lock half way through and fail with "database is locked". The SQLite file is
created 0600 (its folder, when the store creates it, 0700): SQLite's WAL and shared-memory
files take its mode.
"""

import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.pool import StaticPool

from . import store_migrations
from .logs import private_file, private_folder

log = logging.getLogger("mliy.service")

#: The longest progress step text accepted (characters).
MAX_STEP_LENGTH = 200
#: The most progress steps kept for one instance. A boot reports about ten; without a cap
#: an instance could add rows at the service's rate limit forever and fill the disk the
#: hub's own database lives on.
MAX_STEPS_PER_INSTANCE = 1000
#: The file name of the default SQLite store.
DEFAULT_FILENAME = "mliy.sqlite"
# How long a SQLite writer waits for another process's lock before giving up.
_SQLITE_BUSY_TIMEOUT_S = 30

metadata = MetaData()

instances = Table(
    "instances",
    metadata,
    Column("instance_id", String(64), primary_key=True),
    Column("user", String(255), nullable=False, index=True),
    # '' is the user's default server
    Column("server_name", String(255), nullable=False, default=""),
    Column("stack_id", String(1024), nullable=False, default=""),
    Column("region", String(64), nullable=False, default=""),
    Column("created", DateTime, nullable=False),
    Column("updated", DateTime, nullable=False),
)

progress = Table(
    "progress",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("instance_id", String(64), nullable=False, index=True),
    Column("step", String(MAX_STEP_LENGTH), nullable=False),
    Column("percent", Integer, nullable=False),
    Column("failed", Boolean, nullable=False, default=False),
    Column("created", DateTime, nullable=False),
)


bootstrap_codes = Table(
    "bootstrap_codes",
    metadata,
    # the code's hash (bootstrap.code_id); the code itself is never stored
    Column("code_id", String(64), primary_key=True),
    Column("user", String(255), nullable=False, index=True),
    Column("server_name", String(255), nullable=False, default=""),
    # set by the spawner once it sees the stack's instance: the code is valid for it alone
    Column("instance_id", String(64), nullable=True),
    Column("private_ip", String(64), nullable=True),
    # the server's API token sealed under the code (bootstrap.seal); emptied when used
    Column("sealed_token", String(4096), nullable=False, default=""),
    Column("expires", DateTime, nullable=False),
    Column("used", DateTime, nullable=True),
    # why the service refused an exchange, for the spawner to show
    Column("refused", String(255), nullable=True),
)


# The usage ledger (see mliy_spawner.ledger and mliy_spawner.costs): one row per instance
# per state over time. Money is kept as decimal text: exact on every database.
usage = Table(
    "usage",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("hub", String(255), nullable=False, default=""),
    Column("user", String(255), nullable=False, index=True),
    Column("server_name", String(255), nullable=False, default=""),
    Column("launch_group", String(255), nullable=False, default="", index=True),
    Column("software_config", String(255), nullable=False, default=""),
    Column("instance_id", String(64), nullable=False, index=True),
    Column("instance_type", String(64), nullable=False, default=""),
    Column("region", String(64), nullable=False, default=""),
    # costs.RUNNING or costs.STOPPED (with its volume)
    Column("state", String(16), nullable=False),
    Column("start", DateTime, nullable=False, index=True),
    # NULL while the interval is open
    Column("end", DateTime, nullable=True, index=True),
    # compute $/hour when it opened; NULL: the catalog lacked it (unknown, never 0)
    Column("hourly_usd", String(32), nullable=True),
    # the extra volume's size; NULL: not known
    Column("volume_gib", Integer, nullable=True),
    Column("gib_month_usd", String(32), nullable=True),
)

# What happened to servers, by whom, and why (the hub's actions and automatic ones).
audit = Table(
    "audit",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("time", DateTime, nullable=False, index=True),
    # who: a user or admin name, a service's name, "culler", "mliy" (automatic)
    Column("actor", String(255), nullable=False, default=""),
    # user, admin, service, culler, automatic
    Column("actor_kind", String(32), nullable=False, default=""),
    # form, rest, admin-panel, control-api, automatic
    Column("path", String(32), nullable=False, default=""),
    Column("action", String(64), nullable=False, index=True),
    # ok, refused, failed
    Column("outcome", String(32), nullable=False, default="ok"),
    Column("reason", String(1024), nullable=False, default=""),
    Column("user", String(255), nullable=False, default="", index=True),
    Column("server_name", String(255), nullable=False, default=""),
    Column("stack_id", String(1024), nullable=False, default=""),
    Column("instance_id", String(64), nullable=False, default=""),
)

#: The longest audit reason kept (characters).
MAX_AUDIT_REASON = 1024

# What the hub's reconcilers found in their latest cycle (orphaned stacks, servers whose
# stack is gone, failed deletes, dormant servers), one set of rows per hub and region,
# replaced at each cycle: the mliy service shows them to admins.
findings = Table(
    "findings",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("hub", String(255), nullable=False, index=True),
    Column("region", String(64), nullable=False),
    # orphan, missing-stack, delete-failed, delete-gave-up, dormant
    Column("kind", String(32), nullable=False),
    Column("stack_id", String(1024), nullable=False, default=""),
    Column("stack_name", String(255), nullable=False, default=""),
    Column("user", String(255), nullable=False, default=""),
    Column("server_name", String(255), nullable=False, default=""),
    Column("reason", String(1024), nullable=False, default=""),
    # since when: unclaimed, stopped, or first failed; NULL: not known
    Column("since", DateTime, nullable=True),
    # the cycle that found it
    Column("seen", DateTime, nullable=False),
)


@dataclass(frozen=True)
class AuditRecord:
    """One row of ``audit``."""

    id: int
    time: datetime
    actor: str
    actor_kind: str
    path: str
    action: str
    outcome: str
    reason: str
    user: str
    server_name: str
    stack_id: str
    instance_id: str


@dataclass(frozen=True)
class FindingRecord:
    """One row of ``findings``: something a reconciler found in its latest cycle."""

    id: int
    hub: str
    region: str
    kind: str
    stack_id: str
    stack_name: str
    user: str
    server_name: str
    reason: str
    since: datetime | None
    seen: datetime


@dataclass(frozen=True)
class BootstrapCode:
    """One row of ``bootstrap_codes``: a server's one-time code, as its hash."""

    code_id: str
    user: str
    server_name: str
    instance_id: str | None
    private_ip: str | None
    sealed_token: str
    expires: datetime
    used: datetime | None
    refused: str | None

    def expired(self, now=None):
        return (now or datetime.now(UTC)) >= self.expires


@dataclass(frozen=True)
class InstanceRecord:
    """One row of ``instances``: the server that owns an instance."""

    instance_id: str
    user: str
    server_name: str
    stack_id: str
    region: str
    created: datetime
    updated: datetime


@dataclass(frozen=True)
class ProgressRecord:
    """One row of ``progress``: a step an instance reported."""

    id: int
    instance_id: str
    step: str
    percent: int
    failed: bool
    created: datetime


def _now():
    # stored naive (SQLite has no time zones); always UTC
    return datetime.now(UTC).replace(tzinfo=None)


def _aware(value):
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def _record(cls, row, **converted):
    """A ``cls`` of ``row``: each field the column of its name, or as given in ``converted``."""
    return cls(**{f.name: getattr(row, f.name) for f in fields(cls)} | converted)


def _instance(row):
    return _record(InstanceRecord, row, created=_aware(row.created), updated=_aware(row.updated))


def _progress(row):
    return _record(ProgressRecord, row, failed=bool(row.failed), created=_aware(row.created))


def _bootstrap_code(row):
    return _record(BootstrapCode, row, expires=_aware(row.expires), used=_aware(row.used))


def _interval(row):
    from .costs import Interval, decimal_or_none

    return Interval(
        id=row.id,
        hub=row.hub,
        user=row.user,
        server=row.server_name,
        group=row.launch_group,
        config=row.software_config,
        instance_id=row.instance_id,
        instance_type=row.instance_type,
        region=row.region,
        state=row.state,
        start=_aware(row.start),
        end=_aware(row.end),
        hourly_usd=decimal_or_none(row.hourly_usd),
        volume_gib=row.volume_gib,
        gib_month_usd=decimal_or_none(row.gib_month_usd),
    )


def _naive(moment):
    return moment.astimezone(UTC).replace(tzinfo=None) if moment is not None else None


def _usage_row(interval):
    from .costs import as_text

    return {
        "hub": interval.hub,
        "user": interval.user,
        "server_name": interval.server,
        "launch_group": interval.group,
        "software_config": interval.config,
        "instance_id": interval.instance_id,
        "instance_type": interval.instance_type,
        "region": interval.region,
        "state": interval.state,
        "start": _naive(interval.start),
        "end": _naive(interval.end),
        "hourly_usd": as_text(interval.hourly_usd),
        "volume_gib": interval.volume_gib,
        "gib_month_usd": as_text(interval.gib_month_usd),
    }


def default_store_url(hub_db_url=None):
    """The default store URL for a hub whose database is at ``hub_db_url``.

    A SQLite file ``mliy.sqlite`` in the folder of the hub's SQLite database, or in the
    current folder when the hub uses another database (or none is given). The path is
    made absolute, so the service finds the same file whatever its working folder.

    >>> default_store_url("sqlite:////srv/jupyterhub/jupyterhub.sqlite")
    'sqlite:////srv/jupyterhub/mliy.sqlite'
    """
    folder = Path.cwd()
    if hub_db_url:
        url = make_url(hub_db_url)
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
            folder = (Path.cwd() / url.database).resolve().parent
    return f"sqlite:///{folder / DEFAULT_FILENAME}"


def _is_sqlite(url):
    return url.get_backend_name() == "sqlite"


def _use_wal(cursor, attempts=100, pause=0.05):
    """Switch the file to WAL (persistent: done once per file, by whoever comes first).

    Changing the journal mode needs the file to itself, and SQLite answers "database is
    locked" at once, without waiting out busy_timeout, while another process has it
    open; so check first, and retry a moment later.
    """
    for attempt in range(attempts):
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
                return
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or attempt == attempts - 1:
                raise
            time.sleep(pause)


def _make_engine(url):
    url = make_url(url)
    if not _is_sqlite(url):
        return create_engine(url, pool_pre_ping=True)
    in_memory = url.database in (None, "", ":memory:")
    if not in_memory and not url.query.get("uri"):
        # before SQLite creates it with the umask's mode (0644: readable by every local
        # user); the -wal and -shm files SQLite adds take the file's mode
        private_folder(os.path.dirname(os.path.abspath(url.database)))
        private_file(url.database)
    kwargs = {"connect_args": {"timeout": _SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False}}
    if in_memory:
        # one shared connection, or each thread would see its own empty database
        kwargs["poolclass"] = StaticPool
    engine = create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, connection_record):
        # let SQLAlchemy's "begin" event below issue BEGIN, instead of pysqlite's
        # implicit (deferred) transactions
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_TIMEOUT_S * 1000}")
            if not in_memory:
                _use_wal(cursor)
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        write = conn.get_execution_options().get("mliy_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


class ProgressLimitError(ValueError):
    """An instance has already reported :data:`MAX_STEPS_PER_INSTANCE` steps."""


class Store:
    """Instance ownership and progress steps, in any SQLAlchemy database.

    Thread-safe; tables are created on first use. Every method is blocking: from async
    code call it through :func:`mliy_spawner.util.run_blocking`.
    """

    def __init__(self, url, max_steps=MAX_STEPS_PER_INSTANCE):
        self.url = str(url)
        self.max_steps = max_steps
        self._engine = _make_engine(self.url)
        self._ready = False
        self._lock = threading.Lock()

    def __repr__(self):
        return f"Store({make_url(self.url).render_as_string(hide_password=True)!r})"

    def close(self):
        """Release the database connections."""
        self._engine.dispose()

    # transactions ---------------------------------------------------------------------

    def _ensure_tables(self):
        """Create the tables, or upgrade them to this release's schema, before the first
        query: alembic, in-process (:mod:`mliy_spawner.store_migrations`)."""
        if self._ready:
            return
        with self._lock:
            if self._ready:
                return
            for attempt in range(2):
                try:
                    # under the write lock (BEGIN IMMEDIATE with SQLite, an advisory lock
                    # with PostgreSQL), so a second process starting at the same moment
                    # waits instead of failing, then finds the schema up to date
                    with self._engine.connect().execution_options(mliy_write=True) as conn:
                        with conn.begin():
                            store_migrations.upgrade(conn)
                    break
                except OperationalError as e:
                    # another database client created them between our check and CREATE
                    if attempt or "already exists" not in str(e):
                        raise
            self._ready = True

    def _read(self):
        self._ensure_tables()
        return self._engine.connect()

    def _write(self):
        self._ensure_tables()
        return self._engine.connect().execution_options(mliy_write=True)

    # instances ------------------------------------------------------------------------

    def record_instance(self, instance_id, user, server_name, stack_id, region):
        """Record (insert or update) that ``user``'s server ``server_name`` owns an instance.

        ``server_name`` is ``""`` for the default server. Returns the :class:`InstanceRecord`.
        """
        if not instance_id:
            raise ValueError("instance_id must be a non-empty string")
        values = {
            "user": user,
            "server_name": server_name or "",
            "stack_id": stack_id or "",
            "region": region or "",
        }
        for attempt in range(2):
            try:
                with self._write() as conn, conn.begin():
                    now = _now()
                    found = conn.execute(
                        update(instances)
                        .where(instances.c.instance_id == instance_id)
                        .values(updated=now, **values)
                    ).rowcount
                    if not found:
                        conn.execute(
                            insert(instances).values(
                                instance_id=instance_id, created=now, updated=now, **values
                            )
                        )
                break
            except IntegrityError:
                # inserted concurrently by another writer (not SQLite: it serialises
                # writers); the retry updates that row
                if attempt:
                    raise
        return self.owner(instance_id)

    def owner(self, instance_id):
        """The :class:`InstanceRecord` of ``instance_id``, or None if unknown."""
        with self._read() as conn, conn.begin():
            row = conn.execute(
                select(instances).where(instances.c.instance_id == instance_id)
            ).first()
        return _instance(row) if row else None

    def instances_for_user(self, user):
        """All instances recorded for ``user``, default server first, then by name."""
        with self._read() as conn, conn.begin():
            rows = conn.execute(
                select(instances)
                .where(instances.c.user == user)
                .order_by(instances.c.server_name, instances.c.instance_id)
            ).all()
        return [_instance(row) for row in rows]

    def instance_ids(self):
        """The ids of every instance a server of this hub records (a set)."""
        with self._read() as conn, conn.begin():
            return {row[0] for row in conn.execute(select(instances.c.instance_id))}

    def forget_instance(self, instance_id):
        """Delete the instance and its progress; True if it was known."""
        with self._write() as conn, conn.begin():
            conn.execute(delete(progress).where(progress.c.instance_id == instance_id))
            found = conn.execute(
                delete(instances).where(instances.c.instance_id == instance_id)
            ).rowcount
        return bool(found)

    # bootstrap codes ------------------------------------------------------------------

    def add_bootstrap_code(self, code_id, user, server_name, sealed_token, ttl):
        """Keep a new code for ``user``'s server (replacing its earlier ones), valid for
        ``ttl`` seconds, with the server's API token sealed under it."""
        now = _now()
        with self._write() as conn, conn.begin():
            conn.execute(
                delete(bootstrap_codes).where(
                    (bootstrap_codes.c.user == user)
                    & (bootstrap_codes.c.server_name == (server_name or ""))
                )
            )
            conn.execute(
                insert(bootstrap_codes).values(
                    code_id=code_id,
                    user=user,
                    server_name=server_name or "",
                    sealed_token=sealed_token,
                    expires=now + timedelta(seconds=ttl),
                )
            )

    def bind_bootstrap_code(self, user, server_name, instance_id, private_ip):
        """The server's unused code is for ``instance_id``, which asks from ``private_ip``."""
        with self._write() as conn, conn.begin():
            conn.execute(
                update(bootstrap_codes)
                .where(
                    (bootstrap_codes.c.user == user)
                    & (bootstrap_codes.c.server_name == (server_name or ""))
                    & bootstrap_codes.c.used.is_(None)
                )
                .values(instance_id=instance_id, private_ip=private_ip)
            )

    def bootstrap_code(self, code_id):
        """The :class:`BootstrapCode` of that hash, or None."""
        with self._read() as conn, conn.begin():
            row = conn.execute(
                select(bootstrap_codes).where(bootstrap_codes.c.code_id == code_id)
            ).first()
        return _bootstrap_code(row) if row else None

    def server_bootstrap_code(self, user, server_name):
        """The server's latest code (used or not), or None."""
        with self._read() as conn, conn.begin():
            row = conn.execute(
                select(bootstrap_codes).where(
                    (bootstrap_codes.c.user == user)
                    & (bootstrap_codes.c.server_name == (server_name or ""))
                )
            ).first()
        return _bootstrap_code(row) if row else None

    def use_bootstrap_code(self, code_id):
        """Mark the code used and return its sealed token; None if it was used already
        (two requests at once: exactly one gets the token)."""
        with self._write() as conn, conn.begin():
            row = conn.execute(
                select(bootstrap_codes).where(bootstrap_codes.c.code_id == code_id)
            ).first()
            if row is None or row.used is not None:
                return None
            result = conn.execute(
                update(bootstrap_codes)
                .where((bootstrap_codes.c.code_id == code_id) & bootstrap_codes.c.used.is_(None))
                .values(used=_now(), sealed_token="")
            )
            # under READ COMMITTED (PostgreSQL) another request may have used it between
            # our read and our update: only the one whose update matched gets the token
            if result.rowcount != 1:
                return None
        return row.sealed_token

    def refuse_bootstrap_code(self, code_id, reason):
        """Note why an exchange of this code was refused (the spawner shows it)."""
        with self._write() as conn, conn.begin():
            conn.execute(
                update(bootstrap_codes)
                .where(bootstrap_codes.c.code_id == code_id)
                .values(refused=reason[:255])
            )

    def forget_bootstrap_codes(self, user, server_name):
        """The server stopped or went away: its codes are no use to anyone."""
        with self._write() as conn, conn.begin():
            conn.execute(
                delete(bootstrap_codes).where(
                    (bootstrap_codes.c.user == user)
                    & (bootstrap_codes.c.server_name == (server_name or ""))
                )
            )

    # progress -------------------------------------------------------------------------

    def add_progress(self, instance_id, step, percent, failed=False):
        """Append a step reported by ``instance_id``; returns the :class:`ProgressRecord`.

        The values are checked by the caller (the service answers 400 for bad ones);
        here only what would corrupt or flood the table is refused: a step over
        :data:`MAX_STEP_LENGTH` (ValueError), a step beyond ``max_steps`` for the instance
        (:class:`ProgressLimitError`).
        """
        if len(step) > MAX_STEP_LENGTH:
            raise ValueError(f"step is {len(step)} characters; at most {MAX_STEP_LENGTH}")
        with self._write() as conn, conn.begin():
            count = conn.execute(
                select(func.count())
                .select_from(progress)
                .where(progress.c.instance_id == instance_id)
            ).scalar_one()
            if count >= self.max_steps:
                raise ProgressLimitError(
                    f"instance {instance_id!r} has reported {count} steps; at most "
                    f"{self.max_steps} are kept"
                )
            now = _now()
            result = conn.execute(
                insert(progress).values(
                    instance_id=instance_id,
                    step=step,
                    percent=int(percent),
                    failed=bool(failed),
                    created=now,
                )
            )
            (new_id,) = result.inserted_primary_key
        return ProgressRecord(
            id=new_id,
            instance_id=instance_id,
            step=step,
            percent=int(percent),
            failed=bool(failed),
            created=_aware(now),
        )

    def progress(self, instance_id, after_id=0):
        """The steps of ``instance_id`` with ``id > after_id``, oldest first."""
        with self._read() as conn, conn.begin():
            rows = conn.execute(
                select(progress)
                .where(progress.c.instance_id == instance_id, progress.c.id > after_id)
                .order_by(progress.c.id)
            ).all()
        return [_progress(row) for row in rows]

    def latest_progress(self, instance_id):
        """The last step of ``instance_id``, or None."""
        with self._read() as conn, conn.begin():
            row = conn.execute(
                select(progress)
                .where(progress.c.instance_id == instance_id)
                .order_by(progress.c.id.desc())
                .limit(1)
            ).first()
        return _progress(row) if row else None

    # usage ledger ------------------------------------------------------------------------

    def open_usage(self, hub, region):
        """The open intervals of ``hub`` in ``region`` (:class:`~mliy_spawner.costs.Interval`)."""
        query = select(usage).where(
            usage.c.end.is_(None), usage.c.hub == hub, usage.c.region == region
        )
        with self._read() as conn:
            return [_interval(row) for row in conn.execute(query.order_by(usage.c.id))]

    def update_usage(self, close=(), open=()):
        """Close intervals (``[(id, end)]``) and open new ones, in one transaction.

        An interval is closed only while it is still open, so two hubs' views (or a
        retried cycle) never close one twice. Returns the ids of the opened ones.
        """
        opened = []
        with self._write() as conn, conn.begin():
            for interval_id, end in close:
                conn.execute(
                    update(usage)
                    .where(usage.c.id == interval_id, usage.c.end.is_(None))
                    .values(end=_naive(end))
                )
            for interval in open:
                result = conn.execute(insert(usage).values(**_usage_row(interval)))
                opened.append(result.inserted_primary_key[0])
        return opened

    def last_usage_ends(self, instance_ids):
        """``{instance id: end of its latest closed interval}`` for those that have one."""
        found = {}
        ids = list(instance_ids)
        for chunk in range(0, len(ids), 500):
            query = (
                select(usage.c.instance_id, func.max(usage.c.end))
                .where(usage.c.instance_id.in_(ids[chunk : chunk + 500]), usage.c.end.is_not(None))
                .group_by(usage.c.instance_id)
            )
            with self._read() as conn:
                found.update({row[0]: _aware(row[1]) for row in conn.execute(query)})
        return found

    def usage_between(self, start, end, hub=None, user=None, group=None):
        """The intervals that overlap ``[start, end)``, optionally of one hub, user or group."""
        query = select(usage).where(
            usage.c.start < _naive(end),
            (usage.c.end.is_(None)) | (usage.c.end > _naive(start)),
        )
        if hub is not None:
            query = query.where(usage.c.hub == hub)
        if user is not None:
            query = query.where(usage.c.user == user)
        if group is not None:
            query = query.where(usage.c.launch_group == group)
        # what _interval does with less work a row (a busy month is 300,000 rows): the
        # columns in Interval's field order, so a row is its arguments, and each price
        # text read once (a month repeats a few)
        from .costs import Interval, decimal_or_none

        names = (
            "user server_name launch_group software_config instance_id instance_type region"
            " state start end hourly_usd volume_gib gib_month_usd hub id"
        ).split()
        query = query.with_only_columns(*(usage.c[name] for name in names))
        prices = {}

        def price(text):
            try:
                return prices[text]
            except KeyError:
                value = prices[text] = decimal_or_none(text)
                return value

        with self._read() as conn:
            return [
                Interval(
                    *row[:8],
                    _aware(row[8]),
                    _aware(row[9]),
                    price(row[10]),
                    row[11],
                    price(row[12]),
                    row[13],
                    row[14],
                )
                for row in conn.execute(query.order_by(usage.c.id)).all()
            ]

    # audit trail ------------------------------------------------------------------------

    def add_audit(
        self,
        action,
        *,
        actor="",
        actor_kind="",
        path="",
        outcome="ok",
        reason="",
        user="",
        server_name="",
        stack_id="",
        instance_id="",
        when=None,
    ):
        """Record one action on a server (never pass a secret in ``reason``)."""
        values = {
            "time": _naive(when) if when else _now(),
            "actor": actor[:255],
            "actor_kind": actor_kind[:32],
            "path": path[:32],
            "action": action[:64],
            "outcome": outcome[:32],
            "reason": (reason or "")[:MAX_AUDIT_REASON],
            "user": user[:255],
            "server_name": (server_name or "")[:255],
            "stack_id": (stack_id or "")[:1024],
            "instance_id": (instance_id or "")[:64],
        }
        with self._write() as conn, conn.begin():
            return conn.execute(insert(audit).values(**values)).inserted_primary_key[0]

    def audit_entries(
        self,
        user=None,
        action=None,
        outcome=None,
        since=None,
        until=None,
        limit=1000,
        actor=None,
    ):
        """Audit rows, newest first, filtered by any of the arguments."""
        query = select(audit)
        if user is not None:
            query = query.where(audit.c.user == user)
        if actor is not None:
            query = query.where(audit.c.actor == actor)
        if action is not None:
            query = query.where(audit.c.action == action)
        if outcome is not None:
            query = query.where(audit.c.outcome == outcome)
        if since is not None:
            query = query.where(audit.c.time >= _naive(since))
        if until is not None:
            query = query.where(audit.c.time < _naive(until))
        query = query.order_by(audit.c.id.desc()).limit(limit)
        with self._read() as conn:
            return [_record(AuditRecord, row, time=_aware(row.time)) for row in conn.execute(query)]

    def purge_audit(self, before):
        """Delete the audit rows older than ``before``; returns how many."""
        with self._write() as conn, conn.begin():
            return conn.execute(delete(audit).where(audit.c.time < _naive(before))).rowcount

    # reconciler findings -------------------------------------------------------------------

    def replace_findings(self, hub, region, found, when=None):
        """Make ``found`` (dicts with kind, stack_id, stack_name, user, server, reason and
        since, an aware datetime or None) the findings of ``hub`` in ``region``."""
        seen = _naive(when) if when else _now()
        rows = [
            {
                "hub": hub[:255],
                "region": region[:64],
                "kind": f["kind"][:32],
                "stack_id": (f.get("stack_id") or "")[:1024],
                "stack_name": (f.get("stack_name") or "")[:255],
                "user": (f.get("user") or "")[:255],
                "server_name": (f.get("server") or "")[:255],
                "reason": (f.get("reason") or "")[:MAX_AUDIT_REASON],
                "since": _naive(f.get("since")),
                "seen": seen,
            }
            for f in found
        ]
        where = (findings.c.hub == hub) & (findings.c.region == region)
        with self._write() as conn, conn.begin():
            conn.execute(delete(findings).where(where))
            if rows:
                conn.execute(insert(findings), rows)

    def findings(self, hub=None):
        """The latest findings (of ``hub``, else of every hub), by kind, then stack."""
        query = select(findings).order_by(
            findings.c.hub, findings.c.region, findings.c.kind, findings.c.stack_name
        )
        if hub is not None:
            query = query.where(findings.c.hub == hub)
        with self._read() as conn:
            return [
                _record(FindingRecord, row, since=_aware(row.since), seen=_aware(row.seen))
                for row in conn.execute(query)
            ]


def store_url_from_env(environ=None):
    """``MLIY_STORE_URL`` from the environment, else :func:`default_store_url`."""
    environ = os.environ if environ is None else environ
    return environ.get("MLIY_STORE_URL") or default_store_url()


_shared = {}
_shared_lock = threading.Lock()


def shared_store(url):
    """One :class:`Store` (one engine, one connection pool) per URL in this process."""
    with _shared_lock:
        store = _shared.get(url)
        if store is None:
            store = _shared[url] = Store(url)
        return store
