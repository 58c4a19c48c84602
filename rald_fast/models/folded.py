"""Folding a trained RALD into the module deployment runs (SPEC 3.2-3.3 constants).

What inference needs of RALD: the backbone, ITRR, LGIFO and the head. The label branch (label
vectors -> projection -> HLRR with its hierarchy bias) never sees an image, so LGIFO's keys
W_k S~ and values S~ are computed once here and kept as constants; NNLDL (a training loss) and
dropout (eval mode) are gone; each BatchNorm is folded into the convolution before it.

The folded module takes what a service has at hand, float32 RGB images (N, 3, S, S) with values in
0..255 at the model's input size, normalises them inside the graph with the training mean/std (so no
consumer can drift from training), and returns (logits, probs) over the fine labels.

ITRR mode (see `RALD.forward_head`): `bank` (attend to the stored reference bank plus itself) and
`self` (itself only) give every image the same output whatever its batch; `batch` is the paper's.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from rald_fast.data.transforms import Preprocess
from rald_fast.models.rald import ITRR_MODES, RALD


def fuse_resnet_bn(net: nn.Module) -> nn.Module:
    """Fold every BatchNorm of a torchvision ResNet (eval mode) into its convolution, in place."""
    net.conv1 = fuse_conv_bn_eval(net.conv1, net.bn1)
    net.bn1 = nn.Identity()
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
        for block in layer:
            block.conv1, block.bn1 = fuse_conv_bn_eval(block.conv1, block.bn1), nn.Identity()
            block.conv2, block.bn2 = fuse_conv_bn_eval(block.conv2, block.bn2), nn.Identity()
            if block.downsample is not None:
                conv, bn = block.downsample[0], block.downsample[1]
                block.downsample = nn.Sequential(fuse_conv_bn_eval(conv, bn))
    return net


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(scale q k^T) v per head, in plain ops every exporter and compiler understands."""
    return (scale * q @ k.transpose(1, 2)).softmax(-1) @ v


class FoldedRALD(nn.Module):
    """Inference-only RALD: float32 RGB (N, 3, S, S) in 0..255 -> (logits, probs), each (N, C_f)."""

    def __init__(self, model: RALD, preprocess: Preprocess, itrr_mode: str = "self",
                 itrr_bank: torch.Tensor | None = None, fuse_bn: bool = True):
        super().__init__()
        if itrr_mode not in ITRR_MODES:
            raise ValueError(f"itrr_mode must be one of {ITRR_MODES}, got {itrr_mode!r}")
        if model.itrr is not None and itrr_mode == "bank" and itrr_bank is None:
            raise ValueError("itrr_mode='bank' needs the checkpoint's reference bank; build one with "
                             "`python -m rald_fast.bank CHECKPOINT`")
        model = copy.deepcopy(model).float().eval()
        self.preprocess, self.scale = preprocess, model.cfg.scale
        self.itrr_mode = itrr_mode if model.itrr is not None else "none"
        self.register_buffer("pixel_mean", 255.0 * torch.tensor(preprocess.mean).view(1, 3, 1, 1))
        self.register_buffer("pixel_std", 255.0 * torch.tensor(preprocess.std).view(1, 3, 1, 1))
        self.backbone = fuse_resnet_bn(model.backbone) if fuse_bn else model.backbone
        self.itrr = model.itrr
        with torch.no_grad():
            if self.itrr_mode == "bank":
                bank_k, bank_v = model.itrr.context_kv(itrr_bank.float().to(model.head.weight.device))
                self.register_buffer("bank_k", bank_k.contiguous())            # (h, M, D/h)
                self.register_buffer("bank_v", bank_v.contiguous())
            self.lgifo = model.lgifo
            if model.lgifo is not None:
                s = model.label_tokens()                                       # S~ (C, D)
                self.register_buffer("label_k", model.lgifo.split_heads(model.lgifo.w_k(s)).contiguous())
                self.register_buffer("label_v", model.lgifo.split_heads(s).contiguous())
                del self.lgifo.w_k, self.lgifo.w_v                             # folded into the constants
        self.head = model.head

    def _itrr(self, x: torch.Tensor) -> torch.Tensor:
        if self.itrr_mode == "batch":
            q, k = self.itrr.project_qk(x, x)                                  # (h, N, D/h)
            v = self.itrr.split_heads(self.itrr.w_v(x))
            return self.itrr.finish(_attend(q, k, v, self.scale), x)
        if self.itrr_mode == "bank":
            return self.itrr.forward_fixed_context(x, self.bank_k, self.bank_v)
        return self.itrr.forward_fixed_context(x)                              # `self`

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """F^ (N, D): the features the head reads."""
        x = self.backbone((images - self.pixel_mean) / self.pixel_std)        # F (N, D)
        if self.itrr is not None:
            x = self._itrr(x)                                                 # F~
        if self.lgifo is not None:
            q = self.lgifo.split_heads(self.lgifo.w_q(x))
            x = self.lgifo.finish(_attend(q, self.label_k, self.label_v, self.scale), x)  # F^
        return x

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.head(self.forward_features(images))
        return logits, logits.softmax(-1)


def fold(model: RALD, preprocess: Preprocess, itrr_mode: str | None = None,
         itrr_bank: torch.Tensor | None = None, fuse_bn: bool = True) -> FoldedRALD:
    """The inference module of a trained RALD. `itrr_mode=None` picks the batch-independent
    default: `bank` when a reference bank is given (or stored on the model), else `self`."""
    if itrr_bank is None:
        itrr_bank = getattr(model, "itrr_bank", None)
    if itrr_mode is None:
        itrr_mode = "bank" if itrr_bank is not None else "self"
    return FoldedRALD(model, preprocess, itrr_mode, itrr_bank, fuse_bn)
