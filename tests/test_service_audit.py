"""The audit trail in the ``mliy`` service: ``api/audit`` (JSON and CSV) and the admin
page, for hub admins only, their filters, hostile queries (400 naming the argument),
and the retention task."""

import asyncio
import csv
import io
from datetime import UTC, datetime, timedelta

import pytest
from servicehub import start_admin_hub

from mliy_spawner.service.audit import QueryError, parse_query, purge_forever
from mliy_spawner.store import Store

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    hub = start_admin_hub(tmp_path_factory.mktemp("audithub"))
    store = Store(hub.store_url)
    rows = [
        ("launch", "ann", "user", "form", "ok", "", "ann", NOW - timedelta(days=3)),
        ("stop", "idle-culler", "culler", "rest", "ok", "", "ann", NOW - timedelta(days=2)),
        ("resume", "root", "admin", "admin-panel", "ok", "", "ann", NOW - timedelta(days=1)),
        ("launch", "ann", "user", "rest", "refused", "budget: spent", "ann", NOW),
        # a name a spreadsheet would read as a formula
        ("remove", "=cmd|' /C calc'!A0", "user", "rest", "ok", "<b>x</b>", "=cmd", NOW),
    ]
    for action, actor, kind, path, outcome, reason, owner, when in rows:
        store.add_audit(
            action,
            actor=actor,
            actor_kind=kind,
            path=path,
            outcome=outcome,
            reason=reason,
            user=owner,
            server_name="gpu",
            stack_id="arn:aws:cloudformation:us-east-1:123456789012:stack/mliy-x/1",
            instance_id="i-0123",
            when=when,
        )
    store.close()
    yield hub
    hub.stop()


def _api(hub, query="", user="root", fmt=""):
    return hub.service("GET", f"api/audit{fmt}{query}", token=hub.tokens[user])


def test_admins_read_the_trail_newest_first_with_filters(hub):
    r = _api(hub)
    assert r.status_code == 200, r.text
    entries = r.json()["entries"]
    assert [e["action"] for e in entries[:3]] == ["remove", "launch", "resume"]
    culled = _api(hub, "?actor=idle-culler").json()["entries"]
    assert [(e["action"], e["actor_kind"], e["path"]) for e in culled] == [
        ("stop", "culler", "rest")
    ]
    refused = _api(hub, "?user=ann&outcome=refused").json()["entries"]
    assert [e["reason"] for e in refused] == ["budget: spent"]
    since = (NOW - timedelta(days=2, hours=1)).isoformat()
    until = (NOW - timedelta(hours=12)).isoformat()
    window = _api(hub, f"?since={since}&until={until}".replace("+", "%2B")).json()["entries"]
    assert [e["action"] for e in window] == ["resume", "stop"]
    assert [e["action"] for e in _api(hub, "?limit=2").json()["entries"]] == ["remove", "launch"]
    assert _api(hub, "?action=launch&outcome=ok").json()["entries"][0]["path"] == "form"


def test_csv_export_matches_the_json_and_keeps_names_as_text(hub):
    r = _api(hub, "?user=%3Dcmd", fmt=".csv")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [row["action"] for row in rows] == ["remove"]
    assert rows[0]["actor"] == "'=cmd|' /C calc'!A0" and rows[0]["user"] == "'=cmd"
    every = list(csv.DictReader(io.StringIO(_api(hub, fmt=".csv").text)))
    assert [row["id"] for row in every] == [str(e["id"]) for e in _api(hub).json()["entries"]]


def test_the_trail_is_for_admins_only(hub):
    r = _api(hub, user="ann")
    assert r.status_code == 403 and "hub admins" in r.json()["message"]
    assert hub.service("GET", "api/audit").status_code == 401
    browser = hub.browser("ann")
    try:
        page = browser.get(f"{hub.service_url}/audit", timeout=30)
        assert page.status_code == 403 and "for hub admins" in page.text
        assert ">Audit<" not in page.text
    finally:
        browser.close()


def test_the_page_shows_the_filtered_trail_escaped(hub):
    browser = hub.browser("root")
    try:
        page = browser.get(f"{hub.service_url}/audit?action=remove", timeout=30)
        bad = browser.get(f"{hub.service_url}/audit?action=%3Cscript%3E", timeout=30)
        home = browser.get(f"{hub.service_url}/costs", timeout=30)
    finally:
        browser.close()
    assert page.status_code == 200, page.text
    assert "&lt;b&gt;x&lt;/b&gt;" in page.text and "<b>x</b>" not in page.text
    assert "idle-culler" not in page.text  # filtered out
    assert 'href="/services/mliy/api/audit.csv?action=remove"' in page.text
    assert bad.status_code == 400 and "<script>" not in bad.text and "action" in bad.text
    assert ">Audit<" in home.text  # in an admin's navigation of the cost pages


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("?action=delete-everything", "action"),
        ("?outcome=maybe", "outcome"),
        ("?since=yesterday", "since"),
        ("?until=2026-13-01", "until"),
        ("?since=2026-12-02&until=2026-12-01", "since must come before until"),
        ("?limit=0", "limit"),
        ("?limit=10001", "limit"),
        ("?limit=-1", "limit"),
        ("?limit=1e3", "limit"),
        ("?limit=%EF%BC%95", "limit"),  # a full-width digit
        ("?user=", "user"),
        ("?user=ann%00", "user"),
        ("?actor=" + "a" * 300, "actor"),
        ("?user=%FF", "user"),
        ("?user=ann&user=bob", "user"),
        ("?token=abc", "token"),
        ("?month=2026-11", "month"),
    ],
)
def test_hostile_queries_get_400_naming_the_argument(hub, query, named):
    r = _api(hub, query)
    assert r.status_code == 400, r.text
    assert named in r.json()["message"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-01", datetime(2026, 12, 1, tzinfo=UTC)),
        ("2026-12-01T09:30:00+01:00", datetime(2026, 12, 1, 8, 30, tzinfo=UTC)),
        ("2026-12-01T09:30Z", datetime(2026, 12, 1, 9, 30, tzinfo=UTC)),
    ],
)
def test_times_without_an_offset_are_utc(text, expected):
    assert parse_query({"since": [text.encode()]})["since"] == expected


def test_parse_query_defaults():
    assert parse_query({}) == {"limit": 1000}
    with pytest.raises(QueryError, match="only user, actor"):
        parse_query({"format": [b"csv"]})


class FakeStore:
    def __init__(self, wanted=2):
        self.befores = []
        self.wanted = wanted
        self.done = asyncio.Event()
        self.loop = asyncio.get_running_loop()

    def purge_audit(self, before):  # runs in the executor
        self.befores.append(before)
        if len(self.befores) == self.wanted:
            self.loop.call_soon_threadsafe(self.done.set)
        return 1


async def test_retention_purges_at_start_and_then_every_period():
    store = FakeStore()
    task = asyncio.ensure_future(
        purge_forever(store, 30, every=0.01, now=lambda: datetime(2026, 12, 31, tzinfo=UTC))
    )
    await asyncio.wait_for(store.done.wait(), 30)
    task.cancel()
    assert store.befores[0] == datetime(2026, 12, 1, tzinfo=UTC)
    await purge_forever(FakeStore(), 0)  # keeps everything: returns at once
