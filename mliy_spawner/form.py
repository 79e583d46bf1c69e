"""The options form: render it, read it back, and check what came in.

Pure functions the spawner calls:

- :func:`render_form` lists the user's launch groups, the software configurations each
  allows, and per configuration its instance types with vCPU, memory and $/hour.
- :func:`options_from_form` and :func:`options_from_query` turn posted fields and
  ``?opt-`` query arguments into ``user_options``; they only reshape, never judge.
- :func:`apply_options` runs :func:`~mliy_spawner.configs.resolve_options`, the one
  check of ``user_options`` for form posts, REST bodies and the admin panel's empty body,
  and turns its :class:`~mliy_spawner.configs.OptionsError` into an HTTP 400.

Form fields. The form renders one block per (launch group, configuration), so it can
switch configuration without a reload and still post correctly without script:

- ``launch_group``: a select when the user has several groups, else a hidden input.
- ``software_config:<group>``: one per group (a select when it allows several).
- ``instance_type:<group>:<config>``: one radio set per (group, configuration).
- ``volume_size:<group>:<config>``: one number input per block whose config has a volume.

Every name occurs once, so a browser never posts two values for one name. The server
reads ``launch_group``, then that group's ``software_config:<group>``, then that block's
``instance_type`` and ``volume_size``: fields of other blocks are ignored, whether the
inline script disabled them or not. Plain ``software_config``, ``instance_type`` and
``volume_size`` fields are read when the scoped ones are absent (scripts, curl).
"""

import logging
import re
from dataclasses import dataclass, field
from decimal import Decimal

from markupsafe import Markup

from . import costs, costviews
from .configs import USER_OPTION_KEYS, OptionsError, groups_for_user, resolve_options
from .pricing import PricingError
from .util import template_environment, user_error

log = logging.getLogger("mliy.launch.form")  # mliy.launch's level and file apply

_INTEGER = re.compile(r"[+-]?[0-9]{1,18}")


def _number(value):
    return f"{value:g}" if isinstance(value, float) else str(value)


class _Rows:
    """Instance-type rows for the tables, looked up once per type per render."""

    def __init__(self, catalog, region):
        self.catalog = catalog
        self.region = region
        self.rows = {}

    def __getitem__(self, instance_type):
        if instance_type not in self.rows:
            self.rows[instance_type] = self._lookup(instance_type)
        return self.rows[instance_type]

    def _lookup(self, instance_type):
        row = {
            "name": instance_type,
            "pretty_name": "",
            "vcpu": "unknown",
            "memory": "unknown",
            "price": None,
        }
        if self.catalog is None:
            return row
        try:
            info = self.catalog.info(instance_type)
            row["price"] = self.catalog.price(instance_type, self.region)
        except PricingError as e:
            # A broken catalog must not keep users from launching: show no prices.
            log.warning("Showing the form without prices: %s", e)
            self.catalog = None
            return row
        if info is not None:
            row.update(
                pretty_name=info.pretty_name, vcpu=str(info.vcpu), memory=_number(info.memory_gib)
            )
        return row


@dataclass(frozen=True)
class Spend:
    """What the form tells a user about money this month (the spawner reads the ledger).

    ``total``: the user's known spend this month, every group; ``unknown``: how many of
    the user's servers have a price the catalog lacks; ``budgets``: ``{group name:
    [(Budget, spent, reserved)]}`` for the groups with budgets; ``gib_month_usd``: the
    volume price (None: unknown), for the first hour of each choice.
    """

    month: costs.Month
    total: Decimal
    unknown: int = 0
    budgets: dict = field(default_factory=dict)
    gib_month_usd: Decimal | None = None


