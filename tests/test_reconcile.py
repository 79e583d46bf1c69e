"""The reconciler: a table of cases for the pure decision, then each case against moto.

Cases: (a) orphaned stacks, (b) state without a stack, (c) failed deletes, (d) dormant
servers. The clock is a plain function the tests move; no test waits on the wall clock.
"""

import asyncio
import logging
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from moto.cloudformation.models import cloudformation_backends
from moto.core import DEFAULT_ACCOUNT_ID

from mliy_spawner import reconcile, stacks
from mliy_spawner.reconcile import (
    DAY,
    Memory,
    Reconciler,
    ServerState,
    Settings,
    View,
    decide,
    hub_clear_state,
    hub_notify,
    hub_server_states,
)
from mliy_spawner.reflector import InstanceView, Reflector, StackView
from mliy_spawner.util import run_blocking

REGION = "us-east-1"
NOW = 1_800_000_000.0  # epoch seconds of the table's clock


def arn(name):
    return f"arn:aws:cloudformation:{REGION}:123456789012:stack/{name}/abc"


def stack(name, status="CREATE_COMPLETE", hub="mliy", user="alice", server=""):
    tags = {"mliy:user": user}
    if hub:
        tags["mliy:hub"] = hub
    if server:
        tags["mliy:server"] = server
    return StackView(arn(name), name, status, None, {}, tags)


def instance(name, state="stopped"):
    return InstanceView(f"i-{name}", state, "10.0.0.5", "t2.micro", arn(name), {})


A, B = arn("a"), arn("b")

