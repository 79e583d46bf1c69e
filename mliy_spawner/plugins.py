"""Auth and DNS plugins: MLiy's contracts, loaded once from a folder or an entry point.

Two plugin kinds keep MLiy's function names, so MLiy plugins port with small changes:

- **auth** (:data:`AUTH_FUNCTIONS`), used by :class:`mliy_spawner.auth.MLiyAuthenticator`::

      getAuthHeader() -> str                       # header carrying the user name
      processAuthUserInfo(headers) -> dict         # {"email", "display_name", ...}
      processAuthUserGroups(headers) -> list[str]  # the user's groups
      configureAuthUser(user_info) -> dict | None  # last look at the user; None keeps it
      cleanAuthUsername(username) -> str           # header value -> JupyterHub name

  ``headers`` is a read-only, case-insensitive mapping of the login request's headers
  (repeated headers joined with a newline; UTF-8 decoded). A plugin refuses a login by
  raising ``PermissionError(message)``: the user sees a 403 page with the message.

- **dns** (:data:`DNS_FUNCTIONS`), used by the spawner, called in an executor::

      dnsDisplayName(instance_name) -> str | None  # name to show/connect; None: use the IP
      createDnsEntry(instance_name, ip)            # create or update (idempotent)
      deleteDnsEntry(instance_name, ip)            # remove; a missing record is fine

  :data:`NOOP_DNS_PLUGIN`, built in, is the default: it creates nothing and shows the IP.

Where plugins come from (see ``docs/plugins.md``):

- a **folder** (MLiy's way): every ``*.py`` file in it except ``plugin_settings.py`` and
  dot-files is imported once per process, under a unique module name. While they import,
  ``import plugin_settings`` gives that folder's ``plugin_settings.py`` (plugin globals).
  Each endpoint function must be defined in exactly one file; the functions of one plugin
  may be spread over several files. A clash, a missing function or a file that fails to
  import is a :class:`PluginError` (naming the files, the functions or the traceback):
  nothing is skipped.
- an **entry point** by name in the group ``mliy_spawner.auth_plugins`` or
  ``mliy_spawner.dns_plugins``; it loads to any object (usually a module) that has the
  functions as attributes.
"""

import asyncio
import hashlib
import importlib.metadata
import importlib.util
import logging
import re
import stat
import sys
import threading
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .util import control_character, run_blocking

log = logging.getLogger("mliy.auth")

AUTH_FUNCTIONS = (
    "getAuthHeader",
    "processAuthUserInfo",
    "processAuthUserGroups",
    "configureAuthUser",
    "cleanAuthUsername",
)
DNS_FUNCTIONS = ("dnsDisplayName", "createDnsEntry", "deleteDnsEntry")
AUTH_ENTRY_POINT_GROUP = "mliy_spawner.auth_plugins"
DNS_ENTRY_POINT_GROUP = "mliy_spawner.dns_plugins"
SETTINGS_MODULE = "plugin_settings"
SETTINGS_FILE = SETTINGS_MODULE + ".py"
DNS_ACTIONS = ("create", "delete")


class PluginError(Exception):
    """A plugin could not be loaded: what went wrong, with the files involved."""


class _Sourced:
    """What the plugin classes share; each has ``sources`` (function -> origin)."""

    @property
    def source(self):
        """Every origin of this plugin's functions (files or entry points), joined."""
        return ", ".join(dict.fromkeys(self.sources.values()))


@dataclass(frozen=True)
class AuthPlugin(_Sourced):
    """The five auth functions and where each came from (``sources``: function -> origin)."""

    getAuthHeader: Callable
    processAuthUserInfo: Callable
    processAuthUserGroups: Callable
    configureAuthUser: Callable
    cleanAuthUsername: Callable
    sources: Mapping = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class DnsPlugin(_Sourced):
    """The three DNS functions and where each came from (``sources``: function -> origin)."""

    dnsDisplayName: Callable
    createDnsEntry: Callable
    deleteDnsEntry: Callable
    sources: Mapping = field(default_factory=dict, compare=False)


def _noop_display_name(instance_name):
    return None


def _noop_entry(instance_name, ip):
    return None


