"""The training loop behind `python -m rald_fast.train`: build, train_one_epoch, evaluate, fit.

Section 4.3.2 of the paper: SGD with momentum, step decay of the learning rate, CE + NNLDL. A run directory holds the
resolved config (config.json), the taxonomy (taxonomy.json), one line of metrics per epoch
(metrics.jsonl and metrics.csv), `last.pt` (written atomically every epoch) and, once training has
finished, `summary.json`. Resume restores weights, optimiser, scheduler, RNG states and epoch, and the
per-epoch batch order and augmentation are seeded from (seed, epoch), so a resumed run continues
exactly where the interrupted one would have gone.

Speed options (step.py): --amp, --compile, channels_last, pinned non-blocking copies on CUDA.
Under torchrun (distributed.py, docs/DISTRIBUTED.md) every process walks the same global batches,
runs its backbone on its own rows and the head and loss on the all-gathered global batch; rank 0
alone evaluates and writes metrics and checkpoints, which hold nothing per process.
"""

from __future__ import annotations

import csv
import inspect
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rald_fast.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from rald_fast.files import atomic_write_text, to_json
from rald_fast.config import Config
from rald_fast.data.augment import apply_augment, draw_augment
from rald_fast.data.build import Data, build_data
from rald_fast.data.dataset import Split
from rald_fast.train.loader import batch_loader, global_batches
from rald_fast.preprocess import Preprocess
from rald_fast.revision import code_revision
from rald_fast.train.distributed import (SINGLE, DistInfo, barrier, init_from_env, local_rows, shutdown,
                                   slice_sizes, sync_batchnorm)
from rald_fast.config import ITRR_MODES
from rald_fast.device import resolve_device
from rald_fast.errors import TrainingError
from rald_fast.evaluate.metrics import compute_metrics, predict_split
from rald_fast.evaluate.reference_bank import build_reference_bank, default_bank_size
from rald_fast.hierarchy import Taxonomy
from rald_fast.models import RALD, NeighbourMemory, build_model, rald_loss
from rald_fast.train.step import TrainForward, autocast_context, check_amp, make_scaler

log = logging.getLogger(__name__)


def build_optimizer(cfg: Config, model: RALD):
    o = cfg.optim
    opt = torch.optim.SGD(model.param_groups(o.lr, o.attn_lr_mult), lr=o.lr, momentum=o.momentum,
                          weight_decay=o.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=o.lr_step, gamma=o.lr_gamma)
    return opt, sched


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def train_one_epoch(model: RALD, split: Split, preprocess: Preprocess, optimizer, cfg: Config,
                    epoch: int, device: torch.device, memory: NeighbourMemory | None = None,
                    forward: torch.nn.Module | None = None, info: DistInfo = SINGLE,
                    scaler: torch.amp.GradScaler | None = None, max_steps: int | None = None) -> dict:
    """One pass over the training split; returns the epoch's train_* metrics (global batch): the
    losses, accuracy and speed, and what NNLDL did (`train_nn_purity_*` against `train_nn_chance_*`,
    `train_itrr_entropy`; losses.py).

    Args:
        forward: the training forward (`TrainForward`, DDP-wrapped under torchrun); default the
            plain model. Every process walks the same global batches of `cfg.optim.batch_size`
            images and runs its backbone on its own rows (`distributed.local_rows`).
        info: the process group; scaler: fp16's gradient scaler.
        max_steps: stop after this many steps (benchmarks; None: the whole epoch).
    """
    model.train()
    forward = forward if forward is not None else TrainForward(model)
    gen = epoch_generator(cfg.run.seed, epoch)
    batches = global_batches(split, gen, cfg.optim.batch_size, info.world_size)
    if max_steps is not None:
        batches = batches[:max_steps]
    pin = cfg.run.pin_memory and device.type == "cuda"
    loader = batch_loader(split, batches, info, cfg.data.loader_workers, pin)  # this process's rows
    d = cfg.data
    use_nnldl = epoch >= cfg.loss.nnldl_warmup  # CE alone during the warm-up epochs
    coarse_of = torch.as_tensor(model.taxonomy.coarse_of_fine(), device=device)  # for the diagnostics
    sums: dict[str, torch.Tensor] = {}
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen = 0
    t0 = time.perf_counter()
    bar = zip(batches, loader)
    if cfg.run.progress and info.is_main:
        from tqdm import tqdm

        bar = tqdm(bar, total=len(batches), desc=f"epoch {epoch + 1}/{cfg.optim.epochs}", unit="batch",
                   leave=False)
    for step, (idx, x) in enumerate(bar):
        # every process draws the whole global batch's augmentation from `gen`, as one process would,
        # and applies its rows' draws to its own images on the device: N processes see exactly the
        # pixels one process would (data/augment.py)
        draws = draw_augment(len(idx), split.images.shape[-1], gen, d.hflip, d.shift, d.rrc_scale,
                             d.color_jitter, d.random_erasing)
        x = apply_augment(x.to(device, non_blocking=pin), draws.rows(local_rows(len(idx), info)))
        y = split.labels[idx].to(device, non_blocking=pin)                    # the global labels
        out, parts = forward_loss(forward, preprocess.normalize(x), y, cfg, device, memory, use_nnldl, coarse_of,
                                  slice_sizes(len(idx), info.world_size))
        # one host sync per step on CPU; on CUDA every 16 steps, so the GPU is never starved
        if (device.type != "cuda" or step % 16 == 15 or step + 1 == len(batches)) and \
                not torch.isfinite(parts["loss"]):
            raise TrainingError(f"non-finite loss ({parts['loss'].item()}) at epoch {epoch + 1}, "
                                f"step {step + 1}: lower --lr (now {cfg.optim.lr}) or check the data")
        optimizer_step(parts["loss"], optimizer, scaler)
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v.detach().double() * len(idx)  # no host sync
        correct += (out["logits"].argmax(1) == y).sum()
        seen += len(idx)
        if cfg.run.progress and info.is_main and device.type != "cuda":
            bar.set_postfix(loss=f"{parts['loss'].item():.3f}")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    secs = time.perf_counter() - t0
    metrics = {f"train_{k}": v.item() / seen for k, v in sums.items()}
    metrics.update(train_acc=correct.item() / seen, train_images_per_s=seen / secs)
    return metrics


