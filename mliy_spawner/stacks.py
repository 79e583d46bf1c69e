"""A server's CloudFormation stack: what identifies it, and the AWS steps of its life.

- :class:`ServerStack` holds the identifiers of one server's stack, as saved in the
  hub's database (``to_state``/``from_state``).
- The functions that take a client are the blocking boto3 steps (create, describe,
  events, delete, start, stop, resize): ``MLiySpawner`` runs them through
  :func:`mliy_spawner.util.run_blocking` and decides what comes next.
- Everything else is pure (names, parameters, tags, status mapping, event messages)
  and is tested without AWS.
"""

import hashlib
import logging
import re
from dataclasses import asdict, dataclass, fields

from botocore.exceptions import ClientError

log = logging.getLogger("mliy.launch")

MAX_STACK_NAME = 128

#: CloudFormation's limit on one parameter value, in bytes.
MAX_PARAMETER_VALUE = 4096

#: The template's parameters that carry the user data, in order; the template joins them.
#: 4 x 4,096 bytes is exactly EC2's 16 KB limit.
USER_DATA_PARAMETERS = ("UserData", "UserDataPart2", "UserDataPart3", "UserDataPart4")


class ParameterError(ValueError):
    """The launch does not fit the template's parameters; the message says why."""


# Simplified stack states (what the spawner acts on).
PENDING = "pending"
READY = "ready"
FAILED = "failed"
DELETING = "deleting"
GONE = "gone"

_STATUS = {
    "CREATE_IN_PROGRESS": PENDING,
    "REVIEW_IN_PROGRESS": PENDING,
    "CREATE_COMPLETE": READY,
    "UPDATE_IN_PROGRESS": READY,
    "UPDATE_COMPLETE_CLEANUP_IN_PROGRESS": READY,
    "UPDATE_COMPLETE": READY,
    # a failed update rolls back to the last working template: resources are intact
    "UPDATE_ROLLBACK_IN_PROGRESS": READY,
    "UPDATE_ROLLBACK_COMPLETE_CLEANUP_IN_PROGRESS": READY,
    "UPDATE_ROLLBACK_COMPLETE": READY,
    "UPDATE_FAILED": FAILED,
    "UPDATE_ROLLBACK_FAILED": FAILED,
    "CREATE_FAILED": FAILED,
    "ROLLBACK_IN_PROGRESS": FAILED,
    "ROLLBACK_FAILED": FAILED,
    "ROLLBACK_COMPLETE": FAILED,
    "DELETE_FAILED": FAILED,
    "IMPORT_ROLLBACK_IN_PROGRESS": FAILED,
    "IMPORT_ROLLBACK_FAILED": FAILED,
    "IMPORT_ROLLBACK_COMPLETE": FAILED,
    "DELETE_IN_PROGRESS": DELETING,
    "DELETE_COMPLETE": GONE,
}

# EC2 instance states that mean "a server may be running there"
INSTANCE_UP = frozenset({"pending", "running"})


#: Version of the ``"mliy"`` entry of a spawner's state; bump it when fields change meaning.
STATE_VERSION = 1


@dataclass
class ServerStack:
    """The identifiers of one server's stack, saved in the hub's database.

    Identifiers only, never a secret: JupyterHub stores spawner state in clear.
    """

    #: the stack's ARN: a deleted stack can only be described by id, not by name
    stack_id: str | None = None
    #: for logs, and to find the stack again after a crash between create and save
    stack_name: str | None = None
    #: the instance to stop, start and resume
    instance_id: str | None = None
    #: where the stack lives, should the hub's region setting change
    region: str | None = None
    #: the options it was launched with (group, configuration, volume) to resume it
    launch_options: dict | None = None
    #: a failed launch whose stack could not be deleted yet: stop() and start() retry
    delete_pending: bool = False
    #: the address the DNS record points at, to delete it after a hub restart
    dns_ip: str | None = None

    def to_state(self):
        """The ``"mliy"`` entry of the spawner's state, or None without a stack."""
        if not self.stack_id:
            return None
        return {**asdict(self), "version": STATE_VERSION}

    @classmethod
    def from_state(cls, state):
        """Read back :meth:`to_state`'s dict (None or {} give an empty ServerStack);
        fields this release does not know are left out."""
        state = state or {}
        values = {f.name: state[f.name] for f in fields(cls) if f.name in state}
        values["delete_pending"] = bool(values.get("delete_pending"))
        return cls(**values)

    def forget(self):
        """The stack is gone: clear every identifier."""
        for f in fields(self):
            setattr(self, f.name, f.default)


