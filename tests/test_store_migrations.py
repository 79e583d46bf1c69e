"""The store's schema versions (alembic): a fresh database is created at head, a database
made by the release before versioning is adopted and upgraded with its rows, head's
schema is exactly ``store.metadata`` (a table or column added without a revision fails
here), and the store never touches JupyterHub's ``alembic_version``. On SQLite and
PostgreSQL (``store_url``, conftest.py).
"""

import importlib.util
import logging
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata

from mliy_spawner import store_migrations
from mliy_spawner.store import Store, metadata

RELEASES = Path(__file__).parent / "store_releases"


def release_store_module(commit):
    """``mliy_spawner/store.py`` as released at ``commit`` (kept in tests/store_releases)."""
    name = f"mliy_spawner._store_{commit}"
    spec = importlib.util.spec_from_file_location(name, RELEASES / f"store_{commit}.py")
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "mliy_spawner"  # its `from .logs import ...`
    spec.loader.exec_module(module)
    return module


def tables(url):
    engine = sa.create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def revision(url):
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return store_migrations.current(conn)
    finally:
        engine.dispose()


def schema_differences(url):
    """What alembic's autogenerate would change to make the database equal ``metadata``."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return compare_metadata(store_migrations.migration_context(conn), metadata)
    finally:
        engine.dispose()


def started(url):
    """A new store on ``url`` after its start-up (the first query runs the migrations)."""
    store = Store(url)
    store.owner("i-none")
    return store


def test_head_is_the_newest_revision_and_0001_comes_first():
    script = store_migrations.script_directory()
    assert [r.revision for r in script.walk_revisions()][-1] == "0001"
    assert store_migrations.head() == script.get_current_head()


def test_a_fresh_database_is_created_at_head_and_equals_the_metadata(store_url):
    started(store_url).close()
    assert revision(store_url) == store_migrations.head()
    assert tables(store_url) == {t.name for t in metadata.sorted_tables} | {
        store_migrations.VERSION_TABLE
    }
    # a table, column, type or index added to store.metadata without a revision shows here
    assert schema_differences(store_url) == []


def test_revision_0001_is_the_schema_of_the_release_before_versioning(store_url):
    old = release_store_module("f362d74")
    engine = sa.create_engine(store_url)
    try:
        with engine.begin() as conn:
            store_migrations.upgrade(conn, "0001")
        with engine.connect() as conn:
            found = compare_metadata(store_migrations.migration_context(conn), old.metadata)
    finally:
        engine.dispose()
    assert found == []


def make_release_database(url):
    """A database made and filled by the release at f362d74 (no version table)."""
    old = release_store_module("f362d74")
    store = old.Store(url)
    store.record_instance("i-0aaa", "alice", "", "arn:stack/alice", "us-east-1")
    store.record_instance("i-0bbb", "bob", "gpu", "arn:stack/bob-gpu", "us-west-2")
    for step, percent in [("Mounting volume", 10), ("Creating user", 20), ("Done", 100)]:
        store.add_progress("i-0aaa", step, percent, False)
    store.add_progress("i-0bbb", "Installing packages", 40, True)
    store.add_bootstrap_code("code-hash-1", "bob", "gpu", "sealed-token", ttl=600)
    store.bind_bootstrap_code("bob", "gpu", "i-0bbb", "10.0.0.7")
    snapshot = {
        "owners": [store.owner("i-0aaa"), store.owner("i-0bbb")],
        "progress": [store.progress("i-0aaa"), store.progress("i-0bbb")],
        "code": store.bootstrap_code("code-hash-1"),
    }
    store.close()
    return snapshot


def as_tuple(record):
    return tuple(getattr(record, name) for name in record.__dataclass_fields__)


def test_a_database_of_the_release_before_versioning_is_upgraded_with_its_rows(store_url):
    before = make_release_database(store_url)
    assert store_migrations.VERSION_TABLE not in tables(store_url)

    store = started(store_url)
    try:
        assert [as_tuple(store.owner(i)) for i in ("i-0aaa", "i-0bbb")] == [
            as_tuple(r) for r in before["owners"]
        ]
        assert [[as_tuple(r) for r in store.progress(i)] for i in ("i-0aaa", "i-0bbb")] == [
            [as_tuple(r) for r in steps] for steps in before["progress"]
        ]
        assert as_tuple(store.bootstrap_code("code-hash-1")) == as_tuple(before["code"])
        # the adopted tables go on working: new ids follow the old ones, codes are used once
        added = store.add_progress("i-0aaa", "Notebook started", 100, False)
        assert added.id > before["progress"][0][-1].id
        assert store.use_bootstrap_code("code-hash-1") == "sealed-token"
        assert store.use_bootstrap_code("code-hash-1") is None
    finally:
        store.close()
    assert revision(store_url) == store_migrations.head()
    assert schema_differences(store_url) == []


def test_a_database_from_before_the_bootstrap_codes_gets_that_table(store_url):
    make_release_database(store_url)
    engine = sa.create_engine(store_url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE bootstrap_codes"))
    engine.dispose()

    store = started(store_url)
    try:
        assert store.owner("i-0aaa").user == "alice"
        store.add_bootstrap_code("new-code", "alice", "", "sealed", ttl=60)
        assert store.server_bootstrap_code("alice", "").code_id == "new-code"
    finally:
        store.close()
    assert schema_differences(store_url) == []


def test_jupyterhubs_alembic_version_is_left_alone(store_url):
    # the store may share the hub's database, which has its own alembic_version
    engine = sa.create_engine(store_url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)"))
        conn.execute(sa.text("INSERT INTO alembic_version VALUES ('4621fec11365')"))
    try:
        started(store_url).close()
        with engine.connect() as conn:
            hub = conn.execute(sa.text("SELECT version_num FROM alembic_version")).all()
            mine = conn.execute(
                sa.text(f"SELECT version_num FROM {store_migrations.VERSION_TABLE}")
            ).all()
    finally:
        engine.dispose()
    assert hub == [("4621fec11365",)]
    assert mine == [(store_migrations.head(),)]


def test_a_database_from_a_newer_release_is_refused_and_left_alone(store_url):
    started(store_url).close()
    engine = sa.create_engine(store_url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE {store_migrations.VERSION_TABLE} SET version_num = '9999'"))
    engine.dispose()
    before = tables(store_url)

    store = Store(store_url)
    try:
        with pytest.raises(store_migrations.SchemaTooNewError, match="'9999'.*newest is"):
            store.owner("i-1")
    finally:
        store.close()
    assert tables(store_url) == before
    assert revision(store_url) == "9999"


def test_an_up_to_date_database_is_not_migrated_again(store_url, caplog):
    started(store_url).close()
    with caplog.at_level(logging.INFO, logger="alembic"):
        store = started(store_url)
        store.close()
    assert not [r for r in caplog.records if "Running upgrade" in r.getMessage()]


def test_migrations_leave_the_processes_loggers_enabled(store_url, caplog):
    # alembic's usual env.py calls logging.config.fileConfig, which disables every
    # logger that exists: the hub's and the service's would go quiet
    existing = logging.getLogger("mliy.test.migrations")
    with caplog.at_level(logging.INFO, logger="alembic"):
        started(store_url).close()
    assert not existing.disabled
    assert not logging.getLogger("mliy.service").disabled
    assert any("Running upgrade" in r.getMessage() for r in caplog.records)
