"""Folding a trained RALD into the module deployment runs.

What inference needs of RALD: the backbone, ITRR, LGIFO and the head. The label branch (label
vectors -> projection -> HLRR with its hierarchy bias) never sees an image, so LGIFO's keys
W_k S~ and values S~ are computed once here and kept as constants; NNLDL (a training loss) and
dropout (eval mode) are gone; each BatchNorm is folded into the convolution before it.

The folded module takes what a service has at hand, float32 RGB images (N, 3, S, S) with values in
0..255 at the model's input size, normalises them inside the graph with the training formula and
mean/std (`rald_fast.preprocess.normalize`, so no consumer can drift from training), and returns
(logits, probs) over the fine labels.

ITRR mode (see `RALD.head_outputs`): `bank` (attend to the stored reference bank plus itself) and
`self` (itself only) give every image the same output whatever its batch; `batch` is the paper's.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from rald_fast.config import ITRR_MODES
from rald_fast.models.rald import RALD
from rald_fast.preprocess import Preprocess, normalize


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


class FoldedRALD(nn.Module):
    """Inference-only RALD: float32 RGB (N, 3, S, S) in 0..255 -> (logits, probs), each (N, C_f).

    Every attention goes through `rald_fast.kernels` with the "reference" backend: plain PyTorch ops,
    which every exporter (ONNX, AOTInductor, TorchScript, TensorRT) and OpenCV's DNN can read, where a
    Triton custom op could not be serialised.
    """

    ATTENTION_BACKEND = "reference"

    def __init__(self, model: RALD, preprocess: Preprocess, itrr_mode: str = "self", fuse_bn: bool = True):
        super().__init__()
        if itrr_mode not in ITRR_MODES:
            raise ValueError(f"itrr_mode must be one of {ITRR_MODES}, got {itrr_mode!r}")
        bank = model.reference_bank() if model.itrr is not None and itrr_mode == "bank" else None  # the check
        model = copy.deepcopy(model).float().eval()
        self.preprocess, self.scale = preprocess, model.cfg.scale
        self.itrr_mode = itrr_mode if model.itrr is not None else "none"
        mean, std = preprocess.stats()
        self.register_buffer("pixel_mean", mean)                              # (1, 3, 1, 1), 0..1 scale
        self.register_buffer("pixel_std", std)
        self.backbone = fuse_resnet_bn(model.backbone) if fuse_bn else model.backbone
        self.itrr = model.itrr
        with torch.no_grad():
            if self.itrr_mode == "bank":
                bank_k, bank_v = model.itrr.context_kv(bank.float().to(model.head.weight.device))
                self.register_buffer("bank_k", bank_k.contiguous())            # (h, M, D/h)
                self.register_buffer("bank_v", bank_v.contiguous())
            if self.itrr is not None:
                self.itrr.fold_relation()  # ITRR's RelationNorm and temperature into W_Q, W_K
                if self.itrr_mode == "self":  # one key per query: Q and K never reach the output
                    del self.itrr.w_q, self.itrr.w_k
            self.lgifo = model.lgifo
            if model.lgifo is not None:
                s = model.label_tokens()                                       # S~ (C, D)
                self.register_buffer("label_k", model.lgifo.split_heads(model.lgifo.w_k(s)).contiguous())
                self.register_buffer("label_v", model.lgifo.split_heads(s).contiguous())
                del self.lgifo.w_k, self.lgifo.w_v                             # folded into the constants
        self.head = model.head

    def _itrr(self, x: torch.Tensor) -> torch.Tensor:
        if self.itrr_mode == "batch":
            return self.itrr(x, backend=self.ATTENTION_BACKEND)
        if self.itrr_mode == "bank":
            return self.itrr.forward_fixed_context(x, self.bank_k, self.bank_v)
        return self.itrr.forward_fixed_context(x)                              # `self`

    def head_input(self, images: torch.Tensor) -> torch.Tensor:
        """F^ (N, D): the features the head reads."""
        x = self.backbone(normalize(images, self.pixel_mean, self.pixel_std))  # F (N, D)
        if self.itrr is not None:
            x = self._itrr(x)                                                 # F~
        if self.lgifo is not None:
            x = self.lgifo(x, kv=(self.label_k, self.label_v), backend=self.ATTENTION_BACKEND)  # F^
        return x

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.head(self.head_input(images))
        return logits, logits.softmax(-1)


def fold(model: RALD, preprocess: Preprocess, itrr_mode: str | None = None, fuse_bn: bool = True) -> FoldedRALD:
    """The inference module of a trained RALD. `itrr_mode=None` picks the batch-independent
    default: `bank` when the model holds a reference bank, else `self`."""
    if itrr_mode is None:
        itrr_mode = "bank" if model.has_reference_bank else "self"
    return FoldedRALD(model, preprocess, itrr_mode, fuse_bn)