def simplify_status(status):
    """Map a CloudFormation StackStatus to pending/ready/failed/deleting/gone."""
    return _STATUS.get(status, FAILED if status and status.endswith("_FAILED") else PENDING)


class LaunchFailed(Exception):
    """A stack or its instance failed; the message is the reason to show the user."""


def ready_instance(stack_name, stack, instance):
    """While a new or resumed stack starts: its running instance, or None to wait.

    ``stack`` and ``instance`` are the reflector's views (None when not seen; a stack
    not seen in a fresh view is gone). Raises :class:`LaunchFailed` when the stack
    failed or went away, or its instance stopped.
    """
    if stack is None:
        raise LaunchFailed(f"stack {stack_name} disappeared")
    status = simplify_status(stack.status)
    if status in (FAILED, DELETING, GONE):
        raise LaunchFailed(f"stack {stack.name} is {stack.status}")
    if instance is None:
        return None
    if instance.state not in INSTANCE_UP:
        raise LaunchFailed(f"instance {instance.instance_id} is {instance.state}")
    if instance.state == "running" and instance.private_ip and status == READY:
        return instance
    return None


def check_alive(stack, instance):
    """While the instance boots: raise :class:`LaunchFailed` when it or its stack went down."""
    if instance is not None and instance.state not in INSTANCE_UP:
        raise LaunchFailed(f"instance {instance.instance_id} is {instance.state}")
    if stack is not None and simplify_status(stack.status) != READY:
        raise LaunchFailed(f"stack {stack.name} is {stack.status}")


def _clean(text, limit):
    text = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")
    return text[:limit].strip("-")


#: Hex digits of the names' SHA-256 at the end of every stack name.
STACK_NAME_DIGEST = 16


