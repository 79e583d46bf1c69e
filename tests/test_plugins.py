"""Plugin loader, DNS helpers, DN parsing and the ldap/isso sample plugins.

Plugin folders come from ``tests/plugin_fixtures`` (see its README) and are copied to a
temporary folder first: the loader imports each folder once per process.
"""

import asyncio
import hashlib
import logging
import shutil
from pathlib import Path

import pytest

from mliy_spawner.assets import asset_dir
from mliy_spawner.auth import RequestHeaders
from mliy_spawner.plugins import (
    AUTH_FUNCTIONS,
    DNS_FUNCTIONS,
    NOOP_DNS_PLUGIN,
    AuthPlugin,
    DnsPlugin,
    PluginError,
    base_dn_keys,
    cn_groups,
    dn_groups,
    dn_key,
    dns_display_name,
    dns_label,
    format_dn,
    header_email,
    header_text,
    load_auth_plugin,
    load_dns_plugin,
    parse_dn,
    run_dns,
    split_dn_list,
)

FIXTURES = Path(__file__).parent / "plugin_fixtures"
log = logging.getLogger("mliy.test")


def fixture_folder(name, tmp_path):
    target = tmp_path / name
    shutil.copytree(FIXTURES / name, target)
    return target


def sample_folder(tmp_path, *files, settings=""):
    """A folder with shipped sample plugin ``files`` and the given plugin_settings text."""
    folder = tmp_path / "samples"
    folder.mkdir()
    for name in files:
        shutil.copy(asset_dir("plugins") / name, folder / name)
    (folder / "plugin_settings.py").write_text(settings)
    return folder


def headers(*pairs):
    return RequestHeaders(pairs)


def dns_plugin_with_event(tmp_path, name, create_body):
    """The DNS plugin of a folder with one file ``name``.py, and its ``threading.Event``
    ``EVENT``; its createDnsEntry runs ``create_body`` (indented source lines)."""
    folder = tmp_path / name
    folder.mkdir()
    (folder / f"{name}.py").write_text(
        "import threading\n"
        "EVENT = threading.Event()\n"
        "def dnsDisplayName(name):\n    return None\n"
        f"def createDnsEntry(name, ip):\n{create_body}"
        "def deleteDnsEntry(name, ip):\n    return None\n"
    )
    plugin = load_dns_plugin(folder=str(folder))
    return plugin, plugin.createDnsEntry.__globals__["EVENT"]


# --- loading from a folder -------------------------------------------------------------


def test_folder_plugin_spread_over_files_reads_its_settings(tmp_path):
    folder = fixture_folder("split", tmp_path)
    plugin = load_auth_plugin(folder=str(folder))
    assert isinstance(plugin, AuthPlugin)
    assert plugin.getAuthHeader() == "X-Test-User"  # from plugin_settings.py
    assert plugin.cleanAuthUsername("  Alice ") == "alice"
    assert plugin.sources["getAuthHeader"] == str(folder / "names.py")
    assert plugin.sources["processAuthUserGroups"] == str(folder / "details.py")
    assert set(plugin.sources) == set(AUTH_FUNCTIONS)
    groups = plugin.processAuthUserGroups(headers(("X-Test-Groups", "a, b,,c")))
    assert groups == ["a", "b", "c"]

    dns = load_dns_plugin(folder=str(folder))
    assert isinstance(dns, DnsPlugin)
    assert dns.dnsDisplayName("alice") == "alice.nb.example.test"
    assert set(dns.sources.values()) == {str(folder / "dns.py")}


def test_each_file_is_imported_once(tmp_path):
    folder = fixture_folder("split", tmp_path)
    first = load_auth_plugin(folder=str(folder))
    again = load_auth_plugin(folder=str(folder) + "/")  # same folder, spelled differently
    load_dns_plugin(folder=str(folder))
    load_dns_plugin(folder=str(folder))
    assert again is first
    imports = (folder / "imports.log").read_text().split()
    assert sorted(imports) == ["details", "dns", "names", "plugin_settings"]


def test_plugin_settings_of_two_folders_stay_apart(tmp_path):
    one = fixture_folder("split", tmp_path / "one")
    two = fixture_folder("split", tmp_path / "two")
    (two / "plugin_settings.py").write_text(
        (two / "plugin_settings.py").read_text().replace("X-Test-User", "X-Second-User")
    )
    assert load_auth_plugin(folder=str(one)).getAuthHeader() == "X-Test-User"
    assert load_auth_plugin(folder=str(two)).getAuthHeader() == "X-Second-User"
    assert load_auth_plugin(folder=str(one)).getAuthHeader() == "X-Test-User"


