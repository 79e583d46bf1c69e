"""Pricing catalog: lookups on the real 2019 file, malformed files, reload, the CLI."""

import functools
import http.server
import json
import logging
import os
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path

import pytest

from mliy_spawner.assets import asset_path
from mliy_spawner.pricing import (
    InstanceInfo,
    PriceCatalog,
    PricingError,
    _check_url,
    get_catalog,
    main,
    parse_catalog,
)

REAL = asset_path("pricing", "instances.json")


@pytest.fixture(scope="module")
def real():
    return PriceCatalog(REAL)


def record(name="t9.test", price="0.5", region="us-east-1", os="linux", **fields):
    rec = {
        "instance_type": name,
        "vCPU": 2,
        "memory": 4.0,
        "pretty_name": f"{name} pretty",
        "family": "Test family",
        "pricing": {region: {os: {"ondemand": price, "reserved": {"yrTerm1": "0.1"}}}},
    }
    rec.update(fields)
    return rec


def write(path, records):
    data = records if isinstance(records, bytes) else json.dumps(records).encode()
    path.write_bytes(data)
    return path


def bump_mtime(path, seconds=5):
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 1_000_000_000))


# --- lookups on the real file ---------------------------------------------------------

KNOWN = [  # values copied from pricing/instances.json
    pytest.param("m4.large", "us-east-1", "linux", "0.108", id="m4.large-us-east-1-linux"),
    pytest.param("m4.large", "eu-west-1", "mswin", "0.211", id="m4.large-eu-west-1-mswin"),
    pytest.param("t2.micro", "ap-south-1", "linux", "0.015", id="t2.micro-ap-south-1"),
    pytest.param("x1.32xlarge", "us-gov-west-1", "linux", "16.006", id="x1.32xlarge-gov"),
    pytest.param("c1.medium", "sa-east-1", "mswinSQLWeb", "0.369", id="c1.medium-sqlweb"),
    pytest.param("m1.small", "us-east-1", "mswinSQL", "0.629", id="m1.small-sql"),
]


@pytest.mark.parametrize("itype, region, os_name, expected", KNOWN)
def test_known_prices(real, itype, region, os_name, expected):
    price = real.price(itype, region, os_name)
    assert isinstance(price, Decimal)
    assert str(price) == expected  # exact, no float rounding


def test_defaults_are_us_east_1_linux(real):
    assert real.price("m4.large") == Decimal("0.108")


def test_every_price_in_the_file_matches(real):
    records = json.loads(REAL.read_bytes())
    checked = 0
    for rec in records:
        for region, by_os in rec["pricing"].items():
            for os_name, terms in by_os.items():
                expected = Decimal(terms["ondemand"])
                assert real.price(rec["instance_type"], region, os_name) == expected
                checked += 1
    assert checked == 2843


NO_PRICE = [
    pytest.param("f1.2xlarge", "us-east-1", "linux", id="type-without-any-pricing"),
    pytest.param("cg1.4xlarge", "us-west-2", "linux", id="region-not-offered"),
    pytest.param("p2.xlarge", "ap-south-1", "linux", id="p2-not-in-ap-south-1"),
    pytest.param("c1.medium", "us-east-1", "mswinSQL", id="os-not-offered"),
    pytest.param("m4.large", "mars-north-1", "linux", id="unknown-region"),
    pytest.param("m4.large", "us-east-1", "macos", id="unknown-os"),
    pytest.param("m4.large", "us-east-1", "emr", id="emr-is-not-an-os"),
    pytest.param("m4.large", "US-EAST-1", "linux", id="region-case-matters"),
]


@pytest.mark.parametrize("itype, region, os_name", NO_PRICE)
def test_no_price_is_none(real, itype, region, os_name):
    assert real.price(itype, region, os_name) is None


HOSTILE_TYPES = [
    pytest.param("", id="empty"),
    pytest.param("M4.LARGE", id="wrong-case"),
    pytest.param(" m4.large", id="leading-space"),
    pytest.param("m4.large\x00", id="nul"),
    pytest.param("<script>alert(1)</script>", id="html"),
    pytest.param("../../etc/passwd", id="path"),
    pytest.param("x" * 10_000, id="huge"),
    pytest.param(None, id="none"),
]


