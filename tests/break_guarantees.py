# ruff: noqa: E501  (the table of mutations is data: one line each)
"""Break each queue guarantee's line on purpose and watch its test fail.

    .venv/bin/python tests/break_guarantees.py            # every mutation (~6 min)
    .venv/bin/python tests/break_guarantees.py "no event CAS" "ack before outcome"

Each entry replaces one exact piece of product code (the guarantee's line)
in a throwaway git worktree of HEAD, runs the test that attacks that
guarantee, and reports CAUGHT (the test failed, as it must) or MISSED.
A pattern that no longer matches is reported too: update the entry with
the code. Not collected by pytest (slow; run it after changing a guarantee).
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parents[1]
PYTEST = str(HERE / ".venv" / "bin" / "pytest")

G = "tests/integration/queue/test_guarantees.py::"
T = "tests/integration/queue/test_ttl_while_running.py::"
C = "tests/integration/queue/test_cancel.py::"
R = "tests/integration/gateway/test_runs_api.py::"
A = "tests/integration/queue/test_agent_calls.py::"
M = [
    (
        "ack before outcome",
        "mesh/queue/worker.py",
        "        if expect == 0:  # the common case",
        "        await self.pipeline.ack_sync(msg)\n        if expect == 0:  # the common case",
        G + "test_a_task_is_not_acked_while_its_outcome_cannot_be_stored",
    ),
    (
        "no redelivery check",
        "mesh/queue/worker.py",
        "        if stored is not None and stored.decides(generation, real=True):\n            await self.pipeline.ack_sync(item.msg)",
        "        if False:\n            await self.pipeline.ack_sync(item.msg)",
        G + "test_a_redelivered_task_whose_outcome_is_stored_is_acked_without_running",
    ),
    (
        "no first-outcome CAS",
        "mesh/queue/worker.py",
        "            create_only = lean.expect_last_subject_seq(headers, 0)",
        "            create_only = headers",
        "tests/integration/queue/test_sigstop_worker.py",
    ),
    (
        "no event CAS",
        "mesh/queue/outcome.py",
        "            await send(subject, data, expect_last_subject_seq(headers, expect))",
        "            await send(subject, data, headers)",
        G + "test_a_second_outcome_is_refused_even_past_the_duplicate_window",
    ),
    (
        "no state CAS",
        "mesh/queue/worker.py",
        "        headers = lean.expect_last_subject_seq(lean.EMPTY_HEADERS, revision)",
        "        headers = lean.EMPTY_HEADERS",
        G + "test_a_state_write_never_lands_on_a_final_state",
    ),
    (
        "no settled check",
        "mesh/queue/worker.py",
        "                if current is not None and _settled(current, state.replay):\n                    item.settled = True\n                    return False",
        "                pass",
        G + "test_a_state_write_never_lands_on_a_final_state",
    ),
    (
        "no buffered heartbeat",
        "mesh/queue/worker.py",
        "            held += [msg for lane in self.lanes for msg in lane.source.ready]\n",
        "",
        G + "test_a_task_buffered_in_a_busy_worker_is_heartbeated_not_redelivered",
    ),
    (
        "hand back not recorded",
        "mesh/queue/worker.py",
        "                await self._note_returned(agent, msg, task)",
        "                pass",
        G + "test_a_drain_with_one_attempt_left_hands_tasks_back_without_using_it",
    ),
    (
        "hand back no nak",
        "mesh/queue/worker.py",
        "        with contextlib.suppress(Exception):\n            await msg.nak()\n\n    async def _note_returned",
        "\n    async def _note_returned",
        G + "test_a_drain_with_one_attempt_left_hands_tasks_back_without_using_it",
    ),
    (
        "mover no outcome check",
        "mesh/queue/maintenance.py",
        "        if stored is not None and stored.decides(generation, real=False):\n            # Its outcome",
        "        if False:\n            # Its outcome",
        G + "test_the_mover_does_not_dead_letter_a_task_whose_outcome_is_recorded",
    ),
    (
        "mover real id",
        "mesh/queue/maintenance.py",
        "        await write_outcome(js, task, state, lost_msg_id(task.id, generation))",
        "        await write_outcome(js, task, state, f'finished-{task.id}-{generation}', real=True)",
        G + "test_a_last_attempt_that_stalls_then_succeeds_is_recorded_succeeded_and_not_replayed",
    ),
    (
        "replay keeps batch headers",
        "mesh/queue/dlq.py",
        '_NOT_REPLAYED = ("Nats-Batch-", "Nats-Expected-", "Nats-TTL", "Nats-Msg-Id")',
        '_NOT_REPLAYED = ("Nats-Expected-", "Nats-TTL", "Nats-Msg-Id")',
        G + "test_dead_lettered_batch_tasks_replay",
    ),
    (
        "replay deletes first",
        "mesh/queue/dlq.py",
        '    headers["Nats-Msg-Id"] = f"replay-{seq}"\n',
        '    headers["Nats-Msg-Id"] = f"replay-{seq}"\n    await js.delete_msg(names.STREAM_DLQ, seq)\n',
        G + "test_a_replay_that_cannot_republish_keeps_the_dead_letter",
    ),
    (
        "no task search",
        "mesh/queue/producer.py",
        "        if claim is not None and await self._stored_past_window(claim, run_id, spec):",
        "        if False:",
        G + "test_an_idempotent_retry_past_the_duplicate_window_does_not_store_the_task_twice",
    ),
    (
        "timeout = rejected",
        "mesh/queue/producer.py",
        "        except (TimeoutError, ConnectionError) as exc:  # no answer: it may have been committed",
        "        except ZeroDivisionError as exc:",
        G + "test_a_batch_committed_but_unconfirmed_is_unknown_not_rejected_and_its_retry_stores_it_once",
    ),
    (
        "record before task",
        "mesh/queue/producer.py",
        "        subject = names.task_subject(spec.agent, int(spec.priority))\n        try:\n            ack = parse_puback(",
        "        await self._create_record(run_id, message.record)\n        subject = names.task_subject(spec.agent, int(spec.priority))\n        try:\n            ack = parse_puback(",
        G + "test_a_refused_task_leaves_no_queued_record",
    ),
    (
        "record not create-only",
        "mesh/queue/producer.py",
        "        reply = await self.pipeline.request(run_key(run_id), record, _CREATE_ONLY)",
        "        reply = await self.pipeline.request(run_key(run_id), record)",
        G + "test_the_queued_record_never_overwrites_a_later_state",
    ),
    (
        "keys not per tenant",
        "mesh/queue/producer.py",
        '    return hashlib.sha256(f"{tenant}\\x00{key}".encode()).hexdigest()',
        '    return hashlib.sha256(f"{key}".encode()).hexdigest()',
        G + "test_idempotency_keys_are_scoped_per_tenant",
    ),
    (
        "reaper no outcome check",
        "mesh/queue/maintenance.py",
        "        if stored is not None and stored.decides(state.replay, real=False):\n            continue  # its outcome",
        "        if False:\n            continue  # its outcome",
        G + "test_the_reaper_never_expires_a_run_whose_outcome_is_stored",
    ),
    (
        "no result limit",
        "mesh/queue/worker.py",
        "        if len(outcome[1]) > self.limits.result and (size := _size(result)) > self.limits.result:",
        "        if False and (size := _size(result)):",
        G + "test_a_result_too_large_to_record_fails_the_run_once_with_a_clear_error",
    ),
    (
        "errors unbounded",
        "mesh/queue/runs.py",
        "    if len(errors) > _KEEP_FIRST + _KEEP_LAST:",
        "    return errors\n    if len(errors) > _KEEP_FIRST + _KEEP_LAST:",
        G + "test_a_max_size_task_failing_every_attempt_with_long_errors_is_dead_lettered_and_replays",
    ),
    (
        "task limit = max payload",
        "mesh/limits.py",
        "        return self.max_payload // 2",
        "        return self.max_payload",
        G + "test_a_task_over_half_the_max_payload_is_refused_at_enqueue",
    ),
    (
        "no deadline at start",
        "mesh/queue/worker.py",
        "        if attempt == 1 and ttl and waited > ttl and (deadline := wait_deadline(task)) and started > deadline:",
        "        if False and (deadline := wait_deadline(task)):",
        T + "test_a_first_start_past_the_deadline_is_expired_not_run",
    ),
    (
        "server TTL back",
        "mesh/queue/producer.py",
        '    fields = {"AF-Tenant": meta.tenant}',
        '    fields = {"Nats-TTL": str(int(meta.ttl_s or 3600)), "AF-Tenant": meta.tenant}',
        T + "test_a_worker_killed_after_reporting_progress_is_replaced_even_with_a_short_ttl",
    ),
    (
        "retry keeps deadline",
        "mesh/queue/worker.py",
        "            state.status = RunStatus.QUEUED  # started already: no wait deadline any more",
        "            state.status = RunStatus.QUEUED\n            state.expires_at = wait_deadline(task)",
        T + "test_a_replayed_dead_letter_waiting_for_its_retry_is_not_expired",
    ),
    (
        "no claims",
        "mesh/queue/worker.py",
        "                    await self._write_state(item, item.running())",
        "                    pass",
        T + "test_a_task_still_running_when_its_ttl_passes_is_claimed_kept_and_not_expired",
    ),
    (
        "cancel not decisive",
        "mesh/queue/outcome.py",
        '        return self.msg_id.startswith(("finished-", "cancelled-"))',
        '        return self.msg_id.startswith("finished-")',
        C + "test_the_first_recorded_of_a_cancel_and_a_worker_outcome_wins",
    ),
    (
        "cancel not told",
        "mesh/queue/cancel.py",
        "    await nc.publish(names.cancel_subject(state.agent), run_id.encode())",
        "    pass",
        C + "test_a_running_run_cancelled_stops_its_handler_and_its_task_is_done",
    ),
    (
        "cancel leaves the task",
        "mesh/queue/cancel.py",
        "            await js.delete_msg(names.STREAM_TASKS, state.seq)",
        "            pass",
        C + "test_a_run_waiting_for_its_retry_is_cancelled_before_it_runs_again",
    ),
    (
        "key reuse not checked",
        "mesh/queue/producer.py",
        "    if claimed_digest and claimed_digest != digest:",
        "    if False:",
        R + "test_an_idempotency_key_reused_for_another_request_is_refused_with_409",
    ),
    (
        "duplicate says queued",
        "mesh/queue/producer.py",
        "                    return Enqueued(found, True, current.status.value)",
        "                    return Enqueued(found, True)",
        R + "test_a_duplicate_submission_answers_with_the_runs_real_status",
    ),
    (
        "replay drops history",
        "mesh/queue/dlq.py",
        '    payload["history"] = {',
        "    _dropped = {",
        R + "test_a_replayed_run_keeps_the_errors_and_first_start_of_every_round",
    ),
    (
        "cursor ignored",
        "agents/store/runs.py",
        '        clauses.append(f"(enqueued_at, run_id) < ({arg(at)}, {arg(run_id)})")',
        "        pass",
        R + "test_runs_are_listed_newest_first_filtered_and_paged_without_repeats_or_gaps",
    ),
    (
        "running never shown",
        "mesh/queue/worker.py",
        "SHOW_RUNNING_AFTER_S = 1.0 ",
        "SHOW_RUNNING_AFTER_S = 1e9 ",
        "tests/integration/queue/test_run_visibility.py",
    ),
    (
        "call key per attempt",
        "agents/calls.py",
        "idempotency_key=f\"af-call:{self.task.run_id}:{made if key is None else 'key:' + key}\",",
        "idempotency_key=f\"af-call:{self.task.run_id}:{self.task.attempt}:{made if key is None else 'key:' + key}\",",
        A + "test_a_caller_retried_after_its_call_does_not_run_the_callee_twice",
    ),
    (
        "call enqueued outside the attempt",
        "agents/calls.py",
        "        return await (await self.caller.queue()).enqueue(spec)",
        "        import contextvars\n        queue = await self.caller.queue()\n        return await asyncio.create_task(queue.enqueue(spec), context=contextvars.Context())",
        A + "test_the_chain_is_one_trace_each_run_a_child_of_its_callers_attempt",
    ),
    (
        "no call depth limit",
        "agents/calls.py",
        "        if depth > MAX_CALL_DEPTH:",
        "        if depth > 10**6:",
        A + "test_an_agent_calling_itself_is_stopped_at_the_depth_limit",
    ),
    (
        "unknown callee not refused",
        "agents/calls.py",
        "        elif not await self.caller.has_lane(agent, level):",
        "        elif False:",
        A + "test_a_call_to_an_unknown_agent_fails_the_caller_once_and_enqueues_nothing",
    ),
]


Edit = tuple[str, str, str]  # (file, exact old text, new text)
Mutation = tuple[str, list[Edit], str]  # (name, edits, the test that must fail)


def break_each(mutations: list[Mutation], only: list[str], pytest_args: tuple[str, ...] = ()) -> int:
    """The harness of every ``break_*.py``: in a throwaway worktree of HEAD,
    apply each mutation's edits, run its test, restore; 1 if one was MISSED."""
    missed = 0
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp) / "tree"
        add = ["git", "-C", str(HERE), "worktree", "add", "-q", "--detach", str(root), "HEAD"]
        subprocess.run(add, check=True)
        try:
            for name, edits, test in mutations:
                if not only or name in only:
                    # A basetemp of its own: a run without one can delete another's (pytest keeps 3).
                    args = (f"--basetemp={tmp}/bt", *pytest_args)
                    missed += not _run_one(root, name, edits, test, args)
        finally:
            subprocess.run(["git", "-C", str(HERE), "worktree", "remove", "--force", str(root)], check=False)
    return 1 if missed else 0