def test_two_files_defining_one_function_name_both(tmp_path):
    folder = fixture_folder("clash", tmp_path)
    with pytest.raises(PluginError) as error:
        load_auth_plugin(folder=str(folder))
    message = str(error.value)
    assert "getAuthHeader" in message
    assert str(folder / "first.py") in message
    assert str(folder / "second.py") in message


def test_missing_functions_are_listed(tmp_path):
    folder = fixture_folder("incomplete", tmp_path)
    with pytest.raises(PluginError) as error:
        load_auth_plugin(folder=str(folder))
    message = str(error.value)
    lacking = message.split("lacks ")[1].split(" (")[0]
    assert lacking.split(", ") == [
        "processAuthUserInfo",
        "processAuthUserGroups",
        "configureAuthUser",
    ]
    assert str(folder) in message


def test_dns_plugin_missing_from_an_auth_folder_is_an_error(tmp_path):
    folder = fixture_folder("clash", tmp_path)
    (folder / "second.py").unlink()
    with pytest.raises(PluginError, match="dnsDisplayName, createDnsEntry, deleteDnsEntry"):
        load_dns_plugin(folder=str(folder))


def test_import_failure_carries_the_traceback(tmp_path):
    folder = fixture_folder("broken", tmp_path)
    shutil.copy(FIXTURES / "clash" / "first.py", folder / "good.py")  # a complete plugin
    with pytest.raises(PluginError) as error:
        load_auth_plugin(folder=str(folder))
    message = str(error.value)
    assert str(folder / "bad.py") in message
    assert "Traceback" in message
    assert "RuntimeError: boom: the directory is down" in message
    assert "_connect()" in message  # the failing line, from the traceback

    # once the file is fixed, loading again imports the folder afresh
    (folder / "bad.py").write_text("VALUE = 1\n")
    assert load_auth_plugin(folder=str(folder)).getAuthHeader() == "REMOTE_USER"


@pytest.mark.parametrize("bits", [0o020, 0o002], ids=["group", "world"])
@pytest.mark.parametrize(
    "target, kind",
    [(".", "auth"), ("names.py", "auth"), ("plugin_settings.py", "auth"), ("dns.py", "dns")],
    ids=["folder", "plugin-file", "settings", "dns-file"],
)
def test_plugins_others_may_write_are_refused(tmp_path, target, kind, bits):
    folder = fixture_folder("split", tmp_path)
    path = (folder / target).resolve()
    mode = path.stat().st_mode
    path.chmod(mode | bits)
    load = load_auth_plugin if kind == "auth" else load_dns_plugin
    with pytest.raises(PluginError) as error:
        load(folder=str(folder))
    message = str(error.value)
    assert f"{path} (" in message
    assert "can be written by their group or by everyone" in message
    assert "chmod go-w" in message
    assert not (folder / "imports.log").exists()  # nothing ran

    path.chmod(mode)  # fixed: the folder loads
    assert load(folder=str(folder)).source


def test_every_loose_plugin_file_is_named(tmp_path):
    folder = fixture_folder("split", tmp_path)
    for name in ("details.py", "dns.py"):
        (folder / name).chmod(0o666)
    with pytest.raises(PluginError) as error:
        load_auth_plugin(folder=str(folder))
    message = str(error.value)
    assert f"{folder.resolve() / 'details.py'} (-rw-rw-rw-)" in message
    assert f"{folder.resolve() / 'dns.py'} (-rw-rw-rw-)" in message
    assert str(folder.resolve() / "names.py") not in message


def test_an_endpoint_that_is_not_a_function_is_an_error(tmp_path):
    folder = tmp_path / "notfunc"
    folder.mkdir()
    source = (FIXTURES / "clash" / "first.py").read_text()
    (folder / "plugin.py").write_text(source + "\ncleanAuthUsername = 'oops'\n")
    with pytest.raises(PluginError, match=r"cleanAuthUsername in .*plugin.py is a str"):
        load_auth_plugin(folder=str(folder))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({}, "no auth plugin configured: set MLiyAuthenticator.plugin_folder"),
        ({"folder": "/nonexistent/plugins"}, "/nonexistent/plugins does not exist"),
        ({"folder": "/tmp", "name": "ldap"}, "not both"),
    ],
    ids=["nothing", "missing-folder", "both"],
)
def test_bad_auth_configuration(kwargs, match):
    with pytest.raises(PluginError, match=match):
        load_auth_plugin(**kwargs)


