"""The FFCV pipeline: Batch contract, two distinct views, order as a pure function of (seed, epoch),
SimCLR views exactly the shared torch ops on FFCV's decoded images (and replayed bit for bit),
output statistics like the gpu pipeline's, and clean DataErrors.

numba compiles each FFCV loader on its first batch (~10 s), so one module-scoped loader serves most
tests: it reads 1024 real CIFAR-10 test images (labels 0-9) followed by 1024 coordinate images
(label 10) whose red/green values encode the source column/row, so translations can be read back.
"""

import dataclasses
import os

import numpy as np
import pytest
import torch

pytest.importorskip("ffcv")
from benchmarks.view_stats import assert_same_channel_moments  # noqa: E402
from pipelines import Batch, DataError, augment, datasets, recipes  # noqa: E402
from pipelines.formats import ffcv as ffcv_format
from pipelines.loaders import ffcv as ffcv_pipe  # noqa: E402
from pipelines.recipes import SimCLRRecipe  # noqa: E402

N_REAL, N_COORD, BATCH, SEED = 1024, 1024, 256, 0
COORD = 10  # label of the coordinate images


def coordinate_images(n, size=32):
    """(n, size, size, 3) uint8: red = 8*column + 4, green = 8*row + 4, blue = 128."""
    ramp = np.arange(size) * 8 + 4
    img = np.empty((size, size, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = ramp[None, :], ramp[:, None], 128
    return np.repeat(img[None], n, axis=0)


@pytest.fixture(scope="module")
def cifar_test(cifar_root):
    return datasets.load("cifar10", "test", data_dir=cifar_root)


@pytest.fixture(scope="module")
def real(cifar_test):
    return dataclasses.replace(
        cifar_test, images=cifar_test.images[:N_REAL], labels=cifar_test.labels[:N_REAL]
    )


@pytest.fixture(scope="module")
def mixed(real):
    return dataclasses.replace(
        real,
        name="cifar10-test-mixed",
        classes=list(real.classes) + ["coordinates"],
        images=np.concatenate([real.images, coordinate_images(N_COORD)]),
        labels=np.concatenate([real.labels, np.full(N_COORD, COORD, np.int64)]),
    )


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("ffcv_cache"))


@pytest.fixture(scope="module")
def loader(mixed, cache):
    return ffcv_pipe.build(mixed, batch_size=BATCH, device="cpu", seed=SEED, workers=1, cache_dir=cache)


@pytest.fixture(scope="module")
def epoch0(loader):
    """One full pass over epoch 0: (view1, view2, labels), concatenated copies."""
    loader.set_epoch(0)
    batches = [b.check("cpu") for b in loader]
    assert all(isinstance(b, Batch) for b in batches)
    return tuple(torch.cat([getattr(b, f) for b in batches]) for f in ("view1", "view2", "labels"))


def label_order(loader, epoch):
    """The label sequence of an epoch, read from FFCV's raw batches (no colour ops: cheap)."""
    loader.set_epoch(epoch)
    return np.concatenate([out["label"].numpy().copy() for out in loader.raw()])


def test_contract_and_length(loader, epoch0, mixed):
    assert len(loader) == (N_REAL + N_COORD) // BATCH
    v1, v2, labels = epoch0
    assert v1.shape == v2.shape == (N_REAL + N_COORD, 3, 32, 32)
    assert v1.dtype == torch.float32 and labels.dtype == torch.int64
    assert torch.isfinite(v1).all() and torch.isfinite(v2).all()
    np.testing.assert_array_equal(np.sort(labels.numpy()), np.sort(mixed.labels))  # every image once
    assert loader.mean == tuple(mixed.mean) and loader.std == tuple(mixed.std)


def test_two_views_differ(epoch0):
    v1, v2, _ = epoch0
    per_image = (v1 - v2).abs().flatten(1).amax(1)
    assert (per_image > 0).float().mean() > 0.99


def test_order_is_a_pure_function_of_seed_and_epoch(loader, epoch0, mixed):
    # FFCV 1.0.2's rule: epoch e's order = default_rng(ffcv_seed + e).permutation(N), cut to full batches.
    steps = len(loader) * BATCH
    orders = {
        e: np.random.default_rng(ffcv_pipe.derive_seed(SEED) + e).permutation(len(mixed.labels))[:steps]
        for e in (0, 1)
    }
    np.testing.assert_array_equal(epoch0[2].numpy(), mixed.labels[orders[0]])  # the full pipeline's order
    for e in (1, 0, 1):  # any epoch, in any sequence, replays
        np.testing.assert_array_equal(label_order(loader, e), mixed.labels[orders[e]])
    assert not np.array_equal(orders[0], orders[1])
    assert ffcv_pipe.derive_seed(0, 1) != ffcv_pipe.derive_seed(1, 0)  # seeds never alias across epochs


def test_simclr_views_are_the_shared_torch_ops_on_decoded_images_and_replay(loader):
    """FFCV only decodes: each batch's two views are augment.simclr_view of FFCV's decoded images,
    drawn from the generator seeded with (seed, epoch, 1, rank), so an epoch replays bit for bit."""
    assert loader.recipe_name == "simclr/torch"
    loader.set_epoch(3)
    decoded = [out["image"].clone() for out in loader.raw()]
    gen = torch.Generator().manual_seed(recipes.derive_seed(SEED, 3, 1, 0))
    for _ in range(2):  # the same epoch twice: identical views
        for images, batch in zip(decoded, loader, strict=True):
            want = augment.simclr_view(
                torch.cat([images, images]), SimCLRRecipe(), gen, loader.mean, loader.std
            )
            torch.testing.assert_close(torch.cat([batch.view1, batch.view2]), want, atol=0, rtol=0)
        gen.manual_seed(recipes.derive_seed(SEED, 3, 1, 0))


def test_output_statistics_match_gpu_pipeline(epoch0, real):
    gpu = pytest.importorskip("pipelines.loaders.gpu")
    v1, v2, labels = epoch0
    is_real = labels < COORD
    ours = torch.cat([v1[is_real], v2[is_real]])
    gpu_loader = gpu.build(real, batch_size=BATCH, device="cpu", seed=SEED)
    gpu_loader.set_epoch(0)
    theirs = torch.cat([torch.cat([b.view1, b.view2]) for b in gpu_loader])
    assert_same_channel_moments(ours, theirs)


def test_eval_recipe_is_plain_normalisation_in_order(real, cache):
    data = dataclasses.replace(real, images=real.images[:300], labels=real.labels[:300])
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)  # FFCV resets torch's thread count; the pipeline must put it back
    try:
        loader = ffcv_pipe.build(
            data, batch_size=128, recipe="eval", drop_last=False, workers=1, cache_dir=cache
        )
        batches = list(loader)
        assert torch.get_num_threads() == threads + 1
    finally:
        torch.set_num_threads(threads)
    assert len(loader) == 3 and all(b.view2 is None for b in batches)
    got = torch.cat([b.check().view1 for b in batches])
    mean, std = torch.tensor(data.mean).view(1, 3, 1, 1), torch.tensor(data.std).view(1, 3, 1, 1)
    want = (torch.from_numpy(data.images).permute(0, 3, 1, 2).double() / 255 - mean) / std
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(torch.cat([b.labels for b in batches]).numpy(), data.labels)


