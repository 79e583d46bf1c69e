"""The demo's local instance runner: what EC2 would do with an instance, done on this machine.

Every ``interval`` seconds :class:`InstanceRunner` lists the instances tagged for the hub
on the AWS stand-in (moto, on loopback) and follows their state:

- a new **running** instance: its user data (the real script the spawner rendered) runs
  with bash in a sandbox folder (:func:`.sandbox.prepare_sandbox`, the script's local
  mode), with ``MLIY_LOCAL_INSTANCE_ID`` and a free loopback port ``MLIY_LOCAL_PORT``.
  The script reports its steps to the ``mliy`` service and starts
  ``jupyterhub-singleuser`` on ``127.0.0.1:<port>`` through the stubbed ``systemctl``.
- **stopped** (or stopping): the notebook server stops, as it would on a shut-down machine.
- **running** again: the server starts again from its unit file on the same port, as
  systemd would at boot (user data runs only on an instance's first boot).
- **terminated** (or gone): the server stops and the sandbox is removed.

Where each running instance's server listens is written to ``addresses.json``
(``{instance_id: "127.0.0.1:port"}``, replaced atomically); the hub's
``connect_address_hook`` (:mod:`.hooks`) reads it. moto's 10.x addresses are never used.
"""

import base64
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..reflector import list_instances
from . import sandbox

log = logging.getLogger("mliy.demo")

ADDRESSES_FILE = "addresses.json"
_UP = ("pending", "running")
_DOWN = ("stopping", "stopped", "shutting-down")


