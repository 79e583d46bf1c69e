"""A hub restart while a server runs: the hub comes back, the server is still reachable
through the proxy, and no new stack is made. The demo restarts only JupyterHub on SIGHUP
(its config keeps servers running across a hub shutdown)."""

import pytest
from hubapi import wait_for

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
