"""The torchvision DataLoader baseline: contract, recipes, reproducibility, sharding."""

import dataclasses

import numpy as np
import pytest
import torch

pytest.importorskip("torchvision")
from benchmarks.view_stats import assert_same_channel_moments  # noqa: E402
from pipelines import DataError, augment, build, datasets
from pipelines.data import arrays
from pipelines.loaders import torchvision as baseline  # noqa: E402


@pytest.fixture(scope="module")
def sample():
    """48 real CIFAR-10 images; labels replaced by their index, so every batch says which images it holds."""
    d = datasets.load("cifar10-sample", "test")
    n = 48
    return arrays.ArrayDataset(d.images[:n], np.arange(n), [str(i) for i in range(n)], "ids", d.mean, d.std)


def epoch(loader, e):
    loader.set_epoch(e)
    return list(loader)


def unnormalize(view, data):
    """(B, 3, H, W) normalised view -> [0, 1] pixels, float64."""
    mean = torch.tensor(data.mean, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(data.std, dtype=torch.float64).view(1, 3, 1, 1)
    return view.double() * std + mean


def same(a, b):
    return len(a) == len(b) and all(
        torch.equal(x.labels, y.labels)
        and torch.equal(x.view1, y.view1)
        and (x.view2 is None and y.view2 is None or torch.equal(x.view2, y.view2))
        for x, y in zip(a, b)
    )


def test_simclr_batches_satisfy_the_contract(sample):
    loader = build("torchvision", sample, batch_size=16, seed=0, workers=0)
    assert len(loader) == 3 and loader.mean == sample.mean and loader.std == sample.std
    batches = epoch(loader, 0)
    assert len(batches) == 3
    for b in batches:
        b.check("cpu")
        assert b.view1.shape == (16, 3, 32, 32) and not torch.equal(b.view1, b.view2)
        pixels = unnormalize(torch.cat([b.view1, b.view2]), sample)
        assert pixels.min() > -1e-5 and pixels.max() < 1 + 1e-5  # normalised with data.mean/std
    seen = torch.cat([b.labels for b in batches])
    assert sorted(seen.tolist()) == list(range(48)) and seen.tolist() != list(
        range(48)
    )  # a shuffled permutation


def test_len_and_drop_last(sample):
    assert len(baseline.build(sample, batch_size=20, workers=0)) == 2
    loader = baseline.build(sample, batch_size=20, drop_last=False, workers=0)
    assert len(loader) == 3 and [len(b.labels) for b in epoch(loader, 0)] == [20, 20, 8]
    with pytest.raises(DataError, match="exceeds the 24 images"):
        baseline.build(sample, batch_size=32, world_size=2, workers=0)


def test_spec_sets_size_and_probabilities(sample):
    spec = augment.SimCLRRecipe(size=20, gray_p=1.0, jitter_p=0.0)
    b = epoch(baseline.build(sample, batch_size=48, spec=spec, workers=0), 0)[0]
    assert b.view1.shape == (48, 3, 20, 20)
    pixels = unnormalize(b.view1, sample)
    assert (pixels[:, 0] - pixels[:, 2]).abs().max() < 1e-5  # gray_p=1: every view is grayscale


def test_grayscale_rate(sample):
    """RandomGrayscale(0.2) is wired in: ~20% of views have three equal channels (5-sigma binomial band)."""
    loader = baseline.build(sample, batch_size=48, seed=1, workers=0)
    gray = total = 0
    for e in range(4):
        for b in epoch(loader, e):
            pixels = unnormalize(torch.cat([b.view1, b.view2]), sample)
            gray += int(((pixels[:, 0] - pixels[:, 1]).abs().amax((1, 2)) < 1e-5).sum())
            total += len(pixels)
    sigma = (total * 0.2 * 0.8) ** 0.5
    assert abs(gray - 0.2 * total) < 5 * sigma, (gray, total)


def test_eval_is_exact_and_in_order(sample):
    b = epoch(baseline.build(sample, batch_size=48, recipe="eval", workers=0), 3)[0]
    b.check("cpu")
    assert b.view2 is None and b.labels.tolist() == list(range(48))
    expected = torch.from_numpy(sample.images).permute(0, 3, 1, 2).double() / 255
    torch.testing.assert_close(unnormalize(b.view1, sample), expected, atol=1e-6, rtol=0)


def test_supervised_is_a_reflect_padded_crop_maybe_flipped(sample):
    b = epoch(baseline.build(sample, batch_size=8, recipe="supervised", workers=0), 0)[0]
    b.check("cpu")
    assert b.view2 is None and b.view1.shape == (8, 3, 32, 32)
    views = unnormalize(b.view1, sample)
    flips = 0
    for view, i in zip(views, b.labels.tolist()):
        image = torch.from_numpy(sample.images[i]).permute(2, 0, 1).double()[None] / 255
        padded = torch.nn.functional.pad(image, (4, 4, 4, 4), mode="reflect")[0]
        crops = [padded[:, dy : dy + 32, dx : dx + 32] for dy in range(9) for dx in range(9)]
        found = [
            f for c in crops for f in (False, True) if torch.allclose(c.flip(-1) if f else c, view, atol=1e-6)
        ]
        assert found, f"view of image {i} is no padded crop"
        flips += found[0]
    assert 0 < flips < 8  # both orientations occur (this seed's draw; a 2 / 2^8 event otherwise)


def test_reproducible_for_any_worker_count(sample):
    sample = dataclasses.replace(sample, images=sample.images[:24], labels=sample.labels[:24])
    runs = {w: baseline.build(sample, batch_size=8, seed=7, workers=w) for w in (0, 2)}
    first = epoch(runs[0], 1)
    assert same(first, epoch(runs[0], 1))  # the same epoch again
    assert same(first, epoch(runs[2], 1))  # two worker processes: the same batches
    assert same(epoch(runs[2], 2), epoch(runs[2], 2))  # persistent workers are re-seeded per sample
    fresh = baseline.build(sample, batch_size=8, seed=7, workers=2)
    assert same(epoch(fresh, 2), epoch(runs[0], 2))  # a resumed run sees the same epoch 2
    other = epoch(runs[0], 2)
    assert not torch.equal(first[0].labels, other[0].labels) and not torch.equal(
        first[0].view1, other[0].view1
    )
    reseeded = epoch(baseline.build(sample, batch_size=8, seed=8, workers=0), 1)
    assert not torch.equal(reseeded[0].labels, first[0].labels)


def test_global_rng_is_untouched(sample):
    loader = baseline.build(sample, batch_size=16, workers=0)
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    epoch(loader, 0)
    assert torch.equal(torch.rand(4), expected)


def test_ranks_get_disjoint_shards_of_one_order(sample):
    shards = [
        epoch(baseline.build(sample, batch_size=8, seed=3, rank=r, world_size=3, workers=0), 5)
        for r in range(3)
    ]
    ids = [torch.cat([b.labels for b in s]).tolist() for s in shards]
    assert all(len(i) == 16 for i in ids)
    assert len(set(ids[0]) | set(ids[1]) | set(ids[2])) == 48
    alone = torch.cat([b.labels for b in epoch(baseline.build(sample, batch_size=8, seed=3, workers=0), 5)])
    assert ids[0] + ids[1] + ids[2] == alone.tolist()  # contiguous slices of the single-process order
    with pytest.raises(DataError, match="rank"):
        baseline.build(sample, batch_size=8, rank=3, world_size=3)


def test_bad_arguments(sample, monkeypatch):
    with pytest.raises(DataError, match="unknown recipe"):
        baseline.build(sample, batch_size=8, recipe="byol")
    with pytest.raises(DataError, match="workers"):
        baseline.build(sample, batch_size=8, workers=-1)
    monkeypatch.setattr(baseline, "T", None)
    with pytest.raises(DataError, match=r"pip install -e \.\[torchvision\]"):
        baseline.build(sample, batch_size=8)
    assert baseline.EXTRA == "torchvision"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches(sample):
    b = epoch(baseline.build(sample, batch_size=16, device="cuda", workers=2), 0)[0]
    b.check("cuda")


def test_output_statistics_match_gpu_pipeline():
    """Same recipe, same real images: per-channel mean and spread of the augmented views agree."""
    from pipelines.loaders import gpu

    d = datasets.load("cifar10-sample", "train")
    real = arrays.ArrayDataset(d.images[:1000], d.labels[:1000], d.classes, d.name, d.mean, d.std)
    views = []
    for loader in (
        baseline.build(real, batch_size=100, device="cpu", seed=3, workers=0),
        gpu.build(real, batch_size=100, device="cpu", seed=3),
    ):
        views.append(torch.cat([torch.cat([b.view1, b.view2]) for b in epoch(loader, 0)]))
    assert_same_channel_moments(*views)


def test_blur_is_in_the_recipe_above_32_px_only():
    """torchvision's own GaussianBlur does the baseline's blur: RandomApply(p = 0.5) with the recipe's
    kernel and sigma range above 32 px, absent from the CIFAR recipe (its statistics against the
    torch op: test_recipe_parity.py)."""
    from torchvision.transforms import v2 as T

    def blurs(spec):
        chain = baseline.transform("simclr", spec, (0.5,) * 3, (0.25,) * 3, (spec.size, spec.size)).transforms
        return [
            (t.p, b)
            for t in chain
            if isinstance(t, T.RandomApply)
            for b in t.transforms
            if isinstance(b, T.GaussianBlur)
        ]

    assert blurs(augment.SimCLRRecipe()) == []
    [(p, blur)] = blurs(augment.SimCLRRecipe(size=96))
    assert p == 0.5 and list(blur.kernel_size) == [9, 9] and list(blur.sigma) == [0.1, 2.0]
    [(p, blur)] = blurs(augment.SimCLRRecipe(size=224, blur_sigma=(0.5, 1.5)))
    assert list(blur.kernel_size) == [23, 23] and list(blur.sigma) == [0.5, 1.5]
