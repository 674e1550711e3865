"""The augmentation recipes every pipeline draws from, their constants, and the seeds they use.

    from pipelines import recipes
    recipes.SimCLRRecipe()                      # SimCLR's CIFAR parameters (augment.SimCLRRecipe is this)
    recipes.name("dali", "simclr")              # "simclr/torch", what a run writes into config.json
    recipes.derive_seed(seed, epoch, rank)      # one seed per (seed, epoch, rank), never aliasing

SimCLR's CIFAR recipe (Chen et al. 2020, appendix B.9) as torchvision writes it:
RandomResizedCrop(size, scale, ratio, bilinear) -> RandomHorizontalFlip(flip_p) ->
RandomApply(ColorJitter(brightness, contrast, saturation, hue), jitter_p) -> RandomGrayscale(gray_p)
-> Normalize. ColorJitter applies its four ops in a random order per sample, contrast blends with the
image's mean grey and hue rotates in HSV; grayscale views are exactly grey (R = G = B).
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
        jitter = floats("jitter", 4)
        if min(jitter) < 0 or jitter[3] > 0.5:
            raise DataError(f"SimCLRRecipe.jitter must be >= 0 with hue <= 0.5, got {jitter}")
        for name in ("flip_p", "jitter_p", "gray_p"):
            p = getattr(self, name)
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
                raise DataError(f"SimCLRRecipe.{name} must be a probability in [0, 1], got {p!r}")
            setattr(self, name, float(p))
