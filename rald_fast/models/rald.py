"""RALD (Liu et al. 2024): ResNet18 -> ITRR -> LGIFO (keys from HLRR) -> fine head (paper section 3).

Read in the paper's order: image encoder F_v (1), label encoder F_s (2) as a frozen buffer, ITRR
(3)-(7) over the images of the batch, HLRR (8)-(12) over the label tokens with the learnable
shortest-path bias b[xi], LGIFO (13)-(17) from images to labels, the fine head (P = softmax). NNLDL
lives in `losses.py`; it needs ITRR's per-head queries and keys, which `forward` returns.

Every module can be switched off (ModelConfig.itrr / hlrr / lgifo) so Table 3's rows are variants of
one class: without ITRR, F~ = F; without LGIFO, F^ = F~; without HLRR, S~ is the projected label
vectors themselves (Table 3's rows, docs/DESIGN.md).
"""

from __future__ import annotations

import torch
from torch import nn

from rald_fast.config import ITRR_MODES, ModelConfig
from rald_fast.hierarchy import Taxonomy
from rald_fast.models.backbone import build_resnet18
from rald_fast.models.blocks import AttentionBlock, decreasing_bias_init

NO_REFERENCE_BANK = ("ITRR mode 'bank' needs the model's reference bank, and this model has none: build one with "
                     "`python -m rald_fast.bank --checkpoint CKPT` (training stores one unless --reference-bank 0)")


