"""Strays both ways: stacks no server knows of, and servers whose stack is gone.

One :class:`Reconciler` per shared :class:`~mliy_spawner.reflector.Reflector` (region and
hub) runs in the hub. Every ``interval`` seconds it compares the reflector's view of this
hub's stacks and instances with the servers' saved states, and :func:`decide` (pure: view
+ states + memory + clock -> actions and findings) says what to do:

(a) **Orphaned stacks**: this hub's stacks (tag ``mliy:hub``) that no server's state
    names (a hub that crashed between CreateStack and saving state, a restored database,
    manual work). Reported; deleted once unclaimed for ``orphan_grace`` seconds (None,
    the default: report only). A stack whose user and server (its ``mliy:user`` and
    ``mliy:server`` tags) is spawning or running in the hub is never an orphan, and its
    clock starts again: the spawner saves the stack id right after CreateStack, while
    the hub counts the server as pending, so the window between the two is covered,
    and the grace only ever counts time with nobody claiming the stack. Stacks still
    ``*_IN_PROGRESS`` are not deleted.
(b) **State without a stack**: a server that is not running or pending whose state names
    a stack the reflector saw deleted has its ``"mliy"`` state cleared, with a notice
    (:data:`NOTICE_KEY`) the spawner shows at the next start.
(c) **Failed deletes**: this hub's stacks in DELETE_FAILED or ROLLBACK_COMPLETE are
    deleted again, with pauses growing from ``retry_start`` (util.backoff); after
    ``delete_retries`` tries they are reported and left for an admin.
(d) **Dormant servers**: instances stopped longer than ``dormant_after`` are reported; with
    ``dormant_action = "remove"`` the server first gets a notice, and ``dormant_notice``
    seconds later its state is cleared (with a notice) and its stack deleted.

"Stopped since" comes from EC2's ``StateTransitionReason`` ("User initiated (2026-11-01
10:00:00 GMT)"), read by one DescribeInstances filtered by the hub's tag and the
``stopped`` state per cycle: it survives hub restarts and is the time AWS bills by. When
the text has no time, the first cycle that saw the instance stopped counts (in memory).

The reconciler never touches a stack without this hub's tag, nor a server the hub counts
as running or pending; before each action it reads the states again and checks. Besides
the reflector's view, each cycle lists the account's stacks (DescribeStacks, 100 a page)
for this hub's stacks that have no instance left for the reflector to find (a rolled-back
launch, a failed delete): ceil(stacks in the region / 100) calls per ``interval``.

The servers' states come from two callables, so the core runs on plain functions in
tests: ``server_states()`` returns :class:`ServerState` records, and ``clear_state(user,
server, notice)`` / ``notify(user, server, notice)`` change one server's saved state and
return False when they refused (the server became active). :func:`hub_server_states`,
:func:`hub_clear_state` and :func:`hub_notify` implement them on JupyterHub's database.
``record(action, outcome, reason)``, if given, records each action carried out (or
failed) in the audit trail (:func:`audit_recorder`).
"""

import asyncio
import json
import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from itertools import islice

from sqlalchemy import Text, literal_column

from . import metrics, stacks
from .reflector import HUB_TAG, StackView, transition_time
from .util import backoff, run_blocking

log = logging.getLogger("mliy.launch")

DAY = 86400.0

#: Key of the notice in a spawner's state (beside ``"mliy"``): a dict with ``kind``
#: ("stack-gone", "dormant", "removed"), ``message`` (shown to the user), ``at`` (epoch
#: seconds) and ``stack_id``. The spawner's next ``get_state()`` drops it, so it is
#: shown at one start only.
NOTICE_KEY = "mliy_notice"

#: Stack states a delete is retried from.
RETRY_STATUSES = frozenset({"DELETE_FAILED", "ROLLBACK_COMPLETE"})

DORMANT_ACTIONS = ("report", "remove")


@dataclass(frozen=True)
class ServerState:
    """What the reconciler knows of one server from the hub's database."""

    user: str
    server: str  # "" for the default server
    stack_id: str | None  # the state's "mliy" stack_id; None for an active server without
    active: bool = False  # running, or a spawn/stop pending, in the hub
    region: str | None = None  # the state's region (None: the hub's)
    notice: dict | None = None  # the NOTICE_KEY entry of the state


