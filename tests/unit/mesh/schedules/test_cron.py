"""Cron conversion and validation of schedule and trigger definitions (no server)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from mesh.envelope import Priority
from mesh.schedules.definitions import (
    CronSchedule,
    EventTrigger,
    parse_definition,
    subject_matches,
    to_server_schedule,
)


@pytest.mark.parametrize(
    ("given", "server"),
    [
        ("*/5 * * * *", "0 */5 * * * *"),
        ("  0   9 * *  MON-FRI ", "0 0 9 * * MON-FRI"),
        ("30 0 9 * * *", "30 0 9 * * *"),
        ("@hourly", "@hourly"),
        ("@every 1s", "@every 1s"),
        ("@every 1h30m", "@every 1h30m"),
    ],
)
def test_user_cron_becomes_the_server_form(given: str, server: str) -> None:
    assert to_server_schedule(given) == server


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ("", "empty"),
        ("* * * *", "has 4"),
        ("61 * * * *", "invalid cron expression"),
        ("* * * * * * *", "has 7"),
        ("@every 500ms", "at least 1s"),
        ("@every soon", "duration"),
        ("@fortnightly", "unknown macro"),
    ],
)
def test_bad_cron_is_rejected_with_a_reason(given: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        to_server_schedule(given)


def test_cron_schedule_model_validates_cron_and_zone() -> None:
    with pytest.raises(ValidationError) as err:
        CronSchedule(name="a", agent="noop", cron="99 * * * *")
    assert err.value.errors()[0]["loc"] == ("cron",)
    with pytest.raises(ValidationError, match="unknown time zone"):
        CronSchedule(name="a", agent="noop", cron="@daily", timezone="Mars/Olympus")
    ok = CronSchedule(name="a", agent="noop", cron="0 9 * * *", timezone="Europe/Paris",
                      priority="high")  # type: ignore[arg-type]  # fmt: skip
    assert ok.priority is Priority.HIGH and ok.server_schedule == "0 0 9 * * *"


def test_next_fire_honours_the_time_zone() -> None:
    sched = CronSchedule(name="a", agent="noop", cron="0 9 * * *", timezone="Europe/Paris")
    now = datetime(2026, 1, 15, 7, 30, tzinfo=UTC)  # 08:30 in Paris (UTC+1)
    assert sched.next_fire(now) == datetime(2026, 1, 15, 8, 0, tzinfo=UTC)
    assert CronSchedule(name="b", agent="noop", cron="@every 5s").next_fire(now) is None


def test_kind_is_inferred_and_names_are_checked() -> None:
    trig = parse_definition({"name": "t", "agent": "noop", "on": "af.events.execution.*.x"})
    assert isinstance(trig, EventTrigger) and trig.event_field == "event"
    cron = parse_definition({"name": "c", "agent": "noop", "cron": "@daily"})
    assert isinstance(cron, CronSchedule)
    for bad in ({"name": "Bad Name", "agent": "noop", "cron": "@daily"},
                {"name": "t", "agent": "noop", "on": "af.tasks.x"},
                {"name": "t", "agent": "noop", "on": "af.events.>.x"}):  # fmt: skip
        with pytest.raises(ValidationError):
            parse_definition(bad)


@pytest.mark.parametrize(
    ("pattern", "subject", "matches"),
    [
        ("af.events.execution.finished.*", "af.events.execution.finished.noop", True),
        ("af.events.>", "af.events.execution.finished.noop", True),
        ("af.events.execution.*", "af.events.execution.finished.noop", False),
        ("af.events.*.*.noop", "af.events.execution.finished.noop", True),
        ("af.events.execution.finished.noop.>", "af.events.execution.finished.noop", False),
    ],
)
def test_subject_matching(pattern: str, subject: str, matches: bool) -> None:
    assert subject_matches(pattern, subject) is matches


def test_a_trigger_on_its_own_agents_finished_events_is_refused() -> None:
    with pytest.raises(ValidationError, match="own finished events"):
        EventTrigger(name="t", agent="noop", on="af.events.execution.finished.*.*")
    with pytest.raises(ValidationError, match="own finished events"):
        EventTrigger(name="t", agent="noop", on="af.events.execution.finished.noop.*")
    EventTrigger(name="t", agent="noop", on="af.events.execution.finished.fuel-combustion.*")


def test_a_trigger_on_a_finished_subject_without_the_run_token_says_how_to_fix_it() -> None:
    with pytest.raises(ValidationError, match=r"matches no event.*fuel-combustion\.\*"):
        EventTrigger(name="t", agent="noop", on="af.events.execution.finished.fuel-combustion")
