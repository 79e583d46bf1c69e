"""MLiySpawner's lifecycle against moto: launch, stop, resume, terminate, state."""

import asyncio
import base64
import json
import re
from types import SimpleNamespace

import pytest
from tornado import web

from mliy_spawner import bootstrap, stacks
from mliy_spawner.spawner import MLiySpawner


def stack_parameters(cfn, stack_id):
    stack = cfn.describe_stacks(StackName=stack_id)["Stacks"][0]
    return {p["ParameterKey"]: p["ParameterValue"] for p in stack["Parameters"]}, stack


def describe_instance(ec2, instance_id):
    return ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]


async def start(spawner, options=None):
    spawner.user_options = options or {}
    await spawner._run_apply_user_options(spawner.user_options)
    return await spawner.start()


async def test_start_stop_resume_delete(aws_env, make_spawner):
    spawner = make_spawner(server_name="gpu")
    ip, port = await start(spawner, {"instance_type": "t2.medium", "volume_size": 30})
    assert port == 8888
    instance = describe_instance(aws_env.ec2, spawner.stack.instance_id)
    assert ip == instance["PrivateIpAddress"]
    assert instance["State"]["Name"] == "running"
    assert instance["ImageId"] == aws_env.ami_id
    assert instance["InstanceType"] == "t2.medium"
    assert instance["SubnetId"] == aws_env.subnet_id
    assert instance["KeyName"] == aws_env.key_name
    tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
    assert tags["mliy:hub"] == "mliy"
    assert tags["mliy:user"] == "alice"
    assert tags["mliy:server"] == "gpu"
    assert tags["mliy:software-config"] == "python"
    assert tags["mliy:launch-group"] == "analysts"

    # moto ignores security groups and volume encryption inside stacks: assert the parameters
    params, stack = stack_parameters(aws_env.cfn, spawner.stack.stack_id)
    # (moto echoes a CommaDelimitedList as the list's repr)
    assert params["SecurityGroupIds"] in (
        aws_env.security_group_id,
        str([aws_env.security_group_id]),
    )
    assert params["IamInstanceProfile"] == "mliy-notebook"
    assert params["KmsKeyId"] == "alias/mliy"
    assert params["VolumeSize"] == "30"
    assert stack["StackName"].startswith("mliy-alice-gpu-")
    volumes = aws_env.ec2.describe_volumes(
        Filters=[{"Name": "attachment.instance-id", "Values": [spawner.stack.instance_id]}]
    )["Volumes"]
    assert sorted(v["Size"] for v in volumes)[-1] == 30

    # the user data is the script with the preamble: a one-time code, never the token
    raw = aws_env.ec2.describe_instance_attribute(
        InstanceId=spawner.stack.instance_id, Attribute="userData"
    )["UserData"]["Value"]
    script = base64.b64decode(raw).decode()
    assert "secret-api-token" not in script and "export JUPYTERHUB_API_TOKEN" not in script
    [code] = re.findall(r"^export MLIY_BOOTSTRAP_CODE=(\S+)$", script, re.M)
    assert "secret-api-token" not in json.dumps(params)
    assert "secret-api-token" not in json.dumps(stack, default=str)
    # the store has the code's hash and the token sealed under the code, bound to the
    # instance once the spawner saw it
    saved = spawner.store.server_bootstrap_code("alice", "gpu")
    assert saved.code_id == bootstrap.code_id(code) and code not in repr(saved)
    assert "secret-api-token" not in saved.sealed_token
    assert bootstrap.open_sealed(code, saved.sealed_token) == "secret-api-token-0123456789"
    assert saved.instance_id == spawner.stack.instance_id

    state = json.loads(json.dumps(spawner.get_state()))
    instance_id, stack_id = spawner.stack.instance_id, spawner.stack.stack_id
    assert await spawner.poll() is None

    await spawner.stop()
    assert describe_instance(aws_env.ec2, instance_id)["State"]["Name"] == "stopped"
    spawner.clear_state()
    assert spawner.get_state()["mliy"]["stack_id"] == stack_id
    assert await spawner.poll() == 0

    # a fresh spawner object (hub restart) resumes the same instance from the state
    again = make_spawner(server_name="gpu")
    again.load_state(state)
    ip2, _ = await start(again)
    assert again.stack.instance_id == instance_id
    assert again.stack.stack_id == stack_id
    assert describe_instance(aws_env.ec2, instance_id)["State"]["Name"] == "running"
    assert ip2 == describe_instance(aws_env.ec2, instance_id)["PrivateIpAddress"]
    assert await again.poll() is None

    await again.delete_forever()
    assert again.stack.stack_id is None
    gone = aws_env.cfn.describe_stacks(StackName=stack_id)["Stacks"][0]
    assert gone["StackStatus"] == "DELETE_COMPLETE"
    assert describe_instance(aws_env.ec2, instance_id)["State"]["Name"] == "terminated"


