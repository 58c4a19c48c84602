"""One preprocessing path: a photo gives the same probabilities through training's decode and
evaluation (`rald_fast.data.dataset.load_split` -> `Preprocess.normalize` -> the model) as through
every exported artifact (`rald_fast.predict.Predictor`: read -> resize -> normalisation inside the
graph), including a phone photo whose pixels are stored sideways (EXIF orientation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from rald_fast.data.dataset import load_split
from rald_fast.evaluate.metrics import predict_split
from rald_fast.models import load_model
from rald_fast.predict import Predictor
from rald_fast.predict.media import read_image


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A JPEG stored sideways with EXIF orientation 6, a grey PNG and an RGBA PNG, and a label file
    that makes them a dataset split."""
    d = tmp_path_factory.mktemp("photos")
    astronaut = Image.fromarray(skdata.astronaut())
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view": the stored pixels are the upright photo turned CCW
    astronaut.transpose(Image.Transpose.ROTATE_90).save(d / "sideways.jpg", exif=exif, quality=95)
    Image.fromarray(skdata.camera()).save(d / "grey.png")
    rgba = np.concatenate([skdata.coffee(), np.full((*skdata.coffee().shape[:2], 1), 200, np.uint8)], 2)
    Image.fromarray(rgba, "RGBA").save(d / "rgba.png")
    names = ["sideways.jpg", "grey.png", "rgba.png"]
    (d / "test.csv").write_text("path,label\n" + "".join(f"{n},0\n" for n in names))
    return d, names


def test_exif_photo_is_read_upright(photos):
    d, _ = photos
    upright = read_image(d / "sideways.jpg")
    assert upright.shape == skdata.astronaut().shape  # (512, 512, 3) square: check content instead
    diff = np.abs(upright.astype(int) - skdata.astronaut().astype(int)).mean()
    turned = np.abs(np.rot90(upright).astype(int) - skdata.astronaut().astype(int)).mean()
    assert diff < 5 < turned  # JPEG noise only when upright; far off when left sideways


def test_photo_same_probabilities_in_training_eval_and_every_artifact(photos, exported_artifacts):
    d, names = photos
    loaded = load_model(exported_artifacts["ckpt"])
    taxonomy, preprocess = loaded.taxonomy, loaded.preprocess
    split = load_split(d / "test.csv", taxonomy, preprocess.image_size)
    assert split.paths == [str(d / n) for n in names]
    mode = "bank" if loaded.model.has_reference_bank else "self"
    pred = predict_split(loaded.model, split, preprocess, len(split), torch.device("cpu"), 0, mode)
    # predict_split returns rows in the split's order
    reference = pred["probs"]
    images = [read_image(d / n) for n in names]
    artifacts = {p.suffix: p for p in exported_artifacts["out"].iterdir() if p.suffix in (".onnx", ".pt2", ".ts")}
    assert set(artifacts) == {".onnx", ".pt2", ".ts"}
    for path in [exported_artifacts["ckpt"], *artifacts.values()]:
        predictor = Predictor.load(path, device="cpu")
        assert predictor.itrr_mode == mode
        got = predictor.predict(images).probs
        np.testing.assert_allclose(got, reference, atol=2e-5, err_msg=str(path))
    # the pixels themselves: the predictor's batch equals the split's decoded images exactly
    batch = Predictor.load(exported_artifacts["ckpt"], device="cpu").to_batch(images)
    assert torch.equal(batch.permute(0, 3, 1, 2), split.images)
