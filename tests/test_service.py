"""The ``mliy`` service: pure checks, then a real hub process on loopback (``servicehub``).

Bad tokens: a token the hub does not recognise answers 401 like a missing one (the
request is not authenticated); a valid token of the wrong user answers 403.
"""

import base64
import json
import logging
import secrets
import time
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

import boto3
import pytest
import requests
from fakespawner import REGION, hold_path, instance_id_for
from hubapi import free_port, log_tail, wait_for
from moto.server import ThreadedMotoServer
from servicehub import SERVICE, UNLIMITED, start_hub

from mliy_spawner.service import (
    PROGRESS_SCOPE,
    SERVICE_SCOPES,
    START_SCOPE,
    configure_service,
    progress_scope,
    server_token_scopes,
)
from mliy_spawner.service.__main__ import MAX_BODY_SIZE
from mliy_spawner.service.actions import refusal
from mliy_spawner.service.app import Settings, parse_log_levels
from mliy_spawner.service.ratelimit import RateLimiter
from mliy_spawner.service.validation import (
    MAX_REPORT_BYTES,
    ReportError,
    check_instance_id,
    check_query,
    parse_json_report,
    parse_mliy_report,
    token_from_header,
)
from mliy_spawner.store import MAX_STEPS_PER_INSTANCE, InstanceRecord, Store

# ---- bad progress values: (id, JSON body bytes, words the 400 message must hold) ----------

_OK = {"step": "Installing packages", "percent": 40}


def _body(**change):
    data = dict(_OK, **change)
    return json.dumps({k: v for k, v in data.items() if v is not _MISSING}).encode()


_MISSING = object()

BAD_JSON = [
    ("percent-101", _body(percent=101), ["percent", "101", "0 to 100"]),
    ("percent-negative", _body(percent=-1), ["percent", "-1", "0 to 100"]),
    ("percent-bool", _body(percent=True), ["percent", "True", "integer"]),
    ("percent-float", _body(percent=50.0), ["percent", "50.0", "integer"]),
    ("percent-string", _body(percent="50"), ["percent", "'50'", "integer"]),
    ("percent-null", _body(percent=None), ["percent", "None"]),
    ("percent-missing", _body(percent=_MISSING), ["percent", "missing"]),
    ("step-missing", _body(step=_MISSING), ["step", "missing"]),
    ("step-empty", _body(step=""), ["step", "non-empty"]),
    ("step-blank", _body(step="   "), ["step", "non-empty"]),
    ("step-201-chars", _body(step="x" * 201), ["step", "201 characters", "at most 200"]),
    ("step-newline", _body(step="done\nrm -rf /"), ["step", "'\\n'", "printable"]),
    ("step-carriage-return", _body(step="ok\r"), ["step", "printable"]),
    ("step-nul", _body(step="a\x00b"), ["step", "printable"]),
    ("step-escape-sequence", _body(step="\x1b[31mred"), ["step", "printable"]),
    ("step-bidi-override", _body(step="abc\u202edef"), ["step", "printable"]),
    ("step-line-separator", _body(step="a\u2028b"), ["step", "printable"]),
    ("step-lone-surrogate", b'{"step": "a\\ud800b", "percent": 5}', ["step", "printable"]),
    ("step-number", _body(step=5), ["step", "5", "a string"]),
    ("step-list", _body(step=["a"]), ["step", "a string"]),
    ("failed-string", _body(failed="yes"), ["failed", "'yes'", "true or false"]),
    ("failed-int", _body(failed=1), ["failed", "1", "true or false"]),
    ("unexpected-field", _body(token="x"), ["unexpected", "'token'", "step, percent, failed"]),
    ("body-array", b'[{"step": "a", "percent": 1}]', ["body", "object"]),
    ("body-not-json", b"step=a&percent=1", ["body", "not JSON"]),
    ("body-empty", b"", ["body", "not JSON"]),
    ("body-not-utf8", b'{"step": "\xff", "percent": 1}', ["body", "UTF-8"]),
    # hostile shapes: each was a 500 with a traceback, or could have been
    (
        "percent-5000-digits",
        b'{"step": "a", "percent": ' + b"9" * 5000 + b"}",
        ["percent", "5000 digits", "0 to 100"],
    ),
    (
        "percent-negative-5000-digits",
        b'{"step": "a", "percent": -' + b"9" * 5000 + b"}",
        ["percent", "5000 digits"],
    ),
    ("body-5000-digits", b"9" * 5000, ["body", "5000 digits", "object"]),
    ("nested-4000-deep", b"[" * 4000 + b"]" * 4000, ["body", "4000 levels", "one object"]),
    (
        "step-nested-3000-deep",
        b'{"step": ' + b"[" * 3000 + b"]" * 3000 + b', "percent": 1}',
        ["body", "3001 levels"],
    ),
    ("nested-5000-deep", b"[" * 5000 + b"]" * 5000, ["body", "10000 bytes", "at most 8192"]),
    ("percent-nan", b'{"step": "a", "percent": NaN}', ["percent", "NaN", "integer"]),
    ("percent-infinity", b'{"step": "a", "percent": Infinity}', ["percent", "Infinity"]),
    ("percent-minus-infinity", b'{"step": "a", "percent": -Infinity}', ["percent", "-Infinity"]),
    ("percent-1e999", b'{"step": "a", "percent": 1e999}', ["percent", "inf", "integer"]),
    ("failed-nan", b'{"step": "a", "percent": 1, "failed": NaN}', ["failed", "NaN"]),
    ("field-twice", b'{"step": "a", "percent": 1, "percent": 2}', ["'percent'", "2 times"]),
    ("body-string", b'"Installing(40)"', ["body", "object"]),
    ("body-null", b"null", ["body", "None", "object"]),
    ("body-bom", b'\xef\xbb\xbf{"step": "a", "percent": 1}', ["body", "not JSON"]),
    (
        "body-over-8-kib",
        b'{"step": "a", "percent": 1}' + b" " * MAX_REPORT_BYTES,
        ["body", "bytes long", "at most 8192"],
    ),
]

# MLiy's URL form: (id, path tail as sent (already URL-encoded), query, message words)
BAD_MLIY = [
    ("no-percent", "Installing%20packages", "", ["does not end in (<percent>)"]),
    ("percent-101", "Installing(101)", "", ["percent", "101", "0 to 100"]),
    ("percent-negative", "Installing(-1)", "", ["percent", "'-1'"]),
    ("percent-word", "Installing(half)", "", ["percent", "'half'"]),
    ("percent-empty", "Installing()", "", ["percent", "''"]),
    ("percent-float", "Installing(5.5)", "", ["percent", "'5.5'"]),
    ("step-empty", "(50)", "", ["step", "non-empty"]),
    ("step-newline", "a%0Ab(10)", "", ["step", "printable"]),
    ("step-201-chars", "x" * 201 + "(10)", "", ["step", "at most 200"]),
    ("failed-maybe", "Installing(10)", "?failed=maybe", ["failed", "'maybe'"]),
]


