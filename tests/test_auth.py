"""MLiyAuthenticator: pure helpers, ``authenticate`` against a stand-in request, and a real
hub on loopback (JupyterHub + configurable-http-proxy as subprocesses) logging users in
with the ldap sample plugin.

The hub fixture (module-scoped, below) trusts only 127.0.0.1 and ::1; requests from
"untrusted" addresses bind their client socket to 127.0.0.2, which stays on loopback.
"""

import http.client
import re
import secrets
import shutil
import socket
from pathlib import Path
from types import SimpleNamespace

import jupyterhub
import pytest
import requests
from hubapi import HubClient, log_tail, start_jupyterhub, stop_process, wait_for, write_hub_config
from requests.adapters import HTTPAdapter
from tornado import web
from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine
from traitlets import TraitError

from mliy_spawner.assets import asset_dir
from mliy_spawner.auth import (
    UNIX_PEER,
    USERNAME_RULE,
    MLiyAuthenticator,
    RequestHeaders,
    clean_groups,
    is_trusted,
    login_peer,
    parse_networks,
    username_problem,
)
from mliy_spawner.plugins import PluginError

FIXTURES = Path(__file__).parent / "plugin_fixtures"
LOOPBACK = parse_networks(("127.0.0.0/8", "::1/128"))

# --- user names --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["alice", "a", "Alice.Smith", "a_b-c@d", "x1", "x" * 64, "jdoe@corp.example.com"]
)
def test_good_usernames(name):
    assert username_problem(name) is None


@pytest.mark.parametrize(
    "name, problem",
    [
        ("", "is empty"),
        (None, "is a NoneType, not text"),
        ("../x", "contains '/'"),
        ("a b", "contains ' '"),
        ("a/b", "contains '/'"),
        ("ａｌｉｃｅ", "look-alike characters"),  # fullwidth
        ("ǅ", "look-alike characters"),  # one letter that NFKC turns into two
        ("ﬁle", "look-alike characters"),  # ligature
        ("ali\u200dce", "control or invisible character U+200D"),  # zero-width joiner
        ("ali\u202ece", "control or invisible character U+202E"),  # right-to-left override
        ("al\x00ice", "control or invisible character U+0000"),
        ("al\tice", "control or invisible character U+0009"),
        ("josé", "non-ASCII character 'é' (U+00E9)"),
        ("аlice", "non-ASCII character 'а' (U+0430)"),  # Cyrillic a
        ("x" * 65, "has 65 characters; at most 64"),
        ("x" * 300, "has 300 characters; at most 64"),
        (".alice", "must start and end with a letter or digit"),
        ("alice-", "must start and end with a letter or digit"),
        ("..", "must start and end with a letter or digit"),
        ("a..b", "contains '..'"),
        ("a<b", "contains '<'"),
        ("a%2fb", "contains '%'"),
    ],
)
def test_bad_usernames(name, problem):
    assert problem in username_problem(name)


def test_username_rule_text():
    assert USERNAME_RULE.startswith("1 to 64 ASCII letters, digits")


# --- addresses -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "socket_peer, forwarded_for, peer, trusted",
    [
        ("127.0.0.1", [], "127.0.0.1", True),  # local process straight to the hub
        ("127.0.0.1", ["203.0.113.9, 127.0.0.1"], "127.0.0.1", True),  # proxy on loopback
        ("127.0.0.1", ["127.0.0.1, 10.1.2.3"], "10.1.2.3", False),  # instance -> CHP
        ("127.0.0.1", ["127.0.0.1", "10.1.2.3"], "10.1.2.3", False),  # two header lines
        ("10.1.2.3", ["127.0.0.1"], "10.1.2.3", False),  # instance -> hub, forged header
        ("127.0.0.1", ["::ffff:127.0.0.1"], "::ffff:127.0.0.1", True),  # node dual stack
        ("::1", ["[::1]"], "[::1]", True),
        ("127.0.0.1", ["unknown"], "unknown", False),
        ("127.0.0.1", ["127.0.0.1:5555"], "127.0.0.1:5555", False),
        ("127.0.0.1", [" , "], "127.0.0.1", True),
        (UNIX_PEER, [], UNIX_PEER, True),
        (None, ["127.0.0.1"], None, False),
    ],
)
def test_login_peer(socket_peer, forwarded_for, peer, trusted):
    found = login_peer(socket_peer, forwarded_for, LOOPBACK)
    assert found == peer
    assert (found is not None and is_trusted(found, LOOPBACK)) is trusted


