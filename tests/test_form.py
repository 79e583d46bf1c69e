"""The options form's HTML: structure, prices from the shipped catalog, pre-selection, escaping.

The HTML is parsed with ``html.parser``; tests assert on elements and their attributes,
and on what a browser without script would post (see :class:`Form`). A real browser runs
the inline script in the end-to-end tests.
"""

from html.parser import HTMLParser
from types import SimpleNamespace

import pytest

from mliy_spawner.configs import parse_launch_groups, parse_software_configs, resolve_options
from mliy_spawner.form import options_from_form, render_form
from mliy_spawner.pricing import PriceCatalog, get_catalog

HOSTILE = ["<script>alert(1)</script>", '"onmouseover=alert(1) x="', "{{7*7}}"]
RAW_MARKERS = ["<script>alert(1)", '"onmouseover=', "'onmouseover="]


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
            "gpu": {**common, "display_name": "GPU", "instance_types": ["p2.xlarge"]},
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
        "instance_type:data-science:gpu": ["p2.xlarge"],
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
    assert options_from_form(form.posted()) == {
        "launch_group": "data-science",
        "software_config": "cpu",
        "instance_type": "t2.nano",
        "volume_size": 100,
    }


@pytest.mark.parametrize(
    "saved",
    [
        {
            "launch_group": "students",
            "software_config": "cpu",
            "instance_type": "r4.large",
            "volume_size": 321,
        },
        {"launch_group": "data-science", "software_config": "gpu", "instance_type": "p2.xlarge"},
        {
            "launch_group": "data-science",
            "software_config": "cpu",
            "instance_type": "m3.medium",
            "volume_size": 10,
        },
    ],
    ids=["students-r4", "gpu", "cpu-m3"],
)
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


@pytest.mark.parametrize("value", HOSTILE, ids=["script", "attribute", "template"])
@pytest.mark.parametrize(
    "field", ["launch_group", "software_config", "instance_type", "volume_size"]
)
def test_hostile_saved_options_never_echoed(setup, field, value):
    html, form = render(setup, ["data-science", "students"], saved={field: value}, user_name=value)
    for marker in RAW_MARKERS:
        assert marker not in html
    assert value not in html
    assert options_from_form(form.posted())["instance_type"] == "t2.nano"


@pytest.mark.parametrize("value", HOSTILE, ids=["script", "attribute", "template"])
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
            for value in HOSTILE
        },
        configs,
    )
    html = render_form(
        user_name="alice",
        available_groups=list(groups.values()),
        configs=configs,
        catalog=setup.catalog,
        region="us-east-1",
        saved_options={"launch_group": HOSTILE[1]},
    )
    for marker in RAW_MARKERS:
        assert marker not in html
    assert "CPU <b>" not in html and "CPU &lt;b&gt;notebook&lt;/b&gt;" in html
    form = Form(html)
    assert [v for v, _, _ in form.options["launch_group"]] == HOSTILE
    assert [v for v, chosen, _ in form.options["launch_group"] if chosen] == [HOSTILE[1]]
    # Each group's field names carry its name intact, so the post reads back.
    assert options_from_form(form.posted())["launch_group"] == HOSTILE[1]
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
