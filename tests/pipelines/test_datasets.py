"""Dataset readers against the raw files, the published statistics, and every way data can be broken."""

import dataclasses
import hashlib
import io
import os
import pickle
import tarfile
import urllib.error

import numpy as np
import pytest
from PIL import Image

from pipelines import DataError, datasets
from pipelines.data import cifar, splits
from pipelines.data.arrays import UNLABELLED, ArrayDataset, as_dataset, channel_stats

C10 = "cifar-10-batches-py"


@pytest.fixture(scope="module")
def c10_train(cifar_root):
    return datasets.load("cifar10", "train", data_dir=cifar_root)


@pytest.fixture(scope="module")
def c10_test(cifar_root):
    return datasets.load("cifar10", "test", data_dir=cifar_root)


def raw_batch(path):
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def reference_stats(images):
    """Per-channel mean and population std in [0, 1] units, from exact integer sums over chunks."""
    pixels = images.reshape(-1, 3)
    total, squares = np.zeros(3, np.int64), np.zeros(3, np.int64)
    for chunk in np.array_split(pixels, 20):
        v = chunk.astype(np.int32).T.copy()  # (3, n) channel rows
        total += v.sum(1)
        squares += np.einsum("ij,ij->i", v, v, dtype=np.int64)
    n = len(pixels)
    mean = total / n
    return mean / 255, np.sqrt(squares / n - mean**2) / 255


def first_of_each_class(labels, per):
    """Indices of the first `per` images of every class, by a plain scan (the reference for subsets)."""
    seen, keep = {}, []
    for i, y in enumerate(labels):
        if seen.get(y, 0) < per:
            seen[y] = seen.get(y, 0) + 1
            keep.append(i)
    return np.array(keep)


# ------------------------------------------------------------------------------------------ real data


