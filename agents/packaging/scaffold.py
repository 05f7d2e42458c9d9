"""A new agent package, ready to test, run and pack: ``agent-factory agent create``.

:func:`create` writes ``<parent>/<name>/``:

* ``agent.pack.yaml``: the pack file (:mod:`agents.packaging.spec`), valid as written;
* ``<module>/agent.py``: the agent, its ``Input`` and ``Output`` models;
* ``tests/test_agent.py``: tests that pass as written (``agent test``), one of them
  run only on a real stack (``agent test --stack``) and skipped elsewhere;
* ``examples/input.json``: an input to try it with (``agent-factory run``);
* ``README.md``: how to test, run, pack and publish it.

Three templates, after the agent types the pack file knows:

* ``deterministic``: activity data times an emission factor (a pure function);
* ``reasoning``: a decision with its reasons, where a model would be called
  (offline rules by default, the tokens reported as a model's would be);
* ``insight``: a summary over many records (totals, the largest sources).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Final, Literal

from agents.packaging.errors import PackagingError
from agents.packaging.spec import parse_spec

__all__ = ["TEMPLATES", "Template", "create"]

Template = Literal["deterministic", "reasoning", "insight"]
TEMPLATES: Final[tuple[Template, ...]] = ("deterministic", "reasoning", "insight")
_NAME: Final = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")

_PACK: Final = """\
spec_version: 1
name: {name}
version: 0.1.0
description: {yaml_description}
type: {template}
entry_point: {module}.agent:{cls}
resources:
  cpu: 0.5
  memory_mb: 256
  timeout_s: 30
execution_mode: pool
network: false
resilience:
  retry: {{max_attempts: 3}}
metadata:
  author: {author}
  license: Apache-2.0
  tags: [{template}]
