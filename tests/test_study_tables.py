"""README's and docs/RESULTS.md's study table is what the command prints from the committed raw results.

`python -m rald_fast.experiments study --out bench/results/cpu_study_relation_2026-12-06 --report-only`
rebuilds the table from study_plan.json and each run's summary.json (no checkpoint, no training); the
block between `<!-- study:begin -->` and `<!-- study:end -->` in both documents must equal it, and
every run must come from one clean code revision.
"""

from __future__ import annotations

import json
from pathlib import Path

from rald_fast.experiments import study

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "cpu_study_relation_2026-12-06"


def block(path: Path) -> str:
    text = path.read_text()
    return text.split("<!-- study:begin -->\n")[1].split("<!-- study:end -->")[0]


def test_committed_tables_equal_the_commands_output():
    cells = study.load_study(RESULTS)
    revisions = study.check_revisions(cells, allow_mixed=False)  # one clean revision, or it raises
    assert len(revisions) == 1
    table = study.study_markdown(cells, revisions)
    assert block(ROOT / "README.md") == table
    assert block(ROOT / "docs" / "RESULTS.md") == table
    assert (RESULTS / "study.md").read_text() == table
    plan = json.loads((RESULTS / "study_plan.json").read_text())
    for part, planned in plan.items():  # every planned run finished; the comparisons over >= 8 paired seeds
        for cell, want in zip(cells[part], planned):
            assert len(cell.runs) == len(want["runs"]), cell.name
    assert sum(len(c.runs) >= 8 for c in cells["main"]) >= 5
