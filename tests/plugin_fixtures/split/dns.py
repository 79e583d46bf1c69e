"""DNS plugin that keeps its records in a dict (no network)."""

from pathlib import Path

import plugin_settings

with open(Path(__file__).with_name("imports.log"), "a") as f:
    f.write("dns\n")

RECORDS = {}


def dnsDisplayName(instance_name):
    return f"{instance_name}.{plugin_settings.DNS_SUFFIX}"


def createDnsEntry(instance_name, ip):
    if ip == "192.0.2.99":
        raise ConnectionError("the DNS service is unreachable")
    RECORDS[instance_name] = ip


def deleteDnsEntry(instance_name, ip):
    RECORDS.pop(instance_name, None)
