"""The options form and user options: the form's HTML (structure, prices from the shipped
catalog, pre-selection, escaping), then user options from REST bodies, form posts and query
arguments through the one check (:func:`apply_options`).

The HTML is parsed with ``html.parser``; tests assert on elements and their attributes,
and on what a browser without script would post (see :class:`Form`). A real browser runs
the inline script in the end-to-end tests.

Every hostile option must end as an HTTP 400 whose message names the field, shows the
value and says what is allowed; ``apply_options`` touches nothing else, so nothing is
launched (the spawner-level test asserts that no AWS call is made).
"""

from datetime import UTC, datetime
from decimal import Decimal
from html.parser import HTMLParser
from types import SimpleNamespace

import jupyterhub
import pytest
from tornado.web import HTTPError

from mliy_spawner import costs
from mliy_spawner.configs import parse_launch_groups, parse_software_configs, resolve_options
from mliy_spawner.form import (
    Spend,
    apply_options,
    options_from_form,
    options_from_query,
    render_form,
)
from mliy_spawner.pricing import PriceCatalog, get_catalog

HOSTILE_TEXT = ["<script>alert(1)</script>", '"onmouseover=alert(1) x="', "{{7*7}}"]
RAW_MARKERS = ["<script>alert(1)", '"onmouseover=', "'onmouseover="]
SPAWNER = SimpleNamespace(_log_name="alice")
MY_GROUPS = ["students", "data-science"]  # not in configuration order, on purpose
# what an empty choice resolves to for MY_GROUPS: the first group in configuration order
DEFAULTS = {
    "launch_group": "data-science",
    "software_config": "cpu",
    "instance_type": "t2.nano",
    "volume_size": 100,
}


