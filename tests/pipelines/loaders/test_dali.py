"""The DALI pipeline, CPU mode (the same graph as on a GPU, with CPU operators): Batch contract, two
distinct views, len, order and augmentation as a pure function of (seed, epoch, rank), disjoint rank
shards, crop/flip parameters distributed as torchvision's RandomResizedCrop (read back from
coordinate images), SimCLR views exactly the shared torch ops on DALI's decoded images, exactly gray
views at SimCLR's rate, output statistics like the gpu pipeline's, the eval and supervised recipes
exactly (flip_p honoured), and clean DataErrors.
"""

import dataclasses
import os

import numpy as np
import pytest
import torch

pytest.importorskip("nvidia.dali")
from benchmarks.view_stats import assert_same_channel_moments  # noqa: E402
from pipelines import Batch, DataError, augment, datasets, recipes  # noqa: E402
from pipelines.augment import SimCLRRecipe  # noqa: E402
from pipelines.data import arrays
from pipelines.formats import dali as dali_format
from pipelines.formats import verify, writer
from pipelines.loaders import dali as dali_pipe  # noqa: E402

N, BATCH, SEED = 2048, 256, 0
NEUTRAL = SimCLRRecipe(jitter_p=0.0, gray_p=0.0)  # crop and flip only: colours pass through unchanged


