"""Table 1's speed row: images per second of the bare ResNet18 and of RALD, same batch, same device.

The paper times inference on an RTX A4000 (ResNet18 1,942 FPS, RALD 1,291 FPS, 224 px). Here both
models run the inference path of `rald_fast.evaluate.metrics.predict_split` (backbone, then ITRR / LGIFO with the
constant label tokens computed once) on one random batch, after `--warmup` untimed batches; the
median of `--iters` timed batches gives images/s. The models take turns batch by batch: their ratio
is the number to read on a shared machine (the paper's: 1,291 / 1,942 = 0.66). With `--checkpoints`
the trained models are timed, otherwise a freshly built variant (a) and RALD (speed does not depend
on the weights).
"""

from __future__ import annotations

import csv
import io
import statistics
import time
from pathlib import Path

import torch

from rald_fast.experiments.common import write_json
from rald_fast.config import make_config
from rald_fast.device import resolve_device
from rald_fast.hierarchy import load_taxonomy
from rald_fast.models import build_model, load_model

PAPER_FPS = {"a": 1942, "rald": 1291}  # RTX A4000, 224 px (Table 1)


def _models(checkpoints: list[str], device: torch.device):

    if checkpoints:
        for path in checkpoints:
            loaded = load_model(path, device)
            model, cfg = loaded.model, loaded.cfg
            yield Path(path).parent.name, cfg.variant, model
        return
    taxonomy = load_taxonomy("fg-emotions")
    for variant in ("a", "rald"):
        cfg = make_config("quick", variant)
        yield variant, variant, build_model(cfg, taxonomy).to(device).eval()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def time_models(models: list, batch: int, size: int, device: torch.device, warmup: int,
                iters: int) -> list[float]:
    """Median images/s of each model's inference forward pass on one (batch, 3, size, size) input.

    The models take turns batch by batch, so on a shared machine they see the same load and their
    ratio holds even where the absolute numbers drift."""
    x = torch.randn(batch, 3, size, size, device=device).contiguous(
        memory_format=torch.channels_last)
    models = [m.to(memory_format=torch.channels_last) for m in models]
    tokens = [m.label_tokens() if m.lgifo is not None else None for m in models]  # constant
    times: list[list[float]] = [[] for _ in models]
    for i in range(warmup + iters):
        for j, (m, t) in enumerate(zip(models, tokens)):
            _sync(device)
            t0 = time.perf_counter()
            m.head_outputs(m.backbone_features(x), t)
            _sync(device)
            if i >= warmup:
                times[j].append(time.perf_counter() - t0)
    return [batch / statistics.median(t) for t in times]


def run_fps(args) -> list[dict]:

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"cpu ({torch.get_num_threads()} threads)"
    models = list(_models(args.checkpoints, device))
    rows = []
    for size in args.image_size:
        speeds = time_models([m for _, _, m in models], args.batch_size, size, device,
                             args.warmup, args.iters)
        for (label, variant, _), ips in zip(models, speeds):
            rows.append({"model": label, "variant": variant, "image_size": size,
                         "batch_size": args.batch_size, "images_per_s": ips,
                         "relative_to_first": ips / speeds[0], "device": name,
                         "paper_fps": PAPER_FPS.get(variant), "torch": torch.__version__})
    return rows


def fps_markdown(rows: list[dict]) -> str:
    lines = ["| model | variant | image px | batch | images/s | vs first | device | "
             "paper FPS (A4000, 224 px) |",
             "| --- | --- | ---: | ---: | ---: | ---: | --- | ---: |"]
    for r in rows:
        paper = f"{r['paper_fps']:,}" if r["paper_fps"] else "-"
        lines.append(f"| {r['model']} | {r['variant']} | {r['image_size']} | {r['batch_size']} | "
                     f"{r['images_per_s']:.1f} | {r['relative_to_first']:.2f} | {r['device']} | "
                     f"{paper} |")
    return "\n".join(lines) + "\n"


def fps_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["model", "variant", "image_size", "batch_size", "images_per_s", "device"])
    for r in rows:
        w.writerow([r["model"], r["variant"], r["image_size"], r["batch_size"],
                    f"{r['images_per_s']:.3f}", r["device"]])
    return buf.getvalue()


def write_fps(rows: list[dict], out: Path) -> None:
    (out / "fps.md").write_text(fps_markdown(rows))
    (out / "fps.csv").write_text(fps_csv(rows))
    write_json(out / "fps.json", rows)
