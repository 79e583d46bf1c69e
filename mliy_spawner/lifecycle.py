"""The steps of a server's life as a stack, for MLiySpawner (a mixin, kept apart for size).

:class:`StackLifecycle` holds what ``start()``, ``stop()`` and ``delete_forever()`` are
made of: creating or resuming the stack, waiting on the shared reflector, following
stack events, recording the instance's owner, DNS records, and cleaning up after a
failure or a cancel so that no stack is ever left without state pointing at it. It reads
the traits and state of :class:`~mliy_spawner.spawner.MLiySpawner`, which is the only
class that uses it.
"""

import asyncio
import time
import uuid
from pathlib import Path

from botocore.exceptions import ClientError
from jupyterhub.utils import maybe_future
from tornado import web

from . import boot, plugins, stacks, userdata
from .placement import read_placement
from .util import run_blocking

try:  # JupyterHub 6: a policy failure, shown to the user without a traceback
    from jupyterhub.spawner import SpawnException
except ImportError:  # JupyterHub 5.x
    SpawnException = None


class LaunchFailed(Exception):
    """A stack failed; the message is the reason to show the user."""


def spawn_error(message, reason, status_code=500):
    """The error a failed spawn raises: shown to the user as is."""
    if SpawnException is not None:
        return SpawnException(message, reason=reason, status_code=status_code)
    return web.HTTPError(status_code, message)


