"""The .beton writer: raw mode round-trips real CIFAR-10 bit for bit through FFCV's own Loader, JPEG
loss is bounded, and damaged files end in one DataError that names the file."""

import dataclasses
import os
import types

import numpy as np
import pytest

pytest.importorskip("ffcv")
from pipelines import DataError, datasets  # noqa: E402
from pipelines.formats import ffcv as ffcv_format
from pipelines.formats import verify


def subset(data, n, images=None):
    return dataclasses.replace(
        data, images=data.images[:n] if images is None else images, labels=data.labels[:n]
    )


@pytest.fixture(scope="module")
def cifar_test(cifar_root):
    return datasets.load("cifar10", "test", data_dir=cifar_root)


@pytest.fixture(scope="module")
def raw_beton(cifar_test, tmp_path_factory):
    path = tmp_path_factory.mktemp("beton") / "cifar10_test.beton"
    assert ffcv_format.write(cifar_test, path, workers=2) == str(path)
    return str(path)


def test_raw_round_trip_is_exact_on_cifar10_test(cifar_test, raw_beton):
    images, labels = ffcv_format.read_all(raw_beton)
    assert images.shape == (10000, 32, 32, 3) and images.dtype == np.uint8 and labels.dtype == np.int64
    np.testing.assert_array_equal(images, cifar_test.images)
    np.testing.assert_array_equal(labels, cifar_test.labels)
    report = ffcv_format.verify(raw_beton, cifar_test, n_check=500)
    assert report["count"] == 10000 and report["psnr_db"] == float("inf") and report["modes"] == ["raw"]
    assert ffcv_format.check(raw_beton) == {"count": 10000, "height": 32, "width": 32, "modes": {"raw"}}
    assert not [f for f in os.listdir(os.path.dirname(raw_beton)) if ".tmp" in f]  # no temp file left


def test_jpg_mode_is_lossy_within_bounds(cifar_test, tmp_path):
    data = subset(cifar_test, 1000)
    path = ffcv_format.write(data, tmp_path / "q90.beton", encoding="jpg", quality=90, workers=1)
    images, labels = ffcv_format.read_all(path)
    np.testing.assert_array_equal(labels, data.labels)
    value = verify.psnr(images, data.images)
    # Measured 32.9 dB for quality 90 on CIFAR-10; a shuffled or misdecoded file would be ~11 dB.
    assert 30.0 < value < 45.0, value
    assert ffcv_format.check(path)["modes"] == {"jpg"}
    assert ffcv_format.verify(path, data)["psnr_db"] == pytest.approx(value, abs=1.0)


def test_max_resolution_shrinks_like_opencv_area(cifar_test, tmp_path):
    # 2x nearest-upsampled images shrink back to the originals exactly under area interpolation.
    data = subset(cifar_test, 200)
    big = data.images.repeat(2, axis=1).repeat(2, axis=2)
    path = ffcv_format.write(
        subset(data, 200, images=big), tmp_path / "small.beton", max_resolution=32, workers=1
    )
    images, _ = ffcv_format.read_all(path)
    np.testing.assert_array_equal(images, data.images)
    assert ffcv_format.verify(path, subset(data, 200, images=big))["psnr_db"] == float("inf")


@pytest.mark.parametrize("keep", ["10", "1000", "half", "-24", "-1"])
def test_truncated_beton_is_a_data_error_naming_the_file(raw_beton, tmp_path, keep):
    blob = open(raw_beton, "rb").read()
    cut = {"half": len(blob) // 2}.get(keep) or (int(keep) if int(keep) > 0 else len(blob) + int(keep))
    bad = tmp_path / f"cut{keep}.beton"
    bad.write_bytes(blob[:cut])
    with pytest.raises(DataError, match=str(bad)):
        ffcv_format.check(bad)
    with pytest.raises(DataError, match=str(bad)):
        ffcv_format.read_all(bad)


def test_garbage_and_missing_files(tmp_path):
    garbage = tmp_path / "garbage.beton"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 100_000, dtype=np.uint8).tobytes())
    with pytest.raises(DataError, match="garbage.beton"):
        ffcv_format.check(garbage)
    with pytest.raises(DataError, match="no such"):
        ffcv_format.check(tmp_path / "absent.beton")


def test_missing_label_field(cifar_test, tmp_path):
    from ffcv.fields import RGBImageField
    from ffcv.writer import DatasetWriter

    path = str(tmp_path / "images_only.beton")

    class OnlyImages:
        def __len__(self):
            return 20

        def __getitem__(self, i):
            return (cifar_test.images[i],)

    DatasetWriter(path, {"image": RGBImageField()}, num_workers=1).from_indexed_dataset(OnlyImages())
    with pytest.raises(DataError, match=r"images_only\.beton.*'label'"):
        ffcv_format.check(path)


def test_verify_catches_mismatches(cifar_test, raw_beton):
    labels = cifar_test.labels.copy()
    labels[0] = (labels[0] + 1) % 10  # sample 0 and the last one are always checked
    with pytest.raises(DataError, match="labels differ"):
        ffcv_format.verify(raw_beton, dataclasses.replace(cifar_test, labels=labels))
    images = cifar_test.images.copy()
    images[-1, 5, 5, 1] ^= 1
    with pytest.raises(DataError, match="raw pixels differ"):
        ffcv_format.verify(raw_beton, dataclasses.replace(cifar_test, images=images))
    with pytest.raises(DataError, match="holds 10000 samples"):
        ffcv_format.verify(raw_beton, subset(cifar_test, 9999))


def test_write_validates_and_never_clobbers(cifar_test, tmp_path):
    path = tmp_path / "kept.beton"
    path.write_bytes(b"precious")
    with pytest.raises(DataError, match="already exists"):
        ffcv_format.write(subset(cifar_test, 10), path)
    assert path.read_bytes() == b"precious"
    floats = types.SimpleNamespace(
        images=cifar_test.images[:10].astype(np.float32), labels=cifar_test.labels[:10]
    )
    with pytest.raises(DataError, match="uint8"):  # checked by the writer itself, not only by ArrayDataset
        ffcv_format.write(floats, tmp_path / "f.beton")
    with pytest.raises(DataError, match="encoding"):
        ffcv_format.write(subset(cifar_test, 10), tmp_path / "p.beton", encoding="png")
    assert sorted(os.listdir(tmp_path)) == ["kept.beton"]
    assert ffcv_format.VERSION().startswith("1.")


def test_a_writer_that_hangs_before_writing_is_a_data_error(tmp_path, monkeypatch):
    """A forked writer stuck before it writes anything (a lock inherited held, say) is ended with its
    process group: one DataError, no temporary file, no process left."""
    import time

    class Stuck:
        def __init__(self, *args, **kwargs):
            time.sleep(600)

    monkeypatch.setattr(ffcv_format, "DatasetWriter", Stuck)
    monkeypatch.setattr(ffcv_format, "WRITE_STALL_S", 2.0)
    data = types.SimpleNamespace(images=np.zeros((4, 8, 8, 3), np.uint8), labels=np.arange(4))
    out = tmp_path / "x.beton"
    start = time.monotonic()
    with pytest.raises(DataError, match="an FFCV writer process hung"):
        ffcv_format.write(data, out, workers=1)
    assert time.monotonic() - start < 30 and os.listdir(tmp_path) == []
