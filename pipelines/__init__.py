"""fastssl's data layer: datasets, converters and device-side augmentation pipelines.

    import pipelines
    data = pipelines.datasets.load("cifar10", "train", data_dir="data")
    loader = pipelines.build("gpu", data, batch_size=512, device="cuda", seed=0)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for batch in loader:          # pipelines.Batch(view1, view2, labels), see batch.py
            ...

Every backend lives in its own module and is imported only when chosen, so a missing optional
library (DALI, FFCV, torchvision) costs nothing until somebody asks for it. This package never
imports `fastssl`.
"""

import importlib

from .batch import Batch, Loader
from .errors import DataError
from .recipes import RECIPES  # two SimCLR views / crop+flip / no augmentation

# name -> module exposing `build(data, **kwargs) -> Loader` (and `EXTRA`, the pip extra it needs).
PIPELINES = {
    "gpu": "pipelines.loaders.gpu",
    "dali": "pipelines.loaders.dali",
    "ffcv": "pipelines.loaders.ffcv",
    "torchvision": "pipelines.loaders.torchvision",
}


def build(name: str, data, **kwargs) -> Loader:
    """Build pipeline `name` over `data`: an ArrayDataset, or a ConvertedDataset
    (streamed from its file by ffcv / dali, whichever wrote it; gpu decodes it onto the device only
    when it fits; torchvision refuses it). Common keyword arguments:
    batch_size, device, seed, recipe (one of RECIPES), drop_last, shuffle, rank, world_size.
    Backend-specific ones (workers, cache_dir, ...) are documented in each module."""
    if name not in PIPELINES:
        raise DataError(f"unknown pipeline {name!r}; choose from {', '.join(PIPELINES)}")
    module = importlib.import_module(PIPELINES[name])
    return module.build(data, **kwargs)


__all__ = ["Batch", "Loader", "DataError", "PIPELINES", "RECIPES", "build"]
