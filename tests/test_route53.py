"""The route53 sample DNS plugin against moto's Route 53 (``mock_aws``).

Each test copies ``plugins/route53.py`` into its own folder with its own
``plugin_settings.py``, so every test imports a fresh copy (own client, own zone cache).
"""

import collections
import logging
import shutil

import pytest
from moto import mock_aws

from mliy_spawner.assets import asset_dir
from mliy_spawner.aws import make_client
from mliy_spawner.plugins import PluginError, dns_label, load_dns_plugin, run_dns

ZONE = "nb.example.test"
log = logging.getLogger("mliy.test")


def route53_folder(tmp_path, **settings):
    folder = tmp_path / "dns"
    folder.mkdir(parents=True)
    shutil.copy(asset_dir("plugins") / "route53.py", folder / "route53.py")
    values = {"ROUTE53_ZONE_NAME": ZONE, "ROUTE53_TTL": 120, **settings}
    text = "".join(f"{key} = {value!r}\n" for key, value in values.items())
    (folder / "plugin_settings.py").write_text(text)
    return folder


@pytest.fixture
def route53():
    with mock_aws():
        client = make_client("route53", "us-east-1")
        client.create_hosted_zone(Name=ZONE, CallerReference="zone-1")
        yield client


def zone_id(client, name=ZONE):
    zones = client.list_hosted_zones_by_name(DNSName=name)["HostedZones"]
    return zones[0]["Id"].rsplit("/", 1)[-1]


def records(client, zone=None):
    """{(name, type): (ttl, [values])} of the zone's records other than NS/SOA."""
    listed = client.list_resource_record_sets(HostedZoneId=zone or zone_id(client))
    return {
        (r["Name"], r["Type"]): (r["TTL"], [v["Value"] for v in r["ResourceRecords"]])
        for r in listed["ResourceRecordSets"]
        if r["Type"] not in ("NS", "SOA")
    }


def test_create_update_delete(route53, tmp_path):
    plugin = load_dns_plugin(folder=str(route53_folder(tmp_path)))
    assert plugin.dnsDisplayName("alice") == f"mliy-alice.{ZONE}"

    plugin.createDnsEntry("alice", "10.0.0.5")  # start
    plugin.createDnsEntry("bob", "10.0.0.6")
    assert records(route53) == {
        (f"mliy-alice.{ZONE}.", "A"): (120, ["10.0.0.5"]),
        (f"mliy-bob.{ZONE}.", "A"): (120, ["10.0.0.6"]),
    }
    plugin.createDnsEntry("alice", "10.0.0.9")  # resume: a new address
    assert records(route53)[(f"mliy-alice.{ZONE}.", "A")] == (120, ["10.0.0.9"])

    plugin.deleteDnsEntry("alice", "10.0.0.9")  # stop
    assert records(route53) == {(f"mliy-bob.{ZONE}.", "A"): (120, ["10.0.0.6"])}
    plugin.deleteDnsEntry("alice", "10.0.0.9")  # delete_forever after a stop: nothing left
    plugin.deleteDnsEntry("carol", "10.0.0.7")  # never created
    plugin.deleteDnsEntry("bob", "10.0.0.6")
    assert records(route53) == {}


def test_delete_leaves_a_record_that_points_elsewhere(route53, tmp_path, caplog):
    plugin = load_dns_plugin(folder=str(route53_folder(tmp_path)))
    plugin.createDnsEntry("bob", "10.0.0.6")
    with caplog.at_level(logging.WARNING, logger="mliy.launch"):
        plugin.deleteDnsEntry("bob", "10.0.0.1")  # not this server's address any more
        plugin.deleteDnsEntry("bob", None)  # no address known: nothing to match
        plugin.deleteDnsEntry("bob", "fd00::6")  # no AAAA record
    assert records(route53) == {(f"mliy-bob.{ZONE}.", "A"): (120, ["10.0.0.6"])}
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name == "mliy.launch" and r.levelno >= logging.WARNING
    ]
    assert warnings == [
        f"DNS A mliy-bob.{ZONE}. left in place: it points at 10.0.0.6, not at this server's "
        "10.0.0.1",
        f"DNS mliy-bob.{ZONE}.: the server's address is unknown, so its record is left",
    ]
    with pytest.raises(ValueError, match="'bob': 'nowhere' is not an IP address"):
        plugin.deleteDnsEntry("bob", "nowhere")
    plugin.deleteDnsEntry("bob", "10.0.0.6")
    assert records(route53) == {}


