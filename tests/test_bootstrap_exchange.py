"""The one-time bootstrap code: sealing, the store's rows, and the service's checks."""

import json
from datetime import UTC, datetime, timedelta

import pytest

from mliy_spawner import bootstrap
from mliy_spawner.service.bootstrap import check_content_type, parse_code, refusal
from mliy_spawner.service.handlers import APIError
from mliy_spawner.store import BootstrapCode, InstanceRecord

TOKEN = "0123456789abcdef0123456789abcdef"


def test_a_code_opens_its_token_and_no_other():
    code = bootstrap.new_code()
    assert len(code) == 32
    sealed = bootstrap.seal(code, TOKEN)
    assert TOKEN not in sealed and code not in sealed
    assert bootstrap.open_sealed(code, sealed) == TOKEN
    with pytest.raises(bootstrap.SealError):
        bootstrap.open_sealed(bootstrap.new_code(), sealed)
    assert bootstrap.code_id(code) != code and len(bootstrap.code_id(code)) == 64


# ``store`` (conftest.py): these run on SQLite and on PostgreSQL
def test_a_code_is_used_once(store):
    code = bootstrap.new_code()
    code_id = bootstrap.code_id(code)
    store.add_bootstrap_code(code_id, "alice", "gpu", bootstrap.seal(code, TOKEN), ttl=60)
    store.bind_bootstrap_code("alice", "gpu", "i-0123456789abcdef0", "10.0.0.7")
    row = store.bootstrap_code(code_id)
    assert (row.instance_id, row.private_ip, row.used) == ("i-0123456789abcdef0", "10.0.0.7", None)
    sealed = store.use_bootstrap_code(code_id)
    assert bootstrap.open_sealed(code, sealed) == TOKEN
    assert store.use_bootstrap_code(code_id) is None  # the second use gets nothing
    assert store.bootstrap_code(code_id).sealed_token == ""  # nothing left to open
    store.forget_bootstrap_codes("alice", "gpu")
    assert store.bootstrap_code(code_id) is None


def test_a_new_code_replaces_the_servers_old_one(store):
    store.add_bootstrap_code("old", "alice", "", "sealed", ttl=60)
    store.add_bootstrap_code("new", "alice", "", "sealed", ttl=60)
    assert store.bootstrap_code("old") is None
    assert store.server_bootstrap_code("alice", "").code_id == "new"


# The table below is built when pytest collects this module, which can be half an hour
# before a test of it runs: a code "valid for 20 minutes" would have expired by then. So
# its good codes expire in a year, and the expired one a second before collection.
NOW = datetime.now(UTC)


def code_row(**changes):
    values = dict(
        code_id="id",
        user="alice",
        server_name="gpu",
        instance_id="i-1",
        private_ip="10.0.0.7",
        sealed_token="sealed",
        expires=NOW + timedelta(days=365),
        used=None,
        refused=None,
    )
    return BootstrapCode(**{**values, **changes})


OWNER = InstanceRecord("i-1", "alice", "gpu", "arn:stack", "us-east-1", NOW, NOW)


@pytest.mark.parametrize(
    ("row", "owner", "instance_id", "address", "check", "reason"),
    [
        pytest.param(code_row(), OWNER, "i-1", "10.0.0.7", True, None, id="good"),
        pytest.param(code_row(), OWNER, "i-1", "203.0.113.9", False, None, id="nat-no-check"),
        pytest.param(None, OWNER, "i-1", "10.0.0.7", True, "unknown code", id="unknown"),
        pytest.param(code_row(used=NOW), OWNER, "i-1", "10.0.0.7", True, "used", id="second-use"),
        pytest.param(
            code_row(expires=NOW - timedelta(seconds=1)),
            OWNER,
            "i-1",
            "10.0.0.7",
            True,
            "expired",
            id="expired",
        ),
        pytest.param(code_row(), OWNER, "i-2", "10.0.0.7", True, "another instance", id="other"),
        pytest.param(code_row(), None, "i-1", "10.0.0.7", True, "not that server's", id="unowned"),
        pytest.param(
            code_row(),
            InstanceRecord("i-1", "bob", "gpu", "arn", "us-east-1", NOW, NOW),
            "i-1",
            "10.0.0.7",
            True,
            "not that server's",
            id="other-owner",
        ),
        pytest.param(code_row(), OWNER, "i-1", "10.0.0.8", True, "came from", id="other-address"),
        pytest.param(code_row(), OWNER, "i-1", "not-an-ip", True, "came from", id="bad-address"),
    ],
)
def test_the_service_refuses_what_it_must(row, owner, instance_id, address, check, reason):
    found = refusal(row, owner, instance_id, address, check)
    assert found is None if reason is None else reason in found


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param(b"", "not JSON", id="empty"),
        pytest.param(b"\xff\xfe", "not JSON", id="bad-utf8"),
        pytest.param(b"[" * 1000, "not JSON", id="deep"),
        pytest.param(b'"code"', "body is", id="not-an-object"),
        pytest.param(b'{"code": "x", "more": 1}', "body is", id="extra-field"),
        pytest.param(b'{"code": 12345678901234567890}', "code is", id="number"),
        pytest.param(b'{"code": "short"}', "code is", id="too-short"),
        pytest.param(json.dumps({"code": "a" * 65}).encode(), "code is", id="too-long"),
        pytest.param(b'{"code": "abcdefghijklmnop\\n"}', "code is", id="newline"),
        pytest.param(b'{"code": "abcdefghijklmnop;rm"}', "code is", id="shell"),
        pytest.param(b"x" * 2000, "at most", id="huge"),
    ],
)
def test_malformed_bodies_are_400_naming_the_field(body, field):
    with pytest.raises(APIError) as e:
        parse_code(body)
    assert e.value.status == 400 and field in e.value.message


def test_a_good_body_gives_the_code():
    code = bootstrap.new_code()
    assert parse_code(json.dumps({"code": code}).encode()) == code


def test_a_code_given_twice_is_400():
    code = bootstrap.new_code()
    for body in (f'{{"code": "{code}", "code": "{code}"}}', f'{{"code": "x", "code": "{code}"}}'):
        with pytest.raises(APIError) as e:
            parse_code(body.encode())
        assert e.value.status == 400 and "'code' more than once" in e.value.message


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(lambda c: {"code": f" {c}"}, id="padded"),
        pytest.param(lambda c: {"code": c + "\n"}, id="newline"),
        pytest.param(lambda c: {"code": c * 2 + "x"}, id="too-long"),
        pytest.param(lambda c: {"code": [c]}, id="in-a-list"),
        pytest.param(lambda c: {c: c}, id="as-a-field-name"),
        pytest.param(lambda c: [c], id="body-list"),
        pytest.param(lambda c: c, id="body-string"),
    ],
)
def test_a_refused_body_never_echoes_the_code(body):
    # the message is answered and logged: a code sent slightly wrong is still the code
    code = bootstrap.new_code()
    with pytest.raises(APIError) as e:
        parse_code(json.dumps(body(code)).encode())
    assert e.value.status == 400
    assert code[:8] not in e.value.message


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("Application/JSON", True),
        ("text/plain", False),
        ("application/x-www-form-urlencoded", False),
        ("", False),
        (None, False),
        ("application/json-patch+json", False),
    ],
)
def test_the_content_type_must_be_json(value, ok):
    if ok:
        check_content_type(value)
    else:
        with pytest.raises(APIError) as e:
            check_content_type(value)
        assert e.value.status == 415 and "Content-Type" in e.value.message
