"""The command lines end to end on a tiny synthetic set, and their messages on bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--preset", "tiny", "--synth-train-per-class", "1", "--synth-test-per-class", "1",
        "--image-size", "32", "--epochs", "1"]


def run(module, *args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", f"rald_fast.{module}", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli_run")
    r = run("train", *TINY, "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "checkpoint" in r.stdout and str(out / "last.pt") in r.stdout
    return out


def test_train_then_evaluate(trained, tmp_path):
    r = run("evaluate", "--checkpoint", str(trained / "last.pt"), "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert 0 <= metrics["accuracy"] <= 1 and metrics["n"] == 33 and metrics["images_per_s"] > 0
    assert {"coarse_accuracy", "coarse_accuracy_summed", "valence_accuracy"} <= set(metrics)
    table = (tmp_path / "table1.md").read_text().splitlines()
    assert table[2].startswith("| valence | pleasant |") and len(table) == 2 + 2 + 6 + 33 + 3
    rows = (tmp_path / "table1.csv").read_text().splitlines()
    overall = [r for r in rows if r.startswith("overall,fine accuracy")][0]
    assert float(overall.split(",")[-1]) == pytest.approx(metrics["accuracy"], abs=1e-6)
    assert (tmp_path / "confusion.png").stat().st_size > 10_000


def test_help_is_true():
    r = run("train", "--help")
    assert r.returncode == 0 and "--variant" in r.stdout and "--nnldl" in r.stdout
    assert "--lr-gamma" in r.stdout and "--weight-decay" in r.stdout and "--k " in r.stdout


@pytest.mark.parametrize("args, message", [
    (["--variant", "zz"], "invalid choice: 'zz'"),
    (["--device", "tpu"], "--device 'tpu': expected auto"),
    (["--no-itrr", "--variant", "rald"], "--nnldl needs --itrr"),
    (["--taxonomy", "nope.yaml"], "--taxonomy 'nope.yaml'"),
    (["--backbone-weights", "missing.pth"], "--backbone-weights missing.pth: no such file"),
    (["--label-vectors", "missing.txt"], "missing.txt"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--resume", "missing.pt"], "--resume missing.pt: no such file"),
])
def test_bad_train_options(args, message, tmp_path):
    r = run("train", *TINY, "--out", str(tmp_path / "run"), *args)  # not the checkout's runs/rald, which may exist
    assert r.returncode != 0
    assert message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_checkpoint_from_another_taxonomy(trained):
    r = run("evaluate", "--checkpoint", str(trained / "last.pt"), "--taxonomy", "basic7")
    assert r.returncode == 2 and "trained on taxonomy 'fg-emotions', not 'basic7'" in r.stderr


def test_resume_refuses_model_changes(trained):
    r = run("train", "--resume", str(trained / "last.pt"), "--heads", "4")
    assert r.returncode == 2 and "--device, --epochs" in r.stderr and "(got heads)" in r.stderr


def _parsers():
    from rald_fast.evaluate.command import build_bank_parser
    from rald_fast.evaluate.command import build_parser as evaluate
    from rald_fast.experiments.__main__ import build_parser as experiments
    from rald_fast.export.build import build_parser as export
    from rald_fast.predict.command import build_parser as predict
    from rald_fast.train.command import build_parser as train

    return {"train": train(), "evaluate": evaluate(), "bank": build_bank_parser(), "predict": predict(),
            "export": export(), "experiments": experiments()}


def test_every_option_of_every_command_is_described():
    import argparse

    missing = []

    def walk(parser, name):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, subparser in action.choices.items():
                    walk(subparser, f"{name} {sub}")
            elif not isinstance(action, argparse._HelpAction) and not (action.help or "").strip():
                missing.append(f"{name} {action.option_strings or action.dest}")

    for name, parser in _parsers().items():
        walk(parser, name)
    assert not missing


def test_console_scripts_point_at_callables():
    """setup.py's console scripts resolve to functions (read from setup.py, not installed metadata)."""
    import ast
    import importlib

    tree = ast.parse((ROOT / "setup.py").read_text())
    scripts = next(kw.value for node in ast.walk(tree) if isinstance(node, ast.Call)
                   for kw in node.keywords if kw.arg == "entry_points")
    entries = ast.literal_eval(scripts)["console_scripts"]
    names = {}
    for entry in entries:
        name, target = (s.strip() for s in entry.split("="))
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), entry
        names[name] = module
    assert set(names) == {"rald-train", "rald-evaluate", "rald-bank", "rald-predict", "rald-export",
                          "rald-experiments", "rald-serve"}


def test_predict_command_loads_no_training_code():
    """`python -m rald_fast.predict --help` imports neither the training loop (DDP), the model nor Triton."""
    code = ("import runpy, sys\nsys.argv = ['x', '--help']\n"
            "try:\n    runpy.run_module('rald_fast.predict', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.startswith(('rald_fast', 'triton', 'onnx', 'tensorrt', 'cv2'))))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                       capture_output=True, text=True, timeout=300)
    loaded = eval(r.stdout.strip().splitlines()[-1])  # a list literal printed above
    assert not [m for m in loaded if m.startswith(("rald_fast.train", "rald_fast.models", "rald_fast.kernels",
                                                   "triton"))], loaded
    # the core, and the readers of the exported artifact kinds (TensorRT itself only when an engine is read)
    core = {"rald_fast", "rald_fast.artifacts", "rald_fast.cli", "rald_fast.device", "rald_fast.errors",
            "rald_fast.files", "rald_fast.hierarchy", "rald_fast.preprocess", "rald_fast.export",
            "rald_fast.export.formats", "rald_fast.export.tensorrt", "rald_fast.export.torchscript"}
    assert {m for m in loaded if m.startswith("rald_fast") and not m.startswith("rald_fast.predict")} <= core, loaded
    assert not {"onnx", "onnxruntime", "tensorrt", "cv2"} & {m.split(".")[0] for m in loaded}, loaded
