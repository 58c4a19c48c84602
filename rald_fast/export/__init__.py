"""Export of trained RALD models: ONNX, AOTInductor `.pt2`, Torch-TensorRT and TensorRT engines.

`formats` (ONNX and `.pt2`; the metadata every artifact carries is `rald_fast.artifacts`),
`tensorrt` (TensorRT 10 build and runtime), `build` (the `python export/build_trt.py` command).
"""
