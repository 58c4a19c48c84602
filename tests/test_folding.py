"""Folding for inference, the batch-independent ITRR modes and the reference bank as a model buffer."""

import json
import subprocess
import sys

import pytest
import torch

from rald_fast.checkpoint import load_checkpoint, save_checkpoint
from rald_fast.config import make_config
from rald_fast.evaluate.reference_bank import stratified_indices
from rald_fast.hierarchy import fg_emotions, load_taxonomy
from rald_fast.models import build_model, load_model
from rald_fast.models.folded import fold
from rald_fast.preprocess import Preprocess
from rald_fast.train.loop import fit

TAX = fg_emotions()
PRE = Preprocess(32)


def trained_like(variant="rald", taxonomy=TAX):
    """A tiny model in eval mode whose BatchNorm statistics are not the identity."""
    model = build_model(make_config("tiny", variant), taxonomy).eval()
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
    return model


def images(n, seed=0):
    return torch.randint(0, 256, (n, 3, 32, 32), generator=torch.Generator().manual_seed(seed)).float()


def training_path(model, x, mode):
    feats = model.backbone_features(PRE.normalize(x.to(torch.uint8)))
    return model.head_outputs(feats, itrr_mode=mode)["logits"]


def with_bank(model, n=9, seed=3):
    """`model` with a reference bank of the features of `n` random images."""
    if model.itrr is not None:
        with torch.no_grad():
            model.set_reference_bank(model.backbone_features(PRE.normalize(images(n, seed=seed).to(torch.uint8))))
    return model


@pytest.mark.parametrize("variant", ["rald", "a", "b", "g", "rald-l"])
@pytest.mark.parametrize("mode", ["batch", "bank", "self"])
def test_folded_module_gives_the_training_models_outputs(variant, mode):
    taxonomy = load_taxonomy("basic7") if variant == "rald-l" else TAX
    model = with_bank(trained_like(variant, taxonomy))
    x = images(6)
    with torch.no_grad():
        want = training_path(model, x, mode)
        logits, probs = fold(model, PRE, mode)(x)
    torch.testing.assert_close(logits, want, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(probs, want.softmax(-1), atol=1e-6, rtol=1e-4)


def test_folded_module_keeps_only_what_inference_needs():
    folded = fold(trained_like(), PRE, "self")
    names = {n for n, _ in folded.named_parameters()} | {n for n, _ in folded.named_buffers()}
    assert not any(n.startswith(("hlrr.", "label_proj", "bias_table")) for n in names)
    assert "label_vectors" not in names and "xi" not in names
    assert {"label_k", "label_v"} <= names
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())


