"""The spawner's progress (stack events, then the instance's own steps) and its DNS hooks."""

import asyncio
import shutil
from pathlib import Path

import pytest
from tornado import web

from mliy_spawner import plugins
from mliy_spawner.store import Store

ROOT = Path(__file__).resolve().parent.parent
SERVICE_URL = "http://127.0.0.1:9/services/mliy/"  # only passed to the instance; never fetched

STEPS = [
    ("Mounting the data volume", 10),
    ("Creating user alice", 30),
    ("Installing packages", 60),
    ("Starting the notebook server", 90),
    ("done", 100),
]


async def report_when_owned(spawner, steps, store_url):
    """Play the instance: once the spawner recorded the owner, report ``steps``."""
    store = Store(store_url)  # the service's own connection to the store
    try:
        for _ in range(500):
            if spawner.stack.instance_id and await asyncio.to_thread(
                store.owner, spawner.stack.instance_id
            ):
                break
            await asyncio.sleep(0.02)
        owner = await asyncio.to_thread(store.owner, spawner.stack.instance_id)
        assert owner.user == spawner.user.name and owner.stack_id == spawner.stack.stack_id
        for step, percent, *failed in steps:
            await asyncio.to_thread(
                store.add_progress, spawner.stack.instance_id, step, percent, bool(failed)
            )
            await asyncio.sleep(0.05)
    finally:
        store.close()


async def begin(spawner, options=None):
    spawner.user_options = options or {}
    await spawner._run_apply_user_options(spawner.user_options)
    return await spawner.start()


async def test_progress_shows_stack_then_instance_steps_and_replays(make_spawner, tmp_path):
    spawner = make_spawner(service_url=SERVICE_URL, wait_for_boot=True)
    instance = asyncio.ensure_future(report_when_owned(spawner, STEPS, spawner.store_url))
    await begin(spawner)
    await instance
    messages = [e["message"] for e in spawner._progress.events]
    percents = [e["progress"] for e in spawner._progress.events]
    assert messages[0].startswith("Creating stack mliy-alice-")
    running = messages.index(f"Instance {spawner.stack.instance_id} is running")
    assert messages[running + 1 : running + 1 + len(STEPS)] == [f"Instance: {s}" for s, _ in STEPS]
    assert messages[-1].startswith("Connecting to the notebook server at 10.")
    assert percents == sorted(percents) and percents[-1] == 95

    # a reconnecting page gets everything again, in order, from the start
    replay = []
    generator = spawner.progress()
    for _ in spawner._progress.events:
        replay.append(await generator.__anext__())
    await generator.aclose()
    assert replay == spawner._progress.events


async def test_failed_step_fails_spawn_with_its_message(aws_env, make_spawner):
    spawner = make_spawner(service_url=SERVICE_URL, wait_for_boot=True)
    steps = [("Creating user alice", 30), ("Installing packages: pip exited 1", 60, "failed")]
    instance = asyncio.ensure_future(report_when_owned(spawner, steps, spawner.store_url))
    with pytest.raises(web.HTTPError) as e:
        await begin(spawner)
    await instance
    assert "failed to set up: Installing packages: pip exited 1" in str(e.value)
    assert spawner.stack.stack_id is None
    statuses = [s["StackStatus"] for s in aws_env.cfn.list_stacks()["StackSummaries"]]
    assert statuses == ["DELETE_COMPLETE"]


async def test_resume_does_not_wait_for_boot_steps(make_spawner):
    spawner = make_spawner(service_url=SERVICE_URL, wait_for_boot=True)
    instance = asyncio.ensure_future(report_when_owned(spawner, STEPS, spawner.store_url))
    await begin(spawner)
    await instance
    await spawner.stop()
    spawner.clear_state()
    # the user data does not run again on a resumed instance: nothing more is reported
    await asyncio.wait_for(begin(spawner), 20)
    assert not any(
        m.startswith("Instance: ") for m in (e["message"] for e in spawner._progress.events)
    )


