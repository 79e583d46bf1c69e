"""States moto cannot show by itself: slow stacks, failed stacks, AWS errors, slow AWS.

moto creates stacks at once and never fails them, so these tests set the stack's state
on moto's own backend right after CreateStack (a botocore after-call hook), as
FACTS.md describes; every call still goes through boto3 to moto.
"""

import asyncio
from collections import Counter

import pytest
from botocore.exceptions import ClientError, ReadTimeoutError
from botocore.stub import Stubber
from moto.cloudformation.models import cloudformation_backends
from moto.core import DEFAULT_ACCOUNT_ID
from tornado import web

from mliy_spawner.aws import make_client
from mliy_spawner.reflector import Reflector


def moto_stack(stack_id):
    return cloudformation_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].stacks[stack_id]


def after_create(client, action):
    """Run ``action(moto_stack)`` right after each CreateStack answers."""

    def hook(http_response, parsed, model, **kwargs):
        if model.name == "CreateStack" and "StackId" in parsed:
            action(moto_stack(parsed["StackId"]))

    client.meta.events.register("after-call.cloudformation.CreateStack", hook)


def fail_stack(stack):
    stack._add_stack_event(
        "CREATE_IN_PROGRESS", resource_status_reason="User Initiated"
    )  # the stack's own event
    stack.status = "ROLLBACK_COMPLETE"
    event_args = dict(
        stack_id=stack.stack_id,
        stack_name=stack.name,
        logical_resource_id="Instance",
        physical_resource_id=None,
        resource_type="AWS::EC2::Instance",
    )
    from moto.cloudformation.models import Event

    stack.events.append(
        Event(
            **event_args,
            resource_status="CREATE_FAILED",
            resource_status_reason="The requested configuration is currently not supported.",
            resource_properties=None,
        )
    )
    stack._add_stack_event(
        "ROLLBACK_IN_PROGRESS",
        resource_status_reason="The following resource(s) failed to create: [Instance].",
    )
    stack._add_stack_event("ROLLBACK_COMPLETE")


async def begin(spawner, options=None):
    spawner.user_options = options or {}
    await spawner._run_apply_user_options(spawner.user_options)
    return await spawner.start()


async def test_failed_stack_reports_resource_reason_and_is_deleted(aws_env, make_spawner):
    after_create(aws_env.cfn, fail_stack)
    spawner = make_spawner()
    with pytest.raises(web.HTTPError) as e:
        await begin(spawner)
    assert e.value.status_code == 500
    assert "The requested configuration is currently not supported." in str(e.value)
    summaries = aws_env.cfn.list_stacks()["StackSummaries"]
    assert [s["StackStatus"] for s in summaries] == ["DELETE_COMPLETE"]
    assert spawner.stack.stack_id is None
    assert await spawner.poll() == 0


async def test_stack_in_progress_then_complete(aws_env, make_spawner):
    held = {}

    def hold(stack):
        held["stack"] = stack
        held["status"] = stack.status
        stack.status = "CREATE_IN_PROGRESS"

    after_create(aws_env.cfn, hold)
    spawner = make_spawner()
    task = asyncio.ensure_future(begin(spawner))
    await asyncio.sleep(1.0)
    assert not task.done(), "start() returned while the stack was still being created"
    assert await spawner.poll() is None  # pending counts as running
    held["stack"].status = "CREATE_COMPLETE"
    ip, port = await asyncio.wait_for(task, 10)
    assert ip.startswith("10.") and port == 8888
    messages = [e["message"] for e in spawner._progress.events]
    assert messages[0].startswith("Creating stack")
    assert any("running" in m for m in messages)


async def test_cancel_while_waiting_deletes_stack_and_reraises(aws_env, make_spawner):
    after_create(aws_env.cfn, lambda stack: setattr(stack, "status", "CREATE_IN_PROGRESS"))
    spawner = make_spawner()
    task = asyncio.ensure_future(begin(spawner))
    await asyncio.sleep(0.8)
    assert spawner.stack.stack_id
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [s["StackStatus"] for s in aws_env.cfn.list_stacks()["StackSummaries"]] == [
        "DELETE_COMPLETE"
    ]
    assert spawner.stack.stack_id is None


async def test_start_timeout_deletes_stack(aws_env, make_spawner):
    after_create(aws_env.cfn, lambda stack: setattr(stack, "status", "CREATE_IN_PROGRESS"))
    spawner = make_spawner(start_timeout=1)
    with pytest.raises(TimeoutError):
        await begin(spawner)
    assert [s["StackStatus"] for s in aws_env.cfn.list_stacks()["StackSummaries"]] == [
        "DELETE_COMPLETE"
    ]


async def test_refused_create_leaves_nothing(aws_env, make_spawner):
    spawner = make_spawner(subnet_id="subnet-00000000deadbeef")
    with pytest.raises(web.HTTPError) as e:
        await begin(spawner)
    assert "AWS refused to launch" in str(e.value)
    live = [
        s
        for s in aws_env.cfn.list_stacks()["StackSummaries"]
        if s["StackStatus"] != "DELETE_COMPLETE"
    ]
    assert live == []
    assert spawner.stack.stack_id is None


