"""The store's schema versions: alembic revisions, run in-process on the store's engine.

Like JupyterHub's own database, the store's tables are versioned with alembic, so a new
release can change them without losing the rows of a running hub. :func:`upgrade` brings
a database to the newest revision (``head``) inside the caller's transaction; the store
calls it once, at start-up (``Store._ensure_tables``), so a fresh database is created and
stamped, and an older one upgraded.

- The revision is kept in a table of its own, :data:`VERSION_TABLE`, never JupyterHub's
  ``alembic_version``: the store may share the hub's PostgreSQL database.
- Revision ``0001`` is the schema of the releases before versioning (``instances``,
  ``progress``, ``bootstrap_codes``). A database they made has those tables and no
  version table: ``0001`` adopts the tables it finds (keeping their rows) and creates
  the missing ones, which stamps such a database at ``0001``; later revisions then run
  as on any other.
- Alembic is configured here, in code (no ``alembic.ini``): its ``fileConfig`` logging
  set-up would disable the hub's and the service's loggers.
- On PostgreSQL an advisory lock serialises two processes (the hub and the ``mliy``
  service) that start at the same moment; on SQLite the caller's write transaction
  (``BEGIN IMMEDIATE``) does.

A new revision: add the table or column to ``mliy_spawner.store.metadata``, then a file
in ``versions/`` whose ``down_revision`` is the previous head (``alembic revision
--autogenerate`` with a throw-away ``alembic.ini`` pointing ``script_location`` here
drafts one). ``tests/test_store_migrations.py`` fails while head and the metadata differ.
"""

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

log = logging.getLogger("mliy.store")

#: The table alembic keeps the store's revision in (not JupyterHub's ``alembic_version``).
VERSION_TABLE = "mliy_alembic_version"
#: The revision of the schema the store had before it was versioned.
INITIAL_REVISION = "0001"
# pg_advisory_xact_lock key of the store's migrations (any constant 64-bit integer)
_PG_LOCK_KEY = 0x6D6C6979_73746F72  # "mliystor"

HERE = Path(__file__).resolve().parent


def alembic_config(connection=None):
    """An alembic :class:`~alembic.config.Config` for these migrations, without a file.

    ``connection`` (a SQLAlchemy connection) is the one ``env.py`` migrates.
    """
    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.set_main_option("path_separator", "os")
    config.attributes["connection"] = connection
    return config


def script_directory():
    return ScriptDirectory.from_config(alembic_config())


def head():
    """The newest revision these migrations know."""
    return script_directory().get_current_head()


def migration_context(connection):
    """An alembic :class:`MigrationContext` on ``connection`` with the store's version table."""
    return MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})


def current(connection):
    """The store's revision in ``connection``'s database; None if it is not versioned."""
    return migration_context(connection).get_current_revision()


class SchemaTooNewError(RuntimeError):
    """The database has a store revision this mliy-spawner does not know (a newer release
    upgraded it)."""


def upgrade(connection, revision="head"):
    """Bring the store's tables in ``connection``'s database to ``revision``.

    Runs in the caller's transaction (begun on ``connection``): the caller commits. A
    database at a revision this release does not know raises :class:`SchemaTooNewError`
    and is left alone.
    """
    if connection.dialect.name == "postgresql":
        # released at the end of the caller's transaction
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
    found = current(connection)
    if found is not None:
        try:
            script_directory().get_revision(found)
        except Exception:
            raise SchemaTooNewError(
                f"the store's database is at schema revision {found!r}, which this "
                f"mliy-spawner does not know (its newest is {head()!r}): a newer release "
                "upgraded it; run that release, or restore a backup made before"
            ) from None
    command.upgrade(alembic_config(connection), revision)
