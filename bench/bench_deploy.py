"""Inference images/s: eager vs folded vs ONNX Runtime vs AOTInductor `.pt2`, RALD vs bare ResNet18.

Run: `pytest bench/bench_deploy.py --benchmark-only` (add `--benchmark-json FILE` to keep numbers;
`RALD_BENCH_SIZE=112` for a shorter run). Every case runs in the same process on the same device at
the same input size (224 by default, the paper's) and batch (1 and 32): bare ResNet18 (Table 3 a)
and full RALD, each as
  eager    the training model in eval mode (`backbone_features` + `head_outputs`, ITRR in batch mode)
  folded   rald_fast.models.folded (label branch precomputed, BatchNorm folded, ITRR `self` mode)
  onnx     the folded model exported to ONNX, run by ONNX Runtime (CPU provider)
  pt2      the folded model compiled by AOTInductor (dynamic batch)
Weights are random: speed does not depend on them. `extra_info` holds images/s. A shared machine
drifts between cases, so `test_rald_over_resnet18_interleaved` times the two models in alternation,
round after round, and records the median per-round ratio RALD / ResNet18; `bench/deploy_table.py
FILE` prints both kinds of rows from the JSON (the paper's ratio is 1291 / 1942 = 0.66 on an RTX
A4000; by FLOPs the folded RALD costs 1.003x a ResNet18 at 224 px, so the ideal ratio is 0.997).
"""

from __future__ import annotations

import os

import pytest
import torch

from rald_fast.config import make_config
from rald_fast.hierarchy import fg_emotions
from rald_fast.models import build_model
from rald_fast.models.folded import fold
from rald_fast.preprocess import Preprocess

SIZE = int(os.environ.get("RALD_BENCH_SIZE", "224"))
BATCHES = (1, 32)
MODELS = {"resnet18": "a", "rald": "rald"}
BACKENDS = ("eager", "folded", "onnx", "pt2")


def _runner(backend: str, variant: str, device: str, tmp):
    torch.manual_seed(0)
    model = build_model(make_config("quick", variant, image_size=SIZE), fg_emotions()).eval().to(device)
    pre = Preprocess(SIZE)
    if backend == "eager":
        model = model.to(memory_format=torch.channels_last)

        def run(x):
            return model.head_outputs(model.backbone_features(x))["logits"]
        return run
    folded = fold(model, pre, "self").eval()
    if backend == "folded":
        folded = folded.to(memory_format=torch.channels_last)
        return lambda x: folded(x)[1]
    from rald_fast.artifacts import build_metadata

    cfg = make_config("quick", variant, image_size=SIZE)
    meta = build_metadata(cfg, fg_emotions(), pre, folded.itrr_mode, "random-init")
    if backend == "onnx":
        import onnxruntime as ort

        from rald_fast.export.formats import export_onnx

        path = export_onnx(folded, tmp / f"{variant}.onnx", meta, max_batch=64)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda x: session.run(["probs"], {"images": x.cpu().numpy()})[0]
    from rald_fast.export.formats import export_pt2

    path = export_pt2(folded, tmp / f"{variant}.pt2", meta, max_batch=64, device=device)
    package = torch._inductor.aoti_load_package(str(path))
    return lambda x: package(x)[1]


@pytest.fixture(scope="module")
def runners(tmp_path_factory, device):
    tmp = tmp_path_factory.mktemp("deploy")
    cache = {}

    def get(backend, model):
        if (backend, model) not in cache:
            cache[backend, model] = _runner(backend, MODELS[model], device, tmp)
        return cache[backend, model]
    return get


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_inference_images_per_s(bench_env, runners, device, backend, model, batch):
    run = runners(backend, model)
    x = torch.randint(0, 256, (batch, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(0)).float()
    x = x.to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step():
        with torch.no_grad():
            run(x)
        sync()
    for _ in range(2):
        step()
    bench_env.group = f"batch {batch}"
    rounds = 60 if batch == 1 else 15
    bench_env.pedantic(step, rounds=rounds, iterations=1)
    bench_env.extra_info.update(backend=backend, model=model, batch=batch, image_size=SIZE,
                                images_per_s=batch / bench_env.stats.stats.median,
                                threads=torch.get_num_threads())


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_rald_over_resnet18_interleaved(bench_env, runners, device, backend, batch):
    """RALD / ResNet18 images/s with the two models timed in alternation, so that drifts of a
    shared machine hit both alike; `extra_info["ratio"]` is the median of the per-round ratios."""
    import statistics
    import time

    x = torch.randint(0, 256, (batch, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(0)).float()
    x = x.to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    runs = {m: runners(backend, m) for m in MODELS}

    def seconds(run):
        t0 = time.perf_counter()
        with torch.no_grad():
            run(x)
        sync()
        return time.perf_counter() - t0
    for run in runs.values():
        seconds(run)
    rounds = 30 if batch == 1 else 8
    times = {m: [] for m in MODELS}

    def one_round():
        for m, run in runs.items():
            times[m].append(seconds(run))
    bench_env.group = f"interleaved batch {batch}"
    bench_env.pedantic(one_round, rounds=rounds, iterations=1)
    ratios = [r18 / rald for r18, rald in zip(times["resnet18"], times["rald"])]
    bench_env.extra_info.update(backend=f"{backend} (interleaved)", batch=batch, image_size=SIZE,
                                ratio=statistics.median(ratios),
                                resnet18_images_per_s=batch / statistics.median(times["resnet18"]),
                                rald_images_per_s=batch / statistics.median(times["rald"]))
