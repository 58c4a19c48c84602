"""The fast inference path: a folded RALD as a service runs it, from decoded uint8 images to probabilities.

`fast_module(folded, dtype)` rewrites a `FoldedRALD` (rald_fast/models/folded.py) for speed, keeping
its outputs (tests/test_fast_path.py holds the two together on the CPU):
- the input is what a decoder gives: uint8 RGB, NHWC (N, S, S, 3) by default, or NCHW;
- the normalisation is folded into the first convolution: the input is centred by the mean pixel
  (255 mean, so conv1's zero padding still stands for the mean colour, exactly as in training) and
  the 1 / (255 std) scale is multiplied into conv1's weights;
- the backbone runs in channels_last (NHWC) memory, the layout cuDNN and inductor prefer;
- ITRR in `self` mode (batch-independent, the deployment default without a bank) has one key per
  query, so Q and K never matter: W_MSA W_V and the input residual fold into ONE linear map;
- the network runs in `dtype` (fp32, bf16 or fp16); logits and probabilities come back in fp32.

`FastEngine` runs such a module with static shapes per batch size: on CUDA it captures one CUDA graph
per batch size (optionally around a `torch.compile`d module) and replays it, so a batch-1 request
costs one graph launch instead of ~80 kernel launches. It is what `Predictor` uses for a checkpoint
on a GPU, and what docs/DEPLOY.md tells Python services to run.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from rald_fast.models.folded import FoldedRALD

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class SelfModeITRR(nn.Module):
    """ITRR with one key per query (`self` mode): M = A x + b (A = W_MSA W_V, plus I with the input
    residual), then norm(M + FFN(M)), eq. (7)."""

    def __init__(self, block):
        super().__init__()
        with torch.no_grad():
            w = block.w_msa.weight.double() @ block.w_v.weight.double()
            if block.input_residual:
                w = w + torch.eye(w.shape[0], dtype=w.dtype, device=w.device)
            self.mix = nn.Linear(w.shape[1], w.shape[0], device=w.device)
            self.mix.weight.copy_(w)
            self.mix.bias.copy_(block.w_msa.bias)
        self.ffn, self.norm = block.ffn, block.norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.mix(x)                                                    # (N, D)
        return self.norm(m + self.ffn(m))


class FastRALD(nn.Module):
    """uint8 RGB images -> (logits, probs) in fp32; see the module docstring. Build with `fast_module`."""

    def __init__(self, folded: FoldedRALD, dtype: torch.dtype = torch.float32, layout: str = "nhwc"):
        super().__init__()
        if layout not in ("nhwc", "nchw"):
            raise ValueError(f"layout must be nhwc or nchw, got {layout!r}")
        folded = copy.deepcopy(folded).float().eval()
        self.layout, self.dtype, self.itrr_mode = layout, dtype, folded.itrr_mode
        self.image_size = folded.preprocess.image_size
        mean, std = folded.pixel_mean.reshape(3).double(), folded.pixel_std.reshape(3).double()
        backbone = folded.backbone
        with torch.no_grad():  # normalisation into conv1: W (x / 255 - m) / s = (W / (255 s)) (x - 255 m)
            backbone.conv1.weight.copy_(backbone.conv1.weight.double() / (255.0 * std)[None, :, None, None])
        self.register_buffer("pixel_offset", (255.0 * mean).float().reshape(1, 3, 1, 1))
        self.backbone = backbone
        # ITRR: `self` mode folds to one linear map; `bank` and `batch` keep the folded block and its bank
        self.itrr = SelfModeITRR(folded.itrr) if folded.itrr_mode == "self" else folded.itrr
        self.lgifo, self.head = folded.lgifo, folded.head
        for name in ("label_k", "label_v", "bank_k", "bank_v"):
            if hasattr(folded, name):
                self.register_buffer(name, getattr(folded, name))
        self.to(dtype=dtype, memory_format=torch.channels_last)
        self.pixel_offset = self.pixel_offset.float()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images.permute(0, 3, 1, 2) if self.layout == "nhwc" else images   # logical NCHW
        x = (x.float() - self.pixel_offset).to(self.dtype).contiguous(memory_format=torch.channels_last)
        x = self.backbone(x)                                                   # F (N, D)
        if self.itrr_mode == "self":
            x = self.itrr(x)                                                   # F~, eq. (7)
        elif self.itrr_mode == "bank":
            x = self.itrr.forward_fixed_context(x, self.bank_k, self.bank_v)
        elif self.itrr_mode == "batch":
            x = self.itrr(x, backend=FoldedRALD.ATTENTION_BACKEND)
        if self.lgifo is not None:
            x = self.lgifo(x, kv=(self.label_k, self.label_v), backend=FoldedRALD.ATTENTION_BACKEND)  # F^
        logits = self.head(x).float()
        return logits, logits.softmax(-1)


def fast_module(folded: FoldedRALD, dtype: str | torch.dtype = "fp32", layout: str = "nhwc") -> FastRALD:
    """The fast module of a folded RALD (eval mode) in `dtype` (fp32 | bf16 | fp16 or a torch dtype)."""
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    return FastRALD(folded, dtype, layout).eval()


class FastEngine:
    """Runs a `FastRALD` with static shapes per batch size: `engine(uint8 images)` -> fp32 probs.

    On CUDA with `cuda_graphs`, the first call at a batch size warms up and captures a CUDA graph with
    static input and output buffers; later calls copy the input in and replay it. `compile`: a
    torch.compile mode (e.g. "max-autotune-no-cudagraphs") applied first, with static shapes (one
    compilation per batch size), or None for eager kernels; `backend`: torch.compile's (another than
    inductor only for tests). On the CPU it is the module itself (graphs are CUDA's).
    """

    def __init__(self, module: FastRALD, device: torch.device | str, cuda_graphs: bool = True,
                 compile: str | None = None, backend: str = "inductor"):
        self.device = torch.device(device)
        self.module = module.to(self.device)
        self.forward = module
        if compile is not None:
            mode = None if backend != "inductor" else compile  # modes are inductor's
            self.forward = torch.compile(module, mode=mode, backend=backend, dynamic=False)
        self.use_graphs = cuda_graphs and self.device.type == "cuda"
        self.graphs: dict[tuple, tuple] = {}

    def _capture(self, x: torch.Tensor):
        static_in = x.clone()
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream), torch.no_grad():
            for _ in range(3):  # warm-up (and the compilation, if any) outside the graph
                self.forward(static_in)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.no_grad():
            static_out = self.forward(static_in)[1]
        return graph, static_in, static_out

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, non_blocking=True)
        if not self.use_graphs:
            return self.forward(x)[1]
        key = (tuple(x.shape), x.dtype)
        if key not in self.graphs:
            self.graphs[key] = self._capture(x)
        graph, static_in, static_out = self.graphs[key]
        static_in.copy_(x)
        graph.replay()
        return static_out.clone()
