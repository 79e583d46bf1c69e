"""MLiySpawner: each notebook server on its own EC2 instance, launched as a CloudFormation stack.

This class connects JupyterHub's spawner interface to the helper modules and does little
itself: :mod:`configs` (what may be launched), :mod:`form` (the options form),
:mod:`userdata` (the instance's boot script), :mod:`stacks` (AWS calls),
:mod:`reflector` (one shared view of AWS that ``poll()`` and the waits read), and
:mod:`lifecycle` (the launch, resume and clean-up steps ``start()`` is made of).

Lifecycle:

- ``start()`` creates the stack (or resumes the stopped instance of the last one),
  waits through the reflector until the instance has an address, and returns it.
- ``stop()`` stops the instance (``stop_action = "stop"``, the default: disk and
  instance survive, the next start resumes them) or deletes the stack ("terminate").
- ``delete_forever()`` (named server removed, user deleted) deletes the stack.
- A failed or cancelled launch deletes the stack it created; no path forgets a stack.
"""

import asyncio

from jupyterhub.spawner import Spawner
from traitlets import (
    Any,
    Bool,
    Callable,
    Dict,
    Enum,
    Float,
    Int,
    List,
    TraitError,
    Unicode,
    default,
    observe,
    validate,
)

from . import aws, boot, configs, form, logs, plugins, pricing, stacks
from .lifecycle import LaunchFailed, StackLifecycle, spawn_error
from .reflector import Reflector, shared_reflector
from .store import shared_store, store_url_from_env

STATE_VERSION = 1


