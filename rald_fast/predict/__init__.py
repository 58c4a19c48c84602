"""Prediction: `python -m rald_fast.predict` (command.py) and the Python API.

    from rald_fast.predict import Predictor
    p = Predictor.load("model.onnx")             # or last.pt, .pt2, .ts, .engine, _trt.ep
    p.predict(images).fine                       # aligned face crops, any size
    p.predict_faces("photo.jpg")                 # every face of a photo

- `predictor`: `Predictor`, one API over every artifact (not to be confused
  with a serialized TensorRT engine, which is one of the artifacts it loads).
- `faces`: face detection (OpenCV's bundled Haar cascade), square crops, drawing.
- `pipeline`: detect -> crop -> batched prediction over many photos and frames, and the output rows.
- `media`: listing and reading the inputs (photos, folders, video) and writing annotated video.
"""

from __future__ import annotations

__all__ = ["Predictions", "Predictor", "predict_faces"]


def __getattr__(name: str):
    if name in ("Predictor", "Predictions"):
        from rald_fast.predict import predictor

        return getattr(predictor, name)
    if name == "predict_faces":
        from rald_fast.predict.faces import predict_faces

        return predict_faces
    raise AttributeError(f"module 'rald_fast.predict' has no attribute {name!r}")
