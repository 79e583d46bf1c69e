"""Software configurations and launch groups: parsed and checked from the traits.

MLiy kept these as Django models (``SoftwareConfig``, ``GroupConfig``); here they come
from ``c.MLiySpawner.software_configs`` and ``c.MLiySpawner.launch_groups`` and are
checked when the configuration loads, with errors that name the bad key. That includes
``{{{token}}}`` values (a configuration's ``params``, :func:`check_replacement_tokens`):
none may have a line that would end a here-document of the shipped boot script or of the
configuration's own, where it would run as commands.

:func:`resolve_options` is the one validation path for a spawn's ``user_options``,
whether they came from the options form, a REST body or the admin panel's empty body.
"""

import functools
import json
import re
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from . import userdata
from .assets import asset_path
from .costs import CostError, parse_amount
from .util import shorten

USER_OPTION_KEYS = ("launch_group", "software_config", "instance_type", "volume_size")

_SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_INSTANCE_TYPE = re.compile(r"^[a-z0-9-]+\.[a-z0-9-]+$")
_AMI = re.compile(r"^ami-[0-9a-f]{8,17}$")
_DEVICE = re.compile(r"^/dev/(sd|xvd)[b-z]$")
_SG = re.compile(r"^sg-[0-9a-f]{8,17}$")


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the key."""


class OptionsError(ValueError):
    """A user option is not allowed; the message names the field, the value and what is."""

    def __init__(self, field, value, allowed):
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"{field}: {shorten(value)} is not allowed; {allowed}")


@dataclass(frozen=True)
class VolumeSpec:
    """The extra EBS volume a configuration attaches (MLiy's data volume)."""

    device: str
    default_size: int
    max_size: int
    min_size: int = 1
    kms_key_id: str = ""


@dataclass(frozen=True)
class SoftwareConfig:
    """One choice in the form: an AMI, a stack template, a user-data script, parameters."""

    slug: str
    display_name: str
    description: str
    ami_id: str
    template: str
    user_data: str
    params: dict = field(default_factory=dict)
    instance_types: tuple = ()
    default_instance_type: str = ""
    volume: VolumeSpec | None = None


@dataclass(frozen=True)
class LaunchGroup:
    """What a JupyterHub group may launch, and with which AWS identity and network."""

    name: str
    key_name: str
    instance_profile: str
    security_group_ids: tuple
    software_configs: tuple
    excluded_instance_types: frozenset = frozenset()
    #: monthly dollars shared by the group's members, and the default for each member
    budget_usd: Decimal | None = None
    member_budget_usd: Decimal | None = None
    #: extra stack tags for AWS's own bill, e.g. (("CostCenter", "1234"),)
    cost_tags: tuple = ()

    def instance_types(self, config):
        """The instance types of ``config`` that this group may use, in config order."""
        return [t for t in config.instance_types if t not in self.excluded_instance_types]


@dataclass(frozen=True)
class LaunchChoice:
    """A validated set of user options: what ``start()`` launches."""

    group: LaunchGroup
    config: SoftwareConfig
    instance_type: str
    volume_size: int | None

    def as_user_options(self):
        options = {
            "launch_group": self.group.name,
            "software_config": self.config.slug,
            "instance_type": self.instance_type,
        }
        if self.volume_size is not None:
            options["volume_size"] = self.volume_size
        return options


def _take(entry, key, where, kind=str, required=True, default=None):
    if key not in entry:
        if required:
            raise ConfigError(f"{where}: missing required key {key!r}")
        return default
    value = entry[key]
    if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ConfigError(f"{where}.{key}: expected {names}, got {value!r}")
    return value


def _check_keys(entry, allowed, where):
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a dict, got {type(entry).__name__}")
    unknown = sorted(set(entry) - set(allowed), key=repr)
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; allowed: {sorted(allowed)}")


def _entries(raw, trait, keyed_by, allowed, key_ok, key_rule):
    """Yield ``(key, entry, where)`` for each entry of the dict trait value ``raw``.

    Checks, as it goes, that ``raw`` is a dict, that each key is a string passing
    ``key_ok`` (else the error says ``key_rule``) and that each entry is a dict of
    ``allowed`` keys.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{trait}: expected a dict keyed by {keyed_by}")
    for key, entry in raw.items():
        where = f"{trait}[{key!r}]"
        if not isinstance(key, str) or not key_ok(key):
            raise ConfigError(f"{where}: {key_rule}")
        _check_keys(entry, allowed, where)
        yield key, entry, where


def _string_list(entry, key, where, pattern=None, required=True):
    values = _take(entry, key, where, (list, tuple), required=required, default=[])
    for value in values:
        if not isinstance(value, str) or (pattern and not pattern.fullmatch(value)):
            raise ConfigError(f"{where}.{key}: invalid entry {value!r}")
    return tuple(values)


def _file(entry, key, where, folder, default_name):
    path = _take(entry, key, where, str, required=False)
    if path is None:
        return str(asset_path(folder, default_name))
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise ConfigError(f"{where}.{key}: cannot read {path!r}: {e.strerror}") from None
    return path


@functools.lru_cache(maxsize=64)
def _delimiters(*scripts):
    """The here-document delimiters of the shipped boot script and of ``scripts`` (paths).

    Read once per process for each set of scripts: every spawner the hub builds checks
    its settings against them, on the event loop."""
    found = set()
    for path in (asset_path("userdata", "mliy-bootstrap.sh"), *scripts):
        try:
            text = Path(path).read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            raise ConfigError(f"cannot read the boot script {str(path)!r}: {e.strerror}") from None
        found |= userdata.heredoc_delimiters(text)
    return frozenset(found)


def _check_token_values(values, where, delimiters):
    for token, value in values.items():
        problem = None if value is None else userdata.heredoc_problem(value, delimiters)
        if problem:
            raise ConfigError(f"{where}[{token!r}]: {problem}")


def check_replacement_tokens(raw, configs, trait="MLiySpawner.replacement_tokens"):
    """Check the ``replacement_tokens`` trait value against every boot script it may go
    into: the shipped one and those of ``configs`` (``{slug: SoftwareConfig}``)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{trait}: expected a dict of token -> value")
    for token in raw:
        if not isinstance(token, str):
            raise ConfigError(f"{trait}[{token!r}]: token names must be strings")
    _check_token_values(raw, trait, _delimiters(*{c.user_data for c in configs.values()}))


def _parse_volume(raw, where):
    allowed = {"device", "default_size", "max_size", "min_size", "kms_key_id"}
    _check_keys(raw, allowed, where)
    device = _take(raw, "device", where, required=False, default="/dev/sdf")
    if not _DEVICE.fullmatch(device):
        raise ConfigError(f"{where}.device: {device!r} is not a device like /dev/sdf")
    min_size = _take(raw, "min_size", where, int, required=False, default=1)
    default_size = _take(raw, "default_size", where, int)
    max_size = _take(raw, "max_size", where, int)
    if not 1 <= min_size <= default_size <= max_size <= 16384:
        raise ConfigError(
            f"{where}: need 1 <= min_size <= default_size <= max_size <= 16384 GiB, got "
            f"{min_size}, {default_size}, {max_size}"
        )
    kms = _take(raw, "kms_key_id", where, required=False, default="")
    return VolumeSpec(device, default_size, max_size, min_size, kms)


def parse_software_configs_once(raw):
    """:func:`parse_software_configs`, once per process for each value.

    The hub builds a spawner for each server, on its event loop, each with its own copy
    of the same setting; parsing opens every template and user-data script it names.
    Here that happens at the first parse only (a bad value is parsed, and refused, each
    time). The files are read again, off the loop, at each launch."""
    try:
        key = json.dumps(raw, sort_keys=True)
    except (TypeError, ValueError):
        key = None
    if key is None or json.loads(key) != raw:  # not plain JSON: parse it as it is
        return parse_software_configs(raw)
    return _parse_json(key)


@functools.lru_cache(maxsize=32)
def _parse_json(key):
    return parse_software_configs(json.loads(key))


def parse_software_configs(raw, trait="MLiySpawner.software_configs"):
    """Turn the ``software_configs`` trait value into ``{slug: SoftwareConfig}``."""
    allowed = {
        "display_name",
        "description",
        "ami_id",
        "template",
        "user_data",
        "params",
        "instance_types",
        "default_instance_type",
        "volume",
    }
    configs = {}
    slug_rule = f"slug must match {_SLUG.pattern}"
    for slug, entry, where in _entries(raw, trait, "slug", allowed, _SLUG.fullmatch, slug_rule):
        ami = _take(entry, "ami_id", where)
        if not _AMI.fullmatch(ami):
            raise ConfigError(f"{where}.ami_id: {ami!r} is not an AMI id like ami-0123abcd")
        types = _string_list(entry, "instance_types", where, _INSTANCE_TYPE)
        if not types:
            raise ConfigError(f"{where}.instance_types: must list at least one instance type")
        default_type = _take(
            entry, "default_instance_type", where, required=False, default=types[0]
        )
        if default_type not in types:
            raise ConfigError(
                f"{where}.default_instance_type: {default_type!r} is not in instance_types"
            )
        params = _take(entry, "params", where, dict, required=False, default={})
        for token, value in params.items():
            if (
                not isinstance(token, str)
                or isinstance(value, bool)
                or not isinstance(value, str | int | float)
            ):
                raise ConfigError(
                    f"{where}.params[{token!r}]: {value!r} is not allowed; values must be "
                    "strings or numbers"
                )
        user_data = _file(entry, "user_data", where, "userdata", "mliy-bootstrap.sh")
        _check_token_values(params, f"{where}.params", _delimiters(user_data))
        volume = entry.get("volume")
        configs[slug] = SoftwareConfig(
            slug=slug,
            display_name=_take(entry, "display_name", where, required=False, default=slug),
            description=_take(entry, "description", where, required=False, default=""),
            ami_id=ami,
            template=_file(entry, "template", where, "cloudformation", "notebook-instance.yaml"),
            user_data=user_data,
            params={k: str(v) for k, v in params.items()},
            instance_types=types,
            default_instance_type=default_type,
            volume=None if volume is None else _parse_volume(volume, f"{where}.volume"),
        )
    return configs


def parse_launch_groups(raw, configs, trait="MLiySpawner.launch_groups"):
    """Turn the ``launch_groups`` trait value into ``{group name: LaunchGroup}``."""
    allowed = {
        "key_name",
        "instance_profile",
        "security_group_ids",
        "software_configs",
        "excluded_instance_types",
        "budget_usd",
        "member_budget_usd",
        "cost_tags",
    }
    groups = {}
    entries = _entries(
        raw,
        trait,
        "JupyterHub group name",
        allowed,
        bool,
        "group names must be non-empty strings",
    )
    for name, entry, where in entries:
        slugs = _string_list(entry, "software_configs", where)
        if not slugs:
            raise ConfigError(f"{where}.software_configs: must list at least one configuration")
        unknown = [s for s in slugs if s not in configs]
        if unknown:
            raise ConfigError(
                f"{where}.software_configs: unknown {unknown}; defined: {sorted(configs)}"
            )
        excluded = frozenset(_string_list(entry, "excluded_instance_types", where, required=False))
        security_groups = _string_list(entry, "security_group_ids", where, _SG)
        if not security_groups:
            # the template's CommaDelimitedList would pass [""], an invalid id, to EC2
            raise ConfigError(
                f"{where}.security_group_ids: must list at least one security group id"
            )
        group = LaunchGroup(
            name=name,
            key_name=_take(entry, "key_name", where, required=False, default=""),
            instance_profile=_take(entry, "instance_profile", where, required=False, default=""),
            security_group_ids=security_groups,
            software_configs=slugs,
            excluded_instance_types=excluded,
            budget_usd=_amount(entry, "budget_usd", where),
            member_budget_usd=_amount(entry, "member_budget_usd", where),
            cost_tags=_cost_tags(entry, where),
        )
        for slug in slugs:
            if not group.instance_types(configs[slug]):
                raise ConfigError(
                    f"{where}.excluded_instance_types: excludes every instance type of {slug!r}"
                )
        groups[name] = group
    return groups


def _amount(entry, key, where):
    if entry.get(key) is None:
        return None
    try:
        return parse_amount(entry[key], f"{where}.{key}")
    except CostError as e:
        raise ConfigError(str(e)) from None


# AWS's rules for tag keys and values (the mliy: and aws: prefixes are the hub's and AWS's)
_TAG_TEXT = re.compile(r"^[\w .:/=+@-]*$")


def _cost_tags(entry, where):
    tags = _take(entry, "cost_tags", where, dict, required=False, default={})
    for key, value in tags.items():
        if (
            not isinstance(key, str)
            or not 0 < len(key) <= 128
            or not _TAG_TEXT.fullmatch(key)
            or key.lower().startswith(("aws:", "mliy:"))
        ):
            raise ConfigError(
                f"{where}.cost_tags: key {key!r} is not allowed; keys are 1-128 letters, "
                "digits, spaces and _.:/=+-@, not starting with aws: or mliy:"
            )
        if not isinstance(value, str) or len(value) > 256 or not _TAG_TEXT.fullmatch(value):
            raise ConfigError(
                f"{where}.cost_tags[{key!r}]: {value!r} is not allowed; values are strings "
                "of at most 256 letters, digits, spaces and _.:/=+-@"
            )
    return tuple(sorted(tags.items()))


def groups_for_user(groups, user_group_names, default_group=""):
    """The launch groups a user may use, in configuration order.

    A user in no launch group gets ``default_group`` when it is set, else nothing.
    """
    names = set(user_group_names)
    mine = [g for name, g in groups.items() if name in names]
    if not mine and default_group:
        mine = [groups[default_group]]
    return mine


def _default_volume(config):
    return config.volume.default_size if config.volume else None


#: What a stopped server keeps (its disk comes with them); only the instance type may change.
RESUME_FIXED = ("launch_group", "software_config", "volume_size")


def resolve_options(user_options, available, configs, kept=None):
    """Check ``user_options`` against what the user may launch; return a LaunchChoice.

    ``available`` is the list from :func:`groups_for_user`. Missing keys take defaults:
    the first group, its first configuration, the configuration's default instance type
    (or the first one the group allows), the volume's default size. Anything else that
    is not allowed raises :class:`OptionsError` naming the field.

    ``kept`` are the options a stopped server was launched with, when it is to be
    resumed: missing keys take those values, and a different group, configuration or
    volume size is refused (the server's disk would be lost).
    """
    if not available:
        raise OptionsError(
            "launch_group", None, "you are in no launch group; ask an administrator to add you"
        )
    if user_options is None:
        user_options = {}
    if not isinstance(user_options, dict):
        raise OptionsError("user_options", user_options, "expected a JSON object")
    unknown = sorted(set(user_options) - set(USER_OPTION_KEYS))
    if unknown:
        raise OptionsError(
            "user_options",
            unknown[0] if len(unknown) == 1 else unknown,
            f"unexpected key; allowed keys: {', '.join(USER_OPTION_KEYS)}",
        )

    if kept:
        for key in RESUME_FIXED:
            if key in user_options and user_options[key] != kept.get(key):
                raise OptionsError(
                    key,
                    user_options[key],
                    f"your stopped server has {kept.get(key)!r} and changing it would lose "
                    "its disk; keep it, or remove the server first",
                )
        user_options = {**kept, **user_options}

    by_name = {g.name: g for g in available}
    group_name = user_options.get("launch_group", available[0].name)
    if not isinstance(group_name, str) or group_name not in by_name:
        raise OptionsError("launch_group", group_name, f"your groups: {', '.join(by_name)}")
    group = by_name[group_name]

    slug = user_options.get("software_config", group.software_configs[0])
    if not isinstance(slug, str) or slug not in group.software_configs:
        raise OptionsError(
            "software_config",
            slug,
            f"group {group.name!r} allows: {', '.join(group.software_configs)}",
        )
    config = configs[slug]

    allowed_types = group.instance_types(config)
    fallback = config.default_instance_type
    if fallback not in allowed_types:
        fallback = allowed_types[0]
    instance_type = user_options.get("instance_type", fallback)
    if not isinstance(instance_type, str) or instance_type not in allowed_types:
        raise OptionsError(
            "instance_type",
            instance_type,
            f"{config.slug!r} in group {group.name!r} allows: {', '.join(allowed_types)}",
        )

    volume_size = user_options.get("volume_size", _default_volume(config))
    if config.volume is None:
        if "volume_size" in user_options and user_options["volume_size"] is not None:
            raise OptionsError(
                "volume_size",
                user_options["volume_size"],
                f"{config.slug!r} has no extra volume; leave it out",
            )
        volume_size = None
    else:
        spec = config.volume
        if isinstance(volume_size, bool) or not isinstance(volume_size, int):
            raise OptionsError(
                "volume_size",
                volume_size,
                f"a whole number of GiB from {spec.min_size} to {spec.max_size}",
            )
        if not spec.min_size <= volume_size <= spec.max_size:
            raise OptionsError(
                "volume_size", volume_size, f"from {spec.min_size} to {spec.max_size} GiB"
            )
    return LaunchChoice(group, config, instance_type, volume_size)
