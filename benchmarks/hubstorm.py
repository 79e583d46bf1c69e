"""A spawn storm through a real hub: 100 users press Start at once, every AWS call 200 ms late.

``benchmarks/storm.py`` runs 100 ``MLiySpawner.start()`` on one loop in this process;
this one runs them where they run in production: a real ``jupyterhub`` process
(``tests/hubapi.py``: configurable-http-proxy, the hub's own database, MLiySpawner with
its shared reflector, reconciler and ledger), driven through its REST API. Around it,
all on loopback:

- moto's server (``ThreadedMotoServer``, seeded like the demo's account), in this
  process, so the hub's process holds no moto code;
- an HTTP proxy in front of it that holds every AWS request ``LATENCY`` seconds before
  passing it on and counts them by operation (the hub's ``aws_endpoint_url`` points
  there);
- one stub notebook server answering every path, where ``connect_address_hook`` sends
  the hub for every instance (moto's instances never boot: ``wait_for_boot`` is off, so a
  spawn is ready once the stack is created, the instance runs and the stub answers).

Measured: the hub's loop lag (a 10 ms ticker on the hub's own event loop, started by a
``pre_spawn_hook`` with the first spawn and written to a file every second, off the
loop), ``GET /hub/api/`` through the proxy every 50 ms from a thread (p50, p99, max),
the time until every server is ready, and AWS requests per spawn. The 100 POSTs are
sent at once from 100 threads. A second storm, on a fresh hub and moto, has the proxy
answer 30 % of the requests with AWS's own throttling errors (``RequestLimitExceeded``
for EC2, ``Throttling`` for CloudFormation) and counts the servers ready, failed, and
the orphaned stacks (live, but named by no server's state in the hub). A third runs the
first storm again with the hub's own database on a throw-away PostgreSQL (``tests/pg.py``),
when Debian's ``postgresql`` is installed. The watchdog's samples are grouped into stalls
and counted by whose code they are in (:func:`stalls_by_owner`). Run:
``python benchmarks/hubstorm.py`` (``make bench`` does); it rewrites its block in
``benchmarks/RESULTS.md``.
"""

import http.client
import json
import logging
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout
sys.path.insert(0, str(ROOT / "tests"))  # hubapi
os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")

import requests  # noqa: E402
from hubapi import (  # noqa: E402
    HubClient,
    free_port,
    start_jupyterhub,
    stop_process,
    write_hub_config,  # noqa: E402
)
from moto.server import ThreadedMotoServer  # noqa: E402
from results import postgres_databases, write_block  # noqa: E402  (benchmarks/results.py)
from test_throttling import THROTTLED_BODIES  # noqa: E402  (tests/test_throttling.py)

from mliy_spawner.aws import make_client  # noqa: E402
from mliy_spawner.demo.aws import seed_account  # noqa: E402

SPAWNS = 100
LATENCY = 0.2  # seconds added to every AWS request
THROTTLED = 0.3  # share of requests answered with a throttling error in the second storm
REGION = "us-east-1"
API_EVERY = 0.05
READY_LIMIT = 900.0  # seconds before the run is given up


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))] if values else float("nan")


class SlowAWS(ThreadingHTTPServer):
    """Holds each request ``LATENCY`` s, then forwards it to moto; counts operations."""

    daemon_threads = True

    def __init__(self, moto_port, throttle_share=0.0, seed=20261201):
        self.moto_port = moto_port
        self.calls = Counter()
        self.lock = threading.Lock()
        self.throttle_share = throttle_share
        self.rng = random.Random(seed)  # the same storm every run
        self.throttled = 0
        super().__init__(("127.0.0.1", 0), _SlowHandler)

    def throttle(self):
        """Whether to answer this request with AWS's throttling error."""
        with self.lock:
            if self.throttle_share and self.rng.random() < self.throttle_share:
                self.throttled += 1
                return True
            return False


class _SlowHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _forward(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        action = (parse_qs(body.decode(errors="replace")).get("Action") or ["?"])[0]
        with self.server.lock:
            self.server.calls[action] += 1
        time.sleep(LATENCY)
        if self.server.throttle():
            # the credential scope names the service: EC2's own error, or the query
            # protocol's (CloudFormation), as tests/test_throttling.py answers them
            ec2 = "/ec2/aws4_request" in self.headers.get("Authorization", "")
            self._answer(400, THROTTLED_BODIES["ec2" if ec2 else "query"].encode())
            return
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.moto_port, timeout=120)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
            upstream.request(self.command, self.path, body=body, headers=headers)
            answer = upstream.getresponse()
            data = answer.read()
            self.send_response(answer.status)
            for name, value in answer.getheaders():
                if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        finally:
            upstream.close()

    def _answer(self, status, data):
        self.send_response(status)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _forward

    def log_message(self, *args):
        pass


