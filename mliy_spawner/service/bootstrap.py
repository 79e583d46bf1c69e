"""``POST api/bootstrap/<instance-id>``: an instance trades its one-time code for its
server's API token (see :mod:`mliy_spawner.bootstrap` for why).

The body is ``{"code": "<code>"}``; no hub token (the instance has none yet). The
answer is ``{"status": 200, "token": "<API token>"}`` once. Refused with 403, logged
without the code: an unknown or used code, an expired one, one for another instance,
an instance that is not that server's, and (unless ``MLIY_BOOTSTRAP_CHECK_ADDRESS=0``,
for NAT set-ups and the demo) a request whose source is not the instance's private
address as AWS reported it to the spawner. 409 while the hub has not seen the instance
yet: the instance retries.
"""

import ipaddress
import json
import logging
import re

from .. import bootstrap
from ..util import run_blocking, shorten
from .handlers import APIError, BaseHandler
from .validation import ReportError, check_instance_id

log = logging.getLogger("mliy.service")

_CODE = re.compile(rf"[A-Za-z0-9_-]{{16,{bootstrap.MAX_CODE_LENGTH}}}")
_MAX_BODY = 1024


def parse_code(body):
    """The code of a bootstrap request body; :class:`APIError` 400 naming the field."""
    if len(body) > _MAX_BODY:
        raise APIError(400, f"body is {len(body)} bytes; allowed: at most {_MAX_BODY}")
    try:
        data = json.loads(body.decode("utf-8"), object_pairs_hook=_once)
    except _Twice as e:
        raise APIError(400, f"body gives the field {shorten(e.name)} more than once") from None
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise APIError(400, 'body is not JSON; allowed: {"code": "<bootstrap code>"}') from None
    if not isinstance(data, dict) or set(data) != {"code"}:
        raise APIError(400, f'body is {_describe(data)}; allowed: {{"code": "<bootstrap code>"}}')
    code = data["code"]
    if not isinstance(code, str) or not _CODE.fullmatch(code):
        raise APIError(
            400,
            f"code is {_describe(code)}; allowed: the bootstrap code from the user data "
            f"(16 to {bootstrap.MAX_CODE_LENGTH} characters of A-Z a-z 0-9 _ -)",
        )
    return code


def _describe(value):
    """What ``value`` is, without its text: a code sent slightly wrong (padded, a
    newline) is still the code, and answers and logs must never show it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return f"a string of {len(value)} characters"
    if isinstance(value, list):
        return f"a list of {len(value)} items"
    # not the fields' names: a code may be sent as one
    return f"an object of {len(value)} fields" + ("" if "code" in value else ", none named code")


class _Twice(Exception):
    def __init__(self, name):
        self.name = name


def _once(pairs):
    """A JSON object whose fields are each given once (``{"code": a, "code": b}`` is
    ambiguous: which code did the client mean?)."""
    data = {}
    for name, value in pairs:
        if name in data:
            raise _Twice(name)
        data[name] = value
    return data


def check_content_type(value):
    """The bootstrap script posts ``application/json``; anything else is 415."""
    media_type = (value or "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        raise APIError(415, f"Content-Type is {shorten(value or '')}; allowed: application/json")


def refusal(row, owner, instance_id, address, check_address):
    """Why this exchange must be refused (None: it may go ahead); ``row`` is the
    code's :class:`~mliy_spawner.store.BootstrapCode`, ``owner`` the instance's
    :class:`~mliy_spawner.store.InstanceRecord`."""
    if row is None:
        return "unknown code"
    if row.used is not None:
        return "the code was used already"
    if row.expired():
        return "the code expired"
    if row.instance_id != instance_id:
        return "the code is for another instance"
    if owner is None or (owner.user, owner.server_name) != (row.user, row.server_name):
        return "the instance is not that server's"
    if check_address and not _same_address(address, row.private_ip):
        return f"the request came from {address}, not from the instance's private address"
    return None


def _same_address(one, other):
    try:
        return ipaddress.ip_address(one) == ipaddress.ip_address(other)
    except (TypeError, ValueError):
        return False


class BootstrapHandler(BaseHandler):
    """``POST api/bootstrap/<instance-id>`` with ``{"code": ...}``."""

    async def post(self, instance_id):
        self.check_query()
        try:
            check_instance_id(instance_id)
        except ReportError as e:
            raise APIError(400, str(e)) from None
        check_content_type(self.request.headers.get("Content-Type"))
        code = parse_code(self.request.body)
        code_id = bootstrap.code_id(code)
        store = self.context.store
        row = await run_blocking(store.bootstrap_code, code_id)
        if row is not None and row.used is None and not row.expired() and not row.instance_id:
            raise APIError(409, "the hub has not seen this instance yet; try again shortly")
        owner = await run_blocking(store.owner, instance_id)
        address = self.client_address()
        check = getattr(self.context.settings, "bootstrap_check_address", True)
        reason = refusal(row, owner, instance_id, address, check)
        sealed = None
        if reason is None:
            sealed = await run_blocking(store.use_bootstrap_code, code_id)
            reason = None if sealed else "the code was used already"
        if reason is not None:
            log.warning(
                "Bootstrap for instance %s from %s refused: %s",
                shorten(instance_id),
                address,
                reason,
            )
            if row is not None and row.used is None:
                await run_blocking(store.refuse_bootstrap_code, code_id, reason)
            raise APIError(403, f"bootstrap refused: {reason}")
        try:
            token = bootstrap.open_sealed(code, sealed)
        except bootstrap.SealError:
            log.error("Bootstrap for instance %s: the sealed token does not open", instance_id)
            raise APIError(403, "bootstrap refused: the code does not open the token") from None
        log.info("Instance %s fetched the API token of %s", instance_id, owner.user)
        self.write_json(200, {"status": 200, "token": token})
