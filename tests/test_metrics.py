"""Prometheus metrics: each one moves when what it counts happens.

The hub's metrics (``mliy_spawner.metrics``) are read from ``prometheus_client``'s
default registry in this process, before and after: a spawn and its stop on moto through
the spawner, refused and failed spawns by reason, AWS calls by outcome (throttling
injected at the client), the reflector's cycle, errors and view, the ledger's money
gauges, and no user name in any label unless ``metrics_per_user``. The service's
metrics are read from ``/services/mliy/metrics`` of a real hub's ``mliy`` service.
"""

import asyncio
import json
import math
from decimal import Decimal

import pytest
from botocore.awsrequest import AWSResponse
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from tornado import web

from mliy_spawner import metrics
from mliy_spawner.aws import make_client
from mliy_spawner.reflector import Reflector

REGION = "us-east-1"


def value(name, **labels):
    """The sample's value now (0 for a labelled sample not created yet)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def spawns(config="python"):
    return value("mliy_spawn_duration_seconds_count", software_config=config)


def failures(reason):
    return value("mliy_spawn_failures_total", reason=reason)


def calls(service, operation, outcome):
    return value("mliy_aws_calls_total", service=service, operation=operation, outcome=outcome)


async def launch(spawner, options=None):
    await spawner._run_apply_user_options(options or {})
    return await spawner.start()


# ---- pure parts -----------------------------------------------------------------------


class _Reasoned(Exception):
    def __init__(self, reason, status_code=500):
        self.mliy_reason = reason
        self.status_code = status_code


@pytest.mark.parametrize(
    "error, elapsed, timeout, expected",
    [
        (_Reasoned("stack"), 1, 10, "stack"),
        (_Reasoned("create-stack"), 1, 10, "stack"),
        (_Reasoned("stack-taken"), 1, 10, "stack"),
        (_Reasoned("delete-pending"), 1, 10, "stack"),
        (_Reasoned("instance-setup"), 1, 10, "instance_setup"),
        (_Reasoned("invalid-options", 400), 1, 10, "validation"),
        (_Reasoned("user-data"), 1, 10, "validation"),
        (web.HTTPError(400, "bad"), 1, 10, "validation"),
        (_Reasoned("placement"), 1, 10, "other"),
        (RuntimeError("boom"), 1, 10, "other"),
        (TimeoutError("timed out"), 1, 10, "timeout"),
        # JupyterHub's start_timeout cancels start(); a stop while pending cancels it early
        (asyncio.CancelledError(), 9.99, 10, "timeout"),
        (asyncio.CancelledError(), 2, 10, None),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_failure_reason(error, elapsed, timeout, expected):
    assert metrics.failure_reason(error, elapsed, timeout) == expected


@pytest.mark.parametrize(
    "code, outcome",
    [
        (None, "ok"),
        ("", "ok"),
        ("Throttling", "throttled"),
        ("ThrottlingException", "throttled"),
        ("RequestLimitExceeded", "throttled"),
        ("ValidationError", "error"),
        ("InvalidInstanceID.NotFound", "error"),
    ],
)
def test_call_outcome(code, outcome):
    assert metrics.call_outcome(code) == outcome


def test_every_failure_reason_exists_at_zero_or_more():
    for reason in ("stack", "timeout", "instance_setup", "budget", "limit", "validation"):
        assert (
            REGISTRY.get_sample_value("mliy_spawn_failures_total", {"reason": reason}) is not None
        )


# ---- a spawn and a stop on moto ---------------------------------------------------------


async def test_a_spawn_and_a_stop_move_the_spawn_fleet_and_aws_metrics(make_spawner):
    spawner = make_spawner()
    before = {
        "spawns": spawns(),
        "sum": value("mliy_spawn_duration_seconds_sum", software_config="python"),
        "create": calls("cloudformation", "CreateStack", "ok"),
        "describe": calls("ec2", "DescribeInstances", "ok"),
        "complete": value("mliy_stacks", status="CREATE_COMPLETE"),
        "running": value("mliy_instances", state="running", instance_type="m4.large"),
        "stopped": value("mliy_instances", state="stopped", instance_type="m4.large"),
        "cycles": value("mliy_reflector_cycle_duration_seconds_count"),
        "failures": sum(failures(r) for r in metrics.FAILURE_REASONS),
    }
    await launch(spawner)
    assert spawns() == before["spawns"] + 1
    assert value("mliy_spawn_duration_seconds_sum", software_config="python") > before["sum"]
    assert calls("cloudformation", "CreateStack", "ok") == before["create"] + 1
    assert calls("ec2", "DescribeInstances", "ok") > before["describe"]
    assert value("mliy_reflector_cycle_duration_seconds_count") > before["cycles"]
    # the reflector's view, read at the scrape
    assert value("mliy_stacks", status="CREATE_COMPLETE") == before["complete"] + 1
    assert value("mliy_instances", state="running", instance_type="m4.large") == (
        before["running"] + 1
    )
    age = REGISTRY.get_sample_value("mliy_reflector_cache_age_seconds")
    assert age is not None and 0 <= age < math.inf

    await spawner.stop()
    await spawner.reflector.refresh()
    assert value("mliy_instances", state="stopped", instance_type="m4.large") == (
        before["stopped"] + 1
    )
    assert value("mliy_instances", state="running", instance_type="m4.large") == before["running"]
    assert calls("ec2", "StopInstances", "ok") >= 1
    # nothing failed
    assert sum(failures(r) for r in metrics.FAILURE_REASONS) == before["failures"]


async def test_a_stopped_reflector_leaves_the_fleet_gauges(make_spawner):
    spawner = make_spawner()
    await launch(spawner)
    complete = value("mliy_stacks", status="CREATE_COMPLETE")
    await spawner.reflector.stop()
    assert value("mliy_stacks", status="CREATE_COMPLETE") == complete - 1


# ---- refused and failed spawns ----------------------------------------------------------


def with_group(spawner_config, **group):
    groups = {k: dict(v) for k, v in spawner_config["launch_groups"].items()}
    groups["analysts"].update(group)
    return groups


@pytest.mark.parametrize(
    "reason, traits, options",
    [
        ("budget", {"budget_usd": "0"}, {}),
        ("limit", {"max_volume_gib_per_user": 10}, {}),
        ("validation", {}, {"instance_type": "x9.huge"}),
    ],
    ids=["budget", "limit", "validation"],
)
async def test_a_refused_spawn_counts_its_reason(
    make_spawner, spawner_config, reason, traits, options
):
    group = {k: v for k, v in traits.items() if k == "budget_usd"}
    other = {k: v for k, v in traits.items() if k != "budget_usd"}
    spawner = make_spawner(launch_groups=with_group(spawner_config, **group), **other)
    before = {r: failures(r) for r in metrics.FAILURE_REASONS}
    with pytest.raises(web.HTTPError):
        await spawner._run_apply_user_options(options)
    after = {r: failures(r) for r in metrics.FAILURE_REASONS}
    assert after == {**before, reason: before[reason] + 1}


async def test_a_failed_stack_counts_stack_and_no_duration(aws_env, make_spawner):
    from test_launch_failures import after_create, fail_stack

    after_create(aws_env.cfn, fail_stack)
    spawner = make_spawner()
    before, done = failures("stack"), spawns()
    with pytest.raises(web.HTTPError):
        await launch(spawner)
    assert failures("stack") == before + 1
    assert spawns() == done


async def test_a_start_timeout_counts_timeout(aws_env, make_spawner):
    from test_launch_failures import after_create

    after_create(aws_env.cfn, lambda stack: setattr(stack, "status", "CREATE_IN_PROGRESS"))
    spawner = make_spawner(start_timeout=1)
    before = failures("timeout")
    with pytest.raises(TimeoutError):
        await launch(spawner)
    assert failures("timeout") == before + 1


# ---- AWS calls --------------------------------------------------------------------------

_THROTTLED = (
    "<Response><Errors><Error><Code>RequestLimitExceeded</Code>"
    "<Message>Request limit exceeded.</Message></Error></Errors></Response>"
)


class _Raw:
    def __init__(self, body):
        self.body = body.encode()

    def stream(self, **kwargs):
        yield self.body


def throttle_first(client, times):
    """Answer the first ``times`` requests of ``client`` with EC2's throttling error."""
    left = [times]

    def answer(request, **kwargs):
        if left[0] > 0:
            left[0] -= 1
            return AWSResponse(request.url, 400, {"Content-Type": "text/xml"}, _Raw(_THROTTLED))
        return None

    # first: before moto's own before-send handler answers the request
    client.meta.events.register_first("before-send", answer)


