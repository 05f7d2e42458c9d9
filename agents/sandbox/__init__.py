"""Run one agent invocation in a fresh, confined child process, forked from a
warm template that has already imported the agent.

Example::

    from agents.sandbox import Sandbox, SandboxConfig

    async with Sandbox(SandboxConfig(agents=["agents.examples.noop:NoOp"])) as sandbox:
        result = await sandbox.invoke("noop", '{"echo": 1}')
        if result.ok:
            result.output                    # {"echo": 1}
        else:
            result.audit.error.permanent     # only input_error is: do not retry

Containment: rlimits always; a control group, a shared empty network
namespace and a dropped uid where the host allows (``sandbox.levels``;
docs/sandbox.md says what each level protects).
"""

from agents.sandbox.audit import (
    ErrorCategory,
    InvocationAudit,
    InvocationResult,
    SandboxError,
    SandboxStopped,
)
from agents.sandbox.config import SandboxConfig
from agents.sandbox.levels import Levels, detect_levels
from agents.sandbox.limits import SandboxLimits
from agents.sandbox.service import Sandbox

__all__ = [
    "ErrorCategory",
    "InvocationAudit",
    "InvocationResult",
    "Levels",
    "Sandbox",
    "SandboxConfig",
    "SandboxError",
    "SandboxLimits",
    "SandboxStopped",
    "detect_levels",
]