def _budget_view(spend, group_name):
    """The budget line of one group: each budget with its spend and what is left."""
    entries = spend.budgets.get(group_name) if spend is not None else None
    if not entries:
        return None
    lines = [
        {
            "label": budget.label[0].upper() + budget.label[1:],
            "amount": costviews.dollars(budget.amount),
            "spent": costviews.dollars(used),
            "left": max(budget.amount - used - reserved, Decimal(0)),
        }
        for budget, used, reserved in entries
    ]
    left = min(line["left"] for line in lines)
    return {
        "lines": [{**line, "left": costviews.dollars(line["left"])} for line in lines],
        "left": left,
        "spent_out": left <= 0,
    }


def _type_rows(rows, types, spend, budget, volume):
    """The instance-type rows of one block, each flagged when its first hour would go
    over the group's budget (or cannot be checked against it: its price is unknown)."""
    found = []
    for name in types:
        row = dict(rows[name])
        row["over_budget"] = False
        if budget is not None:
            first = costs.hourly_cost(
                row["price"], volume["value"] if volume else None, spend.gib_month_usd, spend.month
            )
            row["over_budget"] = first is None or first > budget["left"]
        found.append(row)
    return found


def _choice(saved_options, available_groups, configs):
    """The saved options when they are still allowed, else the defaults (or None)."""
    if saved_options:
        try:
            return resolve_options(saved_options, available_groups, configs)
        except OptionsError as e:
            log.info("Saved options no longer apply, showing defaults: %s", e)
    try:
        return resolve_options({}, available_groups, configs)
    except OptionsError:
        return None


def _view(available_groups, configs, catalog, region, choice, spend=None):
    rows = _Rows(catalog, region)
    groups = []
    for gi, group in enumerate(available_groups):
        chosen_group = choice is not None and choice.group.name == group.name
        budget = _budget_view(spend, group.name)
        blocks = []
        for ci, slug in enumerate(group.software_configs):
            config = configs[slug]
            chosen_block = chosen_group and choice.config.slug == slug
            types = group.instance_types(config)
            if chosen_block:
                checked = choice.instance_type
            else:
                checked = config.default_instance_type
                checked = checked if checked in types else types[0]
            volume = None
            if config.volume is not None:
                size = config.volume.default_size
                if chosen_block and choice.volume_size is not None:
                    size = choice.volume_size
                volume = {
                    "min": config.volume.min_size,
                    "max": config.volume.max_size,
                    "value": size,
                    "default": config.volume.default_size,
                }
            blocks.append(
                {
                    "id": f"mliy-g{gi}-c{ci}",
                    "slug": slug,
                    "display_name": config.display_name,
                    # Admin-written HTML from the configuration, never user input.
                    "description": Markup(config.description),
                    "selected": chosen_block or (not chosen_group and ci == 0),
                    "types": _type_rows(rows, types, spend, budget, volume),
                    "checked": checked,
                    "volume": volume,
                }
            )
        groups.append(
            {
                "id": f"mliy-g{gi}",
                "name": group.name,
                "selected": chosen_group,
                "budget": budget,
                "blocks": blocks,
            }
        )
    return groups


def render_form(
    *,
    user_name,
    available_groups,
    configs,
    catalog,
    region,
    saved_options,
    template_paths=(),
    template_name="form.html",
    spend=None,
):
    """Return the options form's HTML for one user.

    ``available_groups`` comes from :func:`~mliy_spawner.configs.groups_for_user`,
    ``configs`` is ``{slug: SoftwareConfig}``, ``catalog`` a
    :class:`~mliy_spawner.pricing.PriceCatalog` (or None: no prices), ``region`` the
    region whose prices to show. ``saved_options`` (the last ``user_options``) are
    pre-selected when they are still allowed; otherwise the defaults are. ``spend`` (a
    :class:`Spend`, or None) adds this month's spend and each group's budget line, and
    flags the instance types whose first hour would go over it. Templates are
    looked up in ``template_paths`` first, then in the package; everything is escaped
    except configuration descriptions, which are admin HTML.
    """
    choice = _choice(saved_options, available_groups, configs)
    context = {
        "user_name": user_name,
        "region": region,
        "groups": _view(available_groups, configs, catalog, region, choice, spend),
        "choice": choice,
        "spend": None
        if spend is None
        else {
            "month": spend.month.key,
            "total": costviews.dollars(spend.total),
            "unknown": spend.unknown,
            "resets": f"{spend.month.end:%Y-%m-%d %H:%M} UTC",
        },
    }
    template = template_environment(tuple(template_paths)).get_template(template_name)
    return template.render(context)


