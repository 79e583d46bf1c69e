"""MLiyAuthenticator: log in with a header set by the site's authenticating proxy.

The site's proxy (Apache with mod_authnz_ldap, an SSO agent, ...) authenticates the user
and forwards ``/hub/login`` with a header naming them. An auth plugin
(:mod:`mliy_spawner.plugins`) says which header, how to clean the name, and where the
e-mail, display name and groups are. The login handler hands the request to JupyterHub's
own ``login_user`` -> :meth:`MLiyAuthenticator.authenticate`, so allowed/blocked users,
admin users, ``post_auth_hook`` and group sync (``manage_groups``) all apply.

Who may send the header. The user's own EC2 instance can reach the hub, so a header from
anywhere would let anyone log in as anyone. The address check uses the socket, never
what a client wrote into a header:

1. the address that connected to the hub (configurable-http-proxy, normally on
   loopback) must be in ``trusted_proxies``;
2. if that hop added ``X-Forwarded-For``, its last entry (the address that connected to
   configurable-http-proxy: the authenticating proxy) must be in ``trusted_proxies`` too.

Tornado's ``request.remote_ip`` is not used: with JupyterHub's ``xheaders=True`` it takes
``X-Real-Ip`` / ``X-Forwarded-For`` from any client, so it can be forged. Optionally the
proxy must also send a shared secret header (compared in constant time, never logged).
"""

import functools
import hmac
import ipaddress
import json
import logging
import os
import re
import socket
import unicodedata
from collections.abc import Mapping

from jupyterhub.auth import Authenticator
from jupyterhub.handlers import BaseHandler
from tornado import web
from traitlets import List, TraitError, Unicode, default, observe, validate

from .plugins import PluginError, dn_key, load_auth_plugin
from .util import control_character, shorten, user_error

log = logging.getLogger("mliy.auth")

DEFAULT_TRUSTED_PROXIES = ("127.0.0.0/8", "::1/128")
SECRET_ENV = "MLIY_PROXY_SHARED_SECRET"

USERNAME_MAX_LENGTH = 64
USERNAME_RULE = (
    f"1 to {USERNAME_MAX_LENGTH} ASCII letters, digits, '.', '_', '-' and '@', "
    "starting and ending with a letter or digit, without '..'"
)
_USERNAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-@")
GROUP_MAX_LENGTH = 255
# an HTTP header name (RFC 9110 token)
_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# a Unix-socket peer has no IP; it is local, so it counts as loopback
UNIX_PEER = "unix-socket"
# what a user sees when the auth plugin fails or answers nonsense (the log has the rest)
PLUGIN_FAILED = "The hub's sign-in plugin failed; the hub's log has the details."


# --- pure helpers --------------------------------------------------------------------------


def username_problem(name):
    """What is wrong with ``name`` as a JupyterHub user name, or None if it is fine.

    The rule (:data:`USERNAME_RULE`) is deliberately narrow: names end up in URLs, DNS
    names, CloudFormation stack names and tags, so look-alikes (fullwidth letters,
    ligatures such as ``ǅ``, zero-width characters), spaces, slashes and control
    characters are refused rather than rewritten.
    """
    if not isinstance(name, str):
        return f"is a {type(name).__name__}, not text"
    if not name:
        return "is empty"
    if len(name) > USERNAME_MAX_LENGTH:
        return f"has {len(name)} characters; at most {USERNAME_MAX_LENGTH} are allowed"
    if unicodedata.normalize("NFKC", name) != name:
        return "contains look-alike characters (it changes under Unicode NFKC normalization)"
    for c in name:
        if c not in _USERNAME_CHARS:
            if control_character(c):
                return f"contains the control or invisible character U+{ord(c):04X}"
            if ord(c) > 127:
                return f"contains the non-ASCII character {c!r} (U+{ord(c):04X})"
            return f"contains {c!r}"
    if not (name[0].isalnum() and name[-1].isalnum()):
        return "must start and end with a letter or digit"
    if ".." in name:
        return "contains '..'"
    return None


