"""Logging setup for the four ``mliy.*`` loggers (MLiy's auth, boto, launch and web logs).

``mliy.auth``     header login and auth plugins
``mliy.aws``      every AWS call: operation, duration, outcome (never its parameters)
``mliy.launch``   spawner lifecycle: stacks, instances, progress
``mliy.service``  the ``mliy`` hub service: progress reports, control requests

Records always propagate to the process's own handlers (the hub's or the service's
console). :func:`configure_logging` sets each logger's level and, given a folder, adds
one file per logger there (``auth.log``, ``aws.log``, ``launch.log``, ``service.log``).
They name users, instances and stacks, so files this module creates are 0600 and folders
0700 (:func:`private_folder`, :func:`private_file`, which the store's SQLite file uses too).
"""

import logging
import os

#: The areas, each logged by ``mliy.<area>`` into ``<area>.log``.
AREAS = ("auth", "aws", "launch", "service")
DEFAULT_LEVEL = logging.INFO
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# marks the handlers this module added, so a second call replaces instead of doubling them
_MARK = "_mliy_log_file"


def private_folder(path):
    """Create ``path`` and its missing parents, each 0700; existing folders are left as
    they are."""
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    if parent != path and not os.path.isdir(parent):
        private_folder(parent)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return
    os.chmod(path, 0o700)  # mkdir's mode went through the umask


def private_file(path):
    """Create the empty file ``path`` 0600 unless it exists (then it is left as it is),
    before a library (logging, SQLite) creates it with the umask's mode, often 0644."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, 0o600)  # os.open's mode went through the umask
    finally:
        os.close(fd)


def _area(key):
    area = key[len("mliy.") :] if key.startswith("mliy.") else key
    if area not in AREAS:
        allowed = ", ".join(f"{a!r} or 'mliy.{a}'" for a in AREAS)
        raise ValueError(f"unknown logger {key!r} in log levels; one of {allowed}")
    return area


def _level(key, value):
    if isinstance(value, bool):
        raise ValueError(f"log level for {key!r} is {value!r}; use a level name or number")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        if value.strip().isdigit():
            return int(value)
        level = logging.getLevelName(value.strip().upper())
        if isinstance(level, int):
            return level
    raise ValueError(
        f"log level for {key!r} is {value!r}; one of DEBUG, INFO, WARNING, ERROR, CRITICAL"
    )


def parse_levels(levels):
    """``{"aws": "debug", "mliy.service": 10}`` -> ``{"aws": 10, "service": 10}``, checked."""
    if levels is None:
        return {}
    if not isinstance(levels, dict):
        raise ValueError(f"log levels must be a dict of logger -> level, not {levels!r}")
    return {_area(key): _level(key, value) for key, value in levels.items()}


def configure_logging(levels=None, log_dir=None):
    """Set the levels of the ``mliy.*`` loggers and, with ``log_dir``, log each to a file.

    ``levels`` maps an area (``"aws"``) or logger name (``"mliy.aws"``) to a level name or
    number; areas not named get INFO. ``log_dir`` (created if missing) receives
    ``auth.log``, ``aws.log``, ``launch.log`` and ``service.log``, created 0600 (the
    folder, when created here, 0700). Calling again replaces
    the files and levels set before (idempotent). Returns ``{area: logger}``.
    """
    parsed = parse_levels(levels)
    if log_dir:
        private_folder(log_dir)
    loggers = {}
    for area in AREAS:
        logger = logging.getLogger(f"mliy.{area}")
        logger.setLevel(parsed.get(area, DEFAULT_LEVEL))
        for handler in [h for h in logger.handlers if getattr(h, _MARK, False)]:
            logger.removeHandler(handler)
            handler.close()
        if log_dir:
            path = os.path.join(log_dir, f"{area}.log")
            private_file(path)
            handler = logging.FileHandler(path, encoding="utf-8")
            handler.setFormatter(logging.Formatter(FILE_FORMAT))
            setattr(handler, _MARK, True)
            logger.addHandler(handler)
        loggers[area] = logger
    return loggers


_attached = {"handlers": False, "settings": None}


def attach_to_hub_log(hub_logger, levels=None, log_dir=None):
    """Send ``mliy.*`` records to the hub's own console handlers, and apply ``levels``
    and ``log_dir`` (see :func:`configure_logging`) when they differ from the last ones.

    JupyterHub puts its handlers on its application logger, not on the root logger, so
    without this the ``mliy.*`` INFO lines would go nowhere. The handlers are attached
    once per process; every spawner calls this, and only a change of settings (a
    reloaded config) reconfigures the files.
    """
    settings = (repr(sorted((levels or {}).items())), log_dir or None)
    if settings != _attached["settings"]:
        configure_logging(levels, log_dir)
        _attached["settings"] = settings
    if _attached["handlers"]:
        return
    _attached["handlers"] = True
    parent = logging.getLogger("mliy")
    handlers = [h for h in getattr(hub_logger, "handlers", ()) if h not in parent.handlers]
    if handlers:
        for handler in handlers:
            parent.addHandler(handler)
        parent.propagate = False  # the hub's handlers print them; avoid root doubling
