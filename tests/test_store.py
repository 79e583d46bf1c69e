"""The shared store: ownership upserts, progress order, two processes on one database.

The tests that take ``store`` or ``store_url`` (conftest.py) run on SQLite and on
PostgreSQL; the SQLite file's own behaviour (modes, WAL, the default URL) on SQLite.
"""

import multiprocessing
import os
import sqlite3
import stat
from datetime import UTC

import pytest

from mliy_spawner.store import (
    DEFAULT_FILENAME,
    MAX_STEP_LENGTH,
    MAX_STEPS_PER_INSTANCE,
    InstanceRecord,
    ProgressLimitError,
    Store,
    default_store_url,
)


def test_record_instance_inserts_then_updates(store):
    first = store.record_instance("i-0abc", "alice", "", "stack-1", "us-east-1")
    assert isinstance(first, InstanceRecord)
    assert (first.user, first.server_name, first.stack_id, first.region) == (
        "alice",
        "",
        "stack-1",
        "us-east-1",
    )
    assert first.created.tzinfo is UTC

    second = store.record_instance("i-0abc", "alice", "gpu", "stack-2", "us-west-2")
    assert (second.server_name, second.stack_id, second.region) == ("gpu", "stack-2", "us-west-2")
    assert second.created == first.created
    assert second.updated >= first.updated
    assert store.owner("i-0abc") == second


def test_findings_replace_those_of_their_hub_and_region_only(store):
    from datetime import datetime

    since = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
    orphan = {"kind": "orphan", "stack_id": "s-1", "stack_name": "mliy-a", "user": "ann"}
    store.replace_findings("mliy", "us-east-1", [{**orphan, "since": since}])
    store.replace_findings("mliy", "eu-west-1", [{"kind": "dormant", "stack_id": "s-2"}])
    store.replace_findings("other", "us-east-1", [{"kind": "orphan", "stack_id": "s-3"}])
    [first] = store.findings("mliy")[1:]
    assert (first.kind, first.stack_id, first.user, first.server_name) == (
        "orphan",
        "s-1",
        "ann",
        "",
    )
    assert first.since == since and first.seen.tzinfo is UTC
    assert [f.region for f in store.findings("mliy")] == ["eu-west-1", "us-east-1"]

    # the next cycle's findings replace the region's; an empty cycle clears it
    store.replace_findings("mliy", "us-east-1", [{"kind": "missing-stack", "user": "bo"}])
    assert [(f.region, f.kind) for f in store.findings("mliy")] == [
        ("eu-west-1", "dormant"),
        ("us-east-1", "missing-stack"),
    ]
    store.replace_findings("mliy", "us-east-1", [])
    assert [f.kind for f in store.findings("mliy")] == ["dormant"]
    assert [f.stack_id for f in store.findings("other")] == ["s-3"]
    assert len(store.findings()) == 2


def test_owner_of_unknown_instance_is_none(store):
    assert store.owner("i-nothere") is None


def test_instances_for_user_lists_only_theirs_default_server_first(store):
    store.record_instance("i-1", "alice", "", "s1", "us-east-1")
    store.record_instance("i-2", "alice", "gpu", "s2", "us-east-1")
    store.record_instance("i-3", "bob", "", "s3", "us-east-1")
    store.record_instance("i-4", "alice", "", "s4", "us-east-1")
    assert [r.instance_id for r in store.instances_for_user("alice")] == ["i-1", "i-4", "i-2"]
    assert store.instances_for_user("carol") == []


def test_forget_instance_removes_row_and_progress(store):
    store.record_instance("i-1", "alice", "", "s1", "us-east-1")
    store.add_progress("i-1", "Mounting volume", 10, False)
    assert store.forget_instance("i-1") is True
    assert store.owner("i-1") is None
    assert store.progress("i-1") == []
    assert store.forget_instance("i-1") is False


def test_progress_is_ordered_and_after_id_pages(store):
    steps = [("Mounting volume", 10), ("Creating user", 20), ("Installing", 60), ("Done", 100)]
    records = [store.add_progress("i-1", s, p, False) for s, p in steps]
    store.add_progress("i-2", "other instance", 5, False)

    got = store.progress("i-1")
    assert [(r.step, r.percent) for r in got] == steps
    assert [r.id for r in got] == sorted(r.id for r in records)
    assert got == records

    later = store.progress("i-1", after_id=records[1].id)
    assert [r.step for r in later] == ["Installing", "Done"]
    assert store.progress("i-1", after_id=records[-1].id) == []
    assert store.latest_progress("i-1").step == "Done"
    assert store.latest_progress("i-3") is None


def test_failed_flag_round_trips(store):
    store.add_progress("i-1", "Installing packages", 40, True)
    (record,) = store.progress("i-1")
    assert record.failed is True


def test_step_longer_than_limit_is_refused(store):
    store.add_progress("i-1", "x" * MAX_STEP_LENGTH, 1, False)
    with pytest.raises(ValueError, match="at most 200"):
        store.add_progress("i-1", "x" * (MAX_STEP_LENGTH + 1), 1, False)


