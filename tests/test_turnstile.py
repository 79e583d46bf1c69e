"""The turnstile that spreads a burst of spawns over the event loop's iterations
(``util.take_turn``), and MLiySpawner's token scopes, which take a turn in it.

Iterations are counted, not timed: a callback that schedules itself again with
``call_soon`` runs once per iteration of the loop, so the count it keeps names the
iteration each task's synchronous stretch ran in.
"""

import asyncio
import inspect

import pytest
from jupyterhub import orm
from jupyterhub.utils import maybe_future

from mliy_spawner import util
from mliy_spawner.service import server_token_scopes
from mliy_spawner.spawner import MLiySpawner


async def wait_turn():
    turn = util.take_turn()
    if turn is not None:
        await turn


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
    iterations = await burst(20, wait_turn)
    assert len(set(iterations)) == 20, iterations
    assert iterations == sorted(iterations)  # first come, first on


async def test_a_lone_task_goes_on_at_once_and_the_next_one_waits():
    assert util.take_turn() is None
    second = util.take_turn()
    assert isinstance(second, asyncio.Future) and not second.done()
    await second
    # the loop moved on: once the turnstile is at rest, the next lone task goes on
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert util.take_turn() is None


async def test_without_the_turnstile_the_burst_shares_one_iteration():
    # what the test above guards against: a plain yield lets them all on together
    iterations = await burst(20, lambda: asyncio.sleep(0))
    assert len(set(iterations)) == 1


async def test_a_cancelled_wait_gives_its_place_up():
    loop = asyncio.get_running_loop()
    waiting = [loop.create_task(wait_turn()) for _ in range(5)]
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
    await asyncio.sleep(0)
    assert not util._turnstiles[loop].busy
    assert len(set(await burst(3, wait_turn))) == 3


@pytest.mark.parametrize("run", ["first loop", "second loop"])
def test_each_event_loop_has_its_own_turnstile(run):
    # a test's own loop, closed after: the turnstile of a finished loop is not reused
    iterations = asyncio.run(burst(4, wait_turn))
    assert len(set(iterations)) == 4


async def ask_like_jupyterhub(spawner):
    """What JupyterHub's ``User.spawn`` does around ``server_token_scopes``: the new
    server's row is committed, the spawner's row is linked to it (not committed), and
    the scopes are asked for, awaited through ``maybe_future`` when not a list."""
    session = spawner.orm_spawner.test_session
    # the hub's server role is read once and kept, so (as in a hub after its first
    # spawn) asking for the scopes runs no query that would flush the session
    server_token_scopes(spawner)
    server = orm.Server(base_url=f"/user/{spawner.user.name}/")
    session.add(server)
    session.commit()
    spawner.orm_spawner.server = server
    answer = spawner.server_token_scopes(spawner)
    awaited = inspect.isawaitable(answer)
    if awaited:
        answer = await maybe_future(answer)
    return server, answer, awaited


async def test_a_lone_spawn_gets_its_scopes_without_an_await(make_spawner):
    # no await: JupyterHub runs on to the options check, so bad options are refused
    # with a 400 by the request itself, even with slow_spawn_timeout = 0
    spawner = make_spawner()
    server, scopes, awaited = await ask_like_jupyterhub(spawner)
    assert not awaited
    assert scopes == server_token_scopes(spawner)
    assert spawner.orm_spawner.server is server


async def test_a_burst_of_spawns_takes_turns_and_loses_nothing(make_spawner):
    spawners = [make_spawner(user=f"user{i}") for i in range(4)]
    loop = asyncio.get_running_loop()
    counter = IterationCounter(loop)

    # a request of the hub that finishes while spawns wait: JupyterHub's
    # BaseHandler.finish rolls back what is dirty in the (shared) session
    def finish_requests():
        for spawner in spawners:
            session = spawner.orm_spawner.test_session
            if session.dirty:
                session.rollback()
        finishing[0] = loop.call_soon(finish_requests)

    finishing = [loop.call_soon(finish_requests)]
    got = []

    async def one(spawner):
        server, scopes, awaited = await ask_like_jupyterhub(spawner)
        got.append((counter.count, awaited, scopes))
        assert spawner.orm_spawner.server is server, spawner.user.name

    try:
        await asyncio.gather(*(one(s) for s in spawners))
    finally:
        counter.stop()
        finishing[0].cancel()
    assert len({iteration for iteration, _, _ in got}) == 4
    assert [awaited for _, awaited, _ in got] == [False, True, True, True]
    assert all(scopes == server_token_scopes(spawners[0]) for _, _, scopes in got)


def test_an_admin_list_of_scopes_is_kept():
    spawner = MLiySpawner(server_token_scopes=["users:activity!user"])
    assert spawner.server_token_scopes == ["users:activity!user"]
