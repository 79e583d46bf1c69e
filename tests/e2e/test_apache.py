"""Header login through a real reverse proxy: Debian's Apache httpd (``tests/apache.py``) in
front of configurable-http-proxy and a real JupyterHub with ``MLiyAuthenticator``.

Apache asks for basic auth (an htpasswd file) on ``/hub/login`` only, sets ``REMOTE_USER``
and the group header (``AUTHORIZE_MEMBEROF``, read by the ldap sample plugin) there, and
removes both from every client request; everything is proxied with websockets. Two sites:

- ``secret``: the demo (moto, the instance runner, the ``mliy`` service) with
  ``shared_secret`` set; Apache adds the secret header on ``/hub/login``. The hub's
  ``public_url`` is Apache, so notebooks, OAuth and the instances' reports go through it.
- ``address``: a plain hub trusting only the proxy's address, no secret.

Both hubs trust only ``127.0.0.1`` (where Apache connects to configurable-http-proxy
from). Clients connect from ``127.0.0.2``: through Apache that does not matter, straight
to configurable-http-proxy it gets a 403.
"""

import asyncio
import json
import re
import secrets
import shutil
import signal
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from apache import ApacheServer, add_htpasswd_user, find_apache, hub_site
from demostack import start_demo
from hubapi import (
    REPO,
    HubClient,
    free_port,
    log_tail,
    start_jupyterhub,
    stop_process,
    wait_for,
    write_hub_config,
)
from requests.adapters import HTTPAdapter
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from mliy_spawner.assets import asset_dir

pytestmark = pytest.mark.e2e

APACHE = find_apache()
if APACHE is None:
    pytest.skip(
        "Apache httpd (Debian's apache2) is not installed; `make test` installs it",
        allow_module_level=True,
    )

SECRET_HEADER = "X-MLiy-Proxy-Secret"
BASE_DN = "OU=Groups,DC=corp,DC=example"
ADMINS_DN = f"CN=hub-admins,{BASE_DN}"
# the directory, as the test's Apache knows it: bob is in no group
GROUPS = {
    "alice": f"CN=analysts,{BASE_DN}",
    "carol": f"CN=analysts,{BASE_DN};{ADMINS_DN}",
}
USERS = ("alice", "bob", "carol")
TRUSTED = "127.0.0.1"  # Apache connects to configurable-http-proxy from here
OUTSIDE = "127.0.0.2"  # every client: a browser, or someone skipping Apache

HEADER_LOGIN = """
c.JupyterHub.authenticator_class = "mliy"
c.MLiyAuthenticator.plugin_folder = {plugins!r}
c.MLiyAuthenticator.trusted_proxies = ["127.0.0.1/32"]
c.MLiyAuthenticator.shared_secret = {secret!r}
c.MLiyAuthenticator.admin_group = "hub-admins"
c.Authenticator.allow_all = True
c.Authenticator.allowed_users = set()
"""

DEMO_CONFIG = (
    """\
c = get_config()
load_subconfig({repo_config!r})  # the demo, as `make demo` runs it
# groups come from the directory at each login, not from the config
c.JupyterHub.load_groups = {{}}
c.JupyterHub.public_url = {public_url!r}
"""
    + HEADER_LOGIN
)

TOKEN = secrets.token_hex(32)
PLAIN_HUB = (
    HEADER_LOGIN
    + """
c.JupyterHub.services = [{{"name": "tester", "api_token": {token!r}}}]
c.JupyterHub.load_roles = [
    {{"name": "tester", "scopes": ["admin:users", "admin:groups"], "services": ["tester"]}}
]
"""
)


class SourceAddress(HTTPAdapter):
    """Connect from a chosen loopback address."""

    def __init__(self, source, **kwargs):
        self.source = source
        super().__init__(**kwargs)

    def init_poolmanager(self, *args, **kwargs):
        kwargs["source_address"] = (self.source, 0)
        super().init_poolmanager(*args, **kwargs)


def client(source=OUTSIDE):
    session = requests.Session()
    session.trust_env = False  # never an environment proxy: loopback only
    session.mount("http://", SourceAddress(source))
    return session


