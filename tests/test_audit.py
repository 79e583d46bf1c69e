"""Who the audit trail names: the actor and path from the hub's request handler, the
handler found for a start, a stop (in the call chain) and a removal (in its own task),
and this package acting on its own; plus the store's filters and retention."""

import asyncio
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine
from tornado.web import Application, RequestHandler

from mliy_spawner import audit
from mliy_spawner.store import Store


class FakeHandler(RequestHandler):
    """A tornado handler as JupyterHub's: ``current_user`` a user or service model."""

    def __init__(self, path, current, method="DELETE", headers=None, query=""):
        uri = path + (f"?{query}" if query else "")
        request = HTTPServerRequest(
            start_line=RequestStartLine(method, uri, "HTTP/1.1"),
            headers=HTTPHeaders({"Host": "127.0.0.1", **(headers or {})}),
            connection=SimpleNamespace(set_close_callback=lambda cb: None),
        )
        super().__init__(Application(), request)
        self._current = current

    @property
    def current_user(self):
        if self._current is None:
            raise RuntimeError("Must call async get_current_user first!")
        return self._current


def user(name, admin=False):
    return SimpleNamespace(name=name, admin=admin, kind="user")


def service(name):
    return SimpleNamespace(name=name, kind="service")


API = "/hub/api/users/ann/server"
TOKEN = {"Authorization": "token abc"}


@pytest.mark.parametrize(
    ("path", "current", "headers", "query", "expected"),
    [
        ("/hub/spawn/ann", user("ann"), {}, "", ("ann", "user", "form")),
        (API, user("ann"), TOKEN, "", ("ann", "user", "rest")),
        (API, user("ann"), {}, "token=abc", ("ann", "user", "rest")),
        (API, user("ann"), {"Referer": "http://hub/hub/home"}, "", ("ann", "user", "hub-page")),
        # an admin on their own server is a user; on another's, an admin
        (API, user("ann", admin=True), TOKEN, "", ("ann", "user", "rest")),
        (API, user("root", admin=True), TOKEN, "", ("root", "admin", "rest")),
        (
            API,
            user("root", admin=True),
            {"Referer": "http://hub.example/hub/admin"},
            "",
            ("root", "admin", "admin-panel"),
        ),
        (API, service("idle-culler"), TOKEN, "", ("idle-culler", "culler", "rest")),
        (API, service("reports"), TOKEN, "", ("reports", "service", "rest")),
        # the control API names who asked it; only the mliy service is believed
        (
            API,
            service("mliy"),
            {**TOKEN, audit.ACTOR_HEADER: "admin:root"},
            "",
            ("root", "admin", "control-api"),
        ),
        (API, service("mliy"), TOKEN, "", ("mliy", "service", "control-api")),
        (
            API,
            service("reports"),
            {**TOKEN, audit.ACTOR_HEADER: "user:ann"},
            "",
            ("reports", "service", "rest"),
        ),
        (API, None, TOKEN, "", ("hub", "automatic", "automatic")),
    ],
)
def test_actor_and_path_from_the_request(path, current, headers, query, expected):
    handler = FakeHandler(path, current, headers=headers, query=query)
    actor = audit.actor_from_handler(handler, "ann", {"idle-culler"}, "mliy")
    assert (actor.name, actor.kind, actor.path) == expected


@pytest.mark.parametrize(
    "value",
    ["", "root", "boss:root", "user:", "admin:ro\not", "user:a\x00b", "ADMIN:root", ":x"],
)
def test_a_bad_actor_header_from_the_service_names_the_service(value):
    handler = FakeHandler(API, service("mliy"), headers={**TOKEN, audit.ACTOR_HEADER: value})
    assert audit.actor_from_handler(handler, "ann", (), "mliy") == audit.Actor(
        "mliy", "service", "control-api"
    )


def test_a_long_actor_name_is_cut_to_the_column():
    header = "user:" + "a" * 1000
    handler = FakeHandler(API, service("mliy"), headers={**TOKEN, audit.ACTOR_HEADER: header})
    assert audit.actor_from_handler(handler, "ann", (), "mliy").name == "a" * audit.MAX_ACTOR


def test_actor_header_value_says_admin_only_on_anothers_server():
    assert audit.actor_header_value({"name": "root", "admin": True}, "ann") == "admin:root"
    assert audit.actor_header_value({"name": "ann", "admin": True}, "ann") == "user:ann"
    assert audit.actor_header_value({"name": "ann"}, "ann") == "user:ann"


