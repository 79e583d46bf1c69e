"""The reconcilers' findings in the ``mliy`` service: ``api/strays`` and the ``strays``
page, for hub admins only, escaped, and refusing any query argument."""

from datetime import UTC, datetime, timedelta

import pytest
from servicehub import start_admin_hub

from mliy_spawner.store import Store

NOW = datetime.now(UTC).replace(microsecond=0)
ORPHAN = "arn:aws:cloudformation:us-east-1:123456789012:stack/mliy-ann-1/abc"
GAVE_UP = "arn:aws:cloudformation:us-east-1:123456789012:stack/mliy-bo-2/def"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    hub = start_admin_hub(tmp_path_factory.mktemp("strayshub"))
    store = Store(hub.store_url)
    found = [
        {
            "kind": "orphan",
            "stack_id": ORPHAN,
            "stack_name": "mliy-ann-1",
            "user": "ann",
            "server": "",
            "reason": "no server's state names it",
            "since": NOW - timedelta(hours=2),
        },
        {
            "kind": "delete-gave-up",
            "stack_id": GAVE_UP,
            "stack_name": "<img src=x onerror=alert(1)>",
            "user": "",
            "server": "",
            "reason": "DELETE_FAILED: <b>role in use</b>",
            "since": None,
        },
    ]
    store.replace_findings("mliy", "us-east-1", found, when=NOW)
    store.close()
    yield hub
    hub.stop()


@pytest.fixture(scope="module")
def browsers(hub):
    """A logged-in session of each user for the whole module: one login (and one pass
    through the service's OAuth) each."""
    sessions = {name: hub.browser(name) for name in ("ann", "root")}
    yield sessions
    for session in sessions.values():
        session.close()


def test_admins_read_the_findings(hub):
    r = hub.service("GET", "api/strays", token=hub.tokens["root"])
    assert r.status_code == 200, r.text
    findings = r.json()["findings"]
    assert [(f["kind"], f["stack_id"], f["user"]) for f in findings] == [
        ("delete-gave-up", GAVE_UP, ""),
        ("orphan", ORPHAN, "ann"),
    ]
    orphan = findings[1]
    assert orphan["since"] == (NOW - timedelta(hours=2)).isoformat().replace("+00:00", "Z")
    assert orphan["seen"] == NOW.isoformat().replace("+00:00", "Z")
    assert (orphan["hub"], orphan["region"]) == ("mliy", "us-east-1")
    assert findings[0]["since"] is None  # unknown stays unknown


def test_the_findings_are_for_admins_only(hub, browsers):
    r = hub.service("GET", "api/strays", token=hub.tokens["ann"])
    assert r.status_code == 403 and "hub admins" in r.json()["message"]
    assert hub.service("GET", "api/strays").status_code == 401
    page = browsers["ann"].get(f"{hub.service_url}/strays", timeout=30)
    assert page.status_code == 403 and "hub admins" in page.text
    assert ORPHAN not in page.text and ">Strays<" not in page.text


def test_the_page_lists_them_escaped(hub, browsers):
    page = browsers["root"].get(f"{hub.service_url}/strays", timeout=30)
    home = browsers["root"].get(f"{hub.service_url}/costs", timeout=30)
    assert page.status_code == 200, page.text
    assert "mliy-ann-1" in page.text and "ann/" in page.text
    assert "<img src=x" not in page.text and "&lt;img src=x" in page.text
    assert "<b>role in use</b>" not in page.text and "&lt;b&gt;role in use" in page.text
    assert "unknown" in page.text  # the gave-up stack's "since"
    assert ">Strays<" in home.text  # in an admin's navigation


@pytest.mark.parametrize(
    "query", ["?kind=orphan", "?token=abc", "?user=ann&user=bob", "?%FF=1"], ids=str
)
def test_query_arguments_are_refused(hub, browsers, query):
    r = hub.service("GET", f"api/strays{query}", token=hub.tokens["root"])
    assert r.status_code == 400, r.text
    assert "not allowed here; allowed: none" in r.json()["message"]
    page = browsers["root"].get(f"{hub.service_url}/strays{query}", timeout=30)
    assert page.status_code == 400 and "allowed: none" in page.text
