"""``python -m mliy_spawner.demo`` as a process: Ctrl-C and SIGTERM stop everything it
started (hub, proxy, services, moto, the instances' scripts and servers), and bad
settings stop it before it starts anything, with a message naming the variable."""

import os
import signal
import socket
import subprocess
import sys

import pytest
from demostack import demo_env, still_running
from hubapi import REPO, port_open

pytestmark = pytest.mark.e2e


def _cwd(pid):
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


def _cmdline(pid):
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_stopping_the_demo_leaves_nothing_running(start_demo, sig):
    demo = start_demo()
    user = demo.create_user("carol", ["analysts"])
    demo.start_server(user, json={"user_options": {}})
    [address] = demo.addresses().values()
    notebook_port = int(address.rsplit(":", 1)[1])

    processes = demo.processes()
    commands = [_cmdline(pid) for pid in processes]
    # what should be running is: the hub, its proxy and services, and the notebook server
    assert any("configurable-http-proxy" in c for c in commands), commands
    assert any("mliy_spawner.service" in c for c in commands), commands
    assert any("jupyterhub_idle_culler" in c for c in commands), commands
    instances = str(demo.data_dir / "instances")
    assert any(_cwd(pid).startswith(instances) for pid in processes), commands
    ports = [demo.hub_port, demo.aws_port, notebook_port]
    assert all(port_open(p) for p in ports)

    demo.process.send_signal(sig)
    assert demo.process.wait(60) == 0, demo.logs()
    left = still_running(processes)
    assert not left, [(pid, _cmdline(pid)) for pid in left]
    assert not any(port_open(p) for p in ports)
    assert demo.addresses() == {}


def test_the_next_run_cleans_up_after_a_killed_demo(start_demo, tmp_path):
    first = start_demo(data_dir=tmp_path / "data")
    user = first.create_user("dave", ["students"])
    first.start_server(user)
    processes = first.processes()
    del processes[first.process.pid]

    first.process.kill()  # no chance to clean up: hub, proxy, services, server survive
    first.process.wait(10)
    assert still_running(processes)

    second = start_demo({"MLIY_DEMO_HUB_PORT": str(first.hub_port)}, data_dir=tmp_path / "data")
    assert not still_running(processes), [_cmdline(pid) for pid in still_running(processes)]
    log = second.demo_log()
    assert "Stopped the hub that a killed demo run had left running" in log
    assert second.api("GET", "/users").status_code == 200


def run_demo(tmp_path, **env):
    return subprocess.run(
        [sys.executable, "-m", "mliy_spawner.demo"],
        cwd=REPO,
        env=demo_env(tmp_path / "data", **env),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "variable, value, expected",
    [
        ("MLIY_DEMO_HUB_PORT", "80; rm -rf /", "an integer from 1 to 65535"),
        ("MLIY_DEMO_AWS_PORT", "70000", "an integer from 1 to 65535"),
        ("MLIY_DEMO_CULL_TIMEOUT", "-5", "an integer from 1 to"),
        ("MLIY_DEMO_PASSWORD", "short", "at least 8 characters"),
        ("MLIY_DEMO_ADMIN_PASSWORD", "x" * 31, "at least 32 characters"),
        ("MLIY_DEMO_CONFIG", "/nonexistent/config.py", "no such file"),
    ],
    ids=["hub-port", "aws-port", "cull-timeout", "password", "admin-password", "config"],
)
def test_bad_settings_stop_the_demo_with_a_message(tmp_path, variable, value, expected):
    result = run_demo(tmp_path, **{variable: value})
    assert result.returncode == 1, result.stdout + result.stderr
    assert variable in result.stderr
    assert expected in result.stderr
    assert "mliy-spawner demo:" not in result.stdout


def test_a_port_in_use_stops_the_demo_with_a_message(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_demo(tmp_path, MLIY_DEMO_HUB_PORT=str(port))
    assert result.returncode == 1
    assert f"127.0.0.1:{port} is in use" in result.stderr
    assert "MLIY_DEMO_HUB_PORT" in result.stderr