@functools.lru_cache(maxsize=32)
def parse_networks(cidrs):
    """``("10.0.0.0/24", "::1")`` -> ip_network objects; ValueError names a bad entry."""
    networks = []
    for cidr in cidrs:
        if not isinstance(cidr, str) or not cidr.strip():
            raise ValueError(f"{cidr!r} is not an address or CIDR network")
        try:
            networks.append(ipaddress.ip_network(cidr.strip(), strict=True))
        except ValueError as e:
            raise ValueError(
                f"{cidr!r} is not an address or CIDR network ({e}); "
                "use for example '10.0.1.5', '10.0.1.0/24' or '::1/128'"
            ) from None
    return tuple(networks)


def parse_address(text):
    """An ``ip_address`` from a socket or X-Forwarded-For entry, or None if it is not one.

    IPv4-mapped IPv6 addresses (``::ffff:127.0.0.1``, as node reports IPv4 peers on a
    dual-stack socket) become IPv4.
    """
    if not isinstance(text, str):
        return None
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_trusted(peer, networks):
    """Whether ``peer`` (an address text or :data:`UNIX_PEER`) is in ``networks``."""
    if peer == UNIX_PEER:
        return any(ipaddress.ip_address("127.0.0.1") in n for n in networks if n.version == 4)
    address = parse_address(peer)
    if address is None:
        return False
    return any(address.version == n.version and address in n for n in networks)


def login_peer(socket_peer, forwarded_for, networks):
    """The address whose word the header login rests on (see the module docstring).

    ``socket_peer`` connected to the hub. If it is trusted and sent ``X-Forwarded-For``
    (``forwarded_for``: the header's values), the last entry is the address that
    connected to it, and that is the peer to check. Otherwise the socket peer is.
    """
    if socket_peer is None or not is_trusted(socket_peer, networks):
        return socket_peer
    entries = [e.strip() for value in forwarded_for for e in value.split(",") if e.strip()]
    return entries[-1] if entries else socket_peer


def _socket_peer(request):
    context = getattr(request.connection, "context", None)
    family = getattr(context, "address_family", None)
    address = getattr(context, "address", None)
    if family in (socket.AF_INET, socket.AF_INET6) and address:
        return str(address[0])
    if family == getattr(socket, "AF_UNIX", object()):
        return UNIX_PEER
    return None


def _decode(value):
    # tornado decodes header bytes as latin-1; proxies send UTF-8 (e.g. "José")
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value


class RequestHeaders(Mapping):
    """The login request's headers as auth plugins see them.

    Read-only and case-insensitive; values UTF-8 decoded; a header sent more than once
    gives its values joined with a newline. ``exclude`` names headers left out (the
    shared secret never reaches plugins).
    """

    def __init__(self, pairs, exclude=()):
        excluded = {name.lower() for name in exclude}
        self._names = {}
        self._values = {}
        for name, value in pairs:
            key = name.lower()
            if key in excluded:
                continue
            self._names.setdefault(key, name)
            self._values.setdefault(key, []).append(_decode(value))

    def __getitem__(self, name):
        if not isinstance(name, str):
            raise KeyError(name)
        return "\n".join(self._values[name.lower()])

    def __contains__(self, name):
        return isinstance(name, str) and name.lower() in self._values

    def __iter__(self):
        return iter(self._names.values())

    def __len__(self):
        return len(self._names)

    def __repr__(self):
        return f"RequestHeaders({sorted(self._names.values())})"


