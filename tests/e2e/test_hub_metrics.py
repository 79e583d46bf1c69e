"""``/hub/metrics`` of the demo hub after a spawn and a stop through the REST API: the
spawn histogram's count went up, the stack-status gauge shows the stack, the AWS call
counters counted CreateStack and StopInstances, a refused spawn counted its reason, and
no ``mliy_`` label holds the user's name."""

import pytest
from hubapi import wait_for
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.e2e


def scrape(demo):
    """``{(name, labels): value}`` of ``/hub/metrics``, read with the admin's token."""
    r = demo.session.get(
        f"{demo.public_url}/hub/metrics",
        headers={"Authorization": f"token {demo.admin_token}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    samples = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_hub_metrics_after_a_spawn_and_a_stop(demo, new_user):
    r = demo.session.get(f"{demo.public_url}/hub/metrics", timeout=30)
    assert r.status_code in (401, 403)  # read:metrics is needed (authenticate_prometheus)

    user = new_user(group="analysts")
    before = scrape(demo)
    options = {"launch_group": "analysts", "software_config": "python", "instance_type": "t2.large"}
    r = demo.api("POST", f"/users/{user}/servers/metrics", json={"user_options": options})
    assert r.status_code == 202, r.text
    demo.wait_ready(user, "metrics")
    ready = scrape(demo)
    spawned = "mliy_spawn_duration_seconds_count"
    assert value(ready, spawned, software_config="python") == (
        value(before, spawned, software_config="python") + 1
    )
    assert value(ready, "mliy_stacks", status="CREATE_COMPLETE") >= 1
    assert value(ready, "mliy_instances", state="running", instance_type="t2.large") >= 1
    create = {"service": "cloudformation", "operation": "CreateStack", "outcome": "ok"}
    assert value(ready, "mliy_aws_calls_total", **create) == (
        value(before, "mliy_aws_calls_total", **create) + 1
    )
    assert ("mliy_reflector_cache_age_seconds", ()) in ready

    r = demo.api("DELETE", f"/users/{user}/servers/metrics")
    assert r.status_code in (202, 204), r.text
    demo.wait_stopped(user, "metrics")
    stop = {"service": "ec2", "operation": "StopInstances", "outcome": "ok"}
    stopped = wait_for(
        lambda: (lambda s: s if value(s, "mliy_aws_calls_total", **stop) > 0 else None)(
            scrape(demo)
        ),
        "StopInstances in /hub/metrics",
        timeout=30,
    )
    assert (
        value(stopped, "mliy_aws_calls_total", **stop)
        >= value(before, "mliy_aws_calls_total", **stop) + 1
    )

    # a refused spawn counts its reason
    bad = dict(options, instance_type="x9.huge")
    r = demo.api("POST", f"/users/{user}/servers/bad", json={"user_options": bad})
    assert r.status_code == 400, r.text
    after = scrape(demo)
    failed = "mliy_spawn_failures_total"
    assert value(after, failed, reason="validation") == (
        value(before, failed, reason="validation") + 1
    )
    for name, labels in after:
        if name.startswith("mliy_"):
            assert user not in dict(labels).values(), name
