"""From a config to decoded data: the dataset directory and the train/test splits of a run.

`dataset_root` finds (or, for the synthetic data, generates and caches) the dataset directory;
`build_data` reads the taxonomy and decodes both splits through the one decode path of
`rald_fast.data.dataset` (once, into the shared decoded cache of `rald_fast.data.cache`, unless
--no-decoded-cache), reporting bad images, skips and duplicates.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from rald_fast.config import Config
from rald_fast.data.cache import default_cache_dir, load_cached_split
from rald_fast.data.dataset import (Split, SplitList, class_balanced_weights, load_split, report_duplicates,
                                    split_list)
from rald_fast.data.readers import default_taxonomy, split_source
from rald_fast.data.synthetic import SyntheticConfig, generate, is_synthetic_dir
from rald_fast.hierarchy import Taxonomy, load_taxonomy

log = logging.getLogger(__name__)


@dataclass
class Data:
    """A run's taxonomy, decoded train and test splits, the dataset directory and its kind (`--data`)."""

    taxonomy: Taxonomy
    train: Split
    test: Split
    root: Path
    kind: str = "labelfile"

    def provenance(self) -> dict:
        """What a model trained on this data was trained on; checkpoints and artifacts carry it."""
        return provenance_of(self.kind, self.root, self.taxonomy.name, len(self.train), len(self.test))


def provenance_of(kind: str, root, taxonomy: str, train: int, test: int) -> dict:
    synthetic = kind == "synthetic"
    what = ("synthetic faces drawn by rald_fast (no real photographs): predictions on real faces mean "
            "nothing" if synthetic else f"{kind} data from {root}")
    return {"data": kind, "synthetic": synthetic, "root": str(root), "taxonomy": taxonomy,
            "train_images": train, "test_images": test, "description": what}


def dataset_root(cfg: Config, taxonomy: Taxonomy | None) -> Path:
    """The dataset directory: train.csv / test.csv for synthetic (generated or found cached) and
    labelfile data, the dataset's own layout for the readers (docs/DATASETS.md)."""
    d = cfg.data
    if d.data == "synthetic":
        if taxonomy is None or taxonomy.is_flat:
            raise ValueError("--data synthetic needs a hierarchical --taxonomy (fine -> coarse)")
        scfg = SyntheticConfig(image_size=d.image_size, train_per_class=d.synth_train_per_class,
                               test_per_class=d.synth_test_per_class, flip_prob=d.synth_flip_prob,
                               seed=d.synth_seed, difficulty=d.synth_difficulty,
                               fine_offset_scale=d.synth_fine_offset,
                               taxonomy=taxonomy.children())
        if d.data_root:
            check_synthetic_root(Path(d.data_root))
        return generate(scfg, Path(d.data_root) if d.data_root else None)
    if not d.data_root:
        what = "holding train.csv and test.csv" if d.data == "labelfile" else \
            "(its layouts: docs/DATASETS.md)"
        raise ValueError(f"--data {d.data} needs --data-root DIR {what}")
    root = Path(d.data_root)
    if d.data != "labelfile" and not root.is_dir():
        raise ValueError(f"--data-root {root}: no such directory")
    return root


def check_synthetic_root(root: Path) -> None:
    """With --data synthetic, --data-root is only where the generated faces are cached: refuse a folder
    holding anything else (a user's own images), which the generator would write into."""
    if not root.is_dir():
        if root.exists():
            raise ValueError(f"--data-root {root}: exists and is not a folder")
        return
    foreign = [p for p in sorted(root.iterdir()) if not p.name.startswith(".") and p.name != "decoded"
               and not is_synthetic_dir(p)]
    if foreign:
        raise ValueError(f"--data-root {root} holds files that are not rald_fast's synthetic data (e.g. "
                         f"{foreign[0].name}); with --data synthetic (the default) it is only the cache of "
                         f"generated faces. For your own images pass --data folder (or labelfile, rafdb, "
                         f"affectnet, fgemotions: docs/DATASETS.md); for the synthetic data name an empty "
                         f"or cache folder")


def check_classes(taxonomy: Taxonomy, train: Split, root) -> None:
    """A classifier needs two classes: in the taxonomy, and present in the training split."""
    if taxonomy.num_fine < 2:
        raise ValueError(f"taxonomy {taxonomy.name!r} has {taxonomy.num_fine} fine label(s) "
                         f"({', '.join(taxonomy.fine)}): a classifier needs two or more")
    present = sorted({int(y) for y in train.labels.tolist()})
    if len(present) < 2:
        only = taxonomy.fine[present[0]] if present else "none"
        raise ValueError(f"the training split of {root} holds images of {len(present)} class ({only}) of the "
                         f"taxonomy's {taxonomy.num_fine}: nothing can be learned from it")


def decoded_cache_dir(cfg: Config) -> Path | None:
    """Where the decoded splits are cached (`--cache-dir`), or None with --no-decoded-cache."""
    if not cfg.data.decoded_cache:
        return None
    return Path(cfg.data.cache_dir) if cfg.data.cache_dir else default_cache_dir()


def decode_split(source: str | Path | SplitList, taxonomy: Taxonomy, image_size: int, progress: bool = False,
                 on_bad_image: str = "fail", workers: int = 0, cache_dir: str | Path | None = None) -> Split:
    """A split decoded once into the memory-mapped cache in `cache_dir` and mapped (`cache.load_cached_split`:
    later runs and the other processes on the node map the same file), or, with `cache_dir` None, into
    this process's memory (`dataset.load_split`)."""
    lst = split_list(source, taxonomy)
    if cache_dir is None:
        return load_split(lst, taxonomy, image_size, progress, on_bad_image, workers)
    return load_cached_split(lst, image_size, cache_dir, progress, on_bad_image, workers)


def build_data(cfg: Config) -> Data:
    """Taxonomy and decoded train/test splits; bad images, duplicates and skips are reported."""
    d = cfg.data
    if d.data in ("synthetic", "labelfile"):  # the generator needs the taxonomy first
        taxonomy = load_taxonomy(d.taxonomy or "fg-emotions")
        root = dataset_root(cfg, taxonomy)
    else:
        root = dataset_root(cfg, None)
        taxonomy = default_taxonomy(d, root)
    splits = {}
    for which in ("train", "test"):
        policy = d.on_bad_image if d.on_bad_image != "auto" else \
            ("skip" if which == "train" else "fail")
        splits[which] = decode_split(split_source(d, taxonomy, which, root), taxonomy, d.image_size,
                                   cfg.run.progress, on_bad_image=policy, workers=d.workers,
                                   cache_dir=decoded_cache_dir(cfg))
    check_classes(taxonomy, splits["train"], root)
    report_duplicates(splits)
    skipped = {w: len(s.skipped) for w, s in splits.items() if s.skipped}
    if skipped:
        log.warning("data: skipped %s undecodable image(s) (%s)", sum(skipped.values()),
                    ", ".join(f"{w} {n}" for w, n in skipped.items()))
    if d.balanced:
        splits["train"].sample_weights = class_balanced_weights(splits["train"].labels,
                                                                taxonomy.num_fine)
    log.info("data %s: %s train / %s test images, taxonomy %s (%d fine labels)", d.data,
             len(splits["train"]), len(splits["test"]), taxonomy.name, taxonomy.num_fine)
    return Data(taxonomy, splits["train"], splits["test"], root, d.data)