def test_each_attempt_is_counted_by_outcome(aws_env):
    ec2 = make_client("ec2", REGION, max_attempts=1)  # one retry
    throttle_first(ec2, 1)
    before = {o: calls("ec2", "DescribeVpcs", o) for o in ("ok", "throttled", "error")}
    ec2.describe_vpcs()  # throttled once, then botocore's retry passes
    assert calls("ec2", "DescribeVpcs", "throttled") == before["throttled"] + 1
    assert calls("ec2", "DescribeVpcs", "ok") == before["ok"] + 1
    assert calls("ec2", "DescribeVpcs", "error") == before["error"]


def test_an_aws_error_is_counted_as_error(aws_env):
    cfn = make_client("cloudformation", REGION, max_attempts=0)
    before = calls("cloudformation", "DescribeStacks", "error")
    with pytest.raises(cfn.exceptions.ClientError):
        cfn.describe_stacks(StackName="no-such-stack")
    assert calls("cloudformation", "DescribeStacks", "error") == before + 1


# ---- the reflector -----------------------------------------------------------------------


async def test_reflector_errors_and_cache_age(aws_env):
    ec2 = make_client("ec2", REGION, max_attempts=0)  # no retry: the cycle fails
    throttle_first(ec2, 1)
    reflector = Reflector(ec2, aws_env.cfn, "mliy-metrics", interval=5.0, min_interval=0.02)
    errors = value("mliy_reflector_errors_total")
    cycles = value("mliy_reflector_cycle_duration_seconds_count")
    try:
        assert await reflector.refresh() is False  # throttled
        assert value("mliy_reflector_errors_total") == errors + 1
        # before its first good cycle the reflector has no view: its age is +Inf
        assert REGISTRY.get_sample_value("mliy_reflector_cache_age_seconds") == math.inf
        assert await asyncio.wait_for(_until_fresh(reflector), 30)
        assert value("mliy_reflector_errors_total") == errors + 1
        assert value("mliy_reflector_cycle_duration_seconds_count") >= cycles + 2
    finally:
        await reflector.stop()


