"""How the shared reflector's AWS cost grows with the number of servers, and what poll() costs.

For N = 10, 100, 1,000 and 5,000 servers of this hub (moto in-process, ``mock_aws``), plus
500 stacks of other teams (untagged), compare:

- the reflector (:mod:`mliy_spawner.reflector`): one DescribeInstances filtered by the hub's
  tag (1,000 a page), DescribeStacks by id only where needed, one settled stack in turn;
- a spawner polling AWS for itself: one DescribeInstances + one DescribeStacks per server
  per poll (JupyterHub polls every 30 s; the reflector cycles every 10 s).

AWS calls are counted on the clients (``before-call``). Building 5,000 stacks from the
shipped template takes minutes in moto, so the servers are built faster: instances with
``run_instances(MinCount=1000)`` in batches, each with its own stack made from a tiny
template (one no-op resource, the instance id as an output) and the CloudFormation tag
(``aws:cloudformation:stack-id``) set on the instance through moto's backend, as
CloudFormation sets it. The naive round is timed on a sample of servers and scaled.

At 5,000 servers it also times ``poll()`` on MLiySpawner objects (built as
``tests/conftest.py`` ``make_spawner`` does, one real ``orm.Spawner`` row each, all reading
the same reflector) and measures the cache's memory (tracemalloc, views unpickled afresh).
Run: ``python benchmarks/reflector.py`` (``make bench`` does).
"""

import asyncio
import logging
import math
import os
import pickle
import statistics
import sys
import time
import tracemalloc
import warnings
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout
os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")

from moto import mock_aws  # noqa: E402
from moto.core import DEFAULT_ACCOUNT_ID  # noqa: E402
from moto.ec2.models import ec2_backends  # noqa: E402

from mliy_spawner.aws import make_client  # noqa: E402
from mliy_spawner.reflector import HUB_TAG, Reflector  # noqa: E402

SIZES = [10, 100, 1_000, 5_000]
FOREIGN = 500  # other teams' stacks in the account, untagged
NAIVE_SAMPLE = 200  # servers the naive round is timed on (then scaled to N)
POLL_SPAWNERS = 5_000  # spawners poll() is timed on, at the largest size
POLL_INTERVAL = 30.0  # JupyterHub's Spawner.poll_interval default
CYCLE_INTERVAL = 10.0  # MLiySpawner.reflector_interval default
EC2_DESCRIBE_PER_MIN = 20 * 60  # EC2's refill for filtered Describe calls (20/s)
REGION = "us-east-1"
HUB = "bench"

TINY = """Parameters:
  InstanceId: {Type: String}
Resources:
  Handle: {Type: "AWS::CloudFormation::WaitConditionHandle"}
Outputs:
  InstanceId: {Value: !Ref InstanceId}
"""


class Meter:
    """Counts the AWS calls of the clients it is put on, and the time spent in them."""

    def __init__(self):
        self.calls = Counter()
        self.seconds = 0.0
        self._started = {}

    def put_on(self, client):
        client.meta.events.register("before-call", self._before)
        client.meta.events.register("after-call", self._after)

    def _before(self, model, context, **kw):
        self.calls[model.name] += 1
        context["bench_started"] = time.perf_counter()

    def _after(self, context, **kw):
        self.seconds += time.perf_counter() - context.get("bench_started", time.perf_counter())

    def clear(self):
        self.calls.clear()
        self.seconds = 0.0

    @property
    def total(self):
        return sum(self.calls.values())


