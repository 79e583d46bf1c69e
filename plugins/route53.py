"""DNS plugin: one Route 53 record per notebook server (MLiy's dns plugin, for JupyterHub).

``createDnsEntry`` UPSERTs an A record (AAAA for an IPv6 address) named by
``plugin_settings.ROUTE53_NAME_PATTERN`` (default ``mliy-{instance_name}.{zone}``) in the
hosted zone ``ROUTE53_ZONE_NAME``; ``deleteDnsEntry`` deletes the server's record only
while it still points at the address it is given, and does nothing when there is none.
Both are idempotent and blocking: the spawner runs them on its executor.

Instance names become one DNS label. The spawner passes
:func:`mliy_spawner.plugins.dns_label` of the (user, server) pair, already a label of at
most 40 characters that is unique per pair (``bob-smith-<16 hex>``); such a name is used
as is, never re-mangled. Any other name (a longer or non-label one) is cut down to
letters, digits and ``-`` and followed by ``--`` and a hash of the full name
(``Alice.Smith`` -> ``alice-smith--<16 hex>``); a plain label never holds ``--``, so the
two kinds never meet and two instance names never share a record.

The hub needs ``route53:ListHostedZonesByName``, ``route53:ListResourceRecordSets``,
``route53:ChangeResourceRecordSets`` (and ``route53:GetChange`` with
``ROUTE53_WAIT_FOR_SYNC``) on the zone.
"""

import hashlib
import ipaddress
import logging
import re
import threading

import plugin_settings

from mliy_spawner.aws import make_client

log = logging.getLogger("mliy.launch")


def _setting(name, default):
    return getattr(plugin_settings, name, default)


def _zone_name(value):
    if not isinstance(value, str) or not value.strip(". "):
        raise ValueError(
            f"plugin_settings.ROUTE53_ZONE_NAME is {value!r}; set it to the hosted zone "
            "that receives the servers' records, e.g. 'notebooks.example.com'"
        )
    zone = value.strip().rstrip(".").lower()
    if not re.fullmatch(r"([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9-]{1,63}", zone):
        raise ValueError(f"plugin_settings.ROUTE53_ZONE_NAME {value!r} is not a DNS name")
    return zone


def _ttl(value):
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 2147483647:
        raise ValueError(
            f"plugin_settings.ROUTE53_TTL is {value!r}; use a number of seconds, e.g. 60"
        )
    return value


ZONE_NAME = _zone_name(_setting("ROUTE53_ZONE_NAME", ""))
ZONE_ID = _setting("ROUTE53_ZONE_ID", None)
NAME_PATTERN = _setting("ROUTE53_NAME_PATTERN", "mliy-{instance_name}.{zone}")
TTL = _ttl(_setting("ROUTE53_TTL", 60))
REGION = _setting("ROUTE53_REGION", "us-east-1")
ENDPOINT_URL = _setting("ROUTE53_ENDPOINT_URL", None)
WAIT_FOR_SYNC = bool(_setting("ROUTE53_WAIT_FOR_SYNC", False))

# a short lower-case label without "--" passes unchanged; hashed labels always hold "--"
_PLAIN_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?")
_HASH_HEX = 16  # 64 bits: nobody can pick a server name that lands on another's record


def dns_label(instance_name):
    """The instance name as one DNS label (see the module docstring)."""
    if not isinstance(instance_name, str) or not instance_name:
        raise ValueError(f"instance name {instance_name!r} is empty or not text")
    if _PLAIN_LABEL.fullmatch(instance_name) and "--" not in instance_name:
        return instance_name
    digest = hashlib.sha256(instance_name.encode("utf-8")).hexdigest()[:_HASH_HEX]
    base = re.sub(r"[^a-z0-9]+", "-", instance_name.lower()).strip("-")[:20].strip("-")
    return f"{base}--{digest}" if base else f"x--{digest}"


def record_name(instance_name):
    """The record's full name, without the trailing dot."""
    name = NAME_PATTERN.format(instance_name=dns_label(instance_name), zone=ZONE_NAME)
    name = name.rstrip(".").lower()
    labels = name.split(".")
    if len(name) > 253 or any(not 0 < len(label) <= 63 for label in labels):
        raise ValueError(
            f"plugin_settings.ROUTE53_NAME_PATTERN {NAME_PATTERN!r} gives {name!r} for "
            f"{instance_name!r}: DNS labels hold 1 to 63 characters, names at most 253"
        )
    if not name.endswith("." + ZONE_NAME) and name != ZONE_NAME:
        raise ValueError(
            f"plugin_settings.ROUTE53_NAME_PATTERN {NAME_PATTERN!r} gives {name!r}, "
            f"which is outside the zone {ZONE_NAME!r}; end the pattern with '.{{zone}}'"
        )
    return name


try:  # check the pattern once, at import, with the longest label dns_label makes
    record_name("x" * 60)