async def test_stop_action_terminate_deletes_stack(aws_env, make_spawner):
    spawner = make_spawner(stop_action="terminate")
    assert spawner.will_resume is False
    await start(spawner, {"software_config": "small"})
    stack_id, instance_id = spawner.stack.stack_id, spawner.stack.instance_id
    await spawner.stop()
    assert spawner.stack.stack_id is None
    assert aws_env.cfn.describe_stacks(StackName=stack_id)["Stacks"][0]["StackStatus"] == (
        "DELETE_COMPLETE"
    )
    assert describe_instance(aws_env.ec2, instance_id)["State"]["Name"] == "terminated"
    assert await spawner.poll() == 0


async def test_resume_changes_instance_type_but_not_config(aws_env, make_spawner):
    spawner = make_spawner()
    await start(spawner)
    await spawner.stop()
    spawner.clear_state()
    ip, _ = await start(spawner, {"instance_type": "t2.medium"})
    assert describe_instance(aws_env.ec2, spawner.stack.instance_id)["InstanceType"] == "t2.medium"
    await spawner.stop()
    stacks_before = aws_env.cfn.describe_stacks()["Stacks"]
    spawner.user_options = {"software_config": "small"}
    with pytest.raises(web.HTTPError) as e:
        await spawner._run_apply_user_options(spawner.user_options)
    assert e.value.status_code == 400
    assert e.value.jupyterhub_message.startswith("Invalid server options: software_config: 'small'")
    assert "would lose its disk" in e.value.jupyterhub_message
    assert aws_env.cfn.describe_stacks()["Stacks"] == stacks_before


async def test_stack_deleted_behind_our_back_launches_new(aws_env, make_spawner):
    spawner = make_spawner()
    await start(spawner)
    first = spawner.stack.stack_id
    await spawner.stop()
    aws_env.cfn.delete_stack(StackName=first)
    spawner.clear_state()
    assert await spawner.poll() == 0
    await start(spawner)
    assert spawner.stack.stack_id != first


async def test_state_is_identifiers_with_version(aws_env, make_spawner):
    spawner = make_spawner()
    assert "mliy" not in spawner.get_state()
    await start(spawner, {"software_config": "small", "instance_type": "t2.small"})
    state = spawner.get_state()["mliy"]
    assert state["version"] == 1
    assert state["stack_id"].startswith("arn:aws:cloudformation:")
    assert state["instance_id"].startswith("i-")
    assert state["region"] == "us-east-1"
    assert state["launch_options"] == {
        "launch_group": "analysts",
        "software_config": "small",
        "instance_type": "t2.small",
    }
    assert "secret" not in json.dumps(state)


async def test_user_in_no_group_cannot_spawn(aws_env, make_spawner):
    spawner = make_spawner(user="nobody", groups=())
    with pytest.raises(web.HTTPError) as e:
        await spawner._run_apply_user_options({})
    assert e.value.status_code == 400
    assert "no launch group" in e.value.jupyterhub_message
    assert aws_env.cfn.describe_stacks()["Stacks"] == []


async def test_default_launch_group_lets_groupless_users_spawn(aws_env, make_spawner):
    spawner = make_spawner(user="nobody", groups=(), default_launch_group="students")
    await start(spawner)
    assert spawner.stack.launch_options["launch_group"] == "students"
    assert spawner.stack.launch_options["software_config"] == "small"


@pytest.mark.parametrize(
    "traits, key",
    [
        ({"software_configs": {"x": {"instance_types": ["t2.micro"]}}}, "ami_id"),
        ({"software_configs": {"Bad Slug": {}}}, "Bad Slug"),
        (
            {"launch_groups": {"g": {"software_configs": ["nope"], "security_group_ids": []}}},
            "software_configs",
        ),
        ({"default_launch_group": "nope"}, "default_launch_group"),
        ({"stop_action": "hibernate"}, "stop_action"),
    ],
    ids=[
        "missing-ami",
        "bad-slug",
        "unknown-config-in-group",
        "unknown-default-group",
        "bad-stop-action",
    ],
)
def test_bad_config_fails_at_startup_naming_the_key(spawner_config, traits, key):
    from traitlets.config import Config

    c = Config()
    for name, value in {**spawner_config, **traits}.items():
        c.MLiySpawner[name] = value
    with pytest.raises(Exception) as e:
        MLiySpawner.check_config(c)
    assert key in str(e.value)


