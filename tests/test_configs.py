"""Parsing ``software_configs`` and ``launch_groups``: good values parse, bad ones name the key."""

import json

import pytest

from mliy_spawner.configs import (
    ConfigError,
    LaunchChoice,
    OptionsError,
    check_replacement_tokens,
    groups_for_user,
    parse_launch_groups,
    parse_software_configs,
    resolve_options,
)


@pytest.fixture
def files(tmp_path):
    template = tmp_path / "stack.yaml"
    template.write_text("Resources: {}\n")
    user_data = tmp_path / "boot.sh"
    user_data.write_text("#!/bin/bash\n")
    return str(template), str(user_data)


def good_configs(files):
    template, user_data = files
    return {
        "cpu": {
            "display_name": "CPU notebook",
            "description": "<b>Python</b> and R",
            "ami_id": "ami-0123abcd",
            "template": template,
            "user_data": user_data,
            "params": {"ProxyUrl": "http://proxy:3128", "Threads": 4},
            "instance_types": ["m4.large", "t2.micro", "c4.xlarge"],
            "default_instance_type": "t2.micro",
            "volume": {"default_size": 100, "max_size": 500, "min_size": 10},
        },
        "gpu": {
            "ami_id": "ami-0123456789abcdef0",
            "template": template,
            "user_data": user_data,
            "instance_types": ["p2.xlarge"],
        },
    }


def good_groups():
    return {
        "data-science": {
            "key_name": "mliy-key",
            "instance_profile": "mliy-profile",
            "security_group_ids": ["sg-0123abcd"],
            "software_configs": ["cpu", "gpu"],
            "excluded_instance_types": ["c4.xlarge"],
        },
        "students": {"security_group_ids": ["sg-0123abcd"], "software_configs": ["cpu"]},
    }


def test_good_configs_parse(files):
    configs = parse_software_configs(good_configs(files))
    cpu, gpu = configs["cpu"], configs["gpu"]
    assert cpu.display_name == "CPU notebook"
    assert cpu.instance_types == ("m4.large", "t2.micro", "c4.xlarge")
    assert cpu.default_instance_type == "t2.micro"
    assert cpu.params == {"ProxyUrl": "http://proxy:3128", "Threads": "4"}
    assert (cpu.volume.device, cpu.volume.min_size, cpu.volume.default_size) == (
        "/dev/sdf",
        10,
        100,
    )
    assert cpu.volume.max_size == 500
    # Defaults: the slug as display name, the first type, no volume.
    assert (gpu.display_name, gpu.default_instance_type, gpu.volume) == ("gpu", "p2.xlarge", None)


def test_good_groups_parse(files):
    configs = parse_software_configs(good_configs(files))
    groups = parse_launch_groups(good_groups(), configs)
    ds = groups["data-science"]
    assert ds.software_configs == ("cpu", "gpu")
    assert ds.security_group_ids == ("sg-0123abcd",)
    assert ds.instance_types(configs["cpu"]) == ["m4.large", "t2.micro"]
    assert groups["students"].instance_types(configs["cpu"]) == [
        "m4.large",
        "t2.micro",
        "c4.xlarge",
    ]


def test_groups_for_user_keeps_configuration_order(files):
    configs = parse_software_configs(good_configs(files))
    groups = parse_launch_groups(good_groups(), configs)
    mine = groups_for_user(groups, ["students", "other", "data-science"])
    assert [g.name for g in mine] == ["data-science", "students"]
    assert groups_for_user(groups, ["other"]) == []
    assert [g.name for g in groups_for_user(groups, ["other"], "students")] == ["students"]


def test_choice_as_user_options(files):
    configs = parse_software_configs(good_configs(files))
    groups = parse_launch_groups(good_groups(), configs)
    choice = LaunchChoice(groups["students"], configs["cpu"], "m4.large", 20)
    assert choice.as_user_options() == {
        "launch_group": "students",
        "software_config": "cpu",
        "instance_type": "m4.large",
        "volume_size": 20,
    }
    no_volume = LaunchChoice(groups["data-science"], configs["gpu"], "p2.xlarge", None)
    assert "volume_size" not in no_volume.as_user_options()


def _set(path, value):
    """A change to the good configs: set ``value`` at ``path`` (a tuple of keys)."""

    def change(raw):
        target = raw
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return change


def _drop(path):
    def change(raw):
        target = raw
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return change


