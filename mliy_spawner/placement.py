"""Where instances go when the hub does not say: the hub's own subnet and zone (IMDSv2).

MLiy read the subnet and availability zone of the machine it ran on from instance
metadata; MLiySpawner does the same when ``subnet_id``/``availability_zone`` are empty.
"""

from tornado.httpclient import AsyncHTTPClient, HTTPRequest


async def read_placement(base_url, request_timeout=3):
    """``(subnet_id, availability_zone)`` of this machine from the metadata service."""
    client = AsyncHTTPClient()
    base = base_url.rstrip("/")
    token_request = HTTPRequest(
        f"{base}/latest/api/token",
        method="PUT",
        body="",
        headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"},
        request_timeout=request_timeout,
    )
    token = (await client.fetch(token_request)).body.decode()

    async def get(path):
        request = HTTPRequest(
            f"{base}/latest/meta-data/{path}",
            headers={"X-aws-ec2-metadata-token": token},
            request_timeout=request_timeout,
        )
        return (await client.fetch(request)).body.decode().strip()

    zone = await get("placement/availability-zone")
    mac = await get("mac")
    subnet = await get(f"network/interfaces/macs/{mac}/subnet-id")
    return subnet, zone


_hub_placement = None


async def hub_placement(base_url):
    """:func:`read_placement`, read once per process (the hub does not move)."""
    global _hub_placement
    if _hub_placement is None:
        _hub_placement = await read_placement(base_url)
    return _hub_placement