class _Notebook(BaseHTTPRequestHandler):
    """Every path answers 200: the hub's check that a server is up."""

    def do_GET(self):
        body = b"{}"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


SETTINGS = """\
import asyncio, json, pathlib

c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.JupyterHub.spawner_class = "mliy"
c.JupyterHub.cleanup_servers = False
c.JupyterHub.concurrent_spawn_limit = 0
c.JupyterHub.services = [{{"name": "bench-admin", "api_token": {admin_token!r}}}]
c.JupyterHub.load_roles = [{{"name": "admin", "services": ["bench-admin"]}}]
c.JupyterHub.load_groups = {{"students": {{"users": []}}}}
c.MLiySpawner.aws_endpoint_url = {aws_url!r}
c.MLiySpawner.region = {region!r}
c.MLiySpawner.subnet_id = {subnet_id!r}
c.MLiySpawner.availability_zone = {zone!r}
c.MLiySpawner.store_url = {store_url!r}
c.MLiySpawner.software_configs = {{
    "small": {{
        "display_name": "Small",
        "ami_id": {ami_id!r},
        "instance_types": ["t2.micro", "t2.small"],
        "params": {{"python_packages": "", "home_mode": "700"}},
    }}
}}
c.MLiySpawner.launch_groups = {{
    "students": {{"security_group_ids": [{security_group_id!r}], "software_configs": ["small"]}}
}}
c.MLiySpawner.service_url = "http://127.0.0.1:9/services/mliy/"
c.MLiySpawner.wait_for_boot = False
c.MLiySpawner.start_timeout = 600
c.MLiySpawner.http_timeout = 120
c.MLiySpawner.connect_address_hook = lambda spawner, instance: ("127.0.0.1", {notebook_port})

LAGS = pathlib.Path({lag_file!r})
_ticking = []
_last = [0.0]
_stalls = []  # [lag at sampling, the loop thread's frames], sampled while the loop is late


def _watch(main_id):
    # a thread: while the ticker is over 100 ms late, note where the loop thread is
    import sys, time, traceback

    while True:
        time.sleep(0.02)
        late = time.monotonic() - _last[0]
        frame = sys._current_frames().get(main_id)
        if _last[0] and late > 0.1 and frame is not None:
            stack = traceback.extract_stack(frame)
            _stalls.append([late, [f"{{f.filename}}:{{f.lineno}}:{{f.name}}" for f in stack]])


async def _tick():
    import threading, time

    loop = asyncio.get_running_loop()
    threading.Thread(target=_watch, args=(threading.get_ident(),), daemon=True).start()
    lags = []
    last_write = loop.time()
    while True:
        expected = loop.time() + 0.01
        _last[0] = time.monotonic()
        await asyncio.sleep(0.01)
        now = loop.time()
        lags.append(max(0.0, now - expected))
        if now - last_write > 1.0:
            last_write = now
            data = json.dumps({{"lags": lags, "stalls": _stalls}})
            _last[0] = 0.0  # not ticking while the file is written: no stall to sample
            await asyncio.to_thread(LAGS.write_text, data)


def _start_ticker(spawner):
    if not _ticking:
        _ticking.append(asyncio.get_running_loop().create_task(_tick()))


c.MLiySpawner.pre_spawn_hook = _start_ticker
{hub_db}
"""


def main():
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    lines = [
        f"Python {sys.version.split()[0]} on {sys.platform}; a real jupyterhub process; "
        f"{SPAWNS} users press Start at once; +{LATENCY * 1000:.0f} ms on every AWS request"
    ]
    notebook = ThreadingHTTPServer(("127.0.0.1", 0), _Notebook)
    notebook.daemon_threads = True
    threading.Thread(target=notebook.serve_forever, daemon=True).start()
    port = notebook.server_address[1]
    for label, share in (("spawn storm", 0.0), (f"throttling storm ({THROTTLED:.0%})", THROTTLED)):
        lines += ["", f"{label}:"]
        one_hub(share, port, lines)
    # the same storm with the hub's own database on PostgreSQL, as docs/production.md has it
    with postgres_databases(["jupyterhub"], lines) as urls:
        if urls:
            lines += ["", "spawn storm, the hub's database on PostgreSQL (tests/pg.py: no fsync):"]
            one_hub(0.0, port, lines, hub_db_url=urls["jupyterhub"])
    notebook.shutdown()
    print("\n".join(lines))
    write_block(
        "hubstorm.py", "## Spawn storm on a real hub (`python benchmarks/hubstorm.py`)", lines
    )


