"""The demo stack as the end-to-end tests run it: ``python -m mliy_spawner.demo`` in a subprocess.

:func:`start_demo` runs the same entry point as ``make demo`` on free loopback ports, with
``MLIY_DEMO_ADMIN_TOKEN`` set so the tests can drive the hub's REST API like a client
script, and waits (bounded) for its banner. :class:`DemoStack` is a
:class:`hubapi.HubClient` for the REST calls (as ``demo-admin``) and wraps the
AWS stand-in (boto3 against moto's server on loopback), the hub restart (SIGHUP) and
the shutdown (SIGINT, as Ctrl-C), and gathers logs for failure reports.
"""

import json
import os
import secrets
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from hubapi import REPO, HubClient, free_port, tool_path, wait_for

from mliy_spawner.aws import make_client
from mliy_spawner.demo.__main__ import _descendants, _proc_stat, _same
from mliy_spawner.demo.runner import processes_under

REGION = "us-east-1"


def process_tree(pid):
    """{pid: start time} of ``pid`` and every process below it."""
    stat = _proc_stat(pid)
    found = {} if stat is None else {pid: stat[1]}
    found.update(_descendants(pid))
    return found


def still_running(snapshot):
    """The pids of ``snapshot`` ({pid: start time}) that still run (same process, not a zombie)."""
    return [pid for pid, started in snapshot.items() if _same(pid, started)]


@dataclass
class DemoStack(HubClient):
    """The demo; a :class:`hubapi.HubClient` at its public URL as the ``demo-admin`` service."""

    process: subprocess.Popen
    data_dir: Path
    output: Path  # the demo's stdout and stderr
    hub_port: int
    aws_port: int
    admin_token: str
    user_password: str
    admin_password: str

    def __post_init__(self):
        HubClient.__init__(self, self.public_url, self.admin_token)

    @property
    def public_url(self):
        return f"http://127.0.0.1:{self.hub_port}"

    @property
    def aws_url(self):
        return f"http://127.0.0.1:{self.aws_port}"

    def notebook_status(self, user, server="", token=None):
        """GET the server's /api/status through the proxy."""
        prefix = f"/user/{user}/{server}/" if server else f"/user/{user}/"
        return self.session.get(
            f"{self.public_url}{prefix}api/status",
            headers={"Authorization": f"token {token}"},
            timeout=30,
            allow_redirects=False,
        )

    # ---- the AWS stand-in ----------------------------------------------------------------

    def client(self, service):
        return make_client(service, REGION, self.aws_url)

    def stacks(self, user=None, server=None, live=True):
        """The demo hub's stacks (optionally of one user / server; "" is the default
        server), newest first."""
        found = []
        for page in self.client("cloudformation").get_paginator("describe_stacks").paginate():
            for stack in page["Stacks"]:
                tags = {t["Key"]: t["Value"] for t in stack.get("Tags") or ()}
                if tags.get("mliy:hub") != "mliy":
                    continue
                if user is not None and tags.get("mliy:user") != user:
                    continue
                # the default server's stacks carry no mliy:server tag (values can't be empty)
                if server is not None and tags.get("mliy:server", "") != server:
                    continue
                if live and stack["StackStatus"] == "DELETE_COMPLETE":
                    continue
                found.append(stack)
        return sorted(found, key=lambda s: s["CreationTime"], reverse=True)

    def stack_status(self, stack_id):
        cfn = self.client("cloudformation")
        return cfn.describe_stacks(StackName=stack_id)["Stacks"][0]["StackStatus"]

    def instance_of(self, stack_id):
        """The EC2 instance of a stack, as moto describes it."""
        ec2 = self.client("ec2")
        filters = [{"Name": "tag:aws:cloudformation:stack-id", "Values": [stack_id]}]
        reservations = ec2.describe_instances(Filters=filters)["Reservations"]
        instances = [i for r in reservations for i in r["Instances"]]
        assert len(instances) == 1, instances
        return instances[0]

    def dns_records(self):
        """{name: [values]} of the A records in the seeded Route 53 zone."""
        zone_id = json.loads((self.data_dir / "aws.json").read_text())["hosted_zone_id"]
        route53 = self.client("route53")
        records = route53.list_resource_record_sets(HostedZoneId=zone_id)["ResourceRecordSets"]
        return {
            r["Name"]: [v["Value"] for v in r.get("ResourceRecords", ())]
            for r in records
            if r["Type"] == "A"
        }

    def addresses(self):
        try:
            return json.loads((self.data_dir / "addresses.json").read_text())
        except FileNotFoundError:
            return {}

    # ---- the demo process ----------------------------------------------------------------

    def demo_log(self):
        path = self.data_dir / "logs" / "demo.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def restart_hub(self, timeout=90):
        """SIGHUP the demo: it restarts only JupyterHub; wait until the hub is back."""
        before = self.demo_log().count("JupyterHub is back")
        self.process.send_signal(signal.SIGHUP)
        wait_for(
            lambda: self.demo_log().count("JupyterHub is back") > before,
            "the demo to restart JupyterHub",
            timeout,
        )

    def processes(self):
        """{pid: start time} of everything the demo runs: its process tree, and the
        notebook servers and user-data runs working in its sandboxes."""
        found = process_tree(self.process.pid) if self.process.poll() is None else {}
        for pid in processes_under(self.data_dir / "instances"):
            stat = _proc_stat(pid)
            if stat is not None:
                found[pid] = stat[1]
        return found

    def stop(self, sig=signal.SIGINT, timeout=60):
        """Stop the demo as Ctrl-C does; returns its exit code (kills it if it hangs)."""
        self.session.close()
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                for pid in self.processes():
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                self.process.wait(10)
                raise AssertionError(f"the demo did not stop within {timeout} s") from None
        return self.process.returncode

    def logs(self, lines=80):
        """The tails of the demo's output, its log, the hub's log and the instances' logs."""
        parts = []
        files = [
            self.output,
            self.data_dir / "logs" / "jupyterhub.log",
            *sorted((self.data_dir / "logs").glob("*.log")),
            *sorted((self.data_dir / "logs" / "instances").glob("*.log")),
            *sorted((self.data_dir / "instances").glob("*/var/log/*.log")),
        ]
        seen = set()
        for path in files:
            if path in seen or not path.exists():
                continue
            seen.add(path)
            text = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"----- {path} (last {len(text)} lines) -----\n" + "\n".join(text))
        return "\n".join(parts)


