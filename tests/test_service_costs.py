"""Costs in the ``mliy`` service: who sees what, the API (JSON and CSV), the pages, and
the ``mliy-costs`` CLI, all agreeing to the cent with the ledger; hostile queries get 400.

The usage is written straight into the store the service reads (the ledger's own
tests cover how it is kept); November 2026 is a closed month, so every view computes the
same cents whenever it runs.
"""

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from servicehub import start_hub

from mliy_spawner import costs, costviews
from mliy_spawner.costs_cli import main as costs_cli
from mliy_spawner.service.app import Settings, parse_group_admins
from mliy_spawner.service.costs import Forbidden, visible
from mliy_spawner.store import Store

MONTH = costs.parse_month("2026-11")
START = MONTH.start


def _interval(user, server, group, instance_id, hours, *, day=0, hourly="0.0116", **kw):
    start = START + timedelta(days=day, hours=1)
    values = {
        "user": user,
        "server": server,
        "group": group,
        "config": kw.pop("config", "small"),
        "instance_id": instance_id,
        "instance_type": kw.pop("instance_type", "t2.micro"),
        "region": "us-east-1",
        "state": kw.pop("state", costs.RUNNING),
        "start": start,
        "end": start + timedelta(hours=hours),
        "hourly_usd": None if hourly is None else Decimal(hourly),
        "volume_gib": kw.pop("volume_gib", 10),
        "gib_month_usd": Decimal("0.08"),
        "hub": "test",
    }
    values.update(kw)
    return costs.Interval(**values)


USAGE = [
    _interval("ann", "", "students", "i-0a", 30),
    _interval("ann", "gpu", "students", "i-0b", 7, day=3, hourly="0.9", instance_type="p2"),
    _interval("ann", "gpu", "students", "i-0b", 100, day=4, state=costs.STOPPED),
    _interval("bob", "", "students", "i-0c", 48, day=10, config="big"),
    # a type the catalog lacks: unknown, never 0
    _interval(
        "cat",
        "",
        "staff",
        "i-0d",
        5,
        day=2,
        hourly=None,
        instance_type="x9.huge",
        config="<b>x</b>",
    ),
    _interval("=cmd|' /C calc'!A0", "", "staff", "i-0e", 2, day=6),
]


def _report(**only):
    return costs.report(
        [i for i in USAGE if all(getattr(i, k) == v for k, v in only.items())],
        MONTH,
        MONTH.end,
    )


# ---- pure parts ---------------------------------------------------------------------


ANN = {"name": "ann", "groups": ["students"], "admin": False}
ADMIN = {"name": "root", "groups": [], "admin": True}


@pytest.mark.parametrize(
    "model, user, group, visibility, expected",
    [
        (ANN, None, None, "members", ("ann", None)),
        (ANN, "ann", None, "members", ("ann", None)),
        (ANN, "bob", None, "members", Forbidden),
        (ANN, None, "students", "members", (None, "students")),
        (ANN, "bob", "students", "members", ("bob", "students")),
        (ANN, None, "staff", "members", Forbidden),
        (ANN, None, "students", "admins", Forbidden),
        ({**ANN, "name": "lead"}, None, "students", "admins", (None, "students")),
        (ADMIN, "bob", None, "admins", ("bob", None)),
        (ADMIN, None, None, "members", (None, None)),
    ],
)
def test_who_sees_what(model, user, group, visibility, expected):
    admins = {"students": frozenset({"lead"})}
    if expected is Forbidden:
        with pytest.raises(Forbidden):
            visible(model, user, group, visibility, admins)
    else:
        assert visible(model, user, group, visibility, admins) == expected


@pytest.mark.parametrize(
    "values, field",
    [
        ({"month": "2026-13"}, "month"),
        ({"month": "2026-1"}, "month"),
        ({"month": "<script>"}, "month"),
        ({"month": "1969-12"}, "month"),
        ({"month": "２０２６-11"}, "month"),  # fullwidth digits
        ({"month": "2026-11\n"}, "month"),
        ({"user": ""}, "user"),
        ({"user": "a" * 256}, "user"),
        ({"user": "ann\x00"}, "user"),
        ({"user": "ann\u202e"}, "user"),  # a bidi override
        ({"group": "x\ny"}, "group"),
    ],
)
def test_bad_query_values_name_the_parameter(values, field):
    with pytest.raises(costs.CostError, match=rf"^{field}\b"):
        costviews.parse_query(values)


def test_json_csv_and_text_agree_with_the_report_to_the_cent():
    report = _report()
    data = costviews.as_json(report)
    assert data["total_usd"] == costs.as_text(report.total)
    assert sum(Decimal(s["known_cost_usd"]) for s in data["servers"]) == report.total
    assert data["unknown_servers"] == 1
    [unknown] = [s for s in data["servers"] if s["instance_id"] == "i-0d"]
    assert unknown["cost_usd"] is None and unknown["hourly_usd"] is None
    rows = list(csv.DictReader(io.StringIO(costviews.as_csv(report))))
    assert [r["instance_id"] for r in rows] == [s["instance_id"] for s in data["servers"]]
    assert [r["cost_usd"] for r in rows] == [s["cost_usd"] or "unknown" for s in data["servers"]]
    assert f"${data['total_usd']} known; 1 server(s)" in costviews.as_text(report)


