"""jupyterhub-idle-culler, run by the demo's hub as a service with its documented scopes,
stops an idle server: the instance is stopped, not terminated, and its stack stays; the
audit trail names the culler."""

import pytest
from hubapi import wait_for

pytestmark = pytest.mark.e2e


def test_idle_culler_stops_the_instance(start_demo):
    demo = start_demo({"MLIY_DEMO_CULL_TIMEOUT": "6", "MLIY_DEMO_CULL_EVERY": "2"})
    user = demo.create_user("idle", ["students"])
    demo.start_server(user, "nap")
    [stack] = demo.stacks(user, "nap")
    instance_id = demo.instance_of(stack["StackId"])["InstanceId"]

    demo.wait_stopped(user, "nap", timeout=90)
    hub_log = (demo.data_dir / "logs" / "jupyterhub.log").read_text()
    assert f"Culling server {user}/nap" in hub_log
    wait_for(
        lambda: demo.instance_of(stack["StackId"])["State"]["Name"] == "stopped",
        "the culled server's instance to stop",
    )
    assert demo.stack_status(stack["StackId"]) == "CREATE_COMPLETE"
    wait_for(lambda: instance_id not in demo.addresses(), "the runner to stop the server")

    # the audit trail names the culler (a service in MLiySpawner.culler_services)
    r = demo.session.get(
        f"{demo.public_url}/services/mliy/api/audit",
        params={"user": user, "action": "stop"},
        headers={"Authorization": f"token {demo.user_token('admin')}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    stops = [(e["actor"], e["actor_kind"], e["path"], e["outcome"]) for e in r.json()["entries"]]
    assert stops == [("idle-culler", "culler", "rest", "ok")], stops