def test_cifar10_train_and_test(cifar_root, c10_train, c10_test):
    assert c10_train.images.shape == (50000, 32, 32, 3) and c10_test.images.shape == (10000, 32, 32, 3)
    for d, per in ((c10_train, 5000), (c10_test, 1000)):
        assert d.images.dtype == np.uint8 and d.labels.dtype == np.int64 and d.images.flags.c_contiguous
        assert np.bincount(d.labels).tolist() == [per] * 10
        assert d.name == "cifar10" and d.mean == cifar.CIFAR10_MEAN and d.std == cifar.CIFAR10_STD
    assert c10_train.classes == [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    assert c10_train.labels[:5].tolist() == [6, 9, 9, 4, 1]
    # NHWC from the planar rows of the raw files: first and last image of the split
    first = raw_batch(os.path.join(cifar_root, C10, "data_batch_1"))
    last = raw_batch(os.path.join(cifar_root, C10, "data_batch_5"))
    assert np.array_equal(c10_train.images[0], first[b"data"][0].reshape(3, 32, 32).transpose(1, 2, 0))
    assert np.array_equal(c10_train.images[-1], last[b"data"][-1].reshape(3, 32, 32).transpose(1, 2, 0))
    second = raw_batch(os.path.join(cifar_root, C10, "data_batch_2"))
    assert c10_train.labels[10000:10005].tolist() == second[b"labels"][:5]


def test_cifar10_found_by_folder_and_environment(cifar_root, c10_test, monkeypatch):
    direct = datasets.load("cifar10", "test", data_dir=os.path.join(cifar_root, C10))
    monkeypatch.setenv("FASTSSL_DATA", cifar_root)
    from_env = datasets.load("cifar10", "test")
    for d in (direct, from_env):
        assert np.array_equal(d.images, c10_test.images) and np.array_equal(d.labels, c10_test.labels)


def test_cifar10_constants_match_train_statistics(c10_train):
    mean, std = reference_stats(c10_train.images)
    np.testing.assert_allclose(mean, cifar.CIFAR10_MEAN, atol=1e-3)
    np.testing.assert_allclose(std, cifar.CIFAR10_STD, atol=1e-3)
    np.testing.assert_allclose(channel_stats(c10_train.images), [mean, std], atol=1e-9)


def test_cifar100(cifar100_root):
    train = datasets.load("cifar100", "train", data_dir=cifar100_root)
    test = datasets.load("cifar100", "test", data_dir=cifar100_root)
    assert train.images.shape == (50000, 32, 32, 3) and test.images.shape == (10000, 32, 32, 3)
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.int64
    assert (
        np.bincount(train.labels).tolist() == [500] * 100 and np.bincount(test.labels).tolist() == [100] * 100
    )
    assert len(train.classes) == 100 and train.classes[:3] == ["apple", "aquarium_fish", "baby"]
    assert train.classes[-1] == "worm" and train.name == "cifar100"
    raw = raw_batch(os.path.join(cifar100_root, "cifar-100-python", "train"))
    assert train.labels[:20].tolist() == raw[b"fine_labels"][:20]
    mean, std = reference_stats(train.images)
    np.testing.assert_allclose(mean, cifar.CIFAR100_MEAN, atol=2e-3)
    # JPEG recompression smooths the pixels, which lowers the std of this copy by up to 2.4e-3.
    np.testing.assert_allclose(std, cifar.CIFAR100_STD, atol=3e-3)


def test_cifar10_plus_cifar100_adds_unlabelled_images(cifar_root, cifar100_root, c10_train, c10_test):
    train = datasets.load("cifar10+cifar100", "train", data_dir=cifar_root)
    c100 = datasets.load("cifar100", "train", data_dir=cifar100_root)
    assert np.array_equal(train.images[:50000], c10_train.images) and np.array_equal(
        train.images[50000:], c100.images
    )
    assert (
        np.array_equal(train.labels[:50000], c10_train.labels) and (train.labels[50000:] == UNLABELLED).all()
    )
    test = datasets.load("cifar10+cifar100", "test", data_dir=cifar_root)
    assert np.array_equal(test.images, c10_test.images) and test.classes == c10_train.classes
    assert train.mean == test.mean == c10_train.mean  # both splits normalised alike
    with pytest.raises(DataError, match="subset"):
        datasets.load("cifar10+cifar100", "train", data_dir=cifar_root, subset=100)


def test_subset_is_the_first_images_of_each_class(c10_train, cifar_root):
    sub = datasets.load("cifar10", "train", data_dir=cifar_root, subset=100)
    keep = first_of_each_class(c10_train.labels, 10)
    assert np.array_equal(sub.images, c10_train.images[keep]) and np.array_equal(
        sub.labels, c10_train.labels[keep]
    )
    assert sub.mean == cifar.CIFAR10_MEAN  # statistics of the full training split
    uneven = splits.first_per_class(c10_train.labels, 23, 10)
    assert np.bincount(c10_train.labels[uneven]).tolist() == [3, 3, 3] + [2] * 7
    assert np.all(np.diff(uneven) > 0)
    for bad in (0, -5, 50001, 2.5):
        with pytest.raises(DataError, match="subset"):
            splits.first_per_class(c10_train.labels, bad, 10)
    with pytest.raises(DataError, match="class 1"):
        splits.first_per_class(np.array([0, 0, 0, 1]), 4, 2)


def test_sample_is_pixel_exact(c10_train, c10_test):
    for split, full, per in (("train", c10_train, 200), ("test", c10_test, 100)):
        sample = datasets.load("cifar10-sample", split)
        keep = first_of_each_class(full.labels, per)
        assert np.array_equal(sample.images, full.images[keep]), split
        assert np.array_equal(sample.labels, full.labels[keep]) and sample.classes == full.classes
        assert sample.mean == cifar.CIFAR10_MEAN and sample.name == "cifar10-sample"
    assert os.path.getsize(cifar.SAMPLE) < 6.5e6


def test_sample_needs_no_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTSSL_DATA", str(tmp_path / "nothing"))
    sample = datasets.load("cifar10-sample", "test", subset=50)
    assert sample.images.shape == (50, 32, 32, 3) and np.bincount(sample.labels).tolist() == [5] * 10


def test_damaged_sample_is_reported(monkeypatch, tmp_path):
    with np.load(cifar.SAMPLE) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["test/sha256"] = np.array("0" * 64)
    np.savez(tmp_path / "sample.npz", **arrays)
    monkeypatch.setattr(cifar, "SAMPLE", str(tmp_path / "sample.npz"))
    with pytest.raises(DataError, match="SHA-256"):
        datasets.load("cifar10-sample", "test")


# ------------------------------------------------------------------------------------- broken CIFAR


@pytest.fixture
def fake_c10(tmp_path, cifar_root):
    """tmp_path/cifar-10-batches-py with the real meta and test batch (links), train batches absent."""
    folder = tmp_path / C10
    folder.mkdir()
    for name in ("batches.meta", "test_batch"):
        os.symlink(os.path.join(cifar_root, C10, name), folder / name)
    return folder


def replace_test_batch(folder, entry):
    os.remove(folder / "test_batch")
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(entry, f, protocol=2)


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="CIFAR-10 not found") as e:
        datasets.load("cifar10", "test", data_dir=tmp_path / "nowhere", download=False)
    assert "--data-dir" in str(e.value) and "FASTSSL_DATA" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(DataError, match="cifar-100-python"):
        datasets.load("cifar100", "test", data_dir=tmp_path, download=False)