# (stacks, gone, instances, stopped_at, servers, memory, settings, actions, findings)
CASES = {
    "orphan reported, no grace: kept": (
        [stack("a")],
        (),
        [],
        {},
        [],
        {},
        {},
        [],
        ["orphan"],
    ),
    "orphan within its grace: kept": (
        [stack("a")],
        (),
        [],
        {},
        [],
        {"unclaimed_since": {A: NOW - 59}},
        {"orphan_grace": 60},
        [],
        ["orphan"],
    ),
    "orphan past its grace: deleted": (
        [stack("a")],
        (),
        [],
        {},
        [],
        {"unclaimed_since": {A: NOW - 60}},
        {"orphan_grace": 60},
        ["delete-orphan"],
        ["orphan"],
    ),
    "orphan first seen now, grace 0: deleted": (
        [stack("a")],
        (),
        [],
        {},
        [],
        {},
        {"orphan_grace": 0},
        ["delete-orphan"],
        ["orphan"],
    ),
    "stack of a spawn in progress (state not saved yet): not an orphan": (
        [stack("a", "CREATE_IN_PROGRESS")],
        (),
        [],
        {},
        [ServerState("alice", "", None, active=True)],
        {"unclaimed_since": {A: NOW - 1000}},
        {"orphan_grace": 0},
        [],
        [],
    ),
    "orphan still being created: not deleted": (
        [stack("a", "CREATE_IN_PROGRESS")],
        (),
        [],
        {},
        [],
        {"unclaimed_since": {A: NOW - 1000}},
        {"orphan_grace": 60},
        [],
        ["orphan"],
    ),
    "orphan being deleted: nothing to do": (
        [stack("a", "DELETE_IN_PROGRESS")],
        (),
        [],
        {},
        [],
        {},
        {"orphan_grace": 0},
        [],
        [],
    ),
    "claimed stack: fine": (
        [stack("a")],
        (),
        [],
        {},
        [ServerState("alice", "", A)],
        {},
        {"orphan_grace": 0},
        [],
        [],
    ),
    "another hub's stack: never touched": (
        [stack("a", hub="other"), stack("b", "DELETE_FAILED", hub="other")],
        (),
        [],
        {},
        [],
        {},
        {"orphan_grace": 0},
        [],
        [],
    ),
    "untagged stack: never touched": (
        [stack("a", hub=None)],
        (),
        [],
        {},
        [],
        {},
        {"orphan_grace": 0},
        [],
        [],
    ),
    "state names a deleted stack: cleared": (
        [],
        [A],
        [],
        {},
        [ServerState("alice", "", A, region=REGION)],
        {},
        {},
        ["clear-state"],
        ["missing-stack"],
    ),
    "state names a deleted stack, server pending: kept": (
        [],
        [A],
        [],
        {},
        [ServerState("alice", "", A, active=True)],
        {},
        {},
        [],
        [],
    ),
    "state names a stack not seen yet: kept": (
        [],
        [],
        [],
        {},
        [ServerState("alice", "", A)],
        {},
        {},
        [],
        [],
    ),
    "state of another region: left to its reconciler": (
        [],
        [A],
        [],
        {},
        [ServerState("alice", "", A, region="eu-west-1")],
        {},
        {},
        [],
        [],
    ),
    "delete failed: retried": (
        [stack("a", "DELETE_FAILED")],
        (),
        [],
        {},
        [ServerState("alice", "", A)],
        {},
        {},
        ["retry-delete"],
        ["delete-failed"],
    ),
    "rolled back orphan: deleted at once": (
        [stack("a", "ROLLBACK_COMPLETE")],
        (),
        [],
        {},
        [],
        {},
        {},
        ["retry-delete"],
        ["delete-failed"],
    ),
    "delete failed, pause not over: waits": (
        [stack("a", "DELETE_FAILED")],
        (),
        [],
        {},
        [],
        {"delete_tries": {A: (1, NOW + 1)}},
        {},
        [],
        ["delete-failed"],
    ),
    "delete failed N times: reported, left alone": (
        [stack("a", "DELETE_FAILED")],
        (),
        [],
        {},
        [],
        {"delete_tries": {A: (3, NOW - 1)}},
        {"delete_retries": 3},
        [],
        ["delete-gave-up"],
    ),
    "rolled back during a pending spawn: the spawner's to clean": (
        [stack("a", "ROLLBACK_COMPLETE")],
        (),
        [],
        {},
        [ServerState("alice", "", A, active=True)],
        {},
        {},
        [],
        [],
    ),
    "stopped, dormancy off: fine": (
        [stack("a")],
        (),
        [instance("a")],
        {"i-a": NOW - 100 * DAY},
        [ServerState("alice", "", A)],
        {},
        {},
        [],
        [],
    ),
    "stopped past dormant_after: reported": (
        [stack("a")],
        (),
        [instance("a")],
        {"i-a": NOW - 31 * DAY},
        [ServerState("alice", "", A)],
        {},
        {"dormant_after": 30 * DAY},
        [],
        ["dormant"],
    ),
    "stopped, not long enough: fine": (
        [stack("a")],
        (),
        [instance("a")],
        {"i-a": NOW - 29 * DAY},
        [ServerState("alice", "", A)],
        {},
        {"dormant_after": 30 * DAY, "dormant_action": "remove"},
        [],
        [],
    ),
    "stopped, time unknown, first seen long ago: dormant": (
        [stack("a")],
        (),
        [instance("a")],
        {},
        [ServerState("alice", "", A)],
        {"stopped_since": {"i-a": NOW - 31 * DAY}},
        {"dormant_after": 30 * DAY},
        [],
        ["dormant"],
    ),
    "running: never dormant": (
        [stack("a")],
        (),
        [instance("a", "running")],
        {},
        [ServerState("alice", "", A)],
        {"stopped_since": {"i-a": NOW - 31 * DAY}},
        {"dormant_after": 30 * DAY},
        [],
        [],
    ),
    "dormant, remove: the user is warned first": (
        [stack("a")],
        (),
        [instance("a")],
        {"i-a": NOW - 31 * DAY},
        [ServerState("alice", "", A)],
        {},
        {"dormant_after": 30 * DAY, "dormant_action": "remove"},
        ["warn-dormant"],
        ["dormant"],
    ),
    "dormant, warned too recently: waits": (
        [stack("a")],
        (),
        [instance("a")],
        {"i-a": NOW - 40 * DAY},
        [ServerState("alice", "", A, notice={"kind": "dormant", "stack_id": A, "at": NOW - DAY})],
        {},
        {"dormant_after": 30 * DAY, "dormant_action": "remove"},
        [],
        ["dormant"],
    ),
    "dormant, warned dormant_notice ago: removed": (
        [stack("a")],
        (),
        [instance("a")],
        {"i-a": NOW - 40 * DAY},
        [
            ServerState(
                "alice", "", A, notice={"kind": "dormant", "stack_id": A, "at": NOW - 7 * DAY}
            )
        ],
        {},
        {"dormant_after": 30 * DAY, "dormant_action": "remove"},
        ["remove-dormant"],
        ["dormant"],
    ),
    "dormant but spawning (resume): never removed": (
        [stack("a")],
        (),
        [instance("a")],
        {"i-a": NOW - 40 * DAY},
        [
            ServerState(
                "alice", "", A, active=True, notice={"kind": "dormant", "stack_id": A, "at": 0}
            )
        ],
        {},
        {"dormant_after": 30 * DAY, "dormant_action": "remove"},
        [],
        [],
    ),
    "two servers, two cases": (
        [stack("a"), stack("b", user="bob")],
        [arn("c")],
        [],
        {},
        [ServerState("alice", "", A), ServerState("carol", "x", arn("c"))],
        {"unclaimed_since": {B: NOW - 10}},
        {"orphan_grace": 5},
        ["delete-orphan", "clear-state"],
        ["orphan", "missing-stack"],
    ),
}