@pytest.mark.parametrize(("body", "words"), [c[1:] for c in BAD_JSON], ids=[c[0] for c in BAD_JSON])
def test_parse_json_report_refuses(body, words):
    with pytest.raises(ReportError) as info:
        parse_json_report(body)
    for word in words:
        assert word in str(info.value)


def test_parse_json_report_accepts_edges():
    # the largest report: 200 characters, each sent as an escaped surrogate pair
    widest = json.dumps({"step": "\U0001f600" * 200, "percent": 100, "failed": False})
    assert len(widest) < MAX_REPORT_BYTES
    assert parse_json_report(widest.encode()).step == "\U0001f600" * 200
    assert parse_json_report(_body(percent=0)).percent == 0
    report = parse_json_report(_body(step="é" * 200, percent=100, failed=True))
    assert (report.step, report.percent, report.failed) == ("é" * 200, 100, True)
    assert parse_json_report(_body(step="<script>alert(1)</script>")).step.startswith("<script>")


@pytest.mark.parametrize(
    ("tail", "failed", "expected"),
    [
        ("Installing packages(40)", None, ("Installing packages", 40, False)),
        ("pip (wheel) install(0)", None, ("pip (wheel) install", 0, False)),
        ("Done(100)", "true", ("Done", 100, True)),
        ("Done(100)", "0", ("Done", 100, False)),
    ],
    ids=["spaces", "parens-in-step", "failed-true", "failed-0"],
)
def test_parse_mliy_report(tail, failed, expected):
    report = parse_mliy_report(tail, failed)
    assert (report.step, report.percent, report.failed) == expected


@pytest.mark.parametrize(
    ("value", "token", "problem"),
    [
        ("token abc123", "abc123", None),
        ("Bearer  abc123 ", "abc123", None),
        ("", None, "no token"),
        ("Basic YWxpY2U6cGFzcw==", None, "no token"),
        ("token " + "a" * 257, None, "257 characters"),
        ("token abc def", None, "no well-formed token"),
        ("token abc,token def", None, "no well-formed token"),
        ("token ab\x00c", None, "no well-formed token"),
    ],
    ids=["token", "bearer", "none", "basic", "too-long", "space", "two-headers", "nul"],
)
def test_token_from_header(value, token, problem):
    got, why = token_from_header(value)
    assert got == token
    assert (why is None) if problem is None else problem in why


def test_instance_ids_and_query_arguments():
    assert check_instance_id("i-0123456789abcdef0") == "i-0123456789abcdef0"
    assert check_instance_id("i-01234567") == "i-01234567"
    for bad in ("i-0", "I-0123456789abcdef0", "i-0123456789abcdef0\n", "../hub", "i-" + "0" * 300):
        with pytest.raises(ReportError, match="instance id .* is not an EC2 instance id"):
            check_instance_id(bad)
    check_query({"failed": [b"1"]}, ("failed",))
    with pytest.raises(ReportError, match="'token' are not allowed here; allowed: none"):
        check_query({"token": [b"x"]})
    with pytest.raises(ReportError, match="failed is given 2 times"):
        check_query({"failed": [b"1", b"0"]}, ("failed",))


class _Spawner:
    orm_spawner = None  # no hub database: the hub's default "server" role


def test_server_token_scopes_add_the_progress_scope_once_defined(monkeypatch):
    from jupyterhub import scopes

    monkeypatch.delitem(scopes.scope_definitions, PROGRESS_SCOPE, raising=False)
    # without configure_service the hub does not know the scope: asking for it would fail
    # every spawn, so it is not asked for
    assert server_token_scopes(_Spawner()) == ["users:activity!user", "access:servers!server"]
    monkeypatch.setitem(scopes.scope_definitions, PROGRESS_SCOPE, {"description": "x"})
    assert server_token_scopes(_Spawner())[-1] == "custom:mliy-progress!server"
    assert progress_scope("ann", "") == "custom:mliy-progress!server=ann/"


def hub_spawner_row(db):
    """A user's spawner row in the hub database ``db``."""
    from jupyterhub import orm

    user = orm.User(name="ann")
    db.add(user)
    db.commit()
    row = orm.Spawner(user=user, name="")
    db.add(row)
    db.commit()
    return row


def test_server_token_scopes_read_the_server_role_once_per_hub_database():
    # JupyterHub asks for them at every spawn, on its loop: the role comes from the
    # hub's load_roles at start-up, so one query per hub database is enough
    from jupyterhub import orm
    from sqlalchemy import create_engine, event
    from sqlalchemy.orm import Session

    engine = create_engine("sqlite://")
    orm.Base.metadata.create_all(engine)
    db = Session(engine)
    db.add(orm.Role(name="server", scopes=["users:activity!user", "read:users:name"]))
    db.commit()
    statements = []
    event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    # the session is the spawner row's (no Spawner.db: JupyterHub warns on reading it)
    spawner = SimpleNamespace(orm_spawner=hub_spawner_row(db))
    statements.clear()
    first, again = server_token_scopes(spawner), server_token_scopes(spawner)
    assert first == again
    assert first[:2] == ["users:activity!user", "read:users:name"]
    assert len(statements) == 1, statements
    other = create_engine("sqlite://")  # another hub's database: its own role
    orm.Base.metadata.create_all(other)
    with Session(other) as db2:
        db2.add(orm.Role(name="server", scopes=["access:servers!server"]))
        db2.commit()
        row = hub_spawner_row(db2)
        assert server_token_scopes(SimpleNamespace(orm_spawner=row))[0] == "access:servers!server"
    db.close()


def test_rate_limiter_bursts_then_refills():
    now = [100.0]
    limiter = RateLimiter(rate=10, burst=3, clock=lambda: now[0])
    assert [limiter.allow("i-1") for _ in range(3)] == [0, 0, 0]
    assert limiter.allow("i-1") == pytest.approx(0.1)
    assert limiter.allow("i-2") == 0  # other keys have their own bucket
    now[0] += 0.1
    assert limiter.allow("i-1") == 0
    assert limiter.allow("i-1") > 0
    now[0] += 10
    assert [limiter.allow("i-1") for _ in range(4)][:3] == [0, 0, 0]


def test_rate_limiter_drops_idle_keys():
    now = [0.0]
    limiter = RateLimiter(rate=1, burst=1, clock=lambda: now[0], max_keys=2)
    for key in ("a", "b"):
        limiter.allow(key)
    now[0] += 5
    limiter.allow("c")
    assert set(limiter._buckets) == {"c"}