def test_unix_socket_is_trusted_only_with_loopback():
    assert not is_trusted(UNIX_PEER, parse_networks(("10.0.0.0/8",)))


@pytest.mark.parametrize(
    "value, match",
    [
        (["10.0.0.5/24"], "'10.0.0.5/24' is not an address or CIDR network .*host bits"),
        (["banana"], "'banana' is not an address or CIDR network"),
        ([""], "'' is not an address or CIDR network"),
        (["10.0.0.0/33"], "'10.0.0.0/33'"),
    ],
)
def test_trusted_proxies_are_validated(value, match):
    with pytest.raises(TraitError, match="MLiyAuthenticator.trusted_proxies: " + match):
        MLiyAuthenticator(trusted_proxies=value)


def test_trusted_proxies_are_normalised():
    auth = MLiyAuthenticator(trusted_proxies=["10.0.1.5", " fd00::/64 "])
    assert auth.trusted_proxies == ["10.0.1.5/32", "fd00::/64"]
    assert MLiyAuthenticator().trusted_proxies == ["127.0.0.0/8", "::1/128"]


@pytest.mark.parametrize("header", ["", "X Secret", "X-Secret:", "Sécret"])
def test_shared_secret_header_is_a_header_name(header):
    with pytest.raises(TraitError, match="is not an HTTP header name"):
        MLiyAuthenticator(shared_secret_header=header)


def test_shared_secret_defaults_to_the_environment(monkeypatch):
    monkeypatch.setenv("MLIY_PROXY_SHARED_SECRET", "from-env")
    assert MLiyAuthenticator().shared_secret == "from-env"
    monkeypatch.delenv("MLIY_PROXY_SHARED_SECRET")
    assert MLiyAuthenticator().shared_secret == ""
    assert MLiyAuthenticator().manage_groups is True


# --- headers and groups -------------------------------------------------------------------


def test_request_headers_view():
    h = RequestHeaders(
        [
            ("Remote_User", "alice"),
            ("X-Dn", "CN=a,DC=x"),
            ("x-dn", "CN=b,DC=x"),
            ("X-Name", "Jos\xc3\xa9"),  # UTF-8 bytes as tornado decodes them (latin-1)
            ("X-Latin", "caf\xe9"),  # not UTF-8: kept as sent
            ("X-Secret", "s3cret"),
        ],
        exclude=["x-secret"],
    )
    assert h["REMOTE_USER"] == "alice"
    assert h["X-DN"] == "CN=a,DC=x\nCN=b,DC=x"
    assert h["x-name"] == "José"
    assert h["X-Latin"] == "café"
    assert "X-Secret" not in h and h.get("X-Secret") is None
    assert 7 not in h and h.get(7) is None
    assert sorted(h) == ["Remote_User", "X-Dn", "X-Latin", "X-Name"]
    with pytest.raises(TypeError):
        h["new"] = "value"


def test_clean_groups_drops_bad_names(caplog):
    groups = ["  data ", "data", "", "x" * 256, "zero\u200bwidth", "ok ünïcode", 7, "tab\tin"]
    assert clean_groups(groups, "plugin.py") == ["data", "ok ünïcode"]
    dropped = [r for r in caplog.records if r.name == "mliy.auth"]
    assert len(dropped) == 5


@pytest.mark.parametrize("groups", ["data-science", None, {"a": 1}, b"x"])
def test_clean_groups_wants_a_list(groups):
    with pytest.raises(PluginError, match="processAuthUserGroups in plugin.py returned"):
        clean_groups(groups, "plugin.py")


# --- authenticate() against a stand-in request ---------------------------------------------