@pytest.mark.parametrize(
    "stack_list, gone, instances, stopped_at, servers, memory, settings, actions, findings",
    list(CASES.values()),
    ids=list(CASES),
)
def test_decide(
    stack_list, gone, instances, stopped_at, servers, memory, settings, actions, findings
):
    view = View(
        {s.stack_id: s for s in stack_list},
        frozenset(gone),
        {i.instance_id: i for i in instances},
        stopped_at,
    )
    plan = decide(view, servers, Memory(**memory), Settings("mliy", REGION, **settings), NOW)
    assert [a.kind for a in plan.actions] == actions
    assert [f.kind for f in plan.findings] == findings


def test_orphan_clock_starts_when_first_seen_and_restarts_when_claimed():
    view = View({A: stack("a")})
    settings = Settings("mliy", REGION, orphan_grace=60)
    plan = decide(view, [], Memory(), settings, NOW)
    assert plan.memory.unclaimed_since == {A: NOW}
    assert not decide(view, [], plan.memory, settings, NOW + 59).actions
    spawning = [ServerState("alice", "", None, active=True)]
    plan = decide(view, spawning, plan.memory, settings, NOW + 59)
    assert plan.memory.unclaimed_since == {}  # a spawn of that server: the clock restarts
    plan = decide(view, [], plan.memory, settings, NOW + 100)
    assert not plan.actions
    assert [a.kind for a in decide(view, [], plan.memory, settings, NOW + 160).actions] == [
        "delete-orphan"
    ]


def test_retry_pauses_grow_then_give_up():
    view = View({A: stack("a", "DELETE_FAILED")})
    settings = Settings("mliy", REGION, delete_retries=3, retry_start=10, retry_max=25)
    memory, now, tried = Memory(), NOW, []
    for _ in range(100):
        plan = decide(view, [], memory, settings, now)
        memory = plan.memory
        if plan.actions:
            tried.append(now - NOW)
        if plan.findings[0].kind == "delete-gave-up":
            break
        now += 1
    assert tried == [0, 10, 30]  # pauses of 10, then 20 (util.backoff, factor 2)
    assert "3 deletes" in plan.findings[0].reason


def test_dormant_time_from_state_transition_reason():
    assert reconcile.stopped_at("User initiated (2026-11-01 10:00:00 GMT)") == 1793527200.0
    assert reconcile.stopped_at("User initiated (2026-11-01 10:00:00 UTC)") == 1793527200.0
    assert reconcile.stopped_at("Server.SpotInstanceShutdown") is None
    assert reconcile.stopped_at("") is None


