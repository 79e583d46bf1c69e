"""A real JupyterHub on PostgreSQL: the hub's ``db_url`` and the store's ``store_url`` in one
PostgreSQL database (the test server of ``tests/pg.py``), with the ``mliy`` service and
the fake spawner of the service tests (``servicehub.SETTINGS``: it records its instance
in the store and hands the instance its token). A server is spawned, reports progress
through the service, and is stopped; the hub is restarted on the same database and finds
its user and the store its rows. The hub's ``alembic_version`` and the store's
``mliy_alembic_version`` live side by side.
"""

import secrets
import sys

import pytest
import requests
import sqlalchemy as sa
from fakespawner import REGION, instance_id_for
from hubapi import (
    HubClient,
    free_port,
    log_tail,
    start_jupyterhub,
    stop_process,
    write_hub_config,
)
from servicehub import SETTINGS

from mliy_spawner import store_migrations
from mliy_spawner.store import Store

pytestmark = pytest.mark.e2e

POSTGRES_SETTINGS = SETTINGS + "c.JupyterHub.db_url = {pg_db_url!r}\n"

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
}


class PostgresHub:
    """A hub with the ``mliy`` service whose database and store are ``url``."""

    def __init__(self, root, url):
        self.root = root
        self.url = url
        for sub in ("instances", "hold", "logs"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self.admin_token = secrets.token_hex(32)
        self.service_port = free_port()
        self.config_file, ports = write_hub_config(
            root,
            POSTGRES_SETTINGS,
            pg_db_url=url,
            store_url=url,
            instance_dir=str(root / "instances"),
            hold_dir=str(root / "hold"),
            admin_token=self.admin_token,
            service_port=self.service_port,
            log_dir=str(root / "logs"),
            aws_endpoint_url="",
            environment={},
        )
        self.client = HubClient(f"http://127.0.0.1:{ports['public_port']}", self.admin_token)
        self.process = None
        self.starts = 0

    def service(self, method, path, token=None, **kwargs):
        headers = kwargs.pop("headers", {})
        if token is not None:
            headers["Authorization"] = f"token {token}"
        return self.client.session.request(
            method,
            f"{self.client.url}/services/mliy/{path}",
            headers=headers,
            timeout=60,
            **kwargs,
        )

    def start(self):
        def service_up():
            try:
                return self.service("POST", "api/progress/i-0", json={}).status_code == 401
            except requests.ConnectionError:
                return False

        self.starts += 1
        log = self.root / f"jupyterhub-{self.starts}.log"
        self.process = start_jupyterhub(
            self.config_file, self.client, log, env=AWS_ENV, up=service_up, timeout=90
        )

    def stop(self):
        if self.process is not None:
            stop_process(self.process)
            self.process = None


@pytest.fixture
def pg_hub(request, tmp_path, pg_url):
    hub = PostgresHub(tmp_path, pg_url)
    yield hub
    hub.stop()
    hub.client.session.close()
    report = getattr(request.node, "mliy_report_call", None)  # e2e/conftest.py's hook
    if report is not None and report.failed:
        for log in sorted(tmp_path.glob("jupyterhub-*.log")):
            sys.stderr.write(f"\n===== {log} =====\n{log_tail(log)}\n")


def one_column(url, query):
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [row[0] for row in conn.execute(sa.text(query))]
    finally:
        engine.dispose()


def test_a_hub_and_its_store_on_postgresql_spawn_report_and_stop(pg_hub):
    assert pg_hub.url.startswith("postgresql://")
    pg_hub.start()
    hub = pg_hub.client
    hub.create_user("pgalice")
    hub.start_server("pgalice", "gpu")
    instance_id = instance_id_for("pgalice", "gpu")
    token = (pg_hub.root / "instances" / f"{instance_id}.token").read_text()

    # the instance reports through the service (its own process, the same store)
    for step, percent in [("Mounting volume", 10), ("Installing packages", 60)]:
        r = pg_hub.service(
            "POST",
            f"api/progress/{instance_id}",
            token=token,
            json={"step": step, "percent": percent},
        )
        assert r.status_code == 200, r.text

    store = Store(pg_hub.url)
    try:
        owner = store.owner(instance_id)
        assert (owner.user, owner.server_name) == ("pgalice", "gpu")
        assert [(p.step, p.percent) for p in store.progress(instance_id)][-2:] == [
            ("Mounting volume", 10),
            ("Installing packages", 60),
        ]
    finally:
        store.close()

    # the hub's own rows are in PostgreSQL, beside the store's, each with its version table
    assert "pgalice" in one_column(pg_hub.url, "SELECT name FROM users")
    assert len(one_column(pg_hub.url, "SELECT version_num FROM alembic_version")) == 1
    assert one_column(pg_hub.url, f"SELECT version_num FROM {store_migrations.VERSION_TABLE}") == [
        store_migrations.head()
    ]

    r = hub.api("DELETE", "/users/pgalice/servers/gpu")
    assert r.status_code in (202, 204), r.text
    hub.wait_stopped("pgalice", "gpu")
    model = hub.server("pgalice", "gpu")
    assert model is not None and not model["ready"]

    # a restart on the same database: the hub finds its user and server, the store its
    # rows (its start-up finds the schema at head), and the server starts again
    pg_hub.stop()
    pg_hub.start()
    assert hub.server("pgalice", "gpu") is not None
    hub.start_server("pgalice", "gpu")
    store = Store(pg_hub.url)
    try:
        assert store.owner(instance_id).user == "pgalice"
        assert len(store.progress(instance_id)) >= 2
    finally:
        store.close()
    r = hub.api("DELETE", "/users/pgalice/servers/gpu")
    assert r.status_code in (202, 204), r.text
    hub.wait_stopped("pgalice", "gpu")
