"""Exponential backoff with jitter: the one formula every retry of the platform waits by
(the queue's delayed naks, an agent's retry policy, the API client's retries)."""

from __future__ import annotations

import random

__all__ = ["backoff_s"]


def backoff_s(
    attempt: int, base_s: float, max_s: float, *, jitter: float = 0.5, floor_s: float = 0.0
) -> float:
    """The wait before attempt ``attempt + 1`` (``attempt`` counts from 1): the ceiling
    ``base_s · 2^(attempt-1)``, capped at ``max_s``, less a random share of at most
    ``jitter`` of it (0: no jitter, 1: full jitter), and at least ``floor_s``. The jitter
    keeps clients that failed together from retrying together."""
    ceiling = min(max_s, base_s * 2 ** (attempt - 1))
    return max(floor_s, random.uniform(ceiling * (1 - jitter), ceiling))
