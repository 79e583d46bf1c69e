"""One shared view of this hub's stacks and instances, for all spawners.

JupyterHub polls every spawner every 30 s; one DescribeInstances per server would use
up EC2's Describe budget at a few hundred servers. Instead one :class:`Reflector` per
region (and hub) keeps a view that every spawner reads: ``poll()`` makes no AWS call.
What a cycle costs is set by this hub's own servers, never by what else the account
holds:

- one DescribeInstances filtered by the hub's tag, 1,000 instances a page;
- DescribeStacks by id, only for the stacks whose state needs it: new ones, those in
  a transitional state (``*_IN_PROGRESS``), those whose instance changed or went away,
  those a spawner just acted on (:meth:`Reflector.watch`), and one settled stack per
  cycle in turn, so a change made behind the hub's back is seen within N cycles even
  when no instance shows it. An idle cycle makes ceil(N / 1000) + 1 calls. A busy
  cycle (a class starting together) describes its stacks ``DESCRIBE_WORKERS`` at a time.

Stacks are known from the spawners' state (``watch``) and from the stack tag that
CloudFormation puts on every instance it creates.

A cycle runs every ``interval`` seconds, or sooner when a spawner asks for one
(:meth:`Reflector.refresh`); requests are coalesced, and cycles are at least
``min_interval`` apart, so a hundred spawners waiting at once still cost one cycle a
second. Errors back off (up to ``max_backoff``); the cache is kept and its age is
reported, and a task that dies is restarted (kubespawner's reflector, jupyterhub/
kubespawner#938, showed what a silently dead watcher does).
"""

import asyncio
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

from . import metrics, stacks
from .util import backoff, run_blocking

log = logging.getLogger("mliy.aws")

HUB_TAG = "mliy:hub"
# stacks one cycle describes at once: 100 new stacks at 200 ms each took 20 s one after
# another; a few at a time stays well inside CloudFormation's Describe rate
DESCRIBE_WORKERS = 4


@dataclass(frozen=True)
class InstanceView:
    instance_id: str
    state: str
    private_ip: str | None
    instance_type: str
    stack_id: str | None
    tags: dict = field(default_factory=dict)
    # when it last started, and when it last stopped (StateTransitionReason), if EC2 says
    launch_time: datetime | None = None
    transition_time: datetime | None = None


@dataclass(frozen=True)
class StackView:
    stack_id: str
    name: str
    status: str
    reason: str | None
    outputs: dict = field(default_factory=dict)
    tags: dict = field(default_factory=dict)


def _tags(items):
    return {t["Key"]: t["Value"] for t in items or ()}


_TRANSITION_AT = re.compile(r"\((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (?:GMT|UTC)\)")


def transition_time(reason):
    """The time in a StateTransitionReason such as "User initiated (2026-11-01 10:00:00
    GMT)", as an aware UTC datetime, or None when it holds none."""
    match = _TRANSITION_AT.search(reason or "")
    if match is None:
        return None
    return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)


def _aware(moment):
    if not isinstance(moment, datetime):
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def list_instances(ec2, hub_name):
    """Every instance tagged for this hub (one filtered, paginated call)."""
    views = {}
    paginator = ec2.get_paginator("describe_instances")
    filters = [{"Name": f"tag:{HUB_TAG}", "Values": [hub_name]}]
    for page in paginator.paginate(Filters=filters, PaginationConfig={"PageSize": 1000}):
        for reservation in page["Reservations"]:
            for inst in reservation["Instances"]:
                tags = _tags(inst.get("Tags"))
                views[inst["InstanceId"]] = InstanceView(
                    instance_id=inst["InstanceId"],
                    state=inst["State"]["Name"],
                    private_ip=inst.get("PrivateIpAddress"),
                    instance_type=inst.get("InstanceType", ""),
                    stack_id=tags.get("aws:cloudformation:stack-id"),
                    tags=tags,
                    launch_time=_aware(inst.get("LaunchTime")),
                    transition_time=transition_time(inst.get("StateTransitionReason")),
                )
    return views


def describe_stack_view(cfn, stack_id):
    """The stack as a :class:`StackView`, or None when it is gone (deleted, or never was)."""
    stack = stacks.describe_stack(cfn, stack_id)
    if stack is None or stack["StackStatus"] == "DELETE_COMPLETE":
        return None
    return StackView(
        stack_id=stack["StackId"],
        name=stack["StackName"],
        status=stack["StackStatus"],
        reason=stack.get("StackStatusReason"),
        outputs={o["OutputKey"]: o.get("OutputValue") for o in stack.get("Outputs") or ()},
        tags=_tags(stack.get("Tags")),
    )


def _settled(view):
    return not view.status.endswith("_IN_PROGRESS")


