"""The model with the Triton kernels on and off: same outputs, close losses, and the
model that calls the custom ops traces under torch.compile and torch.export.

Kernel runs need Triton's interpreter on a CPU; as in test_kernels.py they run in-process
(tests/conftest.py turns the interpreter on for a session without CUDA), and on CUDA tensors in a
CUDA session (the `device` fixture).
"""

import torch

from rald_fast.config import make_config
from rald_fast.hierarchy import fg_emotions
from rald_fast.kernels.testing import assert_close, seed_everything
from rald_fast.models import build_model, rald_loss


def tiny(variant="rald"):
    seed_everything(0)
    cfg = make_config("tiny", variant, dropout=0.0, k=3)
    return build_model(cfg, fg_emotions()), cfg


def train_steps(backend: str, monkeypatch, steps=3, device="cpu"):
    monkeypatch.setenv("RALD_FAST_KERNELS", backend)
    model, cfg = tiny()
    model = model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(6, 3, 32, 32, generator=gen), torch.randint(0, 33, (6,), generator=gen)
    x, y = x.to(device), y.to(device)
    losses, logits = [], None
    for _ in range(steps):
        out = model(x)
        logits = logits if logits is not None else out["logits"].detach()
        parts = rald_loss(out, y, cfg.loss, cfg.model.scale)
        opt.zero_grad()
        parts["loss"].backward()
        opt.step()
        losses.append(parts["loss"].item())
    return logits, torch.tensor(losses)


def test_kernels_on_and_off_agree(device, monkeypatch):
    ref_logits, ref_losses = train_steps("reference", monkeypatch, device=device)
    tri_logits, tri_losses = train_steps("triton", monkeypatch, device=device)
    # fp32 everywhere; the kernel's online softmax sums in another order: 1e-4 absorbs that
    assert_close(tri_logits, ref_logits, atol=1e-4, rtol=1e-4, name="first-step logits")
    assert_close(tri_losses, ref_losses, atol=1e-4, rtol=1e-4, name="losses over 3 steps")


def test_model_head_compiles_and_exports():
    model, _ = tiny("g")
    model.eval()
    feats = torch.randn(5, 512)
    with torch.no_grad():
        eager = model.head_outputs(feats)["logits"]
        compiled = torch.compile(lambda f: model.head_outputs(f)["logits"], fullgraph=True)
        assert_close(compiled(feats), eager, atol=1e-5, rtol=1e-5, name="compiled head")

    class Head(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, f):
            return self.m.head_outputs(f)["logits"]

    batch = torch.export.Dim("batch", min=2, max=256)
    ep = torch.export.export(Head(model), (feats,), dynamic_shapes=({0: batch},))
    other = torch.randn(9, 512)
    with torch.no_grad():
        assert_close(ep.module()(other), model.head_outputs(other)["logits"], atol=1e-5,
                     rtol=1e-5, name="exported head")
