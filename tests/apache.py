"""A throw-away Apache httpd for tests: Debian's ``apache2`` binary with its own config file
in a temporary folder, listening on a free 127.0.0.1 port only.

- :func:`find_apache`: the ``apache2`` (or ``httpd``) binary, or None.
- :func:`add_htpasswd_user`: a bcrypt line in an htpasswd file (``htpasswd`` from
  ``apache2-utils``, which ``apache2`` depends on).
- :func:`hub_site`: the part of the config an operator writes to put the hub behind Apache
  with header login (docs/auth-proxy.md shows the same): basic auth on ``/hub/login`` only,
  the user, group and secret headers set there and removed from every client request,
  everything proxied to configurable-http-proxy with websockets.
- :class:`ApacheServer`: ``start()`` runs ``apache2 -f <conf> -DFOREGROUND`` (as the
  ``www-data`` system user when the tests run as root: Apache will not serve as root),
  with its pid file, mutexes, runtime files and logs in the folder; ``stop()`` stops it
  and removes the folder.

Only the modules the site needs are loaded, from ``/usr/lib/apache2/modules``.
"""

import atexit
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from hubapi import free_port, log_tail, port_open, wait_for

MODULES_DIR = Path(os.environ.get("MLIY_TEST_APACHE_MODULES", "/usr/lib/apache2/modules"))
# who runs the server when the tests run as root (Debian's base system has this user)
SYSTEM_USER = "www-data"
MODULES = (
    "mpm_event",
    "authn_core",
    "authn_file",
    "auth_basic",
    "authz_core",
    "authz_user",
    "headers",
    "proxy",
    "proxy_http",
    "proxy_wstunnel",
)

BASE_CONFIG = """\
ServerRoot "{root}"
ServerName 127.0.0.1
Listen 127.0.0.1:{port}
PidFile "{root}/httpd.pid"
DefaultRuntimeDir "{root}/run"
Mutex file:{root}/run default
ErrorLog "{root}/error.log"
LogLevel {log_level}
LogFormat "%h %u \\"%r\\" %>s" brief
CustomLog "{root}/access.log" brief
{modules}

"""


def find_apache():
    """The Apache httpd binary (``MLIY_TEST_APACHE``, else ``apache2``/``httpd`` on PATH or
    in /usr/sbin), or None if Apache is not installed."""
    if os.environ.get("MLIY_TEST_APACHE"):
        return os.environ["MLIY_TEST_APACHE"]
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    for name in ("apache2", "httpd"):
        found = shutil.which(name, path=path)
        if found:
            return found
    return None


def add_htpasswd_user(path, user, password):
    """Add ``user`` with a bcrypt hash of ``password`` to the htpasswd file ``path``."""
    htpasswd = shutil.which("htpasswd", path=os.pathsep.join([os.environ["PATH"], "/usr/bin"]))
    if htpasswd is None:
        raise RuntimeError("htpasswd is missing: install Debian's apache2-utils")
    flags = "-iB" if Path(path).exists() else "-ciB"
    # -i: the password from stdin, never on a command line
    subprocess.run(
        [htpasswd, flags, str(path), user],
        input=password,
        text=True,
        check=True,
        capture_output=True,
    )


def _expr_string(text):
    """``text`` as a single-quoted string of an Apache expression (test values only)."""
    if any(c in text for c in "'\\\"%\n"):
        raise ValueError(f"{text!r} cannot go into the test's Apache expressions")
    return f"'{text}'"


# every header the ldap sample plugin reads (plugins/ldap.py): Apache removes them all
# from client requests, not just the ones it sets (the plugin falls back to
# AUTHENTICATE_MEMBEROF when AUTHORIZE_MEMBEROF is absent)
LDAP_PLUGIN_HEADERS = (
    "REMOTE_USER",
    "AUTHENTICATE_GIVENNAME",
    "AUTHENTICATE_SN",
    "AUTHENTICATE_MAIL",
    "AUTHENTICATE_MEMBEROF",
    "AUTHORIZE_MEMBEROF",
)


