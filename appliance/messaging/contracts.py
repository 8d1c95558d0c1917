"""What the API and the worker's send loop agree on about sends, importable by either
side without the other: the queue sends wait in, the job keys of one send in it, and
how often a send is tried.

- A send's unique key is ``<account id>:<message id>``: the queue's producer-side
  dedupe makes a second enqueue of the same message a no-op.
- A send's order key is ``<account id>:<chat jid>``: the queue leases only the earliest
  unfinished job of a key, so a chat's sends reach the engine one at a time, in accept
  order (appliance/db/queue.py). Account ids cannot contain ':', so both keys are
  unambiguous.
- The retry policy is stored with each job when the API enqueues it (its attempt
  limit) and applied by the worker's queue when a send is given back (its backoff):
  one value for both sides.
"""

from __future__ import annotations

from dataclasses import dataclass

SEND_QUEUE = "send"


@dataclass(frozen=True)
class RetryPolicy:
    """How often a queue's jobs are tried, and how far apart (``DurableQueue`` backoff:
    exponential with full jitter, capped)."""

    max_attempts: int
    backoff_base_s: float
    backoff_cap_s: float


SEND_RETRY = RetryPolicy(max_attempts=10, backoff_base_s=1.0, backoff_cap_s=300.0)


def send_job_key(account_id: str, message_id: str) -> str:
    """The unique key of the send job of one message."""
    return f"{account_id}:{message_id}"


def send_order_key(account_id: str, chat_jid: str) -> str:
    """The queue order key of a chat: its sends go out one at a time, in accept order.
    (Account ids cannot contain ':', so the key is unambiguous.)"""
    return f"{account_id}:{chat_jid}"