class RALD(nn.Module):
    """Fine-grained FER model. `forward(images)` -> dict(logits, features, backbone_features and, with
    ITRR in batch mode, itrr_q, itrr_k, itrr_features).

    Args:
        cfg: model options.
        taxonomy: label set; fixes C_f (head size) and, with LGIFO, the C label nodes and xi.
        label_vectors: (C, E) word vectors of the taxonomy's nodes (F_s); needed with LGIFO.
    """

    def __init__(self, cfg: ModelConfig, taxonomy: Taxonomy, label_vectors: torch.Tensor | None):
        super().__init__()
        self.cfg, self.taxonomy = cfg, taxonomy
        d, h = cfg.dim, cfg.heads
        block = dict(dropout=cfg.dropout, input_residual=cfg.input_residual)
        self.backbone = build_resnet18(cfg.backbone_weights)                  # F_v, eq. (1)
        relation = dict(qk_norm=cfg.itrr_qk_norm, temperature_cap=cfg.itrr_temperature_cap,
                        tie_qk_init=cfg.itrr_tied_init)                        # R_v, SPEC 3.1
        self.itrr = AttentionBlock(d, h, cfg.scale, **block, **relation) if cfg.itrr else None
        if cfg.itrr:  # ITRR's reference bank F (M, D) for `bank` inference; M = 0 until one is set
            self.register_buffer("itrr_reference", torch.zeros(0, d))
        self.hlrr = self.lgifo = None
        if cfg.lgifo:
            if label_vectors is None or label_vectors.shape[0] != taxonomy.num_nodes:
                raise ValueError(f"LGIFO needs one label vector per node of {taxonomy.name!r} "
                                 f"({taxonomy.num_nodes})")
            self.register_buffer("label_vectors", label_vectors.float().clone())  # S, eq. (2)
            self.label_proj = nn.Linear(label_vectors.shape[1], d)              # S -> h_i
            if cfg.hlrr:
                self.hlrr = AttentionBlock(d, h, cfg.scale, **block)
                use_bias = cfg.hierarchy_bias and not taxonomy.is_flat
                if use_bias:
                    self.bias_table = nn.Parameter(decreasing_bias_init(h, cfg.sigma))  # b, eq. (8)
                    self.register_buffer("xi", torch.from_numpy(taxonomy.xi(cfg.sigma, cfg.xi_reading)))
                else:
                    self.bias_table = self.xi = None
            self.lgifo = AttentionBlock(d, h, cfg.scale, value_proj=False, **block)
        self.head = nn.Linear(d, taxonomy.num_fine)                             # P, the fine head

    # --- ITRR's reference bank (batch-independent inference, rald_fast/evaluate/reference_bank.py) ---
    def set_reference_bank(self, features: torch.Tensor | None) -> None:
        """Store backbone features F (M, D) of reference training images (None: remove the bank)."""
        if self.itrr is None:
            raise ValueError("this model has no ITRR, so it needs no reference bank")
        d = self.cfg.dim
        if features is not None and (features.dim() != 2 or features.shape[1] != d):
            raise ValueError(f"reference bank must be (M, {d}), got {tuple(features.shape)}")
        new = torch.zeros(0, d) if features is None else features.detach().float()
        self.itrr_reference = new.to(self.head.weight.device).clone()

    @property
    def has_reference_bank(self) -> bool:
        return self.itrr is not None and self.itrr_reference.shape[0] > 0

    def reference_bank(self) -> torch.Tensor:
        """F (M, D) of the reference bank; the one check that `bank` mode has one."""
        if not self.has_reference_bank:
            raise ValueError(NO_REFERENCE_BANK)
        return self.itrr_reference

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the bank's M is whatever was stored: take its shape before the strict shape check
        key = prefix + "itrr_reference"
        if self.itrr is not None and key in state_dict:
            self.itrr_reference = torch.empty_like(state_dict[key], device=self.itrr_reference.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # --- the label branch: never depends on the images -----------------------------------------
    def label_tokens(self) -> torch.Tensor:
        """S~ (C, D): HLRR over the projected label vectors, eqs. (8)-(12)."""
        h = self.label_proj(self.label_vectors)                                # (C, D)
        if self.hlrr is None:
            return h
        return self.hlrr(h, bias_table=self.bias_table, xi=self.xi)            # (C, D)

    # --- the image branch -----------------------------------------------------------------------
    def backbone_features(self, images: torch.Tensor) -> torch.Tensor:
        """F (N, 512), eq. (1)."""
        return self.backbone(images)

    def head_outputs(self, feats: torch.Tensor, label_tokens: torch.Tensor | None = None,
                     itrr_mode: str = "batch") -> dict:
        """ITRR -> LGIFO -> fine logits from backbone features F (N, D).

        itrr_mode: `batch` (the paper: each image attends to the images of its batch), `bank` (to the
        model's reference bank, features F (M, D) of training images, plus itself) or `self` (to
        itself only). `bank` and `self` make each prediction independent of its batch-mates.
        """
        if itrr_mode not in ITRR_MODES:
            raise ValueError(f"itrr_mode must be one of {ITRR_MODES}, got {itrr_mode!r}")
        out = {"backbone_features": feats}                                    # F (N, D)
        x = feats
        if self.itrr is not None and itrr_mode == "batch":
            q, k = self.itrr.project_qk(x, x)                                  # (h, N, D/h) each
            out["itrr_q"], out["itrr_k"] = q, k                                # R_v = lambda q k^T
            x = self.itrr(x, qk=(q, k))                                        # F~ (N, D), eq. (7)
            out["itrr_features"] = x
        elif self.itrr is not None:
            kv = self.itrr.context_kv(self.reference_bank().to(x)) if itrr_mode == "bank" else (None, None)
            x = self.itrr.forward_fixed_context(x, *kv)
        if self.lgifo is not None:
            s = self.label_tokens() if label_tokens is None else label_tokens  # S~ (C, D)
            x = self.lgifo(x, s)                                               # F^ (N, D), eq. (17)
        out["features"] = x
        out["logits"] = self.head(x)                                           # (N, C_f)
        return out

    def forward(self, images: torch.Tensor) -> dict:
        return self.head_outputs(self.backbone_features(images))

    def param_groups(self, lr: float, attn_lr_mult: float = 1.0, relation_lr_mult: float = -1.0) -> list[dict]:
        """SGD parameter groups, named. `shared`: what a bare ResNet18 has too (backbone, fine head),
        at `lr` in every variant, so a comparison with Table 3 (a) trains the shared part alike.
        `added`: what RALD adds (ITRR, HLRR, LGIFO, the label projection, the bias table) at
        `lr * attn_lr_mult`. `relation`: ITRR's W_Q, W_K and temperature (R_v) at `lr *
        relation_lr_mult` (-1: as `added`); the temperature takes no weight decay."""
        relation_lr_mult = attn_lr_mult if relation_lr_mult == -1 else relation_lr_mult
        relation = self.itrr.relation_parameters() if self.itrr is not None else []
        added_modules = [m for m in (self.itrr, self.hlrr, self.lgifo, getattr(self, "label_proj", None))
                         if m is not None]
        added_ids = {id(p) for m in added_modules for p in m.parameters()}
        if getattr(self, "bias_table", None) is not None:
            added_ids.add(id(self.bias_table))
        relation_ids = {id(p) for p in relation}
        temperature = getattr(self.itrr, "log_temperature", None)
        groups = [
            {"name": "shared", "lr": lr, "params": [p for p in self.parameters() if id(p) not in added_ids]},
            {"name": "added", "lr": lr * attn_lr_mult,
             "params": [p for p in self.parameters() if id(p) in added_ids - relation_ids]},
            {"name": "relation", "lr": lr * relation_lr_mult,
             "params": [p for p in relation if p is not temperature]},
            {"name": "temperature", "lr": lr * relation_lr_mult, "weight_decay": 0.0,
             "params": [temperature] if temperature is not None else []},
        ]
        return [g for g in groups if g["params"]]
