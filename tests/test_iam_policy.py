"""docs/iam/*.json: the least-privilege IAM policies, kept equal to what the code and the
template need, so they cannot drift either way.

- The code's AWS operations are read statically: every attribute named like an operation
  of a service the code builds clients for (``client.describe_stacks``, also when passed
  uncalled to ``run_blocking``), every ``get_paginator("...")`` and every
  ``get_waiter("...")`` (a waiter calls its model's operation), in ``mliy_spawner/`` and
  the DNS plugin in ``plugins/`` (shipped as ``mliy_spawner.sample_plugins``). The demo
  (``mliy_spawner/demo``) is left out: it only talks to its moto stand-in on loopback.
- CloudFormation creates the template's resources with the hub's own credentials (the
  code passes no service role), so the hub policy also holds what those resources need:
  for each resource type, the read-only actions its registry handlers declare (create and
  delete, from cfn-lint's copy of the resource schemas) and the mutating actions in
  :data:`TEMPLATE_ACTIONS`, each of which must be among the handlers' declared actions
  or in :data:`EXTRA_TEMPLATE_ACTIONS` with the reason.
- The hub policy allows exactly (code outside Route 53) + (template); the DNS plugin
  policy exactly the plugin's Route 53 calls; the instance policy allows nothing, and
  denies every action of the other two.
"""

import ast
import json
import re
from functools import cache
from pathlib import Path

import botocore.session
import cfnlint.data.schemas
import pytest
from botocore import xform_name
from cfnlint.decode import decode_str

ROOT = Path(__file__).resolve().parent.parent
IAM = ROOT / "docs" / "iam"
TEMPLATE = ROOT / "cloudformation" / "notebook-instance.yaml"
USER_DATA = ROOT / "userdata"
DNS_PLUGIN = "plugins/route53.py"

#: Where the code that runs against real AWS lives (relative to the repository root).
CODE_ROOTS = ("mliy_spawner", "plugins")
#: Left out of the scan: the demo seeds and reads its moto stand-in, never real AWS.
NOT_SCANNED = ("mliy_spawner/demo",)
#: The functions that build clients; their first string argument names the service.
CLIENT_FACTORIES = {"make_client", "shared_client"}

#: Methods named like an AWS operation that are not one: ``{method: receiver pattern}``.
#: A call of that method on any other receiver still counts.
NOT_AWS = {
    # jinja2's Environment.get_template (the service's and the form's page templates)
    "get_template": re.compile(r"templates$|^template_environment\("),
}

#: The mutating actions CloudFormation needs, with the hub's credentials, for each
#: resource type of the template, given the properties the template sets. Each one must
#: be among the resource type's registry handler permissions (or explained below).
TEMPLATE_ACTIONS = {
    "AWS::EC2::Instance": {
        "ec2:RunInstances",
        "ec2:CreateTags",  # the stack's tags go onto the instance
        "ec2:TerminateInstances",  # DeleteStack
        "iam:PassRole",  # IamInstanceProfile
    },
    "AWS::EC2::Volume": {
        "ec2:CreateVolume",
        "ec2:CreateTags",  # the stack's tags go onto the volume
        "ec2:DeleteVolume",  # DeleteStack (DeletionPolicy: Delete)
        # Encrypted, with KmsKeyId when a configuration names a customer-managed key
        "kms:CreateGrant",
        "kms:GenerateDataKeyWithoutPlaintext",
    },
    "AWS::EC2::VolumeAttachment": {"ec2:AttachVolume", "ec2:DetachVolume"},
}

#: Actions the template needs that no registry handler declares, and why.
EXTRA_TEMPLATE_ACTIONS = {
    # parameter type AWS::EC2::Image::Id: CloudFormation checks the AMI exists
    "ec2:DescribeImages": "ImageId parameter validation",
    # EBS with a customer-managed key: EC2 reads the key and decrypts the volume's data
    # key with the caller's permissions when it creates, attaches or starts the volume
    "kms:DescribeKey": "encrypted volume with KmsKeyId",
    "kms:Decrypt": "encrypted volume with KmsKeyId",
}

#: Parameter types whose validation calls AWS with the caller's credentials.
PARAMETER_TYPE_ACTIONS = {"AWS::EC2::Image::Id": {"ec2:DescribeImages"}}