@pytest.fixture
def split_plugin(tmp_path):
    folder = tmp_path / "split"
    shutil.copytree(FIXTURES / "split", folder)
    return folder


def fake_handler(headers, peer="127.0.0.1"):
    connection = SimpleNamespace(
        context=SimpleNamespace(address_family=socket.AF_INET, address=(peer, 40000))
    )
    request = HTTPServerRequest(
        headers=HTTPHeaders({"Host": "hub.example.test", **headers}),
        connection=connection,
        start_line=RequestStartLine("GET", "/hub/login", "HTTP/1.1"),
    )
    return SimpleNamespace(request=request)


async def test_authenticate_builds_the_auth_model(split_plugin):
    auth = MLiyAuthenticator(plugin_folder=str(split_plugin), admin_group="admins")
    model = await auth.authenticate(
        fake_handler(
            {"X-Test-User": " Alice ", "X-Test-Groups": "admins, data", "X-Test-Email": "a@b.org"}
        )
    )
    assert model == {
        "name": "alice",
        "groups": ["admins", "data"],
        "admin": True,
        "user_info": {"name": "Test User", "display_name": "Test User"},
        "auth_state": {
            "name": "alice",
            "email": "a@b.org",
            "display_name": "Test User",
            "groups": ["admins", "data"],
            "team": "blue",  # added by configureAuthUser
        },
    }


@pytest.mark.parametrize(
    "admin_group, admin_users, groups, admin",
    [
        ("", set(), "admins", None),  # empty admin_group grants nothing
        ("admins", set(), "admins", True),
        ("admins", set(), "ADMINS, admins-x, xadmins", False),  # exact match only
        ("admins", {"alice"}, "data", True),  # admin_users still counts
    ],
    ids=["empty-setting", "member", "near-misses", "admin-users"],
)
async def test_admin_from_the_admin_group(split_plugin, admin_group, admin_users, groups, admin):
    auth = MLiyAuthenticator(
        plugin_folder=str(split_plugin), admin_group=admin_group, admin_users=admin_users
    )
    model = await auth.authenticate(fake_handler({"X-Test-User": "alice", "X-Test-Groups": groups}))
    assert model["admin"] is admin


ADMINS_DN = "cn=hub-admins,ou=groups,dc=corp,dc=example"
GROUPS_BASE = "AUTH_GROUP_BASE_DN = 'OU=Groups,DC=corp,DC=example'\n"


@pytest.mark.parametrize(
    "settings, admin_group, member_of, admin",
    [
        ("", ADMINS_DN, "CN=Hub-Admins, OU=Groups,DC=corp,DC=example", True),  # same DN
        ("", ADMINS_DN, "CN=hub-admins,OU=users-own,DC=corp,DC=example", False),
        ("", ADMINS_DN, "CN=hub-admins,OU=Groups,DC=corp,DC=example,DC=evil", False),
        ("", "hub-admins", "CN=hub-admins,OU=users-own,DC=corp,DC=example", False),
        ("", "hub-admins", "CN=hub-admins,OU=Groups,DC=corp,DC=example", False),
        (GROUPS_BASE, "hub-admins", "CN=hub-admins,OU=Groups,DC=corp,DC=example", True),
        (GROUPS_BASE, "hub-admins", "CN=hub-admins,OU=users-own,DC=corp,DC=example", False),
    ],
    ids=[
        "dn-member",
        "dn-look-alike",
        "dn-longer",
        "cn-setting-dn-groups",
        "cn-setting-dn-groups-real",
        "base-member",
        "base-look-alike",
    ],
)
async def test_admin_group_is_one_directory_entry(
    tmp_path, settings, admin_group, member_of, admin
):
    # a user who may create groups in their own branch (ou=users-own) names one hub-admins
    folder = tmp_path / "ldap"
    folder.mkdir()
    shutil.copy(asset_dir("plugins") / "ldap.py", folder / "ldap.py")
    (folder / "plugin_settings.py").write_text(settings)
    auth = MLiyAuthenticator(plugin_folder=str(folder), admin_group=admin_group)
    model = await auth.authenticate(
        fake_handler({"REMOTE_USER": "trudy", "AUTHORIZE_MEMBEROF": member_of})
    )
    assert model["admin"] is admin


