"""One recipe, four pipelines: every backend's SimCLR views follow torchvision's distribution.

On 4,000 real CIFAR-10 training images (8,000 views per run, each image labelled with its own index
so a view names its source), every view is reduced to the statistics of view_stats.py (brightness,
contrast, saturation, gray, hue turn, resampling kernel). A backend agrees with torchvision when,
for every statistic and every pairing of two seeds of each, the two-sample KS distance stays under
BOUND_FACTOR times the largest distance between two seeds of the same pipeline (torchvision's and
the backend's own): the calibration. The parametrised negative cases show the check has the power
it needs: colour jitter applied with p = 0.6 instead of 0.8, and jitter without hue, both fail it.
Plus the shared pieces: recorded recipe names, derive_seed, one set of recipe constants.
"""
import pytest
import torch

import pipelines
from pipelines import DataError, augment, datasets, recipes
from pipelines.recipes import SimCLRRecipe
from view_stats import compare, indexed, loader_statistics

N, BATCH = 4000, 500
BOUND_FACTOR = 2.0
BACKEND_KWARGS = {"torchvision": dict(workers=0), "gpu": {}, "dali": dict(workers=2, ahead=False), "ffcv": dict(workers=2)}
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
            assert getattr(loader, "recipe_name", recipes.name(backend, "simclr")) == recipes.name(backend, "simclr")
            done[key] = loader_statistics(loader, data)
        return done[key]

    return run


def against_torchvision(runs, backend, spec=SimCLRRecipe()):
    return compare([runs(backend, s, spec) for s in SEEDS], [runs("torchvision", s) for s in SEEDS], BOUND_FACTOR)


@pytest.mark.parametrize("backend", ["gpu", "dali", "ffcv"])
def test_backend_draws_views_from_torchvisions_distribution(runs, backend):
    result = against_torchvision(runs, backend)
    assert set(result["worst"]) == {"brightness", "contrast", "saturation", "gray", "hue", "kernel"}
    assert max(result["worst"].values()) <= result["bound"], result


@pytest.mark.parametrize("wrong, caught_by", [
    (dict(jitter_p=0.6), ("brightness",)),
    (dict(jitter=(0.4, 0.4, 0.4, 0.0)), ("hue",)),
], ids=["jitter_p=0.6", "no-hue"])
def test_parity_check_catches_a_wrong_recipe(runs, wrong, caught_by):
    result = against_torchvision(runs, "gpu", SimCLRRecipe(**wrong))
    for stat in caught_by:  # by every pairing of seeds
        assert result["least"][stat] > result["bound"], (stat, result)


def test_recipe_names_record_how_each_pipeline_computes_the_recipe():
    assert recipes.name("torchvision", "simclr") == "simclr/pil"
    assert {recipes.name(p, "simclr") for p in ("gpu", "dali", "ffcv")} == {"simclr/torch"}
    assert {recipes.name(p, r) for p in pipelines.PIPELINES for r in ("supervised", "eval")} == {"supervised", "eval"}
    assert set(recipes.VARIANTS) == set(pipelines.PIPELINES) and recipes.RECIPES == pipelines.RECIPES
    for bad in (("gpu", "byol"), ("jax", "simclr")):
        with pytest.raises(DataError, match="unknown"):
            recipes.name(*bad)


def test_derive_seed_mixes_and_fits_its_bits():
    seeds = [recipes.derive_seed(s, e) for s in range(30) for e in range(30)]
    assert len(set(seeds)) == len(seeds)  # (seed, epoch) pairs never alias, unlike seed + epoch
    assert recipes.derive_seed(3, 1, 2) == recipes.derive_seed(3, 1, 2) != recipes.derive_seed(3, 2, 1)
    assert all(0 <= s < 2 ** 63 for s in seeds) and max(seeds) > 2 ** 62  # uses the high bits too
    small = [recipes.derive_seed(s, bits=31) for s in range(200)]
    assert all(0 <= s < 2 ** 31 for s in small) and max(small) > 2 ** 30
    # one generator state, cut to size: the 31-bit seed is the top of the 63-bit one
    assert recipes.derive_seed(7, bits=31) == recipes.derive_seed(7) >> 32
    with pytest.raises(DataError, match="bits"):
        recipes.derive_seed(1, bits=65)


def test_one_set_of_recipe_constants():
    from pipelines import baseline, dali, ffcv, gpu

    assert augment.SimCLRRecipe is recipes.SimCLRRecipe and augment.PAD == recipes.PAD
    for module in (baseline, dali, ffcv, gpu):
        assert not hasattr(module, "RECIPES") or module.RECIPES == recipes.RECIPES
        assert not hasattr(module, "PAD") or module.PAD == recipes.PAD
    assert baseline.derive_seed is dali.derive_seed is ffcv.derive_seed is recipes.derive_seed
    x = torch.rand(4, 3, 2, 2)
    want = sum(w * x[:, c] for c, w in enumerate((0.2989, 0.587, 0.114)))  # torchvision's rgb_to_grayscale
    torch.testing.assert_close(augment.luma(x)[:, 0], want)
