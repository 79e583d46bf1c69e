"""The hub's home and spawn-pending templates (mliy_spawner/hub_templates/), rendered the
way JupyterHub renders them: async Jinja, autoescape, ``templates/<name>`` for JupyterHub's
own page (a stand-in here; a real hub and browser render them in tests/e2e/test_browser.py).
"""

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace

import pytest
from jinja2 import ChoiceLoader, DictLoader, Environment, FileSystemLoader, PrefixLoader

from mliy_spawner import costs, costviews, hub_templates

JUPYTERHUB_PAGES = {
    "home.html": "<main>{% block main %}JupyterHub's home{% endblock %}</main>",
    "spawn_pending.html": "<main>{% block message %}Starting up.{% endblock %}</main>",
}


def render(name, **context):
    env = Environment(
        loader=ChoiceLoader(
            [
                PrefixLoader({"templates": DictLoader(JUPYTERHUB_PAGES)}, "/"),
                FileSystemLoader([hub_templates.PATH]),
            ]
        ),
        autoescape=True,
        enable_async=True,
    )
    html = asyncio.run(env.get_template(name).render_async(**context))
    return " ".join(html.replace(">", "> ").replace("<", " <").split())  # whitespace aside


MONTH = costs.month_of(datetime(2026, 11, 15, tzinfo=UTC))
NOW = MONTH.start + timedelta(days=3)


def interval(server, state, hours, hourly="0.108", instance_type="m4.large"):
    """An open interval of ``hours`` until NOW."""
    return costs.Interval(
        user="alice",
        server=server,
        group="analysts",
        config="python",
        instance_id=f"i-{abs(hash(server)) % 10**17:017x}",
        instance_type=instance_type,
        region="us-east-1",
        state=state,
        start=NOW - timedelta(hours=hours),  # open: the server is in that state now
        hourly_usd=None if hourly is None else Decimal(hourly),
    )


def spawner_with(intervals, notices=()):
    async def mliy_costs():
        return {
            "month": MONTH.key,
            "report": costs.report(intervals, MONTH, NOW),
            "notices": list(notices),
            "dollars": costviews.dollars,
            "rate": costviews.rate,
            "costs_url": "/services/mliy/costs",
        }

    return SimpleNamespace(mliy_costs=mliy_costs)


def test_home_lists_each_server_with_its_cost_this_month():
    html = render(
        "home.html",
        default_server=spawner_with(
            [interval("", "running", 10), interval("gpu", "running", 2, hourly=None)],
            notices=["You have spent 80 % of the analysts group's monthly budget ($100.00)."],
        ),
    )
    assert html.startswith("<main> JupyterHub's home")  # JupyterHub's page stays
    assert "Costs in 2026-11" in html
    assert "You have spent 80 %" in html
    assert '<strong id="mliy-total"> $1.08 </strong> , plus 1 server(s) whose price' in html
    row = '<td> {} </td> <td> m4.large </td> <td> running </td> <td class="text-end"> {} </td>'
    # $/hour exact, hours running, cost this month; an unknown price is never $0.00
    assert row.format("(default server)", "$0.108") + ' <td class="text-end"> 10.00 </td>' in html
    assert '<td class="text-end"> 10.00 </td> <td class="text-end"> $1.08 </td>' in html
    assert row.format("gpu", "unknown") in html
    assert '<td class="text-end"> 2.00 </td> <td class="text-end"> unknown </td>' in html
    assert 'href="/services/mliy/costs"' in html


def test_a_stopped_server_shows_no_hourly_price():
    html = render("home.html", default_server=spawner_with([interval("", "stopped", 5)]))
    assert '<td> stopped </td> <td class="text-end"> - </td>' in html


def test_names_are_escaped():
    html = render(
        "home.html", default_server=spawner_with([interval("<script>x</script>", "running", 1)])
    )
    assert "<script>x" not in html and "&lt;script&gt;x&lt;/script&gt;" in html


@pytest.mark.parametrize(
    "default_server",
    [SimpleNamespace(), SimpleNamespace(mliy_costs=lambda: asyncio.sleep(0, result=None))],
    ids=["another spawner", "ledger unreadable"],
)
def test_home_is_jupyterhubs_alone_without_costs(default_server):
    assert render("home.html", default_server=default_server) == "<main> JupyterHub's home </main>"


def test_spawn_pending_names_what_is_launched_and_its_price():
    async def price():
        return "m4.large at $0.108/hour, and $1.60/month for its 20 GiB volume"

    html = render("spawn_pending.html", spawner=SimpleNamespace(mliy_launch_price=price))
    assert html.startswith("<main> Starting up.")
    assert (
        '<p id="mliy-launch-price"> Launching m4.large at $0.108/hour, and $1.60/month for '
        "its 20 GiB volume. </p>"
    ) in html
    assert "mliy-launch-price" not in render("spawn_pending.html", spawner=SimpleNamespace())
