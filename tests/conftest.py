"""Shared fixtures for mliy-spawner's tests.

Fixtures:

- ``aws_env``: moto's ``mock_aws`` for one test, seeded like the demo's account
  (``mliy_spawner.demo.aws.seed_account``: VPC, subnet, AMI, key pair, security group,
  instance profile, Route 53 zone); yields an :class:`Account` with their ids and boto3
  clients made by ``mliy_spawner.aws.make_client``.
- ``counted_clients``: ``(Counter, ec2, cfn)``: new boto3 clients on ``aws_env`` whose
  calls are counted by operation name.
- ``spawner_config``: the traits of a two-configuration, two-group setup over ``aws_env``.
- ``make_spawner``: builds an ``MLiySpawner`` against a fake hub and user (the second
  layer of tests: no hub process) and a real ``orm.Spawner`` row in an in-memory hub
  database, with a fast private reflector (``reflector="shared"``: the spawner builds
  its own) and a store in the test's tmp_path; call it with
  ``user=``, ``groups=``, ``server_name=`` and trait overrides. Reflectors it made are
  stopped after the test.
- ``postgres``: one :class:`pg.PostgresServer` for the session (Debian's ``postgresql``
  binaries, a cluster in a temporary folder on a free 127.0.0.1 port), stopped at the
  end; the tests that use it are skipped, saying why, when PostgreSQL is not installed.
- ``pg_url``: the SQLAlchemy URL of a new, empty database on ``postgres`` for one test,
  dropped after it.
- ``store_url``: a store URL for one test, parametrised: ``sqlite`` (a file in the test's
  tmp_path) and ``postgresql`` (``pg_url``). A test that takes it runs on both.
- ``store``: a :class:`mliy_spawner.store.Store` on ``store_url`` (both databases), closed
  after the test.

Other files keep fixtures that only they use.
"""

import itertools
import os
from dataclasses import dataclass
from types import SimpleNamespace

import pytest

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

REGION = "us-east-1"


@dataclass
class Account:
    """The seeded account: the demo's seed (ids) and boto3 clients on it."""

    ec2: object
    cfn: object
    seed: object

    def __getattr__(self, name):  # vpc_id, subnet_id, ami_id, key_name, ...
        return getattr(self.seed, name)


@pytest.fixture(scope="session")
def postgres():
    from pg import PostgresServer, find_bin_dir

    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip(
            "PostgreSQL is not installed (no initdb/postgres under /usr/lib/postgresql/*/bin "
            "or on PATH): `make test` installs Debian's postgresql"
        )
    server = PostgresServer(bin_dir).start()
    yield server
    server.stop()


_pg_databases = itertools.count(1)


@pytest.fixture
def pg_url(postgres):
    name = f"test_{os.getpid()}_{next(_pg_databases)}"
    url = postgres.create_database(name)
    yield url
    postgres.drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    if request.param == "postgresql":
        return request.getfixturevalue("pg_url")
    return f"sqlite:///{tmp_path / 'mliy.sqlite'}"


@pytest.fixture
def store(store_url):
    from mliy_spawner.store import Store

    s = Store(store_url)
    yield s
    s.close()


@pytest.fixture
def aws_env():
    from moto import mock_aws

    from mliy_spawner.aws import make_client
    from mliy_spawner.demo.aws import seed_account

    with mock_aws():
        # the same account the demo seeds on its moto server, here in-process
        seed = seed_account(None, REGION)
        yield Account(make_client("ec2", REGION), make_client("cloudformation", REGION), seed)


@pytest.fixture
def counted_clients(aws_env):
    from collections import Counter

    from mliy_spawner.aws import make_client

    counts = Counter()
    ec2, cfn = make_client("ec2", REGION), make_client("cloudformation", REGION)
    for client in (ec2, cfn):
        client.meta.events.register("before-call", lambda model, **kw: counts.update([model.name]))
    return counts, ec2, cfn


