"""stacks.py's pure parts: the user-data split over the template's parameters, the
server's stack identifiers in the hub's state, and the launch checks on the shared view."""

import hashlib
import re
from types import SimpleNamespace

import pytest

from mliy_spawner.stacks import (
    MAX_PARAMETER_VALUE,
    USER_DATA_PARAMETERS,
    LaunchFailed,
    ParameterError,
    ServerStack,
    check_alive,
    ready_instance,
    stack_name,
    user_data_parameters,
)
from mliy_spawner.userdata import MAX_USER_DATA, assemble, check_size


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("short", id="short"),
        pytest.param("x" * MAX_PARAMETER_VALUE, id="one-full"),
        pytest.param("x" * (MAX_PARAMETER_VALUE + 1), id="two"),
        pytest.param("x" * MAX_USER_DATA, id="four-full"),
        pytest.param("a" + "é" * 5000, id="multibyte-boundaries"),
        pytest.param("✓" * 5460, id="three-byte"),
    ],
)
def test_user_data_parameters_split_and_join(text):
    parts = user_data_parameters(text)
    assert list(parts) == list(USER_DATA_PARAMETERS)
    assert "".join(parts.values()) == text
    for value in parts.values():
        assert len(value.encode("utf-8")) <= MAX_PARAMETER_VALUE


def test_user_data_parameters_refuses_oversize():
    with pytest.raises(ParameterError, match="does not fit in 4 CloudFormation parameters"):
        user_data_parameters("x" * (MAX_USER_DATA + 1))


def test_multibyte_text_that_cannot_be_cut_into_four_parts_is_refused():
    # 5461 three-byte characters are 16383 bytes, under EC2's limit, but every part can
    # only hold 1365 whole characters (4095 bytes): the error comes before any AWS call
    text = "✓" * 5461
    check_size(text)
    with pytest.raises(ParameterError, match="does not fit in 4 CloudFormation parameters"):
        user_data_parameters(text)
    # a rendered script under EC2's limit that still cannot be cut (the preamble shifts
    # where the characters fall) is refused the same way, before any AWS call
    for pad in range(12):
        head = "#!/bin/bash\n#" + "x" * pad + "\n"
        room = MAX_USER_DATA - len(assemble(head, {}).encode("utf-8"))
        script = head + "✓" * (room // 3)
        try:
            user_data_parameters(assemble(script, {}))
        except ParameterError:
            break
    else:
        pytest.fail("no padding made the cuts lose bytes")


def test_server_stack_round_trips_through_the_hub_state():
    stack = ServerStack(
        stack_id="arn:aws:cloudformation:us-east-1:123:stack/mliy-alice/1",
        stack_name="mliy-alice",
        instance_id="i-0123",
        region="us-east-1",
        launch_options={"software_config": "python"},
        delete_pending=True,
        dns_ip="10.0.0.7",
    )
    state = stack.to_state()
    assert state["version"] == 1
    assert ServerStack.from_state(state) == stack
    stack.forget()
    assert stack == ServerStack() and stack.to_state() is None


def test_server_stack_reads_old_and_newer_states():
    assert ServerStack.from_state(None) == ServerStack()
    newer = {"version": 9, "stack_id": "arn:1", "field_of_a_later_release": 1}
    assert ServerStack.from_state(newer) == ServerStack(stack_id="arn:1")


def view(status="CREATE_COMPLETE", state="running", ip="10.0.0.7"):
    stack = SimpleNamespace(name="mliy-alice", status=status)
    instance = SimpleNamespace(instance_id="i-1", state=state, private_ip=ip)
    return stack, instance


@pytest.mark.parametrize(
    ("status", "state", "ip", "ready"),
    [
        pytest.param("CREATE_IN_PROGRESS", "pending", None, False, id="creating"),
        pytest.param("CREATE_COMPLETE", "pending", None, False, id="instance-pending"),
        pytest.param("CREATE_IN_PROGRESS", "running", "10.0.0.7", False, id="stack-pending"),
        pytest.param("CREATE_COMPLETE", "running", None, False, id="no-address-yet"),
        pytest.param("CREATE_COMPLETE", "running", "10.0.0.7", True, id="ready"),
    ],
)
def test_ready_instance_waits_until_stack_and_instance_are_up(status, state, ip, ready):
    stack, instance = view(status, state, ip)
    assert (ready_instance("mliy-alice", stack, instance) is instance) is ready


@pytest.mark.parametrize(
    ("status", "state", "reason"),
    [
        pytest.param("ROLLBACK_COMPLETE", "running", "stack mliy-alice is ROLLBACK_COMPLETE"),
        pytest.param("DELETE_IN_PROGRESS", "running", "is DELETE_IN_PROGRESS"),
        pytest.param("CREATE_COMPLETE", "stopping", "instance i-1 is stopping"),
        pytest.param("CREATE_COMPLETE", "terminated", "instance i-1 is terminated"),
    ],
)
def test_ready_instance_raises_when_the_launch_went_down(status, state, reason):
    stack, instance = view(status, state)
    with pytest.raises(LaunchFailed, match=reason):
        ready_instance("mliy-alice", stack, instance)
    with pytest.raises(LaunchFailed, match=reason):
        check_alive(stack, instance)


def test_a_stack_gone_from_a_fresh_view_failed():
    with pytest.raises(LaunchFailed, match="stack mliy-alice disappeared"):
        ready_instance("mliy-alice", None, None)


def test_check_alive_passes_a_booting_server():
    check_alive(*view())
    check_alive(None, None)  # not seen yet


@pytest.mark.parametrize(
    "prefix, user, server",
    [
        pytest.param("mliy", "alice", "", id="plain"),
        pytest.param("mliy", "a.b@example.com", "my server", id="email-space"),
        pytest.param("x" * 50, "u" * 300, "s" * 300, id="long"),
        pytest.param("9-", "élodie", "—", id="digit-prefix-unicode"),
        pytest.param("", "", "", id="empty"),
    ],
)
def test_stack_name_ends_with_a_16_digit_digest_and_stays_valid(prefix, user, server):
    name = stack_name(prefix, "hub", user, server)
    digest = hashlib.sha256(f"hub\0{user}\0{server}".encode()).hexdigest()[:16]
    assert name.endswith(f"-{digest}")
    assert re.fullmatch(r"[A-Za-z][-A-Za-z0-9]*", name)
    assert len(name) <= 128


def test_stack_names_of_look_alike_servers_differ_in_their_digest():
    # a.b and a-b clean to the same text: only the digest keeps their stacks apart
    first, second = stack_name("mliy", "hub", "a.b", ""), stack_name("mliy", "hub", "a-b", "")
    assert first.rsplit("-", 1)[0] == second.rsplit("-", 1)[0]
    assert first != second
