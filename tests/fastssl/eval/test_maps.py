"""2-D maps: PCA against numpy's SVD, its sign convention, the optional methods when installed, and
the one-line error naming the pip package when they are not."""

import sys

import numpy as np
import pytest

from fastssl.eval import maps
from pipelines import DataError


def clusters(n=60, d=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 8, (3, d))
    labels = np.arange(n) % 3
    return (centres[labels] + rng.normal(0, 1, (n, d))).astype(np.float32), labels


def test_pca_matches_svd():
    x, _ = clusters()
    scores, explained = maps.pca(x, 3)
    xc = x.astype(np.float64) - x.mean(0)
    u, s, vt = np.linalg.svd(xc, full_matrices=False)
    want = u[:, :3] * s[:3]
    signs = np.sign((scores * want).sum(0))  # a component's sign is a convention
    assert np.allclose(scores, want * signs, atol=1e-3)
    assert np.allclose(explained, s[:3] ** 2 / (s**2).sum(), atol=1e-6)


def test_pca_sign_is_fixed_by_the_largest_loading():
    x, _ = clusters()
    scores, _ = maps.pca(x)
    loadings = np.linalg.lstsq(x - x.mean(0), scores, rcond=None)[0]  # (D, 2): the components
    top = loadings[np.abs(loadings).argmax(0), [0, 1]]
    assert (top > 0).all()


def test_project_pca_axes_and_shape():
    x, _ = clusters()
    xy, axes = maps.project(x, "pca")
    assert xy.shape == (60, 2) and xy.dtype == np.float32 and axes[0].startswith("PC1 (")


def test_too_few_points_and_unknown_method():
    with pytest.raises(DataError, match="at least 3"):
        maps.project(np.zeros((2, 4), np.float32))
    with pytest.raises(DataError, match="pca, tsne, umap"):
        maps.require("mds")


@pytest.mark.parametrize("method, module", [("tsne", "sklearn.manifold"), ("umap", "umap")])
def test_optional_methods_separate_clusters(method, module):
    pytest.importorskip(module)
    x, labels = clusters()
    xy, _ = maps.project(x, method, seed=0)
    centres = np.stack([xy[labels == c].mean(0) for c in range(3)])
    spread = max(np.linalg.norm(xy[labels == c] - centres[c], axis=1).mean() for c in range(3))
    gaps = [np.linalg.norm(centres[i] - centres[j]) for i in range(3) for j in range(i)]
    assert xy.shape == (60, 2) and min(gaps) > 2 * spread


def test_missing_library_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.manifold", None)
    with pytest.raises(DataError, match="pip install scikit-learn"):
        maps.require("tsne")