@pytest.mark.parametrize("itype", HOSTILE_TYPES)
def test_unknown_type(real, itype):
    assert real.price(itype) is None
    assert real.emr_price(itype) is None
    assert real.info(itype) is None


def test_real_file_has_no_emr_prices(real):
    assert real.emr_price("m4.large", "us-east-1") is None


def test_emr_price(tmp_path):
    rec = record("m5.xlarge", price="0.192")
    rec["pricing"]["us-east-1"]["emr"] = {"emr": "0.048", "ec2": "0.192"}
    catalog = PriceCatalog(write(tmp_path / "i.json", [rec]))
    assert catalog.emr_price("m5.xlarge", "us-east-1") == Decimal("0.048")
    assert catalog.emr_price("m5.xlarge", "eu-west-1") is None
    assert catalog.price("m5.xlarge", "us-east-1", "emr") is None


INFO = [
    pytest.param(
        "x1.32xlarge",
        InstanceInfo(
            "x1.32xlarge", 128, 1952.0, "X1 Extra High-Memory 32xlarge", "Memory optimized"
        ),
        id="x1.32xlarge",
    ),
    pytest.param(
        "m1.small",
        InstanceInfo("m1.small", 1, 1.7, "M1 General Purpose Small", "General purpose"),
        id="m1.small-fractional-memory",
    ),
    pytest.param(
        "m4.large", InstanceInfo("m4.large", 2, 8.0, "M4 Large", "General purpose"), id="m4.large"
    ),
]


@pytest.mark.parametrize("itype, expected", INFO)
def test_info(real, itype, expected):
    info = real.info(itype)
    assert info == expected
    assert isinstance(info.vcpu, int) and isinstance(info.memory_gib, float)


def test_instance_types(real):
    types = real.instance_types()
    assert len(types) == 70
    assert set(types) == {r["instance_type"] for r in json.loads(REAL.read_bytes())}
    m4 = [t for t in types if t.startswith("m4.")]
    assert m4 == ["m4.large", "m4.xlarge", "m4.2xlarge", "m4.4xlarge", "m4.10xlarge", "m4.16xlarge"]
    types.clear()  # a copy: the catalog is not affected
    assert len(real.instance_types()) == 70


def test_no_io_until_first_lookup(tmp_path):
    path = tmp_path / "later.json"
    catalog = PriceCatalog(path)  # the file does not exist yet: construction reads nothing
    write(path, [record(price="0.25")])
    assert catalog.price("t9.test") == Decimal("0.25")


IMPORT_PROBE = """
import sys
opened = []
sys.addaudithook(lambda event, args: event == "open" and opened.append(str(args[0])))
import mliy_spawner.pricing as pricing
catalog = pricing.get_catalog()
before = [name for name in opened if name.endswith("instances.json")]
prices = [catalog.price("m4.large") for _ in range(100)]
after = [name for name in opened if name.endswith("instances.json")]
print(len(before), len(after), prices[-1])
"""


def test_import_and_construction_read_nothing_and_lookups_read_once():
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE], cwd=root, capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == ["0", "1", "0.108"]


def test_missing_file_on_first_load(tmp_path):
    catalog = PriceCatalog(tmp_path / "absent.json")
    with pytest.raises(PricingError, match="absent.json: cannot read the catalog"):
        catalog.price("m4.large")


def test_shared_catalogs(tmp_path, monkeypatch):
    assert get_catalog() is get_catalog(None) is get_catalog(str(REAL)) is get_catalog(REAL)
    assert get_catalog().price("m4.large") == Decimal("0.108")
    path = write(tmp_path / "other.json", [record()])
    monkeypatch.chdir(tmp_path)
    assert get_catalog("other.json") is get_catalog(path)
    assert get_catalog(path) is not get_catalog()


# --- what a price value may be ----------------------------------------------------------