class StackLifecycle:
    """Launch, resume, watch and clean up one server's stack (mixed into MLiySpawner)."""

    # ---- AWS plumbing ------------------------------------------------------------------

    async def _aws(self, fn, *args):
        return await run_blocking(fn, *args)

    _placement_cache = None

    async def _placement(self):
        """(subnet id, availability zone): configured, or from instance metadata."""
        if self.subnet_id and self.availability_zone:
            return self.subnet_id, self.availability_zone
        cached = type(self)._placement_cache
        if cached is None:
            try:
                cached = await read_placement(self.instance_metadata_url)
            except Exception as e:
                raise spawn_error(
                    "The hub is misconfigured: MLiySpawner.subnet_id/availability_zone are "
                    f"not set and instance metadata at {self.instance_metadata_url} could not "
                    f"be read ({e}).",
                    reason="placement",
                ) from None
            type(self)._placement_cache = cached
        return self.subnet_id or cached[0], self.availability_zone or cached[1]

    async def _wait(self, check, what, limit, on_tick=None):
        """Refresh the shared view (coalesced) until ``check()`` returns a value.

        Pauses grow from wait_backoff_start (1 s) by half each time up to
        wait_backoff_max: fast for the first seconds of a launch, cheap for the minutes
        an instance takes to boot.
        """
        delay = self.wait_backoff_start
        deadline = time.monotonic() + limit
        while True:
            await self.reflector.refresh()
            if on_tick is not None:
                await on_tick()
            result = check()
            if result is not None:
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {limit:.0f} s waiting for {what}")
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, self.wait_backoff_max)

    # ---- start ---------------------------------------------------------------------------

    def _service_url(self):
        if self.service_url:
            return self.service_url
        if self.public_hub_url:
            base = self.public_hub_url.split("/hub/")[0].rstrip("/")
            return f"{base}/services/mliy/"
        return ""

    def _instance_env(self, choice):
        volume = choice.config.volume
        return userdata.instance_environment(
            self.get_env(),
            service_url=self._service_url(),
            notebook_port=self.notebook_port,
            user_name=self.user.name,
            volume_device=volume.device if volume else "",
        )

    async def _render_user_data(self, choice):
        script = await asyncio.to_thread(Path(choice.config.user_data).read_text)
        try:
            return userdata.build_user_data(
                script, choice.config.params, self.replacement_tokens, self._instance_env(choice)
            )
        except userdata.UserDataError as e:
            raise spawn_error(
                f"Software configuration {choice.config.slug!r} cannot be launched: {e}",
                reason="user-data",
            ) from None

    async def _on_launch_tick(self):
        await self._follow_events()
        if self.instance_id and self._owner_recorded != self.instance_id:
            await self._record_owner()

    _owner_recorded = None

    async def _record_owner(self):
        """Tell the store (and so the mliy service) which server owns the instance."""
        await run_blocking(
            self.store.record_instance,
            self.instance_id,
            self.user.name,
            self.name or "",
            self.stack_id,
            self.stack_region or self.region,
        )
        self._owner_recorded = self.instance_id

    def _check_alive(self):
        instance = self.reflector.instances.get(self.instance_id)
        if instance is not None and instance.state not in stacks.INSTANCE_UP:
            raise LaunchFailed(f"instance {self.instance_id} is {instance.state}")
        stack = self.reflector.stacks.get(self.stack_id)
        if stack is not None and stacks.simplify_status(stack.status) != stacks.READY:
            raise LaunchFailed(self._stack_failure(stack))

    def _dns_name(self):
        return boot.dns_label(self.user.name, self.name or "")

    async def _dns_on_start(self, instance, host):
        """Point the DNS record at the new address; return the host to connect to."""
        plugin = self.dns_plugin
        if plugin is plugins.NOOP_DNS_PLUGIN:
            return host
        ip = instance.private_ip
        # remembered even if the create fails or times out (it may still land later):
        # stop() then deletes whatever record there is
        self.dns_ip = ip
        error = await plugins.run_dns(plugin, "create", self._dns_name(), ip, self.log)
        if error:
            self._emit(error)
            return host
        if self.connect_via_dns and self.connect_address_hook is None:
            return plugins.dns_display_name(plugin, self._dns_name(), ip, self.log)
        return host

    async def _dns_on_stop(self):
        plugin = self.dns_plugin
        if plugin is plugins.NOOP_DNS_PLUGIN or not self.dns_ip:
            return
        error = await plugins.run_dns(plugin, "delete", self._dns_name(), self.dns_ip, self.log)
        if error is None:
            self.dns_ip = None

    async def _launch(self, choice):
        """Create a new stack for ``choice``; set stack_id as soon as AWS answers."""
        subnet, zone = await self._placement()
        user_data = await self._render_user_data(choice)
        template = await asyncio.to_thread(Path(choice.config.template).read_text)
        name = stacks.stack_name(
            self.stack_name_prefix, self.hub_name, self.user.name, self.name or ""
        )
        parameters = stacks.build_parameters(choice, subnet, zone, user_data)
        tags = stacks.build_tags(
            self.hub_name, self.user.name, self.name or "", choice, self.stack_tags
        )
        self._emit(f"Creating stack {name} ({choice.config.display_name}, {choice.instance_type})")
        create = asyncio.ensure_future(
            self._aws(
                stacks.create_stack,
                self.cfn_client,
                name,
                template,
                parameters,
                tags,
                f"mliy-{uuid.uuid4()}",
            )
        )
        try:
            stack_id, created = await asyncio.shield(create)
        except ClientError as e:
            # AWS refused the stack (bad subnet, AMI, profile...). None should exist, but
            # make sure nothing half-made stays behind under that name.
            await self._aws(stacks.delete_stack, self.cfn_client, name)
            message = e.response.get("Error", {}).get("Message") or str(e)
            raise spawn_error(
                f"AWS refused to launch {choice.config.display_name}: {message}",
                reason="create-stack",
            ) from None
        except asyncio.CancelledError:
            # the call runs on in its thread: learn the id, then delete what it made
            try:
                stack_id, created = await create
            except Exception:
                stack_id, created = None, False
            if created:
                self.stack_id = stack_id
                await self._delete_stack()
            raise
        self.stack_id, self.stack_name, self.stack_region = stack_id, name, self.region
        self.instance_id = None
        self.launch_options = choice.as_user_options()
        self._save_state_now()
        self._launched_at = time.monotonic()
        self._seen_events = set()
        if not created:
            self.log.warning("Adopting existing stack %s for %s", name, self._log_name)
            if await self._clear_failed_orphan(stack_id, name):
                return await self._launch(choice)
        self._emit("CloudFormation accepted the stack; waiting for the instance", 10)

    def _save_state_now(self):
        """Write the state (the new stack's id) to the hub's database right away.

        JupyterHub saves a spawner's state when start() returns. A hub restarted during
        a launch would then know nothing of the stack; with the id saved, it polls the
        server, and stops it or finds it running, instead of leaving it unaccounted for.
        """
        from sqlalchemy import inspect
        from sqlalchemy.exc import NoInspectionAvailable

        try:
            session = inspect(self.orm_spawner).session
        except NoInspectionAvailable:  # no database behind this spawner (tests)
            return
        if session is not None:
            self.orm_spawner.state = self.get_state()
            session.commit()

    async def _clear_failed_orphan(self, stack_id, name):
        """A stack of this name from a crashed hub that failed: delete it, wait, say True."""
        stack = await self._aws(stacks.describe_stack, self.cfn_client, stack_id)
        status = stacks.simplify_status(stack["StackStatus"]) if stack else stacks.GONE
        if status not in (stacks.FAILED, stacks.DELETING):
            return False
        self._emit(f"An earlier stack {name} failed ({stack['StackStatus']}); deleting it first")
        if status == stacks.FAILED:
            await self._aws(stacks.delete_stack, self.cfn_client, stack_id)
        self._forget_stack()

        def deleted():
            gone = self.reflector.stacks.get(stack_id) is None
            return True if gone and self.reflector.fresh_since(asked) else None

        asked = time.monotonic()
        await self._wait(deleted, f"stack {name} to be deleted", self.start_timeout)
        return True

    _launched_at = 0.0

    async def _resume(self, choice):
        """Start the stopped instance of the kept stack; False when there is none to resume."""
        self._launched_at = time.monotonic()
        await self.reflector.refresh()
        stack = self.reflector.stacks.get(self.stack_id)
        status = stacks.simplify_status(stack.status) if stack else stacks.GONE
        instance = self.reflector.instance_for_stack(self.stack_id) if stack else None
        if status != stacks.READY or instance is None or instance.state == "terminated":
            self.log.info(
                "Stack %s of %s cannot be resumed (%s); launching a new one",
                self.stack_name,
                self._log_name,
                stack.status if stack else "gone",
            )
            if stack is not None:
                await self._delete_stack()
            self._forget_stack()
            return False
        self.instance_id = instance.instance_id
        self._emit(f"Resuming instance {instance.instance_id}", 10)
        if instance.state in ("stopping", "shutting-down"):
            instance = await self._wait(
                lambda: self._instance_in({"stopped"}), "the instance to stop", 300
            )
        if instance.state == "stopped":
            if instance.instance_type != choice.instance_type:
                self._emit(f"Changing instance type to {choice.instance_type}")
                await self._aws(
                    stacks.set_instance_type,
                    self.ec2_client,
                    self.instance_id,
                    choice.instance_type,
                )
            await self._aws(stacks.start_instance, self.ec2_client, self.instance_id)
        self.launch_options = choice.as_user_options()
        return True

    def _instance_in(self, states):
        instance = self.reflector.instances.get(self.instance_id)
        return instance if instance is not None and instance.state in states else None

    _instance_seen = None

    def _ready_instance(self):
        """Reflector check while starting: the running instance, None to wait, or raise."""
        stack = self.reflector.stacks.get(self.stack_id)
        if stack is None:
            if self.reflector.fresh_since(self._launched_at + 0.001):
                raise LaunchFailed(f"stack {self.stack_name} disappeared")
            return None
        status = stacks.simplify_status(stack.status)
        if status in (stacks.FAILED, stacks.DELETING, stacks.GONE):
            raise LaunchFailed(self._stack_failure(stack))
        instance = self.reflector.instance_for_stack(self.stack_id)
        if instance is None:
            return None
        if (instance.instance_id, instance.state) != self._instance_seen:
            self.instance_id = instance.instance_id
            self._instance_seen = (instance.instance_id, instance.state)
            percent = boot.BOOT_START if instance.state == "running" else 30
            self._emit(f"Instance {instance.instance_id} is {instance.state}", percent)
        if instance.state in ("stopping", "stopped", "shutting-down", "terminated"):
            raise LaunchFailed(f"instance {instance.instance_id} is {instance.state}")
        if instance.state == "running" and instance.private_ip and status == stacks.READY:
            return instance
        return None

    def _stack_failure(self, stack):
        return f"stack {stack.name} is {stack.status}"

    _seen_events = None

    async def _follow_events(self):
        """Turn new stack events into progress messages (only while launching)."""
        if not self.stack_id or self._seen_events is None:
            return
        try:
            events = await self._aws(stacks.stack_events, self.cfn_client, self.stack_id)
        except Exception as e:
            self.log.debug("Reading events of %s failed: %s", self.stack_name, e)
            return
        for event in events:
            if event["EventId"] in self._seen_events:
                continue
            self._seen_events.add(event["EventId"])
            done = len(self._seen_events)
            self._emit(stacks.event_message(event), min(10 + 5 * done, 80))

    async def _failure_reason(self, fallback):
        """The first failed resource's reason, from the stack's events."""
        if not self.stack_id:
            return fallback
        try:
            events = await self._aws(stacks.stack_events, self.cfn_client, self.stack_id)
        except Exception as e:
            self.log.warning("Reading events of failed stack %s: %s", self.stack_name, e)
            return fallback
        return stacks.failure_reason(events) or fallback

    async def _abandon(self, resumed):
        """Clean up after a failed or cancelled start: never leave a stack unaccounted for."""
        if resumed:
            if self.instance_id:
                await self._aws(stacks.stop_instance, self.ec2_client, self.instance_id)
            return
        await self._delete_stack()

    async def _delete_stack(self):
        """Delete the stack; on an AWS error keep it in state, flagged for deletion."""
        if not self.stack_id:
            return
        try:
            await self._aws(stacks.delete_stack, self.cfn_client, self.stack_id)
        except Exception as e:
            self.log.error("Deleting stack %s failed (%s); will retry", self.stack_name, e)
            self.delete_pending = True
            return
        if self.instance_id:
            try:  # the service no longer needs to know whose instance it was
                await run_blocking(self.store.forget_instance, self.instance_id)
            except Exception as e:
                self.log.warning("Forgetting instance %s: %s", self.instance_id, e)
        self._forget_stack()

    async def _address(self, instance):
        if self.connect_address_hook is not None:
            return tuple(await maybe_future(self.connect_address_hook(self, instance)))
        return instance.private_ip, self.notebook_port