def test_csv_cells_never_start_a_formula():
    rows = list(csv.reader(io.StringIO(costviews.as_csv(_report(group="staff")))))
    users = [row[1] for row in rows[1:]]
    assert "'=cmd|' /C calc'!A0" in users
    assert not any(cell[:1] in "=+-@" for row in rows for cell in row if cell)


def test_the_chart_is_escaped_svg_with_one_bar_per_day():
    chart = str(costviews.bar_chart(_report().per_day()))
    assert chart.startswith("<svg") and chart.count("<rect") == 30
    assert "<script" not in chart


def test_group_admins_setting_is_checked():
    assert parse_group_admins('{"students": ["lead"]}') == {"students": frozenset({"lead"})}
    for bad in ("[1]", '{"students": "lead"}', "{", '{"s": [1]}'):
        with pytest.raises(ValueError, match="MLIY_GROUP_ADMINS"):
            parse_group_admins(bad)
    base = {
        "JUPYTERHUB_SERVICE_URL": "http://127.0.0.1:1",
        "JUPYTERHUB_API_URL": "http://127.0.0.1:2/hub/api",
        "JUPYTERHUB_API_TOKEN": "t",
    }
    with pytest.raises(ValueError, match="MLIY_TEAM_VISIBILITY"):
        Settings.from_env({**base, "MLIY_TEAM_VISIBILITY": "everyone"})
    with pytest.raises(ValueError, match="MLIY_COST_TIMEZONE"):
        Settings.from_env({**base, "MLIY_COST_TIMEZONE": "Mars/Olympus"})


# ---- the CLI ------------------------------------------------------------------------


@pytest.fixture
def filled_store(tmp_path):
    url = f"sqlite:///{tmp_path / 'mliy.sqlite'}"
    store = Store(url)
    store.update_usage(open=USAGE)
    store.close()
    return url


def test_cli_report_agrees_with_the_api_json(filled_store, capsys):
    assert costs_cli(["report", "--month", "2026-11", "--json", "--store", filled_store]) == 0
    assert json.loads(capsys.readouterr().out) == costviews.as_json(_report())
    args = ["report", "--month", "2026-11", "--csv", "--group", "students"]
    assert costs_cli([*args, "--store", filled_store]) == 0
    assert capsys.readouterr().out == costviews.as_csv(_report(group="students"))
    assert (
        costs_cli(["report", "--month", "2026-11", "--user", "bob", "--store", filled_store]) == 0
    )
    out = capsys.readouterr().out
    assert "bob" in out and "ann" not in out and "Total 2026-11 (UTC): $" in out


@pytest.mark.parametrize(
    "args, words",
    [
        (["--month", "2026-13"], "--month"),
        (["--user", "a\x00"], "--user"),
        (["--timezone", "Nowhere/Else"], "--timezone"),
        (["--csv", "--json"], "not allowed with"),
    ],
)
def test_cli_refuses_bad_arguments(filled_store, capsys, args, words):
    assert costs_cli(["report", *args, "--store", filled_store]) == 2
    assert words in capsys.readouterr().err


def test_cli_does_not_create_a_missing_store(tmp_path, capsys):
    missing = tmp_path / "nowhere.sqlite"
    assert costs_cli(["report", "--store", f"sqlite:///{missing}"]) == 1
    assert "no store at" in capsys.readouterr().err
    assert not missing.exists()


# ---- against a real hub -------------------------------------------------------------


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    hub = start_hub(
        tmp_path_factory.mktemp("costhub"),
        environment={
            "MLIY_ADDRESS_RATE": "1000",
            "MLIY_ADDRESS_BURST": "100000",
            "MLIY_GROUP_ADMINS": json.dumps({"staff": ["lead"]}),
        },
    )
    for group in ("students", "staff"):
        assert hub.api("POST", f"/groups/{group}").status_code in (201, 409)
    hub.create_user("ann", groups=["students"])
    hub.create_user("bob", groups=["students"])
    hub.create_user("cat", groups=["staff"])
    hub.create_user("root", admin=True)
    store = Store(hub.store_url)
    store.update_usage(open=USAGE)
    # two servers running now, for "what runs now": i-0a is recorded by a server of
    # this hub, i-0f by none (orphaned)
    now = datetime.now(UTC)
    store.update_usage(
        open=[
            _interval(
                "bob", "live", "students", "i-0f", 0, start=now - timedelta(hours=2), end=None
            ),
            _interval("ann", "", "students", "i-0a", 0, start=now - timedelta(hours=1), end=None),
        ]
    )
    store.record_instance("i-0a", "ann", "", "", "us-east-1")
    store.close()
    hub.create_user("lead")
    hub.tokens = {name: hub.user_token(name) for name in ("ann", "bob", "cat", "lead", "root")}
    yield hub
    hub.stop()


