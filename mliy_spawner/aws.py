"""boto3 plumbing shared by the spawner, the reflector, plugins and the service.

- :func:`shared_client` is the process's one client per (service, region, endpoint):
  boto3 clients are thread-safe, and building one loads botocore's service models
  (seconds of CPU), so build it once, off the event loop.
- :func:`make_client` builds a client with botocore's "standard" retry mode and hooks
  that log every call on the ``mliy.aws`` logger: operation, duration, outcome. Never
  the parameters: they hold user data and tokens. Each attempt (retries too) is
  counted in ``mliy_aws_calls_total`` (:mod:`mliy_spawner.metrics`).

Blocking calls on these clients go through :func:`mliy_spawner.util.run_blocking`.
"""

import logging
import threading
import time

import boto3
from botocore.config import Config

from . import metrics
from .util import POOL_WORKERS

log = logging.getLogger("mliy.aws")


class _DropBodies(logging.Filter):
    """botocore logs whole request and response bodies at DEBUG: user data, tokens.

    Drop those records, so turning on DEBUG logging never writes a secret to a log.
    """

    def filter(self, record):
        return record.levelno > logging.DEBUG


for _name in ("botocore.endpoint", "botocore.parsers", "botocore.httpsession"):
    logging.getLogger(_name).addFilter(_DropBodies())


_READS = ("Describe", "List", "Get")


def _before_call(model, context, **kwargs):
    context["mliy_started"] = time.monotonic()
    context["mliy_call"] = (model.service_model.service_name, model.name)


def _count_attempt(context, parsed_response=None, exception=None, **kwargs):
    """``mliy_aws_calls_total``: each request AWS answers (or that fails), retries too."""
    call = context.get("mliy_call") if isinstance(context, dict) else None
    if call is None:
        return
    if exception is not None:
        outcome = "error"
    else:
        error = parsed_response.get("Error") if isinstance(parsed_response, dict) else None
        outcome = metrics.call_outcome((error or {}).get("Code"))
    metrics.count_aws_call(*call, outcome)


def _after_call(http_response, parsed, model, context, **kwargs):
    started = context.get("mliy_started")
    elapsed = (time.monotonic() - started) * 1000 if started else -1
    status = http_response.status_code if http_response is not None else "-"
    error = (parsed or {}).get("Error", {}).get("Code") if isinstance(parsed, dict) else None
    service = model.service_model.service_name
    if error:
        log.warning("%s %s -> %s %s (%.0f ms)", service, model.name, status, error, elapsed)
    elif model.name.startswith(_READS):
        # the reflector reads every few seconds: those lines only at DEBUG
        log.debug("%s %s -> %s (%.0f ms)", service, model.name, status, elapsed)
    else:
        log.info("%s %s -> %s (%.0f ms)", service, model.name, status, elapsed)


def log_calls(client):
    """Register the ``mliy.aws`` call log on ``client`` (idempotent per client)."""
    events = client.meta.events
    events.register("before-call", _before_call, unique_id="mliy-aws-before")
    events.register("after-call", _after_call, unique_id="mliy-aws-after")
    events.register("response-received", _count_attempt, unique_id="mliy-aws-count")
    return client


def make_client(service, region, endpoint_url=None, max_attempts=5):
    """A boto3 client for ``service`` in ``region``, with standard retries and call logging.

    ``endpoint_url`` points at a stand-in (moto's server) in tests and the demo.
    """
    config = Config(
        region_name=region,
        retries={"mode": "standard", "max_attempts": max_attempts},
        max_pool_connections=POOL_WORKERS,
    )
    session = boto3.session.Session()
    client = session.client(
        service, region_name=region, endpoint_url=endpoint_url or None, config=config
    )
    return log_calls(client)


_shared_clients = {}
_shared_clients_lock = threading.Lock()


def shared_client(service, region, endpoint_url=None):
    """The process's client for ``service`` in ``region`` (at ``endpoint_url``), built on
    first use. Blocking: call it through :func:`mliy_spawner.util.run_blocking`."""
    key = (service, region, endpoint_url or None)
    with _shared_clients_lock:
        client = _shared_clients.get(key)
        if client is None:
            client = _shared_clients[key] = make_client(service, region, endpoint_url)
        return client
