"""The limits and knobs of the embeddings server, in one place (the CLI flags map onto these)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

LongInputPolicy = Literal["truncate", "reject"]
QueueFullStatus = Literal[429, 503]


@dataclass(frozen=True)
class ServerSettings:
    """What the server accepts and how it batches.

    Every limit turns a request that would exceed it into a 4xx answer with an OpenAI-style error
    body, so one client can neither exhaust memory nor starve the others.
    """

    model_id: str = "bellm-st"
    """The id ``/v1/models`` lists and every response echoes (requests may name any model)."""
    api_key: str | None = None
    """When set, every endpoint except ``/health`` needs ``Authorization: Bearer <api_key>``."""
    max_batch_size: int = 32
    """Most texts in one forward pass of the model."""
    max_batch_tokens: int = 16384
    """Most padded tokens (rows x longest text) in one forward pass."""
    batch_wait_seconds: float = 0.01
    """How long a batch that is not full waits for more texts before it goes to the model."""
    max_queue_items: int = 4096
    """Most texts waiting for the model; a request that would overflow it gets ``queue_full_status``."""
    queue_full_status: QueueFullStatus = 429
    max_items_per_request: int = 2048
    max_input_chars: int = 32768
    long_input: LongInputPolicy = "truncate"
    """What happens to a text over ``max_input_chars``: cut to the limit, or reject the request."""
    max_payload_bytes: int = 16 * 1024 * 1024
    request_body_timeout_seconds: float = 30.0
    """How long a request's whole body may take to arrive after its headers; slower gets a 408
    (16 MiB, the default payload limit, at 1 MB/s takes 17 s)."""
    graceful_shutdown_seconds: float = 30.0
    """How long shutdown waits for accepted requests; those still unanswered then get a 503."""

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_batch_tokens", "max_queue_items", "max_items_per_request",
                     "max_input_chars", "max_payload_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if self.max_items_per_request > self.max_queue_items:
            raise ValueError(
                f"max_items_per_request={self.max_items_per_request} exceeds max_queue_items={self.max_queue_items}: "
                "such a request could never be queued; raise max_queue_items or lower max_items_per_request"
            )
        if not self.request_body_timeout_seconds > 0:
            raise ValueError(
                f"request_body_timeout_seconds={self.request_body_timeout_seconds!r} must be above 0"
            )
        if not self.graceful_shutdown_seconds >= 0:
            raise ValueError(f"graceful_shutdown_seconds={self.graceful_shutdown_seconds!r} must be 0 or more")
        if not 0 <= self.batch_wait_seconds <= 10:
            raise ValueError(f"batch_wait_seconds={self.batch_wait_seconds!r} must be between 0 and 10")
        if self.long_input not in ("truncate", "reject"):
            raise ValueError(f"long_input={self.long_input!r}; use 'truncate' or 'reject'")
        if self.queue_full_status not in (429, 503):
            raise ValueError(f"queue_full_status={self.queue_full_status!r}; use 429 or 503")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("api_key is blank; pass a real key or none to turn authentication off")