def test_good_config_passes_startup_check(spawner_config):
    from traitlets.config import Config

    c = Config()
    for name, value in spawner_config.items():
        c.MLiySpawner[name] = value
    assert MLiySpawner.check_config(c).region == "us-east-1"


async def test_deterministic_name_adopts_orphan_after_crash(aws_env, make_spawner):
    # a hub that died between CreateStack and saving its state: the next start adopts
    first = make_spawner()
    await start(first)
    orphan = first.stack.stack_id
    second = make_spawner()  # no state
    await start(second)
    assert second.stack.stack_id == orphan
    assert len(aws_env.cfn.describe_stacks()["Stacks"]) == 1


async def test_every_aws_call_runs_off_the_event_loop(aws_env, make_spawner):
    threads = set()
    import threading

    def record(**kwargs):
        threads.add(threading.current_thread().name)

    aws_env.cfn.meta.events.register("before-call", record)
    aws_env.ec2.meta.events.register("before-call", record)
    spawner = make_spawner()
    await start(spawner)
    await spawner.stop()
    assert threads and all(name.startswith("mliy-blocking") for name in threads)


def test_stack_status_mapping():
    assert stacks.simplify_status("CREATE_IN_PROGRESS") == stacks.PENDING
    assert stacks.simplify_status("CREATE_COMPLETE") == stacks.READY
    assert stacks.simplify_status("ROLLBACK_COMPLETE") == stacks.FAILED
    assert stacks.simplify_status("ROLLBACK_IN_PROGRESS") == stacks.FAILED
    assert stacks.simplify_status("CREATE_FAILED") == stacks.FAILED
    assert stacks.simplify_status("DELETE_IN_PROGRESS") == stacks.DELETING
    assert stacks.simplify_status("DELETE_COMPLETE") == stacks.GONE
    assert stacks.simplify_status("SOMETHING_NEW_FAILED") == stacks.FAILED


@pytest.mark.parametrize(
    "user, server",
    [
        ("alice", ""),
        ("a.b@example.com", "my server"),
        ("x" * 300, "y" * 300),
        ("élodie", "—"),
        ("1abc", "9"),
        ("a--b", "../../etc"),
    ],
    ids=["plain", "email-space", "long", "unicode", "digits", "traversal"],
)
def test_stack_names_are_valid_and_distinct(user, server):
    import re

    name = stacks.stack_name("mliy", "hub", user, server)
    assert re.fullmatch(r"[A-Za-z][-A-Za-z0-9]*", name)
    assert len(name) <= 128
    assert name == stacks.stack_name("mliy", "hub", user, server)
    assert name != stacks.stack_name("mliy", "hub", user + "_", server)
    assert name != stacks.stack_name("mliy", "other-hub", user, server)


async def test_cancel_while_creating_stack_deletes_it(aws_env, make_spawner):
    spawner = make_spawner()
    spawner.user_options = {}
    await spawner._run_apply_user_options({})
    task = asyncio.ensure_future(spawner.start())
    # cancel as soon as the stack exists, before the instance is awaited
    for _ in range(200):
        await asyncio.sleep(0.01)
        if aws_env.cfn.describe_stacks()["Stacks"]:
            break
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    statuses = [s["StackStatus"] for s in aws_env.cfn.list_stacks()["StackSummaries"]]
    assert statuses == ["DELETE_COMPLETE"]
    assert spawner.stack.stack_id is None


@pytest.mark.parametrize(
    "options, field",
    [
        ({"launch_group": "students", "software_config": "python"}, "software_config"),
        ({"launch_group": "admins"}, "launch_group"),
        ({"instance_type": "m4.xlarge"}, "instance_type"),
        ({"volume_size": 101}, "volume_size"),
        ({"volume_size": "20; rm -rf /"}, "volume_size"),
        ({"software_config": ["python"]}, "software_config"),
        ({"image": "ami-12345678"}, "user_options"),
    ],
    ids=[
        "config-not-in-group",
        "not-my-group",
        "excluded-type",
        "volume-too-big",
        "volume-injection",
        "list-type",
        "unexpected-key",
    ],
)
async def test_hostile_options_rejected_before_any_aws_call(aws_env, make_spawner, options, field):
    from collections import Counter

    calls = Counter()
    for client in (aws_env.cfn, aws_env.ec2):
        client.meta.events.register("before-call", lambda model, **kw: calls.update([model.name]))
    spawner = make_spawner(groups=("analysts", "students"))
    with pytest.raises(web.HTTPError) as e:
        await start(spawner, options)
    assert e.value.status_code == 400
    assert e.value.jupyterhub_message.startswith(f"Invalid server options: {field}:")
    assert calls == Counter()