BAD_CONFIGS = [
    ("not-a-dict", _set(("cpu",), ["ami-0123abcd"]), "['cpu']: expected a dict"),
    ("bad-slug-upper", lambda raw: raw.update({"CPU": raw.pop("cpu")}), "slug must match"),
    ("bad-slug-space", lambda raw: raw.update({"my cpu": raw.pop("cpu")}), "slug must match"),
    ("bad-slug-newline", lambda raw: raw.update({"cpu\n": raw.pop("cpu")}), "slug must match"),
    (
        "unknown-key",
        _set(("cpu", "instance_type"), "m4.large"),
        "['cpu']: unknown keys ['instance_type']",
    ),
    ("missing-ami", _drop(("cpu", "ami_id")), "['cpu']: missing required key 'ami_id'"),
    ("bad-ami", _set(("cpu", "ami_id"), "ami-XYZ"), "['cpu'].ami_id: 'ami-XYZ' is not an AMI"),
    ("ami-trailing-newline", _set(("cpu", "ami_id"), "ami-0123abcd\n"), "['cpu'].ami_id"),
    ("ami-not-string", _set(("cpu", "ami_id"), 123), "['cpu'].ami_id: expected str, got 123"),
    (
        "no-instance-types",
        _set(("cpu", "instance_types"), []),
        "['cpu'].instance_types: must list at least one",
    ),
    (
        "instance-types-string",
        _set(("cpu", "instance_types"), "m4.large"),
        "['cpu'].instance_types: expected list/tuple",
    ),
    (
        "bad-instance-type",
        _set(("cpu", "instance_types"), ["m4.large", "M4 Large"]),
        "['cpu'].instance_types: invalid entry 'M4 Large'",
    ),
    (
        "instance-type-not-string",
        _set(("cpu", "instance_types"), ["m4.large", 4]),
        "['cpu'].instance_types: invalid entry 4",
    ),
    (
        "default-type-not-listed",
        _set(("cpu", "default_instance_type"), "p2.xlarge"),
        "['cpu'].default_instance_type: 'p2.xlarge' is not in instance_types",
    ),
    ("params-not-dict", _set(("cpu", "params"), ["a"]), "['cpu'].params: expected dict"),
    ("params-value-list", _set(("cpu", "params"), {"Token": ["x"]}), "['cpu'].params['Token']"),
    (
        "params-value-bool",
        _set(("cpu", "params"), {"Flag": True}),
        "['cpu'].params['Flag']: True is not allowed; values must be strings or numbers",
    ),
    ("display-name-not-string", _set(("cpu", "display_name"), 5), "['cpu'].display_name"),
    (
        "template-missing",
        _set(("cpu", "template"), "/nonexistent/stack.yaml"),
        "['cpu'].template: cannot read '/nonexistent/stack.yaml'",
    ),
    (
        "user-data-missing",
        _set(("cpu", "user_data"), "/nonexistent/boot.sh"),
        "['cpu'].user_data: cannot read",
    ),
    ("volume-not-dict", _set(("cpu", "volume"), 100), "['cpu'].volume: expected a dict"),
    ("volume-unknown-key", _set(("cpu", "volume", "size"), 5), "['cpu'].volume: unknown keys"),
    (
        "volume-missing-max",
        _drop(("cpu", "volume", "max_size")),
        "['cpu'].volume: missing required key 'max_size'",
    ),
    (
        "volume-default-above-max",
        _set(("cpu", "volume", "default_size"), 600),
        "['cpu'].volume: need 1 <= min_size <= default_size <= max_size",
    ),
    (
        "volume-default-below-min",
        _set(("cpu", "volume", "default_size"), 5),
        "['cpu'].volume: need 1 <= min_size",
    ),
    ("volume-min-zero", _set(("cpu", "volume", "min_size"), 0), "['cpu'].volume: need 1 <="),
    ("volume-max-too-big", _set(("cpu", "volume", "max_size"), 20000), "max_size <= 16384 GiB"),
    (
        "volume-size-string",
        _set(("cpu", "volume", "max_size"), "500"),
        "['cpu'].volume.max_size: expected int, got '500'",
    ),
    (
        "volume-size-bool",
        _set(("cpu", "volume", "default_size"), True),
        "['cpu'].volume.default_size: expected int, got True",
    ),
    (
        "volume-size-float",
        _set(("cpu", "volume", "default_size"), 100.0),
        "['cpu'].volume.default_size: expected int",
    ),
    (
        "volume-bad-device",
        _set(("cpu", "volume", "device"), "/dev/nvme1n1"),
        "['cpu'].volume.device: '/dev/nvme1n1' is not a device",
    ),
]


@pytest.mark.parametrize(
    "change, message", [case[1:] for case in BAD_CONFIGS], ids=[case[0] for case in BAD_CONFIGS]
)
def test_bad_software_configs(files, change, message):
    raw = good_configs(files)
    change(raw)
    with pytest.raises(ConfigError) as info:
        parse_software_configs(raw)
    assert str(info.value).startswith("MLiySpawner.software_configs")
    assert message in str(info.value)


