"""The docs cite only tests that exist.

Every ``test_…`` name and every ``tests/…`` path in README.md and docs/*.md
must name something in the suite: a test function or class, a test module
(``test_x`` or ``test_x.py``), a file or folder under ``tests/``, and for
``file.py::name`` that name in that file. A renamed or deleted test then
fails here, naming the doc line that still cites it.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Not inside a longer word or path: "pytest_x" and "a/test_x.py" are not names of their own.
_PATH = re.compile(r"(?<![\w/.-])tests/[\w/.-]*(?:::\w+)?")
_NAME = re.compile(r"(?<![\w/.-])test_\w+(?:\.py)?(?:::\w+)?")


def _defined(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return {node.name for node in ast.walk(tree) if isinstance(node, kinds)}


SUITE = {path.relative_to(ROOT).as_posix(): _defined(path) for path in (ROOT / "tests").rglob("*.py")}
BY_FILE_NAME: dict[str, set[str]] = {}
for _rel, _names in SUITE.items():
    BY_FILE_NAME.setdefault(_rel.rsplit("/", 1)[-1], set()).update(_names)
ALL_NAMES = set().union(*SUITE.values()) | {name.removesuffix(".py") for name in BY_FILE_NAME}


def _citations() -> Iterator[tuple[str, str]]:
    """(where, cited) for every citation: ``README.md:12`` and the cited text."""
    for doc in DOCS:
        for lineno, line in enumerate(doc.read_text().splitlines(), 1):
            where = f"{doc.relative_to(ROOT)}:{lineno}"
            for match in _PATH.finditer(line):
                yield where, match.group().rstrip(".")
            for match in _NAME.finditer(line):
                yield where, match.group()


def _missing(cited: str) -> str | None:
    """Why ``cited`` names nothing in the suite, or None if it does."""
    target, _, name = cited.partition("::")
    if target.startswith("tests/"):
        if not (ROOT / target).exists():
            return "no such file or folder"
        defined = SUITE.get(target, set())
    elif target.endswith(".py"):
        if target not in BY_FILE_NAME:
            return "no test module of that name"
        defined = BY_FILE_NAME[target]
    else:
        return None if target in ALL_NAMES else "no test, test class or test module of that name"
    if name and name not in defined:
        return f"{target} defines no {name}"
    return None


def test_every_test_and_test_path_the_docs_cite_exists() -> None:
    citations = list(_citations())
    assert len(citations) > 50, "the docs cite their tests: the scanner found too few citations"
    wrong = [f"{where}: {cited} ({why})" for where, cited in citations if (why := _missing(cited))]
    assert not wrong, "the docs cite tests that do not exist:\n" + "\n".join(wrong)


def test_a_missing_test_is_named_with_why() -> None:
    assert _missing("test_no_such_test_anywhere") == "no test, test class or test module of that name"
    assert _missing("test_no_such_module.py") == "no test module of that name"
    assert _missing("tests/unit/no_such_file.py") == "no such file or folder"
    here = Path(__file__).relative_to(ROOT).as_posix()
    assert _missing(f"{here}::test_no_such_test") == f"{here} defines no test_no_such_test"
    assert _missing(f"{here}::test_a_missing_test_is_named_with_why") is None
    assert _missing("test_docs_cite_real_tests.py::test_a_missing_test_is_named_with_why") is None