def build(ec2, cfn, n):
    """N running instances tagged for the hub, each with its stack; and FOREIGN other stacks.
    Returns [(stack id, instance id)]."""
    ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    backend = ec2_backends[DEFAULT_ACCOUNT_ID][REGION]
    servers = []
    while len(servers) < n:
        batch = min(1000, n - len(servers))
        tags = [{"Key": HUB_TAG, "Value": HUB}]
        reservation = ec2.run_instances(
            ImageId=ami,
            MinCount=batch,
            MaxCount=batch,
            InstanceType="t3.medium",
            TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
        )
        for inst in reservation["Instances"]:
            i = len(servers)
            stack_id = cfn.create_stack(
                StackName=f"mliy-{HUB}-u{i}",
                TemplateBody=TINY,
                Parameters=[{"ParameterKey": "InstanceId", "ParameterValue": inst["InstanceId"]}],
                Tags=[*tags, {"Key": "mliy:user", "Value": f"u{i}"}],
            )["StackId"]
            # what CloudFormation tags its instances with (the API refuses aws: tags)
            backend.create_tags([inst["InstanceId"]], {"aws:cloudformation:stack-id": stack_id})
            servers.append((stack_id, inst["InstanceId"]))
    for i in range(FOREIGN):
        cfn.create_stack(
            StackName=f"other-team-{i}",
            TemplateBody=TINY,
            Parameters=[{"ParameterKey": "InstanceId", "ParameterValue": "i-0"}],
        )
    return servers


async def reflector_cycles(ec2, cfn, meter, servers):
    """The first cycle (describes every stack), then three idle ones (one at 5,000: an
    idle cycle there takes over a minute in moto)."""
    reflector = Reflector(ec2, cfn, HUB, interval=3600, min_interval=0.0)
    meter.clear()
    started = time.perf_counter()
    await reflector.refresh()
    first = (time.perf_counter() - started, meter.total)
    idle = []
    for _ in range(1 if len(servers) >= 5_000 else 3):
        meter.clear()
        started = time.perf_counter()
        await reflector.refresh()
        idle.append((time.perf_counter() - started, meter.total, meter.seconds, dict(meter.calls)))
    missing = sum(reflector.server_status(s, i, 0.0) is not None for s, i in servers)
    assert missing == 0, f"{missing} servers not seen running"
    return reflector, first, idle


def naive_round(ec2, cfn, meter, servers):
    """One naive poll of each sampled server: (seconds scaled to all N, calls per server)."""
    sample = servers[:NAIVE_SAMPLE]
    meter.clear()
    started = time.perf_counter()
    for stack_id, instance_id in sample:
        cfn.describe_stacks(StackName=stack_id)
        ec2.describe_instances(InstanceIds=[instance_id])
    seconds = (time.perf_counter() - started) * len(servers) / len(sample)
    return seconds, meter.total / len(sample)


def cache_memory(reflector):
    """Bytes the instances and stacks views hold (fresh copies, traced)."""
    blob = pickle.dumps((reflector.instances, reflector.stacks))
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    views = pickle.loads(blob)
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    del views
    return used


def make_spawners(ec2, cfn, reflector, servers, store_url):
    """MLiySpawner objects over ``servers``, as tests/conftest.py make_spawner builds them
    (one in-memory hub database holding every user and spawner row)."""
    from jupyterhub import orm
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from conftest import fake_hub, fake_user

    from mliy_spawner.spawner import MLiySpawner

    engine = create_engine("sqlite://")
    orm.Base.metadata.create_all(engine)
    session = Session(engine)
    rows = []
    for i in range(len(servers)):
        user = orm.User(name=f"u{i}")
        rows.append(orm.Spawner(user=user, name=""))
        session.add_all([user, rows[-1]])
    session.commit()
    spawners = []
    for i, ((stack_id, instance_id), row) in enumerate(zip(servers, rows, strict=True)):
        spawner = MLiySpawner(
            user=fake_user(f"u{i}", ("analysts",)),
            hub=fake_hub(),
            orm_spawner=row,
            reflector=reflector,
            ec2_client=ec2,
            cfn_client=cfn,
            store_url=store_url,
            region=REGION,
            hub_name=HUB,
            api_token="secret-api-token-0123456789",
        )
        spawner.load_state({"mliy": {"stack_id": stack_id, "instance_id": instance_id}})
        spawners.append(spawner)
    return spawners, session


