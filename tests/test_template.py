"""cloudformation/notebook-instance.yaml: cfn-lint clean, NoEcho user data, and real stacks
created from it in moto, with and without the extra volume."""

import base64

import boto3
import cfnlint.api
import pytest
from cfnlint.decode import decode_str
from moto import mock_aws

from mliy_spawner.assets import asset_path
from mliy_spawner.stacks import USER_DATA_PARAMETERS, user_data_parameters

REGION = "us-east-1"
AZ = "us-east-1a"
TEMPLATE = asset_path("cloudformation", "notebook-instance.yaml").read_text(encoding="utf-8")
MLIY_PARAMETERS = [
    "KeyName",
    "ImageId",
    "InstanceType",
    "IamInstanceProfile",
    "SecurityGroupIds",
    "SubnetId",
    "AvailabilityZone",
    "KmsKeyId",
    "EBSVolumeDeviceName",
    "VolumeSize",
    "UserData",
]


def parsed_template():
    template, matches = decode_str(TEMPLATE)
    assert not matches
    return template


def test_cfn_lint_reports_nothing():
    assert cfnlint.api.lint(TEMPLATE) == []


def test_cfn_lint_would_catch_a_broken_template():
    # the check above can fail: a typo in an attribute name is reported
    broken = TEMPLATE.replace("!GetAtt Instance.PrivateIp", "!GetAtt Instance.PrivateIpp")
    assert broken != TEMPLATE
    assert cfnlint.api.lint(broken) != []


def test_takes_mliys_parameters_and_user_data_parts():
    parameters = parsed_template()["Parameters"]
    assert set(MLIY_PARAMETERS) | set(USER_DATA_PARAMETERS) == set(parameters)
    assert parameters["SecurityGroupIds"]["Type"] == "CommaDelimitedList"
    assert parameters["VolumeSize"]["Type"] == "Number"
    assert parameters["VolumeSize"]["Default"] == 0
    assert parameters["EBSVolumeDeviceName"]["Default"] == "/dev/sdf"
    for optional in ("KeyName", "IamInstanceProfile", "KmsKeyId"):
        assert parameters[optional]["Default"] == ""


@pytest.mark.parametrize("name", USER_DATA_PARAMETERS)
def test_user_data_parameters_are_noecho(name):
    parameter = parsed_template()["Parameters"][name]
    assert parameter["NoEcho"] is True
    assert parameter["MaxLength"] == 4096


def imdsv2_problems(template):
    """What keeps an instance of ``template`` from requiring IMDSv2 with one hop."""
    problems = []
    for name, resource in template["Resources"].items():
        if resource["Type"] == "AWS::EC2::Instance":
            options = resource["Properties"].get("MetadataOptions", {})
        elif resource["Type"] == "AWS::EC2::LaunchTemplate":
            options = resource["Properties"]["LaunchTemplateData"].get("MetadataOptions", {})
        else:
            continue
        if options.get("HttpTokens") != "required":
            problems.append(f"{name}: HttpTokens is {options.get('HttpTokens')!r}")
        if options.get("HttpPutResponseHopLimit") != 1:
            problems.append(f"{name}: hop limit {options.get('HttpPutResponseHopLimit')!r}")
        if options.get("HttpEndpoint", "enabled") != "enabled":
            problems.append(f"{name}: HttpEndpoint {options['HttpEndpoint']!r}")
    return problems


def test_every_instance_requires_imdsv2_with_one_hop():
    # moto ignores MetadataOptions, so they are read from the template itself
    template = parsed_template()
    instances = [
        r for r in template["Resources"].values() if r["Type"].startswith("AWS::EC2::Instance")
    ]
    assert instances
    assert imdsv2_problems(template) == []
    # the check can fail: IMDSv1 left on, or a second hop allowed, is reported
    for old, new in (("HttpTokens: required", "HttpTokens: optional"), ("Limit: 1", "Limit: 2")):
        broken = TEMPLATE.replace(old, new)
        assert broken != TEMPLATE
        template, matches = decode_str(broken)
        assert not matches and imdsv2_problems(template)


def test_conditions_and_outputs():
    template = parsed_template()
    assert set(template["Conditions"]) == {
        "HasVolume",
        "HasKmsKey",
        "HasKeyName",
        "HasInstanceProfile",
    }
    assert template["Resources"]["Volume"]["Condition"] == "HasVolume"
    assert template["Resources"]["Volume"]["DeletionPolicy"] == "Delete"
    assert template["Resources"]["VolumeAttachment"]["Condition"] == "HasVolume"
    assert set(template["Outputs"]) == {"InstanceId", "PrivateIp"}


