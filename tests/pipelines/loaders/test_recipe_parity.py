"""One recipe, four pipelines: every backend's SimCLR views follow torchvision's distribution.

On 4,000 real CIFAR-10 training images (8,000 views per run, each image labelled with its own index
so a view names its source), every view is reduced to the statistics of view_stats.py (brightness,
contrast, saturation, gray, hue turn, resampling kernel). A backend agrees with torchvision when,
for every statistic and every pairing of two seeds of each, the two-sample KS distance stays under
BOUND_FACTOR times the largest distance between two seeds of the same pipeline (torchvision's and
the backend's own): the calibration. The parametrised negative cases show the check has the power
it needs: colour jitter applied with p = 0.6 instead of 0.8, and jitter without hue, both fail it.
The Gaussian blur of the recipe above 32 px is checked the same way on its own statistic (per-view
high-frequency energy ratio; see test_blur_views_follow_torchvisions_distribution).
Plus the shared pieces: recorded recipe names, derive_seed, one set of recipe constants.
"""

import numpy as np
import pytest
import torch

import pipelines
from benchmarks.view_stats import compare, indexed, ks_distance, loader_statistics, unnormalize
from pipelines import DataError, augment, datasets, recipes
from pipelines.data import arrays
from pipelines.recipes import SimCLRRecipe

N, BATCH = 4000, 500
BOUND_FACTOR = 2.0
BACKEND_KWARGS = {
    "torchvision": dict(workers=0),
    "gpu": {},
    "dali": dict(workers=2, ahead=False),
    "ffcv": dict(workers=2),
}
SEEDS = (0, 1)


@pytest.fixture(scope="module")
def data(cifar_root):
    return indexed(datasets.load("cifar10", "train", data_dir=cifar_root), N)


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    """run(backend, seed, spec) -> view statistics of epoch 0, computed once per module."""
    cache, done = str(tmp_path_factory.mktemp("parity_cache")), {}

    def run(backend, seed, spec=SimCLRRecipe()):
        key = (backend, seed, repr(spec))
        if key not in done:
            kwargs = dict(BACKEND_KWARGS[backend])
            if backend in ("dali", "ffcv"):
                pytest.importorskip({"dali": "nvidia.dali", "ffcv": "ffcv"}[backend])
                kwargs["cache_dir"] = cache
            loader = pipelines.build(backend, data, batch_size=BATCH, seed=seed, spec=spec, **kwargs)
            assert getattr(loader, "recipe_name", recipes.name(backend, "simclr")) == recipes.name(
                backend, "simclr"
            )
            done[key] = loader_statistics(loader, data)
        return done[key]

    return run


def against_torchvision(runs, backend, spec=SimCLRRecipe()):
    return compare(
        [runs(backend, s, spec) for s in SEEDS], [runs("torchvision", s) for s in SEEDS], BOUND_FACTOR
    )


@pytest.mark.parametrize("backend", ["gpu", "dali", "ffcv"])
def test_backend_draws_views_from_torchvisions_distribution(runs, backend):
    result = against_torchvision(runs, backend)
    assert set(result["worst"]) == {"brightness", "contrast", "saturation", "gray", "hue", "kernel"}
    assert max(result["worst"].values()) <= result["bound"], result


@pytest.mark.parametrize(
    "wrong, caught_by",
    [
        (dict(jitter_p=0.6), ("brightness",)),
        (dict(jitter=(0.4, 0.4, 0.4, 0.0)), ("hue",)),
    ],
    ids=["jitter_p=0.6", "no-hue"],
)
def test_parity_check_catches_a_wrong_recipe(runs, wrong, caught_by):
    result = against_torchvision(runs, "gpu", SimCLRRecipe(**wrong))
    for stat in caught_by:  # by every pairing of seeds
        assert result["least"][stat] > result["bound"], (stat, result)


# ------------------------------------------------------------------------- blur above 32 px

BLUR_N, BLUR_SIZE = 500, 64  # 1,000 views per run; 64 px: blur on, kernel 7
# Colour ops off: their parity is tested above, and without them the statistic sees the blur alone.
NO_COLOUR = dict(jitter_p=0.0, gray_p=0.0)


def high_frequency_ratio(views, mean, std) -> np.ndarray:
    """Per view: mean squared difference of neighbouring grey pixels over the grey variance, at 8-bit
    precision (as view_stats compares). Scale-free; a blur lowers it, sigma 2 at 64 px by about half."""
    x = unnormalize(views, mean, std).mul_(255).round_().div_(255)
    grey = sum(w * x[:, c] for c, w in enumerate(recipes.LUMA))
    d1 = sum((grey.diff(dim=d) ** 2).flatten(1).mean(1) for d in (1, 2))
    return (d1 / grey.flatten(1).var(1).clamp_min(1e-12)).numpy()