async def _until_fresh(reflector):
    while not await reflector.refresh():
        pass
    return True


# ---- money --------------------------------------------------------------------------------


async def test_review_sets_the_money_gauges_by_group(make_spawner):
    spawner = make_spawner()
    await launch(spawner)
    keeper = spawner.ledger
    await spawner.reflector.refresh()
    await asyncio.wait_for(_until(lambda: keeper.upkeeps > 0), 10)
    await keeper.review()
    price = spawner._price_of("m4.large")
    assert isinstance(price, Decimal)
    rate = REGISTRY.get_sample_value("mliy_cost_rate_usd_per_hour", {"launch_group": "analysts"})
    assert rate == float(price)
    report = keeper.month_report()
    spend = REGISTRY.get_sample_value("mliy_month_spend_usd", {"launch_group": "analysts"})
    assert spend == float(report.total)

    await spawner.stop()
    await spawner.reflector.refresh()
    await asyncio.wait_for(_until(lambda: not _running_intervals(spawner)), 10)
    await keeper.review()
    assert (
        REGISTRY.get_sample_value("mliy_cost_rate_usd_per_hour", {"launch_group": "analysts"})
        == 0.0
    )


def _running_intervals(spawner):
    return [i for i in spawner.store.open_usage("mliy", REGION) if i.state == "running"]


async def _until(check, tries=500):
    for _ in range(tries):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the ledger did not catch up")


def _mliy_samples():
    for family in REGISTRY.collect():
        if family.name.startswith("mliy_"):
            yield from family.samples


async def test_no_label_is_a_user_name_by_default(make_spawner):
    spawner = make_spawner(user="zelda-metrics")
    await launch(spawner)
    keeper = spawner.ledger
    await spawner.reflector.refresh()
    await asyncio.wait_for(_until(lambda: keeper.upkeeps > 0), 10)
    await keeper.review()
    for sample in _mliy_samples():
        assert "user" not in sample.labels, sample
        assert "zelda-metrics" not in sample.labels.values(), sample