def test_admin_group_that_looks_like_a_bad_dn_is_refused():
    with pytest.raises(TraitError, match="MLiyAuthenticator.admin_group 'cn=a,,dc=x' looks"):
        MLiyAuthenticator(admin_group="cn=a,,dc=x")
    assert MLiyAuthenticator(admin_group=" hub-admins ").admin_group == "hub-admins"


async def test_plugin_permission_error_is_a_403(split_plugin):
    auth = MLiyAuthenticator(plugin_folder=str(split_plugin))
    with pytest.raises(web.HTTPError) as error:
        await auth.authenticate(fake_handler({"X-Test-User": "refused"}))
    assert error.value.status_code == 403
    assert error.value.jupyterhub_message == "the directory marks this account as suspended"


@pytest.mark.parametrize(
    "function, result, logged",
    [
        ("cleanAuthUsername", None, "returned None, not text"),
        ("processAuthUserInfo", ["x"], "returned ['x'], not a dict"),
        ("processAuthUserGroups", "data", "returned the groups 'data'; they must be a list"),
        ("configureAuthUser", {"name": "root"}, "changed the user name to 'root'"),
        ("configureAuthUser", {"groups": "data"}, "returned the groups 'data'"),
        ("configureAuthUser", {"when": object()}, "not JSON data"),
    ],
)
async def test_broken_plugin_answers_are_a_500(split_plugin, caplog, function, result, logged):
    auth = MLiyAuthenticator(plugin_folder=str(split_plugin))
    plugin = auth.plugin
    auth._plugin = type(plugin)(
        **{name: getattr(plugin, name) for name in plugin.sources},
        sources=plugin.sources,
    )
    object.__setattr__(auth._plugin, function, lambda *args: result)
    with pytest.raises(web.HTTPError) as error:
        await auth.authenticate(fake_handler({"X-Test-User": "alice"}))
    assert error.value.status_code == 500
    assert error.value.jupyterhub_message == (
        "The hub's sign-in plugin failed; the hub's log has the details."
    )
    logged_lines = [r.getMessage() for r in caplog.records if r.name == "mliy.auth"]
    assert any(function in line and logged in line for line in logged_lines), logged_lines


async def test_a_plugin_exception_is_logged_with_its_file(split_plugin, caplog):
    auth = MLiyAuthenticator(plugin_folder=str(split_plugin))
    plugin = auth.plugin

    def explode(headers):
        raise KeyError("AUTHENTICATE_MAIL")

    auth._plugin = type(plugin)(
        **{**{n: getattr(plugin, n) for n in plugin.sources}, "processAuthUserInfo": explode},
        sources=plugin.sources,
    )
    with pytest.raises(web.HTTPError) as error:
        await auth.authenticate(fake_handler({"X-Test-User": "alice"}))
    assert error.value.status_code == 500
    record = next(r for r in caplog.records if r.name == "mliy.auth" and r.exc_info)
    assert str(split_plugin / "details.py") in record.getMessage()


@pytest.mark.parametrize(
    "header, match",
    [
        ("HTTP_REMOTE_USER", "a Django/CGI variable name; return the HTTP header name"),
        ("X User", "must return an HTTP header name"),
        ("X-MLiy-Proxy-Secret", "the same header as MLiyAuthenticator.shared_secret_header"),
    ],
)
def test_plugin_header_name_is_checked(split_plugin, header, match):
    settings = split_plugin / "plugin_settings.py"
    settings.write_text(settings.read_text().replace('"X-Test-User"', repr(header)))
    auth = MLiyAuthenticator(plugin_folder=str(split_plugin))
    with pytest.raises(PluginError, match=match):
        _ = auth.plugin


def test_no_plugin_configured_stops_the_hub():
    with pytest.raises(PluginError, match="no auth plugin configured"):
        MLiyAuthenticator().get_handlers(None)


# --- a real hub on loopback ------------------------------------------------------------------

