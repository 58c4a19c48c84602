"""compute_metrics on hand-computed predictions, and the Table 1 reports (markdown, CSV, figure).

The taxonomy is tiny and hierarchical, with valence:

    pleasant:   A: a1 a2 a3
    unpleasant: B: b1        C: c1

Every expected number below was worked out by hand from the seven rows of PROBS / LABELS (comments
give the argmax of each row and of its per-coarse-group sums).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from table_csv import read_table1_csv

from rald_fast.evaluate.metrics import compute_metrics
from rald_fast.evaluate.reports import plot_confusion, table1_csv, table1_markdown, table1_rows
from rald_fast.hierarchy import Taxonomy, flat

TAX = Taxonomy("tiny", ("a1", "a2", "a3", "b1", "c1"), ("A", "A", "A", "B", "C"),
               {"A": "pleasant", "B": "unpleasant", "C": "unpleasant"})

#                     a1    a2    a3    b1    c1       label  fine pred  parent  summed argmax (A, B, C)
PROBS = np.array([[0.60, 0.10, 0.10, 0.10, 0.10],  # a1     a1 ok      A ok    A .8 ok
                  [0.10, 0.50, 0.20, 0.10, 0.10],  # a2     a2 ok      A ok    A .8 ok
                  [0.30, 0.30, 0.00, 0.40, 0.00],  # b1     b1 ok      B ok    A .6 > B .4: wrong
                  [0.30, 0.30, 0.00, 0.00, 0.40],  # a3     c1 wrong   C wrong A .6 > C .4: ok
                  [0.10, 0.00, 0.00, 0.70, 0.20],  # c1     b1 wrong   B wrong B .7: wrong
                  [0.10, 0.60, 0.10, 0.10, 0.10],  # a1     a2 wrong   A ok    A .8 ok
                  [0.20, 0.20, 0.15, 0.45, 0.00]])  # a3    b1 wrong   B wrong A .55 > B .45: ok
LABELS = np.array([0, 1, 3, 2, 4, 0, 2])


def test_taxonomy_as_built():
    assert TAX.coarse == ("A", "B", "C")
    np.testing.assert_array_equal(TAX.coarse_of_fine(), [0, 0, 0, 1, 2])


def test_compute_metrics_by_hand():
    m = compute_metrics(PROBS, LABELS, TAX)
    assert m["n"] == 7
    assert m["accuracy"] == pytest.approx(3 / 7)
    assert m["per_class"] == pytest.approx({"a1": 0.5, "a2": 1.0, "a3": 0.0, "b1": 1.0, "c1": 0.0})
    # rows: true class, columns: predicted class
    expected = np.zeros((5, 5), dtype=int)
    for true, pred in [(0, 0), (1, 1), (3, 3), (2, 4), (4, 3), (0, 1), (2, 3)]:
        expected[true, pred] += 1
    assert m["confusion"] == expected.tolist()
    # the two coarse accuracies differ on rows 2 (parent right, sum wrong), 3 and 6 (parent wrong, sum right)
    assert m["coarse_accuracy"] == pytest.approx(4 / 7)
    assert m["coarse_accuracy_summed"] == pytest.approx(5 / 7)
    # per coarse group, the parent of the fine prediction: A rows 0 1 3 5 6 -> A A C A B
    assert m["per_coarse"] == pytest.approx({"A": 3 / 5, "B": 1.0, "C": 0.0})
    # valence of the parent: row 4 (c1 -> b1) is wrong in coarse but right in valence
    assert m["valence_accuracy"] == pytest.approx(5 / 7)
    assert m["per_valence"] == pytest.approx({"pleasant": 3 / 5, "unpleasant": 1.0})


def test_compute_metrics_flat_and_unseen_class():
    t = flat("three", ["x", "y", "z"])
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1], [0.2, 0.3, 0.5]])
    labels = np.array([0, 1, 1, 1])  # no sample of class z
    m = compute_metrics(probs, labels, t)
    assert m["accuracy"] == pytest.approx(2 / 4)
    assert m["per_class"]["x"] == 1.0 and m["per_class"]["y"] == pytest.approx(1 / 3)
    assert math.isnan(m["per_class"]["z"])
    assert m["confusion"] == [[1, 0, 0], [1, 1, 1], [0, 0, 0]]
    for key in ("coarse_accuracy", "coarse_accuracy_summed", "per_coarse", "valence_accuracy", "per_valence"):
        assert key not in m


def test_compute_metrics_without_valence_has_no_valence_keys():
    t = Taxonomy("noval", TAX.fine, TAX.parent)
    m = compute_metrics(PROBS, LABELS, t)
    assert m["coarse_accuracy"] == pytest.approx(4 / 7)
    assert "valence_accuracy" not in m and "per_valence" not in m


def _two_models() -> dict[str, dict]:
    perfect = np.eye(5)[LABELS]
    return {"mine": compute_metrics(PROBS, LABELS, TAX), "oracle": compute_metrics(perfect, LABELS, TAX)}


# (level, label, accuracy of "mine"); "oracle" is 1.0 everywhere
TABLE1 = [("valence", "pleasant", 3 / 5), ("valence", "unpleasant", 1.0),
          ("coarse", "A", 3 / 5), ("coarse", "B", 1.0), ("coarse", "C", 0.0),
          ("fine", "a1", 0.5), ("fine", "a2", 1.0), ("fine", "a3", 0.0), ("fine", "b1", 1.0), ("fine", "c1", 0.0),
          ("overall", "fine accuracy", 3 / 7),
          ("overall", "coarse accuracy (parent of fine)", 4 / 7),
          ("overall", "coarse accuracy (summed probability)", 5 / 7)]


def test_table1_rows():
    rows = table1_rows(_two_models(), TAX)
    assert [(lv, lb) for lv, lb, _ in rows] == [(lv, lb) for lv, lb, _ in TABLE1]
    for (_, _, vals), (_, _, mine) in zip(rows, TABLE1):
        assert vals == pytest.approx([mine, 1.0])


def test_table1_markdown():
    lines = table1_markdown(_two_models(), TAX).splitlines()
    assert lines[0] == "| level | label | mine | oracle |"
    assert lines[1] == "| --- | --- | ---: | ---: |"
    assert len(lines) == 2 + len(TABLE1)
    assert lines[2] == "| valence | pleasant | 60.00 | 100.00 |"
    assert lines[4] == "| coarse | A | 60.00 | 100.00 |"
    assert lines[6] == "| coarse | C | 0.00 | 100.00 |"
    assert lines[7] == "| fine | a1 | 50.00 | 100.00 |"
    assert lines[-3] == "| overall | fine accuracy | 42.86 | 100.00 |"
    assert lines[-2] == "| overall | coarse accuracy (parent of fine) | 57.14 | 100.00 |"
    assert lines[-1] == "| overall | coarse accuracy (summed probability) | 71.43 | 100.00 |"


def test_table1_csv_round_trip():
    text = table1_csv(_two_models(), TAX)
    lines = text.splitlines()
    assert lines[0] == "level,label,mine,oracle"
    assert lines[-3] == "overall,fine accuracy,0.428571,1.000000"
    parsed = read_table1_csv(text)
    assert list(parsed) == ["mine", "oracle"]
    assert list(parsed["mine"]) == [(lv, lb) for lv, lb, _ in TABLE1]
    for level, label, mine in TABLE1:
        assert parsed["mine"][(level, label)] == pytest.approx(mine, abs=5e-7)
        assert parsed["oracle"][(level, label)] == 1.0


def test_table1_flat_has_fine_and_overall_only():
    t = flat("two", ["x", "y"])
    m = compute_metrics(np.array([[0.9, 0.1], [0.8, 0.2]]), np.array([0, 1]), t)
    parsed = read_table1_csv(table1_csv({"m": m}, t))
    assert parsed == {"m": {("fine", "x"): 1.0, ("fine", "y"): 0.0, ("overall", "fine accuracy"): 0.5}}


def test_plot_confusion_writes_png(tmp_path):
    m = compute_metrics(PROBS, LABELS, TAX)
    path = tmp_path / "confusion.png"
    plot_confusion(m["confusion"], list(TAX.fine), path, "tiny: fine accuracy 42.86%")
    data = path.read_bytes()
    assert len(data) > 1000
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
