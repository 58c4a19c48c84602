"""torchrun / DDP on CPU (gloo): N processes with B/N images each train exactly like one process with
B images (ITRR, LGIFO, NNLDL and BatchNorm see the global batch), and a run continues across a
different number of processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from rald_fast.checkpoint import load_checkpoint
from rald_fast.config import make_config
from rald_fast.data.cache import generated_split
from rald_fast.data.dataset import Split
from rald_fast.preprocess import Preprocess
from rald_fast.train.distributed import (SINGLE, DistInfo, init_from_env, local_rows, shutdown, slice_sizes,
                                         sync_batchnorm)
from rald_fast.hierarchy import load_taxonomy
from rald_fast.models import NeighbourMemory, build_model
from rald_fast.train.loop import build_forward, build_optimizer, train_one_epoch

ROOT = Path(__file__).resolve().parents[1]
# (name, overrides): dropout stays on in the first (every process draws the same masks), the
# second adds the NNLDL memory bank, fed from the gathered batch, and the learning relation (RelationNorm
# over the gathered batch, tied init, temperature, gradient through r). lr 1e-4: a ResNet18 on 32 px noise
# (1x1 maps in layer4) is chaotic; even in one process a 1e-7 relative change of the initial weights
# moves the second step's features by 1e-2 at lr 1e-3, batch 16 (measured), so fp32 rounding of the
# split computation would be amplified the same way at larger steps.
SETTINGS = [("rald", dict(k=3, lr=1e-4)),
            ("rald_bank", dict(k=3, lr=1e-4, nnldl_bank=12, dropout=0.0, itrr_qk_norm=True, itrr_tied_init=True,
                               itrr_temperature_cap=10.0, nnldl_relation_grad=True))]
N_IMAGES, BATCH = 21, 8  # batches of 8, 8 and 5: the last one splits unevenly (3 + 2)
# the decoded-cache path with a loader worker and every optional augmentation on
CACHED_SETTINGS = [("rald_cached", dict(k=3, lr=1e-4, loader_workers=1, rrc_scale=0.6, color_jitter=0.3,
                                        random_erasing=0.5))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_steps(info, overrides: dict, cache_dir: str | None = None) -> dict:
    """One epoch (3 steps) of the real training loop on fixed random data; metrics, last
    gradients, weights and the NNLDL bank. `cache_dir`: the same images served from the decoded cache
    (every process maps one file; the first to arrive builds it)."""
    cfg = make_config("tiny", "rald", image_size=32, batch_size=BATCH, progress=False, **overrides)
    torch.manual_seed(0)
    model = build_model(cfg, load_taxonomy("fg-emotions")).to(memory_format=torch.channels_last)
    model.backbone = sync_batchnorm(model.backbone, info, "cpu")
    optimizer, _ = build_optimizer(cfg, model)
    forward = build_forward(model, cfg, info, torch.device("cpu"))
    gen = torch.Generator().manual_seed(1)
    split = Split(torch.randint(0, 256, (N_IMAGES, 3, 32, 32), dtype=torch.uint8, generator=gen),
                  torch.randint(0, 33, (N_IMAGES,), generator=gen), [f"{i}.png" for i in range(N_IMAGES)])
    if cache_dir is not None:
        split = generated_split(cache_dir, "ddp-test", split.labels.tolist(), 32, split.images.numpy().__getitem__)
    bank = NeighbourMemory(cfg.loss.nnldl_bank) if cfg.loss.nnldl_bank else None
    metrics = train_one_epoch(model, split, Preprocess(32), optimizer, cfg, 0, torch.device("cpu"), bank,
                              forward, info)
    return {"metrics": metrics, "grads": {n: p.grad.clone() for n, p in model.named_parameters()},
            "state": {k: v.clone() for k, v in model.state_dict().items()},
            "bank": None if bank is None else bank.preds.clone()}


def _worker(rank: int, world: int, port: int, out: str, cache_dir: str | None = None) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    info = init_from_env("cpu")
    settings = SETTINGS if cache_dir is None else CACHED_SETTINGS
    results = {name: run_steps(info, kw, cache_dir) for name, kw in settings}
    if rank == 0:
        torch.save(results, out)
    shutdown(info)


def assert_close(got: torch.Tensor, want: torch.Tensor, what: str, rtol: float, atol: float) -> None:
    """max |got - want| <= rtol * max |want| + atol (a tensor-wide scale: tiny entries of a
    gradient carry the rounding of the large ones)."""
    if not got.is_floating_point():
        assert torch.equal(got, want), what
        return
    assert got.shape == want.shape, what
    if got.numel() == 0:
        return
    diff = (got.float() - want.float()).abs()
    bound = rtol * want.float().abs().max().item() + atol
    if diff.max().item() > bound:
        i = tuple(int(j) for j in (diff == diff.max()).nonzero()[0])
        raise AssertionError(f"{what}: max diff {diff.max().item():.3g} > {bound:.3g} at {i}: "
                             f"{got[i].item()} vs {want[i].item()}")


def test_slices_cover_the_global_batch():
    assert slice_sizes(3, 2) == [2, 1] and slice_sizes(8, 3) == [3, 3, 2]
    rows = [local_rows(7, DistInfo(rank=r, world_size=3)) for r in range(3)]
    assert [(r.start, r.stop) for r in rows] == [(0, 3), (3, 5), (5, 7)]


def test_two_processes_with_half_batches_match_one_process(tmp_path):
    out = tmp_path / "dist.pt"
    mp.spawn(_worker, args=(2, free_port(), str(out)), nprocs=2, join=True)
    dist = torch.load(out, weights_only=False)
    compare_runs(dist, SETTINGS)


def test_two_processes_on_the_decoded_cache_match_one_process_in_memory(tmp_path):
    """The same equivalence with the images memory-mapped from the decoded cache (built by whichever
    process gets the lock first), gathered by a loader worker per process and augmented with every
    optional op on each process's own rows; the reference is one process with the images in memory."""
    out = tmp_path / "dist.pt"
    mp.spawn(_worker, args=(2, free_port(), str(out), str(tmp_path / "cache")), nprocs=2, join=True)
    compare_runs(torch.load(out, weights_only=False), CACHED_SETTINGS)


