"""The hub-managed ``mliy`` service: progress reports from instances and the instance control API.

Add it to a hub with one line of ``jupyterhub_config.py``::

    from mliy_spawner.service import configure_service
    configure_service(c)

The hub then runs ``python -m mliy_spawner.service`` (see :mod:`.app` for the
environment it reads) behind the proxy at ``/services/mliy/``. Endpoints, answers and
rules: ``docs/service.md``.
"""

import json
import os
import sys
import weakref

from sqlalchemy.orm import object_session


def _start_scope():
    """The scope that lets a token start servers on the installed JupyterHub.

    JupyterHub 6 split ``start:servers`` out of ``servers``; on 5.x ``servers`` is the
    one that starts them (and stops them: it holds ``delete:servers``).
    """
    from jupyterhub.scopes import scope_definitions

    return "start:servers" if "start:servers" in scope_definitions else "servers"


#: The hub scope that starts servers: ``start:servers`` on JupyterHub 6, ``servers`` on 5.x.
START_SCOPE = _start_scope()

#: The hub scopes the service's own token needs: read servers (to see ``pending``),
#: start them and stop/remove them. Users' tokens are checked with the token itself.
SERVICE_SCOPES = ["read:servers", START_SCOPE, "delete:servers"]

#: The custom scope progress reports need, as ``custom:mliy-progress!server=<user>/<server>``
#: for the instance's own server. :func:`configure_service` defines it and gives users
#: ``custom:mliy-progress!user``, so the hub may grant it to tokens for their servers;
#: :func:`server_token_scopes` asks it for each server's API token, filtered to that
#: server. The owner's other tokens (personal, OAuth) hold it for the user at most, which
#: the service refuses: only the server's own token can report, or fail, its launch.
PROGRESS_SCOPE = "custom:mliy-progress"


def progress_scope(user, server_name):
    """The scope a token must hold to report progress for ``user``'s server."""
    return f"{PROGRESS_SCOPE}!server={user}/{server_name}"


#: The ``server`` role's scopes, read once per hub database: JupyterHub builds its roles
#: from ``load_roles`` at start-up only, and the query cost every spawn a round trip on the
#: hub's loop (``benchmarks/hubstorm.py``).
_SERVER_ROLE_SCOPES = weakref.WeakKeyDictionary()


def _server_role_scopes(db):
    from jupyterhub import orm

    if db is None:
        return None
    bind = db.get_bind()
    if bind not in _SERVER_ROLE_SCOPES:
        role = orm.Role.find(db, "server")
        _SERVER_ROLE_SCOPES[bind] = tuple(role.scopes) if role else None
    return _SERVER_ROLE_SCOPES[bind]


def server_token_scopes(spawner):
    """``Spawner.server_token_scopes``: the hub's ``server`` role plus the progress scope
    on this server (``...!server``; the hub fills in ``=<user>/<server>``).

    The progress scope is asked for only when :func:`configure_service` defined it: the
    hub fails a spawn whose token asks for an unknown scope.
    """
    from jupyterhub.scopes import scope_definitions

    # the session the hub's spawner row lives in, not the deprecated Spawner.db (which
    # logs a warning the first time each spawner reads it)
    orm_spawner = getattr(spawner, "orm_spawner", None)
    role_scopes = _server_role_scopes(object_session(orm_spawner) if orm_spawner else None)
    scopes = list(role_scopes) if role_scopes else ["users:activity!user", "access:servers!server"]
    if PROGRESS_SCOPE in scope_definitions:
        scopes.append(f"{PROGRESS_SCOPE}!server")
    return scopes


# Hub environment variables the service inherits, so its CloudFormation calls see the
# hub's AWS setup. JupyterHub stores a service's environment in its database, so the
# secret ones are passed as callables read when the hub starts the service: the database
# keeps None for them (JupyterHub logs "Non-jsonable data ... will persist None" once for
# each at startup). The others are copied as they are when the config loads.
FORWARDED_ENV = (
    "HOME",
    "AWS_PROFILE",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CA_BUNDLE",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_EC2_METADATA_DISABLED",
    "NO_PROXY",
)
FORWARDED_SECRET_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "HTTPS_PROXY",
    "HTTP_PROXY",
)


def _from_hub_env(name):
    def value(spawner):
        return os.environ.get(name, "")

    value.__name__ = f"hub_env_{name}"
    return value


def _secret(text):
    def value(spawner):
        return text

    return value


def _get(section, key, default=None):
    # traitlets Config sections answer unknown keys with a lazy placeholder; check first
    return section[key] if key in section else default