async def test_metrics_per_user_adds_the_per_user_spend_gauge_only(make_spawner):
    spawner = make_spawner(user="yann-metrics", metrics_per_user=True)
    await launch(spawner)
    keeper = spawner.ledger
    await spawner.reflector.refresh()
    await asyncio.wait_for(_until(lambda: keeper.upkeeps > 0), 10)
    await keeper.review()
    spend = REGISTRY.get_sample_value("mliy_user_month_spend_usd", {"user": "yann-metrics"})
    assert spend == float(keeper.month_report().total)
    with_user = {s.name for s in _mliy_samples() if "yann-metrics" in s.labels.values()}
    assert with_user == {"mliy_user_month_spend_usd"}


# ---- the service's own metrics -------------------------------------------------------------


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    from servicehub import start_hub

    hub = start_hub(
        tmp_path_factory.mktemp("metricshub"),
        environment={"MLIY_ADDRESS_RATE": "1000", "MLIY_ADDRESS_BURST": "100000"},
    )
    yield hub
    hub.stop()


def scrape(hub, token=None):
    r = hub.service("GET", "metrics", token=token or hub.admin_token)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def sample(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_service_metrics_need_a_token_with_read_metrics(hub):
    r = hub.service("GET", "metrics")
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == "token"
    hub.create_user("metrics-reader", exist_ok=True)
    r = hub.service("GET", "metrics", token=hub.user_token("metrics-reader"))
    assert r.status_code == 403
    assert "read:metrics" in r.json()["message"]
    hub.create_user("metrics-admin", admin=True, exist_ok=True)
    assert scrape(hub, token=hub.user_token("metrics-admin"))
    # the scope decides, not being an admin
    assert scrape(hub, token=hub.user_token("metrics-admin", scopes=["read:metrics"]))
    r = hub.service("GET", "metrics", token=hub.user_token("metrics-admin", scopes=["read:users"]))
    assert r.status_code == 403


def test_service_metrics_count_progress_bootstrap_rejections_and_latency(hub):
    from mliy_spawner.service import progress_scope
    from mliy_spawner.store import Store

    hub.create_user("metrics-ann", exist_ok=True)
    instance_id = "i-0123456789abcdef0"
    store = Store(hub.store_url)
    try:
        store.record_instance(instance_id, "metrics-ann", "", "", REGION)
    finally:
        store.close()
    token = hub.user_token("metrics-ann", [progress_scope("metrics-ann", "")])
    before = scrape(hub)

    def report(body):
        return hub.service(
            "POST",
            f"api/progress/{instance_id}",
            token=token,
            data=body,
            headers={"Content-Type": "application/json"},
        )

    assert report(json.dumps({"step": "Mounting", "percent": 10})).status_code == 200
    assert report(json.dumps({"step": "Packages", "percent": 40})).status_code == 200
    assert report(b"not json").status_code == 400
    assert hub.service("POST", f"api/progress/{instance_id}").status_code == 401
    r = hub.service(
        "POST",
        f"api/bootstrap/{instance_id}",
        json={"code": "A" * 32},  # no such code
    )
    assert r.status_code == 403, r.text
    after = scrape(hub)

    def moved(name, **labels):
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert moved("mliy_service_progress_reports_total") == 2
    assert moved("mliy_service_bootstrap_exchanges_total", outcome="refused") == 1
    assert moved("mliy_service_bootstrap_exchanges_total", outcome="ok") == 0
    assert (
        moved("mliy_service_rejections_total", handler="ProgressHandler", reason="bad_request") == 1
    )
    assert (
        moved("mliy_service_rejections_total", handler="ProgressHandler", reason="unauthenticated")
        == 1
    )
    assert (
        moved("mliy_service_rejections_total", handler="BootstrapHandler", reason="forbidden") == 1
    )
    count = "mliy_service_request_duration_seconds_count"
    assert moved(count, handler="ProgressHandler", method="POST", code="200") == 2
    assert moved(count, handler="BootstrapHandler", method="POST", code="403") == 1
    # the first scrape itself was observed
    assert moved(count, handler="MetricsHandler", method="GET", code="200") >= 1
    # no user name in the service's labels either
    for name, labels in after:
        assert "metrics-ann" not in dict(labels).values(), name
