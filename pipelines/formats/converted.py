"""Converted datasets (a .beton file, a DALI shard directory) opened by path and streamed.

    from pipelines import datasets
    train = datasets.load("data/photos_train.beton", "train")   # -> ConvertedDataset, no image decoded
    test = datasets.load("data/photos_train.beton", "test")     # its sibling data/photos_test.beton
    loader = pipelines.build("ffcv", train, batch_size=256, device="cuda")   # train.format picks ffcv/dali

Opening checks, in order, each failure one DataError naming the file: the manifest written by
`formats/writer.py` (present, parseable, this format version); the file structure (formats/ffcv.py
check: header, fields, allocation table; formats/dali.py check: every shard and index present and
consistent); the sha256 of every file against the manifest (reads every byte once: about as long as
copying the data; a passed check is stamped in files.cache_root()/verified and later opens of the
unchanged files skip it, see verify.check_checksums); the labels read from the file (FFCV metadata / DALI .cls members) against the
manifest's checksum. Only labels and the manifest are held in memory; the pipelines decode images
batch by batch.

Splits: a path names one converted split, and its manifest says which. The other split is the
sibling path with the split's name swapped in the file or directory name (photos_train.beton ->
photos_test.beton, dali/train -> dali/test). Both are normalised with the training split's mean/std.

A stored image that fails to decode mid-epoch: every stored JPEG was encoded by the converter from
decoded pixels and its bytes are checked against the manifest at open, so this only happens when
the file changes during a run. DALI reports it: the loader raises a DataError naming the dataset
and DALI's message (the command exits 2; `--resume` continues from the last checkpoint once the
data is converted again). FFCV's JPEG decoder ignores libjpeg-turbo's error code, so it would
produce wrong pixels silently; the checksum at open is what guards FFCV runs.
"""

import hashlib
import os
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..data.arrays import UNLABELLED, ArrayDataset
from ..errors import DataError
from . import contract, manifest
from .verify import check_checksums

IMAGENET_SIZE, SMALL_SIZE = 224, 96  # default view sides: ImageNet stem, CIFAR stem (STL-10-like data)
DEVICE_FRACTION = 0.5  # the gpu pipeline may fill at most this fraction of the free device memory


@dataclass(eq=False, repr=False)
class ConvertedDataset:
    """A converted split: path, manifest, labels and classes in memory; the pixels stay in the file.

    indices: the samples of the file in use (sorted; None = all, in file order), labels theirs.
    image_size: side of the views the pipelines make from it (training: RandomResizedCrop to it;
    eval: resize + centre crop): decided by `sized` when opened, and again by a command that knows
    its stem; the loaders only read it."""

    path: str
    format: str
    labels: np.ndarray
    classes: list
    name: str
    mean: tuple
    std: tuple
    split: str
    manifest: dict = field(repr=False)
    indices: np.ndarray | None = None
    image_size: int | None = None

    def __len__(self):
        return len(self.labels)

    def __repr__(self):
        return f"ConvertedDataset({self.path!r}, {self.format}, {self.split}, {len(self)} images, {len(self.classes)} classes)"

    @property
    def variable(self) -> bool:
        """True when each image keeps its own size (decoded and cropped while loading)."""
        return self.manifest["image_policy"]["sizes"] == "own"

    @property
    def stored_shape(self) -> tuple:
        """(h, w) of every image (fixed sizes) or of the largest sides (own sizes)."""
        policy = self.manifest["image_policy"]
        return tuple(policy["max_shape"]) if self.variable else tuple(self.manifest["stored_shape"])

    def selected(self) -> np.ndarray:
        return np.arange(self.manifest["count"]) if self.indices is None else self.indices

    def take(self, idx) -> "ConvertedDataset":
        """The samples `idx` (positions in this dataset), as ArrayDataset.take does in memory."""
        idx = np.asarray(idx, np.int64)
        return replace(self, labels=self.labels[idx], indices=self.selected()[idx])


def is_converted_path(name) -> bool:
    """Whether a --dataset value names a converted dataset rather than a built-in one."""
    name = os.fspath(name)
    return name.endswith(".beton") or os.sep in name or os.path.exists(name)


def sized(data, image_size, stem=None):
    """`data` with its view side set: `image_size` when given, else the stored side when all images
    share one square size, else 224 for the ImageNet stem and 96 for the CIFAR stem, and with no
    stem (evaluation commands) 224 when the largest stored side reaches it, else 96 (STL-10-like
    data). In-memory data (and None) unchanged."""
    if not isinstance(data, ConvertedDataset):
        return data
    if image_size is None:
        h, w = data.stored_shape
        if not data.variable and h == w:
            image_size = h
        elif stem is not None:
            image_size = IMAGENET_SIZE if stem == "imagenet" else SMALL_SIZE
        else:
            image_size = IMAGENET_SIZE if max(h, w) >= IMAGENET_SIZE else SMALL_SIZE
    return replace(data, image_size=int(image_size))


