"""Prediction: `python -m rald_fast.predict` (command.py) and the Python API.

    from rald_fast.predict import Predictor
    p = Predictor.load("model.onnx")             # or last.pt, .pt2, .ts, .engine, _trt.ep
    p.predict(images).fine                       # aligned face crops, any size
    p.predict_faces("photo.jpg")                 # every face of a photo

- `predictor`: `Predictor`, one API over every artifact (not to be confused
  with a serialized TensorRT engine, which is one of the artifacts it loads).
- `faces`: face detection (OpenCV's bundled Haar cascade) and square crops; `drawing`: the answers
  drawn on a photo.
- `pipeline`: detect -> crop -> batched prediction over many photos and frames (`predict_faces` for
  one photo), and the output rows.
- `media`: listing and reading the inputs (photos, folders, video) and writing annotated video.
"""

from __future__ import annotations

from rald_fast.predict.pipeline import predict_faces
from rald_fast.predict.predictor import Predictions, Predictor

__all__ = ["Predictions", "Predictor", "predict_faces"]