def test_servers_whose_names_read_alike_keep_their_own_records(route53, tmp_path):
    # the spawner names a server's record by plugins.dns_label(user, server)
    plugin = load_dns_plugin(folder=str(route53_folder(tmp_path)))
    servers = {
        ("bob-smith", ""): "10.0.1.1",
        ("bob", "smith"): "10.0.1.2",
        ("alice", "gpu"): "10.0.1.3",
        ("alice-gpu", ""): "10.0.1.4",
        ("x" * 64, "y" * 100): "10.0.1.5",  # the longest label, 40 characters
    }
    label = {server: dns_label(*server) for server in servers}
    for server, ip in servers.items():
        plugin.createDnsEntry(label[server], ip)
    expected = {
        (f"mliy-{label[server]}.{ZONE}.", "A"): (120, [ip]) for server, ip in servers.items()
    }
    assert records(route53) == expected  # four records, each the label as given

    plugin.deleteDnsEntry(label[("bob", "smith")], "10.0.1.2")  # bob stops "smith"
    plugin.createDnsEntry(label[("alice", "gpu")], "10.0.1.9")  # alice resumes "gpu"
    del expected[(f"mliy-{label[('bob', 'smith')]}.{ZONE}.", "A")]
    expected[(f"mliy-{label[('alice', 'gpu')]}.{ZONE}.", "A")] = (120, ["10.0.1.9"])
    assert records(route53) == expected  # bob-smith's and alice-gpu's records untouched


def test_ipv6_gets_an_aaaa_record(route53, tmp_path):
    plugin = load_dns_plugin(folder=str(route53_folder(tmp_path)))
    plugin.createDnsEntry("alice", "fd00::5")
    assert records(route53) == {(f"mliy-alice.{ZONE}.", "AAAA"): (120, ["fd00::5"])}
    plugin.deleteDnsEntry("alice", "fd00::5")
    assert records(route53) == {}


async def test_run_dns_on_the_executor(route53, tmp_path):
    plugin = load_dns_plugin(folder=str(route53_folder(tmp_path)))
    assert await run_dns(plugin, "create", "alice", "10.0.0.5", log) is None
    assert records(route53) == {(f"mliy-alice.{ZONE}.", "A"): (120, ["10.0.0.5"])}
    assert await run_dns(plugin, "delete", "alice", "10.0.0.5", log) is None
    assert await run_dns(plugin, "delete", "alice", "10.0.0.5", log) is None
    assert records(route53) == {}


async def test_a_failing_dns_call_gives_a_message(route53, tmp_path, caplog):
    folder = route53_folder(tmp_path, ROUTE53_ZONE_NAME="missing.example.test")
    plugin = load_dns_plugin(folder=str(folder))
    with caplog.at_level(logging.WARNING, logger="mliy.test"):
        message = await run_dns(plugin, "create", "alice", "10.0.0.5", log)
    assert message == (
        "DNS create for alice failed (LookupError: Route 53 has no hosted zone named "
        "'missing.example.test'); the server is reached by its IP address"
    )
    assert [r.exc_info[0] for r in caplog.records if r.name == "mliy.test"] == [LookupError]
    assert records(route53) == {}


def test_zone_is_looked_up_once(route53, tmp_path):
    plugin = load_dns_plugin(folder=str(route53_folder(tmp_path)))
    client = plugin.createDnsEntry.__globals__["_route53"]()
    calls = collections.Counter()
    client.meta.events.register("before-call", lambda model, **kw: calls.update([model.name]))
    for ip in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        plugin.createDnsEntry("alice", ip)
    plugin.deleteDnsEntry("alice", "10.0.0.3")
    assert calls == {
        "ListHostedZonesByName": 1,
        "ChangeResourceRecordSets": 4,
        "ListResourceRecordSets": 1,
    }


def test_zone_id_setting_picks_one_of_two_zones(route53, tmp_path):
    ec2 = make_client("ec2", "us-east-1")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    route53.create_hosted_zone(
        Name=ZONE,
        CallerReference="zone-2",
        HostedZoneConfig={"PrivateZone": True, "Comment": "private"},
        VPC={"VPCRegion": "us-east-1", "VPCId": vpc},
    )
    zones = route53.list_hosted_zones_by_name(DNSName=ZONE)["HostedZones"]
    private = next(z for z in zones if z["Config"]["PrivateZone"])["Id"].rsplit("/", 1)[-1]

    ambiguous = load_dns_plugin(folder=str(route53_folder(tmp_path / "a")))
    with pytest.raises(
        LookupError, match="2 hosted zones named 'nb.example.test'.*ROUTE53_ZONE_ID"
    ):
        ambiguous.createDnsEntry("alice", "10.0.0.5")

    chosen = load_dns_plugin(folder=str(route53_folder(tmp_path / "b", ROUTE53_ZONE_ID=private)))
    chosen.createDnsEntry("alice", "10.0.0.5")
    assert records(route53, private) == {(f"mliy-alice.{ZONE}.", "A"): (120, ["10.0.0.5"])}


