"""The reflector's cache answers poll() without AWS: a table of states; its pauses."""

import asyncio
import time
from types import SimpleNamespace

import pytest

from mliy_spawner import reflector as reflector_module
from mliy_spawner.reflector import InstanceView, Reflector, StackView

STACK = "arn:aws:cloudformation:us-east-1:123456789012:stack/mliy-alice-1/abc"


def view(stack_status=None, instance_state=None, fresh=True, launched_later=False):
    reflector = Reflector(None, None, "mliy")
    now = time.monotonic()
    reflector.last_success = now - (1000 if not fresh else 1)
    if stack_status:
        reflector.stacks[STACK] = StackView(
            STACK, "mliy-alice-1", stack_status, None, {"InstanceId": "i-1"}, {}
        )
    else:
        reflector.gone.add(STACK)  # a cycle described it as deleted
    if instance_state:
        reflector.instances["i-1"] = InstanceView(
            "i-1", instance_state, "10.0.0.5", "t2.micro", STACK, {}
        )
    since = now + 5 if launched_later else now - 100
    return reflector, since


@pytest.mark.parametrize(
    "stack_status, instance_state, fresh, launched_later, expected",
    [
        ("CREATE_COMPLETE", "running", True, False, None),
        ("CREATE_COMPLETE", "pending", True, False, None),
        ("CREATE_IN_PROGRESS", None, True, False, None),
        ("CREATE_COMPLETE", "stopped", True, False, 0),
        ("CREATE_COMPLETE", "stopping", True, False, 0),
        ("CREATE_COMPLETE", "terminated", True, False, 0),
        ("CREATE_COMPLETE", None, True, False, 0),
        ("ROLLBACK_COMPLETE", None, True, False, 1),
        ("DELETE_IN_PROGRESS", "shutting-down", True, False, 0),
        (None, None, True, False, 0),
        (None, None, True, True, None),
        ("CREATE_COMPLETE", "stopped", False, False, None),
        (None, None, False, False, None),
    ],
    ids=[
        "running",
        "pending",
        "stack-creating",
        "stopped",
        "stopping",
        "terminated",
        "instance-gone",
        "rolled-back",
        "deleting",
        "stack-gone",
        "view-predates-launch",
        "stale-stopped",
        "stale-gone",
    ],
)
def test_server_status(stack_status, instance_state, fresh, launched_later, expected):
    reflector, since = view(stack_status, instance_state, fresh, launched_later)
    assert reflector.server_status(STACK, "i-1", since) == expected


def test_no_view_yet_is_unknown():
    assert Reflector(None, None, "mliy").server_status(STACK, "i-1", 0) is None


def test_instance_found_by_stack_tag_when_outputs_are_not_there_yet():
    reflector, _ = view(None, "pending")
    reflector.stacks[STACK] = StackView(STACK, "n", "CREATE_IN_PROGRESS", None, {}, {})
    assert reflector.instance_for_stack(STACK).instance_id == "i-1"


class FlakyAWS:
    """EC2 and CloudFormation in one: every call fails while ``down``; else nothing exists."""

    down = True

    def get_paginator(self, name):
        if self.down:
            raise ConnectionError("AWS is unreachable")
        return SimpleNamespace(paginate=lambda **kwargs: [{"Reservations": [], "Stacks": []}])