def free_port(host="127.0.0.1"):
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def write_json_atomic(path, data, mode=0o644):
    """Replace ``path`` with ``data`` as JSON, so a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    tmp.chmod(mode)
    tmp.replace(path)


def read_addresses(path):
    """``{instance_id: (host, port)}`` from an addresses file; {} while it does not exist."""
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return {}
    found = {}
    for instance_id, address in raw.items():
        host, _, port = str(address).rpartition(":")
        found[instance_id] = (host, int(port))
    return found


@dataclass
class LocalInstance:
    """What the runner knows of one instance."""

    instance_id: str
    root: Path  # the sandbox folder: the instance's "disk"
    port: int
    env: dict  # the sandbox environment the script and server run with
    bootstrap: subprocess.Popen | None = None  # the user-data run, while it lasts
    running: bool = True  # whether the server should run (the instance is up)


class InstanceRunner:
    """Run the user data of the hub's moto instances as local processes (see module doc).

    ``ec2`` is a boto3 EC2 client for the stand-in; ``data_dir`` gets ``instances/<id>/``
    (sandboxes), ``logs/instances/<id>.log`` (each script's output) and ``addresses.json``.
    ``python_bin_dir`` holds ``jupyterhub-singleuser`` (the "AMI's" copy).
    """

    def __init__(self, ec2, data_dir, *, hub_name="mliy", python_bin_dir, interval=0.5):
        self.ec2 = ec2
        self.data_dir = Path(data_dir).resolve()
        self.hub_name = hub_name
        self.python_bin_dir = Path(python_bin_dir)
        self.interval = interval
        self.instances = {}
        self.addresses_file = self.data_dir / ADDRESSES_FILE
        self.log_dir = self.data_dir / "logs" / "instances"
        self._stop = threading.Event()
        self._thread = None
        self._lock = threading.Lock()
        self._failures = 0

    # ---- lifecycle of the runner itself ------------------------------------------------

    def start(self):
        """Follow the instances in a background thread."""
        (self.data_dir / "instances").mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._write_addresses()
        self._thread = threading.Thread(target=self._run, name="mliy-demo-runner", daemon=True)
        self._thread.start()

    def stop(self):
        """Stop following, then stop every script and server this runner started."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        with self._lock:
            for instance in list(self.instances.values()):
                self._halt(instance)
            self.instances.clear()
            self._write_addresses()
        # whatever the pid files missed (a server starting while its instance stopped)
        stop_leftovers(self.data_dir / "instances")

    def _run(self):
        while not self._stop.is_set():
            try:
                self.sync()
                if self._failures:
                    log.info("The AWS stand-in answers again")
                self._failures = 0
            except Exception as e:  # keep following: moto may be busy or restarting
                self._failures += 1
                if self._failures in (1, 10) or self._failures % 100 == 0:
                    log.warning("Following the instances failed (%d times): %s", self._failures, e)
            self._stop.wait(self.interval)

    # ---- one cycle ---------------------------------------------------------------------

    def sync(self):
        """List the hub's instances once and bring local processes in line with them."""
        views = list_instances(self.ec2, self.hub_name)
        with self._lock:
            if self._stop.is_set():
                return
            changed = False
            for instance_id, view in views.items():
                known = self.instances.get(instance_id)
                if view.state == "running" and known is None:
                    self.instances[instance_id] = self._boot(instance_id)
                    changed = True
                elif view.state == "running" and not known.running:
                    self._reboot(known)
                    changed = True
                elif view.state in _DOWN and known is not None and known.running:
                    log.info("Instance %s is %s: stopping its server", instance_id, view.state)
                    self._halt(known)
                    changed = True
            for instance_id in list(self.instances):
                view = views.get(instance_id)
                if view is None or view.state == "terminated":
                    log.info("Instance %s is terminated: removing its sandbox", instance_id)
                    self._halt(self.instances.pop(instance_id), remove=True)
                    changed = True
            for instance in self.instances.values():
                self._reap(instance)
            if changed:
                self._write_addresses()

    def addresses(self):
        """``{instance_id: "127.0.0.1:port"}`` of the instances whose server should run."""
        return {i.instance_id: f"127.0.0.1:{i.port}" for i in self.instances.values() if i.running}

    def _write_addresses(self):
        write_json_atomic(self.addresses_file, self.addresses())

    # ---- what happens to one instance ------------------------------------------------------

    def _boot(self, instance_id):
        """First boot: run the instance's user data in a new sandbox."""
        raw = self.ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
        script = base64.b64decode(raw.get("UserData", {}).get("Value", "") or b"")
        root = self.data_dir / "instances" / instance_id
        env = sandbox.prepare_sandbox(root, python_bin_dir=self.python_bin_dir)
        instance = LocalInstance(instance_id, root, free_port(), env)
        log.info("Instance %s is running: booting it on 127.0.0.1:%s", instance_id, instance.port)
        self._run_user_data(instance, script)
        return instance

    def _run_user_data(self, instance, script):
        # the user data holds the server's API token: readable by this user only
        path = instance.root / "user-data"
        path.touch(mode=0o600)
        path.write_bytes(script)
        env = {
            **instance.env,
            "MLIY_LOCAL_INSTANCE_ID": instance.instance_id,
            "MLIY_LOCAL_PORT": str(instance.port),
        }
        with open(self.log_dir / f"{instance.instance_id}.log", "ab") as out:
            instance.bootstrap = subprocess.Popen(
                ["bash", str(path)],
                env=env,
                cwd=instance.root,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopped as a whole
            )
        instance.running = True

    def _reboot(self, instance):
        """A stopped instance runs again: systemd starts the enabled server unit."""
        log.info(
            "Instance %s is running again on 127.0.0.1:%s", instance.instance_id, instance.port
        )
        instance.running = True
        unit = instance.root / "etc/systemd/system" / sandbox.UNIT
        if unit.exists():
            sandbox.start_notebook(instance.root, instance.env)
        else:  # stopped before its first boot finished: EC2 would not re-run it, but
            # a half-booted demo instance is no use to anyone
            script = (instance.root / "user-data").read_bytes()
            self._run_user_data(instance, script)

    def _halt(self, instance, remove=False):
        """Stop the user-data run and the server of ``instance`` (and delete its sandbox)."""
        instance.running = False
        if instance.bootstrap is not None and instance.bootstrap.poll() is None:
            _kill_group(instance.bootstrap)
        instance.bootstrap = None
        sandbox.stop_notebook(instance.root)
        if remove:
            shutil.rmtree(instance.root, ignore_errors=True)

    def _reap(self, instance):
        if instance.bootstrap is not None and instance.bootstrap.poll() is not None:
            code = instance.bootstrap.returncode
            level = logging.INFO if code == 0 else logging.WARNING
            log.log(level, "User data of %s exited with %s", instance.instance_id, code)
            instance.bootstrap = None


def _kill_group(process, timeout=5):
    """SIGTERM ``process``'s group, SIGKILL it after ``timeout`` s; reap the process."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout)
            break
        except subprocess.TimeoutExpired:
            continue
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        log.warning("User data run %s did not exit", process.pid)
    # the group may outlive its leader (a curl the script started): finish it too
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def stop_leftovers(folder, timeout=5):
    """Kill every process working inside ``folder`` (the sandboxes); returns how many.

    A user-data run or a notebook server has its sandbox as working directory, so this
    finds them even without a pid file: after a demo run that was killed instead of
    stopped, or a server whose pid file was not written yet when its instance stopped.
    Needs ``/proc`` (Linux); elsewhere it finds nothing.
    """
    pids = processes_under(folder)
    count = len(pids)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(_running(p) for p in pids):
            time.sleep(0.05)
        pids = [p for p in pids if _running(p)]
        if not pids:
            break
    return count


def processes_under(folder):
    """Pids of this user's processes whose working directory is inside ``folder``."""
    folder = os.path.realpath(folder)
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:
            continue
        if (cwd == folder or cwd.startswith(folder + os.sep)) and _running(int(entry)):
            found.append(int(entry))
    return found


def _running(pid):
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