@pytest.fixture(scope="module")
def aws():
    """moto with a VPC, subnet, key pair, security group and instance profile (shared by
    the module's tests: each creates its own stack)."""
    with mock_aws():
        ec2 = boto3.client("ec2", region_name=REGION)
        cfn = boto3.client("cloudformation", region_name=REGION)
        iam = boto3.client("iam", region_name=REGION)
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24", AvailabilityZone=AZ)
        group = ec2.create_security_group(GroupName="nb", Description="notebooks", VpcId=vpc)
        ec2.create_key_pair(KeyName="mliy-key")
        iam.create_instance_profile(InstanceProfileName="mliy-profile")
        yield {
            "ec2": ec2,
            "cfn": cfn,
            "subnet": subnet["Subnet"]["SubnetId"],
            "group": group["GroupId"],
            "ami": ec2.describe_images()["Images"][0]["ImageId"],
        }


def create_stack(aws, name, **overrides):
    parameters = {
        "KeyName": "mliy-key",
        "ImageId": aws["ami"],
        "InstanceType": "t3.medium",
        "IamInstanceProfile": "mliy-profile",
        "SecurityGroupIds": aws["group"],
        "SubnetId": aws["subnet"],
        "AvailabilityZone": AZ,
        "UserData": "#!/bin/bash\necho hello\n",
    }
    parameters.update(overrides)
    stack_id = aws["cfn"].create_stack(
        StackName=name,
        TemplateBody=TEMPLATE,
        Parameters=[{"ParameterKey": k, "ParameterValue": str(v)} for k, v in parameters.items()],
    )["StackId"]
    stack = aws["cfn"].describe_stacks(StackName=stack_id)["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE"
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    instance = aws["ec2"].describe_instances(InstanceIds=[outputs["InstanceId"]])
    return stack, outputs, instance["Reservations"][0]["Instances"][0]


def test_stack_without_volume(aws):
    stack, outputs, instance = create_stack(aws, "nb-plain")
    assert instance["InstanceType"] == "t3.medium"
    assert instance["ImageId"] == aws["ami"]
    assert instance["SubnetId"] == aws["subnet"]
    assert instance["KeyName"] == "mliy-key"
    assert instance["Placement"]["AvailabilityZone"] == AZ
    assert "mliy-profile" in instance["IamInstanceProfile"]["Arn"]
    assert outputs["PrivateIp"] == instance["PrivateIpAddress"]
    assert instance["BlockDeviceMappings"] == []
    volumes = aws["ec2"].describe_volumes(
        Filters=[{"Name": "tag:aws:cloudformation:stack-id", "Values": [stack["StackId"]]}]
    )
    assert volumes["Volumes"] == []


def test_stack_with_volume(aws):
    stack, outputs, instance = create_stack(
        aws, "nb-volume", VolumeSize=25, KmsKeyId="alias/mliy", EBSVolumeDeviceName="/dev/sdg"
    )
    assert outputs["PrivateIp"] == instance["PrivateIpAddress"]
    [mapping] = instance["BlockDeviceMappings"]
    assert mapping["DeviceName"] == "/dev/sdg"
    volume = aws["ec2"].describe_volumes(VolumeIds=[mapping["Ebs"]["VolumeId"]])["Volumes"][0]
    assert volume["Size"] == 25
    assert volume["AvailabilityZone"] == AZ
    assert volume["Attachments"][0]["InstanceId"] == outputs["InstanceId"]
    # the same lookup the no-volume test uses finds this stack's volume
    tagged = aws["ec2"].describe_volumes(
        Filters=[{"Name": "tag:aws:cloudformation:stack-id", "Values": [stack["StackId"]]}]
    )
    assert [v["VolumeId"] for v in tagged["Volumes"]] == [volume["VolumeId"]]
    # moto ignores Encrypted/KmsKeyId on volumes: check what the stack was given instead
    given = {p["ParameterKey"]: p["ParameterValue"] for p in stack["Parameters"]}
    assert given["KmsKeyId"] == "alias/mliy"


def test_optional_key_and_profile_are_left_out_when_empty(aws):
    _, _, instance = create_stack(aws, "nb-bare", KeyName="", IamInstanceProfile="")
    assert "KeyName" not in instance
    assert "IamInstanceProfile" not in instance


def test_user_data_parts_are_joined_in_order(aws):
    # over one parameter's 4,096 bytes, with multi-byte characters near the cuts
    text = "#!/bin/bash\n" + "".join(f"echo {i} ünï ✓\n" for i in range(700))
    parts = user_data_parameters(text)
    assert parts["UserDataPart3"]
    _, outputs, _ = create_stack(aws, "nb-long", **parts)
    attribute = aws["ec2"].describe_instance_attribute(
        InstanceId=outputs["InstanceId"], Attribute="userData"
    )
    assert base64.b64decode(attribute["UserData"]["Value"]).decode("utf-8") == text