def test_steps_per_instance_are_capped(store_url):
    store = Store(store_url, max_steps=3)
    try:
        for n in range(3):
            store.add_progress("i-1", f"step {n}", n, False)
        with pytest.raises(ProgressLimitError, match="'i-1' has reported 3 steps; at most 3"):
            store.add_progress("i-1", "one too many", 99, False)
        assert [r.step for r in store.progress("i-1")] == ["step 0", "step 1", "step 2"]
        store.add_progress("i-2", "another instance has its own count", 1, False)
    finally:
        store.close()
    assert Store("sqlite://").max_steps == MAX_STEPS_PER_INSTANCE


def test_unicode_step_round_trips(store):
    store.add_progress("i-1", "Installation des paquets \u2013 \u00e9tape 3", 30, False)
    assert store.progress("i-1")[0].step == "Installation des paquets \u2013 \u00e9tape 3"


def test_two_stores_on_one_database_see_each_other(store_url, tmp_path):
    hub_side, service_side = Store(store_url), Store(store_url)
    try:
        hub_side.record_instance("i-1", "alice", "", "s1", "us-east-1")
        assert service_side.owner("i-1").user == "alice"
        service_side.add_progress("i-1", "Creating user", 20, False)
        assert [r.step for r in hub_side.progress("i-1")] == ["Creating user"]
        hub_side.forget_instance("i-1")
        assert service_side.progress("i-1") == []
        assert service_side.owner("i-1") is None
    finally:
        hub_side.close()
        service_side.close()
    if store_url.startswith("sqlite"):
        mode = sqlite3.connect(tmp_path / "mliy.sqlite").execute("PRAGMA journal_mode").fetchone()
        assert mode == ("wal",)


def _writer(url, instance_id, count, barrier):
    store = Store(url)
    barrier.wait(30)  # all processes create the tables and write at the same moment
    for i in range(count):
        store.add_progress(instance_id, f"step {i}", i % 101, False)
        store.record_instance(instance_id, "alice", "", f"stack-{i}", "us-east-1")
    store.close()


def test_processes_write_one_new_database_without_lock_errors(store_url):
    # all three create the tables (run the migrations) at the same moment
    url = store_url
    ctx = multiprocessing.get_context("spawn")
    writers = 3
    barrier = ctx.Barrier(writers)
    procs = [ctx.Process(target=_writer, args=(url, f"i-{n}", 30, barrier)) for n in range(writers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * writers
    store = Store(url)
    try:
        for n in range(writers):
            steps = [r.step for r in store.progress(f"i-{n}")]
            assert steps == [f"step {i}" for i in range(30)]
            assert store.owner(f"i-{n}").stack_id == "stack-29"
    finally:
        store.close()


def test_in_memory_store_is_shared_between_threads():
    import threading

    store = Store("sqlite://")
    thread = threading.Thread(
        target=store.record_instance, args=("i-1", "alice", "", "s", "us-east-1")
    )
    thread.start()
    thread.join()
    assert store.owner("i-1").user == "alice"


@pytest.mark.parametrize(
    ("hub_db_url", "expected_folder"),
    [
        ("sqlite:////srv/hub/jupyterhub.sqlite", "/srv/hub"),
        ("sqlite:///jupyterhub.sqlite", "CWD"),
        ("sqlite:///data/jupyterhub.sqlite", "CWD/data"),
        ("sqlite://", "CWD"),
        ("sqlite:///:memory:", "CWD"),
        ("postgresql://hub:secret@db.example.com/jupyterhub", "CWD"),
        (None, "CWD"),
    ],
    ids=["absolute", "relative", "relative-subdir", "memory", "memory-named", "postgres", "none"],
)
def test_default_store_url(hub_db_url, expected_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = expected_folder.replace("CWD", str(tmp_path))
    assert default_store_url(hub_db_url) == f"sqlite:///{folder}/{DEFAULT_FILENAME}"


@pytest.fixture
def open_umask():
    """The usual umask (022), under which SQLite would create its files 0644."""
    saved = os.umask(0o022)
    yield
    os.umask(saved)


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_the_sqlite_file_is_0600_and_a_created_folder_0700(tmp_path, open_umask):
    path = tmp_path / "srv" / "hub" / DEFAULT_FILENAME
    s = Store(f"sqlite:///{path}")
    try:
        s.record_instance("i-1", "alice", "", "arn:stack/1", "us-east-1")
        assert s.owner("i-1").user == "alice"
        files = sorted(p.name for p in path.parent.iterdir())
        assert DEFAULT_FILENAME in files and f"{DEFAULT_FILENAME}-wal" in files
        assert {name: _mode(path.parent / name) for name in files} == dict.fromkeys(files, 0o600)
    finally:
        s.close()
    assert _mode(tmp_path / "srv") == _mode(tmp_path / "srv" / "hub") == 0o700


def test_an_existing_sqlite_file_and_folder_keep_their_modes(tmp_path, open_umask):
    folder = tmp_path / "hub"
    folder.mkdir(mode=0o750)
    folder.chmod(0o750)
    first = Store(f"sqlite:///{folder / DEFAULT_FILENAME}")
    first.record_instance("i-1", "alice", "", "arn:stack/1", "us-east-1")
    first.close()
    (folder / DEFAULT_FILENAME).chmod(0o640)
    again = Store(f"sqlite:///{folder / DEFAULT_FILENAME}")
    try:
        assert again.owner("i-1").user == "alice"
    finally:
        again.close()
    assert _mode(folder) == 0o750
    assert _mode(folder / DEFAULT_FILENAME) == 0o640
