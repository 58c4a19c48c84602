"""Faces per second through detect -> crop -> predict, and the share of time in each stage.

Run: `pytest bench/bench_predict.py --benchmark-only` (add `--benchmark-json FILE` to keep numbers).
The photos are in memory (decode is not timed): 8 copies of scikit-image's astronaut (512 x 512, one
face) and 8 canvases with her face pasted three times (640 x 240), 32 faces per round. The model is
a RALD of the quick preset's input size (48 px) trained for one epoch on synthetic faces: its
weights do not matter for speed. `extra_info` records faces/s, each stage's seconds and share
(detect, crop, predict), the batch size and the device.
"""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data as skdata

from rald_fast.predict.faces import HaarFaceDetector
from rald_fast.predict.pipeline import FacePipeline

IMAGE_SIZE = 48  # the quick preset's input side (README's runs)


@pytest.fixture(scope="module")
def predictor(tmp_path_factory, device):
    from rald_fast.config import make_config
    from rald_fast.predict.predictor import Predictor
    from rald_fast.train.loop import fit

    out = tmp_path_factory.mktemp("bench_model")
    fit(make_config("tiny", "rald", out=str(out), epochs=1, synth_train_per_class=1,
                    synth_test_per_class=1, batch_size=16, eval_batch_size=16,
                    image_size=IMAGE_SIZE, progress=False))
    return Predictor.load(out / "last.pt", device=device)


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    astronaut = skdata.astronaut()
    face = astronaut[30:200, 140:310]
    canvas = np.full((240, 640, 3), 235, np.uint8)
    for x in (20, 230, 440):
        canvas[35:205, x:x + 170] = face
    return [astronaut] * 8 + [canvas] * 8


@pytest.mark.parametrize("batch_size", [1, 32])
def test_faces_per_second(bench_env, predictor, photos, device, batch_size):
    detector = HaarFaceDetector()
    pipes = []

    def run_once():
        pipe = FacePipeline(predictor, lambda frame: None, detector, batch_size=batch_size)
        for i, image in enumerate(photos):
            pipe.add("bench", i, image)
        pipe.flush()
        pipes.append(pipe)

    bench_env.pedantic(run_once, rounds=3, iterations=1, warmup_rounds=1)
    faces = pipes[-1].faces
    assert faces == 32, f"expected 32 faces, the detector found {faces}"
    stages = ("detect", "crop", "predict")
    seconds = {s: float(np.median([p.seconds[s] for p in pipes[1:]])) for s in stages}
    total = sum(seconds.values())
    bench_env.extra_info.update(
        faces_per_round=faces, batch_size=batch_size, device=device, image_size=IMAGE_SIZE,
        faces_per_s=faces / bench_env.stats.stats.median,
        **{f"{s}_s": round(seconds[s], 4) for s in stages},
        **{f"{s}_share": round(seconds[s] / total, 3) for s in stages})
