"""Pooled features of a dataset written to a .npz, optionally with a 2-D map: `python -m fastssl.embed`.

    python -m fastssl.embed --backbone runs/simclr --dataset cifar10 --data-dir data --out feats.npz
    # the shipped sample, an untrained control, a PCA map coloured by class
    python -m fastssl.embed --backbone random --dataset cifar10-sample --part test --device cpu \\
        --out runs/embed/random.npz --plot runs/embed/random.png
    # t-SNE or UMAP maps (pip install "fastssl[embed]"); float32 features
    python -m fastssl.embed --backbone runs/simclr --dataset cifar10 --part test --dtype float32 \\
        --out feats.npz --plot map.png --plot-method tsne
    # a converted dataset, streamed batch by batch; the test part of an 80/10/10 split
    python -m fastssl.embed --backbone runs/photos --dataset data/photos_train.beton --out photos.npz
    python -m fastssl.embed --backbone runs/simclr_split --dataset cifar10 --split 80/10/10 --part test \\
        --out test.npz

The .npz holds `features` (N, D) float16 (or float32), `index` (N,) int64 (where each image comes
from, see below), `classes` (names), `labels` (N,) int64 when the images carry labels (-1: none),
`paths` for an image folder, `source_index` for a converted dataset, and `meta`: one JSON string
(json.loads(npz["meta"].item())) with the backbone, dataset, split, part, count and feature width.
Every array loads with np.load(path) (no pickle).

`index` is the image's position in the dataset's own train or test split (--split official), in
the pooled images (the train split's, then the test split's) for a percentage --split, or in the
file for a converted dataset (`source_index`: its position in the dataset it was converted from,
by the order recorded in the manifest). Features are those of fastssl.eval.features.extract, as
the kNN and linear protocols see them.
"""

import io
import json
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from pipelines import DataError, datasets
from pipelines.data import imagefolder, splits
from pipelines.files import data_root
from pipelines.formats.converted import ConvertedDataset
from pipelines.formats.writer import stored_order

from .. import checkpoint as ckpt
from ..config import ConfigError, cli, parse
from ..data import check_split, split_field, split_seed_field
from . import maps, plots
from .features import extract
from .setup import image_size_field, on_device, setup

PARTS = ("train", "val", "test")
FLOAT16_MAX = float(np.finfo(np.float16).max)