SECRET = "proxy-" + secrets.token_hex(16)
SERVICE_TOKEN = secrets.token_hex(32)
HUB_SETTINGS = """
import logging

c.JupyterHub.authenticator_class = "mliy_spawner.auth.MLiyAuthenticator"
c.MLiyAuthenticator.plugin_folder = "{plugins}"
c.MLiyAuthenticator.trusted_proxies = ["127.0.0.1/32", "::1/128"]
c.MLiyAuthenticator.shared_secret = "{secret}"
c.MLiyAuthenticator.admin_group = "hub-admins"
c.Authenticator.allow_all = True
c.Authenticator.blocked_users = {{"mallory"}}
c.Authenticator.enable_auth_state = True


def post_auth_hook(authenticator, handler, authentication):
    if authentication["name"] == "explode":
        raise RuntimeError("post_auth_hook fails on purpose")
    authentication["auth_state"]["post_auth_hook"] = "ran"
    return authentication


c.Authenticator.post_auth_hook = post_auth_hook
c.JupyterHub.services = [{{"name": "tester", "api_token": "{token}"}}]
c.JupyterHub.load_roles = [
    {{
        "name": "tester",
        "scopes": ["admin:users", "admin:groups", "admin:auth_state"],
        "services": ["tester"],
    }}
]
handler = logging.FileHandler("{tmp}/mliy-auth.log")
handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
logging.getLogger("mliy.auth").addHandler(handler)
logging.getLogger("mliy.auth").setLevel(logging.INFO)
"""


class SourceAddressAdapter(HTTPAdapter):
    """Send requests from a chosen loopback address (127.0.0.2 is not trusted)."""

    def __init__(self, source, **kwargs):
        self.source = source
        super().__init__(**kwargs)

    def init_poolmanager(self, *args, **kwargs):
        kwargs["source_address"] = (self.source, 0)
        super().init_poolmanager(*args, **kwargs)


def session(source="127.0.0.1"):
    s = requests.Session()
    s.trust_env = False  # never an environment proxy: loopback only
    s.mount("http://", SourceAddressAdapter(source))
    return s


class AuthHub(HubClient):
    """The hub through its proxy (``url``) as the ``tester`` service, from 127.0.0.1."""

    def __init__(self, url, hub_url, log, auth_log):
        super().__init__(url, SERVICE_TOKEN, session=session())
        self.hub_url = hub_url  # the hub's own port, skipping the proxy
        self.log = log
        self.auth_log = auth_log

    def user_names(self):
        return {u["name"] for u in self.get("/users")}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hub")
    plugins = tmp / "plugins"
    plugins.mkdir()
    shutil.copy(asset_dir("plugins") / "ldap.py", plugins / "ldap.py")
    (plugins / "plugin_settings.py").write_text(
        "AUTH_GROUP_PATTERN = None\nAUTH_GROUP_BASE_DN = 'OU=Groups,DC=corp,DC=example'\n"
    )
    config, ports = write_hub_config(
        tmp, HUB_SETTINGS, tmp=tmp, plugins=plugins, secret=SECRET, token=SERVICE_TOKEN
    )
    hub = AuthHub(
        f"http://127.0.0.1:{ports['public_port']}",
        f"http://127.0.0.1:{ports['hub_port']}",
        log=tmp / "hub.log",
        auth_log=tmp / "mliy-auth.log",
    )
    env = {"JUPYTERHUB_CRYPT_KEY": secrets.token_hex(32), "MLIY_PROXY_SHARED_SECRET": None}
    process = start_jupyterhub(config, hub, hub.log, env=env)
    yield hub
    stop_process(process)
    hub.session.close()


def login(hub, user, member_of="", secret=SECRET, client=None, base=None, next_url=None, **extra):
    headers = {"REMOTE_USER": user, "AUTHORIZE_MEMBEROF": member_of, **extra}
    if secret is not None:
        headers["X-MLiy-Proxy-Secret"] = secret
    if user is None:
        del headers["REMOTE_USER"]
    encoded = {k: v.encode("utf-8") for k, v in headers.items()}
    return (client or session()).get(
        f"{base or hub.url}/hub/login",
        params={"next": next_url or "/hub/home"},
        headers=encoded,
        allow_redirects=False,
    )


