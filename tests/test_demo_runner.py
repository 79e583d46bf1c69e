"""The demo's instance runner and address hook on their own (no hub): moto's ``mock_aws``
holds the instances, and a small user-data script starts a loopback HTTP server through
the sandbox's ``systemctl`` stub, the way the real bootstrap starts the notebook."""

import asyncio
import json
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from hubapi import wait_for

from mliy_spawner.aws import make_client
from mliy_spawner.demo.hooks import local_address_hook
from mliy_spawner.demo.runner import InstanceRunner, processes_under, stop_leftovers

USER_DATA = f"""#!/bin/bash
set -euo pipefail
echo "$MLIY_LOCAL_INSTANCE_ID" >> "$MLIY_LOCAL_ROOT/boots"
mkdir -p "$MLIY_LOCAL_ROOT/etc/systemd/system" "$MLIY_LOCAL_ROOT/srv"
echo hello > "$MLIY_LOCAL_ROOT/srv/index.html"
cat > "$MLIY_LOCAL_ROOT/etc/systemd/system/mliy-notebook.service" <<EOF
[Service]
WorkingDirectory=$MLIY_LOCAL_ROOT/srv
ExecStart={sys.executable} -m http.server --bind 127.0.0.1 $MLIY_LOCAL_PORT
EOF
systemctl enable --now mliy-notebook.service
"""


def answers(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=1) as r:
            return r.read() == b"hello\n"
    except OSError:
        return False


@pytest.fixture
def ec2():
    from moto import mock_aws

    with mock_aws():
        yield make_client("ec2", "us-east-1")


def launch(ec2, hub="mliy"):
    ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    tags = [{"ResourceType": "instance", "Tags": [{"Key": "mliy:hub", "Value": hub}]}]
    reservation = ec2.run_instances(
        ImageId=ami, MinCount=1, MaxCount=1, UserData=USER_DATA, TagSpecifications=tags
    )
    return reservation["Instances"][0]["InstanceId"]


@pytest.fixture
def runner(ec2, tmp_path):
    runner = InstanceRunner(ec2, tmp_path, python_bin_dir=Path(sys.executable).parent)
    (tmp_path / "instances").mkdir()
    (tmp_path / "logs" / "instances").mkdir(parents=True)
    yield runner
    runner.stop()
    assert processes_under(tmp_path / "instances") == []


def test_runner_follows_start_stop_start_terminate(ec2, runner, tmp_path):
    mine = launch(ec2)
    other = launch(ec2, hub="another-hub")
    runner.sync()
    addresses = json.loads((tmp_path / "addresses.json").read_text())
    assert list(addresses) == [mine]
    host, port = addresses[mine].split(":")
    assert host == "127.0.0.1"
    wait_for(lambda: answers(port), "the instance's server", 30)
    root = tmp_path / "instances" / mine
    assert stat.S_IMODE((root / "user-data").stat().st_mode) == 0o600
    assert not (tmp_path / "instances" / other).exists()

    ec2.stop_instances(InstanceIds=[mine])
    runner.sync()
    assert json.loads((tmp_path / "addresses.json").read_text()) == {}
    wait_for(lambda: not answers(port), "the server to stop", 10)
    assert processes_under(root) == []

    ec2.start_instances(InstanceIds=[mine])
    runner.sync()
    assert json.loads((tmp_path / "addresses.json").read_text()) == {mine: f"127.0.0.1:{port}"}
    wait_for(lambda: answers(port), "the server to start again", 30)
    # a reboot starts the enabled unit; the user data ran on the first boot only
    assert (root / "boots").read_text() == f"{mine}\n"

    ec2.terminate_instances(InstanceIds=[mine])
    runner.sync()
    assert json.loads((tmp_path / "addresses.json").read_text()) == {}
    assert not root.exists()
    wait_for(lambda: not answers(port), "the server to stop", 10)


def test_runner_stop_ends_scripts_and_servers(ec2, runner, tmp_path):
    first, second = launch(ec2), launch(ec2)
    runner.sync()
    ports = [runner.addresses()[i].split(":")[1] for i in (first, second)]
    for port in ports:
        wait_for(lambda port=port: answers(port), "the instances' servers", 30)
    runner.stop()
    assert processes_under(tmp_path / "instances") == []
    assert not any(answers(port) for port in ports)
    assert json.loads((tmp_path / "addresses.json").read_text()) == {}


def test_runner_keeps_going_when_aws_fails(runner, monkeypatch):
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise ConnectionError("moto is gone")

    monkeypatch.setattr("mliy_spawner.demo.runner.list_instances", broken)
    runner.interval = 0.05
    runner.start()
    wait_for(lambda: len(calls) >= 3, "the runner to retry")
    assert runner._thread.is_alive()


def test_stop_leftovers_kills_processes_in_the_sandboxes(tmp_path):
    folder = tmp_path / "instances" / "i-0123"
    folder.mkdir(parents=True)
    orphan = subprocess.Popen(["sleep", "60"], cwd=folder, start_new_session=True)
    outside = subprocess.Popen(["sleep", "60"], cwd=tmp_path)
    try:
        assert stop_leftovers(tmp_path / "instances") == 1
        assert orphan.wait(5) is not None
        assert outside.poll() is None
    finally:
        outside.kill()
        outside.wait()


async def test_address_hook_waits_for_the_runner(tmp_path):
    path = tmp_path / "addresses.json"
    hook = local_address_hook(path, timeout=5)
    instance = SimpleNamespace(instance_id="i-0abc", private_ip="10.0.0.5")

    async def write_later():
        await asyncio.sleep(0.5)
        path.write_text(json.dumps({"i-0abc": "127.0.0.1:4321"}))

    started = time.monotonic()
    writer = asyncio.create_task(write_later())
    assert await hook(None, instance) == ("127.0.0.1", 4321)
    assert time.monotonic() - started >= 0.4
    await writer


async def test_address_hook_gives_up_and_refuses_other_hosts(tmp_path):
    path = tmp_path / "addresses.json"
    instance = SimpleNamespace(instance_id="i-0abc", private_ip="10.0.0.5")
    with pytest.raises(TimeoutError, match="i-0abc"):
        await local_address_hook(path, timeout=0.3)(None, instance)
    path.write_text(json.dumps({"i-0abc": "10.0.0.5:8888"}))
    with pytest.raises(ValueError, match="127.0.0.1 only"):
        await local_address_hook(path, timeout=1)(None, instance)