def one_hub(throttle_share, notebook_port, lines, hub_db_url=None):
    """A fresh moto server, proxy and hub; the storm; then all of it stopped. The hub's
    database is SQLite in the hub's folder, or at ``hub_db_url``."""
    moto_port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=moto_port, verbose=False)
    moto.start()
    slow = SlowAWS(moto_port, throttle_share)
    threading.Thread(target=slow.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{moto_port}"
    # moto's servers in one process share their state: start from an empty account
    requests.post(f"{endpoint}/moto-api/reset", timeout=60).raise_for_status()
    seed = seed_account(endpoint, REGION)
    with tempfile.TemporaryDirectory(prefix="mliy-bench-hubstorm-") as tmp:
        folder = Path(tmp)
        token = os.urandom(16).hex()
        lag_file = folder / "lags.json"
        config_file, ports = write_hub_config(
            folder,
            SETTINGS,
            admin_token=token,
            aws_url=f"http://127.0.0.1:{slow.server_address[1]}",
            region=REGION,
            subnet_id=seed.subnet_id,
            zone=seed.availability_zone,
            store_url=f"sqlite:///{folder / 'mliy.sqlite'}",
            ami_id=seed.ami_id,
            security_group_id=seed.security_group_id,
            notebook_port=notebook_port,
            lag_file=str(lag_file),
            hub_db=f"c.JupyterHub.db_url = {hub_db_url!r}" if hub_db_url else "",
        )
        hub = HubClient(f"http://127.0.0.1:{ports['public_port']}", token, timeout=120)
        log = folder / "jupyterhub.log"
        process = start_jupyterhub(config_file, hub, log, timeout=120)
        try:
            run_storm(hub, slow, lag_file, lines)
            slow.throttle_share = 0.0  # the count below is not the storm's
            lines.append(f"  orphaned stacks: {len(orphans(hub, endpoint))}")
            if throttle_share:
                lines.append(f"  throttled answers injected: {slow.throttled:,}")
        except BaseException:
            print(log.read_text(errors="replace")[-6000:])
            raise
        finally:
            stop_process(process)
            hub.session.close()
    slow.shutdown()
    moto.stop()


def orphans(hub, endpoint):
    """Live stacks that no server's state names (the hub's own view, as admin)."""
    owned = set()
    for model in hub.get("/users?include_stopped_servers=1") or ():
        for server in (model.get("servers") or {}).values():
            stack_id = ((server.get("state") or {}).get("mliy") or {}).get("stack_id")
            if stack_id:
                owned.add(stack_id)
    cfn = make_client("cloudformation", REGION, endpoint)
    live = {
        s["StackId"]
        for page in cfn.get_paginator("list_stacks").paginate()
        for s in page["StackSummaries"]
        if s["StackStatus"] != "DELETE_COMPLETE"
    }
    return live - owned


def run_storm(hub, slow, lag_file, lines):
    users = [f"student{i}" for i in range(SPAWNS)]
    r = hub.api("POST", "/users", json={"usernames": users})
    assert r.status_code == 201, r.text
    r = hub.api("POST", "/groups/students/users", json={"users": users})
    assert r.status_code == 200, r.text
    slow.calls.clear()

    stop, api = threading.Event(), []

    def probe():
        session = requests.Session()
        session.trust_env = False
        while not stop.is_set():
            started = time.perf_counter()
            session.get(f"{hub.url}/hub/api/", timeout=60)
            api.append(time.perf_counter() - started)
            stop.wait(API_EVERY)
        session.close()

    def post(user):
        """The POST's status, and the hub's message when it refused (as a REST client
        sees it)."""
        session = requests.Session()
        session.trust_env = False
        try:
            r = session.post(
                f"{hub.url}/hub/api/users/{user}/server",
                headers={"Authorization": f"token {hub.token}"},
                data="",
                timeout=120,
            )
            if r.status_code < 400:
                return r.status_code, None
            try:
                return r.status_code, f"{r.status_code} {r.json().get('message')}"
            except ValueError:
                return r.status_code, f"{r.status_code} {r.text[:200]!r}"
        finally:
            session.close()

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    started = time.perf_counter()
    with ThreadPoolExecutor(SPAWNS) as pool:
        answers = list(pool.map(post, users))
    posted = time.perf_counter() - started
    codes = Counter(code for code, _ in answers)
    refusals = Counter(message for _, message in answers if message)
    ready_at, failed = {}, set()
    while len(ready_at) + len(failed) < SPAWNS:
        if time.perf_counter() - started > READY_LIMIT:
            break
        for model in hub.get("/users") or ():
            server = (model.get("servers") or {}).get("")
            name = model["name"]
            if name in ready_at or name in failed or name not in users:
                continue
            if server and server.get("ready"):
                ready_at[name] = time.perf_counter() - started
            elif not server and codes:  # no server and not pending: the spawn failed
                failed.add(name)
        time.sleep(0.5)
    elapsed = time.perf_counter() - started
    time.sleep(1.5)  # the ticker's last write
    stop.set()
    prober.join()
    found = json.loads(lag_file.read_text()) if lag_file.exists() else {}
    lags = found.get("lags", [])
    times = sorted(ready_at.values())
    calls = sum(slow.calls.values())
    lines += [
        f"  POST answers: {dict(codes)} (all {SPAWNS} sent in {posted:.1f} s)",
        *(f"    {n} x {message}" for message, n in refusals.most_common()),
        f"  hub loop lag ({len(lags):,} ticks of 10 ms): p50 {pct(lags, 0.5) * 1000:.1f} ms, "
        f"p99 {pct(lags, 0.99) * 1000:.1f} ms, max {max(lags, default=0) * 1000:.1f} ms",
        f"  GET /hub/api/ through the proxy ({len(api)} GETs): p50 {pct(api, 0.5) * 1000:.1f} ms,"
        f" p99 {pct(api, 0.99) * 1000:.1f} ms, max {max(api, default=0) * 1000:.1f} ms",
        f"  ready: {len(ready_at)}, failed: {len(failed)}; all done in {elapsed:.1f} s "
        f"(first ready {times[0] if times else float('nan'):.1f} s, "
        f"median {statistics.median(times) if times else float('nan'):.1f} s)",
        f"  AWS requests: {calls:,} ({calls / SPAWNS:.1f} per spawn): "
        f"{dict(slow.calls.most_common())}",
        "  where the loop thread was while the loop ran over 100 ms late (samples every 20 ms):",
        *where(found.get("stalls", [])),
        "  the stalls over 100 ms, and whose code each sample was in:",
        *stalls_by_owner(found.get("stalls", [])),
    ]


def where(stalls, top=10):
    """The most sampled code of this package or JupyterHub among the stall samples: for
    each sample, the innermost frame in mliy_spawner/ or jupyterhub/ and the innermost
    frame of all."""
    places = Counter()
    for _, frames in stalls:
        ours = [f for f in frames if "/mliy_spawner/" in f or "/jupyterhub/" in f]
        inner = frames[-1].split("/")[-1] if frames else "?"
        mine = ours[-1].split("site-packages/")[-1].replace(f"{ROOT}/", "") if ours else "-"
        places[f"{mine}  (innermost: {inner})"] += 1
    return [f"    {n:4d}  {place}" for place, n in places.most_common(top)] or ["    none"]


def owner(frames):
    """Whose work a stall sample shows: this package's, or the JupyterHub step it is in."""
    if any("/mliy_spawner/" in f for f in frames):
        return "mliy_spawner"
    for needle, name in (
        ("/apihandlers/users.py:", "POST handler"),
        ("/jupyterhub/user.py:", "User.spawn"),
        ("/jupyterhub/", "other JupyterHub"),
    ):
        if any(needle in f for f in frames):
            return name
    return "other"


def stalls_by_owner(stalls, top=8):
    """The longest stalls (a run of samples whose lateness keeps growing) with the count of
    their samples by :func:`owner`, and how many samples of all show this package."""
    runs, last = [], None
    for late, frames in stalls:
        if last is None or late < last:
            runs.append([0.0, Counter()])
        runs[-1][0] = late
        runs[-1][1][owner(frames)] += 1
        last = late
    runs.sort(key=lambda run: run[0], reverse=True)
    lines = [
        f"    {late * 1000:6.0f} ms: " + ", ".join(f"{k} {n}" for k, n in owners.most_common())
        for late, owners in runs[:top]
    ]
    ours = Counter(
        [f for f in frames if "/mliy_spawner/" in f][-1].replace(f"{ROOT}/", "")
        for _, frames in stalls
        if owner(frames) == "mliy_spawner"
    )
    lines.append(
        f"    {len(runs)} stalls sampled, {len(stalls)} samples; with a frame of mliy_spawner:"
        f" {ours.total()}"
    )
    lines += [f"      {n} in {frame}" for frame, n in ours.most_common()]
    return lines


if __name__ == "__main__":
    main()
