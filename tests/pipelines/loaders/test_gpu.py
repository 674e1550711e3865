"""The gpu pipeline on the CPU (the same code runs on CUDA): Batch contract, two distinct views made
from the right images, sane normalised values, order and augmentation as a pure function of
(seed, epoch, rank), every image once per epoch, disjoint rank shards of one permutation, the
supervised and eval recipes exactly, and clean DataErrors.
"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

import pipelines
from pipelines import DataError, augment
from pipelines.augment import SimCLRRecipe
from pipelines.loaders import gpu

MEAN, STD = (0.5, 0.45, 0.4), (0.25, 0.25, 0.3)


def dataset(n, height=32, width=32, seed=0, constant=False):
    """What gpu.build reads of a datasets.ArrayDataset. Labels are 0..n-1, so they identify images.
    constant=True: each image one random colour (crops cannot change it, only colour ops can)."""
    rng = np.random.default_rng(seed)
    if constant:
        images = np.broadcast_to(
            rng.integers(0, 256, (n, 1, 1, 3), dtype=np.uint8), (n, height, width, 3)
        ).copy()
    else:  # smooth colour gradients plus noise: something for crops, flips and colour ops to change
        ramp = np.linspace(0, 1, width)[None, None, :, None] * rng.uniform(0, 255, (n, 1, 1, 3))
        noise = rng.normal(0, 20, (n, height, width, 3))
        images = np.clip(ramp + rng.uniform(0, 128, (n, 1, 1, 3)) + noise, 0, 255).astype(np.uint8)
    return SimpleNamespace(
        images=images,
        labels=np.arange(n, dtype=np.int64),
        classes=[str(i) for i in range(n)],
        name="toy",
        mean=MEAN,
        std=STD,
    )


def epoch(loader, e):
    loader.set_epoch(e)
    return list(loader)


def unnormalise(view):
    return view * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)


def test_batch_contract_two_distinct_views_and_sane_values():
    data = dataset(256)
    loader = pipelines.build("gpu", data, batch_size=64, seed=0)
    assert gpu.EXTRA is None and len(loader) == 4
    assert loader.mean == MEAN and loader.std == STD
    batches = epoch(loader, 0)
    assert len(batches) == 4
    for b in batches:
        b.check(device="cpu")
        assert b.view1.shape == (64, 3, 32, 32) and b.view2 is not None
    v1, v2 = torch.cat([b.view1 for b in batches]), torch.cat([b.view2 for b in batches])
    differ = (v1 - v2).abs().flatten(1).amax(1) > 1e-3
    assert differ.float().mean() > 0.95, "the two views must be augmented independently"
    pixels = unnormalise(torch.cat([v1, v2]))
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5, "views must be [0, 1] images normalised"
    assert abs(float(v1.mean())) < 1.0 and 0.2 < float(v1.std()) < 2.0
    # Grayscale hits 20% of views (coloured images never turn grey otherwise): R = G = B there.
    grey = (pixels.amax(1) - pixels.amin(1)).flatten(1).amax(1) < 1e-5
    assert abs(float(grey.float().mean()) - 0.2) < 5 * np.sqrt(0.2 * 0.8 / len(grey))


def test_two_views_are_the_halves_of_one_contiguous_tensor():
    batches = epoch(pipelines.build("gpu", dataset(64), batch_size=16, seed=0), 0)
    for b in batches:
        b.check()
        assert b.views.shape == (32, 3, 32, 32) and b.views.is_contiguous(memory_format=torch.channels_last)
        assert b.both is b.views and torch.equal(b.both, torch.cat([b.view1, b.view2]))
        assert b.view1.untyped_storage().data_ptr() == b.views.untyped_storage().data_ptr()
    b = batches[0]
    b.view2 = b.view2 * 0  # a replaced view must never be hidden behind a stale joint tensor
    assert b.views is None and torch.equal(b.both[16:], torch.zeros_like(b.view2))
    b.check()


def test_views_come_from_their_labels_images():
    # Constant images and no colour ops: every pixel of a view is its image's colour, crop or not.
    data = dataset(128, constant=True)
    loader = gpu.build(data, batch_size=32, spec=SimCLRRecipe(jitter_p=0.0, gray_p=0.0, size=16))
    for b in epoch(loader, 3):
        assert b.view1.shape == (32, 3, 16, 16)
        colour = torch.from_numpy(data.images[b.labels.numpy(), 0, 0]).float().div(255)  # (32, 3)
        for view in (b.view1, b.view2):
            torch.testing.assert_close(
                unnormalise(view), colour[:, :, None, None].expand(-1, -1, 16, 16), atol=1e-5, rtol=0
            )


def test_batches_are_a_pure_function_of_seed_epoch_and_rank():
    data, small = dataset(48, height=16, width=16), SimCLRRecipe(size=16)
    build = lambda **kw: gpu.build(data, batch_size=16, spec=small, **kw)  # noqa: E731
    a, b = build(seed=5), build(seed=5)
    epoch(a, 0), epoch(a, 1)  # a has been used; b is fresh: resume must not care
    e2 = epoch(a, 2)
    for x, y in zip(e2, epoch(b, 2)):
        assert (
            torch.equal(x.view1, y.view1)
            and torch.equal(x.view2, y.view2)
            and torch.equal(x.labels, y.labels)
        )
    assert all(torch.equal(x.view2, y.view2) for x, y in zip(e2, epoch(a, 2))), (
        "an epoch replays when iterated again"
    )
    e3 = epoch(a, 3)
    assert not torch.equal(torch.cat([x.labels for x in e2]), torch.cat([x.labels for x in e3]))
    assert not torch.equal(e2[0].view1, e3[0].view1)
    other = epoch(build(seed=6), 2)
    assert not torch.equal(torch.cat([x.labels for x in e2]), torch.cat([x.labels for x in other]))
    # Without shuffling the order repeats, but augmentation is fresh each epoch.
    still = build(shuffle=False)
    f0, f1 = epoch(still, 0), epoch(still, 1)
    assert torch.equal(torch.cat([x.labels for x in f0]), torch.arange(48))
    assert torch.equal(torch.cat([x.labels for x in f1]), torch.arange(48))
    assert not torch.equal(f0[0].view1, f1[0].view1)


def test_every_image_once_per_epoch():
    data, tiny = dataset(250, height=8, width=8), SimCLRRecipe(size=8)  # order only: small images suffice
    loader = gpu.build(data, batch_size=64, drop_last=False, spec=tiny)
    batches = epoch(loader, 1)
    assert len(loader) == len(batches) == 4 and [len(b.labels) for b in batches] == [64, 64, 64, 58]
    for b in batches:
        b.check()
    assert torch.equal(torch.cat([b.labels for b in batches]).sort().values, torch.arange(250))
    full = gpu.build(data, batch_size=64, spec=tiny)  # drop_last: 3 full batches of distinct images
    labels = torch.cat([b.labels for b in epoch(full, 1)])
    assert len(full) == 3 and len(labels) == 192 and len(labels.unique()) == 192


@pytest.mark.parametrize("drop_last", [True, False])
def test_rank_shards_are_disjoint_slices_of_one_permutation(drop_last):
    data, world, tiny = dataset(301, height=8, width=8), 3, SimCLRRecipe(size=8)
    loaders = [
        gpu.build(data, batch_size=32, rank=r, world_size=world, seed=1, drop_last=drop_last, spec=tiny)
        for r in range(world)
    ]
    assert len({len(loader) for loader in loaders}) == 1, "every rank must run the same number of steps"
    shards = [torch.cat([b.labels for b in epoch(loader, 4)]) for loader in loaders]
    assert all(len(s) == (96 if drop_last else 100) for s in shards)
    everything = torch.cat(shards)
    assert len(everything.unique()) == len(everything), "rank shards must be disjoint"
    whole = gpu.build(data, batch_size=100, seed=1, drop_last=False, spec=tiny)  # world_size 1
    single = torch.cat([b.labels for b in epoch(whole, 4)])
    if not drop_last:  # the shards are consecutive slices of the one epoch permutation
        assert torch.equal(everything, single[:300])
    views = [next(iter(loader)).view1 for loader in loaders]
    assert not torch.equal(views[0], views[1]), "ranks draw their own augmentations"


def test_eval_recipe_is_plain_normalisation_in_order():
    data = dataset(100, height=24, width=20)
    loader = gpu.build(data, batch_size=32, recipe="eval", drop_last=False, shuffle=True)
    batches = epoch(loader, 7)
    assert len(loader) == 4 and all(b.view2 is None for b in batches)
    got = torch.cat([b.check().view1 for b in batches])
    assert got.shape == (100, 3, 24, 20)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1).double(), torch.tensor(STD).view(1, 3, 1, 1).double()
    want = (torch.from_numpy(data.images).permute(0, 3, 1, 2).double() / 255 - mean) / std
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=0)
    assert torch.equal(torch.cat([b.labels for b in batches]), torch.arange(100))


def test_supervised_recipe_reflect_pads_translates_and_flips():
    data = dataset(64, height=24, width=28)
    loader = gpu.build(data, batch_size=64, recipe="supervised")
    (batch,) = epoch(loader, 0)
    batch.check()
    assert batch.view2 is None and batch.view1.shape == (64, 3, 24, 28)
    got = unnormalise(batch.view1).mul(255).round().to(torch.uint8)
    source = torch.from_numpy(data.images[batch.labels.numpy()]).permute(0, 3, 1, 2)
    padded = torch.nn.functional.pad(source.float(), (4, 4, 4, 4), mode="reflect")
    found = []
    for i in range(64):  # which of the 9 x 9 x 2 translations / flips produced view i?
        crops = {(dy, dx): padded[i, :, dy : dy + 24, dx : dx + 28] for dy in range(9) for dx in range(9)}
        hits = [
            (dy, dx, f)
            for (dy, dx), c in crops.items()
            for f in (0, 1)
            if torch.equal(got[i].float(), c.flip(-1) if f else c)
        ]
        assert hits, i
        found.append(hits[0])
    dys, dxs, flips = zip(*found)
    assert len(set(dys)) > 3 and len(set(dxs)) > 3 and 0 < sum(flips) < 64


def test_errors():
    data = dataset(100)
    with pytest.raises(DataError, match="batch size 128 exceeds"):
        gpu.build(data, batch_size=128)
    with pytest.raises(DataError, match="batch size 40 exceeds the 33 images"):
        gpu.build(data, batch_size=40, rank=1, world_size=3)
    assert len(gpu.build(data, batch_size=128, drop_last=False)) == 1
    with pytest.raises(DataError, match="unknown recipe"):
        gpu.build(data, batch_size=10, recipe="fancy")
    with pytest.raises(DataError, match="rank"):
        gpu.build(data, batch_size=10, rank=2, world_size=2)
    with pytest.raises(DataError, match="uint8"):
        gpu.build(
            SimpleNamespace(images=data.images.astype(np.float32), labels=data.labels, mean=MEAN, std=STD),
            batch_size=10,
        )
    with pytest.raises(DataError, match="labels"):
        gpu.build(
            SimpleNamespace(images=data.images, labels=data.labels[:50], mean=MEAN, std=STD), batch_size=10
        )
    with pytest.raises(DataError, match="too small"):
        gpu.build(dataset(10, height=4, width=4), batch_size=5, recipe="supervised")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; the CPU path is tested above")
def test_cuda_no_host_sync_per_step():
    data = dataset(512)
    for recipe in pipelines.RECIPES:
        loader = gpu.build(data, batch_size=128, device="cuda", recipe=recipe)
        loader.set_epoch(0)
        it = iter(loader)
        next(it).check(device="cuda")  # the epoch's permutation and the mean/std copies happen here
        torch.cuda.set_sync_debug_mode("error")
        try:
            rest = list(it)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert len(rest) == 3 and all(b.check(device="cuda").labels.device.type == "cuda" for b in rest)
    # Same parameters on both devices give the same views.
    x = torch.from_numpy(data.images[:64]).permute(0, 3, 1, 2).contiguous()
    p = augment.sample_params(64, 32, 32, SimCLRRecipe(), torch.Generator().manual_seed(0))
    moved = augment.AugParams(**{k: v.cuda() for k, v in vars(p).items()})
    cpu = augment.apply_params(x, p, SimCLRRecipe(), MEAN, STD)
    cuda = augment.apply_params(x.cuda(), moved, SimCLRRecipe(), MEAN, STD)
    assert (cuda.cpu() - cpu).abs().max() < 1e-3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; the CPU path is tested above")
def test_cuda_side_stream_batches_survive_a_busy_main_stream():
    """Batches are made on a side stream while the main stream works: each must be complete when
    handed over and its memory must not be reused before the main stream is done with it."""
    loader = gpu.build(dataset(512), batch_size=128, device="cuda", seed=3)
    quiet = [b.both.cpu() for b in epoch(loader, 0)]
    busy, x = [], torch.randn(4096, 4096, device="cuda")
    for b in epoch(loader, 0):
        for _ in range(4):  # long main-stream work queued before the batch is read
            x = (x @ x).tanh_()
        busy.append(b.both.mul(1.0).cpu())
    assert all(torch.equal(a, c) for a, c in zip(quiet, busy))
