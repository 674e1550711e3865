"""Which images go where: class-balanced subsets, validation hold-outs and train/val/test splits.

    from pipelines.data import splits
    keep = splits.first_per_class(labels, 5000)                 # the first 500 of each of 10 classes
    train_idx, val_idx = splits.stratified_split(labels, 0.1, seed=0)
    parts = splits.split_three(labels, splits.parse_split("80/10/10"), seed=0)

Every function is a pure function of its arguments (numpy's default_rng(seed) where random), so a
split is reproduced from its seed alone.
"""

import numpy as np

from ..errors import DataError

SPLITS = ("train", "test")  # the splits a dataset is read as


def first_per_class(labels, n, num_classes=None) -> np.ndarray:
    """Indices of the first n images, class-balanced: the earliest n // C images of every class (the
    first n % C classes by label take one more), in the original order. int64 (n,), sorted."""
    labels = np.asarray(labels)
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 < n <= len(labels):
        raise DataError(f"subset must be an integer in 1..{len(labels)} (the images available), got {n!r}")
    if num_classes == 0:  # unlabelled images: nothing to balance, the first n
        return np.arange(int(n), dtype=np.int64)
    per, extra = divmod(int(n), num_classes)
    picks = []
    for c in range(num_classes):
        want = per + (c < extra)
        have = np.flatnonzero(labels == c)
        if len(have) < want:
            raise DataError(f"subset {n} needs {want} images of class {c}, which has only {len(have)}")
        picks.append(have[:want])
    return np.sort(np.concatenate(picks)).astype(np.int64)


def stratified_split(labels, fraction, seed=0):
    """Class-balanced random split: (train_idx, val_idx), disjoint sorted int64 arrays covering all of
    `labels`. Each class with >= 2 images gives round(fraction * count) of them (at least 1, never all)
    to validation, drawn with numpy's default_rng(seed): a pure function of (labels, fraction, seed)."""
    labels = np.asarray(labels)
    if not 0 < fraction < 1:
        raise DataError(f"the validation fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) < 2:
            continue  # a lone image stays in training
        k = min(max(int(round(fraction * len(members))), 1), len(members) - 1)
        val.append(rng.permutation(members)[:k])
    if not val:
        raise DataError("no class has 2 images: cannot hold out a validation split")
    val = np.sort(np.concatenate(val)).astype(np.int64)
    train = np.setdiff1d(np.arange(len(labels), dtype=np.int64), val, assume_unique=True)
    return train, val


OFFICIAL = "official"  # the dataset's own train/test split


def parse_split(text) -> tuple[float, float, float] | None:
    """`--split` text -> (train, val, test) percentages, or None for "official".
    "80/10/10": three positive numbers separated by '/', summing to 100."""
    if text == OFFICIAL:
        return None
    parts = str(text).split("/")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(parts) != 3 or len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
        raise DataError(
            f"--split: expected 'official' or three positive train/val/test percentages like 80/10/10, got {text!r}"
        )
    if abs(sum(values) - 100) > 1e-6:
        raise DataError(f"--split: the percentages must add up to 100, got {text!r} (sum {sum(values):g})")
    return values


def split_three(labels, percents, seed=0):
    """Stratified, seeded train/val/test split: (train_idx, val_idx, test_idx), disjoint sorted int64
    arrays covering all of `labels`. Each class of n images gives round(p_test% n) to test and
    round(p_val% n) to validation (drawn with numpy's default_rng(seed)), the rest to train: a pure
    function of (labels, percents, seed). Every class must keep at least one training image."""
    labels = np.asarray(labels)
    _, p_val, p_test = (float(p) / 100 for p in percents)
    rng = np.random.default_rng(seed)
    val, test = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        k_test, k_val = (int(np.floor(p * len(members) + 0.5)) for p in (p_test, p_val))
        if k_test + k_val >= len(members):
            raise DataError(f"class {c} has {len(members)} images: too few for a {percents} split")
        test.append(members[:k_test])
        val.append(members[k_test : k_test + k_val])
    val, test = (np.sort(np.concatenate(v)).astype(np.int64) for v in (val, test))
    if not len(val) or not len(test):
        raise DataError(
            f"the {percents} split leaves the validation or test part empty ({len(labels)} images)"
        )
    train = np.setdiff1d(np.arange(len(labels), dtype=np.int64), np.concatenate([val, test]))
    return train, val, test
