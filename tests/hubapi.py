"""The one toolkit for tests that run a real JupyterHub on loopback.

- :func:`free_port`, :func:`port_open`: 127.0.0.1 ports.
- :func:`wait_for`: poll a condition until it holds (bounded; the failure names it).
- :class:`HubClient`: the hub's REST API (a base URL and a token): users with groups,
  tokens, starting a server and waiting until it is ready, stopped or gone, the
  progress stream (:class:`ProgressStream`).
- :func:`write_hub_config`, :func:`start_jupyterhub` / :func:`stop_process`: a config for
  a hub on free loopback ports, ``python -m jupyterhub -f config`` as a subprocess
  (configurable-http-proxy from ``.node/`` on its PATH), up when its API answers.

``servicehub.py`` (the ``mliy`` service), ``e2e/demostack.py`` (the demo) and the hub of
``test_auth.py`` build on it. Models: jupyterhub ``tests/mocking.py`` and ``utils.py``.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
NODE_BIN = REPO / ".node" / "node_modules" / ".bin"


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port):
    """Whether something accepts connections on 127.0.0.1:``port``."""
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_for(condition, what, timeout=60, interval=0.2):
    """Call ``condition()`` until it returns something true and return that; else fail."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def tool_path():
    """PATH with configurable-http-proxy (``.node/``) and this Python's scripts first."""
    return os.pathsep.join([str(NODE_BIN), str(Path(sys.executable).parent), os.environ["PATH"]])


def server_path(user, server=""):
    """The REST path of ``user``'s server (``""``: the default server)."""
    return f"/users/{user}/servers/{server}" if server else f"/users/{user}/server"


class HubClient:
    """The REST API of the hub at ``url`` (``/hub/api`` is added), as ``token``."""

    def __init__(self, url, token, session=None, timeout=60):
        self.url = url
        self.token = token
        self.session = session or requests.Session()
        self.session.trust_env = False  # never an environment proxy: loopback only
        self.timeout = timeout

    def api(self, method, path, token=None, **kwargs):
        """One call; ``token`` (default: the client's) and any other ``requests`` argument."""
        headers = {"Authorization": f"token {token or self.token}"}
        headers.update(kwargs.pop("headers", {}))
        kwargs.setdefault("timeout", self.timeout)
        return self.session.request(method, f"{self.url}/hub/api{path}", headers=headers, **kwargs)

    def get(self, path, token=None):
        """The JSON of a GET that answers 200; None for a 404."""
        r = self.api("GET", path, token=token)
        if r.status_code == 404:
            return None
        assert r.status_code == 200, f"GET {path}: {r.status_code} {r.text}"
        return r.json()

    def create_user(self, name, groups=(), admin=False, exist_ok=False):
        """Create ``name`` (an admin if ``admin``) and add it to the existing ``groups``."""
        r = self.api("POST", f"/users/{name}", json={"admin": admin})
        assert r.status_code == 201 or (exist_ok and r.status_code == 409), r.text
        for group in groups:
            r = self.api("POST", f"/groups/{group}/users", json={"users": [name]})
            assert r.status_code == 200, r.text
        return name

    def user_token(self, name, scopes=None, note="test"):
        """A new API token of user ``name`` (with ``scopes``, else the user's own)."""
        body = {"note": note}
        if scopes is not None:
            body["scopes"] = scopes
        r = self.api("POST", f"/users/{name}/tokens", json=body)
        assert r.status_code == 201, r.text
        return r.json()["token"]

    def server(self, user, server="", token=None):
        """The server's model (stopped ones too); None once it is removed (or never was)."""
        model = self.get(f"/users/{user}?include_stopped_servers=1", token=token)
        assert model is not None, f"no user {user!r}"
        return model["servers"].get(server)

    def start_server(self, user, server="", wait=True, token=None, **kwargs):
        """POST the server (``kwargs``: the body; default none); wait until it is ready."""
        if "json" not in kwargs:
            kwargs.setdefault("data", "")
        r = self.api("POST", server_path(user, server), token=token, **kwargs)
        assert r.status_code in (201, 202), r.text
        return self.wait_ready(user, server) if wait else None

    def wait_ready(self, user, server="", timeout=120):
        """The server's model once it is ready."""

        def ready():
            model = self.server(user, server)
            return model if model and model.get("ready") else None

        return wait_for(ready, f"server {user}/{server} ready", timeout)

    def wait_stopped(self, user, server="", timeout=60):
        """Wait until the server is neither ready nor pending (or gone)."""

        def stopped():
            model = self.server(user, server)
            return model is None or (not model.get("ready") and not model.get("pending"))

        wait_for(stopped, f"server {user}/{server} stopped", timeout)

    def wait_gone(self, user, server="", timeout=60):
        """Wait until the (named) server is removed."""
        wait_for(
            lambda: self.server(user, server) is None, f"server {user}/{server} removed", timeout
        )

    def progress(self, user, server="", token=None):
        """Follow the server's progress stream in a thread."""
        url = f"{self.url}/hub/api{server_path(user, server)}/progress"
        return ProgressStream(url, token or self.token)


