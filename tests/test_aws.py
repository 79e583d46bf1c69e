"""The mliy.aws call log: operation, duration, outcome; never parameters."""

import logging

import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from mliy_spawner.aws import make_client
from mliy_spawner.util import run_blocking


@pytest.fixture
def ec2():
    with mock_aws():
        yield make_client("ec2", "us-east-1")


def test_calls_are_logged_by_kind(ec2, caplog):
    caplog.set_level(logging.DEBUG, logger="mliy.aws")
    ec2.create_key_pair(KeyName="secret-looking-name")
    ec2.describe_key_pairs()
    with pytest.raises(ClientError):
        ec2.describe_instances(InstanceIds=["i-0123456789abcdef0"])
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "mliy.aws"]
    assert lines[0][0] == logging.INFO and lines[0][1].startswith("ec2 CreateKeyPair -> 200 (")
    assert lines[1][0] == logging.DEBUG and lines[1][1].startswith("ec2 DescribeKeyPairs -> 200")
    assert lines[2][0] == logging.WARNING
    assert "DescribeInstances -> 400 InvalidInstanceID.NotFound" in lines[2][1]
    assert "secret-looking-name" not in caplog.text and "i-0123456789abcdef0" not in caplog.text


async def test_run_blocking_uses_the_shared_pool(ec2):
    import threading

    name = await run_blocking(lambda: threading.current_thread().name)
    assert name.startswith("mliy-blocking")
