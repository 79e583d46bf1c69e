"""The demo stack through the hub's REST API only, as a client script would drive it.

Launch with user_options, the progress stream (stack events, then the instance's own
steps), the notebook through the proxy, stop (instance stopped), resume with an empty
body (same instance), remove (stack deleted); hostile bodies (400, no stack); the admin
panel's calls on another user's server.
"""

import pytest
from hubapi import wait_for

pytestmark = pytest.mark.e2e

INSTANCE_STEPS = [
    "Instance: checking the environment",
    "Instance: mounting the volume",
    "Instance: creating the user",
    "Instance: installing packages",
    "Instance: configuring the server",
    "Instance: starting the server",
    "Instance: done",
]


def instance_state(demo, instance_id):
    ec2 = demo.client("ec2")
    reservations = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    return reservations[0]["Instances"][0]["State"]["Name"]


def wait_instance_state(demo, instance_id, state, timeout=60):
    wait_for(
        lambda: instance_state(demo, instance_id) == state,
        f"instance {instance_id} to be {state} (is {instance_state(demo, instance_id)})",
        timeout,
    )


def test_launch_progress_stop_resume_remove(demo, new_user):
    user = new_user(group="analysts")
    token = demo.user_token(user)
    options = {
        "launch_group": "analysts",
        "software_config": "python",
        "instance_type": "t2.large",
        "volume_size": 30,
    }

    r = demo.api("POST", f"/users/{user}/servers/lab", json={"user_options": options})
    assert r.status_code == 202, r.text
    stream = demo.progress(user, "lab", token=token)
    events = stream.wait()
    messages = stream.messages
    assert events[-1].get("ready") is True, events
    assert events[-1]["url"] == f"/user/{user}/lab/"
    # CloudFormation's events, as moto reports them (the stack's own: moto has no
    # per-resource events), in order
    assert "Creating stack" in messages
    assert messages.index("Creating stack") < messages.index("Stack created")
    # then the steps the instance reported to the mliy service with its own token
    # ("done" may come after the hub already reached the server and closed the stream)
    steps = [m for m in messages if m.startswith("Instance: ")]
    assert steps in (INSTANCE_STEPS, INSTANCE_STEPS[:-1]), messages
    assert messages.index("Stack created") < messages.index(INSTANCE_STEPS[0])
    percents = [e["progress"] for e in events]
    assert percents == sorted(percents), percents

    model = demo.wait_ready(user, "lab")
    assert model["user_options"] == options
    [stack] = demo.stacks(user, "lab")
    assert stack["StackStatus"] == "CREATE_COMPLETE"
    instance = demo.instance_of(stack["StackId"])
    instance_id = instance["InstanceId"]
    assert instance["State"]["Name"] == "running"
    assert instance["InstanceType"] == "t2.large"
    tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
    assert (tags["mliy:user"], tags["mliy:server"]) == (user, "lab")
    # the hub reaches the runner's loopback server, never moto's 10.x address
    host, port = demo.addresses()[instance_id].split(":")
    assert host == "127.0.0.1"
    assert instance["PrivateIpAddress"].startswith("10.")
    # the DNS plugin (Route 53, on moto) named the instance's private address
    assert [instance["PrivateIpAddress"]] in demo.dns_records().values()

    r = demo.notebook_status(user, "lab", token)
    assert r.status_code == 200, r.text
    assert "started" in r.json()

    # stop: the instance stops, the stack (and its disk) stays
    r = demo.api("DELETE", f"/users/{user}/servers/lab")
    assert r.status_code in (202, 204), r.text
    demo.wait_stopped(user, "lab")
    wait_instance_state(demo, instance_id, "stopped")
    assert demo.stack_status(stack["StackId"]) == "CREATE_COMPLETE"
    wait_for(lambda: instance_id not in demo.addresses(), "the runner to stop the server")
    assert demo.notebook_status(user, "lab", token).status_code != 200
    assert [instance["PrivateIpAddress"]] not in demo.dns_records().values()

    # start again with an empty body: the same instance runs again, same options
    model = demo.start_server(user, "lab")
    assert instance_state(demo, instance_id) == "running"
    assert [s["StackId"] for s in demo.stacks(user, "lab")] == [stack["StackId"]]
    assert demo.addresses()[instance_id] == f"127.0.0.1:{port}"
    r = demo.notebook_status(user, "lab", token)
    assert r.status_code == 200, r.text
    ip = demo.instance_of(stack["StackId"])["PrivateIpAddress"]
    assert [ip] in demo.dns_records().values()

    # remove the named server: the stack is deleted, the instance terminated
    r = demo.api("DELETE", f"/users/{user}/servers/lab", json={"remove": True})
    assert r.status_code in (202, 204), r.text
    wait_for(
        lambda: demo.stack_status(stack["StackId"]) == "DELETE_COMPLETE",
        "the stack to be deleted",
    )
    wait_instance_state(demo, instance_id, "terminated")
    demo.wait_gone(user, "lab")
    assert [ip] not in demo.dns_records().values()
    wait_for(
        lambda: not (demo.data_dir / "instances" / instance_id).exists(),
        "the runner to remove the sandbox",
    )