@pytest.mark.parametrize("mode", ["bank", "self"])
def test_bank_and_self_modes_do_not_depend_on_batch_mates(mode):
    model = with_bank(trained_like(), 12, seed=5)
    with torch.no_grad():
        folded = fold(model, PRE, mode)
        x = images(17)
        alone = torch.cat([folded(x[i:i + 1])[1] for i in range(17)])
        perm = torch.randperm(17, generator=torch.Generator().manual_seed(2))
        shuffled = torch.empty_like(alone)
        shuffled[perm] = folded(x[perm])[1]
        other_mates = folded(torch.cat([x[:5], images(40, seed=9)]))[1][:5]
        for mates in (folded(x)[1], shuffled):
            torch.testing.assert_close(mates, alone, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(other_mates, alone[:5], atol=1e-5, rtol=1e-4)
        # the same holds on the training model's own path
        torch.testing.assert_close(training_path(model, x, mode).softmax(-1), alone, atol=1e-5, rtol=1e-4)


def test_batch_mode_does_depend_on_batch_mates():
    folded = fold(trained_like(), PRE, "batch")
    x = images(8)
    with torch.no_grad():
        assert not torch.allclose(folded(x)[1][:1], folded(x[:1])[1], atol=1e-5)


def test_bank_mode_needs_a_bank():
    model = trained_like()
    assert not model.has_reference_bank and fold(model, PRE).itrr_mode == "self"
    for attempt in (lambda: fold(model, PRE, "bank"),
                    lambda: model.head_outputs(torch.zeros(2, 512), itrr_mode="bank")):
        with pytest.raises(ValueError, match=r"python -m rald_fast.bank --checkpoint"):
            attempt()
    assert fold(with_bank(model), PRE).itrr_mode == "bank"  # the default once a bank is set
    with pytest.raises(ValueError, match="itrr_mode"):
        fold(trained_like(), PRE, "global")


def test_stratified_indices_cycle_over_classes():
    labels = torch.tensor([0] * 10 + [1] * 2 + [2] * 5)
    idx = stratified_indices(labels, 7, seed=0)
    assert len(set(idx.tolist())) == 7
    assert sorted(labels[idx].tolist()) == [0, 0, 0, 1, 1, 2, 2]


def test_training_stores_a_bank_and_reports_every_itrr_mode(tmp_path):
    cfg = make_config("tiny", "rald", out=str(tmp_path / "run"), epochs=1, synth_train_per_class=1,
                      synth_test_per_class=1, batch_size=16)
    summary = fit(cfg)
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt.model["itrr_reference"].shape == (15, 512)  # batch size - 1
    assert ckpt.reference_bank["labels"].shape == (15,) and ckpt.provenance["synthetic"]
    assert set(summary["test_acc_by_itrr_mode"]) == {"batch", "bank", "self"}
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["reference_bank"] == 15
    model = load_model(tmp_path / "run" / "last.pt").model
    assert model.reference_bank().shape == (15, 512)

    # a bank of another size from the command line, written atomically beside the original
    out = tmp_path / "bank40.pt"
    run = [sys.executable, "-m", "rald_fast.bank", "--checkpoint", str(tmp_path / "run" / "last.pt"),
           "--size", "20", "--out", str(out)]
    assert subprocess.run(run, capture_output=True, text=True).returncode == 0
    assert load_checkpoint(out).model["itrr_reference"].shape == (20, 512)

    # evaluate in each mode; `bank` on a checkpoint without a bank says how to build one
    ckpt.model["itrr_reference"] = torch.zeros(0, 512)
    save_checkpoint(tmp_path / "nobank.pt", ckpt)
    ev = [sys.executable, "-m", "rald_fast.evaluate", "--itrr-mode", "bank", "--batch-size", "1",
          "--out", str(tmp_path / "ev")]
    res = subprocess.run(ev + ["--checkpoint", str(out)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["itrr_mode"] == "bank"
    res = subprocess.run(ev + ["--checkpoint", str(tmp_path / "nobank.pt")], capture_output=True, text=True)
    assert res.returncode == 2 and "python -m rald_fast.bank --checkpoint" in res.stderr


def test_format_1_checkpoints_still_load(tmp_path):
    """Before the bank became a buffer, checkpoints kept it under "itrr_bank" (and NNLDL's memory
    under "bank"): they load, with the bank in the model, and resume."""
    cfg = make_config("tiny", "rald", out=str(tmp_path / "run"), epochs=1, synth_train_per_class=1,
                      synth_test_per_class=1, batch_size=16)
    fit(cfg)
    new = load_checkpoint(tmp_path / "run" / "last.pt")
    old = {k: v for k, v in vars(new).items() if k not in ("reference_bank", "nnldl_memory", "provenance")}
    old["model"] = {k: v for k, v in new.model.items() if k != "itrr_reference"}
    old.update(format="rald_fast.checkpoint/1", bank=None,
               itrr_bank={"features": new.model["itrr_reference"], **new.reference_bank})
    torch.save(old, tmp_path / "old.pt")
    model = load_model(tmp_path / "old.pt").model
    torch.testing.assert_close(model.reference_bank(), new.model["itrr_reference"])
    converted = load_checkpoint(tmp_path / "old.pt")
    assert converted.format == "rald_fast.checkpoint/2" and converted.nnldl_memory is None