@pytest.fixture
def dns_folder(tmp_path, aws_env):
    import boto3

    route53 = boto3.client("route53", region_name="us-east-1")
    zone = route53.create_hosted_zone(Name="notebooks.test", CallerReference="mliy-tests")
    folder = tmp_path / "dns-plugins"
    folder.mkdir()
    shutil.copy(ROOT / "plugins" / "route53.py", folder / "route53.py")
    (folder / "plugin_settings.py").write_text('ROUTE53_ZONE_NAME = "notebooks.test"\n')
    return folder, route53, zone["HostedZone"]["Id"]


def a_records(route53, zone_id):
    records = route53.list_resource_record_sets(HostedZoneId=zone_id)["ResourceRecordSets"]
    return {
        r["Name"]: [v["Value"] for v in r["ResourceRecords"]] for r in records if r["Type"] == "A"
    }


async def test_dns_record_follows_start_stop_resume_delete(aws_env, make_spawner, dns_folder):
    folder, route53, zone_id = dns_folder
    spawner = make_spawner(dns_plugin_folder=str(folder), connect_via_dns=True)
    host, _ = await begin(spawner)
    ip = aws_env.ec2.describe_instances(InstanceIds=[spawner.stack.instance_id])["Reservations"][0][
        "Instances"
    ][0]["PrivateIpAddress"]
    name = f"mliy-{plugins.dns_label('alice', '')}.notebooks.test"
    assert a_records(route53, zone_id) == {f"{name}.": [ip]}
    assert host == name
    assert spawner.get_state()["mliy"]["dns_ip"] == ip

    await spawner.stop()
    assert a_records(route53, zone_id) == {}
    spawner.clear_state()
    await begin(spawner)
    assert list(a_records(route53, zone_id)) == [f"{name}."]
    await spawner.delete_forever()
    assert a_records(route53, zone_id) == {}


async def test_dns_failure_does_not_fail_the_spawn(aws_env, make_spawner, dns_folder):
    folder, route53, zone_id = dns_folder
    route53.delete_hosted_zone(Id=zone_id)  # every DNS call now fails
    spawner = make_spawner(dns_plugin_folder=str(folder), connect_via_dns=True)
    host, port = await begin(spawner)
    assert host.startswith("10.")  # reached by IP, MLiy's fallback
    assert any(
        "DNS create" in e["message"] and "failed" in e["message"] for e in spawner._progress.events
    )


async def test_no_log_record_holds_the_token_or_user_data(aws_env, make_spawner, caplog):
    import logging

    caplog.set_level(logging.DEBUG)  # everything, botocore included
    spawner = make_spawner(service_url=SERVICE_URL, wait_for_boot=True)
    instance = asyncio.ensure_future(report_when_owned(spawner, STEPS, spawner.store_url))
    await begin(spawner)
    await instance
    await spawner.stop()
    assert "is running" in caplog.text and "DescribeInstances" in caplog.text  # logs were on
    assert "secret-api-token-0123456789" not in caplog.text
    assert "MLIY_NOTEBOOK_USER" not in caplog.text  # the preamble of the user data
    for record in caplog.records:
        assert "secret-api-token" not in repr(record.args)


async def test_store_knows_the_owner_until_the_stack_is_deleted(make_spawner):
    spawner = make_spawner(server_name="gpu")
    await begin(spawner)
    instance_id = spawner.stack.instance_id
    owner = spawner.store.owner(instance_id)
    assert (owner.user, owner.server_name, owner.stack_id) == (
        "alice",
        "gpu",
        spawner.stack.stack_id,
    )
    await spawner.stop()  # stopped, not deleted: still known
    assert spawner.store.owner(instance_id) is not None
    await spawner.delete_forever()
    assert spawner.store.owner(instance_id) is None


async def test_silent_instance_is_left_to_the_hub_not_failed(aws_env, make_spawner, caplog):
    spawner = make_spawner(service_url=SERVICE_URL, wait_for_boot=True, boot_silence_limit=0.5)
    ip, _ = await asyncio.wait_for(begin(spawner), 20)  # nothing reports: no 900 s wait
    assert ip.startswith("10.")
    assert spawner.stack.stack_id  # the stack stays: the hub now waits for the server itself
    messages = [e["message"] for e in spawner._progress.events]
    assert "The instance reports no progress; waiting for its notebook server" in messages
    assert "is MLiySpawner.service_url reachable from instances?" in caplog.text