def stack_name(prefix, hub_name, user_name, server_name):
    """A valid, unique, deterministic stack name for one server.

    Stack names allow ``[A-Za-z][-A-Za-z0-9]*`` up to 128 characters. User and server
    names are cleaned to that alphabet (so ``a.b`` and ``a-b`` look alike), and a hash
    of the exact names keeps them apart. The name is deterministic so that a hub that
    crashed between ``CreateStack`` and saving its state finds the stack again. The hash
    has :data:`STACK_NAME_DIGEST` hex digits (64 bits): to make another server's name
    land on an existing stack, one would need about 2**64 tries, not 2**40.
    """
    names = f"{hub_name}\0{user_name}\0{server_name}".encode()
    digest = hashlib.sha256(names).hexdigest()[:STACK_NAME_DIGEST]
    head = _clean(prefix, 20) or "mliy"
    if not head[0].isalpha():
        head = "m" + head
    room = MAX_STACK_NAME - len(head) - len(digest) - 3
    user = _clean(user_name, max(room * 2 // 3, room - len(_clean(server_name, room))))
    server = _clean(server_name, room - len(user))
    parts = [head, user, server, digest] if server else [head, user, digest]
    return "-".join(p for p in parts if p)[:MAX_STACK_NAME]


def build_parameters(choice, subnet_id, availability_zone, user_data):
    """The template's parameters for a LaunchChoice, as CloudFormation wants them.

    MLiy's eleven, with the user data split over UserData..UserDataPart4 (CloudFormation
    caps a parameter value at 4 KB; EC2 allows 16 KB of user data).
    """
    volume = choice.config.volume
    values = {
        "KeyName": choice.group.key_name,
        "ImageId": choice.config.ami_id,
        "InstanceType": choice.instance_type,
        "IamInstanceProfile": choice.group.instance_profile,
        "SecurityGroupIds": ",".join(choice.group.security_group_ids),
        "SubnetId": subnet_id,
        "AvailabilityZone": availability_zone,
        "KmsKeyId": volume.kms_key_id if volume else "",
        "EBSVolumeDeviceName": volume.device if volume else "/dev/sdf",
        "VolumeSize": str(choice.volume_size or 0),
        **user_data_parameters(user_data),
    }
    return [{"ParameterKey": k, "ParameterValue": v} for k, v in values.items()]


def build_tags(hub_name, user_name, server_name, choice, extra=None):
    """Stack tags (CloudFormation copies them onto the instance and volume)."""
    tags = dict(extra or {})
    tags.update(choice.group.cost_tags)
    if server_name:  # tag values cannot be empty: the default server has no mliy:server
        tags["mliy:server"] = server_name
    tags.update(
        {
            "Name": f"mliy-{user_name}" + (f"-{server_name}" if server_name else ""),
            "mliy:hub": hub_name,
            "mliy:user": user_name,
            "mliy:software-config": choice.config.slug,
            "mliy:launch-group": choice.group.name,
            # the usage ledger charges the volume from this (ledger.VOLUME_TAG)
            "mliy:volume-gib": str(choice.volume_size or 0),
        }
    )
    return [{"Key": k, "Value": str(v)[:256]} for k, v in tags.items()]


def user_data_parameters(text):
    """Split user data over :data:`USER_DATA_PARAMETERS` for the CloudFormation template.

    Each part is at most :data:`MAX_PARAMETER_VALUE` bytes of UTF-8, cut between
    characters; unused parts are empty strings. The template joins them in order.
    Raises :class:`ParameterError` when the parts cannot hold ``text`` (over 16 KB, or
    just under it with multi-byte characters on the cuts).
    """
    data = text.encode("utf-8")
    parts = []
    while data:
        cut = min(len(data), MAX_PARAMETER_VALUE)
        # never split a multi-byte character: back up over continuation bytes
        while cut < len(data) and (data[cut] & 0xC0) == 0x80:
            cut -= 1
        parts.append(data[:cut].decode("utf-8"))
        data = data[cut:]
    if len(parts) > len(USER_DATA_PARAMETERS):
        # only possible when multi-byte characters sit on the cuts
        raise ParameterError(
            f"user data of {len(text.encode('utf-8'))} bytes does not fit in"
            f" {len(USER_DATA_PARAMETERS)} CloudFormation parameters of"
            f" {MAX_PARAMETER_VALUE} bytes; shorten the user data script"
        )
    parts += [""] * (len(USER_DATA_PARAMETERS) - len(parts))
    return dict(zip(USER_DATA_PARAMETERS, parts, strict=True))


def owned_by(tags, hub_name, user_name, server_name):
    """Whether a stack's ``{key: value}`` tags name this hub, user and server (the tags
    :func:`build_tags` writes; the default server has no ``mliy:server`` tag)."""
    return (
        tags.get("mliy:hub") == hub_name
        and tags.get("mliy:user") == user_name
        and tags.get("mliy:server", "") == server_name
    )


def event_message(event):
    """A progress line for one stack event, in words a data scientist reads."""
    kind = event.get("ResourceType", "")
    status = event.get("ResourceStatus", "")
    reason = event.get("ResourceStatusReason") or ""
    what = {
        "AWS::EC2::Instance": "instance",
        "AWS::EC2::Volume": "data volume",
        "AWS::EC2::VolumeAttachment": "volume attachment",
        "AWS::CloudFormation::Stack": "stack",
    }.get(kind, event.get("LogicalResourceId", "resource"))
    if status.endswith("_IN_PROGRESS"):
        verb = {"CREATE": "Creating", "DELETE": "Deleting", "UPDATE": "Updating"}.get(
            status.split("_", 1)[0], "Working on"
        )
        if status.startswith("ROLLBACK"):
            return f"Rolling back the {what}: {reason}" if reason else f"Rolling back the {what}"
        return f"{verb} {what}"
    if status.endswith("_COMPLETE"):
        if status.startswith("ROLLBACK"):
            return f"The {what} was rolled back"
        done = {"CREATE": "created", "DELETE": "deleted", "UPDATE": "updated"}
        return f"{what[:1].upper()}{what[1:]} {done.get(status.split('_', 1)[0], 'done')}"
    if status.endswith("_FAILED"):
        return f"Failed on the {what}: {reason}" if reason else f"Failed on the {what}"
    return f"{what}: {status}"


def failure_reason(events):
    """The first failed resource's ResourceStatusReason (events oldest first), or None.

    Resource failures explain the problem ("Instance type x is not supported");
    the stack's own events only say that resources failed. Fall back to those.
    """
    stack_reason = None
    for event in events:
        if not event.get("ResourceStatus", "").endswith("_FAILED"):
            if event.get("ResourceType") == "AWS::CloudFormation::Stack" and event.get(
                "ResourceStatus", ""
            ).startswith("ROLLBACK"):
                stack_reason = stack_reason or event.get("ResourceStatusReason")
            continue
        if event.get("ResourceType") != "AWS::CloudFormation::Stack":
            return event.get("ResourceStatusReason") or f"{event.get('LogicalResourceId')} failed"
        stack_reason = stack_reason or event.get("ResourceStatusReason")
    return stack_reason


def _is_error(error, *codes):
    return error.response.get("Error", {}).get("Code") in codes


def create_stack(cfn, name, template_body, parameters, tags, request_token):
    """Create the stack; return ``(stack_id, created)``.

    If a stack of that name already exists (a hub that died mid-launch, or a retried
    request), return its id with ``created=False`` so the caller adopts it.
    """
    try:
        response = cfn.create_stack(
            StackName=name,
            TemplateBody=template_body,
            Parameters=parameters,
            Tags=tags,
            ClientRequestToken=request_token,
            OnFailure="ROLLBACK",
        )
        return response["StackId"], True
    except ClientError as e:
        if not _is_error(e, "AlreadyExistsException"):
            raise
    stack = describe_stack(cfn, name)
    if stack is None:
        raise RuntimeError(f"stack {name} exists but cannot be described")
    return stack["StackId"], False


def describe_stack(cfn, stack_id):
    """The stack's description, or None when it does not exist (by name)."""
    try:
        stacks = cfn.describe_stacks(StackName=stack_id)["Stacks"]
    except ClientError as e:
        if _is_error(e, "ValidationError"):
            return None
        raise
    return stacks[0] if stacks else None


def stack_events(cfn, stack_id):
    """All events of a stack, oldest first."""
    events = []
    for page in cfn.get_paginator("describe_stack_events").paginate(StackName=stack_id):
        events.extend(page["StackEvents"])
    events.sort(key=lambda e: e.get("Timestamp") or 0)
    return events


def delete_stack(cfn, stack_id):
    """Delete the stack (idempotent: a stack already gone is not an error)."""
    try:
        cfn.delete_stack(StackName=stack_id)
    except ClientError as e:
        if not _is_error(e, "ValidationError"):
            raise
    log.info("Deleting stack %s", stack_id)


def start_instance(ec2, instance_id):
    ec2.start_instances(InstanceIds=[instance_id])


def stop_instance(ec2, instance_id):
    """Stop the instance; stopping one that is already stopping or stopped is fine."""
    try:
        ec2.stop_instances(InstanceIds=[instance_id])
    except ClientError as e:
        if not _is_error(e, "IncorrectInstanceState", "InvalidInstanceID.NotFound"):
            raise


def set_instance_type(ec2, instance_id, instance_type):
    """Change a stopped instance's type (the user picked another size on resume)."""
    ec2.modify_instance_attribute(InstanceId=instance_id, InstanceType={"Value": instance_type})