NOOP_DNS_PLUGIN = DnsPlugin(
    dnsDisplayName=_noop_display_name,
    createDnsEntry=_noop_entry,
    deleteDnsEntry=_noop_entry,
    sources={name: "built-in no-op DNS plugin" for name in DNS_FUNCTIONS},
)

# --- loading ---------------------------------------------------------------------------

_lock = threading.RLock()
# resolved folder -> [(file, module)], so each file is imported once per process
_folders = {}
# (kind, "folder"|"name", key) -> AuthPlugin | DnsPlugin
_plugins = {}


def _import_file(path, module_name):
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"cannot import plugin file {path}: not a Python source file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit):
        sys.modules.pop(module_name, None)
        raise PluginError(
            f"plugin file {path} failed to import:\n{traceback.format_exc()}"
        ) from None
    return module


def writable_by_others(path):
    """Whether ``path`` (followed if a symlink) is writable by its group or by others."""
    return bool(path.stat().st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def _refuse_writable(paths):
    """PluginError naming every path in ``paths`` that its group or others may write.

    Plugin files run inside the hub, so whoever can change them (or add a file to the
    folder) runs code as the hub.
    """
    loose = [
        f"{path} ({stat.filemode(path.stat().st_mode)})"
        for path in paths
        if writable_by_others(path)
    ]
    if loose:
        raise PluginError(
            "refusing to load plugins that others may change: "
            + ", ".join(loose)
            + " can be written by their group or by everyone, and whoever writes a plugin "
            "file runs code in the hub; make them writable by their owner only "
            "(chmod go-w)"
        )


def _import_folder(folder):
    """Import every plugin file in ``folder`` once; return ``[(path, module)]``."""
    with _lock:
        if folder in _folders:
            return _folders[folder]
        if not folder.is_dir():
            raise PluginError(f"plugin folder {folder} does not exist or is not a folder")
        files = sorted(
            p for p in folder.glob("*.py") if p.name != SETTINGS_FILE and not p.name.startswith(".")
        )
        settings_path = folder / SETTINGS_FILE
        _refuse_writable([folder, *([settings_path] if settings_path.is_file() else []), *files])
        prefix = "_mliy_plugin_" + hashlib.sha256(str(folder).encode()).hexdigest()[:12]
        previous_settings = sys.modules.pop(SETTINGS_MODULE, None)
        settings = None
        loaded = []
        try:
            if settings_path.is_file():
                settings = _import_file(settings_path, f"{prefix}_settings")
                sys.modules[SETTINGS_MODULE] = settings
            for index, path in enumerate(files):
                stem = "".join(c if c.isalnum() else "_" for c in path.stem)
                loaded.append((path, _import_file(path, f"{prefix}_{index}_{stem}")))
        except PluginError:
            # forget the half-loaded folder: the next attempt imports it afresh
            for _, module in loaded:
                sys.modules.pop(module.__name__, None)
            if settings is not None:
                sys.modules.pop(settings.__name__, None)
                settings = None
            raise
        finally:
            # leave `plugin_settings` pointing at this folder's settings (for plugins that
            # import it lazily), or at what was there before when this folder has none
            if settings is not None:
                sys.modules[SETTINGS_MODULE] = settings
            elif previous_settings is not None:
                sys.modules[SETTINGS_MODULE] = previous_settings
            else:
                sys.modules.pop(SETTINGS_MODULE, None)
        log.info(
            "imported plugin folder %s: %s",
            folder,
            ", ".join(p.name for p in files) or "(no plugin files)",
        )
        _folders[folder] = loaded
        return loaded


def _from_folder(kind, folder, names):
    found = {}  # function name -> (path, function)
    problems = []
    for path, module in _import_folder(folder):
        namespace = vars(module)
        for name in names:
            if name not in namespace:
                continue
            obj = namespace[name]
            if not callable(obj):
                problems.append(f"{name} in {path} is a {type(obj).__name__}, not a function")
            elif name in found and found[name][1] is not obj:
                problems.append(
                    f"{name} is defined in two files, {found[name][0]} and {path}; "
                    f"a folder holds one {kind} plugin: keep {name} in one of them"
                )
            else:
                found.setdefault(name, (path, obj))
    missing = [name for name in names if name not in found]
    if missing:
        problems.append(
            f"the {kind} plugin in {folder} lacks {', '.join(missing)} "
            f"(a {kind} plugin defines {', '.join(names)})"
        )
    if problems:
        raise PluginError("; ".join(problems))
    return {name: fn for name, (_, fn) in found.items()}, {
        name: str(path) for name, (path, _) in found.items()
    }


def _from_entry_point(kind, group, name, names):
    entry_points = list(importlib.metadata.entry_points(group=group))
    matches = [ep for ep in entry_points if ep.name == name]
    if not matches:
        available = sorted({ep.name for ep in entry_points})
        raise PluginError(
            f"no {kind} plugin named {name!r} in entry point group {group!r}; "
            f"installed: {', '.join(available) or 'none'}"
        )
    if len({ep.value for ep in matches}) > 1:
        both = " and ".join(f"{ep.value!r} (from {_dist_name(ep)})" for ep in matches)
        raise PluginError(f"{kind} plugin name {name!r} in {group!r} is claimed by {both}")
    entry_point = matches[0]
    origin = f"entry point {group}:{name} = {entry_point.value}"
    try:
        obj = entry_point.load()
    except (Exception, SystemExit):
        raise PluginError(f"{origin} failed to load:\n{traceback.format_exc()}") from None
    functions, problems = {}, []
    for fn_name in names:
        fn = getattr(obj, fn_name, None)
        if fn is None:
            continue
        if not callable(fn):
            problems.append(f"{fn_name} is a {type(fn).__name__}, not a function")
        functions[fn_name] = fn
    missing = [n for n in names if n not in functions]
    if missing:
        problems.append(f"lacks {', '.join(missing)} (a {kind} plugin defines {', '.join(names)})")
    if problems:
        raise PluginError(f"{origin}: " + "; ".join(problems))
    return functions, {fn_name: origin for fn_name in names}


def _dist_name(entry_point):
    dist = getattr(entry_point, "dist", None)
    return getattr(dist, "name", None) or "an unknown distribution"


def _load(kind, cls, group, names, folder, name):
    if folder and name:
        raise PluginError(
            f"give the {kind} plugin as a folder ({folder!r}) or an entry point name "
            f"({name!r}), not both"
        )
    if folder:
        key = (kind, "folder", Path(folder).expanduser().resolve())
    else:
        key = (kind, "name", name)
    with _lock:
        if key not in _plugins:
            if folder:
                functions, sources = _from_folder(kind, key[2], names)
            else:
                functions, sources = _from_entry_point(kind, group, name, names)
            _plugins[key] = cls(**functions, sources=sources)
            logger = log if kind == "auth" else logging.getLogger("mliy.launch")
            logger.info("%s plugin loaded from %s", kind, _plugins[key].source)
        return _plugins[key]


def load_auth_plugin(folder=None, name=None):
    """The auth plugin from ``folder`` or the entry point ``name`` (one of them is required).

    Loaded once per process and cached; raises :class:`PluginError`.
    """
    if not folder and not name:
        raise PluginError(
            "no auth plugin configured: set MLiyAuthenticator.plugin_folder (a folder of "
            f"plugin files) or MLiyAuthenticator.plugin_name (an {AUTH_ENTRY_POINT_GROUP} "
            "entry point)"
        )
    return _load("auth", AuthPlugin, AUTH_ENTRY_POINT_GROUP, AUTH_FUNCTIONS, folder, name)


def load_dns_plugin(folder=None, name=None):
    """The DNS plugin from ``folder`` or the entry point ``name``; with neither, the no-op.

    Loaded once per process and cached; raises :class:`PluginError`.
    """
    if not folder and not name:
        return NOOP_DNS_PLUGIN
    return _load("dns", DnsPlugin, DNS_ENTRY_POINT_GROUP, DNS_FUNCTIONS, folder, name)


# --- calling DNS plugins ----------------------------------------------------------------


async def run_dns(plugin, action, instance_name, ip, log, time_limit=60):
    """Run ``plugin``'s create (``action="create"``) or delete entry on the AWS executor.

    Never raises for a plugin failure: logs it on ``log`` (with the traceback) and returns
    a one-line message for the user's progress page; returns None on success.
    ``time_limit`` (seconds) bounds the wait; the call itself may finish later in its thread.
    """
    if action not in DNS_ACTIONS:
        raise ValueError(f"DNS action {action!r} is not one of {', '.join(DNS_ACTIONS)}")
    fn = plugin.createDnsEntry if action == "create" else plugin.deleteDnsEntry
    try:
        await asyncio.wait_for(run_blocking(fn, instance_name, ip), time_limit)
    except TimeoutError:
        log.warning(
            "DNS %s for %s (%s) did not finish within %s s (plugin %s)",
            action,
            instance_name,
            ip,
            time_limit,
            plugin.source,
        )
        return (
            f"DNS {action} for {instance_name} did not finish within {time_limit} s; "
            "the server is reached by its IP address"
        )
    except Exception as e:
        log.warning(
            "DNS %s for %s (%s) failed (plugin %s)",
            action,
            instance_name,
            ip,
            plugin.source,
            exc_info=True,
        )
        return (
            f"DNS {action} for {instance_name} failed ({type(e).__name__}: {e}); "
            "the server is reached by its IP address"
        )
    return None


DNS_LABEL_MAX = 40
DNS_LABEL_HASH_HEX = 16


def dns_label(user_name, server_name):
    """A DNS label for the server ``server_name`` ("" for the default one) of ``user_name``.

    ``[a-z0-9-]``, at most :data:`DNS_LABEL_MAX` characters (so a DNS plugin may add a
    prefix such as ``mliy-``), never ``--``. A readable part (the names in lower case,
    other characters as ``-``, cut short) is always followed by ``-`` and 16 hex digits of
    the SHA-256 of ``user_name + "\\0" + server_name``: the label belongs to that exact
    pair. User ``bob-smith``'s default server and user ``bob``'s server ``smith`` both
    read ``bob-smith`` but differ in their hashes.
    """
    digest = hashlib.sha256(f"{user_name}\0{server_name}".encode()).hexdigest()
    digest = digest[:DNS_LABEL_HASH_HEX]
    raw = f"{user_name}-{server_name}" if server_name else user_name
    readable = re.sub(r"[^a-z0-9]+", "-", raw.lower()).strip("-")
    readable = readable[: DNS_LABEL_MAX - DNS_LABEL_HASH_HEX - 1].strip("-")
    return f"{readable}-{digest}" if readable else digest


def dns_display_name(plugin, instance_name, ip, log):
    """The name to show (and connect to) for a server: the plugin's name, else ``ip``.

    ``dnsDisplayName`` must be quick and do no network I/O. A failure is logged and
    falls back to the IP.
    """
    try:
        name = plugin.dnsDisplayName(instance_name)
    except Exception:
        log.warning(
            "dnsDisplayName(%r) failed (plugin %s)", instance_name, plugin.source, exc_info=True
        )
        return ip
    if name is None:
        return ip
    if not isinstance(name, str) or not name:
        log.warning(
            "dnsDisplayName(%r) returned %r, not a name (plugin %s)",
            instance_name,
            name,
            plugin.source,
        )
        return ip
    return name


# --- helpers for auth plugins --------------------------------------------------------------


def header_text(headers, name, limit=256):
    """``headers[name]`` made safe to show: control and invisible characters dropped,
    whitespace runs collapsed to one space, cut to ``limit`` characters; "" if absent."""
    value = headers.get(name) or ""
    kept = "".join(
        " " if c.isspace() else c for c in value if not control_character(c) or c.isspace()
    )
    return " ".join(kept.split())[:limit]


def header_email(headers, name):
    """``headers[name]`` if it looks like one e-mail address (``x@y``), else ""."""
    value = header_text(headers, name, limit=_EMAIL_MAX)
    if _EMAIL_RE.fullmatch(value):
        return value
    if value:
        log.warning("ignoring the %s header: %r is not an e-mail address", name, value[:60])
    return ""


_EMAIL_MAX = 254
_EMAIL_RE = re.compile(r"[^@\s<>()\[\],;:\"\\]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")


def split_dn_list(value):
    """Split a list of DNs separated by ``;`` or newlines (escaped ``\\;`` stays)."""
    parts, current, i = [], [], 0
    while i < len(value):
        c = value[i]
        if c == "\\" and i + 1 < len(value):
            current.append(value[i : i + 2])
            i += 2
            continue
        if c in ";\r\n":
            parts.append("".join(current))
            current = []
        else:
            current.append(c)
        i += 1
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def parse_dn(dn):
    """Parse an RFC 4514 DN into RDNs, each a list of ``(attribute, value)`` pairs.

    Handles ``\\,``-style and ``\\2C``-style (UTF-8 hex) escapes, quoted values and
    multi-valued RDNs (``+``). Raises ValueError naming the problem.
    """
    rdns, rdn = [], []
    i, n = 0, len(dn)
    while True:
        # attribute type
        start = i
        while i < n and dn[i] != "=":
            if dn[i] in ',+;\\"':
                raise ValueError(f"unexpected {dn[i]!r} in attribute name at {i} in DN {dn!r}")
            i += 1
        if i >= n:
            raise ValueError(f"missing '=' after {dn[start:]!r} in DN {dn!r}")
        attr = dn[start:i].strip()
        if not attr:
            raise ValueError(f"empty attribute name at {start} in DN {dn!r}")
        i += 1
        value, i = _parse_value(dn, i)
        rdn.append((attr, value))
        if i >= n:
            rdns.append(rdn)
            return rdns
        if dn[i] == "+":
            i += 1
        else:  # ","
            rdns.append(rdn)
            rdn = []
            i += 1


def _parse_value(dn, i):
    n = len(dn)
    while i < n and dn[i] == " ":
        i += 1
    out = bytearray()
    if i < n and dn[i] == '"':
        i += 1
        while i < n and dn[i] != '"':
            if dn[i] == "\\" and i + 1 < n:
                i += 1
            out += dn[i].encode()
            i += 1
        if i >= n:
            raise ValueError(f"unterminated quoted value in DN {dn!r}")
        i += 1
        while i < n and dn[i] == " ":
            i += 1
    else:
        trailing = 0  # unescaped trailing spaces are not part of the value
        while i < n and dn[i] not in ",+":
            c = dn[i]
            if c == "\\":
                if i + 1 >= n:
                    raise ValueError(f"DN {dn!r} ends with a lone backslash")
                pair = dn[i + 1 : i + 3]
                if len(pair) == 2 and all(ch in "0123456789abcdefABCDEF" for ch in pair):
                    out.append(int(pair, 16))
                    i += 3
                else:
                    out += dn[i + 1].encode()
                    i += 2
                trailing = 0
                continue
            if c == '"':
                raise ValueError(f"unescaped '\"' inside a value in DN {dn!r}")
            out += c.encode()
            trailing = trailing + 1 if c == " " else 0
            i += 1
        if trailing:
            del out[-trailing:]
    if i < n and dn[i] not in ",+":
        raise ValueError(f"unexpected {dn[i]!r} after a quoted value in DN {dn!r}")
    try:
        return out.decode("utf-8"), i
    except UnicodeDecodeError:
        raise ValueError(f"escaped bytes in DN {dn!r} are not UTF-8") from None


def cn_groups(value, log=log):
    """Group names from a ``memberOf`` header: the CN of each DN's first RDN.

    ``value`` holds DNs separated by ``;`` or newlines. A DN that does not parse or does
    not start with a CN is logged on ``log`` and left out; duplicates are dropped (the
    first one stays in place).

    Kept for MLiy plugins. It takes a CN from *anywhere* in the directory: a user who can
    create ``cn=hub-admins`` in some other branch gets the group ``hub-admins``. Use
    :func:`dn_groups`, which takes CNs only under a base DN, for groups that grant
    anything (admin, launch groups).
    """
    groups = []
    for dn in split_dn_list(value or ""):
        try:
            first = parse_dn(dn)[0]
        except ValueError as e:
            log.warning("ignoring a group DN that does not parse: %s", e)
            continue
        cns = [v for attr, v in first if attr.lower() == "cn"]
        if not cns or not cns[0]:
            log.warning("ignoring group DN %r: its first part is not a CN", dn)
            continue
        groups.append(cns[0])
    return list(dict.fromkeys(groups))


def _escape_dn_value(value):
    out = []
    for i, c in enumerate(value):
        if c in ',+"\\<>;=' or (c == " " and i in (0, len(value) - 1)) or (c == "#" and i == 0):
            out.append("\\" + c)
        elif c == "\0":
            out.append("\\00")
        else:
            out.append(c)
    return "".join(out)


def format_dn(rdns):
    """RDNs (as :func:`parse_dn` gives them) as an RFC 4514 string, attribute types in
    lower case: ``[[("CN", "a,b")], [("DC", "x")]]`` -> ``cn=a\\,b,dc=x``."""
    return ",".join(
        "+".join(f"{attr.lower()}={_escape_dn_value(value)}" for attr, value in rdn) for rdn in rdns
    )


def _rdns_key(rdns):
    return tuple(
        tuple(sorted((attr.casefold(), value.casefold()) for attr, value in rdn)) for rdn in rdns
    )


def dn_key(dn):
    """A value that is equal for two spellings of one DN (case, spaces, escapes).

    Attribute types and values compare case-insensitively, as directories compare
    ``cn``, ``ou`` and ``dc``. Raises ValueError if ``dn`` does not parse.
    """
    return _rdns_key(parse_dn(dn))


def base_dn_keys(base_dn, setting="the base DN"):
    """The keys (:func:`dn_key`) of ``base_dn``: a DN, a list of DNs, or None (no base).

    Raises ValueError naming ``setting`` when one is not a DN.
    """
    if base_dn is None:
        return frozenset()
    values = [base_dn] if isinstance(base_dn, str) else base_dn
    if not isinstance(values, (list, tuple, set, frozenset)) or not values:
        raise ValueError(
            f"{setting} is {base_dn!r}; use a DN such as 'ou=groups,dc=corp,dc=example', a "
            "list of DNs, or None"
        )
    keys = set()
    for value in values:
        try:
            if not isinstance(value, str):
                raise ValueError(f"{value!r} is not text")
            keys.add(dn_key(value))
        except ValueError as e:
            raise ValueError(
                f"{setting} {value!r} is not a DN ({e}); use e.g. 'ou=groups,dc=corp,dc=example'"
            ) from None
    return frozenset(keys)


def dn_groups(value, base_dn=None, log=log):
    """Group names from a ``memberOf`` header that cannot be spoofed from elsewhere.

    ``value`` holds DNs separated by ``;`` or newlines. ``base_dn`` is a DN, a list of DNs
    or None:

    - with a base DN, a group directly under it (``cn=data,<base DN>``) gives its CN
      (``data``); groups anywhere else are left out, so a ``cn=hub-admins`` created in
      another branch of the directory is not ``hub-admins``. Under one base DN a CN
      names one entry.
    - with None, every group is named by its full DN (:func:`format_dn`:
      ``cn=data,ou=groups,dc=corp``), so names from different branches never merge.

    A DN that does not parse (or, under a base DN, whose first part is not a single CN)
    is logged on ``log`` and left out. Duplicates are dropped, the first stays in place.
    """
    bases = base_dn_keys(base_dn)
    groups = {}  # key -> name
    for dn in split_dn_list(value or ""):
        try:
            rdns = parse_dn(dn)
        except ValueError as e:
            log.warning("ignoring a group DN that does not parse: %s", e)
            continue
        if not bases:
            groups.setdefault(_rdns_key(rdns), format_dn(rdns))
            continue
        if _rdns_key(rdns[1:]) not in bases:
            log.debug("ignoring group DN %r: not directly under the group base DN", dn)
            continue
        first = rdns[0]
        if len(first) != 1 or first[0][0].lower() != "cn" or not first[0][1]:
            log.warning("ignoring group DN %r: its first part is not a single CN", dn)
            continue
        groups.setdefault(first[0][1], first[0][1])
    return list(groups.values())


__all__ = [
    "AUTH_ENTRY_POINT_GROUP",
    "AUTH_FUNCTIONS",
    "DNS_ENTRY_POINT_GROUP",
    "DNS_FUNCTIONS",
    "NOOP_DNS_PLUGIN",
    "AuthPlugin",
    "DnsPlugin",
    "PluginError",
    "base_dn_keys",
    "cn_groups",
    "dns_display_name",
    "dns_label",
    "dn_groups",
    "dn_key",
    "format_dn",
    "header_email",
    "header_text",
    "load_auth_plugin",
    "load_dns_plugin",
    "parse_dn",
    "run_dns",
    "split_dn_list",
]
