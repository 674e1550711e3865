"""The train/val/test split of pooled labelled images (`--split 80/10/10`): disjoint, stratified with
exact per-class counts, seeded, covering the pool; bad split strings are refused."""

import numpy as np
import pytest

from pipelines import DataError, datasets
from pipelines.data import splits


def test_parse_split():
    assert splits.parse_split("official") is None
    assert splits.parse_split("80/10/10") == (80.0, 10.0, 10.0)
    assert splits.parse_split("70/15/15") == (70.0, 15.0, 15.0)
    assert splits.parse_split("33.5/33.25/33.25") == (33.5, 33.25, 33.25)


@pytest.mark.parametrize(
    "text",
    [
        "80/10",
        "50/50/50",
        "90/20/-10",
        "80/10/ten",
        "",
        "80/10/10/0",
        "100/0/0",
        "nan/50/50",
        "80//20",
        "80,10,10",
    ],
)
def test_parse_split_refuses(text):
    with pytest.raises(DataError, match="--split"):
        splits.parse_split(text)


def test_split_three_cifar10_sized_pool():
    # CIFAR-10's pooled layout: 6,000 images per class, classes interleaved.
    labels = np.tile(np.arange(10), 6000)
    rng = np.random.default_rng(1)
    labels = labels[rng.permutation(len(labels))]
    train, val, test = splits.split_three(labels, (80, 10, 10), seed=0)
    assert (len(train), len(val), len(test)) == (48000, 6000, 6000)
    for part, per_class in ((train, 4800), (val, 600), (test, 600)):
        assert np.array_equal(np.bincount(labels[part], minlength=10), np.full(10, per_class))
        assert np.array_equal(part, np.sort(part)) and part.dtype == np.int64
    everything = np.concatenate([train, val, test])
    assert len(np.unique(everything)) == len(labels) == len(everything)  # disjoint and covering


def test_split_three_uneven_classes_and_seeds():
    labels = np.repeat(np.arange(3), [10, 25, 7])
    train, val, test = splits.split_three(labels, (80, 10, 10), seed=3)
    # round-half-up of 10% of each class: 1, 3 (2.5), 1 (0.7)
    for part in (val, test):
        assert list(np.bincount(labels[part], minlength=3)) == [1, 3, 1]
    assert len(train) + len(val) + len(test) == len(labels)
    again = splits.split_three(labels, (80, 10, 10), seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((train, val, test), again))
    other = splits.split_three(labels, (80, 10, 10), seed=4)
    assert not np.array_equal(test, other[2])


def test_split_three_refuses_a_class_too_small():
    with pytest.raises(DataError, match="too few"):
        splits.split_three(np.array([0, 0, 1, 1, 1, 1]), (34, 33, 33))


def test_load_split_pools_train_and_test(monkeypatch):
    monkeypatch.delenv("FASTSSL_DATA", raising=False)
    train, test = datasets.load("cifar10-sample", "train"), datasets.load("cifar10-sample", "test")
    parts = datasets.load_split("cifar10-sample", "80/10/10", seed=0)
    assert [len(parts[p]) for p in ("train", "val", "test")] == [2400, 300, 300]
    for p in ("train", "val", "test"):
        assert parts[p].mean == train.mean and parts[p].classes == train.classes
        assert np.array_equal(np.bincount(parts[p].labels), np.full(10, len(parts[p]) // 10))
    # Every pooled image lands in exactly one part: compare pixel hashes with the official splits.
    key = lambda imgs: sorted(bytes(x.tobytes()) for x in imgs)  # noqa: E731
    assert key(np.concatenate([parts[p].images for p in ("train", "val", "test")])) == key(
        np.concatenate([train.images, test.images])
    )
    official = datasets.load_split("cifar10-sample", "official")
    assert official["val"] is None and np.array_equal(official["test"].labels, test.labels)


def test_load_split_refuses_unlabelled_union():
    with pytest.raises(DataError, match="unlabelled"):
        datasets.load_split("cifar10+cifar100", "80/10/10")


def test_load_split_refuses_a_streamed_dataset(monkeypatch):
    class Streamed:  # what load() gives for a converted file: images stay in it
        labels = np.zeros(10, np.int64)

    monkeypatch.setattr(datasets, "load", lambda *a, **k: Streamed())
    with pytest.raises(DataError, match="converted dataset"):
        datasets.load_split("/data/c10_train.beton", "80/10/10")
