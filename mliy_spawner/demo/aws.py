"""The demo's AWS stand-in: moto's server on loopback, seeded like a small AWS account.

- :func:`start_moto` runs moto's ``ThreadedMotoServer`` on ``127.0.0.1:<port>`` in this
  process, so ``aws --endpoint-url http://127.0.0.1:4566 ...`` works against it too.
- :func:`seed_account` creates what a launch needs (VPC, subnet, AMI choice, key pair,
  security group, IAM instance profile) and a Route 53 zone, and returns a
  :class:`Seed` with their ids. The demo writes it to ``aws.json`` for the hub's config.
- :data:`DEMO_CREDENTIALS` are the fake keys every demo process uses: moto accepts any,
  and real keys from the user's environment must never be sent anywhere by the demo.
"""

import logging
from dataclasses import asdict, dataclass

from ..aws import make_client

log = logging.getLogger("mliy.demo")

REGION = "us-east-1"
ZONE = f"{REGION}a"
KEY_NAME = "mliy-demo-key"
INSTANCE_PROFILE = "mliy-notebook"
SECURITY_GROUP = "mliy-notebooks"
DNS_ZONE = "mliy.demo."

#: Environment for every process that talks to the stand-in (demo, hub, service, culler).
DEMO_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "mliy-demo",
    "AWS_SECRET_ACCESS_KEY": "mliy-demo-secret",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
    # never ask for an instance role: this machine is not the demo's AWS
    "AWS_EC2_METADATA_DISABLED": "true",
}
#: Variables that would point boto3 at the user's real AWS identity instead.
CLEARED_VARIABLES = (
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
)


def demo_environment(base):
    """``base`` (a dict of environment variables) with the demo's AWS identity."""
    env = {k: v for k, v in base.items() if k not in CLEARED_VARIABLES}
    env.update(DEMO_CREDENTIALS)
    return env


@dataclass(frozen=True)
class Seed:
    """Ids of what :func:`seed_account` created, as the hub's config needs them."""

    endpoint_url: str
    region: str
    vpc_id: str
    subnet_id: str
    availability_zone: str
    ami_id: str
    key_name: str
    security_group_id: str
    instance_profile: str
    hosted_zone_id: str
    dns_zone: str

    def as_dict(self):
        return asdict(self)


def start_moto(port, host="127.0.0.1"):
    """Start moto's server on ``host:port`` in a thread; returns it (call ``.stop()``)."""
    from moto.server import ThreadedMotoServer

    # one line per request would bury the demo's own messages
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
    server.start()
    return server


def _pick_ami(ec2):
    """An Amazon Linux 2023 x86_64 image from moto's catalogue (any Amazon image if none)."""
    images = ec2.describe_images(
        Owners=["amazon"], Filters=[{"Name": "name", "Values": ["al2023-ami-2023*-x86_64"]}]
    )["Images"]
    if not images:
        images = ec2.describe_images(Owners=["amazon"])["Images"]
    return sorted(images, key=lambda i: (i.get("Name", ""), i["ImageId"]))[0]["ImageId"]


def seed_account(endpoint_url, region=REGION):
    """Create the network, image choice, identities and DNS zone a demo launch needs."""
    ec2 = make_client("ec2", region, endpoint_url)
    iam = make_client("iam", region, endpoint_url)
    route53 = make_client("route53", region, endpoint_url)
    vpc_id = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc_id, CidrBlock="10.42.1.0/24", AvailabilityZone=ZONE)[
        "Subnet"
    ]
    sg_id = ec2.create_security_group(
        GroupName=SECURITY_GROUP, Description="mliy demo notebooks", VpcId=vpc_id
    )["GroupId"]
    ec2.create_key_pair(KeyName=KEY_NAME)
    iam.create_instance_profile(InstanceProfileName=INSTANCE_PROFILE)
    zone = route53.create_hosted_zone(
        Name=DNS_ZONE,
        CallerReference="mliy-demo",
        HostedZoneConfig={"Comment": "mliy demo notebooks", "PrivateZone": True},
        VPC={"VPCRegion": region, "VPCId": vpc_id},
    )["HostedZone"]
    seed = Seed(
        endpoint_url=endpoint_url,
        region=region,
        vpc_id=vpc_id,
        subnet_id=subnet["SubnetId"],
        availability_zone=subnet["AvailabilityZone"],
        ami_id=_pick_ami(ec2),
        key_name=KEY_NAME,
        security_group_id=sg_id,
        instance_profile=INSTANCE_PROFILE,
        hosted_zone_id=zone["Id"].rsplit("/", 1)[-1],
        dns_zone=DNS_ZONE,
    )
    log.info(
        "AWS stand-in at %s: VPC %s, subnet %s (%s), AMI %s, Route 53 zone %s",
        endpoint_url,
        vpc_id,
        seed.subnet_id,
        seed.availability_zone,
        seed.ami_id,
        DNS_ZONE,
    )
    return seed
