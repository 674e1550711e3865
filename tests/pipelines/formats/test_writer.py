"""Converters: the DALI webdataset format round-trips real CIFAR-10 bit for bit through DALI's own
reader (and through Python's tarfile, an independent reader), JPEG loss is bounded, outputs appear
atomically with a manifest, existing outputs survive refusals and failures, and damaged shards end
in one DataError naming the file."""

import dataclasses
import json
import os
import tarfile

import numpy as np
import pytest

pytest.importorskip("nvidia.dali")
from pipelines import DataError, datasets  # noqa: E402
from pipelines.data import arrays
from pipelines.files import sha256
from pipelines.formats import dali as dali_format
from pipelines.formats import verify, writer


def dataset(images, labels=None, name="random"):
    labels = np.arange(len(images)) % 10 if labels is None else labels
    return arrays.ArrayDataset(
        images=images,
        labels=np.asarray(labels, np.int64),
        name=name,
        classes=[str(i) for i in range(10)],
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    )


def smooth_images(n, size, seed=0):
    """(n, size, size, 3) uint8 photos stand-ins: bilinear upsampling of 4x4 random colours (JPEG-friendly)."""
    import torch

    small = torch.from_numpy(np.random.default_rng(seed).uniform(0, 255, (n, 3, 4, 4)).astype(np.float32))
    big = torch.nn.functional.interpolate(small, size=(size, size), mode="bilinear", align_corners=False)
    return big.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


@pytest.fixture(scope="module")
def cifar_test(cifar_root):
    return datasets.load("cifar10", "test", data_dir=cifar_root)


@pytest.fixture(scope="module")
def cifar_dali(cifar_test, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("dali") / "cifar10_test")
    manifest = writer.convert(
        cifar_test,
        "dali",
        out,
        workers=2,
        n_check=500,
        source={"dataset": "cifar10", "split": "test", "data_dir": "x"},
    )
    return out, manifest


def test_raw_round_trip_is_exact_on_cifar10_test(cifar_test, cifar_dali):
    out, manifest = cifar_dali
    images, labels = dali_format.read_all(out, workers=2)
    assert images.shape == (10000, 32, 32, 3) and images.dtype == np.uint8 and labels.dtype == np.int64
    np.testing.assert_array_equal(images, cifar_test.images)
    np.testing.assert_array_equal(labels, cifar_test.labels)
    info = dali_format.check(out, deep=True)
    assert (info["count"], info["height"], info["width"], info["encoding"]) == (10000, 32, 32, "raw")
    assert len(info["shards"]) == 10  # shard_size 1000 by default
    assert not [f for f in os.listdir(os.path.dirname(out)) if ".tmp" in f]  # no temporary output left


def test_manifest_records_provenance_and_checksums(cifar_test, cifar_dali):
    out, manifest = cifar_dali
    with open(os.path.join(out, "manifest.json")) as f:
        on_disk = json.load(f)
    assert manifest["manifest"] == os.path.join(out, "manifest.json")
    assert on_disk["count"] == 10000 and on_disk["classes"] == list(cifar_test.classes)
    assert on_disk["source"] == {"dataset": "cifar10", "split": "test", "data_dir": "x"}
    assert on_disk["library"] == "nvidia-dali" and on_disk["library_version"] == dali_format.VERSION()
    assert on_disk["encoding"] == "raw" and on_disk["image_shape"] == [32, 32, 3]
    assert on_disk["verified"]["checked"] >= 500 and on_disk["verified"]["psnr_db"] is None  # None = exact
    files = sorted(f for f in os.listdir(out) if f != "manifest.json")
    assert sorted(on_disk["sha256"]) == files  # every written file, nothing else
    for name in files:
        assert on_disk["sha256"][name] == sha256(os.path.join(out, name))
    verify.check_checksums("dali", out)


