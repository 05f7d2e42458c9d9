"""A package's own tests run confined at its publish: no network, bounded memory and wall
clock; a failing, empty or missing test suite refuses the package with pytest's words."""

from __future__ import annotations

import socket
import textwrap
from pathlib import Path

import pytest

from agents.hub.testrun import PackTestsFailed, run_pack_tests
from agents.sandbox import detect_levels


def _pack(root: Path, test: str) -> Path:
    (root / "tests").mkdir(parents=True)
    (root / "tests" / "test_it.py").write_text(textwrap.dedent(test))
    return root


async def test_passing_tests_pass_and_say_so(tmp_path: Path) -> None:
    run = await run_pack_tests(_pack(tmp_path, "def test_ok():\n    assert 1 + 1 == 2\n"))
    assert run.passed and run.summary.startswith("1 passed")


async def test_a_failing_test_refuses_with_pytests_words(tmp_path: Path) -> None:
    with pytest.raises(PackTestsFailed, match=r"(?s)pytest exited with 1.*assert \(1 \+ 2\) == 4"):
        await run_pack_tests(_pack(tmp_path, "def test_no():\n    assert 1 + 2 == 4\n"))


async def test_no_tests_or_no_tests_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PackTestsFailed, match="no tests/ directory"):
        await run_pack_tests(tmp_path)
    with pytest.raises(PackTestsFailed, match="no tests were collected"):
        await run_pack_tests(_pack(tmp_path / "empty", "X = 1\n"))


async def test_a_test_that_runs_too_long_is_killed(tmp_path: Path) -> None:
    with pytest.raises(PackTestsFailed, match="did not finish within 2 s"):
        await run_pack_tests(
            _pack(tmp_path, "import time\ndef test_slow():\n    time.sleep(60)\n"), timeout_s=2
        )


async def test_memory_is_bounded(tmp_path: Path) -> None:
    hog = "def test_hog():\n    x = bytearray(3 * 1024 * 1024 * 1024)\n    assert x\n"
    with pytest.raises(PackTestsFailed, match="MemoryError"):
        await run_pack_tests(_pack(tmp_path, hog), memory_mb=1024)


@pytest.mark.skipif(not detect_levels().network_namespace, reason="no network namespace on this host")
async def test_the_tests_have_no_network(tmp_path: Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    try:
        reach = f"""
            import socket
            def test_reach():
                socket.create_connection(("127.0.0.1", {port}), timeout=2).close()
            """
        with pytest.raises(PackTestsFailed, match=r"(?s)(OSError|Unreachable|refused)"):
            await run_pack_tests(_pack(tmp_path, reach))
        # the same test outside the confinement does reach it: the refusal is the namespace's
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        listener.close()


@pytest.mark.skipif(not detect_levels().network_namespace, reason="no network namespace on this host")
async def test_a_pack_cannot_stand_in_for_the_confinement(tmp_path: Path) -> None:
    """A pack shipping its own ``agents.hub.confined`` (one that confines nothing) still runs confined."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    try:
        pack = _pack(tmp_path, f"""
            import socket
            def test_reach():
                socket.create_connection(("127.0.0.1", {port}), timeout=2).close()
            """)  # fmt: skip
        (pack / "agents" / "hub").mkdir(parents=True)
        (pack / "agents" / "__init__.py").write_text("")
        (pack / "agents" / "hub" / "__init__.py").write_text("")
        (pack / "agents" / "hub" / "confined.py").write_text(
            "import os, sys\nos.execv(sys.argv[3], sys.argv[3:])\n"  # no unshare, no limits
        )
        with pytest.raises(PackTestsFailed, match=r"(?s)(OSError|Unreachable|refused)"):
            await run_pack_tests(pack)
    finally:
        listener.close()