def compare_runs(dist: dict, settings: list) -> None:
    torch.set_num_threads(1)
    for name, kw in settings:
        one, two = run_steps(SINGLE, {**kw, "loader_workers": 0}), dist[name]
        for key, value in one["metrics"].items():
            if key != "train_images_per_s":
                assert two["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), (name, key)
        assert one["metrics"]["train_kl"] > 0  # NNLDL really ran
        # fp32 sums in another order (BatchNorm's all-reduced moments, the split backbone):
        # measured 2e-5 to 1e-4 of the largest entry after three steps (5-image BatchNorm is
        # ill-conditioned); a wrong scale or a missing all-reduce gives O(1)
        for n, g in one["grads"].items():
            assert_close(two["grads"][n], g, f"{name} grad {n}", rtol=1e-3, atol=1e-6)
        for n, t in one["state"].items():
            assert_close(two["state"][n], t, f"{name} weight {n}", rtol=1e-4, atol=1e-5)
        if one["bank"] is not None:
            assert_close(two["bank"], one["bank"], f"{name} bank", rtol=1e-4, atol=1e-6)


def torchrun(*args: str, nproc: int, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    cmd = launch + ["-m", "rald_fast.train", *args] if nproc > 1 else \
        [sys.executable, "-m", "rald_fast.train", *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_torchrun_stop_then_resume_with_another_world_size(tmp_path):
    run = tmp_path / "ddp"
    common = ["--preset", "tiny", "--no-progress", "--threads", "1", "--reference-bank", "0"]
    torchrun(*common, "--out", str(run), "--epochs", "1", nproc=2)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1]  # rank 0 alone writes metrics
    assert json.loads((run / "summary.json").read_text())["processes"] == 2
    # (that N processes compute what one would is test_two_processes_with_half_batches_...)
    # continue with one process: the checkpoint holds nothing per rank
    proc = torchrun("--resume", str(run / "last.pt"), "--epochs", "2", "--no-progress", nproc=1)
    assert "finished 2 epochs" in proc.stdout
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert load_checkpoint(run / "last.pt").epoch == 2
