"""README's and docs/RESULTS.md's study table is what the command prints from the committed raw results.

`python -m rald_fast.experiments study --out bench/results/cpu_study_relation_2026-12-06 --report-only`
rebuilds the table from study_plan.json and each run's summary.json (no checkpoint, no training); the
block between `<!-- study:begin -->` and `<!-- study:end -->` in both documents must equal it, and
every run must come from one clean code revision. Cells whose planned seeds did not all finish say so
in the table ("k of m planned seeds").
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
    for part, planned in plan.items():  # the table holds the plan's cells, each with the seeds that finished
        assert [c.name for c in cells[part]] == [p["name"] for p in planned]
        for cell, want in zip(cells[part], planned):
            assert len(cell.runs) <= len(want["runs"]) and (len(cell.runs) > 0 or part == "ablation"), cell.name
            if len(cell.runs) < len(want["runs"]):
                assert f"| {cell.name} ({len(cell.runs)} of {len(want['runs'])} planned seeds) |" in table
    # the comparison the study exists for: ResNet18, RALD as printed and with the learning relation, on the
    # same >= 8 seeds; the controls on at least 2 of those seeds
    decisive = cells["main"][:3]
    assert [c.name for c in decisive] == ["ResNet18 (a)", "RALD as printed", "RALD, learning relation"]
    seeds = [set(c.by_seed()) for c in decisive]
    assert len(seeds[0]) >= 8 and seeds[0] == seeds[1] == seeds[2]
    assert all(len(c.runs) >= 2 and set(c.by_seed()) <= seeds[0] for c in cells["main"][3:])
