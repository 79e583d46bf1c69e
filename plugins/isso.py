"""Auth plugin for an ISSO single sign-on agent (MLiy's isso plugin, for JupyterHub).

The agent in front of the hub forwards ``/hub/login`` with:

``USERPRINCIPALNAME``  ``user@domain``; the JupyterHub name is the part before the last ``@``
``CTFIRSTNAME``, ``CTLASTNAME``  first and last name
``CTEMAIL``            e-mail address
``MEMBEROF``           the user's group DNs, separated by ``;`` or newlines

Each group is the CN of a DN's first part. ``plugin_settings.AUTH_GROUP_PATTERN``
narrows the groups.
"""

import logging
import re

import plugin_settings

from mliy_spawner.plugins import cn_groups, header_email, header_text

log = logging.getLogger("mliy.auth")

_pattern = getattr(plugin_settings, "AUTH_GROUP_PATTERN", None)
GROUP_PATTERN = re.compile(_pattern) if _pattern else None


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
    """The CN of every group DN in MEMBEROF (filtered by AUTH_GROUP_PATTERN)."""
    groups = cn_groups(headers.get("MEMBEROF", ""), log)
    if GROUP_PATTERN is not None:
        groups = [group for group in groups if GROUP_PATTERN.search(group)]
    return groups


def configureAuthUser(user_info):
    """Nothing to add."""
    return None


def cleanAuthUsername(username):
    """``alice@corp.example.com`` -> ``alice``: the domain is dropped."""
    username = username.strip()
    if "@" in username:
        return username.rpartition("@")[0]
    return username