@dataclass(frozen=True)
class Settings:
    """What :func:`decide` needs to know; times in seconds."""

    hub_name: str
    region: str | None = None
    orphan_grace: float | None = None
    delete_retries: int = 5
    retry_start: float = 60.0
    retry_max: float = 3600.0
    dormant_after: float | None = None
    dormant_action: str = "report"
    dormant_notice: float = 7 * DAY


@dataclass(frozen=True)
class Finding:
    """One thing an admin should know; :meth:`Reconciler.report` lists them."""

    kind: str  # orphan, missing-stack, delete-failed, delete-gave-up, dormant
    stack_id: str | None
    stack_name: str | None
    user: str | None
    server: str | None
    reason: str
    since: float | None = None  # epoch seconds: unclaimed, stopped, or first failed


@dataclass(frozen=True)
class Action:
    """One step :class:`Reconciler` carries out."""

    kind: str  # delete-orphan, clear-state, retry-delete, warn-dormant, remove-dormant
    stack_id: str | None
    stack_name: str | None
    user: str | None
    server: str | None
    reason: str
    notice: dict | None = None


@dataclass(frozen=True)
class View:
    """The reflector's view as :func:`decide` reads it."""

    stacks: dict  # {stack id: StackView}: this hub's live stacks
    gone: frozenset = frozenset()  # stack ids seen deleted
    instances: dict = field(default_factory=dict)  # {instance id: InstanceView}
    stopped_at: dict = field(default_factory=dict)  # {instance id: epoch stopped}


@dataclass(frozen=True)
class Memory:
    """What the reconciler remembers between cycles (in memory: a restart starts over)."""

    unclaimed_since: dict = field(default_factory=dict)  # {stack id: epoch}
    stopped_since: dict = field(default_factory=dict)  # {instance id: epoch first seen}
    delete_tries: dict = field(default_factory=dict)  # {stack id: (tries, next try epoch)}


@dataclass(frozen=True)
class Plan:
    actions: list
    findings: list
    memory: Memory


def _when(epoch):
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _label(user, server):
    return f"{user}:{server}" if server else f"{user}"


def _owner(stack):
    return stack.tags.get("mliy:user"), stack.tags.get("mliy:server", "")


def _retry_pause(settings, tries):
    """The pause after the ``tries``-th delete, from the one backoff iterator."""
    pauses = backoff(settings.retry_start, settings.retry_max, factor=2)
    return next(islice(pauses, tries - 1, None))


def _in_region(server, region):
    """Is the server's stack in ``region`` (None: any)? A state without one is the hub's."""
    return region is None or (server.region or region) == region


def _instance_of(view, stack_id):
    for inst in view.instances.values():
        if inst.stack_id == stack_id and inst.state != "terminated":
            return inst
    return None