def test_empty_folder_lacks_everything(tmp_path):
    with pytest.raises(PluginError, match="lacks getAuthHeader, processAuthUserInfo"):
        load_auth_plugin(folder=str(tmp_path))


def test_default_dns_plugin_is_the_no_op():
    plugin = load_dns_plugin()
    assert plugin is NOOP_DNS_PLUGIN
    assert plugin.dnsDisplayName("alice") is None
    assert plugin.createDnsEntry("alice", "10.0.0.1") is None
    assert set(plugin.sources) == set(DNS_FUNCTIONS)


# --- loading from entry points -----------------------------------------------------------


@pytest.fixture
def entry_point_path(tmp_path, monkeypatch):
    folder = fixture_folder("entrypoint", tmp_path)
    monkeypatch.syspath_prepend(str(folder))
    return folder


def test_entry_point_plugins_by_name(entry_point_path):
    auth = load_auth_plugin(name="test-sso")
    assert auth.getAuthHeader() == "X-Ep-User"
    assert auth.processAuthUserGroups({}) == ["ep-group"]
    assert auth.source == "entry point mliy_spawner.auth_plugins:test-sso = mliy_test_ep"
    dns = load_dns_plugin(name="test-dns")
    assert dns.dnsDisplayName("x") is None
    assert "mliy_spawner.dns_plugins:test-dns" in dns.source


def test_unknown_entry_point_lists_the_installed_ones(entry_point_path):
    with pytest.raises(PluginError) as error:
        load_auth_plugin(name="no-such-plugin")
    assert "'no-such-plugin'" in str(error.value)
    assert "test-sso" in str(error.value)


def test_entry_point_that_fails_to_load(entry_point_path):
    with pytest.raises(PluginError) as error:
        load_dns_plugin(name="broken-dns")
    assert "Traceback" in str(error.value)
    assert "mliy_test_ep_missing_module" in str(error.value)


def test_entry_point_name_claimed_twice(tmp_path, monkeypatch):
    for dist_name, module in [("first-sso", "first_sso"), ("second-sso", "second_sso")]:
        dist = tmp_path / dist_name / f"{module}-1.0.dist-info"
        dist.mkdir(parents=True)
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: 1.0\n")
        (dist / "entry_points.txt").write_text(f"[mliy_spawner.auth_plugins]\ndup = {module}\n")
        monkeypatch.syspath_prepend(str(tmp_path / dist_name))
    with pytest.raises(PluginError) as error:
        load_auth_plugin(name="dup")
    assert "'first_sso' (from first-sso)" in str(error.value)
    assert "'second_sso' (from second-sso)" in str(error.value)


def test_entry_point_missing_functions(tmp_path, monkeypatch):
    folder = tmp_path / "ep"
    dist = folder / "half-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: half\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[mliy_spawner.dns_plugins]\nhalf = half_dns\n")
    (folder / "half_dns.py").write_text("def dnsDisplayName(name):\n    return None\n")
    monkeypatch.syspath_prepend(str(folder))
    with pytest.raises(PluginError, match="lacks createDnsEntry, deleteDnsEntry"):
        load_dns_plugin(name="half")


# --- running DNS plugins -----------------------------------------------------------------


async def test_run_dns_success_and_failure(tmp_path, caplog):
    folder = fixture_folder("split", tmp_path)
    plugin = load_dns_plugin(folder=str(folder))
    module_records = plugin.createDnsEntry.__globals__["RECORDS"]
    assert await run_dns(plugin, "create", "alice", "10.0.0.5", log) is None
    assert module_records == {"alice": "10.0.0.5"}
    assert await run_dns(plugin, "delete", "alice", "10.0.0.5", log) is None
    assert module_records == {}

    with caplog.at_level(logging.WARNING, logger="mliy.test"):
        message = await run_dns(plugin, "create", "alice", "192.0.2.99", log)
    assert "DNS create for alice failed" in message
    assert "ConnectionError: the DNS service is unreachable" in message
    assert "reached by its IP address" in message
    logged = [r for r in caplog.records if r.name == "mliy.test"]
    assert len(logged) == 1 and logged[0].exc_info[0] is ConnectionError
    assert "DNS create for alice (192.0.2.99) failed" in logged[0].getMessage()


