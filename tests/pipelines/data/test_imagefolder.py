"""Image folders converted at their own sizes: the file listing and labels, the manifest's image-size
policy and label checksum, and a source image that cannot be decoded stopping the conversion with one
DataError naming it, the existing output untouched."""

import hashlib
import json
import os

import numpy as np
import pytest

pytest.importorskip("nvidia.dali")
from benchmarks.memory import make_folder  # noqa: E402
from pipelines import DataError  # noqa: E402
from pipelines.data import imagefolder
from pipelines.files import sha256
from pipelines.formats import manifest, verify, writer


@pytest.fixture
def folder(tmp_path):
    return make_folder(str(tmp_path / "photos"), 12, 6, sides=(30, 90), seed=2)


def test_scan_lists_classes_labels_and_caps_the_longer_side(folder):
    files = imagefolder.scan(folder, "train", max_resolution=50)
    assert files.classes == sorted(os.listdir(os.path.join(folder, "train"))) and len(files) == 12
    for path, label in zip(files.paths, files.labels):
        assert os.path.basename(os.path.dirname(path)) == files.classes[label]
    assert files.paths == sorted(files.paths)  # by class, then by file name
    image = files.image(0)
    from PIL import Image

    w, h = Image.open(files.paths[0]).size
    assert max(image.shape[:2]) == min(50, max(w, h)) and image.dtype == np.uint8 and image.shape[2] == 3
    assert len(imagefolder.scan(folder, "test")) == 6
    os.rename(os.path.join(folder, "test"), os.path.join(folder, "elsewhere"))
    with pytest.raises(DataError, match="has train/ but no test/ folder"):
        imagefolder.scan(folder, "test")
    with pytest.raises(DataError, match="max_resolution must be a positive"):
        imagefolder.scan(folder, "train", max_resolution=0)


def test_manifest_records_the_size_policy_statistics_and_label_checksum(folder, tmp_path):
    files = imagefolder.scan(folder, "train", max_resolution=50)
    m = writer.convert(
        files, "dali", str(tmp_path / "d"), workers=2, progress=False, source={"split": "train"}
    )
    with open(os.path.join(tmp_path, "d", "manifest.json")) as f:
        on_disk = json.load(f)
    assert on_disk["manifest_version"] == manifest.MANIFEST_VERSION and on_disk["split"] == "train"
    assert on_disk["count"] == 12 and on_disk["encoding"] == "jpg" and on_disk["classes"] == files.classes
    assert on_disk["labels_sha256"] == hashlib.sha256(files.labels.astype("<i8").tobytes()).hexdigest()
    sizes = np.array([files.image(i).shape[:2] for i in range(12)])
    assert on_disk["image_policy"] == {
        "sizes": "own",
        "max_resolution": 50,
        "max_shape": sizes.max(0).tolist(),
        "min_side": int(sizes.min()),
    }
    pixels = np.concatenate([files.image(i).reshape(-1, 3) for i in range(12)]) / 255.0
    np.testing.assert_allclose(on_disk["mean"], pixels.mean(0), atol=1e-9)
    np.testing.assert_allclose(on_disk["std"], pixels.std(0), atol=1e-9)
    assert m["verified"]["checked"] == 12 and m["verified"]["psnr_db"] > 30


def test_an_unreadable_source_image_stops_the_conversion_and_keeps_the_output(folder, tmp_path):
    out = str(tmp_path / "d")
    writer.convert(imagefolder.scan(folder, "train"), "dali", out, workers=1, progress=False)
    before = {f: sha256(os.path.join(out, f)) for f in os.listdir(out)}
    files = imagefolder.scan(folder, "train")
    bad = files.paths[5]
    with open(bad, "r+b") as f:
        f.truncate(40)  # a JPEG cut short: PIL cannot decode it
    with pytest.raises(DataError, match="cannot read image") as e:
        writer.convert(files, "dali", out, force=True, workers=1, progress=False)
    assert bad in str(e.value) and "\n" not in str(e.value)
    assert {f: sha256(os.path.join(out, f)) for f in os.listdir(out)} == before
    assert not [f for f in os.listdir(tmp_path) if ".tmp-" in f]


def test_raw_encoding_keeps_a_folder_of_one_size_exact_and_refuses_mixed_sizes(folder, tmp_path, capsys):
    from fastssl import convert as command
    from pipelines import datasets
    from pipelines.formats import dali as dali_format

    with pytest.raises(SystemExit) as e:  # mixed sizes cannot be raw: one line naming the odd file
        command.main(
            [
                "--dataset",
                "imagefolder",
                "--data-dir",
                folder,
                "--to",
                "dali",
                "--out",
                str(tmp_path / "x"),
                "--encoding",
                "raw",
            ]
        )
    assert e.value.code == 2 and "differs from the first image" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x")
    same = make_folder(str(tmp_path / "same"), 6, sides=(20, 20), seed=4)
    assert (
        command.main(
            [
                "--dataset",
                "imagefolder",
                "--data-dir",
                same,
                "--to",
                "dali",
                "--out",
                str(tmp_path / "y"),
                "--encoding",
                "raw",
                "--order",
                "source",
            ]
        )
        == 0
    )
    images, _ = dali_format.read_all(str(tmp_path / "y"))  # --order source: the folder's order
    np.testing.assert_array_equal(images, datasets.load("imagefolder", "train", same).images)


def test_compare_is_the_psnr_of_all_pixels_holding_one_image_at_a_time(folder):
    """compare's running sum gives verify.psnr of the concatenated images (the definition), and it
    keeps no decoded image once it asks for the next one."""
    import weakref

    files = imagefolder.scan(folder, "train", max_resolution=50)
    pick = np.array([0, 3, 4, 11])
    rng = np.random.default_rng(0)
    noisy = [
        np.clip(files.image(int(i)) + rng.integers(-9, 10, files.image(int(i)).shape), 0, 255).astype(
            np.uint8
        )
        for i in pick
    ]
    want = verify.psnr(
        np.concatenate([a.ravel() for a in noisy]),
        np.concatenate([files.image(int(i)).ravel() for i in pick]),
    )
    alive = []

    def one_at_a_time():
        for a in noisy:
            image = a.copy()
            yield image
            alive.append(weakref.ref(image))
            del image
            assert all(r() is None for r in alive[:-1]), (
                "compare still holds an earlier image"
            )  # [-1]: its loop variable

    assert verify.compare("out", files, pick, one_at_a_time(), 20) == pytest.approx(want, rel=1e-12)
    assert 25 < want < 40 and verify.compare("out", files, pick[:1], [files.image(0)], 20) == float("inf")
    with pytest.raises(DataError, match="too far"):
        verify.compare("out", files, pick, noisy, 50)
