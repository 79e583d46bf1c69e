"""A hub restart while a server runs: the hub comes back, the server is still reachable
through the proxy, and no new stack is made. The demo restarts only JupyterHub on SIGHUP
(its config keeps servers running across a hub shutdown). The usage ledger, read from
the demo's store, carries on across the restart: the open interval stays open, no gap,
no double count."""

import secrets
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hubapi import wait_for

from mliy_spawner import costs
from mliy_spawner.store import Store

# how the demo runs the hub (jupyterhub_config.py): hub name and region of its ledger; its
# store is the default mliy.sqlite in the hub's working folder, the demo's data folder
HUB, REGION = "mliy", "us-east-1"
EVER = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))

pytestmark = pytest.mark.e2e


def test_hub_restart_keeps_the_running_server(demo, new_user):
    user = new_user(group="students")
    token = demo.user_token(user)
    options = {"software_config": "small", "instance_type": "t2.micro"}
    demo.start_server(user, "keep", json={"user_options": options})
    [stack] = demo.stacks(user, "keep")
    instance = demo.instance_of(stack["StackId"])
    address = demo.addresses()[instance["InstanceId"]]
    all_stacks = sorted(s["StackId"] for s in demo.stacks())
    hub_pid = (demo.data_dir / "jupyterhub.pid").read_text()

    demo.restart_hub()

    assert (demo.data_dir / "jupyterhub.pid").read_text() != hub_pid
    model = demo.server(user, "keep")
    assert model["ready"] and not model["pending"], model
    r = demo.notebook_status(user, "keep", token)
    assert r.status_code == 200, r.text
    assert sorted(s["StackId"] for s in demo.stacks()) == all_stacks
    assert demo.instance_of(stack["StackId"])["State"]["Name"] == "running"
    assert demo.addresses()[instance["InstanceId"]] == address

    # the restarted hub still controls it: stop it
    r = demo.api("DELETE", f"/users/{user}/servers/keep")
    assert r.status_code in (202, 204), r.text
    demo.wait_stopped(user, "keep")
    wait_for(
        lambda: demo.instance_of(stack["StackId"])["State"]["Name"] == "stopped",
        "the instance to stop",
    )


def _usage_of(store, instance_id):
    return sorted(
        (i for i in store.usage_between(*EVER, hub=HUB) if i.instance_id == instance_id),
        key=lambda i: (i.start, i.id),
    )


def _probe_closed(store, user):
    """Wait for an upkeep of the running hub: open an interval for an instance that does
    not exist (no cost: no price, no volume); the ledger's next cycle closes it."""
    probe = costs.Interval(
        hub=HUB,
        user=user,
        server="probe",
        group="",
        config="",
        instance_id=f"i-probe{secrets.token_hex(5)}",
        instance_type="t2.micro",
        region=REGION,
        state=costs.STOPPED,
        start=datetime.now(UTC),
        volume_gib=0,
    )
    [probe_id] = store.update_usage(open=[probe])
    wait_for(
        lambda: [i for i in _usage_of(store, probe.instance_id) if i.id == probe_id and i.end],
        "a ledger upkeep of the restarted hub (it closes the probe interval)",
    )


def test_hub_restart_mid_interval_keeps_the_ledger_without_gap_or_double_count(demo, new_user):
    user = new_user(group="students")
    options = {"software_config": "small", "instance_type": "t2.micro"}
    demo.start_server(user, "ledger", json={"user_options": options})
    [stack] = demo.stacks(user, "ledger")
    instance_id = demo.instance_of(stack["StackId"])["InstanceId"]
    store = Store(f"sqlite:///{demo.data_dir / 'mliy.sqlite'}")
    try:
        [before] = wait_for(
            lambda: [
                i for i in _usage_of(store, instance_id) if i.open and i.state == costs.RUNNING
            ],
            "the ledger to open a running interval",
        )
        assert (before.user, before.server, before.group) == (user, "ledger", "students")
        assert before.hourly_usd is not None and before.hourly_usd > 0

        demo.restart_hub()
        _probe_closed(store, user)

        intervals = _usage_of(store, instance_id)
        assert [i for i in intervals if i.open] == [before]  # same id, start and prices
        closed = [i for i in intervals if not i.open]
        assert all(i.end <= before.start for i in closed), closed  # no double count
        for earlier, later in zip(intervals, intervals[1:], strict=False):
            assert earlier.end == later.start, intervals  # no gap

        r = demo.api("DELETE", f"/users/{user}/servers/ledger")
        assert r.status_code in (202, 204), r.text
        demo.wait_stopped(user, "ledger")
        ran, stopped = wait_for(
            lambda: (lambda found: found[-2:] if found and found[-1].state == "stopped" else None)(
                _usage_of(store, instance_id)
            ),
            "the ledger to close the running interval and open a stopped one",
        )
        assert (ran.id, ran.start, ran.state) == (before.id, before.start, costs.RUNNING)
        assert ran.end is not None and ran.end == stopped.start and stopped.open
        assert len([i for i in _usage_of(store, instance_id) if i.open]) == 1

        now = datetime.now(UTC)
        month = costs.month_of(ran.start)
        report = costs.report(store.usage_between(month.start, month.end, hub=HUB), month, now)
        [line] = [ln for ln in report.lines if ln.instance_id == instance_id]
        seconds = (min(ran.end, month.end) - ran.start).total_seconds()
        # whole seconds per day of the month: at most one second lost per day it spans
        assert seconds - 2 <= line.running_seconds <= seconds, (line.running_seconds, seconds)
        assert line.state == costs.STOPPED and line.hours == costs.money(
            Decimal(line.running_seconds) / 3600
        )
        # no volume on "small": the stopped hours cost nothing, the running ones their price
        assert line.cost == costs.money(before.hourly_usd * Decimal(line.running_seconds) / 3600)
        assert report.filtered(user=user).total == line.cost
        assert timedelta(0) < ran.end - ran.start
    finally:
        store.close()
