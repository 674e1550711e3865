from setuptools import find_packages, setup

# No upper pins: fastssl must run on torch 2.11 (GPU images) and on the newest torch alike.
# psutil: the benchmarks sample the memory of whole process trees (DataLoader workers included).
# safetensors: backbone.safetensors, weights that load without unpickling (fastssl/checkpoint.py).
core = [
    "torch>=2.4",
    "numpy>=1.24",
    "pillow>=9",
    "rich>=13",
    "matplotlib>=3.7",
    "psutil>=5.9",
    "safetensors>=0.4",
]
extras = {
    "torchvision": ["torchvision>=0.19"],
    "dali": ["nvidia-dali-cuda130>=2.0"],
    # ffcv builds from source: needs `apt-get install pkg-config libopencv-dev libturbojpeg0-dev`.
    "ffcv": ["ffcv==1.0.2", "numba>=0.60"],
    # the SSL library benchmarks.race compares fastssl with (its tests use it as an independent reference)
    "peers": ["lightly>=1.6"],
    # --logger tensorboard (torch.utils.tensorboard's SummaryWriter)
    "tensorboard": ["tensorboard>=2.14"],
    # python -m fastssl.embed --plot-method tsne | umap (PCA maps need neither)
    "embed": ["scikit-learn>=1.3", "umap-learn>=0.5"],
    # ruff pinned: a newer formatter may format differently, and `ruff format --check` runs in CI.
    "dev": ["pytest>=7", "pytest-timeout", "lightly>=1.6", "ruff==0.17.6", "tensorboard>=2.14"],
}
extras["all"] = sorted({d for k in ("torchvision", "dali", "ffcv") for d in extras[k]})

setup(
    name="fastssl",
    version="0.1.0",
    description="Fast self-supervised pretraining (SimCLR and friends) on CIFAR with GPU-side data pipelines",
    packages=find_packages(
        include=["fastssl", "fastssl.*", "pipelines", "pipelines.*", "benchmarks", "benchmarks.*"]
    ),
    package_data={"pipelines": ["assets/*.npz"]},
    python_requires=">=3.11",  # tomllib
    install_requires=core,
    extras_require=extras,
)
