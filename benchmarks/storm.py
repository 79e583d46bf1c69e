"""Spawn storms: 100 MLiySpawner starts at once, every AWS call 200 ms late, on one event loop.

What a hub's event loop sees when a class of 100 students presses Start together. The
spawners are built as ``tests/conftest.py`` ``make_spawner`` builds them (a fake hub and
user, a real ``orm.Spawner`` row each) over moto in-process (``mock_aws``, seeded like the
demo's account), and share one reflector built by the spawners themselves with its
default settings (a cycle every 10 s, at most one a second on request), as in a hub. All
run on one real asyncio loop; the blocking boto3 calls go through the spawner's one shared
pool. Every AWS call sleeps 0.2 s before moto answers (a ``before-send`` handler registered
first), in its pool thread, as a real network call would.

Measured while the storm runs:

- the loop's lag: a ticker every 10 ms notes how late it wakes (p50, p99, max);
- an HTTP endpoint's latency: a tornado handler on the same loop (standing in for the
  hub's ``GET /hub/api/``, which answers from memory) fetched every 50 ms from a thread;
- the time until every spawn is ready, and AWS calls per spawn (reflector's included).

Two storms: AWS answering everything, then 30 % of the calls answered with AWS's own
throttling errors (``Throttling`` / ``RequestLimitExceeded``, injected at the client as
``tests/test_throttling.py`` does, so botocore's retries see them), counting spawns ready,
failed, and orphaned stacks (live, but no server's state names them and none is flagged
for deletion). A real hub with 100 instances through the demo would run 100 notebook
servers on this 2-core machine; the storm is run in one process instead.
Run: ``python benchmarks/storm.py`` (``make bench`` does).
"""

import asyncio
import logging
import os
import socket
import statistics
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")

from conftest import fake_hub, fake_user, orm_spawner  # noqa: E402  (tests/conftest.py)
from moto import mock_aws  # noqa: E402
from test_throttling import Throttle  # noqa: E402  (tests/test_throttling.py)
from tornado import httpserver, web  # noqa: E402

from mliy_spawner.aws import make_client  # noqa: E402
from mliy_spawner.demo.aws import seed_account  # noqa: E402

SPAWNS = 100
LATENCY = 0.2  # seconds added to every AWS call
THROTTLED = 0.3  # share of calls answered with a throttling error in the second storm
TICK = 0.01
API_EVERY = 0.05
REGION = "us-east-1"


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))] if values else float("nan")


class Ping(web.RequestHandler):
    def get(self):
        self.write({"version": "bench"})


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api_prober(port, stop, latencies):
    url = f"http://127.0.0.1:{port}/hub/api/"
    while not stop.is_set():
        started = time.perf_counter()
        with urllib.request.urlopen(url, timeout=30) as answer:
            answer.read()
        latencies.append(time.perf_counter() - started)
        stop.wait(API_EVERY)


def spawner_settings(seed):
    return {
        "region": REGION,
        "subnet_id": seed.subnet_id,
        "availability_zone": seed.availability_zone,
        "software_configs": {
            "small": {
                "display_name": "Small",
                "ami_id": seed.ami_id,
                "instance_types": ["t2.micro", "t2.small"],
                "params": {"python_packages": "", "home_mode": "700"},
            },
        },
        "launch_groups": {
            "students": {
                "security_group_ids": [seed.security_group_id],
                "software_configs": ["small"],
            }
        },
        "start_timeout": 600,
        # the instances never boot in moto: the spawn ends when the instance runs
        "service_url": "http://127.0.0.1:8000/services/mliy/",
        "wait_for_boot": False,
    }


