"""What a dataset is in memory: uint8 images with labels, classes and normalisation statistics.

from pipelines.data.arrays import ArrayDataset
data = ArrayDataset(images, labels, classes, "mine", mean, std)   # validated on creation
part = data.take(idx)                                              # the images idx, same statistics
"""

import hashlib
from dataclasses import dataclass

import numpy as np

from ..errors import DataError

UNLABELLED = -1  # label of images that carry none (the CIFAR-100 half of cifar10+cifar100)


@dataclass(eq=False, repr=False)
class ArrayDataset:
    """A labelled image set held in memory.

    images: uint8 (N, H, W, 3), NHWC RGB; labels: int64 (N,) in [0, len(classes)), or UNLABELLED (-1)
    for images without one (cifar10+cifar100); name: dataset name;
    mean, std: per-channel statistics of the training split in [0, 1] units, used to normalise.
    """

    images: np.ndarray
    labels: np.ndarray
    classes: list
    name: str
    mean: tuple
    std: tuple

    def __post_init__(self):
        x = self.images
        if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 4 or x.shape[3] != 3:
            raise DataError(
                f"{self.name}: images must be a uint8 array (N, H, W, 3), got "
                f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}"
            )
        self.labels = np.asarray(self.labels)
        if self.labels.shape != (len(self.images),) or not np.issubdtype(self.labels.dtype, np.integer):
            raise DataError(
                f"{self.name}: labels must be {len(self.images)} integers, got "
                f"{self.labels.dtype} {self.labels.shape}"
            )
        self.labels = self.labels.astype(np.int64, copy=False)
        self.classes = list(self.classes)
        self.mean, self.std = tuple(float(v) for v in self.mean), tuple(float(v) for v in self.std)
        if len(self.mean) != 3 or len(self.std) != 3:
            raise DataError(f"{self.name}: mean and std need 3 values each, got {self.mean}, {self.std}")
        if not all(np.isfinite(self.mean)) or not all(np.isfinite(s) and s > 0 for s in self.std):
            raise DataError(f"{self.name}: mean must be finite and std positive, got {self.mean}, {self.std}")
        if len(self.images) == 0:
            raise DataError(f"{self.name}: the dataset is empty")

    def __len__(self):
        return len(self.labels)

    def take(self, idx) -> "ArrayDataset":
        """The images `idx`, with this dataset's classes and statistics (as ConvertedDataset.take)."""
        return ArrayDataset(self.images[idx], self.labels[idx], self.classes, self.name, self.mean, self.std)

    def __repr__(self):
        n, h, w = self.images.shape[:3]
        return f"ArrayDataset({self.name!r}, {n} images {h}x{w}, {len(self.classes)} classes)"


def as_dataset(data) -> ArrayDataset:
    """`data` as a validated ArrayDataset: the one check every pipeline's build runs on its input.
    An ArrayDataset validated itself when it was made; anything else with the same attributes
    (images, labels, mean, std; optional classes, name) is checked by making one (no pixel copy)."""
    if isinstance(data, ArrayDataset):
        return data
    missing = [k for k in ("images", "labels", "mean", "std") if not hasattr(data, k)]
    if missing:
        raise DataError(
            f"a dataset needs images, labels, mean and std; {type(data).__name__} lacks {', '.join(missing)}"
        )
    return ArrayDataset(
        data.images,
        data.labels,
        getattr(data, "classes", []),
        getattr(data, "name", "data"),
        data.mean,
        data.std,
    )


def label_kind(labels) -> str:
    """What a converted dataset's manifest records as "labels": "classes" (every image has one),
    "none" (no image has one: an unlabelled photo collection) or "partial" (cifar10+cifar100)."""
    has = np.asarray(labels) != UNLABELLED
    return "classes" if has.all() else "partial" if has.any() else "none"


def require_labels(data, what: str) -> None:
    """DataError unless some image of `data` has a label: `what` (the kNN monitor, a linear probe)
    learns from labels, and an unlabelled folder has none to give."""
    if not (np.asarray(data.labels) != UNLABELLED).any():
        raise DataError(
            f"{getattr(data, 'name', 'the data')} has no labels (an unlabelled image collection); "
            f"{what} needs labelled images"
        )


def channel_stats(images):
    """Per-channel mean and population std of uint8 images (N, H, W, 3) in [0, 1] units, exact (via
    256-bin histograms, so no float copy of the whole array)."""
    levels = np.arange(256, dtype=np.float64) / 255
    mean, std = [], []
    for c in range(3):
        hist = np.bincount(images[..., c].ravel(), minlength=256).astype(np.float64)
        m = hist @ levels / hist.sum()
        mean.append(float(m))
        std.append(float(np.sqrt(hist @ (levels - m) ** 2 / hist.sum())))
    return tuple(mean), tuple(std)


def fingerprint(data) -> str:
    """Cache key of a dataset: name, count, shape and a hash of every pixel and label."""
    h = hashlib.blake2b(digest_size=10)
    h.update(np.ascontiguousarray(data.images).data)
    h.update(np.ascontiguousarray(data.labels, dtype=np.int64).data)
    n, height, width = data.images.shape[:3]
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in str(getattr(data, "name", "data")))
    return f"{name}-{n}-{height}x{width}-{h.hexdigest()}"
