"""A template imports what its agents need and no more: every page it holds is
copied (as page tables) at each fork and unmapped at each child's exit, so the
messaging stack has no place in it (docs/sandbox.md, "What it costs")."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("nats", "aiohttp", "prometheus_client", "msgpack", "asyncpg", "faust")

PROBE = """
import json, sys
import agents.sandbox.template
from agents.registry import load_agent
load_agent("agents.examples.noop:NoOp")
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def test_a_template_with_the_noop_agent_loads_no_messaging_metrics_or_database_stack() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout))
    assert "agents" in loaded and "pydantic" in loaded
    assert loaded.isdisjoint(HEAVY), sorted(loaded & set(HEAVY))


def test_the_package_facades_still_export_their_names_on_first_use() -> None:
    import agents
    import agents.resilience
    import mesh

    assert agents.PermanentError.__module__ == "mesh.errors"
    assert agents.Agent.__name__ == "Agent"
    assert agents.resilience.Resilience.__name__ == "Resilience"
    assert callable(mesh.connect) and callable(mesh.jetstream)
    assert mesh.ProvisionConfig.__name__ == "ProvisionConfig"
    from mesh.queue.worker import PermanentError

    assert PermanentError is agents.PermanentError
