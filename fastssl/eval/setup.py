"""Evaluation setup, the one path every evaluation command takes: splits -> device -> backbone -> features.

    from fastssl.eval.setup import setup, on_device, features
    device, data = setup(cfg)          # cfg has device, dataset, data_dir, split, split_seed
    bank, val_idx = data.labelled()    # what classifiers learn from; val_idx: the split's validation images
    feats = features(on_device(backbone, device), {"train": bank, "test": data.test}, device)  # name -> (f, y)

Splits (`--split`): "official" is the dataset's own train/test split; "80/10/10" pools every
labelled image (train + test split) and divides it into train / validation / test percentages,
stratified per class and seeded by `--split-seed` (pipelines.datasets.load_split). Pretraining
learns from the train part; classifiers (linear probe, kNN) learn from train + validation with the
validation part held out for every choice; the test part is scored once. A backbone and its
evaluation must use the same split: the other split's test part was in this one's training images.
"""
import json
import os
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from pipelines import DataError, datasets
from pipelines.data import arrays, splits
from pipelines.formats import converted

SPLIT_HELP = ("'official' (the dataset's train/test split) or train/val/test percentages of all its labelled "
              "images pooled, e.g. 80/10/10 (stratified, seeded by --split-seed)")


def run_info(path: str) -> dict | None:
    """config.json of the fastssl run that `path` (a run directory or a file inside one) belongs to."""
    d = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    p = os.path.join(d, "config.json")
    if not os.path.isfile(p):
        return None
    with open(p) as f:
        info = json.load(f)
    return info if isinstance(info, dict) and "config" in info else None


def split_field():
    """The `split` config field, identical in every command that takes it (check with check_split)."""
    return field(default=splits.OFFICIAL, metadata={"help": SPLIT_HELP})


def split_seed_field():
    return field(default=0, metadata={"help": "seed of the --split draw (equal for a backbone and its evaluations)"})


def check_split(cfg) -> None:
    """__post_init__ check of the split fields (one DataError line for a bad --split)."""
    splits.parse_split(cfg.split)
    if cfg.split_seed < 0:
        raise ValueError("--split-seed must be >= 0")


@dataclass
class EvalData:
    """train: what pretraining learns from (the official train split, or the split's train part);
    val: the split's validation part (None for the official split); test: scored once (None when
    not loaded). `subset` applies to `train` only."""

    train: arrays.ArrayDataset
    val: arrays.ArrayDataset | None
    test: arrays.ArrayDataset | None
    split: str = splits.OFFICIAL
    split_seed: int = 0

    def labelled(self):
        """(dataset, val_idx) a classifier learns from: train + validation, with the validation
        images' indices (None for the official split: the command holds out its own)."""
        if self.val is None:
            return self.train, None
        t, v = self.train, self.val
        both = arrays.ArrayDataset(np.concatenate([t.images, v.images]), np.concatenate([t.labels, v.labels]),
                                     t.classes, t.name, t.mean, t.std)
        return both, np.arange(len(t), len(t) + len(v), dtype=np.int64)

    def image_size(self) -> list:
        """[h, w] of the images the backbone sees: the stored size (in memory) or the view side (converted)."""
        t = self.train
        return list(t.images.shape[1:3]) if hasattr(t, "images") else [t.image_size] * 2

    def info(self) -> dict:
        """The split as stored in summaries and config.json."""
        return {"split": self.split, "split_seed": None if self.val is None else self.split_seed,
                "train_images": len(self.train), "val_images": None if self.val is None else len(self.val),
                "test_images": None if self.test is None else len(self.test)}


def load_data(dataset, data_dir=None, split=splits.OFFICIAL, split_seed=0, subset=None, seed=0,
              test="required") -> EvalData:
    """The parts of `split`. test: "required", "optional" (None when the dataset has no test split)
    or "skip" (official split only: not read)."""
    if splits.parse_split(split) is None:
        train = datasets.load(dataset, "train", data_dir, subset=subset, seed=seed)
        held_out = None
        if test != "skip":
            try:
                held_out = datasets.load(dataset, "test", data_dir)
            except DataError:
                if test == "required":
                    raise
        return EvalData(train, None, held_out, split, split_seed)
    parts = datasets.load_split(dataset, split, data_dir, seed=split_seed)
    train = parts["train"]
    if subset is not None:
        train = train.take(splits.first_per_class(train.labels, subset, len(train.classes)))
    return EvalData(train, parts["val"], parts["test"], split, split_seed)