def forward_loss(forward, x: torch.Tensor, y: torch.Tensor, cfg: Config, device: torch.device,
                 memory: NeighbourMemory | None, use_nnldl: bool, coarse_of: torch.Tensor,
                 sizes: list[int]) -> tuple[dict, dict]:
    """The forward of normalised images `x` (this process's rows) under --amp and the loss (21) of the
    global batch's labels `y`. Returns (outputs, loss parts)."""
    if cfg.run.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast_context(cfg.run.amp, device):
        out = forward(x, sizes)
        parts = rald_loss(out, y, cfg.loss, cfg.model.scale, memory, use_nnldl=use_nnldl, coarse_of=coarse_of)
    return out, parts


def optimizer_step(loss: torch.Tensor, optimizer, scaler: torch.amp.GradScaler | None) -> None:
    """Backward and SGD update (through fp16's gradient scaler when there is one)."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()


def evaluate(model: RALD, data: Data, preprocess: Preprocess, cfg: Config,
             device: torch.device) -> dict:
    pred = predict_split(model, data.test, preprocess, cfg.run.eval_batch_size, device, cfg.run.seed,
                         neighbours=cfg.loss)
    m = compute_metrics(pred["probs"], pred["labels"], data.taxonomy)
    row = {"test_acc": m["accuracy"], "test_coarse_acc": m.get("coarse_accuracy", math.nan),
           "test_images_per_s": pred["images_per_s"]}
    row.update({f"test_{k}": v for k, v in pred.get("neighbours", {}).items()})
    return row


def _rng_state() -> dict:
    """Global torch RNG (dropout); batch order and augmentation use per-epoch generators."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_metrics(out: Path, row: dict) -> None:
    with open(out / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(to_json(row) + "\n")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(out / "metrics.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def run_revisions(out: Path) -> dict:
    """summary.json's record of the code: `revision` (the one that trained every epoch, or None when
    epochs of a resumed run came from different revisions or from outside git) and `revisions` (each
    epoch's, in order of first appearance)."""
    lines = (out / "metrics.jsonl").read_text().splitlines() if (out / "metrics.jsonl").exists() else []
    seen = list(dict.fromkeys(json.loads(x).get("revision") for x in lines if x.strip()))
    return {"revision": seen[0] if len(seen) == 1 else None, "revisions": seen}


@dataclass
class TrainingState:
    """What a run trains and carries from epoch to epoch (all of it goes into each checkpoint)."""

    model: RALD
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    memory: NeighbourMemory | None
    epoch: int = 0                                  # epochs completed
    best: dict = field(default_factory=lambda: {"test_acc": -1.0, "epoch": -1})
    bank_info: dict | None = None                   # how ITRR's reference bank was drawn


def build_training(cfg: Config, data: Data, device: torch.device, info: DistInfo) -> TrainingState:
    """The model (initialised from the seeded global RNG), its optimiser, schedule, scaler and memory."""
    model = build_model(cfg, data.taxonomy).to(device)
    if cfg.run.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # the backbone's BatchNorm over the global batch; the head (ITRR's RelationNorm) already runs on the
    # all-gathered global batch in every process
    model.backbone = sync_batchnorm(model.backbone, info, device.type)
    optimizer, scheduler = build_optimizer(cfg, model)
    memory = NeighbourMemory(cfg.loss.nnldl_bank) if cfg.loss.nnldl and cfg.loss.nnldl_bank else None
    return TrainingState(model, optimizer, scheduler, make_scaler(cfg.run.amp, device), memory)


def restore_training(state: TrainingState, resume: str, cfg: Config, data: Data) -> None:
    """Continue from checkpoint `resume`: weights, optimiser, schedule, RNG, memory, scaler, epoch."""
    ckpt = load_checkpoint(resume, "--resume")
    check_compatible(ckpt, cfg, data.taxonomy, resume)
    state.model.load_state_dict(ckpt.model)
    try:
        state.optimizer.load_state_dict(ckpt.optimizer)
    except ValueError as e:  # e.g. a checkpoint of a revision with other parameter groups
        raise ValueError(f"{resume}: its optimiser state does not fit this model's parameter groups "
                         f"({e}); it was written by another revision of rald_fast") from None
    state.scheduler.load_state_dict(ckpt.scheduler)
    _restore_rng(ckpt.rng)
    if state.memory is not None:
        state.memory.load_state_dict(ckpt.nnldl_memory)
    if state.scaler is not None and ckpt.scaler:
        state.scaler.load_state_dict(ckpt.scaler)
    state.epoch, state.best, state.bank_info = ckpt.epoch, ckpt.best, ckpt.reference_bank
    log.info("resumed %s at epoch %d", resume, state.epoch)


def prepare_run_dir(out: Path, cfg: Config, data: Data, resumed_at: int | None) -> None:
    """The run directory (rank 0): a new run starts clean; a resumed one keeps the metrics of the
    epochs its checkpoint has seen. The resolved config and the taxonomy are (re)written."""
    if resumed_at is not None:
        if (out / "metrics.jsonl").exists():
            lines = (out / "metrics.jsonl").read_text().splitlines()
            keep = [x for x in lines if json.loads(x)["epoch"] <= resumed_at]
            atomic_write_text(out / "metrics.jsonl", "".join(x + "\n" for x in keep))
    else:
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.jsonl").unlink(missing_ok=True)
        (out / "summary.json").unlink(missing_ok=True)
    atomic_write_text(out / "config.json", json.dumps(cfg.to_dict(), indent=2))
    atomic_write_text(out / "taxonomy.json", json.dumps(data.taxonomy.to_dict(), indent=2))


def end_epoch(state: TrainingState, row: dict, out: Path, cfg: Config, data: Data, preprocess: Preprocess,
              device: torch.device) -> None:
    """Rank 0 after an epoch: evaluate when due, write the metrics row, and the checkpoint (the last one
    with ITRR's reference bank)."""
    epoch = state.epoch
    last = epoch == cfg.optim.epochs
    if last or epoch % cfg.run.eval_every == 0:
        row.update(evaluate(state.model, data, preprocess, cfg, device))
        if row["test_acc"] > state.best["test_acc"]:
            state.best = {"test_acc": row["test_acc"], "epoch": epoch}
    write_metrics(out, row)
    log.info("epoch %s", " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    if last:  # ITRR's reference bank goes into the final checkpoint, written once
        state.bank_info = build_final_reference_bank(state.model, data, preprocess, cfg, device) or state.bank_info
    save_checkpoint(out / "last.pt", Checkpoint(
        model=state.model.state_dict(), config=cfg.to_dict(), taxonomy=data.taxonomy.to_dict(),
        preprocess=preprocess.to_dict(), provenance=data.provenance(), epoch=epoch, best=state.best,
        metrics=row, optimizer=state.optimizer.state_dict(), scheduler=state.scheduler.state_dict(),
        scaler=state.scaler.state_dict() if state.scaler is not None else None, rng=_rng_state(),
        nnldl_memory=state.memory.state_dict() if state.memory is not None else None,
        reference_bank=state.bank_info))


def fit(cfg: Config, resume: str | None = None) -> dict:
    """Train (or continue) a run; returns the summary that is also written to summary.json."""
    device = resolve_device(cfg.run.device)
    info, device = init_distributed(cfg, device)
    check_amp(cfg.run.amp, device)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    torch.manual_seed(cfg.run.seed)
    data = build_data_in_turn(cfg, info)
    preprocess = Preprocess(cfg.data.image_size)
    state = build_training(cfg, data, device, info)
    out = Path(cfg.run.out)
    if resume:
        restore_training(state, resume, cfg, data)
    if info.is_main:
        prepare_run_dir(out, cfg, data, state.epoch if resume else None)
    forward = build_forward(state.model, cfg, info, device)
    t_start = time.perf_counter()
    row: dict = {}
    for epoch in range(state.epoch, cfg.optim.epochs):
        row = {"epoch": epoch + 1, "lr": state.optimizer.param_groups[0]["lr"], "revision": code_revision()}
        row.update(train_one_epoch(state.model, data.train, preprocess, state.optimizer, cfg, epoch, device,
                                   state.memory, forward, info, state.scaler))
        state.scheduler.step()
        state.epoch = epoch + 1
        if info.is_main:  # metrics, evaluation and checkpoints come from rank 0
            end_epoch(state, row, out, cfg, data, preprocess, device)
        barrier(info)
    summary = {"out": str(out), "checkpoint": str(out / "last.pt"), "dataset": str(data.root),
               "epochs": cfg.optim.epochs, "final": row, "best": state.best,
               "train_seconds": time.perf_counter() - t_start, "variant": cfg.variant,
               "preset": cfg.preset, "processes": info.world_size, **run_revisions(out)}
    if info.is_main:
        summary.update(accuracy_by_itrr_mode(state.model, data, preprocess, cfg, device))
        atomic_write_text(out / "summary.json", to_json(summary, indent=2))
    barrier(info)
    shutdown(info)
    return summary


def init_distributed(cfg: Config, device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join torchrun's process group (one process: `SINGLE`); each process gets its own GPU."""
    info = init_from_env(device.type)
    if not info.enabled:
        return info, device
    if cfg.optim.batch_size < info.world_size:
        raise ValueError(f"--batch-size {cfg.optim.batch_size} is the global batch: it must be at "
                         f"least the number of processes ({info.world_size})")
    if not info.is_main:
        logging.getLogger("rald_fast").setLevel(logging.WARNING)
    log.info("distributed: %d processes (%s), global batch %d", info.world_size,
             "nccl" if device.type == "cuda" else "gloo", cfg.optim.batch_size)
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    return info, device


def build_data_in_turn(cfg: Config, info: DistInfo) -> Data:
    """`build_data`, rank 0 first (it may generate or cache the dataset), then the others. The
    global RNG is left as it was, so every process initialises and drops out alike."""
    state = torch.get_rng_state()
    if not info.is_main:
        barrier(info)
    data = build_data(cfg)
    if info.is_main:
        barrier(info)
    torch.set_rng_state(state)
    return data


def build_forward(model: RALD, cfg: Config, info: DistInfo, device: torch.device) -> torch.nn.Module:
    """The training forward (`TrainForward`), compiled with --compile, DDP-wrapped under torchrun
    (its buffers need no broadcast: every process updates them alike from the global batch)."""
    forward = TrainForward(model, info, compile=cfg.run.compile)
    if not info.enabled:
        return forward
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    params = inspect.signature(DistributedDataParallel).parameters  # renamed in torch 2.12+
    no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else \
        {"broadcast_buffers": False}
    return DistributedDataParallel(forward, device_ids=ids, **no_sync)


def check_compatible(ckpt: Checkpoint, cfg: Config, taxonomy: Taxonomy, path: str) -> None:
    if ckpt.taxonomy["fine"] != list(taxonomy.fine):
        raise ValueError(f"{path}: checkpoint was trained on taxonomy "
                         f"{ckpt.taxonomy['name']!r} ({len(ckpt.taxonomy['fine'])} fine "
                         f"labels), this run uses {taxonomy.name!r} ({taxonomy.num_fine})")
    if ckpt.config["model"] != cfg.to_dict()["model"]:
        raise ValueError(f"{path}: the model options differ from the checkpoint's")


def build_final_reference_bank(model: RALD, data: Data, preprocess: Preprocess, cfg: Config,
                               device: torch.device) -> dict | None:
    """Set ITRR's reference bank (batch-independent inference) on the trained model, so that the
    final checkpoint carries it; returns how it was drawn (None: no ITRR, or --reference-bank 0)."""
    size = cfg.run.reference_bank
    size = default_bank_size(cfg) if size == -1 else size
    if model.itrr is None or size == 0:
        return None
    bank = build_reference_bank(model, data.train, preprocess, size, device, cfg.run.seed)
    model.set_reference_bank(bank.pop("features"))
    log.info("reference bank of %d training images stored in the final checkpoint", len(bank["labels"]))
    return bank


def accuracy_by_itrr_mode(model: RALD, data: Data, preprocess: Preprocess, cfg: Config,
                          device: torch.device) -> dict:
    """The test accuracy of each ITRR inference mode at the run's test batch size (summary.json)."""
    if not model.has_reference_bank:
        return {}
    accuracy = {}
    for mode in ITRR_MODES:
        pred = predict_split(model, data.test, preprocess, cfg.run.eval_batch_size, device, cfg.run.seed, mode)
        accuracy[mode] = compute_metrics(pred["probs"], pred["labels"], data.taxonomy)["accuracy"]
    log.info("test accuracy by ITRR mode: %s", accuracy)
    return {"reference_bank": int(model.reference_bank().shape[0]), "test_acc_by_itrr_mode": accuracy}