# (id, launch group of the user or None, user_options, field the 400 names, value shown)
HOSTILE = [
    (
        "config-not-for-group",
        "students",
        {"software_config": "python"},
        "software_config",
        "'python'",
    ),
    (
        "config-path",
        "analysts",
        {"software_config": "../../etc/passwd"},
        "software_config",
        "'../../etc/passwd'",
    ),
    (
        "type-not-offered",
        "analysts",
        {"instance_type": "x1.32xlarge"},
        "instance_type",
        "'x1.32xlarge'",
    ),
    (
        "type-excluded-for-group",
        "analysts",
        {"software_config": "python", "instance_type": "m4.2xlarge"},
        "instance_type",
        "'m4.2xlarge'",
    ),
    (
        "type-shell",
        "analysts",
        {"instance_type": "t2.large; curl x | sh"},
        "instance_type",
        "'t2.large; curl x | sh'",
    ),
    ("type-list", "analysts", {"instance_type": ["t2.large"]}, "instance_type", "['t2.large']"),
    ("type-huge", "analysts", {"instance_type": "A" * 100_000}, "instance_type", "'AAAA"),
    (
        "volume-too-big",
        "analysts",
        {"software_config": "python", "volume_size": 10**9},
        "volume_size",
        "1000000000",
    ),
    (
        "volume-negative",
        "analysts",
        {"software_config": "python", "volume_size": -1},
        "volume_size",
        "-1",
    ),
    (
        "volume-string",
        "analysts",
        {"software_config": "python", "volume_size": "20; reboot"},
        "volume_size",
        "'20; reboot'",
    ),
    (
        "volume-float",
        "analysts",
        {"software_config": "python", "volume_size": 20.5},
        "volume_size",
        "20.5",
    ),
    (
        "volume-bool",
        "analysts",
        {"software_config": "python", "volume_size": True},
        "volume_size",
        "True",
    ),
    (
        "volume-without-volume",
        "analysts",
        {"software_config": "small", "volume_size": 20},
        "volume_size",
        "20",
    ),
    ("group-not-member", "analysts", {"launch_group": "students"}, "launch_group", "'students'"),
    ("group-nul", "analysts", {"launch_group": "analysts\x00"}, "launch_group", "'analysts\\x00'"),
    ("unknown-key", "analysts", {"ami_id": "ami-12345678"}, "user_options", "'ami_id'"),
    ("no-launch-group", None, {}, "launch_group", "no launch group"),
]


@pytest.fixture(scope="module")
def hostile_users(demo):
    return {
        group: demo.create_user(f"hostile-{group or 'nogroup'}", [group] if group else [])
        for group in ("analysts", "students", None)
    }


@pytest.mark.parametrize(
    "group, options, field, shown",
    [case[1:] for case in HOSTILE],
    ids=[case[0] for case in HOSTILE],
)
def test_hostile_options_are_400_and_create_no_stack(
    demo, hostile_users, group, options, field, shown
):
    user = hostile_users[group]
    before = [s["StackId"] for s in demo.stacks()]
    r = demo.api("POST", f"/users/{user}/servers/x", json={"user_options": options})
    assert r.status_code == 400, r.text
    message = r.json()["message"]
    assert message.startswith(f"{field}:") or f"{field}:" in message, message
    assert shown in message, message
    assert len(message) < 1000  # a huge value is cut, not echoed
    assert [s["StackId"] for s in demo.stacks()] == before
    model = demo.server(user, "x")
    assert model is None or not (model.get("pending") or model.get("ready")), model


@pytest.mark.parametrize(
    "body",
    [
        '{"user_options": ["python"]}',
        '{"user_options": "python"}',
        "not json",
        '{"user_options": 1}',
    ],
    ids=["list", "string", "not-json", "number"],
)
def test_malformed_bodies_are_400_and_create_no_stack(demo, hostile_users, body):
    user = hostile_users["analysts"]
    before = [s["StackId"] for s in demo.stacks()]
    r = demo.api(
        "POST", f"/users/{user}/servers/y", data=body, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400, r.text
    assert [s["StackId"] for s in demo.stacks()] == before


def panel(demo, method, owner, token):
    """Start (POST) or stop (DELETE) ``owner``'s default server as the admin panel does:
    ``/users/{name}/servers/`` with the empty server name, JSON content type and no body
    (so the spawner uses defaults, then saved options); wait until it is ready or stopped."""
    r = demo.api(
        method,
        f"/users/{owner}/servers/",
        token=token,
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code in ((201, 202) if method == "POST" else (202, 204)), r.text
    if method == "POST":
        demo.wait_ready(owner)
    else:
        demo.wait_stopped(owner)


def test_admin_panel_starts_and_stops_another_users_server(demo, new_user):
    owner = new_user(group="students")
    admin = new_user(admin=True, prefix="boss")
    token = demo.user_token(admin)

    panel(demo, "POST", owner, token)
    [stack] = demo.stacks(owner, "")
    instance = demo.instance_of(stack["StackId"])
    tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
    # the students group's only configuration, at its default type
    assert tags["mliy:software-config"] == "small"
    assert tags["mliy:launch-group"] == "students"
    assert instance["InstanceType"] == "t2.small"

    panel(demo, "DELETE", owner, token)
    wait_instance_state(demo, instance["InstanceId"], "stopped")

    panel(demo, "POST", owner, token)
    assert instance_state(demo, instance["InstanceId"]) == "running"
    assert [s["StackId"] for s in demo.stacks(owner)] == [stack["StackId"]]

    panel(demo, "DELETE", owner, token)
    wait_instance_state(demo, instance["InstanceId"], "stopped")


def test_a_user_without_admin_rights_cannot_start_another_users_server(demo, new_user):
    owner = new_user(group="students")
    other = new_user(group="students")
    r = demo.api("POST", f"/users/{owner}/server", token=demo.user_token(other), data="")
    assert r.status_code in (403, 404), r.text
    assert demo.stacks(owner) == []
