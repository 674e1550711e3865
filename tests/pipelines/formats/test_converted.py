"""Converted datasets opened by path: an image folder of mixed sizes converted at its own sizes, read
back with exact counts, labels, classes, statistics and stored sizes (each computed here from the
files themselves), streamed by ffcv and dali in every recipe, and every kind of bad input ending
in one DataError naming the file."""

import json
import os
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("nvidia.dali")
pytest.importorskip("ffcv")
from PIL import Image  # noqa: E402

import pipelines  # noqa: E402
from benchmarks.memory import make_folder  # noqa: E402
from pipelines import DataError, datasets, recipes  # noqa: E402
from pipelines.data import arrays, imagefolder
from pipelines.files import sha256
from pipelines.formats import dali as dali_format
from pipelines.formats import ffcv as ffcv_format
from pipelines.formats import verify, writer
from pipelines.formats.converted import ConvertedDataset

CAP = 100  # --max-resolution of these conversions


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    folder = make_folder(str(root / "photos"), 42, 12, sides=(40, 130), seed=3)
    out = {}
    # Every FFCV conversion first: FFCV's writer forks, and a fork taken while DALI's threads of an
    # earlier read-back still exist can inherit a held lock and hang.
    rng = np.random.default_rng(0)
    fixed = arrays.ArrayDataset(
        rng.integers(0, 256, (30, 16, 16, 3), dtype=np.uint8),
        np.arange(30) % 3,
        ["a", "b", "c"],
        "random",
        (0.5,) * 3,
        (0.25,) * 3,
    )
    out["fixed"] = str(root / "fixed_train.beton")
    writer.convert(fixed, "ffcv", out["fixed"], workers=1, progress=False)
    flat = flat_folder(str(root / "flat"))
    for to, path, opts in (("ffcv", "p_{}.beton", {}), ("dali", "dali/{}", {"shard_size": 10})):
        for split in ("train", "test"):
            files = imagefolder.scan(folder, split, max_resolution=CAP)
            writer.convert(
                files,
                to,
                str(root / path.format(split)),
                workers=2,
                progress=False,
                source={"split": split},
                **opts,
            )
            out[to, split] = str(root / path.format(split))
        out[to, "flat"] = str(root / path.format("flat_train"))
        writer.convert(
            imagefolder.scan(flat, "train", max_resolution=CAP),
            to,
            out[to, "flat"],
            workers=1,
            progress=False,
            source={"split": "train"},
            **opts,
        )
    return folder, out, fixed


FLAT = (64, 128, 192)  # grey level of every image of class 0, 1, 2


def flat_folder(root):
    """12 flat grey images of mixed sizes, 4 per class: every crop of one is the same flat grey."""
    for i in range(12):
        d = os.path.join(root, "train", f"c{i % 3}")
        os.makedirs(d, exist_ok=True)
        Image.new("RGB", (40 + 7 * i, 90 - 4 * i), (FLAT[i % 3],) * 3).save(os.path.join(d, f"{i:02d}.png"))
    return root


def reference(folder, split):
    """(labels, stored shapes, mean, std) computed straight from the files: classes are the sorted
    folder names, images sorted by name, shrunk so the longer side is at most CAP."""
    classes = sorted(os.listdir(os.path.join(folder, "train")))
    labels, shapes, pixels = [], [], []
    for c, name in enumerate(classes):
        for f in sorted(os.listdir(os.path.join(folder, split, name))):
            img = Image.open(os.path.join(folder, split, name, f)).convert("RGB")
            w, h = img.size
            if max(w, h) > CAP:
                s = CAP / max(w, h)
                img = img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BOX)
            a = np.asarray(img)
            labels.append(c)
            shapes.append(a.shape[:2])
            pixels.append(a.reshape(-1, 3) / 255.0)
    pixels = np.concatenate(pixels)
    return np.array(labels), shapes, pixels.mean(0), pixels.std(0), classes