def lose_create_answer(client, action=None):
    """Each CreateStack makes its stack, then its answer is lost on the way back (as a
    read timeout, a cut connection or an unreadable answer are): the caller gets no id."""

    def hook(http_response, parsed, model, **kwargs):
        if "StackId" in parsed:
            if action is not None:
                action(moto_stack(parsed["StackId"]))
            raise ReadTimeoutError(endpoint_url="https://cloudformation.us-east-1.amazonaws.com/")

    client.meta.events.register("after-call.cloudformation.CreateStack", hook)


def fail_first_delete(cfn):
    """The client's first DeleteStack is throttled; return the count of its calls."""
    real_delete, calls = cfn.delete_stack, Counter()

    def flaky_delete(**kwargs):
        calls["delete"] += 1
        if calls["delete"] == 1:
            raise ClientError({"Error": {"Code": "Throttling", "Message": "slow down"}}, "Del")
        return real_delete(**kwargs)

    cfn.delete_stack = flaky_delete
    return calls


def live_stacks(cfn):
    return [s for s in cfn.list_stacks()["StackSummaries"] if s["StackStatus"] != "DELETE_COMPLETE"]


async def test_lost_create_answer_deletes_the_stack_it_made(aws_env, make_spawner):
    lose_create_answer(aws_env.cfn)
    spawner = make_spawner()
    with pytest.raises(web.HTTPError) as e:
        await begin(spawner)
    assert e.value.status_code == 500
    assert "did not answer" in str(e.value)
    assert live_stacks(aws_env.cfn) == []
    assert spawner.stack.stack_id is None


async def test_lost_create_answer_and_failed_delete_keep_the_stack_tracked(aws_env, make_spawner):
    lose_create_answer(aws_env.cfn)
    spawner = make_spawner()
    calls = fail_first_delete(aws_env.cfn)
    with pytest.raises(web.HTTPError, match="did not answer"):
        await begin(spawner)
    [stack] = live_stacks(aws_env.cfn)
    assert spawner.stack.stack_id == stack["StackId"] and spawner.stack.delete_pending
    assert spawner.get_state()["mliy"]["stack_id"] == stack["StackId"]
    await spawner.stop()  # the hub's cleanup after a failed start: deleted this time
    assert live_stacks(aws_env.cfn) == []
    assert spawner.stack.stack_id is None
    assert calls["delete"] == 2


async def test_lost_create_answer_leaves_a_stack_it_does_not_own(aws_env, make_spawner):
    def retag(stack):  # by the time the hub looks, the name holds another hub's stack
        stack.tags = {**stack.tags, "mliy:hub": "another-hub"}

    lose_create_answer(aws_env.cfn, retag)
    spawner = make_spawner()
    with pytest.raises(web.HTTPError, match="did not answer"):
        await begin(spawner)
    [stack] = live_stacks(aws_env.cfn)
    assert stack["StackStatus"] != "DELETE_IN_PROGRESS"
    assert spawner.stack.stack_id is None and spawner.get_state() == {}


async def test_delete_failure_keeps_stack_tracked(aws_env, make_spawner):
    after_create(aws_env.cfn, fail_stack)
    spawner = make_spawner()
    calls = fail_first_delete(aws_env.cfn)
    with pytest.raises(web.HTTPError, match="not supported"):
        await begin(spawner)
    # the delete failed: the stack is still in state, flagged, and poll says it exists
    assert spawner.stack.stack_id and spawner.stack.delete_pending
    assert "delete_pending" in spawner.get_state()["mliy"]
    assert await spawner.poll() == 1  # a failed stack: not running, but still there
    await spawner.stop()  # the hub's cleanup: deletes it this time
    assert spawner.stack.stack_id is None
    assert calls["delete"] == 2


async def test_poll_never_reports_stopped_on_aws_errors(aws_env, make_spawner):
    spawner = make_spawner()
    await begin(spawner)
    reflector = spawner.reflector
    # the instance stops, but AWS is throttling every describe call from now on
    aws_env.ec2.stop_instances(InstanceIds=[spawner.stack.instance_id])
    broken = make_client("ec2", "us-east-1")
    stubber = Stubber(broken)
    for _ in range(50):
        stubber.add_client_error("describe_instances", "RequestLimitExceeded", http_status_code=503)
    stubber.activate()
    reflector.ec2 = broken
    reflector.stale_after = 0.3
    ok = await reflector.refresh()
    assert ok is False
    await asyncio.sleep(0.4)
    assert reflector.age > reflector.stale_after
    assert await spawner.poll() is None
    # AWS answers again: the stopped instance is seen as stopped
    reflector.ec2 = aws_env.ec2
    assert await reflector.refresh() is True
    assert await spawner.poll() == 0