def test_small_random_set_round_trips_through_dali_and_tarfile(tmp_path):
    rng = np.random.default_rng(1)
    data = dataset(rng.integers(0, 256, (37, 20, 28, 3), dtype=np.uint8), rng.integers(0, 1000, 37))
    out = str(tmp_path / "small")
    writer.convert(data, "dali", out, shard_size=8, workers=3, progress=False)
    info = dali_format.check(out, deep=True)
    assert [s["count"] for s in info["shards"]] == [8, 8, 8, 8, 5]
    images, labels = dali_format.read_all(out)
    np.testing.assert_array_equal(images, data.images)
    np.testing.assert_array_equal(labels, data.labels)
    pick = [36, 0, 9, 17, 17]
    images, labels = dali_format.read(out, pick)  # subset through temporary index files
    np.testing.assert_array_equal(images, data.images[[0, 9, 17, 36]])
    np.testing.assert_array_equal(labels, data.labels[[0, 9, 17, 36]])
    streamed = dali_format.stream(out, pick, batch_size=3)  # the read-back check's reader: a few at a time
    np.testing.assert_array_equal(np.stack(list(streamed)), data.images[[0, 9, 17, 36]])
    # An independent reader of the same bytes: Python's tarfile.
    with tarfile.open(os.path.join(out, "shard-00001.tar")) as tar:
        names = tar.getnames()
        assert names[:2] == ["00000008.rgb", "00000008.cls"] and len(names) == 16
        raw = tar.extractfile("00000010.rgb").read()
        label = tar.extractfile("00000010.cls").read()
    assert raw == data.images[10].tobytes() and np.frombuffer(label, "<i8")[0] == data.labels[10]


def test_shuffled_order_is_the_seeds_permutation_and_mixes_every_window(tmp_path):
    """order_seed writes stored sample j = source sample stored_order(N, seed)[j] (recorded in the
    manifest), bit-exact, so a class-by-class source comes out with classes mixed in every window."""
    rng = np.random.default_rng(2)
    n = 600
    sorted_labels = np.repeat(np.arange(10), n // 10)  # an image folder's class-by-class listing
    data = dataset(rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), sorted_labels)
    out = str(tmp_path / "shuffled")
    manifest = writer.convert(data, "dali", out, shard_size=100, workers=2, progress=False, order_seed=5)
    assert manifest["order"] == {"shuffled": True, "seed": 5}
    order = np.random.default_rng(5).permutation(n)
    np.testing.assert_array_equal(writer.stored_order(n, 5), order)
    images, labels = dali_format.read_all(out)
    np.testing.assert_array_equal(images, data.images[order])
    np.testing.assert_array_equal(labels, sorted_labels[order])
    # every 60-sample window holds most of the 10 classes (in source order: one class)
    assert min(len(np.unique(labels[i : i + 60])) for i in range(0, n, 60)) >= 7
    kept = writer.convert(data, "dali", str(tmp_path / "kept"), shard_size=100, workers=2, progress=False)
    assert kept["order"] == {"shuffled": False, "seed": None}
    np.testing.assert_array_equal(dali_format.read_all(str(tmp_path / "kept"))[1], sorted_labels)
    with pytest.raises(DataError, match="order_seed"):
        writer.convert(data, "dali", str(tmp_path / "bad"), order_seed=-1, progress=False)


def test_jpg_mode_is_close(tmp_path):
    data = dataset(smooth_images(200, 64))
    out = str(tmp_path / "jpg")
    manifest = writer.convert(data, "dali", out, encoding="jpg", quality=90, shard_size=64, progress=False)
    images, labels = dali_format.read_all(out)
    np.testing.assert_array_equal(labels, data.labels)
    value = verify.psnr(images, data.images)
    # Measured ~43 dB at quality 90 on these smooth images; a misdecoded or shuffled file scores < 15.
    assert 35.0 < value < 60.0, value
    assert manifest["encoding"] == "jpg" and manifest["verified"]["psnr_db"] == pytest.approx(value, abs=2.0)
    assert verify.psnr(images[1:], data.images[:-1]) < 25.0  # the check above can see a misorder