def coordinate_images(n, size=32):
    """(n, size, size, 3) uint8: red = 8*column + 4, green = 8*row + 4, blue = 128."""
    ramp = np.arange(size) * 8 + 4
    img = np.empty((size, size, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = ramp[None, :], ramp[:, None], 128
    return np.repeat(img[None], n, axis=0)


def make(images, labels=None, name="data", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)):
    labels = np.arange(len(images)) if labels is None else labels  # unique labels identify samples
    return arrays.ArrayDataset(
        images=images,
        labels=np.asarray(labels, np.int64),
        name=name,
        mean=mean,
        std=std,
        classes=[str(i) for i in range(int(np.max(labels)) + 1)],
    )


def pixels(views, data):
    """Undo the normalisation: (n, 3, H, W) float views -> 0..255 levels (float64)."""
    mean = torch.tensor(data.mean, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(data.std, dtype=torch.float64).view(1, 3, 1, 1)
    return ((views.double() * std + mean) * 255).numpy()


def run_epoch(loader, epoch):
    loader.set_epoch(epoch)
    batches = [b.check("cpu") for b in loader]
    assert all(isinstance(b, Batch) for b in batches) and len(batches) == len(loader)
    fields = ("view1", "view2", "labels") if batches[0].view2 is not None else ("view1", "labels")
    return {f: torch.cat([getattr(b, f) for b in batches]) for f in fields}


def within(sample, reference, sigmas=5.0):
    """|mean(sample) - mean(reference)| within `sigmas` standard errors of the sample mean."""
    sample, reference = np.asarray(sample, np.float64), np.asarray(reference, np.float64)
    err = sigmas * reference.std() / np.sqrt(len(sample))
    return abs(sample.mean() - reference.mean()) < err, (sample.mean(), reference.mean(), err)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("dali_cache"))


@pytest.fixture(scope="module")
def real(cifar_root):
    data = datasets.load("cifar10", "test", data_dir=cifar_root)
    return dataclasses.replace(data, images=data.images[:N], labels=data.labels[:N])


@pytest.fixture(scope="module")
def real_loader(real, cache):
    return dali_pipe.build(real, batch_size=BATCH, seed=SEED, workers=2, cache_dir=cache)


@pytest.fixture(scope="module")
def epochs(real_loader):
    return {
        "e0": run_epoch(real_loader, 0),
        "e1": run_epoch(real_loader, 1),
        "e0_again": run_epoch(real_loader, 0),
    }


def test_contract_length_and_every_image_once(real_loader, epochs, real, cache):
    assert len(real_loader) == N // BATCH
    out = epochs["e0"]
    assert out["view1"].shape == out["view2"].shape == (N, 3, 32, 32)
    assert out["view1"].dtype == torch.float32 and out["labels"].dtype == torch.int64
    np.testing.assert_array_equal(np.sort(out["labels"].numpy()), np.sort(real.labels))  # a permutation
    assert not np.array_equal(out["labels"].numpy(), real.labels)  # ...a shuffled one
    assert real_loader.mean == tuple(real.mean) and real_loader.std == tuple(real.std)
    # The cached conversion is a verified DALI directory with a manifest, reused by the next build.
    assert real_loader.source.startswith(cache) and os.path.isfile(
        os.path.join(real_loader.source, "manifest.json")
    )
    stamp = os.path.getmtime(os.path.join(real_loader.source, "format.json"))
    again = dali_pipe.build(real, batch_size=BATCH, workers=1, cache_dir=cache)
    assert again.source == real_loader.source
    assert os.path.getmtime(os.path.join(again.source, "format.json")) == stamp
    assert len(dali_pipe.build(real, batch_size=100, drop_last=False, workers=1, cache_dir=cache)) == 21


def test_two_views_differ(epochs):
    v1, v2 = epochs["e0"]["view1"], epochs["e0"]["view2"]
    per_image = (v1 - v2).abs().flatten(1).amax(1)
    assert (per_image > 0).float().mean() > 0.99


def test_epoch_is_a_pure_function_of_seed_epoch_and_rank(real, real_loader, epochs, cache):
    for field in ("view1", "view2", "labels"):
        assert torch.equal(epochs["e0"][field], epochs["e0_again"][field])
        assert not torch.equal(epochs["e0"][field], epochs["e1"][field])
    # A fresh loader with other thread count and no look-ahead reproduces epoch 1 directly.
    fresh = dali_pipe.build(real, batch_size=BATCH, seed=SEED, workers=1, ahead=False, cache_dir=cache)
    got = run_epoch(fresh, 1)
    for field in ("view1", "view2", "labels"):
        assert torch.equal(got[field], epochs["e1"][field])
    other = run_epoch(dali_pipe.build(real, batch_size=BATCH, seed=SEED + 1, workers=2, cache_dir=cache), 0)
    assert not torch.equal(other["labels"], epochs["e0"]["labels"])
    assert dali_pipe.derive_seed(0, 1) != dali_pipe.derive_seed(1, 0)  # seeds never alias across epochs


def test_shuffle_is_a_full_permutation_and_augmentation_changes_per_epoch(tmp_path):
    n = 1500
    data = make(coordinate_images(n, 8), name="ids")
    source = str(tmp_path / "ids")
    dali_format.write(data, source, shard_size=100)
    loader = dali_pipe.build(data, batch_size=100, source=source, workers=2, ahead=False)
    order = run_epoch(loader, 0)["labels"].numpy()
    assert sorted(order) == list(range(n))
    # A uniform permutation: half the neighbours ascend, and positions forget the stored order
    # (not only the 15 shards permuted, which would leave runs within a shard ascending).
    up = (np.diff(order) > 0).mean()
    assert abs(up - 0.5) < 5 * np.sqrt(0.25 / (n - 1)), up
    assert abs(np.corrcoef(order, np.arange(n))[0, 1]) < 5 / np.sqrt(n)
    gap = np.abs(np.diff(order)).mean()  # E|X - Y| = (n + 1) / 3 for two distinct uniform draws
    assert abs(gap - (n + 1) / 3) < 5 * np.sqrt(n / 18), gap  # a local (buffer < n) shuffle: far smaller
    # Without shuffling the order repeats, but each epoch still draws fresh augmentations.
    fixed = dali_pipe.build(data, batch_size=100, source=source, shuffle=False, workers=2, ahead=False)
    a, b = run_epoch(fixed, 0), run_epoch(fixed, 1)
    np.testing.assert_array_equal(a["labels"].numpy(), np.arange(n))
    assert torch.equal(a["labels"], b["labels"])
    assert ((a["view1"] - b["view1"]).abs().flatten(1).amax(1) > 0).float().mean() > 0.99


@pytest.mark.parametrize("drop_last", [True, False])
def test_rank_shards_are_disjoint_and_cover_the_epoch(tmp_path, drop_last):
    n, world, batch = 1000, 3, 64
    data = make(coordinate_images(n, 8), name="ids")
    source = str(tmp_path / "ids")
    dali_format.write(data, source, shard_size=50)
    seen = {}
    for epoch in (0, 1):
        parts = []
        for rank in range(world):
            loader = dali_pipe.build(
                data,
                batch_size=batch,
                recipe="supervised",
                rank=rank,
                world_size=world,
                drop_last=drop_last,
                source=source,
                workers=1,
                ahead=False,
            )
            labels = run_epoch(loader, epoch)["labels"].numpy()
            assert len(np.unique(labels)) == len(labels)
            share = (rank + 1) * n // world - rank * n // world  # DALI's split: 333, 333, 334
            assert len(loader) == ((n // world) // batch if drop_last else -(-share // batch))
            parts.append(labels)
        for a in range(world):
            for b in range(a + 1, world):
                assert not set(parts[a]) & set(parts[b]), (epoch, a, b)
        union = np.concatenate(parts)
        assert len(union) == (world * ((n // world) // batch) * batch if drop_last else n)
        seen[epoch] = [set(p) for p in parts]
    assert seen[0][0] != seen[1][0]  # shards are re-dealt each epoch (the shard order is permuted)


def crop_boxes(views):
    """Recover (top, left, height, width, flipped) of each crop from coordinate views (n, 3, 32, 32) in levels.

    DALI resizes bilinearly: output column j samples source x = left + (j + 0.5) * w / 32 - 0.5, where
    red = 8 x + 4 is linear, so a line fitted through columns 4..27 (always inside the crop: crops
    are >= 7 px wide) gives red = 8 left + (j + 0.5) w / 4 (slope negative when flipped)."""
    j = np.arange(4, 28) + 0.5
    red, green = views[:, 0].mean(1)[:, 4:28], views[:, 1].mean(2)[:, 4:28]  # per column / per row

    def fit(y):
        slope, icpt = np.polyfit(j, y.T, 1)
        return slope, icpt

    rs, ri = fit(red)
    gs, gi = fit(green)
    flipped = rs < 0
    w, h = 4 * np.abs(rs), 4 * gs
    left = np.where(flipped, ri - 8 * w, ri) / 8
    top = gi / 8
    est = np.stack([top, left, h, w], 1)
    assert np.abs(est - est.round()).max() < 0.25, "crop boxes must come out as whole pixels"
    return np.concatenate([est.round().astype(np.int64), flipped[:, None]], 1)


def reference_boxes(n, size=32, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), seed=0):
    """torchvision's RandomResizedCrop.get_params in float64, vectorised: 10 tries of area ~ U(scale),
    log-aspect ~ U(log ratio), rounded sides that must fit; else the whole (square) image."""
    rng = np.random.default_rng(seed)
    area = size * size * rng.uniform(*scale, (n, 10))
    aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1]), (n, 10)))
    w, h = (
        np.round(np.sqrt(area * aspect)).astype(np.int64),
        np.round(np.sqrt(area / aspect)).astype(np.int64),
    )
    ok = (w > 0) & (w <= size) & (h > 0) & (h <= size)
    pick = ok.argmax(1)
    w = np.where(ok.any(1), w[np.arange(n), pick], size)
    h = np.where(ok.any(1), h[np.arange(n), pick], size)
    return np.stack([rng.integers(0, size - h + 1), rng.integers(0, size - w + 1), h, w], 1)


@pytest.fixture(scope="module")
def coords():
    return make(coordinate_images(N), np.zeros(N), name="coords")


def test_crop_and_flip_statistics(coords, cache):
    loader = dali_pipe.build(coords, batch_size=BATCH, spec=NEUTRAL, workers=2, cache_dir=cache, ahead=False)
    out = run_epoch(loader, 0)
    views = np.concatenate([pixels(out["view1"], coords), pixels(out["view2"], coords)])
    assert np.abs(views[:, 2] - 128).max() < 1.0  # colours untouched with jitter_p = gray_p = 0
    top, left, h, w, flipped = crop_boxes(views).T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 32).all() and (left + w <= 32).all()
    rtop, rleft, rh, rw = reference_boxes(200_000).T
    for name, got, want in [
        ("area fraction", h * w / 1024, rh * rw / 1024),
        ("log aspect", np.log(w / h), np.log(rw / rh)),
        ("|log aspect|", np.abs(np.log(w / h)), np.abs(np.log(rw / rh))),
        ("centre column", left + w / 2, rleft + rw / 2),
        ("centre row", top + h / 2, rtop + rh / 2),
        ("flip", flipped, np.random.default_rng(1).random(100_000) < 0.5),
    ]:
        ok, detail = within(got, want)
        assert ok, (name, detail)
    # The tails too: P(area fraction < q) and P(|log aspect| < q) against the reference at a few q.
    for name, got, want, qs in [
        ("area", h * w / 1024, rh * rw / 1024, (0.1, 0.15, 0.3, 0.6, 0.9)),
        ("|log aspect|", np.abs(np.log(w / h)), np.abs(np.log(rw / rh)), (0.05, 0.15, 0.25)),
    ]:
        for q in qs:
            p = (want < q).mean()
            bound = 5 * np.sqrt(p * (1 - p) / len(got)) + 1e-3
            assert abs((got < q).mean() - p) < bound, (name, q, (got < q).mean(), p)
    assert (h * w).min() >= np.floor(0.08 * 1024 * 0.8) and np.abs(np.log(w / h)).max() < np.log(4 / 3) + 0.15