def test_bad_dormant_action_is_refused():
    with pytest.raises(ValueError, match="dormant_action 'delete'"):
        Reconciler(None, list, None, settings=Settings("mliy", dormant_action="delete"))


# ---- JupyterHub's database ------------------------------------------------------------------


class HubDB:
    """JupyterHub's tables in memory; rows are the hub's spawners."""

    def __init__(self, url="sqlite://"):
        from jupyterhub import orm
        from sqlalchemy import create_engine
        from sqlalchemy.orm import Session

        self.orm = orm
        engine = create_engine(url)
        orm.Base.metadata.create_all(engine)
        self.db = Session(engine)
        self.users = None

    def row(self, user, server="", state=None, running=False):
        orm = self.orm
        orm_user = self.db.query(orm.User).filter_by(name=user).one_or_none()
        if orm_user is None:
            orm_user = orm.User(name=user)
            self.db.add(orm_user)
        row = orm.Spawner(user=orm_user, name=server, state=state or {})
        if running:
            row.server = orm.Server(base_url=f"/user/{user}/{server}")
        self.db.add(row)
        self.db.commit()
        return row

    def state(self, user, server=""):
        self.db.expire_all()
        return reconcile._row(self.db, user, server).state

    def server_states(self):
        return hub_server_states(self.db, self.users)

    def clear_state(self, user, server, notice):
        return hub_clear_state(self.db, self.users, user, server, notice)

    def notify(self, user, server, notice):
        return hub_notify(self.db, self.users, user, server, notice)


def mliy_state(stack_id):
    return {"mliy": {"stack_id": stack_id, "region": REGION, "version": 1}}


def test_hub_states_and_clearing_never_touch_an_active_server():
    hub = HubDB()
    hub.row("alice", "", mliy_state(A))
    hub.row("alice", "gpu", mliy_state(B), running=True)
    hub.row("bob", "", {})  # no mliy state, not active: not listed
    bob = hub.row("bob", "pending", {})
    live = SimpleNamespace(active=True, load_state=None)
    hub.users = {bob.user.id: SimpleNamespace(spawners={"pending": live})}
    states = {(s.user, s.server): s for s in hub.server_states()}
    assert states == {
        ("alice", ""): ServerState("alice", "", A, False, REGION, None),
        ("alice", "gpu"): ServerState("alice", "gpu", B, True, REGION, None),
        ("bob", "pending"): ServerState("bob", "pending", None, True, None, None),
    }
    notice = {"kind": "stack-gone", "message": "gone"}
    assert hub.clear_state("alice", "gpu", notice) is False
    assert hub.state("alice", "gpu") == mliy_state(B)
    assert hub.clear_state("alice", "", notice) is True
    assert hub.state("alice", "") == {reconcile.NOTICE_KEY: notice}
    assert reconcile.notice_message(hub.state("alice", "")) == "gone"
    assert hub.notify("bob", "pending", notice) is False


def test_hub_states_are_one_query_whatever_the_number_of_servers(store_url):
    # the reconciler reads them on the hub's loop: a query per row (each spawner's user
    # and server loaded apart) stalled it for seconds at 5,000 servers. On both of the
    # hub's databases: the state column is named in the query's text
    from sqlalchemy import event

    hub = HubDB(store_url)
    for i in range(30):
        hub.row(f"u{i}", "", mliy_state(f"{A}-{i}"), running=i % 3 == 0)
        hub.row(f"u{i}", "gpu", {"other": 1})  # no mliy state, not active: not listed
    hub.db.expire_all()
    statements = []
    engine = hub.db.get_bind()
    event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    states = hub.server_states()
    assert len(statements) == 1, statements
    assert len(states) == 30
    assert {s.stack_id for s in states} == {f"{A}-{i}" for i in range(30)}
    assert sum(s.active for s in states) == 10
    hub.db.close()
    hub.db.get_bind().dispose()


