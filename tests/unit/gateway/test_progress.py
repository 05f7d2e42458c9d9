"""How the CLI shows an operation it waits for: a bar redrawn in place on a terminal,
a line per new message otherwise (logs, pipes, CI)."""

from __future__ import annotations

import io
from typing import Any

import pytest

from gateway.commands.ops import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _op(progress: float, message: str) -> dict[str, Any]:
    return {"progress": progress, "message": message}


def test_on_a_terminal_the_bar_is_redrawn_in_place_and_ends_with_a_newline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    out = Terminal()
    bar = Progress(out)
    bar.update(_op(0, "accepted"))
    bar.update(_op(50, "running -> draining"))
    bar.close()
    frames = out.getvalue().split("\r")[1:]
    assert len(frames) == 2 and all(len(f.rstrip("\n")) == 79 for f in frames)
    assert frames[1].startswith("[" + "#" * 15 + "." * 15 + "]  50%  running -> draining")
    assert out.getvalue().endswith("\n") and out.getvalue().count("\n") == 1


def test_elsewhere_it_writes_a_line_each_time_the_message_changes() -> None:
    out = io.StringIO()
    lines = Progress(out)
    for op in (_op(0, "accepted"), _op(10, "step 1"), _op(12, "step 1"), _op(100, "succeeded")):
        lines.update(op)
    lines.close()
    assert out.getvalue() == "  [  0%] accepted\n  [ 10%] step 1\n  [100%] succeeded\n"
