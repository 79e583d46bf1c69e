"""The turnstile that spreads a burst of spawns over the event loop's iterations
(``util.one_per_iteration``), and MLiySpawner's token scopes, which take a turn in it.

Iterations are counted, not timed: a callback that schedules itself again with
``call_soon`` runs once per iteration of the loop, so the count it keeps names the
iteration each task's synchronous stretch ran in.
"""

import asyncio

import pytest

from mliy_spawner import util
from mliy_spawner.service import server_token_scopes
from mliy_spawner.spawner import MLiySpawner


class IterationCounter:
    """Counts the loop's iterations while it runs."""

    def __init__(self, loop):
        self.loop = loop
        self.count = 0
        self.handle = loop.call_soon(self.tick)

    def tick(self):
        self.count += 1
        self.handle = self.loop.call_soon(self.tick)

    def stop(self):
        self.handle.cancel()


async def burst(n, wait):
    """``n`` tasks started together, each awaiting ``wait()`` and then noting the
    iteration it went on in; returns those iterations in the tasks' order."""
    counter = IterationCounter(asyncio.get_running_loop())
    passed = {}

    async def one(i):
        await wait()
        passed[i] = counter.count

    try:
        await asyncio.gather(*(one(i) for i in range(n)))
    finally:
        counter.stop()
    return [passed[i] for i in range(n)]


async def test_a_burst_goes_on_one_waiter_per_iteration():
    iterations = await burst(20, util.one_per_iteration)
    assert len(set(iterations)) == 20, iterations
    assert iterations == sorted(iterations)  # first come, first on


async def test_without_the_turnstile_the_burst_shares_one_iteration():
    # what the test above guards against: a plain yield lets them all on together
    iterations = await burst(20, lambda: asyncio.sleep(0))
    assert len(set(iterations)) == 1


async def test_a_cancelled_wait_gives_its_place_up():
    loop = asyncio.get_running_loop()
    waiting = [loop.create_task(util.one_per_iteration()) for _ in range(5)]
    await asyncio.sleep(0)  # all five are in the queue
    waiting[1].cancel()
    waiting[3].cancel()
    done = await asyncio.gather(*waiting, return_exceptions=True)
    assert [isinstance(d, asyncio.CancelledError) for d in done] == [
        False,
        True,
        False,
        True,
        False,
    ]
    # and the turnstile is at rest, ready for the next burst
    assert not util._turnstiles[loop].turning
    assert len(set(await burst(3, util.one_per_iteration))) == 3


@pytest.mark.parametrize("run", ["first loop", "second loop"])
def test_each_event_loop_has_its_own_turnstile(run):
    # a test's own loop, closed after: the turnstile of a finished loop is not reused
    iterations = asyncio.run(burst(4, util.one_per_iteration))
    assert len(set(iterations)) == 4


async def test_spawner_token_scopes_take_a_turn_each(make_spawner):
    spawners = [make_spawner() for _ in range(3)]
    ask = spawners[0].server_token_scopes
    assert asyncio.iscoroutinefunction(ask)
    counter = IterationCounter(asyncio.get_running_loop())
    got = []

    async def one(spawner):
        scopes = await spawner.server_token_scopes(spawner)
        got.append((counter.count, scopes))

    try:
        await asyncio.gather(*(one(s) for s in spawners))
    finally:
        counter.stop()
    assert len({iteration for iteration, _ in got}) == 3
    assert all(scopes == server_token_scopes(spawners[0]) for _, scopes in got)


def test_an_admin_list_of_scopes_is_kept():
    spawner = MLiySpawner(server_token_scopes=["users:activity!user"])
    assert spawner.server_token_scopes == ["users:activity!user"]
