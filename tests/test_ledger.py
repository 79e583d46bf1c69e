"""The usage ledger on moto (outside changes seen within a cycle) and the budget and
limit checks before a launch (403 and no AWS call)."""

import asyncio
import html as html_module
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from tornado import web

from mliy_spawner import costs, ledger
from mliy_spawner.store import Store


async def wait_for(check, tries=1000):
    for _ in range(tries):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the ledger did not catch up")


async def cycle(spawner):
    """One reflector cycle and the ledger's upkeep after it."""
    done = spawner.ledger.upkeeps
    await spawner.reflector.refresh()
    await wait_for(lambda: spawner.ledger.upkeeps > done)


def intervals(spawner):
    return spawner.store.usage_between(
        datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC), hub="mliy"
    )


async def launch(spawner, options=None):
    await spawner._run_apply_user_options(options or {})
    return await spawner.start()


async def test_outside_stop_and_start_close_and_open_intervals(make_spawner, aws_env):
    spawner = make_spawner()
    await launch(spawner)
    await cycle(spawner)
    [running] = intervals(spawner)
    assert (running.state, running.end, running.user, running.group) == (
        "running",
        None,
        "alice",
        "analysts",
    )
    assert running.hourly_usd is not None and running.volume_gib == 20
    instance_id = running.instance_id

    aws_env.ec2.stop_instances(InstanceIds=[instance_id])  # behind the hub's back
    await cycle(spawner)
    first, stopped = intervals(spawner)
    assert first.end is not None and first.end == stopped.start
    assert (stopped.state, stopped.end, stopped.hourly_usd) == ("stopped", None, None)

    aws_env.ec2.start_instances(InstanceIds=[instance_id])
    await cycle(spawner)
    *_, closed, again = intervals(spawner)
    assert closed.state == "stopped" and closed.end == again.start
    assert again.state == "running" and again.end is None


async def test_a_restarted_hub_keeps_open_intervals_without_gap_or_double_count(
    make_spawner, tmp_path
):
    spawner = make_spawner()
    await launch(spawner)
    await cycle(spawner)
    [before] = intervals(spawner)
    # a new hub process: a new ledger on the same store sees the same view
    fresh = ledger.Ledger(Store(spawner.store_url), spawner.cost_settings(), spawner._price_of)
    assert fresh.upkeep(spawner.reflector.instances) == ([], [])
    assert intervals(spawner) == [before]


async def test_terminated_instance_closes_its_interval(make_spawner, aws_env):
    spawner = make_spawner(stop_action="terminate")
    await launch(spawner)
    await cycle(spawner)
    await spawner.stop()
    await wait_for(lambda: intervals(spawner)[0].end is not None or None)
    assert all(i.end is not None for i in intervals(spawner))


# ---- refusals before any AWS call ----------------------------------------------------


def with_budget(spawner_config, **group):
    groups = {k: dict(v) for k, v in spawner_config["launch_groups"].items()}
    groups["analysts"].update(group)
    return groups


def aws_calls(counts):
    return sum(counts.values())


async def test_a_spent_budget_refuses_with_403_and_no_aws_call(
    make_spawner, spawner_config, counted_clients
):
    counts, ec2, cfn = counted_clients
    spawner = make_spawner(
        launch_groups=with_budget(spawner_config, budget_usd="0"), ec2_client=ec2, cfn_client=cfn
    )
    counts.clear()
    with pytest.raises(web.HTTPError) as refused:
        await spawner._run_apply_user_options({})
    assert refused.value.status_code == 403
    message = refused.value.jupyterhub_message
    assert "analysts group's monthly budget is $0.00" in message
    assert "$0.00 is spent" in message and "/hour" in message and "resets on" in message
    assert aws_calls(counts) == 0
    [entry] = spawner.store.audit_entries(outcome="refused")
    assert entry.action == "launch" and "budget" in entry.reason


async def test_a_user_budget_override_replaces_the_member_default(make_spawner, spawner_config):
    groups = with_budget(spawner_config, member_budget_usd="0")
    refused = make_spawner(launch_groups=groups)
    with pytest.raises(web.HTTPError, match="403"):
        await refused._run_apply_user_options({})
    allowed = make_spawner(launch_groups=groups, user_budgets={"alice": "100"})
    await allowed._run_apply_user_options({})
    allowed._release_reservation()


