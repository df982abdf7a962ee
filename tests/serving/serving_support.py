"""Helpers for the serving tests: a real uvicorn server on loopback in a thread, a slow model."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import numpy as np
import uvicorn
from fastapi import FastAPI

from bellm_st.serving import Embedder, ServerSettings, uvicorn_server

MODEL_ID = "tiny-bellm"
QUERY_TEMPLATE = 'Find documents about {text}. The representative word is:"'


@dataclass
class LiveServer:
    url: str
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def app(self) -> FastAPI:
        return self.server.config.app

    def stop(self, timeout: float = 30) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the server did not shut down"


@contextlib.contextmanager
def live_server(model, settings: ServerSettings) -> Iterator[LiveServer]:
    """The real server (uvicorn + the app) on a free loopback port until the block ends."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn_server(model, settings, host="127.0.0.1", port=port, log_level="warning")
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    running = LiveServer(f"http://127.0.0.1:{port}", server, thread)
    try:
        yield running
    finally:
        if thread.is_alive():
            running.stop()
        sock.close()


class SlowEmbedder(Embedder):
    """The tiny model, but every forward pass takes at least ``delay`` seconds (to fill queues)."""

    def __init__(self, model, delay: float):
        super().__init__(model)
        self.delay = delay
        self.batches: list[int] = []
        self.started = threading.Event()

    def encode(self, texts: list[str], prompt_name: str | None = None) -> np.ndarray:
        self.batches.append(len(texts))
        self.started.set()
        time.sleep(self.delay)
        return super().encode(texts, prompt_name)


class GatedEmbedder(Embedder):
    """The tiny model, but every forward pass waits until the test opens ``gate``: the test, not a
    clock, decides how long the model runs, so the tests that need a busy model hold on a loaded machine."""

    def __init__(self, model, timeout: float = 30):
        super().__init__(model)
        self.timeout = timeout
        self.gate = threading.Event()
        self.batches: list[int] = []
        self.started = threading.Event()

    def encode(self, texts: list[str], prompt_name: str | None = None) -> np.ndarray:
        self.batches.append(len(texts))
        self.started.set()
        if not self.gate.wait(self.timeout):
            raise RuntimeError(f"the test did not open the gate within {self.timeout} s")
        return super().encode(texts, prompt_name)


def wait_until(condition, what: str, timeout: float = 15) -> None:
    """Poll ``condition`` until it holds; fail the test with ``what`` if it does not within ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.01)


def reference(model, texts: list[str], **kwargs) -> np.ndarray:
    """What the library itself gives: the numbers the server must reproduce."""
    return model.encode(texts, normalize_embeddings=True, **kwargs)


def open_request(
    url: str, body: bytes, *, declared_length: int | None = None, path: str = "/v1/embeddings"
) -> socket.socket:
    """A POST sent by hand on a loopback socket: ``body`` may be shorter than ``declared_length``
    (a partial body still on its way) or the socket closed before the answer (a client that left)."""
    address = urlsplit(url)
    sock = socket.create_connection((address.hostname, address.port), timeout=15)
    length = len(body) if declared_length is None else declared_length
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {address.netloc}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    )
    sock.sendall(head.encode() + body)
    return sock


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], dict]:
    """Status, headers (lower-case names) and JSON body of the answer on ``sock`` (bounded by its timeout)."""
    response = http.client.HTTPResponse(sock)
    response.begin()
    body = response.read()
    headers = {name.lower(): value for name, value in response.getheaders()}
    return response.status, headers, json.loads(body)


def json_body(texts: list[str]) -> bytes:
    return json.dumps({"input": texts}).encode()