def test_max_resolution_shrinks_before_encoding(tmp_path):
    data = dataset(smooth_images(40, 64))
    out = str(tmp_path / "small_jpg")
    writer.convert(data, "dali", out, encoding="jpg", max_resolution=32, shard_size=16, progress=False)
    info = dali_format.check(out)
    assert (info["height"], info["width"]) == (32, 32)
    images, _ = dali_format.read_all(out)
    reference = dali_format.resize(data.images, (32, 32))
    assert verify.psnr(images, reference) > 35.0
    # The resizer is an area average: each output pixel is the mean of a 2x2 block (up to rounding).
    block = data.images.reshape(40, 32, 2, 32, 2, 3).astype(np.float64).mean((2, 4))
    assert np.abs(reference - block).max() <= 1.0


def test_existing_output_is_refused_without_force_and_kept_on_failure(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    first = dataset(rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8))
    second = dataset(rng.integers(0, 256, (30, 8, 8, 3), dtype=np.uint8))
    out = str(tmp_path / "out")
    writer.convert(first, "dali", out, progress=False)
    before = {f: sha256(os.path.join(out, f)) for f in os.listdir(out)}

    with pytest.raises(DataError, match="already exists"):
        writer.convert(second, "dali", out, progress=False)

    def broken_verify(*args, **kwargs):
        raise DataError("simulated read-back mismatch")

    monkeypatch.setattr(dali_format, "verify", broken_verify)
    with pytest.raises(DataError, match="simulated"):
        writer.convert(second, "dali", out, force=True, progress=False)
    monkeypatch.undo()
    assert {f: sha256(os.path.join(out, f)) for f in os.listdir(out)} == before  # untouched
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no temporary output left behind
    np.testing.assert_array_equal(dali_format.read_all(out)[0], first.images)

    writer.convert(second, "dali", out, force=True, progress=False)  # force replaces
    np.testing.assert_array_equal(dali_format.read_all(out)[0], second.images)
    assert sorted(os.listdir(tmp_path)) == ["out"]


@pytest.fixture
def written(tmp_path):
    data = dataset(np.random.default_rng(3).integers(0, 256, (50, 8, 8, 3), dtype=np.uint8))
    out = str(tmp_path / "w")
    dali_format.write(data, out, shard_size=20)
    return out, data


def test_truncated_shard_is_named(written):
    out, data = written
    tar = os.path.join(out, "shard-00001.tar")
    with open(tar, "r+b") as f:
        f.truncate(os.path.getsize(tar) - 700)
    for call in (
        lambda: dali_format.check(out),
        lambda: dali_format.read_all(out),
        lambda: dali_format.verify(out, data),
    ):
        with pytest.raises(DataError, match="shard-00001.tar: truncated"):
            call()


def test_corrupt_shards_and_indexes_are_named(written):
    out, data = written
    tar = os.path.join(out, "shard-00002.tar")
    with open(tar, "r+b") as f:  # a flipped pixel byte: same size, only the checksum can tell
        f.seek(600)
        byte = f.read(1)
        f.seek(600)
        f.write(bytes([byte[0] ^ 0xFF]))
    dali_format.check(out)  # the quick structural check cannot see it...
    with pytest.raises(DataError, match="shard-00002.tar: corrupt shard"):
        dali_format.check(out, deep=True)  # ...the deep one can, and verify runs the deep one
    with pytest.raises(DataError, match="shard-00002.tar: corrupt shard"):
        dali_format.verify(out, data)

    with open(tar, "r+b") as f:  # a damaged tar header (the member's name)
        f.seek(600)
        f.write(byte)
        f.seek(3)
        f.write(b"9")
    with pytest.raises(DataError, match=r"shard-00002.tar: corrupt shard \(tar header of 00000040.rgb"):
        dali_format.check(out, deep=True)

    idx = os.path.join(out, "shard-00000.idx")
    with open(idx) as f:
        lines = f.read().splitlines()
    with open(idx, "w") as f:
        f.write("\n".join(lines[:1] + [lines[2], lines[1]] + lines[3:]) + "\n")
    with pytest.raises(DataError, match="shard-00000.idx: corrupt index"):
        dali_format.check(out)
    os.remove(idx)
    with pytest.raises(DataError, match="shard-00000.idx: missing"):
        dali_format.check(out)
    with open(os.path.join(out, "format.json"), "w") as f:
        f.write("{not json")
    with pytest.raises(DataError, match="format.json: corrupt"):
        dali_format.check(out)