@pytest.fixture(scope="module")
def blur_runs():
    """run(backend, seed, **recipe) -> high-frequency ratios of every view of epoch 0, on 64x64 white
    noise of random amplitude around a random colour (every spatial frequency present). Crops are
    never larger than the output, so torchvision's antialiasing (which only acts when downscaling
    and the torch op does not do) plays no part."""
    rng = np.random.default_rng(0)
    base, amp = rng.uniform(60, 190, (BLUR_N, 1, 1, 3)), rng.uniform(10, 60, (BLUR_N, 1, 1, 1))
    noise = base + amp * rng.standard_normal((BLUR_N, BLUR_SIZE, BLUR_SIZE, 3))
    data = arrays.ArrayDataset(
        np.clip(noise, 0, 255).round().astype(np.uint8),
        np.arange(BLUR_N),
        [],
        "noise",
        (0.5, 0.5, 0.5),
        (0.25, 0.25, 0.25),
    )
    done = {}

    def run(backend, seed, **recipe):
        key = (backend, seed, tuple(sorted(recipe.items())))
        if key not in done:
            torch.set_num_threads(1)  # PIL-side blur in this process: one thread beats contended two
            spec = SimCLRRecipe(size=BLUR_SIZE, **NO_COLOUR, **recipe)
            loader = pipelines.build(
                backend, data, batch_size=250, seed=seed, spec=spec, **BACKEND_KWARGS[backend]
            )
            loader.set_epoch(0)
            done[key] = np.concatenate(
                [high_frequency_ratio(v, data.mean, data.std) for b in loader for v in (b.view1, b.view2)]
            )
        return done[key]

    return run


def blur_against_torchvision(blur_runs, **recipe):
    """(smallest and largest KS distance of the torch op's views to torchvision's over the four seed
    pairings, the bound: BOUND_FACTOR x the largest same-pipeline two-seed distance)."""
    tv, ours = [blur_runs("torchvision", s) for s in SEEDS], [blur_runs("gpu", s, **recipe) for s in SEEDS]
    null = max(ks_distance(*tv), ks_distance(*[blur_runs("gpu", s) for s in SEEDS]))
    cross = [ks_distance(a, b) for a in ours for b in tv]
    return min(cross), max(cross), BOUND_FACTOR * null


def test_blur_views_follow_torchvisions_distribution(blur_runs):
    pytest.importorskip("torchvision")
    _, worst, bound = blur_against_torchvision(blur_runs)
    assert worst <= bound, (worst, bound)
    # the statistic sees the blur: half the views blurred moves the mean ratio well away from none
    assert blur_runs("gpu", 0).mean() < 0.85 * blur_runs("gpu", 0, blur_p=0.0).mean()


@pytest.mark.parametrize(
    "wrong", [dict(blur_p=0.0), dict(blur_sigma=(0.1, 1.0))], ids=["no-blur", "sigma<=1"]
)
def test_blur_parity_catches_a_wrong_blur(blur_runs, wrong):
    pytest.importorskip("torchvision")
    least, _, bound = blur_against_torchvision(blur_runs, **wrong)
    assert least > bound, (wrong, least, bound)


def test_recipe_names_record_how_each_pipeline_computes_the_recipe():
    assert recipes.name("torchvision", "simclr") == "simclr/pil"
    assert {recipes.name(p, "simclr") for p in ("gpu", "dali", "ffcv")} == {"simclr/torch"}
    assert {recipes.name(p, r) for p in pipelines.PIPELINES for r in ("supervised", "eval")} == {
        "supervised",
        "eval",
    }
    assert set(recipes.VARIANTS) == set(pipelines.PIPELINES) and recipes.RECIPES == pipelines.RECIPES
    for bad in (("gpu", "byol"), ("jax", "simclr")):
        with pytest.raises(DataError, match="unknown"):
            recipes.name(*bad)


def test_derive_seed_mixes_and_fits_its_bits():
    seeds = [recipes.derive_seed(s, e) for s in range(30) for e in range(30)]
    assert len(set(seeds)) == len(seeds)  # (seed, epoch) pairs never alias, unlike seed + epoch
    assert recipes.derive_seed(3, 1, 2) == recipes.derive_seed(3, 1, 2) != recipes.derive_seed(3, 2, 1)
    assert all(0 <= s < 2**63 for s in seeds) and max(seeds) > 2**62  # uses the high bits too
    small = [recipes.derive_seed(s, bits=31) for s in range(200)]
    assert all(0 <= s < 2**31 for s in small) and max(small) > 2**30
    # one generator state, cut to size: the 31-bit seed is the top of the 63-bit one
    assert recipes.derive_seed(7, bits=31) == recipes.derive_seed(7) >> 32
    with pytest.raises(DataError, match="bits"):
        recipes.derive_seed(1, bits=65)


def test_one_set_of_recipe_constants():
    from pipelines.loaders import dali, ffcv, gpu
    from pipelines.loaders import torchvision as baseline

    assert augment.SimCLRRecipe is recipes.SimCLRRecipe and augment.PAD == recipes.PAD
    assert (recipes.BLUR_P, recipes.BLUR_SIGMA, recipes.BLUR_ABOVE) == (
        0.5,
        (0.1, 2.0),
        32,
    )  # SimCLR, appendix A
    assert SimCLRRecipe().blur_prob == 0 and SimCLRRecipe(size=33).blur_prob == recipes.BLUR_P
    for module in (baseline, dali, ffcv, gpu):
        assert not hasattr(module, "RECIPES") or module.RECIPES == recipes.RECIPES
        assert not hasattr(module, "PAD") or module.PAD == recipes.PAD
    assert baseline.derive_seed is dali.derive_seed is ffcv.derive_seed is recipes.derive_seed
    x = torch.rand(4, 3, 2, 2)
    want = sum(w * x[:, c] for c, w in enumerate((0.2989, 0.587, 0.114)))  # torchvision's rgb_to_grayscale
    torch.testing.assert_close(augment.luma(x)[:, 0], want)