def _run_one(root: pathlib.Path, name: str, edits: list[Edit], test: str, args: tuple[str, ...]) -> bool:
    saved: dict[pathlib.Path, str] = {}
    try:
        for f, old, new in edits:
            p = root / f
            src = p.read_text()
            saved.setdefault(p, src)
            if src.count(old) != 1:
                print(f"{name}: PATTERN FOUND {src.count(old)} TIMES in {f} (update the entry)", flush=True)
                return False
            p.write_text(src.replace(old, new))
        try:
            r = subprocess.run([PYTEST, "-q", "-x", "-p", "no:cacheprovider", *args, test], cwd=root,
                               capture_output=True, text=True, timeout=240)  # fmt: skip
            lines = r.stdout.strip().splitlines()
            why = next((line[:150] for line in lines if line.startswith("E ")), "")
            out = (f"{lines[-1]} [{why}]" if why else lines[-1]) if lines else r.stderr[-200:]
        except subprocess.TimeoutExpired:
            out = "TIMEOUT (counts as failing)"
    finally:
        for p, src in saved.items():
            p.write_text(src)
    caught = any(word in out.lower() for word in ("failed", "timeout", "error"))
    print(f"{name}: {'CAUGHT' if caught else 'MISSED'} -- {out}", flush=True)
    return caught


def main(only: list[str]) -> int:
    return break_each([(name, [(f, old, new)], test) for name, f, old, new, test in M], only)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