async def test_run_dns_time_limit(tmp_path):
    plugin, release = dns_plugin_with_event(tmp_path, "slow", "    EVENT.wait(60)\n")
    try:
        message = await run_dns(plugin, "create", "alice", "10.0.0.5", log, time_limit=0.2)
        # the answer came while the call still hangs in its thread
        assert not release.is_set()
    finally:
        release.set()
    assert message == (
        "DNS create for alice did not finish within 0.2 s; the server is reached by its IP address"
    )


async def test_run_dns_rejects_unknown_actions():
    with pytest.raises(ValueError, match="'upsert' is not one of create, delete"):
        await run_dns(NOOP_DNS_PLUGIN, "upsert", "alice", "10.0.0.5", log)


async def test_run_dns_does_not_block_the_loop(tmp_path):
    # the plugin waits for the event loop to run a coroutine: on the loop itself it
    # would wait in vain and fail
    plugin, loop_ran = dns_plugin_with_event(
        tmp_path,
        "blocking",
        "    if not EVENT.wait(10):\n"
        "        raise RuntimeError('the event loop did not run meanwhile')\n",
    )

    async def on_the_loop():
        await asyncio.sleep(0.05)
        loop_ran.set()

    task = asyncio.create_task(on_the_loop())
    assert await run_dns(plugin, "create", "alice", "10.0.0.5", log) is None
    await task


def test_dns_display_name_falls_back_to_the_ip(tmp_path):
    assert dns_display_name(NOOP_DNS_PLUGIN, "alice", "10.0.0.5", log) == "10.0.0.5"
    folder = fixture_folder("split", tmp_path)
    plugin = load_dns_plugin(folder=str(folder))
    assert dns_display_name(plugin, "alice", "10.0.0.5", log) == "alice.nb.example.test"
    failing = DnsPlugin(
        dnsDisplayName=lambda name: 1 / 0,
        createDnsEntry=plugin.createDnsEntry,
        deleteDnsEntry=plugin.deleteDnsEntry,
    )
    assert dns_display_name(failing, "alice", "10.0.0.5", log) == "10.0.0.5"
    empty = DnsPlugin(lambda name: "", plugin.createDnsEntry, plugin.deleteDnsEntry)
    assert dns_display_name(empty, "alice", "10.0.0.5", log) == "10.0.0.5"


def pair_hash(user_name, server_name):
    return hashlib.sha256(f"{user_name}\0{server_name}".encode()).hexdigest()[:16]


@pytest.mark.parametrize(
    "user_name, server_name, readable",
    [
        ("alice", "", "alice"),
        ("alice", "gpu", "alice-gpu"),
        ("bob2", "x-1", "bob2-x-1"),
    ],
    ids=["default-server", "named-server", "digits-and-dashes"],
)
def test_dns_label_is_the_names_then_the_pair_hash(user_name, server_name, readable):
    label = dns_label(user_name, server_name)
    assert label == f"{readable}-{pair_hash(user_name, server_name)}"


@pytest.mark.parametrize(
    "user_name, server_name",
    [
        ("Alice", ""),
        ("alice.smith", "gpu"),
        ("alice", "GPU"),
        ("jdoe@corp.example.com", ""),
        ("x" * 64, ""),
        ("alice", "a" * 70),
        ("-alice-", ""),
        ("@@", ""),
    ],
    ids=[
        "upper",
        "dot",
        "upper-server",
        "email",
        "64-chars",
        "long-server",
        "dashes",
        "no-letters",
    ],
)
def test_dns_label_of_other_names_is_a_hashed_label(user_name, server_name):
    label = dns_label(user_name, server_name)
    assert 0 < len(label) <= 40  # room for a DNS plugin's prefix within 63
    assert label.endswith(pair_hash(user_name, server_name))
    assert "--" not in label
    assert set(label) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")
    assert not label.startswith("-") and not label.endswith("-")
    assert dns_label(user_name, server_name) == label  # stable


