"""`python -m rald_fast.experiments`: every command runs end to end on a tiny budget, writes its table
and figures, and its tables parse back into the numbers that produced them."""

import json
import math
from pathlib import Path

import pytest
from table_csv import read_ablation_csv, read_fps_csv, read_modes_csv, read_sweep_csv, read_table1_csv

from rald_fast.experiments import ablation, common, study
from rald_fast.experiments.__main__ import main

TINY = ["--preset", "tiny", "--synth-train-per-class", "1", "--synth-test-per-class", "1",
        "--image-size", "32", "--epochs", "1", "--threads", "2"]


def _png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    assert path.stat().st_size > 5_000, f"{path} looks empty"


def _final(run_dir: str) -> float:
    return json.loads((Path(run_dir) / "summary.json").read_text())["final"]["test_acc"]


@pytest.fixture(scope="module")
def exp(tmp_path_factory):
    """One experiment directory shared by the tests below: ablation rows a and rald, two seeds."""
    out = tmp_path_factory.mktemp("exp")
    assert main(["ablation", "--out", str(out), *TINY, "--variants", "a", "rald",
                 "--seeds", "2"]) == 0
    return out


def test_ablation_table_parses_back(exp):
    rows = json.loads((exp / "ablation.json").read_text())
    assert [r["variant"] for r in rows] == ["a", "rald"]
    parsed = read_ablation_csv((exp / "ablation.csv").read_text())
    md = (exp / "ablation.md").read_text()
    for r in rows:
        accs = [_final(d) for d in r["runs"]]          # the numbers that produced the table
        assert parsed[r["variant"]] == pytest.approx(accs, abs=1e-6)
        assert r["mean"] == pytest.approx(sum(accs) / 2)
        assert common.fmt_pct(r["mean"], r["std"]) in md and "±" in md
    assert "| Ours (RALD) | ✓ | ✓ | ✓ | ✓ |" in md and "| (a) |  |  |  |  |" in md
    assert len({d for r in rows for d in r["runs"]}) == 4  # seeds 0, 1 are separate runs
    _png(exp / "ablation.png")


def test_ablation_rows_follow_table3():
    assert ablation.ROWS == ["a", "b", "c", "d", "e", "f", "g", "rald"]
    fake = [{"variant": v, **{m: ablation.VARIANTS[v][m] for m in ablation.MODULES},
             "seeds": [0], "accuracy": [0.5], "mean": 0.5, "std": math.nan,
             "coarse_accuracy": [0.6], "coarse_mean": 0.6, "paper": ablation.PAPER[v]}
            for v in ablation.ROWS]
    md = ablation.ablation_markdown(fake).splitlines()
    assert md[2 + 2] == "| (c) | ✓ |  |  | ✓ | 50.00 | 60.00 | 96.45 |"   # ITRR + NNLDL
    assert md[2 + 5] == "| (f) |  | ✓ | ✓ |  | 50.00 | 60.00 | 96.06 |"   # HLRR + LGIFO


