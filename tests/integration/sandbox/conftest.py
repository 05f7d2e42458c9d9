"""Real templates with the hostile agents: one with all the containment this
host has ("full"), one with rlimits and the uid drop only ("no_kernel")."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from agents.sandbox import Sandbox, SandboxConfig
from tests.integration.sandbox.boxes import AGENTS, HERE, TIGHT, Box


@pytest.fixture(scope="session")
async def full(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Box]:
    root = tmp_path_factory.mktemp("sandbox-full")
    root.chmod(0o755)
    config = SandboxConfig(agents=AGENTS, sys_path=[str(HERE)], workdir_root=str(root), limits=TIGHT)
    async with Sandbox(config) as sandbox:
        yield Box(sandbox, root, "full")


@pytest.fixture(scope="session")
async def no_kernel(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Box]:
    """rlimits (and the uid drop when root: RLIMIT_NPROC binds no root process) only."""
    root = tmp_path_factory.mktemp("sandbox-plain")
    root.chmod(0o755)
    config = SandboxConfig(
        agents=AGENTS, sys_path=[str(HERE)], workdir_root=str(root), limits=TIGHT,
        use_cgroups=False, use_network_namespace=False, use_pid_namespace=False,
    )  # fmt: skip
    async with Sandbox(config) as sandbox:
        yield Box(sandbox, root, "no_kernel")


@pytest.fixture(params=["full", "no_kernel"])
def box(request: pytest.FixtureRequest) -> Box:
    """Each hostile test runs on both levels."""
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]
