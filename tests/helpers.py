"""Small helpers shared by tests (fixtures live in conftest.py)."""

from __future__ import annotations

import uuid

__all__ = ["unique"]


def unique(prefix: str) -> str:
    """A fresh agent key so tests sharing one server never see each other's tasks."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
