"""A sandboxed agent's log lines: bounded in the child, checked and re-logged in the worker
(:mod:`agents.sandbox.loglines`)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from agents.sandbox.loglines import MAX_LINES, MAX_MESSAGE, LineCollector, relog, take_worker_level
from mesh import trace


@pytest.fixture
def root_restored() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


def test_the_child_keeps_the_first_lines_and_counts_the_rest(
    root_restored: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AF_LOG_LEVEL", "INFO")
    take_worker_level()
    collector = LineCollector.install()
    log = logging.getLogger("agent.code")
    log.debug("not at the worker's level")
    for i in range(MAX_LINES + 5):
        log.info("line %d %s", i, "x" * MAX_MESSAGE)
    carried = collector.carried()
    assert len(carried["logs"]) == MAX_LINES and carried["logs_dropped"] == 5
    first = carried["logs"][0]
    assert first["logger"] == "agent.code" and first["level"] == logging.INFO
    assert first["msg"].startswith("line 0 ") and len(first["msg"]) == MAX_MESSAGE


def test_the_worker_relogs_lines_in_the_runs_context_and_skips_what_is_malformed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    lines = [
        {"ts": 1.5, "level": logging.WARNING, "logger": "agent.code", "msg": "100% done"},
        {"level": "loud", "logger": "agent.code", "msg": "bad level"},
        "not a line",
        {"ts": 2.0, "level": 99, "logger": "agent.code", "msg": "clamped"},
    ]
    token = trace.run_labels.set(trace.Labels("r" * 32, "chatty", "acme"))
    try:
        relog(lines, 3, "inv-1", "chatty")
    finally:
        trace.run_labels.reset(token)
    ours = [r for r in caplog.records if r.name == "agent.code"]
    assert [r.getMessage() for r in ours] == ["100% done", "clamped"]
    assert ours[0].created == 1.5 and ours[0].levelno == logging.WARNING
    assert ours[1].levelno == logging.CRITICAL
    assert all(r.sandboxed is True and r.invocation == "inv-1" for r in ours)  # type: ignore[attr-defined]
    [note] = [r for r in caplog.records if r.name == "agents.sandbox.loglines"]
    assert "dropped 3 log lines" in note.getMessage()