VALUES = [
    pytest.param("0.108", Decimal("0.108"), id="decimal-string"),
    pytest.param("12", Decimal("12"), id="integer-string"),
    pytest.param("0.0000", Decimal("0"), id="zero"),
    pytest.param(" 0.5 ", Decimal("0.5"), id="blanks-around"),
    pytest.param("", None, id="empty"),
    pytest.param("N/A", None, id="N/A"),
    pytest.param("n/a", None, id="n/a"),
    pytest.param(None, None, id="null"),
    pytest.param(0.25, Decimal("0.25"), id="json-number"),
    pytest.param(3, Decimal("3"), id="json-integer"),
]


@pytest.mark.parametrize("value, expected", VALUES)
def test_price_values(tmp_path, value, expected):
    catalog = PriceCatalog(write(tmp_path / "i.json", [record(price=value)]))
    assert catalog.price("t9.test") == expected


def test_missing_ondemand_is_no_price(tmp_path):
    rec = record()
    del rec["pricing"]["us-east-1"]["linux"]["ondemand"]
    catalog = PriceCatalog(write(tmp_path / "i.json", [rec]))
    assert catalog.price("t9.test") is None
    assert catalog.info("t9.test").vcpu == 2


# --- malformed files: each names the file, the record and what is wrong ---------------------

PRICE_WHERE = "record 1 (t9.bad): pricing['us-east-1']['linux']['ondemand'] is"


def bad_pricing(value):
    return [record("m4.large"), record("t9.bad", pricing=value)]


def bad_price(value, shown, id):
    """A MALFORMED case: record 1's on-demand price is ``value``, shown as ``shown``."""
    return pytest.param(
        [record("m4.large"), record("t9.bad", price=value)], f"{PRICE_WHERE} {shown}", id=id
    )


MALFORMED = [
    pytest.param(b"{not json", "not JSON", id="not-json"),
    pytest.param(b"", "not JSON", id="empty-file"),
    pytest.param(b"\xff\xfe[]", "not JSON", id="not-utf8"),
    pytest.param(
        {"m4.large": {}},
        "expected a JSON array of instance records, got dict",
        id="object-not-list",
    ),
    pytest.param(
        [record("m4.large"), "m4.large"], "record 1 is str, not an object", id="record-not-object"
    ),
    pytest.param(
        [record("m4.large"), {"vCPU": 2}], "record 1 has no 'instance_type'", id="no-instance-type"
    ),
    pytest.param([{"instance_type": 5}], "record 0 has 'instance_type' 5", id="type-not-string"),
    pytest.param([{"instance_type": "  "}], "record 0 has 'instance_type' '  '", id="type-blank"),
    pytest.param(
        [record("m4.large"), record("m4.large")],
        "record 1 (m4.large): duplicate instance_type, first at record 0",
        id="duplicate-type",
    ),
    bad_price("abc", "'abc'", "price-word"),
    bad_price("$0.10", "'$0.10'", "price-dollar"),
    bad_price("-0.1", "'-0.1'", "price-negative"),
    bad_price("1e3", "'1e3'", "price-exponent"),
    bad_price("NaN", "'NaN'", "price-nan"),
    bad_price("0,108", "'0,108'", "price-comma"),
    bad_price(".5", "'.5'", "price-no-units"),
    bad_price("5.", "'5.'", "price-trailing-dot"),
    bad_price(" 5. ", "' 5. '", "price-trailing-dot-blanks"),
    bad_price("1.2.3", "'1.2.3'", "price-two-dots"),
    bad_price("1_0", "'1_0'", "price-underscore"),
    bad_price("١٢", "'١٢'", "price-non-ascii-digits"),
    bad_price(True, "True", "price-bool"),
    bad_price(-1, "-1", "price-negative-number"),
    bad_price({"usd": "1"}, "{'usd': '1'}", "price-object"),
    pytest.param(
        b'[{"instance_type": "t9.bad", "vCPU": 1, "memory": 1, "pricing": '
        b'{"us-east-1": {"linux": {"ondemand": Infinity}}}}]',
        "record 0 (t9.bad): pricing['us-east-1']['linux']['ondemand'] is inf",
        id="price-infinity",
    ),
    pytest.param(
        bad_pricing({"us-east-1": {"emr": {"emr": "free"}}}),
        "record 1 (t9.bad): pricing['us-east-1']['emr']['emr'] is 'free', not a price",
        id="emr-price-word",
    ),
    pytest.param(
        bad_pricing(["us-east-1"]),
        "record 1 (t9.bad): 'pricing' is ['us-east-1']",
        id="pricing-not-object",
    ),
    pytest.param(
        bad_pricing({"us-east-1": "0.1"}),
        "record 1 (t9.bad): pricing['us-east-1'] is '0.1', not an object",
        id="region-not-object",
    ),
    pytest.param(
        bad_pricing({"us-east-1": {"linux": "0.1"}}),
        "record 1 (t9.bad): pricing['us-east-1']['linux'] is '0.1', not an object",
        id="os-not-object",
    ),
    pytest.param(
        [record("t9.bad", vCPU="2")], "record 0 (t9.bad): 'vCPU' is '2'", id="vcpu-string"
    ),
    pytest.param([record("t9.bad", vCPU=2.5)], "record 0 (t9.bad): 'vCPU' is 2.5", id="vcpu-float"),
    pytest.param(
        [record("t9.bad", memory=None)], "record 0 (t9.bad): 'memory' is None", id="memory-missing"
    ),
    pytest.param(
        [record("t9.bad", memory="8 GiB")],
        "record 0 (t9.bad): 'memory' is '8 GiB'",
        id="memory-string",
    ),
]