def decide(view, servers, memory, settings, now):
    """What to do about this hub's strays: a :class:`Plan` (pure; see the module's doc).

    ``view``: a :class:`View`; ``servers``: :class:`ServerState` records; ``memory``: the
    last plan's :class:`Memory`; ``now``: epoch seconds.
    """
    unclaimed = dict(memory.unclaimed_since)
    stopped_seen = dict(memory.stopped_since)
    tries = dict(memory.delete_tries)
    actions, findings = [], []
    claims = {s.stack_id: s for s in servers if s.stack_id}
    busy = {(s.user, s.server) for s in servers if s.active}
    mine = {
        sid: st
        for sid, st in view.stacks.items()
        if st.tags.get(HUB_TAG) == settings.hub_name and sid not in view.gone
    }

    for sid, st in sorted(mine.items()):
        owner = claims.get(sid)
        user, server = (owner.user, owner.server) if owner else _owner(st)
        if (user, server) in busy:
            # a spawn (or stop) in the hub may be creating or cleaning up this very stack
            unclaimed.pop(sid, None)
            continue
        if st.status in RETRY_STATUSES:
            unclaimed.pop(sid, None)
            done, next_try = tries.get(sid, (0, now))
            detail = f"{st.status}: {st.reason}" if st.reason else st.status
            whose = "" if owner else ", no server's state names it"
            if done >= settings.delete_retries:
                reason = f"{detail}; still there after {done} deletes{whose}"
                findings.append(Finding("delete-gave-up", sid, st.name, user, server, reason))
            elif now >= next_try:
                tries[sid] = (done + 1, now + _retry_pause(settings, done + 1))
                reason = f"{detail}; delete {done + 1} of {settings.delete_retries}{whose}"
                findings.append(Finding("delete-failed", sid, st.name, user, server, reason))
                actions.append(Action("retry-delete", sid, st.name, user, server, reason))
            else:
                reason = f"{detail}; next delete after {_when(next_try)}{whose}"
                findings.append(Finding("delete-failed", sid, st.name, user, server, reason))
            continue
        if st.status != "DELETE_IN_PROGRESS":
            tries.pop(sid, None)
        if owner is not None:
            unclaimed.pop(sid, None)
            continue
        if stacks.simplify_status(st.status) == stacks.DELETING:
            continue
        since = unclaimed.setdefault(sid, now)
        reason = f"{st.status}; no server's state names it (unclaimed since {_when(since)})"
        findings.append(Finding("orphan", sid, st.name, user, server, reason, since))
        grace = settings.orphan_grace
        if grace is not None and now - since >= grace and not st.status.endswith("_IN_PROGRESS"):
            why = f"{reason}, longer than orphan_grace ({grace:.0f} s)"
            actions.append(Action("delete-orphan", sid, st.name, user, server, why))

    for s in servers:
        if not s.stack_id or s.active or not _in_region(s, settings.region):
            continue
        if s.stack_id in view.gone:
            reason = f"its stack {s.stack_id} no longer exists"
            notice = {
                "kind": "stack-gone",
                "stack_id": s.stack_id,
                "at": now,
                "message": (
                    f"The machine of your server {_label(s.user, s.server)} was deleted"
                    " outside the hub (its stack no longer exists); starting launches a"
                    " new one."
                ),
            }
            findings.append(Finding("missing-stack", s.stack_id, None, s.user, s.server, reason))
            actions.append(
                Action("clear-state", s.stack_id, None, s.user, s.server, reason, notice)
            )
            continue
        st = mine.get(s.stack_id)
        if st is None or stacks.simplify_status(st.status) != stacks.READY:
            continue
        inst = _instance_of(view, s.stack_id)
        if inst is None or inst.state != "stopped":
            continue
        since = view.stopped_at.get(inst.instance_id)
        if since is None:
            since = stopped_seen.setdefault(inst.instance_id, now)
        if settings.dormant_after is None or now - since < settings.dormant_after:
            continue
        days = (now - since) / DAY
        reason = f"instance {inst.instance_id} stopped since {_when(since)} ({days:.1f} days)"
        findings.append(Finding("dormant", s.stack_id, st.name, s.user, s.server, reason, since))
        if settings.dormant_action != "remove":
            continue
        notice = s.notice or {}
        warned = notice.get("kind") == "dormant" and notice.get("stack_id") == s.stack_id
        label = _label(s.user, s.server)
        if not warned:
            remove_at = now + settings.dormant_notice
            warning = {
                "kind": "dormant",
                "stack_id": s.stack_id,
                "at": now,
                "message": (
                    f"Your server {label} has been stopped since {_when(since)}. Its machine"
                    f" and disk will be deleted after {_when(remove_at)} unless you start it."
                ),
            }
            actions.append(
                Action("warn-dormant", s.stack_id, st.name, s.user, s.server, reason, warning)
            )
        elif now - notice.get("at", now) >= settings.dormant_notice:
            removed = {
                "kind": "removed",
                "stack_id": s.stack_id,
                "at": now,
                "message": (
                    f"Your server {label} was removed on {_when(now)}: it had been stopped"
                    f" since {_when(since)}. Starting launches a new machine."
                ),
            }
            why = f"{reason}; warned on {_when(notice['at'])}"
            actions.append(
                Action("remove-dormant", s.stack_id, st.name, s.user, s.server, why, removed)
            )

    live = {i for i, inst in view.instances.items() if inst.state == "stopped"}
    memory = Memory(
        unclaimed_since={k: v for k, v in unclaimed.items() if k in mine},
        stopped_since={k: v for k, v in stopped_seen.items() if k in live},
        delete_tries={k: v for k, v in tries.items() if k in mine},
    )
    return Plan(actions, findings, memory)


