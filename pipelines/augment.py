"""Batched SimCLR augmentation in pure torch, on any device, with explicit per-sample parameters.

    recipe = augment.SimCLRRecipe()
    gen = torch.Generator(device="cuda"); gen.manual_seed(0)
    view = augment.simclr_view(images, recipe, gen, mean, std)  # uint8 (N,3,H,W) -> float32 (N,3,32,32)
    params = augment.sample_params(n, h, w, recipe, gen)           # the same, in two explicit steps:
    view = augment.apply_params(images, params, recipe, mean, std)

SimCLR's CIFAR augmentation (Chen et al. 2020, appendix B.9) as torchvision writes it:
RandomResizedCrop(32) -> RandomHorizontalFlip -> RandomApply(ColorJitter(0.4, 0.4, 0.4, 0.1), 0.8)
-> RandomGrayscale(0.2) -> Normalize; above 32 px also RandomApply(GaussianBlur, 0.5) before
Normalize (the ImageNet recipe, see recipes.py). Here every random choice is a per-sample tensor drawn from the
caller's `torch.Generator` (on the data's device), and each op, given those parameters, computes what
torchvision's tensor kernel (`transforms.v2.functional`) computes for that one image; the tests check
it op by op. A batch is processed with no Python loop over samples and no host-device sync:
data-dependent choices are `torch.where` selections, never boolean indexing or `.item()`.

Choices worth knowing:
- resize is bilinear without antialiasing, i.e. `F.resized_crop(..., antialias=False)`. On CIFAR a crop
  is never larger than the 32x32 output, where antialiasing changes nothing; only downscaling larger
  images differs from torchvision's default antialias=True.
- grayscale uses torchvision's rounding of the ITU-R 601-2 luma weights (0.2989, 0.587, 0.114).
- the views stay float32 in [0, 1] between ops (no 8-bit rounding as a PIL/uint8 chain would do).
"""

import functools
import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from .errors import DataError
from .recipes import CROP_TRIES, LUMA, PAD, SimCLRRecipe  # noqa: F401 (SimCLRRecipe: re-exported)

JITTER_OPS = ("brightness", "contrast", "saturation", "hue")  # the op indices used by AugParams.order


@dataclass
class AugParams:
    """Per-sample parameters of a batch of N views (all tensors on the generator's device)."""

    jitter: torch.Tensor  # (N,) bool: colour jitter applied
    factors: torch.Tensor  # (N, 4) float32: brightness, contrast, saturation, hue factors
    order: torch.Tensor  # (N, 4) int64: order[:, k] = index into JITTER_OPS of the k-th jitter op
    gray: torch.Tensor  # (N,) bool: converted to grayscale
    boxes: Optional[torch.Tensor] = None  # (N, 4) int64: crop top, left, height, width (None: no crop)
    flip: Optional[torch.Tensor] = None  # (N,) bool: mirrored left-right (None: no flip)
    blur: Optional[torch.Tensor] = None  # (N,) bool: Gaussian-blurred (None: the recipe has no blur)
    sigma: Optional[torch.Tensor] = None  # (N,) float32: the blur's standard deviation, pixels


# ---------------------------------------------------------------------------------------- samplers


def _rand(shape, generator):
    return torch.rand(shape, generator=generator, device=generator.device)


def _uniform(shape, lo, hi, generator):
    """U[lo, hi) as torchvision's `torch.empty(1).uniform_(lo, hi)` draws it: lo + (hi - lo) * u."""
    return _rand(shape, generator).mul_(hi - lo).add_(lo)


def _randint_below(high, generator):
    """One integer in [0, high) per element of the float tensor `high` (>= 1): floor(u * high)."""
    u = _rand(high.shape, generator)
    return torch.minimum((u * high).floor_(), high - 1)  # u * high may round up to high in float32


