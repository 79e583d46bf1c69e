"""Placement from instance metadata (IMDSv2), served by a stand-in on 127.0.0.1."""

import pytest
from tornado import web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from mliy_spawner import placement
from mliy_spawner.placement import read_placement


class FakeIMDS:
    """IMDSv2: a token from PUT /latest/api/token is required on every metadata GET."""

    def __init__(self, subnet_id, zone):
        self.token = "imds-token-123"
        self.metadata = {
            "placement/availability-zone": zone,
            "mac": "0e:11:22:33:44:55",
            "network/interfaces/macs/0e:11:22:33:44:55/subnet-id": subnet_id,
        }
        self.requests = []

    def app(self):
        imds = self

        class Token(web.RequestHandler):
            def put(self):
                assert self.request.headers["X-aws-ec2-metadata-token-ttl-seconds"]
                imds.requests.append("token")
                self.write(imds.token)

        class Meta(web.RequestHandler):
            def get(self, path):
                if self.request.headers.get("X-aws-ec2-metadata-token") != imds.token:
                    raise web.HTTPError(401)
                imds.requests.append(path)
                if path not in imds.metadata:
                    raise web.HTTPError(404)
                self.write(imds.metadata[path])

        return web.Application([(r"/latest/api/token", Token), (r"/latest/meta-data/(.*)", Meta)])


@pytest.fixture
async def imds(aws_env):
    fake = FakeIMDS(aws_env.subnet_id, aws_env.availability_zone)
    sockets = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(fake.app())
    server.add_sockets(sockets)
    fake.url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
    yield fake
    server.stop()


async def test_read_placement(imds, aws_env):
    assert await read_placement(imds.url) == (aws_env.subnet_id, aws_env.availability_zone)
    assert imds.requests[0] == "token"


async def test_spawner_launches_in_the_hubs_subnet(imds, aws_env, make_spawner, monkeypatch):
    monkeypatch.setattr(placement, "_hub_placement", None)
    spawner = make_spawner(subnet_id="", availability_zone="", instance_metadata_url=imds.url)
    spawner.user_options = {}
    await spawner._run_apply_user_options({})
    await spawner.start()
    instance = aws_env.ec2.describe_instances(InstanceIds=[spawner.stack.instance_id])
    assert instance["Reservations"][0]["Instances"][0]["SubnetId"] == aws_env.subnet_id


async def test_unreachable_metadata_is_a_clear_error(aws_env, make_spawner, monkeypatch):
    monkeypatch.setattr(placement, "_hub_placement", None)
    spawner = make_spawner(
        subnet_id="", availability_zone="", instance_metadata_url="http://127.0.0.1:9"
    )
    spawner.user_options = {}
    await spawner._run_apply_user_options({})
    with pytest.raises(web.HTTPError) as e:
        await spawner.start()
    assert "subnet_id/availability_zone are not set" in str(e.value)
    assert aws_env.cfn.describe_stacks()["Stacks"] == []