def test_dns_label_tells_similar_names_apart():
    # user "bob-smith"'s default server and user "bob"'s server "smith" read alike
    names = [
        ("alice", "gpu"),
        ("alice-gpu", ""),
        ("Alice", "gpu"),
        ("alice.gpu", ""),
        ("alice", ""),
        ("ALICE", ""),
        ("bob-smith", ""),
        ("bob", "smith"),
        ("bob", "smith-"),
        ("a-b", "c"),
        ("a", "b-c"),
    ]
    labels = [dns_label(user, server) for user, server in names]
    assert len(set(labels)) == len(names)
    assert dns_label("Alice", "gpu").startswith("alice-gpu-")  # readable, then the hash
    assert dns_label("bob", "smith").startswith("bob-smith-")


# --- distinguished names -----------------------------------------------------------------


@pytest.mark.parametrize(
    "dn, expected",
    [
        ("CN=data,OU=Groups,DC=corp", [[("CN", "data")], [("OU", "Groups")], [("DC", "corp")]]),
        (r"CN=Smith\, John,DC=corp", [[("CN", "Smith, John")], [("DC", "corp")]]),
        (r"CN=Smith\2C John,DC=corp", [[("CN", "Smith, John")], [("DC", "corp")]]),
        (r"CN=caf\C3\A9,DC=x", [[("CN", "café")], [("DC", "x")]]),
        ('CN="a,b;c",DC=x', [[("CN", "a,b;c")], [("DC", "x")]]),
        ("CN=a+UID=7,DC=x", [[("CN", "a"), ("UID", "7")], [("DC", "x")]]),
        (r"CN=trail\ ,DC=x", [[("CN", "trail ")], [("DC", "x")]]),
        ("cn = spaced , dc = x", [[("cn", "spaced")], [("dc", "x")]]),
        (r"CN=a\+b\=c\\d,DC=x", [[("CN", "a+b=c\\d")], [("DC", "x")]]),
    ],
    ids=[
        "plain",
        "escaped-comma",
        "hex-comma",
        "utf8-hex",
        "quoted",
        "multi-valued",
        "escaped-space",
        "spaces",
        "escapes",
    ],
)
def test_parse_dn(dn, expected):
    assert parse_dn(dn) == expected


@pytest.mark.parametrize(
    "dn, match",
    [
        ("garbage", "missing '='"),
        ("CN=a,,DC=x", "unexpected ','"),
        ("CN=a,", "missing '='"),
        ("=a", "empty attribute name"),
        ("CN=a\\", "lone backslash"),
        (r"CN=\FF\FE", "not UTF-8"),
        ('CN="open', "unterminated"),
        ('CN=a"b', "unescaped"),
        ('CN="a"b', "after a quoted value"),
    ],
)
def test_parse_dn_rejects(dn, match):
    with pytest.raises(ValueError, match=match):
        parse_dn(dn)


def test_split_dn_list_keeps_escaped_separators():
    value = "CN=a\\;b,DC=x; CN=c,DC=x\r\nCN=d,DC=x\n\n;;"
    assert split_dn_list(value) == ["CN=a\\;b,DC=x", "CN=c,DC=x", "CN=d,DC=x"]


def test_cn_groups_from_hostile_member_of(caplog):
    value = ";".join(
        [
            "CN=data-science,OU=Groups,DC=corp",
            "CN=hub-admins,CN=Users,DC=corp",  # the container's CN is not a group
            r"CN=Smith\, John's team,OU=Groups,DC=corp",
            "OU=NotAGroup,DC=corp",
            "CN=,DC=corp",
            "total garbage",
            "CN=data-science,OU=Elsewhere,DC=corp",  # duplicate name
            "CN=<script>alert(1)</script>,DC=corp",
        ]
    )
    with caplog.at_level(logging.WARNING, logger="mliy.test"):
        groups = cn_groups(value, log)
    assert groups == [
        "data-science",
        "hub-admins",
        "Smith, John's team",
        "<script>alert(1)</script>",  # text; JupyterHub's pages escape it
    ]
    assert len([r for r in caplog.records if r.name == "mliy.test"]) == 3
    assert cn_groups("") == []
    assert cn_groups(None) == []


def test_cn_groups_drops_repeats_and_keeps_the_first_order():
    # how fast this is at 20,000 groups: benchmarks/groups.py
    names = ["b", "a", "b", "c", "a", "B"]
    value = ";".join(f"CN={name},OU=Groups,DC=corp" for name in names)
    assert cn_groups(value, log) == ["b", "a", "c", "B"]