@pytest.mark.parametrize("to", ["ffcv", "dali"])
def test_open_gives_exact_counts_labels_statistics_and_own_sizes(converted, to):
    folder, out, _ = converted
    labels, shapes, mean, std, classes = reference(folder, "train")
    data = datasets.load(out[to, "train"], "train")
    assert isinstance(data, ConvertedDataset) and not hasattr(data, "images")  # nothing decoded
    assert len(data) == 42 and data.classes == classes and data.split == "train" and data.format == to
    np.testing.assert_array_equal(data.labels, labels)
    np.testing.assert_allclose(data.mean, mean, atol=1e-9)
    np.testing.assert_allclose(data.std, std, atol=1e-9)
    assert data.variable and data.stored_shape == (max(h for h, _ in shapes), max(w for _, w in shapes))
    if to == "ffcv":
        stored = [ffcv_format._decode(b).shape[:2] for b in ffcv_format.encoded(out[to, "train"], range(42))]
    else:
        stored = [im.shape[:2] for im in dali_format.read(out[to, "train"])[0]]
    assert stored == shapes and len(set(shapes)) > 10  # each image kept its own (capped) size
    test = datasets.load(out[to, "train"], "test")  # the sibling split, normalised as train
    test_labels, *_ = reference(folder, "test")
    np.testing.assert_array_equal(test.labels, test_labels)
    assert test.split == "test" and test.mean == data.mean and test.path == out[to, "test"]
    assert datasets.load(out[to, "test"], "test").mean == data.mean  # opened by its own path: still train's


@pytest.mark.parametrize("to", ["ffcv", "dali"])
def test_pipelines_stream_every_recipe_at_the_view_size(converted, to):
    _, out, _ = converted
    data = datasets.load(out[to, "train"], "train", image_size=40)
    for recipe in ("simclr", "supervised", "eval"):
        loader = pipelines.build(to, data, batch_size=8, recipe=recipe, drop_last=recipe != "eval", workers=2)
        loader.set_epoch(0)
        batches = [b.check() for b in loader]
        assert all(b.view1.shape[1:] == (3, 40, 40) for b in batches)
        got = torch.cat([b.labels for b in batches]).numpy()
        if recipe == "eval":  # in file order, every image once
            np.testing.assert_array_equal(got, data.labels)
        else:
            assert len(got) == 40 and np.bincount(got, minlength=3).max() <= 14
        if recipe == "simclr":
            assert not torch.equal(batches[0].view1, batches[0].view2)
    part = data.take([3, 10, 11, 40])  # a subset: FFCV indices / DALI temporary index files
    loader = pipelines.build(to, part, batch_size=4, recipe="eval", drop_last=False, workers=1)
    np.testing.assert_array_equal(torch.cat([b.labels for b in loader]).numpy(), data.labels[[3, 10, 11, 40]])


def test_dali_crops_replay_and_change_per_epoch(converted):
    """DALI's crops are seeded by the pipeline (seed, epoch, rank): an epoch iterated again, by a new
    loader as after --resume, gives the same views; the next epoch gives other ones."""
    _, out, _ = converted
    data = datasets.load(out["dali", "train"], "train", image_size=32)

    def epoch(e):
        loader = pipelines.build("dali", data, batch_size=8, workers=2, seed=5, ahead=False)
        loader.set_epoch(e)
        return [b.view1 for b in loader]

    first, again, other = epoch(1), epoch(1), epoch(2)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0])


def test_eval_views_are_resize_and_centre_crop(converted):
    """Both pipelines' eval view of image 0 against PIL: shorter side to 40 / 0.875, centre 40x40."""
    folder, out, _ = converted
    first = imagefolder.scan(folder, "train", CAP).image(0)
    h, w = first.shape[:2]
    short = round(40 / recipes.CENTRE_CROP)
    img = Image.fromarray(first).resize(
        (round(w * short / min(h, w)), round(h * short / min(h, w))), Image.Resampling.BILINEAR
    )
    top, left = (img.size[1] - 40) // 2, (img.size[0] - 40) // 2
    want = np.asarray(img.crop((left, top, left + 40, top + 40))) / 255.0
    for to in ("ffcv", "dali"):
        data = datasets.load(out[to, "train"], "train", image_size=40).take([0])
        batch = next(iter(pipelines.build(to, data, batch_size=1, recipe="eval", drop_last=False, workers=1)))
        got = batch.view1[0].permute(1, 2, 0).numpy() * np.array(data.std) + np.array(data.mean)
        assert np.abs(got - want).mean() < 0.03, (
            to
        )  # resizers differ by a few levels; a wrong crop by far more