def image_size_field():
    """The `image_size` field of the evaluation commands (resolved by view_size)."""
    return field(default=None, metadata={"help": "converted datasets: side of the evaluation crops (shorter side "
                                                 "resized to S / 0.875, centre S x S crop); 0 or unset: the backbone "
                                                 "run's view side (its config.json), else 224 when the largest stored "
                                                 "side reaches 224, else 96"})


def view_size(cfg) -> int | None:
    """The evaluation view side: --image-size, else the one the backbone's run trained on (the
    resolved side recorded in config.json, else its --image-size), else None (converted.sized's default)."""
    if cfg.image_size:
        return cfg.image_size
    run = None if cfg.backbone in ("random", "imagenet") else run_info(cfg.backbone)
    if run is None:
        return None
    return run.get("image_size") or run["config"].get("image_size")


def setup(cfg, subset=None, test="required"):
    """(device, EvalData) for a command config with device, dataset, data_dir, split, split_seed
    (and image_size, backbone: a converted dataset's views get view_size(cfg))."""
    from ..config import ConfigError
    from ..runtime import resolve_device

    device = resolve_device(cfg.device)
    data = load_data(cfg.dataset, cfg.data_dir, cfg.split, cfg.split_seed, subset=subset,
                     seed=getattr(cfg, "seed", 0), test=test)
    if hasattr(cfg, "image_size"):
        if cfg.image_size and not isinstance(data.train, converted.ConvertedDataset):
            raise ConfigError(f"--image-size applies to converted datasets; {cfg.dataset} is held in memory "
                              "at its own size" + (" (--resize upsamples it)" if hasattr(cfg, "resize") else ""))
        size = view_size(cfg)
        data = replace(data, **{k: converted.sized(getattr(data, k), size) for k in ("train", "val", "test")})
    return device, data


# Datasets whose images overlap: a split of one can hold another's training images.
IMAGES = {"cifar10": {"cifar10"}, "cifar10-sample": {"cifar10"}, "cifar10+cifar100": {"cifar10", "cifar100"},
          "cifar100": {"cifar100"}}


def _split_key(dataset, split, split_seed):
    return ("official",) if splits.parse_split(split) is None else (dataset, splits.parse_split(split), split_seed)


def splits_conflict(pre_dataset, pre_split, pre_seed, dataset, split, split_seed) -> bool:
    """Would evaluating on (dataset, split) test images pretrained on with (pre_dataset, pre_split)?"""
    if not IMAGES.get(pre_dataset, {pre_dataset}) & IMAGES.get(dataset, {dataset}):
        return False
    return _split_key(pre_dataset, pre_split, pre_seed) != _split_key(dataset, split, split_seed)


def check_backbone_split(spec: str, cfg) -> None:
    """Refuse to score a fastssl backbone on images it was pretrained on: when its run's dataset
    shares images with cfg.dataset, both must use the official split or the same split (and seed)."""
    from ..config import ConfigError

    if spec in ("random", "imagenet"):
        return
    run = run_info(spec)
    if run is None:
        return
    c = run["config"]
    pre, pre_split, pre_seed = c.get("dataset"), c.get("split", splits.OFFICIAL), c.get("split_seed", 0)
    if splits_conflict(pre, pre_split, pre_seed, cfg.dataset, cfg.split, cfg.split_seed):
        raise ConfigError(f"{spec} was pretrained on {pre} with --split {pre_split} (--split-seed {pre_seed}); scoring "
                          f"it on {cfg.dataset} with --split {cfg.split} (--split-seed {cfg.split_seed}) would test "
                          "images it was trained on: use the backbone's split")


def on_device(model: torch.nn.Module, device) -> torch.nn.Module:
    """A backbone (or a model holding one) on `device`, channels_last, as features() feeds it."""
    return model.to(device).to(memory_format=torch.channels_last)


def features(backbone, parts: dict, device, batch_size=1024, resize=None, precision="fp32") -> dict:
    """{name: (features, labels)} of each ArrayDataset in `parts` (fastssl.eval.features.extract)."""
    from .features import extract

    return {name: extract(backbone, data, device, batch_size, resize, precision) for name, data in parts.items()}