# ---- reading AWS (blocking; run through run_blocking) ------------------------------------


def stopped_at(reason):
    """Epoch seconds from a StateTransitionReason such as "User initiated (2026-11-01
    10:00:00 GMT)", or None when it holds no time."""
    when = transition_time(reason)
    return None if when is None else when.timestamp()


def list_hub_stacks(cfn, hub_name):
    """This hub's live stacks as ``{stack id: StackView}`` (DescribeStacks, all pages)."""
    found = {}
    for page in cfn.get_paginator("describe_stacks").paginate():
        for stack in page["Stacks"]:
            tags = {t["Key"]: t["Value"] for t in stack.get("Tags") or ()}
            if tags.get(HUB_TAG) != hub_name or stack["StackStatus"] == "DELETE_COMPLETE":
                continue
            found[stack["StackId"]] = StackView(
                stack_id=stack["StackId"],
                name=stack["StackName"],
                status=stack["StackStatus"],
                reason=stack.get("StackStatusReason"),
                outputs={o["OutputKey"]: o.get("OutputValue") for o in stack.get("Outputs") or ()},
                tags=tags,
            )
    return found


def stopped_instances(ec2, hub_name):
    """``{instance id: epoch stopped or None}`` for this hub's stopped instances."""
    filters = [
        {"Name": f"tag:{HUB_TAG}", "Values": [hub_name]},
        {"Name": "instance-state-name", "Values": ["stopped"]},
    ]
    found = {}
    paginator = ec2.get_paginator("describe_instances")
    for page in paginator.paginate(Filters=filters, PaginationConfig={"PageSize": 1000}):
        for reservation in page["Reservations"]:
            for inst in reservation["Instances"]:
                found[inst["InstanceId"]] = stopped_at(inst.get("StateTransitionReason"))
    return found


def read_extras(ec2, cfn, hub_name):
    """One cycle's reads beyond the reflector's: ``(stacks, {instance id: epoch stopped})``."""
    stopped = {k: v for k, v in stopped_instances(ec2, hub_name).items() if v is not None}
    return list_hub_stacks(cfn, hub_name), stopped


# ---- the runner -------------------------------------------------------------------------


async def _call(fn, *args):
    result = fn(*args)
    if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
        result = await result
    return result


