"""JupyterHub configuration for mliy-spawner: the embedded demo, and a real AWS account.

- ``make demo`` (``python -m mliy_spawner.demo``) starts a local AWS stand-in and an
  instance runner, writes ``demo.json`` and runs ``jupyterhub -f jupyterhub_config.py``
  with ``MLIY_DEMO_SETTINGS`` pointing at it: the "Demo" section below applies.
- For a real AWS account, fill in the "Real AWS" section (each line is commented with
  what it sets) and run ``jupyterhub -f jupyterhub_config.py`` on a machine that can
  reach the instances' subnet. Everything from "Both" on applies in either case.

Every MLiySpawner setting is documented in docs/configuration.md and in
``jupyterhub --help-all`` (look for ``MLiySpawner.``).
"""

import json
import os
import sys
from pathlib import Path

from mliy_spawner import MLiySpawner
from mliy_spawner.service import configure_service

c = get_config()  # noqa: F821 (JupyterHub provides it)

c.JupyterHub.spawner_class = "mliy"
c.JupyterHub.allow_named_servers = True
# Launching an instance takes a while: go straight to the progress page.
c.JupyterHub.tornado_settings = {"slow_spawn_timeout": 0}

DEMO_SETTINGS = os.environ.get("MLIY_DEMO_SETTINGS")
service_options = {}
cull = {"timeout": 3600, "every": 300}

if DEMO_SETTINGS:
    # ---- Demo: moto on loopback stands in for AWS; see mliy_spawner/demo/ ------------
    from mliy_spawner.demo.hooks import local_address_hook

    demo = json.loads(Path(DEMO_SETTINGS).read_text())
    aws = demo["aws"]
    data = Path(demo["data_dir"])
    passwords = json.loads((data / "credentials.json").read_text())

    c.JupyterHub.ip = "127.0.0.1"
    c.JupyterHub.port = demo["hub_port"]
    c.JupyterHub.public_url = f"http://127.0.0.1:{demo['hub_port']}"
    c.JupyterHub.hub_ip = "127.0.0.1"
    c.JupyterHub.hub_port = demo["hub_api_port"]
    c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{demo['proxy_api_port']}"
    c.ConfigurableHTTPProxy.pid_file = str(data / "proxy.pid")
    c.JupyterHub.db_url = f"sqlite:///{data / 'jupyterhub.sqlite'}"
    c.JupyterHub.cookie_secret_file = str(data / "cookie_secret")
    c.JupyterHub.pid_file = str(data / "jupyterhub.pid")
    # Servers outlive a hub restart (the demo restarts the hub on SIGHUP): JupyterHub
    # finds them again through the spawner's state.
    c.JupyterHub.cleanup_servers = False

    # Logins: one shared password for users, another for admins (printed by the demo).
    c.JupyterHub.authenticator_class = "shared-password"
    c.SharedPasswordAuthenticator.user_password = passwords["user_password"]
    c.SharedPasswordAuthenticator.admin_password = passwords["admin_password"]
    c.Authenticator.admin_users = {"admin"}
    c.Authenticator.allowed_users = {"alice", "bob"}
    # A launch group is a JupyterHub group of the same name.
    c.JupyterHub.load_groups = {
        "analysts": {"users": ["alice", "admin"]},
        "students": {"users": ["bob"]},
    }

    c.MLiySpawner.aws_endpoint_url = aws["endpoint_url"]
    c.MLiySpawner.region = aws["region"]
    c.MLiySpawner.subnet_id = aws["subnet_id"]
    c.MLiySpawner.availability_zone = aws["availability_zone"]
    c.MLiySpawner.software_configs = {
        "python": {
            "display_name": "Python notebooks",
            "description": "Python 3 with <code>jupyter_server</code>, and a data volume "
            "mounted at <code>/home</code> that survives stopping the server.",
            "ami_id": aws["ami_id"],
            "instance_types": ["t2.large", "m4.large", "m4.xlarge", "r4.xlarge", "m4.2xlarge"],
            "default_instance_type": "m4.large",
            "volume": {"device": "/dev/sdf", "default_size": 20, "max_size": 200},
            "params": {"python_packages": "jupyterhub jupyter_server", "home_mode": "700"},
        },
        "small": {
            "display_name": "Small notebooks",
            "description": "A small instance without a data volume.",
            "ami_id": aws["ami_id"],
            "instance_types": ["t2.micro", "t2.small", "t2.medium"],
            "default_instance_type": "t2.small",
            "params": {"python_packages": "jupyterhub jupyter_server", "home_mode": "700"},
        },
    }
    c.MLiySpawner.launch_groups = {
        "analysts": {
            "software_configs": ["python", "small"],
            "security_group_ids": [aws["security_group_id"]],
            "key_name": aws["key_name"],
            "instance_profile": aws["instance_profile"],
            "excluded_instance_types": ["m4.2xlarge"],
        },
        "students": {
            "software_configs": ["small"],
            "security_group_ids": [aws["security_group_id"]],
            "excluded_instance_types": ["t2.medium"],
            # a small monthly budget shared by the group: the form shows what is left
            "budget_usd": "5",
        },
    }
    # One Route 53 record per server, in the seeded zone (MLiy's DNS plugin).
    c.MLiySpawner.dns_plugin_folder = str(data / "plugins")
    # auth.log, aws.log, launch.log next to the service's service.log
    c.MLiySpawner.log_dir = str(data / "logs")
    # Instances are local processes: connect where the demo's runner serves them.
    c.MLiySpawner.connect_address_hook = local_address_hook(data / "addresses.json")
    c.MLiySpawner.wait_backoff_start = 0.5
    c.MLiySpawner.wait_backoff_max = 2.0
    c.MLiySpawner.reflector_interval = 2.0
    c.MLiySpawner.start_timeout = 300
    c.MLiySpawner.http_timeout = 120

    service_options = {
        "port": demo["service_port"],
        "log_dir": str(data / "logs"),
        "aws_endpoint_url": aws["endpoint_url"],
        # the demo's instances run on this machine and fetch their token from 127.0.0.1,
        # not from the private address moto gives them
        "environment": {"MLIY_BOOTSTRAP_CHECK_ADDRESS": "0"},
    }
    cull = {"timeout": demo["cull_timeout"], "every": demo["cull_every"]}

    # Scripts can drive the hub API with this token (`MLIY_DEMO_ADMIN_TOKEN=... make demo`).
    # (JupyterHub then warns that admin_users and the admin role are both configured:
    # the shared-password login needs admin_users, the service needs the role.)
    if os.environ.get("MLIY_DEMO_ADMIN_TOKEN"):
        c.JupyterHub.services = [
            {"name": "demo-admin", "api_token": os.environ["MLIY_DEMO_ADMIN_TOKEN"]}
        ]
        c.JupyterHub.load_roles = [{"name": "admin", "services": ["demo-admin"]}]
