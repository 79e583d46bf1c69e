"""``python -m mliy_spawner.demo`` (``make demo``): a working hub on this machine, no AWS account.

Starts, all on 127.0.0.1:

1. moto's server as the AWS stand-in (``MLIY_DEMO_AWS_PORT``, default 4566), seeded by
   :func:`.aws.seed_account`;
2. the local instance runner (:mod:`.runner`), in a thread of this process;
3. ``jupyterhub -f jupyterhub_config.py`` (``MLIY_DEMO_HUB_PORT``, default 8000) with
   ``MLIY_DEMO_SETTINGS`` naming the ``demo.json`` this writes, so the config runs the
   demo section; the hub starts the proxy, the ``mliy`` service and the idle culler.

Then it prints the URL and the logins. Ctrl-C (SIGINT) or SIGTERM stops the hub (and
with it the proxy and services), every instance's processes, and moto: nothing is left
running. SIGHUP restarts only the hub (servers keep running), e.g. after editing
``jupyterhub_config.py``.

Everything the demo writes goes to ``MLIY_DEMO_DIR`` (default ``./demo-data``): the
hub's database, cookie secret, ``credentials.json``, ``demo.json``, ``aws.json``,
``addresses.json``, ``plugins/`` (the Route 53 DNS plugin, set to the seeded zone),
``instances/<id>/`` (sandboxes) and ``logs/``. AWS state lives in
moto's memory, so every run starts from a fresh hub database; the passwords and the
cookie secret are kept.

Environment variables: ``MLIY_DEMO_DIR``, ``MLIY_DEMO_HUB_PORT``, ``MLIY_DEMO_AWS_PORT``,
``MLIY_DEMO_CONFIG`` (the config file; default ``./jupyterhub_config.py``, else the
repository's), ``MLIY_DEMO_PASSWORD`` / ``MLIY_DEMO_ADMIN_PASSWORD`` (instead of the
generated ones), ``MLIY_DEMO_ADMIN_TOKEN`` (a ``demo-admin`` service with the admin role,
for scripts), ``MLIY_DEMO_CULL_TIMEOUT`` / ``MLIY_DEMO_CULL_EVERY`` (idle culler seconds).
"""

import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..assets import asset_path
from ..aws import make_client
from . import aws as demo_aws
from .runner import InstanceRunner, free_port, stop_leftovers, write_json_atomic

log = logging.getLogger("mliy.demo")

_REPO = Path(__file__).resolve().parents[2]
# what a fresh run replaces (AWS state lives in moto's memory and is gone)
_STALE = (
    "jupyterhub.sqlite",
    "mliy.sqlite",
    "mliy.sqlite-wal",
    "mliy.sqlite-shm",
    "addresses.json",
    "instances",
    "logs",
    "plugins",
)
USERS = (("alice", "analysts"), ("bob", "students"), ("admin", "analysts, hub admin"))


class DemoError(Exception):
    """The demo cannot start; the message says why and what to do."""


class Shutdown(BaseException):
    """SIGINT or SIGTERM: unwind and stop everything."""


