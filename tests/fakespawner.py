"""A spawner for hub tests that launches nothing (imported by the hub process).

``start()`` records the server's "instance" in the shared store, hands the server's API
token to the instance the way the real bootstrap script receives it (a file readable by
the test, ``<instance_dir>/<instance-id>.token``), optionally holds while a hold file
exists (to keep a spawn pending), and returns the address of one tiny HTTP server in the
hub's process that answers every request with 200 (enough for the hub's readiness check).
Its server tokens get the scopes MLiySpawner's get (``server_token_scopes``), so they may
report progress to the service and the user's other tokens may not.
"""

import asyncio
import hashlib
import os
from pathlib import Path

from jupyterhub.spawner import Spawner
from tornado import web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from traitlets import Unicode, default

from mliy_spawner.service import server_token_scopes
from mliy_spawner.store import Store

REGION = "us-east-1"
_http_port = None
_stores = {}


def instance_id_for(user, server_name):
    """The fake instance id of a server: shaped like EC2's, derived from its names."""
    digest = hashlib.sha256(f"{user}/{server_name}".encode()).hexdigest()
    return "i-0" + digest[:16]


def hold_path(hold_dir, user, server_name):
    return Path(hold_dir) / f"{user}--{server_name or 'default'}.hold"


class _Ok(web.RequestHandler):
    def get(self, *args):
        self.write("ok")


async def _ensure_http_server():
    global _http_port
    if _http_port is None:
        sockets = bind_sockets(0, "127.0.0.1")
        HTTPServer(web.Application([(r"/.*", _Ok)])).add_sockets(sockets)
        _http_port = sockets[0].getsockname()[1]
    return _http_port


class FakeSpawner(Spawner):
    store_url = Unicode(help="SQLAlchemy URL of the mliy store to record instances in.").tag(
        config=True
    )
    instance_dir = Unicode(help="Folder where each fake instance receives its API token.").tag(
        config=True
    )
    hold_dir = Unicode(
        help="Folder of hold files: while <user>--<server>.hold exists, start() waits."
    ).tag(config=True)

    _running = False

    @default("server_token_scopes")
    def _default_server_token_scopes(self):
        return server_token_scopes

    @property
    def store(self):
        if self.store_url not in _stores:
            _stores[self.store_url] = Store(self.store_url)
        return _stores[self.store_url]

    async def start(self):
        instance_id = instance_id_for(self.user.name, self.name)
        loop = asyncio.get_running_loop()
        previous = await loop.run_in_executor(None, self.store.owner, instance_id)
        await loop.run_in_executor(
            None,
            self.store.record_instance,
            instance_id,
            self.user.name,
            self.name,
            previous.stack_id if previous else "",
            REGION,
        )
        token_file = Path(self.instance_dir) / f"{instance_id}.token"
        token_file.write_text(self.api_token)
        os.chmod(token_file, 0o600)
        hold = hold_path(self.hold_dir, self.user.name, self.name)
        # the test process holds the spawn with a file: nothing here could set an Event
        while hold.exists():  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        port = await _ensure_http_server()
        self._running = True
        return ("127.0.0.1", port)

    async def stop(self, now=False):
        self._running = False

    async def poll(self):
        return None if self._running else 0