else:
    # ---- Real AWS: fill in, then remove the `raise` below ---------------------------
    # The hub's public address; instances report their progress to <public_url>/services/mliy/.
    # c.JupyterHub.public_url = "https://notebooks.example.com"
    # c.JupyterHub.hub_connect_ip = "10.0.1.10"  # how instances reach the hub's API
    # c.JupyterHub.db_url = "sqlite:////srv/jupyterhub/jupyterhub.sqlite"
    #
    # Logins: your authenticator; MLiy's header login behind an authenticating proxy is
    # "mliy", with an auth plugin (docs/plugins.md):
    # c.JupyterHub.authenticator_class = "mliy"
    # c.MLiyAuthenticator.plugin_folder = "/etc/mliy/plugins"  # e.g. with ldap.py
    # c.MLiyAuthenticator.trusted_proxies = ["10.0.0.5"]  # only they may send the header
    # c.MLiyAuthenticator.admin_group = "cn=hub-admins,ou=Groups,dc=example,dc=com"
    #
    # One Route 53 record per server (plugins/route53.py and its plugin_settings.py):
    # c.MLiySpawner.dns_plugin_folder = "/etc/mliy/plugins"
    #
    # c.MLiySpawner.region = "us-east-1"
    # Empty subnet/zone: read from the hub's own instance metadata (the hub runs on EC2).
    # c.MLiySpawner.subnet_id = "subnet-0123456789abcdef0"
    # c.MLiySpawner.availability_zone = "us-east-1a"
    # c.MLiySpawner.software_configs = {
    #     "python": {
    #         "display_name": "Python notebooks",
    #         "ami_id": "ami-0123456789abcdef0",  # Amazon Linux 2023 or Ubuntu
    #         "instance_types": ["t3.large", "m5.xlarge", "r5.2xlarge"],
    #         "volume": {"device": "/dev/sdf", "default_size": 50, "max_size": 1000,
    #                    "kms_key_id": "alias/notebooks"},
    #         "params": {"python_packages": "jupyterhub jupyterlab", "home_mode": "700"},
    #     },
    # }
    # A launch group is a JupyterHub group of the same name:
    # c.MLiySpawner.launch_groups = {
    #     "analysts": {
    #         "software_configs": ["python"],
    #         "security_group_ids": ["sg-0123456789abcdef0"],
    #         "key_name": "notebooks",
    #         "instance_profile": "mliy-notebook",
    #         "budget_usd": "2000",  # a month, shared by the group's members
    #         "member_budget_usd": "300",  # a month, for each member
    #         "cost_tags": {"CostCenter": "1234"},  # on its stacks, for AWS's bill
    #     },
    # }
    # c.MLiySpawner.stack_tags = {"cost-center": "analytics"}
    raise SystemExit(
        "jupyterhub_config.py: MLIY_DEMO_SETTINGS is not set. Run the demo with "
        "`make demo` (python -m mliy_spawner.demo), or fill in the 'Real AWS' section "
        "of this file and remove this line."
    )

# ---- Both ---------------------------------------------------------------------------
# Servers are instances that outlive the hub process: a hub restart must not stop them.
c.JupyterHub.cleanup_servers = False

# At most 3 servers with a machine (running or stopped) per user, the default server
# included; JupyterHub's own limit counts named servers only.
c.MLiySpawner.max_servers_per_user = 3
c.JupyterHub.named_server_limit_per_user = 3
# Budgets are per launch group ("budget_usd", "member_budget_usd" above) and per user:
# c.MLiySpawner.user_budgets = {"alice": "250"}
# c.MLiySpawner.budget_action = "stop"  # stop (not terminate) servers over budget

# The mliy service: instances' progress reports and the instance control API.
configure_service(c, **service_options)

# Stop servers nobody used for a while: the instance stops (its disk stays), and the
# next start resumes it. The culler's role has the scopes its documentation asks for.
c.JupyterHub.services = [
    *c.JupyterHub.services,
    {
        "name": "idle-culler",
        "command": [
            sys.executable,
            "-m",
            "jupyterhub_idle_culler",
            f"--timeout={cull['timeout']}",
            f"--cull-every={cull['every']}",
        ],
    },
]
c.JupyterHub.load_roles = [
    *c.JupyterHub.load_roles,
    {
        "name": "idle-culler",
        "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
        "services": ["idle-culler"],
    },
]

MLiySpawner.check_config(c)