def test_supervised_recipe_translates_flips_and_replays(mixed, cache):
    data = dataclasses.replace(
        mixed, images=mixed.images[N_REAL:], labels=mixed.labels[N_REAL:], name="coords"
    )
    loader = ffcv_pipe.build(data, batch_size=BATCH, recipe="supervised", workers=1, cache_dir=cache)
    loader.set_epoch(2)
    first = [b.check("cpu") for b in loader]
    again = [b.view1 for b in loader]  # supervised draws come from the seeded device generator only
    assert all(b.view2 is None for b in first) and all(torch.equal(a.view1, b) for a, b in zip(first, again))
    mean, std = torch.tensor(data.mean).view(1, 3, 1, 1), torch.tensor(data.std).view(1, 3, 1, 1)
    v = torch.cat([b.view1 for b in first]).mul(std).add(mean).mul(255).round().long().numpy()
    # Shifted by (dy, dx) in -4..4, then maybe flipped: the centre pixels 15/16 are never padding.
    red, green = v[:, 0, 16], v[:, 1, :, 16]
    assert ((red[:, 16] - 4) % 8 == 0).all() and ((green[:, 16] - 4) % 8 == 0).all()
    flipped = red[:, 15] > red[:, 16]
    shifts = np.stack([(green[:, 16] - 4) // 8 - 16, (red[:, 16] - 4) // 8 - 16 + flipped], 1)
    assert len(shifts) == len(loader) * BATCH
    for axis in range(2):
        counts = np.bincount(shifts[:, axis] + 4)
        assert len(counts) == 9 and shifts.min() >= -4, counts  # shifts of -4..4 only
        expected = len(shifts) / 9
        assert (np.abs(counts - expected) < 5 * np.sqrt(expected * 8 / 9)).all(), counts
    assert abs(flipped.mean() - 0.5) < 5 * 0.5 / np.sqrt(len(flipped))


def test_bad_arguments_and_sources(real, cache, tmp_path, monkeypatch):
    with pytest.raises(DataError, match="recipe"):
        ffcv_pipe.build(real, batch_size=8, recipe="mae", cache_dir=cache)
    with pytest.raises(DataError, match="order"):
        ffcv_pipe.build(real, batch_size=8, order="sorted", cache_dir=cache)
    with pytest.raises(DataError, match="torchrun"):
        ffcv_pipe.build(real, batch_size=8, rank=1, world_size=2, cache_dir=cache)
    good = ffcv_format.write(real, tmp_path / "real.beton", workers=1)
    with pytest.raises(DataError, match=f"holds {N_REAL} samples"):
        ffcv_pipe.build(
            dataclasses.replace(real, images=real.images[:10], labels=real.labels[:10]),
            batch_size=8,
            source=good,
        )
    cut = tmp_path / "cut.beton"
    cut.write_bytes(open(good, "rb").read()[:100_000])
    with pytest.raises(DataError, match=str(cut)):
        ffcv_pipe.build(real, batch_size=8, source=cut)
    monkeypatch.setattr(ffcv_format, "_IMPORT_ERROR", ImportError("no module named ffcv"))
    with pytest.raises(DataError, match=r"pip install -e \.\[ffcv\].*|libturbojpeg0-dev"):
        ffcv_pipe.build(real, batch_size=8)


def test_cache_is_written_once_and_keyed_by_content(loader, mixed, cache):
    files = [f for f in os.listdir(cache) if f.startswith(ffcv_pipe.fingerprint(mixed))]
    assert len(files) == 1
    path = os.path.join(cache, files[0])
    stamp = os.stat(path).st_mtime_ns
    assert ffcv_pipe.cached_beton(mixed, cache) == path and os.stat(path).st_mtime_ns == stamp
    images = mixed.images.copy()
    images[0, 0, 0, 0] ^= 1
    assert ffcv_pipe.fingerprint(dataclasses.replace(mixed, images=images)) != ffcv_pipe.fingerprint(mixed)
