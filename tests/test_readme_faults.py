"""README's "What happens when things go wrong" table promises only what the suite tests.

Every row names, in its last column, one or more tests (backticked `test_...`) that
exist in tests/test_faults*.py, tests/test_cli_errors.py or tests/test_*_distributed.py.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
README = TESTS.parent / "README.md"
SECTION = "## What happens when things go wrong"
FAULT_TESTS = [*sorted(TESTS.glob("test_faults*.py")), TESTS / "test_cli_errors.py",
               *sorted(TESTS.glob("test_*_distributed.py"))]  # fmt: skip


def table_rows(text: str) -> list[list[str]]:
    """The cells of each body row of the first table under SECTION."""
    section = text.split(f"\n{SECTION}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line.strip() for line in section.splitlines() if line.strip().startswith("|")]
    assert len(lines) > 2 and set(lines[1]) <= set("|-: "), "a header, a separator, rows"
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def defined_tests() -> set[str]:
    names = set()
    for path in FAULT_TESTS:
        tree = ast.parse(path.read_text())
        names |= {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    return {name for name in names if name.startswith("test_")}


def problems(text: str, defined: set[str]) -> list[str]:
    """What is wrong with the table's rows: cells missing, no test named, no such test."""
    found = []
    for cells in table_rows(text):
        if len(cells) != 3 or not all(cells):
            found.append(f"not three filled cells: {cells}")
            continue
        named = re.findall(r"`(test_\w+)`", cells[-1])
        if not named:
            found.append(f"{cells[0]}: names no test")
        found += [f"{cells[0]}: no test {name}" for name in named if name not in defined]
    return found


def test_every_row_names_tests_that_exist():
    files = [p.name for p in FAULT_TESTS]
    assert problems(README.read_text(), defined_tests()) == [], f"tests are in {files}"


def test_the_check_catches_a_row_the_suite_does_not_back():
    rows = ["| x | y | `test_nowhere` |", "| x | y | no test |", "| x | |  `test_a` |"]
    text = f"\n{SECTION}\n\n| a | b | c |\n|---|---|---|\n" + "\n".join(rows) + "\n## Next\n"
    assert problems(text, {"test_a"}) == [
        "x: no test test_nowhere",
        "x: names no test",
        "not three filled cells: ['x', '', '`test_a`']",
    ]
