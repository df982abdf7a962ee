"""Load test of ``bellm-st serve`` on loopback: N concurrent clients x M requests each.

Starts the real server in a subprocess on a free loopback port (or uses ``--url``), sends a
bounded number of requests, prints requests/s and latency percentiles, then checks every
returned vector against the library's own ``encode`` of the same text. It stops by itself: the
request count is fixed and the whole run has a deadline.

    python benchmarks/serve_load.py                      # shipped default model, 32 x 50
    python benchmarks/serve_load.py --model my-bellm --clients 8 --requests 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

SENTENCES = [
    "A man is playing a guitar.",
    "Someone plays an instrument on the stage.",
    "The stock market fell sharply today.",
    "A woman is slicing an onion in the kitchen.",
    "Children are playing football in the park.",
    "Scientists discovered a new species of frog.",
    "The train to Berlin was delayed by an hour.",
    "She reads a book under the old oak tree.",
]


@dataclass
class Outcome:
    """One request as the client saw it."""

    texts: list[str]
    status: int  # 0: no HTTP answer at all
    latency: float
    vectors: np.ndarray | None = None
    indices: list[int] | None = None
    error: str | None = None


def request_texts(client: int, request: int, texts_per_request: int) -> list[str]:
    """Distinct texts for every request, so a mixed-up response cannot pass the vector check."""
    return [
        f"{SENTENCES[(client * 7 + request + item) % len(SENTENCES)]} (client {client}, request {request}, item {item})"
        for item in range(texts_per_request)
    ]


async def run_load(
    url: str,
    *,
    clients: int,
    requests_per_client: int,
    texts_per_request: int = 1,
    api_key: str | None = None,
    deadline_seconds: float = 600.0,
) -> tuple[list[Outcome], float]:
    """Every client sends its requests one after another; returns the outcomes and the wall time."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    async def one_client(client: int) -> list[Outcome]:
        outcomes = []
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120, limits=limits) as http:
            for request in range(requests_per_client):
                texts = request_texts(client, request, texts_per_request)
                started = time.perf_counter()
                try:
                    answer = await http.post("/v1/embeddings", json={"input": texts, "model": "load-test"})
                except httpx.HTTPError as error:
                    outcomes.append(Outcome(texts, 0, time.perf_counter() - started, error=repr(error)))
                    continue
                latency = time.perf_counter() - started
                if answer.status_code != 200:
                    outcomes.append(Outcome(texts, answer.status_code, latency, error=answer.text[:300]))
                    continue
                data = answer.json()["data"]
                vectors = np.array([item["embedding"] for item in data], dtype=np.float32)
                outcomes.append(Outcome(texts, 200, latency, vectors, [item["index"] for item in data]))
        return outcomes

    started = time.perf_counter()
    per_client = await asyncio.wait_for(
        asyncio.gather(*(one_client(client) for client in range(clients))), deadline_seconds
    )
    return [outcome for outcomes in per_client for outcome in outcomes], time.perf_counter() - started


def summarise(outcomes: list[Outcome], wall_seconds: float) -> dict[str, float | int | dict[str, int]]:
    """Throughput, latency percentiles (ms) and status counts of a run."""
    latencies = np.array([outcome.latency for outcome in outcomes]) * 1000
    statuses: dict[str, int] = {}
    for outcome in outcomes:
        statuses[str(outcome.status)] = statuses.get(str(outcome.status), 0) + 1
    return {
        "requests": len(outcomes),
        "texts": sum(len(outcome.texts) for outcome in outcomes),
        "wall_seconds": round(wall_seconds, 2),
        "requests_per_second": round(len(outcomes) / wall_seconds, 1),
        "texts_per_second": round(sum(len(outcome.texts) for outcome in outcomes) / wall_seconds, 1),
        "latency_ms_p50": round(float(np.percentile(latencies, 50)), 1),
        "latency_ms_p99": round(float(np.percentile(latencies, 99)), 1),
        "latency_ms_max": round(float(latencies.max()), 1),
        "statuses": statuses,
    }


def mismatches(outcomes: list[Outcome], reference: dict[str, np.ndarray], tolerance: float = 1e-5) -> list[str]:
    """Every way a successful response differs from the library's own vectors (empty when none)."""
    problems = []
    for outcome in outcomes:
        if outcome.status != 200:
            continue
        if outcome.indices != list(range(len(outcome.texts))) or len(outcome.vectors) != len(outcome.texts):
            problems.append(f"{outcome.texts[0]!r}: {len(outcome.vectors)} vectors, indices {outcome.indices}")
            continue
        for text, vector in zip(outcome.texts, outcome.vectors):
            difference = float(np.abs(vector - reference[text]).max())
            if difference > tolerance:
                problems.append(f"{text!r}: off by {difference:.2e}")
    return problems


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model: str | None, port: int, *options: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``bellm-st serve`` in a subprocess on a loopback port (a process of its own, as in production)."""
    command = [sys.executable, "-m", "bellm_st.cli", "serve", *([model] if model else []), "--host", "127.0.0.1",
               "--port", str(port), "--log-level", "warning", *options]
    return subprocess.Popen(command, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


def wait_until_healthy(url: str, server: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with status {server.returncode} before it was ready")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the server was not ready after {timeout:.0f}s")


def stop_server(server: subprocess.Popen, timeout: float = 120) -> int:
    """SIGTERM (graceful: in-flight requests finish) and the exit status."""
    server.send_signal(signal.SIGTERM)
    return server.wait(timeout=timeout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="Model to serve (default: the shipped default model).")
    parser.add_argument("--url", default=None, help="Load an already running server instead of starting one.")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=50, help="Requests per client.")
    parser.add_argument("--texts-per-request", type=int, default=1)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--no-check", action="store_true", help="Skip checking the vectors against encode().")
    parser.add_argument("--out", default=os.environ.get("OUT"), help="Folder for serve_load.json (default: $OUT).")
    arguments = parser.parse_args()
    load_before = os.getloadavg()

    # A benchmark stopped from outside (timeout, kill) still stops the server it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    server = None
    url = arguments.url
    if url is None:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = start_server(
            arguments.model, port, "--device", "cpu", "--max-batch-size", str(arguments.max_batch_size)
        )
    try:
        if server is not None:
            wait_until_healthy(url, server)
        outcomes, wall = asyncio.run(
            run_load(url, clients=arguments.clients, requests_per_client=arguments.requests,
                     texts_per_request=arguments.texts_per_request)
        )
    finally:
        if server is not None:
            stop_server(server)
    report = summarise(outcomes, wall)
    if not arguments.no_check:
        from bellm_st.api import load

        model = load(arguments.model, device="cpu")
        texts = sorted({text for outcome in outcomes for text in outcome.texts})
        started = time.perf_counter()
        reference = dict(zip(texts, model.encode(texts, normalize_embeddings=True, batch_size=32)))
        # The same texts through encode() alone, in this process after the load: what the model
        # gives without HTTP, for comparison with texts_per_second above.
        report["encode_only_texts_per_second"] = round(len(texts) / (time.perf_counter() - started), 1)
        problems = mismatches(outcomes, reference)
        report["mismatched_or_lost"] = len(problems) + sum(outcome.status != 200 for outcome in outcomes)
        for problem in problems[:10]:
            print("MISMATCH", problem, file=sys.stderr)
    report["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    report["load_average_before_after"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
    report["command"] = shlex.join([sys.executable, *sys.argv])
    print(json.dumps(report, indent=2))
    if arguments.out:
        Path(arguments.out).mkdir(parents=True, exist_ok=True)
        (Path(arguments.out) / "serve_load.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