def demo_env(data_dir, **env):
    """The environment of ``python -m mliy_spawner.demo`` on free ports in ``data_dir``."""
    return {
        **os.environ,
        "PATH": tool_path(),
        "MLIY_DEMO_DIR": str(data_dir),
        "MLIY_DEMO_HUB_PORT": str(free_port()),
        "MLIY_DEMO_AWS_PORT": str(free_port()),
        "PYTHONUNBUFFERED": "1",
        **env,
    }


def start_demo(data_dir, extra_env=None, timeout=120):
    """Run ``python -m mliy_spawner.demo`` with its files under ``data_dir``; wait for it."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    admin_token = secrets.token_hex(32)
    user_password = secrets.token_urlsafe(12)
    admin_password = secrets.token_urlsafe(32)
    secrets_env = {
        "MLIY_DEMO_ADMIN_TOKEN": admin_token,
        "MLIY_DEMO_PASSWORD": user_password,
        "MLIY_DEMO_ADMIN_PASSWORD": admin_password,
    }
    env = demo_env(data_dir, **{**secrets_env, **(extra_env or {})})
    runs = len(list(data_dir.parent.glob(f"{data_dir.name}-output*.log")))
    output = data_dir.parent / f"{data_dir.name}-output{runs or ''}.log"
    with open(output, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "mliy_spawner.demo"],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    stack = DemoStack(
        process,
        data_dir,
        output,
        int(env["MLIY_DEMO_HUB_PORT"]),
        int(env["MLIY_DEMO_AWS_PORT"]),
        admin_token,
        user_password,
        admin_password,
    )

    def banner():
        if process.poll() is not None:
            raise AssertionError(
                f"the demo exited with {process.returncode} while starting\n{stack.logs()}"
            )
        return "mliy-spawner demo:" in output.read_text(errors="replace")

    try:
        wait_for(banner, "the demo's banner", timeout)
    except BaseException:
        try:
            stack.stop(signal.SIGTERM, timeout=30)
        finally:
            sys.stderr.write(stack.logs())
        raise
    return stack
