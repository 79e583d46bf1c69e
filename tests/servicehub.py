"""A real JupyterHub process on loopback with the ``mliy`` service, for service tests.

:func:`start_hub` writes a config (free 127.0.0.1 ports for hub, proxy API, proxy and
service; DummyAuthenticator; named servers; :class:`fakespawner.FakeSpawner`; a
``test-admin`` service with the admin role, to create users and tokens), starts ``jupyterhub``
and configurable-http-proxy, and waits until the hub and the service answer through the
proxy. Everything is reached at ``hub.public_url``; :meth:`ServiceHub.stop` ends it.
"""

import os
import secrets
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
NODE_BIN = REPO / ".node" / "node_modules" / ".bin"
SERVICE = "mliy"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServiceHub:
    root: Path
    public_url: str
    admin_token: str
    store_url: str
    instance_dir: Path
    hold_dir: Path
    log_dir: Path
    hub_log: Path
    proc: subprocess.Popen = None
    session: requests.Session = field(default_factory=requests.Session)

    @property
    def service_url(self):
        return f"{self.public_url}/services/{SERVICE}"

    # hub REST API as the test-admin service --------------------------------------------

    def hub_api(self, method, path, token=None, **kwargs):
        headers = {"Authorization": f"token {token or self.admin_token}"}
        return self.session.request(
            method, f"{self.public_url}/hub/api{path}", headers=headers, timeout=30, **kwargs
        )

    def create_user(self, name, admin=False):
        r = self.hub_api("POST", f"/users/{name}", json={"admin": admin})
        assert r.status_code in (201, 409), r.text
        return name

    def user_token(self, name, scopes=None):
        body = {"note": "service test"}
        if scopes is not None:
            body["scopes"] = scopes
        r = self.hub_api("POST", f"/users/{name}/tokens", json=body)
        assert r.status_code == 201, r.text
        return r.json()["token"]

    def server_api_path(self, user, server_name=""):
        return f"/users/{user}/servers/{server_name}" if server_name else f"/users/{user}/server"

    def server_model(self, user, server_name=""):
        r = self.hub_api("GET", self.server_api_path(user, server_name))
        if r.status_code == 404:
            return None
        assert r.status_code == 200, r.text
        return r.json()

    def wait_for(self, condition, what, timeout=20):
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(0.1)

    def spawn(self, user, server_name="", wait=True):
        r = self.hub_api("POST", self.server_api_path(user, server_name), data="")
        assert r.status_code in (201, 202), r.text
        if wait:
            self.wait_ready(user, server_name)

    def wait_ready(self, user, server_name=""):
        def ready():
            model = self.server_model(user, server_name)
            return model and model.get("ready")

        self.wait_for(ready, f"server {user}/{server_name} ready")

    def wait_stopped(self, user, server_name=""):
        def stopped():
            model = self.server_model(user, server_name)
            return model is None or (not model.get("ready") and not model.get("pending"))

        self.wait_for(stopped, f"server {user}/{server_name} stopped")

    def server_token(self, instance_id):
        """The API token the hub gave the server on ``instance_id`` (as the instance has it)."""
        return (self.instance_dir / f"{instance_id}.token").read_text()

    # the service --------------------------------------------------------------------

    def service(self, method, path, token=None, **kwargs):
        headers = kwargs.pop("headers", {})
        if token is not None:
            headers["Authorization"] = f"token {token}"
        return self.session.request(
            method, f"{self.service_url}/{path}", headers=headers, timeout=60, **kwargs
        )

    def hub_log_text(self):
        return self.hub_log.read_text(errors="replace") if self.hub_log.exists() else ""

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.session.close()


CONFIG = """\
from mliy_spawner.service import configure_service

c = get_config()  # noqa
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {public_port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.ConfigurableHTTPProxy.auth_token = {proxy_token!r}
c.JupyterHub.db_url = {db_url!r}
c.JupyterHub.cookie_secret = bytes.fromhex({cookie_secret!r})
c.JupyterHub.pid_file = {pid_file!r}
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.JupyterHub.allow_named_servers = True
c.JupyterHub.spawner_class = "fakespawner.FakeSpawner"
c.FakeSpawner.store_url = {store_url!r}
c.FakeSpawner.instance_dir = {instance_dir!r}
c.FakeSpawner.hold_dir = {hold_dir!r}
c.FakeSpawner.start_timeout = 60
c.JupyterHub.tornado_settings = {{"slow_spawn_timeout": 0}}
c.JupyterHub.services = [{{"name": "test-admin", "api_token": {admin_token!r}}}]
# the admin role: only admins may create admin users
c.JupyterHub.load_roles = [{{"name": "admin", "services": ["test-admin"]}}]
configure_service(
    c,
    port={service_port},
    store_url={store_url!r},
    log_dir={log_dir!r},
    log_levels={{"service": "DEBUG", "aws": "DEBUG"}},
    aws_endpoint_url={aws_endpoint_url!r},
    environment={environment!r},
)
"""


def start_hub(root, aws_endpoint_url="", environment=None, hub_env=None, timeout=60):
    """Start a hub with the mliy service under ``root``; returns a :class:`ServiceHub`.

    ``environment`` goes to the service through ``configure_service``; ``hub_env`` is
    added to the hub process's environment (the service inherits AWS_* from there).
    """
    root = Path(root)
    for sub in ("instances", "hold", "logs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    admin_token = secrets.token_hex(32)
    store_url = f"sqlite:///{root / 'mliy.sqlite'}"
    ports = {
        "public_port": free_port(),
        "hub_port": free_port(),
        "proxy_api_port": free_port(),
        "service_port": free_port(),
    }
    config = CONFIG.format(
        proxy_token=secrets.token_hex(16),
        db_url=f"sqlite:///{root / 'jupyterhub.sqlite'}",
        cookie_secret=secrets.token_hex(32),
        pid_file=str(root / "jupyterhub.pid"),
        store_url=store_url,
        instance_dir=str(root / "instances"),
        hold_dir=str(root / "hold"),
        admin_token=admin_token,
        log_dir=str(root / "logs"),
        aws_endpoint_url=aws_endpoint_url,
        environment=environment or {},
        **ports,
    )
    config_file = root / "jupyterhub_config.py"
    config_file.write_text(textwrap.dedent(config))

    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(NODE_BIN), str(Path(sys.executable).parent), env["PATH"]])
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(TESTS)])
    env.update(hub_env or {})
    hub = ServiceHub(
        root=root,
        public_url=f"http://127.0.0.1:{ports['public_port']}",
        admin_token=admin_token,
        store_url=store_url,
        instance_dir=root / "instances",
        hold_dir=root / "hold",
        log_dir=root / "logs",
        hub_log=root / "jupyterhub.log",
    )
    with open(hub.hub_log, "wb") as log_file:
        hub.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(config_file), "--debug"],
            cwd=root,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        hub.wait_for(lambda: _up(hub), "hub and mliy service to answer", timeout=timeout)
    except BaseException:
        hub.stop()
        raise AssertionError(f"hub did not start; its log:\n{hub.hub_log_text()[-6000:]}") from None
    return hub


def _up(hub):
    if hub.proc.poll() is not None:
        raise AssertionError(
            f"hub exited with {hub.proc.returncode}:\n{hub.hub_log_text()[-6000:]}"
        )
    try:
        if hub.hub_api("GET", "/").status_code != 200:
            return False
        # the service answers 401 to a request without a token once it is up
        return hub.service("POST", "api/progress/i-0", json={}).status_code == 401
    except requests.ConnectionError:
        return False