def test_dn_groups_under_a_base_dn(caplog):
    value = ";".join(
        [
            "CN=data,OU=Groups,DC=corp",
            "CN=hub-admins,OU=users-own,DC=corp",  # another branch: not a group here
            "cn=Data,ou=groups,dc=CORP",  # the same entry spelled otherwise: kept once
            r"CN=Smith\, John,OU=Groups,DC=corp",
            "CN=a+UID=7,OU=Groups,DC=corp",  # multi-valued: refused
            "OU=Sub,OU=Groups,DC=corp",  # not a CN
            "garbage",
        ]
    )
    with caplog.at_level(logging.WARNING, logger="mliy.test"):
        groups = dn_groups(value, "OU=Groups,DC=corp", log)
    assert groups == ["data", "Data", "Smith, John"]
    assert len([r for r in caplog.records if r.name == "mliy.test"]) == 3
    assert dn_groups("", "OU=Groups,DC=corp") == []


def test_dn_groups_without_a_base_dn_are_full_dns():
    value = r"CN=data,OU=Groups,DC=corp;cn = data , ou=groups,dc=corp;CN=a\,b+UID=7,DC=x"
    assert dn_groups(value, None, log) == ["cn=data,ou=Groups,dc=corp", r"cn=a\,b+uid=7,dc=x"]


@pytest.mark.parametrize(
    "dn",
    [r"CN=\ a\,b\+c\\d\"\<\>\;\=#x\ ,DC=x", r"CN=\#a,DC=x", "CN=a\\00b,DC=x", "CN=café,DC=x"],
    ids=["specials", "hash", "nul", "utf8"],
)
def test_format_dn_round_trips(dn):
    rdns = parse_dn(dn)
    assert dn_key(format_dn(rdns)) == dn_key(dn)
    assert parse_dn(format_dn(rdns))[0][0][1] == rdns[0][0][1]


def test_dn_key_ignores_case_and_spaces():
    assert dn_key("CN=Hub-Admins, OU=Groups,DC=corp") == dn_key("cn=hub-admins,ou=groups,dc=CORP")
    assert dn_key("CN=hub-admins,OU=Groups,DC=corp") != dn_key("CN=hub-admins,OU=own,DC=corp")


@pytest.mark.parametrize(
    "base_dn, match",
    [
        ("ou=a,,dc=x", "is not a DN"),
        ([], "is \\[\\]; use a DN"),
        (7, "is 7; use a DN"),
        ([7], "7 is not text"),
    ],
)
def test_base_dn_keys_names_the_setting(base_dn, match):
    with pytest.raises(ValueError, match="^THE_SETTING .*" + match):
        base_dn_keys(base_dn, "THE_SETTING")


def test_header_text_and_email():
    h = headers(
        ("Name", "  Ada\u200d \tLove\x00lace\r\n "),
        ("Long", "x" * 1000),
        ("Mail", "ada@example.com"),
        ("BadMail", "ada@example.com<script>"),
    )
    assert header_text(h, "Name") == "Ada Lovelace"
    assert header_text(h, "Long") == "x" * 256
    assert header_text(h, "Missing") == ""
    assert header_email(h, "Mail") == "ada@example.com"
    assert header_email(h, "BadMail") == ""


# --- the sample auth plugins ------------------------------------------------------------


def test_ldap_sample(tmp_path):
    folder = sample_folder(tmp_path, "ldap.py", settings='AUTH_GROUP_BASE_DN = "OU=G,DC=x"\n')
    plugin = load_auth_plugin(folder=str(folder))
    assert plugin.getAuthHeader() == "REMOTE_USER"
    h = headers(
        ("REMOTE_USER", " jdoe "),
        ("AUTHENTICATE_GIVENNAME", "Jos\xc3\xa9"),  # UTF-8 bytes as tornado gives them
        ("AUTHENTICATE_SN", "Doe\u202e\x07"),
        ("AUTHENTICATE_MAIL", "jdoe@example.com"),
        ("AUTHORIZE_MEMBEROF", "CN=a,OU=G,DC=x;CN=Smith\\, J,OU=G,DC=x\nCN=b,DC=x"),
    )
    assert plugin.cleanAuthUsername(h["REMOTE_USER"]) == "jdoe"
    assert plugin.processAuthUserInfo(h) == {
        "first_name": "José",
        "last_name": "Doe",
        "display_name": "José Doe",
        "email": "jdoe@example.com",
    }
    assert plugin.processAuthUserGroups(h) == ["a", "Smith, J"]  # CN=b is not under OU=G
    assert plugin.configureAuthUser({"name": "jdoe"}) is None