@dataclass
class Site:
    """Apache (``url``) in front of configurable-http-proxy (``proxy_url``) and a hub."""

    name: str
    apache: ApacheServer
    proxy_url: str
    hub: HubClient  # the hub's REST API as an admin, at configurable-http-proxy
    hub_log: Path
    passwords: dict
    secret: str = ""
    stack: object = None  # the demo, for the secret site

    @property
    def url(self):
        return self.apache.url

    def login(self, user, password=None, session=None, headers=None, next_url="/hub/home"):
        """GET /hub/login through Apache with basic auth, following the redirects."""
        session = session or client()
        return session.get(
            f"{self.url}/hub/login",
            params={"next": next_url},
            auth=(user, password or self.passwords[user]),
            headers=headers or {},
            timeout=60,
        )

    def whoami(self, session):
        """The hub's ``/hub/api/user`` for ``session``'s login cookie (through Apache)."""
        r = session.get(f"{self.url}/hub/api/user", timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    def logs(self):
        parts = [self.apache.logs(), f"----- {self.hub_log} -----\n{log_tail(self.hub_log)}"]
        if self.stack is not None:
            parts.append(self.stack.logs())
        return "\n".join(parts)


def write_plugins(folder):
    folder.mkdir()
    shutil.copy(asset_dir("plugins") / "ldap.py", folder / "ldap.py")
    (folder / "plugin_settings.py").write_text(
        f"AUTH_GROUP_PATTERN = None\nAUTH_GROUP_BASE_DN = {BASE_DN!r}\n"
    )
    return folder


def start_apache(upstream, secret=None):
    apache = ApacheServer(APACHE)
    passwords = {user: secrets.token_urlsafe(12) for user in USERS}
    htpasswd = apache.root / "htpasswd"
    for user, password in passwords.items():
        add_htpasswd_user(htpasswd, user, password)
    apache.start(hub_site(upstream, htpasswd, GROUPS, secret=secret))
    return apache, passwords


@pytest.fixture(scope="module")
def secret_site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("apache-demo")
    secret = "proxy-" + secrets.token_hex(16)
    proxy_port = free_port()
    apache, passwords = start_apache(f"http://127.0.0.1:{proxy_port}", secret)
    config = tmp / "jupyterhub_config.py"
    config.write_text(
        DEMO_CONFIG.format(
            repo_config=str(REPO / "jupyterhub_config.py"),
            public_url=apache.url,
            plugins=str(write_plugins(tmp / "plugins")),
            secret=secret,
        )
    )
    env = {"MLIY_DEMO_CONFIG": str(config), "MLIY_DEMO_HUB_PORT": str(proxy_port)}
    try:
        stack = start_demo(tmp / "data", env)
    except BaseException:
        apache.stop()
        raise
    site = Site(
        "secret",
        apache,
        stack.public_url,
        stack,
        stack.data_dir / "logs" / "jupyterhub.log",
        passwords,
        secret,
        stack,
    )
    yield site
    try:
        assert stack.stop(signal.SIGINT) == 0, stack.logs()
    finally:
        apache.stop()


@pytest.fixture(scope="module")
def address_site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("apache-hub")
    config, ports = write_hub_config(
        tmp, PLAIN_HUB, plugins=str(write_plugins(tmp / "plugins")), secret="", token=TOKEN
    )
    proxy_url = f"http://127.0.0.1:{ports['public_port']}"
    apache, passwords = start_apache(proxy_url)
    hub = HubClient(proxy_url, TOKEN, session=client(TRUSTED))
    log = tmp / "hub.log"
    try:
        process = start_jupyterhub(config, hub, log, env={"MLIY_PROXY_SHARED_SECRET": None})
    except BaseException:
        apache.stop()
        raise
    yield Site("address", apache, proxy_url, hub, log, passwords)
    stop_process(process)
    apache.stop()


@pytest.fixture(params=["address", "secret"])
def site(request):
    site = request.getfixturevalue(f"{request.param}_site")
    if site.stack is not None:  # the e2e conftest prints its logs when the test fails
        request.node.mliy_stacks = [site.stack]
    return site


def group_names(site, user):
    return sorted(site.hub.get(f"/users/{user}")["groups"])


# --- login ----------------------------------------------------------------------------------


def test_basic_auth_login_gives_the_groups_from_the_headers(site):
    session = client()
    r = site.login("alice", session=session)
    assert r.status_code == 200, f"{r.status_code} {r.text}\n{site.logs()}"
    assert r.url == f"{site.url}/hub/home"  # every redirect stayed on Apache
    assert site.whoami(session)["name"] == "alice"
    model = site.hub.get("/users/alice")
    assert (model["groups"], model["admin"]) == (["analysts"], False)

    carol = client()
    assert site.login("carol", session=carol).status_code == 200
    model = site.hub.get("/users/carol")
    assert (sorted(model["groups"]), model["admin"]) == (["analysts", "hub-admins"], True)

    # no group line for bob: Apache sends no group header, and bob is in no group
    assert site.login("bob").status_code == 200
    assert group_names(site, "bob") == []


def test_apache_asks_for_the_password(site):
    r = client().get(f"{site.url}/hub/login", timeout=30, allow_redirects=False)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Basic ")
    nobody = f"nobody{uuid.uuid4().hex[:8]}"
    r = site.login(nobody, password="wrong")
    assert r.status_code == 401
    r = site.login("alice", password="wrong")
    assert r.status_code == 401
    assert site.hub.get(f"/users/{nobody}") is None


# the names Apache's `RequestHeader unset` matches regardless of case; tornado reads
# `REMOTE_USER` in any case too
FORGED_USER_HEADERS = ["REMOTE_USER", "remote_user", "Remote_User"]


@pytest.mark.parametrize("header", FORGED_USER_HEADERS)
def test_the_clients_own_headers_are_overwritten(site, header):
    session = client()
    forged = {
        header: "carol",
        "AUTHORIZE_MEMBEROF": ADMINS_DN,
        "AUTHENTICATE_MEMBEROF": ADMINS_DN,
        SECRET_HEADER: "guessed",
        "X-Forwarded-For": TRUSTED,
    }
    r = site.login("alice", session=session, headers=forged)
    assert r.status_code == 200, f"{r.status_code} {r.text}\n{site.logs()}"
    assert site.whoami(session)["name"] == "alice"
    model = site.hub.get("/users/alice")
    assert (model["groups"], model["admin"]) == (["analysts"], False)

    # bob has no group: the forged group header must not reach the hub either
    bob = client()
    assert site.login("bob", session=bob, headers=forged).status_code == 200
    assert site.whoami(bob)["name"] == "bob"
    assert (group_names(site, "bob"), site.hub.get("/users/bob")["admin"]) == ([], False)


def test_forged_headers_without_the_password_get_nowhere(site):
    # the headers alone, through Apache: Apache asks for the password first
    forged = {"REMOTE_USER": "carol", "AUTHORIZE_MEMBEROF": ADMINS_DN}
    r = client().get(f"{site.url}/hub/login", headers=forged, timeout=30, allow_redirects=False)
    assert r.status_code == 401
    # ... and elsewhere they count for nothing: the hub sees nobody
    r = client().get(f"{site.url}/hub/api/user", headers=forged, timeout=30)
    assert r.status_code == 403, r.text


# --- around Apache --------------------------------------------------------------------------


@pytest.mark.parametrize("forwarded_for", [None, TRUSTED], ids=["plain", "forged-x-forwarded-for"])
def test_skipping_apache_with_a_forged_header_is_refused(site, forwarded_for):
    headers = {"REMOTE_USER": "alice", "AUTHORIZE_MEMBEROF": ADMINS_DN}
    if site.secret:
        headers[SECRET_HEADER] = site.secret  # even with it: the address is wrong
    if forwarded_for:
        headers["X-Forwarded-For"] = forwarded_for
    session = client(OUTSIDE)
    r = session.get(
        f"{site.proxy_url}/hub/login",
        params={"next": "/hub/home"},
        headers=headers,
        timeout=30,
        allow_redirects=False,
    )
    assert r.status_code == 403, r.text
    assert f"came from {OUTSIDE}, not through the site&#39;s sign-in proxy" in r.text
    assert session.get(f"{site.proxy_url}/hub/api/user", timeout=30).status_code == 403


def test_the_shared_secret_is_needed_even_from_the_trusted_address(secret_site, request):
    request.node.mliy_stacks = [secret_site.stack]
    site = secret_site

    def skip_apache(**extra):
        # from 127.0.0.1, as Apache connects (a process on the hub's machine can, too)
        return client(TRUSTED).get(
            f"{site.proxy_url}/hub/login",
            params={"next": "/hub/home"},
            headers={"REMOTE_USER": "bob", **extra},
            timeout=30,
            allow_redirects=False,
        )

    r = skip_apache()
    assert r.status_code == 403, r.text
    assert "did not carry the site proxy&#39;s credentials" in r.text
    assert skip_apache(**{SECRET_HEADER: "proxy-" + "0" * 32}).status_code == 403
    assert skip_apache(**{SECRET_HEADER: ""}).status_code == 403
    # the same request with the secret: what Apache adds is all that was missing
    r = skip_apache(**{SECRET_HEADER: site.secret})
    assert r.status_code == 302, r.text
    # Apache sends the secret to the hub's login only, and nobody logs it
    assert site.secret not in log_tail(site.hub_log, None)
    assert site.secret not in log_tail(site.apache.error_log, None)


def test_without_a_secret_only_the_address_counts(address_site):
    # the address-only site: a request from the trusted address is believed (this is
    # what shared_secret is for), one from elsewhere is not
    r = client(TRUSTED).get(
        f"{address_site.proxy_url}/hub/login",
        headers={"REMOTE_USER": "bob"},
        timeout=30,
        allow_redirects=False,
    )
    assert r.status_code == 302, r.text


# --- a notebook through Apache --------------------------------------------------------------


def xsrf_headers(session, origin, path):
    """What a browser's page sends with an API call: its origin and the server's xsrf
    cookie (``path``: the server's prefix) as ``X-XSRFToken``."""
    token = session.cookies.get("_xsrf", path=path)
    assert token, f"no _xsrf cookie for {path}: {session.cookies}"
    return {"Origin": origin, "X-XSRFToken": token}


def cookie_header(session, path):
    """The ``Cookie`` header a browser sends to ``path`` (the cookies whose path it is in)."""
    return "; ".join(f"{c.name}={c.value}" for c in session.cookies if path.startswith(c.path))


async def kernel_info(url, cookies, origin):
    """Open the kernel's websocket at ``url``; send kernel_info_request; return the reply."""
    request = HTTPRequest(url, headers={"Cookie": cookies, "Origin": origin}, request_timeout=60)
    connection = await asyncio.wait_for(websocket_connect(request), 60)
    try:
        msg_id = uuid.uuid4().hex
        await connection.write_message(
            json.dumps(
                {
                    "header": {
                        "msg_id": msg_id,
                        "msg_type": "kernel_info_request",
                        "username": "alice",
                        "session": uuid.uuid4().hex,
                        "version": "5.3",
                        "date": "",
                    },
                    "parent_header": {},
                    "metadata": {},
                    "content": {},
                    "channel": "shell",
                    "buffers": [],
                }
            )
        )
        while True:
            text = await asyncio.wait_for(connection.read_message(), 60)
            assert text is not None, "the kernel's websocket closed"
            message = json.loads(text)
            if message.get("parent_header", {}).get("msg_id") == msg_id and (
                message["header"]["msg_type"] == "kernel_info_reply"
            ):
                return message
    finally:
        # close, and let the loop finish the closing handshake (the test blocks it next):
        # then Apache ends the tunnel and logs it
        connection.close()
        while await asyncio.wait_for(connection.read_message(), 30) is not None:
            pass


async def test_a_notebook_and_its_websocket_work_through_apache(secret_site, request):
    request.node.mliy_stacks = [secret_site.stack]
    site = secret_site
    demo = site.stack
    session = client()
    # alice signs in through Apache first: her launch group comes from the directory
    assert site.login("alice", session=session).status_code == 200
    options = {"launch_group": "analysts", "software_config": "small", "instance_type": "t2.small"}
    r = demo.api("POST", "/users/alice/servers/ws", json={"user_options": options})
    assert r.status_code in (201, 202), r.text
    try:
        demo.wait_ready("alice", "ws")
        path = "/user/alice/ws/"
        prefix = f"{site.url}/user/alice/ws"
        # the browser's way in: the page, then the hub's OAuth, every redirect on Apache
        r = session.get(f"{prefix}/lab", timeout=60)
        assert r.status_code == 200, f"{r.status_code} {r.text}\n{site.logs()}"
        hops = [h.headers["Location"] for h in r.history]
        assert any("/hub/api/oauth2/authorize" in h for h in hops), hops
        assert all(h.startswith(("/", site.url)) for h in hops), hops
        assert r.url == f"{prefix}/lab"
        r = session.get(f"{prefix}/api/status", timeout=60)
        assert r.status_code == 200, r.text
        assert "started" in r.json()

        r = session.post(
            f"{prefix}/api/kernels",
            json={"name": "python3"},
            headers=xsrf_headers(session, site.url, path),
            timeout=60,
        )
        assert r.status_code == 201, f"{r.status_code} {r.text}"
        kernel = r.json()["id"]
        channels = f"{path}api/kernels/{kernel}/channels"
        ws_url = re.sub("^http", "ws", f"{site.url}{channels}")
        reply = await kernel_info(ws_url, cookie_header(session, channels), site.url)
        assert reply["content"]["status"] == "ok", reply
        assert reply["content"]["language_info"]["name"] == "python"
        # the websocket went through Apache: once it is closed, the access log has the
        # upgrade (101)
        upgraded = f'"GET {channels} HTTP/1.1" 101'
        access_log = site.apache.root / "access.log"
        try:
            wait_for(lambda: upgraded in log_tail(access_log, None), "the websocket in the log")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{site.apache.logs()}") from None
        # and so did the instance's own reports (the hub's public_url is Apache)
        assert '"POST /services/mliy/api/progress/' in log_tail(access_log, None)

        r = session.delete(
            f"{prefix}/api/kernels/{kernel}",
            headers=xsrf_headers(session, site.url, path),
            timeout=60,
        )
        assert r.status_code == 204, r.text
    finally:
        r = demo.api("DELETE", "/users/alice/servers/ws", json={"remove": True})
        assert r.status_code in (202, 204), r.text
        wait_for(lambda: demo.server("alice", "ws") is None, "alice's server removed", 120)