def open_split(path, split="train") -> ConvertedDataset:
    """Split `split` of the converted dataset at `path` (see the module docstring)."""
    path = os.path.abspath(os.path.expanduser(os.fspath(path))).rstrip(os.sep)
    fmt = _format_of(path)
    m = manifest.checked(fmt, path)
    train_stats = (m["mean"], m["std"]) if m["split"] == "train" else None
    if m["split"] != split:
        other = _sibling(path, m["split"], split)
        if other is None or not os.path.exists(other):
            raise DataError(
                f"{path} holds the {m['split']} split; its {split} split would be at "
                f"{other or '(a name with ' + m['split'] + ' in it)'}, which does not exist"
            )
        first = m
        path, m = other, manifest.checked(_format_of(other), other)
        fmt = m["format"]
        if m["split"] != split or m["classes"] != first["classes"]:
            raise DataError(
                f"{path}: expected the {split} split with classes {first['classes']}, its manifest "
                f"says {m['split']} with {m['classes']}"
            )
    labels = _check(fmt, path, m)
    if train_stats is None and m["split"] != "train":  # a held-out split opened by its own path
        other = _sibling(path, m["split"], "train")
        if other is not None and os.path.exists(other):
            train = manifest.checked(_format_of(other), other)
            train_stats = (train["mean"], train["std"]) if train["classes"] == m["classes"] else None
    mean, std = train_stats or (m["mean"], m["std"])
    data = ConvertedDataset(
        path,
        fmt,
        labels,
        list(m["classes"]),
        m.get("name") or os.path.basename(path),
        tuple(map(float, mean)),
        tuple(map(float, std)),
        split,
        m,
    )
    return sized(data, None)  # the default view side; a command may decide it again for its stem


def _format_of(path):
    if os.path.isdir(path):
        return "dali"
    if os.path.isfile(path):
        return "ffcv"
    raise DataError(
        f"{path}: no such converted dataset (a .beton file or a DALI shard directory written by "
        "python -m fastssl.convert)"
    )


def _check(fmt, path, m) -> np.ndarray:
    """Structure, checksums and labels of one converted split against its manifest; returns the labels."""
    module = contract.module(fmt)
    info = module.check(path)
    count = info["count"]
    if count != m["count"]:
        raise DataError(f"{path}: holds {count} samples, its manifest says {m['count']}")
    check_checksums(fmt, path, manifest=m)
    labels = module.labels(path, info)
    if hashlib.sha256(labels.astype("<i8").tobytes()).hexdigest() != m["labels_sha256"]:
        raise DataError(f"{path}: labels differ from the checksum in its manifest")
    if len(labels) and (labels.min() < UNLABELLED or labels.max() >= max(1, len(m["classes"]))):
        raise DataError(f"{path}: labels outside 0..{len(m['classes']) - 1} (or {UNLABELLED}: no label)")
    m["stored_shape"] = [int(info["height"]), int(info["width"])]
    return labels


def _sibling(path, have, want):
    head, base = os.path.split(path)
    at = base.rfind(have)
    if at < 0:
        return None
    return os.path.join(head, base[:at] + want + base[at + len(have) :])


def device_budget(device) -> int:
    """Bytes the gpu pipeline may fill: DEVICE_FRACTION of the free memory of `device` (host RAM
    available for a CPU device)."""
    device = torch.device(device)
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        free = int(info["MemAvailable"].split()[0]) * 1024
    return int(DEVICE_FRACTION * free)


def decode_for_device(data: ConvertedDataset, device):
    """The gpu pipeline's input from a converted split: every image decoded at its stored size, only
    when all share one and they fit (see device_budget); otherwise a DataError naming the alternatives."""
    if data.variable:
        raise DataError(
            f"{data.path}: its images keep their own sizes and are decoded and cropped while loading; "
            f"the gpu pipeline holds fixed-size images on the device: use --pipeline {data.format}"
        )
    h, w = data.stored_shape
    need, budget = len(data) * h * w * 3, device_budget(device)
    if need > budget:
        raise DataError(
            f"{data.path}: {len(data):,} images of {h}x{w} need {need / 2**30:.1f} GiB decoded, more than "
            f"{DEVICE_FRACTION:.0%} of the free memory of {device} ({budget / DEVICE_FRACTION / 2**30:.1f} GiB); "
            f"use --pipeline {data.format}, which streams it"
        )
    images, labels = contract.module(data.format).read(data.path, data.selected())
    if not np.array_equal(labels, data.labels):
        raise DataError(f"{data.path}: labels read back differ from those opened")
    return ArrayDataset(images, labels, data.classes, data.name, data.mean, data.std)
