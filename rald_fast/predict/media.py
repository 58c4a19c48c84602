"""Reading the inputs of `python -m rald_fast.predict`: images, folders, video; writing video.

An input is a file or a folder; folders are searched recursively for image and video extensions
(in sorted order, hidden files skipped). A file given by name is a video when its extension says so
and an image otherwise, so a mislabelled file is still tried and reported with the decoder's reason.
Images are decoded with PIL and turned upright by their EXIF orientation (phone photos), so boxes
refer to the photo as viewers show it. Video is read with OpenCV (`cv2.VideoCapture`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from rald_fast.errors import DataError, MediaError
from rald_fast.preprocess import IMAGE_SUFFIXES, MAX_PIXELS, open_rgb

VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg",
                              ".wmv", ".flv"})


@dataclass(frozen=True)
class Input:
    path: Path
    kind: str   # "image", "video", or "missing" (then `problem` says why)
    name: Path  # relative name for outputs: file name, or folder name / path inside the folder
    problem: str | None = None


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


def list_inputs(specs: list[str]) -> list[Input]:
    """Files in the order given (a folder's in sorted order); a spec naming nothing is `missing`."""
    inputs = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*")
                           if p.is_file() and not any(part.startswith(".") for part in
                                                      p.relative_to(path).parts)
                           and p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_EXTENSIONS)
            if not found:
                inputs.append(Input(path, "missing", Path(path.name),
                                    f"{path}: folder holds no image or video files"))
            inputs += [Input(p, "video" if is_video(p) else "image",
                             Path(path.resolve().name) / p.relative_to(path)) for p in found]
        elif path.is_file():
            inputs.append(Input(path, "video" if is_video(path) else "image", Path(path.name)))
        else:
            inputs.append(Input(path, "missing", Path(path.name), f"{path}: no such file or folder"))
    return inputs


def read_image(path: Path, max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    """(H, W, 3) uint8 RGB, EXIF-upright, decoded as training decodes (`rald_fast.preprocess.open_rgb`);
    MediaError names the file (also for a photo over `max_pixels`)."""
    try:
        return np.asarray(open_rgb(path, max_pixels=max_pixels), dtype=np.uint8)
    except DataError as e:
        raise MediaError(str(e)) from None


class VideoReader:
    """Frames of a video file as (index, (H, W, 3) uint8 RGB), every `every`-th frame.

    Opening checks that the file is a video OpenCV can decode (MediaError otherwise), so a bad file
    is reported before any of its frames is queued.
    """

    def __init__(self, path: Path, every: int = 1):
        import cv2

        if every < 1:
            raise ValueError(f"--every must be >= 1, got {every}")
        self.path, self.every = path, every
        if not path.is_file():
            raise MediaError(f"{path}: no such file")
        # FFmpeg alone: the any-backend default also tries the file as an image sequence
        api = cv2.CAP_FFMPEG if cv2.videoio_registry.hasBackend(cv2.CAP_FFMPEG) else cv2.CAP_ANY
        self._cap = cv2.VideoCapture(str(path), api)
        ok, first = self._cap.read() if self._cap.isOpened() else (False, None)
        if not ok:
            self._cap.release()
            raise MediaError(f"{path}: cannot open as a video (not a video, or a codec OpenCV "
                             "lacks)")
        self._first = first
        self.fps = self._cap.get(cv2.CAP_PROP_FPS) or 25.0
        n = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT))
        self.frame_count = n if n > 0 else None  # containers may not say, or say wrongly

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        import cv2

        index, frame = 0, self._first
        try:
            while frame is not None:
                if index % self.every == 0:
                    yield index, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                ok, frame = self._cap.read()
                frame = frame if ok else None
                index += 1
        finally:
            self._cap.release()


class VideoSink:
    """An annotated copy of a video (MPEG-4 Part 2, `mp4v`), opened at its first frame."""

    def __init__(self, path: Path, fps: float):
        self.path, self.fps, self._writer = path, fps, None

    def write(self, frame: np.ndarray) -> None:
        import cv2

        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            h, w = frame.shape[:2]
            self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"),
                                           self.fps, (w, h))
            if not self._writer.isOpened():
                raise MediaError(f"{self.path}: cannot write an mp4v video here")
        self._writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None


def write_image(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