def test_missing_file_is_named_and_never_downloaded_over(fake_c10, monkeypatch):
    monkeypatch.setattr(cifar, "_open", lambda *a, **k: pytest.fail("an existing folder was downloaded over"))
    assert len(datasets.load("cifar10", "test", data_dir=fake_c10.parent)) == 10000
    with pytest.raises(DataError, match="missing file .*data_batch_1"):
        datasets.load("cifar10", "train", data_dir=fake_c10.parent, download=True)


def test_truncated_pickle(fake_c10, cifar_root):
    with open(os.path.join(cifar_root, C10, "test_batch"), "rb") as f:
        head = f.read(10_000_000)
    os.remove(fake_c10 / "test_batch")
    (fake_c10 / "test_batch").write_bytes(head)
    with pytest.raises(DataError, match="test_batch: unreadable") as e:
        datasets.load("cifar10", "test", data_dir=fake_c10)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "entry, message",
    [
        ({b"data": np.zeros((10000, 3071), np.uint8), b"labels": [0] * 10000}, r"uint8 \(10000, 3072\)"),
        ({b"data": np.zeros((10000, 3072), np.float32), b"labels": [0] * 10000}, r"uint8 \(10000, 3072\)"),
        ({b"data": np.zeros((9999, 3072), np.uint8), b"labels": [0] * 9999}, r"uint8 \(10000, 3072\)"),
        (
            {b"data": np.zeros((10000, 3072), np.uint8), b"labels": [0] * 9999 + [10]},
            r"labels must lie in 0\.\.9",
        ),
        ({b"data": np.zeros((10000, 3072), np.uint8), b"labels": [0] * 9000}, "expected 10000 labels"),
        ({b"data": np.zeros((10000, 3072), np.uint8)}, "missing key labels"),
        ([1, 2, 3], "expected a dict"),
    ],
)
def test_malformed_batch(fake_c10, entry, message):
    replace_test_batch(fake_c10, entry)
    with pytest.raises(DataError, match=message) as e:
        datasets.load("cifar10", "test", data_dir=fake_c10.parent)
    assert "test_batch" in str(e.value)