def test_software_configs_must_be_a_dict():
    with pytest.raises(ConfigError, match=r"MLiySpawner.software_configs: expected a dict"):
        parse_software_configs([{"ami_id": "ami-0123abcd"}])


BAD_GROUPS = [
    ("entry-not-dict", _set(("students",), ["cpu"]), "['students']: expected a dict"),
    (
        "empty-name",
        lambda raw: raw.update({"": raw.pop("students")}),
        "['']: group names must be non-empty",
    ),
    (
        "unknown-key",
        _set(("students", "configs"), ["cpu"]),
        "['students']: unknown keys ['configs']",
    ),
    (
        "missing-configs",
        _drop(("students", "software_configs")),
        "['students']: missing required key 'software_configs'",
    ),
    (
        "no-configs",
        _set(("students", "software_configs"), []),
        "['students'].software_configs: must list at least one",
    ),
    (
        "unknown-config",
        _set(("students", "software_configs"), ["cpu", "tpu"]),
        "['students'].software_configs: unknown ['tpu']; defined: ['cpu', 'gpu']",
    ),
    (
        "configs-string",
        _set(("students", "software_configs"), "cpu"),
        "['students'].software_configs: expected list/tuple",
    ),
    (
        "missing-security-groups",
        _drop(("students", "security_group_ids")),
        "['students']: missing required key 'security_group_ids'",
    ),
    (
        "no-security-groups",
        _set(("students", "security_group_ids"), []),
        "['students'].security_group_ids: must list at least one security group id",
    ),
    (
        "bad-security-group",
        _set(("students", "security_group_ids"), ["default"]),
        "['students'].security_group_ids: invalid entry 'default'",
    ),
    (
        "excludes-every-type",
        _set(("data-science", "excluded_instance_types"), ["p2.xlarge"]),
        "['data-science'].excluded_instance_types: excludes every instance type of 'gpu'",
    ),
    (
        "excluded-not-list",
        _set(("students", "excluded_instance_types"), "m4.large"),
        "['students'].excluded_instance_types: expected list/tuple",
    ),
    ("key-name-not-string", _set(("students", "key_name"), ["k"]), "['students'].key_name"),
]


@pytest.mark.parametrize(
    "change, message", [case[1:] for case in BAD_GROUPS], ids=[case[0] for case in BAD_GROUPS]
)
def test_bad_launch_groups(files, change, message):
    configs = parse_software_configs(good_configs(files))
    raw = good_groups()
    change(raw)
    with pytest.raises(ConfigError) as info:
        parse_launch_groups(raw, configs)
    assert str(info.value).startswith("MLiySpawner.launch_groups")
    assert message in str(info.value)


def test_launch_groups_must_be_a_dict(files):
    configs = parse_software_configs(good_configs(files))
    with pytest.raises(ConfigError, match=r"MLiySpawner.launch_groups: expected a dict"):
        parse_launch_groups(["students"], configs)


def _resume_setup():
    configs = parse_software_configs(
        {
            "py": {
                "ami_id": "ami-12345678",
                "instance_types": ["t2.micro", "t2.small"],
                "volume": {"default_size": 10, "max_size": 50},
                "template": __file__,
                "user_data": __file__,
            },
            "r": {
                "ami_id": "ami-12345678",
                "instance_types": ["t2.micro"],
                "template": __file__,
                "user_data": __file__,
            },
        }
    )
    groups = parse_launch_groups(
        {"g": {"security_group_ids": ["sg-12345678"], "software_configs": ["py", "r"]}}, configs
    )
    kept = {
        "launch_group": "g",
        "software_config": "py",
        "instance_type": "t2.micro",
        "volume_size": 20,
    }
    return configs, list(groups.values()), kept


@pytest.mark.parametrize(
    "options, field",
    [({"software_config": "r"}, "software_config"), ({"volume_size": 30}, "volume_size")],
    ids=["other-config", "other-volume"],
)
def test_resume_refuses_what_would_lose_the_disk(options, field):
    configs, groups, kept = _resume_setup()
    with pytest.raises(OptionsError) as e:
        resolve_options(options, groups, configs, kept=kept)
    assert e.value.field == field
    assert "would lose its disk" in str(e.value)


def test_resume_keeps_launch_values_and_allows_another_type():
    configs, groups, kept = _resume_setup()
    assert resolve_options({}, groups, configs, kept=kept).as_user_options() == kept
    choice = resolve_options({"instance_type": "t2.small"}, groups, configs, kept=kept)
    assert (choice.instance_type, choice.volume_size) == ("t2.small", 20)


# --- token values that would end a here-document of the boot script ------------------