def test_ldap_sample_hostile_and_missing_headers(tmp_path):
    plugin = load_auth_plugin(folder=str(sample_folder(tmp_path, "ldap.py")))
    h = headers(
        ("REMOTE_USER", "x"),
        ("AUTHENTICATE_MAIL", "not-an-address"),
        ("AUTHENTICATE_MEMBEROF", "CN=fallback,DC=x;\\"),
    )
    info = plugin.processAuthUserInfo(h)
    assert info == {"first_name": "", "last_name": "", "display_name": "", "email": ""}
    assert plugin.processAuthUserGroups(h) == ["cn=fallback,dc=x"]  # no base DN: full DNs
    assert plugin.processAuthUserGroups(headers(("REMOTE_USER", "x"))) == []


def test_ldap_sample_group_pattern(tmp_path):
    settings = 'AUTH_GROUP_PATTERN = r"^jupyter-"\nAUTH_GROUP_BASE_DN = "DC=x"\n'
    folder = sample_folder(tmp_path, "ldap.py", settings=settings)
    plugin = load_auth_plugin(folder=str(folder))
    h = headers(("AUTHORIZE_MEMBEROF", "CN=jupyter-gpu,DC=x;CN=payroll,DC=x;CN=x-jupyter-,DC=x"))
    assert plugin.processAuthUserGroups(h) == ["jupyter-gpu"]


ISSO_SETTINGS = 'ISSO_ALLOWED_DOMAINS = ["Corp.Example.com.", "partner.example.com"]\n'


def isso_plugin(tmp_path, settings=ISSO_SETTINGS):
    return load_auth_plugin(folder=str(sample_folder(tmp_path, "isso.py", settings=settings)))


@pytest.mark.parametrize(
    "upn, expected",
    [
        ("alice@corp.example.com", "alice"),  # the primary domain is dropped
        ("  Alice@CORP.example.COM ", "Alice"),
        ("alice@partner.example.com", "alice@partner.example.com"),  # others stay
        ("alice@Partner.Example.com.", "alice@partner.example.com"),
        ("../x@corp.example.com", "../x"),  # the authenticator's name rule refuses it
    ],
)
def test_isso_sample_names(tmp_path, upn, expected):
    assert isso_plugin(tmp_path).cleanAuthUsername(upn) == expected


@pytest.mark.parametrize(
    "upn, match",
    [
        ("alice@evil.example.com", "domain 'evil.example.com' cannot sign in"),
        ("alice@corp.example.com.evil", "domain 'corp.example.com.evil' cannot sign in"),
        ("alice@example.com", "domain 'example.com' cannot sign in"),
        ("alice", "not of the form user@domain"),
        ("@corp.example.com", "not of the form user@domain"),
        ("alice@partner.example.com@corp.example.com", "not of the form user@domain"),
        ("alice@", "not of the form user@domain"),
    ],
    ids=["other-domain", "suffixed", "parent-domain", "no-domain", "no-user", "two-at", "empty"],
)
def test_isso_sample_refuses_other_domains(tmp_path, upn, match):
    with pytest.raises(PermissionError, match=match) as error:
        isso_plugin(tmp_path).cleanAuthUsername(upn)
    assert "corp.example.com, partner.example.com" in str(error.value)


def test_isso_sample_keeps_users_of_two_domains_apart(tmp_path):
    plugin = isso_plugin(tmp_path)
    upns = ["alice@corp.example.com", "alice@partner.example.com"]
    assert len({plugin.cleanAuthUsername(upn) for upn in upns}) == 2


@pytest.mark.parametrize(
    "settings, match",
    [
        ("", "ISSO_ALLOWED_DOMAINS is None; list the domains"),
        ("ISSO_ALLOWED_DOMAINS = []\n", "ISSO_ALLOWED_DOMAINS is \\[\\]; list the domains"),
        ("ISSO_ALLOWED_DOMAINS = 'corp.example.com'\n", "is 'corp.example.com'; list"),
        ("ISSO_ALLOWED_DOMAINS = ['bad domain']\n", "holds 'bad domain', which is not"),
        ("ISSO_ALLOWED_DOMAINS = [None]\n", "holds None, which is not"),
    ],
    ids=["missing", "empty", "text", "bad-domain", "not-text"],
)
def test_isso_sample_needs_allowed_domains(tmp_path, settings, match):
    with pytest.raises(PluginError, match=match):
        isso_plugin(tmp_path, settings)


