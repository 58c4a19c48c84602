"""rald_fast: RALD fine-grained facial expression recognition, fast (see README.md)."""

from setuptools import find_packages, setup

setup(
    name="rald_fast",
    version="0.1.0",
    description="RALD fine-grained facial expression recognition (Liu et al. 2024): training, "
                "Triton kernels, export",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["rald_fast", "rald_fast.*"]),
    package_data={"rald_fast": ["resources/*.txt", "resources/*.md"]},
    install_requires=[
        # torch 2.14.1 / torchvision 0.29.1 are what this project tests; 2.11 must import too
        "torch>=2.11",
        "torchvision>=0.26",
        "numpy>=1.26",
        "pillow>=10",
        "gensim>=4.3",       # reads users' own word2vec / GloVe files (semantics.py; the bundled tables need none)
        "pyyaml>=6",         # taxonomy files
        "tqdm>=4.66",
        "matplotlib>=3.8",   # confusion matrices and figures
        "scikit-learn>=1.3",  # t-SNE, silhouette and nearest neighbours (python -m rald_fast.experiments figures)
        "scipy>=1.11",       # Student's t for the study's paired confidence intervals
        # face detection (rald_fast.predict.faces): 4.x ships the Haar cascades, 5.0 dropped them
        "opencv-python-headless>=4.8,<5",
        # export and the engine (rald_fast.export, rald_fast.predict.predictor): ONNX files, their checker, the
        # dynamo-based exporter's graph builder, and the ONNX Runtime backend
        "onnx>=1.16",
        "onnxscript>=0.5",
        "onnxruntime>=1.18",
    ],
    entry_points={"console_scripts": [
        "rald-train = rald_fast.train.command:cli",
        "rald-evaluate = rald_fast.evaluate.command:cli",
        "rald-bank = rald_fast.evaluate.command:bank_cli",
        "rald-predict = rald_fast.predict.command:cli",
        "rald-export = rald_fast.export.build:cli",
        "rald-experiments = rald_fast.experiments.__main__:cli",
        "rald-serve = rald_fast.serve.command:cli",
    ]},
    extras_require={
        "test": ["pytest>=8", "pytest-benchmark>=4", "scipy>=1.11", "pytest-timeout>=2", "scikit-image>=0.22",
                 "hypothesis>=6.100", "ray[serve]>=2.40", "fastapi>=0.100", "tritonclient>=2.40",
                 "protobuf>=4"],  # tests parse the Triton config.pbtxt with google.protobuf
        # the HTTP service (python -m rald_fast.serve): Ray Serve with FastAPI
        "serve": ["ray[serve]>=2.40", "fastapi>=0.100"],
        # optional GPU back-ends, never installed by the tests (no GPU on the CI machine): a
        # TensorRT engine and Torch-TensorRT modules (rald_fast.export.tensorrt, the engine)
        # TensorRT 10 only: 11 dropped the weakly typed FP16/BF16 builder flags the engine build uses;
        # Torch-TensorRT's save() must take dynamic_shapes (checked at export: rald_fast/export/tensorrt.py)
        "tensorrt": ["tensorrt>=10,<11", "torch-tensorrt>=2.4"],
        # the torch-free TensorRT engine runner (rald_fast.export.pycuda_runner) for slim images;
        # it also needs TensorRT 10 (`pip install tensorrt`), not repeated here: the `tensorrt` extra
        # declares it (with torch-tensorrt, which a slim image does not want)
        "pycuda": ["pycuda>=2022.1"],
    },
)