def clean_groups(groups, source, function="processAuthUserGroups"):
    """Check the group list ``function`` (in ``source``) gave; drop (and log) names
    JupyterHub cannot hold, and repeats.

    Raises PluginError if ``groups`` is not a list of names at all.
    """
    if isinstance(groups, (str, bytes)) or not isinstance(groups, (list, tuple, set, frozenset)):
        raise PluginError(
            f"{function} in {source} returned the groups {shorten(groups)}; they must be "
            "a list of group names"
        )
    cleaned = []
    for group in groups:
        problem = None
        if not isinstance(group, str):
            problem = f"is a {type(group).__name__}, not text"
        else:
            group = group.strip()
            if not group:
                problem = "is empty"
            elif len(group) > GROUP_MAX_LENGTH:
                problem = f"has {len(group)} characters (at most {GROUP_MAX_LENGTH})"
            elif control_character(group):
                problem = "contains control or invisible characters"
        if problem:
            log.warning("ignoring group %s from the directory: it %s", shorten(group), problem)
            continue
        cleaned.append(group)
    return list(dict.fromkeys(cleaned))


# --- the authenticator ----------------------------------------------------------------------


class MLiyLoginHandler(BaseHandler):
    """``GET /hub/login``: log in from the proxy's header, then go to ``next``."""

    async def prepare(self):
        # Take the proxy's secret out of the request before anything runs: JupyterHub
        # logs every header of a request that ends in a 5xx error.
        name = self.authenticator.shared_secret_header
        self.proxy_secret_values = self.request.headers.get_list(name)
        if self.proxy_secret_values:
            del self.request.headers[name]
        await super().prepare()

    async def get(self):
        header = self.authenticator.auth_header
        raw = self.request.headers.get(header, "")
        user = await self.login_user({"username": raw})
        if user is None:
            message = (
                f"The user {shorten(raw)} is not allowed on this hub. "
                "Ask the hub's administrators for access."
            )
            log.warning("header login refused by the hub's allow/block lists for %s", shorten(raw))
            raise user_error(403, message)
        self.redirect(self.get_next_url(user))


