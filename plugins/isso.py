"""Auth plugin for an ISSO single sign-on agent (MLiy's isso plugin, for JupyterHub).

The agent in front of the hub forwards ``/hub/login`` with:

``USERPRINCIPALNAME``  ``user@domain``, the name the user logs in with
``CTFIRSTNAME``, ``CTLASTNAME``  first and last name
``CTEMAIL``            e-mail address
``MEMBEROF``           the user's group DNs, separated by ``;`` or newlines

User names. ``plugin_settings.ISSO_ALLOWED_DOMAINS`` (required) lists the domains whose
users may sign in, the primary domain first. A user of the primary domain is named
without it (``alice@corp.example.com`` -> ``alice``); a user of another listed domain
keeps it (``alice@partner.example.com``), so ``alice`` of two domains stay two users.
A user of any other domain, a name without a domain, and a name whose part before the
domain holds an ``@`` are refused (403).

Groups are named as in ``ldap.py`` (``AUTH_GROUP_BASE_DN``: the CN of groups directly
under that base DN, else every group's full DN); ``AUTH_GROUP_PATTERN`` narrows them.
"""

import logging
import re

import plugin_settings

from mliy_spawner.plugins import base_dn_keys, dn_groups, header_email, header_text

log = logging.getLogger("mliy.auth")

_pattern = getattr(plugin_settings, "AUTH_GROUP_PATTERN", None)
GROUP_PATTERN = re.compile(_pattern) if _pattern else None
GROUP_BASE_DN = getattr(plugin_settings, "AUTH_GROUP_BASE_DN", None)
base_dn_keys(GROUP_BASE_DN, "plugin_settings.AUTH_GROUP_BASE_DN")  # a bad DN stops the hub

_DOMAIN = re.compile(r"([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def _allowed_domains(value):
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
        raise ValueError(
            f"plugin_settings.ISSO_ALLOWED_DOMAINS is {value!r}; list the domains whose users "
            "may sign in, the primary domain first, e.g. ['corp.example.com']"
        )
    domains = []
    for domain in value:
        cleaned = domain.strip().rstrip(".").lower() if isinstance(domain, str) else None
        if not cleaned or not _DOMAIN.fullmatch(cleaned):
            raise ValueError(
                f"plugin_settings.ISSO_ALLOWED_DOMAINS holds {domain!r}, which is not a domain "
                "name such as 'corp.example.com'"
            )
        domains.append(cleaned)
    return tuple(dict.fromkeys(domains))


ALLOWED_DOMAINS = _allowed_domains(getattr(plugin_settings, "ISSO_ALLOWED_DOMAINS", None))
PRIMARY_DOMAIN = ALLOWED_DOMAINS[0]


def getAuthHeader():
    """The header that carries the user name."""
    return "USERPRINCIPALNAME"


def processAuthUserInfo(headers):
    """First and last name, display name and e-mail from the agent's headers."""
    first = header_text(headers, "CTFIRSTNAME")
    last = header_text(headers, "CTLASTNAME")
    return {
        "first_name": first,
        "last_name": last,
        "display_name": " ".join(part for part in (first, last) if part),
        "email": header_email(headers, "CTEMAIL"),
        "user_principal_name": header_text(headers, "USERPRINCIPALNAME"),
    }


def processAuthUserGroups(headers):
    """The groups in MEMBEROF (see the module docstring), filtered by AUTH_GROUP_PATTERN."""
    groups = dn_groups(headers.get("MEMBEROF", ""), GROUP_BASE_DN, log)
    if GROUP_PATTERN is not None:
        groups = [group for group in groups if GROUP_PATTERN.search(group)]
    return groups


def configureAuthUser(user_info):
    """Nothing to add."""
    return None


def cleanAuthUsername(username):
    """``alice@<primary domain>`` -> ``alice``; ``alice@<other allowed domain>`` stays."""
    username = username.strip()
    local, at, domain = username.rpartition("@")
    domain = domain.rstrip(".").lower()
    allowed = ", ".join(ALLOWED_DOMAINS)
    if not at or not local or not domain or "@" in local:
        raise PermissionError(
            f"The sign-in name {username[:80]!r} is not of the form user@domain; this hub "
            f"accepts users of {allowed}."
        )
    if domain not in ALLOWED_DOMAINS:
        log.warning("refused %r: the domain %r is not in ISSO_ALLOWED_DOMAINS", username, domain)
        raise PermissionError(
            f"Users of the domain {domain[:80]!r} cannot sign in to this hub; it accepts "
            f"users of {allowed}."
        )
    return local if domain == PRIMARY_DOMAIN else f"{local}@{domain}"