#: A command or library on the instance that would sign AWS requests with its role.
AWS_CLIENT_ON_INSTANCE = re.compile(
    r"(^|[\s;&|(`/])(aws|cfn-signal|cfn-init|cfn-hup)\s|\b(boto3|botocore)\b", re.M
)

#: Actions that authorise no API call of their own (checked when another call runs).
PERMISSION_ONLY = {"iam:PassRole"}

READ_ONLY = re.compile(r"^[a-z0-9-]+:(Describe|List|Get)[A-Za-z]+$")


# ---- what the code calls ------------------------------------------------------------


@cache
def _session():
    return botocore.session.get_session()


@cache
def _model(service):
    return _session().get_service_model(service)


def iam_action(service, operation):
    """The IAM action for a botocore operation: the service's signing name and the
    operation's name (true for every service this project calls)."""
    return f"{_model(service).signing_name}:{operation}"


def _source_files():
    for top in CODE_ROOTS:
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if not rel.startswith(NOT_SCANNED):
                yield rel, path.read_text(encoding="utf-8")


def _first_string(call):
    if call.args and isinstance(call.args[0], ast.Constant):
        value = call.args[0].value
        return value if isinstance(value, str) else None
    return None


def _name_of(node):
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    return None


def client_services(sources):
    """The services the code builds clients for: ``make_client("ec2", ...)``, also
    through ``run_blocking(aws.shared_client, "ec2", ...)``."""
    services = set()
    for _, text in sources:
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, ast.Call):
                continue
            if _name_of(node.func) in CLIENT_FACTORIES:
                services.add(_first_string(node))
            elif node.args and _name_of(node.args[0]) in CLIENT_FACTORIES:
                rest = node.args[1:]
                if rest and isinstance(rest[0], ast.Constant):
                    services.add(rest[0].value)
    services.discard(None)
    return services


def code_operations(sources):
    """``{(service, OperationName): ["file:line", ...]}`` for every AWS operation the
    code can call. An attribute named like an operation of two of the code's services
    is an error: the scan cannot tell which one it is."""
    sources = list(sources)
    services = client_services(sources)
    by_method = {}
    waiters = {}
    for service in sorted(services):
        for op in _model(service).operation_names:
            by_method.setdefault(xform_name(op), []).append((service, op))
        waiter_model = _session().get_waiter_model(service) if _has_waiters(service) else None
        for name in waiter_model.waiter_names if waiter_model else ():
            waiters.setdefault(xform_name(name), []).append(
                (service, waiter_model.get_waiter(name).operation)
            )
    found = {}

    def add(candidates, where, what):
        assert len(candidates) == 1, f"{where}: {what} is an operation of {candidates}"
        found.setdefault(candidates[0], []).append(where)

    for rel, text in sources:
        for node in ast.walk(ast.parse(text)):
            where = f"{rel}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Attribute) and node.attr in by_method:
                skip = NOT_AWS.get(node.attr)
                if skip and skip.search(ast.unparse(node.value)):
                    continue
                add(by_method[node.attr], where, node.attr)
            if isinstance(node, ast.Call) and _name_of(node.func) == "get_paginator":
                add(by_method[_first_string(node)], where, _first_string(node))
            if isinstance(node, ast.Call) and _name_of(node.func) == "get_waiter":
                add(waiters[_first_string(node)], where, _first_string(node))
    return found


def _has_waiters(service):
    try:
        _session().get_waiter_model(service)
    except Exception:  # botocore raises DataNotFoundError for services without waiters
        return False
    return True


def code_actions(sources=None):
    """``{iam action: [where, ...]}`` for the code's operations."""
    ops = code_operations(_source_files() if sources is None else sources)
    actions = {}
    for (service, op), where in ops.items():
        actions.setdefault(iam_action(service, op), []).extend(where)
    return actions


# ---- what the template needs ----------------------------------------------------------


def template():
    parsed, matches = decode_str(TEMPLATE.read_text(encoding="utf-8"))
    assert not matches
    return parsed


@cache
def handler_permissions(resource_type):
    """``{handler: set of actions}`` from the resource type's registry schema
    (cfn-lint's copy for us-east-1)."""
    schemas = Path(cfnlint.data.schemas.__file__).parent
    index = json.loads((schemas / "providers" / "us-east-1.json").read_text(encoding="utf-8"))
    schema_file = schemas / "resources" / f"{index[resource_type]}.json"
    schema = json.loads(schema_file.read_text(encoding="utf-8"))
    return {name: set(h.get("permissions", ())) for name, h in schema["handlers"].items()}


