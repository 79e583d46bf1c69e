"""The instance control API's actions, carried out through the hub REST API.

``start``      POST   /users/{u}/server(s/{s})            (saved user options)
``stop``       DELETE /users/{u}/server(s/{s})
``restart``    stop, wait until the hub says it stopped, start
``terminate``  named server: DELETE with ``{"remove": true}`` (the spawner's
               ``delete_forever`` deletes the stack); default server (it cannot be
               removed): stop, wait, then delete the CloudFormation stack here.
               Either way the instance is forgotten in the store.

Who may do what is decided by :func:`refusal`: the owner or a hub admin, and only with
a token whose scopes would let it do the same through the hub itself, so the service
never lends a token more power than the hub gives it.
"""

import logging
from dataclasses import dataclass

from jupyterhub.services.auth import check_scopes

from .. import aws
from ..util import StatusError, run_blocking
from . import START_SCOPE
from .hub import HubAPIError, server_label

log = logging.getLogger("mliy.service")

ACTIONS = ("start", "stop", "restart", "terminate")
# the hub scopes each action needs on the server
NEEDED_SCOPES = {
    "start": (START_SCOPE,),
    "stop": ("delete:servers",),
    "restart": ("delete:servers", START_SCOPE),
    "terminate": ("delete:servers", START_SCOPE),
}


class ActionError(StatusError):
    """An action that cannot be carried out; ``status`` is the HTTP answer."""


@dataclass(frozen=True)
class ActionResult:
    status: str  # running, starting, stopped, stopping, terminating
    http_status: int  # 200 when done, 202 when the hub is still working on it


def refusal(user_model, record, action):
    """Why ``user_model`` may not ``action`` the instance of ``record``; None if it may."""
    if user_model.get("kind", "user") != "user":
        return f"only users' tokens may control instances, not a {user_model.get('kind')}'s"
    name = user_model.get("name")
    if name != record.user and not user_model.get("admin"):
        return f"user {name!r} may not control instance {record.instance_id!r} of another user"
    held = set(user_model.get("scopes") or ())
    target = f"{record.user}/{record.server_name}"
    for scope in NEEDED_SCOPES[action]:
        if not check_scopes({f"{scope}!server={target}"}, held):
            return (
                f"the token of {name!r} lacks the scope {scope!r} on server {target!r}, "
                f"which {action} needs"
            )
    return None


class InstanceActions:
    """Carry out control actions for instances recorded in ``store``."""

    def __init__(self, hub, store, run_blocking, aws_endpoint_url=None, stop_timeout=300):
        self.hub = hub
        self.store = store
        self._run = run_blocking
        self.aws_endpoint_url = aws_endpoint_url or None
        self.stop_timeout = stop_timeout
        self._clients = {}

    async def run(self, record, action, actor=None):
        """Carry out ``action``; ``actor`` (``user:<name>`` or ``admin:<name>``, who
        asked) goes to the hub with each call, for its audit trail."""
        if action not in ACTIONS:
            raise ActionError(400, f"action {action!r} is unknown; one of {', '.join(ACTIONS)}")
        user, server_name = record.user, record.server_name
        try:
            model = await self.hub.get_server(user, server_name)
            if model and model.get("pending"):
                raise ActionError(
                    409,
                    f"server {server_label(user, server_name)} is pending {model['pending']}; "
                    "try again when it has finished",
                )
            return await getattr(self, f"_{action}")(record, model, actor)
        except HubAPIError as e:
            if e.status in (400, 409):
                # the hub refuses because of the server's state (already running, pending)
                raise ActionError(409, f"the hub refused to {action}: {e.message}") from None
            if e.status == 404:
                raise ActionError(404, f"the hub does not know this server: {e.message}") from None
            raise ActionError(502, f"the hub API failed ({e.status}): {e.message}") from None

    async def _start(self, record, model, actor):
        if model and model.get("ready"):
            raise ActionError(
                409, f"server {server_label(record.user, record.server_name)} is already running"
            )
        return await self._ask_hub(
            self.hub.start_server, record, actor, "started", "starting", "running"
        )

    async def _stop(self, record, model, actor):
        if not (model and model.get("ready")):
            return ActionResult("stopped", 200)
        return await self._ask_hub(
            self.hub.stop_server, record, actor, "stopped", "stopping", "stopped"
        )

    async def _ask_hub(self, call, record, actor, done, working, finished):
        """Have the hub ``call`` (start_server, stop_server) on the server of ``record``.

        Logs the call as ``done`` ("started", "stopped"); the result's status is
        ``working`` while the hub is still on it (it answered 202), else ``finished``.
        """
        status = await call(record.user, record.server_name, actor=actor)
        label = server_label(record.user, record.server_name)
        log.info("%s %s (hub answered %s)", done, label, status)
        return ActionResult(working, 202) if status == 202 else ActionResult(finished, 200)

    async def _stop_and_wait(self, record, model, actor):
        if not (model and model.get("ready")):
            return
        await self.hub.stop_server(record.user, record.server_name, actor=actor)
        if not await self.hub.wait_stopped(
            record.user, record.server_name, within=self.stop_timeout
        ):
            raise ActionError(
                504,
                f"server {server_label(record.user, record.server_name)} did not stop within "
                f"{self.stop_timeout} s",
            )

    async def _restart(self, record, model, actor):
        await self._stop_and_wait(record, model, actor)
        return await self._start(record, None, actor)

    async def _terminate(self, record, model, actor):
        label = server_label(record.user, record.server_name)
        if record.server_name and model is not None:
            # removing a named server makes the spawner delete its stack
            await self.hub.stop_server(record.user, record.server_name, remove=True, actor=actor)
            log.info("removed server %s of instance %s", label, record.instance_id)
        else:
            await self._stop_and_wait(record, model, actor)
            await self._delete_stack(record)
        await self._run(self.store.forget_instance, record.instance_id)
        return ActionResult("terminating", 202)

    async def _delete_stack(self, record):
        if not record.stack_id:
            log.warning("instance %s has no stack recorded; nothing to delete", record.instance_id)
            return
        if not record.region:
            raise ActionError(
                500, f"instance {record.instance_id!r} has no region recorded; cannot delete stack"
            )
        from botocore.exceptions import BotoCoreError, ClientError

        # building a client loads botocore's service models from disk: not on the loop
        client = await run_blocking(self._cloudformation, record.region)
        try:
            await run_blocking(client.delete_stack, StackName=record.stack_id)
        except ClientError as e:
            error = e.response.get("Error", {})
            raise ActionError(
                502,
                f"CloudFormation DeleteStack of {record.stack_id!r} failed: "
                f"{error.get('Code')}: {error.get('Message')}",
            ) from None
        except BotoCoreError as e:
            raise ActionError(502, f"CloudFormation DeleteStack failed: {e}") from None
        log.info("deleting stack %s of instance %s", record.stack_id, record.instance_id)

    def _cloudformation(self, region):
        if region not in self._clients:
            self._clients[region] = aws.make_client(
                "cloudformation", region, endpoint_url=self.aws_endpoint_url
            )
        return self._clients[region]