def test_isso_sample_details(tmp_path):
    settings = ISSO_SETTINGS + 'AUTH_GROUP_BASE_DN = "OU=Groups,DC=corp"\n'
    plugin = isso_plugin(tmp_path, settings)
    assert plugin.getAuthHeader() == "USERPRINCIPALNAME"
    h = headers(
        ("USERPRINCIPALNAME", "alice@corp.example.com"),
        ("CTFIRSTNAME", "Alice"),
        ("CTLASTNAME", "Liddell\n"),
        ("CTEMAIL", "alice@corp.example.com"),
        ("MEMBEROF", "CN=research,OU=Groups,DC=corp;CN=research,DC=other;OU=x"),
    )
    assert plugin.processAuthUserInfo(h) == {
        "first_name": "Alice",
        "last_name": "Liddell",
        "display_name": "Alice Liddell",
        "email": "alice@corp.example.com",
        "user_principal_name": "alice@corp.example.com",
    }
    assert plugin.processAuthUserGroups(h) == ["research"]


ADMINS = "CN=hub-admins,OU=Groups,DC=corp,DC=example"
LOOK_ALIKE = "CN=hub-admins,OU=users-own,DC=corp,DC=example"


@pytest.mark.parametrize(
    "sample, header", [("ldap.py", "AUTHORIZE_MEMBEROF"), ("isso.py", "MEMBEROF")]
)
@pytest.mark.parametrize(
    "base_dn, member_of, groups",
    [
        ("OU=Groups,DC=corp,DC=example", [ADMINS], ["hub-admins"]),
        ("ou=groups, dc=CORP,dc=example", [ADMINS], ["hub-admins"]),  # spelled otherwise
        ("OU=Groups,DC=corp,DC=example", [LOOK_ALIKE], []),
        ("OU=Groups,DC=corp,DC=example", [LOOK_ALIKE, ADMINS], ["hub-admins"]),
        ("OU=Groups,DC=corp,DC=example", ["CN=hub-admins,OU=x,OU=Groups,DC=corp,DC=example"], []),
        (
            ["OU=Groups,DC=corp,DC=example", "OU=Teams,DC=corp,DC=example"],
            [LOOK_ALIKE, "CN=gpu,OU=Teams,DC=corp,DC=example"],
            ["gpu"],
        ),
        (
            None,
            [LOOK_ALIKE, ADMINS],
            [
                "cn=hub-admins,ou=users-own,dc=corp,dc=example",
                "cn=hub-admins,ou=Groups,dc=corp,dc=example",
            ],
        ),
    ],
    ids=["base", "base-spelling", "elsewhere", "both", "deeper", "two-bases", "no-base"],
)
def test_sample_groups_under_the_base_dn_only(tmp_path, sample, header, base_dn, member_of, groups):
    settings = f"AUTH_GROUP_BASE_DN = {base_dn!r}\n" + ISSO_SETTINGS
    plugin = load_auth_plugin(folder=str(sample_folder(tmp_path, sample, settings=settings)))
    assert plugin.processAuthUserGroups(headers((header, ";".join(member_of)))) == groups


@pytest.mark.parametrize("sample", ["ldap.py", "isso.py"])
def test_sample_with_a_bad_base_dn_stops_the_hub(tmp_path, sample):
    settings = 'AUTH_GROUP_BASE_DN = "ou=groups,,dc=x"\n' + ISSO_SETTINGS
    with pytest.raises(PluginError, match="AUTH_GROUP_BASE_DN 'ou=groups,,dc=x' is not a DN"):
        load_auth_plugin(folder=str(sample_folder(tmp_path, sample, settings=settings)))


def test_ldap_and_isso_in_one_folder_clash(tmp_path):
    # both define the auth functions: a folder holds one auth plugin
    folder = sample_folder(tmp_path, "ldap.py", "isso.py", settings=ISSO_SETTINGS)
    with pytest.raises(PluginError) as error:
        load_auth_plugin(folder=str(folder))
    for name in AUTH_FUNCTIONS:
        assert f"{name} is defined in two files, {folder / 'isso.py'} and {folder / 'ldap.py'}" in (
            str(error.value)
        )