def template_actions(parsed=None):
    """``{iam action: why}`` for what CloudFormation does with the hub's credentials."""
    parsed = template() if parsed is None else parsed
    needed = {}
    for logical_id, resource in parsed["Resources"].items():
        kind = resource["Type"]
        assert kind in TEMPLATE_ACTIONS, (
            f"resource {logical_id} is a {kind}: add its actions to TEMPLATE_ACTIONS "
            "and to docs/iam/hub-policy.json"
        )
        handlers = handler_permissions(kind)
        declared = handlers["create"] | handlers["delete"]
        for action in declared:
            if READ_ONLY.match(action):
                needed.setdefault(action, f"{kind} handler (read)")
        for action in TEMPLATE_ACTIONS[kind]:
            needed.setdefault(action, f"{kind} handler")
    for name, parameter in parsed.get("Parameters", {}).items():
        for action in PARAMETER_TYPE_ACTIONS.get(parameter["Type"], ()):
            needed.setdefault(action, f"parameter {name} ({parameter['Type']})")
    for resource in parsed["Resources"].values():
        if resource["Type"] == "AWS::EC2::Volume" and "KmsKeyId" in resource["Properties"]:
            for action in ("kms:DescribeKey", "kms:Decrypt"):
                needed.setdefault(action, EXTRA_TEMPLATE_ACTIONS[action])
    return needed


# ---- the policy files -----------------------------------------------------------------


def load(name):
    return json.loads((IAM / name).read_text(encoding="utf-8"))


def _as_list(value):
    return [value] if isinstance(value, str) else list(value)


def actions_of(policy, effect="Allow"):
    return {a for s in policy["Statement"] if s["Effect"] == effect for a in _as_list(s["Action"])}


POLICIES = ("hub-policy.json", "dns-plugin-policy.json", "instance-policy.json")


@pytest.mark.parametrize("name", POLICIES)
def test_policy_has_the_iam_json_shape(name):
    policy = load(name)
    assert set(policy) == {"Version", "Statement"}
    assert policy["Version"] == "2012-10-17"
    assert isinstance(policy["Statement"], list) and policy["Statement"]
    sids = [s.get("Sid") for s in policy["Statement"]]
    assert all(isinstance(sid, str) and re.fullmatch(r"[A-Za-z0-9]+", sid) for sid in sids)
    assert len(set(sids)) == len(sids), f"duplicate Sid in {name}"
    for statement in policy["Statement"]:
        assert set(statement) <= {"Sid", "Effect", "Action", "Resource", "Condition"}
        assert statement["Effect"] in ("Allow", "Deny")
        assert _as_list(statement["Action"]) and _as_list(statement["Resource"])
        for action in _as_list(statement["Action"]):
            # no wildcards: the comparison with the code is exact
            assert re.fullmatch(r"[a-z0-9-]+:[A-Za-z0-9]+", action), action
        for resource in _as_list(statement["Resource"]):
            assert resource == "*" or resource.startswith("arn:aws:"), resource
        for operator, keys in statement.get("Condition", {}).items():
            assert isinstance(keys, dict) and keys, (statement["Sid"], operator)


@pytest.mark.parametrize("name", POLICIES)
def test_every_action_is_a_real_aws_operation(name):
    # a typo (ec2:DescribeInstance) would be silently useless in IAM
    prefixes = {"ec2": "ec2", "cloudformation": "cloudformation", "route53": "route53"}
    prefixes.update({"iam": "iam", "kms": "kms", "ssm": "ssm"})
    for action in actions_of(load(name)) | actions_of(load(name), "Deny"):
        if action in PERMISSION_ONLY:
            continue
        prefix, operation = action.split(":")
        assert operation in _model(prefixes[prefix]).operation_names, action


def test_the_scan_finds_the_calls_it_must():
    # the scan itself: the spawner's, the reflector's, the service's and the plugin's
    found = code_actions()
    for action, where in {
        "cloudformation:CreateStack": "mliy_spawner/stacks.py",
        "cloudformation:DescribeStackEvents": "mliy_spawner/stacks.py",  # a paginator
        "cloudformation:DescribeStacks": "mliy_spawner/reconcile.py",
        "cloudformation:DeleteStack": "mliy_spawner/service/actions.py",  # uncalled
        "ec2:DescribeInstances": "mliy_spawner/reflector.py",
        "ec2:ModifyInstanceAttribute": "mliy_spawner/stacks.py",
        "route53:GetChange": DNS_PLUGIN,  # through the resource_record_sets_changed waiter
    }.items():
        assert any(w.startswith(where) for w in found.get(action, ())), (action, found)
    # the demo's seeding calls (CreateVpc, iam:CreateInstanceProfile) are not the hub's
    assert "ec2:CreateVpc" not in found and not any(a.startswith("iam:") for a in found)