def test_clearing_reloads_a_live_spawner(make_spawner):
    hub = HubDB()
    row = hub.row("alice", "", mliy_state(A))
    spawner = make_spawner()
    spawner.load_state(mliy_state(A))
    hub.users = {row.user.id: SimpleNamespace(spawners={"": spawner})}
    assert hub.clear_state("alice", "", {"kind": "stack-gone", "message": "gone"})
    assert spawner.stack.stack_id is None
    assert "mliy" not in spawner.get_state()


# ---- against moto ---------------------------------------------------------------------------


class Clock:
    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
async def reflector(aws_env):
    made = Reflector(aws_env.ec2, aws_env.cfn, "mliy", interval=5.0, min_interval=0.02)
    yield made
    await made.stop()


@pytest.fixture
def launch_log(caplog):
    """caplog on the mliy.launch logger itself (a spawner may stop "mliy" propagating)."""
    logger = logging.getLogger("mliy.launch")
    level = logger.level
    logger.addHandler(caplog.handler)
    logger.setLevel(logging.INFO)
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.setLevel(level)


@pytest.fixture
def hub():
    return HubDB()


def make_reconciler(reflector, hub, clock, **settings):
    return Reconciler(
        reflector,
        hub.server_states,
        hub.clear_state,
        hub.notify,
        settings=Settings("mliy", REGION, **settings),
        now=clock,
    )


def stack_status(cfn, stack_id):
    return cfn.describe_stacks(StackName=stack_id)["Stacks"][0]["StackStatus"]


def moto_stack(stack_id):
    return cloudformation_backends[DEFAULT_ACCOUNT_ID][REGION].stacks[stack_id]


async def create_like_the_spawner(spawner, hub="mliy"):
    """CreateStack exactly as MLiySpawner._launch does, and no state saved: a hub that
    crashed between the two."""
    await spawner._connect()
    await spawner._run_apply_user_options({})
    choice = spawner._launch_choice
    name = stacks.stack_name("mliy", hub, spawner.user.name, spawner.name or "")
    tags = stacks.build_tags(hub, spawner.user.name, spawner.name or "", choice)
    user_data = await spawner._render_user_data(choice)
    parameters = stacks.build_parameters(
        choice, spawner.subnet_id, spawner.availability_zone, user_data
    )
    template = await run_blocking(Path(choice.config.template).read_text)
    stack_id, created = await run_blocking(
        stacks.create_stack, spawner.cfn_client, name, template, parameters, tags, "mliy-crash-1"
    )
    assert created
    return stack_id


async def start(spawner, options=None):
    spawner.user_options = options or {}
    await spawner._run_apply_user_options(spawner.user_options)
    return await spawner.start()


async def test_crash_between_create_and_save_leaves_an_orphan_deleted_after_grace(
    aws_env, make_spawner, reflector, hub, launch_log
):
    stack_id = await create_like_the_spawner(make_spawner())
    hub.row("alice", "", {})  # the hub's row, without the stack's id
    clock = Clock(NOW)
    reconciler = make_reconciler(reflector, hub, clock, orphan_grace=600)
    await reconciler.reconcile()
    assert [(f["kind"], f["stack_id"], f["user"]) for f in reconciler.report()] == [
        ("orphan", stack_id, "alice")
    ]
    assert "orphan stack mliy-alice-" in launch_log.text
    assert "no server's state names it" in launch_log.text

    clock.now += 599
    await reconciler.reconcile()
    assert stack_status(aws_env.cfn, stack_id) == "CREATE_COMPLETE"
    clock.now += 1
    await reconciler.reconcile()
    assert stack_status(aws_env.cfn, stack_id) == "DELETE_COMPLETE"
    await reconciler.reconcile()
    assert reconciler.report() == []


