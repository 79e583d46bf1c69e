"""Fixtures for the end-to-end tests: the whole demo stack, started the way ``make demo`` does.

Fixtures:

- ``demo``: one :class:`demostack.DemoStack` for the session: ``python -m mliy_spawner.demo``
  (moto's server, the instance runner, JupyterHub with its proxy, the ``mliy`` service
  and the idle culler) on free 127.0.0.1 ports, with an admin token for the REST API.
  At the end it is stopped with SIGINT, like Ctrl-C, and the teardown fails if the demo
  did not exit cleanly or left any process running.
- ``start_demo``: ``start_demo(extra_env=None, data_dir=None) -> DemoStack``, a separate
  stack with its own settings (environment variables, e.g. a short idle-culler timeout)
  and folder, stopped after the test.
- ``new_user``: ``new_user(group=None, admin=False) -> name``: a user with a fresh name
  on ``demo``, created through the REST API and added to the launch group ``group``.
- ``screenshot_dir``: ``test-output/screenshots/`` (git-ignored), created.

Every test here runs a demo stack and is marked ``e2e`` (the browser tests also
``browser``); the runner alone (``tests/test_demo_runner.py``) and the reference config
(``tests/test_reference_config.py``) are tested outside, without a demo. ``demostack``
is importable as this folder's module (pytest puts a test folder without
``__init__.py`` on ``sys.path``), ``hubapi`` as ``tests/``'s.
When a test fails, the tails of the demo's, the hub's and the instances' logs are
printed with it.
"""

import itertools
import signal
import sys

import pytest
from demostack import DemoStack, still_running
from demostack import start_demo as _start_demo
from hubapi import REPO

_names = itertools.count(1)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"mliy_report_{report.when}", report)


def _failed(node):
    return any(
        getattr(node, f"mliy_report_{when}", None) is not None
        and getattr(node, f"mliy_report_{when}").failed
        for when in ("setup", "call")
    )


def _stop_checked(stack):
    """Stop ``stack`` as Ctrl-C does; fail if it did not exit with 0 or left processes."""
    processes = stack.processes()
    code = stack.stop(signal.SIGINT)
    left = still_running(processes)
    assert code == 0, f"the demo exited with {code}\n{stack.logs()}"
    assert not left, f"processes left running after Ctrl-C: {left}\n{stack.logs()}"


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    stack = _start_demo(tmp_path_factory.mktemp("demo") / "data")
    yield stack
    _stop_checked(stack)


@pytest.fixture(autouse=True)
def _logs_on_failure(request):
    yield
    if _failed(request.node):
        stacks = [
            request.getfixturevalue(name) for name in ("demo",) if name in request.fixturenames
        ]
        stacks += getattr(request.node, "mliy_stacks", [])
        for stack in stacks:
            if isinstance(stack, DemoStack):
                sys.stderr.write(f"\n===== logs of the demo at {stack.data_dir} =====\n")
                sys.stderr.write(stack.logs() + "\n")


@pytest.fixture
def start_demo(request, tmp_path_factory):
    started = []

    def start(extra_env=None, data_dir=None):
        data_dir = data_dir or tmp_path_factory.mktemp("demo") / "data"
        stack = _start_demo(data_dir, extra_env)
        started.append(stack)
        request.node.mliy_stacks = started
        return stack

    yield start
    for stack in started:
        if stack.process.poll() is None:
            stack.stop(signal.SIGINT)


@pytest.fixture
def new_user(demo):
    def make(group=None, admin=False, prefix="user"):
        return demo.create_user(f"{prefix}{next(_names)}", [group] if group else [], admin=admin)

    return make


@pytest.fixture
def screenshot_dir():
    path = REPO / "test-output" / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path
