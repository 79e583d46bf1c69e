"""A month's days in its time zone (mliy_spawner.costs: 25-hour days, half-hour shifts, a
day a zone skipped) and the store's ``usage_between`` reading back every field it wrote.

The month's bounds are computed once per (year, month, zone); these tests pin what they
must be, against the zone's own local midnights.
"""

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from mliy_spawner import costs


def midnight(day, tz):
    return datetime(day.year, day.month, day.day, tzinfo=ZoneInfo(tz)).astimezone(UTC)


@pytest.mark.parametrize(
    "tz, year, month, hours",
    [
        ("UTC", 2026, 11, 720),
        ("America/New_York", 2026, 11, 721),  # clocks back on the 1st
        ("America/New_York", 2026, 3, 743),  # forward on the 8th
        ("Australia/Lord_Howe", 2026, 4, Decimal("720.5")),  # back half an hour
        ("Pacific/Apia", 2011, 12, 720),  # 30 December 2011 never happened there
        ("UTC", 2024, 2, 696),
    ],
    ids=["utc", "ny-fall-back", "ny-spring-forward", "lord-howe", "apia-skipped-day", "leap"],
)
def test_a_month_is_its_zone_midnights(tz, year, month, hours):
    m = costs.Month(year, month, tz)
    first = date(year, month, 1)
    after = date(year + month // 12, month % 12 + 1, 1)
    assert m.start == midnight(first, tz)
    assert m.end == midnight(after, tz) == m.next().start
    assert m.hours == hours
    assert m.days() == [first + timedelta(days=n) for n in range((after - first).days)]
    assert [m.day_start(d) for d in m.days()] == [midnight(d, tz) for d in m.days()]


def interval(**values):
    base = {
        "user": "ann",
        "server": "",
        "group": "g",
        "config": "c",
        "instance_id": "i-1",
        "instance_type": "t3.medium",
        "region": "us-east-1",
        "state": costs.RUNNING,
        "volume_gib": 0,
    }
    return costs.Interval(**(base | values))


def running(start, end, hourly="0.36"):
    return interval(start=start, end=end, hourly_usd=Decimal(hourly))


def test_the_day_clocks_go_back_has_25_hours():
    month = costs.Month(2026, 11, "America/New_York")
    report = costs.report([running(month.start, month.start + timedelta(days=2))], month, month.end)
    [line] = report.lines
    # 1 November is 25 hours long in New York: the 48 hours are 25 + 23
    assert line.days == {date(2026, 11, 1): Decimal("9.00"), date(2026, 11, 2): Decimal("8.28")}
    assert line.cost == Decimal("17.28") and line.hours == Decimal("48.00")


def test_a_day_the_zone_skipped_has_no_cost_of_its_own():
    month = costs.Month(2011, 12, "Pacific/Apia")
    start = midnight(date(2011, 12, 29), "Pacific/Apia")
    end = midnight(date(2011, 12, 31), "Pacific/Apia") + timedelta(hours=12)
    report = costs.report([running(start, end)], month, month.end)
    [line] = report.lines
    # the 29th, then the 31st at once: no 30 December, not even at $0.00
    assert line.days == {date(2011, 12, 29): Decimal("8.64"), date(2011, 12, 31): Decimal("4.32")}
    assert line.hours == Decimal("36.00")
    assert sum(report.per_day().values()) == line.cost == Decimal("12.96")


def test_a_piece_starting_mid_month_in_a_zone_is_split_at_its_midnights():
    month = costs.Month(2026, 3, "America/New_York")
    start = midnight(date(2026, 3, 7), "America/New_York") + timedelta(hours=20)
    pieces = costs._day_pieces(start, start + timedelta(hours=30), month)
    # 4 hours of the 7th, all 23 of the 8th (clocks forward), 3 of the 9th
    assert pieces == [
        (date(2026, 3, 7), 4 * 3600),
        (date(2026, 3, 8), 23 * 3600),
        (date(2026, 3, 9), 3 * 3600),
    ]


def test_usage_between_reads_back_every_field(store):
    t0 = datetime(2026, 11, 3, 8, 30, tzinfo=UTC)
    written = [
        interval(
            group="students",
            config="python",
            instance_id="i-0a",
            instance_type="t2.micro",
            start=t0,
            end=t0 + timedelta(hours=2),
            hourly_usd=Decimal("0.0116"),
            volume_gib=20,
            gib_month_usd=Decimal("0.08"),
            hub="hub-a",
        ),
        # stopped with its volume, still open
        interval(
            server="gpu",
            group="students",
            config="r",
            instance_id="i-0b",
            instance_type="p2.xlarge",
            region="us-west-2",
            state=costs.STOPPED,
            start=t0,
            volume_gib=100,
            gib_month_usd=Decimal("0.10"),
            hub="hub-a",
        ),
        # prices and a volume the catalog lacked
        interval(
            user="bob",
            group="staff",
            config="big",
            instance_id="i-0c",
            instance_type="x9.huge",
            start=t0 + timedelta(days=1),
            end=t0 + timedelta(days=2),
            volume_gib=None,
            hub="hub-a",
        ),
        interval(
            user="cat",
            group="staff",
            config="big",
            instance_id="i-0d",
            instance_type="m5.large",
            start=t0,
            end=t0 + timedelta(hours=1),
            hourly_usd=Decimal("0.096"),
            gib_month_usd=Decimal("0.08"),
            hub="hub-b",
        ),
    ]
    ids = store.update_usage(open=written)
    expected = [costs.Interval(**{**vars(i), "id": n}) for i, n in zip(written, ids, strict=True)]
    month = costs.parse_month("2026-11")
    assert store.usage_between(month.start, month.end) == expected
    assert store.usage_between(month.start, month.end, hub="hub-a") == expected[:3]
    assert store.usage_between(month.start, month.end, user="ann") == expected[:2]
    assert store.usage_between(month.start, month.end, group="staff") == expected[2:]
    # overlapping only: the closed ones end before the 5th, the open one is still on
    later = store.usage_between(t0 + timedelta(days=2), month.end, hub="hub-a")
    assert later == [expected[1]]
    [one] = later
    assert one.start.tzinfo is UTC and one.end is None
