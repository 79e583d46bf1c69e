"""Replaying what AWS shows about a server, as someone with read access to EC2 and
CloudFormation would (an auditor role, CI, another instance's profile), on the demo.

After a server is ready: its user data (``DescribeInstanceAttribute``), the instance's
tags, the stack's parameters, tags, outputs and template hold no hub token, and no
value in them is worth anything: used as a hub API token each gets 401/403, posted to
the ``mliy`` service as a bootstrap code each is refused and gives no token (the real
code was used at boot: 403). An expired code is refused; a fresh one from another
address passes, since the demo maps ``MLIY_BOOTSTRAP_CHECK_ADDRESS=0`` (that the check
refuses other addresses when on: tests/test_hostile_inputs.py).
All over HTTP on 127.0.0.1: moto's server, the hub's proxy.
"""

import base64
import json
import re
import secrets
import time

import pytest

from mliy_spawner import bootstrap
from mliy_spawner.demo.sandbox import read_environment_file
from mliy_spawner.store import Store

pytestmark = pytest.mark.e2e

# anything that could be a token, a code or a secret: 16 or more token characters, and
# the runs of code characters in them (a code after "NAME=")
_VALUES = (re.compile(r"[A-Za-z0-9_~+/=.-]{16,}"), re.compile(r"[A-Za-z0-9_-]{16,}"))


def _readable_from_aws(demo, stack_id, instance_id):
    """Every text AWS gives a reader about this server: {where: text}."""
    ec2, cfn = demo.client("ec2"), demo.client("cloudformation")
    attribute = ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
    user_data = base64.b64decode(attribute["UserData"]["Value"]).decode()
    [stack] = cfn.describe_stacks(StackName=stack_id)["Stacks"]
    [reservation] = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    template = cfn.get_template(StackName=stack_id)["TemplateBody"]
    return {
        "user data": user_data,
        "instance": json.dumps(reservation["Instances"], default=str),
        "stack": json.dumps(stack, default=str),
        "template": template if isinstance(template, str) else json.dumps(template),
        "resources": json.dumps(
            cfn.describe_stack_resources(StackName=stack_id)["StackResources"], default=str
        ),
    }


def _bootstrap(demo, instance_id, code):
    """POST the code; waits out the service's per-address limit (429) like a client."""
    while True:
        r = demo.session.post(
            f"{demo.public_url}/services/mliy/api/bootstrap/{instance_id}",
            data=json.dumps({"code": code}),
            headers={"Content-Type": "application/json"},
            timeout=30,
        )
        if r.status_code != 429:
            return r
        time.sleep(min(5.0, float(r.headers.get("Retry-After") or 1)))


def _hub_user(demo, token):
    return demo.session.get(
        f"{demo.public_url}/hub/api/user", headers={"Authorization": f"token {token}"}, timeout=30
    )


def _ready_server(demo, new_user):
    """A new analyst's default server, ready: ``(user, stack, instance)``."""
    user = new_user(group="analysts")
    options = {"launch_group": "analysts", "software_config": "python"}
    r = demo.api("POST", f"/users/{user}/server", json={"user_options": options})
    assert r.status_code in (201, 202), r.text
    demo.wait_ready(user)
    [stack] = demo.stacks(user, "")
    return user, stack, demo.instance_of(stack["StackId"])


def test_nothing_aws_shows_about_a_server_grants_anything(demo, new_user):
    user, stack, instance = _ready_server(demo, new_user)
    instance_id = instance["InstanceId"]

    # the token the server got: in its mode-600 env file on the instance's "disk"
    env_file = demo.data_dir / "instances" / instance_id / "etc/mliy/notebook.env"
    server_token = read_environment_file(env_file)["JUPYTERHUB_API_TOKEN"]
    assert _hub_user(demo, server_token).status_code == 200  # the check below can fail

    readable = _readable_from_aws(demo, stack["StackId"], instance_id)
    for where, text in readable.items():
        assert server_token not in text, where
        assert demo.admin_token not in text, where
    user_data = readable["user data"]
    [code] = re.findall(r"^export MLIY_BOOTSTRAP_CODE=([A-Za-z0-9_-]{16,64})$", user_data, re.M)

    values = sorted(
        {v for text in readable.values() for pattern in _VALUES for v in pattern.findall(text)}
    )
    assert code in values
    for value in values:
        # as a hub API token: not authenticated (401) or not allowed (403)
        assert _hub_user(demo, value).status_code in (401, 403), value
        # as a bootstrap code, again: malformed (400) or refused (403); never a token
        r = _bootstrap(demo, instance_id, value)
        assert r.status_code in (400, 403), (value, r.text)
        assert "token" not in r.json() and server_token not in r.text

    # the real code, a second time
    r = _bootstrap(demo, instance_id, code)
    assert r.status_code == 403 and "used already" in r.json()["message"], r.text

    # the server still runs with its token: nothing above disturbed it
    assert demo.server(user)["ready"]
    assert _hub_user(demo, server_token).status_code == 200


def test_an_expired_code_is_refused_and_a_fresh_one_passes_from_anywhere(demo, new_user):
    user, stack, instance = _ready_server(demo, new_user)
    instance_id, private_ip = instance["InstanceId"], instance["PrivateIpAddress"]
    store = Store(f"sqlite:///{demo.data_dir / 'mliy.sqlite'}")
    try:
        sealed_value = secrets.token_hex(16)  # not a hub token: only the exchange is tried

        def code_for(ttl):
            code = bootstrap.new_code()
            store.add_bootstrap_code(
                bootstrap.code_id(code), user, "", bootstrap.seal(code, sealed_value), ttl=ttl
            )
            store.bind_bootstrap_code(user, "", instance_id, private_ip)
            return code

        r = _bootstrap(demo, instance_id, code_for(ttl=-1))
        assert r.status_code == 403 and "expired" in r.json()["message"], r.text
        assert sealed_value not in r.text

        # from 127.0.0.1, not the instance's private address (moto's 10.x): the demo
        # takes it, as set-ups behind NAT must
        assert private_ip != "127.0.0.1"
        code = code_for(ttl=600)
        r = _bootstrap(demo, instance_id, code)
        assert (r.status_code, r.json().get("token")) == (200, sealed_value), r.text
        r = _bootstrap(demo, instance_id, code)
        assert r.status_code == 403 and "used already" in r.json()["message"], r.text
    finally:
        store.close()