def stacks_to_describe(known, cached, gone, dirty, instances, previous_instances, turn):
    """Which stacks a cycle describes (see the module's docstring), in a stable order.

    ``known``: every stack id of this hub (watched, or on an instance's tag); ``cached``:
    ``{stack id: StackView}`` from the last cycle; ``gone``: ids seen deleted; ``dirty``:
    ids a spawner acted on; ``instances``/``previous_instances``: this and the last
    cycle's ``{instance id: InstanceView}``; ``turn``: the cycle's number, choosing the
    settled stack that is checked in turn.
    """
    by_stack = {}
    for view in instances.values():
        if view.stack_id:
            by_stack.setdefault(view.stack_id, []).append(view)
    needed = []
    settled = []
    for stack_id in sorted(known - gone):
        view = cached.get(stack_id)
        if view is None or stack_id in dirty or not _settled(view):
            needed.append(stack_id)
            continue
        mine = by_stack.get(stack_id, ())
        changed = not mine or any(
            previous_instances.get(i.instance_id) != i or i.state in ("shutting-down", "terminated")
            for i in mine
        )
        (needed if changed else settled).append(stack_id)
    if settled:
        needed.append(settled[turn % len(settled)])
    return needed


def read_view(ec2, cfn, hub_name, known, cached, gone, dirty, previous_instances, turn):
    """One cycle's blocking reads: ``(instances, {stack id: StackView or None})``."""
    instances = list_instances(ec2, hub_name)
    known = known | {i.stack_id for i in instances.values() if i.stack_id}
    wanted = stacks_to_describe(known, cached, gone, dirty, instances, previous_instances, turn)
    if len(wanted) <= 1:
        return instances, {stack_id: describe_stack_view(cfn, stack_id) for stack_id in wanted}
    # a pool of the cycle's own: this runs in a thread of the shared pool, which it must
    # not wait on; boto3 clients are thread-safe
    with ThreadPoolExecutor(min(DESCRIBE_WORKERS, len(wanted))) as pool:
        views = pool.map(lambda stack_id: describe_stack_view(cfn, stack_id), wanted)
        return instances, dict(zip(wanted, views, strict=True))


