"""MLiySpawner: each notebook server on its own EC2 instance, launched as a CloudFormation stack.

This class connects JupyterHub's spawner interface to the helper modules and
orchestrates them: :mod:`configs` (what may be launched), :mod:`form` (the options
form), :mod:`userdata` (the instance's boot script), :mod:`stacks` (the stack's
identifiers and its AWS steps, as plain functions), :mod:`reflector` (one shared view of
AWS that ``poll()`` and the waits read), :mod:`progress` (what the progress page shows)
and :mod:`boot` (the instance's own setup steps). Blocking calls go through
:func:`mliy_spawner.util.run_blocking`; launch lines go to the ``mliy.launch`` log.

Lifecycle:

- ``start()`` creates the stack (or resumes the stopped instance of the last one),
  waits through the reflector until the instance has an address, and returns it.
- ``stop()`` stops the instance (``stop_action = "stop"``, the default: disk and
  instance survive, the next start resumes them) or deletes the stack ("terminate").
- ``delete_forever()`` (named server removed, user deleted) deletes the stack.
- A failed or cancelled launch deletes the stack it created; no path forgets a stack.
"""

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from botocore.exceptions import ClientError
from jupyterhub.spawner import Spawner
from jupyterhub.utils import maybe_future
from sqlalchemy.orm import object_session
from traitlets import (
    Any,
    Bool,
    Callable,
    Dict,
    Enum,
    Float,
    Int,
    List,
    Set,
    TraitError,
    Unicode,
    default,
    validate,
)

from . import (
    audit,
    aws,
    boot,
    bootstrap,
    configs,
    costs,
    costviews,
    form,
    ledger,
    logs,
    placement,
    plugins,
    pricing,
    reconcile,
    stacks,
    userdata,
)
from .metrics import failure_reason, spawn_failed, spawn_succeeded
from .progress import LaunchProgress
from .reflector import Reflector, shared_reflector
from .service import server_token_scopes
from .store import shared_store, store_url_from_env
from .util import backoff, for_users, run_blocking, take_turn, user_error

log = logging.getLogger("mliy.launch")


@contextlib.contextmanager
def _as_trait_error():
    """A setting's checker's ValueError as the TraitError traitlets reports."""
    try:
        yield
    except ValueError as e:
        raise TraitError(str(e)) from None


#: Audit writes running in the background (a reference keeps each task alive).
_audit_tasks = set()


def _spawn_token_scopes(spawner):
    """``MLiySpawner.server_token_scopes``: the hub's ``server`` role plus
    ``custom:mliy-progress!server`` once ``configure_service`` defined it, so only this
    server's own token may report its progress.

    JupyterHub asks for these first in each spawn, just before its own steps for it (the
    API token, the OAuth client, three or four commits: 10-17 ms with no await). Each
    spawn takes a turn here (:func:`util.take_turn`), so those steps run one spawn per
    loop iteration and 100 users pressing Start at once no longer hold the hub's loop
    for seconds (``benchmarks/hubstorm.py``).

    A spawn whose turn is now gets the scopes as they are: JupyterHub goes on without an
    await, so a lone spawn runs as with a plain list (its options are checked, and
    refused with a 400, before the request that started it is answered). A spawn that has
    to wait gets an awaitable, and the hub's session is committed first: JupyterHub has
    just linked the new server to the spawner's row, and a request that finishes while
    this spawn waits rolls back whatever is left uncommitted in that shared session.
    """
    scopes = server_token_scopes(spawner)
    turn = take_turn()
    if turn is None:
        return scopes
    session = object_session(spawner.orm_spawner)
    if session is not None:
        session.commit()
    return _on_turn(turn, scopes)


async def _on_turn(turn, scopes):
    await turn
    return scopes


