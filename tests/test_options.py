"""User options, from REST bodies, form posts and query arguments, through the one check.

Every hostile value must end as an HTTP 400 whose message names the field, shows the
value and says what is allowed; ``apply_options`` touches nothing else, so nothing is
launched (the spawner-level test asserts that no AWS call is made).
"""

from types import SimpleNamespace

import pytest
from tornado.web import HTTPError

from mliy_spawner.configs import parse_launch_groups, parse_software_configs
from mliy_spawner.form import apply_options, options_from_form, options_from_query

SPAWNER = SimpleNamespace(_log_name="alice")
MY_GROUPS = ["students", "data-science"]  # not in configuration order, on purpose


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
                "instance_types": ["m4.large", "t2.micro", "c4.xlarge"],
                "default_instance_type": "t2.micro",
                "volume": {"default_size": 100, "min_size": 10, "max_size": 500},
            },
            "gpu": {**common, "instance_types": ["p2.xlarge", "g3.4xlarge"]},
            "secret": {**common, "instance_types": ["x1.32xlarge"]},
        }
    )
    sg = ["sg-0123abcd"]
    groups = parse_launch_groups(
        {
            "data-science": {
                "security_group_ids": sg,
                "software_configs": ["cpu", "gpu"],
                "excluded_instance_types": ["c4.xlarge"],
            },
            "students": {"security_group_ids": sg, "software_configs": ["cpu"]},
            "budget": {
                "security_group_ids": sg,
                "software_configs": ["cpu"],
                "excluded_instance_types": ["t2.micro"],
            },
            "admins": {"security_group_ids": sg, "software_configs": ["secret"]},
        },
        configs,
    )
    return SimpleNamespace(groups=groups, configs=configs)


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


GROUPS_ALLOWED = "your groups: data-science, students"
LONG = "m" * 100_000

# id, REST user_options, form data (None: a form cannot post it), field, what is allowed
HOSTILE = [
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
        {"instance_type": "c4.xlarge"},
        "form",
        "instance_type",
        "'cpu' in group 'data-science' allows: m4.large, t2.micro",
    ),
    (
        "type-unknown",
        {"instance_type": "m99.huge"},
        "form",
        "instance_type",
        "allows: m4.large, t2.micro",
    ),
    (
        "type-zero-width-space",
        {"instance_type": "m4.large\u200b"},
        "form",
        "instance_type",
        "allows: m4.large, t2.micro",
    ),
    (
        "type-fullwidth",
        {"instance_type": "m\uff14.large"},
        "form",
        "instance_type",
        "allows: m4.large, t2.micro",
    ),
    (
        "type-very-long",
        {"instance_type": LONG},
        "form",
        "instance_type",
        "allows: m4.large, t2.micro",
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


def check_400(error, field, allowed, value):
    assert isinstance(error, HTTPError)
    assert error.status_code == 400
    message = error.log_message
    assert message.startswith(f"Invalid server options: {field}: ")
    assert allowed in message
    # The value is shown, cut short so that a huge value cannot flood logs and pages.
    assert repr(value)[:40] in message
    assert len(message) < 400
    # JupyterHub shows this on the spawn page and in the REST answer.
    assert error.jupyterhub_message == message


@pytest.mark.parametrize(
    "options, field, allowed",
    [case[1:2] + case[3:] for case in HOSTILE],
    ids=[case[0] for case in HOSTILE],
)
def test_rest_options_rejected(setup, options, field, allowed):
    with pytest.raises(HTTPError) as info:
        apply(setup, options)
    rejected = options.get(field) if isinstance(options, dict) else options
    if field == "user_options" and isinstance(options, dict):
        unknown = sorted(set(options) - {"launch_group"})
        rejected = unknown[0] if len(unknown) == 1 else unknown
    check_400(info.value, field, allowed, rejected)


FORM_CASES = [case for case in HOSTILE if case[2] == "form"]


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
        info.value.log_message
    )


def test_rejection_is_a_spawn_exception(setup):
    from jupyterhub.spawner import SpawnException

    with pytest.raises(SpawnException) as info:
        apply(setup, {"launch_group": "nope"})
    assert info.value.reason == "invalid-options"
    assert "launch_group: 'nope'" in info.value.message


def test_empty_options_take_first_group_in_configuration_order(setup):
    choice = apply(setup, {})
    assert choice.as_user_options() == {
        "launch_group": "data-science",
        "software_config": "cpu",
        "instance_type": "t2.micro",
        "volume_size": 100,
    }
    assert apply(setup, None).as_user_options() == choice.as_user_options()


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


def test_saved_options_are_reused(setup):
    saved = {
        "launch_group": "students",
        "software_config": "cpu",
        "instance_type": "c4.xlarge",
        "volume_size": 250,
    }
    assert apply(setup, saved).as_user_options() == saved
    # The second launch with the same (persisted) options resolves the same way.
    assert apply(setup, apply(setup, saved).as_user_options()).as_user_options() == saved


@pytest.mark.parametrize(
    "options",
    [
        {"software_config": "gpu", "instance_type": "g3.4xlarge"},
        {"software_config": "gpu", "volume_size": None},
        {"launch_group": "students", "instance_type": "c4.xlarge", "volume_size": 10},
        {"volume_size": 500},
    ],
    ids=["gpu", "gpu-null-volume", "students-c4-min-volume", "max-volume"],
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


def test_empty_form_gives_defaults(setup):
    assert apply(setup, options_from_form({"_xsrf": ["t"]})).as_user_options() == {
        "launch_group": "data-science",
        "software_config": "cpu",
        "instance_type": "t2.micro",
        "volume_size": 100,
    }


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
