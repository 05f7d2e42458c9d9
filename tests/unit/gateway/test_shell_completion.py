"""Shell completion as the README documents it: the installed ``agent-factory`` prints
its completion script for bash, zsh and fish (Click's ``_AGENT_FACTORY_COMPLETE``),
bash accepts the script and registers it, and completing a word offers the real
commands."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.commands.agent import agent

SCRIPT = Path(sys.executable).parent / "agent-factory"  # the console script pyproject.toml installs


def _complete(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT)], env={**os.environ, **env}, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("shell", "marker"),
    [("bash", "complete -o nosort -F _agent_factory_completion agent-factory"),
     ("zsh", "#compdef agent-factory"),
     ("fish", "complete --no-files --command agent-factory")],
)  # fmt: skip
def test_the_completion_script_is_generated_for_each_shell(shell: str, marker: str) -> None:
    done = _complete({"_AGENT_FACTORY_COMPLETE": f"{shell}_source"})
    assert done.returncode == 0, done.stderr
    assert marker in done.stdout and not done.stderr
    checker = shutil.which(shell)
    if checker is not None:  # the shell itself reads it without a syntax error
        syntax = subprocess.run(
            [checker, "-n"], input=done.stdout, capture_output=True, text=True, timeout=60
        )
        assert syntax.returncode == 0, syntax.stderr


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_registers_it_and_completes_the_agent_commands() -> None:
    source = _complete({"_AGENT_FACTORY_COMPLETE": "bash_source"}).stdout
    bash = str(shutil.which("bash"))
    registered = subprocess.run([bash, "-c", f"{source}\ncomplete -p agent-factory"], capture_output=True,
                                text=True, timeout=60)  # fmt: skip
    assert registered.returncode == 0 and "_agent_factory_completion" in registered.stdout, registered.stderr
    words = _complete({"_AGENT_FACTORY_COMPLETE": "bash_complete", "COMP_WORDS": "agent-factory agent ins",
                       "COMP_CWORD": "2"})  # fmt: skip
    wanted = sorted(name for name in agent.commands if name.startswith("ins"))
    assert {"inspect", "inspect-pack", "install"} <= set(wanted)
    assert words.stdout.split() == [f"plain,{name}" for name in wanted]
