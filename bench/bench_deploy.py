"""Inference images/s: eager vs folded vs ONNX Runtime vs AOTInductor `.pt2`, RALD vs bare ResNet18.

Run: `pytest bench/bench_deploy.py --benchmark-only` (add `--benchmark-json FILE` to keep numbers;
`RALD_BENCH_SIZE=112` for a shorter run). Every case runs in the same process on the same device at
the same input size (224 by default, the paper's) and batch (1 and 32): bare ResNet18 (Table 3 a)
and full RALD, each as
  eager    the training model in eval mode (`forward_features` + `forward_head`, ITRR in batch mode)
  folded   rald_fast.models.folded (label branch precomputed, BatchNorm folded, ITRR `self` mode)
  onnx     the folded model exported to ONNX, run by ONNX Runtime (CPU provider)
  pt2      the folded model compiled by AOTInductor (dynamic batch)
Weights are random: speed does not depend on them. `extra_info` holds images/s; the RALD / ResNet18
ratio per (backend, batch) is printed by `bench/deploy_table.py FILE` from the JSON (the paper's
ratio is 1291 / 1942 = 0.66 on an RTX A4000).
"""

from __future__ import annotations

import os

import pytest
import torch

from rald_fast.config import make_config
from rald_fast.data.transforms import Preprocess
from rald_fast.hierarchy import fg_emotions
from rald_fast.models import build_model
from rald_fast.models.folded import fold

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
            return model.forward_head(model.forward_features(x))["logits"]
        return run
    folded = fold(model, pre, "self").eval()
    if backend == "folded":
        folded = folded.to(memory_format=torch.channels_last)
        return lambda x: folded(x)[1]
    from rald_fast.export.artifacts import build_metadata

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
    rounds = 20 if batch == 1 else 5
    bench_env.pedantic(step, rounds=rounds, iterations=1)
    bench_env.extra_info.update(backend=backend, model=model, batch=batch, image_size=SIZE,
                                images_per_s=batch / bench_env.stats.stats.median,
                                threads=torch.get_num_threads())
