"""The data a command sees: the `--split` fields every command shares, and the parts of that split.

    from fastssl.data import load_data, view_side
    parts = load_data("cifar10", "data", split="80/10/10", split_seed=0)  # SplitData: train / val / test
    bank, val_idx = parts.labelled()       # what classifiers learn from; val_idx: the validation images

Splits (`--split`): "official" is the dataset's own train/test split; "80/10/10" pools every
labelled image (train + test split) and divides it into train / validation / test percentages,
stratified per class and seeded by `--split-seed` (pipelines.datasets.load_split). Pretraining
learns from the train part; classifiers (linear probe, kNN) learn from train + validation with the
validation part held out for every choice; the test part is scored once. A backbone and its
evaluation must use the same split: the other split's test part was in this one's training images.

The view side of a converted dataset is decided once, by the command (`converted.sized`, with its
stem and --image-size); `view_side` reads it back for config.json and the in-memory recipe.
"""

from dataclasses import dataclass, field

import numpy as np

from pipelines import DataError, datasets
from pipelines.data import arrays, splits
from pipelines.formats.converted import ConvertedDataset

# 'official' is the dataset's own train/test split; percentages pool every labelled image (train and
# test split) and divide it per class, seeded by --split-seed.
SPLIT_HELP = "'official' or train/val/test percentages of the pooled labelled images, e.g. 80/10/10"


def split_field():
    """The `split` config field, identical in every command that takes it (check with check_split)."""
    return field(default=splits.OFFICIAL, metadata={"help": SPLIT_HELP})


def split_seed_field():
    return field(
        default=0, metadata={"help": "seed of the --split draw (equal for a backbone and its evaluations)"}
    )


def check_split(cfg) -> None:
    """__post_init__ check of the split fields (one DataError line for a bad --split)."""
    splits.parse_split(cfg.split)
    if cfg.split_seed < 0:
        raise ValueError("--split-seed must be >= 0")


@dataclass
class SplitData:
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
        both = arrays.ArrayDataset(
            np.concatenate([t.images, v.images]),
            np.concatenate([t.labels, v.labels]),
            t.classes,
            t.name,
            t.mean,
            t.std,
        )
        return both, np.arange(len(t), len(t) + len(v), dtype=np.int64)

    def image_size(self) -> list:
        """[h, w] of the images the backbone sees: the view side (converted) or the stored size (in memory)."""
        t = self.train
        return [t.image_size] * 2 if isinstance(t, ConvertedDataset) else list(t.images.shape[1:3])

    def info(self) -> dict:
        """The split as stored in summaries and config.json."""
        return {
            "split": self.split,
            "split_seed": None if self.val is None else self.split_seed,
            "train_images": len(self.train),
            "val_images": None if self.val is None else len(self.val),
            "test_images": None if self.test is None else len(self.test),
        }


def load_data(
    dataset, data_dir=None, split=splits.OFFICIAL, split_seed=0, subset=None, seed=0, test="required"
) -> SplitData:
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
        return SplitData(train, None, held_out, split, split_seed)
    parts = datasets.load_split(dataset, split, data_dir, seed=split_seed)
    train = parts["train"]
    if subset is not None:
        train = train.take(splits.first_per_class(train.labels, subset, len(train.classes)))
    return SplitData(train, parts["val"], parts["test"], split, split_seed)


def view_side(data, image_size=None) -> int | None:
    """The side of the views made from `data`: a converted split's (decided by converted.sized), else
    --image-size, else None (the recipe's default, 32)."""
    return data.image_size if isinstance(data, ConvertedDataset) else image_size
