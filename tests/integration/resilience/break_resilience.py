# ruff: noqa: E501  (the table of mutations is data: one line each)
"""Break each resilience guarantee on purpose and watch its test fail.

    .venv/bin/python tests/integration/resilience/break_resilience.py                  # every mutation (~1 min)
    .venv/bin/python tests/integration/resilience/break_resilience.py "no timeout"     # one

Each entry replaces exact pieces of product code in a throwaway git worktree
of HEAD, runs the test that attacks that guarantee, and reports CAUGHT (the
test failed, as it must) or MISSED. Not collected by pytest.
"""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[3]))  # run as a script: find `tests`

from tests.break_guarantees import break_each

# fmt: off
T = "tests/integration/resilience/"
RETRIED = T + "test_retry.py::test_a_retryable_exception_is_retried_by_the_queue_with_backoff_and_succeeds_on_attempt_3"
Q, G, B, RT = "agents/resilience/retries.py", "agents/resilience/guard.py", "agents/resilience/breaker.py", "agents/runtime.py"
NO_BULKHEAD = (Q, "        concurrency=block.bulkhead.max_concurrent if block.bulkhead else None,", "        concurrency=None,")
# (name, [(file, old, new), ...], test)
M = [
    ("retry.on ignored", [(Q, "        if self.everything or isinstance(exc, BreakerOpen):", "        if True:")],
     T + "test_retry.py::test_an_exception_not_in_retry_on_fails_the_run_at_once_with_one_attempt"),
    ("backoff not mapped", [(Q, "        backoff_base_s=retry.backoff_base_s,\n", "")], RETRIED),
    ("sleep in the worker", [(G, "            if retryable:\n                raise", "            if retryable:\n                await asyncio.sleep(0.5)\n                raise")], RETRIED),
    ("no timeout", [(G, "        if timeout_s is None:\n            return await run", "        if True:\n            return await run")],
     T + "test_timeout.py::test_a_hanging_agent_is_cut_at_its_timeout_and_the_run_records_the_timeout"),
    ("bulkhead not mapped", [NO_BULKHEAD], T + "test_bulkhead.py"),
    ("bulkhead in memory", [
        NO_BULKHEAD,
        (RT, "        output = await agent.run(parsed, ctx)\n", "        async with sem:\n            output = await agent.run(parsed, ctx)\n"),
        (RT, "    async def handle(task: TaskContext) -> Any:\n", "    import asyncio\n    sem = asyncio.Semaphore(agent.resilience.bulkhead.max_concurrent if agent.resilience.bulkhead else 10**6)\n\n    async def handle(task: TaskContext) -> Any:\n"),
    ], T + "test_bulkhead.py"),
    ("fallback order reversed", [(G, "        for secondary in self.secondaries:", "        for secondary in reversed(self.secondaries):")],
     T + "test_fallback.py::test_primary_fails_and_the_first_secondary_that_answers_is_the_result"),
    ("default before secondaries", [(G, "        for secondary in self.secondaries:", "        for secondary in self.secondaries if self.default is None else []:")], T + "test_fallback.py"),
    ("breaker never refuses", [(B, "        if state is BreakerState.OPEN:\n            return None", "        if state is BreakerState.OPEN:\n            return self._generation")], T + "test_breaker.py"),
    ("sandboxed worker skips the guard", [(RT, "        elif agent.resilience.enforced_in_handler:", "        elif False:")], T + "test_sandboxed.py"),
    ("breaker never half-opens", [(B, "        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.policy.open_s:", "        if False:")],
     T + "test_breaker.py::test_the_breaker_opens_at_its_failure_rate_fails_fast_and_half_opens_after_its_duration"),
]
# fmt: on


def main(only: list[str]) -> int:
    return break_each(M, only)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
