"""`python -m rald_fast.predict --model ARTIFACT INPUT...`: expressions of every face in photos and video.

ARTIFACT is anything `rald_fast.predict.Predictor.load` reads (a training checkpoint, `.onnx`, `.pt2`,
a TensorRT engine). INPUT is image files, folders (searched recursively for images and videos) and
video files. Every face is detected (OpenCV's bundled Haar cascade), cropped square with --margin,
and predicted in batches of --batch-size faces across photos and frames; one row per face goes to
stdout or --output as CSV or JSON lines (docs/PREDICT.md lists the columns).

Bad inputs (unreadable, not an image, a video that cannot be opened, a missing path) give a
`skipped:` line on stderr and an `error` row, and the run goes on; the exit status is then 1.
A photo without a face gives a `no_face` row. A model trained on synthetic faces only says so: a
warning on stderr, a first `# ` line in the CSV (a `note` line in JSON lines) and a banner on every
annotated image. --strict stops at the first bad input with an
`error:` line and exit status 2 (the rows of the inputs before it are written), as does a model
artifact that cannot be loaded. A photo larger than --max-pixels is reported like a bad input.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from tqdm import tqdm

from rald_fast.artifacts import KINDS
from rald_fast.cli import add_device_option, run_cli
from rald_fast.errors import MediaError
from rald_fast.predict.drawing import draw_faces
from rald_fast.predict.faces import DEFAULT_MARGIN, DEFAULT_MIN_FACE, HaarFaceDetector
from rald_fast.predict.media import VideoReader, VideoSink, list_inputs, read_image, write_image
from rald_fast.predict.pipeline import FacePipeline, RowWriter, face_rows
from rald_fast.predict.predictor import Predictor
from rald_fast.preprocess import MAX_PIXELS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rald_fast.predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders, video files")
    p.add_argument("--model", required=True,
                   help="a training checkpoint (.pt), .onnx, .pt2, TorchScript .ts, TensorRT .engine or "
                        "Torch-TensorRT .ep")
    add_device_option(p)
    p.add_argument("--backend", choices=sorted(set(KINDS.values())),
                   help="how to read --model (default: from the file's suffix: " +
                        ", ".join(f"{k} {v}" for k, v in KINDS.items()) + ")")
    p.add_argument("--format", default="csv", choices=["csv", "jsonl"],
                   help="rows as CSV (one header line) or JSON lines, one per face (default csv)")
    p.add_argument("--output", help="write rows to this file instead of stdout")
    p.add_argument("--topk", type=int, default=3, help="probabilities kept per face (default 3)")
    p.add_argument("--batch-size", type=int, default=32,
                   help="faces per predictor call, across photos and frames (default 32)")
    p.add_argument("--margin", type=float, default=DEFAULT_MARGIN,
                   help=f"crop margin per side, fraction of the face box (default {DEFAULT_MARGIN})")
    p.add_argument("--min-face", type=int, default=DEFAULT_MIN_FACE,
                   help=f"smallest face side to find, in pixels of the photo, whatever its size (default "
                        f"{DEFAULT_MIN_FACE}; faces under 24 px are never found; smaller values cost more "
                        f"time on large photos: docs/PREDICT.md)")
    p.add_argument("--max-pixels", type=float, default=MAX_PIXELS / 1e6, metavar="MP",
                   help=f"largest photo decoded, in megapixels (default {MAX_PIXELS / 1e6:g}); a larger one "
                        f"is reported and skipped")
    p.add_argument("--no-detect", action="store_true",
                   help="each image is already one aligned face crop (RAF-DB 'aligned' style)")
    p.add_argument("--every", type=int, default=1, help="video: every N-th frame (default 1)")
    p.add_argument("--annotate", metavar="DIR",
                   help="write copies with boxes and labels drawn (an .mp4 for each video)")
    p.add_argument("--strict", action="store_true", help="stop at the first bad input (exit 2)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def check_args(args) -> None:
    for name, low in (("topk", 1), ("batch_size", 1), ("min_face", 1), ("every", 1)):
        if getattr(args, name) < low:
            raise ValueError(f"--{name.replace('_', '-')} must be >= {low}, "
                             f"got {getattr(args, name)}")
    if args.margin < 0:
        raise ValueError(f"--margin must be >= 0, got {args.margin}")
    if not args.max_pixels > 0:
        raise ValueError(f"--max-pixels must be > 0, got {args.max_pixels}")
    if not Path(args.model).exists():
        raise FileNotFoundError(f"--model {args.model}: no such file")
    if args.annotate and Path(args.annotate).exists() and not Path(args.annotate).is_dir():
        raise ValueError(f"--annotate {args.annotate}: exists and is not a folder")


class Annotator:
    """Where drawn copies go: DIR/<input name> for photos, DIR/<input name>.mp4 for video."""

    def __init__(self, root: Path):
        self.root, self.used = root, set()

    def path_for(self, name: Path, video: bool) -> Path:
        path = self.root / (name.with_suffix(".mp4") if video else name)
        if not video and path.suffix.lower() not in (".jpg", ".jpeg", ".png"):
            path = path.with_suffix(".png")
        stem, n = path, 1
        while path in self.used:  # same name from two folders
            path, n = stem.with_name(f"{stem.stem}_{n}{stem.suffix}"), n + 1
        self.used.add(path)
        return path


class PredictRun:
    """One run of the command: inputs in, rows (and drawn copies) out, failures counted."""

    def __init__(self, args, predictor, writer, annotator: Annotator | None):

        detector = None if args.no_detect else HaarFaceDetector(min_face=args.min_face)
        self.args, self.writer, self.annotator = args, writer, annotator
        self.banner = "model trained on synthetic faces only: labels not meaningful" if predictor.synthetic else None
        self.pipe = FacePipeline(predictor, self.emit, detector, args.margin, args.topk,
                                 args.batch_size, keep_images=annotator is not None)
        self.failed: list[str] = []
        self.counts = {"photos": 0, "videos": 0, "frames": 0}
        self.no_bar = True if args.no_progress else None  # None: bars on a terminal only

    def emit(self, frame) -> None:

        t0 = time.perf_counter()
        for row in face_rows(frame):
            self.writer.write(row)
        if self.annotator is not None and frame.image is not None:
            drawn = draw_faces(frame.image, frame.results, self.banner)
            if isinstance(frame.tag, VideoSink):
                frame.tag.write(drawn)
            else:
                write_image(frame.tag, drawn)
        self.pipe.seconds["write"] += time.perf_counter() - t0

    def fail(self, source: str, message: str) -> None:

        if self.args.strict:
            self.pipe.flush()  # the rows of the inputs before this one are written, then the run stops
            raise MediaError(message)
        print(f"skipped: {message}", file=sys.stderr)
        self.failed.append(source)
        self.pipe.add_error(source, message)

    def run(self, inputs) -> None:
        for item in tqdm(inputs, desc="inputs", unit="file",
                         disable=True if len(inputs) < 2 else self.no_bar):
            if item.kind == "missing":
                self.fail(str(item.path), item.problem)
            elif item.kind == "image":
                self.run_image(item)
            else:
                self.run_video(item)
        self.pipe.flush()

    def run_image(self, item) -> None:

        t0 = time.perf_counter()
        try:
            image = read_image(item.path, int(self.args.max_pixels * 1e6))
        except MediaError as e:
            return self.fail(str(item.path), str(e))
        self.pipe.seconds["decode"] += time.perf_counter() - t0
        tag = self.annotator.path_for(item.name, video=False) if self.annotator else None
        self.pipe.add(str(item.path), 0, image, tag)
        self.counts["photos"] += 1

    def run_video(self, item) -> None:

        every = self.args.every
        try:
            reader = VideoReader(item.path, every)
        except MediaError as e:
            return self.fail(str(item.path), str(e))
        self.counts["videos"] += 1
        sink = None
        if self.annotator is not None:
            sink = VideoSink(self.annotator.path_for(item.name, video=True),
                             max(reader.fps / every, 1.0))
        total = reader.frame_count and -(-reader.frame_count // every)
        try:
            t0 = time.perf_counter()
            for index, frame in tqdm(reader, desc=item.path.name, unit="frame", total=total,
                                     leave=False, disable=self.no_bar):
                self.pipe.seconds["decode"] += time.perf_counter() - t0
                self.pipe.add(str(item.path), index, frame, sink)
                self.counts["frames"] += 1
                t0 = time.perf_counter()
            self.pipe.flush()  # this video's frames reach its sink before the sink closes
        finally:
            if sink is not None:
                sink.close()

    def summary(self) -> str:
        c, s = self.counts, sum(self.pipe.seconds.values())
        return (f"{self.pipe.faces} face(s) in {c['photos']} photo(s) and {c['videos']} video(s) "
                f"({c['frames']} frames); {s:.1f} s")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_args(args)

    predictor = Predictor.load(args.model, device=args.device, backend=args.backend)
    note = predictor.provenance_note()
    if note:
        print(f"warning: {note}", file=sys.stderr)
    inputs = list_inputs(args.inputs)
    annotator = Annotator(Path(args.annotate)) if args.annotate else None
    with ExitStack() as stack:
        stream = (stack.enter_context(open(args.output, "w", newline="", encoding="utf-8"))
                  if args.output else sys.stdout)
        run = PredictRun(args, predictor, RowWriter(stream, args.format, args.topk, note), annotator)
        run.run(inputs)
    print(run.summary(), file=sys.stderr)
    if annotator is not None:
        print(f"annotated copies in {annotator.root}", file=sys.stderr)
    if run.failed:
        shown = ", ".join(run.failed[:5]) + (" ..." if len(run.failed) > 5 else "")
        print(f"{len(run.failed)} input(s) could not be read: {shown}", file=sys.stderr)
        return 1
    return 0


def cli() -> int:
    """Console-script entry point: `main` with user errors reported as one line (exit 2)."""

    return run_cli(main)
