"""Auth plugin for Apache httpd with mod_authnz_ldap (MLiy's LDAP plugin, for JupyterHub).

Apache authenticates the user against the directory and forwards ``/hub/login`` to
configurable-http-proxy with these request headers (see ``docs/plugins.md`` for the
Apache configuration):

``REMOTE_USER``             the user name (the header this plugin logs in with)
``AUTHENTICATE_GIVENNAME``  first name          ``AUTHENTICATE_SN``  last name
``AUTHENTICATE_MAIL``       e-mail address
``AUTHORIZE_MEMBEROF``      the user's group DNs, separated by ``;`` or newlines
                            (``AUTHENTICATE_MEMBEROF`` is read when it is absent)

Groups (:func:`mliy_spawner.plugins.dn_groups`): with ``plugin_settings.AUTH_GROUP_BASE_DN``
set (e.g. ``"OU=Groups,DC=example,DC=com"``), a group directly under it is named by its CN
(``CN=data-science,OU=Groups,DC=example,DC=com`` gives ``data-science``) and groups
elsewhere in the directory are left out; without it every group is named by its full DN
(``cn=data-science,ou=Groups,dc=example,dc=com``). A bare CN found anywhere never counts:
whoever may create ``CN=hub-admins`` in another branch must not become admin.
``plugin_settings.AUTH_GROUP_PATTERN`` then narrows the groups.
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


def getAuthHeader():
    """The header that carries the user name."""
    return "REMOTE_USER"


def processAuthUserInfo(headers):
    """First and last name, display name and e-mail from the LDAP attributes."""
    first = header_text(headers, "AUTHENTICATE_GIVENNAME")
    last = header_text(headers, "AUTHENTICATE_SN")
    return {
        "first_name": first,
        "last_name": last,
        "display_name": " ".join(part for part in (first, last) if part),
        "email": header_email(headers, "AUTHENTICATE_MAIL"),
    }


def processAuthUserGroups(headers):
    """The groups in memberOf (see the module docstring), filtered by AUTH_GROUP_PATTERN."""
    member_of = headers.get("AUTHORIZE_MEMBEROF") or headers.get("AUTHENTICATE_MEMBEROF", "")
    groups = dn_groups(member_of, GROUP_BASE_DN, log)
    if GROUP_PATTERN is not None:
        groups = [group for group in groups if GROUP_PATTERN.search(group)]
    return groups


def configureAuthUser(user_info):
    """Nothing to add: the user info above is all this directory gives."""
    return None


def cleanAuthUsername(username):
    """The LDAP uid is the JupyterHub name (surrounding spaces dropped)."""
    return username.strip()