async def test_two_spawns_at_the_edge_of_a_budget_one_passes(make_spawner, spawner_config):
    probe = make_spawner()
    month = costs.month_of(datetime.now(UTC))
    price = probe._price_of("m4.large")
    first_hour = costs.hourly_cost(price, 20, Decimal("0.08"), month)
    # room for one first hour, not two
    budget = costs.money(first_hour * Decimal("1.5"))
    groups = with_budget(spawner_config, budget_usd=str(budget))
    one = make_spawner(launch_groups=groups)
    two = make_spawner(user="bob", launch_groups=groups)
    results = await asyncio.gather(
        one._run_apply_user_options({}), two._run_apply_user_options({}), return_exceptions=True
    )
    refused = [r for r in results if isinstance(r, web.HTTPError)]
    assert len(refused) == 1 and refused[0].status_code == 403
    one._release_reservation()
    two._release_reservation()


def spent_this_month(spawner, user, seconds, instance_id, hourly=3600):
    """A closed interval at the month's start of ``seconds`` ($1.00 a second by default)."""
    month = costs.month_of(datetime.now(UTC))
    return costs.Interval(
        user=user,
        server="",
        group="analysts",
        config="python",
        instance_id=instance_id,
        instance_type="m4.large",
        region=spawner.region,
        state="running",
        start=month.start,
        end=month.start + timedelta(seconds=seconds),
        hourly_usd=Decimal(hourly),
        hub=spawner.hub_name,
    )


def page_text(html):
    return " ".join(html_module.unescape(re.sub(r"<[^>]+>", " ", html)).split())


async def test_the_form_shows_the_spend_and_budget_left_from_the_ledger(
    make_spawner, spawner_config
):
    spawner = make_spawner(launch_groups=with_budget(spawner_config, budget_usd="5"))
    await spawner._connect_store()
    spawner.store.update_usage(
        open=[
            spent_this_month(spawner, "alice", 1, "i-0a"),
            spent_this_month(spawner, "bob", 3, "i-0b"),
        ]
    )
    month = costs.month_of(datetime.now(UTC)).key
    html = await spawner._render_options_form(spawner)
    text = page_text(html)
    assert f"Your spend in {month}: $1.00 ." in text  # alice's own
    # the group's budget counts every member's spend: alice's and bob's
    assert "The analysts group's monthly budget: $5.00; $4.00 spent this month, $1.00 left" in text
    assert "mliy-over-budget" not in html

    spawner.store.update_usage(open=[spent_this_month(spawner, "bob", 1, "i-0c", hourly=3420)])
    html = await spawner._render_options_form(spawner)
    assert "$4.95 spent this month, $0.05 left" in page_text(html)
    assert "mliy-over-budget" in html  # m4.large's first hour is $0.11


async def test_the_form_renders_when_the_ledger_cannot_be_read(make_spawner, spawner_config):
    spawner = make_spawner(launch_groups=with_budget(spawner_config, budget_usd="5"))
    await spawner._connect_store()

    def broken(*args, **kwargs):
        raise OSError("disk I/O error")

    spawner.store.usage_between = broken
    html = await spawner._render_options_form(spawner)
    assert 'name="launch_group"' in html and "Your spend" not in html


async def test_over_the_server_limit_is_403_and_no_aws_call(make_spawner, counted_clients):
    from jupyterhub import orm

    counts, ec2, cfn = counted_clients
    spawner = make_spawner(max_servers_per_user=1, ec2_client=ec2, cfn_client=cfn)
    row = spawner.orm_spawner
    other = orm.Spawner(user=row.user, name="other", state={"mliy": {"stack_id": "arn:x"}})
    row.test_session.add(other)
    row.test_session.commit()
    counts.clear()
    with pytest.raises(web.HTTPError) as refused:
        await spawner._run_apply_user_options({})
    assert refused.value.status_code == 403
    assert "max_servers_per_user" in refused.value.jupyterhub_message
    assert aws_calls(counts) == 0


async def test_over_the_volume_limit_is_403(make_spawner):
    spawner = make_spawner(max_volume_gib_per_user=10)
    with pytest.raises(web.HTTPError) as refused:
        await spawner._run_apply_user_options({"volume_size": 20})
    assert refused.value.status_code == 403
    assert "max_volume_gib_per_user" in refused.value.jupyterhub_message


# ---- while servers run ---------------------------------------------------------------