def test_wait_for_sync(route53, tmp_path):
    folder = route53_folder(tmp_path, ROUTE53_WAIT_FOR_SYNC=True)
    plugin = load_dns_plugin(folder=str(folder))
    client = plugin.createDnsEntry.__globals__["_route53"]()
    changes, waited_for = [], []
    client.meta.events.register(
        "after-call.route53.ChangeResourceRecordSets",
        lambda parsed, **kw: changes.append(parsed["ChangeInfo"]["Id"]),
    )
    client.meta.events.register(
        "provide-client-params.route53.GetChange",
        lambda params, **kw: waited_for.append(params["Id"]),
    )
    plugin.createDnsEntry("alice", "10.0.0.5")
    assert records(route53) == {(f"mliy-alice.{ZONE}.", "A"): (120, ["10.0.0.5"])}
    # the resource_record_sets_changed waiter asked about this very change
    assert len(changes) == 1 and waited_for
    assert {i.rsplit("/", 1)[-1] for i in waited_for} == {changes[0].rsplit("/", 1)[-1]}


@pytest.mark.parametrize(
    "instance_name",
    ["Alice.Smith", "a--b", "../x", "x" * 300, "ａｌｉｃｅ", "a b\n", "ǅ", "-lead", "*.evil"],
)
def test_hostile_instance_names_become_one_label_in_the_zone(route53, tmp_path, instance_name):
    plugin = load_dns_plugin(folder=str(route53_folder(tmp_path)))
    name = plugin.dnsDisplayName(instance_name)
    label, zone = name.split(".", 1)
    assert zone == ZONE
    assert label.startswith("mliy-") and len(label) <= 63
    assert set(label) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")
    assert "--" in label[len("mliy-") :]  # hashed, so it cannot equal a plain name
    plugin.createDnsEntry(instance_name, "10.0.0.5")
    assert list(records(route53)) == [(name + ".", "A")]


def test_similar_names_get_different_records(route53, tmp_path):
    plugin = load_dns_plugin(folder=str(route53_folder(tmp_path)))
    names = ["a-b", "a.b", "a_b", "A-B", "a-b--" + "0" * 16]
    assert len({plugin.dnsDisplayName(n) for n in names}) == len(names)


@pytest.mark.parametrize("instance_name", ["", None, 7])
def test_empty_instance_name_is_refused(route53, tmp_path, instance_name):
    plugin = load_dns_plugin(folder=str(route53_folder(tmp_path)))
    with pytest.raises(ValueError, match="is empty or not text"):
        plugin.createDnsEntry(instance_name, "10.0.0.5")


@pytest.mark.parametrize("ip", ["10.0.0.999", "10.0.0.5; rm -rf /", "", "mliy.example.com"])
def test_bad_addresses_are_refused(route53, tmp_path, ip):
    plugin = load_dns_plugin(folder=str(route53_folder(tmp_path)))
    with pytest.raises(ValueError, match=r"DNS record for 'alice': .* is not an IP address"):
        plugin.createDnsEntry("alice", ip)
    assert records(route53) == {}


@pytest.mark.parametrize(
    "settings, match",
    [
        ({"ROUTE53_ZONE_NAME": ""}, "ROUTE53_ZONE_NAME is ''; set it to the hosted zone"),
        ({"ROUTE53_ZONE_NAME": "bad zone!"}, "ROUTE53_ZONE_NAME 'bad zone!' is not a DNS name"),
        ({"ROUTE53_TTL": "60"}, "ROUTE53_TTL is '60'; use a number of seconds"),
        ({"ROUTE53_NAME_PATTERN": "{instance_name}.other.test"}, "outside the zone"),
        ({"ROUTE53_NAME_PATTERN": "{user}.{zone}"}, r"may use \{instance_name\} and \{zone\}"),
        ({"ROUTE53_NAME_PATTERN": "{instance_name}" + "x" * 40 + ".{zone}"}, "1 to 63"),
    ],
    ids=["no-zone", "bad-zone", "ttl-text", "outside-zone", "unknown-field", "long-label"],
)
def test_bad_settings_fail_at_load(tmp_path, settings, match):
    with pytest.raises(PluginError, match=match):
        load_dns_plugin(folder=str(route53_folder(tmp_path, **settings)))


def test_shipped_settings_ask_for_a_zone(tmp_path):
    folder = tmp_path / "shipped"
    folder.mkdir()
    for name in ("route53.py", "plugin_settings.py"):
        shutil.copy(asset_dir("plugins") / name, folder / name)
    with pytest.raises(PluginError, match="ROUTE53_ZONE_NAME is ''"):
        load_dns_plugin(folder=str(folder))
