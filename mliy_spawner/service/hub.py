"""The hub's REST API, called with the service's own token: read, start and stop servers."""

import asyncio
import json
import logging
import time
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from .. import audit
from ..util import StatusError

log = logging.getLogger("mliy.service")


class HubAPIError(StatusError):
    """The hub answered an API call with the error ``status`` (502: it did not answer)."""


def server_path(user, server_name):
    """The API path of a server: ``/users/{u}/server`` (default) or ``/users/{u}/servers/{s}``."""
    user_part = quote(user, safe="")
    if server_name:
        return f"/users/{user_part}/servers/{quote(server_name, safe='')}"
    return f"/users/{user_part}/server"


def server_label(user, server_name):
    return f"{user}/{server_name}" if server_name else f"{user}/ (default server)"


class HubClient:
    """Start, stop and inspect servers through ``api_url`` with ``api_token``."""

    def __init__(self, api_url, api_token, request_timeout=30, http_client=None):
        self.api_url = api_url.rstrip("/")
        self._api_token = api_token
        self.request_timeout = request_timeout
        self._http = http_client or AsyncHTTPClient()

    async def _request(self, method, path, body=None, actor=None):
        headers = {"Authorization": f"token {self._api_token}"}
        if actor:  # who asked this service, for the spawner's audit trail
            headers[audit.ACTOR_HEADER] = actor
        if body is not None:
            headers["Content-Type"] = "application/json"
        elif method in ("POST", "PUT"):
            body = ""
        request = HTTPRequest(
            self.api_url + path,
            method=method,
            headers=headers,
            body=json.dumps(body) if isinstance(body, dict) else body,
            allow_nonstandard_methods=True,
            request_timeout=self.request_timeout,
        )
        started = time.monotonic()
        response = await self._http.fetch(request, raise_error=False)
        log.debug(
            "hub API %s %s -> %s (%.0f ms)",
            method,
            path,
            response.code,
            (time.monotonic() - started) * 1000,
        )
        if response.code == 599:
            raise HubAPIError(502, f"cannot reach the hub API at {self.api_url}: {response.error}")
        if response.code >= 400:
            message = ""
            try:
                message = json.loads(response.body or b"{}").get("message", "")
            except (ValueError, AttributeError):
                pass
            raise HubAPIError(response.code, message or f"hub answered {response.code}")
        if response.body and response.headers.get("Content-Type", "").startswith(
            "application/json"
        ):
            return response.code, json.loads(response.body)
        return response.code, None

    async def get_server(self, user, server_name):
        """The hub's model of the server, or None if the hub has no such server."""
        # from the user's model: JupyterHub 5.x has no GET on the server's own path
        try:
            _, model = await self._request("GET", f"/users/{quote(user, safe='')}")
        except HubAPIError as e:
            if e.status == 404:
                return None
            raise
        return (model.get("servers") or {}).get(server_name)

    async def start_server(self, user, server_name, actor=None):
        """Start the server with its saved options; returns the hub's status (201 or 202)."""
        status, _ = await self._request("POST", server_path(user, server_name), actor=actor)
        return status

    async def stop_server(self, user, server_name, remove=False, actor=None):
        """Stop (and with ``remove``, delete) the server; returns the status (204 or 202)."""
        body = {"remove": True} if remove else None
        status, _ = await self._request(
            "DELETE", server_path(user, server_name), body=body, actor=actor
        )
        return status

    async def wait_stopped(self, user, server_name, within, interval=0.5):
        """Wait until the server is neither pending nor ready; False on timeout."""
        deadline = time.monotonic() + within
        while True:
            model = await self.get_server(user, server_name)
            if model is None or (not model.get("pending") and not model.get("ready")):
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(interval)