def test_grayscale_rate(coords, cache):
    loader = dali_pipe.build(coords, batch_size=BATCH, workers=2, cache_dir=cache)  # default recipe
    outs = [run_epoch(loader, e) for e in (0, 1)]  # 8192 views: 5 sigma = 0.022
    views = np.concatenate([pixels(out[k], coords) for out in outs for k in ("view1", "view2")])
    # Exactly gray, as torchvision's RandomGrayscale (up to the float rounding of normalisation).
    spread = np.maximum(np.abs(views[:, 0] - views[:, 1]), np.abs(views[:, 1] - views[:, 2])).reshape(
        len(views), -1
    )
    gray = spread.max(1) < 1e-3
    assert np.median(spread.max(1)[~gray]) > 20  # coloured views are far from gray: the split is clean
    p, n = 0.2, len(gray)
    assert abs(gray.mean() - p) < 5 * np.sqrt(p * (1 - p) / n), gray.mean()


def test_simclr_views_are_the_shared_torch_ops_on_decoded_images(real, cache):
    """DALI only decodes for SimCLR: each batch's two views are augment.simclr_view of the decoded
    images (named by their unique labels), drawn from the generator seeded with (seed, epoch, 1, rank)."""
    data = make(real.images[:512], name="real512", mean=real.mean, std=real.std)
    loader = dali_pipe.build(data, batch_size=BATCH, seed=3, workers=2, cache_dir=cache, ahead=False)
    assert loader.recipe_name == "simclr/torch"
    loader.set_epoch(2)
    gen = torch.Generator().manual_seed(recipes.derive_seed(3, 2, 1, 0))
    images = torch.from_numpy(data.images).permute(0, 3, 1, 2)
    for batch in loader:
        idx = batch.labels
        want = augment.simclr_view(images[torch.cat([idx, idx])], SimCLRRecipe(), gen, data.mean, data.std)
        torch.testing.assert_close(torch.cat([batch.view1, batch.view2]), want, atol=0, rtol=0)