class MLiyAuthenticator(Authenticator):
    """Header login through an auth plugin (MLiy's contract), guarded by proxy addresses."""

    plugin_folder = Unicode(
        "",
        help="""Folder of auth plugin files (MLiy's drop-in folder).

        Every ``.py`` file in it except ``plugin_settings.py`` is imported once; together
        they must define getAuthHeader, processAuthUserInfo, processAuthUserGroups,
        configureAuthUser and cleanAuthUsername, each in exactly one file.
        ``plugin_settings.py`` holds the plugins' settings. Set this or ``plugin_name``.
        Example: ``"/etc/jupyterhub/plugins"``. Default: empty.
        """,
    ).tag(config=True)

    plugin_name = Unicode(
        "",
        help="""Name of an auth plugin installed as an entry point.

        Looked up in the entry point group ``mliy_spawner.auth_plugins``. Set this or
        ``plugin_folder``. Example: ``"corp-sso"``. Default: empty.
        """,
    ).tag(config=True)

    trusted_proxies = List(
        Unicode(),
        default_value=list(DEFAULT_TRUSTED_PROXIES),
        help="""Addresses (CIDR networks) allowed to deliver the login header.

        List every hop between the site's authenticating proxy and the hub: the address
        configurable-http-proxy connects to the hub from, and the address the
        authenticating proxy connects to configurable-http-proxy from. The hub checks the
        socket peer and, when that peer is trusted, the last ``X-Forwarded-For`` entry it
        added; both must be in this list. Never include the subnets of users' instances.
        A request from anywhere else gets a 403 page. Default: loopback
        (``["127.0.0.0/8", "::1/128"]``), for a proxy on the hub's machine.
        Example: ``["127.0.0.1/32", "10.0.1.5/32"]``.
        """,
    ).tag(config=True)

    shared_secret_header = Unicode(
        "X-MLiy-Proxy-Secret",
        help="""Header in which the authenticating proxy sends ``shared_secret``.

        Only checked when ``shared_secret`` is set. Default: ``X-MLiy-Proxy-Secret``.
        """,
    ).tag(config=True)

    shared_secret = Unicode(
        help=f"""A secret the authenticating proxy must send in ``shared_secret_header``.

        Optional second check besides ``trusted_proxies``: a login request without the
        exact value gets a 403 page. Compared in constant time, never logged, never
        shown to plugins. Have the proxy set it only on ``/hub/login`` (requests to
        ``/user/...`` reach users' own servers). Default: the environment variable
        ``{SECRET_ENV}``, else empty (no secret required).
        """,
    ).tag(config=True)

    admin_group = Unicode(
        "",
        help="""Directory group whose members are hub admins.

        When set, admin status follows the directory at every login: members become
        admins, everyone else loses admin unless listed in ``admin_users``. Empty (the
        default) grants nothing and leaves admin status to ``admin_users``.

        A full DN (``"cn=hub-admins,ou=groups,dc=corp,dc=example"``) matches the group
        the plugin names by that DN, however it is spelled (case, spaces, escapes): the
        sample plugins name groups by their DN unless ``AUTH_GROUP_BASE_DN`` is set.
        Anything else is a group name, matched exactly and case-sensitively, e.g.
        ``"hub-admins"`` with ``AUTH_GROUP_BASE_DN = "ou=groups,dc=corp,dc=example"``
        (the CN of a group directly under that base DN). Never match a bare CN taken
        from anywhere in the directory: whoever can create a group elsewhere would
        become admin. See docs/plugins.md.
        """,
    ).tag(config=True)

    @validate("admin_group")
    def _validate_admin_group(self, proposal):
        value = proposal.value.strip()
        if "=" in value:
            try:
                dn_key(value)
            except ValueError as e:
                raise TraitError(
                    f"MLiyAuthenticator.admin_group {proposal.value!r} looks like a DN but "
                    f"does not parse ({e}); use e.g. 'cn=hub-admins,ou=groups,dc=corp,dc=example'"
                    " or a plain group name"
                ) from None
        return value

    def is_admin_group_member(self, groups):
        """Whether ``groups`` (the names the plugin gave) hold :attr:`admin_group`.

        A DN ``admin_group`` matches a group with the same :func:`dn_key`; a plain name
        matches exactly.
        """
        if not self.admin_group:
            return False
        if "=" not in self.admin_group:
            return self.admin_group in groups
        wanted = dn_key(self.admin_group)
        for group in groups:
            try:
                if dn_key(group) == wanted:
                    return True
            except ValueError:
                continue  # a plain name is never the DN
        return False

    @default("shared_secret")
    def _default_shared_secret(self):
        return os.environ.get(SECRET_ENV, "")

    @default("manage_groups")
    def _default_manage_groups(self):
        # groups (and with them launch groups) follow the directory at every login
        return True

    @validate("trusted_proxies")
    def _validate_trusted_proxies(self, proposal):
        try:
            networks = parse_networks(tuple(proposal.value))
        except ValueError as e:
            raise TraitError(f"MLiyAuthenticator.trusted_proxies: {e}") from None
        return [str(n) for n in networks]

    @validate("shared_secret_header")
    def _validate_shared_secret_header(self, proposal):
        if not _TOKEN_RE.fullmatch(proposal.value):
            raise TraitError(
                f"MLiyAuthenticator.shared_secret_header: {proposal.value!r} is not an HTTP "
                "header name (letters, digits and !#$%&'*+.^_`|~- only)"
            )
        return proposal.value

    @observe("plugin_folder", "plugin_name")
    def _forget_plugin(self, change):
        self._plugin = None

    _plugin = None

    @property
    def plugin(self):
        """The auth plugin (:class:`mliy_spawner.plugins.AuthPlugin`), loaded on first use."""
        if self._plugin is None:
            plugin = load_auth_plugin(self.plugin_folder or None, self.plugin_name or None)
            header = plugin.getAuthHeader()
            if not isinstance(header, str) or not _TOKEN_RE.fullmatch(header):
                raise PluginError(
                    f"getAuthHeader() in {plugin.sources['getAuthHeader']} returned "
                    f"{header!r}; it must return an HTTP header name such as 'REMOTE_USER'"
                )
            if header.upper().startswith("HTTP_"):
                raise PluginError(
                    f"getAuthHeader() in {plugin.sources['getAuthHeader']} returned "
                    f"{header!r}, a Django/CGI variable name; return the HTTP header name "
                    f"({header[5:]!r})"
                )
            if header.lower() == self.shared_secret_header.lower():
                raise PluginError(
                    f"getAuthHeader() returned {header!r}, the same header as "
                    "MLiyAuthenticator.shared_secret_header"
                )
            self._plugin = plugin
        return self._plugin

    @property
    def auth_header(self):
        """The header that carries the user name (from the plugin's getAuthHeader)."""
        return self.plugin.getAuthHeader()

    def get_handlers(self, app):
        plugin = self.plugin  # load now: a broken plugin stops the hub at startup
        networks = parse_networks(tuple(self.trusted_proxies))
        if any(n.prefixlen == 0 for n in networks):
            log.warning(
                "MLiyAuthenticator.trusted_proxies contains %s: every host may send the "
                "login header, so anyone who can reach the hub can log in as anyone",
                ", ".join(str(n) for n in networks if n.prefixlen == 0),
            )
        log.info(
            "header login: user from %s (plugin %s), accepted from %s%s",
            self.auth_header,
            plugin.source,
            ", ".join(self.trusted_proxies) or "nowhere",
            f" with the {self.shared_secret_header} header" if self.shared_secret else "",
        )
        return [("/login", MLiyLoginHandler)]

    def check_request(self, handler):
        """Refuse (403) a login request that did not come through the trusted proxies."""
        request = handler.request
        networks = parse_networks(tuple(self.trusted_proxies))
        peer = login_peer(
            _socket_peer(request), request.headers.get_list("X-Forwarded-For"), networks
        )
        if peer is None or not is_trusted(peer, networks):
            log.warning(
                "refused header login from %s: not in trusted_proxies (%s)",
                peer or "an unknown address",
                ", ".join(self.trusted_proxies) or "empty",
            )
            raise user_error(
                403,
                f"This login request came from {peer or 'an unknown address'}, not through "
                "the site's sign-in proxy. Open the hub at the site's address to sign in.",
            )
        if self.shared_secret:
            values = getattr(handler, "proxy_secret_values", None)
            if values is None:
                values = request.headers.get_list(self.shared_secret_header)
            expected = self.shared_secret.encode("utf-8")
            if len(values) != 1 or not hmac.compare_digest(
                _decode(values[0]).encode("utf-8"), expected
            ):
                log.warning(
                    "refused header login from %s: the %s header is %s",
                    peer,
                    self.shared_secret_header,
                    "missing" if not values else "wrong",
                )
                raise user_error(
                    403,
                    "This login request did not carry the site proxy's credentials. "
                    "Open the hub at the site's address to sign in.",
                )
        return peer

    def _call(self, fn_name, *args):
        fn = getattr(self.plugin, fn_name)
        try:
            return fn(*args)
        except PermissionError as e:
            log.warning("auth plugin %s refused the login: %s", fn_name, e)
            raise user_error(403, str(e) or "The sign-in plugin refused this login.") from None
        except web.HTTPError:
            raise
        except Exception:
            log.exception("auth plugin %s (%s) failed", fn_name, self.plugin.sources[fn_name])
            raise user_error(500, PLUGIN_FAILED) from None

    async def authenticate(self, handler, data=None):
        """Check the request, then build the auth model from the plugin's answers.

        Returns ``{"name", "groups", "admin", "user_info", "auth_state"}``; raises
        HTTPError 401 (no header) or 403 (untrusted sender, wrong secret, bad name,
        refused by the plugin).
        """
        request = handler.request
        peer = self.check_request(handler)
        header = self.auth_header
        values = [v for v in request.headers.get_list(header) if v.strip()]
        if not values:
            log.info("header login from %s without a %s header", peer, header)
            raise user_error(
                401,
                f"No user name came with this request (the {header} header is missing or "
                "empty). Sign-in goes through the site's proxy: open the hub at the site's "
                "address, sign in there, and you will be sent on here.",
            )
        if len(values) > 1:
            log.warning("refused header login from %s: %d %s headers", peer, len(values), header)
            raise user_error(403, f"The {header} header came {len(values)} times; expected once.")
        headers = RequestHeaders(
            request.headers.get_all(),
            exclude=[self.shared_secret_header] if self.shared_secret else (),
        )
        raw = headers[header]
        cleaned = self._call("cleanAuthUsername", raw)
        if not isinstance(cleaned, str):
            raise self._plugin_broken("cleanAuthUsername", f"returned {shorten(cleaned)}, not text")
        name = self.normalize_username(cleaned)
        problem = username_problem(cleaned) or username_problem(name)
        if problem is None and not self.validate_username(name):
            problem = "does not match the hub's username_pattern"
        if problem:
            log.warning(
                "refused header login from %s: user name %s (from %s) %s",
                peer,
                shorten(name),
                shorten(raw),
                problem,
            )
            raise user_error(
                403,
                f"The user name {shorten(name)} cannot be used on this hub: it {problem}. "
                f"Allowed: {USERNAME_RULE}.",
            )

        info = self._call("processAuthUserInfo", headers)
        if not isinstance(info, Mapping):
            raise self._plugin_broken(
                "processAuthUserInfo", f"returned {shorten(info)}, not a dict"
            )
        groups = self._groups("processAuthUserGroups", self._call("processAuthUserGroups", headers))
        user_info = {
            "email": "",
            "display_name": "",
            **info,
            "name": name,
            "groups": groups,
        }
        changed = self._call("configureAuthUser", dict(user_info))
        if changed is not None:
            if not isinstance(changed, Mapping):
                raise self._plugin_broken(
                    "configureAuthUser", f"returned {shorten(changed)}, not a dict or None"
                )
            if changed.get("name", name) != name:
                raise self._plugin_broken(
                    "configureAuthUser", f"changed the user name to {shorten(changed['name'])}"
                )
            user_info = {**changed, "name": name}
            user_info["groups"] = self._groups("configureAuthUser", user_info.get("groups", []))
        try:
            json.dumps(user_info)
        except (TypeError, ValueError) as e:
            raise self._plugin_broken(
                "configureAuthUser", f"left user info that is not JSON data: {e}"
            ) from None

        groups = user_info["groups"]
        if self.admin_group:
            admin = self.is_admin_group_member(groups) or name in self.admin_users
        else:
            admin = None  # JupyterHub decides from admin_users
        display = str(user_info.get("display_name") or name)
        log.info(
            "header login from %s: %s, groups %s%s",
            peer,
            name,
            ", ".join(groups) or "none",
            ", admin" if admin else "",
        )
        return {
            "name": name,
            "groups": groups,
            "admin": admin,
            # shown by JupyterHub and the single-user server; readable with read:users
            "user_info": {"name": display, "display_name": display},
            # everything the plugin said, kept encrypted when enable_auth_state is on
            "auth_state": user_info,
        }

    def _groups(self, fn_name, groups):
        """The groups ``fn_name`` gave, cleaned; anything but a list of names is a 500."""
        try:
            return clean_groups(groups, self.plugin.sources[fn_name], fn_name)
        except PluginError as e:
            log.error("auth plugin %s", e)
            raise user_error(500, PLUGIN_FAILED) from None

    def _plugin_broken(self, fn_name, problem):
        log.error("auth plugin %s (%s) %s", fn_name, self.plugin.sources[fn_name], problem)
        return user_error(500, PLUGIN_FAILED)
