"""How long a request lives: while its client waits for it, and no longer than shutdown allows.

An ASGI server keeps running a request after its client has gone (uvicorn only stops sending
its answer), and when the shutdown grace period runs out uvicorn cancels what is left and answers
a plain-text 500. This middleware ends both sooner, and in the API's own terms:

- once the body has arrived it listens on the ASGI receive channel; when the client disconnects
  the request's task is cancelled, and with it the request's call into the batcher, so texts not
  yet encoded never reach the model;
- once shutdown has begun (:meth:`Shutdown.begin`, called by the server) and its grace period is
  over, a request not yet answered is cancelled and gets a 503 with the OpenAI error body.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bellm_st.serving.errors import error_response


class Shutdown:
    """Whether the server is stopping, and the moment by which accepted requests must be answered."""

    def __init__(self, grace_seconds: float):
        self.grace_seconds = grace_seconds
        self.begun = False
        self._expired: asyncio.Future | None = None

    def begin(self) -> None:
        """The server stopped accepting connections: answer what is left within ``grace_seconds``."""
        if self.begun:
            return
        self.begun = True
        asyncio.get_running_loop().call_later(self.grace_seconds, self._expire)

    def expired(self) -> asyncio.Future:
        """A future that is done when the grace period is over."""
        loop = asyncio.get_running_loop()
        if self._expired is None or self._expired.get_loop() is not loop:
            self._expired = loop.create_future()
        return self._expired

    def _expire(self) -> None:
        if not self.expired().done():
            self._expired.set_result(None)


class RequestLifetime:
    """Cancel a request whose client disconnected; answer 503 to one the shutdown grace cannot wait for."""

    def __init__(self, app: ASGIApp, *, shutdown: Shutdown):
        self.app = app
        self.shutdown = shutdown

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client_gone = asyncio.get_running_loop().create_future()
        body_complete = False
        response_started = False
        listener: asyncio.Task | None = None

        def note_disconnect() -> None:
            if not client_gone.done():
                client_gone.set_result(None)

        async def listen_for_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            note_disconnect()

        async def receive_until_disconnect() -> Message:
            nonlocal body_complete, listener
            if body_complete:  # the listener owns the channel now; answer as it will
                await asyncio.shield(client_gone)
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.disconnect":
                note_disconnect()
            elif not message.get("more_body", False):
                body_complete = True
                listener = asyncio.create_task(listen_for_disconnect())
            return message

        async def send_noting_start(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        request = asyncio.create_task(self.app(scope, receive_until_disconnect, send_noting_start))
        try:
            await asyncio.wait({request, client_gone, self.shutdown.expired()}, return_when=asyncio.FIRST_COMPLETED)
            if request.done():
                pass
            elif client_gone.done():
                request.cancel()  # nobody will read the answer: stop the work
            elif not response_started:
                request.cancel()
                await asyncio.wait({request})
                if not response_started:
                    await self._shutting_down(scope, send)
                    return
            # else: the answer is on its way; the server's own deadline bounds it.
            await asyncio.wait({request})
            if not request.cancelled():
                request.result()  # re-raise what the app raised
        except BaseException:
            request.cancel()  # e.g. the server cancelled us (its own deadline): the request stops too
            raise
        finally:
            if listener is not None:
                listener.cancel()

    async def _shutting_down(self, scope: Scope, send: Send) -> None:
        response = error_response(
            503,
            f"the server shut down before this request was answered (it waits {self.shutdown.grace_seconds:g} s "
            "for accepted requests); send it again, to this server once it is back or to another",
            code="shutting_down",
            headers={"Connection": "close"},
        )
        await response(scope, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.disconnect"}