"""

_CODE: Final[dict[Template, str]] = {
    "deterministic": '''\
"""{description}"""

from __future__ import annotations

from pydantic import BaseModel, Field

from agents.contract import Agent, RunContext


class Activity(BaseModel):
    quantity: float = Field(ge=0, description="how much was used, in `unit`")
    unit: str = Field(default="kWh", min_length=1)
    factor_kg_per_unit: float = Field(default=0.233, ge=0, description="kg CO2e per unit")


class Emissions(BaseModel):
    kg_co2e: float
    unit: str


class {cls}(Agent[Activity, Emissions]):
    key = "{name}"
    version = "0.1.0"
    description = "{description}"
    Input, Output = Activity, Emissions

    async def run(self, input: Activity, ctx: RunContext) -> Emissions:
        return Emissions(kg_co2e=round(input.quantity * input.factor_kg_per_unit, 6), unit=input.unit)
''',
    "reasoning": '''\
"""{description}"""

from __future__ import annotations

from pydantic import BaseModel, Field

from agents.contract import Agent, RunContext

MODEL = "rules-v1"  # the model this agent calls; a real one is priced by the platform's metering


class Question(BaseModel):
    supplier: str = Field(min_length=1)
    reported_kg_co2e: float = Field(ge=0)
    spend_eur: float = Field(gt=0)


class Verdict(BaseModel):
    plausible: bool
    kg_per_eur: float
    reasons: list[str]


class {cls}(Agent[Question, Verdict]):
    key = "{name}"
    version = "0.1.0"
    description = "{description}"
    Input, Output = Question, Verdict

    async def run(self, input: Question, ctx: RunContext) -> Verdict:
        # Where a language model would be asked: here, rules that need no network.
        # Report what each model call spent, so metering prices it.
        intensity = input.reported_kg_co2e / input.spend_eur
        reasons = [f"{{input.supplier}} reports {{intensity:.3f}} kg CO2e per EUR"]
        plausible = 0.01 <= intensity <= 5.0
        reasons.append("within the usual range (0.01-5)" if plausible else "outside the usual range (0.01-5)")
        ctx.report_usage(MODEL, input_tokens=len(input.supplier) + 16, output_tokens=len(reasons) * 12)
        return Verdict(plausible=plausible, kg_per_eur=round(intensity, 6), reasons=reasons)
''',
    "insight": '''\
"""{description}"""

from __future__ import annotations

from pydantic import BaseModel, Field

from agents.contract import Agent, RunContext


class Record(BaseModel):
    source: str = Field(min_length=1)
    kg_co2e: float = Field(ge=0)


class Records(BaseModel):
    records: list[Record] = Field(min_length=1, max_length=100_000)
    top: int = Field(default=3, ge=1, le=100)


class Summary(BaseModel):
    total_kg_co2e: float
    sources: int
    largest: list[Record]
    share_of_largest: float


class {cls}(Agent[Records, Summary]):
    key = "{name}"
    version = "0.1.0"
    description = "{description}"
    Input, Output = Records, Summary

    async def run(self, input: Records, ctx: RunContext) -> Summary:
        by_source: dict[str, float] = {{}}
        for record in input.records:
            by_source[record.source] = by_source.get(record.source, 0.0) + record.kg_co2e
        total = sum(by_source.values())
        largest = sorted(by_source.items(), key=lambda item: (-item[1], item[0]))[: input.top]
        share = sum(kg for _, kg in largest) / total if total else 0.0
        return Summary(
            total_kg_co2e=round(total, 6),
            sources=len(by_source),
            largest=[Record(source=s, kg_co2e=round(kg, 6)) for s, kg in largest],
            share_of_largest=round(share, 4),
        )
''',
}

_EXAMPLE: Final[dict[Template, dict[str, object]]] = {
    "deterministic": {"quantity": 1200, "unit": "kWh", "factor_kg_per_unit": 0.233},
    "reasoning": {"supplier": "Acme Steel", "reported_kg_co2e": 5400, "spend_eur": 12000},
    "insight": {
        "records": [{"source": "fleet", "kg_co2e": 820.5}, {"source": "heating", "kg_co2e": 410},
                    {"source": "fleet", "kg_co2e": 99.5}, {"source": "travel", "kg_co2e": 40}],
        "top": 2,
    },
}  # fmt: skip

_CHECKS: Final[dict[Template, str]] = {
    "deterministic": """\
    out = run(Activity(quantity=1200, factor_kg_per_unit=0.233))
    assert out.kg_co2e == 279.6 and out.unit == "kWh"


def test_a_negative_quantity_is_refused():
    with pytest.raises(ValidationError):
        Activity(quantity=-1)
""",
    "reasoning": """\
    out = run(Question(supplier="Acme Steel", reported_kg_co2e=5400, spend_eur=12000))
    assert out.plausible and out.kg_per_eur == 0.45 and len(out.reasons) == 2


def test_an_implausible_report_says_why():
    out = run(Question(supplier="Acme Steel", reported_kg_co2e=1, spend_eur=12000))
    assert not out.plausible and "outside" in out.reasons[-1]
""",
    "insight": """\
    records = [Record(source="fleet", kg_co2e=820.5), Record(source="heating", kg_co2e=410),
               Record(source="fleet", kg_co2e=99.5), Record(source="travel", kg_co2e=40)]
    out = run(Records(records=records, top=2))
    assert out.total_kg_co2e == 1370 and out.sources == 3
    assert [r.source for r in out.largest] == ["fleet", "heating"]


def test_no_records_is_refused():
    with pytest.raises(ValidationError):
        Records(records=[])