def _value(values):
    """One posted field: None when empty, a string, or a list when posted repeatedly."""
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, list | tuple):
        return None
    values = [v for v in values if isinstance(v, str) and v.strip()]
    if not values:
        return None
    return values[0] if len(values) == 1 else list(values)


def _volume(value):
    # Whole numbers become ints; anything else stays as typed, for resolve_options to
    # reject with a message that shows it.
    if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        return int(value.strip())
    return value


def _scoped(formdata, field, *scope):
    """``field:<scope...>`` when every part of the scope is a string, else ``field``."""
    if scope and all(isinstance(part, str) for part in scope):
        value = _value(formdata.get(":".join((field, *scope)), []))
        if value is not None:
            return value
    return _value(formdata.get(field, []))


def options_from_form(formdata):
    """Turn posted form fields (``{name: [str, ...]}``) into ``user_options``.

    Reads the fields described in the module docstring; empty fields are left out so
    defaults apply, other fields (``_xsrf``, the blocks of other groups) are ignored.
    Never raises: checking the values is :func:`apply_options`' job.
    """
    if not isinstance(formdata, dict):
        return {}
    options = {}
    group = _value(formdata.get("launch_group", []))
    if group is not None:
        options["launch_group"] = group
    config = _scoped(formdata, "software_config", group)
    if config is not None:
        options["software_config"] = config
    instance_type = _scoped(formdata, "instance_type", group, config)
    if instance_type is not None:
        options["instance_type"] = instance_type
    volume = _scoped(formdata, "volume_size", group, config)
    if volume is not None:
        options["volume_size"] = _volume(volume)
    return options


def options_from_query(query):
    """Turn ``/hub/spawn?opt-...`` arguments into ``user_options``.

    JupyterHub strips the ``opt-`` prefix and passes ``{name: [str, ...]}`` (or, when no
    argument has the prefix, all arguments but ``next`` and ``display_name``). The four
    option names map as in :func:`options_from_form`; other names are kept, so that
    :func:`apply_options` rejects a misspelt option instead of launching the default.
    """
    if not isinstance(query, dict):
        return {}
    options = {}
    for key, values in query.items():
        value = _value(values)
        if value is None:
            continue
        options[key] = _volume(value) if key == "volume_size" else value
    return options


def apply_options(
    spawner_like, user_options, *, groups, configs, default_group, user_group_names, kept=None
):
    """Check ``user_options`` for one spawn; return the LaunchChoice or raise HTTP 400.

    ``groups`` is ``{name: LaunchGroup}``, ``configs`` ``{slug: SoftwareConfig}``,
    ``user_group_names`` the names of the user's JupyterHub groups, ``default_group`` the
    launch group of users in none, ``kept`` the options of a stopped server being
    resumed (see :func:`~mliy_spawner.configs.resolve_options`). The error is
    JupyterHub's ``SpawnException`` (an ``HTTPError``, status 400, reason
    ``invalid-options``) whose message names the field, the value and what is allowed.
    Nothing else is touched, so nothing is launched.
    """
    available = groups_for_user(groups, user_group_names, default_group)
    try:
        return resolve_options(user_options, available, configs, kept=kept)
    except OptionsError as e:
        message = f"Invalid server options: {e}"
        name = getattr(spawner_like, "_log_name", None) or getattr(spawner_like, "name", "")
        log.info("Rejected options for %s: %s", name, message)
        raise user_error(400, message, reason="invalid-options") from None


__all__ = [
    "USER_OPTION_KEYS",
    "apply_options",
    "options_from_form",
    "options_from_query",
    "render_form",
]