def _spawner(name="ann", server="", handler=None):
    return SimpleNamespace(user=SimpleNamespace(name=name), name=server, handler=handler)


async def test_start_uses_the_handler_jupyterhub_set():
    handler = FakeHandler("/hub/spawn/ann", user("ann"), method="POST")
    assert audit.actor_for(_spawner(handler=handler)).path == "form"


async def test_stop_finds_the_handler_in_its_call_chain():
    spawner = _spawner()

    class StopHandler(FakeHandler):
        async def delete(self):
            # as BaseHandler.stop_single_user: a task of a closure over the handler
            async def stop():
                await asyncio.sleep(0)
                assert self.request  # JupyterHub's closure uses the handler (self.proxy)
                return audit.actor_for(spawner, {"idle-culler"})

            return await asyncio.ensure_future(stop())

    # a request that names no server: only the call chain leads to it
    handler = StopHandler("/hub/api/other", service("idle-culler"), "POST", TOKEN)
    assert await handler.delete() == audit.Actor("idle-culler", "culler", "rest")


async def test_removal_in_its_own_task_finds_the_request_naming_the_server():
    spawner = _spawner("ann", "gpu")
    other = _spawner("bob", "gpu")
    found = {}

    class RemoveHandler(FakeHandler):
        async def _execute_like(self):
            # as JupyterHub: delete_forever() runs in a task of its own (maybe_future)
            async def delete_forever(s):
                await asyncio.sleep(0)
                found[s.user.name] = audit.actor_for(s)

            await asyncio.ensure_future(delete_forever(spawner))
            await asyncio.ensure_future(delete_forever(other))

    handler = RemoveHandler(
        "/hub/api/users/ann/servers/gpu", user("root", admin=True), headers=TOKEN
    )
    await asyncio.ensure_future(handler._execute_like())
    assert found["ann"] == audit.Actor("root", "admin", "rest")
    # a running request about another server is not taken for this one's
    assert found["bob"] == audit.HUB


async def test_acting_as_names_this_package_and_its_reason_in_started_tasks():
    spawner = _spawner()

    async def stop():
        return audit.actor_for(spawner), audit.acting_reason()

    with audit.acting_as(audit.AUTOMATIC, "budget: students is spent"):
        actor, reason = await asyncio.ensure_future(stop())
    assert actor == audit.AUTOMATIC and reason == "budget: students is spent"
    assert audit.actor_for(spawner) == audit.HUB and audit.acting_reason() == ""


def test_store_filters_and_purges(store_url):
    store = Store(store_url)
    now = datetime.now(UTC)
    old = now - timedelta(days=400)
    store.add_audit("launch", actor="ann", actor_kind="user", user="ann", when=old)
    store.add_audit("stop", actor="idle-culler", actor_kind="culler", user="ann", when=now)
    store.add_audit("launch", actor="root", actor_kind="admin", user="bob", outcome="refused")
    assert [e.action for e in store.audit_entries(user="ann")] == ["stop", "launch"]
    assert [e.user for e in store.audit_entries(actor="root")] == ["bob"]
    assert [e.actor for e in store.audit_entries(outcome="refused")] == ["root"]
    assert len(store.audit_entries(since=now - timedelta(days=1))) == 2
    assert store.purge_audit(now - timedelta(days=365)) == 1
    assert [e.actor for e in store.audit_entries()] == ["root", "idle-culler"]
    store.close()


async def test_bad_options_are_refused_before_any_await_and_recorded_after(make_spawner):
    from tornado.web import HTTPError

    from mliy_spawner import spawner as spawner_module

    spawner = make_spawner()
    hook = spawner._run_apply_user_options({"launch_group": "nope"})
    # the 400 comes on the hook's first step: JupyterHub (slow_spawn_timeout 0 in the
    # demo) answers it, not a 202 for a spawn that then fails
    with pytest.raises(HTTPError) as refused:
        hook.send(None)
    assert refused.value.status_code == 400
    await asyncio.gather(*spawner_module._audit_tasks)
    [entry] = spawner.store.audit_entries(outcome="refused")
    assert (entry.action, entry.user) == ("launch", "alice")
    assert entry.reason.startswith("validation: ") and "'nope'" in entry.reason