def dns(*groups):
    return ";".join(f"CN={g},OU=Groups,DC=corp,DC=example" for g in groups)


def test_trusted_login_lands_in_groups_and_admin(hub):
    client = session()
    response = login(
        hub,
        "alice",
        dns("data-science", "hub-admins"),
        client=client,
        AUTHENTICATE_GIVENNAME="Alice",
        AUTHENTICATE_SN="Liddell",
        AUTHENTICATE_MAIL="alice@example.com",
    )
    assert response.status_code == 302, response.text
    assert response.headers["Location"] == "/hub/home"
    home = client.get(f"{hub.url}/hub/home", allow_redirects=False)  # the login cookie works
    assert home.status_code == 200
    assert "alice" in home.text

    user = hub.get("/users/alice")
    assert user["admin"] is True
    assert sorted(user["groups"]) == ["data-science", "hub-admins"]
    assert user["auth_state"] == {
        "name": "alice",
        "email": "alice@example.com",
        "display_name": "Alice Liddell",
        "first_name": "Alice",
        "last_name": "Liddell",
        "groups": ["data-science", "hub-admins"],
        "post_auth_hook": "ran",  # JupyterHub's post_auth_hook ran on our auth model
    }


def test_group_sync_follows_the_directory(hub):
    assert login(hub, "bob", dns("research", "hub-admins", "gpu")).status_code == 302
    user = hub.get("/users/bob")
    assert (sorted(user["groups"]), user["admin"]) == (["gpu", "hub-admins", "research"], True)

    assert login(hub, "bob", dns("research")).status_code == 302
    user = hub.get("/users/bob")
    assert (user["groups"], user["admin"]) == (["research"], False)
    assert "bob" not in hub.get("/groups/gpu")["users"]

    assert login(hub, "bob", "").status_code == 302
    assert hub.get("/users/bob")["groups"] == []


def test_a_look_alike_admin_group_grants_nothing(hub):
    # trudy may create groups in her own branch of the directory
    own = "CN=hub-admins,OU=users-own,DC=corp,DC=example"
    assert login(hub, "trudy", ";".join([own, dns("research")])).status_code == 302
    user = hub.get("/users/trudy")
    assert (user["groups"], user["admin"]) == (["research"], False)


def test_untrusted_address_gets_403(hub):
    response = login(hub, "eve", dns("hub-admins"), client=session("127.0.0.2"))
    assert response.status_code == 403
    assert "came from 127.0.0.2, not through the site&#39;s sign-in proxy" in response.text
    assert hub.get("/users/eve") is None
    wait_for_text(hub.auth_log, "refused header login from 127.0.0.2: not in trusted_proxies")


def test_forged_forwarding_headers_do_not_help(hub):
    forged = {"X-Forwarded-For": "127.0.0.1", "X-Real-IP": "127.0.0.1", "Forwarded": "for=::1"}
    response = login(hub, "eve2", client=session("127.0.0.2"), **forged)
    assert response.status_code == 403
    assert hub.get("/users/eve2") is None


def test_straight_to_the_hub_port(hub):
    # an instance that skips the proxy: the socket peer itself is checked
    response = login(
        hub, "eve3", client=session("127.0.0.2"), base=hub.hub_url, **{"X-Forwarded-For": "::1"}
    )
    assert response.status_code == 403
    assert hub.get("/users/eve3") is None
    # a process on the hub's own machine (loopback) is trusted
    assert login(hub, "local", base=hub.hub_url).status_code == 302


@pytest.mark.parametrize(
    "secret", ["wrong-secret", "", None, SECRET[:-1], SECRET.upper()], ids=repr
)
def test_shared_secret_mismatch_gets_403(hub, secret):
    response = login(hub, "mallet", dns("hub-admins"), secret=secret)
    assert response.status_code == 403
    assert "did not carry the site proxy&#39;s credentials" in response.text
    assert hub.get("/users/mallet") is None


