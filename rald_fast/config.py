"""Typed configuration: nested dataclasses, presets, command-line overrides.

Every hyper-parameter of the paper (SPEC 5) is a field here with its default commented. The command
line exposes each field as `--field-name` (field names are unique across sections); unknown options are
rejected by argparse, and the resolved config is saved beside every run and inside every checkpoint.

Two kinds of preset combine:
- a schedule preset (`--preset`): `quick` (the default: trains on the built-in synthetic data on a
  2-core CPU in minutes) or `paper` (SPEC 5: batch 128, SGD 0.9, lr 0.01, 300 epochs, step every 100);
- a model variant (`--variant`): which of ITRR / HLRR / LGIFO / NNLDL are on (Table 3 rows a-g, the
  full model `rald`, and `rald-l` for flat label sets).
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, Optional, get_type_hints


@dataclass
class ModelConfig:
    backbone_weights: Optional[str] = None  # local ResNet18 state dict; None = random init
    dim: int = 512                          # ResNet18 pooled feature size = model dim D
    heads: int = 8                          # h; D / h = 64 per head
    scale: float = 0.125                    # lambda of eqs. (4), (8), (14) = 1/sqrt(64)
    sigma: int = 500                        # xi bucket for unreachable label pairs, eq. (9)
    itrr: bool = True                       # image topological relations, eqs. (3)-(7)
    hlrr: bool = True                       # hierarchy-aware label relations, eqs. (8)-(12)
    lgifo: bool = True                      # label-guided image features, eqs. (13)-(17)
    hierarchy_bias: bool = True             # b[xi] in eq. (8); off for RALD-L (flat labels)
    input_residual: bool = True             # add the block input to M; the paper adds none, and
                                            # without it RALD does not train (docs/DESIGN.md)
    dropout: float = 0.1                    # FFN dropout inside the attention blocks
    label_vectors: str = "glove50"          # glove50 | spacy300 (bundled) | onehot | a vectors file
    xi_reading: str = "spd"                 # eq. (9): spd = shortest path for every reachable pair
                                            # (siblings 2); literal = SPD only along an edge, sigma else


@dataclass
class LossConfig:
    nnldl: bool = True          # nearest-neighbour label distribution loss, eqs. (18)-(19)
    k: int = 5                  # neighbours per image (Fig. 6)
    nnldl_weight: float = 1.0   # weight of L_KL in L = CE + L_KL (eq. 21 uses 1)
    nnldl_grad: bool = False    # let gradients flow through the target D (SPEC 4: stop-gradient)
    nnldl_bank: int = 0         # also draw neighbours from the last M training images (0: batch only)
    nnldl_relation: str = "attention"  # what ranks neighbours: attention (R_v as printed: ITRR's
                                       # head-mean softmax) | symmetric (R_v + R_v^T) | cosine-f
                                       # (backbone features F) | cosine-ftilde (ITRR output F~)
    nnldl_tau: float = 0.1      # temperature of the cosine relations' softmax weights
    nnldl_warmup: int = 0       # epochs of CE alone before L_KL starts


@dataclass
class DataConfig:
    data: str = "synthetic"     # synthetic | labelfile | rafdb | affectnet | fgemotions | folder
    data_root: Optional[str] = None  # dataset dir (docs/DATASETS.md) or synthetic cache dir
    taxonomy: Optional[str] = None   # built-in name or JSON/YAML file; None = the dataset's own
                                     # (fg-emotions, basic7, affectnet8 or the class folders)
    image_size: int = 64        # network input side; the paper uses 224 on real faces
    synth_train_per_class: int = 60
    synth_test_per_class: int = 20
    synth_flip_prob: float = 0.1     # share of ambiguous (flipped) training labels
    synth_seed: int = 0
    synth_difficulty: float = 1.0    # scales identity/pose/lighting/occlusion nuisance
    synth_fine_offset: float = 1.0   # scales the differences between fine classes of one group
    hflip: bool = True          # random horizontal flip during training
    workers: int = 0            # image decode threads (images are decoded once, kept in memory)
    train_split: str = "auto"   # split name; auto = train (AffectNet training|train_set)
    test_split: str = "auto"    # auto = test (or val), AffectNet validation|val_set
    on_bad_image: str = "auto"  # skip | fail on an undecodable image; auto = skip train, fail test
    balanced: bool = False      # class-balanced sampling of the training split (AffectNet)
    affectnet_classes: int = 7  # 7 (drop contempt) or 8; codes 8-10 (none, uncertain, no face) go
    rafdb_images: str = "aligned"  # aligned (Image/aligned) | original (Image/original, uncropped)


@dataclass
class OptimConfig:
    epochs: int = 300
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-3  # reading of "衰减系数为5e-3": see docs/DESIGN.md
    lr_step: int = 100          # decay the lr every lr_step epochs
    lr_gamma: float = 0.1       # multiplicative lr decay
    attn_lr_mult: float = 1.0   # lr multiplier of ITRR/HLRR/LGIFO and the label projection


@dataclass
class RunConfig:
    out: str = "runs/rald"      # output directory of the run
    seed: int = 0
    device: str = "auto"        # auto | cpu | cuda
    eval_every: int = 1         # epochs between test evaluations
    eval_batch_size: int = 128  # batch size at test time (ITRR mixes a batch: it matters)
    threads: int = 0            # torch CPU threads; 0 = torch's default
    channels_last: bool = True  # NHWC convolutions: about 2x faster on this CPU and on GPUs
    progress: bool = True       # tqdm progress bars
    amp: str = "none"           # autocast of forward + loss: none | bf16 | fp16 (fp16 adds a grad scaler)
    compile: bool = False       # torch.compile the backbone and the head of the training step
    pin_memory: bool = True     # CUDA: pinned host batches, non-blocking copies
    reference_bank: int = -1    # ITRR reference bank stored with the final checkpoint (batch-
                                # independent inference): M images; -1 = batch_size - 1, 0 = none


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
        cfg = cls()
        for section in ("model", "loss", "data", "optim", "run"):
            sub = getattr(cfg, section)
            known = {f.name for f in fields(sub)}
            unknown = set(d.get(section, {})) - known
            if unknown:
                raise ValueError(f"unknown config keys in section {section!r}: {sorted(unknown)}")
            for k, v in d.get(section, {}).items():
                setattr(sub, k, v)
        cfg.preset, cfg.variant = d.get("preset", "quick"), d.get("variant", "rald")
        return cfg


# --- presets ---------------------------------------------------------------------------------
SCHEDULES: dict[str, dict[str, Any]] = {
    # SPEC 5 (section 4.2 of the paper)
    "paper": dict(epochs=300, batch_size=128, lr=0.01, lr_step=100, lr_gamma=0.1,
                  weight_decay=5e-3, image_size=224),
    # the no-argument run: synthetic data, 2-core CPU, a few minutes; also the budget of the
    # multi-seed study in docs/RESULTS.md (README gives the numbers)
    "quick": dict(epochs=5, batch_size=64, lr=0.05, lr_step=4, lr_gamma=0.1, weight_decay=5e-4,
                  attn_lr_mult=0.1, image_size=40, synth_difficulty=0.2, synth_fine_offset=2.0,
                  eval_every=1, eval_batch_size=64),
    # for tests: seconds
    "tiny": dict(epochs=2, batch_size=16, image_size=32, synth_train_per_class=3,
                 synth_test_per_class=2, eval_batch_size=16, progress=False),
}

AMP_MODES = ("none", "bf16", "fp16")  # --amp: autocast dtype of the training step
XI_READINGS = ("spd", "literal")      # --xi-reading, eq. (9)
NNLDL_RELATIONS = ("attention", "symmetric", "cosine-f", "cosine-ftilde")  # --nnldl-relation
ITRR_MODES = ("batch", "bank", "self")  # ITRR context at inference (RALD.forward_head, --itrr-mode)

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


def _sections(cfg: Config):
    return [cfg.model, cfg.loss, cfg.data, cfg.optim, cfg.run]


def set_option(cfg: Config, key: str, value: Any) -> None:
    for sub in _sections(cfg):
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


def validate(cfg: Config) -> None:
    """Reject combinations that cannot run, naming the option to change."""
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
    if lo.nnldl_tau <= 0:
        raise ValueError(f"--nnldl-tau must be > 0, got {lo.nnldl_tau}")
    if lo.nnldl_warmup < 0:
        raise ValueError(f"--nnldl-warmup must be >= 0, got {lo.nnldl_warmup}")
    if m.xi_reading not in XI_READINGS:
        raise ValueError(f"--xi-reading must be one of {', '.join(XI_READINGS)}, got {m.xi_reading!r}")
    if m.hlrr and not m.lgifo:
        raise ValueError("--hlrr without --lgifo has no effect: HLRR only feeds LGIFO's keys")
    for name, val in (("epochs", o.epochs), ("batch-size", o.batch_size), ("lr-step", o.lr_step)):
        if val < 1:
            raise ValueError(f"--{name} must be >= 1, got {val}")
    if cfg.run.reference_bank < -1:
        raise ValueError(f"--reference-bank must be -1 (batch size - 1), 0 (none) or a size, "
                         f"got {cfg.run.reference_bank}")
    if cfg.run.amp not in AMP_MODES:
        raise ValueError(f"--amp must be one of {', '.join(AMP_MODES)}, got {cfg.run.amp!r}")
    if cfg.run.device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {cfg.run.device!r}")
    d = cfg.data
    datasets = ("synthetic", "labelfile", "rafdb", "affectnet", "fgemotions", "folder")
    if d.data not in datasets:
        raise ValueError(f"--data must be one of {', '.join(datasets)}, got {d.data!r}")
    if d.on_bad_image not in ("auto", "skip", "fail"):
        raise ValueError(f"--on-bad-image must be auto, skip or fail, got {d.on_bad_image!r}")
    if d.affectnet_classes not in (7, 8):
        raise ValueError(f"--affectnet-classes must be 7 or 8, got {d.affectnet_classes}")
    if d.rafdb_images not in ("aligned", "original"):
        raise ValueError(f"--rafdb-images must be aligned or original, got {d.rafdb_images!r}")


# --- command line ----------------------------------------------------------------------------
def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One `--field-name` option per config field (defaults come from preset + variant)."""
    parser.add_argument("--preset", default="quick", choices=list(SCHEDULES),
                        help="schedule preset (default: quick, a few minutes on a 2-core CPU)")
    parser.add_argument("--variant", default="rald", choices=list(VARIANTS),
                        help="model variant: Table 3 rows a-g, rald (all modules), rald-l (flat)")
    for sub in _sections(Config()):
        hints = get_type_hints(type(sub))
        group = parser.add_argument_group(type(sub).__name__.removesuffix("Config").lower())
        for f in fields(sub):
            flag = "--" + f.name.replace("_", "-")
            typ = hints[f.name]
            kw: dict[str, Any] = dict(dest=f.name, default=argparse.SUPPRESS,
                                      help=f"(default {getattr(sub, f.name)!r} before presets)")
            if typ is bool:
                group.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
            elif typ == Optional[str]:
                group.add_argument(flag, type=str, metavar="PATH", **kw)
            else:
                group.add_argument(flag, type=typ, **kw)


def config_from_args(args: argparse.Namespace) -> Config:
    keys = {f.name for sub in _sections(Config()) for f in fields(sub)}
    overrides = {k: v for k, v in vars(args).items() if k in keys}
    return make_config(args.preset, args.variant, **overrides)