def test_pickle_cannot_run_code(fake_c10, tmp_path):
    marker = tmp_path / "ran"
    replace_test_batch(fake_c10, {b"data": Touch(str(marker))})
    with pytest.raises(DataError, match="test_batch: unreadable.*unexpected object"):
        datasets.load("cifar10", "test", data_dir=fake_c10.parent)
    assert not marker.exists()


class Touch:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


# ------------------------------------------------------------------------------------------ download


def test_offline_download_says_where_to_put_the_files(tmp_path, monkeypatch):
    def offline(url):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(cifar, "_open", offline)
    root = tmp_path / "data"
    with pytest.raises(DataError) as e:
        datasets.load("cifar10", "train", data_dir=root)
    msg = str(e.value)
    assert "download" in msg and "no route to host" in msg and cifar.ARCHIVES["cifar10"].url in msg
    assert f"extracted {C10}/ folder in {root}" in msg and "--data-dir" in msg and "FASTSSL_DATA" in msg
    assert "\n" not in msg and not root.exists()  # nothing created, nothing half-written left behind


def test_a_machine_without_dns_is_told_at_once(tmp_path, monkeypatch):
    # getaddrinfo has no timeout: offline it can hang long before urlopen's own timeout starts.
    import socket
    import time
    import urllib.request

    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: time.sleep(30))
    monkeypatch.setattr(
        urllib.request, "urlopen", lambda *a, **k: pytest.fail("connected without a resolved host")
    )
    monkeypatch.setattr(cifar, "RESOLVE_TIMEOUT", 0.3)
    t0 = time.monotonic()
    with pytest.raises(DataError) as e:
        cifar.find_cifar("cifar100", tmp_path / "data", download=True)
    assert time.monotonic() - t0 < 3
    msg = str(e.value)
    assert "no DNS answer for www.cs.toronto.edu within 0.3 s (offline?)" in msg and "\n" not in msg
    assert not (tmp_path / "data").exists()


def test_download_with_wrong_md5_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(cifar, "_open", lambda url: io.BytesIO(b"<html>"))
    with pytest.raises(DataError, match="md5"):
        datasets.load("cifar100", "test", data_dir=tmp_path)
    assert os.listdir(tmp_path) == []


def test_download_is_verified_and_extracted(tmp_path, monkeypatch, cifar_root, c10_test):
    archive = tmp_path / "cifar-10-python.tar"  # uncompressed: same tar layout, written fast
    with tarfile.open(archive, "w") as tar:
        tar.add(os.path.join(cifar_root, C10), arcname=C10)
    with open(archive, "rb") as f:
        md5 = hashlib.md5(f.read()).hexdigest()
    monkeypatch.setitem(cifar.ARCHIVES, "cifar10", cifar.ARCHIVES["cifar10"]._replace(md5=md5))
    monkeypatch.setattr(cifar, "_open", lambda url: open(archive, "rb"))
    root = tmp_path / "data"
    got = datasets.load("cifar10", "test", data_dir=root / C10)  # pointing at the folder-to-be works too
    assert np.array_equal(got.images, c10_test.images) and np.array_equal(got.labels, c10_test.labels)
    assert os.listdir(root) == [C10]  # the temporary archive and extraction folder are gone


# ---------------------------------------------------------------------------------------- image folders


def write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture
def folder(tmp_path):
    """tmp_path/photos/{cat,dog}/... with 3 + 2 PNG images of 8x6 pixels; returns (root, images by class)."""
    rng = np.random.default_rng(0)
    images = {
        c: [rng.integers(0, 256, (6, 8, 3), dtype=np.uint8) for _ in range(k)]
        for c, k in (("dog", 2), ("cat", 3))
    }
    root = tmp_path / "photos"
    for c, arrays in images.items():
        for i, a in enumerate(arrays):
            write_png(root / c / (f"img{i}.PNG" if i == 1 else f"img{i}.png"), a)
    (root / "cat" / "notes.txt").write_text("not an image")
    return root, images


