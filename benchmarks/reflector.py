"""How the shared reflector's AWS cost grows with the number of servers.

For N servers (instances launched through stacks in moto, in-process), compare:

- the reflector: one filtered, paginated DescribeInstances and one DescribeStacks per
  cycle, whatever N, and ``poll()`` reads its cache;
- the naive way (one DescribeInstances + one DescribeStacks per server per poll),
  which is what a spawner polling AWS on its own does.

Prints calls per minute of hub operation (JupyterHub polls each server every 30 s; the
reflector cycles every 10 s by default), the ratio, and the time of one cycle and of one
round of N polls. Run: ``python benchmarks/reflector.py``.
"""

import asyncio
import os
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")

from moto import mock_aws  # noqa: E402

from mliy_spawner.aws import make_client  # noqa: E402
from mliy_spawner.reflector import Reflector  # noqa: E402
from mliy_spawner.stacks import stack_instance_id  # noqa: E402

POLL_INTERVAL = 30.0  # JupyterHub's default Spawner.poll_interval
CYCLE_INTERVAL = 10.0  # MLiySpawner.reflector_interval default


def launch(cfn, ec2, n, template, subnet, ami):
    ids = []
    for i in range(n):
        stack_id = cfn.create_stack(
            StackName=f"bench-{i}",
            TemplateBody=template,
            Parameters=[
                {"ParameterKey": "ImageId", "ParameterValue": ami},
                {"ParameterKey": "InstanceType", "ParameterValue": "t2.micro"},
                {"ParameterKey": "SubnetId", "ParameterValue": subnet},
                {"ParameterKey": "AvailabilityZone", "ParameterValue": "us-east-1a"},
                {"ParameterKey": "SecurityGroupIds", "ParameterValue": ""},
                {"ParameterKey": "UserData", "ParameterValue": "#!/bin/bash\n"},
            ],
            Tags=[{"Key": "mliy:hub", "Value": "bench"}, {"Key": "mliy:user", "Value": f"u{i}"}],
        )["StackId"]
        ids.append(stack_id)
    return ids


async def measure(n, template):
    ec2 = make_client("ec2", "us-east-1")
    cfn = make_client("cloudformation", "us-east-1")
    vpc = ec2.create_vpc(CidrBlock="10.30.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.30.0.0/18", AvailabilityZone="us-east-1a")
    ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    stack_ids = launch(cfn, ec2, n, template, subnet["Subnet"]["SubnetId"], ami)

    counts = Counter()
    for client in (ec2, cfn):
        client.meta.events.register("before-call", lambda model, **kw: counts.update([model.name]))
    reflector = Reflector(ec2, cfn, "bench", interval=3600, min_interval=0.0)
    started = time.perf_counter()
    await reflector.refresh()
    cycle = time.perf_counter() - started
    per_cycle = sum(counts.values())
    assert all(reflector.instance_for_stack(s) for s in stack_ids)
    await reflector.stop()

    # the naive way: each server describes its own stack and instance
    counts.clear()
    started = time.perf_counter()
    for stack_id in stack_ids:
        stack = cfn.describe_stacks(StackName=stack_id)["Stacks"][0]
        ec2.describe_instances(InstanceIds=[stack_instance_id(stack)])
    naive_round = time.perf_counter() - started
    per_naive_round = sum(counts.values())
    return cycle, per_cycle, naive_round, per_naive_round


def main():
    template = Path(__file__).resolve().parent.parent / "cloudformation/notebook-instance.yaml"
    template = template.read_text()
    print(
        f"{'servers':>8} {'reflector calls/min':>20} {'naive calls/min':>16} {'ratio':>7}"
        f" {'one cycle':>10} {'naive round':>12}"
    )
    for n in (10, 50, 200):
        with mock_aws():
            cycle, per_cycle, naive_round, per_round = asyncio.run(measure(n, template))
        reflector_per_min = per_cycle * 60 / CYCLE_INTERVAL
        naive_per_min = per_round * 60 / POLL_INTERVAL
        print(
            f"{n:>8} {reflector_per_min:>20.0f} {naive_per_min:>16.0f}"
            f" {naive_per_min / reflector_per_min:>6.1f}x {cycle * 1000:>8.0f}ms"
            f" {naive_round * 1000:>10.0f}ms"
        )


if __name__ == "__main__":
    main()
