"""RALD builds, trains and exports on the GPU machine's image, which lacks some of setup.py's packages.

The device image (bench/device_image_packages.txt, from the device tool's KINDS.md) has no gensim,
smart_open, TensorRT, Torch-TensorRT or pycuda. This test hides exactly what setup.py needs and the
image lacks, then runs the default model's build, one training epoch and an ONNX export in a fresh
interpreter: a bundled label-vector table must not need gensim.
"""

import subprocess
import sys
import textwrap
from pathlib import Path

from bench.device_image import missing_on_device

ROOT = Path(__file__).resolve().parents[1]


def test_the_hidden_set_is_what_the_device_lacks():
    missing = missing_on_device()
    assert {"gensim", "smart_open", "tensorrt", "torch_tensorrt", "pycuda"} <= set(missing), missing
    assert "torch" not in missing and "onnxruntime" not in missing and "cv2" not in missing


def test_rald_builds_trains_and_exports_without_the_packages_the_device_lacks(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        from bench.device_image import hide_missing
        hide_missing()                        # importing them fails, as on the device image
        from rald_fast.config import make_config
        from rald_fast.train.loop import fit
        from rald_fast.export.build import main as export_main
        fit(make_config("tiny", "rald", out={str(tmp_path / 'run')!r}, epochs=1, synth_train_per_class=1,
                        synth_test_per_class=1, batch_size=16, cache_dir={str(tmp_path / 'cache')!r}))
        assert "gensim" not in sys.modules or sys.modules["gensim"] is None
        sys.exit(export_main(["--checkpoint", {str(tmp_path / 'run' / 'last.pt')!r}, "--formats", "onnx",
                              "--out", {str(tmp_path / 'out')!r}]))
    """)
    res = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert list((tmp_path / "out").glob("*.onnx")), res.stdout