class ProgressStream:
    """Read ``/progress`` (server-sent events) in a thread; ``events`` grows as they come."""

    def __init__(self, url, token, timeout=120):
        self.events = []
        self.error = None
        self._done = threading.Event()
        self._thread = threading.Thread(
            target=self._read, args=(url, token, timeout), daemon=True, name="progress"
        )
        self._thread.start()

    def _read(self, url, token, timeout):
        deadline = time.monotonic() + timeout
        try:
            with requests.get(
                url, headers={"Authorization": f"token {token}"}, stream=True, timeout=(5, 30)
            ) as response:
                response.raise_for_status()
                for line in response.iter_lines(decode_unicode=True):
                    if line and line.startswith("data:"):
                        event = json.loads(line[5:])
                        self.events.append(event)
                        if event.get("ready") or event.get("failed"):
                            return
                    if time.monotonic() > deadline:
                        self.error = f"no end of the progress stream within {timeout} s"
                        return
        except Exception as e:  # reported by wait()
            self.error = repr(e)
        finally:
            self._done.set()

    def wait(self, timeout=150):
        """Wait for the stream's end; return the events."""
        assert self._done.wait(timeout), f"progress stream still open after {timeout} s"
        assert self.error is None, f"{self.error}; events so far: {self.events}"
        return self.events

    @property
    def messages(self):
        return [e.get("message", "") for e in self.events]


def log_tail(path, chars=6000):
    """The end of a log file (all of it if ``chars`` is None); "" if there is none yet."""
    path = Path(path)
    text = path.read_text(errors="replace") if path.exists() else ""
    return text if chars is None else text[-chars:]


LOOPBACK_CONFIG = """\
c = get_config()  # noqa
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {public_port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.ConfigurableHTTPProxy.pid_file = {proxy_pid_file!r}
c.JupyterHub.pid_file = {pid_file!r}
c.JupyterHub.db_url = {db_url!r}
c.JupyterHub.cookie_secret_file = {cookie_secret_file!r}
"""


def write_hub_config(folder, settings, **values):
    """Write ``folder/jupyterhub_config.py``: a hub and its proxy on free 127.0.0.1 ports
    with their files in ``folder``, then ``settings``, a format string that gets the ports
    (``public_port``, ``hub_port``, ``proxy_api_port``) and ``values``.

    Returns the config file and the ports.
    """
    folder = Path(folder)
    ports = {name: free_port() for name in ("public_port", "hub_port", "proxy_api_port")}
    files = {
        "proxy_pid_file": str(folder / "proxy.pid"),
        "pid_file": str(folder / "jupyterhub.pid"),
        "db_url": f"sqlite:///{folder / 'jupyterhub.sqlite'}",
        "cookie_secret_file": str(folder / "jupyterhub_cookie_secret"),
    }
    config_file = folder / "jupyterhub_config.py"
    text = LOOPBACK_CONFIG + textwrap.dedent(settings)
    config_file.write_text(text.format(**ports, **files, **values))
    return config_file, ports


def start_jupyterhub(config_file, client, log_path, env=None, up=None, debug=False, timeout=60):
    """Run ``python -m jupyterhub -f config_file`` in its folder, output to ``log_path``.

    ``env`` changes the environment (a None value removes a variable); PATH has
    configurable-http-proxy, PYTHONPATH the repository and ``tests/``. Returns the process
    once ``client``'s API answers (and ``up()``, if given, is true); if the hub exits or
    does not come up, stops it and fails with the tail of its log.
    """
    config_file = Path(config_file)
    environ = {
        **os.environ,
        "PATH": tool_path(),
        "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)]),
    }
    for name, value in (env or {}).items():
        if value is None:
            environ.pop(name, None)
        else:
            environ[name] = value
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(config_file)]
            + (["--debug"] if debug else []),
            cwd=config_file.parent,
            env=environ,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )

    def answers():
        if process.poll() is not None:
            raise AssertionError(f"the hub exited with {process.returncode}")
        try:
            return client.api("GET", "/", timeout=5).status_code == 200 and (up is None or up())
        except requests.ConnectionError:
            return False

    try:
        wait_for(answers, "the hub to answer", timeout)
    except AssertionError as e:
        stop_process(process)
        raise AssertionError(f"{e}; the hub's log:\n{log_tail(log_path)}") from None
    except BaseException:
        stop_process(process)
        raise
    return process


def stop_process(process, timeout=20):
    """SIGTERM ``process`` and wait; SIGKILL it if it does not exit in ``timeout`` s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    return process.returncode