@pytest.mark.parametrize("content, message", MALFORMED)
def test_malformed_file(tmp_path, content, message):
    path = write(tmp_path / "bad.json", content)
    with pytest.raises(PricingError) as e:
        PriceCatalog(path).price("m4.large")
    assert str(e.value).startswith(f"{path}: ")
    assert message in str(e.value)
    assert isinstance(e.value, ValueError)


def test_price_error_says_what_is_allowed():
    with pytest.raises(PricingError, match=r"allowed: a number like '0.108', or '', 'N/A'"):
        parse_catalog(json.dumps([record(price="soon")]), "src")


def test_long_values_are_shortened_in_errors():
    with pytest.raises(PricingError) as e:
        parse_catalog(json.dumps([record(price="9" * 500 + "x")]), "src")
    assert len(str(e.value)) < 300


# --- reload when the file changes ---------------------------------------------------------


@pytest.fixture
def catalog_file(tmp_path):
    return write(tmp_path / "instances.json", [record("t9.test", price="0.50")])


def test_reload_on_change(catalog_file):
    catalog = PriceCatalog(catalog_file, check_interval=0)
    assert catalog.price("t9.test") == Decimal("0.50")
    write(catalog_file, [record("t9.test", price="0.75"), record("t9.new", price="1.25")])
    bump_mtime(catalog_file)
    assert catalog.price("t9.test") == Decimal("0.75")
    assert catalog.price("t9.new") == Decimal("1.25")
    write(catalog_file, [record("t9.new", price="1.25")])
    bump_mtime(catalog_file)
    assert catalog.info("t9.test") is None
    assert catalog.instance_types() == ["t9.new"]


def test_same_size_in_place_rewrite_is_seen_by_mtime(catalog_file):
    catalog = PriceCatalog(catalog_file, check_interval=0)
    assert catalog.price("t9.test") == Decimal("0.50")
    size = catalog_file.stat().st_size
    write(catalog_file, [record("t9.test", price="0.99")])
    assert catalog_file.stat().st_size == size
    bump_mtime(catalog_file)
    assert catalog.price("t9.test") == Decimal("0.99")


def test_replacement_with_same_mtime_and_size_is_seen_by_inode(catalog_file, tmp_path):
    catalog = PriceCatalog(catalog_file, check_interval=0)
    assert catalog.price("t9.test") == Decimal("0.50")
    st = catalog_file.stat()
    new = write(tmp_path / "new.json", [record("t9.test", price="0.99")])
    os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(new, catalog_file)
    assert catalog.price("t9.test") == Decimal("0.99")