def configure_service(
    c,
    *,
    name="mliy",
    port=None,
    store_url=None,
    log_dir=None,
    log_levels=None,
    aws_endpoint_url=None,
    environment=None,
    cost_timezone=None,
    team_visibility="members",
    group_admins=None,
    hub_templates=True,
):
    """Add the ``mliy`` service and its role to the hub config ``c``; returns the service dict.

    The role ``<name>-service`` gives the service :data:`SERVICE_SCOPES`; the ``user``
    role gains ``access:services!service=<name>`` so users can open its page, and
    ``custom:mliy-progress!user`` (defined in ``c.JupyterHub.custom_scopes``) so their
    servers' tokens can get :data:`PROGRESS_SCOPE` (see :func:`server_token_scopes`).

    - ``name``: service name, so its URL is ``/services/<name>/``.
    - ``port``: loopback port it listens on (default: a free port chosen now).
    - ``store_url``: SQLAlchemy URL of the store shared with the spawner, also set as
      ``c.MLiySpawner.store_url`` unless that is set already or the URL holds a password
      (then set ``MLIY_STORE_URL`` in the hub's environment) (default:
      ``c.MLiySpawner.store_url`` when set, else ``mliy.sqlite`` next to
      ``c.JupyterHub.db_url``'s SQLite file; set ``db_url`` before calling this).
    - ``log_dir``, ``log_levels``: see :func:`mliy_spawner.logs.configure_logging`.
    - ``aws_endpoint_url``: a CloudFormation stand-in (moto) instead of AWS.
    - ``environment``: more environment variables for the service process.
    - ``cost_timezone``: the time zone of cost months (default: ``c.MLiySpawner.
      cost_timezone`` when set, else UTC), so the pages count months as the budgets do.
    - ``team_visibility``: ``"members"`` (a launch group's members see its costs on the
      Team page and through the API) or ``"admins"`` (only its ``group_admins``).
    - ``group_admins``: ``{"launch group": ["user", ...]}``, each group's admins.
    - ``hub_templates``: add :data:`mliy_spawner.hub_templates.PATH` to
      ``c.JupyterHub.template_paths``, after folders set there already, so the home page
      shows the costs of the user's servers and the spawn-pending page the price of what
      is launched (default: True).
    """
    from jupyterhub.utils import random_port
    from sqlalchemy.engine import make_url

    from ..logs import parse_levels
    from ..store import default_store_url

    if port is None:
        port = random_port()
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"port is {port!r}; allowed: an integer from 1 to 65535")
    if store_url is None:
        # the spawner's store, when the config names one: both must use the same tables
        store_url = _get(c.MLiySpawner, "store_url") or default_store_url(
            _get(c.JupyterHub, "db_url", "sqlite:///jupyterhub.sqlite")
        )
    # The spawner writes ownership to the same store the service reads. A URL with a
    # password stays out of the config: give the hub MLIY_STORE_URL in its environment.
    if "store_url" not in c.MLiySpawner and not make_url(str(store_url)).password:
        c.MLiySpawner.store_url = str(store_url)
    parse_levels(log_levels)  # fail at config time, naming the bad key
    if team_visibility not in ("members", "admins"):
        raise ValueError(f"team_visibility is {team_visibility!r}; allowed: members, admins")
    group_admins = dict(group_admins or {})
    for group, names in group_admins.items():
        if (
            not isinstance(group, str)
            or isinstance(names, str)
            or not all(isinstance(n, str) for n in names)
        ):
            raise ValueError(f"group_admins[{group!r}] is {names!r}; allowed: a list of user names")
    if cost_timezone is None:
        cost_timezone = _get(c.MLiySpawner, "cost_timezone")
    if hub_templates:
        from ..hub_templates import PATH

        paths = list(_get(c.JupyterHub, "template_paths", []))
        if PATH not in paths:
            c.JupyterHub.template_paths = [*paths, PATH]
    services = list(_get(c.JupyterHub, "services", []))
    if any(s.get("name") == name for s in services):
        raise ValueError(f"c.JupyterHub.services already has a service named {name!r}")

    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    env.update({k: _from_hub_env(k) for k in FORWARDED_SECRET_ENV if k in os.environ})
    # a database password must not land in the hub's database either
    store_url = str(store_url)
    env["MLIY_STORE_URL"] = _secret(store_url) if make_url(store_url).password else store_url
    if aws_endpoint_url:
        env["MLIY_AWS_ENDPOINT_URL"] = aws_endpoint_url
    if log_dir:
        env["MLIY_LOG_DIR"] = os.path.abspath(log_dir)
    if log_levels:
        env["MLIY_LOG_LEVELS"] = ",".join(f"{k}={v}" for k, v in log_levels.items())
    if cost_timezone:
        env["MLIY_COST_TIMEZONE"] = str(cost_timezone)
    env["MLIY_TEAM_VISIBILITY"] = team_visibility
    if group_admins:
        env["MLIY_GROUP_ADMINS"] = json.dumps({g: list(n) for g, n in group_admins.items()})
    env.update(environment or {})

    service = {
        "name": name,
        "url": f"http://127.0.0.1:{port}",
        "command": [sys.executable, "-m", "mliy_spawner.service"],
        "environment": env,
        # the hub's own service: logged-in users need not confirm access to it
        "oauth_no_confirm": True,
    }
    services.append(service)
    c.JupyterHub.services = services

    roles = list(_get(c.JupyterHub, "load_roles", []))
    role_name = f"{name}-service"
    for role in roles:
        if role.get("name") == role_name:
            role["services"] = sorted(set(role.get("services", [])) | {name})
            break
    else:
        roles.append(
            {
                "name": role_name,
                "description": f"The {name} service: reads, starts and stops users' servers",
                "scopes": list(SERVICE_SCOPES),
                "services": [name],
            }
        )
    # every user may open the service's page (hub OAuth checks access:services) and
    # may hold the progress scope, so the hub can grant it to their servers' tokens
    granted = [f"access:services!service={name}", f"{PROGRESS_SCOPE}!user"]
    for role in roles:
        if role.get("name") == "user":
            role["scopes"] = list(dict.fromkeys([*role.get("scopes", ["self"]), *granted]))
            break
    else:
        roles.append({"name": "user", "scopes": ["self", *granted]})
    c.JupyterHub.load_roles = roles
    custom_scopes = dict(_get(c.JupyterHub, "custom_scopes", {}))
    custom_scopes.setdefault(
        PROGRESS_SCOPE,
        {"description": "Report the boot progress of a server's MLiy instance."},
    )
    c.JupyterHub.custom_scopes = custom_scopes
    return service


__all__ = [
    "configure_service",
    "PROGRESS_SCOPE",
    "SERVICE_SCOPES",
    "START_SCOPE",
    "progress_scope",
    "server_token_scopes",
]