@dataclass
class EmbedConfig:
    backbone: str = field(
        default="",
        metadata={"help": "run directory, checkpoint, backbone.pt, torchvision state_dict, or 'random'"},
    )
    dataset: str = field(
        default="cifar10",
        metadata={
            "help": "a dataset name or the path of a converted dataset",
            "choices": datasets.Choices(datasets.DATASETS),
        },
    )
    data_dir: str | None = field(default=None, metadata={"help": "dataset location (else $FASTSSL_DATA)"})
    split: str = split_field()
    split_seed: int = split_seed_field()
    # val exists only in a percentage split; the official split has train and test.
    part: str = field(default="train", metadata={"help": "which part to embed", "choices": list(PARTS)})
    out: str = field(default="", metadata={"help": "the .npz file to write"})
    overwrite: bool = field(default=False, metadata={"help": "replace existing --out / --plot files"})
    # float16 halves the file; pooled ResNet features are far below its range (checked before writing).
    dtype: str = field(
        default="float16", metadata={"help": "feature dtype in the file", "choices": ["float16", "float32"]}
    )
    plot: str | None = field(default=None, metadata={"help": "also draw a 2-D map coloured by label (PNG)"})
    plot_method: str = field(
        default="pca",
        metadata={"help": "map method (tsne: scikit-learn, umap: umap-learn)", "choices": list(maps.METHODS)},
    )
    batch_size: int = field(default=1024, metadata={"help": "feature-extraction batch size"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N"})
    seed: int = field(default=0, metadata={"help": "seed of the 'random' backbone and of t-SNE / UMAP"})
    stem: str = field(
        default="cifar",
        metadata={
            "help": "stem of the 'random' backbone (others: read from the weights)",
            "choices": ["cifar", "imagenet"],
        },
    )
    image_size: int | None = image_size_field()

    def __post_init__(self):
        if not self.backbone:
            raise ValueError("--backbone is required")
        if not self.out:
            raise ValueError("--out is required (the .npz file to write)")
        if self.batch_size <= 0:
            raise ValueError(f"--batch-size must be positive, got {self.batch_size}")
        if self.image_size is not None and self.image_size < 0:
            raise ValueError(f"--image-size must be >= 0, got {self.image_size}")
        check_split(self)
        if self.part == "val" and splits.parse_split(self.split) is None:
            raise ValueError(
                "--part val needs a percentage --split (e.g. 80/10/10); the official split has none"
            )
        if self.plot is not None and os.path.abspath(self.plot) == os.path.abspath(self.out):
            raise ValueError("--plot and --out name the same file")
        if self.plot is None and self.plot_method != "pca":
            raise ValueError("--plot-method needs --plot (the PNG to draw)")


def check_target(path: str, flag: str, overwrite: bool) -> None:
    """Refuse, before any work, an output that could not be written or would replace a file unasked."""
    if os.path.isdir(path):
        raise ConfigError(f"{flag} {path} is a directory; give a file name")
    if os.path.lexists(path) and not overwrite:
        raise ConfigError(f"{flag} {path} already exists; pass --overwrite to replace it")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.lexists(parent):  # folders to be made at write time: the nearest existing one decides
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise DataError(f"cannot write {flag} {path}: {parent} is not a writable folder")


def make_parent(path: str) -> None:
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the folder of {path}: {e.strerror or e}") from None


def sources(cfg: EmbedConfig, data) -> tuple[dict, str]:
    """({"index", and "paths" or "source_index" where the data offers them}, what index counts)."""
    if isinstance(data, ConvertedDataset):
        index = data.selected().astype(np.int64)
        order = data.manifest.get("order", {})
        source = stored_order(data.manifest["count"], order.get("seed") if order.get("shuffled") else None)
        return {"index": index, "source_index": source[index].astype(np.int64)}, f"position in {data.path}"
    percents = splits.parse_split(cfg.split)
    if percents is None:
        index = np.arange(len(data), dtype=np.int64)
        where = f"position in the {cfg.part} split of {cfg.dataset}"
    else:
        # The parts do not keep their positions among the pooled images: the split is drawn again
        # from the pooled labels and its seed (the dataset is read a second time).
        pooled = datasets.pooled(cfg.dataset, cfg.data_dir).labels
        index = splits.split_three(pooled, percents, cfg.split_seed)[PARTS.index(cfg.part)]
        where = f"position among the pooled images of {cfg.dataset} (its train split, then its test split)"
        if not np.array_equal(pooled[index], data.labels):
            raise DataError(f"{cfg.dataset} changed while it was read; run the command again")
    out = {"index": index}
    if cfg.dataset in datasets.FOLDERS:
        out["paths"] = image_paths(cfg, index, data.labels)
    return out, where


def image_paths(cfg: EmbedConfig, index: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Paths of an image folder's images `index`, listed in the order datasets.load reads them."""
    root, unlabelled = data_root(cfg.data_dir), cfg.dataset == "images"
    if splits.parse_split(cfg.split) is None:
        files = [imagefolder.scan(root, cfg.part, unlabelled=unlabelled)]
    else:  # pooled as datasets.pooled pools: train/ then test/, or the whole folder
        has_parts = os.path.isdir(os.path.join(root, "train"))
        parts = ("train", "test") if has_parts else ("train",)
        files = [imagefolder.scan(root, s, unlabelled=unlabelled) for s in parts]
    paths = [p for f in files for p in f.paths]
    if not np.array_equal(np.concatenate([f.labels for f in files])[index], labels):
        raise DataError(f"{root} changed while it was read; run the command again")
    return np.array([paths[i] for i in index], dtype=str)


@cli
def main(argv=None):
    cfg = parse(EmbedConfig, argv, description=__doc__)
    check_target(cfg.out, "--out", cfg.overwrite)
    if cfg.plot is not None:
        check_target(cfg.plot, "--plot", cfg.overwrite)
        maps.require(cfg.plot_method)  # a missing library is reported before any work
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    backbone, info = ckpt.load_network(cfg.backbone, cfg.stem if cfg.backbone == "random" else None)
    # Only the part embedded is read where the split allows it (a percentage split reads them all).
    device, split = setup(cfg, test="required" if cfg.part == "test" else "skip")
    data = getattr(split, cfg.part)
    feats, labels = extract(on_device(backbone, device), data, device, cfg.batch_size)
    feats, labels = feats.cpu().numpy(), labels.cpu().numpy()  # host sync: once
    if cfg.dtype == "float16" and np.abs(feats).max() > FLOAT16_MAX:
        raise DataError(f"features exceed float16's range ({FLOAT16_MAX:g}); use --dtype float32")
    arrays, where = sources(cfg, data)
    meta = {
        "backbone": info["source"],
        "arch": info["arch"],
        "stem": info["stem"],
        "dataset": cfg.dataset,
        "split": cfg.split,
        "split_seed": None if splits.parse_split(cfg.split) is None else cfg.split_seed,
        "part": cfg.part,
        "count": int(feats.shape[0]),
        "feature_dim": int(feats.shape[1]),
        "dtype": cfg.dtype,
        "image_size": split.image_size(),
        "index": where,
    }
    if isinstance(data, ConvertedDataset):
        meta["converted_from"] = data.manifest.get("source", {})
    arrays.update(features=feats.astype(cfg.dtype), classes=np.array(data.classes, dtype=str))
    if (labels >= 0).any():
        arrays["labels"] = labels.astype(np.int64)
    arrays["meta"] = np.array(json.dumps(meta))
    # The map is computed before anything is written: a failing method leaves every file as it was.
    if cfg.plot is not None:
        xy, axes = maps.project(feats, cfg.plot_method, cfg.seed)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    make_parent(cfg.out)
    ckpt.atomic_write_bytes(cfg.out, buffer.getbuffer())
    if cfg.plot is not None:
        name = os.path.basename(os.path.normpath(cfg.backbone))
        title = f"{name} on {cfg.dataset} {cfg.part}: {len(feats):,} images, {maps.METHODS[cfg.plot_method]}"
        make_parent(cfg.plot)
        try:
            plots.scatter(cfg.plot, xy, labels, data.classes, title, axes)
        except OSError as e:
            raise DataError(f"cannot write --plot {cfg.plot}: {e.strerror or e}") from None
    summary = {k: meta[k] for k in ("backbone", "dataset", "part", "count", "feature_dim", "dtype")}
    print(
        json.dumps(
            {**summary, "out": cfg.out, "plot": cfg.plot, "seconds": round(time.perf_counter() - t0, 2)}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
