"""Checks that run before a request reaches a route: bearer-token auth, the payload-size cap and
the body deadline.

A plain ASGI middleware, so an unauthenticated or oversized request is answered before its body
is parsed: a wrong key is always 401 (never a validation error), a huge body is never read into
memory past the limit, and a body that trickles in (or never ends) is a 408 once the deadline
passes instead of holding its connection open.
"""

from __future__ import annotations

import asyncio
import secrets

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bellm_st.serving.errors import APIError, error_response

# Liveness probes and the API description need no key.
OPEN_PATHS = frozenset({"/health", "/docs", "/docs/oauth2-redirect", "/openapi.json"})


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value
    return None


def _too_large(limit: int) -> APIError:
    return APIError(
        413,
        f"the request body is larger than this server's limit of {limit} bytes; send fewer or shorter texts",
        code="payload_too_large",
    )


def _too_slow(timeout: float) -> APIError:
    return APIError(
        408,
        f"the request body did not arrive within {timeout:g} seconds of its headers; send the whole body "
        "at once (or fewer texts per request)",
        code="request_body_timeout",
        # The rest of the body may still be on its way: the connection cannot carry another request.
        headers={"Connection": "close"},
    )


class RequestGuard:
    """Refuse requests without the bearer token (401), bodies over ``max_payload_bytes`` (413) and
    bodies not complete ``body_timeout_seconds`` after the request began (408)."""

    def __init__(self, app: ASGIApp, *, api_key: str | None, max_payload_bytes: int, body_timeout_seconds: float):
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.max_payload_bytes = max_payload_bytes
        self.body_timeout_seconds = body_timeout_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is not None:
            response = error_response(refusal.status, refusal.message, refusal.param, refusal.code, refusal.headers)
            await response(scope, receive, send)
            return
        await self.app(scope, self._limited(receive), send)

    def _refusal(self, scope: Scope) -> APIError | None:
        if self.api_key is not None and scope.get("path") not in OPEN_PATHS:
            scheme, _, token = (_header(scope, b"authorization") or b"").partition(b" ")
            if scheme.lower() != b"bearer" or not secrets.compare_digest(token.strip(), self.api_key):
                return APIError(
                    401,
                    "missing or wrong API key; send the header 'Authorization: Bearer <key>' "
                    "(the key the server was started with)",
                    code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"},
                )
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_payload_bytes:
            return _too_large(self.max_payload_bytes)
        return None

    def _limited(self, receive: Receive) -> Receive:
        """``receive`` that stops a body (chunked or lying about its length) at the size limit, and
        one still arriving at the deadline."""
        received = 0
        body_complete = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout_seconds

        async def receive_within_limit() -> Message:
            nonlocal received, body_complete
            if body_complete:  # later calls only wait for the client to disconnect
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0))
            except asyncio.TimeoutError:  # not the builtin before Python 3.11
                raise _too_slow(self.body_timeout_seconds) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_payload_bytes:
                    raise _too_large(self.max_payload_bytes)
                body_complete = not message.get("more_body", False)
            return message

        return receive_within_limit