def copy_of(path, tmp_path):
    dst = str(tmp_path / os.path.basename(path))
    if os.path.isdir(path):
        shutil.copytree(path, dst)
    else:
        shutil.copy(path, dst)
        shutil.copy(path + ".manifest.json", dst + ".manifest.json")
    return dst


def one_line(match, path, split="train"):
    with pytest.raises(DataError, match=match) as e:
        datasets.load(path, split)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_bad_beton_files_are_named(converted, tmp_path):
    _, out, _ = converted
    bad = copy_of(out["ffcv", "train"], tmp_path)
    with open(bad, "r+b") as f:
        f.truncate(os.path.getsize(bad) // 2)
    assert bad in one_line("truncated|corrupt|not a readable", bad)
    foreign = str(tmp_path / "foreign.beton")
    with open(foreign, "wb") as f:
        f.write(os.urandom(5000))
    shutil.copy(out["ffcv", "train"] + ".manifest.json", foreign + ".manifest.json")
    assert foreign in one_line("not a readable|truncated|corrupt", foreign)
    os.makedirs(tmp_path / "x")
    flipped = copy_of(out["ffcv", "train"], tmp_path / "x")
    with open(flipped, "r+b") as f:
        f.seek(os.path.getsize(flipped) // 3)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert flipped in one_line("checksum differs", flipped)
    os.remove(flipped + ".manifest.json")
    one_line("no manifest", flipped)
    one_line("no such converted dataset", str(tmp_path / "absent.beton"))


def test_bad_shard_directories_and_manifests_are_named(converted, tmp_path):
    _, out, _ = converted
    d = copy_of(out["dali", "train"], tmp_path)
    os.remove(os.path.join(d, "shard-00002.tar"))
    assert os.path.join(d, "shard-00002.tar") in one_line("missing shard", d)
    d = copy_of(out["dali", "train"], tmp_path / "idx")
    idx = os.path.join(d, "shard-00001.idx")
    with open(idx) as f:
        lines = f.read().splitlines()
    with open(idx, "w") as f:
        f.write("\n".join(lines[:1] + lines[2:] + lines[1:2]) + "\n")  # samples out of order
    assert idx in one_line("corrupt index", d)
    d = copy_of(out["dali", "train"], tmp_path / "sum")
    tar = os.path.join(d, "shard-00000.tar")
    with open(tar, "r+b") as f:
        f.seek(700)
        f.write(b"\x00\x01")
    assert tar in one_line("checksum differs", d)
    d = copy_of(out["dali", "train"], tmp_path / "ver")
    meta = os.path.join(d, "manifest.json")
    with open(meta) as f:
        m = json.load(f)
    with open(meta, "w") as f:
        json.dump({**m, "manifest_version": 1}, f)
    assert meta in one_line("manifest version 1", d)
    with open(meta, "w") as f:
        json.dump({**m, "labels_sha256": "0" * 64}, f)
    one_line("labels differ", d)
    lone = copy_of(out["dali", "train"], tmp_path / "lone")
    assert "does not exist" in one_line("its test split would be at", lone, "test")


def test_a_passed_checksum_check_is_stamped_and_any_write_voids_it(converted, tmp_path, monkeypatch):
    """The full sha256 check runs once; later opens of unchanged files trust the stamp; a write to a
    file (even with its mtime set back), a replaced file or an edited manifest is hashed again."""
    import time

    _, out, _ = converted
    stamps = str(tmp_path / "stamps")
    d = copy_of(out["dali", "train"], tmp_path)
    monkeypatch.setattr(verify, "RACY_NS", 10**18)  # every file counts as just changed: never stamped
    assert verify.check_checksums("dali", d, stamps) is True
    assert verify.check_checksums("dali", d, stamps) is True
    monkeypatch.setattr(verify, "RACY_NS", 200_000_000)
    time.sleep(0.3)
    assert verify.check_checksums("dali", d, stamps) is True  # stamped now
    assert verify.check_checksums("dali", d, stamps) is False
    tar = os.path.join(d, "shard-00001.tar")
    st = os.stat(tar)
    with open(tar, "r+b") as f:
        f.seek(700)
        byte = f.read(1)
        f.seek(700)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(tar, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime set back: ctime still moved
    with pytest.raises(DataError, match="checksum differs"):
        verify.check_checksums("dali", d, stamps)
    # open_split uses the stamp of this user's cache: one full check, then none
    os.makedirs(tmp_path / "e")
    e = copy_of(out["ffcv", "train"], tmp_path / "e")
    monkeypatch.setattr(verify, "VERIFIED_DIR", stamps)
    hashed = []
    real = verify.sha256
    monkeypatch.setattr(verify, "sha256", lambda path: hashed.append(path) or real(path))
    time.sleep(0.3)
    for _ in range(3):
        datasets.load(e, "train", image_size=24)
    assert hashed == [e]
    with open(e + ".manifest.json") as f:  # an edited manifest: checked in full again
        m = json.load(f)
    with open(e + ".manifest.json", "w") as f:
        json.dump({**m, "name": "renamed"}, f)
    datasets.load(e, "train", image_size=24)
    assert hashed == [e, e]
    blocked = str(tmp_path / "a_file")  # a cache that cannot be written only costs the full check
    open(blocked, "w").close()
    for _ in range(2):
        assert verify.check_checksums("ffcv", e, os.path.join(blocked, "stamps")) is True


def test_a_jpeg_that_fails_to_decode_mid_epoch_is_one_data_error(converted, tmp_path):
    """The policy of converted.py: DALI's decoder error becomes one DataError naming the dataset.
    The damaged sample's manifest and format.json checksums are rewritten, so it passes opening."""
    _, out, _ = converted
    d = copy_of(out["dali", "train"], tmp_path)
    info = dali_format.check(d)
    shard = info["shards"][3]
    offsets, sizes = dali_format._parse_index(os.path.join(d, shard["index"]), shard, info)
    tar = os.path.join(d, shard["tar"])
    with open(tar, "r+b") as f:
        f.seek(int(offsets[4, 0]))
        f.write(b"\x00" * int(sizes[4, 0]))  # sample 34's JPEG bytes zeroed: not a JPEG any more
    info["shards"][3]["sha256"] = sha256(tar)
    with open(os.path.join(d, "format.json"), "w") as f:
        json.dump(info, f)
    with open(os.path.join(d, "manifest.json")) as f:
        m = json.load(f)
    m["sha256"].update({name: sha256(os.path.join(d, name)) for name in (shard["tar"], "format.json")})
    with open(os.path.join(d, "manifest.json"), "w") as f:
        json.dump(m, f)
    data = datasets.load(d, "train", image_size=32)  # opens: structure and checksums agree
    loader = pipelines.build("dali", data, batch_size=8, recipe="eval", drop_last=False, workers=1)
    with pytest.raises(DataError, match="mid-epoch") as e:
        list(loader)
    assert d in str(e.value) and "\n" not in str(e.value)


def test_gpu_pipeline_decodes_fixed_size_data_that_fits_and_refuses_the_rest(converted, monkeypatch):
    _, out, small = converted
    data = datasets.load(out["fixed"], "train")
    assert data.image_size == 16 and not data.variable
    batch = next(iter(pipelines.build("gpu", data, batch_size=30, recipe="eval", drop_last=False)))
    want = (torch.from_numpy(small.images).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(batch.view1, want)  # raw pixels, bit-exact through the file
    monkeypatch.setattr(pipelines.formats.converted, "device_budget", lambda device: 1000)
    with pytest.raises(DataError, match="use --pipeline ffcv, which streams it"):
        pipelines.build("gpu", data, batch_size=8)
    with pytest.raises(DataError, match="use --pipeline dali"):
        pipelines.build("gpu", datasets.load(out["dali", "train"], "train"), batch_size=8)
    with pytest.raises(DataError, match="torchvision pipeline reads in-memory"):
        pipelines.build("torchvision", data, batch_size=8)
    with pytest.raises(DataError, match="use --pipeline ffcv"):
        pipelines.build("dali", data, batch_size=8)


@pytest.mark.parametrize("to", ["ffcv", "dali"])
def test_supervised_views_of_own_size_images_are_crop_flip_normalise_only(converted, to):
    """Flat grey images: a crop, a flip and normalisation leave each one its flat level, so every
    supervised view is constant at (level/255 - mean)/std; SimCLR's colour jitter moves them."""
    _, out, _ = converted
    data = datasets.load(out[to, "flat"], "train", image_size=24)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (data.mean, data.std))
    for recipe in ("supervised", "simclr"):
        loader = pipelines.build(to, data, batch_size=4, recipe=recipe, workers=1, seed=1)
        loader.set_epoch(0)
        batches = [b.check() for b in loader]
        views = torch.cat([b.view1 for b in batches])
        levels = torch.tensor(FLAT, dtype=torch.float32)[torch.cat([b.labels for b in batches])]
        want = (levels.view(-1, 1, 1, 1) / 255 - mean) / std
        off = (views - want).abs().amax(dim=(1, 2, 3)) * std.min()  # in units of 0..1 pixel values
        if recipe == "supervised":
            assert len(views) == 12 and all(b.view2 is None for b in batches)
            assert off.max() < 2 / 255, off  # JPEG may move a flat level by a step or so
        else:
            assert (off > 5 / 255).sum() >= 6, off  # brightness jitter (p = 0.8) changes most images


def test_ffcv_streams_converted_files_with_bounded_buffers(converted):
    """A converted .beton is read with FFCV's own buffers (os_cache=False: no page cache filled up
    to the file's size) in the windowed order, on one rank and many; explicit choices and in-memory
    data keep theirs."""
    from ffcv.memory_managers import OSCacheManager, ProcessCacheManager
    from ffcv.traversal_order import Random

    from pipelines.loaders import ffcv as ffcv_pipe
    from pipelines.loaders.ffcv_order import Windowed

    _, out, _ = converted
    data = datasets.load(out["ffcv", "train"], "train", image_size=24)
    loader = pipelines.build("ffcv", data, batch_size=8, workers=1).ffcv
    assert isinstance(loader.memory_manager, ProcessCacheManager) and isinstance(
        loader.traversal_order, Windowed
    )
    epoch = torch.cat([b.labels for b in pipelines.build("ffcv", data, batch_size=8, workers=1, seed=2)])
    counts = np.bincount(epoch.numpy(), minlength=3)  # 40 distinct samples of the 42: each at most once
    assert len(epoch) == 40 and (counts <= np.bincount(data.labels, minlength=3)).all()
    loader = pipelines.build("ffcv", data, batch_size=8, workers=1, order="random", os_cache=True).ffcv
    assert isinstance(loader.memory_manager, OSCacheManager) and isinstance(loader.traversal_order, Random)
    assert ffcv_pipe.stream_options(True, 2) == ("windowed", False)
    assert ffcv_pipe.stream_options(False, 1) == ("random", None)


def test_dali_shuffle_buffer_of_converted_data_does_not_grow_with_it(converted, monkeypatch):
    """The reader's buffer is CONVERTED_FILL samples, whatever the dataset's size (in-memory data
    keeps its whole-part buffer); the epoch still reads every sample once, in a new order each epoch."""
    from pipelines.loaders import dali as dali_pipe

    _, out, _ = converted
    data = datasets.load(out["dali", "train"], "train", image_size=24)
    assert (
        pipelines.build("dali", data, batch_size=8, workers=1, ahead=False).initial_fill == 42
    )  # all < 4096
    monkeypatch.setattr(dali_pipe, "CONVERTED_FILL", 12)
    orders = []
    for n in (20, 42):  # the same buffer for both sizes
        loader = pipelines.build(
            "dali", data.take(range(n)), batch_size=2, workers=1, ahead=False, drop_last=False
        )
        assert loader.initial_fill == 12
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        orders.append(torch.cat([b.labels for b in loader]).numpy())
    for got in orders:  # 42 samples: the label multiset of the file
        np.testing.assert_array_equal(np.sort(got), np.sort(data.labels))
    assert not np.array_equal(orders[0], orders[1])
