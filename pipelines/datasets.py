"""The one door to data: `load(name | path, split)` and the train/val/test split a command sees.

    from pipelines import datasets
    data = datasets.load("cifar10", "train", data_dir="data")   # ArrayDataset: images (50000, 32, 32, 3) uint8
    data = datasets.load("cifar10-sample", "test")                # 1,000 real CIFAR-10 images, shipped inside fastssl
    data = datasets.load("cifar100", "train", subset=5000)        # first 50 images of each class
    data = datasets.load("imagefolder", "train", data_dir="photos", image_size=64)
    data = datasets.load("images", "train", data_dir="trip", image_size=64)   # no labels: all -1, no classes
    data = datasets.load("data/photos_train.beton", "train")      # ConvertedDataset: streamed from its file
    parts = datasets.load_split("cifar10", "80/10/10", seed=0)    # 60,000 pooled -> 48,000 / 6,000 / 6,000

What a dataset is lives in `data/` (arrays, splits, CIFAR, image folders); bytes on disk in
`formats/`. This module only chooses between them.
"""

import os

import numpy as np

from .data.arrays import ArrayDataset
from .data.cifar import ARCHIVES, read_cifar, read_sample, read_union
from .data.imagefolder import read_imagefolder
from .data.splits import SPLITS, first_per_class, parse_split, split_three
from .errors import DataError
from .files import data_root
from .formats import converted

DATASETS = {
    "cifar10": "CIFAR-10: 50,000 train + 10,000 test 32x32 images, 10 classes (cifar-10-batches-py/)",
    "cifar100": "CIFAR-100: 50,000 train + 10,000 test 32x32 images, 100 fine classes (cifar-100-python/)",
    "cifar10-sample": "2,000 train + 1,000 test CIFAR-10 images shipped with fastssl (no download)",
    "imagefolder": "data_dir/<class>/*.jpg|png, optionally under data_dir/train and data_dir/test; "
    "a folder of images without subfolders is read without labels (label -1)",
    "images": "every image under data_dir, subfolders included, without labels (label -1): a photo collection",
    "cifar10+cifar100": "pretraining on 100,000 images: CIFAR-10 train + CIFAR-100 train used without labels "
    "(label -1); its test split is CIFAR-10's",
}

FOLDERS = ("imagefolder", "images")  # read from a folder of image files (data/imagefolder.py)


class Choices(list):
    """The names of DATASETS as a command's --dataset choices, which also admit the path of a
    converted dataset (a .beton file or DALI shard directory; see converted.py)."""

    def __contains__(self, name):
        return list.__contains__(self, name) or (isinstance(name, str) and converted.is_converted_path(name))


def load(
    name, split="train", data_dir=None, subset=None, seed=0, download=True, image_size=None
) -> ArrayDataset:
    """Read dataset `name` (a key of DATASETS), split "train" or "test".

    data_dir: where the data lives (else $FASTSSL_DATA, else files.DEFAULT_ROOT in files.cache_root();
    the embedded sample needs none).
    subset: keep only the first `subset` images of the split, class-balanced (see `first_per_class`);
    deterministic, so `seed` does not change it (the argument is accepted for callers that pass one).
    download: fetch the official CIFAR archive when the folder is absent.
    image_size: imagefolder only; resize the shorter side to this and centre-crop a square.
    `name` may also be the path of a converted dataset: a converted.ConvertedDataset is returned (its
    images stay in the file; image_size is then the side of the views made from it).
    """
    if name not in DATASETS and converted.is_converted_path(name):  # streamed, see formats/converted.py
        data = converted.open_split(name, split)
        data = (
            data.take(first_per_class(data.labels, subset, len(data.classes))) if subset is not None else data
        )
        return converted.sized(data, image_size, None)
    if name not in DATASETS:
        raise DataError(
            f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}, or give the path of a "
            "converted dataset (.beton file or DALI shard directory)"
        )
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    if image_size is not None and name not in FOLDERS:
        raise DataError(f"image_size applies to imagefolder only, not {name}")
    if name in ARCHIVES:
        data = read_cifar(name, split, data_dir, download)
    elif name == "cifar10+cifar100":
        if subset is not None:
            raise DataError(
                "subset is not supported for cifar10+cifar100 (its extra images have no labels to balance)"
            )
        data = read_union(split, data_dir, download)
    elif name == "cifar10-sample":
        data = read_sample(split)
    else:
        data = read_imagefolder(split, data_dir, image_size, unlabelled=name == "images")
    if subset is not None:
        data = data.take(first_per_class(data.labels, subset, len(data.classes)))
    return data


def pooled(name, data_dir=None, download=True) -> ArrayDataset:
    """Every labelled image of dataset `name`: its train split followed by its test split (an image
    folder without train/ and test/ subfolders is one pool already). Normalised with the train
    split's statistics, as the official split is."""
    if name == "cifar10+cifar100":
        raise DataError(
            "a train/val/test split needs labels for every image; cifar10+cifar100 has unlabelled ones"
        )
    train = load(name, "train", data_dir, download=download)
    if not isinstance(train, ArrayDataset):  # a converted file streams its images: nothing to pool
        raise DataError(
            f"a train/val/test split pools images in memory; {name} is a converted dataset, use its name"
        )
    if name in FOLDERS and not os.path.isdir(os.path.join(data_root(data_dir), "train")):
        return train
    test = load(name, "test", data_dir, download=download)
    return ArrayDataset(
        np.concatenate([train.images, test.images]),
        np.concatenate([train.labels, test.labels]),
        train.classes,
        train.name,
        train.mean,
        train.std,
    )


def load_split(name, split, data_dir=None, seed=0, download=True) -> dict:
    """{"train", "val", "test"} ArrayDatasets of `split` ("80/10/10", stratified over the pooled
    labelled images, seeded by `seed`), or {"train", "test"} (val None) for "official"."""
    percents = parse_split(split)
    if percents is None:
        return {
            "train": load(name, "train", data_dir, download=download),
            "val": None,
            "test": load(name, "test", data_dir, download=download),
        }
    pool = pooled(name, data_dir, download)
    parts = split_three(pool.labels, percents, seed)
    return {part: pool.take(idx) for part, idx in zip(("train", "val", "test"), parts)}