class MLiySpawner(StackLifecycle, Spawner):
    """Spawn each server as a CloudFormation stack running one EC2 instance."""

    # ---- where and how to reach AWS ------------------------------------------------

    region = Unicode(
        "us-east-1",
        help="""AWS region where stacks are created, e.g. "us-west-2".

        Prices in the options form are looked up for this region too.
        """,
    ).tag(config=True)

    aws_endpoint_url = Unicode(
        "",
        help="""Endpoint URL for every AWS API (EC2, CloudFormation, Route 53).

        Empty (default) means the real AWS endpoints. The demo and the tests point it
        at moto's server, e.g. "http://127.0.0.1:4566".
        """,
    ).tag(config=True)

    ec2_client = Any(help="boto3 EC2 client; built from region and aws_endpoint_url.")

    @default("ec2_client")
    def _default_ec2_client(self):
        return aws.make_client("ec2", self.region, self.aws_endpoint_url)

    cfn_client = Any(help="boto3 CloudFormation client; built from region and aws_endpoint_url.")

    @default("cfn_client")
    def _default_cfn_client(self):
        return aws.make_client("cloudformation", self.region, self.aws_endpoint_url)

    hub_name = Unicode(
        "mliy",
        help="""Name of this hub, written to every stack's `mliy:hub` tag.

        The shared reflector watches only instances and stacks carrying this tag, so give
        each hub sharing an AWS account and region its own name. Default: "mliy".
        """,
    ).tag(config=True)

    stack_name_prefix = Unicode(
        "mliy", help="First part of every stack name, e.g. mliy-alice-gpu-1a2b3c4d5e."
    ).tag(config=True)

    stack_tags = Dict(
        {},
        help="""Tags added to every stack (and so to its instance and volume),
        e.g. {"cost-center": "analytics"}. The `mliy:*` and `Name` tags are set by the spawner.
        """,
    ).tag(config=True)

    reflector_interval = Float(
        10.0,
        help="""Seconds between two refreshes of the shared view of AWS when nothing waits.

        Spawners waiting on a launch ask for refreshes sooner (every 1 s at first).
        """,
    ).tag(config=True)

    reflector = Any(help="The shared Reflector; one per region and hub by default.")

    @default("reflector")
    def _default_reflector(self):
        key = (self.region, self.aws_endpoint_url, self.hub_name)
        return shared_reflector(
            key,
            lambda: Reflector(
                self.ec2_client, self.cfn_client, self.hub_name, interval=self.reflector_interval
            ),
        )

    # ---- what users may launch -----------------------------------------------------

    software_configs = Dict(
        {},
        help="""Software configurations users choose from, keyed by slug (MLiy's SoftwareConfig).

        Each value is a dict:
        - `display_name`, `description` (admin HTML allowed; shown in the form)
        - `ami_id` (required), e.g. "ami-0abcdef1234567890"
        - `template`: CloudFormation template path (default: the shipped
          cloudformation/notebook-instance.yaml)
        - `user_data`: boot script path (default: the shipped userdata/mliy-bootstrap.sh)
        - `params`: {token: value} replacing `{{{token}}}` in the script
        - `instance_types` (required) and `default_instance_type` (default: the first)
        - `volume`: None, or {"device": "/dev/sdf", "default_size": 100, "max_size": 1000,
          "min_size": 1, "kms_key_id": ""}

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
            configs.parse_software_configs(proposal.value)
        except configs.ConfigError as e:
            raise TraitError(str(e)) from None
        return proposal.value

    launch_groups = Dict(
        {},
        help="""What each JupyterHub group may launch, keyed by group name (MLiy's GroupConfig).

        Each value is a dict:
        - `software_configs` (required): slugs of software_configs the group may use
        - `security_group_ids` (required): ["sg-…"]
        - `key_name`: EC2 key pair name (default: none)
        - `instance_profile`: IAM instance profile name or ARN (default: none)
        - `excluded_instance_types`: instance types members may not choose

        A user in several groups chooses the group in the form. A user in none cannot
        spawn unless `default_launch_group` is set.
        """,
    ).tag(config=True)

    @validate("launch_groups")
    def _validate_launch_groups(self, proposal):
        # traitlets delays cross-validation until the whole config section is loaded,
        # so software_configs is already set here
        try:
            parsed = configs.parse_software_configs(self.software_configs)
            configs.parse_launch_groups(proposal.value, parsed)
        except configs.ConfigError as e:
            raise TraitError(str(e)) from None
        return proposal.value

    default_launch_group = Unicode(
        "",
        help="""Launch group for users who are in none of `launch_groups` (default: none,
        and such users cannot spawn).""",
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
        help="""Hub-wide values for `{{{token}}}` placeholders in user-data scripts
        (MLiy's REPLACEMENT_TOKENS), e.g. {"pip_index_url": "https://pypi.example.com"}.
        A configuration's own `params` win over these. Never put secrets here: the
        rendered script is readable on the instance.""",
    ).tag(config=True)

    # ---- placement and networking --------------------------------------------------

    subnet_id = Unicode(
        "",
        help="""Subnet for the instances. Empty: read from EC2 instance metadata, the
        subnet of the machine the hub runs on (MLiy's behaviour).""",
    ).tag(config=True)

    availability_zone = Unicode(
        "",
        help="""Availability zone for instance and volume. Empty: from instance metadata.""",
    ).tag(config=True)

    instance_metadata_url = Unicode(
        "http://169.254.169.254",
        help="Base URL of the EC2 instance metadata service (IMDSv2), used for placement.",
    ).tag(config=True)

    stop_action = Enum(
        ["stop", "terminate"],
        "stop",
        help="""What stopping a server does: "stop" (default) stops the instance and keeps
        its disk, and the next start resumes it; "terminate" deletes the stack.""",
    ).tag(config=True)

    notebook_port = Int(
        8888, help="Port the notebook server listens on, on all interfaces of the instance."
    ).tag(config=True)

    service_url = Unicode(
        "",
        help="""URL of the `mliy` hub service as the instances reach it, ending in "/",
        e.g. "https://hub.example.com/services/mliy/". Instances report their boot
        progress there. Default: JupyterHub.public_url + "services/mliy/" when the
        public URL is set, else empty (no progress from instances).""",
    ).tag(config=True)

    connect_address_hook = Callable(
        None,
        allow_none=True,
        help="""Optional `hook(spawner, instance) -> (host, port)` (may be async) deciding
        where the hub connects to a running instance. `instance` is a
        reflector.InstanceView. Default: the instance's private IP and notebook_port.
        The embedded demo uses it to map instances to local servers.""",
    ).tag(config=True)

    store_url = Unicode(
        help="""SQLAlchemy URL of the store shared with the `mliy` service (instance
        ownership, boot progress). Default: $MLIY_STORE_URL, else `mliy.sqlite` in the
        hub's folder. `configure_service(c)` sets both sides to the same URL.""",
    ).tag(config=True)

    @default("store_url")
    def _default_store_url(self):
        return store_url_from_env()

    store = Any(help="The Store (mliy_spawner.store); one per URL, built from store_url.")

    @default("store")
    def _default_store(self):
        return shared_store(self.store_url)

    wait_for_boot = Bool(
        True,
        help="""Wait, in start(), until the instance's user-data script reports that the
        notebook server is up (or failed), showing its steps as progress. Needs a
        service URL (see service_url). Turn off for scripts that report nothing.""",
    ).tag(config=True)

    boot_silence_limit = Float(
        300.0,
        help="""Seconds to wait for an instance's first progress report before leaving the
        wait to the hub (whose http_timeout then applies). Instances that report nothing
        do not fail their spawn for it.""",
    ).tag(config=True)

    dns_plugin_folder = Unicode(
        "",
        help="""Folder of MLiy-style plugin files holding the DNS plugin (createDnsEntry,
        deleteDnsEntry, dnsDisplayName), e.g. the shipped `plugins/` with route53.py.
        Empty with dns_plugin_name empty: no DNS (servers are reached by IP).""",
    ).tag(config=True)

    dns_plugin_name = Unicode(
        "", help="Name of a DNS plugin registered under the `mliy_spawner.dns_plugins` entry point."
    ).tag(config=True)

    connect_via_dns = Bool(
        False,
        help="""Connect the hub to servers by the DNS plugin's name (dnsDisplayName) rather
        than their IP. When the DNS update fails the IP is used (MLiy's fallback).""",
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
        help="""Levels of the mliy.* loggers in the hub, e.g. {"aws": "DEBUG"} (areas:
        auth, aws, launch, service; default INFO). They print on the hub's console.""",
    ).tag(config=True)

    log_dir = Unicode(
        "",
        help="""Folder for one log file per area (auth.log, aws.log, launch.log,
        service.log: MLiy's auth, boto, launch and web logs). Empty: console only.""",
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

    wait_backoff_start = Float(
        1.0, help="First pause, in seconds, between two checks while waiting on AWS."
    ).tag(config=True)

    wait_backoff_max = Float(
        10.0, help="Longest pause, in seconds, between two checks while waiting on AWS."
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

    @default("apply_user_options")
    def _default_apply_user_options(self):
        return type(self)._apply_user_options

    # ---- the options form ------------------------------------------------------------

    pricing_file = Unicode(
        "",
        help="""ec2instances.info `instances.json` for the prices in the options form.
        Default: the shipped pricing/instances.json. The file is re-read when it changes
        (replace it with `mliy-pricing refresh SOURCE`), no restart needed.""",
    ).tag(config=True)

    form_template_paths = List(
        Unicode(),
        [],
        help="""Folders searched for `form.html` before the shipped template, so admins
        can restyle the options form. Values are escaped; only configuration
        descriptions are inserted as HTML.""",
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
        saved = spawner.user_options or spawner.launch_options or {}
        return await asyncio.to_thread(
            form.render_form,
            user_name=spawner.user.name,
            available_groups=spawner.available_groups(),
            configs=spawner.parsed_configs,
            catalog=catalog,
            region=spawner.region,
            saved_options=saved,
            template_paths=spawner.form_template_paths,
        )

    # ---- state ---------------------------------------------------------------------

    # the stack's ARN: a deleted stack can only be described by id, not by name
    stack_id = None
    # for logs, and to find the stack again after a crash between create and save
    stack_name = None
    # the instance to stop, start and resume
    instance_id = None
    # where the stack lives, should the hub's region setting change
    stack_region = None
    # the options it was launched with (config slug, group, type, volume) to resume it
    launch_options = None
    # a failed launch whose stack could not be deleted yet: stop() deletes it
    delete_pending = False
    # the address the DNS record points at, to delete it after a hub restart
    dns_ip = None

    def load_state(self, state):
        super().load_state(state)
        mine = state.get("mliy") or {}
        if mine.get("version", STATE_VERSION) > STATE_VERSION:
            self.log.warning("State of %s is from a newer mliy-spawner", self._log_name)
        self.stack_id = mine.get("stack_id")
        self.stack_name = mine.get("stack_name")
        self.instance_id = mine.get("instance_id")
        self.stack_region = mine.get("region")
        self.launch_options = mine.get("launch_options")
        self.delete_pending = bool(mine.get("delete_pending"))
        self.dns_ip = mine.get("dns_ip")

    def get_state(self):
        state = super().get_state()
        if self.stack_id:
            state["mliy"] = {
                "version": STATE_VERSION,
                "stack_id": self.stack_id,
                "stack_name": self.stack_name,
                "instance_id": self.instance_id,
                "region": self.stack_region or self.region,
                "launch_options": self.launch_options,
                "delete_pending": self.delete_pending,
                "dns_ip": self.dns_ip,
            }
        return state

    def clear_state(self):
        # The hub calls this after every stop and before every start. With
        # stop_action="stop" the stack outlives the server: keep pointing at it.
        super().clear_state()
        self._events = []

    def _forget_stack(self):
        self.stack_id = self.stack_name = self.instance_id = None
        self.stack_region = self.launch_options = self.dns_ip = None
        self.delete_pending = False

    # ---- options ---------------------------------------------------------------------

    _parsed = None

    @observe("software_configs", "launch_groups")
    def _forget_parsed_configs(self, change):
        self._parsed = None

    def _parse(self):
        if self._parsed is None:
            parsed = configs.parse_software_configs(self.software_configs)
            self._parsed = parsed, configs.parse_launch_groups(self.launch_groups, parsed)
        return self._parsed

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
            kept=self.launch_options if self.stack_id else None,
        )

    @staticmethod
    def _apply_user_options(spawner, user_options):
        spawner._launch_choice = spawner.resolve_launch(user_options)

    # ---- progress ----------------------------------------------------------------------

    _events = None
    _launch_choice = None

    def _emit(self, message, progress=None):
        """Record a progress event; the bar never moves backwards."""
        if self._events is None:
            self._events = []
        last = self._events[-1]["progress"] if self._events else 0
        progress = last if progress is None else max(progress, last)
        self._events.append({"progress": progress, "message": message})
        self.log.info("%s: %s", self._log_name, message)

    async def progress(self):
        """Stack events and launch steps as they happen; replayed after a reconnect."""
        sent = 0
        while True:
            events = self._events or []
            while sent < len(events):
                yield events[sent]
                sent += 1
            await asyncio.sleep(0.5)

    # ---- start ---------------------------------------------------------------------------

    async def start(self):
        choice = self._launch_choice or self.resolve_launch(self.user_options)
        self._launch_choice = None
        self._events = []
        self._instance_seen = None
        self.ip = "0.0.0.0"
        self.port = self.notebook_port
        if self.delete_pending:
            await self._delete_stack()
        resumed = False
        if self.stack_id:
            resumed = await self._resume(choice)
        if not resumed:
            await self._launch(choice)
        try:
            instance = await self._wait(
                self._ready_instance, "the instance", self.start_timeout, self._on_launch_tick
            )
            self.instance_id = instance.instance_id
            await self._record_owner()
            if not resumed and self.wait_for_boot and self._service_url():
                await boot.wait_for_boot(
                    self.store,
                    self.instance_id,
                    self._emit,
                    self._check_alive,
                    self.start_timeout,
                    self.wait_backoff_start,
                    self.boot_silence_limit,
                    self.log,
                )
        except asyncio.CancelledError:
            await asyncio.shield(self._abandon(resumed))
            raise
        except LaunchFailed as e:
            reason = await self._failure_reason(str(e))
            await asyncio.shield(self._abandon(resumed))
            raise spawn_error(f"Launching your server failed: {reason}", reason="stack") from None
        except boot.BootFailed as e:
            await asyncio.shield(self._abandon(resumed))
            raise spawn_error(
                f"Your server's instance failed to set up: {e}", reason="instance-setup"
            ) from None
        except BaseException:
            await asyncio.shield(self._abandon(resumed))
            raise
        host, port = await self._address(instance)
        host = await self._dns_on_start(instance, host)
        self._emit(f"Connecting to the notebook server at {host}:{port}", boot.BOOT_END)
        return host, port

    # ---- poll, stop, delete ------------------------------------------------------------

    async def poll(self):
        """Read from the shared view: None while the stack's instance runs (or is unknown)."""
        if not self.stack_id:
            return 0
        if self.reflector.last_success is None:
            try:
                async with asyncio.timeout(10):
                    await self.reflector.refresh()
            except TimeoutError:
                return None
        return self.reflector.server_status(
            self.stack_id, self.instance_id, self._launched_at + 0.001
        )

    async def get_url(self):
        """The server's URL from the current address (after a hub restart, a resume)."""
        if self.stack_id:
            await self.reflector.refresh()
            instance = self.reflector.instance_for_stack(self.stack_id)
            if instance is not None and instance.state == "running" and instance.private_ip:
                host, port = await self._address(instance)
                return f"http://{host}:{port}{self.server.base_url if self.server else '/'}"
        return await super().get_url()

    async def stop(self, now=False):
        if not self.stack_id:
            return
        await self._dns_on_stop()
        if self.stop_action == "terminate" or self.delete_pending:
            await self._delete_stack()
            return
        if not self.instance_id:
            await self.reflector.refresh()
            instance = self.reflector.instance_for_stack(self.stack_id)
            self.instance_id = instance.instance_id if instance else None
        if self.instance_id:
            await self._aws(stacks.stop_instance, self.ec2_client, self.instance_id)
            self.log.info("Stopping instance %s of %s", self.instance_id, self._log_name)
            if not now:
                try:
                    await self._wait(
                        lambda: self._instance_in({"stopped", "terminated"}) or None,
                        "the instance to stop",
                        120,
                    )
                except TimeoutError:
                    self.log.warning("Instance %s is still stopping", self.instance_id)

    async def delete_forever(self):
        """The server is removed (or its user deleted): delete its stack."""
        if self.stack_id:
            await self._dns_on_stop()
            await self._delete_stack()
            if self.delete_pending:
                raise RuntimeError(f"stack {self.stack_name} could not be deleted")

    # ---- start-up check --------------------------------------------------------------

    @classmethod
    def check_config(cls, config):
        """Build the configured spawner once, so a bad setting fails at hub start-up.

        Call it at the end of jupyterhub_config.py: ``MLiySpawner.check_config(c)``.
        """
        spawner = cls(config=config)
        if not spawner.parsed_groups:
            raise TraitError("MLiySpawner.launch_groups: define at least one launch group")
        return spawner
