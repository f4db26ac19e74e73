"""The fault suite's table: each fault test records what it injected, and the
run ends with one row per fault (``make faults`` shows it; so does CI's log).

A test asks for ``fault_table`` and calls ``fault_table.row(...)`` once per
fault it injects, with the tasks it lost and the finished tasks that ran
again, as it counted them from the rig's own files. Whether the fault was
survived is the test's outcome: a row whose test failed reads ``FAILED``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

ROWS = pytest.StashKey[list["FaultRow"]]()
OUTCOMES = pytest.StashKey[dict[str, str]]()


@dataclass(frozen=True)
class FaultRow:
    nodeid: str
    fault: str
    lost: int
    rerun: int
    note: str


class FaultTable:
    def __init__(self, config: pytest.Config, nodeid: str) -> None:
        self._rows = config.stash.setdefault(ROWS, [])
        self._nodeid = nodeid

    def row(self, fault: str, *, lost: int, rerun: int, note: str = "") -> None:
        """Record one injected fault: ``lost`` tasks never recorded, ``rerun``
        finished tasks that ran again."""
        self._rows.append(FaultRow(self._nodeid, fault, lost, rerun, note))


@pytest.fixture
def fault_table(request: pytest.FixtureRequest) -> Iterator[FaultTable]:
    yield FaultTable(request.config, request.node.nodeid)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    report = yield
    outcomes = item.config.stash.setdefault(OUTCOMES, {})
    if report.failed or (report.when == "call" and not report.passed):
        outcomes[item.nodeid] = report.outcome
    else:
        outcomes.setdefault(item.nodeid, report.outcome)
    return report


def table_lines(rows: list[FaultRow], outcomes: dict[str, str]) -> list[str]:
    header = ("fault injected", "survived, nothing lost", "tasks lost", "finished tasks re-run")
    body = []
    for row in rows:
        outcome = outcomes.get(row.nodeid, "not run")
        survived = "yes" if outcome == "passed" and not row.lost else outcome.upper()
        if outcome == "passed" and row.lost:
            survived = "no"
        fault = f"{row.fault} ({row.note})" if row.note else row.fault
        body.append((fault, survived, str(row.lost), str(row.rerun)))
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return [line(header), rule, *(line(cells) for cells in body)]


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    rows = config.stash.get(ROWS, [])
    if not rows:
        return
    terminalreporter.section("faults injected")
    for text in table_lines(rows, config.stash.get(OUTCOMES, {})):
        terminalreporter.write_line(text)
