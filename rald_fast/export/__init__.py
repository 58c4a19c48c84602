"""Export of trained RALD models: ONNX, AOTInductor `.pt2`, Torch-TensorRT and TensorRT engines.

`artifacts` (the metadata every artifact carries and its checks), `formats` (ONNX and `.pt2`),
`tensorrt` (TensorRT 10 build and runtime), `build` (the `python export/build_trt.py` command).
"""