def hub_site(
    upstream,
    htpasswd,
    groups,
    user_header="REMOTE_USER",
    group_header="AUTHORIZE_MEMBEROF",
    secret=None,
    secret_header="X-MLiy-Proxy-Secret",
    plugin_headers=LDAP_PLUGIN_HEADERS,
):
    """The site config: Apache in front of configurable-http-proxy at ``upstream``.

    ``groups`` ({user: "dn;dn"}) stands in for the directory: with mod_authnz_ldap the
    group header comes from the user's memberOf attribute instead (docs/auth-proxy.md).
    With ``secret``, Apache sends it in ``secret_header`` on ``/hub/login`` only.
    ``plugin_headers`` (every header the auth plugin reads) and the secret header are
    removed from every client request.
    """
    removed = dict.fromkeys([*plugin_headers, user_header, group_header, secret_header])
    lines = [
        "ProxyRequests Off",
        "ProxyPreserveHost On",
        "# what a client sends in these headers never reaches the hub",
        *(f"RequestHeader unset {name} early" for name in removed),
        "",
        "<Location /hub/login>",
        "    AuthType Basic",
        '    AuthName "Notebooks"',
        "    AuthBasicProvider file",
        f'    AuthUserFile "{htpasswd}"',
        "    Require valid-user",
        f'    RequestHeader set {user_header} "expr=%{{REMOTE_USER}}"',
    ]
    for user, dns in groups.items():
        lines.append(
            f'    RequestHeader set {group_header} "{dns}" '
            f'"expr=%{{REMOTE_USER}} == {_expr_string(user)}"'
        )
    if secret is not None:
        lines.append(f'    RequestHeader set {secret_header} "{secret}"')
    lines += [
        "    # the user's password stays here",
        "    RequestHeader unset Authorization",
        "</Location>",
        "",
        f"ProxyPass / {upstream}/ upgrade=websocket",
        f"ProxyPassReverse / {upstream}/",
    ]
    return "\n".join(lines) + "\n"


class ApacheServer:
    """One Apache httpd in a temporary folder, on a free loopback port.

    ``site`` is the config after the base part (listening, files, modules); it may use
    ``{root}``, the folder, which :meth:`start` creates.
    """

    def __init__(self, binary, modules=MODULES, log_level="info"):
        self.binary = binary
        self.modules = modules
        self.log_level = log_level
        self.root = Path(tempfile.mkdtemp(prefix="mliy-apache-"))
        self.port = None
        self.process = None
        self._owner = None  # (uid, gid) the server runs as, None: as this process
        self._pid = os.getpid()  # only the process that started it stops it
        if os.geteuid() == 0:
            try:
                entry = pwd.getpwnam(SYSTEM_USER)
            except KeyError:
                raise RuntimeError(
                    f"the tests run as root and Apache will not serve as root: no "
                    f"{SYSTEM_USER!r} system user to run it as"
                ) from None
            self._owner = (entry.pw_uid, entry.pw_gid)
        (self.root / "run").mkdir()
        atexit.register(self.stop)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_file(self):
        return self.root / "httpd.conf"

    @property
    def error_log(self):
        return self.root / "error.log"

    def logs(self):
        """The ends of the error and access logs, for failure messages."""
        return (
            f"----- {self.error_log} -----\n{log_tail(self.error_log)}\n"
            f"----- {self.root / 'access.log'} -----\n{log_tail(self.root / 'access.log')}"
        )

    def _write_config(self, site):
        modules = "\n".join(
            f"LoadModule {name}_module {MODULES_DIR / f'mod_{name}.so'}" for name in self.modules
        )
        base = BASE_CONFIG.format(
            root=self.root, port=self.port, log_level=self.log_level, modules=modules
        )
        self.config_file.write_text(base + site)

    def _give_away(self):
        if self._owner is None:
            return
        for path in [self.root, *self.root.rglob("*")]:
            os.chown(path, *self._owner)

    def start(self, site, attempts=3):
        """Write the config with ``site`` and run Apache; returns self once it answers."""
        for _ in range(attempts):
            # the port is free when chosen; another program may take it before Apache
            # binds it: then try another
            self.port = free_port()
            self._write_config(site)
            self._give_away()
            result = subprocess.run(
                [self.binary, "-t", "-f", str(self.config_file)],
                capture_output=True,
                text=True,
                **self._as_owner(),
            )
            if result.returncode:
                raise RuntimeError(f"Apache refuses its config:\n{result.stderr}")
            if self._run():
                return self
        log = self.logs()
        self.stop()
        raise RuntimeError(f"Apache did not start; its logs:\n{log}")

    def _as_owner(self):
        if self._owner is None:
            return {}
        uid, gid = self._owner
        return {"user": uid, "group": gid, "extra_groups": []}

    def _run(self):
        with open(self.root / "stdout.log", "ab") as out:
            self.process = subprocess.Popen(
                [self.binary, "-f", str(self.config_file), "-DFOREGROUND"],
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C of the tests does not reach it half way
                **self._as_owner(),
            )

        def up():
            if self.process.poll() is not None:
                return "exited"
            return "up" if port_open(self.port) else None

        return wait_for(up, "Apache to listen", timeout=30) == "up"

    def stop(self):
        """Stop Apache (SIGTERM: the parent stops its children) and remove its folder."""
        if os.getpid() != self._pid:  # a forked child exiting: not its server
            return
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None
        if self.root.exists():
            shutil.rmtree(self.root, ignore_errors=True)