async def test_failed_cycles_back_off_to_the_limit_and_a_success_resets(monkeypatch):
    aws = FlakyAWS()
    reflector = Reflector(aws, aws, "mliy", interval=10.0, min_interval=0.5, max_backoff=30.0)
    pauses = []  # the pause after each cycle, as asked of asyncio.sleep or wait_for
    real_sleep = asyncio.sleep

    def after_cycle(seconds):
        if seconds > reflector.min_interval:  # not the "at least min_interval" pause
            pauses.append(round(seconds))
        aws.down = len(pauses) < 7 or len(pauses) >= 9  # 7 failures, 2 successes, 1 failure
        reflector._stopping = len(pauses) == 10

    async def sleep(seconds):
        after_cycle(seconds)
        await real_sleep(0)

    async def wait_for(awaitable, seconds):
        after_cycle(seconds)
        awaitable.close()  # the wake-up wait: no one asks for a cycle here
        await real_sleep(0)

    monkeypatch.setattr(reflector_module.asyncio, "sleep", sleep)
    monkeypatch.setattr(reflector_module.asyncio, "wait_for", wait_for)
    reflector.start()
    await reflector._task
    assert pauses == [1, 2, 4, 8, 16, 30, 30, 10, 10, 1]


FOREIGN_TEMPLATE = '{"Resources": {"Topic": {"Type": "AWS::SNS::Topic"}}}'


async def test_idle_cycles_cost_the_same_beside_300_foreign_stacks(
    aws_env, counted_clients, make_spawner
):
    counts, ec2, cfn = counted_clients
    reflector = Reflector(ec2, cfn, "mliy", interval=5.0, min_interval=0.01)

    async def idle_cycles(n=6):
        await reflector.refresh()  # whatever changed is seen in this one
        counts.clear()
        for _ in range(n):
            await reflector.refresh()
        return dict(counts)

    try:
        spawners = [make_spawner(user=f"user{i}", reflector=reflector) for i in range(2)]
        for spawner in spawners:
            await spawner._run_apply_user_options({})
            await spawner.start()
        alone = await idle_cycles()
        for i in range(300):  # other teams' stacks and instances in the same account
            aws_env.cfn.create_stack(StackName=f"other-team-{i}", TemplateBody=FOREIGN_TEMPLATE)
        aws_env.ec2.run_instances(ImageId=aws_env.ami_id, MinCount=300, MaxCount=300)
        beside_others = await idle_cycles()
        assert alone == beside_others == {"DescribeInstances": 6, "DescribeStacks": 6}
        assert [await s.poll() for s in spawners] == [None, None]
    finally:
        await reflector.stop()


async def test_a_stack_deleted_behind_the_hubs_back_is_seen(aws_env, make_spawner):
    spawner = make_spawner()
    await spawner._run_apply_user_options({})
    await spawner.start()
    aws_env.cfn.delete_stack(StackName=spawner.stack.stack_id)  # the console, not the hub
    for _ in range(3):
        await spawner.reflector.refresh()
    assert spawner.reflector.is_gone(spawner.stack.stack_id)
    assert await spawner.poll() == 0


def test_a_busy_cycle_describes_its_stacks_a_few_at_a_time(aws_env, counted_clients):
    # a class of 100 starting together: one after another, 200 ms each, a cycle took 20 s
    import threading

    counts, ec2, cfn = counted_clients
    ids = [
        aws_env.cfn.create_stack(StackName=f"mliy-class-{i}", TemplateBody=FOREIGN_TEMPLATE)[
            "StackId"
        ]
        for i in range(10)
    ]
    aws_env.cfn.delete_stack(StackName=ids[3])
    workers = reflector_module.DESCRIBE_WORKERS
    together = threading.Barrier(workers, timeout=10)  # broken if they come one at a time
    first = []
    lock = threading.Lock()

    def wait_for_the_others(model, **kwargs):
        if model.name != "DescribeStacks":
            return
        with lock:
            first.append(1)
            waits = len(first) <= workers
        if waits:
            together.wait()

    cfn.meta.events.register("before-call", wait_for_the_others)
    _, described = reflector_module.read_view(ec2, cfn, "mliy", set(ids), {}, set(), set(), {}, 0)
    assert list(described) == sorted(ids)
    assert described[ids[3]] is None  # deleted: gone
    assert {v.name for k, v in described.items() if k != ids[3]} == {
        f"mliy-class-{i}" for i in range(10) if i != 3
    }
    assert counts["DescribeStacks"] == 10  # each once, as before