async def test_reflector_cost_does_not_grow_with_spawners(counted_clients, make_spawner):
    counts, ec2, cfn = counted_clients
    reflector = Reflector(ec2, cfn, "mliy", interval=5.0, min_interval=0.05)
    try:
        spawners = [make_spawner(user=f"user{i}", reflector=reflector) for i in range(12)]
        await asyncio.gather(*(begin(s) for s in spawners))
        # while launching: one listing of instances per cycle, and each new stack
        # described by id in the cycles it changes in
        assert counts["DescribeInstances"] == reflector.cycles
        assert set(counts) == {"DescribeInstances", "DescribeStacks"}
        # a round of polls by every spawner, many times over: no AWS call at all
        counts.clear()
        for _ in range(5):
            assert [await s.poll() for s in spawners] == [None] * 12
        assert sum(counts.values()) == 0
        # one refresh serves all twelve
        await reflector.refresh()  # the cycle that saw the last instance run
        counts.clear()
        cycles_before = reflector.cycles
        await asyncio.gather(*(reflector.refresh() for _ in spawners))
        cycles = reflector.cycles - cycles_before
        assert 1 <= cycles <= 2
        # settled: each cycle lists instances once and checks one stack in turn
        assert counts == {"DescribeInstances": cycles, "DescribeStacks": cycles}
    finally:
        await reflector.stop()


async def test_reflector_restarts_after_dying(aws_env, caplog):
    reflector = Reflector(aws_env.ec2, aws_env.cfn, "mliy", interval=5.0, min_interval=0.01)
    try:
        assert await reflector.refresh()
        first = reflector._task
        # kill the task with an error it does not handle (not a refresh failure)
        original = reflector._cycle

        async def explode(started):
            reflector._cycle = original
            raise RuntimeError("boom")

        reflector._cycle = explode
        reflector._wake.set()
        for _ in range(100):
            await asyncio.sleep(0.01)
            if reflector._task is not first:
                break
        assert reflector._task is not first
        assert "restarting" in caplog.text
        assert await reflector.refresh()
    finally:
        await reflector.stop()


async def test_failed_orphan_of_a_crashed_hub_is_replaced(aws_env, make_spawner):
    # a hub created the stack, then died before saving its state; the stack then failed
    crashed = make_spawner()
    await crashed._run_apply_user_options({})
    await crashed._connect()
    await crashed._launch(crashed._launch_choice)
    orphan = crashed.stack.stack_id
    moto_stack(orphan).status = "ROLLBACK_COMPLETE"

    spawner = make_spawner()  # the restarted hub: no state for this server
    ip, _ = await begin(spawner)
    assert spawner.stack.stack_id != orphan
    statuses = {s["StackId"]: s["StackStatus"] for s in aws_env.cfn.list_stacks()["StackSummaries"]}
    assert statuses == {orphan: "DELETE_COMPLETE", spawner.stack.stack_id: "CREATE_COMPLETE"}
    assert any("An earlier stack" in e["message"] for e in spawner._progress.events)


@pytest.mark.parametrize(
    "tags",
    [
        pytest.param({}, id="untagged"),
        pytest.param({"mliy:hub": "mliy", "mliy:user": "mallory"}, id="other-user"),
        pytest.param({"mliy:hub": "other", "mliy:user": "alice"}, id="other-hub"),
        pytest.param(
            {"mliy:hub": "mliy", "mliy:user": "alice", "mliy:server": "gpu"}, id="other-server"
        ),
    ],
)
async def test_a_stack_planted_under_the_servers_name_is_not_adopted(aws_env, make_spawner, tags):
    from mliy_spawner import stacks

    name = stacks.stack_name("mliy", "mliy", "alice", "")
    planted = aws_env.cfn.create_stack(
        StackName=name,
        TemplateBody='{"Resources": {"Topic": {"Type": "AWS::SNS::Topic"}}}',
        Tags=[{"Key": k, "Value": v} for k, v in tags.items()],
    )["StackId"]
    spawner = make_spawner()
    await spawner._run_apply_user_options({})
    with pytest.raises(web.HTTPError) as e:
        await spawner.start()
    assert f"A stack named {name} exists but is not this server's" in str(e.value)
    assert spawner.stack.stack_id is None and "mliy" not in spawner.get_state()
    [stack] = aws_env.cfn.describe_stacks(StackName=planted)["Stacks"]
    assert stack["StackStatus"] == "CREATE_COMPLETE"  # someone else's: left alone


async def test_aws_error_text_reaches_users_without_account_ids_or_arns(
    aws_env, make_spawner, caplog
):
    from botocore.exceptions import ClientError

    secret = "arn:aws:sts::123456789012:assumed-role/mliy-hub/i-0abc"
    message = f"User: {secret} is not authorized to perform: iam:PassRole (account 123456789012)"

    def refuse(**kwargs):
        raise ClientError({"Error": {"Code": "AccessDenied", "Message": message}}, "CreateStack")

    aws_env.cfn.meta.events.register("before-call.cloudformation.CreateStack", refuse)
    spawner = make_spawner()
    with pytest.raises(web.HTTPError) as e:
        await begin(spawner)
    shown = str(e.value)
    assert "is not authorized to perform: iam:PassRole" in shown
    assert "123456789012" not in shown and "arn:aws" not in shown
    assert secret in caplog.text  # the whole text is in the hub's log
