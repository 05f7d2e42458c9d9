# ruff: noqa: E501  (the table of mutations is data: one line each)
"""Break each sandbox guarantee on purpose and watch its test fail.

    .venv/bin/python tests/integration/sandbox/break_sandbox.py              # every mutation (~3 min)
    .venv/bin/python tests/integration/sandbox/break_sandbox.py "no netns"   # one

Each entry replaces one exact piece of product code in a throwaway git
worktree of HEAD, runs the test that attacks that guarantee, and reports
CAUGHT (the test failed, as it must) or MISSED. Not collected by pytest.

Left out on purpose, because the broken sandbox would let the attack loose on
the machine running it: the uid drop and RLIMIT_NPROC (a real fork bomb;
"no pids.max" is safe only because RLIMIT_NPROC still holds). Mutations here
only ever loosen a limit to another finite one.
"""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[3]))  # run as a script: find `tests`

from tests.break_guarantees import break_each

H = "tests/integration/sandbox/test_hostile_agents.py::"
I = "tests/integration/sandbox/test_invocations.py::"  # noqa: E741
CR = "tests/integration/sandbox/test_calls_relayed.py::"
M = [
    ("file size limit x64", "agents/sandbox/limits.py",
     "(resource.RLIMIT_FSIZE, limits.file_size_bytes, limits.file_size_bytes),",
     "(resource.RLIMIT_FSIZE, limits.file_size_bytes * 64, limits.file_size_bytes * 64),",
     H + "test_a_10_gb_file_stops_at_the_file_size_limit"),
    ("no CPU limit", "agents/sandbox/limits.py",
     "(resource.RLIMIT_CPU, limits.cpu_s, limits.cpu_s + 1),",
     "(resource.RLIMIT_CPU, 10**6, 10**6),",
     H + "test_cpu_seconds_over_the_limit_are_a_resource_error"),
    ("no netns", "agents/sandbox/child.py",
     "            enter_netns(NETNS_FD)",
     "            pass",
     H + "test_a_socket_to_localhost_without_network_permission_fails"),
    ("no pids.max", "agents/sandbox/cgroups.py",
     '                    _write(_at(path, "pids.max"), str(limits.processes))',
     "                    pass",
     H + "test_a_fork_bomb_is_stopped_at_the_process_limit"),
    ("no memory cgroup limit", "agents/sandbox/cgroups.py",
     '                        _write(_at(path, "memory.limit_in_bytes"), str(limits.memory_bytes))',
     "                        pass",
     H + "test_memory_ten_times_the_limit_is_refused"),
    ("no SIGKILL after the grace", "agents/sandbox/template.py",
     "                elif child.kill_at is not None and now >= child.kill_at:\n                    self._signal(child, signal.SIGKILL)",
     "                elif child.kill_at is not None and now >= child.kill_at:\n                    pass",
     H + "test_an_agent_ignoring_sigterm_is_killed_after_the_grace"),
    ("no SIGTERM at the deadline", "agents/sandbox/template.py",
     "                    self._signal(child, signal.SIGTERM)",
     "                    pass",
     H + "test_an_infinite_loop_times_out"),
    ("leftovers not swept", "agents/sandbox/template.py",
     "        if child.slot.cgroup is not None:\n            return child.slot.cgroup.signal_all(sig)",
     "        if True:\n            return 0",
     H + "test_double_forked_orphans_are_killed_with_their_invocation"),
    ("early answer despite descendants", "agents/sandbox/template.py",
     "    def _has_descendants(self, child: Invocation) -> bool:\n",
     "    def _has_descendants(self, child: Invocation) -> bool:\n        return False\n",
     H + "test_double_forked_orphans_are_killed_with_their_invocation"),
    ("output uncapped", "agents/sandbox/invocation.py",
     "        room = self.cap - len(self.kept)",
     "        room = len(data)",
     I + "test_stdout_over_the_cap_is_truncated_with_a_marker"),
    ("workdir kept", "agents/sandbox/template.py",
     "            os.close(child.request_fd)\n        shutil.rmtree(child.workdir, ignore_errors=True)",
     "            os.close(child.request_fd)\n        pass",
     I + "test_stdin_is_empty_and_the_working_directory_is_private_and_removed"),
    ("input error retried", "agents/sandbox/child.py",
     '        return {"category": ErrorCategory.INPUT_ERROR, "error": f"invalid input for {agent.key}: {exc}"}',
     '        return {"category": ErrorCategory.INTERNAL_ERROR, "error": f"invalid input for {agent.key}: {exc}"}',
     I + "test_input_that_does_not_fit_the_model_is_a_permanent_input_error"),
    ("stale dirs kept", "agents/sandbox/template.py",
     "        self._remove_stale(root)\n",
     "",
     I + "test_a_new_template_removes_what_a_killed_one_left_behind"),
    ("pending invocations hang when the template dies", "agents/sandbox/service.py",
     '                    future.set_exception(SandboxStopped("the sandbox template stopped"))',
     "                    pass",
     I + "test_a_dead_template_fails_its_invocations_and_its_children_die_with_it"),
    ("a request given a warm child of another profile", "agents/sandbox/template.py",
     "            warm = [c for c in self._idle() if c.profile == profile]",
     "            warm = self._idle()",
     I + "test_warm_children_wait_confined_and_a_request_of_another_profile_gets_its_own"),
    ("a failed fork kills the fork server", "agents/sandbox/forker.py",
     "    except OSError as exc:  # said, not fatal: the running invocations live on",
     "    except ZeroDivisionError as exc:",
     I + "test_a_fork_the_server_cannot_make_fails_one_request_and_nothing_else"),
    ("a dead fork server's invocations left unanswered", "agents/sandbox/template.py",
     "                child.status, child.ended = int(signal.SIGKILL), now  # the wait status of a SIGKILL",
     "                pass",
     I + "test_a_killed_fork_server_ends_its_invocations_and_the_template_with_them"),
    ("calls in flight unbounded", "agents/sandbox/relay.py",
     "        if len(self.going) >= MAX_CALLS_IN_FLIGHT:",
     "        if len(self.going) >= 10**6:",
     CR + "test_calls_past_the_limit_in_flight_are_refused_not_queued"),
    ("call frames unbounded", "agents/sandbox/invocation.py",
     "field(default_factory=lambda: FrameReader(MAX_CALL_FRAME))",
     "field(default_factory=FrameReader)",
     CR + "test_a_call_frame_over_the_limit_closes_the_childs_calls_and_nothing_else"),
    ("relayed call outside the attempt", "agents/sandbox/relay.py",
     "        task = self.context.run(asyncio.create_task, self._make(call))",
     "        task = asyncio.create_task(self._make(call))",
     "tests/integration/queue/test_agent_calls.py::test_a_sandboxed_run_calls_through_its_worker_once_per_call_in_its_trace"),
]  # fmt: skip

# Mutations of more than one place: the environment is emptied in the template and again
# in each child (either alone keeps the guarantee).
MULTI = [
    ("environment kept", [
        ("agents/sandbox/template.py", "    os.environ.clear()\n", ""),
        ("agents/sandbox/child.py", "    os.environ.clear()  # the template emptied its own", "    pass  #"),
    ], I + "test_the_environment_holds_only_af_otel_and_named_variables"),
]  # fmt: skip


def main(only: list[str]) -> int:
    mutations = [(name, [(f, old, new)], test) for name, f, old, new, test in M] + MULTI
    return break_each(mutations, only, ("--timeout=40",))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
