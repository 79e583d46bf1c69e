"""A real JupyterHub process on loopback with the ``mliy`` service, for service tests.

:func:`start_hub` writes a config (free 127.0.0.1 ports for hub, proxy API, proxy and
service; DummyAuthenticator; named servers; :class:`fakespawner.FakeSpawner`; a
``test-admin`` service with the admin role, to create users and tokens), starts ``jupyterhub``
and configurable-http-proxy, and waits until the hub and the service answer through the
proxy. :class:`ServiceHub` is a :class:`hubapi.HubClient` at ``hub.public_url`` as
``test-admin``, with the service's own calls (through the proxy, or straight to the
service from another loopback address: :meth:`ServiceHub.direct`), a count of the
service's token checks in the hub's log (:meth:`ServiceHub.token_checks`);
:meth:`ServiceHub.stop` ends it. :func:`start_admin_hub` is the hub the admin pages'
tests share: a user and an admin with their tokens, the per-address limits lifted.
"""

import http.client
import re
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

import requests
from hubapi import (
    HubClient,
    free_port,
    log_tail,
    start_jupyterhub,
    stop_process,
    write_hub_config,
)

SERVICE = "mliy"
# every request of the service tests comes from one address (the proxy names 127.0.0.1):
# lift the service's per-address limits, save where a test measures them
UNLIMITED = {"MLIY_ADDRESS_RATE": "1000", "MLIY_ADDRESS_BURST": "100000"}


@dataclass
class ServiceHub(HubClient):
    root: Path
    public_url: str
    admin_token: str
    store_url: str
    instance_dir: Path
    hold_dir: Path
    log_dir: Path
    hub_log: Path
    service_port: int = 0
    proc: subprocess.Popen = None

    def __post_init__(self):
        HubClient.__init__(self, self.public_url, self.admin_token, timeout=30)

    @property
    def service_url(self):
        return f"{self.public_url}/services/{SERVICE}"

    def server_token(self, instance_id):
        """The API token the hub gave the server on ``instance_id`` (as the instance has it)."""
        return (self.instance_dir / f"{instance_id}.token").read_text()

    def service(self, method, path, token=None, **kwargs):
        """A call to the ``mliy`` service through the proxy (no token unless given)."""
        headers = kwargs.pop("headers", {})
        if token is not None:
            headers["Authorization"] = f"token {token}"
        return self.session.request(
            method, f"{self.service_url}/{path}", headers=headers, timeout=60, **kwargs
        )

    def direct(self, method, path, source, token=None, headers=None, body=None):
        """A call straight to the service (not through the proxy) from the loopback
        address ``source`` (``127.0.0.2``, ...); returns ``(status, headers, text)``."""
        headers = dict(headers or {})
        if token is not None:
            headers["Authorization"] = f"token {token}"
        connection = http.client.HTTPConnection(
            "127.0.0.1", self.service_port, timeout=30, source_address=(source, 0)
        )
        try:
            connection.request(method, f"/services/{SERVICE}/{path}", body=body, headers=headers)
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read().decode()
        finally:
            connection.close()

    def token_checks(self):
        """How many times the hub has answered ``GET /hub/api/user`` (a token check)."""
        return len(_TOKEN_CHECK.findall(self.hub_log_text()))

    def browser(self, user):
        """A ``requests`` session logged in to the hub as ``user`` (DummyAuthenticator),
        as a browser would be after the login form; close it when done."""
        session = requests.Session()
        session.get(f"{self.public_url}/hub/login", timeout=30)
        r = session.post(
            f"{self.public_url}/hub/login",
            data={"username": user, "password": "any", "_xsrf": session.cookies.get("_xsrf")},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        return session

    def hub_log_text(self):
        return log_tail(self.hub_log, chars=None)

    def stop(self):
        if self.proc is not None:
            stop_process(self.proc)
        self.session.close()


# the hub's request log: "[I ... log:192] 403 GET /hub/api/user (@127.0.0.1) 3.1ms"
_TOKEN_CHECK = re.compile(r"\] \d{3} GET /hub/api/user \(")

SETTINGS = """\
from mliy_spawner.service import configure_service

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
    service_port = free_port()
    store_url = f"sqlite:///{root / 'mliy.sqlite'}"
    config_file, ports = write_hub_config(
        root,
        SETTINGS,
        store_url=store_url,
        instance_dir=str(root / "instances"),
        hold_dir=str(root / "hold"),
        admin_token=admin_token,
        service_port=service_port,
        log_dir=str(root / "logs"),
        aws_endpoint_url=aws_endpoint_url,
        environment=environment or {},
    )
    hub = ServiceHub(
        root=root,
        public_url=f"http://127.0.0.1:{ports['public_port']}",
        admin_token=admin_token,
        store_url=store_url,
        instance_dir=root / "instances",
        hold_dir=root / "hold",
        log_dir=root / "logs",
        hub_log=root / "jupyterhub.log",
        service_port=service_port,
    )

    def service_up():
        # the service answers 401 to a request without a token once it is up
        try:
            return hub.service("POST", "api/progress/i-0", json={}).status_code == 401
        except requests.ConnectionError:
            return False

    hub.proc = start_jupyterhub(
        config_file, hub, hub.hub_log, env=hub_env, up=service_up, debug=True, timeout=timeout
    )
    return hub


def start_admin_hub(root, user="ann", admin="root"):
    """:func:`start_hub` with :data:`UNLIMITED`, ``user`` and the admin ``admin`` created,
    and ``hub.tokens`` holding a token of each by name."""
    hub = start_hub(root, environment=UNLIMITED)
    hub.create_user(user)
    hub.create_user(admin, admin=True)
    hub.tokens = {name: hub.user_token(name) for name in (user, admin)}
    return hub