_RECORD = InstanceRecord("i-1", "alice", "gpu", "stack", REGION, None, None)
_ALICE_SCOPES = ["servers!user=alice", f"{START_SCOPE}!user=alice", "delete:servers!user=alice"]


@pytest.mark.parametrize(
    ("model", "action", "refused_with"),
    [
        ({"kind": "user", "name": "alice", "scopes": _ALICE_SCOPES}, "stop", None),
        (
            {"kind": "user", "name": "alice", "scopes": [f"{START_SCOPE}!server=alice/gpu"]},
            "start",
            None,
        ),
        (
            {"kind": "user", "name": "alice", "scopes": [f"{START_SCOPE}!server=alice/gpu"]},
            "stop",
            "'delete:servers'",
        ),
        (
            {"kind": "user", "name": "alice", "scopes": ["access:servers!server=alice/gpu"]},
            "start",
            repr(START_SCOPE),
        ),
        ({"kind": "user", "name": "bob", "scopes": ["servers!user=bob"]}, "stop", "another user"),
        (
            {"kind": "user", "name": "root", "admin": True, "scopes": ["admin:servers", "servers"]}
            | {"scopes": [START_SCOPE, "delete:servers"]},
            "terminate",
            None,
        ),
        (
            {"kind": "user", "name": "root", "admin": True, "scopes": ["read:users:name"]},
            "stop",
            "lacks the scope",
        ),
        ({"kind": "service", "name": "cull", "scopes": ["servers"]}, "stop", "only users"),
    ],
    ids=[
        "owner",
        "owner-start-only-token-starts",
        "owner-start-only-token-cannot-stop",
        "owner-server-token",
        "other-user",
        "admin",
        "admin-restricted-token",
        "service-token",
    ],
)
def test_refusal(model, action, refused_with):
    reason = refusal(model, _RECORD, action)
    if refused_with is None:
        assert reason is None
    else:
        assert refused_with in reason


def _config():
    from traitlets.config import Config

    return Config()


def test_configure_service_adds_service_and_role(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-from-hub-env")
    c = _config()
    c.JupyterHub.db_url = f"sqlite:///{tmp_path}/hub/jupyterhub.sqlite"
    service = configure_service(c, port=18123, log_dir="logs", log_levels={"aws": "DEBUG"})
    assert c.JupyterHub.services == [service]
    assert service["name"] == "mliy"
    assert service["url"] == "http://127.0.0.1:18123"
    assert service["command"][1:] == ["-m", "mliy_spawner.service"]
    env = service["environment"]
    assert env["MLIY_STORE_URL"] == f"sqlite:///{tmp_path}/hub/mliy.sqlite"
    assert env["MLIY_LOG_LEVELS"] == "aws=DEBUG"
    assert Path(env["MLIY_LOG_DIR"]).is_absolute()
    # the secret is read from the hub's environment when the service starts, not stored
    assert "s3cr3t" not in repr(c)
    assert env["AWS_SECRET_ACCESS_KEY"](None) == "s3cr3t-from-hub-env"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "rotated")
    assert env["AWS_SECRET_ACCESS_KEY"](None) == "rotated"
    role, user_role = c.JupyterHub.load_roles
    assert role["services"] == ["mliy"]
    assert role["scopes"] == SERVICE_SCOPES
    assert user_role == {
        "name": "user",
        "scopes": ["self", "access:services!service=mliy", "custom:mliy-progress!user"],
    }
    assert list(c.JupyterHub.custom_scopes) == ["custom:mliy-progress"]
    assert c.JupyterHub.custom_scopes["custom:mliy-progress"]["description"]


def test_configure_service_joins_existing_role_and_refuses_duplicates():
    c = _config()
    c.JupyterHub.load_roles = [
        {"name": "mliy-service", "scopes": ["servers"], "services": ["x"]},
        {"name": "user", "scopes": ["self", "read:groups"]},
    ]
    configure_service(c, port=18124, store_url="postgresql://db/mliy")
    assert c.JupyterHub.load_roles[0]["services"] == ["mliy", "x"]
    assert c.JupyterHub.load_roles[1]["scopes"] == [
        "self",
        "read:groups",
        "access:services!service=mliy",
        "custom:mliy-progress!user",
    ]
    assert c.JupyterHub.services[0]["environment"]["MLIY_STORE_URL"] == "postgresql://db/mliy"
    with pytest.raises(ValueError, match="already has a service named 'mliy'"):
        configure_service(c, port=18125)


def test_configure_service_points_the_spawner_at_the_same_store():
    c = _config()
    service = configure_service(c, port=18128, store_url="sqlite:////srv/hub/mliy.sqlite")
    assert c.MLiySpawner.store_url == "sqlite:////srv/hub/mliy.sqlite"
    assert service["environment"]["MLIY_STORE_URL"] == "sqlite:////srv/hub/mliy.sqlite"


def test_configure_service_uses_the_spawners_store_when_configured():
    c = _config()
    c.JupyterHub.db_url = "sqlite:////srv/hub/jupyterhub.sqlite"
    c.MLiySpawner.store_url = "sqlite:////data/mliy/store.sqlite"
    service = configure_service(c, port=18129)
    assert service["environment"]["MLIY_STORE_URL"] == "sqlite:////data/mliy/store.sqlite"
    assert c.MLiySpawner.store_url == "sqlite:////data/mliy/store.sqlite"


def test_configure_service_keeps_a_store_password_out_of_the_config():
    c = _config()
    url = "postgresql://mliy:pa55word@db.example.com/mliy"
    service = configure_service(c, port=18127, store_url=url)
    assert "pa55word" not in repr(c)
    assert service["environment"]["MLIY_STORE_URL"](None) == url


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"port": 0}, "port is 0"),
        ({"port": "8080"}, "port is '8080'"),
        ({"port": True}, "port is True"),
        ({"log_levels": {"web": "INFO"}}, "unknown logger 'web'"),
        ({"log_levels": {"aws": "LOUD"}}, "'LOUD'"),
    ],
    ids=["port-zero", "port-string", "port-bool", "unknown-logger", "unknown-level"],
)
def test_configure_service_refuses_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        configure_service(_config(), **kwargs)


