"""Typed configuration: nested dataclasses, presets, command-line overrides.

Every hyper-parameter of the paper (section 4.3.2, the training setup; docs/DESIGN.md compares
`--preset paper` with it row by row) is a field here, with its default and a one-line description
(the field's `help` metadata, which is the option's `--help` text). The command line exposes each
field as `--field-name` (field names are unique across sections); unknown options are rejected by
argparse, and the resolved config is saved beside every run and inside every checkpoint.

Two kinds of preset combine:
- a schedule preset (`--preset`): `quick` (the default: trains on the built-in synthetic data on a
  2-core CPU in minutes) or `paper` (section 4.3.2 of the paper: batch 128, SGD 0.9, lr 0.01,
  300 epochs, step every 100);
- a model variant (`--variant`): which of ITRR / HLRR / LGIFO / NNLDL are on (Table 3 rows a-g, the
  full model `rald`, and `rald-l` for flat label sets).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import textwrap
from dataclasses import dataclass, field, fields
from typing import Any, Optional, get_type_hints

from rald_fast.device import parse_device


def _opt(default: Any, doc: str) -> Any:
    """A config field with a one-line description `doc` (its `--help` text); the default is unchanged."""
    return field(default=default, metadata={"help": doc})


@dataclass
class ModelConfig:
    backbone_weights: Optional[str] = _opt(
        None, "local ResNet18 state-dict file for the backbone (none: random init, as in the paper's 4.3.2)")
    dim: int = _opt(512, "model dim D = ResNet18's pooled feature size")
    heads: int = _opt(8, "attention heads h of ITRR, HLRR and LGIFO; D / h = 64 per head")
    scale: float = _opt(0.125, "lambda of eqs. (4), (8), (14): attention logit scale, 1/sqrt(D/h)")
    sigma: int = _opt(500, "distance given to two labels with no path between them in the label hierarchy "
                           "(xi of eq. (9)); HLRR's bias table has sigma + 1 entries")
    itrr: bool = _opt(True, "ITRR: each image attends to the other images of its batch (image topological "
                            "relations, eqs. (3)-(7))")
    hlrr: bool = _opt(True, "HLRR: the label tokens attend to each other, biased by their distance in the "
                            "label hierarchy (hierarchy-aware label relations, eqs. (8)-(12)); needs --lgifo")
    lgifo: bool = _opt(True, "LGIFO: each image attends to the label tokens to refine its features "
                             "(label-guided image feature optimisation, eqs. (13)-(17))")
    hierarchy_bias: bool = _opt(True, "HLRR's learnable bias by label distance in the hierarchy (b[xi] of eq. (8)); "
                                      "off for flat label sets (RALD-L)")
    # the paper's blocks (eqs. 7, 12, 17) add none; without it RALD does not train (docs/DESIGN.md)
    input_residual: bool = _opt(
        True, "add each attention block's input to M (the paper adds none: docs/DESIGN.md, 'The input residual')")
    dropout: float = _opt(0.1, "dropout inside the FFN of the attention blocks")
    label_vectors: str = _opt(
        "glove50", "label word vectors S of eq. (2): glove50 | spacy300 (bundled) | onehot | a vectors file")
    xi_reading: str = _opt(
        "spd", "eq. (9): spd = shortest path for every reachable pair (siblings 2) | literal = along an edge only")
    # ITRR's relation R_v (eqs. 3-5) as a learnable similarity: SPEC 3.1, docs/DESIGN.md "ITRR's relation"
    itrr_qk_norm: bool = _opt(
        False, "ITRR: W_Q and W_K read an affine-free batch normalisation of F (running statistics at "
               "inference), so no image scores high for every query; W_V reads F as before")
    itrr_tied_init: bool = _opt(False, "ITRR: initialise W_K equal to W_Q (R_v starts as a symmetric similarity)")
    itrr_temperature_cap: float = _opt(
        0.0, "ITRR: learnable temperature exp(t) on R_v's logits, t from 0, capped at this value (0: none)")


@dataclass
class LossConfig:
    nnldl: bool = _opt(True, "NNLDL: each image's prediction is also pulled toward the predictions of its k most "
                             "related batch-mates (nearest-neighbour label distribution loss, eqs. (18)-(19)); "
                             "needs --itrr")
    k: int = _opt(5, "neighbours per image in NNLDL's target D, eq. (18) (Fig. 6 sweeps it)")
    nnldl_weight: float = _opt(1.0, "weight of L_KL in L = CE + weight * L_KL (eq. (21) uses 1)")
    # the paper does not say; docs/DESIGN.md reads D of eq. (18) as a stop-gradient target
    nnldl_grad: bool = _opt(False, "let gradients flow through NNLDL's target D (off: stop-gradient)")
    nnldl_relation_grad: bool = _opt(
        False, "let L_KL's gradient reach the relation through the neighbour weights r of eq. (18) only "
               "(the neighbours' predictions stay a target); --nnldl-grad already includes it")
    nnldl_normaliser: str = _opt(
        "printed", "eq. (19)'s normaliser: printed = 1 / (N C_f) | image = 1 / N (a per-image KL-style average)")
    nnldl_bank: int = _opt(0, "size M of NNLDL's memory: also draw neighbours from the last M training "
                              "images (0: the batch only)")
    nnldl_relation: str = _opt(
        "attention", "what ranks NNLDL neighbours: attention (R_v as printed: ITRR's head-mean softmax) | "
                     "symmetric (R_v + R_v^T) | cosine-f (backbone features F) | cosine-ftilde (ITRR output)")
    nnldl_tau: float = _opt(0.1, "temperature of the cosine relations' softmax neighbour weights")
    nnldl_warmup: int = _opt(0, "epochs of CE alone before L_KL starts")


@dataclass
class DataConfig:
    data: str = _opt("synthetic", "dataset: synthetic | labelfile | rafdb | affectnet | fgemotions | folder")
    data_root: Optional[str] = _opt(
        None, "dataset directory (docs/DATASETS.md); synthetic data: its cache (none: $RALD_FAST_CACHE or ~/.cache)")
    taxonomy: Optional[str] = _opt(
        None, "label taxonomy: built-in name or JSON/YAML file (none: the dataset's own, e.g. fg-emotions)")
    image_size: int = _opt(40, "side of the square network input in pixels (the paper states none)")
    synth_train_per_class: int = _opt(60, "synthetic data: training images per fine class")
    synth_test_per_class: int = _opt(20, "synthetic data: test images per fine class")
    synth_flip_prob: float = _opt(0.1, "synthetic data: share of training labels flipped to a near class")
    synth_seed: int = _opt(0, "synthetic data: generation seed (the class prototypes do not depend on it)")
    synth_difficulty: float = _opt(0.2, "synthetic data: scales identity/pose/lighting/occlusion nuisance")
    synth_fine_offset: float = _opt(2.0, "synthetic data: scales the differences between fine classes of a group")
    hflip: bool = _opt(True, "random horizontal flip of training images")
    shift: float = _opt(0.0625, "random translation of training images, as a share of the side (reflect-pad "
                                "and crop; 0: off)")
    rrc_scale: float = _opt(0.0, "random resized crop of training images: smallest area share kept, e.g. 0.6 "
                                 "(aspect 3/4..4/3, resized back to the input size; 0: off)")
    color_jitter: float = _opt(0.0, "colour jitter of training images: brightness, contrast and saturation "
                                    "factors in [1 - S, 1 + S] (0: off)")
    random_erasing: float = _opt(0.0, "random erasing: probability that a training image gets a rectangle "
                                      "(2-33 % of its area) set to the mean colour (0: off)")
    workers: int = _opt(0, "image decode threads (0: this thread; each split is decoded once, see --decoded-cache)")
    decoded_cache: bool = _opt(
        True, "decode each split once into a memory-mapped file that later runs and every process on the "
              "node share (off: decode into this process's memory)")
    cache_dir: Optional[str] = _opt(
        None, "directory of the decoded-image cache (none: $RALD_FAST_CACHE/decoded, else "
              "~/.cache/rald_fast/decoded)")
    loader_workers: int = _opt(0, "DataLoader worker processes that gather training batches from the decoded "
                                  "images (0: in the training process)")
    train_split: str = _opt("auto", "training split name; auto = train (AffectNet: training|train_set)")
    test_split: str = _opt("auto", "test split name; auto = test or val (AffectNet: validation|val_set)")
    on_bad_image: str = _opt("auto", "undecodable image: skip | fail; auto = skip in training, fail in test")
    balanced: bool = _opt(False, "class-balanced sampling of the training split (AffectNet)")
    affectnet_classes: int = _opt(
        7, "AffectNet classes: 7 (drop contempt) or 8; codes 8-10 (none, uncertain, no face) always go")
    rafdb_images: str = _opt(
        "aligned", "RAF-DB images: aligned (Image/aligned) | original (Image/original, uncropped)")


@dataclass
class OptimConfig:
    epochs: int = _opt(5, "training epochs")
    batch_size: int = _opt(64, "training batch size (global under torchrun; ITRR and NNLDL relate its images)")
    lr: float = _opt(0.05, "SGD learning rate of the backbone and the fine head (what RALD adds: lr x --attn-lr-mult)")
    momentum: float = _opt(0.9, "SGD momentum (the paper states none: docs/DESIGN.md)")
    # the paper's "衰减系数为5e-3" read as weight decay: docs/DESIGN.md
    weight_decay: float = _opt(5e-4, "SGD weight decay (the paper's 'decay coefficient 5e-3': docs/DESIGN.md)")
    lr_step: int = _opt(4, "multiply the lr by lr-gamma every lr-step epochs")
    lr_gamma: float = _opt(0.1, "multiplicative lr decay of each step")
    attn_lr_mult: float = _opt(
        0.1, "lr multiplier of what RALD adds to ResNet18 (ITRR, HLRR, LGIFO, the label projection, the bias "
             "table); the backbone and the fine head train at --lr in every variant (docs/DESIGN.md)")
    relation_lr_mult: float = _opt(
        -1.0, "lr multiplier of ITRR's relation (W_Q, W_K, the temperature); -1: as --attn-lr-mult")


@dataclass
class RunConfig:
    out: str = _opt("runs/rald", "output directory of the run (config, metrics, checkpoints)")
    seed: int = _opt(0, "seed of model init, batch order, augmentation and the test batch order")
    device: str = _opt("auto", "auto (cuda if available) | cpu | cuda | cuda:N")
    eval_every: int = _opt(1, "epochs between test evaluations (the last epoch is always evaluated)")
    eval_batch_size: int = _opt(64, "test batch size (ITRR mixes the images of a batch: it matters)")
    threads: int = _opt(0, "torch CPU threads (0: torch's default)")
    channels_last: bool = _opt(True, "NHWC convolutions: about 2x faster on a CPU and on GPUs")
    progress: bool = _opt(True, "tqdm progress bars")
    amp: str = _opt("none", "autocast of forward + loss: none | bf16 | fp16 (fp16 adds a grad scaler)")
    compile: bool = _opt(False, "torch.compile the backbone and the head of the training step")
    pin_memory: bool = _opt(True, "CUDA: pinned host batches, non-blocking copies")
    reference_bank: int = _opt(
        -1, "ITRR reference bank (batch-independent inference) saved with the final checkpoint: M training "
            "images; -1 = batch size - 1, 0 = none")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    preset: str = "quick"
    variant: str = "rald"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        """The config saved as `d` (a checkpoint's, a run's config.json). A key that a saved config lacks
        was added later: it takes the value that reproduces what that run trained (`SAVED_BEFORE`), so
        an older checkpoint still loads into the model it was."""
        cfg = cls()
        for section in ("model", "loss", "data", "optim", "run"):
            sub = getattr(cfg, section)
            known = {f.name for f in fields(sub)}
            saved = d.get(section, {})
            unknown = set(saved) - known
            if unknown:
                raise ValueError(f"unknown config keys in section {section!r}: {sorted(unknown)}")
            for k, v in {**{k: v for k, v in SAVED_BEFORE.items() if k in known}, **saved}.items():
                setattr(sub, k, v)
        cfg.preset, cfg.variant = d.get("preset", "quick"), d.get("variant", "rald")
        return cfg


# what options added on 2026-12-06 did before they existed: configs saved earlier lack them
SAVED_BEFORE: dict[str, Any] = dict(itrr_qk_norm=False, itrr_tied_init=False, itrr_temperature_cap=0.0,
                                    nnldl_relation_grad=False, nnldl_normaliser="printed", relation_lr_mult=-1.0)

# --- presets ---------------------------------------------------------------------------------
SCHEDULES: dict[str, dict[str, Any]] = {
    # the no-argument run, and the dataclass defaults above: synthetic data, 2-core CPU, a few minutes;
    # also the budget (with --epochs 12 --lr-step 9) of the multi-seed study in docs/RESULTS.md
    "quick": {},
    # the paper's training setup, section 4.3.2 (what it leaves open: docs/DESIGN.md, `--preset paper`)
    "paper": dict(epochs=300, batch_size=128, lr=0.01, lr_step=100, lr_gamma=0.1, weight_decay=5e-3,
                  attn_lr_mult=1.0, image_size=224, eval_batch_size=128, synth_difficulty=1.0,
                  synth_fine_offset=1.0),
    # for tests: seconds
    "tiny": dict(epochs=2, batch_size=16, lr=0.01, lr_step=100, weight_decay=5e-3, attn_lr_mult=1.0,
                 image_size=32, synth_train_per_class=3, synth_test_per_class=2, synth_difficulty=1.0,
                 synth_fine_offset=1.0, eval_batch_size=16, progress=False),
}

# options that decide where and how a run executes, never what it learns: the experiments share a run
# whatever they are (common.config_hash), and a resumed run may change them
RUN_ONLY = frozenset({"out", "threads", "device", "progress", "eval_every", "pin_memory", "decoded_cache",
                      "cache_dir", "loader_workers", "workers"})
# a resumed run may also extend its schedule or switch its numerics; everything else is the checkpoint's
RESUME_OVERRIDABLE = RUN_ONLY | {"epochs", "amp", "compile"}

AMP_MODES = ("none", "bf16", "fp16")  # --amp: autocast dtype of the training step
XI_READINGS = ("spd", "literal")      # --xi-reading, eq. (9)
NNLDL_RELATIONS = ("attention", "symmetric", "cosine-f", "cosine-ftilde")  # --nnldl-relation
NNLDL_NORMALISERS = ("printed", "image")  # --nnldl-normaliser, eq. (19)
ITRR_MODES = ("batch", "bank", "self")  # ITRR context at inference (RALD.head_outputs, --itrr-mode)

# Table 3 of the paper: which modules are on. (a) is the bare ResNet18.
VARIANTS: dict[str, dict[str, bool]] = {
    "a": dict(itrr=False, hlrr=False, lgifo=False, nnldl=False),
    "b": dict(itrr=True, hlrr=False, lgifo=False, nnldl=False),
    "c": dict(itrr=True, hlrr=False, lgifo=False, nnldl=True),
    "d": dict(itrr=False, hlrr=False, lgifo=True, nnldl=False),
    "e": dict(itrr=True, hlrr=False, lgifo=True, nnldl=False),
    "f": dict(itrr=False, hlrr=True, lgifo=True, nnldl=False),
    "g": dict(itrr=True, hlrr=True, lgifo=True, nnldl=False),
    "rald": dict(itrr=True, hlrr=True, lgifo=True, nnldl=True),
    # flat label sets (RAF-DB, AffectNet): HLRR keeps its attention but has no hierarchy bias
    "rald-l": dict(itrr=True, hlrr=True, lgifo=True, nnldl=True, hierarchy_bias=False),
}
VARIANTS["baseline"] = VARIANTS["a"]


def sections(cfg: Config) -> list:
    """The five option groups of `cfg` (model, loss, data, optim, run), in that order."""
    return [cfg.model, cfg.loss, cfg.data, cfg.optim, cfg.run]


def set_option(cfg: Config, key: str, value: Any) -> None:
    for sub in sections(cfg):
        if key in {f.name for f in fields(sub)}:
            setattr(sub, key, value)
            return
    raise KeyError(key)


def make_config(preset: str = "quick", variant: str = "rald", **overrides) -> Config:
    """Defaults, then the schedule preset, then the variant, then explicit overrides."""
    if preset not in SCHEDULES:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(SCHEDULES)}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    cfg = Config(preset=preset, variant=variant)
    for k, v in {**SCHEDULES[preset], **VARIANTS[variant], **overrides}.items():
        try:
            set_option(cfg, k, v)
        except KeyError:
            raise ValueError(f"unknown config key {k!r}") from None
    validate(cfg)
    return cfg


# numbers checked before anything runs: (option, interval); "(0, inf)" excludes 0, "[0, 1)" includes it
_RANGES = {"lr": "(0, inf)", "momentum": "[0, 1)", "weight_decay": "[0, inf)", "lr_gamma": "(0, inf)",
           "dropout": "[0, 1)", "scale": "(0, inf)", "nnldl_weight": "[0, inf)", "nnldl_tau": "(0, inf)",
           "attn_lr_mult": "[0, inf)", "synth_flip_prob": "[0, 1]", "synth_difficulty": "[0, inf)",
           "synth_fine_offset": "[0, inf)"}


def _check_numbers(cfg: Config) -> None:
    """Every float option finite, and each of `_RANGES` in its interval: a NaN lr must not reach step 2."""
    for sub in sections(cfg):
        for f in fields(sub):
            value = getattr(sub, f.name)
            flag = f"--{f.name.replace('_', '-')}"
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{flag} must be a finite number, got {value}")
            interval = _RANGES.get(f.name)
            if interval is None:
                continue
            low, high = (float(x) for x in interval[1:-1].split(","))
            if value < low or value > high or (value == low and interval[0] == "(") or \
                    (value == high and interval[-1] == ")"):
                raise ValueError(f"{flag} must be in {interval}, got {value}")


def validate(cfg: Config) -> None:
    """Reject combinations that cannot run, naming the option to change."""
    _check_numbers(cfg)
    m, lo, o = cfg.model, cfg.loss, cfg.optim
    if m.dim % m.heads:
        raise ValueError(f"--dim {m.dim} must be divisible by --heads {m.heads}")
    if lo.nnldl and not m.itrr:
        raise ValueError("--nnldl needs --itrr: NNLDL ranks neighbours by ITRR's relation R_v")
    if lo.nnldl_bank < 0:
        raise ValueError(f"--nnldl-bank must be >= 0, got {lo.nnldl_bank}")
    if lo.k < 1:
        raise ValueError(f"--k must be >= 1, got {lo.k}")
    if lo.nnldl_relation not in NNLDL_RELATIONS:
        raise ValueError(f"--nnldl-relation must be one of {', '.join(NNLDL_RELATIONS)}, "
                         f"got {lo.nnldl_relation!r}")
    if lo.nnldl_normaliser not in NNLDL_NORMALISERS:
        raise ValueError(f"--nnldl-normaliser must be one of {', '.join(NNLDL_NORMALISERS)}, "
                         f"got {lo.nnldl_normaliser!r}")
    if lo.nnldl_grad and lo.nnldl_relation_grad:
        raise ValueError("--nnldl-relation-grad is part of --nnldl-grad (which also lets the gradient "
                         "through the neighbours' predictions): give one of them")
    if m.itrr_temperature_cap < 0 or (0 < m.itrr_temperature_cap < 1):
        raise ValueError(f"--itrr-temperature-cap must be 0 (none) or >= 1 (the temperature starts at 1), "
                         f"got {m.itrr_temperature_cap}")
    if o.relation_lr_mult < 0 and o.relation_lr_mult != -1:
        raise ValueError(f"--relation-lr-mult must be >= 0 or -1 (as --attn-lr-mult), got {o.relation_lr_mult}")
    if o.attn_lr_mult < 0:
        raise ValueError(f"--attn-lr-mult must be >= 0, got {o.attn_lr_mult}")
    if lo.nnldl_warmup < 0:
        raise ValueError(f"--nnldl-warmup must be >= 0, got {lo.nnldl_warmup}")
    if m.xi_reading not in XI_READINGS:
        raise ValueError(f"--xi-reading must be one of {', '.join(XI_READINGS)}, got {m.xi_reading!r}")
    if m.hlrr and not m.lgifo:
        raise ValueError("--hlrr without --lgifo has no effect: HLRR only feeds LGIFO's keys")
    for name, val in (("epochs", o.epochs), ("batch-size", o.batch_size), ("lr-step", o.lr_step)):
        if val < 1:
            raise ValueError(f"--{name} must be >= 1, got {val}")
    if o.batch_size < 2 and (m.itrr or lo.nnldl):
        raise ValueError(f"--batch-size {o.batch_size}: ITRR relates the images of a batch and NNLDL takes each "
                         "image's neighbours from it, so one image per batch leaves both with nothing to relate; "
                         "use --batch-size 2 or more (or --variant a, the bare ResNet18)")
    if cfg.run.reference_bank < -1:
        raise ValueError(f"--reference-bank must be -1 (batch size - 1), 0 (none) or a size, "
                         f"got {cfg.run.reference_bank}")
    if cfg.run.amp not in AMP_MODES:
        raise ValueError(f"--amp must be one of {', '.join(AMP_MODES)}, got {cfg.run.amp!r}")
    parse_device(cfg.run.device)  # auto, cpu, cuda or cuda:N, as every command's --device
    d = cfg.data
    datasets = ("synthetic", "labelfile", "rafdb", "affectnet", "fgemotions", "folder")
    if d.data not in datasets:
        raise ValueError(f"--data must be one of {', '.join(datasets)}, got {d.data!r}")
    if d.on_bad_image not in ("auto", "skip", "fail"):
        raise ValueError(f"--on-bad-image must be auto, skip or fail, got {d.on_bad_image!r}")
    if d.affectnet_classes not in (7, 8):
        raise ValueError(f"--affectnet-classes must be 7 or 8, got {d.affectnet_classes}")
    for name, val, top in (("shift", d.shift, 0.5), ("rrc-scale", d.rrc_scale, 1.0),
                           ("color-jitter", d.color_jitter, 1.0), ("random-erasing", d.random_erasing, 1.0)):
        if not 0 <= val <= top:
            raise ValueError(f"--{name} must be in [0, {top}] (0: off), got {val}")
    if d.loader_workers < 0 or d.workers < 0:
        raise ValueError(f"--workers and --loader-workers must be >= 0, got {d.workers}, {d.loader_workers}")
    if d.rafdb_images not in ("aligned", "original"):
        raise ValueError(f"--rafdb-images must be aligned or original, got {d.rafdb_images!r}")


# --- command line ----------------------------------------------------------------------------
def _show(value: Any) -> str:
    """A default as the command line spells it: on/off for switches, none for an unset path."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return "none" if value is None else str(value)