def fallback_box(height, width, ratio):
    """torchvision's central crop after 10 failed tries: (top, left, h, w) as Python ints."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def sample_crop_boxes(n, height, width, scale, ratio, generator) -> torch.Tensor:
    """RandomResizedCrop boxes, (n, 4) int64 rows (top, left, h, w), torchvision's algorithm vectorised.

    Per sample: CROP_TRIES candidates with area ~ U(scale) * H * W and log aspect ~ U(log ratio),
    w = round(sqrt(area * aspect)), h = round(sqrt(area / aspect)); the first candidate that fits the
    image wins and is placed uniformly; when none fits, the central `fallback_box`.
    """
    area = _uniform((n, CROP_TRIES), scale[0], scale[1], generator).mul_(height * width)
    aspect = _uniform((n, CROP_TRIES), math.log(ratio[0]), math.log(ratio[1]), generator).exp_()
    w = torch.sqrt(area * aspect).round_()  # round half to even, like Python's round
    h = torch.sqrt(area / aspect).round_()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    tries = torch.arange(CROP_TRIES, device=fits.device)
    first = torch.where(fits, tries, CROP_TRIES).amin(1, keepdim=True)  # CROP_TRIES when none fits
    found = first.squeeze(1) < CROP_TRIES
    first = first.clamp_max_(CROP_TRIES - 1)
    f_top, f_left, f_h, f_w = fallback_box(height, width, ratio)
    h = torch.where(found, h.gather(1, first).squeeze(1), float(f_h))
    w = torch.where(found, w.gather(1, first).squeeze(1), float(f_w))
    top = torch.where(found, _randint_below(height - h + 1, generator), float(f_top))
    left = torch.where(found, _randint_below(width - w + 1, generator), float(f_left))
    return torch.stack([top, left, h, w], 1).long()


def sample_mask(n, p, generator) -> torch.Tensor:
    """(n,) bool, each True with probability p."""
    return _rand(n, generator) < p


def sample_jitter_factors(n, jitter, generator) -> torch.Tensor:
    """(n, 4) float32: brightness, contrast, saturation ~ U[max(0, 1 - j), 1 + j], hue ~ U[-j, j]."""
    b, c, s, hue = jitter
    bounds = [(max(0.0, 1 - b), 1 + b), (max(0.0, 1 - c), 1 + c), (max(0.0, 1 - s), 1 + s), (-hue, hue)]
    u = _rand((n, 4), generator)
    return torch.stack([u[:, k] * (hi - lo) + lo for k, (lo, hi) in enumerate(bounds)], 1)


def sample_orders(n, generator) -> torch.Tensor:
    """(n, 4) int64: a uniformly random permutation of the 4 jitter ops per sample (argsort of noise)."""
    return _rand((n, 4), generator).argsort(1)


def sample_color_params(n, recipe, generator) -> AugParams:
    """Colour jitter (apply mask, factors, order), grayscale and, when the recipe blurs, blur (mask,
    sigma ~ U[blur_sigma]) draws for n views; no crop, no flip. Without blur nothing more is drawn,
    so the CIFAR recipe's random stream is unchanged."""
    jitter = sample_mask(n, recipe.jitter_p, generator)
    factors = sample_jitter_factors(n, recipe.jitter, generator)
    order = sample_orders(n, generator)
    gray = sample_mask(n, recipe.gray_p, generator)
    params = AugParams(jitter=jitter, factors=factors, order=order, gray=gray)
    if recipe.blur_prob > 0:
        params.blur = sample_mask(n, recipe.blur_prob, generator)
        params.sigma = _uniform(n, *recipe.blur_sigma, generator)
    return params


def sample_params(n, height, width, recipe, generator) -> AugParams:
    """All SimCLR parameters for n views of (height, width) images: crop boxes, flips, colour."""
    boxes = sample_crop_boxes(n, height, width, recipe.scale, recipe.ratio, generator)
    flip = sample_mask(n, recipe.flip_p, generator)
    params = sample_color_params(n, recipe, generator)
    params.boxes, params.flip = boxes, flip
    return params


