"""Auth plugin part 1: which header, and how to clean the name."""

from pathlib import Path

import plugin_settings

with open(Path(__file__).with_name("imports.log"), "a") as f:
    f.write("names\n")


def getAuthHeader():
    return plugin_settings.USER_HEADER


def cleanAuthUsername(username):
    return username.strip().lower()
