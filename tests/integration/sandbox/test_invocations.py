"""A normal invocation: its output, its errors, what it sees, what it leaves, and the template's life."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import tempfile
from pathlib import Path

import pytest

from agents.contract import RunContext
from agents.sandbox import ErrorCategory, InvocationAudit, Sandbox, SandboxConfig, SandboxStopped
from agents.sandbox.cgroups import find_hierarchies
from tests.helpers import eventually
from tests.integration.sandbox.boxes import AGENTS, HERE, TIGHT, Box, Proc, exists, processes, running


async def test_the_output_comes_back_and_the_audit_says_what_it_cost(full: Box) -> None:
    result = await full.sandbox.invoke("noop", '{"echo": [1, 2]}', RunContext(run_id="r-1", tenant="t"))
    assert result.ok and result.output == {"echo": [1, 2]}, result
    audit = result.audit
    assert audit.exit_status == 0 and audit.signal is None and audit.error is None
    assert audit.duration_ms > 0 and audit.cpu_ms >= 0 and audit.peak_rss_bytes > 0
    assert audit.bytes_written >= len('{"output":{"echo":[1,2]}}')
    assert audit.network is False
    assert InvocationAudit.model_validate_json(audit.model_dump_json()) == audit
    await full.assert_nothing_left(result)


async def test_a_mapping_input_is_sent_as_json(full: Box) -> None:
    result = await full.sandbox.invoke("noop", {"echo": {"litres": 12.5}})
    assert result.output == {"echo": {"litres": 12.5}}, result


async def test_input_that_does_not_fit_the_model_is_a_permanent_input_error(full: Box) -> None:
    result = await full.invoke("spinner", '{"seconds": "soon"}')
    assert result.category is ErrorCategory.INPUT_ERROR and result.category.permanent, result
    assert "invalid input for spinner" in (result.error or "")
    assert not ErrorCategory.TIMEOUT.permanent


async def test_an_unknown_agent_is_an_input_error(full: Box) -> None:
    result = await full.invoke("no-such-agent")
    assert result.category is ErrorCategory.INPUT_ERROR, result


async def test_the_environment_holds_only_af_otel_and_named_variables(
    full: Box, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AF_SANDBOX_TEST", "OTEL_SANDBOX_TEST", "SECRET_TOKEN", "NAMED_ONE"):
        monkeypatch.setenv(name, "x")
    result = await full.invoke("printer", env_names=["NAMED_ONE"])
    names = set(result.output["done"]) if result.output else set()
    assert {"AF_SANDBOX_TEST", "OTEL_SANDBOX_TEST", "NAMED_ONE"} <= names, result
    assert "SECRET_TOKEN" not in names and "PATH" not in names


async def test_stdin_is_empty_and_the_working_directory_is_private_and_removed(full: Box) -> None:
    result = await full.invoke("printer")
    assert result.output is not None, result
    assert result.output["stdin"] == ""
    cwd = Path(result.output["cwd"])
    assert full.workdirs in cwd.parents and str(cwd) == result.workdir
    await eventually(lambda: not exists(cwd), what="its working directory removed")
    assert result.stderr == b"to stderr\n"


async def test_stdout_over_the_cap_is_truncated_with_a_marker(full: Box) -> None:
    cap = TIGHT.output_cap_bytes
    result = await full.invoke("printer", json.dumps({"limit": cap + 1000}))
    assert result.ok, result
    assert result.stdout.startswith(b"x" * cap)
    assert result.stdout[cap:] == b"\n[truncated: 1000 more bytes]\n"
    assert result.audit.stdout_bytes == cap + 1000
    # Every write() counts, past the cap too (the child's /proc/self/io wchar, read by it)
    assert result.audit.bytes_written >= cap + 1000 + len("to stderr\n")


async def test_fifty_invocations_at_once_all_succeed(full: Box) -> None:
    results = await asyncio.gather(*(full.invoke("noop", json.dumps({"echo": i})) for i in range(50)))
    assert [r.output for r in results] == [{"echo": i} for i in range(50)]


async def test_the_levels_name_each_containment_and_why_one_is_off(full: Box) -> None:
    levels = full.sandbox.levels.as_dict()
    assert levels["rlimits"] is True
    assert set(levels) >= {"cgroup", "network_namespace", "pid_namespace", "uid_drop", "off_because"}
    for name in ("network_namespace", "uid_drop"):
        assert levels[name] or name in levels["off_because"]
    assert levels["cgroup"] or "cgroup" in levels["off_because"]


def _config(**kw: object) -> SandboxConfig:
    return SandboxConfig(agents=AGENTS, sys_path=[str(HERE)], limits=TIGHT, slots=2, **kw)  # type: ignore[arg-type]


def _cgroup_bases(sandbox: Sandbox) -> list[Path]:
    template = sandbox._running()
    return [path / f"af-sandbox-{template.tag}" for path in template.cgroups]


async def test_replace_starts_a_new_template_and_the_old_one_finishes_its_work() -> None:
    async with Sandbox(_config()) as sandbox:
        old_pid, old_cgroups = sandbox.template_pid, _cgroup_bases(sandbox)
        old_forker = sandbox.forker_pid
        spinning = asyncio.create_task(sandbox.invoke("spinner", '{"seconds": 0.5}'))
        await eventually(lambda: running(old_forker), what="the spinner started")
        await sandbox.replace()
        assert sandbox.template_pid != old_pid
        assert (await sandbox.invoke("noop", '{"echo": 1}')).ok
        result = await spinning
        assert result.ok, result
        await eventually(lambda: not exists(f"/proc/{old_pid}"), what="the old template exited")
        assert not any(exists(path) for path in old_cgroups)
    assert not exists(Path(tempfile.gettempdir(), f"af-sandbox-{old_pid}"))


async def test_stop_removes_the_template_its_cgroups_and_its_directories() -> None:
    sandbox = Sandbox(_config())
    await sandbox.start()
    pid, cgroups = sandbox.template_pid, _cgroup_bases(sandbox)
    assert (await sandbox.invoke("noop", "{}")).ok
    await sandbox.stop()
    assert not exists(f"/proc/{pid}")
    assert not any(exists(path) for path in cgroups)
    assert not exists(Path(tempfile.gettempdir(), f"af-sandbox-{pid}"))
    with pytest.raises(SandboxStopped):
        await sandbox.invoke("noop", "{}")


async def test_a_dead_template_fails_its_invocations_and_its_children_die_with_it() -> None:
    sandbox = Sandbox(_config())
    await sandbox.start()
    pid, uids, cgroups = sandbox.template_pid, sandbox._running().uids, _cgroup_bases(sandbox)
    ignoring = asyncio.create_task(sandbox.invoke("term-ignorer", '{"seconds": 600}'))
    workdirs = Path(tempfile.gettempdir(), f"af-sandbox-{pid}")
    await eventually(lambda: running(sandbox.forker_pid), what="the invocation started")
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(SandboxStopped):
        await ignoring
    await sandbox.stop()  # removes what the dead template could not
    assert not any(exists(path) for path in cgroups)
    assert not exists(workdirs)

    def children_gone() -> bool:
        return not [p for p in processes() if p.uid in uids]

    await eventually(children_gone, what="the template's children died with it (PR_SET_PDEATHSIG)")


async def test_warm_children_wait_confined_and_a_request_of_another_profile_gets_its_own() -> None:
    """A warm child has dropped to its slot's uid, joined the empty network namespace and
    lives in the sandbox's PID namespace before any request (only reading it, setting the
    environment and running are left); a request that may use the network is not sent to
    one: a child is forked for it."""
    async with Sandbox(_config()) as sandbox:
        assert (await sandbox.invoke("noop", "{}")).ok
        uids = sandbox._running().uids

        def warm() -> list[Proc]:
            return [p for p in processes() if p.ppid == sandbox.forker_pid and p.name == "af-warm"]

        await eventually(lambda: len(warm()) == 2, what="both slots warm")
        host_net, host_pid = os.readlink("/proc/self/ns/net"), os.readlink("/proc/self/ns/pid")
        assert sandbox.levels.pid_namespace, sandbox.levels
        for child in warm():
            assert child.uid in uids
            assert os.readlink(f"/proc/{child.pid}/ns/net") != host_net
            assert os.readlink(f"/proc/{child.pid}/ns/pid") != host_pid
        confined_without_network = {os.readlink(f"/proc/{p.pid}/cwd") for p in warm()}
        reached = await sandbox.invoke("printer", '{"limit": 0}', network=True)
        assert reached.ok and reached.audit.network is True, reached
        assert reached.workdir not in confined_without_network
        assert (await sandbox.invoke("noop", "{}")).ok  # and the usual profile still runs


async def test_a_fork_the_server_cannot_make_fails_one_request_and_nothing_else() -> None:
    """The fork server moved into a pids control group with no room (a host out of
    processes): the warm children still serve, a running invocation finishes, the next
    request that needs a fork is answered with the kernel's error, and once there is room
    again invocations run (the server lived on)."""
    pids = next((h for h in find_hierarchies()[0] if "pids" in h.controllers), None)
    if pids is None:
        pytest.skip("no writable pids control group on this host")
    full = pids.path / f"af-test-full-{os.getpid()}"
    async with Sandbox(_config()) as sandbox:
        forker = sandbox.forker_pid
        home = (pids.path / "cgroup.procs").read_text()  # where the server is now
        assert str(forker) in home.split()

        def warm() -> int:
            return len([p for p in processes() if p.ppid == forker and p.name == "af-warm"])

        await eventually(lambda: warm() == 2, what="both slots warm")
        spinning = asyncio.create_task(sandbox.invoke("spinner", '{"seconds": 0.5}'))
        await eventually(lambda: running(forker), what="the spinner started")
        full.mkdir()
        try:
            (full / "pids.max").write_text("1")
            (full / "cgroup.procs").write_text(str(forker))  # the server alone: no fork fits
            assert (await sandbox.invoke("noop", '{"echo": 1}')).ok  # the other warm child
            refused = await sandbox.invoke("noop", '{"echo": 2}')
            assert refused.audit.error is ErrorCategory.INTERNAL_ERROR, refused
            assert "fork: [Errno 11] Resource temporarily unavailable" in (refused.error or ""), refused
            assert (await spinning).ok
        finally:
            with contextlib.suppress(OSError):  # the server may be gone (when this test fails)
                (pids.path / "cgroup.procs").write_text(str(forker))
            full.rmdir()
        assert sandbox.forker_pid == forker
        assert (await sandbox.invoke("noop", '{"echo": 3}')).output == {"echo": 3}


async def test_a_killed_fork_server_ends_its_invocations_and_the_template_with_them() -> None:
    """The fork server (the children's parent) SIGKILLed: its children die with it, the
    running invocation is answered as killed, the template stops (nothing more could be
    forked), and nothing is left behind."""
    sandbox = Sandbox(_config())
    await sandbox.start()
    pid, forker, uids = sandbox.template_pid, sandbox.forker_pid, sandbox._running().uids
    cgroups = _cgroup_bases(sandbox)
    assert forker != pid and (await sandbox.invoke("noop", "{}")).ok
    ignoring = asyncio.create_task(sandbox.invoke("term-ignorer", '{"seconds": 600}'))
    workdirs = Path(tempfile.gettempdir(), f"af-sandbox-{pid}")
    await eventually(lambda: running(sandbox.forker_pid), what="the invocation started")
    os.kill(forker, signal.SIGKILL)
    result = await asyncio.wait_for(ignoring, 10)
    assert result.audit.error is ErrorCategory.INTERNAL_ERROR
    assert result.audit.signal == signal.SIGKILL, result
    await eventually(lambda: not exists(f"/proc/{pid}"), what="the template stopped")
    with pytest.raises(SandboxStopped):
        await sandbox.invoke("noop", "{}")
    await sandbox.stop()
    assert not any(exists(path) for path in cgroups)
    assert not exists(workdirs)
    assert not [p for p in processes() if p.uid in uids]


async def test_a_new_template_removes_what_a_killed_one_left_behind() -> None:
    """A template SIGKILLed with its worker cannot clean up: the next one removes its empty
    control groups and its working directories."""
    gone = await asyncio.create_subprocess_exec("true")
    await gone.wait()  # a pid that no longer runs
    workdirs = Path(tempfile.gettempdir(), f"af-sandbox-{gone.pid}")
    (workdirs / "tmpleft").mkdir(parents=True)
    probe = Sandbox(_config())
    await probe.start()
    bases = [path.parent / f"af-sandbox-{gone.pid}" for path in _cgroup_bases(probe)]
    await probe.stop()
    for base in bases:
        (base / "slot-0").mkdir(parents=True)
    async with Sandbox(_config()):
        assert not exists(workdirs)
        assert not any(exists(base) for base in bases)