def test_the_scan_reads_calls_in_every_form():
    source = (
        "x.ec2 = make_client('ec2', r)\n"
        "await run_blocking(aws.shared_client, 'cloudformation', r)\n"
        "ec2.terminate_instances(InstanceIds=[i])\n"
        "await run_blocking(cfn.update_stack, StackName=s)\n"
        "cfn.get_paginator('list_stacks').paginate()\n"
        "ec2.get_waiter('volume_available').wait()\n"
        "store.forget_instance(i)\n"
    )
    assert set(code_actions([("fake.py", source)])) == {
        "ec2:TerminateInstances",
        "cloudformation:UpdateStack",
        "cloudformation:ListStacks",
        "ec2:DescribeVolumes",
    }


def test_hub_policy_allows_exactly_what_the_code_and_template_need():
    code = {a: w for a, w in code_actions().items() if not a.startswith("route53:")}
    needed = set(code) | set(template_actions())
    allowed = actions_of(load("hub-policy.json"))
    missing = {a: code.get(a) or template_actions()[a] for a in needed - allowed}
    assert not missing, f"docs/iam/hub-policy.json lacks actions the hub needs: {missing}"
    unused = allowed - needed
    assert not unused, f"docs/iam/hub-policy.json allows actions nothing uses: {unused}"
    assert not actions_of(load("hub-policy.json"), "Deny")


def test_dns_policy_allows_exactly_the_plugins_route53_calls():
    code = {a: w for a, w in code_actions().items() if a.startswith("route53:")}
    assert all(w.startswith(DNS_PLUGIN) for where in code.values() for w in where)
    assert actions_of(load("dns-plugin-policy.json")) == set(code)


def test_template_actions_are_what_cloudformation_declares():
    # a hand-listed action must be one CloudFormation's handler for that type declares
    for kind, actions in TEMPLATE_ACTIONS.items():
        handlers = handler_permissions(kind)
        declared = handlers["create"] | handlers["delete"]
        assert actions - declared <= set(EXTRA_TEMPLATE_ACTIONS), (kind, actions - declared)
    needed = template_actions()
    for action in ("ec2:RunInstances", "ec2:CreateVolume", "ec2:AttachVolume", "iam:PassRole"):
        assert action in needed
    assert needed["ec2:DescribeImages"].startswith("parameter ImageId")


def test_a_new_resource_type_in_the_template_fails_until_it_is_covered():
    parsed = template()
    parsed["Resources"]["Address"] = {"Type": "AWS::EC2::EIP", "Properties": {}}
    with pytest.raises(AssertionError, match="AWS::EC2::EIP"):
        template_actions(parsed)


def test_instances_call_no_aws_api():
    # nothing on the instance signs an AWS request: no aws CLI, no cfn-signal, and the
    # template waits for no signal (no CreationPolicy, no WaitCondition)
    for script in sorted(USER_DATA.glob("*.sh")):
        text = script.read_text(encoding="utf-8")
        code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        assert not AWS_CLIENT_ON_INSTANCE.search(code), script.name
    for resource in template()["Resources"].values():
        assert "CreationPolicy" not in resource
        assert resource["Type"] != "AWS::CloudFormation::WaitCondition"


def test_instance_policy_allows_nothing_and_denies_the_hubs_changes():
    instance = load("instance-policy.json")
    assert not actions_of(instance), "instances call no AWS API: allow nothing"
    hub = actions_of(load("hub-policy.json")) | actions_of(load("dns-plugin-policy.json"))
    # every change the hub may make, and other instances' user data; not the reads
    # (tools on a notebook list instances) nor KMS (the hub's is through EC2 only, and
    # a notebook's data access may decrypt with its own keys)
    changes = {a for a in hub if not READ_ONLY.match(a) and not a.startswith("kms:")}
    assert actions_of(instance, "Deny") == changes | {"ec2:DescribeInstanceAttribute"}
    for statement in instance["Statement"]:
        assert statement["Resource"] == "*" and "Condition" not in statement


