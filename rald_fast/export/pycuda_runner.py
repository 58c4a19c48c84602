"""Run a rald_fast TensorRT engine with only `tensorrt`, `pycuda` and `numpy`: no torch, for slim
deployment images (`pip install tensorrt rald_fast[pycuda]`; the import of this module itself
needs numpy only, tensorrt and pycuda are imported when a runner is made).

    from rald_fast.export.pycuda_runner import PycudaEngineRunner
    runner = PycudaEngineRunner("rald.engine")       # checks rald.engine.json (metadata + SHA-256)
    out = runner(images)                             # float32 (N, 3, S, S) RGB 0..255 -> {"logits", "probs"}
    runner.labels(out["probs"])                      # [(fine, coarse), ...] from the engine's taxonomy

The engine is a `python export/build_trt.py --formats trt` build (rald_fast/export/tensorrt.py): one
optimisation profile over the batch axis, named tensors `images` -> `logits`, `probs`. Uses the
TensorRT 10 named-tensor API (`set_input_shape`, `set_tensor_address`, `execute_async_v3`) with pycuda
device buffers and page-locked host buffers, grown when a larger batch comes and reused after; a batch
above the engine's largest is run in slices. Preprocessing (resize to S x S, RGB, uint8 -> float32) is
the caller's: the engine normalises inside, as every rald_fast artifact does.

Not run on a GPU in this repository's CI (no GPU, no TensorRT there): tests/test_pycuda_runner.py
checks the host logic against fake `tensorrt` / `pycuda` modules.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rald_fast.artifacts import INPUT_NAME, OUTPUT_NAMES, ArtifactError, read_sidecar

INSTALL_HINT = ("install TensorRT 10's Python package and pycuda on a machine with an NVIDIA GPU and "
                "driver: `pip install tensorrt pycuda` (or `pip install tensorrt rald_fast[pycuda]`)")


class PycudaEngineRunner:
    """A serialized TensorRT engine and its sidecar; `runner(images)` -> {"logits", "probs"} arrays."""

    def __init__(self, engine_path: str | Path, check_sidecar: bool = True):
        try:
            import pycuda.autoinit  # noqa: F401  (creates and pushes a CUDA context on device 0)
            import pycuda.driver as cuda
            import tensorrt as trt
        except ImportError as e:
            raise ArtifactError(f"{engine_path}: the pycuda engine runner needs `tensorrt` and `pycuda` "
                                f"({e}); {INSTALL_HINT}") from None
        self.cuda, self.trt, self.path = cuda, trt, Path(engine_path)
        self.meta = read_sidecar(self.path, require_hash=True) if check_sidecar else None
        built_with = (self.meta or {}).get("tensorrt")
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise ArtifactError(f"{self.path}: TensorRT {trt.__version__} cannot deserialize this engine "
                                f"(built with TensorRT {built_with or 'unknown'}, or for another GPU): "
                                f"rebuild it on this machine with `python export/build_trt.py --formats trt`")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if inputs != [INPUT_NAME] or not set(OUTPUT_NAMES) <= set(self.outputs):
            raise ArtifactError(f"{self.path}: engine tensors in {inputs}, out {self.outputs}; a rald_fast "
                                f"engine takes {INPUT_NAME!r} and returns {', '.join(OUTPUT_NAMES)}")
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        lo, _, hi = (tuple(s) for s in self.engine.get_tensor_profile_shape(INPUT_NAME, 0))
        self.min_batch, self.max_batch = int(lo[0]), int(hi[0])
        self.input_shape = tuple(int(d) for d in hi[1:])  # (3, S, S)
        if self.meta is not None:
            s = self.meta["preprocess"]["image_size"]
            if self.input_shape != (3, s, s):
                raise ArtifactError(f"{self.path}: engine input (N, {', '.join(map(str, self.input_shape))})"
                                    f" but its metadata says (N, 3, {s}, {s}): the sidecar is another model's")
        self.stream = cuda.Stream()
        self._device: dict[str, tuple[int, object]] = {}  # name -> (capacity in bytes, allocation)
        self._pinned: dict[str, np.ndarray] = {}  # name -> page-locked host buffer, grown as needed

    # --- host logic --------------------------------------------------------------------------------
    def _buffer(self, name: str, nbytes: int):
        cap, buf = self._device.get(name, (0, None))
        if nbytes > cap:
            if buf is not None:
                buf.free()
            buf = self.cuda.mem_alloc(max(nbytes, 1))
            self._device[name] = (nbytes, buf)
        return buf

    def _host(self, name: str, shape: tuple, dtype) -> np.ndarray:
        """A page-locked (N, ...) host array for `name`, a view of a buffer kept between calls (pinning
        memory costs a system call and page faults: never per batch)."""
        n = int(np.prod(shape))
        buf = self._pinned.get(name)
        if buf is None or buf.size < n:
            buf = self.cuda.pagelocked_empty((n,), dtype)
            self._pinned[name] = buf
        return buf[:n].reshape(shape)

    def check_input(self, images) -> np.ndarray:
        x = np.asarray(images)
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ArtifactError(f"images of shape {tuple(x.shape)}; the engine takes float32 (N, "
                                f"{', '.join(map(str, self.input_shape))}) RGB in 0..255")
        if not np.issubdtype(x.dtype, np.number):
            raise ArtifactError(f"images of dtype {x.dtype}; expected float32 RGB in 0..255")
        return np.ascontiguousarray(x, dtype=self.dtypes[INPUT_NAME])

    def __call__(self, images) -> dict[str, np.ndarray]:
        x = self.check_input(images)
        if len(x) == 0:
            raise ArtifactError("an empty batch: nothing to run")
        parts = [self._run(x[i:i + self.max_batch]) for i in range(0, len(x), self.max_batch)]
        return {k: np.concatenate([p[k] for p in parts]) for k in self.outputs}

    def _run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        cuda, ctx, real = self.cuda, self.context, len(x)
        if real < self.min_batch:  # pad up to the profile's smallest batch, drop the padding after
            x = np.concatenate([x, np.zeros((self.min_batch - len(x), *x.shape[1:]), x.dtype)])
        images, n = x, len(x)
        if not ctx.set_input_shape(INPUT_NAME, tuple(images.shape)):
            raise ArtifactError(f"TensorRT refused input shape {tuple(images.shape)} (profile batch "
                                f"{self.min_batch}..{self.max_batch})")
        d_in = self._buffer(INPUT_NAME, images.nbytes)
        host_in = self._host(INPUT_NAME, images.shape, images.dtype)
        host_in[...] = images
        cuda.memcpy_htod_async(d_in, host_in, self.stream)
        ctx.set_tensor_address(INPUT_NAME, int(d_in))
        host = {}
        for name in self.outputs:
            shape = tuple(int(d) for d in ctx.get_tensor_shape(name))
            if not shape or shape[0] != n or min(shape) < 0:
                raise ArtifactError(f"TensorRT reports output {name!r} of shape {shape} for batch {n}")
            host[name] = self._host(name, shape, self.dtypes[name])
            ctx.set_tensor_address(name, int(self._buffer(name, host[name].nbytes)))
        if not ctx.execute_async_v3(self.stream.handle):
            raise ArtifactError("TensorRT engine execution failed (see its log above)")
        for name in self.outputs:
            cuda.memcpy_dtoh_async(host[name], self._device[name][1], self.stream)
        self.stream.synchronize()
        return {k: np.array(v[:real], dtype=np.float32) for k, v in host.items()}

    def labels(self, probs: np.ndarray) -> list[tuple[str, str | None]]:
        """(fine, coarse) per row, from the taxonomy in the engine's sidecar."""
        if self.meta is None:
            raise ArtifactError(f"{self.path}: made with check_sidecar=False, so no labels are known")
        tax = self.meta["taxonomy"]
        fine, parent = tax["fine"], tax.get("parent") or [None] * len(tax["fine"])
        return [(fine[i], parent[i]) for i in np.asarray(probs).argmax(1)]