class Reconciler:
    """The background task that carries out :func:`decide`'s plans for one reflector.

    ``server_states``, ``clear_state`` and ``notify`` are the callables described in the
    module's docstring; they run on the event loop (JupyterHub's database session lives
    there) and may be async. ``now`` returns epoch seconds.
    """

    def __init__(
        self,
        reflector,
        server_states,
        clear_state,
        notify=None,
        *,
        settings,
        record=None,
        publish=None,
        interval=600.0,
        now=time.time,
        scan=True,
    ):
        if settings.dormant_action not in DORMANT_ACTIONS:
            raise ValueError(
                f"dormant_action {settings.dormant_action!r}: use one of {DORMANT_ACTIONS}"
            )
        self.reflector = reflector
        self.server_states = server_states
        self.clear_state = clear_state
        self.notify = notify
        self.record = record
        self.publish = publish
        self.settings = settings
        self.interval = interval
        self.now = now
        self.scan = scan
        self.memory = Memory()
        self.findings = []  # the last cycle's
        self.cycles = 0
        self.last_error = None
        self._reported = set()
        self._task = None
        self._stopping = False

    def report(self):
        """The last cycle's findings, as dicts (kind, stack_id, stack_name, user, server,
        reason, since) for the service's pages and metrics."""
        return [asdict(f) for f in self.findings]

    async def reconcile(self):
        """One cycle: refresh the view, decide, act. Returns the :class:`Plan` (None when
        the reflector had no fresh view: nothing is decided on an old one)."""
        region = self.settings.region
        for s in await _call(self.server_states):
            if s.stack_id and _in_region(s, region):
                self.reflector.watch(s.stack_id)  # servers the hub has no spawner for yet
        if not await self.reflector.refresh():
            log.warning("Reconciler for hub %s: no fresh view of AWS; skipping a cycle", self.hub)
            return None
        scanned, stopped = {}, {}
        if self.scan:
            ec2, cfn = self.reflector.ec2, self.reflector.cfn
            scanned, stopped = await run_blocking(read_extras, ec2, cfn, self.hub)
        gone = frozenset(self.reflector.gone)
        known = {k: v for k, v in {**self.reflector.stacks, **scanned}.items() if k not in gone}
        view = View(known, gone, dict(self.reflector.instances), stopped)
        servers = list(await _call(self.server_states))  # read after the awaits: freshest
        plan = decide(view, servers, self.memory, self.settings, self.now())
        self.memory = plan.memory
        self.findings = plan.findings
        self._log_findings(plan.findings)
        await self._publish(plan.findings)
        for action in plan.actions:
            try:
                if await self._carry_out(action):
                    await self._record(action, "ok")
            except Exception as e:
                log.error("Reconciler: %s of %s failed: %s", action.kind, action.stack_id, e)
                await self._record(action, "failed", f"{action.reason} ({e})")
        self.cycles += 1
        return plan

    @property
    def hub(self):
        return self.settings.hub_name

    async def _record(self, action, outcome, reason=None):
        """Hand ``action`` to ``record`` (the audit trail); its errors are logged only."""
        if self.record is None:
            return
        try:
            await _call(self.record, action, outcome, action.reason if reason is None else reason)
        except Exception as e:
            log.warning(
                "Reconciler: could not record %s of %s: %s", action.kind, action.stack_id, e
            )

    async def _publish(self, findings):
        """The findings' metric, and ``publish`` (the store, for the service's page);
        its errors are logged only."""
        metrics.set_findings(self.settings.region, Counter(f.kind for f in findings))
        if self.publish is None:
            return
        try:
            await _call(self.publish, self.settings.region, self.report())
        except Exception as e:
            log.warning("Reconciler: could not save its findings: %s", e)

    def _log_findings(self, findings):
        keys = set()
        for f in findings:
            key = (f.kind, f.stack_id, f.user, f.server)
            keys.add(key)
            if key not in self._reported:
                level = logging.ERROR if f.kind == "delete-gave-up" else logging.WARNING
                who = _label(f.user, f.server) if f.user else "nobody"
                name = f.stack_name or f.stack_id
                log.log(level, "Reconciler: %s stack %s (%s): %s", f.kind, name, who, f.reason)
        self._reported = keys

    async def _still(self, action, claimed):
        """Read the states again: may ``action`` go ahead? (``claimed``: the stack must be
        named by the action's server; otherwise by no server.)"""
        servers = list(await _call(self.server_states))
        if any(s.active and (s.user, s.server) == (action.user, action.server) for s in servers):
            return False
        owners = [s for s in servers if s.stack_id == action.stack_id]
        if claimed:
            return any((s.user, s.server) == (action.user, action.server) for s in owners)
        return not owners

    async def _delete(self, action):
        await run_blocking(stacks.delete_stack, self.reflector.cfn, action.stack_id)
        self.reflector.watch(action.stack_id, changed=True)

    async def _carry_out(self, action):
        """Carry out ``action`` if it still holds; True when it was."""
        who = _label(action.user, action.server) if action.user else "nobody"
        name = action.stack_name or action.stack_id
        if action.kind == "delete-orphan":
            if not await self._still(action, claimed=False):
                log.info("Reconciler: stack %s was claimed meanwhile; kept", name)
                return False
            log.warning("Reconciler: deleting orphaned stack %s (%s): %s", name, who, action.reason)
            await self._delete(action)
        elif action.kind == "retry-delete":
            if any(
                s.active and (s.user, s.server) == (action.user, action.server)
                for s in await _call(self.server_states)
            ):
                return False
            log.warning("Reconciler: deleting stack %s (%s) again: %s", name, who, action.reason)
            await self._delete(action)
        elif action.kind == "clear-state":
            if await _call(self.clear_state, action.user, action.server, action.notice) is False:
                log.info("Reconciler: server %s became active; its state is kept", who)
                return False
            log.warning("Reconciler: cleared the state of server %s: %s", who, action.reason)
        elif action.kind == "warn-dormant":
            if self.notify is None or not await self._still(action, claimed=True):
                return False
            if await _call(self.notify, action.user, action.server, action.notice) is False:
                return False
            log.warning(
                "Reconciler: server %s is dormant (%s); told its user it will be removed",
                who,
                action.reason,
            )
        elif action.kind == "remove-dormant":
            if not await self._still(action, claimed=True):
                log.info("Reconciler: server %s changed meanwhile; not removed", who)
                return False
            if await _call(self.clear_state, action.user, action.server, action.notice) is False:
                log.info("Reconciler: server %s became active; not removed", who)
                return False
            log.warning(
                "Reconciler: removing dormant server %s (stack %s): %s", who, name, action.reason
            )
            await self._delete(action)
        else:
            raise ValueError(f"unknown action {action.kind!r}")
        return True

    # ---- running ------------------------------------------------------------------

    def start(self):
        """Start the background task (idempotent; also restarts a dead one)."""
        if self._task is not None and not self._task.done():
            return
        self._stopping = False
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(), name=f"mliy-reconciler-{self.hub}")
        self._task.add_done_callback(self._task_done)

    def _task_done(self, task):
        if self._stopping or task.cancelled():
            return
        log.error("Reconciler for hub %s died (%r); restarting it", self.hub, task.exception())
        try:
            self.start()
        except RuntimeError:  # the loop is closing
            pass

    async def stop(self):
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None

    async def _run(self):
        pauses = None  # growing pauses after failed cycles
        while not self._stopping:
            try:
                ok = await self.reconcile() is not None
                self.last_error = None
            except Exception as e:
                ok = False
                self.last_error = e
                log.error("Reconciler for hub %s: cycle failed: %s", self.hub, e)
            if ok:
                pauses = None
                delay = self.interval
            else:
                pauses = pauses or backoff(min(30.0, self.interval), self.interval, factor=2)
                delay = next(pauses)
            await asyncio.sleep(delay)