def test_finished_runs_are_not_trained_again(exp, monkeypatch):
    import rald_fast.train.loop

    def no_training(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(rald_fast.train.loop, "fit", no_training)
    before = (exp / "ablation.csv").read_text()
    assert main(["ablation", "--out", str(exp), *TINY, "--variants", "a", "rald",
                 "--seeds", "2"]) == 0
    assert (exp / "ablation.csv").read_text() == before


def test_ksweep_and_noise_share_runs_and_parse_back(exp):
    n_runs = len(list((exp / "runs").iterdir()))
    assert main(["ksweep", "--out", str(exp), *TINY, "--k-values", "2", "5"]) == 0
    assert main(["noise", "--out", str(exp), *TINY, "--flip-percents", "0", "10",
                 "--models", "a", "rald"]) == 0
    # k = 5 and the 10 % points are the ablation's seed-0 runs: 1 + 2 new runs only
    assert len(list((exp / "runs").iterdir())) == n_runs + 3
    for name, key in (("ksweep", "k"), ("noise", "synth_flip_prob")):
        points = json.loads((exp / f"{name}.json").read_text())
        parsed = read_sweep_csv((exp / f"{name}.csv").read_text(), key)
        for p in points:
            assert parsed[p["variant"], float(p[key])] == pytest.approx(
                [_final(d) for d in p["runs"]], abs=1e-6)
            assert f"{100 * p['mean']:.2f}" in (exp / f"{name}.md").read_text()
        _png(exp / f"{name}.png")
    noise = json.loads((exp / "noise.json").read_text())
    ablation_rald = json.loads((exp / "ablation.json").read_text())[1]
    assert [p["accuracy"][0] for p in noise if p["variant"] == "rald"][1] == \
        ablation_rald["accuracy"][0]


def test_compare_figures_modes(exp, tmp_path):
    rows = json.loads((exp / "ablation.json").read_text())
    base, rald = (Path(r["runs"][0]) / "last.pt" for r in rows)
    assert main(["compare", str(base), str(rald), "--names", "ResNet18", "RALD",
                 "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "compare.json").read_text())
    table = read_table1_csv((tmp_path / "compare.csv").read_text())
    for name in ("ResNet18", "RALD"):
        assert table[name]["overall", "fine accuracy"] == pytest.approx(
            metrics[name]["accuracy"], abs=1e-6)
        assert table[name]["coarse", "anger"] == pytest.approx(
            metrics[name]["per_coarse"]["anger"], abs=1e-6)
        _png(tmp_path / f"confusion_{name}.png")
    assert [k[0] for k in table["RALD"]][:2] == ["valence", "valence"]

    assert main(["figures", "--baseline", str(base), "--rald", str(rald), "--queries", "2",
                 "--batch-size", "16", "--out", str(tmp_path / "fig")]) == 0
    for png in ("tsne", "neighbours", "curves", "confusion_baseline", "confusion_rald"):
        _png(tmp_path / "fig" / f"{png}.png")
    fig = json.loads((tmp_path / "fig" / "figures.json").read_text())
    assert len(fig["neighbours"][0]["weights"]) == 5
    assert sum(fig["neighbours"][0]["weights"]) == pytest.approx(1.0, abs=1e-5)
    assert 0 <= fig["tsne"]["rald"]["knn_coarse_agreement"] <= 1

    assert main(["modes", str(rald), "--batch-sizes", "1", "8", "--out", str(tmp_path)]) == 0
    modes = json.loads((tmp_path / "modes.json").read_text())
    parsed = read_modes_csv((tmp_path / "modes.csv").read_text())
    assert {(r["itrr_mode"], r["batch_size"]): r["accuracy"] for r in modes["rows"]} == \
        pytest.approx(parsed, abs=1e-6)
    assert len(parsed) == 6
    # bank and self do not depend on the batch-mates: the same accuracy at every batch size
    assert parsed["self", 1] == pytest.approx(parsed["self", 8])
    assert parsed["bank", 1] == pytest.approx(parsed["bank", 8])


def test_fps(exp, tmp_path):
    rows = json.loads((exp / "ablation.json").read_text())
    ckpts = [str(Path(r["runs"][0]) / "last.pt") for r in rows]
    assert main(["fps", "--checkpoints", *ckpts, "--batch-size", "4", "--warmup", "1",
                 "--iters", "2", "--threads", "2", "--out", str(tmp_path)]) == 0
    got = json.loads((tmp_path / "fps.json").read_text())
    parsed = read_fps_csv((tmp_path / "fps.csv").read_text())
    assert [r["variant"] for r in got] == ["a", "rald"]
    for r in got:
        assert r["images_per_s"] > 0
        assert parsed[r["model"], 32] == pytest.approx(r["images_per_s"], rel=1e-4)


def test_bad_options_are_reported(exp, capsys):
    from rald_fast.cli import run_cli

    assert run_cli(lambda: main(["ablation", "--out", str(exp), *TINY, "--seeds", "0"])) == 2
    assert "--seeds must be >= 1" in capsys.readouterr().err
    assert run_cli(lambda: main(["compare", str(exp / "nope.pt"), "--out", str(exp)])) == 2


def test_study_trains_its_cells_pairs_them_and_reports_from_the_plan(tmp_path, monkeypatch):
    out = tmp_path / "study"
    monkeypatch.setattr(study, "MAIN_CELLS", study.MAIN_CELLS[:3])
    monkeypatch.setattr(study, "ABLATION_CELLS", study.ABLATION_CELLS[:1])
    args = ["study", "--out", str(out), *TINY, "--seeds", "2", "--ablation", "on", "--mixed-revisions"]
    assert main(args) == 0
    text = (out / "study.md").read_text()
    for row in ("| ResNet18 (a) |", "| RALD as printed |", "| RALD, learning relation |", "*module by module*",
                "| (b) ITRR |"):
        assert row in text, row
    saved = json.loads((out / "study.json").read_text())
    cells = {c["name"]: c for c in saved["cells"]}
    assert cells["ResNet18 (a)"]["seeds"] == [0, 1] and len(cells["(b) ITRR"]["fine"]) == 2
    learning = cells["RALD, learning relation"]
    diffs = [a - b for a, b in zip(learning["fine"], cells["ResNet18 (a)"]["fine"])]
    assert learning["paired_diff_fine"] == pytest.approx(diffs)
    assert learning["overrides"]["itrr_qk_norm"] and not cells["RALD as printed"]["overrides"]["itrr_qk_norm"]
    rows = (out / "study.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 * 2 and rows[0].startswith("part,cell,seed,test_acc")
    _png(out / "study_curves.png")
    # a second call trains nothing; --report-only needs no budget options and writes the same table
    before = sorted(p.name for p in (out / "runs").iterdir())
    assert main(["study", "--out", str(out), "--report-only", "--mixed-revisions"]) == 0
    assert sorted(p.name for p in (out / "runs").iterdir()) == before
    assert (out / "study.md").read_text() == text
    # a run gone: its cell keeps the other seed and says so
    import shutil

    shutil.rmtree(next((out / "runs").glob("b-*-s1-*")))
    assert main(["study", "--out", str(out), "--report-only", "--mixed-revisions"]) == 0
    text = (out / "study.md").read_text()
    assert "| (b) ITRR (1 of 2 planned seeds) |" in text and "stopped before their plan finished" in text


def test_study_refuses_mixed_revisions_unless_told(tmp_path):
    def cell(name, revs):
        c = study.Cell(name, "a")
        for seed, rev in enumerate(revs):
            c.runs.append({"revision": rev, "final": {"test_acc": 0.5 + 0.01 * seed}})
            c.dirs.append(str(tmp_path / f"a-k5-flip10-s{seed}-abc"))
        return c

    clean = {"main": [cell("A", ["aaa", "aaa"])], "ablation": []}
    assert study.check_revisions(clean, False) == ["aaa"]
    for revs in (["aaa", "bbb"], ["aaa+dirty", "aaa+dirty"], [None, "aaa"]):
        mixed = {"main": [cell("A", ["aaa", "aaa"]), cell("B", revs)], "ablation": []}
        with pytest.raises(ValueError, match="--mixed-revisions"):
            study.check_revisions(mixed, False)
        seen = study.check_revisions(mixed, True)
        assert "[" in study.study_markdown(mixed, seen)           # each cell's revisions marked


def test_paired_ci_is_students_t():
    from scipy import stats

    d = [0.01, -0.02, 0.03, 0.05, 0.0, 0.02, -0.01, 0.04]
    mean, half = study.mean_ci95(d)
    lo, hi = stats.t.interval(0.95, len(d) - 1, loc=stats.tmean(d), scale=stats.sem(d))
    assert mean == pytest.approx(sum(d) / 8) and mean - half == pytest.approx(lo) and mean + half == pytest.approx(hi)
