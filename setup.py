"""Distribution `vlm-edge`: every top-level folder installs under the one import namespace `vlm_edge`.

The folders stay short (`edge/`, `export/`, ...) while the import names cannot clash with
other distributions (PyPI has packages called `kernels`, `server`, ...): `package_dir` maps
`vlm_edge.<name>` to `<name>/`. A folder at the repository root is importable by its own name
whenever the root is on sys.path (`python -m pytest`, a REPL started there), so none may be named
like a module our dependencies import: `vlm_edge.kernels` lives in `gpu_kernels/`, because
transformers imports Hugging Face's `kernels` package (tests/test_dependencies.py checks this). The namespace's own `__init__` lives in `vlm_edge_pkg/` so
that no folder called `vlm_edge/` at the repository root shadows the installed mapping.
"""

from setuptools import setup

SUBPACKAGES = ["common", "model", "train", "quant", "kernels", "export", "edge", "server", "jetson"]
FOLDERS = {name: name for name in SUBPACKAGES} | {"kernels": "gpu_kernels"}  # vlm_edge.<name> -> folder

# The runtime (edge/server/jetson) installs light; torch and transformers are extras.
RUNTIME = ["numpy>=1.24", "pillow>=10", "tokenizers>=0.20", "onnxruntime>=1.18", "tqdm>=4.60"]
TORCH = [
    "torch>=2.4",  # CI and the README pin torch==2.13.0 (the CPU build)
    "transformers>=5.23,<6",  # model/ is written against transformers 5 (flattened vision towers)
    "safetensors>=0.4",
    "sentencepiece>=0.2",  # converting a release's tokenizer.model to tokenizer.json
    "protobuf>=4",
    "onnx>=1.17",  # vlm-export builds the graphs with it (int4 initializers need >= 1.16)
    "opencv-python-headless>=4.8",  # one of vlm-train's renderers (train/renderers.py)
]
SERVE = ["fastapi>=0.110", "uvicorn>=0.29", "prometheus-client>=0.20"]
EXTRAS = {
    "torch": TORCH,
    "serve": SERVE,
    "jetson": ["opencv-python-headless>=4.8"],
    "calib": ["datasets>=2.14"],  # pile-val, the published AWQ calibration text, fetched online
    "gpu": ["tensorrt>=10", "cuda-python>=12"],
    # tests drive the server with the official client and fuzz it from its OpenAPI schema
    # cuda-bindings: the kernel loader's no-GPU path is tested everywhere, its GPU path where one is
    "dev": TORCH + SERVE + ["pytest>=8", "openai>=1.30", "httpx>=0.27", "schemathesis>=4", "cuda-bindings>=12.6",
                            "opencv-python-headless>=4.8", "selenium>=4.20"],  # the camera page in headless Chromium
}

setup(
    name="vlm-edge",
    version="0.1.0",
    description="Edge inference runtime and 4-bit quantization toolkit for VILA-class vision-language models",
    python_requires=">=3.10",
    packages=["vlm_edge"] + [f"vlm_edge.{name}" for name in SUBPACKAGES],
    package_dir={"vlm_edge": "vlm_edge_pkg", **{f"vlm_edge.{name}": FOLDERS[name] for name in SUBPACKAGES}},
    # the kernel's and the plugin's sources: the device they run on builds them (gpu_kernels/build.py)
    package_data={"vlm_edge.kernels": ["CMakeLists.txt", "cuda/*.cu", "cuda/*.cuh", "trt/*.cpp"],
                  # the tiny16 preset's pretrained vision tower (train/towers.py)
                  "vlm_edge.train": ["pretrained/*/*.json", "pretrained/*/*.safetensors"]},
    install_requires=RUNTIME,
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": [
            "vlm-model = vlm_edge.model.cli:main",
            "vlm-train = vlm_edge.train.cli:main",
            "vlm-eval = vlm_edge.train.cli:eval_main",
            "vlm-quant = vlm_edge.quant.cli:main",
            "vlm-export = vlm_edge.export.cli:main",
            "vlm-build-engine = vlm_edge.export.cli:build_main",
            "vlm-run = vlm_edge.edge.cli:main",
            "vlm-bench = vlm_edge.jetson.cli:bench_main",  # the runtime's benchmark, with Jetson power readings
            "vlm-serve = vlm_edge.server.cli:main",
            "vlm-camera = vlm_edge.jetson.cli:camera_main",
            "vlm-jetson = vlm_edge.jetson.cli:jetson_main",
        ]
    },
)
