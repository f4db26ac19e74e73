"""The fault table itself: rows, outcomes and the markdown it prints."""

from __future__ import annotations

from tests.faults.conftest import FaultRow, table_lines


def test_a_row_reads_survived_only_when_its_test_passed_and_nothing_was_lost():
    rows = [
        FaultRow("t::a", "worker killed", 0, 0, ""),
        FaultRow("t::b", "brain paused 20 s", 0, 2, "expiry 3 s"),
        FaultRow("t::c", "disk full", 1, 0, ""),
    ]
    lines = table_lines(rows, {"t::a": "passed", "t::b": "failed", "t::c": "passed"})
    assert lines[0].startswith("| fault injected")
    assert set(lines[1]) <= {"|", "-"}
    assert "| yes" in lines[2]
    assert "brain paused 20 s (expiry 3 s)" in lines[3] and "FAILED" in lines[3]
    assert "| no " in lines[4]
    cells = [cell.strip() for cell in lines[3].strip("|").split("|")]
    assert cells[2:] == ["0", "2"]