@pytest.mark.parametrize(
    "value, delimiter",
    [
        pytest.param("x\nMLIY_PARAM\ntouch /tmp/pwned", "MLIY_PARAM", id="shipped-param"),
        pytest.param("MLIY_PARAM) ; touch /tmp/pwned", "MLIY_PARAM", id="comsub-close"),
        pytest.param("x\nEOF\n", "EOF", id="shipped-unit-file"),
        pytest.param("x\n  CUSTOM_END\n", "CUSTOM_END", id="own-script"),
    ],
)
def test_params_that_end_a_heredoc_are_refused_naming_the_key(files, value, delimiter):
    # the configuration's own script has <<CUSTOM_END; the shipped one's count as well
    raw = good_configs(files)
    with open(files[1], "a") as f:
        f.write("cat <<'CUSTOM_END'\n{{{ProxyUrl}}}\nCUSTOM_END\n")
    raw["cpu"]["params"]["ProxyUrl"] = value
    with pytest.raises(ConfigError) as info:
        parse_software_configs(raw)
    message = str(info.value)
    assert message.startswith("MLiySpawner.software_configs['cpu'].params['ProxyUrl']: ")
    assert repr(delimiter) in message and "pwned" not in message


def test_params_that_end_no_heredoc_parse(files):
    raw = good_configs(files)
    raw["cpu"]["params"]["ProxyUrl"] = "jupyterhub>=5,<7\nsay MLIY_PARAM and EOF"
    assert parse_software_configs(raw)["cpu"].params["ProxyUrl"].endswith("and EOF")


def test_the_spawner_refuses_such_params_at_start(files):
    from traitlets import TraitError
    from traitlets.config import Config

    from mliy_spawner.spawner import MLiySpawner

    c = Config()
    c.MLiySpawner.software_configs = good_configs(files)
    c.MLiySpawner.software_configs["gpu"]["params"] = {"home_mode": "700\nMLIY_PARAM"}
    with pytest.raises(TraitError, match=r"\['gpu'\]\.params\['home_mode'\]: .*'MLIY_PARAM'"):
        MLiySpawner(config=c)


@pytest.mark.parametrize(
    "tokens, key",
    [
        pytest.param({"a": "ok", "b": "x\nMLIY_PARAM\nrm -rf /"}, "b", id="shipped"),
        pytest.param({"a": "\tEOF"}, "a", id="tab-indented"),
        pytest.param({"a": "CUSTOM_END"}, "a", id="a-configured-script"),
    ],
)
def test_replacement_tokens_that_end_a_heredoc_are_refused_naming_the_key(files, tokens, key):
    with open(files[1], "a") as f:
        f.write("cat <<CUSTOM_END\n{{{a}}}\nCUSTOM_END\n")
    configs = parse_software_configs(good_configs(files))
    with pytest.raises(ConfigError) as info:
        check_replacement_tokens(tokens, configs)
    assert str(info.value).startswith(f"MLiySpawner.replacement_tokens[{key!r}]: ")
    assert "rm -rf" not in str(info.value)


def test_replacement_tokens_that_end_no_heredoc_pass(files):
    configs = parse_software_configs(good_configs(files))
    check_replacement_tokens({"a": "x\nthe MLIY_PARAM and EOF mid-line", "b": None}, {})
    check_replacement_tokens({"pip_index_url": "https://pypi.example.com/simple"}, configs)
    with pytest.raises(ConfigError, match="MLiySpawner.replacement_tokens: expected a dict"):
        check_replacement_tokens(["a"], configs)


def test_a_setting_is_parsed_once_per_process_and_a_bad_one_every_time(tmp_path, monkeypatch):
    from mliy_spawner import configs

    script = tmp_path / "boot.sh"
    script.write_text("#!/bin/bash\necho hi\n")
    raw = {"python": {"ami_id": "ami-0123abcd", "instance_types": ["t2.micro"]}}
    raw["python"]["user_data"] = str(script)
    reads = []
    real = configs.parse_software_configs
    monkeypatch.setattr(configs, "parse_software_configs", lambda r: reads.append(r) or real(r))
    configs._parse_json.cache_clear()
    first = configs.parse_software_configs_once(raw)
    again = configs.parse_software_configs_once(json.loads(json.dumps(raw)))  # a copy
    assert again is first and len(reads) == 1
    # not plain JSON (a key that is no string): parsed as it is, and refused
    with pytest.raises(configs.ConfigError):
        configs.parse_software_configs_once({1: raw["python"]})
    bad = {"python": {**raw["python"], "ami_id": "nope"}}
    for _ in range(2):
        with pytest.raises(configs.ConfigError, match="ami_id"):
            configs.parse_software_configs_once(bad)
    assert len(reads) == 4