@pytest.fixture
def spawner_config(aws_env):
    return {
        "region": REGION,
        "subnet_id": aws_env.subnet_id,
        "availability_zone": aws_env.availability_zone,
        "software_configs": {
            "python": {
                "display_name": "Python notebooks",
                "description": "<b>Python 3</b> with the scientific stack",
                "ami_id": aws_env.ami_id,
                "instance_types": ["t2.medium", "m4.large", "m4.xlarge"],
                "default_instance_type": "m4.large",
                "volume": {"default_size": 20, "max_size": 100, "kms_key_id": "alias/mliy"},
                "params": {"python_packages": "pandas", "home_mode": "700"},
            },
            "small": {
                "display_name": "Small, no data volume",
                "ami_id": aws_env.ami_id,
                "instance_types": ["t2.micro", "t2.small"],
                "params": {"python_packages": "", "home_mode": "700"},
            },
        },
        "launch_groups": {
            "analysts": {
                "key_name": aws_env.key_name,
                "instance_profile": "mliy-notebook",
                "security_group_ids": [aws_env.security_group_id],
                "software_configs": ["python", "small"],
                "excluded_instance_types": ["m4.xlarge"],
            },
            "students": {
                "security_group_ids": [aws_env.security_group_id],
                "software_configs": ["small"],
            },
        },
        "wait_backoff_start": 0.05,
        "wait_backoff_max": 0.2,
        # nothing listens there: tests of the boot wait turn it on and report themselves
        "service_url": "http://127.0.0.1:9/services/mliy/",
        "wait_for_boot": False,
    }


def fake_user(name, groups=()):
    """What a spawner reads of JupyterHub's User."""
    return SimpleNamespace(
        name=name,
        escaped_name=name,
        url=f"/user/{name}/",
        groups=[SimpleNamespace(name=g) for g in groups],
    )


def orm_spawner(user_name, server_name=""):
    """A spawner row of JupyterHub's own database (in memory), as the hub gives one;
    the row keeps its session (``row.test_session``) alive."""
    from jupyterhub import orm
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    # JupyterHub's tables without its alembic stamp (alembic's logging set-up would
    # disable the loggers that tests read)
    engine = create_engine("sqlite://")
    orm.Base.metadata.create_all(engine)
    session = Session(engine)
    user = orm.User(name=user_name)
    row = orm.Spawner(user=user, name=server_name)
    session.add_all([user, row])
    session.commit()
    row.test_session = session
    return row


def fake_hub():
    return SimpleNamespace(
        api_url="http://127.0.0.1:8081/hub/api",
        base_url="/hub/",
        url="http://127.0.0.1:8081/hub/",
        public_host="",
    )


@pytest.fixture
async def make_spawner(aws_env, spawner_config, tmp_path):
    from mliy_spawner.reflector import Reflector
    from mliy_spawner.spawner import MLiySpawner

    made = []

    def make(user="alice", groups=("analysts",), server_name="", reflector=None, **traits):
        settings = {**spawner_config, **traits}
        settings.setdefault("ec2_client", aws_env.ec2)
        settings.setdefault("cfn_client", aws_env.cfn)
        settings.setdefault("store_url", f"sqlite:///{tmp_path}/mliy.sqlite")
        if reflector == "shared":  # the spawner builds (and shares) its own
            reflector = None
        elif reflector is None:
            reflector = Reflector(
                settings["ec2_client"],
                settings["cfn_client"],
                "mliy",
                interval=5.0,
                min_interval=0.02,
            )
            made.append(reflector)
        spawner = MLiySpawner(
            user=fake_user(user, groups),
            hub=fake_hub(),
            orm_spawner=orm_spawner(user, server_name),
            reflector=reflector,
            api_token="secret-api-token-0123456789",
            oauth_client_id=f"jupyterhub-user-{user}",
            **settings,
        )
        return spawner

    yield make
    for reflector in made:
        await reflector.stop()
