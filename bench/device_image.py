"""What the GPU machines' image lacks of what setup.py requires, and hiding it to simulate that image.

The image's package list is bench/device_image_packages.txt (from the device tool's KINDS.md). Used by
tests/test_device_image.py (RALD builds, trains and exports without those packages) and by the dry
runs of bench/gpu_headline.py and bench/gpu_suite.py (which hide the same packages).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGE = ROOT / "bench" / "device_image_packages.txt"
# import names of distributions, where they differ (and the libraries those pull in)
IMPORT_NAMES = {"opencv-python-headless": ["cv2"], "pillow": ["PIL"], "pyyaml": ["yaml"],
                "scikit-learn": ["sklearn"], "scikit-image": ["skimage"], "gensim": ["gensim", "smart_open"],
                "torch-tensorrt": ["torch_tensorrt"], "pytest-benchmark": ["pytest_benchmark"],
                "pytest-timeout": ["pytest_timeout"]}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def image_packages() -> set[str]:
    return {_norm(x) for x in IMAGE.read_text().splitlines() if x.strip() and not x.startswith("#")}


def declared() -> set[str]:
    """Every distribution setup.py requires (install_requires and extras): each has a version range."""
    text = (ROOT / "setup.py").read_text()
    found = re.findall(r'"([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?\s*[<>=!~][^"]*"', text)
    return {_norm(m) for m in found if not m.startswith("rald-")}  # not the console scripts' "name = module"


def missing_on_device() -> list[str]:
    """Import names of what setup.py requires and the device image lacks."""
    return sorted(n for d in declared() - image_packages() for n in IMPORT_NAMES.get(d, [d.replace("-", "_")]))


def hide_missing() -> list[str]:
    """Make importing each missing package fail in this process, as on the device; returns their names."""
    names = missing_on_device()
    for name in names:
        sys.modules[name] = None
    return names
