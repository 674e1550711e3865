"""python -m fastssl.embed on the shipped CIFAR-10 sample with an untrained backbone: the .npz's
arrays, features equal to fastssl.eval.features.extract, the PCA map, image-folder paths, converted
datasets' source indices, and bad input as one line with exit code 2 and no file touched."""

import json
import sys

import numpy as np
import pytest
import torch
from test_experiment import image_folder  # the experiment tests' folder maker (same directory)

from fastssl.checkpoint import load_network
from fastssl.data import load_data
from fastssl.eval import embed
from fastssl.eval.features import extract
from pipelines import datasets
from pipelines.formats.converted import ConvertedDataset
from pipelines.formats.writer import stored_order

# The ImageNet stem is 16x cheaper than the CIFAR stem on 32x32 images.
RANDOM = ["--backbone", "random", "--stem", "imagenet", "--device", "cpu"]
BASE = [*RANDOM, "--dataset", "cifar10-sample"]


def run(*args):
    assert embed.main([*BASE, *args]) == 0


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    """The sample's test part embedded twice: float16 (the default) with a PCA map, and float32."""
    d = tmp_path_factory.mktemp("embed")
    run("--part", "test", "--out", str(d / "f16.npz"), "--plot", str(d / "map.png"))
    run("--part", "test", "--dtype", "float32", "--out", str(d / "f32.npz"))
    return d


def test_npz_arrays_and_meta(sample_run):
    test = datasets.load("cifar10-sample", "test")
    z = np.load(sample_run / "f16.npz")  # no pickle needed
    assert set(z.files) == {"features", "labels", "index", "classes", "meta"}
    assert z["features"].dtype == np.float16 and z["features"].shape == (1000, 512)
    assert z["labels"].dtype == np.int64 and np.array_equal(z["labels"], test.labels)
    assert z["index"].dtype == np.int64 and np.array_equal(z["index"], np.arange(1000))
    assert list(z["classes"]) == test.classes
    meta = json.loads(z["meta"].item())
    assert meta["backbone"] == "random" and meta["dataset"] == "cifar10-sample" and meta["part"] == "test"
    assert meta["count"] == 1000 and meta["feature_dim"] == 512 and meta["dtype"] == "float16"
    assert (sample_run / "map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_features_are_those_of_extract(sample_run):
    torch.manual_seed(0)  # the command's --seed 0 for the 'random' backbone
    backbone, _ = load_network("random", "imagenet")
    want, labels = extract(backbone, datasets.load("cifar10-sample", "test"), "cpu")
    f32 = np.load(sample_run / "f32.npz")["features"]
    assert f32.dtype == np.float32 and np.array_equal(f32, want.numpy())
    assert np.array_equal(np.load(sample_run / "f16.npz")["features"], want.numpy().astype(np.float16))


def test_image_folder_paths_official_and_pooled(tmp_path):
    root = image_folder(tmp_path / "folder", train_per_class=10, test_per_class=5)
    folder = ["--dataset", "imagefolder", "--data-dir", str(root)]
    assert embed.main([*RANDOM, *folder, "--part", "test", "--out", str(tmp_path / "a.npz")]) == 0
    z = np.load(tmp_path / "a.npz")
    classes = sorted(p.name for p in (root / "test").iterdir())
    want = [str(root / "test" / c / f"{i}.png") for c in classes for i in range(5)]
    assert list(z["paths"]) == want and np.array_equal(z["index"], np.arange(20))
    assert np.array_equal(z["labels"], np.repeat(np.arange(4), 5))
    split = ["--split", "80/10/10", "--split-seed", "1", "--part", "test"]
    assert embed.main([*RANDOM, *folder, *split, "--out", str(tmp_path / "b.npz")]) == 0
    z = np.load(tmp_path / "b.npz")
    pooled = [
        str(root / s / c / f"{i}.png")
        for s, n in (("train", 10), ("test", 5))
        for c in classes
        for i in range(n)
    ]
    assert list(z["paths"]) == [pooled[i] for i in z["index"]]
    part = load_data("imagefolder", str(root), "80/10/10", split_seed=1).test
    assert np.array_equal(datasets.pooled("imagefolder", str(root)).images[z["index"]], part.images)
    assert json.loads(z["meta"].item())["split_seed"] == 1


def test_converted_source_index_follows_the_manifest_order():
    labels = np.arange(6) % 2
    manifest = {"count": 6, "order": {"shuffled": True, "seed": 3}, "source": {"dataset": "cifar10"}}
    data = ConvertedDataset(
        "x.beton", "ffcv", labels, ["a", "b"], "x", (0.5,) * 3, (0.2,) * 3, "test", manifest
    )
    cfg = embed.EmbedConfig(backbone="random", dataset="x.beton", out="o.npz")
    arrays, where = embed.sources(cfg, data.take([1, 4]))
    assert np.array_equal(arrays["index"], [1, 4]) and "x.beton" in where
    assert np.array_equal(arrays["source_index"], stored_order(6, 3)[[1, 4]])
    manifest["order"] = {"shuffled": False, "seed": None}
    assert np.array_equal(embed.sources(cfg, data)[0]["source_index"], np.arange(6))


def fails(capsys, argv, words):
    with pytest.raises(SystemExit) as e:
        embed.main(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("error:"), err
    assert all(w in err for w in words), err


@pytest.mark.parametrize("module, package", [("sklearn.manifold", "scikit-learn"), ("umap", "umap-learn")])
def test_missing_map_library_is_one_line(tmp_path, capsys, monkeypatch, module, package):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if the package were not installed
    method = "tsne" if module.startswith("sklearn") else "umap"
    out = tmp_path / "feats.npz"
    out.write_bytes(b"keep")
    argv = [
        *BASE,
        "--out",
        str(out),
        "--plot",
        str(tmp_path / "m.png"),
        "--plot-method",
        method,
        "--overwrite",
    ]
    fails(capsys, argv, [package, "pip install"])
    assert out.read_bytes() == b"keep" and not (tmp_path / "m.png").exists()


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--backbone", "{tmp}/nope.pt"], ["checkpoint not found"]),
        (["--dataset", "cifar11"], ["cifar11", "cifar10-sample"]),
        (["--out", "{tmp}/keep.npz"], ["already exists", "--overwrite"]),
        (["--plot", "{tmp}/keep.npz"], ["already exists"]),
        (["--out", "{tmp}/keep.npz/f.npz"], ["not a writable folder"]),
        (["--out", "{tmp}"], ["is a directory"]),
        (["--part", "val"], ["--part val", "percentage"]),
        (["--plot-method", "tsne"], ["--plot-method needs --plot"]),
        (["--plot", "{tmp}/f.npz"], ["same file"]),
        (["--dtype", "float64"], ["float16", "float32"]),
        (["--split", "80/10"], ["--split"]),
    ],
)
def test_bad_input_exits_2_and_touches_nothing(tmp_path, capsys, extra, words):
    keep = tmp_path / "keep.npz"
    keep.write_bytes(b"keep")
    argv = [*BASE, "--out", str(tmp_path / "f.npz"), *[a.format(tmp=tmp_path) for a in extra]]
    fails(capsys, argv, words)
    assert keep.read_bytes() == b"keep" and not (tmp_path / "f.npz").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.npz"]