_reconcilers = {}


def shared_reconciler(key, factory):
    """One started reconciler per ``key`` (e.g. region, endpoint, hub) and event loop."""
    loop = asyncio.get_running_loop()
    full_key = (id(loop), *key)
    reconciler = _reconcilers.get(full_key)
    if reconciler is None:
        reconciler = _reconcilers[full_key] = factory()
    reconciler.start()
    return reconciler


def settings_from_traits(spawner):
    """:class:`Settings` from an MLiySpawner's traits (dormant_* are in days there)."""
    days = spawner.dormant_after
    return Settings(
        hub_name=spawner.hub_name,
        region=spawner.region,
        orphan_grace=spawner.orphan_grace,
        delete_retries=spawner.delete_retries,
        dormant_after=None if days is None else days * DAY,
        dormant_action=spawner.dormant_action,
        dormant_notice=spawner.dormant_notice * DAY,
    )


# ---- the servers' states in JupyterHub's database -----------------------------------------
#
# Minimal access, on the hub's own session (the one MLiySpawner._save_state_now uses, on the
# event loop): read every orm.Spawner row's state; write one row's state. ``users`` is the
# hub's UserDict (``spawner.user.settings["users"]``) or None: live Spawner objects are
# read with dict.get (never created), to see a pending spawn and to reload a cleared state.


def _live_spawner(users, user_id, server_name):
    if users is None or user_id is None:
        return None
    user = dict.get(users, user_id)
    spawners = getattr(user, "spawners", None)
    return dict.get(spawners, server_name or "") if spawners is not None else None


def _active(users, user_id, server_name, server_id):
    live = _live_spawner(users, user_id, server_name)
    return server_id is not None or bool(live is not None and live.active)


