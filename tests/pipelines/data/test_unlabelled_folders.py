"""Unlabelled photo collections: a folder of images without subfolders, or any folder read with
unlabelled=True (`--dataset images`), gives labels UNLABELLED and no classes; a folder of class
subfolders is read as before."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from pipelines import DataError, datasets
from pipelines.data import imagefolder
from pipelines.data.arrays import UNLABELLED, label_kind, require_labels
from pipelines.formats import manifest


def write_images(folder, names, side=16, seed=0):
    """PNG files of random pixels (lossless, so read-backs compare exactly); returns their paths."""
    rng = np.random.default_rng(seed)
    paths = []
    for name in names:
        path = os.path.join(folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_a_flat_folder_is_unlabelled(tmp_path):
    paths = write_images(str(tmp_path), ["b.png", "a.png", "c.png"])
    data = imagefolder.read_imagefolder("train", str(tmp_path))
    assert data.classes == [] and (data.labels == UNLABELLED).all() and len(data) == 3
    np.testing.assert_array_equal(data.images[0], np.asarray(Image.open(paths[1])))  # sorted: a.png first
    files = imagefolder.scan(str(tmp_path))
    assert files.classes == [] and (files.labels == UNLABELLED).all() and files.paths == sorted(paths)
    assert (datasets.load("imagefolder", "train", str(tmp_path)).labels == UNLABELLED).all()


def test_nested_folders_are_classes_unless_read_as_images(tmp_path):
    write_images(str(tmp_path), ["2019/x.png", "2019/deep/y.png", "2020/z.png"])
    as_classes = imagefolder.read_imagefolder("train", str(tmp_path))
    assert as_classes.classes == ["2019", "2020"] and as_classes.labels.tolist() == [0, 0, 1]
    data = datasets.load("images", "train", str(tmp_path))
    assert data.classes == [] and (data.labels == UNLABELLED).all() and len(data) == 3
    assert (
        data.name == "images" and datasets.load("images", "train", str(tmp_path), subset=2).labels.size == 2
    )
    files = imagefolder.scan(str(tmp_path), unlabelled=True)
    assert len(files) == 3 and (files.labels == UNLABELLED).all() and files.name == "images"


def test_a_labelled_folder_is_read_as_before(tmp_path):
    write_images(str(tmp_path), ["cat/1.png", "cat/2.png", "dog/1.png", "loose.png"])
    data = imagefolder.read_imagefolder("train", str(tmp_path))
    assert data.classes == ["cat", "dog"] and data.labels.tolist() == [0, 0, 1]  # loose.png ignored
    files = imagefolder.scan(str(tmp_path))
    assert files.labels.tolist() == [0, 0, 1] and files.name == "imagefolder"
    require_labels(data, "kNN")  # no error


def test_train_and_test_splits_follow_train(tmp_path):
    write_images(str(tmp_path), ["train/a.png", "train/b.png", "test/c.png"])
    test = imagefolder.read_imagefolder("test", str(tmp_path))
    assert len(test) == 1 and (test.labels == UNLABELLED).all()
    assert (imagefolder.scan(str(tmp_path), "test").labels == UNLABELLED).all()
    labelled = tmp_path / "labelled"
    write_images(str(labelled), ["train/cat/a.png", "test/c.png"])
    with pytest.raises(DataError, match="training split has classes"):
        imagefolder.read_imagefolder("test", str(labelled))


def test_label_kind_and_require_labels(tmp_path):
    assert (
        label_kind([0, 1]) == "classes"
        and label_kind([-1, -1]) == "none"
        and label_kind([0, -1]) == "partial"
    )
    write_images(str(tmp_path), ["a.png"])
    with pytest.raises(DataError, match="has no labels.*kNN needs labelled images"):
        require_labels(imagefolder.read_imagefolder("train", str(tmp_path)), "kNN")


def test_an_old_manifest_reads_as_labelled(tmp_path):
    out = str(tmp_path / "x.beton")
    need = ["count", "classes", "split", "labels_sha256", "mean", "std", "image_policy", "sha256"]
    with open(out + ".manifest.json", "w") as f:
        json.dump({"manifest_version": manifest.MANIFEST_VERSION, "format": "ffcv", **dict.fromkeys(need)}, f)
    assert manifest.checked("ffcv", out)["labels"] == "classes"