async def storm(label, throttle_share, store_url):
    from mliy_spawner.spawner import MLiySpawner

    seed = seed_account(None, REGION)
    ec2, cfn = make_client("ec2", REGION), make_client("cloudformation", REGION)
    calls = Counter()
    throttle = Throttle(throttle_share, seed=20261201) if throttle_share else None
    for client in (ec2, cfn):
        client.meta.events.register("before-call", lambda model, **kw: calls.update([model.name]))
        if throttle is not None:
            throttle.put_on(client)
        client.meta.events.register_first("before-send", lambda **kw: time.sleep(LATENCY))
    settings = spawner_settings(seed)
    spawners = [
        MLiySpawner(
            user=fake_user(f"student{i}", ("students",)),
            hub=fake_hub(),
            orm_spawner=orm_spawner(f"student{i}"),
            api_token="secret-api-token-0123456789",
            oauth_client_id=f"jupyterhub-user-student{i}",
            ec2_client=ec2,
            cfn_client=cfn,
            store_url=store_url,
            **settings,
        )
        for i in range(SPAWNS)
    ]
    calls.clear()

    loop = asyncio.get_running_loop()
    lags, done_at = [], {}
    port = free_port()
    server = httpserver.HTTPServer(web.Application([(r"/hub/api/", Ping)]))
    server.listen(port, "127.0.0.1")
    stop, api = threading.Event(), []
    prober = threading.Thread(target=api_prober, args=(port, stop, api), daemon=True)

    async def ticker():
        while True:
            expected = loop.time() + TICK
            await asyncio.sleep(TICK)
            lags.append(max(0.0, loop.time() - expected))

    started = time.perf_counter()

    async def spawn(spawner):
        try:
            await spawner._run_apply_user_options({})
            await spawner.start()
        except Exception as e:
            return e
        done_at[spawner.user.name] = time.perf_counter() - started
        return None

    tick = loop.create_task(ticker())
    prober.start()
    try:
        results = await asyncio.gather(*(spawn(s) for s in spawners))
        elapsed = time.perf_counter() - started
    finally:
        stop.set()
        tick.cancel()
        await asyncio.gather(tick, return_exceptions=True)
        await asyncio.to_thread(prober.join)
        server.stop()
    if throttle is not None:
        throttle.on = False
    reflector = spawners[0].reflector
    polls = Counter([await s.poll() for s, r in zip(spawners, results, strict=True) if r is None])
    await reflector.stop()

    ready = [s for s, r in zip(spawners, results, strict=True) if r is None]
    failed = [(s, r) for s, r in zip(spawners, results, strict=True) if r is not None]
    owned = {s.stack.stack_id for s in spawners if s.stack.stack_id}
    live = {
        s["StackId"]
        for page in cfn.get_paginator("list_stacks").paginate()
        for s in page["StackSummaries"]
        if s["StackStatus"] != "DELETE_COMPLETE"
    }
    orphans = live - owned
    print(f"{label}: {SPAWNS} concurrent spawns, +{LATENCY * 1000:.0f} ms on every AWS call")
    print(
        f"  loop lag ({len(lags):,} ticks of {TICK * 1000:.0f} ms): "
        f"p50 {pct(lags, 0.5) * 1000:.1f} ms, "
        f"p99 {pct(lags, 0.99) * 1000:.1f} ms, max {max(lags) * 1000:.1f} ms"
    )
    print(
        f"  HTTP on the same loop ({len(api)} GETs): p50 {pct(api, 0.5) * 1000:.1f} ms, "
        f"p99 {pct(api, 0.99) * 1000:.1f} ms, max {max(api) * 1000:.1f} ms"
    )
    times = sorted(done_at.values())
    print(
        f"  ready: {len(ready)}, failed: {len(failed)}, orphaned stacks: {len(orphans)}; "
        f"all done in {elapsed:.1f} s (first ready {times[0] if times else float('nan'):.1f} s, "
        f"median {statistics.median(times) if times else float('nan'):.1f} s)"
    )
    total = sum(calls.values())
    print(
        f"  AWS calls: {total:,} ({total / SPAWNS:.1f} per spawn; reflector cycles "
        f"{reflector.cycles}): {dict(calls.most_common())}"
    )
    if failed:
        reasons = Counter(str(r)[:80] for _, r in failed)
        print(f"  failures: {dict(reasons)}")
    if throttle is not None:
        print(f"  throttled answers injected: {throttle.injected:,}")
        print(f"  poll() of the ready servers after the storm: {dict(polls)}")


def main():
    import tempfile

    logging.getLogger("mliy").setLevel(logging.ERROR)
    logging.getLogger("tornado.access").setLevel(logging.ERROR)
    print(f"Python {sys.version.split()[0]} on {sys.platform}; moto in-process; one event loop")
    with tempfile.TemporaryDirectory(prefix="mliy-bench-") as tmp:
        for label, share in (
            ("spawn storm", 0.0),
            (f"throttling storm ({THROTTLED:.0%})", THROTTLED),
        ):
            print()
            with mock_aws():
                asyncio.run(storm(label, share, f"sqlite:///{tmp}/{share}.sqlite"))


if __name__ == "__main__":
    main()
