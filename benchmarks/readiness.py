"""Readiness lag: from a notebook's first answer to the hub's "ready", over 20 demo spawns.

The demo (``python -m mliy_spawner.demo``, as ``make demo`` runs it, on free loopback
ports; ``tests/e2e/demostack.py`` starts it) launches one server at a time for a new
user of ``analysts`` with the default options. While the spawn runs, this script asks
two things every ``POLL`` seconds:

- the notebook itself, at the loopback address the demo's runner lists for the new
  instance (``addresses.json``): the first HTTP answer of any status is "the notebook
  answers";
- the hub's REST API, ``GET /hub/api/users/<user>``: the first model with ``ready`` true
  is "the hub says ready".

The lag is the second minus the first (each known to about ``POLL``). It is what the
spawner adds: noticing that the instance reported ``done`` (the boot wait reads the
store at most ``boot.STORE_POLL_MAX`` apart), then the hub's own check that the server
answers. Each server is stopped before the next spawn. Goal (issue "At scale"): p95 at
most 2 s. Run: ``python benchmarks/readiness.py`` (``make bench`` does); it rewrites its
block in ``benchmarks/RESULTS.md``.
"""

import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout
sys.path.insert(0, str(ROOT / "tests"))  # hubapi
sys.path.insert(0, str(ROOT / "tests" / "e2e"))  # demostack

import requests  # noqa: E402
from demostack import start_demo  # noqa: E402  (tests/e2e/demostack.py)
from results import write_block  # noqa: E402  (benchmarks/results.py)

from mliy_spawner import boot  # noqa: E402

SPAWNS = 20
POLL = 0.02  # seconds between two looks at the notebook and the hub
SPAWN_LIMIT = 180.0  # seconds one spawn may take before the run is given up
GOAL_P95 = 2.0


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1)]


def answers(session, address, user):
    """Whether the notebook at ``address`` answers HTTP at all (any status)."""
    try:
        session.get(f"http://{address}/user/{user}/api/status", timeout=1)
    except requests.RequestException:
        return False
    return True


def one_spawn(demo, session, user):
    """(seconds to the notebook's first answer, to the hub's ready) after the POST."""
    known = set(demo.addresses())
    posted = time.monotonic()
    r = demo.api("POST", f"/users/{user}/server", data="")
    if r.status_code not in (201, 202):
        raise SystemExit(f"starting {user}'s server: {r.status_code} {r.text}")
    answered = ready = None
    address = None
    while ready is None or answered is None:
        now = time.monotonic()
        if now - posted > SPAWN_LIMIT:
            raise SystemExit(f"{user}'s server was not ready in {SPAWN_LIMIT:.0f} s\n{demo.logs()}")
        if address is None:
            new = [a for i, a in demo.addresses().items() if i not in known]
            address = new[0] if new else None
        if answered is None and address is not None and answers(session, address, user):
            answered = time.monotonic()
        if ready is None:
            model = demo.server(user)
            if model and model.get("ready"):
                ready = time.monotonic()
        time.sleep(POLL)
    return answered - posted, ready - posted


def main():
    lines = [f"Python {sys.version.split()[0]} on {sys.platform}; {SPAWNS} spawns, one at a time"]
    lags, readies = [], []
    with tempfile.TemporaryDirectory(prefix="mliy-bench-readiness-") as tmp:
        demo = start_demo(Path(tmp) / "demo")
        session = requests.Session()
        session.trust_env = False  # loopback only, never an environment proxy
        try:
            for n in range(SPAWNS):
                user = demo.create_user(f"ready{n}", ["analysts"])
                answered, ready = one_spawn(demo, session, user)
                lags.append(ready - answered)
                readies.append(ready)
                print(f"  {user}: notebook answered {answered:5.2f} s, ready {ready:5.2f} s")
                r = demo.api("DELETE", f"/users/{user}/server")
                if r.status_code not in (202, 204):
                    raise SystemExit(f"stopping {user}'s server: {r.status_code} {r.text}")
                demo.wait_stopped(user)
        finally:
            session.close()
            demo.stop()
    p50, p95 = statistics.median(lags), percentile(lags, 0.95)
    lines += [
        "lag from the notebook's first answer to the hub's ready "
        f"(polled every {POLL * 1000:.0f} ms):",
        f"  p50 {p50:.2f} s, p95 {p95:.2f} s, min {min(lags):.2f} s, max {max(lags):.2f} s "
        f"(goal: p95 <= {GOAL_P95:.0f} s: {'met' if p95 <= GOAL_P95 else 'missed'})",
        f"time from POST to ready: p50 {statistics.median(readies):.1f} s, "
        f"p95 {percentile(readies, 0.95):.1f} s",
        f"boot wait reads the store at most {boot.STORE_POLL_MAX} s apart",
    ]
    print("\n".join(lines))
    write_block("readiness.py", "## Readiness lag (`python benchmarks/readiness.py`)", lines)


if __name__ == "__main__":
    main()