def add_config_arguments(parser: argparse.ArgumentParser, preset: str = "quick", variant: str | None = "rald",
                         help_overrides: dict[str, str] | None = None) -> None:
    """One `--field-name` option per config field, plus `--preset` and `--variant`.

    Only the help text depends on `preset` and `variant`: each option's help is the field's description
    and the value that preset and variant give it (`variant=None`: the preset alone, for commands that
    set the variant per run; `help_overrides`: whole help texts by field name, for a command that gives
    an option another meaning). The parsed values do not: options left out stay absent from the namespace
    and `config_from_args` resolves them from the `--preset` and `--variant` actually given.
    """
    if variant is not None:
        shown = make_config(preset, variant)
    else:  # defaults, then the schedule preset alone
        make_config(preset)  # rejects an unknown preset
        shown = Config(preset=preset)
        for k, v in SCHEDULES[preset].items():
            set_option(shown, k, v)
    where = f"{preset}/{variant}" if variant is not None else f"the {preset} preset"
    variant_keys = {k for v in VARIANTS.values() for k in v}
    if variant is not None:
        how = (f"Each option below defaults to the value that --preset {preset} --variant {variant} gives it, "
               f"shown as '(default in {where}: VALUE)'; `--preset P --variant V --help` shows another "
               f"pair's (e.g. --preset quick --variant a --help).")
    else:
        how = (f"Each option below shows the value that the {preset} preset gives it, as '(default in {where}: "
               f"VALUE)'; another --preset changes it (`python -m rald_fast.train --preset paper --help` "
               f"lists the paper preset's), and each run's variant sets the module switches unless given.")
    # pre-wrapped: a RawDescriptionHelpFormatter (the train command's) prints it as given
    g = parser.add_argument_group("preset and variant", textwrap.fill(how, 78))
    g.add_argument("--preset", default="quick", choices=list(SCHEDULES),
                   help="schedule preset: quick (the default: synthetic data, a few minutes on a 2-core CPU), "
                        "paper (the paper's section 4.3.2), tiny (tests: seconds)")
    g.add_argument("--variant", default="rald", choices=list(VARIANTS),
                   help="model variant: Table 3 rows a-g (baseline = a), rald (all modules), rald-l (flat labels)"
                        + ("" if variant is not None else "; not used here: each run sets its own"))
    for sub, eff in zip(sections(Config()), sections(shown)):
        hints = get_type_hints(type(sub))
        group = parser.add_argument_group(type(sub).__name__.removesuffix("Config").lower())
        for f in fields(sub):
            flag = "--" + f.name.replace("_", "-")
            typ = hints[f.name]
            note = f"default in {where}: {_show(getattr(eff, f.name))}"
            if variant is None and f.name in variant_keys:
                note += ", unless the run's variant sets it"
            text = (help_overrides or {}).get(f.name, f"{f.metadata['help']} ({note})").replace("%", "%%")
            kw: dict[str, Any] = dict(dest=f.name, default=argparse.SUPPRESS, help=text)
            if typ is bool:
                group.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
            elif typ == Optional[str]:
                group.add_argument(flag, type=str, metavar="PATH", **kw)
            else:
                group.add_argument(flag, type=typ, **kw)


def config_from_args(args: argparse.Namespace) -> Config:
    keys = {f.name for sub in sections(Config()) for f in fields(sub)}
    overrides = {k: v for k, v in vars(args).items() if k in keys}
    return make_config(args.preset, args.variant, **overrides)