def raw_login(base, header_lines):
    """GET /hub/login with exactly these header lines (repeats allowed)."""
    connection = http.client.HTTPConnection("127.0.0.1", int(base.rsplit(":", 1)[1]))
    try:
        connection.putrequest("GET", "/hub/login")
        for name, value in header_lines:
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def test_repeated_headers_are_refused(hub):
    two_secrets = [("REMOTE_USER", "dup"), ("X-MLiy-Proxy-Secret", SECRET)]
    two_secrets.append(("X-MLiy-Proxy-Secret", "x"))
    two_users = [("REMOTE_USER", "dup"), ("REMOTE_USER", "admin"), ("X-MLiy-Proxy-Secret", SECRET)]
    assert raw_login(hub.url, two_secrets)[0] == 403
    assert raw_login(hub.hub_url, two_secrets)[0] == 403
    # configurable-http-proxy joins repeated headers into one value: "dup, admin"
    status, body = raw_login(hub.url, two_users)
    assert (status, "it contains &#39;,&#39;" in body) == (403, True)
    # straight to the hub, tornado sees both lines
    status, body = raw_login(hub.hub_url, two_users)
    assert (status, "came 2 times" in body) == (403, True)
    assert hub.get("/users/dup") is None


@pytest.mark.parametrize("user", [None, ""], ids=["missing", "empty"])
def test_no_user_header_gets_401(hub, user):
    response = login(hub, user)
    assert response.status_code == 401
    assert "Sign-in goes through the site&#39;s proxy" in response.text


@pytest.mark.parametrize(
    "user",
    [
        "../x",
        "a b",
        "ａｌｉｃｅ",
        "ǅ",
        "ali\u200dce",
        "x" * 300,
        "a\tb",
        "alice/../admin",
        "..",
        "<b>bold</b>",
        "alice\u0430",
    ],
    ids=[
        "dotdot",
        "space",
        "fullwidth",
        "dz",
        "zwj",
        "300",
        "tab",
        "traversal",
        "dots",
        "html",
        "cyrillic",
    ],
)
def test_hostile_names_get_403(hub, user):
    before = hub.user_names()
    response = login(hub, user)
    assert response.status_code == 403
    assert "cannot be used on this hub" in response.text
    assert "<b>bold</b>" not in response.text
    assert hub.user_names() == before


def test_blocked_user_gets_403(hub):
    response = login(hub, "mallory")
    assert response.status_code == 403
    assert "not allowed on this hub" in response.text
    assert hub.get("/users/mallory") is None


def test_next_url_stays_on_the_hub(hub):
    response = login(hub, "carol", next_url="https://evil.example/steal")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/hub/")


def wait_for_text(path, text, timeout=10):
    """The file's text once it holds ``text`` (the hub logs a request after answering)."""

    def holds():
        content = log_tail(path, None)
        return content if text in content else None

    return wait_for(holds, f"{text!r} in {path.name}", timeout, interval=0.05)


def test_secret_never_reaches_the_logs(hub):
    # a 500 makes JupyterHub log every request header: the secret must be gone by then
    response = login(hub, "explode", **{"X-Trace-Marker": "marker-5150"})
    assert response.status_code == 500
    hub_log = wait_for_text(hub.log, "marker-5150")  # the header dump happened
    assert SECRET not in hub_log
    assert SECRET not in hub.auth_log.read_text()
    startup = r"header login: user from REMOTE_USER .* with the X-MLiy-Proxy-Secret header"
    assert re.search(startup, hub.auth_log.read_text())


def test_user_info_is_shown_not_the_email(hub):
    response = login(
        hub, "dave", AUTHENTICATE_GIVENNAME="Dave", AUTHENTICATE_MAIL="dave@example.com"
    )
    assert response.status_code == 302
    user = hub.get("/users/dave")
    if jupyterhub.version_info >= (6,):  # JupyterHub 5 has no user_info: it shows the name
        assert user["user_info"] == {"name": "Dave", "display_name": "Dave"}
    assert user["auth_state"]["email"] == "dave@example.com"  # kept, but not shown