def test_imagefolder(folder):
    root, images = folder
    data = datasets.load("imagefolder", "train", data_dir=root)
    assert data.classes == ["cat", "dog"] and data.labels.tolist() == [0, 0, 0, 1, 1]
    expected = np.stack(images["cat"] + images["dog"])
    assert np.array_equal(data.images, expected)
    pixels = expected.reshape(-1, 3) / 255
    np.testing.assert_allclose(data.mean, pixels.mean(0), atol=1e-12)
    np.testing.assert_allclose(data.std, pixels.std(0), atol=1e-12)
    assert np.array_equal(
        datasets.load("imagefolder", "test", data_dir=root).images, expected
    )  # no split folders


def test_imagefolder_splits_share_classes_and_train_statistics(tmp_path):
    rng = np.random.default_rng(1)
    train = {c: rng.integers(0, 256, (2, 5, 5, 3), dtype=np.uint8) for c in ("a", "b", "c")}
    for c, arrays in train.items():
        for i, a in enumerate(arrays):
            write_png(tmp_path / "train" / c / f"{i}.png", a)
    test_image = rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)
    write_png(tmp_path / "test" / "b" / "x.png", test_image)
    tr = datasets.load("imagefolder", "train", data_dir=tmp_path)
    te = datasets.load("imagefolder", "test", data_dir=tmp_path)
    assert te.classes == tr.classes == ["a", "b", "c"] and te.labels.tolist() == [1]
    assert np.array_equal(te.images[0], test_image) and te.mean == tr.mean and te.std == tr.std


def test_imagefolder_resize_matches_torchvision(tmp_path):
    tv = pytest.importorskip("torchvision.transforms.v2")
    rng = np.random.default_rng(2)
    arrays = [
        rng.integers(0, 256, (12, 20, 3), dtype=np.uint8),
        rng.integers(0, 256, (9, 7, 3), dtype=np.uint8),
    ]
    write_png(tmp_path / "k" / "wide.png", arrays[0])
    Image.fromarray(arrays[1][..., 0]).save(tmp_path / "k" / "tall_gray.png")  # grayscale file -> RGB
    with pytest.raises(DataError, match="wide.png: size 20x12 differs .* image_size"):
        datasets.load("imagefolder", data_dir=tmp_path)
    data = datasets.load("imagefolder", data_dir=tmp_path, image_size=6)
    ref = tv.Compose([tv.Resize(6, interpolation=tv.InterpolationMode.BILINEAR), tv.CenterCrop(6)])
    sources = [Image.open(tmp_path / "k" / n).convert("RGB") for n in ("tall_gray.png", "wide.png")]
    assert np.array_equal(data.images, np.stack([np.asarray(ref(im)) for im in sources]))


def test_imagefolder_errors(folder, tmp_path, monkeypatch):
    root, _ = folder
    monkeypatch.delenv("FASTSSL_DATA", raising=False)  # the "needs a folder" case must not find a user's data
    with pytest.raises(DataError, match="needs a folder"):
        datasets.load("imagefolder")
    with pytest.raises(DataError, match="does not exist"):
        datasets.load("imagefolder", data_dir=tmp_path / "nowhere")
    (tmp_path / "flat").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        datasets.load("imagefolder", data_dir=tmp_path / "flat")
    (root / "empty").mkdir()
    with pytest.raises(DataError, match="empty: no images"):
        datasets.load("imagefolder", data_dir=root)
    os.rmdir(root / "empty")
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match="broken.png: cannot read image"):
        datasets.load("imagefolder", data_dir=root)
    os.remove(root / "dog" / "broken.png")
    good = root / "dog" / "img0.png"
    (root / "dog" / "cut.png").write_bytes(good.read_bytes()[:60])  # truncated after the header
    with pytest.raises(DataError, match="cut.png: cannot read image"):
        datasets.load("imagefolder", data_dir=root)
    with pytest.raises(DataError, match="image_size applies to imagefolder only"):
        datasets.load("cifar10-sample", image_size=32)