def _costs(hub, user, query="month=2026-11", fmt=""):
    return hub.service("GET", f"api/costs{fmt}?{query}", token=hub.tokens[user])


def test_api_owner_sees_only_their_own(hub):
    r = _costs(hub, "ann")
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.json() == costviews.as_json(_report(user="ann"))
    assert {s["user"] for s in r.json()["servers"]} == {"ann"}
    assert r.json()["total_usd"] == costs.as_text(_report(user="ann").total)


@pytest.mark.parametrize(
    "asker, query, status",
    [
        ("ann", "month=2026-11&user=bob", 403),
        ("ann", "month=2026-11&group=staff", 403),
        ("ann", "month=2026-11&group=students", 200),
        ("bob", "month=2026-11&group=students&user=ann", 200),
        ("cat", "month=2026-11&group=staff", 200),
        ("lead", "month=2026-11&group=staff", 403),  # an admin of staff, not a member
        ("root", "month=2026-11&user=cat", 200),
    ],
)
def test_api_visibility(hub, asker, query, status):
    r = _costs(hub, asker, query)
    assert r.status_code == status, r.text
    if status == 403:
        assert "costs" in r.json()["message"]


def test_api_csv_equals_the_cli(hub, capsys):
    r = _costs(hub, "root", fmt=".csv")
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/csv")
    assert "attachment" in r.headers["Content-Disposition"]
    assert costs_cli(["report", "--month", "2026-11", "--csv", "--store", hub.store_url]) == 0
    assert r.text == capsys.readouterr().out
    total = sum(
        Decimal(row["cost_usd"])
        for row in csv.DictReader(io.StringIO(r.text))
        if row["cost_usd"] != "unknown"
    )
    assert costs.as_text(total) == _costs(hub, "root").json()["total_usd"]


@pytest.mark.parametrize(
    "query, field",
    [
        ("month=2026-13", "month"),
        ("month=2026-11&month=2026-10", "month"),
        ("month=%3Cscript%3E", "month"),
        ("user=ann%00", "user"),
        ("user=" + "a" * 300, "user"),
        ("group=", "group"),
        ("user=%ff", "user"),
        ("admin=1", "admin"),
    ],
)
def test_api_hostile_queries_are_400_naming_the_parameter(hub, query, field):
    r = _costs(hub, "ann", query)
    assert r.status_code == 400, r.text
    assert field in r.json()["message"]
    # echoed only as JSON text, never as a page
    assert r.headers["Content-Type"].startswith("application/json")


def test_api_without_a_token_is_401(hub):
    r = hub.service("GET", "api/costs")
    assert r.status_code == 401
    r = hub.service("GET", "api/costs", headers={"Authorization": "token nope"})
    assert r.status_code == 401


def _pages(hub, user, *paths):
    """GET each of ``paths`` (under the service) in a browser logged in as ``user``."""
    browser = hub.browser(user)
    try:
        return [browser.get(f"{hub.service_url}/{path}", timeout=30) for path in paths]
    finally:
        browser.close()


def test_pages_show_costs_by_visibility(hub):
    mine, team, one, billing, other, bad, download = _pages(
        hub,
        "ann",
        "costs?month=2026-11",
        "costs/team?month=2026-11",
        "costs/team?month=2026-11&group=students&user=bob",
        "costs/billing",
        "costs/team?group=staff",
        "costs?month=13-2026",
        "api/costs.csv?month=2026-11",
    )
    assert mine.status_code == 200, mine.text
    assert f"${costs.money(_report(user='ann').total)}" in mine.text
    assert "<svg" in mine.text and "bob" not in mine.text
    assert team.status_code == 200 and "<td>bob</td>" in team.text and "<td>ann</td>" in team.text
    assert f"${costs.money(_report(group='students').total)}" in team.text
    assert one.status_code == 200 and "bob" in one.text and "<td>ann</td>" not in one.text
    assert billing.status_code == 403 and "hub admins" in billing.text
    assert other.status_code == 403
    assert bad.status_code == 400 and "month" in bad.text
    assert download.status_code == 200
    assert download.text == costviews.as_csv(_report(user="ann"))


def test_billing_page_for_admins_flags_unknown_and_orphaned(hub):
    page, now = _pages(hub, "root", "costs/billing?month=2026-11", "costs/billing")
    assert page.status_code == 200, page.text
    assert f"${costs.money(_report().total):,}" in page.text
    assert "unknown price" in page.text
    # names are escaped, never markup
    assert "=cmd|&#39; /C calc&#39;!A0" in page.text
    assert "&lt;b&gt;x&lt;/b&gt;" in page.text and "<b>x</b>" not in page.text
    assert now.status_code == 200
    flagged = '<code>{}</code></td><td class="unknown">orphaned'
    assert flagged.format("i-0f") in now.text
    assert flagged.format("i-0a") not in now.text
    assert "Running now: 2 server(s), $0.0232/hour" in now.text