class Reflector:
    """Cache of this hub's stacks and instances in one region, refreshed in the background."""

    def __init__(
        self,
        ec2,
        cfn,
        hub_name,
        *,
        interval=10.0,
        min_interval=1.0,
        max_backoff=60.0,
        stale_after=None,
    ):
        self.ec2 = ec2
        self.cfn = cfn
        self.hub_name = hub_name
        self.interval = interval
        self.min_interval = min_interval
        self.max_backoff = max_backoff
        self.stale_after = stale_after or max(3 * interval, 30.0)
        self.instances = {}
        self.stacks = {}  # live stacks of this hub: {stack id: StackView}
        self.gone = set()  # stack ids described as deleted (or never created)
        self._watched = set()  # stack ids the spawners' state names
        self._dirty = set()  # stack ids to describe in the next cycle whatever they show
        # monotonic start time of the last cycle that succeeded; None before the first
        self.last_success = None
        self.cycles = 0
        self._task = None
        self._wake = None
        self._cycle_done = None
        self._stopping = False
        self._last_cycle_started = 0.0
        self._warned_stale = False
        # coroutines called with the reflector after each successful cycle (the ledger)
        self.listeners = []
        self.ledger = None  # the usage ledger that follows this view (mliy_spawner.ledger)
        metrics.track_reflector(self)  # the fleet gauges read this view while it runs

    # ---- reading the cache --------------------------------------------------------

    def fresh_since(self, when):
        """True when a cycle that started after monotonic time ``when`` succeeded."""
        return self.last_success is not None and self.last_success >= when

    @property
    def age(self):
        """Seconds since the start of the last successful cycle (inf before the first)."""
        return float("inf") if self.last_success is None else time.monotonic() - self.last_success

    def watch(self, stack_id, changed=False):
        """Follow ``stack_id`` (a spawner's state names it). With ``changed`` (a spawner
        just created, deleted or acted on it), describe it in the next cycle."""
        if not stack_id:
            return
        self._watched.add(stack_id)
        if changed:
            self._dirty.add(stack_id)
            self.gone.discard(stack_id)

    def is_gone(self, stack_id):
        """True once a cycle described ``stack_id`` as deleted (or never created)."""
        return stack_id in self.gone

    def instance_for_stack(self, stack_id):
        """The instance created by ``stack_id`` (from its CloudFormation tags), or None."""
        stack = self.stacks.get(stack_id)
        instance_id = stack.outputs.get("InstanceId") if stack else None
        if instance_id and instance_id in self.instances:
            return self.instances[instance_id]
        for inst in self.instances.values():
            if inst.stack_id == stack_id and inst.state != "terminated":
                return inst
        return None

    def server_status(self, stack_id, instance_id, since):
        """``poll()``'s answer from the cache: None (running, pending or unknown) or an exit code.

        ``since`` is the monotonic time the stack was launched or resumed: a stack missing
        from a view older than that may simply not be listed yet. A stale view answers
        None: a server is never called stopped on a guess (batchspawner lost jobs so).
        """
        if self.last_success is None or self.age > self.stale_after:
            return None
        stack = self.stacks.get(stack_id)
        if stack is None:
            # gone, or not described yet (a stack just created, or just watched)
            return 0 if stack_id in self.gone and self.fresh_since(since) else None
        status = stacks.simplify_status(stack.status)
        if status in (stacks.GONE, stacks.DELETING):
            return 0
        if status == stacks.FAILED:
            return 1
        instance = self.instances.get(instance_id) if instance_id else None
        instance = instance or self.instance_for_stack(stack_id)
        if instance is None:
            return None if status == stacks.PENDING else 0
        return None if instance.state in stacks.INSTANCE_UP else 0

    # ---- running ------------------------------------------------------------------

    def start(self):
        """Start the background task (idempotent; also restarts a dead one)."""
        if self._task is not None and not self._task.done():
            return
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._cycle_done = loop.create_future()
        self._stopping = False
        self._task = loop.create_task(self._run(), name=f"mliy-reflector-{self.hub_name}")
        self._task.add_done_callback(self._task_done)

    def _task_done(self, task):
        if self._stopping or task.cancelled():
            return
        error = task.exception()
        log.error("Reflector for hub %s died (%r); restarting it", self.hub_name, error)
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

    async def refresh(self):
        """Ask for a cycle soon and wait until one that started after this call ends.

        Returns True if that cycle succeeded. Many callers share one cycle; bound the
        wait with ``asyncio.timeout`` where needed.
        """
        self.start()
        asked = time.monotonic()
        while True:
            done = self._cycle_done
            self._wake.set()
            await asyncio.shield(done)
            if self._last_cycle_started >= asked:
                return self.fresh_since(asked)

    async def _run(self):
        pauses = None  # the growing pauses after failed cycles, None after a success
        while not self._stopping:
            # requests made from here on ask for the cycle after this one
            self._wake.clear()
            started = time.monotonic()
            self._last_cycle_started = started
            ok = await self._cycle(started)
            metrics.REFLECTOR_CYCLE_DURATION.observe(time.monotonic() - started)
            self.cycles += 1
            done, self._cycle_done = self._cycle_done, asyncio.get_running_loop().create_future()
            done.set_result(ok)
            if ok:
                await self._notify()
                pauses = None
                delay = self.interval
            else:
                if pauses is None:
                    start = min(2 * self.min_interval, self.max_backoff)
                    pauses = backoff(start, self.max_backoff, factor=2)
                delay = next(pauses)
            # at least min_interval between cycles; a refresh request cuts the wait short
            # but only when the last cycle succeeded (errors keep backing off)
            await asyncio.sleep(max(0.0, self.min_interval - (time.monotonic() - started)))
            remaining = max(0.0, delay - (time.monotonic() - started))
            if ok:
                try:
                    await asyncio.wait_for(self._wake.wait(), remaining)
                except TimeoutError:
                    pass
            else:
                await asyncio.sleep(remaining)

    async def _notify(self):
        for listener in list(self.listeners):
            try:
                await listener(self)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("Reflector for hub %s: a listener failed", self.hub_name)

    async def _cycle(self, started):
        dirty, self._dirty = self._dirty, set()
        try:
            instances, described = await run_blocking(
                read_view,
                self.ec2,
                self.cfn,
                self.hub_name,
                set(self._watched),
                self.stacks,
                self.gone,
                dirty,
                self.instances,
                self.cycles,
            )
        except asyncio.CancelledError:
            self._dirty |= dirty
            raise
        except Exception as e:
            metrics.REFLECTOR_ERRORS.inc()
            log.warning(
                "Reflector for hub %s: refresh failed (%s); cache is %.0f s old",
                self.hub_name,
                e,
                self.age,
            )
            if self.age > self.stale_after and not self._warned_stale:
                self._warned_stale = True
                log.error(
                    "Reflector for hub %s: no fresh view of AWS for %.0f s; servers' states "
                    "are reported as unknown (running) until it recovers",
                    self.hub_name,
                    self.age,
                )
            self._dirty |= dirty
            return False
        stacks = dict(self.stacks)
        for stack_id, view in described.items():
            if view is None:
                stacks.pop(stack_id, None)
                self.gone.add(stack_id)
            else:
                stacks[stack_id] = view
        self._watched |= {i.stack_id for i in instances.values() if i.stack_id}
        self.instances = instances
        self.stacks = stacks
        self.last_success = started
        if self._warned_stale:
            log.warning("Reflector for hub %s recovered", self.hub_name)
        self._warned_stale = False
        return True


_reflectors = {}


def shared_reflector(key, factory):
    """One reflector per ``key`` (e.g. region, endpoint, hub) and event loop."""
    loop = asyncio.get_running_loop()
    full_key = (id(loop), *key)
    reflector = _reflectors.get(full_key)
    if reflector is None:
        reflector = _reflectors[full_key] = factory()
    return reflector