async def test_options_form_lists_choices_with_prices(aws_env, make_spawner):
    spawner = make_spawner(user="<b>mallory</b>", groups=("analysts", "students"))
    html = await spawner.get_options_form()
    assert "Python notebooks" in html
    assert "$0.108" in html  # m4.large, us-east-1, from the shipped catalog
    assert "<b>mallory</b>" not in html
    assert 'name="launch_group"' in html
    options = spawner.options_from_form(
        {
            "launch_group": ["analysts"],
            "software_config:analysts": ["python"],
            "instance_type:analysts:python": ["t2.medium"],
            "volume_size:analysts:python": ["25"],
        }
    )
    assert options == {
        "launch_group": "analysts",
        "software_config": "python",
        "instance_type": "t2.medium",
        "volume_size": 25,
    }


async def test_get_url_after_hub_restart_reads_current_address(aws_env, make_spawner):
    spawner = make_spawner()
    ip, port = await start(spawner)
    state = json.loads(json.dumps(spawner.get_state()))
    restarted = make_spawner()  # a new hub process: only the saved state
    restarted.load_state(state)
    restarted.orm_spawner.server = None
    assert await restarted.poll() is None
    assert await restarted.get_url() == f"http://{ip}:{port}/"


async def test_stack_id_reaches_the_hub_database_before_start_returns(aws_env, make_spawner):
    from jupyterhub import orm
    from sqlalchemy.orm import object_session

    spawner = make_spawner()
    await spawner._run_apply_user_options({})
    await spawner._connect()
    await spawner._launch(spawner._launch_choice)  # a hub that dies right after this...
    session = object_session(spawner.orm_spawner)
    session.expire_all()
    saved = session.query(orm.Spawner).one().state["mliy"]
    assert saved["stack_id"] == spawner.stack.stack_id  # ...still knows its stack on restart
    restarted = make_spawner()
    restarted.load_state({"mliy": saved})
    assert await restarted.poll() is None


@pytest.fixture
def slow_shared_clients(monkeypatch):
    """The spawner builds its own clients (none injected), each AWS call 200 ms late;
    none is built on the event loop's thread."""
    import threading
    import time

    from mliy_spawner import aws

    made = aws.make_client
    built_on_the_loop = []

    def slow_client(*args, **kwargs):
        if threading.current_thread() is threading.main_thread():
            built_on_the_loop.append(args)
        client = made(*args, **kwargs)
        client.meta.events.register("before-send", lambda **kw: time.sleep(0.2))
        return client

    monkeypatch.setattr(aws, "make_client", slow_client)
    monkeypatch.setattr(aws, "_shared_clients", {})
    return SimpleNamespace(
        traits={"ec2_client": None, "cfn_client": None, "store": None},
        built_on_the_loop=built_on_the_loop,
    )


async def test_start_stop_and_resume_never_block_the_event_loop(
    aws_env, make_spawner, spawner_config, slow_shared_clients
):
    from looplag import loop_lag_monitor
    from traitlets.config import Config

    from mliy_spawner.reflector import Reflector
    from mliy_spawner.spawner import MLiySpawner

    MLiySpawner.check_config(Config(MLiySpawner=spawner_config))  # the hub's start-up
    slow_shared_clients.built_on_the_loop.clear()  # there, blocking is what start-up is for
    # moto imports its CloudFormation and EC2 models on first use, in the pool's threads:
    # one launch first, so the monitor measures the spawner and not the stand-in
    first = make_spawner(user="warm-up", reflector="shared", **slow_shared_clients.traits)
    await first._run_apply_user_options({})
    await first.start()
    await first.delete_forever()
    spawner = make_spawner(reflector="shared", **slow_shared_clients.traits)
    async with loop_lag_monitor() as lag:
        await spawner._run_apply_user_options({})
        await spawner.start()
        await spawner.stop()
        await spawner.start()  # the resume
        assert await spawner.poll() is None
        await spawner.delete_forever()
    assert lag.samples  # the monitor ran through it all
    assert isinstance(spawner.reflector, Reflector)
    other = make_spawner(user="bob", reflector="shared", **slow_shared_clients.traits)
    await other._connect()  # every spawner shares the clients and the view
    assert (other.ec2_client, other.cfn_client) == (spawner.ec2_client, spawner.cfn_client)
    assert other.reflector is spawner.reflector
    assert slow_shared_clients.built_on_the_loop == []
    await spawner.reflector.stop()