def test_bad_requests_are_data_errors(tmp_path, monkeypatch):
    data = dataset(np.zeros((4, 8, 8, 3), np.uint8))
    with pytest.raises(DataError, match="unknown output format"):
        writer.convert(data, "tfrecord", str(tmp_path / "x"))
    with pytest.raises(DataError, match="no option"):
        writer.convert(data, "dali", str(tmp_path / "x"), jpeg_subsampling=1)
    with pytest.raises(DataError, match="unknown DALI encoding"):
        writer.convert(data, "dali", str(tmp_path / "x"), encoding="png", progress=False)
    with pytest.raises(DataError, match="uint8"):
        writer.convert(
            dataset(np.zeros((4, 8, 8, 3), np.float32)), "dali", str(tmp_path / "x"), progress=False
        )
    assert os.listdir(tmp_path) == []
    with pytest.raises(DataError, match="not a dataset written by"):
        dali_format.check(tmp_path)
    monkeypatch.setattr(dali_format, "_IMPORT_ERROR", ImportError("No module named 'nvidia'"))
    with pytest.raises(DataError, match=r"pip install -e \.\[dali\]"):
        writer.convert(data, "dali", str(tmp_path / "x"))


def test_missing_ffcv_names_its_extra(tmp_path, monkeypatch):
    from pipelines.formats import ffcv as ffcv_format

    monkeypatch.setattr(ffcv_format, "_IMPORT_ERROR", ImportError("No module named 'ffcv'"))
    with pytest.raises(DataError, match=r"pip install -e \.\[ffcv\]"):
        writer.convert(dataset(np.zeros((4, 8, 8, 3), np.uint8)), "ffcv", str(tmp_path / "x.beton"))


def test_ffcv_output_is_one_file_with_manifest_beside_it(cifar_test, tmp_path):
    pytest.importorskip("ffcv")
    from pipelines.formats import ffcv as ffcv_format

    data = dataclasses.replace(cifar_test, images=cifar_test.images[:300], labels=cifar_test.labels[:300])
    out = str(tmp_path / "c10.beton")
    manifest = writer.convert(data, "ffcv", out, workers=2, n_check=50, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["c10.beton", "c10.beton.manifest.json"]
    assert manifest["manifest"] == out + ".manifest.json" and manifest["library"] == "ffcv"
    assert manifest["sha256"] == {"c10.beton": sha256(out)}
    images, labels = ffcv_format.read_all(out)
    np.testing.assert_array_equal(images, data.images)
    np.testing.assert_array_equal(labels, data.labels)
    with pytest.raises(DataError, match="already exists"):
        writer.convert(data, "ffcv", out, progress=False)


def test_ffcv_crash_between_file_and_manifest_is_refused_at_open(cifar_test, tmp_path, monkeypatch):
    """The .beton is renamed into place before its manifest: a process killed between the two
    renames leaves the new file beside the old manifest, which opening refuses (never reads silently)."""
    pytest.importorskip("ffcv")
    out = str(tmp_path / "c10_train.beton")
    first = dataclasses.replace(cifar_test, images=cifar_test.images[:40], labels=cifar_test.labels[:40])
    second = dataclasses.replace(cifar_test, images=cifar_test.images[40:80], labels=cifar_test.labels[40:80])
    writer.convert(first, "ffcv", out, workers=1, progress=False)
    rename = os.replace

    def killed_before_the_manifest(src, dst):
        if dst.endswith(".manifest.json"):
            raise SystemExit(137)  # as a kill: no exception handler of the converter runs
        rename(src, dst)

    monkeypatch.setattr(writer.os, "replace", killed_before_the_manifest)
    with pytest.raises(SystemExit):
        writer.convert(second, "ffcv", out, workers=1, progress=False, force=True)
    monkeypatch.setattr(writer.os, "replace", rename)
    with pytest.raises(DataError, match="checksum differs") as e:
        datasets.load(out, "train")
    assert out in str(e.value)
    os.remove(out + ".manifest.json")  # a first conversion cut there: no manifest at all
    with pytest.raises(DataError, match="no manifest"):
        datasets.load(out, "train")