def test_unchanged_file_is_not_parsed_again(catalog_file):
    catalog = PriceCatalog(catalog_file, check_interval=0)
    assert catalog.price("t9.test") == Decimal("0.50")
    st = catalog_file.stat()
    write(catalog_file, [record("t9.test", price="0.99")])  # same size, same inode
    os.utime(catalog_file, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the old mtime
    assert catalog.price("t9.test") == Decimal("0.50")


def test_changes_are_checked_at_most_once_per_interval(catalog_file):
    catalog = PriceCatalog(catalog_file, check_interval=3600)
    assert catalog.price("t9.test") == Decimal("0.50")
    write(catalog_file, [record("t9.test", price="0.75")])
    bump_mtime(catalog_file)
    assert catalog.price("t9.test") == Decimal("0.50")  # not looked at within the hour


def test_default_interval_notices_a_change_within_a_second(catalog_file):
    catalog = PriceCatalog(catalog_file)
    assert catalog.price("t9.test") == Decimal("0.50")
    write(catalog_file, [record("t9.test", price="0.75")])
    bump_mtime(catalog_file)
    time.sleep(1.05)
    assert catalog.price("t9.test") == Decimal("0.75")


FAILED_RELOADS = [
    pytest.param(b"[{", "not JSON", id="not-json"),
    pytest.param(
        [record("t9.test"), {"memory": 1}], "record 1 has no 'instance_type'", id="no-instance-type"
    ),
    pytest.param([record("t9.test", price="cheap")], "is 'cheap', not a price", id="bad-price"),
    pytest.param(None, "cannot read", id="file-deleted"),
]


@pytest.mark.parametrize("content, message", FAILED_RELOADS)
def test_failed_reload_keeps_the_old_catalog(catalog_file, caplog, content, message):
    caplog.set_level(logging.INFO, logger="mliy.launch.pricing")
    catalog = PriceCatalog(catalog_file, check_interval=0)
    assert catalog.price("t9.test") == Decimal("0.50")
    if content is None:
        catalog_file.unlink()
        message = "cannot read the catalog"
    else:
        write(catalog_file, content)
        bump_mtime(catalog_file)
    for _ in range(3):
        assert catalog.price("t9.test") == Decimal("0.50")
        assert catalog.instance_types() == ["t9.test"]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, "logged once per change, not on every lookup"
    assert errors[0].name == "mliy.launch.pricing"
    assert "Keeping the previous pricing catalog" in errors[0].getMessage()
    assert message in errors[0].getMessage()
    assert str(catalog_file) in errors[0].getMessage()

    write(catalog_file, [record("t9.test", price="0.80")])  # the admin fixes the file
    bump_mtime(catalog_file, seconds=10)
    assert catalog.price("t9.test") == Decimal("0.80")
    assert "Reloaded 1 instance types" in caplog.records[-1].getMessage()


def test_failed_reload_reaches_the_launch_log_file(catalog_file, tmp_path):
    from mliy_spawner.logs import configure_logging

    catalog = PriceCatalog(catalog_file, check_interval=0)
    assert catalog.price("t9.test") == Decimal("0.50")
    configure_logging(log_dir=tmp_path / "logs")
    try:
        write(catalog_file, b"[{")
        bump_mtime(catalog_file)
        assert catalog.price("t9.test") == Decimal("0.50")
    finally:
        configure_logging()  # drop the file handlers again
    text = (tmp_path / "logs" / "launch.log").read_text()
    assert "ERROR mliy.launch.pricing: Keeping the previous pricing catalog" in text


def test_failed_first_load_raises_then_recovers(catalog_file):
    write(catalog_file, [record("t9.test", price="oops")])
    catalog = PriceCatalog(catalog_file)
    with pytest.raises(PricingError, match="record 0 \\(t9.test\\)"):
        catalog.price("t9.test")
    write(catalog_file, [record("t9.test", price="0.40")])
    assert catalog.price("t9.test") == Decimal("0.40")


# --- the mliy-pricing command ----------------------------------------------------------------


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def fields(out):
    return {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in out.splitlines())}