def test_settings_from_env_names_missing_variables():
    with pytest.raises(ValueError, match="JUPYTERHUB_API_TOKEN"):
        Settings.from_env(
            {"JUPYTERHUB_SERVICE_URL": "http://127.0.0.1:1", "JUPYTERHUB_API_URL": "x"}
        )
    env = {
        "JUPYTERHUB_SERVICE_URL": "http://127.0.0.1:18126",
        "JUPYTERHUB_API_URL": "http://127.0.0.1:8081/hub/api",
        "JUPYTERHUB_API_TOKEN": "tok-should-not-show",
        "MLIY_PROGRESS_RATE": "fast",
    }
    with pytest.raises(ValueError, match="MLIY_PROGRESS_RATE='fast'"):
        Settings.from_env(env)
    env["MLIY_PROGRESS_RATE"] = "5"
    settings = Settings.from_env(env)
    assert settings.listen == ("127.0.0.1", 18126)
    assert settings.progress_rate == 5
    assert "tok-should-not-show" not in repr(settings)
    assert parse_log_levels("service=DEBUG, aws=info") == {"service": "DEBUG", "aws": "info"}
    with pytest.raises(ValueError, match="'service'"):
        parse_log_levels("service")


# ---- against a real hub ------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto_url():
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
}


# the per-address limit (lifted by UNLIMITED) has its own hub below (limited_hub)


@pytest.fixture(scope="module")
def hub(tmp_path_factory, moto_url):
    hub = start_hub(
        tmp_path_factory.mktemp("servicehub"),
        aws_endpoint_url=moto_url,
        hub_env=AWS_ENV,
        environment=UNLIMITED,
    )
    hub.tokens = []  # every token a test used, to check the logs never show them
    hub.user_tokens = {}  # user -> a token, for tests that need just one
    yield hub
    hub.stop()


@pytest.fixture(scope="module")
def store(hub):
    s = Store(hub.store_url)
    yield s
    s.close()


def _user(hub, name, admin=False):
    hub.create_user(name, admin=admin, exist_ok=True)
    token = hub.user_token(name)
    hub.tokens.append(token)
    return token


def _server(hub, user, server_name=""):
    """Spawn a server unless it runs; its instance id and the API token the hub gave it."""
    if not _running(hub, user, server_name):
        hub.start_server(user, server_name)
    instance_id = instance_id_for(user, server_name)
    token = hub.server_token(instance_id)
    hub.tokens.append(token)
    return instance_id, token


def _recorded_instance(hub, store, user, server_name):
    """An instance recorded for the user's server (not spawned) and a token that may
    report for it: made by the user with the progress scope on that server only."""
    if user not in hub.user_tokens:
        hub.user_tokens[user] = _user(hub, user)
    instance_id = instance_id_for(user, server_name)
    store.record_instance(instance_id, user, server_name, "", REGION)
    token = hub.user_token(user, [progress_scope(user, server_name)])
    hub.tokens.append(token)
    return token, instance_id


def _report(hub, instance_id, token, body):
    return hub.service(
        "POST",
        f"api/progress/{instance_id}",
        token=token,
        data=body if isinstance(body, bytes) else json.dumps(body),
        headers={"Content-Type": "application/json"},
    )


def test_server_token_reports_progress_for_its_instance(hub, store):
    _user(hub, "ann")
    instance_id, token = _server(hub, "ann")
    before = len(store.progress(instance_id))  # the fake instance's own boot steps
    steps = [
        {"step": "Mounting volume", "percent": 10},
        {"step": "Creating user <ann>", "percent": 20, "failed": False},
        {"step": "Installing packages", "percent": 40, "failed": True},
    ]
    for body in steps:
        r = _report(hub, instance_id, token, body)
        assert r.status_code == 200, r.text
        assert r.headers["Content-Type"].startswith("application/json")
    got = store.progress(instance_id)[before:]
    assert [(p.step, p.percent, p.failed) for p in got] == [
        ("Mounting volume", 10, False),
        ("Creating user <ann>", 20, False),
        ("Installing packages", 40, True),
    ]
    assert r.json()["id"] == got[-1].id


def test_mliy_form_url_works(hub, store):
    _user(hub, "mlu")
    instance_id, token = _server(hub, "mlu")
    step = "Installing R packages (CRAN) 2/3"
    r = hub.service("GET", f"ajax/progress/{instance_id}/{quote(step, safe='')}(55)", token=token)
    assert r.status_code == 200, r.text
    r = hub.service("POST", f"ajax/progress/{instance_id}/Starting%20server(90)", token=token)
    assert r.status_code == 200, r.text
    r = hub.service("GET", f"ajax/progress/{instance_id}/Boot%20failed(90)?failed=1", token=token)
    assert r.status_code == 200, r.text
    assert [(p.step, p.percent, p.failed) for p in store.progress(instance_id)] == [
        (step, 55, False),
        ("Starting server", 90, False),
        ("Boot failed", 90, True),
    ]


def test_other_users_token_is_refused(hub, store):
    _user(hub, "owen")
    instance_id, _ = _server(hub, "owen")
    other = _user(hub, "eve")
    admin = _user(hub, "root1", admin=True)
    before = store.progress(instance_id)
    for token in (other, admin):
        r = _report(hub, instance_id, token, {"step": "pwned", "percent": 100})
        assert r.status_code == 403, r.text
        assert "only its owner" in r.json()["message"]
    r = _report(hub, instance_id, hub.admin_token, {"step": "pwned", "percent": 100})
    assert r.status_code == 403
    assert "service 'test-admin'" in r.json()["message"]
    assert store.progress(instance_id) == before


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "no token"),
        ({"Authorization": "token not-a-real-token"}, "does not recognise"),
        ({"Authorization": "Basic YWxpY2U6cGFzcw=="}, "no token"),
        ({"Authorization": "token "}, "no token"),
    ],
    ids=["no-token", "unknown-token", "basic-auth", "empty-token"],
)
def test_unauthenticated_progress_is_401(hub, store, headers, message):
    _user(hub, "nat")
    instance_id, _ = _server(hub, "nat")
    before = store.progress(instance_id)
    r = hub.service(
        "POST", f"api/progress/{instance_id}", json={"step": "x", "percent": 1}, headers=headers
    )
    assert r.status_code == 401, r.text
    assert message in r.json()["message"]
    assert r.headers["WWW-Authenticate"] == "token"
    assert store.progress(instance_id) == before


def test_token_in_url_is_not_accepted(hub):
    _user(hub, "urly")
    instance_id, token = _server(hub, "urly")
    for headers in ({}, {"Sec-Fetch-Mode": "websocket"}):  # HubAuth reads it for websockets
        r = hub.service(
            "POST",
            f"api/progress/{instance_id}?token={token}",
            json={"step": "x", "percent": 1},
            headers=headers,
        )
        assert r.status_code == 401


