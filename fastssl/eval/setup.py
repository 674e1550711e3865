"""Evaluation setup, the one path every evaluation command takes: splits -> device -> backbone -> features.

    from fastssl.eval.setup import setup, on_device, features
    device, data = setup(cfg)          # cfg has device, dataset, data_dir, split, split_seed
    bank, val_idx = data.labelled()    # what classifiers learn from; val_idx: the split's validation images
    feats = features(on_device(backbone, device), {"train": bank, "test": data.test}, device)  # name -> (f, y)

The split and its parts: fastssl/data.py. A backbone and its evaluation must use the same split:
the other split's test part was in this one's training images.
"""

import json
import os
from dataclasses import field, replace

import torch

from pipelines.data import splits
from pipelines.formats import converted

from ..data import load_data


def run_info(path: str) -> dict | None:
    """config.json of the fastssl run that `path` (a run directory or a file inside one) belongs to."""
    d = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    p = os.path.join(d, "config.json")
    if not os.path.isfile(p):
        return None
    with open(p) as f:
        info = json.load(f)
    return info if isinstance(info, dict) and "config" in info else None


def image_size_field():
    """The `image_size` field of the evaluation commands (resolved by view_size)."""
    # The crops follow the usual evaluation transform (224 from 256 on ImageNet): shorter side resized to
    # S / 0.875, then the centre S x S crop. 0 or unset: the backbone run's view side (its config.json), else
    # 224 when the largest stored side reaches 224, else 96.
    return field(
        default=None,
        metadata={
            "help": "converted datasets: evaluation crop side S (0/unset: the backbone run's, else 224 or 96)"
        },
    )


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
    """(device, SplitData) for a command config with device, dataset, data_dir, split, split_seed
    (and image_size, backbone: a converted dataset's views get view_size(cfg))."""
    from ..config import ConfigError
    from ..runtime import resolve_device

    device = resolve_device(cfg.device)
    data = load_data(
        cfg.dataset,
        cfg.data_dir,
        cfg.split,
        cfg.split_seed,
        subset=subset,
        seed=getattr(cfg, "seed", 0),
        test=test,
    )
    if hasattr(cfg, "image_size"):
        if cfg.image_size and not isinstance(data.train, converted.ConvertedDataset):
            raise ConfigError(
                f"--image-size applies to converted datasets; {cfg.dataset} is held in memory "
                "at its own size" + (" (--resize upsamples it)" if hasattr(cfg, "resize") else "")
            )
        size = view_size(cfg)
        data = replace(data, **{k: converted.sized(getattr(data, k), size) for k in ("train", "val", "test")})
    return device, data


# Datasets whose images overlap: a split of one can hold another's training images.
IMAGES = {
    "cifar10": {"cifar10"},
    "cifar10-sample": {"cifar10"},
    "cifar10+cifar100": {"cifar10", "cifar100"},
    "cifar100": {"cifar100"},
}


def _split_key(dataset, split, split_seed):
    return (
        ("official",)
        if splits.parse_split(split) is None
        else (dataset, splits.parse_split(split), split_seed)
    )


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
        raise ConfigError(
            f"{spec} was pretrained on {pre} with --split {pre_split} (--split-seed {pre_seed}); scoring "
            f"it on {cfg.dataset} with --split {cfg.split} (--split-seed {cfg.split_seed}) would test "
            "images it was trained on: use the backbone's split"
        )


def on_device(model: torch.nn.Module, device) -> torch.nn.Module:
    """A backbone (or a model holding one) on `device`, channels_last, as features() feeds it."""
    return model.to(device).to(memory_format=torch.channels_last)


def features(backbone, parts: dict, device, batch_size=1024, resize=None, precision="fp32") -> dict:
    """{name: (features, labels)} of each ArrayDataset in `parts` (fastssl.eval.features.extract)."""
    from .features import extract

    return {
        name: extract(backbone, data, device, batch_size, resize, precision) for name, data in parts.items()
    }