SHOW = [
    pytest.param(["m4.large"], "0.108 (us-east-1, linux, on-demand)", id="defaults"),
    pytest.param(
        ["m4.large", "--region", "eu-west-1", "--os", "mswin"],
        "0.211 (eu-west-1, mswin, on-demand)",
        id="region-and-os",
    ),
    pytest.param(["f1.2xlarge"], "unknown (us-east-1, linux, on-demand)", id="no-price"),
    pytest.param(
        ["m4.large", "--region", "<b>x</b>"],
        "unknown (<b>x</b>, linux, on-demand)",
        id="hostile-region",
    ),
]


@pytest.mark.parametrize("argv, price", SHOW)
def test_cli_show(capsys, argv, price):
    code, out, err = run(capsys, "show", *argv)
    assert (code, err) == (0, "")
    shown = fields(out)
    assert shown["$/hour"] == price
    assert shown["type"] == argv[0]
    assert shown["EMR $/h"] == "unknown"


def test_cli_show_details(capsys):
    code, out, _ = run(capsys, "show", "m1.small")
    assert code == 0
    shown = fields(out)
    assert shown["name"] == "M1 General Purpose Small"
    assert shown["family"] == "General purpose"
    assert (shown["vCPU"], shown["memory"]) == ("1", "1.7 GiB")


@pytest.mark.parametrize(
    "itype, hint",
    [
        pytest.param("m4.larg", "did you mean m4.large", id="typo"),
        pytest.param("<script>", "see `mliy-pricing list`", id="html"),
        pytest.param("", "see `mliy-pricing list`", id="empty"),
        pytest.param("a\nb", "see `mliy-pricing list`", id="newline"),
    ],
)
def test_cli_show_unknown_type(capsys, itype, hint):
    code, out, err = run(capsys, "show", itype)
    assert (code, out) == (1, "")
    assert f"unknown instance type {itype!r}" in err
    assert hint in err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param([], id="no-command"),
        pytest.param(["price"], id="unknown-command"),
        pytest.param(["show"], id="show-without-type"),
        pytest.param(["list", "--colour"], id="unknown-option"),
        pytest.param(["refresh"], id="refresh-without-source"),
    ],
)
def test_cli_usage_errors(capsys, argv):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert "usage: mliy-pricing" in err