""",
}

_MODELS: Final[dict[Template, str]] = {
    "deterministic": "Activity",
    "reasoning": "Question",
    "insight": "Record, Records",
}

_TEST: Final = '''\
"""{cls}'s own tests: `agent-factory agent test` runs them, and the hub runs them
(confined, without network) before it accepts a version. Tests marked `on_stack`
run only under `agent-factory agent test --stack`, against a real embedded stack."""

import asyncio
import json
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from agents.contract import RunContext
from gateway.client import ApiClient
from {module}.agent import {cls}, {models}

EXAMPLE = Path(__file__).parent.parent / "examples" / "input.json"
on_stack = pytest.mark.skipif(not os.environ.get("AF_TEST_STACK"), reason="needs agent test --stack")


def run(input):
    return asyncio.run({cls}().run(input, RunContext(run_id="test")))


async def submit_and_wait(input):
    async with ApiClient(os.environ["AF_API_URL"], os.environ["AF_API_TOKEN"]) as api:
        accepted = await api.submit("{name}", {{"input": input}})
        return await api.wait(accepted["run_id"], timeout=60)


@on_stack
def test_the_example_runs_through_the_queue_as_in_process():
    example = json.loads(EXAMPLE.read_text())
    view = asyncio.run(submit_and_wait(example))
    assert view["status"] == "succeeded", view["error"]
    assert view["result"] == run({cls}.Input.model_validate(example)).model_dump(mode="json")


def test_it_runs():
{checks}'''

_README: Final = """\
# {name}

{description}

A `{template}` agent for Agent Factory, made by `agent-factory agent create`.

```console
$ agent-factory agent test                       # its tests (tests/), as the hub runs them
$ agent-factory agent test --stack               # and its examples, on a throwaway real stack
$ agent-factory up --agent {module}.agent:{cls}  # serve it (from this directory)
$ agent-factory run {name} --input-file examples/input.json --wait
$ agent-factory agent pack --derive-schemas      # {name}-0.1.0.glpack, schemas from the models
$ agent-factory agent publish {name}-0.1.0.glpack
```

Change `{module}/agent.py` (its `Input` and `Output` models and `run`), keep
`tests/` passing, and bump `version` in `agent.pack.yaml` (and the class's
`version`) for each release: a change that breaks the input or output schema
needs a major version, or the hub refuses it.
"""


def create(
    parent: Path, name: str, template: Template = "deterministic", *, description: str = "", author: str = ""
) -> Path:
    """Write the package ``name`` from ``template`` under ``parent``; its directory.
    Refuses an invalid name and a directory that exists."""
    if not _NAME.fullmatch(name) or len(name) > 63:
        raise PackagingError(
            f"{name!r} cannot name an agent: lowercase letters and digits, words joined by '-', "
            "starting with a letter (e.g. scope2-electricity), at most 63 characters"
        )
    if template not in TEMPLATES:
        raise PackagingError(f"no template {template!r}: one of {', '.join(TEMPLATES)}")
    root = parent / name
    if root.exists():
        raise PackagingError(f"{root} exists already: choose another name or directory")
    module = name.replace("-", "_")
    cls = "".join(part.capitalize() for part in name.split("-"))
    # One line of plain text: it lands in YAML, a Python string and a docstring.
    said = " ".join((description or f"A {template} agent").split())[:200]
    said = "".join(c for c in said if c.isprintable()).replace("\\", "/").replace('"', "'")
    values = {"name": name, "module": module, "cls": cls, "template": template, "description": said,
              "yaml_description": json.dumps(said), "author": json.dumps(author or "")}  # fmt: skip
    files = {
        "agent.pack.yaml": _PACK.format(**values),
        f"{module}/__init__.py": "",
        f"{module}/agent.py": _CODE[template].format(**values),
        "tests/test_agent.py": _TEST.format(**values, models=_MODELS[template], checks=_CHECKS[template]),
        "examples/input.json": json.dumps(_EXAMPLE[template], indent=2) + "\n",
        "README.md": _README.format(**values),
        ".gitignore": "*.glpack\n__pycache__/\n.agent-factory/\n",
    }
    parse_spec(files["agent.pack.yaml"])  # what we write is valid, or nothing is written
    staging = parent / f".{name}.creating"
    try:
        for relative, text in files.items():
            path = staging / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        staging.rename(root)
    finally:
        if staging.exists():
            _remove(staging)
    return root


def _remove(tree: Path) -> None:
    for path in sorted(tree.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    tree.rmdir()