def hub_server_states(db, users=None):
    """:class:`ServerState` for every spawner with mliy state, and every active one.

    One query for the columns it needs, joined to the users: loading each row as an
    ``orm.Spawner`` and reaching its ``user`` and ``server`` cost two more queries a row,
    seconds on the hub's loop at 5,000 servers (``benchmarks/hubread.py``). The state is
    read as its JSON text: naming JupyterHub's ``JSONDict`` column in a query makes
    SQLAlchemy warn, in the hub's log, that the type cannot be cached.
    """
    from jupyterhub import orm

    rows = db.query(
        orm.User.id,
        orm.User.name,
        orm.Spawner.name,
        literal_column(f"{orm.Spawner.__tablename__}.state", Text),
        orm.Spawner.server_id,
    ).join(orm.User, orm.Spawner.user_id == orm.User.id)
    found = []
    for user_id, user_name, server_name, text, server_id in rows:
        state = json.loads(text) if text else None
        state = state if isinstance(state, dict) else {}
        mine = state.get("mliy") or {}
        active = _active(users, user_id, server_name, server_id)
        if mine.get("stack_id") or active:
            found.append(
                ServerState(
                    user=user_name,
                    server=server_name or "",
                    stack_id=mine.get("stack_id"),
                    active=active,
                    region=mine.get("region"),
                    notice=state.get(NOTICE_KEY),
                )
            )
    return found


def _row(db, user_name, server_name):
    from jupyterhub import orm

    return (
        db.query(orm.Spawner)
        .join(orm.User, orm.Spawner.user_id == orm.User.id)
        .filter(orm.User.name == user_name, orm.Spawner.name == server_name)
        .one_or_none()
    )


def _write(db, users, user_name, server_name, update):
    row = _row(db, user_name, server_name)
    if row is None or _active(users, row.user_id, row.name, row.server_id):
        return False
    state = update(dict(row.state or {}))
    row.state = state
    db.commit()
    live = _live_spawner(users, row.user_id, row.name)
    if live is not None:
        live.load_state(state)  # so its next get_state() does not write the old stack back
    return True


def hub_clear_state(db, users, user_name, server_name, notice):
    """Drop the server's ``"mliy"`` state and keep ``notice``; False if the server is active."""

    def update(state):
        state.pop("mliy", None)
        state[NOTICE_KEY] = notice
        return state

    return _write(db, users, user_name, server_name, update)


def hub_notify(db, users, user_name, server_name, notice):
    """Keep ``notice`` in the server's state; False if the server is active."""
    return _write(db, users, user_name, server_name, lambda s: {**s, NOTICE_KEY: notice})


def notice_message(state):
    """The message of the notice kept in a spawner's state, or None."""
    notice = (state or {}).get(NOTICE_KEY)
    return notice.get("message") if isinstance(notice, dict) else None


#: The audit trail's action for each of :class:`Action`'s kinds.
AUDIT_ACTIONS = {
    "delete-orphan": "reconcile-delete-orphan",
    "clear-state": "reconcile-clear-state",
    "retry-delete": "reconcile-retry-delete",
    "warn-dormant": "reconcile-dormant-notice",
    "remove-dormant": "reconcile-dormant-remove",
}


def findings_publisher(store, hub_name):
    """A ``publish`` callable for :class:`Reconciler`: the latest findings of ``hub_name``
    in a region go to ``store`` (in the shared executor), where the service reads them."""

    async def publish(region, found):
        rows = [
            {**f, "since": None if f["since"] is None else datetime.fromtimestamp(f["since"], UTC)}
            for f in found
        ]
        await run_blocking(store.replace_findings, hub_name, region, rows)

    return publish


def audit_recorder(store):
    """A ``record`` callable for :class:`Reconciler` writing to ``store``'s audit trail
    (the store is blocking: it runs in the shared executor)."""

    async def record(action, outcome, reason):
        await run_blocking(
            store.add_audit,
            AUDIT_ACTIONS.get(action.kind, action.kind),
            actor="reconciler",
            actor_kind="automatic",
            path="automatic",
            outcome=outcome,
            reason=reason,
            user=action.user or "",
            server_name=action.server or "",
            stack_id=action.stack_id or "",
        )

    return record