def test_cli_list(capsys):
    code, out, err = run(capsys, "list")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["TYPE", "VCPU", "MEMORY_GIB", "$/HOUR", "(us-east-1,", "linux)"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert len(rows) == 70
    assert rows["m4.large"] == ["2", "8", "0.108"]
    assert rows["m1.small"] == ["1", "1.7", "0.044"]
    assert rows["f1.2xlarge"] == ["8", "122", "unknown"]


def test_cli_list_region_and_file(capsys, tmp_path):
    path = write(
        tmp_path / "i.json",
        [
            record("t9.a", price="0.5", region="eu-west-2"),
            record("t9.b", price="N/A", region="eu-west-2"),
        ],
    )
    code, out, _ = run(capsys, "list", "--region", "eu-west-2", "--file", str(path))
    assert code == 0
    rows = [line.split() for line in out.splitlines()[1:]]
    assert rows == [["t9.a", "2", "4", "0.5"], ["t9.b", "2", "4", "unknown"]]


@pytest.mark.parametrize(
    "content, message",
    [
        pytest.param(None, "cannot read the catalog", id="missing"),
        pytest.param(b"nope", "not JSON", id="not-json"),
        pytest.param([record("t9.bad", price="x")], "record 0 (t9.bad)", id="bad-record"),
    ],
)
def test_cli_bad_catalog_file(capsys, tmp_path, content, message):
    path = tmp_path / "i.json"
    if content is not None:
        write(path, content)
    code, out, err = run(capsys, "list", "--file", str(path))
    assert (code, out) == (1, "")
    assert err.startswith("mliy-pricing: error: ")
    assert message in err


# --- refresh ------------------------------------------------------------------------------


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class RedirectingHandler(QuietHandler):
    """Serves the folder; a path in ``redirects`` answers 302 to its Location instead."""

    def __init__(self, *args, redirects, seen, **kwargs):
        self.redirects, self.seen = redirects, seen
        super().__init__(*args, **kwargs)

    def do_GET(self):
        self.seen.append(self.path)
        if self.path not in self.redirects:
            return super().do_GET()
        self.send_response(302)
        self.send_header("Location", self.redirects[self.path].format(port=self.server_port))
        self.send_header("Content-Length", "0")
        self.end_headers()

    @property
    def server_port(self):
        return self.server.server_address[1]


@pytest.fixture
def web_server(tmp_path, monkeypatch):
    """An HTTP server on 127.0.0.1 serving the folder ``web/``, with ``redirects``
    ({path: Location, "{port}" its port}); yields it with ``folder``, ``base``, ``seen``."""
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    folder = tmp_path / "web"
    folder.mkdir()
    redirects, seen = {}, []
    handler = functools.partial(
        RedirectingHandler, directory=str(folder), redirects=redirects, seen=seen
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.folder, server.redirects, server.seen = folder, redirects, seen
    server.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def web(web_server):
    """The folder ``web_server`` serves and its base URL."""
    return web_server.folder, web_server.base


@pytest.fixture
def target(tmp_path):
    folder = tmp_path / "pricing"
    folder.mkdir()
    path = write(folder / "instances.json", [record("t9.test", price="0.50")])
    path.chmod(0o640)
    return path


def test_refresh_from_file(capsys, tmp_path, target):
    source = write(tmp_path / "new.json", [record("t9.test", price="0.75"), record("t9.b")])
    running = PriceCatalog(target, check_interval=0)  # as the hub holds it
    assert running.price("t9.test") == Decimal("0.50")
    code, out, err = run(capsys, "refresh", str(source), "--file", str(target))
    assert (code, err) == (0, "")
    assert f"Replaced {target} with 2 instance types from {source}" in out
    assert target.read_bytes() == source.read_bytes()
    assert target.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in target.parent.iterdir()] == ["instances.json"]
    assert running.price("t9.test") == Decimal("0.75")  # the hub sees it without a restart


def test_refresh_from_url(capsys, web, target):
    folder, base = web
    source = write(folder / "instances.json", [record("t9.test", price="0.66")])
    url = f"{base}/instances.json"
    code, out, err = run(capsys, "refresh", url, "--allow-http", "--file", str(target))
    assert (code, err) == (0, "")
    assert target.read_bytes() == source.read_bytes()
    assert PriceCatalog(target).price("t9.test") == Decimal("0.66")


def test_refresh_refuses_plain_http_without_allow_http(capsys, web_server, target):
    write(web_server.folder / "instances.json", [record("t9.test", price="0.01")])
    before = target.read_bytes()
    url = f"{web_server.base}/instances.json"
    code, out, err = run(capsys, "refresh", url, "--file", str(target))
    assert (code, out) == (1, "")
    assert "unsupported URL scheme (allowed: https); --allow-http takes http" in err
    assert web_server.seen == []  # nothing was even asked
    assert target.read_bytes() == before


@pytest.mark.parametrize(
    "location",
    [
        pytest.param("/instances.json", id="relative"),
        pytest.param("http://127.0.0.1:{port}/instances.json", id="absolute"),
    ],
)
def test_refresh_follows_a_redirect_to_the_same_host(capsys, web_server, target, location):
    source = write(web_server.folder / "instances.json", [record("t9.test", price="0.77")])
    web_server.redirects["/moved.json"] = location
    url = f"{web_server.base}/moved.json"
    code, _, err = run(capsys, "refresh", url, "--allow-http", "--file", str(target))
    assert (code, err) == (0, "")
    assert web_server.seen == ["/moved.json", "/instances.json"]
    assert target.read_bytes() == source.read_bytes()


@pytest.mark.parametrize(
    "location, host",
    [
        pytest.param("http://localhost:{port}/instances.json", "localhost", id="localhost"),
        pytest.param("http://127.0.0.2:{port}/instances.json", "127.0.0.2", id="other-address"),
        pytest.param("//localhost:{port}/instances.json", "localhost", id="scheme-relative"),
    ],
)
def test_refresh_refuses_a_redirect_to_another_host(capsys, web_server, target, location, host):
    write(web_server.folder / "instances.json", [record("t9.test", price="0.01")])
    web_server.redirects["/moved.json"] = location
    before = target.read_bytes()
    url = f"{web_server.base}/moved.json"
    code, out, err = run(capsys, "refresh", url, "--allow-http", "--file", str(target))
    assert (code, out) == (1, "")
    assert f"{url}: redirected to another host ({host})" in err
    assert web_server.seen == ["/moved.json"]
    assert target.read_bytes() == before


@pytest.mark.parametrize(
    "location, allow_http, message",
    [
        pytest.param("http://h.example/i.json", False, "redirected to http://h.example", id="down"),
        pytest.param("ftp://h.example/i.json", True, "redirected to ftp://", id="ftp"),
        pytest.param("https://other.example/i.json", True, "another host", id="other-host"),
    ],
)
def test_redirects_from_https_keep_the_rules(location, allow_http, message):
    # no TLS server here: the redirect check itself, as urllib calls it for a 30x
    with pytest.raises(PricingError, match=message):
        _check_url(location, allow_http, origin="https://h.example/instances.json")
    _check_url("https://h.example/elsewhere.json", False, origin="https://h.example/i.json")


def test_refresh_real_catalog(capsys, tmp_path, target):
    code, _, _ = run(capsys, "refresh", str(REAL), "--file", str(target))
    assert code == 0
    assert PriceCatalog(target).price("m4.large") == Decimal("0.108")


BAD_SOURCES = [
    pytest.param("file", "absent.json", None, "No such file", id="file-missing"),
    pytest.param("file", "bad.json", b"<html>", "not JSON", id="file-not-json"),
    pytest.param("file", "bad.json", {"a": 1}, "expected a JSON array", id="file-not-list"),
    pytest.param(
        "file",
        "bad.json",
        [record(), {"vCPU": 1}],
        "record 1 has no 'instance_type'",
        id="file-no-instance-type",
    ),
    pytest.param(
        "file", "bad.json", [record("t9.x", price="1.0.0")], "record 0 (t9.x)", id="file-bad-price"
    ),
    pytest.param("url", "absent.json", None, "HTTP Error 404", id="url-404"),
    pytest.param("url", "bad.json", b"[1, 2", "not JSON", id="url-not-json"),
    pytest.param(
        "url", "bad.json", [record(), record()], "duplicate instance_type", id="url-duplicate"
    ),
    pytest.param(
        "raw", "ftp://127.0.0.1/instances.json", None, "unsupported URL scheme", id="ftp-scheme"
    ),
    pytest.param("raw", "file:///etc/passwd", None, "unsupported URL scheme", id="file-scheme"),
    pytest.param(
        "raw", "http://127.0.0.1:1/instances.json", None, "Connection refused", id="url-refused"
    ),
]


@pytest.mark.parametrize("kind, name, content, message", BAD_SOURCES)
def test_refresh_bad_source_keeps_the_old_file(
    capsys, tmp_path, web, target, kind, name, content, message
):
    folder, base = web
    before = target.read_bytes()
    where = {"file": tmp_path, "url": folder}.get(kind)
    if content is not None:
        write(where / name, content)
    source = {"file": str(tmp_path / name), "url": f"{base}/{name}", "raw": name}[kind]
    code, out, err = run(capsys, "refresh", source, "--allow-http", "--file", str(target))
    assert (code, out) == (1, "")
    assert err.startswith("mliy-pricing: error: ")
    assert message in err
    assert target.read_bytes() == before
    assert [p.name for p in target.parent.iterdir()] == ["instances.json"]


def test_refresh_into_missing_folder(capsys, tmp_path):
    code, _, err = run(capsys, "refresh", str(REAL), "--file", str(tmp_path / "no" / "i.json"))
    assert code == 1
    assert "No such file or directory" in err