@dataclass
class Settings:
    data_dir: Path
    hub_port: int
    aws_port: int
    config_file: Path
    cull_timeout: int
    cull_every: int

    @classmethod
    def from_env(cls, env):
        data_dir = Path(env.get("MLIY_DEMO_DIR") or "demo-data").resolve()
        cull_timeout = _int_env(env, "MLIY_DEMO_CULL_TIMEOUT", 3600, 1, 10**7)
        return cls(
            data_dir=data_dir,
            hub_port=_int_env(env, "MLIY_DEMO_HUB_PORT", 8000, 1, 65535),
            aws_port=_int_env(env, "MLIY_DEMO_AWS_PORT", 4566, 1, 65535),
            config_file=_config_file(env),
            cull_timeout=cull_timeout,
            cull_every=_int_env(
                env, "MLIY_DEMO_CULL_EVERY", max(1, min(300, cull_timeout // 2)), 1, 10**7
            ),
        )


def _int_env(env, name, default, low, high):
    raw = env.get(name, "")
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise DemoError(f"{name}={raw!r} is not allowed: an integer from {low} to {high}")
    return value


def _config_file(env):
    if env.get("MLIY_DEMO_CONFIG"):
        path = Path(env["MLIY_DEMO_CONFIG"]).resolve()
        if not path.is_file():
            raise DemoError(f"MLIY_DEMO_CONFIG={str(path)!r}: no such file")
        return path
    for path in (Path("jupyterhub_config.py").resolve(), _REPO / "jupyterhub_config.py"):
        if path.is_file():
            return path
    raise DemoError(
        "No jupyterhub_config.py here or in the repository: run the demo from the "
        "mliy-spawner checkout, or set MLIY_DEMO_CONFIG"
    )


def _check_port_free(port, variable):
    with socket.socket() as sock:
        # as servers bind: connections of a previous run in TIME_WAIT do not count
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            raise DemoError(
                f"127.0.0.1:{port} is in use (another demo?); stop it or set {variable}"
            ) from None


def find_proxy(env):
    """The folder holding ``configurable-http-proxy``: on PATH, or a local npm install."""
    candidates = [
        *env.get("PATH", "").split(os.pathsep),
        str(Path(".node/node_modules/.bin").resolve()),
        str(_REPO / ".node/node_modules/.bin"),
    ]
    found = shutil.which("configurable-http-proxy", path=os.pathsep.join(candidates))
    if not found:
        raise DemoError(
            "configurable-http-proxy is not installed: `make demo` installs it, or run "
            "`npm install --prefix .node configurable-http-proxy@5`"
        )
    return str(Path(found).parent)


def stop_stale_hub(data_dir, timeout=30):
    """Stop the hub of a previous demo run on ``data_dir`` that was killed, not stopped.

    The hub runs in its own session, so it outlives a killed demo, keeping its proxy,
    services and ports. It is recognised by its pid file and by the settings file in its
    environment; SIGTERM lets it stop its proxy and services. Returns True if one ran.
    """
    try:
        pid = int((data_dir / "jupyterhub.pid").read_text())
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return False
    marker = f"MLIY_DEMO_SETTINGS={data_dir / 'demo.json'}".encode()
    stat = _proc_stat(pid)
    if marker not in environ or stat is None:
        return False
    family = [(pid, stat[1]), *_descendants(pid)]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _same(pid, stat[1]) and time.monotonic() < deadline:
        time.sleep(0.1)
    for other, started in family:  # whatever did not stop with it
        if _same(other, started):
            with contextlib.suppress(ProcessLookupError):
                os.kill(other, signal.SIGKILL)
    deadline = time.monotonic() + 10  # until they are gone, and their ports free
    while any(_same(p, started) for p, started in family) and time.monotonic() < deadline:
        time.sleep(0.05)
    return True


def prepare_data_dir(data_dir):
    """Create the demo folder; delete the files a previous run left behind."""
    data_dir.mkdir(parents=True, exist_ok=True)
    for name in _STALE:
        path = data_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    (data_dir / "logs").mkdir()


def load_credentials(data_dir, env):
    """The users' and the admins' shared passwords: from the environment, else kept in
    ``credentials.json`` (mode 600) across runs, generated on the first."""
    path = data_dir / "credentials.json"
    try:
        saved = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        saved = {}
    credentials = {
        "user_password": env.get("MLIY_DEMO_PASSWORD")
        or saved.get("user_password")
        or secrets.token_urlsafe(9),
        "admin_password": env.get("MLIY_DEMO_ADMIN_PASSWORD")
        or saved.get("admin_password")
        or secrets.token_urlsafe(30),
    }
    if len(credentials["user_password"]) < 8:
        raise DemoError("MLIY_DEMO_PASSWORD is too short: at least 8 characters")
    if len(credentials["admin_password"]) < 32:
        raise DemoError("MLIY_DEMO_ADMIN_PASSWORD is too short: at least 32 characters")
    if credentials["user_password"] == credentials["admin_password"]:
        raise DemoError("MLIY_DEMO_PASSWORD and MLIY_DEMO_ADMIN_PASSWORD must differ")
    write_json_atomic(path, credentials, mode=0o600)
    return credentials


def write_dns_plugin(data_dir, seed):
    """A plugin folder with the shipped Route 53 plugin, set to the seeded zone on moto."""
    folder = data_dir / "plugins"
    folder.mkdir(exist_ok=True)
    shutil.copy(asset_path("plugins", "route53.py"), folder / "route53.py")
    settings = {
        "ROUTE53_ZONE_NAME": seed.dns_zone.rstrip("."),
        "ROUTE53_ZONE_ID": seed.hosted_zone_id,
        "ROUTE53_REGION": seed.region,
        "ROUTE53_ENDPOINT_URL": seed.endpoint_url,
    }
    lines = ['"""Settings of the demo\'s DNS plugin (written by python -m mliy_spawner.demo)."""']
    lines += [f"{name} = {value!r}" for name, value in settings.items()]
    (folder / "plugin_settings.py").write_text("\n".join(lines) + "\n")
    return folder


# ---- the hub process ---------------------------------------------------------------------


class HubProcess:
    """``jupyterhub -f <config>`` as a child process, with its output in a log file."""

    def __init__(self, config_file, env, cwd, log_path, public_url):
        self.command = [sys.executable, "-m", "jupyterhub", "-f", str(config_file)]
        self.env = env
        self.cwd = cwd
        self.log_path = log_path
        self.public_url = public_url
        self.process = None

    def start(self, timeout=90):
        with open(self.log_path, "ab") as out:
            # its own process group: Ctrl-C reaches this process only, which then stops
            # the hub first (the hub stops its proxy and services), then the rest
            self.process = subprocess.Popen(
                self.command,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.wait_ready(timeout)

    def wait_ready(self, timeout):
        """Wait until the hub answers and the ``mliy`` service is routed, through the proxy."""
        deadline = time.monotonic() + timeout
        pending = [f"{self.public_url}/hub/health", f"{self.public_url}/services/mliy/"]
        while pending:
            if self.process.poll() is not None:
                raise DemoError(
                    f"JupyterHub exited with {self.process.returncode} while starting; "
                    f"see {self.log_path}"
                )
            if _answers(pending[0]):
                pending.pop(0)
                continue
            if time.monotonic() > deadline:
                raise DemoError(
                    f"JupyterHub did not answer at {pending[0]} within {timeout} s; "
                    f"see {self.log_path}"
                )
            time.sleep(0.5)

    def exited(self):
        return self.process is not None and self.process.poll() is not None

    def stop(self, timeout=30):
        """SIGTERM the hub and wait; then end whatever it started that is still running."""
        if self.process is None:
            return
        family = _descendants(self.process.pid)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("JupyterHub did not stop in %d s; killing it", timeout)
                _signal_group(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        _signal_group(self.process.pid, signal.SIGKILL)  # anything left in its group
        for sig, pause in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 2.0)):
            family = [(pid, started) for pid, started in family if _same(pid, started)]
            for pid, _ in family:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + pause
            while family and time.monotonic() < deadline:
                if not any(_same(pid, started) for pid, started in family):
                    break
                time.sleep(0.05)
        self.process = None

    def restart(self, timeout=90):
        log.info("Restarting JupyterHub (servers keep running)")
        self.stop()
        self.start(timeout)
        log.info("JupyterHub is back at %s", self.public_url)


def _answers(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status < 500
    except urllib.error.HTTPError as e:
        return e.code < 500 and e.code != 404  # 404: the proxy has no route yet
    except (OSError, ValueError):
        return False


def _signal_group(pgid, sig):
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _proc_stat(pid):
    """(parent pid, start time, state) from /proc, or None when the process is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), int(fields[19]), fields[0]


def _same(pid, started):
    stat = _proc_stat(pid)
    return stat is not None and stat[1] == started and stat[2] != "Z"


def _descendants(pid):
    """[(pid, start time)] of every process below ``pid`` (Linux /proc; [] elsewhere)."""
    try:
        entries = [int(e) for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return []
    children = {}
    for entry in entries:
        stat = _proc_stat(entry)
        if stat is not None:
            children.setdefault(stat[0], []).append((entry, stat[1]))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), ()):
            found.append(child)
            queue.append(child[0])
    return found


# ---- main -------------------------------------------------------------------------------


def _configure_logging(log_file):
    formatter = logging.Formatter("[%(asctime)s %(name)s %(levelname)s] %(message)s", "%H:%M:%S")
    logger = logging.getLogger("mliy")
    logger.setLevel(logging.INFO)
    for handler in (logging.StreamHandler(sys.stderr), logging.FileHandler(log_file)):
        handler.setFormatter(formatter)
        logger.addHandler(handler)


def _banner(settings, credentials, public_url, aws_url):
    lines = [
        "",
        f"  mliy-spawner demo: {public_url}/",
        "",
        f"  Users (password {credentials['user_password']}):",
        *(f"    {name:<6} {groups}" for name, groups in USERS if name != "admin"),
        f"  Admin (password {credentials['admin_password']}):",
        "    admin  analysts, hub admin",
        "",
        f"  AWS stand-in: aws --endpoint-url {aws_url} ec2 describe-instances",
        f"  Files and logs: {settings.data_dir}",
        f"  Ctrl-C stops everything; `kill -HUP {os.getpid()}` restarts only the hub.",
        "",
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()


def run(settings, env):
    """Start everything, wait for Ctrl-C / SIGTERM, stop everything. Returns an exit code."""
    restart = threading.Event()

    def shutdown(signum, frame):
        raise Shutdown(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, shutdown)
    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGHUP, lambda signum, frame: restart.set())

    data = settings.data_dir
    # a killed run leaves its hub (with proxy and services) and its servers running
    stale_hub = stop_stale_hub(data)
    killed = stop_leftovers(data / "instances") if (data / "instances").is_dir() else 0
    _check_port_free(settings.hub_port, "MLIY_DEMO_HUB_PORT")
    _check_port_free(settings.aws_port, "MLIY_DEMO_AWS_PORT")
    proxy_dir = find_proxy(env)
    prepare_data_dir(data)
    _configure_logging(data / "logs" / "demo.log")
    if stale_hub:
        log.warning("Stopped the hub that a killed demo run had left running")
    if killed:
        log.warning("Stopped %d process(es) a killed demo run left in its sandboxes", killed)
    credentials = load_credentials(data, env)
    os.environ.update(demo_aws.DEMO_CREDENTIALS)
    for name in demo_aws.CLEARED_VARIABLES:
        os.environ.pop(name, None)

    code = _serve(settings, env, restart, proxy_dir, credentials)
    log.info("Everything the demo started has stopped")
    return code


def _serve(settings, env, restart, proxy_dir, credentials):
    data = settings.data_dir
    public_url = f"http://127.0.0.1:{settings.hub_port}"
    aws_url = f"http://127.0.0.1:{settings.aws_port}"
    with contextlib.ExitStack() as stack:
        try:
            moto = demo_aws.start_moto(settings.aws_port)
            stack.callback(_quietly, "the AWS stand-in", moto.stop)
            seed = demo_aws.seed_account(aws_url)
            write_json_atomic(data / "aws.json", seed.as_dict())
            write_dns_plugin(data, seed)

            runner = InstanceRunner(
                make_client("ec2", seed.region, aws_url),
                data,
                python_bin_dir=_python_bin_dir(),
            )
            runner.start()
            stack.callback(_quietly, "the instance runner", runner.stop)

            settings_file = data / "demo.json"
            write_json_atomic(
                settings_file,
                {
                    "data_dir": str(data),
                    "hub_port": settings.hub_port,
                    "hub_api_port": free_port(),
                    "proxy_api_port": free_port(),
                    "service_port": free_port(),
                    "cull_timeout": settings.cull_timeout,
                    "cull_every": settings.cull_every,
                    "aws": seed.as_dict(),
                },
            )
            hub_env = demo_aws.demo_environment(env)
            hub_env.update(
                MLIY_DEMO_SETTINGS=str(settings_file),
                PATH=os.pathsep.join([proxy_dir, str(_python_bin_dir()), env.get("PATH", "")]),
                PYTHONUNBUFFERED="1",
            )
            if _REPO.name != "site-packages":  # a checkout: the hub imports this same code
                hub_env["PYTHONPATH"] = os.pathsep.join(
                    p for p in (str(_REPO), env.get("PYTHONPATH", "")) if p
                )
            hub = HubProcess(
                settings.config_file, hub_env, data, data / "logs" / "jupyterhub.log", public_url
            )
            stack.callback(_quietly, "JupyterHub", hub.stop)
            log.info("Starting JupyterHub with %s", settings.config_file)
            hub.start()
            _banner(settings, credentials, public_url, aws_url)

            while True:
                time.sleep(0.5)
                if restart.is_set():
                    restart.clear()
                    hub.restart()
                elif hub.exited():
                    log.error(
                        "JupyterHub exited with %s; see %s",
                        hub.process.returncode,
                        hub.log_path,
                    )
                    return 1
        except Shutdown as e:
            log.info("%s: stopping the hub, the instances and the AWS stand-in", e)
            return 0
        except DemoError as e:
            log.error("%s", e)
            return 1
        finally:
            # a second Ctrl-C must not cut the clean-up short
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda signum, frame: log.info("Still stopping..."))


def _python_bin_dir():
    """The folder of this Python's scripts (with ``jupyterhub-singleuser``)."""
    found = shutil.which("jupyterhub-singleuser", path=str(Path(sys.executable).parent))
    return Path(found).parent if found else Path(sys.executable).parent


def _quietly(what, stop):
    try:
        stop()
    except Exception:
        log.exception("Stopping %s failed", what)


def main(argv=None):
    args = sys.argv[1:] if argv is None else argv
    if args:
        sys.stdout.write(__doc__ + "\n")
        return 0 if args[0] in ("-h", "--help") else 2
    try:
        settings = Settings.from_env(os.environ)
        return run(settings, dict(os.environ))
    except DemoError as e:
        sys.stderr.write(f"mliy demo: {e}\n")
        return 1
    except Shutdown:
        return 130


if __name__ == "__main__":
    sys.exit(main())