def test_output_statistics_match_gpu_pipeline(real, epochs):
    gpu = pytest.importorskip("pipelines.loaders.gpu")
    out = epochs["e0"]
    ours = torch.cat([out["view1"], out["view2"]])
    gpu_loader = gpu.build(real, batch_size=BATCH, device="cpu", seed=SEED)
    gpu_loader.set_epoch(0)
    theirs = torch.cat([torch.cat([b.view1, b.view2]) for b in gpu_loader])
    assert_same_channel_moments(ours, theirs)


def test_eval_recipe_is_plain_normalisation_in_order(real, cache):
    data = dataclasses.replace(real, images=real.images[:300], labels=real.labels[:300], name="eval300")
    loader = dali_pipe.build(data, batch_size=128, recipe="eval", drop_last=False, workers=1, cache_dir=cache)
    batches = list(loader)
    assert len(loader) == len(batches) == 3 and all(b.view2 is None for b in batches)
    assert [len(b.labels) for b in batches] == [128, 128, 44]
    got = torch.cat([b.check().view1 for b in batches])
    mean, std = torch.tensor(data.mean).view(1, 3, 1, 1), torch.tensor(data.std).view(1, 3, 1, 1)
    want = (torch.from_numpy(data.images).permute(0, 3, 1, 2).double() / 255 - mean) / std
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(torch.cat([b.labels for b in batches]).numpy(), data.labels)


def test_eval_passes_build_one_pipeline_each(real, cache, monkeypatch):
    """Eval batches never depend on the epoch: no pipeline is started ahead for a pass that never
    comes (each would fill DALI's buffers for nothing); a training loader still starts epoch e + 1."""
    built = []
    original = dali_pipe.Pipeline

    def counted(*args, **kwargs):
        built.append(kwargs.get("seed"))
        return original(*args, **kwargs)

    monkeypatch.setattr(dali_pipe, "Pipeline", counted)
    data = dataclasses.replace(real, images=real.images[:300], labels=real.labels[:300], name="eval300")
    loader = dali_pipe.build(data, batch_size=128, recipe="eval", drop_last=False, workers=1, cache_dir=cache)
    for passes in (1, 2):
        assert len(list(loader)) == 3
        assert loader._ahead is None and len(built) == passes
    built.clear()
    train = dali_pipe.build(data, batch_size=128, workers=1, cache_dir=cache)
    assert len(list(train)) == 2
    train._ahead[1].join()
    assert len(built) == 2  # epoch 0, and epoch 1 started ahead