async def test_budget_action_stop_stops_and_records_the_reason(make_spawner, spawner_config):
    spawner = make_spawner(launch_groups=with_budget(spawner_config, budget_usd="1000"))
    await launch(spawner)
    await cycle(spawner)
    stopped = []

    async def stop_server(user, server, reason):
        stopped.append((user, server, reason))

    settings = spawner.cost_settings()
    settings.group_budgets = {"analysts": (Decimal("0"), None)}
    settings.budget_action = "stop"
    keeper = ledger.Ledger(spawner.store, settings, spawner._price_of, stop_server=stop_server)
    await keeper.review()
    assert stopped and stopped[0][:2] == ("alice", "")
    assert "budget is spent" in stopped[0][2]
    assert keeper.notices["alice"][0].startswith("The analysts group's monthly budget is")
    [entry] = spawner.store.audit_entries(action="budget-stop")
    assert entry.actor_kind == "automatic" and entry.user == "alice"


async def test_notify_only_tells_and_stops_nothing(make_spawner, spawner_config):
    spawner = make_spawner()
    await launch(spawner)
    await cycle(spawner)
    stopped = []

    async def stop_server(user, server, reason):
        stopped.append(user)

    settings = spawner.cost_settings()
    settings.group_budgets = {"analysts": (Decimal("0"), None)}
    keeper = ledger.Ledger(spawner.store, settings, spawner._price_of, stop_server=stop_server)
    await keeper.review()
    assert stopped == [] and keeper.notices["alice"]


def test_each_budget_in_force_gets_its_own_spend():
    """The review's budgets: the group's shared one, each member's (an override replaces
    the default), each with the spend costs.spent gives it; other groups' lines not counted."""
    month = costs.parse_month("2026-11")
    start = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    end = datetime(2026, 11, 2, 19, 0, tzinfo=UTC)
    rows = [
        ("alice", "students", "i-1", "0.10"),
        ("alice", "analysts", "i-2", "1.00"),  # alice in another group too
        ("bob", "students", "i-3", "0.25"),
        ("carol", "students", "i-4", "0.05"),
        ("dave", "analysts", "i-5", "2.00"),
    ]
    intervals = [
        costs.Interval(
            user=user,
            server="",
            group=group,
            config="small",
            instance_id=instance,
            instance_type="t2.micro",
            region="us-east-1",
            state="running",
            start=start,
            end=end,
            hourly_usd=Decimal(price),
        )
        for user, group, instance, price in rows
    ]
    report = costs.report(intervals, month, datetime(2026, 11, 20, tzinfo=UTC))
    settings = ledger.CostSettings(
        hub_name="mliy",
        region="us-east-1",
        user_budgets={"bob": Decimal("7")},
        group_budgets={"students": (Decimal("50"), Decimal("3")), "analysts": (None, None)},
    )
    found = ledger.Ledger(None, settings, lambda t: None)._budgets_in(report)
    assert [(b.kind, b.name, b.amount, used) for b, used in found] == [
        ("group", "students", Decimal("50"), Decimal("4.00")),
        ("user", "alice", Decimal("3"), Decimal("1.00")),
        ("user", "bob", Decimal("7"), Decimal("2.50")),
        ("user", "carol", Decimal("3"), Decimal("0.50")),
    ]
    assert all(used == costs.spent(report, budget) for budget, used in found)


# ---- what the hub's pages ask the spawner ------------------------------------------------


async def test_launch_price_names_the_type_its_rate_and_the_volume(make_spawner):
    # nothing launchable (a user in no launch group): no price line
    assert await make_spawner(user="carol", groups=()).mliy_launch_price() is None
    spawner = make_spawner()
    spawner.user_options = {"volume_size": 30}  # posted, not applied yet: defaults filled in
    assert await spawner.mliy_launch_price() == (
        "m4.large at $0.108/hour, and $2.40/month for its 30 GiB volume"
    )
    await spawner._run_apply_user_options({"instance_type": "m4.large", "volume_size": 20})
    spawner._release_reservation()
    assert await spawner.mliy_launch_price() == (
        "m4.large at $0.108/hour, and $1.60/month for its 20 GiB volume"
    )
    spawner.volume_price_per_gib_month = ""
    assert await spawner.mliy_launch_price() == (
        "m4.large at $0.108/hour, and its 20 GiB volume at an unknown price"
    )


async def test_home_page_costs_follow_the_ledger(make_spawner):
    spawner = make_spawner()
    await launch(spawner)
    await cycle(spawner)
    found = await spawner.mliy_costs()
    assert found["month"] == costs.month_of(datetime.now(UTC)).key
    [line] = found["report"].lines
    assert (line.user, line.server, line.state, line.instance_type) == (
        "alice",
        "",
        "running",
        "m4.large",
    )
    assert found["rate"](line.hourly_usd) == "$0.108"
    assert found["costs_url"] == "/services/mliy/costs"
    # another user's servers are not in alice's costs
    bob = make_spawner(user="bob")
    assert (await bob.mliy_costs())["report"].lines == []
