"""The resilience block: validation with clear errors, merge, and how it maps onto the queue."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from agents.contract import Agent, RunContext
from agents.resilience import (
    AgentTimeout,
    BreakerOpen,
    BreakerPolicy,
    Bulkhead,
    Fallback,
    Resilience,
    ResilienceConfigError,
    RetryPolicy,
)
from agents.resilience.policy import CATEGORIES
from agents.resilience.retries import LaneConfig, RetryRule, categorize, queue_config
from agents.sandbox.audit import ErrorCategory
from mesh.queue.worker import PermanentError


class Io(BaseModel):
    value: float = 0


def _agent(block: Resilience, **attrs: Any) -> Agent[Io, Io]:
    class Declared(Agent[Io, Io]):
        key = "declared"
        Input, Output = Io, Io
        resilience = block

        async def run(self, input: Io, ctx: RunContext) -> Io:
            return input

    for name, value in attrs.items():
        setattr(Declared, name, value)
    return Declared()


def _error(**block: Any) -> str:
    with pytest.raises(ValidationError) as caught:
        Resilience.model_validate(block)
    return str(caught.value)


def test_the_retry_categories_are_the_sandboxs_error_categories_but_input_error() -> None:
    assert set(CATEGORIES) == {c.value for c in ErrorCategory if not c.permanent}


def test_the_default_block_changes_nothing_and_is_not_enforced_in_the_handler() -> None:
    block = Resilience()
    assert not block.enforced_in_handler
    cfg = queue_config(_agent(block))
    assert (cfg.max_attempts, cfg.concurrency, cfg.backoff_base_s, cfg.backoff_max_s) == (3, None, 1.0, 60.0)


def test_the_block_maps_onto_the_lanes_queue_settings() -> None:
    block = Resilience(
        retry=RetryPolicy(max_attempts=7, backoff_base_s=0.5, backoff_max_s=8, jitter=0.2),
        bulkhead=Bulkhead(max_concurrent=4),
    )
    cfg = queue_config(_agent(block, ack_wait_s=42.0, max_attempts=2))
    assert isinstance(cfg, LaneConfig)
    assert (cfg.agent, cfg.ack_wait_s, cfg.max_attempts, cfg.concurrency) == ("declared", 42.0, 7, 4)
    assert (cfg.backoff_base_s, cfg.backoff_max_s, cfg.jitter) == (0.5, 8, 0.2)


def test_without_retry_max_attempts_the_agents_own_max_attempts_counts() -> None:
    assert queue_config(_agent(Resilience(), max_attempts=9)).max_attempts == 9


@pytest.mark.parametrize("attempt", range(1, 12))
@pytest.mark.parametrize("jitter", [0.0, 0.3, 1.0])
def test_backoff_stays_between_its_jittered_floor_and_its_capped_ceiling(attempt: int, jitter: float) -> None:
    cfg = LaneConfig("a", backoff_base_s=0.2, backoff_max_s=10.0, jitter=jitter)
    ceiling = min(10.0, 0.2 * 2 ** (attempt - 1))
    for _ in range(200):
        delay = cfg.backoff(attempt)
        assert max(0.05, ceiling * (1 - jitter)) - 1e-9 <= delay <= ceiling + 1e-9


def test_backoff_never_goes_under_the_queues_floor() -> None:
    assert LaneConfig("a", backoff_base_s=0.05, backoff_max_s=0.05, jitter=1.0).backoff(1) >= 0.05


@pytest.mark.parametrize(
    ("block", "says"),
    [
        ({"retry": {"backoff_base_s": 10, "backoff_max_s": 1}}, "must not be below backoff_base_s"),
        ({"retry": {"max_attempts": 0}}, "greater than or equal to 1"),
        ({"retry": {"jitter": 1.5}}, "less than or equal to 1"),
        ({"retry": {"on": ["flaky"]}}, "neither a category"),
        ({"retry": {"on": ["input_error"]}}, "never retries"),
        ({"retry": {"retries": 3}}, "Extra inputs are not permitted"),
        ({"timeout_s": 0}, "greater than 0"),
        ({"bulkhead": {"max_concurrent": 0}}, "greater than or equal to 1"),
        ({"fallback": {}}, "needs secondary agents, a default response, or both"),
        ({"fallback": {"agents": ["Bad Key"]}}, "is not an agent key"),
        ({"fallback": {"agents": ["a", "a"]}}, "named twice"),
        ({"breaker": {"failure_rate": 0}}, "greater than 0"),
        ({"breaker": {"min_calls": 0}}, "greater than or equal to 1"),
        ({"circuit": {}}, "Extra inputs are not permitted"),
    ],
)
def test_a_bad_block_is_refused_with_a_clear_error(block: dict[str, Any], says: str) -> None:
    assert says in _error(**block)


def test_merge_overrides_only_the_fields_it_names_and_validates_the_result() -> None:
    base = Resilience(
        retry=RetryPolicy(max_attempts=5, backoff_base_s=2.0, on=("timeout",)),
        timeout_s=30,
        bulkhead=Bulkhead(max_concurrent=4),
    )
    tenant = base.merge({"retry": {"max_attempts": 2}, "bulkhead": {"max_concurrent": 1}})
    assert tenant.retry.max_attempts == 2 and tenant.retry.backoff_base_s == 2.0
    assert tenant.retry.on == ("timeout",) and tenant.timeout_s == 30
    assert tenant.bulkhead == Bulkhead(max_concurrent=1)
    assert base.retry.max_attempts == 5  # blocks are frozen: merge makes a new one
    assert base.merge(Resilience(timeout_s=5)).retry == base.retry  # a block merges what it set
    assert base.merge({"bulkhead": None}).bulkhead is None  # None switches a policy off
    with pytest.raises(ValidationError, match="must not be below"):
        base.merge({"retry": {"backoff_max_s": 1.0}})


def test_the_fallback_default_replaces_rather_than_merges() -> None:
    base = Resilience(fallback=Fallback(default={"a": 1, "b": 2}))
    assert base.merge({"fallback": {"default": {"a": 3}}}).fallback == Fallback(default={"a": 3})


def test_an_enforced_block_is_one_with_a_timeout_fallback_breaker_or_narrow_retry() -> None:
    assert Resilience(timeout_s=1).enforced_in_handler
    assert Resilience(breaker=BreakerPolicy()).enforced_in_handler
    assert Resilience(fallback=Fallback(default={})).enforced_in_handler
    assert Resilience(retry=RetryPolicy(on=("timeout",))).enforced_in_handler
    queue_only = Resilience(retry=RetryPolicy(max_attempts=9), bulkhead=Bulkhead(max_concurrent=2))
    assert not queue_only.enforced_in_handler


@pytest.mark.parametrize(
    ("exc", "category"),
    [
        (PermanentError("bad"), ErrorCategory.INPUT_ERROR),
        (AgentTimeout("a", 1), ErrorCategory.TIMEOUT),
        (TimeoutError(), ErrorCategory.TIMEOUT),
        (ConnectionRefusedError(), ErrorCategory.DEPENDENCY_FAILURE),
        (BreakerOpen("a", 1), ErrorCategory.DEPENDENCY_FAILURE),
        (MemoryError(), ErrorCategory.RESOURCE_EXCEEDED),
        (ValueError(), ErrorCategory.INTERNAL_ERROR),
    ],
)
def test_failures_fall_into_the_sandboxs_categories(exc: Exception, category: ErrorCategory) -> None:
    assert categorize(exc) is category


def test_retry_on_matches_classes_by_subclass_and_categories_and_never_input_errors() -> None:
    rule = RetryRule("a", RetryPolicy(on=("builtins.LookupError", "timeout")))
    assert rule.retries(KeyError("k"), categorize(KeyError("k")))
    assert rule.retries(AgentTimeout("a", 1), ErrorCategory.TIMEOUT)
    assert not rule.retries(ValueError(), ErrorCategory.INTERNAL_ERROR)
    # An open breaker always retries, whatever retry.on says.
    assert rule.retries(BreakerOpen("a", 1), ErrorCategory.DEPENDENCY_FAILURE)
    everything = RetryRule("a", RetryPolicy())
    assert not everything.retries(PermanentError("x"), ErrorCategory.INPUT_ERROR)


@pytest.mark.parametrize(
    ("name", "says"),
    [("nosuchmodule.Error", "does not import"), ("builtins.NoSuchError", "does not import"),
     ("builtins.len", "not an exception class")],
)  # fmt: skip
def test_a_retry_class_that_does_not_resolve_fails_at_worker_start(name: str, says: str) -> None:
    with pytest.raises(ResilienceConfigError, match=says):
        RetryRule("a", RetryPolicy(on=(name,)))
