"""The repository's jupyterhub_config.py, loaded the way JupyterHub loads it: the demo
section (with a demo.json like the demo writes), no settings at all (a clear stop), and
the commented real-AWS section uncommented (a valid configuration, so it cannot rot)."""

import json
import re

import pytest
from hubapi import REPO
from traitlets.config import PyFileConfigLoader

from mliy_spawner import hub_templates
from mliy_spawner.demo.__main__ import write_dns_plugin
from mliy_spawner.demo.aws import Seed

CONFIG = REPO / "jupyterhub_config.py"


def load(path, monkeypatch, env=None):
    monkeypatch.delenv("MLIY_DEMO_SETTINGS", raising=False)
    monkeypatch.delenv("MLIY_DEMO_ADMIN_TOKEN", raising=False)
    for name, value in (env or {}).items():
        monkeypatch.setenv(name, value)
    loader = PyFileConfigLoader(path.name, path=str(path.parent))
    return loader.load_config()


@pytest.fixture
def demo_settings(tmp_path):
    aws = {
        "endpoint_url": "http://127.0.0.1:4566",
        "region": "us-east-1",
        "vpc_id": "vpc-0123456789abcdef0",
        "subnet_id": "subnet-0123456789abcdef0",
        "availability_zone": "us-east-1a",
        "ami_id": "ami-0123456789abcdef0",
        "key_name": "mliy-demo-key",
        "security_group_id": "sg-0123456789abcdef0",
        "instance_profile": "mliy-notebook",
        "hosted_zone_id": "Z0123",
        "dns_zone": "mliy.demo.",
    }
    settings = {
        "data_dir": str(tmp_path),
        "hub_port": 8000,
        "hub_api_port": 8081,
        "proxy_api_port": 8001,
        "service_port": 8090,
        "cull_timeout": 600,
        "cull_every": 60,
        "aws": aws,
    }
    (tmp_path / "demo.json").write_text(json.dumps(settings))
    write_dns_plugin(tmp_path, Seed(**aws))
    (tmp_path / "credentials.json").write_text(
        json.dumps({"user_password": "u" * 12, "admin_password": "a" * 40})
    )
    return tmp_path / "demo.json"


def test_demo_section(monkeypatch, demo_settings, tmp_path):
    c = load(
        CONFIG,
        monkeypatch,
        {"MLIY_DEMO_SETTINGS": str(demo_settings), "MLIY_DEMO_ADMIN_TOKEN": "t" * 64},
    )
    assert c.JupyterHub.public_url == "http://127.0.0.1:8000"
    assert c.JupyterHub.tornado_settings == {"slow_spawn_timeout": 0}
    assert c.JupyterHub.allow_named_servers is True
    assert c.JupyterHub.cleanup_servers is False
    assert c.MLiySpawner.aws_endpoint_url == "http://127.0.0.1:4566"
    assert sorted(c.MLiySpawner.software_configs) == ["python", "small"]
    assert sorted(c.MLiySpawner.launch_groups) == ["analysts", "students"]
    # money: a small budget on students, 3 servers a user, costs on the hub's pages
    assert c.MLiySpawner.launch_groups["students"]["budget_usd"] == "5"
    assert c.MLiySpawner.max_servers_per_user == 3
    assert c.JupyterHub.named_server_limit_per_user == 3
    assert c.JupyterHub.template_paths == [hub_templates.PATH]
    assert repr(c.MLiySpawner.connect_address_hook) == (
        f"LocalAddressHook({str(tmp_path / 'addresses.json')!r})"
    )
    services = {s["name"]: s for s in c.JupyterHub.services}
    assert sorted(services) == ["demo-admin", "idle-culler", "mliy"]
    assert services["demo-admin"]["api_token"] == "t" * 64
    assert services["mliy"]["url"] == "http://127.0.0.1:8090"
    assert "--timeout=600" in services["idle-culler"]["command"]
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert roles["admin"]["services"] == ["demo-admin"]
    # the culler gets the scopes its documentation lists, not admin
    assert sorted(roles["idle-culler"]["scopes"]) == [
        "delete:servers",
        "list:users",
        "read:servers",
        "read:users:activity",
    ]
    assert roles["idle-culler"]["services"] == ["idle-culler"]


def test_demo_section_without_admin_token_has_no_admin_service(monkeypatch, demo_settings):
    c = load(CONFIG, monkeypatch, {"MLIY_DEMO_SETTINGS": str(demo_settings)})
    assert sorted(s["name"] for s in c.JupyterHub.services) == ["idle-culler", "mliy"]
    assert "admin" not in {r["name"] for r in c.JupyterHub.load_roles}


def test_without_settings_it_says_what_to_do(monkeypatch):
    with pytest.raises(SystemExit, match="make demo.*Real AWS"):
        load(CONFIG, monkeypatch)


def test_the_real_aws_section_is_a_valid_config(monkeypatch, tmp_path):
    text = CONFIG.read_text()
    start = text.index("    # ---- Real AWS")
    end = text.index("    raise SystemExit(", start)
    lines = []
    for line in text[start:end].splitlines():
        # "    # c.X = ..." and its continuation lines become code; prose stays comments
        code = re.match(r"^    # (c\.|    |\}|\]|\))", line)
        lines.append("    " + line[6:] if code else line)
    after_raise = text.index("\n    )\n", end) + len("\n    )\n")
    real = text[:start] + "\n".join(lines) + "\n" + text[after_raise:]
    real = real.replace("/srv/jupyterhub/jupyterhub.sqlite", str(tmp_path / "hub.sqlite"))
    # (the DNS plugin folder must exist on the hub's machine; not here)
    real = real.replace('c.MLiySpawner.dns_plugin_folder = "/etc/mliy/plugins"', "")
    path = tmp_path / "jupyterhub_config.py"
    path.write_text(real)
    c = load(path, monkeypatch)
    assert c.MLiySpawner.software_configs["python"]["ami_id"] == "ami-0123456789abcdef0"
    assert c.MLiySpawner.launch_groups["analysts"]["instance_profile"] == "mliy-notebook"
    assert c.JupyterHub.authenticator_class == "mliy"
    assert c.MLiySpawner.launch_groups["analysts"]["cost_tags"] == {"CostCenter": "1234"}
    assert "aws_endpoint_url" not in c.MLiySpawner
