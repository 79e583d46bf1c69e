"""Auth plugin part 2: user details and groups (comma-separated in GROUP_HEADER)."""

from pathlib import Path

import plugin_settings

with open(Path(__file__).with_name("imports.log"), "a") as f:
    f.write("details\n")


def processAuthUserInfo(headers):
    return {"email": headers.get("X-Test-Email", ""), "display_name": "Test User"}


def processAuthUserGroups(headers):
    value = headers.get(plugin_settings.GROUP_HEADER, "")
    return [group.strip() for group in value.split(",") if group.strip()]


def configureAuthUser(user_info):
    if user_info["name"] == "refused":
        raise PermissionError("the directory marks this account as suspended")
    return {**user_info, "team": "blue"}