def test_oversized_body_is_refused_before_any_handler(hub, store):
    _user(hub, "big")
    instance_id, token = _server(hub, "big")
    before = store.progress(instance_id)
    padding = " " * MAX_BODY_SIZE  # valid JSON, just too large
    body = '{"step": "x", "percent": 1}' + padding
    r = _report(hub, instance_id, token, body.encode())
    # tornado answers 400 and closes; the proxy passes that on, or answers 503 when the
    # close cut it off while it was still sending the body
    assert r.status_code in (400, 503), r.text
    assert store.progress(instance_id) == before
    # the service is still there, and a body under the limit passes
    r = _report(hub, instance_id, token, ('{"step": "ok", "percent": 2}' + " " * 1000).encode())
    assert r.status_code == 200, r.text


def test_unknown_instance_is_400(hub):
    token = _user(hub, "una")
    r = _report(hub, "i-00000000000000000", token, {"step": "x", "percent": 1})
    assert r.status_code == 400, r.text
    assert "is unknown" in r.json()["message"]
    for instance_id in ("i-0000000000000000", "<script>", "i-" + "0" * 300, "a b"):
        r = _report(hub, quote(instance_id, safe=""), token, {"step": "x", "percent": 1})
        assert r.status_code == 400, r.text
        assert "is not an EC2 instance id" in r.json()["message"]


@pytest.mark.parametrize(("body", "words"), [c[1:] for c in BAD_JSON], ids=[c[0] for c in BAD_JSON])
def test_bad_json_report_is_400(hub, store, body, words, request):
    # an instance per case: refused reports count against the rate limit too
    token, instance_id = _recorded_instance(hub, store, "val", request.node.callspec.id)
    before = store.progress(instance_id)
    r = _report(hub, instance_id, token, body)
    assert r.status_code == 400, r.text
    message = r.json()["message"]
    for word in words:
        assert word in message
    assert store.progress(instance_id) == before


@pytest.mark.parametrize(
    ("tail", "query", "words"), [c[1:] for c in BAD_MLIY], ids=[c[0] for c in BAD_MLIY]
)
def test_bad_mliy_report_is_400(hub, store, tail, query, words, request):
    token, instance_id = _recorded_instance(hub, store, "val", "mliy-" + request.node.callspec.id)
    before = store.progress(instance_id)
    r = hub.service("GET", f"ajax/progress/{instance_id}/{tail}{query}", token=token)
    assert r.status_code == 400, r.text
    for word in words:
        assert word in r.json()["message"]
    assert store.progress(instance_id) == before


def _running(hub, user, server_name=""):
    model = hub.server(user, server_name)
    return bool(model and model.get("ready"))


def test_rate_limit_answers_429(hub, store):
    _user(hub, "rat")
    instance_id, token = _server(hub, "rat")
    answers = []
    started = time.monotonic()
    for i in range(40):
        answers.append(_report(hub, instance_id, token, {"step": f"s{i}", "percent": 1}))
    elapsed = time.monotonic() - started
    codes = [r.status_code for r in answers]
    assert set(codes) == {200, 429}
    # burst of 20, refilled at 10/s
    assert codes.count(200) <= 20 + 10 * elapsed + 1
    assert codes[:20] == [200] * 20
    assert len(store.progress(instance_id)) == codes.count(200)
    refused = next(r for r in answers if r.status_code == 429)
    assert int(refused.headers["Retry-After"]) >= 1
    assert "at most 10 per second" in refused.json()["message"]
    time.sleep(0.3)
    assert _report(hub, instance_id, token, {"step": "later", "percent": 2}).status_code == 200


def test_steps_beyond_the_cap_answer_429(hub, store):
    token, instance_id = _recorded_instance(hub, store, "val", "flood")
    for n in range(MAX_STEPS_PER_INSTANCE):
        store.add_progress(instance_id, f"s{n}", 1, False)
    r = _report(hub, instance_id, token, {"step": "one more", "percent": 2})
    assert r.status_code == 429, r.text
    assert f"at most {MAX_STEPS_PER_INSTANCE} are kept" in r.json()["message"]
    assert len(store.progress(instance_id)) == MAX_STEPS_PER_INSTANCE


def test_state_changes_only_by_post(hub):
    token = _user(hub, "gus")
    instance_id, _ = _server(hub, "gus")
    r = hub.service("GET", f"api/instances/{instance_id}/stop", token=token)
    assert r.status_code == 405
    assert "POST" in r.headers["Allow"]
    assert _running(hub, "gus")
    r = hub.service("GET", f"api/progress/{instance_id}", token=token)
    assert r.status_code == 405
    r = hub.service("GET", "no/such/thing", token=token)
    assert r.status_code == 404


# ---- instance control ------------------------------------------------------------------


def _control(hub, instance_id, action, token):
    return hub.service("POST", f"api/instances/{instance_id}/{action}", token=token)


def _started(hub, user, server_name=""):
    return hub.server(user, server_name)["started"]


@pytest.mark.parametrize(
    ("owner", "controller", "admin"),
    [("olga", "olga", False), ("pia", "root2", True)],
    ids=["owner", "admin"],
)
def test_owner_or_admin_controls_named_server(hub, store, owner, controller, admin):
    _user(hub, owner)
    token = _user(hub, controller, admin=admin)
    instance_id, _ = _server(hub, owner, "work")

    r = _control(hub, instance_id, "stop", token)
    assert r.status_code in (200, 202), r.text
    assert r.json()["action"] == "stop"
    hub.wait_stopped(owner, "work")

    r = _control(hub, instance_id, "start", token)
    assert r.status_code in (200, 202), r.text
    hub.wait_ready(owner, "work")

    r = _control(hub, instance_id, "start", token)
    assert r.status_code == 409
    assert "already running" in r.json()["message"]

    first_start = _started(hub, owner, "work")
    r = _control(hub, instance_id, "restart", token)
    assert r.status_code in (200, 202), r.text
    hub.wait_ready(owner, "work")
    assert _started(hub, owner, "work") != first_start

    r = _control(hub, instance_id, "terminate", token)
    assert r.status_code == 202, r.text
    assert r.json()["state"] == "terminating"
    hub.wait_gone(owner, "work")
    assert store.owner(instance_id) is None
    r = _control(hub, instance_id, "start", token)
    assert r.status_code == 404
    # each call is in the audit trail, by whom and how it ended
    calls = store.audit_entries(user=owner, action="control-api")
    trail = [(e.reason, e.outcome) for e in reversed(calls)]
    assert trail == [
        ("stop: stopped", "ok"),
        (trail[1][0], "ok"),
        (f"start: server {owner}/work is already running", "failed"),
        (trail[3][0], "ok"),
        ("terminate: terminating", "ok"),
    ], trail
    assert trail[1][0] in ("start: starting", "start: running"), trail
    assert trail[3][0] in ("restart: starting", "restart: running"), trail
    assert {(e.actor, e.actor_kind, e.path, e.instance_id) for e in calls} == {
        (controller, "admin" if admin else "user", "control-api", instance_id)
    }