@pytest.mark.parametrize("flip_p", [0.5, 0.2])
def test_supervised_recipe_reflect_pads_translates_and_flips(coords, cache, flip_p):
    loader = dali_pipe.build(
        coords,
        batch_size=BATCH,
        recipe="supervised",
        workers=2,
        cache_dir=cache,
        ahead=False,
        spec=SimCLRRecipe(flip_p=flip_p),
    )
    out = run_epoch(loader, 0)
    assert "view2" not in out
    v = np.rint(pixels(out["view1"], coords)).astype(np.int64)
    # Undo: red at output column j is 8 * reflect(j + dx) + 4 (mirrored when flipped); green likewise.
    red, green = (v[:, 0, 16] - 4) // 8, (v[:, 1, :, 16] - 4) // 8
    flipped = red[:, 15] > red[:, 16]
    red = np.where(flipped[:, None], red[:, ::-1], red)
    dx, dy = red[:, 16] - 16, green[:, 16] - 16
    reflect = lambda i: np.where(i < 0, -i, np.where(i > 31, 62 - i, i))  # noqa: E731  torch's "reflect"
    cols = np.arange(32)
    np.testing.assert_array_equal(red, reflect(cols[None] + dx[:, None]))
    np.testing.assert_array_equal(green, reflect(cols[None] + dy[:, None]))
    for shift in (dx, dy):
        counts = np.bincount(shift + 4, minlength=9)
        assert len(counts) == 9 and shift.min() >= -4, counts  # offsets -4..4, each equally likely
        expected = len(shift) / 9
        assert (np.abs(counts - expected) < 5 * np.sqrt(expected)).all(), counts
    p = flipped.mean()
    assert abs(p - flip_p) < 5 * np.sqrt(flip_p * (1 - flip_p) / len(flipped)), p


def test_jpeg_shards_are_decoded_inside_the_graph(tmp_path):
    rng = np.random.default_rng(4)
    small = torch.from_numpy(rng.uniform(0, 255, (64, 3, 4, 4)).astype(np.float32))
    big = torch.nn.functional.interpolate(small, size=(48, 48), mode="bilinear").round().clamp(0, 255)
    data = make(big.to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy(), name="photos")
    source = str(tmp_path / "photos")
    writer.convert(data, "dali", source, encoding="jpg", quality=95, shard_size=16, progress=False)
    out = run_epoch(dali_pipe.build(data, batch_size=16, source=source, workers=1, ahead=False), 0)
    assert out["view1"].shape == (64, 3, 32, 32)  # SimCLR views come out at spec.size
    plain = run_epoch(dali_pipe.build(data, batch_size=16, recipe="eval", source=source, workers=1), 0)
    decoded = np.rint(pixels(plain["view1"], data)).clip(0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    assert verify.psnr(decoded, data.images) > 35.0


def test_damaged_cache_entry_is_rewritten(tmp_path):
    data = make(coordinate_images(300, 8), name="small")
    first = dali_pipe.build(data, batch_size=100, cache_dir=str(tmp_path), workers=1, ahead=False)
    tar = os.path.join(first.source, "shard-00000.tar")
    with open(tar, "r+b") as f:
        f.truncate(1000)
    again = dali_pipe.build(data, batch_size=100, cache_dir=str(tmp_path), workers=1, ahead=False)
    assert again.source == first.source and dali_format.check(again.source, deep=True)["count"] == 300
    assert sorted(run_epoch(again, 0)["labels"].numpy()) == list(range(300))


def test_bad_requests_are_data_errors(real, cache, tmp_path):
    with pytest.raises(DataError, match="unknown recipe"):
        dali_pipe.build(real, batch_size=BATCH, recipe="mixup", cache_dir=cache)
    with pytest.raises(DataError, match="rank"):
        dali_pipe.build(real, batch_size=BATCH, rank=2, world_size=2, cache_dir=cache)
    with pytest.raises(DataError, match="no full batch"):
        dali_pipe.build(real, batch_size=N + 1, cache_dir=cache)
    small = dataclasses.replace(real, images=real.images[:10], labels=real.labels[:10], name="ten")
    writer.convert(small, "dali", str(tmp_path / "ten"), progress=False)
    with pytest.raises(DataError, match="holds 10 samples, the dataset has 2048"):
        dali_pipe.build(real, batch_size=BATCH, source=str(tmp_path / "ten"))
    with pytest.raises(DataError, match="no such DALI dataset directory"):
        dali_pipe.build(real, batch_size=BATCH, source=str(tmp_path / "absent"))
