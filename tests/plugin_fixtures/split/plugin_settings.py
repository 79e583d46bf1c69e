"""Settings read by the split fixture plugins."""

from pathlib import Path

USER_HEADER = "X-Test-User"
GROUP_HEADER = "X-Test-Groups"
DNS_SUFFIX = "nb.example.test"

with open(Path(__file__).with_name("imports.log"), "a") as f:
    f.write("plugin_settings\n")
