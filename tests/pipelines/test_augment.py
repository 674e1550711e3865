"""augment: the sampled parameters follow SimCLR's laws (crop boxes against a slow reference sampler
written from torchvision's RandomResizedCrop with Python's `random`; rates and factor ranges against
their binomial / uniform laws, at 5 standard errors), and every op, given the parameters, computes
what torchvision's functional op computes for each image on its own.
"""

import itertools
import math
import random

import numpy as np
import pytest
import torch

from pipelines import DataError, augment, recipes
from pipelines.augment import SimCLRRecipe

N = 20_000  # parameter draws per statistical test
SIGMAS = 5.0
KS_C = 3.0  # two-sample Kolmogorov-Smirnov critical constant, false alarm ~ 3e-8


def gen(seed=0, device="cpu"):
    return torch.Generator(device=device).manual_seed(seed)


def reference_boxes(n, height, width, scale, ratio, seed=0):
    """torchvision's RandomResizedCrop.get_params, one sample at a time with Python's `random`."""
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        area = height * width
        for _ in range(10):
            target_area = area * rnd.uniform(scale[0], scale[1])
            aspect = math.exp(rnd.uniform(math.log(ratio[0]), math.log(ratio[1])))
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                out.append((rnd.randint(0, height - h), rnd.randint(0, width - w), h, w))
                break
        else:  # central crop, clipped to the ratio range
            in_ratio = width / height
            if in_ratio < min(ratio):
                w, h = width, int(round(width / min(ratio)))
            elif in_ratio > max(ratio):
                h, w = height, int(round(height * max(ratio)))
            else:
                w, h = width, height
            out.append(((height - h) // 2, (width - w) // 2, h, w))
    return np.array(out, dtype=np.int64)


def same_mean(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    err = SIGMAS * math.sqrt(a.var() / len(a) + b.var() / len(b)) + 1e-12
    return abs(a.mean() - b.mean()) <= err, (a.mean(), b.mean(), err)


def ks_distance(a, b):
    """Largest gap between the empirical CDFs of samples a and b."""
    a, b = np.sort(np.asarray(a, np.float64)), np.sort(np.asarray(b, np.float64))
    grid = np.concatenate([a, b])
    return np.abs(
        np.searchsorted(a, grid, "right") / len(a) - np.searchsorted(b, grid, "right") / len(b)
    ).max()


def same_law(a, b):
    """Means within 5 standard errors and the two-sample KS test passes."""
    ok, detail = same_mean(a, b)
    d, crit = ks_distance(a, b), KS_C * math.sqrt((len(a) + len(b)) / (len(a) * len(b)))
    return ok and d <= crit, detail + (d, crit)


def binomial_ok(hits, p):
    hits = np.asarray(hits, np.float64)
    return abs(hits.mean() - p) <= SIGMAS * math.sqrt(p * (1 - p) / len(hits)) + 1e-12, (hits.mean(), p)


# ------------------------------------------------------------------------------------ crop sampler


@pytest.mark.parametrize("height,width", [(32, 32), (32, 8)])
def test_crop_boxes_follow_torchvision_algorithm(height, width):
    recipe = SimCLRRecipe()
    ours = augment.sample_crop_boxes(N, height, width, recipe.scale, recipe.ratio, gen(1)).numpy()
    ref = reference_boxes(N, height, width, recipe.scale, recipe.ratio, seed=1)
    top, left, h, w = ours.T
    assert ours.dtype == np.int64 and ours.shape == (N, 4)
    assert (h >= 1).all() and (w >= 1).all() and (top >= 0).all() and (left >= 0).all()
    assert (top + h <= height).all() and (left + w <= width).all()
    rtop, rleft, rh, rw = ref.T
    for name, got, want in [
        ("area fraction", h * w / (height * width), rh * rw / (height * width)),
        ("log area", np.log(h * w), np.log(rh * rw)),
        ("log aspect", np.log(w / h), np.log(rw / rh)),
        ("top", top, rtop),
        ("left", left, rleft),
        ("centre row", top + h / 2, rtop + rh / 2),
    ]:
        ok, detail = same_law(got, want)
        assert ok, (name, detail)
    # On the narrow image ~10% of samples exhaust their 10 tries: the central fallback box.
    fallback = np.array(augment.fallback_box(height, width, recipe.ratio))
    ok, detail = same_mean((ours == fallback).all(1), (ref == fallback).all(1))
    assert ok, ("fallback rate", detail)


def test_log_aspect_and_area_are_uniform_when_nothing_is_rejected():
    # Large image, areas <= half of it: every first try fits and rounding is negligible.
    scale, ratio = (0.08, 0.5), (3 / 4, 4 / 3)
    top, left, h, w = augment.sample_crop_boxes(N, 4096, 4096, scale, ratio, gen(2)).numpy().T
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    log_aspect, area = np.log(w / h), h * w / 4096**2
    assert log_aspect.min() > lo - 2e-3 and log_aspect.max() < hi + 2e-3
    assert area.min() > scale[0] - 1e-3 and area.max() < scale[1] + 1e-3
    uniform = np.random.default_rng(3)
    for got, a, b in [(log_aspect, lo, hi), (area, *scale)]:
        ok, detail = same_law(got, uniform.uniform(a, b, N))
        assert ok, detail
    # Placement is uniform over the free range.
    ok, detail = same_law(top / (4096 - h), uniform.uniform(0, 1, N))
    assert ok, detail


@pytest.mark.parametrize(
    "ratio,box", [((2.0, 3.0), (8, 0, 16, 32)), ((0.25, 0.5), (0, 8, 32, 16)), ((1.5, 1.5), (5, 0, 21, 32))]
)
def test_crop_falls_back_to_central_box_when_no_try_fits(ratio, box):
    # Whole-image area at an aspect the square image cannot hold: all 10 tries fail.
    boxes = augment.sample_crop_boxes(500, 32, 32, (1.0, 1.0), ratio, gen(4))
    assert (boxes == torch.tensor(box)).all()


# --------------------------------------------------------------------------- the other parameters


def test_rates_of_flip_jitter_and_grayscale():
    for recipe in (SimCLRRecipe(), SimCLRRecipe(flip_p=0.3, jitter_p=0.55, gray_p=0.05)):
        p = augment.sample_params(N, 32, 32, recipe, gen(5))
        for name, mask, rate in [
            ("flip", p.flip, recipe.flip_p),
            ("jitter", p.jitter, recipe.jitter_p),
            ("gray", p.gray, recipe.gray_p),
        ]:
            assert mask.dtype == torch.bool and mask.shape == (N,)
            ok, detail = binomial_ok(mask.numpy(), rate)
            assert ok, (name, detail)
        # The three draws are independent of each other.
        both = (p.flip & p.gray).numpy()
        ok, detail = binomial_ok(both, recipe.flip_p * recipe.gray_p)
        assert ok, ("flip and gray", detail)


def test_all_24_jitter_orders_appear_uniformly():
    order = augment.sample_orders(N, gen(6))
    assert order.shape == (N, 4) and order.dtype == torch.int64
    assert (order.sort(1).values == torch.arange(4)).all(), "each row must be a permutation of the 4 ops"
    codes = (order * torch.tensor([64, 16, 4, 1])).sum(1).numpy()
    perms = {sum(v * m for v, m in zip(p, (64, 16, 4, 1))) for p in itertools.permutations(range(4))}
    assert set(np.unique(codes)) == perms
    for code in perms:
        ok, detail = binomial_ok(codes == code, 1 / 24)
        assert ok, (code, detail)


@pytest.mark.parametrize("jitter", [(0.4, 0.4, 0.4, 0.1), (1.5, 0.0, 0.2, 0.5)])
def test_jitter_factors_are_uniform_on_torchvision_ranges(jitter):
    f = augment.sample_jitter_factors(N, jitter, gen(7)).numpy().astype(np.float64)
    bounds = [(max(0, 1 - j), 1 + j) for j in jitter[:3]] + [(-jitter[3], jitter[3])]
    for k, (lo, hi) in enumerate(bounds):
        col = f[:, k]
        assert col.min() >= lo - 1e-6 and col.max() <= hi + 1e-6, (k, col.min(), col.max())
        if hi == lo:
            assert (col == lo).all()
            continue
        mean, var = (lo + hi) / 2, (hi - lo) ** 2 / 12
        assert abs(col.mean() - mean) <= SIGMAS * math.sqrt(var / N), (k, col.mean(), mean)
        var_se = math.sqrt(((hi - lo) ** 4 / 80 - var**2) / N)  # standard error of the sample variance
        assert abs(((col - mean) ** 2).mean() - var) <= SIGMAS * var_se, (k, col.var(), var)
        ok, detail = same_law(col, np.random.default_rng(k).uniform(lo, hi, N))
        assert ok, (k, detail)


def test_blur_is_drawn_above_32_px_at_half_rate_with_uniform_sigma():
    """SimCLR's ImageNet blur: applied with p = 0.5, sigma ~ U[0.1, 2.0] (KS against numpy's
    uniform sampler), drawn independently of the colour draws; none at all at 32 px."""
    for size in (33, 96, 224):
        recipe = SimCLRRecipe(size=size)
        assert recipe.blur_prob == 0.5 and recipe.blur_sigma == (0.1, 2.0)
    p = augment.sample_params(N, 224, 224, SimCLRRecipe(size=224), gen(22))
    assert p.blur.dtype == torch.bool and p.blur.shape == (N,) and p.sigma.dtype == torch.float32
    ok, detail = binomial_ok(p.blur.numpy(), 0.5)
    assert ok, detail
    ok, detail = binomial_ok((p.blur & p.gray).numpy(), 0.5 * 0.2)  # independent of grayscale
    assert ok, detail
    sigma = p.sigma.numpy().astype(np.float64)
    assert 0.1 <= sigma.min() and sigma.max() <= 2.0
    ok, detail = same_law(sigma, np.random.default_rng(0).uniform(0.1, 2.0, N))
    assert ok, detail
    ok, detail = same_law(sigma[: N // 2], sigma[N // 2 :] * 0.5 + 0.05)  # the test can fail: U[0.1, 1.05]
    assert not ok, detail
    # The CIFAR recipe: no blur parameters, and the colour draws consume the stream as before.
    cifar = augment.sample_params(64, 32, 32, SimCLRRecipe(), gen(23))
    assert SimCLRRecipe().blur_prob == 0.0 and cifar.blur is None and cifar.sigma is None
    blurred = augment.sample_params(64, 32, 32, SimCLRRecipe(blur_p=0.5), gen(23))
    for name in ("boxes", "flip", "jitter", "factors", "order", "gray"):
        assert torch.equal(getattr(cifar, name), getattr(blurred, name)), name  # blur draws come last
    assert SimCLRRecipe(size=224, blur_p=0.0).blur_prob == 0.0 and SimCLRRecipe(blur_p=1).blur_prob == 1.0


def test_blur_kernel_is_the_odd_tenth_of_the_side():
    assert [recipes.blur_kernel_size(s) for s in (224, 160, 96, 64, 40)] == [23, 17, 9, 7, 5]
    for size in range(33, 600):
        k = recipes.blur_kernel_size(size)
        assert k % 2 == 1 and abs(k - size / 10) <= 2 and k // 2 < size, size
        assert SimCLRRecipe(size=size).blur_kernel == k


def test_translations_cover_the_padding_uniformly():
    t = augment.sample_translations(N, 4, gen(8)).numpy()
    assert t.min() == 0 and t.max() == 8
    for v in range(9):
        ok, detail = binomial_ok(t[:, 0] == v, 1 / 9)
        assert ok, (v, detail)
        ok, detail = binomial_ok(t[:, 1] == v, 1 / 9)
        assert ok, (v, detail)


def test_sampling_is_a_pure_function_of_the_generator():
    a = augment.sample_params(64, 32, 32, SimCLRRecipe(), gen(9))
    b = augment.sample_params(64, 32, 32, SimCLRRecipe(), gen(9))
    c = augment.sample_params(64, 32, 32, SimCLRRecipe(), gen(10))
    for name in ("boxes", "flip", "jitter", "factors", "order", "gray"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.boxes, c.boxes)


def test_recipe_validation():
    r = SimCLRRecipe(scale=[0.2, 1], jitter=[0.1, 0.1, 0.1, 0.05])
    assert r.scale == (0.2, 1.0) and r.jitter == (0.1, 0.1, 0.1, 0.05)
    for bad in [
        dict(size=0),
        dict(size=32.0),
        dict(scale=(0.5, 0.2)),
        dict(scale=(0.0, 1.0)),
        dict(ratio=(1.0,)),
        dict(flip_p=1.5),
        dict(gray_p=-0.1),
        dict(jitter=(0.4, 0.4, 0.4, 0.6)),
        dict(jitter=(-0.1, 0.4, 0.4, 0.1)),
        dict(jitter="strong"),
        dict(jitter_p=True),
        dict(blur_p=1.2),
        dict(blur_p="half"),
        dict(blur_sigma=(0.0, 2.0)),
        dict(blur_sigma=(2.0, 0.1)),
        dict(blur_sigma=(0.1,)),
    ]:
        with pytest.raises(DataError, match="SimCLRRecipe"):
            SimCLRRecipe(**bad)


# --------------------------------------------------------------------- ops against torchvision's


def sample_images(n=12, height=20, width=24, seed=11):
    """(n, 3, H, W) float in [0, 1] with the cases that stress colour ops: grey, black, white,
    saturated primaries, dark noise, plus random images."""
    g = gen(seed)
    x = torch.rand(n, 3, height, width, generator=g)
    x[0] = x[0, :1]  # grey
    x[1] = 0.0
    x[2] = 1.0
    x[3] = (torch.rand(3, height, width, generator=g) > 0.5).float()  # primaries and secondaries
    x[4] = x[4] * 0.05
    x[5, :, :, : width // 2] = x[5, :1, :, : width // 2]  # half grey
    return x


def _tv():
    pytest.importorskip("torchvision")
    from torchvision.transforms.v2 import functional as TF

    return TF


@pytest.mark.parametrize("size", [16, 32])
def test_resized_crop_and_flip_match_torchvision(size):
    TF = _tv()
    x = sample_images()
    n, _, height, width = x.shape
    boxes = augment.sample_params(n, height, width, SimCLRRecipe(), gen(12)).boxes
    boxes[0] = torch.tensor([0, 0, height, width])  # the whole image
    boxes[1] = torch.tensor([3, 5, 1, 1])  # one pixel
    boxes[2] = torch.tensor([0, 7, height, 2])  # a tall thin strip
    boxes[3] = torch.tensor([height - 4, 0, 4, width])  # a wide one at the bottom
    flip = torch.arange(n) % 3 == 0
    got = augment.resized_crop(x, boxes, size)
    got_flipped = augment.resized_crop(x, boxes, size, flip=flip)
    assert got.shape == (n, 3, size, size)
    for i in range(n):
        want = TF.resized_crop(x[i], *boxes[i].tolist(), [size, size], antialias=False)
        assert (got[i] - want).abs().max() <= 2e-5, i
        want = TF.horizontal_flip(want) if flip[i] else want
        assert (got_flipped[i] - want).abs().max() <= 2e-5, i


def test_hflip_grayscale_normalize_match_torchvision():
    TF = _tv()
    x = sample_images()
    mask = torch.arange(len(x)) % 2 == 1
    flipped, grey = augment.hflip(x, mask), augment.grayscale(x, mask)
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    normed = augment.normalize(x, mean, std)
    assert normed.is_contiguous(memory_format=torch.channels_last)
    for i in range(len(x)):
        assert torch.equal(flipped[i], TF.horizontal_flip(x[i]) if mask[i] else x[i])
        want = TF.rgb_to_grayscale(x[i], num_output_channels=3) if mask[i] else x[i]
        assert (grey[i] - want).abs().max() <= 1e-6
        assert (normed[i] - TF.normalize(x[i], mean, std)).abs().max() <= 1e-5


@pytest.mark.parametrize("op", ["brightness", "contrast", "saturation", "hue"])
def test_colour_ops_match_torchvision(op):
    TF = _tv()
    x = sample_images()
    n = len(x)
    if op == "hue":  # any rotation, including half turns, on the grey, black, white and coloured images
        factor = torch.rand(n, generator=gen(13)) - 0.5
        factor[3:9] = torch.tensor([-0.5, 0.5, 0.0, -0.5, 0.5, 0.25])
    else:  # factors 0 (grey / black), 1 (identity) and 2 (clipping)
        factor = torch.rand(n, generator=gen(13)) * 2
        factor[3:9] = torch.tensor([0.0, 1.0, 2.0, 0.0, 2.0, 1.0])
    ours = getattr(augment, f"adjust_{op}")(x, factor)
    theirs = getattr(TF, f"adjust_{op}")
    for i in range(n):
        want = theirs(x[i], float(factor[i]))
        assert (ours[i] - want).abs().max() <= 1e-5, (i, float(factor[i]))


def test_reflect_crop_matches_torchvision_pad_crop_flip():
    TF = _tv()
    images = (sample_images() * 255).to(torch.uint8)
    n, _, height, width = images.shape
    offsets = augment.sample_translations(n, 4, gen(14))
    offsets[0], offsets[1] = torch.tensor([0, 0]), torch.tensor([8, 8])
    flip = torch.arange(n) % 2 == 0
    got = augment.reflect_crop(images, offsets, 4, flip)
    for i in range(n):
        want = TF.crop(TF.pad(images[i], [4], padding_mode="reflect"), *offsets[i].tolist(), height, width)
        assert torch.equal(got[i], TF.horizontal_flip(want) if flip[i] else want), i


def reference_blur(image, sigma, kernel_size, mode="reflect"):
    """Gaussian blur of one (C, H, W) image in float64 numpy, written from the definition: weights
    exp(-t^2 / (2 sigma^2)) at t = -r..r normalised to sum 1, padding by numpy's `mode` ("reflect":
    mirrored about the edge pixel, which is not repeated: torchvision's), rows then columns."""
    r = kernel_size // 2
    t = np.arange(-r, r + 1, dtype=np.float64)
    w = np.exp(-(t**2) / (2 * sigma**2))
    w /= w.sum()
    x = np.pad(np.asarray(image, np.float64), ((0, 0), (r, r), (r, r)), mode=mode)
    h, wd = image.shape[1:]
    x = sum(w[j] * x[:, :, j : j + wd] for j in range(kernel_size))  # along width
    return sum(w[j] * x[:, j : j + h, :] for j in range(kernel_size))  # along height


@pytest.mark.parametrize("kernel_size", [5, 9, 23])
def test_gaussian_blur_matches_float64_reference_and_torchvision(kernel_size):
    x = sample_images(n=8, height=30, width=26)
    x[6] = 0.0
    x[6, :, 1, 1] = 1.0  # one pixel next to the corner: each padding rule mirrors it differently
    sigma = torch.tensor([0.1, 0.5, 1.0, 2.0, 1.3, 0.7, 2.0, 0.25])
    mask = torch.tensor([True] * 7 + [False])
    got = augment.gaussian_blur(x, sigma, kernel_size, mask)
    assert got.shape == x.shape and torch.equal(got[7], x[7]), "mask False: unchanged, exactly"
    for i in range(7):
        want = reference_blur(x[i].numpy(), float(sigma[i]), kernel_size)
        assert np.abs(got[i].double().numpy() - want).max() <= 1e-6, i
    for other in (
        "constant",
        "edge",
        "symmetric",
    ):  # zero, replicate, edge-repeating mirror: all differ at the corner
        assert (
            np.abs(got[6].double().numpy() - reference_blur(x[6].numpy(), 2.0, kernel_size, other)).max()
            > 1e-3
        )
    TF = _tv()
    for i in range(7):
        want = TF.gaussian_blur(x[i], [kernel_size, kernel_size], [float(sigma[i])] * 2)
        assert (got[i] - want).abs().max() <= 1e-5, i
    assert torch.equal(augment.gaussian_blur(x, sigma, 1), x)  # a 1-tap kernel is the identity
    with pytest.raises(DataError, match="blur"):
        augment.gaussian_blur(x[:, :, :4, :4], sigma, 9)


def _torchvision_view(TF, image, p, i, size, mean, std):
    """One SimCLR view the torchvision way, with sample i's parameters."""
    x = TF.to_dtype(image, torch.float32, scale=True)
    x = TF.resized_crop(x, *p.boxes[i].tolist(), [size, size], antialias=False)
    x = TF.horizontal_flip(x) if p.flip[i] else x
    if p.jitter[i]:
        ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
        for k in p.order[i].tolist():
            x = ops[k](x, float(p.factors[i, k]))
    x = TF.rgb_to_grayscale(x, num_output_channels=3) if p.gray[i] else x
    if p.blur is not None and p.blur[i]:
        k = recipes.blur_kernel_size(size)
        x = TF.gaussian_blur(x, [k, k], [float(p.sigma[i])] * 2)
    return TF.normalize(x, mean, std)


def test_color_jitter_applies_ops_in_each_samples_order():
    TF = _tv()
    x = sample_images(n=64)
    p = augment.sample_color_params(64, SimCLRRecipe(jitter=(0.8, 0.8, 0.8, 0.5)), gen(15))
    p.order[:24] = torch.tensor(list(itertools.permutations(range(4))))  # every ordering, jittered
    p.jitter[:24] = True
    ours = augment.color_jitter(x, p)
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    for i in range(64):
        if not p.jitter[i]:
            assert torch.equal(ours[i], x[i]), "no jitter must leave the image untouched"
            continue
        want = x[i]
        for k in p.order[i].tolist():
            want = ops[k](want, float(p.factors[i, k]))
        assert (ours[i] - want).abs().max() <= 2e-5, (i, p.order[i].tolist())
    assert not p.jitter.all()


@pytest.mark.parametrize("size", [24, 40], ids=["cifar-no-blur", "40px-blur"])
def test_simclr_view_equals_torchvision_chain_per_sample(size):
    TF = _tv()
    images = (sample_images(n=48, height=size + 4, width=size + 6) * 255).round().to(torch.uint8)
    recipe, mean, std = SimCLRRecipe(size=size), (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    view = augment.simclr_view(images, recipe, gen(16), mean, std)
    p = augment.sample_params(48, size + 4, size + 6, recipe, gen(16))  # the same draws
    assert (p.blur is not None) == (size > 32) and (size < 32 or 0 < p.blur.sum() < 48)
    assert view.shape == (48, 3, size, size) and view.dtype == torch.float32
    assert view.is_contiguous(memory_format=torch.channels_last)
    for i in range(48):
        want = _torchvision_view(TF, images[i], p, i, size, mean, std)
        assert (view[i] - want).abs().max() <= 1e-4 / min(std), i  # 1e-4 in [0, 1] pixel units


def test_color_and_normalize():
    x = sample_images(n=400)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    plain = augment.color_and_normalize(x, SimCLRRecipe(jitter_p=0.0, gray_p=0.0), gen(17), mean, std)
    assert plain.is_contiguous(memory_format=torch.channels_last) and plain.dtype == torch.float32
    torch.testing.assert_close(plain, (x - 0.5) / 0.25, atol=1e-6, rtol=0)
    grey = augment.color_and_normalize(x, SimCLRRecipe(jitter_p=0.0, gray_p=1.0), gen(17), mean, std)
    assert (grey.amax(1) - grey.amin(1)).max() <= 1e-5, "gray_p=1: all three channels equal"
    # Default recipe: unchanged exactly when neither jitter nor grayscale hit, P = 0.2 * 0.8 = 0.16.
    out = augment.color_and_normalize(x[6:], SimCLRRecipe(), gen(18), mean, std)
    untouched = (out == plain[6:]).flatten(1).all(1).numpy()
    ok, detail = binomial_ok(untouched, 0.2 * 0.8)
    assert ok, detail


def test_crop_flip_view_and_eval_view():
    images = (sample_images() * 255).to(torch.uint8)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    want = (images.float() / 255 - 0.5) / 0.25
    ev = augment.eval_view(images, mean, std)
    assert ev.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(ev, want, atol=1e-6, rtol=0)
    view = augment.crop_flip_view(images, gen(19), mean, std)
    assert view.shape == images.shape and view.is_contiguous(memory_format=torch.channels_last)
    g = gen(19)  # replay the draws: offsets, then flips
    offsets, flip = augment.sample_translations(len(images), 4, g), augment.sample_mask(len(images), 0.5, g)
    replay = augment.reflect_crop(images, offsets, 4, flip)
    torch.testing.assert_close(view, (replay.float() / 255 - 0.5) / 0.25, atol=1e-6, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; the CPU path is tested above")
def test_cuda_matches_cpu_and_never_syncs():
    x = sample_images(n=256, height=32, width=32)
    recipe, mean, std = SimCLRRecipe(), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    p = augment.sample_params(256, 32, 32, recipe, gen(20))
    moved = augment.AugParams(**{k: v.cuda() for k, v in vars(p).items()})
    cpu = augment.apply_params(x, p, recipe, mean, std)
    cuda = augment.apply_params(x.cuda(), moved, recipe, mean, std)
    assert (cuda.cpu() - cpu).abs().max() <= 1e-4
    images = (x.cuda() * 255).to(torch.uint8)
    g = gen(21, "cuda")
    augment.simclr_view(images, recipe, g, mean, std)  # first call copies mean/std to the device
    torch.cuda.set_sync_debug_mode("error")
    try:
        view = augment.simclr_view(images, recipe, g, mean, std)
        view = augment.color_and_normalize(x.cuda(), recipe, g, mean, std)
        augment.crop_flip_view(images, g, mean, std)
        blurred = augment.simclr_view(images, SimCLRRecipe(size=64), g, mean, std)  # with the blur
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert view.device.type == "cuda" and view.is_contiguous(memory_format=torch.channels_last)
    assert blurred.shape == (256, 3, 64, 64) and blurred.device.type == "cuda"
    sigma = torch.rand(256, generator=gen(24)) * 1.9 + 0.1
    torch.testing.assert_close(
        augment.gaussian_blur(x.cuda(), sigma.cuda(), 7).cpu(),
        augment.gaussian_blur(x, sigma, 7),
        atol=1e-5,
        rtol=0,
    )