async def test_stack_of_a_spawn_in_progress_is_never_an_orphan(
    aws_env, make_spawner, reflector, hub
):
    stack_id = await create_like_the_spawner(make_spawner())
    row = hub.row("alice", "", {}, running=True)  # the hub counts the spawn as pending
    clock = Clock(NOW)
    reconciler = make_reconciler(reflector, hub, clock, orphan_grace=0)
    await reconciler.reconcile()
    clock.now += DAY
    await reconciler.reconcile()
    assert stack_status(aws_env.cfn, stack_id) == "CREATE_COMPLETE"
    assert reconciler.report() == []
    # the spawner saved its state and the spawn ended: claimed, still nothing to do
    row.state, row.server = mliy_state(stack_id), None
    hub.db.commit()
    clock.now += DAY
    await reconciler.reconcile()
    assert stack_status(aws_env.cfn, stack_id) == "CREATE_COMPLETE"
    assert reconciler.report() == []


async def test_another_hubs_stack_is_never_touched(aws_env, make_spawner, reflector, hub):
    other = await create_like_the_spawner(make_spawner(), hub="other")
    failed = await create_like_the_spawner(make_spawner(server_name="x"), hub="other")
    moto_stack(failed).status = "DELETE_FAILED"
    clock = Clock(NOW)
    reconciler = make_reconciler(reflector, hub, clock, orphan_grace=0)
    await reconciler.reconcile()
    clock.now += DAY
    await reconciler.reconcile()
    assert stack_status(aws_env.cfn, other) == "CREATE_COMPLETE"
    assert stack_status(aws_env.cfn, failed) == "DELETE_FAILED"
    assert reconciler.report() == []


async def test_state_of_a_deleted_stack_is_cleared_with_a_notice(
    aws_env, make_spawner, reflector, hub, launch_log
):
    spawner = make_spawner(server_name="gpu")
    await start(spawner)
    await spawner.stop()
    stack_id = spawner.stack.stack_id
    hub.row("alice", "gpu", spawner.get_state())
    aws_env.cfn.delete_stack(StackName=stack_id)  # someone cleaned up by hand
    reconciler = make_reconciler(reflector, hub, Clock(NOW))
    await reconciler.reconcile()
    state = hub.state("alice", "gpu")
    assert "mliy" not in state
    assert state[reconcile.NOTICE_KEY]["kind"] == "stack-gone"
    assert "alice:gpu was deleted outside the hub" in reconcile.notice_message(state)
    assert "cleared the state of server alice:gpu" in launch_log.text
    assert f"its stack {stack_id} no longer exists" in launch_log.text
    # the next start launches a new stack
    restarted = make_spawner(server_name="gpu")
    restarted.load_state(state)
    await start(restarted)
    assert restarted.stack.stack_id not in (None, stack_id)


async def test_deleted_stack_of_a_running_server_is_left_to_the_hub(
    aws_env, make_spawner, reflector, hub
):
    spawner = make_spawner()
    await start(spawner)
    hub.row("alice", "", spawner.get_state(), running=True)
    aws_env.cfn.delete_stack(StackName=spawner.stack.stack_id)
    reconciler = make_reconciler(reflector, hub, Clock(NOW))
    await reconciler.reconcile()
    assert hub.state("alice")["mliy"]["stack_id"] == spawner.stack.stack_id


async def test_failed_delete_is_retried_then_reported(
    aws_env, make_spawner, reflector, hub, launch_log
):
    spawner = make_spawner()
    await start(spawner)
    stack_id = spawner.stack.stack_id
    hub.row("alice", "", spawner.get_state())
    moto_stack(stack_id).status = "DELETE_FAILED"
    deletes = []

    def record(params, **kwargs):
        deletes.append(params["StackName"])

    # AWS answers the delete, then fails it again: the stack stays DELETE_FAILED
    events = aws_env.cfn.meta.events
    events.register("provide-client-params.cloudformation.DeleteStack", record)
    events.register(
        "before-call.cloudformation.DeleteStack",
        lambda **kw: (SimpleNamespace(status_code=200), {}),
    )
    clock = Clock(NOW)
    reconciler = make_reconciler(reflector, hub, clock, delete_retries=2)
    await reconciler.reconcile()
    assert deletes == [stack_id]
    await reconciler.reconcile()  # the pause (60 s) is not over
    assert deletes == [stack_id]
    clock.now += 60
    await reconciler.reconcile()
    assert deletes == [stack_id, stack_id]
    clock.now += DAY
    await reconciler.reconcile()
    assert deletes == [stack_id, stack_id]
    assert [f["kind"] for f in reconciler.report()] == ["delete-gave-up"]
    assert "still there after 2 deletes" in launch_log.text