except (KeyError, IndexError, ValueError) as e:
    raise ValueError(
        f"plugin_settings.ROUTE53_NAME_PATTERN {NAME_PATTERN!r} does not work ({e!r}); it "
        "may use {instance_name} and {zone}, e.g. 'mliy-{instance_name}.{zone}'"
    ) from None

_lock = threading.Lock()
_client = None
_zone_id = ZONE_ID


def _route53():
    global _client
    with _lock:
        if _client is None:
            _client = make_client("route53", REGION, ENDPOINT_URL)
        return _client


def hosted_zone_id():
    """The id of ROUTE53_ZONE_NAME's hosted zone (looked up once)."""
    global _zone_id
    if _zone_id:
        return _zone_id
    response = _route53().list_hosted_zones_by_name(DNSName=ZONE_NAME, MaxItems="10")
    zones = [z for z in response["HostedZones"] if z["Name"].rstrip(".").lower() == ZONE_NAME]
    if not zones:
        raise LookupError(f"Route 53 has no hosted zone named {ZONE_NAME!r}")
    if len(zones) > 1:
        ids = ", ".join(z["Id"] for z in zones)
        raise LookupError(
            f"Route 53 has {len(zones)} hosted zones named {ZONE_NAME!r} ({ids}); "
            "set plugin_settings.ROUTE53_ZONE_ID to the one to use"
        )
    _zone_id = zones[0]["Id"].rsplit("/", 1)[-1]
    return _zone_id


def _change(action, record_set, comment):
    response = _route53().change_resource_record_sets(
        HostedZoneId=hosted_zone_id(),
        ChangeBatch={
            "Comment": comment[:256],
            "Changes": [{"Action": action, "ResourceRecordSet": record_set}],
        },
    )
    if WAIT_FOR_SYNC:
        _route53().get_waiter("resource_record_sets_changed").wait(
            Id=response["ChangeInfo"]["Id"], WaiterConfig={"Delay": 5, "MaxAttempts": 24}
        )


def dnsDisplayName(instance_name):
    """The server's DNS name (no AWS call)."""
    return record_name(instance_name)


def _address(instance_name, ip):
    try:
        return ipaddress.ip_address(ip)
    except ValueError:
        raise ValueError(f"DNS record for {instance_name!r}: {ip!r} is not an IP address") from None


def _points_at(record_set, address):
    """Whether ``record_set`` holds exactly ``address`` (and nothing else)."""
    values = [v["Value"] for v in record_set.get("ResourceRecords", [])]
    try:
        return bool(values) and {ipaddress.ip_address(v) for v in values} == {address}
    except ValueError:
        return False


def createDnsEntry(instance_name, ip):
    """Create or update the server's record to point at ``ip``.

    An UPSERT: a resumed server has a new address and overwrites its own record. The
    record's name belongs to this one server (the spawner's names are unique per user
    and server), so no other server's record is touched.
    """
    address = _address(instance_name, ip)
    name = record_name(instance_name)
    record_type = "A" if address.version == 4 else "AAAA"
    _change(
        "UPSERT",
        {
            "Name": name + ".",
            "Type": record_type,
            "TTL": TTL,
            "ResourceRecords": [{"Value": str(address)}],
        },
        f"mliy-spawner: {instance_name} at {address}",
    )
    log.info("DNS %s %s -> %s", record_type, name, address)


def deleteDnsEntry(instance_name, ip):
    """Delete the server's record if it still points at ``ip``; none is fine.

    A record that holds another address (or ``ip`` None: the address is unknown) is
    left in place and logged: it is not this server's any more. The DELETE names the
    record's exact values, so Route 53 refuses it if the record changes meanwhile.
    """
    name = record_name(instance_name) + "."
    if ip is None:
        log.warning("DNS %s: the server's address is unknown, so its record is left", name)
        return
    address = _address(instance_name, ip)
    record_type = "A" if address.version == 4 else "AAAA"
    response = _route53().list_resource_record_sets(
        HostedZoneId=hosted_zone_id(), StartRecordName=name, MaxItems="10"
    )
    found = [
        record_set
        for record_set in response["ResourceRecordSets"]
        if record_set["Name"].lower() == name and record_set["Type"] == record_type
    ]
    if not found:
        log.info("DNS %s: no record to delete", name)
    for record_set in found:
        if not _points_at(record_set, address):
            held = ", ".join(v["Value"] for v in record_set.get("ResourceRecords", []))
            log.warning(
                "DNS %s %s left in place: it points at %s, not at this server's %s",
                record_type,
                name,
                held or "an alias",
                address,
            )
            continue
        try:
            _change("DELETE", record_set, f"mliy-spawner: {instance_name} removed")
        except _route53().exceptions.InvalidChangeBatch as e:
            if "not found" not in str(e):
                raise
        log.info("DNS %s %s deleted (server was at %s)", record_type, name, address)
