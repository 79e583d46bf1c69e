"""Money from usage intervals (mliy_spawner.costs) and the ledger's plan
(mliy_spawner.ledger.plan), with a controllable clock: no AWS, no store."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from mliy_spawner import costs, ledger
from mliy_spawner.reflector import InstanceView

NOV = costs.parse_month("2026-11")
T0 = datetime(2026, 11, 10, 8, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def interval(state="running", start=T0, end=None, hourly="0.10", gib=0, gib_price="0.08", **kw):
    values = {
        "user": "alice",
        "server": "",
        "group": "analysts",
        "config": "python",
        "instance_id": "i-1",
        "instance_type": "m4.large",
        "region": "us-east-1",
    }
    values.update(kw)
    return costs.Interval(
        state=state,
        start=start,
        end=end,
        hourly_usd=None if hourly is None else Decimal(hourly),
        volume_gib=gib,
        gib_month_usd=None if gib_price is None else Decimal(gib_price),
        **values,
    )


def view(state="running", instance_type="m4.large", instance_id="i-1", gib="20", **times):
    tags = {"mliy:user": "alice", "mliy:launch-group": "analysts", "mliy:software-config": "python"}
    if gib is not None:
        tags[ledger.VOLUME_TAG] = gib
    return InstanceView(instance_id, state, "10.0.0.1", instance_type, "stack", tags, **times)


def test_running_hours_cost_the_hourly_price():
    report = costs.report([interval(end=T0 + 3 * HOUR)], NOV, T0 + 10 * HOUR)
    [line] = report.lines
    assert line.hours == Decimal("3.00")
    assert line.cost == Decimal("0.30")
    assert report.total == Decimal("0.30")


def test_an_open_interval_counts_up_to_now():
    report = costs.report([interval()], NOV, T0 + 90 * timedelta(minutes=1))
    assert report.lines[0].cost == Decimal("0.15")
    assert report.lines[0].state == "running"


def test_a_stopped_volume_is_charged_by_gib_month():
    # 100 GiB at $0.08 for the whole 720-hour month is $8.00; for 72 hours, $0.80
    stopped = interval("stopped", hourly=None, gib=100, end=T0 + 72 * HOUR)
    report = costs.report([stopped], NOV, T0 + 100 * HOUR)
    assert report.lines[0].cost == Decimal("0.80")
    assert report.lines[0].hours == Decimal("0.00")


def test_an_unknown_price_is_unknown_never_zero():
    report = costs.report(
        [
            interval(hourly=None, end=T0 + HOUR),
            interval(instance_id="i-2", end=T0 + HOUR),
        ],
        NOV,
        T0 + 2 * HOUR,
    )
    unknown, known = report.lines
    assert unknown.cost is None and unknown.known_cost == Decimal("0.00")
    assert known.cost == Decimal("0.10")
    assert report.total == Decimal("0.10") and report.unknown_lines == 1


def test_a_price_change_mid_month_keeps_each_price_for_its_hours():
    before = interval(end=T0 + 2 * HOUR)
    after = interval(start=T0 + 2 * HOUR, end=T0 + 4 * HOUR, hourly="0.25")
    report = costs.report([before, after], NOV, T0 + 5 * HOUR)
    assert report.lines[0].cost == Decimal("0.70")
    assert report.lines[0].hourly_usd == Decimal("0.25")


def test_only_the_months_part_counts():
    # from Oct 31 22:00 to Nov 1 02:00: two hours in each month
    start = datetime(2026, 10, 31, 22, tzinfo=UTC)
    spanning = interval(start=start, end=start + 4 * HOUR, hourly="1")
    assert costs.report([spanning], NOV, T0).total == Decimal("2.00")
    october = costs.parse_month("2026-10")
    assert costs.report([spanning], october, T0).total == Decimal("2.00")


def test_totals_add_up_exactly_across_days_servers_and_groups():
    # prices that do not round evenly: every view must still sum to the same cents
    pieces = [
        interval(start=T0 + n * 7 * HOUR, end=T0 + (n * 7 + 5) * HOUR, hourly="0.0333")
        for n in range(12)
    ]
    pieces += [interval(instance_id="i-2", user="bob", group="students", hourly="0.0117")]
    report = costs.report(pieces, NOV, T0 + 200 * HOUR)
    lines = sum(line.known_cost for line in report.lines)
    days = sum(report.per_day().values())
    groups = sum(v for v, _ in report.by("group").values())
    users = sum(v for v, _ in report.by("user").values())
    assert report.total == lines == days == groups == users
    for line in report.lines:
        assert line.known_cost == sum(v for v in line.days.values())


def test_money_is_decimal_never_float():
    report = costs.report([interval(end=T0 + HOUR)], NOV, T0 + HOUR)
    assert isinstance(report.total, Decimal)
    assert costs.as_text(report.total) == "0.10"


@pytest.mark.parametrize(
    "text",
    [
        "2026-13",
        "2026-00",
        "26-11",
        "2026-1",
        "2026-11-01",
        "",
        "１９７０-01",
        "2026-11\n",
        None,
        202611,
    ],
)
def test_a_bad_month_names_the_field(text):
    with pytest.raises(costs.CostError, match="month"):
        costs.parse_month(text)


@pytest.mark.parametrize("amount", [0.1, -5, "-5", "1e3", "NaN", "12.345", True, "", "1,000"])
def test_a_bad_budget_amount_is_refused(amount):
    with pytest.raises(costs.CostError, match="budget_usd"):
        costs.parse_amount(amount, "budget_usd")


def test_a_month_in_another_time_zone_starts_at_its_midnight():
    month = costs.parse_month("2026-11", tz="America/New_York")
    assert month.start == datetime(2026, 11, 1, 4, tzinfo=UTC)


def test_budget_check_refuses_over_and_counts_reservations():
    budget = costs.Budget("group", "analysts", "analysts", Decimal("1.00"))
    report = costs.report([interval(end=T0 + 8 * HOUR)], NOV, T0 + 9 * HOUR)  # $0.80 spent
    assert costs.check([budget], report, Decimal("0.10")) is None
    refusal = costs.check([budget], report, Decimal("0.30"))
    assert refusal is not None
    assert "$1.00" in refusal.message and "$0.80" in refusal.message
    assert "$0.30/hour" in refusal.message and "2026-12-01" in refusal.message
    # the same choice with another spawn's first hour already reserved
    assert costs.check([budget], report, Decimal("0.10"), {budget: Decimal("0.15")})
    # an unknown price cannot be checked against a budget
    assert "unknown" in costs.check([budget], report, None).message


# ---- the ledger's plan ---------------------------------------------------------------


def plan(open_intervals, instances, now, prices=None, last_ends=None):
    prices = prices or {"m4.large": Decimal("0.10"), "m4.xlarge": Decimal("0.20")}
    return ledger.plan(
        open_intervals,
        instances,
        hub="mliy",
        region="us-east-1",
        price_of=prices.get,
        gib_month_usd=Decimal("0.08"),
        now=now,
        last_ends=last_ends,
    )


def opened_row(opened, id_=1):
    from dataclasses import replace

    return replace(opened, id=id_)


def test_a_new_running_instance_opens_from_its_launch_time():
    close, opened = plan([], {"i-1": view(launch_time=T0)}, T0 + HOUR)
    assert close == []
    [new] = opened
    assert (new.state, new.start, new.hourly_usd, new.volume_gib) == (
        "running",
        T0,
        Decimal("0.10"),
        20,
    )


def test_nothing_changes_while_the_view_matches():
    _, [new] = plan([], {"i-1": view(launch_time=T0)}, T0)
    assert plan([opened_row(new)], {"i-1": view(launch_time=T0)}, T0 + HOUR) == ([], [])


def test_a_stop_closes_running_and_opens_stopped_at_the_stop_time():
    _, [new] = plan([], {"i-1": view(launch_time=T0)}, T0)
    stopped = view("stopped", launch_time=T0, transition_time=T0 + 2 * HOUR)
    close, [after] = plan([opened_row(new)], {"i-1": stopped}, T0 + 5 * HOUR)
    assert close == [(1, T0 + 2 * HOUR)]
    assert (after.state, after.start, after.hourly_usd) == ("stopped", T0 + 2 * HOUR, None)


def test_termination_or_disappearance_closes_the_interval():
    _, [new] = plan([], {"i-1": view(launch_time=T0)}, T0)
    assert plan([opened_row(new)], {"i-1": view("terminated")}, T0 + HOUR) == (
        [(1, T0 + HOUR)],
        [],
    )
    assert plan([opened_row(new)], {}, T0 + HOUR) == ([(1, T0 + HOUR)], [])


def test_a_type_or_price_change_closes_and_reopens_now():
    _, [new] = plan([], {"i-1": view(launch_time=T0)}, T0)
    close, [after] = plan([opened_row(new)], {"i-1": view("running", "m4.xlarge")}, T0 + HOUR)
    assert close == [(1, T0 + HOUR)] and after.hourly_usd == Decimal("0.20")
    cheaper = {"m4.large": Decimal("0.05")}
    close, [after] = plan([opened_row(new)], {"i-1": view(launch_time=T0)}, T0 + HOUR, cheaper)
    assert close == [(1, T0 + HOUR)] and after.hourly_usd == Decimal("0.05")


def test_a_new_interval_never_starts_before_the_last_one_ended():
    last = {"i-1": T0 + 3 * HOUR}
    _, [new] = plan([], {"i-1": view(launch_time=T0)}, T0 + 4 * HOUR, last_ends=last)
    assert new.start == T0 + 3 * HOUR


def test_an_unknown_price_or_volume_is_recorded_as_unknown():
    _, [new] = plan([], {"i-1": view("running", "x9.huge", gib=None, launch_time=T0)}, T0)
    assert new.hourly_usd is None and new.volume_gib is None


def test_outside_changes_with_times_in_the_future_are_kept_to_now():
    _, [new] = plan([], {"i-1": view(launch_time=T0 + 9 * HOUR)}, T0)
    assert new.start == T0