async def test_rolled_back_orphan_is_deleted(aws_env, make_spawner, reflector, hub):
    stack_id = await create_like_the_spawner(make_spawner())
    moto_stack(stack_id).status = "ROLLBACK_COMPLETE"
    reconciler = make_reconciler(reflector, hub, Clock(NOW))
    await reconciler.reconcile()
    assert stack_status(aws_env.cfn, stack_id) == "DELETE_COMPLETE"


async def test_dormant_server_is_warned_then_removed(
    aws_env, make_spawner, reflector, hub, launch_log
):
    spawner = make_spawner(server_name="old")
    await start(spawner)
    await spawner.stop()
    stack_id, instance_id = spawner.stack.stack_id, spawner.stack.instance_id
    hub.row("alice", "old", spawner.get_state())
    clock = Clock(time.time() + 31 * DAY)  # moto stamps the stop with the real time
    reconciler = make_reconciler(
        reflector,
        hub,
        clock,
        dormant_after=30 * DAY,
        dormant_action="remove",
        dormant_notice=7 * DAY,
    )
    await reconciler.reconcile()
    assert [f["kind"] for f in reconciler.report()] == ["dormant"]
    assert f"instance {instance_id} stopped since" in launch_log.text
    notice = hub.state("alice", "old")[reconcile.NOTICE_KEY]
    assert notice["kind"] == "dormant"
    assert "will be deleted after" in notice["message"]
    assert hub.state("alice", "old")["mliy"]["stack_id"] == stack_id

    clock.now += 7 * DAY - 1
    await reconciler.reconcile()
    assert stack_status(aws_env.cfn, stack_id) == "CREATE_COMPLETE"
    clock.now += 1
    await reconciler.reconcile()
    assert stack_status(aws_env.cfn, stack_id) == "DELETE_COMPLETE"
    state = hub.state("alice", "old")
    assert "mliy" not in state
    assert "alice:old was removed" in reconcile.notice_message(state)
    assert "removing dormant server alice:old" in launch_log.text


async def test_dormant_server_that_starts_is_not_removed(aws_env, make_spawner, reflector, hub):
    spawner = make_spawner()
    await start(spawner)
    await spawner.stop()
    row = hub.row("alice", "", spawner.get_state())
    clock = Clock(time.time() + 40 * DAY)
    reconciler = make_reconciler(
        reflector, hub, clock, dormant_after=30 * DAY, dormant_action="remove", dormant_notice=0
    )
    await reconciler.reconcile()  # warned
    row.server = hub.orm.Server(base_url="/user/alice/")  # the user starts it
    hub.db.commit()
    clock.now += DAY
    await reconciler.reconcile()
    assert stack_status(aws_env.cfn, spawner.stack.stack_id) == "CREATE_COMPLETE"
    assert hub.state("alice")["mliy"]["stack_id"] == spawner.stack.stack_id


async def test_background_task_runs_cycles_and_shared_one_per_key(reflector, hub):
    reconciler = make_reconciler(reflector, hub, Clock(NOW))
    reconciler.scan = False
    reconciler.interval = 0.01
    made = []

    def factory():
        made.append(reconciler)
        return reconciler

    try:
        assert reconcile.shared_reconciler(("test", id(reflector)), factory) is reconciler
        assert reconcile.shared_reconciler(("test", id(reflector)), factory) is reconciler
        assert made == [reconciler]
        for _ in range(500):
            if reconciler.cycles >= 2:
                break
            await asyncio.sleep(0.01)
        assert reconciler.cycles >= 2
    finally:
        await reconciler.stop()