def sample_translations(n, padding, generator) -> torch.Tensor:
    """(n, 2) int64 offsets (dy, dx), each uniform in [0, 2 * padding]: the top-left corner of a
    crop of the original size from the padded image (torchvision's RandomCrop(size, padding))."""
    return _randint_below(torch.full((n, 2), 2.0 * padding + 1, device=generator.device), generator).long()


# ---------------------------------------------------------------------------------------- geometry


def _per_sample(values):
    """(N,) -> (N, 1, 1, 1), to broadcast a per-sample value over an (N, C, H, W) batch."""
    return values.view(-1, 1, 1, 1)


def resized_crop(x, boxes, size, flip=None) -> torch.Tensor:
    """Crop boxes (N, 4) = (top, left, h, w) out of x (N, C, H, W) float and resize each to size x size.

    Equals torchvision's `F.resized_crop(img, top, left, h, w, [size, size], antialias=False)` per
    sample: bilinear, align_corners=False, source coordinates clamped to the crop's own edge pixels
    (as `F.interpolate` does), done for the whole batch by one `grid_sample` with per-sample grids.
    flip (N,) bool: mirror those outputs left-right (reversing the grid's columns costs nothing).
    Returns (N, C, size, size).
    """
    n, _, height, width = x.shape
    top, left, h, w = boxes.to(torch.float32).unbind(1)
    centres = torch.arange(size, device=x.device, dtype=torch.float32).add_(0.5)

    def axis(start, length, full):  # (N, size) grid_sample coordinates of one axis
        src = (centres * (length[:, None] / size) - 0.5).clamp_min_(0)
        src = torch.minimum(src, length[:, None] - 1) + start[:, None]  # pixel index in the image
        return (2 * src + 1) / full - 1  # grid_sample's normalised coordinate (align_corners=False)

    gx, gy = axis(left, w, width), axis(top, h, height)
    if flip is not None:
        gx = torch.where(flip[:, None], gx.flip(1), gx)
    grid = torch.stack([gx[:, None, :].expand(n, size, size), gy[:, :, None].expand(n, size, size)], -1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def hflip(x, mask) -> torch.Tensor:
    """Mirror left-right the images of x (N, C, H, W) where mask (N,) bool is set."""
    return torch.where(_per_sample(mask), x.flip(-1), x)


def _reflect(index, n):
    """Reflect indices in [-(n - 1), 2n - 2] into [0, n - 1] without repeating the edge (as torch's pad)."""
    index = index.abs()
    return torch.where(index > n - 1, 2 * (n - 1) - index, index)


def reflect_crop(x, offsets, padding=PAD, flip=None) -> torch.Tensor:
    """Translate x (N, C, H, W) of any dtype: reflect-pad by `padding`, crop H x W at offsets (N, 2) =
    (dy, dx) in [0, 2 * padding], then mirror where flip (N,) bool is set. Equals torchvision's
    `F.pad(img, [padding], padding_mode="reflect")` -> `F.crop(img, dy, dx, H, W)` -> `F.hflip`."""
    n, c, height, width = x.shape
    if not padding < min(height, width):
        raise DataError(
            f"reflect padding {padding} needs images larger than {padding} pixels, got {height}x{width}"
        )
    rows = _reflect(torch.arange(height, device=x.device) + offsets[:, :1] - padding, height)  # (N, H)
    cols = _reflect(torch.arange(width, device=x.device) + offsets[:, 1:] - padding, width)  # (N, W)
    if flip is not None:
        cols = torch.where(flip[:, None], cols.flip(1), cols)
    x = x.gather(2, rows[:, None, :, None].expand(n, c, height, width))
    return x.gather(3, cols[:, None, None, :].expand(n, c, height, width))


# ------------------------------------------------------------------------------------------ colour


def luma(x) -> torch.Tensor:
    """Grey level of x (N, 3, H, W) float: (N, 1, H, W), torchvision's weights."""
    r, g, b = x.unbind(1)
    return r.mul(LUMA[0]).add_(g, alpha=LUMA[1]).add_(b, alpha=LUMA[2]).unsqueeze(1)


def _blend(x, other, factor):
    """x * f + other * (1 - f), clamped to [0, 1]: torchvision's `_blend` with per-sample f (N, 1, 1, 1)."""
    return x.mul(factor).add_(other * (1 - factor)).clamp_(0, 1)


def adjust_brightness(x, factor) -> torch.Tensor:
    """x (N, 3, H, W) in [0, 1] times factor (N,), clamped."""
    return x.mul(_per_sample(factor)).clamp_(0, 1)


def adjust_contrast(x, factor) -> torch.Tensor:
    """Blend x (N, 3, H, W) with its own mean grey level by factor (N,)."""
    return _blend(x, luma(x).mean((1, 2, 3), keepdim=True), _per_sample(factor))


def adjust_saturation(x, factor) -> torch.Tensor:
    """Blend x (N, 3, H, W) with its grayscale version by factor (N,)."""
    return _blend(x, luma(x), _per_sample(factor))


def adjust_hue(x, factor) -> torch.Tensor:
    """Rotate the hue of x (N, 3, H, W) in [0, 1] by factor (N,) in [-0.5, 0.5] turns of the HSV circle.

    RGB -> HSV exactly as torchvision's `_rgb_to_hsv`; back with the closed form
    c_n = v - v * s * clamp(min(k, 4 - k), 0, 1), k = (n + 6h) mod 6, n = 5, 3, 1 for R, G, B,
    which is torchvision's six-sector table without its per-pixel gather. In-place where possible:
    on the CPU every fresh full-size temporary costs page faults.
    """
    r, g, b = x.unbind(1)
    minc, maxc = torch.aminmax(x, dim=1)
    same = maxc == minc  # grey pixels: any hue works; avoid 0 / 0
    span = maxc - minc
    s = span / torch.where(same, 1.0, maxc)
    span.masked_fill_(same, 1.0)
    rc, gc, bc = (maxc - r).div_(span), (maxc - g).div_(span), (maxc - b).div_(span)
    is_r = maxc == r
    is_g = (maxc == g).logical_and_(~is_r)
    is_b = is_r.logical_or(is_g).logical_not_()
    h = rc.add(2.0).sub_(bc).mul_(is_g)  # the same sequence of float operations as torchvision
    h = h.add_(bc.sub_(gc).mul_(is_r)).add_(gc.add_(4.0).sub_(rc).mul_(is_b))
    h6 = h.mul_(1.0 / 6.0).add_(1.0).fmod_(1.0).add_(factor.view(-1, 1, 1)).remainder_(1.0).mul_(6.0)
    vs = s.mul_(maxc)
    out = torch.empty_like(x)
    for c, n in enumerate((5.0, 3.0, 1.0)):
        k = (h6 + n).remainder_(6.0)
        k = torch.minimum(k, 4.0 - k).clamp_(0, 1).mul_(vs)
        torch.sub(maxc, k, out=out[:, c])
    return out


def grayscale(x, mask) -> torch.Tensor:
    """Replace the images of x (N, 3, H, W) where mask (N,) bool is set by their grey level (3 channels)."""
    return torch.where(_per_sample(mask), luma(x).expand_as(x), x)


def _blend_op(x, op, factors, on):
    """Brightness (op 0), contrast (1) or saturation (2) per sample as one blend(x, target, f) with
    target 0, the mean grey level or the grey image; op 3 (or jitter off) gives f = 1: x unchanged."""
    brightness, contrast, saturation, _ = factors.unbind(1)
    f = torch.where(
        op == 0, brightness, torch.where(op == 1, contrast, torch.where(op == 2, saturation, 1.0))
    )
    grey = luma(x)
    target = torch.where(
        _per_sample(op == 2), grey, torch.where(_per_sample(op == 1), grey.mean((1, 2, 3), keepdim=True), 0.0)
    )
    return _blend(x, target, _per_sample(torch.where(on, f, 1.0)))


def color_jitter(x, params: AugParams) -> torch.Tensor:
    """torchvision's ColorJitter on x (N, 3, H, W) in [0, 1] with per-sample factors and op order,
    where params.jitter is set (elsewhere x is returned unchanged, exactly).

    Every sample's order is (blend ops before hue) + hue + (blend ops after hue), so the batch runs
    three blend stages, one hue stage, three blend stages; a sample whose order has nothing at a
    stage gets the identity there. Hue, the costly op, is computed once instead of once per position.
    """
    order, on = params.order, params.jitter
    hue_at = (order == 3).long().mul_(torch.arange(4, device=order.device)).sum(1, keepdim=True)  # (N, 1)
    slots = torch.arange(3, device=order.device)[None, :]
    blends = order.gather(1, slots + (slots >= hue_at).long())  # (N, 3): the order without hue
    none = torch.full_like(blends[:, 0], 3)
    for j in range(3):
        x = _blend_op(x, torch.where(hue_at[:, 0] > j, blends[:, j], none), params.factors, on)
    x = torch.where(_per_sample(on), adjust_hue(x, params.factors[:, 3]), x)
    for j in range(3):
        x = _blend_op(x, torch.where(hue_at[:, 0] <= j, blends[:, j], none), params.factors, on)
    return x


# -------------------------------------------------------------------------------------------- blur


def gaussian_kernels(sigma, kernel_size) -> torch.Tensor:
    """(N, K) normalised 1-D Gaussian kernels, one per sigma (N,), at the offsets -(K-1)/2 .. (K-1)/2:
    torchvision's `_get_gaussian_kernel1d`."""
    half = (kernel_size - 1) * 0.5
    offsets = torch.linspace(-half, half, kernel_size, device=sigma.device)
    pdf = torch.exp(-0.5 * (offsets / sigma[:, None]) ** 2)
    return pdf / pdf.sum(1, keepdim=True)


def gaussian_blur(x, sigma, kernel_size, mask=None) -> torch.Tensor:
    """Blur x (N, C, H, W) float with an isotropic Gaussian of per-sample sigma (N,) on a
    kernel_size x kernel_size (odd) support, reflect padding (the edge pixel is not repeated), as
    torchvision's `gaussian_blur`; where mask (N,) bool is False the image is returned unchanged.
    Separable: a horizontal then a vertical pass, each one grouped conv over all N * C planes."""
    n, c, height, width = x.shape
    radius = kernel_size // 2
    if not radius < min(height, width):
        raise DataError(
            f"a {kernel_size}x{kernel_size} blur needs images larger than {radius} pixels, got {height}x{width}"
        )
    k = gaussian_kernels(sigma.to(torch.float32), kernel_size).repeat_interleave(c, 0)  # (N * C, K)
    y = F.pad(x.reshape(1, n * c, height, width), (radius,) * 4, mode="reflect")
    y = F.conv2d(y, k.view(n * c, 1, 1, kernel_size).to(y.dtype), groups=n * c)
    y = F.conv2d(y, k.view(n * c, 1, kernel_size, 1).to(y.dtype), groups=n * c).view(n, c, height, width)
    return y if mask is None else torch.where(_per_sample(mask), y, x)


@functools.lru_cache(maxsize=32)
def _channel_constants(mean, std, device):
    """(1, 3, 1, 1) mean and std tensors, copied to the device once per process (not per batch)."""
    as_tensor = lambda v: torch.tensor(v, dtype=torch.float32, device=device).view(1, -1, 1, 1)  # noqa: E731
    return as_tensor(mean), as_tensor(std)


def normalize(x, mean, std) -> torch.Tensor:
    """(x - mean) / std per channel of x (N, 3, H, W) float; mean, std: 3 floats. Returns channels_last."""
    m, s = _channel_constants(tuple(float(v) for v in mean), tuple(float(v) for v in std), x.device)
    out = torch.empty_like(x, dtype=torch.float32, memory_format=torch.channels_last)
    return torch.sub(x, m, out=out).div_(s)  # written straight into the channels_last layout


# -------------------------------------------------------------------------------------- full views


def to_unit(images) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float32 in [0, 1]; float input is taken to be in [0, 1] already."""
    return images.float().div_(255) if images.dtype == torch.uint8 else images.float()


def apply_color(x, params: AugParams, recipe) -> torch.Tensor:
    """Colour jitter, grayscale, then Gaussian blur (the recipe's kernel, params.sigma) on x
    (N, 3, H, W) float in [0, 1]. Ops whose probability in `recipe` is 0 are skipped (a
    config-level choice: no data is inspected)."""
    if recipe.jitter_p > 0 and any(recipe.jitter):
        x = color_jitter(x, params)
    if recipe.gray_p > 0:
        x = grayscale(x, params.gray)
    if recipe.blur_prob > 0:
        x = gaussian_blur(x, params.sigma, recipe.blur_kernel, params.blur)
    return x


def apply_params(images, params: AugParams, recipe, mean, std) -> torch.Tensor:
    """One SimCLR view of images (N, 3, H, W) uint8 (or float in [0, 1]) given its parameters:
    crop + flip -> colour jitter -> grayscale -> blur (above 32 px) -> normalise. Returns float32 (N, 3, size, size), channels_last."""
    x = resized_crop(images.float(), params.boxes, recipe.size, flip=params.flip)
    if images.dtype == torch.uint8:
        x = x.div_(255)
    return normalize(apply_color(x, params, recipe), mean, std)


def simclr_view(images, recipe, generator, mean, std) -> torch.Tensor:
    """One random SimCLR view per image of images (N, 3, H, W) uint8 on the generator's device.
    Returns float32 (N, 3, recipe.size, recipe.size), channels_last, normalised with mean/std."""
    n, _, height, width = images.shape
    return apply_params(images, sample_params(n, height, width, recipe, generator), recipe, mean, std)


def color_and_normalize(x, recipe, generator, mean, std) -> torch.Tensor:
    """Colour part of a SimCLR view for x (N, 3, H, W) float32 in [0, 1], already cropped and flipped:
    colour jitter (probability recipe.jitter_p, random op order per sample) -> grayscale -> blur
    (when the recipe blurs; its kernel is sized for recipe.size views) -> normalise.
    Returns float32 (N, 3, H, W), channels_last."""
    params = sample_color_params(x.shape[0], recipe, generator)
    return normalize(apply_color(x.float(), params, recipe), mean, std)


def crop_flip_view(images, generator, mean, std, padding=PAD, flip_p=0.5) -> torch.Tensor:
    """The supervised CIFAR recipe: reflect-pad `padding`, random crop of the original size, random
    flip, normalise. images (N, 3, H, W) uint8 -> float32 (N, 3, H, W), channels_last."""
    offsets = sample_translations(images.shape[0], padding, generator)
    flip = sample_mask(images.shape[0], flip_p, generator)
    return normalize(to_unit(reflect_crop(images, offsets, padding, flip)), mean, std)


def eval_view(images, mean, std) -> torch.Tensor:
    """No augmentation: images (N, 3, H, W) uint8 -> float32 normalised, channels_last."""
    return normalize(to_unit(images), mean, std)


def cropped_view(images, spec, generator, mean, std, colour=True):
    """The rest of a view the loader already random-resized-cropped to spec.size: images uint8
    (N, 3, S, S) -> flip (p = spec.flip_p) -> with colour: SimCLR's colour ops
    (color_and_normalize), else normalise only (the supervised recipe) -> float32,
    channels_last. Parameters drawn from `generator` on the device."""
    x = hflip(to_unit(images), sample_mask(images.shape[0], spec.flip_p, generator))
    return color_and_normalize(x, spec, generator, mean, std) if colour else normalize(x, mean, std)