class Form(HTMLParser):
    """The parts of the rendered form the tests look at."""

    def __init__(self, html):
        super().__init__(convert_charrefs=True)
        self.elements = []  # (tag, attrs) in document order
        self.options = {}  # select name -> [(value, selected, text)]
        self.rows = {}  # radio id -> [cell texts] of its table row
        self.labels = {}  # "for" -> label text
        self.text = []
        self._select = self._option = self._row = self._cell = self._label = None
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        attrs = {name: ("" if value is None else value) for name, value in attrs}
        self.elements.append((tag, attrs))
        if tag == "select":
            self._select = attrs.get("name", attrs.get("id"))
            self.options[self._select] = []
        elif tag == "option":
            self._option = [attrs.get("value"), "selected" in attrs, ""]
        elif tag == "tr":
            self._row = {"radio": None, "cells": []}
        elif tag == "td" and self._row is not None:
            self._cell = []
        elif tag == "input" and self._row is not None and attrs.get("type") == "radio":
            self._row["radio"] = attrs["id"]
        elif tag == "label":
            self._label = [attrs.get("for"), ""]

    def handle_endtag(self, tag):
        if tag == "option" and self._option is not None:
            self._option[2] = self._option[2].strip()
            self.options[self._select].append(tuple(self._option))
            self._option = None
        elif tag == "select":
            self._select = None
        elif tag == "td" and self._cell is not None:
            self._row["cells"].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._row["radio"]:
                self.rows[self._row["radio"]] = self._row["cells"]
            self._row = None
        elif tag == "label" and self._label is not None:
            self.labels[self._label[0]] = self._label[1].strip()
            self._label = None

    def handle_data(self, data):
        self.text.append(data)
        if self._option is not None:
            self._option[2] += data
        if self._cell is not None:
            self._cell.append(data)
        if self._label is not None:
            self._label[1] += data

    def find(self, tag, **attrs):
        return [
            a
            for t, a in self.elements
            if t == tag and all(a.get(k.rstrip("_")) == v for k, v in attrs.items())
        ]

    def by_id(self, element_id):
        (found,) = [a for _, a in self.elements if a.get("id") == element_id]
        return found

    def posted(self):
        """What a browser without script posts: every field with a name."""
        data = {}
        for tag, attrs in self.elements:
            name = attrs.get("name")
            if tag != "input" or not name:
                continue
            if attrs.get("type") == "radio" and "checked" not in attrs:
                continue
            data.setdefault(name, []).append(attrs.get("value", ""))
        for name, options in self.options.items():
            selected = [value for value, chosen, _ in options if chosen] or [options[0][0]]
            data.setdefault(name, []).extend(selected[-1:])
        return data

    def row(self, block_id, instance_type):
        """The cells of ``instance_type``'s row in the block ``block_id``."""
        for radio_id, cells in self.rows.items():
            if radio_id.startswith(block_id + "-t") and self.by_id(radio_id)["value"] == (
                instance_type
            ):
                return cells
        raise AssertionError(f"no row for {instance_type} in {block_id}")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Software configurations cpu (a volume; z9.large has no price), gpu and secret; launch
    groups data-science (no r4.large), students, budget (no t2.nano, cpu's default) and
    admins (secret only)."""
    folder = tmp_path_factory.mktemp("assets")
    template, user_data = folder / "stack.yaml", folder / "boot.sh"
    template.write_text("Resources: {}\n")
    user_data.write_text("#!/bin/bash\n")
    common = {"ami_id": "ami-0123abcd", "template": str(template), "user_data": str(user_data)}
    configs = parse_software_configs(
        {
            "cpu": {
                **common,
                "display_name": "CPU <b>notebook</b>",
                "description": '<p class="lead">Python, R and <a href="/docs">Spark</a></p>',
                "instance_types": ["m4.large", "t2.nano", "r4.large", "m3.medium", "z9.large"],
                "default_instance_type": "t2.nano",
                "volume": {"default_size": 100, "min_size": 10, "max_size": 500},
            },
            "gpu": {**common, "display_name": "GPU", "instance_types": ["p2.xlarge", "g3.4xlarge"]},
            "secret": {**common, "instance_types": ["x1.32xlarge"]},
        }
    )
    sg = ["sg-0123abcd"]
    groups = parse_launch_groups(
        {
            "data-science": {
                "security_group_ids": sg,
                "software_configs": ["cpu", "gpu"],
                "excluded_instance_types": ["r4.large"],
            },
            "students": {"security_group_ids": sg, "software_configs": ["cpu"]},
            "budget": {
                "security_group_ids": sg,
                "software_configs": ["cpu"],
                "excluded_instance_types": ["t2.nano"],
            },
            "admins": {"security_group_ids": sg, "software_configs": ["secret"]},
        },
        configs,
    )
    return SimpleNamespace(groups=groups, configs=configs, catalog=get_catalog())


def render(setup, group_names, saved=None, region="us-east-1", user_name="alice", **kwargs):
    kwargs.setdefault("catalog", setup.catalog)
    html = render_form(
        user_name=user_name,
        available_groups=[setup.groups[name] for name in group_names],
        configs=setup.configs,
        region=region,
        saved_options=saved,
        **kwargs,
    )
    return html, Form(html)


def apply(setup, user_options, user_group_names=MY_GROUPS, default_group=""):
    return apply_options(
        SPAWNER,
        user_options,
        groups=setup.groups,
        configs=setup.configs,
        default_group=default_group,
        user_group_names=user_group_names,
    )


def as_form(options):
    """What a browser posts for ``options`` from the rendered form (scoped field names)."""
    group = options.get("launch_group", "data-science")
    config = options.get("software_config", "cpu")
    # The browser always posts the group and its configuration (a select or a hidden input).
    form = {"_xsrf": ["2|token"], "launch_group": [group], f"software_config:{group}": [config]}
    names = {
        "launch_group": "launch_group",
        "software_config": f"software_config:{group}",
        "instance_type": f"instance_type:{group}:{config}",
        "volume_size": f"volume_size:{group}:{config}",
    }
    for key, value in options.items():
        values = value if isinstance(value, list) else [value]
        form[names[key]] = [str(v) for v in values]
    return form


# ---- the form's HTML ----------------------------------------------------------------------


def test_one_group_has_no_group_select(setup):
    html, form = render(setup, ["students"])
    assert form.find("select", name="launch_group") == []
    assert form.find("input", name="launch_group", type="hidden")[0]["value"] == "students"
    # The group's only configuration is a hidden field too, with its name shown.
    assert form.find("input", name="software_config:students", type="hidden")[0]["value"] == ("cpu")
    radios = form.find("input", type="radio")
    assert {r["name"] for r in radios} == {"instance_type:students:cpu"}
    assert [r["value"] for r in radios] == [
        "m4.large",
        "t2.nano",
        "r4.large",
        "m3.medium",
        "z9.large",
    ]


def test_two_groups_have_a_select_and_a_block_per_config(setup):
    html, form = render(setup, ["data-science", "students"])
    assert [(v, text) for v, _, text in form.options["launch_group"]] == [
        ("data-science", "data-science"),
        ("students", "students"),
    ]
    assert [v for v, chosen, _ in form.options["launch_group"] if chosen] == ["data-science"]
    assert [(v, t) for v, _, t in form.options["software_config:data-science"]] == [
        ("cpu", "CPU <b>notebook</b>"),  # parsed text: the markup was escaped
        ("gpu", "GPU"),
    ]
    blocks = {a["id"]: a["data-mliy-config"] for _, a in form.elements if "data-mliy-config" in a}
    assert blocks == {"mliy-g0-c0": "cpu", "mliy-g0-c1": "gpu", "mliy-g1-c0": "cpu"}
    # The group excludes r4.large from its cpu block only.
    by_name = {}
    for radio in form.find("input", type="radio"):
        by_name.setdefault(radio["name"], []).append(radio["value"])
    assert by_name == {
        "instance_type:data-science:cpu": ["m4.large", "t2.nano", "m3.medium", "z9.large"],
        "instance_type:data-science:gpu": ["p2.xlarge", "g3.4xlarge"],
        "instance_type:students:cpu": ["m4.large", "t2.nano", "r4.large", "m3.medium", "z9.large"],
    }
    # Ids are unique and every label points at a field.
    ids = [a["id"] for _, a in form.elements if "id" in a]
    assert len(ids) == len(set(ids))
    assert set(form.labels) <= set(ids)
    # The script that switches blocks is there, and JupyterHub's Bootstrap classes.
    assert 'document.getElementById("mliy-options")' in html
    assert form.find("select", name="launch_group", class_="form-select")
    assert form.find("table", class_="table table-sm table-hover align-middle mliy-instance-types")


def test_prices_from_the_shipped_catalog(setup):
    html, form = render(setup, ["students"])
    header = "$/hour (us-east-1)"
    assert header in "".join(form.text)
    assert form.row("mliy-g0-c0", "m4.large") == ["", "m4.large M4 Large", "2", "8", "$0.108"]
    assert form.row("mliy-g0-c0", "t2.nano")[2:] == ["1", "0.5", "$0.0059"]
    assert form.row("mliy-g0-c0", "r4.large")[2:] == ["2", "15.25", "$0.133"]
    # Not in the catalog at all.
    assert form.row("mliy-g0-c0", "z9.large") == [
        "",
        "z9.large",
        "unknown",
        "unknown",
        "price unknown",
    ]


def test_prices_follow_the_region(setup):
    html, form = render(setup, ["students"], region="us-east-2")
    # The 2019 file has no us-east-2 price for m3.medium.
    assert setup.catalog.price("m3.medium", "us-east-2") is None
    assert form.row("mliy-g0-c0", "m3.medium")[2:] == ["1", "3.75", "price unknown"]
    expected = setup.catalog.price("m4.large", "us-east-2")
    assert expected is not None
    assert form.row("mliy-g0-c0", "m4.large")[4] == f"${expected}"
    assert "$/hour (us-east-2)" in "".join(form.text)


def test_broken_or_missing_catalog_shows_no_prices(setup, tmp_path):
    broken = tmp_path / "instances.json"
    broken.write_text("[{]")
    for catalog in (PriceCatalog(broken), None):
        html, form = render(setup, ["students"], catalog=catalog)
        assert form.row("mliy-g0-c0", "m4.large")[2:] == ["unknown", "unknown", "price unknown"]


def test_volume_input_bounds(setup):
    html, form = render(setup, ["data-science"])
    (volume,) = form.find("input", type="number")
    assert volume["name"] == "volume_size:data-science:cpu"
    assert (volume["min"], volume["max"], volume["value"], volume["step"]) == (
        "10",
        "500",
        "100",
        "1",
    )
    # The gpu configuration has no volume: its block has no size field.
    assert not [
        a for _, a in form.elements if a.get("name", "").startswith("volume_size:data-science:gpu")
    ]


def test_defaults_are_preselected(setup):
    html, form = render(setup, ["data-science", "students"])
    assert form.by_id("mliy-g0-c0-t1")["value"] == "t2.nano"  # the default type
    assert "checked" in form.by_id("mliy-g0-c0-t1")
    assert options_from_form(form.posted()) == DEFAULTS


# options a server was launched with (saved): r4.large is excluded for data-science only
SAVED = {
    "students-r4": {
        "launch_group": "students",
        "software_config": "cpu",
        "instance_type": "r4.large",
        "volume_size": 321,
    },
    "gpu": {"launch_group": "data-science", "software_config": "gpu", "instance_type": "p2.xlarge"},
    "cpu-m3-min-volume": {
        "launch_group": "data-science",
        "software_config": "cpu",
        "instance_type": "m3.medium",
        "volume_size": 10,
    },
}


@pytest.mark.parametrize("saved", SAVED.values(), ids=SAVED.keys())
def test_saved_options_are_preselected(setup, saved):
    html, form = render(setup, ["data-science", "students"], saved=saved)
    assert [v for v, chosen, _ in form.options["launch_group"] if chosen] == [saved["launch_group"]]
    # What the browser posts as it stands is what was saved.
    assert options_from_form(form.posted()) == saved
    group = saved["launch_group"]
    checked = form.find(
        "input", type="radio", name=f"instance_type:{group}:{saved['software_config']}"
    )
    assert [r["value"] for r in checked if "checked" in r] == [saved["instance_type"]]


def test_saved_options_no_longer_allowed_fall_back_to_defaults(setup):
    # r4.large is allowed for students, excluded for data-science.
    saved = {"launch_group": "data-science", "instance_type": "r4.large", "volume_size": 50}
    html, form = render(setup, ["data-science", "students"], saved=saved)
    assert (
        options_from_form(form.posted())
        == resolve_options(
            {}, [setup.groups["data-science"], setup.groups["students"]], setup.configs
        ).as_user_options()
    )
    assert 'value="50"' not in html


@pytest.mark.parametrize("value", HOSTILE_TEXT, ids=["script", "attribute", "template"])
@pytest.mark.parametrize(
    "field", ["launch_group", "software_config", "instance_type", "volume_size"]
)
def test_hostile_saved_options_never_echoed(setup, field, value):
    html, form = render(setup, ["data-science", "students"], saved={field: value}, user_name=value)
    for marker in RAW_MARKERS:
        assert marker not in html
    assert value not in html
    assert options_from_form(form.posted())["instance_type"] == "t2.nano"


@pytest.mark.parametrize("value", HOSTILE_TEXT, ids=["script", "attribute", "template"])
def test_hostile_user_name_escaped_in_admin_template(setup, tmp_path, value):
    (tmp_path / "form.html").write_text(
        '<p data-user="{{ user_name }}">Hello {{ user_name }}</p>{{ groups[0].name }}'
    )
    html, form = render(setup, ["students"], user_name=value, template_paths=[str(tmp_path)])
    for marker in RAW_MARKERS:
        assert marker not in html
    assert "49" not in html
    assert form.find("p")[0]["data-user"] == value  # escaped, so it parses back intact
    assert f"Hello {value}" in "".join(form.text)


def test_hostile_names_from_configuration_are_escaped(setup):
    # Group names come from JupyterHub's groups; display names are admin text, not HTML.
    configs = dict(setup.configs)
    groups = parse_launch_groups(
        {
            value: {"security_group_ids": ["sg-0123abcd"], "software_configs": ["cpu"]}
            for value in HOSTILE_TEXT
        },
        configs,
    )
    html = render_form(
        user_name="alice",
        available_groups=list(groups.values()),
        configs=configs,
        catalog=setup.catalog,
        region="us-east-1",
        saved_options={"launch_group": HOSTILE_TEXT[1]},
    )
    for marker in RAW_MARKERS:
        assert marker not in html
    assert "CPU <b>" not in html and "CPU &lt;b&gt;notebook&lt;/b&gt;" in html
    form = Form(html)
    assert [v for v, _, _ in form.options["launch_group"]] == HOSTILE_TEXT
    assert [v for v, chosen, _ in form.options["launch_group"] if chosen] == [HOSTILE_TEXT[1]]
    # Each group's field names carry its name intact, so the post reads back.
    assert options_from_form(form.posted())["launch_group"] == HOSTILE_TEXT[1]
    assert options_from_form(form.posted())["software_config"] == "cpu"


def test_admin_description_html_is_kept(setup):
    html, form = render(setup, ["students"])
    assert '<p class="lead">Python, R and <a href="/docs">Spark</a></p>' in html
    assert form.find("a", href="/docs")


def test_admin_template_override(setup, tmp_path):
    (tmp_path / "form.html").write_text(
        "<div id='custom'>{% for g in groups %}{{ g.name }};"
        "{% for b in g.blocks %}{{ b.slug }}={{ b.checked }};{% endfor %}{% endfor %}</div>"
    )
    html, _ = render(setup, ["data-science"], template_paths=[str(tmp_path)])
    assert html == "<div id='custom'>data-science;cpu=t2.nano;gpu=p2.xlarge;</div>"
    # Another name in the same folder; and a folder without the file falls back.
    (tmp_path / "other.html").write_text("region={{ region }}")
    html, _ = render(
        setup, ["students"], template_paths=(str(tmp_path),), template_name="other.html"
    )
    assert html == "region=us-east-1"
    html, form = render(setup, ["students"], template_paths=[str(tmp_path / "empty")])
    assert form.find("div", id="mliy-options")


def test_user_in_no_group_sees_why(setup):
    html, form = render(setup, [])
    assert "you are in no launch group" in " ".join("".join(form.text).split())
    assert form.find("input") == [] and form.find("select") == []


# ---- user options through apply_options ----------------------------------------------------

GROUPS_ALLOWED = "your groups: data-science, students"
LONG = "m" * 100_000

# id, REST user_options, form data (None: a form cannot post it), field, what is allowed
BAD_OPTIONS = [
    ("unknown-group", {"launch_group": "nope"}, "form", "launch_group", GROUPS_ALLOWED),
    ("group-not-mine", {"launch_group": "admins"}, "form", "launch_group", GROUPS_ALLOWED),
    (
        "group-html",
        {"launch_group": "<script>alert(1)</script>"},
        "form",
        "launch_group",
        GROUPS_ALLOWED,
    ),
    ("group-case", {"launch_group": "Students"}, "form", "launch_group", GROUPS_ALLOWED),
    ("group-list", {"launch_group": ["students"]}, None, "launch_group", GROUPS_ALLOWED),
    (
        "group-posted-twice",
        {"launch_group": ["students", "data-science"]},
        "form",
        "launch_group",
        GROUPS_ALLOWED,
    ),
    ("group-dict", {"launch_group": {"name": "students"}}, None, "launch_group", GROUPS_ALLOWED),
    ("group-null", {"launch_group": None}, None, "launch_group", GROUPS_ALLOWED),
    ("group-number", {"launch_group": 1}, None, "launch_group", GROUPS_ALLOWED),
    (
        "unknown-config",
        {"software_config": "tpu"},
        "form",
        "software_config",
        "group 'data-science' allows: cpu, gpu",
    ),
    (
        "config-not-in-group",
        {"launch_group": "students", "software_config": "gpu"},
        "form",
        "software_config",
        "group 'students' allows: cpu",
    ),
    (
        "config-of-group-not-mine",
        {"software_config": "secret"},
        "form",
        "software_config",
        "group 'data-science' allows: cpu, gpu",
    ),
    ("config-null", {"software_config": None}, None, "software_config", "allows: cpu, gpu"),
    ("config-list", {"software_config": ["cpu"]}, None, "software_config", "allows: cpu, gpu"),
    (
        "config-cyrillic",
        {"software_config": "\u0441pu"},
        "form",
        "software_config",
        "allows: cpu, gpu",
    ),
    (
        "type-not-in-config",
        {"software_config": "gpu", "instance_type": "m4.large"},
        "form",
        "instance_type",
        "'gpu' in group 'data-science' allows: p2.xlarge, g3.4xlarge",
    ),
    (
        "type-excluded-by-group",
        {"instance_type": "r4.large"},
        "form",
        "instance_type",
        "'cpu' in group 'data-science' allows: m4.large, t2.nano, m3.medium, z9.large",
    ),
    (
        "type-unknown",
        {"instance_type": "m99.huge"},
        "form",
        "instance_type",
        "allows: m4.large, t2.nano",
    ),
    (
        "type-zero-width-space",
        {"instance_type": "m4.large\u200b"},
        "form",
        "instance_type",
        "allows: m4.large, t2.nano",
    ),
    (
        "type-fullwidth",
        {"instance_type": "m\uff14.large"},
        "form",
        "instance_type",
        "allows: m4.large, t2.nano",
    ),
    (
        "type-very-long",
        {"instance_type": LONG},
        "form",
        "instance_type",
        "allows: m4.large, t2.nano",
    ),
    ("type-dict", {"instance_type": {"$ne": ""}}, None, "instance_type", "allows: m4.large"),
    ("type-number", {"instance_type": 4}, None, "instance_type", "allows: m4.large"),
    ("type-null", {"instance_type": None}, None, "instance_type", "allows: m4.large"),
    (
        "volume-text",
        {"volume_size": "abc"},
        "form",
        "volume_size",
        "a whole number of GiB from 10 to 500",
    ),
    (
        "volume-fraction",
        {"volume_size": 1.5},
        "form",
        "volume_size",
        "a whole number of GiB from 10 to 500",
    ),
    (
        "volume-float-whole",
        {"volume_size": 100.0},
        "form",
        "volume_size",
        "a whole number of GiB from 10 to 500",
    ),
    (
        "volume-true",
        {"volume_size": True},
        "form",
        "volume_size",
        "a whole number of GiB from 10 to 500",
    ),
    ("volume-negative", {"volume_size": -1}, "form", "volume_size", "from 10 to 500 GiB"),
    ("volume-zero", {"volume_size": 0}, "form", "volume_size", "from 10 to 500 GiB"),
    ("volume-below-min", {"volume_size": 9}, "form", "volume_size", "from 10 to 500 GiB"),
    ("volume-above-max", {"volume_size": 501}, "form", "volume_size", "from 10 to 500 GiB"),
    ("volume-huge", {"volume_size": 10**30}, "form", "volume_size", "from 10 to 500"),
    (
        "volume-fullwidth-digits",
        {"volume_size": "\uff11\uff10\uff10"},
        "form",
        "volume_size",
        "a whole number of GiB from 10 to 500",
    ),
    (
        "volume-exponent",
        {"volume_size": "1e2"},
        "form",
        "volume_size",
        "a whole number of GiB from 10 to 500",
    ),
    ("volume-list", {"volume_size": [100, 200]}, "form", "volume_size", "a whole number of GiB"),
    (
        "volume-without-volume",
        {"software_config": "gpu", "volume_size": 100},
        "form",
        "volume_size",
        "'gpu' has no extra volume; leave it out",
    ),
    (
        "unexpected-key",
        {"image": "evil/image"},
        None,
        "user_options",
        "allowed keys: launch_group, software_config, instance_type, volume_size",
    ),
    (
        "unexpected-keys",
        {"image": "x", "cmd": "y", "launch_group": "students"},
        None,
        "user_options",
        "allowed keys: launch_group",
    ),
    ("not-an-object", ["launch_group", "students"], None, "user_options", "expected a JSON object"),
    ("string-body", "students", None, "user_options", "expected a JSON object"),
]


def logged(error):
    """What the hub logs for ``error`` (tornado fills ``log_message`` with its args)."""
    return error.log_message % error.args if error.args else error.log_message


def check_400(error, field, allowed, value):
    assert isinstance(error, HTTPError)
    assert error.status_code == 400
    # JupyterHub shows this on the spawn page and in the REST answer
    message = error.jupyterhub_message
    assert message.startswith(f"Invalid server options: {field}: ")
    assert allowed in message
    # The value is shown, cut short so that a huge value cannot flood logs and pages.
    assert repr(value)[:40] in message
    assert len(message) < 400
    assert logged(error) == message  # and logs it


@pytest.mark.parametrize(
    "options, field, allowed",
    [case[1:2] + case[3:] for case in BAD_OPTIONS],
    ids=[case[0] for case in BAD_OPTIONS],
)
def test_rest_options_rejected(setup, options, field, allowed):
    with pytest.raises(HTTPError) as info:
        apply(setup, options)
    rejected = options.get(field) if isinstance(options, dict) else options
    if field == "user_options" and isinstance(options, dict):
        unknown = sorted(set(options) - {"launch_group"})
        rejected = unknown[0] if len(unknown) == 1 else unknown
    check_400(info.value, field, allowed, rejected)


FORM_CASES = [case for case in BAD_OPTIONS if case[2] == "form"]


@pytest.mark.parametrize(
    "options, field, allowed",
    [case[1:2] + case[3:] for case in FORM_CASES],
    ids=[case[0] for case in FORM_CASES],
)
def test_form_options_rejected(setup, options, field, allowed):
    posted = options_from_form(as_form(options))
    with pytest.raises(HTTPError) as info:
        apply(setup, posted)
    check_400(info.value, field, allowed, posted[field])


def test_no_launch_group_at_all(setup):
    with pytest.raises(HTTPError) as info:
        apply(setup, {}, user_group_names=["nobody"])
    assert info.value.status_code == 400
    assert "launch_group: None is not allowed; you are in no launch group" in (
        info.value.jupyterhub_message
    )


@pytest.mark.skipif(jupyterhub.version_info < (6,), reason="SpawnException came in JupyterHub 6")
def test_rejection_is_a_spawn_exception(setup):
    from jupyterhub.spawner import SpawnException

    with pytest.raises(SpawnException) as info:
        apply(setup, {"launch_group": "nope"})
    assert info.value.reason == "invalid-options"
    assert "launch_group: 'nope'" in info.value.message


@pytest.mark.parametrize(
    "options",
    [{}, None, options_from_form({"_xsrf": ["t"]})],
    ids=["empty", "none", "empty-form"],
)
def test_empty_options_take_first_group_in_configuration_order(setup, options):
    assert apply(setup, options).as_user_options() == DEFAULTS


def test_defaults_skip_an_excluded_default_type(setup):
    choice = apply(setup, {}, user_group_names=["budget"])
    assert (choice.group.name, choice.instance_type) == ("budget", "m4.large")


def test_default_group_for_users_in_none(setup):
    choice = apply(setup, {}, user_group_names=[], default_group="students")
    assert choice.group.name == "students"
    with pytest.raises(HTTPError, match="your groups: students"):
        apply(
            setup, {"launch_group": "data-science"}, user_group_names=[], default_group="students"
        )


@pytest.mark.parametrize("saved", SAVED.values(), ids=SAVED.keys())
def test_saved_options_are_reused(setup, saved):
    assert apply(setup, saved).as_user_options() == saved
    # The second launch with the same (persisted) options resolves the same way.
    assert apply(setup, apply(setup, saved).as_user_options()).as_user_options() == saved


@pytest.mark.parametrize(
    "options",
    [
        {"software_config": "gpu", "instance_type": "g3.4xlarge"},
        {"software_config": "gpu", "volume_size": None},
        {"launch_group": "students", "instance_type": "r4.large", "volume_size": 10},
        {"volume_size": 500},
    ],
    ids=["gpu", "gpu-null-volume", "students-r4-min-volume", "max-volume"],
)
def test_allowed_options(setup, options):
    choice = apply(setup, options)
    for key, value in options.items():
        if value is not None:
            assert choice.as_user_options()[key] == value


# --- options_from_form and options_from_query: shape only, never raise ---


def test_form_reads_the_chosen_block_only():
    form = {
        "_xsrf": ["2|abc"],
        "launch_group": ["students"],
        "software_config:data-science": ["gpu"],
        "instance_type:data-science:gpu": ["p2.xlarge"],
        "software_config:students": ["cpu"],
        "instance_type:students:cpu": ["c4.xlarge"],
        "volume_size:students:cpu": ["42"],
        "instance_type:data-science:cpu": ["t2.micro"],
        "volume_size:data-science:cpu": ["100"],
    }
    assert options_from_form(form) == {
        "launch_group": "students",
        "software_config": "cpu",
        "instance_type": "c4.xlarge",
        "volume_size": 42,
    }


def test_form_plain_names_and_empty_fields():
    assert options_from_form(
        {"software_config": ["gpu"], "instance_type": ["p2.xlarge"], "volume_size": [" 7 "]}
    ) == {"software_config": "gpu", "instance_type": "p2.xlarge", "volume_size": 7}
    # Empty fields are left out, so defaults apply.
    assert (
        options_from_form(
            {"launch_group": [""], "software_config": ["  "], "volume_size": [""], "_xsrf": ["t"]}
        )
        == {}
    )
    # A scoped field wins over a plain one.
    assert options_from_form(
        {"launch_group": ["g"], "software_config:g": ["a"], "software_config": ["b"]}
    ) == {"launch_group": "g", "software_config": "a"}


@pytest.mark.parametrize(
    "formdata, expected",
    [
        (None, {}),
        (["launch_group"], {}),
        ({"launch_group": "students"}, {"launch_group": "students"}),
        ({"launch_group": [b"students"]}, {}),
        ({"launch_group": 5}, {}),
        ({"volume_size": ["9" * 40]}, {"volume_size": "9" * 40}),
        ({"volume_size": ["-3"]}, {"volume_size": -3}),
        ({"volume_size": ["0x10"]}, {"volume_size": "0x10"}),
        ({"volume_size_file": [{"body": b"x"}]}, {}),
        (
            {"launch_group": ["a:b"], "software_config:a:b": ["c"]},
            {"launch_group": "a:b", "software_config": "c"},
        ),
    ],
    ids=[
        "none",
        "list",
        "bare-string",
        "bytes",
        "number",
        "many-digits",
        "negative",
        "hex",
        "file-upload",
        "colon-in-group",
    ],
)
def test_form_shapes_never_raise(formdata, expected):
    assert options_from_form(formdata) == expected


def test_query_arguments(setup):
    # JupyterHub strips "opt-" and passes lists of strings.
    query = {"software_config": ["gpu"], "instance_type": ["g3.4xlarge"], "volume_size": [""]}
    options = options_from_query(query)
    assert options == {"software_config": "gpu", "instance_type": "g3.4xlarge"}
    assert apply(setup, options).instance_type == "g3.4xlarge"
    assert options_from_query({"volume_size": ["200"]}) == {"volume_size": 200}
    assert options_from_query("junk") == {}


def test_query_misspelt_option_is_rejected(setup):
    options = options_from_query({"instance_typ": ["m4.large"]})
    with pytest.raises(HTTPError) as info:
        apply(setup, options)
    check_400(info.value, "user_options", "allowed keys: launch_group", "instance_typ")


# ---- this month's spend and the budget line -------------------------------------------


TYPES = ("t2.nano", "m3.medium", "m4.large", "r4.large", "z9.large")


def spend_of(setup, group="students", amount="1.00", used="0.40", reserved="0", kind="group"):
    name = group if kind == "group" else "alice"
    budget = costs.Budget(kind, name, group, Decimal(amount))
    return Spend(
        month=costs.month_of(datetime(2026, 11, 15, tzinfo=UTC)),
        total=Decimal("12.345"),
        unknown=1,
        budgets={group: [(budget, Decimal(used), Decimal(reserved))]},
        gib_month_usd=Decimal("0.08"),
    )


def budget_text(html):
    form = Form(html)
    return " ".join("".join(form.text).split())


def test_spend_and_budget_left_are_shown(setup):
    html, form = render(setup, ["students"], spend=spend_of(setup))
    text = budget_text(html)
    assert "Your spend in 2026-11: $12.35 plus 1 server(s) whose price is unknown." in text
    assert "The students group's monthly budget: $1.00; $0.40 spent this month" in text
    assert "$0.60 left" in text and "reset on 2026-12-01 00:00 UTC" in text
    assert not form.find("div", class_="alert alert-danger py-2 mliy-budget")


def test_choices_whose_first_hour_goes_over_are_marked(setup):
    # $0.10 left; cpu's volume defaults to 100 GiB: 100 * 0.08 / 720 = $0.0111 an hour
    html, form = render(setup, ["students"], spend=spend_of(setup, used="0.90"))
    assert "$0.10 left" in budget_text(html)
    flagged = {t: "over budget" in form.row("mliy-g0-c0", t)[-1] for t in TYPES}
    assert flagged == {
        "t2.nano": False,  # $0.0059 + $0.0111
        "m3.medium": False,  # $0.067 + $0.0111
        "m4.large": True,  # $0.108 + $0.0111
        "r4.large": True,  # $0.133 + $0.0111
        "z9.large": True,  # no price: it cannot be checked, so a start is refused
    }


def test_the_volume_asked_for_counts_in_the_first_hour(setup):
    # 500 GiB is $0.0556 an hour: m3.medium ($0.067) no longer fits in $0.10
    saved = {"launch_group": "students", "software_config": "cpu", "volume_size": 500}
    _, form = render(setup, ["students"], saved=saved, spend=spend_of(setup, used="0.90"))
    assert "over budget" in form.row("mliy-g0-c0", "m3.medium")[-1]
    assert "over budget" not in form.row("mliy-g0-c0", "t2.nano")[-1]


def test_a_reservation_counts_against_what_is_left(setup):
    html, form = render(setup, ["students"], spend=spend_of(setup, reserved="0.55"))
    assert "$0.05 left" in budget_text(html)
    assert "over budget" in form.row("mliy-g0-c0", "m4.large")[-1]
    assert "over budget" not in form.row("mliy-g0-c0", "t2.nano")[-1]


def test_a_spent_budget_says_starts_are_refused_until_it_resets(setup):
    html, form = render(setup, ["students"], spend=spend_of(setup, used="1.20"))
    text = budget_text(html)
    assert "$0.00 left" in text  # never a negative amount left
    assert "The budget is spent: a start is refused until it resets on 2026-12-01" in text
    assert form.find("div", class_="alert alert-danger py-2 mliy-budget", role="status")
    for t in ("t2.nano", "m4.large", "m3.medium"):
        assert "over budget" in form.row("mliy-g0-c0", t)[-1]


def test_the_budget_line_is_only_in_its_own_group(setup):
    html, form = render(setup, ["students", "data-science"], spend=spend_of(setup, kind="user"))
    text = budget_text(html)
    assert text.count("monthly budget") == 1 and "Alice's monthly budget in students" in text
    assert "over budget" in form.row("mliy-g0-c0", "z9.large")[-1]  # students
    # data-science has no budget: nothing is flagged, not even an unknown price
    assert "over budget" not in form.row("mliy-g1-c0", "z9.large")[-1]


def test_no_spend_no_money_line(setup):
    html, _ = render(setup, ["students"])
    assert "Your spend" not in html and "mliy-budget" not in html
