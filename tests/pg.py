"""A throw-away PostgreSQL server for tests: Debian's ``postgresql`` binaries, a cluster in a
temporary folder, listening on a free 127.0.0.1 port only.

- :func:`find_bin_dir`: the folder with ``initdb`` and ``postgres`` (``MLIY_TEST_PG_BIN``,
  else the newest ``/usr/lib/postgresql/<version>/bin``, else ``PATH``), or None.
- :class:`PostgresServer`: ``start()`` runs ``initdb`` and ``postgres`` (as the
  ``postgres`` system user when the tests run as root: PostgreSQL refuses to run as
  root), its socket and files in the temporary folder, trust authentication on
  loopback; ``create_database()`` / ``drop_database()`` give each test its own database;
  ``stop()`` shuts it down (fast mode) and removes the folder.

The server is for tests only: no fsync, trust authentication, superuser ``postgres``.
"""

import atexit
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from hubapi import free_port, log_tail, wait_for

SUPERUSER = "postgres"
# who runs the server when the tests run as root (Debian's package creates this user)
SYSTEM_USER = "postgres"


def find_bin_dir():
    """The folder holding ``initdb`` and ``postgres``, or None if PostgreSQL is not installed."""
    candidates = []
    if os.environ.get("MLIY_TEST_PG_BIN"):
        candidates.append(Path(os.environ["MLIY_TEST_PG_BIN"]))

    def version(path):
        try:
            return int(path.parent.name)
        except ValueError:
            return 0

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).parent)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "postgres").is_file():
            return folder
    return None


def _quote_identifier(name):
    return '"' + name.replace('"', '""') + '"'


class PostgresServer:
    """One PostgreSQL cluster in a temporary folder, on a free loopback port."""

    def __init__(self, bin_dir):
        self.bin_dir = Path(bin_dir)
        self.root = None
        self.port = None
        self.process = None
        self._owner = None  # (uid, gid) the server runs as, None: as this process
        self._pid = os.getpid()  # only the process that started it stops it

    @property
    def log_path(self):
        return self.root / "postgres.log"

    def url(self, database="postgres"):
        """The SQLAlchemy URL of ``database`` (SQLAlchemy 2.1: ``postgresql://`` is psycopg 3)."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    # ---- start and stop -----------------------------------------------------------------

    def _as_owner(self):
        if self._owner is None:
            return {}
        uid, gid = self._owner
        return {"user": uid, "group": gid, "extra_groups": []}

    def _run(self, *args):
        result = subprocess.run(
            [str(self.bin_dir / args[0]), *args[1:]],
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=120,
            **self._as_owner(),
        )
        if result.returncode:
            output = result.stdout + result.stderr
            raise RuntimeError(f"{args[0]} failed ({result.returncode}):\n{output}")
        return result

    def start(self, attempts=3):
        """Create the cluster and start the server; returns self once it accepts connections."""
        self.root = Path(tempfile.mkdtemp(prefix="mliy-pg-"))
        if os.geteuid() == 0:
            try:
                entry = pwd.getpwnam(SYSTEM_USER)
            except KeyError:
                raise RuntimeError(
                    f"the tests run as root and PostgreSQL refuses to: no {SYSTEM_USER!r} "
                    "system user to run it as (Debian's postgresql package creates one)"
                ) from None
            self._owner = (entry.pw_uid, entry.pw_gid)
            os.chown(self.root, *self._owner)
        self._run(
            "initdb",
            "--pgdata",
            str(self.root / "data"),
            "--username",
            SUPERUSER,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--locale",
            "C",
            "--no-sync",
        )
        atexit.register(self.stop)
        for attempt in range(attempts):
            # the port is free when chosen; another program may take it before postgres
            # binds it: then try another
            self.port = free_port()
            if self._start_server():
                return self
            if attempt == attempts - 1:
                log = log_tail(self.log_path)
                self.stop()
                raise RuntimeError(f"postgres did not start; its log:\n{log}")
        return self

    def _start_server(self):
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.root),
            "max_connections": "200",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
        }
        args = [str(self.bin_dir / "postgres"), "-D", str(self.root / "data")]
        for name, value in settings.items():
            args += ["-c", f"{name}={value}"]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                args,
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C of the tests does not reach it half way
                **self._as_owner(),
            )

        def ready():
            if self.process.poll() is not None:
                return "exited"
            try:
                with self.connect("postgres"):
                    return "ready"
            except Exception:
                return None

        state = wait_for(ready, "postgres to accept connections", timeout=60)
        return state == "ready"

    def stop(self):
        """Shut the server down (fast: open connections are ended) and remove its folder."""
        if os.getpid() != self._pid:  # a forked child exiting: not its server
            return
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None
        if self.root is not None and self.root.exists():
            shutil.rmtree(self.root, ignore_errors=True)

    # ---- databases ----------------------------------------------------------------------

    def connect(self, database="postgres"):
        """A psycopg connection (autocommit) to ``database`` as the superuser."""
        import psycopg

        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=SUPERUSER,
            dbname=database,
            autocommit=True,
            connect_timeout=5,
        )

    def create_database(self, name):
        """Create the empty database ``name``; returns its SQLAlchemy URL."""
        with self.connect() as conn:
            conn.execute(f"CREATE DATABASE {_quote_identifier(name)}")
        return self.url(name)

    def drop_database(self, name):
        """Drop ``name``, ending any session still connected to it."""
        with self.connect() as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {_quote_identifier(name)} WITH (FORCE)")

    def databases(self):
        with self.connect() as conn:
            rows = conn.execute("SELECT datname FROM pg_database WHERE NOT datistemplate")
            return sorted(name for (name,) in rows)