async def bench_poll(ec2, cfn, reflector, servers, store_url):
    count = min(POLL_SPAWNERS, len(servers))
    started = time.perf_counter()
    spawners, session = make_spawners(ec2, cfn, reflector, servers[:count], store_url)
    built = time.perf_counter() - started
    await spawners[0].poll()  # the first poll opens the shared store
    times, answers = [], Counter()
    for spawner in spawners:
        started = time.perf_counter()
        answer = await spawner.poll()
        times.append(time.perf_counter() - started)
        answers[answer] += 1
    times.sort()
    p50, p99 = times[len(times) // 2], times[int(len(times) * 0.99)]
    session.close()
    return (
        f"poll() on {count:,} MLiySpawner objects (built in {built:.1f} s, "
        f"{built / count * 1000:.1f} ms each), all reading one reflector:\n"
        f"  p50 {p50 * 1e6:.0f} us, p99 {p99 * 1e6:.0f} us, max {times[-1] * 1e6:.0f} us; "
        f"all {count:,} in {sum(times) * 1000:.0f} ms; answers {dict(answers)}; "
        "poll() itself calls no AWS API"
    )


async def measure(n, store_url):
    ec2 = make_client("ec2", REGION)
    cfn = make_client("cloudformation", REGION)
    started = time.perf_counter()
    servers = build(ec2, cfn, n)
    built = time.perf_counter() - started
    meter = Meter()
    for client in (ec2, cfn):
        meter.put_on(client)
    reflector, first, idle = await reflector_cycles(ec2, cfn, meter, servers)
    naive_seconds, naive_per_server = naive_round(ec2, cfn, meter, servers)
    try:
        extra = None
        if n == SIZES[-1]:
            meter.clear()
            poll_lines = await bench_poll(ec2, cfn, reflector, servers, store_url)
            poll_lines += f"; calls counted while polling: {meter.total}"
            extra = cache_memory(reflector), poll_lines
        return built, first, idle, naive_seconds, naive_per_server, extra
    finally:
        await reflector.stop()


def main():
    import tempfile

    logging.getLogger("mliy").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message="Tried to parse AWS::CloudFormation")
    print(f"Python {sys.version.split()[0]} on {sys.platform}; moto in-process, {FOREIGN}")
    print("foreign stacks besides the hub's; reflector cycle every 10 s, naive poll every 30 s")
    print()
    print(
        f"{'servers':>7} {'build':>7} {'1st cycle':>10} {'calls/idle cycle':>17}"
        f" {'idle cycle':>11} {'in AWS calls':>13} {'reflector/min':>14} {'naive/min':>10}"
        f" {'ratio':>7} {'naive round':>12} {'EC2 budget used':>16}"
    )
    with tempfile.TemporaryDirectory(prefix="mliy-bench-") as tmp:
        store_url = f"sqlite:///{tmp}/mliy.sqlite"
        last = None
        for n in SIZES:
            with mock_aws():
                built, first, idle, naive_s, naive_per, extra = asyncio.run(measure(n, store_url))
                if extra is not None:
                    last = extra
            seconds = statistics.median(t for t, *_ in idle)
            calls = idle[-1][1]
            in_aws = statistics.median(a for _, _, a, _ in idle)
            reflector_min = calls * 60 / CYCLE_INTERVAL
            naive_min = naive_per * n * 60 / POLL_INTERVAL
            ec2_reflector = idle[-1][3].get("DescribeInstances", 0) * 60 / CYCLE_INTERVAL
            ec2_naive = n * 60 / POLL_INTERVAL
            budget = (
                f"{ec2_reflector / EC2_DESCRIBE_PER_MIN:.1%} vs "
                f"{ec2_naive / EC2_DESCRIBE_PER_MIN:.0%}"
            )
            print(
                f"{n:>7,} {built:>6.1f}s {first[0]:>9.2f}s"
                f" {calls:>8} ({math.ceil(n / 1000)}+1) {seconds * 1000:>9.0f}ms"
                f" {in_aws * 1000:>11.0f}ms {reflector_min:>14.0f} {naive_min:>10,.0f}"
                f" {naive_min / reflector_min:>6,.0f}x {naive_s:>11.1f}s {budget:>16}"
            )
            print(f"        first cycle: {first[1]:,} calls; idle cycle's calls: {idle[-1][3]}")
        if last is not None:
            used = last[0]
            print()
            print(
                f"cache at {SIZES[-1]:,} servers (instances + stacks views): "
                f"{used / 1e6:.1f} MB ({used / SIZES[-1] / 1000:.1f} kB per server)"
            )
            print()
            print(last[1])


if __name__ == "__main__":
    main()