@pytest.mark.parametrize("case", ["orphan", "dormant"])
async def test_server_that_becomes_active_before_the_action_is_spared(
    aws_env, make_spawner, reflector, hub, case
):
    spawner = make_spawner()
    if case == "orphan":
        stack_id = await create_like_the_spawner(spawner)
        row = hub.row("alice", "", {})
        settings = {"orphan_grace": 0}
        clock = Clock(NOW)
    else:
        await start(spawner)
        await spawner.stop()
        stack_id = spawner.stack.stack_id
        row = hub.row("alice", "", spawner.get_state())
        hub.notify("alice", "", {"kind": "dormant", "stack_id": stack_id, "at": 0})
        settings = {"dormant_after": DAY, "dormant_action": "remove", "dormant_notice": 0}
        clock = Clock(time.time() + 2 * DAY)
    calls = []

    def server_states():
        # the third read is the check right before the action: a spawn began meanwhile
        calls.append(1)
        if len(calls) == 3:
            row.server = hub.orm.Server(base_url="/user/alice/")
            hub.db.commit()
        return hub.server_states()

    reconciler = Reconciler(
        reflector,
        server_states,
        hub.clear_state,
        hub.notify,
        settings=Settings("mliy", REGION, **settings),
        now=clock,
    )
    plan = await reconciler.reconcile()
    assert [a.kind for a in plan.actions] == [
        f"{'delete-orphan' if case == 'orphan' else 'remove-dormant'}"
    ]
    assert stack_status(aws_env.cfn, stack_id) == "CREATE_COMPLETE"


# ---- what admins see: the store (the service's Strays page) and the metric ---------------


def findings_metric(kind):
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("mliy_reconciler_findings", {"region": REGION, "kind": kind})


async def test_findings_go_to_the_store_and_the_metric_each_cycle(
    aws_env, make_spawner, reflector, hub, store
):
    from datetime import UTC, datetime

    stack_id = await create_like_the_spawner(make_spawner())
    hub.row("alice", "", {})
    clock = Clock(NOW)
    reconciler = Reconciler(
        reflector,
        hub.server_states,
        hub.clear_state,
        hub.notify,
        settings=Settings("mliy", REGION, orphan_grace=600),
        publish=reconcile.findings_publisher(store, "mliy"),
        now=clock,
    )
    await reconciler.reconcile()
    [found] = store.findings("mliy")
    assert (found.kind, found.stack_id, found.user, found.region) == (
        "orphan",
        stack_id,
        "alice",
        REGION,
    )
    assert found.since == datetime.fromtimestamp(NOW, UTC)
    assert "no server's state names it" in found.reason
    assert findings_metric("orphan") == 1
    assert findings_metric("dormant") == 0

    clock.now += 600  # deleted after the grace: the next cycle finds nothing
    await reconciler.reconcile()
    await reconciler.reconcile()
    assert stack_status(aws_env.cfn, stack_id) == "DELETE_COMPLETE"
    assert store.findings("mliy") == []
    assert findings_metric("orphan") == 0


async def test_a_hub_spawner_starts_a_reconciler_that_saves_its_findings(make_spawner, monkeypatch):
    monkeypatch.setattr(reconcile, "_reconcilers", {})  # none left from other tests
    spawner = make_spawner(reconcile_interval=3600)
    stack_id = await create_like_the_spawner(spawner)  # and no state saved
    spawner.user.settings = {"users": {}}  # as inside JupyterHub
    spawner._ensure_reconciler()
    try:
        for _ in range(500):
            found = await run_blocking(spawner.store.findings)
            if found:
                break
            await asyncio.sleep(0.02)
        assert [(f.kind, f.stack_id, f.hub) for f in found] == [("orphan", stack_id, "mliy")]
    finally:
        await spawner.reconciler.stop()
