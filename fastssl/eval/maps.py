"""2-D maps of feature vectors: PCA (torch, always there), t-SNE (scikit-learn), UMAP (umap-learn).

    from fastssl.eval.maps import project, require
    require("tsne")                                  # DataError naming the pip package when it is missing
    xy, axes = project(features, "pca", seed=0)      # (N, 2) float32, and the two axis titles

Each method is a function of a float32 (N, D) array. t-SNE and UMAP come from optional libraries,
imported only when chosen: `require` is the one place that imports them (umap's import alone
compiles numba code, seconds to minutes, which a PCA map must not pay).
"""

import importlib

import numpy as np
import torch

from pipelines import DataError

# method -> (module it needs, pip package that provides it); PCA needs none.
LIBRARIES = {"tsne": ("sklearn.manifold", "scikit-learn"), "umap": ("umap", "umap-learn")}
METHODS = {"pca": "PCA", "tsne": "t-SNE", "umap": "UMAP"}  # --plot-method -> name in titles
# t-SNE and UMAP see the features reduced to this many principal components first (the usual
# preprocessing; it removes noise dimensions and makes the neighbour search cheap).
PRE_PCA = 50
PERPLEXITY = 30.0  # t-SNE's default; lowered for fewer than 91 points (it must stay below N / 3)


def require(method: str):
    """The module `method` needs (None for PCA); a DataError naming its pip package when missing."""
    if method not in METHODS:
        raise DataError(f"unknown map method {method!r}; choose from {', '.join(METHODS)}")
    if method not in LIBRARIES:
        return None
    module, package = LIBRARIES[method]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DataError(
            f"--plot-method {method} needs {package}: pip install {package} (or the fastssl[embed] extra)"
        ) from None


def pca(x: np.ndarray, k: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(scores (N, k) float32, explained variance fractions (k,)) of the k leading principal
    components of x (N, D). Eigen-decomposition of the D x D covariance in float64: O(N D^2), no
    N x N matrix. Each component's sign makes its largest-magnitude loading positive, so the same
    features always give the same map."""
    xt = torch.from_numpy(np.ascontiguousarray(x)).double()
    xt = xt - xt.mean(0)
    cov = xt.T @ xt / max(len(xt) - 1, 1)
    values, vectors = torch.linalg.eigh(cov)  # ascending
    k = min(k, vectors.shape[1])
    values, vectors = values.flip(0)[:k].clamp(min=0), vectors.flip(1)[:, :k]
    signs = torch.sign(vectors.gather(0, vectors.abs().argmax(0, keepdim=True)))
    vectors = vectors * torch.where(signs == 0, 1.0, signs)
    total = values.new_tensor(float(torch.diagonal(cov).sum()))
    explained = (values / total.clamp(min=1e-300)).numpy()
    return (xt @ vectors).float().numpy(), explained


def project(x: np.ndarray, method: str = "pca", seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """(N, 2) float32 coordinates of x (N, D) by `method`, and the titles of the two axes."""
    library = require(method)
    x = np.asarray(x, np.float32)
    if len(x) < 3:
        raise DataError(f"a 2-D map needs at least 3 images, got {len(x)}")
    if method == "pca":
        xy, explained = pca(x)
        return xy, [f"PC{i + 1} ({100 * v:.1f}% of the variance)" for i, v in enumerate(explained)]
    reduced = pca(x, PRE_PCA)[0] if x.shape[1] > PRE_PCA else x
    if method == "tsne":
        perplexity = min(PERPLEXITY, (len(x) - 1) / 3)
        model = library.TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
        return model.fit_transform(reduced).astype(np.float32), ["t-SNE 1", "t-SNE 2"]
    # A seeded UMAP runs on one thread whatever n_jobs says; saying so keeps it from warning.
    model = library.UMAP(n_components=2, n_neighbors=min(15, len(x) - 1), random_state=seed, n_jobs=1)
    return model.fit_transform(reduced).astype(np.float32), ["UMAP 1", "UMAP 2"]