@pytest.mark.parametrize("action", ["start", "stop", "restart", "terminate"])
def test_other_user_cannot_control(hub, store, action):
    _user(hub, "quin")
    mallory = _user(hub, "mallory")
    instance_id, _ = _server(hub, "quin", "box")
    first_start = _started(hub, "quin", "box")
    r = _control(hub, instance_id, action, mallory)
    assert r.status_code == 403, r.text
    assert "another user" in r.json()["message"]
    assert _running(hub, "quin", "box")
    assert _started(hub, "quin", "box") == first_start
    assert store.owner(instance_id) is not None
    refused = store.audit_entries(actor="mallory", action="control-api", limit=1)
    assert [(e.outcome, e.user, e.reason.split(":")[0]) for e in refused] == [
        ("refused", "quin", action)
    ]


def test_restricted_tokens_cannot_control(hub):
    """The server's own token (and an admin's read-only token) lack the hub scopes."""
    _user(hub, "rita")
    instance_id, server_token = _server(hub, "rita", "nb")
    read_only_admin = hub.user_token(_user(hub, "root3", admin=True) and "root3", ["read:users"])
    hub.tokens.append(read_only_admin)
    for token in (server_token, read_only_admin):
        r = _control(hub, instance_id, "stop", token)
        assert r.status_code == 403, r.text
        assert "lacks the scope 'delete:servers'" in r.json()["message"]
    assert _running(hub, "rita", "nb")


def test_control_errors(hub):
    token = _user(hub, "sam")
    instance_id, _ = _server(hub, "sam")
    r = _control(hub, "i-0ffffffffffffffff", "stop", token)
    assert r.status_code == 404
    assert "is unknown" in r.json()["message"]
    r = _control(hub, instance_id, "reboot", token)
    assert r.status_code == 400
    assert "'reboot'" in r.json()["message"]
    assert "start, stop, restart, terminate" in r.json()["message"]
    r = hub.service("POST", f"api/instances/{instance_id}/stop")
    assert r.status_code == 401


def test_pending_server_is_409(hub):
    token = _user(hub, "tess")
    hold = hold_path(hub.hold_dir, "tess", "slow")
    hold.touch()
    try:
        hub.start_server("tess", "slow", wait=False)
        instance_id = instance_id_for("tess", "slow")
        wait_for(lambda: Path(hub.instance_dir, f"{instance_id}.token").exists(), "record")
        for action in ("start", "stop", "restart", "terminate"):
            r = _control(hub, instance_id, action, token)
            assert r.status_code == 409, r.text
            assert "pending spawn" in r.json()["message"]
    finally:
        hold.unlink()
    hub.wait_ready("tess", "slow")


def test_terminate_default_server_deletes_its_stack(hub, store, moto_url):
    token = _user(hub, "uma")
    instance_id, _ = _server(hub, "uma")
    cfn = boto3.client("cloudformation", region_name=REGION, endpoint_url=moto_url, **_creds())
    stack_id = cfn.create_stack(
        StackName="mliy-uma",
        TemplateBody=json.dumps(
            {
                "Resources": {
                    "Vpc": {"Type": "AWS::EC2::VPC", "Properties": {"CidrBlock": "10.1.0.0/16"}}
                }
            }
        ),
    )["StackId"]
    store.record_instance(instance_id, "uma", "", stack_id, REGION)

    r = _control(hub, instance_id, "terminate", token)
    assert r.status_code == 202, r.text
    assert not _running(hub, "uma")
    (stack,) = cfn.describe_stacks(StackName=stack_id)["Stacks"]
    assert stack["StackStatus"] == "DELETE_COMPLETE"
    assert store.owner(instance_id) is None
    # the default server itself stays (it cannot be removed); only stopped
    assert hub.server("uma") is not None


