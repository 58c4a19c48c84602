"""The exported ONNX file under OpenCV DNN (`cv2.dnn.readNetFromONNX`), the runtime many C++ face apps
already ship.

OpenCV's ONNX importer can crash the whole process (a segmentation fault, not an exception) on a
graph it does not expect; the rald_fast ONNX file once did (the exporter's GELU order, see
formats.reorder_erf_gelu). So the check runs OpenCV in a child process and reports a crash as an
ArtifactError; the build (rald_fast/export/build.py) and the tests use it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from rald_fast.artifacts import INPUT_NAME, OUTPUT_NAMES, ArtifactError

_CHILD = """
import sys, numpy as np, cv2
net = cv2.dnn.readNetFromONNX(sys.argv[1])
net.setInput(np.load(sys.argv[2]), {inp!r})
outs = net.forward({outs!r})
np.savez(sys.argv[3], **dict(zip({outs!r}, outs)))
print(cv2.__version__)
""".format(inp=INPUT_NAME, outs=list(OUTPUT_NAMES))


def run_opencv(onnx_path: str | Path, images: np.ndarray, timeout: float = 600) -> dict:
    """{"logits", "probs"} (arrays) for a float32 (N, 3, S, S) 0..255 batch, computed by OpenCV DNN
    (CPU) in a child process, and "opencv_version"; ArtifactError naming the signal when OpenCV
    crashes, or its error when it refuses the file."""
    with tempfile.TemporaryDirectory(prefix="rald_cv_") as d:
        x, y = Path(d) / "images.npy", Path(d) / "outputs.npz"
        np.save(x, np.ascontiguousarray(images, dtype=np.float32))
        res = subprocess.run([sys.executable, "-c", _CHILD, str(onnx_path), str(x), str(y)],
                             capture_output=True, text=True, timeout=timeout)
        if res.returncode != 0:
            how = (f"crashed ({signal.Signals(-res.returncode).name})" if res.returncode < 0
                   else f"failed (exit status {res.returncode})")
            tail = " ".join(res.stderr.strip().splitlines()[-2:])
            raise ArtifactError(f"{onnx_path}: OpenCV DNN {how} loading or running it: {tail}")
        with np.load(y) as z:
            out = {k: z[k].copy() for k in OUTPUT_NAMES}
        out["opencv_version"] = res.stdout.strip()
        return out