# ---- the conditions documented in docs/production.md -----------------------------------


def _statements(name):
    return {s["Sid"]: s for s in load(name)["Statement"]}


def _with_action(name, action):
    return [s for s in load(name)["Statement"] if action in _as_list(s["Action"])]


@pytest.mark.parametrize(
    "action",
    [
        "ec2:RunInstances",
        "ec2:CreateVolume",
        "ec2:AttachVolume",
        "ec2:DetachVolume",
        "ec2:DeleteVolume",
        "ec2:TerminateInstances",
        "ec2:CreateTags",
    ],
)
def test_template_only_actions_are_allowed_only_through_cloudformation(action):
    # the code never calls them itself: only a stack may (aws:CalledVia)
    assert action not in code_actions()
    for statement in _with_action("hub-policy.json", action):
        via = statement["Condition"]["ForAnyValue:StringEquals"]["aws:CalledVia"]
        assert via == "cloudformation.amazonaws.com"


@pytest.mark.parametrize(
    "action",
    [
        "ec2:StartInstances",
        "ec2:StopInstances",
        "ec2:ModifyInstanceAttribute",
        "ec2:TerminateInstances",
        "ec2:DeleteVolume",
        "ec2:DetachVolume",
        "cloudformation:DeleteStack",
    ],
)
def test_actions_on_existing_resources_need_the_hub_tag(action):
    for statement in _with_action("hub-policy.json", action):
        assert statement["Condition"]["Null"] == {"aws:ResourceTag/mliy:hub": "false"}
        assert statement["Resource"] != "*"


def test_stacks_are_created_with_the_hub_tag_and_the_name_prefix():
    (statement,) = _with_action("hub-policy.json", "cloudformation:CreateStack")
    assert statement["Condition"]["Null"] == {"aws:RequestTag/mliy:hub": "false"}
    for action in ("cloudformation:CreateStack", "cloudformation:DeleteStack"):
        for s in _with_action("hub-policy.json", action):
            assert _as_list(s["Resource"]) == ["arn:aws:cloudformation:*:*:stack/mliy-*/*"]


def test_roles_are_passed_only_to_ec2_and_keys_used_only_through_ec2():
    (passrole,) = _with_action("hub-policy.json", "iam:PassRole")
    assert passrole["Condition"] == {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}
    assert passrole["Resource"] == "arn:aws:iam::*:role/mliy-*"
    for action in sorted(a for a in actions_of(load("hub-policy.json")) if a.startswith("kms:")):
        for statement in _with_action("hub-policy.json", action):
            assert statement["Condition"]["StringLike"] == {"kms:ViaService": "ec2.*.amazonaws.com"}
    (grant,) = _with_action("hub-policy.json", "kms:CreateGrant")
    assert grant["Condition"]["Bool"] == {"kms:GrantIsForAWSResource": "true"}


def test_dns_changes_are_limited_to_the_servers_records():
    (change,) = _with_action("dns-plugin-policy.json", "route53:ChangeResourceRecordSets")
    conditions = change["Condition"]["ForAllValues:StringEquals"]
    assert set(conditions["route53:ChangeResourceRecordSetsRecordTypes"]) == {"A", "AAAA"}
    assert set(conditions["route53:ChangeResourceRecordSetsActions"]) == {"UPSERT", "DELETE"}
    names = change["Condition"]["ForAllValues:StringLike"]
    assert names == {"route53:ChangeResourceRecordSetsNormalizedRecordNames": "mliy-*"}
    assert change["Resource"] == "arn:aws:route53:::hostedzone/*"


@pytest.mark.parametrize(
    ("line", "signs"),
    [
        ("aws s3 cp s3://bucket/data .", True),
        ("token=$(aws sts get-caller-identity)", True),
        ("/opt/aws/bin/cfn-signal -e 0 --stack s", True),
        ("python3 -c 'import boto3'", True),
        ('curl -H "X-aws-ec2-metadata-token: $token" "$imds/meta-data/instance-id"', False),
        ('curl -X PUT "$imds/api/token"', False),
    ],
    ids=["aws-cli", "aws-cli-subshell", "cfn-signal", "boto3", "imds-header", "imds-url"],
)
def test_the_user_data_check_tells_aws_clients_from_metadata_reads(line, signs):
    assert bool(AWS_CLIENT_ON_INSTANCE.search(line)) is signs