# ------------------------------------------------------------------------------------------------ misc


def test_stratified_split():
    labels = np.repeat(np.arange(10), 50)
    np.random.default_rng(0).shuffle(labels)
    labels = np.concatenate([labels, [10] * 7, [11]])  # a small class and a lone image
    train, val = splits.stratified_split(labels, 0.1, seed=3)
    assert len(np.intersect1d(train, val)) == 0 and np.array_equal(
        np.union1d(train, val), np.arange(len(labels))
    )
    assert train.dtype == val.dtype == np.int64
    assert np.bincount(labels[val], minlength=12).tolist() == [5] * 10 + [1, 0]
    again, other = splits.stratified_split(labels, 0.1, seed=3), splits.stratified_split(labels, 0.1, seed=4)
    assert np.array_equal(again[1], val) and not np.array_equal(other[1], val)
    for bad in (0, 1, -0.5):
        with pytest.raises(DataError, match="fraction"):
            splits.stratified_split(labels, bad)


def test_array_dataset_checks_and_replace():
    images = np.zeros((4, 2, 2, 3), np.uint8)
    data = ArrayDataset(images, [0, 1, 0, 1], ["a", "b"], "tiny", (0.5,) * 3, (0.25,) * 3)
    assert data.labels.dtype == np.int64 and len(data) == 4 and "4 images 2x2" in repr(data)
    assert dataclasses.replace(data, mean=(0.1, 0.2, 0.3)).mean == (0.1, 0.2, 0.3)
    with pytest.raises(DataError, match="uint8"):
        ArrayDataset(images.astype(np.float32), [0] * 4, ["a"], "bad", (0.5,) * 3, (0.25,) * 3)
    with pytest.raises(DataError, match="4 integers"):
        ArrayDataset(images, [0] * 3, ["a"], "bad", (0.5,) * 3, (0.25,) * 3)
    with pytest.raises(DataError, match="empty"):
        ArrayDataset(images[:0], np.zeros(0, np.int64), ["a"], "bad", (0.5,) * 3, (0.25,) * 3)
    for mean, std in [((0.5,) * 3, (0.25, 0.0, 0.25)), ((0.5, float("nan"), 0.5), (0.25,) * 3)]:
        with pytest.raises(DataError, match="std positive"):
            ArrayDataset(images, [0] * 4, ["a"], "bad", mean, std)


def test_as_dataset_is_the_one_check_every_pipeline_runs():
    from types import SimpleNamespace

    images = np.arange(4 * 2 * 2 * 3, dtype=np.uint8).reshape(4, 2, 2, 3)
    duck = SimpleNamespace(images=images, labels=[0, 1, 0, 1], mean=(0.5,) * 3, std=(0.25,) * 3)
    data = as_dataset(duck)
    assert isinstance(data, ArrayDataset) and data.images is images  # validated, not copied
    assert as_dataset(data) is data
    with pytest.raises(DataError, match="lacks mean, std"):
        as_dataset(SimpleNamespace(images=images, labels=[0] * 4))
    bad = SimpleNamespace(images=images.astype(np.float32), labels=[0] * 4, mean=(0.5,) * 3, std=(0.25,) * 3)
    for name in ("torchvision", "dali", "ffcv", "gpu"):
        module = pytest.importorskip(f"pipelines.loaders.{name}")
        if name in ("dali", "ffcv"):
            pytest.importorskip({"dali": "nvidia.dali", "ffcv": "ffcv"}[name])
        with pytest.raises(DataError, match="uint8"):
            module.build(bad, batch_size=2)


def test_unknown_names():
    with pytest.raises(DataError, match="unknown dataset 'svhn'; choose from cifar10, cifar100"):
        datasets.load("svhn")
    with pytest.raises(DataError, match="unknown split"):
        datasets.load("cifar10-sample", "val")