def _creds():
    return {
        "aws_access_key_id": AWS_ENV["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": AWS_ENV["AWS_SECRET_ACCESS_KEY"],
    }


def test_instances_page_lists_own_instances_escaped(hub, store):
    _user(hub, "hana")
    instance_id = instance_id_for("hana", "gpu")
    store.record_instance(instance_id, "hana", "gpu", "", REGION)
    store.add_progress(instance_id, "<img src=x onerror=alert(1)> & more", 30, True)
    store.record_instance(instance_id_for("ivan", ""), "ivan", "", "", REGION)

    anonymous = requests.get(f"{hub.service_url}/", allow_redirects=False, timeout=30)
    assert anonymous.status_code == 302
    assert "/hub/api/oauth2/authorize" in anonymous.headers["Location"]

    browser = hub.browser("hana")
    try:
        page = browser.get(f"{hub.service_url}/", timeout=30)
    finally:
        browser.close()
    assert page.status_code == 200, page.text
    assert page.url == f"{hub.service_url}/"
    assert page.headers["Content-Type"].startswith("text/html")
    assert instance_id in page.text
    assert "&lt;img src=x onerror=alert(1)&gt; &amp; more" in page.text
    assert "<img" not in page.text
    assert "(failed)" in page.text
    assert instance_id_for("ivan", "") not in page.text


# ---- progress only with the server's own token ------------------------------------------


def _page_oauth_token(hub, user):
    """The OAuth token the service's page holds for ``user``: another client's token.

    It is in the page's login cookie, a tornado signed value
    ``2|1:0|10:<time>|<n>:<name>|<n>:<base64 token>|<signature>``.
    """
    browser = hub.browser(user)
    try:
        page = browser.get(f"{hub.service_url}/", timeout=30)
        assert page.status_code == 200, page.text
        # HubOAuth names it after the service's OAuth client
        (cookie,) = [c for c in browser.cookies if c.name == f"service-{SERVICE}"]
    finally:
        browser.close()
    value = cookie.value.strip('"').split("|")[4].split(":", 1)[1]
    return base64.b64decode(value).decode()


def test_progress_needs_the_servers_own_token(hub, store):
    personal = _user(hub, "pat")
    instance_id, server_token = _server(hub, "pat", "nb")
    oauth = _page_oauth_token(hub, "pat")
    user_wide = hub.user_token("pat", [f"{PROGRESS_SCOPE}!user=pat"])
    other_server = hub.user_token("pat", [progress_scope("pat", "other")])
    hub.tokens.extend([oauth, user_wide, other_server])
    # the owner's personal token holds the scope for the user, not for one server
    assert f"{PROGRESS_SCOPE}!user=pat" in hub.get("/user", token=personal)["scopes"]
    assert progress_scope("pat", "nb") in hub.get("/user", token=server_token)["scopes"]
    before = store.progress(instance_id)
    for token in (personal, oauth, user_wide, other_server):
        r = _report(hub, instance_id, token, {"step": "forged", "percent": 99})
        assert r.status_code == 403, r.text
        assert "only the API token the hub gave its server" in r.json()["message"]
        assert f"'{progress_scope('pat', 'nb')}'" in r.json()["message"]
        r = hub.service("GET", f"ajax/progress/{instance_id}/forged(99)", token=token)
        assert r.status_code == 403, r.text
    assert store.progress(instance_id) == before
    assert _report(hub, instance_id, server_token, {"step": "real", "percent": 9}).ok


def test_forged_failed_report_cannot_end_a_fresh_launch(hub, store):
    personal = _user(hub, "fay")
    oauth = _page_oauth_token(hub, "fay")
    hub.tokens.append(oauth)
    instance_id = instance_id_for("fay", "fresh")
    hold = hold_path(hub.hold_dir, "fay", "fresh")
    hold.touch()
    try:
        hub.start_server("fay", "fresh", wait=False)
        wait_for(lambda: Path(hub.instance_dir, f"{instance_id}.token").exists(), "record")
        server_token = hub.server_token(instance_id)
        hub.tokens.append(server_token)
        for token in (personal, oauth):
            failed = {"step": "Boot failed", "percent": 5, "failed": True}
            assert _report(hub, instance_id, token, failed).status_code == 403
            r = hub.service(
                "GET", f"ajax/progress/{instance_id}/Boot%20failed(5)?failed=1", token=token
            )
            assert r.status_code == 403, r.text
        # nothing the spawner would act on: no failed step, the launch goes on
        assert not any(p.failed for p in store.progress(instance_id))
        assert store.owner(instance_id) is not None
        assert hub.server("fay", "fresh")["pending"] == "spawn"
    finally:
        hold.unlink()
    hub.wait_ready("fay", "fresh")
    # the server's own token may report its failure
    r = _report(
        hub, instance_id, server_token, {"step": "Boot failed", "percent": 5, "failed": True}
    )
    assert r.status_code == 200, r.text
    assert store.latest_progress(instance_id).failed


# ---- hostile input: every case its 4xx and no change in the store ----------------------


def _bad(case_id):
    """The body of the BAD_JSON case ``case_id``."""
    return next(body for name, body, _ in BAD_JSON if name == case_id)


_IID = "{iid}"
_J = f"api/progress/{_IID}"
_M = f"ajax/progress/{_IID}"
_C = f"api/instances/{_IID}"
_VALID = b'{"step": "ok", "percent": 1}'

# (id, method, path, token, extra headers, body, status, words of the message)
# token: "scoped" (the progress scope on the case's server, as the server's token has),
# "personal" (the owner's token with all the owner's scopes) or None
HOSTILE = [
    (
        "json-percent-5000-digits",
        "POST",
        _J,
        "scoped",
        {},
        _bad("percent-5000-digits"),
        400,
        ["percent"],
    ),
    ("json-nested-5000", "POST", _J, "scoped", {}, b"[" * 5000 + b"]" * 5000, 400, ["body"]),
    ("json-nested-4000", "POST", _J, "scoped", {}, b"{" * 4000, 400, ["4000 levels"]),
    ("json-percent-nan", "POST", _J, "scoped", {}, b'{"step":"a","percent":NaN}', 400, ["NaN"]),
    (
        "json-failed-infinity",
        "POST",
        _J,
        "scoped",
        {},
        b'{"step": "a", "percent": 1, "failed": Infinity}',
        400,
        ["failed", "Infinity"],
    ),
    ("json-percent-101", "POST", _J, "scoped", {}, _body(percent=101), 400, ["percent", "101"]),
    ("json-percent-negative", "POST", _J, "scoped", {}, _body(percent=-5), 400, ["percent"]),
    ("json-percent-string", "POST", _J, "scoped", {}, _body(percent="5"), 400, ["percent"]),
    ("json-array", "POST", _J, "scoped", {}, b"[1, 2]", 400, ["body", "object"]),
    ("json-bad-utf8", "POST", _J, "scoped", {}, b'{"step": "\xc3\x28"}', 400, ["UTF-8"]),
    ("json-over-8-kib", "POST", _J, "scoped", {}, _VALID + b" " * 9000, 400, ["body", "bytes"]),
    ("json-field-twice", "POST", _J, "scoped", {}, _bad("field-twice"), 400, ["2 times"]),
    ("json-query", "POST", _J + "?failed=true", "scoped", {}, _VALID, 400, ["'failed'"]),
    ("json-get", "GET", _J, "scoped", {}, None, 405, ["GET"]),
    ("mliy-step-not-utf8", "GET", _M + "/%FF%FE(10)", "scoped", {}, None, 400, ["path"]),
    ("mliy-id-not-utf8", "GET", "ajax/progress/i-%FF/a(1)", "scoped", {}, None, 400, ["id"]),
    ("mliy-failed-not-utf8", "GET", _M + "/a(1)?failed=%FF", "scoped", {}, None, 400, ["failed"]),
    ("mliy-failed-twice", "GET", _M + "/a(1)?failed=0&failed=1", "scoped", {}, None, 400, ["2"]),
    ("mliy-query", "GET", _M + "/a(1)?percent=100", "scoped", {}, None, 400, ["'percent'"]),
    ("mliy-percent-huge", "GET", _M + "/a(" + "9" * 30 + ")", "scoped", {}, None, 400, ["percent"]),
    ("mliy-step-nul", "GET", _M + "/a%00b(1)", "scoped", {}, None, 400, ["step", "printable"]),
    ("mliy-id-slashes", "GET", "ajax/progress/..%2F..%2Fhub/a(1)", "scoped", {}, None, 400, ["id"]),
    ("control-action-not-utf8", "POST", _C + "/%FF", "personal", {}, None, 400, ["action"]),
    ("control-action-nul", "POST", _C + "/stop%00", "personal", {}, None, 400, ["unknown"]),
    ("control-query", "POST", _C + "/terminate?remove=1", "personal", {}, None, 400, ["remove"]),
    ("control-bad-id", "POST", "api/instances/i-XYZ/stop", "personal", {}, None, 400, ["EC2"]),
    (
        "control-long-id",
        "POST",
        "api/instances/i-" + "0" * 300 + "/start",
        "personal",
        {},
        None,
        400,
        ["EC2"],
    ),
    ("control-get", "GET", _C + "/start", "personal", {}, None, 405, ["GET"]),
    ("control-put", "PUT", _C + "/start", "personal", {}, b"", 405, ["PUT"]),
    (
        "auth-huge-token",
        "POST",
        _J,
        None,
        {"Authorization": "token " + "a" * 5000},
        _VALID,
        401,
        [],
    ),
    ("auth-two-tokens", "POST", _J, None, {"Authorization": "token a1,token b2"}, _VALID, 401, []),
    ("auth-bearer-empty", "POST", _J, None, {"Authorization": "Bearer"}, _VALID, 401, ["no token"]),
    ("auth-tab", "POST", _J, None, {"Authorization": "token\tabc"}, _VALID, 401, ["no token"]),
    ("auth-basic", "POST", _C + "/stop", None, {"Authorization": "Basic YTpi"}, None, 401, []),
    ("auth-personal-token", "POST", _J, "personal", {}, _VALID, 403, ["lacks the scope"]),
    ("auth-personal-mliy-form", "GET", _M + "/a(1)", "personal", {}, None, 403, ["lacks"]),
]


@pytest.mark.parametrize(
    ("method", "path", "token", "headers", "body", "status", "words"),
    [c[1:] for c in HOSTILE],
    ids=[c[0] for c in HOSTILE],
)
def test_hostile_input_is_refused_and_changes_nothing(
    hub, store, method, path, token, headers, body, status, words, request
):
    server_name = "h-" + request.node.callspec.id
    scoped, instance_id = _recorded_instance(hub, store, "hostile", server_name)
    record = store.owner(instance_id)
    before = store.progress(instance_id)
    tokens = {"scoped": scoped, "personal": hub.user_tokens["hostile"], None: None}
    path = path.replace(_IID, instance_id)
    if "%FF" in path.partition("?")[0]:
        # configurable-http-proxy answers a path that is not UTF-8 itself (500, URIError)
        # and never passes it on; straight to the service it must be a 400 naming the part
        got, answer, text = hub.direct(method, path, "127.0.0.1", tokens[token], headers, body)
        content_type, message = answer["Content-Type"], json.loads(text)["message"]
    else:
        r = hub.service(method, path, token=tokens[token], headers=headers, data=body)
        got, content_type, message = r.status_code, r.headers["Content-Type"], r.text
        message = r.json()["message"]
    assert got == status, message
    assert content_type.startswith("application/json")
    for word in words:
        assert word in message
    assert store.progress(instance_id) == before
    assert store.owner(instance_id) == record
    assert hub.server("hostile", server_name) is None  # nothing was started


# ---- the per-address limit, before any token check -------------------------------------


@pytest.fixture(scope="module")
def limited_hub(tmp_path_factory):
    """A hub whose service allows 5 requests per address, refilled once in 100 s."""
    hub = start_hub(
        tmp_path_factory.mktemp("limitedhub"),
        environment={"MLIY_ADDRESS_RATE": "0.01", "MLIY_ADDRESS_BURST": "5"},
    )
    yield hub
    hub.stop()


_SOME_ID = "i-0123456789abcdef0"


def _made_up():
    return secrets.token_hex(16)


def test_address_limit_runs_before_any_token_check(limited_hub):
    hub = limited_hub
    before = hub.token_checks()
    # through the proxy: its X-Forwarded-For names the client (127.0.0.1); made-up tokens
    # cost a token check each until the address's burst is used (start_hub used one)
    codes = []
    while 429 not in codes and len(codes) < 10:
        codes.append(hub.service("POST", f"api/progress/{_SOME_ID}", token=_made_up()).status_code)
    allowed = codes.count(401)
    assert codes == [401] * allowed + [429] and 1 <= allowed <= 5
    # a client cannot name another address: the proxy appends the real one
    for forged in ({"X-Forwarded-For": "10.1.2.3"}, {"X-Real-Ip": "10.1.2.4"}):
        r = hub.service("POST", f"api/progress/{_SOME_ID}", token=_made_up(), headers=forged)
        assert r.status_code == 429
    # every endpoint of the service is limited, the page and the OAuth callback too
    for method, path in [
        ("POST", f"api/progress/{_SOME_ID}"),
        ("GET", f"ajax/progress/{_SOME_ID}/a(1)"),
        ("POST", f"api/instances/{_SOME_ID}/stop"),
        ("POST", f"api/bootstrap/{_SOME_ID}"),
        ("GET", f"api/progress/{_SOME_ID}"),
        ("GET", "no/such/thing"),
        ("GET", ""),
        ("GET", "oauth_callback?code=x&state=y"),
    ]:
        r = hub.service(method, path, token=_made_up(), allow_redirects=False)
        assert r.status_code == 429, (method, path, r.text)
        assert int(r.headers["Retry-After"]) >= 1
    assert "Too many requests from your address" in r.text  # the callback's plain text
    # straight to the service from another address: its own bucket; a peer that is no
    # trusted proxy cannot name another client in X-Forwarded-For
    answers = [
        hub.direct(
            "POST",
            f"api/progress/{_SOME_ID}",
            "127.0.0.2",
            token=_made_up(),
            headers={"X-Forwarded-For": f"10.0.0.{n}"},
        )
        for n in range(7)
    ]
    assert [status for status, _, _ in answers] == [401] * 5 + [429] * 2
    status, headers, text = answers[-1]
    assert "at most 0.01 per second" in json.loads(text)["message"]
    assert int(headers["Retry-After"]) >= 1
    # the last one, from a third address, is allowed; once the hub logged its check,
    # it has logged all the earlier ones: the refused requests cost no check
    assert hub.direct("POST", f"api/progress/{_SOME_ID}", "127.0.0.3", token=_made_up())[0] == 401
    expected = before + allowed + 5 + 1
    wait_for(lambda: hub.token_checks() >= expected, "the hub's log of token checks")
    assert hub.token_checks() == expected


def test_logs_never_show_tokens(hub):
    """Every token this module has used, and one of each kind used here, in no log."""
    owner = _user(hub, "logan")
    other = _user(hub, "lurker")
    instance_id, server_token = _server(hub, "logan")
    unknown = "0" * 8 + owner[8:]
    hub.tokens.append(unknown)
    report = {"step": "checking the logs", "percent": 5}
    assert _report(hub, instance_id, server_token, report).status_code == 200
    assert _report(hub, instance_id, other, report).status_code == 403
    assert _report(hub, instance_id, unknown, report).status_code == 401
    assert _report(hub, instance_id, hub.admin_token, report).status_code == 403
    assert _control(hub, instance_id, "start", owner).status_code == 409
    wait_for(lambda: instance_id in log_tail(hub.log_dir / "service.log"), "the service's log")
    texts = {p.name: p.read_text(errors="replace") for p in hub.log_dir.iterdir()}
    texts["jupyterhub.log (includes the service's stderr)"] = hub.hub_log_text()
    for token in [*hub.tokens, hub.admin_token]:
        for name, text in texts.items():
            assert token not in text, f"a token appears in {name}"