class MLiySpawner(Spawner):
    """Spawn each server as a CloudFormation stack running one EC2 instance."""

    # ---- where and how to reach AWS ------------------------------------------------

    region = Unicode(
        "us-east-1",
        help="""AWS region where the stacks are created.

        The spawner's EC2 and CloudFormation clients work in this region, and the options form
        shows the on-demand prices of this region. Default: "us-east-1".

        Example::

            c.MLiySpawner.region = "us-west-2"
        """,
    ).tag(config=True)

    aws_endpoint_url = Unicode(
        "",
        help="""Endpoint URL for the spawner's AWS calls (EC2 and CloudFormation).

        Empty (the default) means the real AWS endpoints. Set it to use a stand-in such as
        moto's server, as the demo does. DNS plugins and the `mliy` service do not read it:
        the shipped Route 53 plugin has its own ROUTE53_ENDPOINT_URL setting, and
        `configure_service(c, aws_endpoint_url=...)` sets the service's.

        Example::

            c.MLiySpawner.aws_endpoint_url = "http://127.0.0.1:4566"
        """,
    ).tag(config=True)

    ec2_client = Any(
        None,
        allow_none=True,
        help="boto3 EC2 client; None: the process's shared one for region and endpoint.",
    )

    cfn_client = Any(
        None,
        allow_none=True,
        help="boto3 CloudFormation client; None: the process's shared one for region and endpoint.",
    )

    hub_name = Unicode(
        "mliy",
        help="""Name of this hub, written to every stack's `mliy:hub` tag.

        The shared view of AWS follows only the instances carrying this tag, and the name goes
        into the hash that ends each stack name. Give each hub that shares an AWS account and
        region its own name, and do not change it while servers exist: the hub would no
        longer see their instances. Default: "mliy".
        """,
    ).tag(config=True)

    stack_name_prefix = Unicode(
        "mliy",
        help="""First part of every stack name.

        A stack is named `<prefix>-<user>-<server>-<hash>`, e.g. "mliy-alice-gpu-1a2b3c4d5e"
        (the default server has no `<server>` part). The prefix is cut down to letters, digits
        and "-" and to 20 characters; one not starting with a letter gets an "m" in front, and
        an empty one becomes "mliy". Default: "mliy".
        """,
    ).tag(config=True)

    stack_tags = Dict(
        {},
        help="""Tags added to every stack, and so to its instance and volume.

        Values are turned into strings and cut to 256 characters. The spawner sets `Name` and
        the `mliy:*` tags (mliy:hub, mliy:user, mliy:server, mliy:software-config,
        mliy:launch-group) itself, over any of the same name given here. Default: {}.

        Example::

            c.MLiySpawner.stack_tags = {"cost-center": "analytics"}
        """,
    ).tag(config=True)

    reflector_interval = Float(
        10.0,
        help="""Seconds between two refreshes of the shared view of AWS when nobody waits.

        One view per region and hub holds the hub's instances and stacks; `poll()` reads it
        and makes no AWS call. A spawner waiting on AWS asks for a refresh sooner (see
        `wait_backoff_start`); requests are shared, and refreshes are at least 1 s apart. After
        a failed refresh the pauses double, up to 60 s. Default: 10.0.
        """,
    ).tag(config=True)

    reflector = Any(
        None,
        allow_none=True,
        help="The Reflector; None: the shared one of this region, endpoint and hub.",
    )

    # ---- what users may launch -----------------------------------------------------

    software_configs = Dict(
        {},
        help="""Software configurations users choose from, keyed by slug (MLiy's SoftwareConfig).

        A slug has 1 to 63 lower-case letters, digits, "_" and "-", and starts with a letter or
        digit. Each value is a dict with these keys:

        - `ami_id` (required): the AMI to launch, e.g. "ami-0abcdef1234567890".
        - `instance_types` (required): the instance types offered, at least one.
        - `default_instance_type`: the type selected at first, one of `instance_types`
          (default: the first of them).
        - `display_name`: the name shown in the form (default: the slug).
        - `description`: shown in the form; admin HTML, inserted as is (default: empty).
        - `template`: path of the CloudFormation template (default: the shipped
          cloudformation/notebook-instance.yaml).
        - `user_data`: path of the boot script (default: the shipped userdata/mliy-bootstrap.sh).
        - `params`: {token: value} replacing `{{{token}}}` in the boot script; values are
          strings or numbers, and win over `replacement_tokens` (default: {}).
        - `volume`: an extra encrypted EBS volume, or None for none (the default). A dict with
          `default_size` and `max_size` (required, in GiB), `min_size` (default 1), `device`
          (default "/dev/sdf"; /dev/sd[b-z] or /dev/xvd[b-z]) and `kms_key_id` (default "":
          the account's default key), where 1 <= min_size <= default_size <= max_size <= 16384.

        An unknown key or a bad value stops the hub at start-up with a message naming it.
        Default: {} (nothing to launch).

        Example::

            c.MLiySpawner.software_configs = {
                "python": {
                    "display_name": "Python 3 notebooks",
                    "ami_id": "ami-0abcdef1234567890",
                    "instance_types": ["t3.large", "m5.xlarge"],
                    "volume": {"default_size": 50, "max_size": 500},
                },
            }
        """,
    ).tag(config=True)

    @validate("software_configs")
    def _validate_software_configs(self, proposal):
        try:
            self._parse(software_configs=proposal.value, launch_groups={})
        except configs.ConfigError as e:
            raise TraitError(str(e)) from None
        return proposal.value

    launch_groups = Dict(
        {},
        help="""What each JupyterHub group may launch, keyed by group name (MLiy's GroupConfig).

        Each value is a dict with these keys:

        - `software_configs` (required): slugs of `software_configs` the group may launch, at
          least one.
        - `security_group_ids` (required): the instances' security groups, at least one, e.g.
          ["sg-0123456789abcdef0"].
        - `key_name`: EC2 key pair name for SSH to the instances (default: none).
        - `instance_profile`: IAM instance profile name for the instances (default: none).
        - `excluded_instance_types`: instance types the group's members may not choose
          (default: none); it may not exclude every type of one of the group's configurations.
        - `budget_usd`: a monthly budget in dollars shared by the group's members, as a
          string or integer, e.g. "2000" (default: none).
        - `member_budget_usd`: a monthly budget in dollars for each member's spend in the
          group (default: none); `user_budgets` overrides it per user.
        - `cost_tags`: more tags for the group's stacks, e.g. {"CostCenter": "1234"}, so
          AWS's own bill can be split by them (default: none).

        A start whose first hour would go over a budget is refused with HTTP 403 (see
        `budget_action` for servers that run on).

        A user in several launch groups chooses one in the form; a user in none cannot
        spawn unless `default_launch_group` is set. Default: {}; `MLiySpawner.check_config(c)`
        refuses a configuration without any launch group.

        Example::

            c.MLiySpawner.launch_groups = {
                "data-science": {
                    "software_configs": ["python"],
                    "security_group_ids": ["sg-0123456789abcdef0"],
                    "instance_profile": "mliy-notebook",
                },
            }
        """,
    ).tag(config=True)

    @validate("launch_groups")
    def _validate_launch_groups(self, proposal):
        # traitlets delays cross-validation until the whole config section is loaded,
        # so software_configs is already set here
        try:
            self._parse(launch_groups=proposal.value)
        except configs.ConfigError as e:
            raise TraitError(str(e)) from None
        return proposal.value

    default_launch_group = Unicode(
        "",
        help="""Launch group for users who are in none of `launch_groups`.

        Must be one of the names in `launch_groups`; such users may then launch what that group
        allows. Default: "" (none: a user in no launch group cannot spawn).
        """,
    ).tag(config=True)

    @validate("default_launch_group")
    def _validate_default_launch_group(self, proposal):
        if proposal.value and proposal.value not in self.launch_groups:
            raise TraitError(
                f"MLiySpawner.default_launch_group: {proposal.value!r} is not one of "
                f"launch_groups {sorted(self.launch_groups)}"
            )
        return proposal.value

    replacement_tokens = Dict(
        {},
        help="""Hub-wide values for `{{{token}}}` placeholders in boot scripts.

        These are MLiy's REPLACEMENT_TOKENS; a software configuration's own `params` win
        over them. Values are inserted once, as text (a value that looks like a placeholder
        is not expanded again); None counts as no value, and a script with a placeholder
        that has no value is not launched. Never put secrets here: the rendered script can
        be read on the instance. Default: {}.

        Example::

            c.MLiySpawner.replacement_tokens = {"pip_index_url": "https://pypi.example.com/simple"}
        """,
    ).tag(config=True)

    @validate("replacement_tokens")
    def _validate_replacement_tokens(self, proposal):
        try:
            configs.check_replacement_tokens(proposal.value, self.parsed_configs)
        except configs.ConfigError as e:
            raise TraitError(str(e)) from None
        return proposal.value

    # ---- placement and networking --------------------------------------------------

    subnet_id = Unicode(
        "",
        help="""Subnet the instances are launched in.

        Empty (the default): the subnet of the machine the hub runs on, read from EC2 instance
        metadata (see `instance_metadata_url`), as MLiy did. A hub that does not run on EC2
        sets both this and `availability_zone`.
        """,
    ).tag(config=True)

    availability_zone = Unicode(
        "",
        help="""Availability zone of the instances and their extra volumes.

        It must be the zone of the subnet. Empty (the default): the zone of the machine the hub
        runs on, read from EC2 instance metadata.
        """,
    ).tag(config=True)

    instance_metadata_url = Unicode(
        "http://169.254.169.254",
        help="""Base URL of the EC2 instance metadata service (IMDSv2).

        Read once per hub process, and only when `subnet_id` or `availability_zone` is empty,
        to place instances beside the hub. Default: "http://169.254.169.254".
        """,
    ).tag(config=True)

    stop_action = Enum(
        ["stop", "terminate"],
        "stop",
        help="""What stopping a server does: "stop" or "terminate".

        "stop" (the default) stops the instance and keeps its stack and disks; the next start
        resumes the same instance, whose instance type may change but not its launch group,
        software configuration or volume size. "terminate" deletes the stack with its instance
        and volume; the next start launches a new one. Removing a named server, or its user,
        always deletes the stack. This also sets the default of JupyterHub's `will_resume`
        (True with "stop").
        """,
    ).tag(config=True)

    notebook_port = Int(
        8888,
        help="""Port the notebook server listens on, on all interfaces of the instance.

        The hub connects to it at the instance's private IP (unless `connect_address_hook`
        says otherwise), so the launch group's security groups must let the hub reach it.
        Default: 8888.
        """,
    ).tag(config=True)

    service_url = Unicode(
        "",
        help="""URL of the `mliy` hub service as the instances reach it, ending in "/".

        Instances report their boot progress there (see `wait_for_boot`). Default: empty,
        meaning `c.JupyterHub.public_url` followed by "services/mliy/" when the public URL is
        set, else no URL (no progress from instances). Set it when instances reach the hub by
        another address, or when the service has another name than "mliy".

        Example::

            c.MLiySpawner.service_url = "https://hub.example.com/services/mliy/"
        """,
    ).tag(config=True)

    connect_address_hook = Callable(
        None,
        allow_none=True,
        help="""Optional hook deciding where the hub connects to a running instance.

        Called as `hook(spawner, instance)`, it returns `(host, port)` and may be async.
        `instance` is a `mliy_spawner.reflector.InstanceView` (instance_id, state, private_ip,
        instance_type, stack_id, tags). Default: None, meaning the instance's private IP and
        `notebook_port`. With a hook set, `connect_via_dns` has no effect. The embedded demo
        uses a hook to map instances to local servers.

        Example::

            def by_name_tag(spawner, instance):
                host = instance.tags.get("dns-name") or instance.private_ip
                return host, spawner.notebook_port

            c.MLiySpawner.connect_address_hook = by_name_tag
        """,
    ).tag(config=True)

    store_url = Unicode(
        help="""SQLAlchemy URL of the store shared with the `mliy` service.

        The store records which server owns which instance, and the instances' boot progress.
        Default: $MLIY_STORE_URL when set, else a SQLite file `mliy.sqlite` in the hub's
        working folder (as an absolute path). `configure_service(c)` sets both sides to the
        same URL (unless the URL holds a password: then set $MLIY_STORE_URL for the hub).
        """,
    ).tag(config=True)

    @default("store_url")
    def _default_store_url(self):
        return store_url_from_env()

    store = Any(
        None,
        allow_none=True,
        help="The Store (mliy_spawner.store); None: the process's shared one for store_url.",
    )

    bootstrap_code_ttl = Float(
        float(bootstrap.DEFAULT_TTL),
        help="""Seconds an instance has to fetch its server's API token with its one-time code.

        User data carries no token: it can be read by anyone allowed
        ec2:DescribeInstanceAttribute. It carries a one-time code that the instance's boot
        script trades at the `mliy` service for the token, once, from the instance's own
        private address. A code not used in this time is refused, and the spawn fails
        saying so. Default: 1200.0 (20 minutes).

        Example::

            c.MLiySpawner.bootstrap_code_ttl = 600
        """,
    ).tag(config=True)

    wait_for_boot = Bool(
        True,
        help="""Wait in start() until the instance's boot script reports the notebook server up.

        The reported steps show as progress, and a reported failure fails the spawn. Only new
        instances are waited for (a resumed one is not), and only with a service URL (see
        `service_url`); the wait is bounded by `start_timeout`, and by `boot_silence_limit`
        while the instance reports nothing. Turn it off for boot scripts that report nothing.
        Default: True.
        """,
    ).tag(config=True)

    boot_silence_limit = Float(
        300.0,
        help="""Seconds to wait for an instance's first boot report before leaving the wait.

        When an instance reports nothing for this long (its script does not report, or cannot
        reach `service_url`), start() stops waiting and the hub waits for the notebook server
        itself, within JupyterHub's `http_timeout`. The spawn does not fail for the silence.
        Default: 300.0.
        """,
    ).tag(config=True)

    dns_plugin_folder = Unicode(
        "",
        help="""Folder of MLiy-style plugin files holding the DNS plugin.

        The files define `createDnsEntry`, `deleteDnsEntry` and `dnsDisplayName`, each in one
        file only; e.g. the shipped `plugins/` folder with route53.py. The record is created
        when a server starts and deleted when it stops. Set this or `dns_plugin_name`, not
        both. Empty with `dns_plugin_name` empty (the default): no DNS, servers are reached by
        IP.
        """,
    ).tag(config=True)

    dns_plugin_name = Unicode(
        "",
        help="""Name of a DNS plugin registered under the `mliy_spawner.dns_plugins` entry point.

        The plugin defines the same three functions as a plugin folder (see
        `dns_plugin_folder`). Set this or `dns_plugin_folder`, not both. Default: "" (none).
        """,
    ).tag(config=True)

    connect_via_dns = Bool(
        False,
        help="""Connect the hub to servers by their DNS name instead of their IP address.

        The name is the DNS plugin's `dnsDisplayName`. When the DNS update fails, or the plugin
        gives no name, the IP is used (MLiy's fallback). No effect without a DNS plugin, or
        with `connect_address_hook` set. Default: False.
        """,
    ).tag(config=True)

    @validate("dns_plugin_folder", "dns_plugin_name")
    def _validate_dns_plugin(self, proposal):
        folder = proposal.value if proposal.trait.name == "dns_plugin_folder" else ""
        name = proposal.value if proposal.trait.name == "dns_plugin_name" else ""
        if proposal.value:
            try:
                plugins.load_dns_plugin(folder or None, name or None)
            except plugins.PluginError as e:
                raise TraitError(f"MLiySpawner.{proposal.trait.name}: {e}") from None
        return proposal.value

    @property
    def dns_plugin(self):
        return plugins.load_dns_plugin(self.dns_plugin_folder or None, self.dns_plugin_name or None)

    log_levels = Dict(
        {},
        help="""Levels of the hub's `mliy.*` loggers, keyed by area.

        The areas are auth, aws, launch and service; a key may also be the logger's full name,
        e.g. "mliy.aws". A level is a name (DEBUG, INFO, WARNING, ERROR, CRITICAL, in any case)
        or a number; areas not named log at INFO (the default). The records print on the hub's
        console, and go to files with `log_dir`. The `mliy` service's levels are set with
        `configure_service(c, log_levels=...)`.

        Example::

            c.MLiySpawner.log_levels = {"aws": "DEBUG"}
        """,
    ).tag(config=True)

    log_dir = Unicode(
        "",
        help="""Folder for one log file per area, besides the console.

        The files are auth.log, aws.log, launch.log and service.log (MLiy's auth, boto, launch
        and web logs); the folder is created if missing. Empty (the default): console only.
        """,
    ).tag(config=True)

    @validate("log_levels")
    def _validate_log_levels(self, proposal):
        try:
            logs.parse_levels(proposal.value)
        except ValueError as e:
            raise TraitError(f"MLiySpawner.log_levels: {e}") from None
        return proposal.value

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        logs.attach_to_hub_log(self.log, self.log_levels, self.log_dir or None)
        self.stack = stacks.ServerStack()
        self._progress = LaunchProgress(self._log_name)

    wait_backoff_start = Float(
        1.0,
        help="""First pause, in seconds, between two checks while waiting on AWS.

        Each pause is 1.5 times the one before, up to `wait_backoff_max`: frequent checks in
        the first seconds of a launch, fewer in the minutes an instance takes to boot. It is
        also the first pause between reads of the boot progress (those stay at most 5 s).
        Default: 1.0.
        """,
    ).tag(config=True)

    wait_backoff_max = Float(
        10.0,
        help="""Longest pause, in seconds, between two checks while waiting on AWS.

        The pauses grow from `wait_backoff_start` up to this. Default: 10.0.
        """,
    ).tag(config=True)

    @default("start_timeout")
    def _default_start_timeout(self):
        return 900  # an instance boots and installs its notebook server in minutes

    @default("http_timeout")
    def _default_http_timeout(self):
        return 600

    @default("env_keep")
    def _default_env_keep(self):
        return []  # the hub's PATH and friends mean nothing on another machine

    @default("will_resume")
    def _default_will_resume(self):
        # the stopped instance keeps its environment, API token included
        return self.stop_action == "stop"

    @default("server_token_scopes")
    def _default_server_token_scopes(self):
        return _spawn_token_scopes

    @default("apply_user_options")
    def _default_apply_user_options(self):
        return type(self)._apply_user_options

    # ---- the options form ------------------------------------------------------------

    pricing_file = Unicode(
        "",
        help="""Path of an ec2instances.info `instances.json` with the prices for the options form.

        Empty (the default): the shipped pricing/instances.json. The file is checked at most
        once a second and re-read when it changed, with no restart; a changed file that does
        not load is logged and the previous prices stay. Replace it with
        `mliy-pricing refresh SOURCE --file PATH`, which checks the new catalog first (without
        `--file` it replaces the shipped file).
        """,
    ).tag(config=True)

    form_template_paths = List(
        Unicode(),
        [],
        help="""Folders searched for `form.html` before the shipped template.

        Lets admins restyle the options form. The form's values are escaped; only software
        configurations' descriptions are inserted as HTML. Default: [] (the shipped template).
        """,
    ).tag(config=True)

    @default("options_form")
    def _default_options_form(self):
        return type(self)._render_options_form

    @default("options_from_form")
    def _default_options_from_form(self):
        return form.options_from_form

    def options_from_query(self, query_data):
        return form.options_from_query(query_data)

    @staticmethod
    async def _render_options_form(spawner):
        # the price catalog may (re)load its file: keep that off the event loop
        catalog = pricing.get_catalog(spawner.pricing_file or None)
        saved = spawner.user_options or spawner.stack.launch_options or {}
        groups = spawner.available_groups()
        return await run_blocking(
            form.render_form,
            user_name=spawner.user.name,
            available_groups=groups,
            configs=spawner.parsed_configs,
            catalog=catalog,
            region=spawner.region,
            saved_options=saved,
            template_paths=spawner.form_template_paths,
            spend=await spawner._form_spend(groups),
        )

    async def _form_spend(self, groups):
        """This month's spend and each group's budget left, for the form (None: unknown)."""
        settings = self.cost_settings()
        now = datetime.now(UTC)
        month = costs.month_of(now, settings.timezone)
        budgeted = {group.name: self._budgets_for_group(group) for group in groups}
        budgeted = {name: found for name, found in budgeted.items() if found}

        def read():
            mine = costs.report(
                self.store.usage_between(
                    month.start, month.end, hub=self.hub_name, user=self.user.name
                ),
                month,
                now,
            )
            per_group = {
                name: costs.report(
                    self.store.usage_between(month.start, month.end, hub=self.hub_name, group=name),
                    month,
                    now,
                )
                for name in budgeted
            }
            return mine, per_group

        try:
            await self._connect_store()
            mine, per_group = await run_blocking(read)
        except Exception as e:
            # the form still works; the budget check at start is what enforces budgets
            log.warning("Spend of %s for the options form: %s", self.user.name, e)
            return None
        reserved = ledger.shared_gate((self.hub_name,)).reserved()
        return form.Spend(
            month=month,
            total=mine.total,
            unknown=mine.unknown_lines,
            budgets={
                name: [
                    (budget, costs.spent(per_group[name], budget), reserved.get(budget, 0))
                    for budget in found
                ]
                for name, found in budgeted.items()
            },
            gib_month_usd=settings.gib_month_usd,
        )

    # ---- money: the usage ledger, budgets and limits ---------------------------------

    volume_price_per_gib_month = Unicode(
        "0.08",
        help="""Dollars per GiB-month of a server's extra EBS volume, for the usage ledger.

        Charged while the volume exists, running or stopped. The default is gp3 in
        us-east-1. Empty: volume costs are shown as unknown. Default: "0.08".
        """,
    ).tag(config=True)

    cost_timezone = Unicode(
        "UTC",
        help="""The time zone (IANA name) whose calendar months budgets and cost pages count.

        Default: "UTC".
        """,
    ).tag(config=True)

    budget_action = Enum(
        ["notify", "stop"],
        "notify",
        help="""What happens to running servers once a budget is spent.

        "notify" (the default): users see a notice at 80 % and 100 % of a budget (home page
        and progress) and the hub logs it. "stop": the same, and servers over a budget are
        stopped (stopped, not terminated: their disks stay), each stop recorded in the
        audit trail with its reason. Spawns over a budget are always refused.
        """,
    ).tag(config=True)

    user_budgets = Dict(
        {},
        help="""Per-user monthly budgets in dollars, replacing the member default of every
        launch group (`member_budget_usd`) for those users.

        Amounts are strings or integers (not floats): e.g. {"alice": "250", "bob": "40.50"}.
        Default: {}.
        """,
    ).tag(config=True)

    max_servers_per_user = Int(
        0,
        help="""The most servers with a stack (running or stopped) one user may have.

        A start that would go over is refused with HTTP 403 before any AWS call. Set
        JupyterHub's `named_server_limit_per_user` too. 0: no limit. Default: 0.
        """,
    ).tag(config=True)

    max_volume_gib_per_user = Int(
        0,
        help="""The most GiB of extra EBS volumes, over all of one user's servers.

        A start that would go over is refused with HTTP 403 before any AWS call. 0: no
        limit. Default: 0.
        """,
    ).tag(config=True)

    budget_review_interval = Float(
        60.0,
        help="""Seconds between two checks of the running servers against the budgets.

        Each check reads this month's usage from the store. Default: 60.
        """,
    ).tag(config=True)

    metrics_per_user = Bool(
        False,
        help="""Also report each user's spend this month at /hub/metrics, as
        `mliy_user_month_spend_usd{user="..."}` (updated at each budget review).

        Off by default: a label per user name makes a series per user, which Prometheus
        stores for ever; no other metric has a user label either way. Default: False.

        Example::

            c.MLiySpawner.metrics_per_user = True
        """,
    ).tag(config=True)

    @validate("volume_price_per_gib_month")
    def _validate_volume_price(self, proposal):
        value = proposal["value"].strip()
        if value:
            with _as_trait_error():
                costs.parse_price(value, "MLiySpawner.volume_price_per_gib_month")
        return value

    @validate("cost_timezone")
    def _validate_cost_timezone(self, proposal):
        with _as_trait_error():
            costs.zone(proposal["value"])
        return proposal["value"]

    @validate("user_budgets")
    def _validate_user_budgets(self, proposal):
        for name, amount in proposal["value"].items():
            if not isinstance(name, str) or not name:
                raise TraitError(f"MLiySpawner.user_budgets: {name!r} is not a user name")
            with _as_trait_error():
                costs.parse_amount(amount, f"MLiySpawner.user_budgets[{name!r}]")
        return proposal["value"]

    def cost_settings(self):
        """What the ledger and the budget checks read of these settings."""
        price = self.volume_price_per_gib_month
        return ledger.CostSettings(
            hub_name=self.hub_name,
            region=self.region,
            gib_month_usd=costs.parse_price(price, "volume_price_per_gib_month") if price else None,
            timezone=self.cost_timezone,
            budget_action=self.budget_action,
            user_budgets={
                name: costs.parse_amount(amount, name) for name, amount in self.user_budgets.items()
            },
            group_budgets={
                name: (group.budget_usd, group.member_budget_usd)
                for name, group in self.parsed_groups.items()
                if group.budget_usd is not None or group.member_budget_usd is not None
            },
            review_interval=self.budget_review_interval,
            metrics_per_user=self.metrics_per_user,
        )

    def _price_of(self, instance_type):
        """Compute $/hour from the catalog, or None (blocking: the file may reload)."""
        try:
            return pricing.get_catalog(self.pricing_file or None).price(instance_type, self.region)
        except pricing.PricingError as e:
            log.warning("No price for %s: %s", instance_type, e)
            return None

    def _ensure_ledger(self):
        """The shared usage ledger of this region and hub, following the reflector."""
        if self.ledger is not None:
            return self.ledger
        users = (getattr(self.user, "settings", None) or {}).get("users")

        async def stop_server(user_name, server_name, reason):
            user = users[user_name] if users is not None else None
            if user is None:
                return
            spawner = user.spawners.get(server_name)
            if spawner is not None:
                spawner._progress_notice = f"Stopped by the hub: {reason}"
            with audit.acting_as(audit.AUTOMATIC, f"budget: {reason}"):
                await user.stop(server_name)

        def is_active(user_name, server_name):
            user = users.get(user_name) if users is not None else None
            spawner = user.spawners.get(server_name) if user is not None else None
            return bool(spawner is not None and spawner.active and not spawner.pending)

        # one ledger per reflector (so per region and hub), following its cycles
        made = getattr(self.reflector, "ledger", None)
        if made is None:
            made = ledger.Ledger(
                self.store,
                self.cost_settings(),
                self._price_of,
                stop_server=stop_server if users is not None else None,
                is_active=is_active if users is not None else None,
            )
            self.reflector.ledger = made
            self.reflector.listeners.append(made.on_cycle)
        self.ledger = made
        return made

    def _count_user_servers(self):
        """``(servers with a stack, their volume GiB)`` of this user, this server excluded."""
        rows = getattr(getattr(self.orm_spawner, "user", None), "_orm_spawners", None) or []
        servers, gib = 0, 0
        for row in rows:
            if row is self.orm_spawner or (row.name or "") == (self.name or ""):
                continue
            mine = stacks.ServerStack.from_state((row.state or {}).get("mliy") or {})
            if mine.stack_id:
                servers += 1
                gib += int((mine.launch_options or {}).get("volume_size") or 0)
        return servers, gib

    async def _check_limits(self, choice):
        """HTTP 403 naming the limit when ``choice`` would take this user over one."""
        if self.stack.stack_id:
            return  # a resume: the stack and its volume exist already, and count as they are
        servers, gib = self._count_user_servers()
        limit = self.max_servers_per_user
        if limit and servers + 1 > limit:
            raise await self._refused(
                f"You have {servers} servers with a machine (running or stopped); the limit "
                f"is {limit} (max_servers_per_user). Remove a server to start another.",
                "limit",
            )
        limit = self.max_volume_gib_per_user
        wanted = choice.volume_size or 0
        if limit and wanted and gib + wanted > limit:
            raise await self._refused(
                f"Your servers' volumes hold {gib} GiB; {wanted} GiB more would go over the "
                f"limit of {limit} GiB (max_volume_gib_per_user).",
                "limit",
            )

    async def _refused(self, message, reason):
        """The 403 for a refused start, logged and recorded in the audit trail."""
        log.warning("Refused to start %s: %s", self._log_name, message)
        spawn_failed(reason)
        await self._audit(self._start_action(), "refused", f"{reason}: {message}")
        return user_error(403, message)

    def _start_action(self):
        """What a start of this server does: resume its kept stack, or launch one."""
        return "resume" if self.stack.stack_id else "launch"

    def _actor(self):
        """Who acts on this server now (see :mod:`mliy_spawner.audit`)."""
        return audit.actor_for(self, self.culler_services, self.control_service_name)

    def _audit_soon(self, action, outcome="ok", reason=""):
        """:meth:`_audit` in a task of its own (the actor is read now); returns the task."""
        task = asyncio.ensure_future(self._audit(action, outcome, reason, self._actor()))
        _audit_tasks.add(task)
        task.add_done_callback(_audit_tasks.discard)
        return task

    async def _audit(self, action, outcome="ok", reason="", actor=None, ids=None):
        """Record ``action`` in the audit trail; a store error is logged, never raised.
        ``ids``: the stack and instance ids (default: the server's now)."""
        actor = actor or self._actor()
        reason = reason or audit.acting_reason()
        stack_id, instance_id = ids or (self.stack.stack_id, self.stack.instance_id)
        try:
            await self._connect_store()
            await run_blocking(
                self.store.add_audit,
                action,
                actor=actor.name,
                actor_kind=actor.kind,
                path=actor.path,
                outcome=outcome,
                reason=reason,
                user=self.user.name,
                server_name=self.name or "",
                stack_id=stack_id or "",
                instance_id=instance_id or "",
            )
        except Exception as e:
            log.warning(
                "Could not record %s of %s in the audit trail: %s", action, self._log_name, e
            )

    def _budgets_for(self, choice):
        return self._budgets_for_group(choice.group)

    def _budgets_for_group(self, group):
        settings = self.cost_settings()
        return costs.budgets_for(
            self.user.name,
            group.name,
            group.budget_usd,
            group.member_budget_usd,
            settings.user_budgets,
        )

    async def _check_spend(self, choice):
        """Limits, then budgets, before any AWS call; a pass reserves the first hour."""
        await self._check_limits(choice)
        budgets = self._budgets_for(choice)
        if not budgets:
            return
        await self._connect_store()
        settings = self.cost_settings()
        now = datetime.now(UTC)
        month = costs.month_of(now, settings.timezone)
        hourly = await run_blocking(self._price_of, choice.instance_type)
        first_hour = costs.hourly_cost(hourly, choice.volume_size, settings.gib_month_usd, month)

        def read_report():
            intervals = self.store.usage_between(
                month.start, month.end, hub=self.hub_name, group=choice.group.name
            )
            return costs.report(intervals, month, now)

        gate = ledger.shared_gate((self.hub_name,))
        try:
            self._reservation = await gate.check(budgets, read_report, first_hour)
        except ledger.BudgetExceeded as e:
            raise await self._refused(str(e), "budget") from None
        self._gate = gate

    def _release_reservation(self):
        gate, self._gate = self._gate, None
        if gate is not None:
            gate.release(self._reservation)
        self._reservation = None

    async def _connect_store(self):
        if self.store is None:
            self.store = await run_blocking(shared_store, self.store_url)

    async def mliy_costs(self):
        """This user's servers and spend this month, for the hub's home page (template).

        ``{month, report, notices, dollars, rate, costs_url}`` (see
        mliy_spawner/hub_templates/home.html), or None when the ledger cannot be read.
        """
        try:
            await self._connect_store()
            settings = self.cost_settings()
            now = datetime.now(UTC)
            month = costs.month_of(now, settings.timezone)
            intervals = await run_blocking(
                self.store.usage_between,
                month.start,
                month.end,
                hub=self.hub_name,
                user=self.user.name,
            )
        except Exception as e:
            log.warning("Costs of %s for the home page: %s", self.user.name, e)
            return None
        report = costs.report(intervals, month, now)
        notices = (self.ledger.notices.get(self.user.name) if self.ledger else None) or []
        service = urlsplit(self._service_url()).path or "/services/mliy/"
        return {
            "month": month.key,
            "report": report,
            "notices": notices,
            "dollars": costviews.dollars,
            "rate": costviews.rate,
            "costs_url": f"{service.rstrip('/')}/costs",
        }

    async def mliy_launch_price(self):
        """What is being launched and its price, for the spawn-pending page (text).

        E.g. "m4.large at $0.108/hour, and $1.60/month for its 20 GiB volume"; None when
        no instance type is chosen yet.
        """
        choice = self._launch_choice  # what this start checked, defaults filled in
        if choice is None and self.user_options is not None:
            # the page may come before the hub has applied the options: read them (the
            # same pure check; no AWS call), defaults filled in
            try:
                choice = self.resolve_launch(self.user_options)
            except Exception:
                choice = None
        if choice is not None:
            instance_type, size = choice.instance_type, choice.volume_size
        else:  # a resume, or a hub restarted while this server starts
            options = self.stack.launch_options or {}
            instance_type, size = options.get("instance_type"), options.get("volume_size")
        if not isinstance(instance_type, str):
            return None
        price = await run_blocking(self._price_of, instance_type)
        text = f"{instance_type} at {costviews.rate(price)}/hour"
        if price is None:
            text = f"{instance_type} at a price the catalog lacks (unknown)"
        if isinstance(size, int) and size > 0:
            per_gib = self.cost_settings().gib_month_usd
            if per_gib is None:
                text += f", and its {size} GiB volume at an unknown price"
            else:
                text += f", and {costviews.dollars(per_gib * size)}/month for its {size} GiB volume"
        return text

    ledger = Any(None, allow_none=True, help="The shared usage Ledger of this region and hub.")
    _gate = None
    _reservation = None
    _progress_notice = None

    # ---- strays: orphaned stacks, lost stacks, failed deletes, dormant servers ------

    reconcile_interval = Float(
        600.0,
        help="""Seconds between two checks for strays (stacks and states that do not match).

        One reconciler per region and hub compares this hub's stacks and instances with the
        servers' saved states (see `orphan_grace`, `delete_retries`, `dormant_after`). Each
        check lists the region's stacks (one call per 100) and this hub's stopped instances.
        It starts with the first spawner the hub polls or starts. 0 turns it off.
        Default: 600.0.

        Example::

            c.MLiySpawner.reconcile_interval = 300
        """,
    ).tag(config=True)

    orphan_grace = Float(
        None,
        allow_none=True,
        help="""Seconds an orphaned stack of this hub is kept before it is deleted.

        Such orphans come from a hub that crashed between creating a stack and saving its
        state, a restored database, or manual work. They are always logged and listed; the
        time counts only while no server claims the stack and its user's server is not
        starting (a hub restart starts it again), and stacks still being created are never
        deleted. None (the default) reports them only.

        Example::

            c.MLiySpawner.orphan_grace = 3600  # an hour
        """,
    ).tag(config=True)

    delete_retries = Int(
        5,
        help="""How many times a stack in DELETE_FAILED or ROLLBACK_COMPLETE is deleted again.

        Pauses between tries start at 60 s and double up to an hour. After the last try the
        stack is logged as an error and listed for an admin, and left alone. Only stacks with
        this hub's `mliy:hub` tag, and never while their server is starting. Default: 5.

        Example::

            c.MLiySpawner.delete_retries = 10
        """,
    ).tag(config=True)

    dormant_after = Float(
        None,
        allow_none=True,
        help="""Days an instance may stay stopped before its server counts as dormant.

        The stop time is EC2's (the instance's StateTransitionReason). Dormant servers are
        logged and listed; see `dormant_action`. None (the default) turns this off.

        Example::

            c.MLiySpawner.dormant_after = 60
        """,
    ).tag(config=True)

    dormant_action = Enum(
        ["report", "remove"],
        "report",
        help="""What happens to dormant servers (see `dormant_after`): "report" or "remove".

        "remove" first leaves the user a notice that the server will be removed, then after
        `dormant_notice` days deletes its stack (instance and disk) and clears its state; the
        next start launches a new machine and shows why. Starting the server in the meantime
        cancels the removal. Default: "report".

        Example::

            c.MLiySpawner.dormant_action = "remove"
        """,
    ).tag(config=True)

    dormant_notice = Float(
        7.0,
        help="""Days between the notice to a dormant server's user and its removal.

        Only with `dormant_action = "remove"`. Default: 7.0.

        Example::

            c.MLiySpawner.dormant_notice = 14
        """,
    ).tag(config=True)

    reconciler = Any(
        None, allow_none=True, help="The shared Reconciler of this region and hub, once started."
    )

    # ---- the audit trail ----------------------------------------------------------------

    culler_services = Set(
        Unicode(),
        {"idle-culler", "cull-idle"},
        help="""Names of the hub services that cull idle servers.

        Their stops show in the audit trail as the culler's (actor kind "culler"); other
        services' as "service". Default: {"idle-culler", "cull-idle"}, the names
        jupyterhub-idle-culler's documentation and zero-to-jupyterhub use.

        Example::

            c.MLiySpawner.culler_services = {"idle-culler", "nightly-cleanup"}
        """,
    ).tag(config=True)

    control_service_name = Unicode(
        "mliy",
        help="""The hub service name of the mliy service (`configure_service(c, name=...)`).

        Its hub API calls name, in the X-MLiy-Actor header, who asked its instance
        control API; the audit trail records that user, by the path "control-api". The
        header is trusted from this service's requests only. Default: "mliy".
        """,
    ).tag(config=True)

    # ---- what the hooks need ----------------------------------------------------------

    async def _connect(self):
        """The AWS clients, the shared view and the store, built off the event loop once
        per process (botocore loads its service models in seconds) and shared."""
        if self.ec2_client is None:
            self.ec2_client = await run_blocking(
                aws.shared_client, "ec2", self.region, self.aws_endpoint_url
            )
        if self.cfn_client is None:
            self.cfn_client = await run_blocking(
                aws.shared_client, "cloudformation", self.region, self.aws_endpoint_url
            )
        if self.reflector is None:
            key = (self.region, self.aws_endpoint_url, self.hub_name)
            ec2, cfn = self.ec2_client, self.cfn_client
            self.reflector = shared_reflector(
                key, lambda: Reflector(ec2, cfn, self.hub_name, interval=self.reflector_interval)
            )
        await self._connect_store()
        self._ensure_ledger()

    def _ensure_reconciler(self):
        """Start the shared reconciler for this region and hub (in a real hub only)."""
        if self.reconciler is not None or self.reconcile_interval <= 0:
            return
        users = (getattr(self.user, "settings", None) or {}).get("users")
        db = object_session(self.orm_spawner) if self.orm_spawner is not None else None
        if users is None or db is None:
            return  # not running inside JupyterHub
        key = (self.region, self.aws_endpoint_url, self.hub_name)
        self.reconciler = reconcile.shared_reconciler(
            key,
            lambda: reconcile.Reconciler(
                self.reflector,
                lambda: reconcile.hub_server_states(db, users),
                functools.partial(reconcile.hub_clear_state, db, users),
                functools.partial(reconcile.hub_notify, db, users),
                settings=reconcile.settings_from_traits(self),
                interval=self.reconcile_interval,
                record=reconcile.audit_recorder(self.store),
                publish=reconcile.findings_publisher(self.store, self.hub_name),
            ),
        )

    # ---- state ---------------------------------------------------------------------

    def load_state(self, state):
        super().load_state(state)
        mine = state.get("mliy") or {}
        if mine.get("version", stacks.STATE_VERSION) > stacks.STATE_VERSION:
            self.log.warning("State of %s is from a newer mliy-spawner", self._log_name)
        self.stack = stacks.ServerStack.from_state(mine)

    def get_state(self):
        state = super().get_state()
        mine = self.stack.to_state()
        if mine:
            state["mliy"] = mine
        return state

    # clear_state() is JupyterHub's: it runs after every stop and before every start, and
    # with stop_action="stop" the stack outlives the server, so self.stack stays.

    def _save_state_now(self):
        """Write the state (the new stack's id) to the hub's database right away.

        JupyterHub saves a spawner's state when start() returns. A hub restarted during
        a launch would then know nothing of the stack; with the id saved, it polls the
        server, and stops it or finds it running, instead of leaving it unaccounted for.
        (The hub's own session, used as JupyterHub uses it: on the event loop.)
        """
        session = object_session(self.orm_spawner)
        if session is not None:
            self.orm_spawner.state = self.get_state()
            session.commit()

    # ---- options ---------------------------------------------------------------------

    _parsed = None  # (software_configs, launch_groups, {slug: SoftwareConfig}, {name: LaunchGroup})

    def _parse(self, software_configs=None, launch_groups=None):
        """Parse the two settings, once for each value they take (validation's result is
        the one the spawner then uses)."""
        software_configs = self.software_configs if software_configs is None else software_configs
        launch_groups = self.launch_groups if launch_groups is None else launch_groups
        parsed = self._parsed
        if parsed is None or parsed[0] is not software_configs:
            parsed = (
                software_configs,
                None,
                configs.parse_software_configs_once(software_configs),
                None,
            )
        if parsed[1] is not launch_groups:
            groups = configs.parse_launch_groups(launch_groups, parsed[2])
            parsed = (software_configs, launch_groups, parsed[2], groups)
        self._parsed = parsed
        return parsed[2], parsed[3]

    @property
    def parsed_configs(self):
        """``{slug: SoftwareConfig}`` from software_configs."""
        return self._parse()[0]

    @property
    def parsed_groups(self):
        """``{group name: LaunchGroup}`` from launch_groups."""
        return self._parse()[1]

    def _user_group_names(self):
        return [g.name for g in getattr(self.user, "groups", None) or []]

    def available_groups(self):
        """The launch groups this spawner's user may use, in configuration order."""
        return configs.groups_for_user(
            self.parsed_groups, self._user_group_names(), self.default_launch_group
        )

    def resolve_launch(self, user_options):
        """Check user options; return a LaunchChoice or raise HTTP 400 naming the field.

        While a stopped server's stack is kept, its group, configuration and volume size
        stay as launched (its disk comes with them); only the instance type may change.
        """
        return form.apply_options(
            self,
            user_options,
            groups=self.parsed_groups,
            configs=self.parsed_configs,
            default_group=self.default_launch_group,
            user_group_names=self._user_group_names(),
            kept=self.stack.launch_options if self.stack.stack_id else None,
        )

    @staticmethod
    async def _apply_user_options(spawner, user_options):
        # the one validation path: options (400), then limits and budgets (403), all
        # before any AWS call
        try:
            choice = spawner.resolve_launch(user_options)
        except Exception as e:
            spawn_failed(failure_reason(e))
            message = getattr(e, "jupyterhub_message", None) or str(e)
            # recorded in the background: awaited here, the store write would let
            # JupyterHub answer 202 before this 400 (its slow_spawn_timeout may be 0)
            spawner._audit_soon(spawner._start_action(), "refused", f"validation: {message}")
            raise
        await spawner._check_spend(choice)
        spawner._launch_choice = choice

    # ---- start ---------------------------------------------------------------------------

    _launch_choice = None  # what apply_user_options checked, for the start() that follows
    _launched_at = 0.0  # when this start's stack was created or resumed (monotonic)

    async def progress(self):
        """Stack events and launch steps as they happen; replayed after a reconnect."""
        async for event in self._progress.replay():
            yield event

    async def start(self):
        started = time.monotonic()
        actor = self._actor()  # while JupyterHub's handler is set
        self._resumed = None
        try:
            address = await self._start()
        except BaseException as e:
            elapsed = time.monotonic() - started
            reason = failure_reason(e, elapsed, self.start_timeout)
            spawn_failed(reason)
            if reason is not None:  # not a refusal (recorded as such) or a cancelled start
                message = getattr(e, "jupyterhub_message", None) or str(e) or type(e).__name__
                action = self._start_action() if self._resumed is None else self._launched()
                audited = self._audit(action, "failed", f"{reason}: {message}", actor)
                await asyncio.shield(asyncio.ensure_future(audited))
            raise
        finally:
            # what the budget check reserved: the ledger counts the server from now on
            self._release_reservation()
        config = (self.stack.launch_options or {}).get("software_config", "")
        spawn_succeeded(config, time.monotonic() - started)
        await self._audit(self._launched(), actor=actor)
        return address

    _resumed = None  # this start's: None before it knew, then whether it resumed

    def _launched(self):
        return "resume" if self._resumed else "launch"

    async def _start(self):
        await self._connect()
        self._ensure_reconciler()
        choice = self._launch_choice or self.resolve_launch(self.user_options)
        self._launch_choice = None
        self._progress = LaunchProgress(self._log_name)
        notice = reconcile.notice_message(self.orm_spawner.state if self.orm_spawner else None)
        if notice:  # why the reconciler cleared this server (shown at one start)
            self._progress.emit(notice)
        notices = list(self.ledger.notices.get(self.user.name, ())) if self.ledger else []
        if self._progress_notice:  # why the hub stopped this server (a spent budget)
            notices.insert(0, self._progress_notice)
            self._progress_notice = None
        for text in notices:
            self._progress.emit(text)
        self._following_events = False
        self.ip, self.port = "0.0.0.0", self.notebook_port
        if self.stack.delete_pending:
            await self._delete_stack()
            self._refuse_while_delete_pending()
        resumed = bool(self.stack.stack_id) and await self._resume(choice)
        self._resumed = resumed
        try:
            if not resumed:
                await self._launch(choice)
            instance = await self._wait(
                self._ready_instance, "the instance", self.start_timeout, self._on_launch_tick
            )
            self.stack.instance_id = instance.instance_id
            await self._record_owner()
            if not resumed and self.wait_for_boot and self._service_url():
                await boot.wait_for_boot(
                    self.store,
                    self.stack.instance_id,
                    self._progress.emit,
                    self._check_alive,
                    self.start_timeout,
                    self.wait_backoff_start,
                    self.boot_silence_limit,
                    self.log,
                )
        except asyncio.CancelledError:
            await asyncio.shield(self._abandon(resumed))
            raise
        except stacks.LaunchFailed as e:
            reason = await self._failure_reason(str(e))
            await asyncio.shield(self._abandon(resumed))
            log.warning("Launch of %s failed: %s", self._log_name, reason)
            message = f"Launching your server failed: {for_users(reason)}"
            raise user_error(500, message, "stack") from None
        except boot.BootFailed as e:
            await asyncio.shield(self._abandon(resumed))
            message = f"Your server's instance failed to set up: {e}"
            raise user_error(500, message, "instance-setup") from None
        except BaseException:
            await asyncio.shield(self._abandon(resumed))
            raise
        host, port = await self._address(instance)
        host = await self._dns_on_start(instance, host)
        self._progress.emit(f"Connecting to the notebook server at {host}:{port}", boot.BOOT_END)
        return host, port

    async def _launch(self, choice):
        """Create a new stack for ``choice``; record it as soon as AWS answers."""
        subnet, zone = await self._placement()
        user_data = await self._render_user_data(choice)
        template = await run_blocking(Path(choice.config.template).read_text)
        name = stacks.stack_name(
            self.stack_name_prefix, self.hub_name, self.user.name, self.name or ""
        )
        tags = stacks.build_tags(
            self.hub_name, self.user.name, self.name or "", choice, self.stack_tags
        )
        try:
            parameters = stacks.build_parameters(choice, subnet, zone, user_data)
        except stacks.ParameterError as e:
            raise self._cannot_launch(choice, e) from None
        self._progress.emit(
            f"Creating stack {name} ({choice.config.display_name}, {choice.instance_type})"
        )
        create = asyncio.ensure_future(
            run_blocking(
                stacks.create_stack,
                self.cfn_client,
                name,
                template,
                parameters,
                tags,
                f"mliy-{uuid.uuid4()}",
            )
        )
        try:
            stack_id, created = await asyncio.shield(create)
        except ClientError as e:
            # AWS refused the stack (bad subnet, AMI, profile...). None should exist, but
            # make sure nothing half-made stays behind under that name.
            await self._claim_failed_create(name)
            message = e.response.get("Error", {}).get("Message") or str(e)
            log.warning("CreateStack %s for %s refused: %s", name, self._log_name, message)
            raise user_error(
                500,
                f"AWS refused to launch {choice.config.display_name}: {for_users(message)}",
                "create-stack",
            ) from None
        except Exception as e:
            # no answer (a timeout, a cut connection, an unreadable answer): AWS may have
            # made the stack all the same
            await self._claim_failed_create(name)
            log.warning("CreateStack %s for %s got no answer: %s", name, self._log_name, e)
            raise user_error(
                500,
                f"AWS did not answer the request to launch {choice.config.display_name}; "
                "try again in a minute.",
                "create-stack",
            ) from None
        except asyncio.CancelledError:
            # the call runs on in its thread: learn the id, then delete what it made
            try:
                stack_id, created = await create
            except Exception:
                stack_id, created = None, False
            if created:
                self.stack.stack_id = stack_id
                await self._delete_stack()
            elif stack_id is None:  # it failed: AWS may have made the stack all the same
                await self._claim_failed_create(name)
            raise
        if not created:
            await self._refuse_foreign_stack(stack_id, name)
        self.stack = stacks.ServerStack(
            stack_id=stack_id,
            stack_name=name,
            region=self.region,
            launch_options=choice.as_user_options(),
            dns_ip=self.stack.dns_ip,
        )
        self._save_state_now()
        self.reflector.watch(stack_id, changed=True)
        self._launched_at = time.monotonic()
        self._following_events = True
        if not created:
            log.warning("Adopting existing stack %s for %s", name, self._log_name)
            if await self._clear_failed_orphan(stack_id, name):
                return await self._launch(choice)
        self._progress.emit("CloudFormation accepted the stack; waiting for the instance", 10)

    async def _claim_failed_create(self, name):
        """CreateStack failed, but AWS may have made the stack all the same (an answer
        lost on the way back). Take a stack of this server under ``name`` into state:
        the failed start's cleanup deletes it, or keeps it flagged for stop() to retry."""
        try:
            stack = await run_blocking(stacks.describe_stack, self.cfn_client, name)
        except Exception as e:
            # unreadable (moto cannot describe some stacks it failed to make): delete it
            # by name, which only this server's stacks have
            log.warning("Describing stack %s after a failed CreateStack: %s", name, e)
            try:
                await run_blocking(stacks.delete_stack, self.cfn_client, name)
            except Exception as e:
                log.error("Deleting stack %s failed (%s); the reconciler reports it", name, e)
            return
        if not stack or not self._owns(stack):
            return  # nothing was made, or the name holds a stack that is not this server's
        self.stack.stack_id, self.stack.stack_name = stack["StackId"], name
        self.stack.region = self.region
        self._save_state_now()

    async def _refuse_foreign_stack(self, stack_id, name):
        """A stack of this server's name exists: adopt it (a hub that crashed between
        CreateStack and saving state) only when its tags name this hub, user and server.
        Anyone who may create stacks could otherwise plant one under a predictable name."""
        stack = await run_blocking(stacks.describe_stack, self.cfn_client, stack_id)
        if self._owns(stack):
            return
        tags = {t["Key"]: t["Value"] for t in (stack or {}).get("Tags") or ()}
        log.warning(
            "Not adopting stack %s for %s: its tags name hub %r, user %r, server %r",
            name,
            self._log_name,
            tags.get("mliy:hub"),
            tags.get("mliy:user"),
            tags.get("mliy:server", ""),
        )
        raise user_error(
            500,
            f"A stack named {name} exists but is not this server's; an admin must look "
            "at it before this server can start.",
            "stack-taken",
        )

    def _owns(self, stack):
        """Whether a stack's description has the tags of this hub, user and server."""
        tags = {t["Key"]: t["Value"] for t in (stack or {}).get("Tags") or ()}
        return stacks.owned_by(tags, self.hub_name, self.user.name, self.name or "")

    def _refuse_while_delete_pending(self):
        """A stack that could not be deleted stays in state until it is: never launch
        a new one beside it, which would leave the old one unaccounted for."""
        if self.stack.delete_pending:
            raise user_error(
                500,
                f"Your server's previous stack {self.stack.stack_name} could not be deleted "
                "yet; try again in a few minutes, or ask an admin.",
                "delete-pending",
            )

    def _cannot_launch(self, choice, error):
        message = f"Software configuration {choice.config.slug!r} cannot be launched: {error}"
        return user_error(500, message, "user-data")

    async def _render_user_data(self, choice):
        """The user data: the configuration's script with the server's environment, and
        in place of the server's API token a one-time code to fetch it with (user data
        is readable by anyone with ec2:DescribeInstanceAttribute)."""
        if not self._service_url():
            raise user_error(
                500,
                "The hub is misconfigured: neither MLiySpawner.service_url nor "
                "JupyterHub.public_url is set, so a new instance could not fetch its API "
                "token from the mliy service.",
                "no-service-url",
            )
        script = await run_blocking(Path(choice.config.user_data).read_text)
        volume = choice.config.volume
        hub_env = self.get_env()
        token = hub_env.pop("JUPYTERHUB_API_TOKEN", None) or self.api_token
        hub_env.pop("JPY_API_TOKEN", None)
        code = bootstrap.new_code()
        await run_blocking(
            self.store.add_bootstrap_code,
            bootstrap.code_id(code),
            self.user.name,
            self.name or "",
            bootstrap.seal(code, token),
            self.bootstrap_code_ttl,
        )
        hub_env["MLIY_BOOTSTRAP_CODE"] = code
        env = userdata.instance_environment(
            hub_env,
            service_url=self._service_url(),
            notebook_port=self.notebook_port,
            user_name=self.user.name,
            volume_device=volume.device if volume else "",
        )
        try:
            return userdata.build_user_data(
                script, choice.config.params, self.replacement_tokens, env
            )
        except userdata.UserDataError as e:
            raise self._cannot_launch(choice, e) from None

    def _service_url(self):
        if self.service_url:
            return self.service_url
        if self.public_hub_url:
            base = self.public_hub_url.split("/hub/")[0].rstrip("/")
            return f"{base}/services/mliy/"
        return ""

    async def _placement(self):
        """(subnet id, availability zone): configured, or from instance metadata."""
        if self.subnet_id and self.availability_zone:
            return self.subnet_id, self.availability_zone
        try:
            subnet, zone = await placement.hub_placement(self.instance_metadata_url)
        except Exception as e:
            raise user_error(
                500,
                "The hub is misconfigured: MLiySpawner.subnet_id/availability_zone are "
                f"not set and instance metadata at {self.instance_metadata_url} could not "
                f"be read ({e}).",
                "placement",
            ) from None
        return self.subnet_id or subnet, self.availability_zone or zone

    async def _clear_failed_orphan(self, stack_id, name):
        """A stack of this name from a crashed hub that failed: delete it, wait, say True."""
        stack = await run_blocking(stacks.describe_stack, self.cfn_client, stack_id)
        status = stacks.simplify_status(stack["StackStatus"]) if stack else stacks.GONE
        if status not in (stacks.FAILED, stacks.DELETING):
            return False
        self._progress.emit(
            f"An earlier stack {name} failed ({stack['StackStatus']}); deleting it first"
        )
        if status == stacks.FAILED:
            await run_blocking(stacks.delete_stack, self.cfn_client, stack_id)
        self.stack.forget()

        self.reflector.watch(stack_id, changed=True)
        await self._wait(
            lambda: self.reflector.is_gone(stack_id) or None,
            f"stack {name} to be deleted",
            self.start_timeout,
        )
        return True

    async def _resume(self, choice):
        """Start the stopped instance of the kept stack; False when there is none to resume."""
        self._launched_at = time.monotonic()
        await self._refresh()
        stack = self.reflector.stacks.get(self.stack.stack_id)
        status = stacks.simplify_status(stack.status) if stack else stacks.GONE
        instance = self.reflector.instance_for_stack(self.stack.stack_id) if stack else None
        if status != stacks.READY or instance is None or instance.state == "terminated":
            log.info(
                "Stack %s of %s cannot be resumed (%s); launching a new one",
                self.stack.stack_name,
                self._log_name,
                stack.status if stack else "gone",
            )
            if stack is not None:
                await self._delete_stack()
                self._refuse_while_delete_pending()
            self.stack.forget()
            return False
        self.stack.instance_id = instance.instance_id
        self._progress.emit(f"Resuming instance {instance.instance_id}", 10)
        if instance.state in ("stopping", "shutting-down"):
            instance = await self._wait(
                lambda: self._instance_in({"stopped"}), "the instance to stop", 300
            )
        if instance.state == "stopped":
            if instance.instance_type != choice.instance_type:
                self._progress.emit(f"Changing instance type to {choice.instance_type}")
                await run_blocking(
                    stacks.set_instance_type,
                    self.ec2_client,
                    instance.instance_id,
                    choice.instance_type,
                )
                change = f"{instance.instance_type} -> {choice.instance_type}"
                await self._audit("instance-type-change", reason=change)
            await run_blocking(stacks.start_instance, self.ec2_client, instance.instance_id)
        self.stack.launch_options = choice.as_user_options()
        return True

    # ---- waiting on the shared view ----------------------------------------------------

    async def _wait(self, check, what, limit, on_tick=None):
        """Refresh the shared view (coalesced) until ``check()`` returns a value.

        Pauses grow from wait_backoff_start by half each time up to wait_backoff_max:
        fast for the first seconds of a launch, cheap for the minutes an instance takes
        to boot. ``on_tick()`` (async) runs after each refresh.
        """
        deadline = time.monotonic() + limit
        for pause in backoff(self.wait_backoff_start, self.wait_backoff_max):
            await self._refresh()
            if on_tick is not None:
                await on_tick()
            result = check()
            if result is not None:
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {limit:.0f} s waiting for {what}")
            await asyncio.sleep(pause)

    async def _refresh(self):
        """A fresh view of this server's stack (the reflector follows what state names)."""
        self.reflector.watch(self.stack.stack_id)
        await self.reflector.refresh()

    def _instance_in(self, states):
        instance = self.reflector.instances.get(self.stack.instance_id)
        return instance if instance is not None and instance.state in states else None

    _instance_seen = None  # (instance id, state) last shown on the progress page

    def _ready_instance(self):
        """Reflector check while starting: the running instance, None to wait, or raise."""
        stack = self.reflector.stacks.get(self.stack.stack_id)
        if stack is None and not self.reflector.is_gone(self.stack.stack_id):
            return None  # not described yet
        instance = self.reflector.instance_for_stack(self.stack.stack_id) if stack else None
        if instance is not None and (instance.instance_id, instance.state) != self._instance_seen:
            self.stack.instance_id = instance.instance_id
            self._instance_seen = (instance.instance_id, instance.state)
            percent = boot.BOOT_START if instance.state == "running" else 30
            self._progress.emit(f"Instance {instance.instance_id} is {instance.state}", percent)
        return stacks.ready_instance(self.stack.stack_name, stack, instance)

    async def _check_alive(self):
        """While the instance boots: raise when it, its stack or its token exchange failed."""
        stacks.check_alive(
            self.reflector.stacks.get(self.stack.stack_id),
            self.reflector.instances.get(self.stack.instance_id),
        )
        await self._record_owner()  # the address, once AWS reports it
        code = await run_blocking(self.store.server_bootstrap_code, self.user.name, self.name)
        if code is None or code.used is not None:
            return
        if code.refused:
            raise boot.BootFailed(f"its bootstrap code was refused ({code.refused})")
        if code.expired():
            raise boot.BootFailed(
                f"it did not fetch its API token within {self.bootstrap_code_ttl:.0f} s "
                "(can it reach MLiySpawner.service_url?)"
            )

    _following_events = False  # a new stack is being created: show its events

    async def _on_launch_tick(self):
        """While start() waits: a new stack's events as progress, the instance's owner."""
        if self._following_events and self.stack.stack_id:
            try:
                events = await run_blocking(
                    stacks.stack_events, self.cfn_client, self.stack.stack_id
                )
            except Exception as e:
                log.debug("Reading events of %s failed: %s", self.stack.stack_name, e)
            else:
                self._progress.add_stack_events(events)
        if self.stack.instance_id:
            await self._record_owner()

    _owner_recorded = None  # (instance id, private address) last told to the store

    async def _record_owner(self):
        """Tell the store (and so the mliy service) which server owns the instance, and
        bind the server's bootstrap code to it and to its private address."""
        instance = self.reflector.instances.get(self.stack.instance_id)
        seen = (self.stack.instance_id, instance.private_ip if instance else None)
        if not self.stack.instance_id or seen == self._owner_recorded:
            return
        await run_blocking(
            self.store.record_instance,
            self.stack.instance_id,
            self.user.name,
            self.name or "",
            self.stack.stack_id,
            self.stack.region or self.region,
        )
        await run_blocking(self.store.bind_bootstrap_code, self.user.name, self.name or "", *seen)
        self._owner_recorded = seen

    async def _failure_reason(self, fallback):
        """The first failed resource's reason, from the stack's events."""
        if not self.stack.stack_id:
            return fallback
        try:
            events = await run_blocking(stacks.stack_events, self.cfn_client, self.stack.stack_id)
        except Exception as e:
            log.warning("Reading events of failed stack %s: %s", self.stack.stack_name, e)
            return fallback
        return stacks.failure_reason(events) or fallback

    # ---- cleaning up ---------------------------------------------------------------------

    async def _abandon(self, resumed):
        """Clean up after a failed or cancelled start: never leave a stack unaccounted for."""
        self._following_events = False
        if resumed:
            if self.stack.instance_id:
                await run_blocking(stacks.stop_instance, self.ec2_client, self.stack.instance_id)
            return
        await self._delete_stack()

    async def _delete_stack(self):
        """Delete the stack; on an AWS error keep it in state, flagged for deletion."""
        if not self.stack.stack_id:
            return
        try:
            await run_blocking(stacks.delete_stack, self.cfn_client, self.stack.stack_id)
        except Exception as e:
            log.error("Deleting stack %s failed (%s); will retry", self.stack.stack_name, e)
            self.stack.delete_pending = True
            return
        self.reflector.watch(self.stack.stack_id, changed=True)
        try:  # the service no longer needs to know whose instance it was
            await self._forget_bootstrap_codes()
            if self.stack.instance_id:
                await run_blocking(self.store.forget_instance, self.stack.instance_id)
        except Exception as e:
            log.warning("Forgetting instance %s: %s", self.stack.instance_id, e)
        self.stack.forget()

    async def _forget_bootstrap_codes(self):
        await run_blocking(self.store.forget_bootstrap_codes, self.user.name, self.name or "")

    # ---- addresses and DNS -----------------------------------------------------------------

    async def _address(self, instance):
        if self.connect_address_hook is not None:
            return tuple(await maybe_future(self.connect_address_hook(self, instance)))
        return instance.private_ip, self.notebook_port

    def _dns_name(self):
        return plugins.dns_label(self.user.name, self.name or "")

    async def _dns_on_start(self, instance, host):
        """Point the DNS record at the new address; return the host to connect to."""
        plugin = self.dns_plugin
        if plugin is plugins.NOOP_DNS_PLUGIN:
            return host
        ip = instance.private_ip
        # remembered even if the create fails or times out (it may still land later):
        # stop() then deletes whatever record there is
        self.stack.dns_ip = ip
        error = await plugins.run_dns(plugin, "create", self._dns_name(), ip, log)
        if error:
            self._progress.emit(error)
            return host
        if self.connect_via_dns and self.connect_address_hook is None:
            return plugins.dns_display_name(plugin, self._dns_name(), ip, log)
        return host

    async def _dns_on_stop(self):
        plugin = self.dns_plugin
        if plugin is plugins.NOOP_DNS_PLUGIN or not self.stack.dns_ip:
            return
        error = await plugins.run_dns(plugin, "delete", self._dns_name(), self.stack.dns_ip, log)
        if error is None:
            self.stack.dns_ip = None

    # ---- poll, stop, delete ------------------------------------------------------------

    async def poll(self):
        """Read from the shared view: None while the stack's instance runs (or is unknown)."""
        if not self.stack.stack_id:
            return 0
        await self._connect()
        self._ensure_reconciler()
        self.reflector.watch(self.stack.stack_id)
        if self.reflector.last_success is None:
            try:
                async with asyncio.timeout(10):
                    await self._refresh()
            except TimeoutError:
                return None
        return self.reflector.server_status(
            self.stack.stack_id, self.stack.instance_id, self._launched_at + 0.001
        )

    async def get_url(self):
        """The server's URL from the current address (after a hub restart, a resume)."""
        if self.stack.stack_id:
            await self._connect()
            await self._refresh()
            instance = self.reflector.instance_for_stack(self.stack.stack_id)
            if instance is not None and instance.state == "running" and instance.private_ip:
                host, port = await self._address(instance)
                return f"http://{host}:{port}{self.server.base_url if self.server else '/'}"
        return await super().get_url()

    async def stop(self, now=False):
        if not self.stack.stack_id:
            return
        actor = self._actor()  # before the first await: the request may end meanwhile
        await self._connect()
        await self._dns_on_stop()
        await self._forget_bootstrap_codes()  # a code not used by now never will be
        if self.stop_action == "terminate" or self.stack.delete_pending:
            ids = self.stack.stack_id, self.stack.instance_id
            await self._delete_stack()
            await self._audit_deletion("terminate", ids, actor)
            return
        if not self.stack.instance_id:
            await self._refresh()
            instance = self.reflector.instance_for_stack(self.stack.stack_id)
            self.stack.instance_id = instance.instance_id if instance else None
        if self.stack.instance_id:
            await run_blocking(stacks.stop_instance, self.ec2_client, self.stack.instance_id)
            log.info("Stopping instance %s of %s", self.stack.instance_id, self._log_name)
            if not now:
                try:
                    await self._wait(
                        lambda: self._instance_in({"stopped", "terminated"}) or None,
                        "the instance to stop",
                        120,
                    )
                except TimeoutError:
                    log.warning("Instance %s is still stopping", self.stack.instance_id)
            await self._audit("stop", actor=actor)

    async def delete_forever(self):
        """The server is removed (or its user deleted): delete its stack."""
        if self.stack.stack_id:
            actor = self._actor()
            ids = self.stack.stack_id, self.stack.instance_id
            await self._connect()
            await self._dns_on_stop()
            await self._delete_stack()
            await self._audit_deletion("remove", ids, actor)
            if self.stack.delete_pending:
                raise RuntimeError(f"stack {self.stack.stack_name} could not be deleted")

    async def _audit_deletion(self, action, ids, actor):
        """Record a stack's deletion (``ids``: its stack and instance ids from before:
        ``_delete_stack`` forgets them once AWS took the delete)."""
        if self.stack.delete_pending:
            reason = "AWS refused to delete the stack; it will be retried"
            await self._audit(action, "failed", reason, actor, ids)
        else:
            await self._audit(action, actor=actor, ids=ids)

    # ---- start-up check --------------------------------------------------------------

    @classmethod
    def check_config(cls, config):
        """Build the configured spawner once, so a bad setting fails at hub start-up.

        Call it at the end of jupyterhub_config.py: ``MLiySpawner.check_config(c)``. It
        also builds the AWS clients that every spawner then shares, so the first spawn
        does not pause the hub while botocore loads its models.
        """
        spawner = cls(config=config)
        if not spawner.parsed_groups:
            raise TraitError("MLiySpawner.launch_groups: define at least one launch group")
        # Build the shared AWS clients now, while the hub starts: botocore parses its
        # service models for about a second, holding the GIL even off the event loop.
        for service in ("ec2", "cloudformation"):
            aws.shared_client(service, spawner.region, spawner.aws_endpoint_url)
        return spawner
