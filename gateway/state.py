"""The data dir's ``state.json``: where `up` tells the CLI the URLs and the token."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from mesh import names

__all__ = ["UpState", "read_state", "write_state"]


class UpState(BaseModel):
    api_url: str | None = None
    nats_url: str | None = None
    database_url: str | None = None
    token: str | None = None
    nats_port: int | None = None
    nats_urls: list[str] | None = None  # every node of an embedded cluster (up --cluster N)
    postgres_port: int | None = None
    pid: int | None = None


def read_state(data_dir: Path) -> UpState:
    path = data_dir / names.STATE_FILE
    if not path.exists():
        return UpState()
    try:
        return UpState.model_validate_json(path.read_text())
    except ValueError:
        return UpState()


def write_state(data_dir: Path, state: UpState, **changes: Any) -> UpState:
    state = state.model_copy(update=changes)
    path = data_dir / names.STATE_FILE
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds the API token
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(state.model_dump(), indent=2))
    tmp.replace(path)
    return state
