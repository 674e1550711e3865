"""The augmentation recipes every pipeline draws from, their constants, and the seeds they use.

    from pipelines import recipes
    recipes.SimCLRRecipe()                      # SimCLR's CIFAR parameters (augment.SimCLRRecipe is this)
    recipes.SimCLRRecipe(size=224).blur_prob    # 0.5: above 32 px the ImageNet recipe's blur is on
    recipes.name("dali", "simclr")              # "simclr/torch", what a run writes into config.json
    recipes.derive_seed(seed, epoch, rank)      # one seed per (seed, epoch, rank), never aliasing

SimCLR's CIFAR recipe (Chen et al. 2020, appendix B.9) as torchvision writes it:
RandomResizedCrop(size, scale, ratio, bilinear) -> RandomHorizontalFlip(flip_p) ->
RandomApply(ColorJitter(brightness, contrast, saturation, hue), jitter_p) -> RandomGrayscale(gray_p)
-> Normalize. ColorJitter applies its four ops in a random order per sample, contrast blends with the
image's mean grey and hue rotates in HSV; grayscale views are exactly grey (R = G = B).
Above 32 px the views follow SimCLR's ImageNet recipe (appendix A): after grayscale,
RandomApply(GaussianBlur(kernel, sigma ~ U[0.1, 2.0]), p = 0.5), the kernel 10% of the side made odd
(`blur_kernel_size`: 23 at 224 px, 9 at 96 px), reflect padding at the borders as torchvision's
GaussianBlur (SimCLR's TensorFlow code pads with zeros); at 32 px, the CIFAR recipe, there is no blur.
All four pipelines draw views from this one distribution; what still differs between them is how
the same ops are computed (PIL with 8-bit rounding after each op, or float32 throughout), recorded
per pipeline in VARIANTS and checked statistically by
tests/pipelines/test_recipe_parity.py.
"""

import math
from dataclasses import dataclass

import numpy as np

from .errors import DataError

RECIPES = ("simclr", "supervised", "eval")  # two SimCLR views / crop+flip / no augmentation
PAD = 4  # the supervised recipe's reflect padding, pixels
CROP_TRIES = 10  # torchvision's RandomResizedCrop tries 10 boxes before its central fallback
LUMA = (0.2989, 0.587, 0.114)  # torchvision's rounding of the ITU-R 601-2 luma weights
BLUR_P = 0.5  # SimCLR's ImageNet recipe: probability of the Gaussian blur
BLUR_SIGMA = (0.1, 2.0)  # its standard deviation, drawn uniformly per view, pixels
BLUR_ABOVE = 32  # blur is part of the recipe for output sides above this (CIFAR's 32 px: none)
CENTRE_CROP = 0.875  # eval recipe: resize the shorter side to S / 0.875, centre S x S crop (224 of 256)
# A streamed (converted) dataset is shuffled within windows of this many samples, on DALI (its
# reader's buffer) and FFCV (ffcv_order.windowed): the encoded samples held stay the same whatever
# the dataset's size.
STREAM_WINDOW = 4096

# pipeline -> how it computes the SimCLR recipe (same distribution, different arithmetic):
VARIANTS = {
    "torchvision": "pil",  # torchvision on PIL images: 8-bit rounding after the crop and after each colour op
    "gpu": "torch",  # augment's batched torch ops, float32 from the crop to the normalisation
    "ffcv": "torch",  # FFCV decodes; the same batched torch ops crop, flip and colour on the device
    "dali": "torch",  # DALI decodes; the same batched torch ops crop, flip and colour on the device
}


def name(pipeline, recipe) -> str:
    """The recorded name of `recipe` as `pipeline` computes it, e.g. "simclr/pil"; the
    supervised and eval recipes are exact on every pipeline and keep their plain names."""
    if recipe not in RECIPES:
        raise DataError(f"unknown recipe {recipe!r}; choose from {', '.join(RECIPES)}")
    if pipeline not in VARIANTS:
        raise DataError(f"unknown pipeline {pipeline!r}; choose from {', '.join(VARIANTS)}")
    return f"{recipe}/{VARIANTS[pipeline]}" if recipe == "simclr" else recipe


def blur_kernel_size(size: int) -> int:
    """Side of the Gaussian blur kernel for size x size views: 10% of the side, made odd the way
    SimCLR's code does (radius = (size // 10) // 2, kernel = 2 * radius + 1): 23 at 224, 9 at 96."""
    return 2 * (size // 10 // 2) + 1


def derive_seed(*parts, bits=63) -> int:
    """A well-mixed `bits`-bit seed (bits <= 64) from integers, so (seed, epoch, rank) tuples never
    alias as seed + epoch would. DALI wants seeds below 2**31: it passes bits=31."""
    if not 1 <= bits <= 64:
        raise DataError(f"derive_seed: bits must be in [1, 64], got {bits}")
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0]
    return int(state) >> (64 - bits)


@dataclass
class SimCLRRecipe:
    size: int = 32  # output side, pixels
    scale: tuple = (0.08, 1.0)  # crop area as a fraction of the image area
    ratio: tuple = (3 / 4, 4 / 3)  # crop aspect ratio (width / height), sampled log-uniformly
    flip_p: float = 0.5
    jitter: tuple = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue strengths
    jitter_p: float = 0.8  # probability that colour jitter is applied at all
    gray_p: float = 0.2
    blur_p: float | None = None  # Gaussian blur probability; None: BLUR_P above BLUR_ABOVE px, else 0
    blur_sigma: tuple = BLUR_SIGMA  # blur standard deviation range, pixels, sampled uniformly

    @property
    def blur_prob(self) -> float:
        """The blur probability in force: blur_p when given, else the size's default."""
        if self.blur_p is not None:
            return self.blur_p
        return BLUR_P if self.size > BLUR_ABOVE else 0.0

    @property
    def blur_kernel(self) -> int:
        return blur_kernel_size(self.size)

    def __post_init__(self):
        def floats(name, k):
            value = getattr(self, name)
            try:
                value = tuple(float(v) for v in value)
            except (TypeError, ValueError):
                raise DataError(f"SimCLRRecipe.{name} must be {k} numbers, got {value!r}") from None
            if len(value) != k or not all(math.isfinite(v) for v in value):
                raise DataError(f"SimCLRRecipe.{name} must be {k} finite numbers, got {value!r}")
            setattr(self, name, value)
            return value

        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise DataError(f"SimCLRRecipe.size must be a positive integer, got {self.size!r}")
        for name in ("scale", "ratio"):
            lo, hi = floats(name, 2)
            if not 0 < lo <= hi:
                raise DataError(f"SimCLRRecipe.{name} must satisfy 0 < low <= high, got {(lo, hi)}")
        lo, hi = floats("blur_sigma", 2)
        if not 0 < lo <= hi:
            raise DataError(f"SimCLRRecipe.blur_sigma must satisfy 0 < low <= high, got {(lo, hi)}")
        jitter = floats("jitter", 4)
        if min(jitter) < 0 or jitter[3] > 0.5:
            raise DataError(f"SimCLRRecipe.jitter must be >= 0 with hue <= 0.5, got {jitter}")
        for name in ("flip_p", "jitter_p", "gray_p", "blur_p"):
            p = getattr(self, name)
            if p is None and name == "blur_p":
                continue
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
                raise DataError(f"SimCLRRecipe.{name} must be a probability in [0, 1], got {p!r}")
            setattr(self, name, float(p))
