"""The audit trail on the demo: a user's REST calls, an admin's admin-panel calls (the
login cookie, the XSRF header and the admin page as referrer, as the panel sends them)
and the instance control API each show in ``GET /services/mliy/api/audit`` with the
right actor, path and outcome, newest first; a refused launch shows as refused."""

import pytest
import requests
from hubapi import wait_for

pytestmark = pytest.mark.e2e


def _logged_in(demo, name, password):
    """A ``requests`` session after the hub's login form, as a browser would be."""
    session = requests.Session()
    session.get(f"{demo.public_url}/hub/login", timeout=30)
    r = session.post(
        f"{demo.public_url}/hub/login",
        data={
            "username": name,
            "password": password,
            "_xsrf": session.cookies.get("_xsrf", path="/hub/"),
        },
        timeout=30,
    )
    assert r.status_code == 200 and "/hub/login" not in r.url, r.text
    return session


def _panel(demo, session, method, owner, server):
    """What the admin panel sends to start (POST) or stop (DELETE) ``owner``'s server."""
    r = session.request(
        method,
        f"{demo.public_url}/hub/api/users/{owner}/servers/{server}",
        headers={
            "X-XSRFToken": session.cookies.get("_xsrf", path="/hub/"),
            "Referer": f"{demo.public_url}/hub/admin",
            "Content-Type": "application/json",
        },
        timeout=60,
    )
    assert r.status_code in (201, 202, 204), r.text


def _trail(demo, token, **query):
    r = demo.session.get(
        f"{demo.public_url}/services/mliy/api/audit",
        params=query,
        headers={"Authorization": f"token {token}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return r.json()["entries"]


def test_the_trail_names_who_did_what_by_which_path(demo, new_user):
    user = new_user(group="students")
    token = demo.user_token(user)
    boss = "admin"  # the demo's admin, who logs in with the admin password
    boss_token = demo.user_token(boss)
    url = f"/users/{user}/servers/lab"

    # a refused launch: a configuration the user's group does not offer
    r = demo.api(
        "POST",
        f"/users/{user}/servers/bad",
        token=token,
        json={"user_options": {"launch_group": "analysts", "software_config": "python"}},
    )
    assert r.status_code == 400, r.text
    # the user, through the REST API: launch, stop, resume
    demo.start_server(user, "lab", token=token)
    assert demo.api("DELETE", url, token=token).status_code in (202, 204)
    demo.wait_stopped(user, "lab")
    demo.start_server(user, "lab", token=token)
    # an admin, through the admin panel: stop, resume
    session = _logged_in(demo, boss, demo.admin_password)
    try:
        _panel(demo, session, "DELETE", user, "lab")
        demo.wait_stopped(user, "lab")
        _panel(demo, session, "POST", user, "lab")
        demo.wait_ready(user, "lab")
    finally:
        session.close()
    # the user, through the instance control API: stop
    [stack] = demo.stacks(user, "lab")
    instance_id = demo.instance_of(stack["StackId"])["InstanceId"]
    r = demo.session.post(
        f"{demo.public_url}/services/mliy/api/instances/{instance_id}/stop",
        headers={"Authorization": f"token {token}"},
        timeout=60,
    )
    assert r.status_code in (200, 202), r.text
    demo.wait_stopped(user, "lab")
    # the user removes the server
    r = demo.api("DELETE", url, token=token, json={"remove": True})
    assert r.status_code in (202, 204), r.text
    demo.wait_gone(user, "lab")

    def done():
        entries = _trail(demo, boss_token, user=user)
        return entries if entries and entries[0]["action"] == "remove" else None

    wait_for(done, "the removal in the audit trail")
    entries = list(reversed(done()))
    got = [(e["action"], e["outcome"], e["actor"], e["actor_kind"], e["path"]) for e in entries]
    assert got[:6] == [
        ("launch", "refused", user, "user", "rest"),
        ("launch", "ok", user, "user", "rest"),
        ("stop", "ok", user, "user", "rest"),
        ("resume", "ok", user, "user", "rest"),
        ("stop", "ok", boss, "admin", "admin-panel"),
        ("resume", "ok", boss, "admin", "admin-panel"),
    ], got
    # the service's record of the call and the spawner's of the stop it asked the hub for
    assert sorted(got[6:8]) == [
        ("control-api", "ok", user, "user", "control-api"),
        ("stop", "ok", user, "user", "control-api"),
    ], got
    assert got[8:] == [("remove", "ok", user, "user", "rest")], got
    assert entries[0]["reason"].startswith("validation: "), entries[0]
    assert [e["server_name"] for e in entries] == ["bad"] + ["lab"] * 8
    assert {e["stack_id"] for e in entries[1:]} == {stack["StackId"]}
    assert {e["instance_id"] for e in entries[2:]} == {instance_id}
    # a user may not read the trail
    r = demo.session.get(
        f"{demo.public_url}/services/mliy/api/audit",
        headers={"Authorization": f"token {token}"},
        timeout=30,
    )
    assert r.status_code == 403
