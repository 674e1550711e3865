"""Comparing two pipelines' augmented views by statistics (shared by the pipeline tests and
benchmarks/recipe_stats.py).

`view_statistics` reduces every view to a few numbers, each aimed at one op of the SimCLR recipe:
brightness (mean grey), contrast (std of grey), saturation (mean HSV saturation), gray (1 when the
view is exactly grey), hue (the turn of the view's mean chroma away from its source image's, which
needs the source: the tests label every image with its own index) and kernel (the resampling
statistic: mean squared difference of neighbouring pixels over that of pixels two apart, 1/4 for a
linear ramp, 1/2 and more for blocky nearest-neighbour-like upscaling). Two pipelines agree when
every statistic's two-sample Kolmogorov-Smirnov distance stays under a bound calibrated on two runs
of one pipeline with different seeds.
"""

import numpy as np
import torch

LUMA = (0.2989, 0.587, 0.114)
STATS = ("brightness", "contrast", "saturation", "gray", "hue", "kernel")


def assert_same_channel_moments(ours, theirs, sigmas=5.0):
    """Per-image channel moments are independent draws (crop and colour are drawn per image), so
    the two pipelines' average first and second moments must agree within `sigmas` standard errors.
    Coarse on purpose: a wrong normalisation, channel order or scale fails it by far."""
    for c in range(3):
        for power in (1, 2):
            a, b = (v[:, c].double().pow(power).mean((1, 2)).numpy() for v in (ours, theirs))
            err = sigmas * np.sqrt(a.var() / len(a) + b.var() / len(b))
            assert abs(a.mean() - b.mean()) < err, (c, power, a.mean(), b.mean(), err)


def unnormalize(views, mean, std) -> torch.Tensor:
    """(N, 3, H, W) normalised float views -> float64 in [0, 1] pixel units."""
    m = torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
    return views.detach().cpu().double() * s + m


def _grey(x):
    return sum(w * x[:, c] for c, w in enumerate(LUMA))  # (N, H, W)


def _colour(x, grey):
    maxc, minc = x.amax(1), x.amin(1)
    return {
        "brightness": grey.mean((1, 2)),
        "contrast": grey.flatten(1).std(1),
        "saturation": ((maxc - minc) / maxc.clamp_min(1e-12)).mean((1, 2)),
    }


def _chroma_angle(x):
    """Angle of the mean opponent-colour vector (R - G, (R + G)/2 - B) of each image, radians."""
    r, g, b = x[:, 0].mean((1, 2)), x[:, 1].mean((1, 2)), x[:, 2].mean((1, 2))
    return torch.atan2((r + g) / 2 - b, r - g)


def view_statistics(views, mean, std, sources=None) -> dict:
    """views: (N, 3, H, W) normalised float; sources: (N, 3, h, w) uint8 image each view came from
    (None: no hue statistic). Returns name -> (N,) float64 numpy array, names as in STATS."""
    # Compared at 8-bit precision: PIL rounds to 8 bits after every op, float pipelines never do,
    # and that rounding noise alone would move the kernel statistic.
    x = unnormalize(views, mean, std).mul_(255).round_().div_(255)
    grey = _grey(x)
    out = _colour(x, grey)
    out["gray"] = ((x.amax(1) - x.amin(1)).flatten(1).amax(1) == 0).double()
    if sources is not None:
        src = sources.double() / 255
        turn = _chroma_angle(x) - _chroma_angle(src)
        out["hue"] = torch.remainder(turn + np.pi, 2 * np.pi) - np.pi
        # relative to the source image: removes the image-to-image spread, leaves crop and jitter
        for k, v in _colour(src, _grey(src)).items():
            out[k] = torch.log(out[k].clamp_min(1e-6) / v.clamp_min(1e-6))
    d1 = sum((grey.diff(dim=d) ** 2).flatten(1).mean(1) for d in (1, 2))
    d2 = sum(
        ((grey.narrow(d, 2, grey.shape[d] - 2) - grey.narrow(d, 0, grey.shape[d] - 2)) ** 2)
        .flatten(1)
        .mean(1)
        for d in (1, 2)
    )
    out["kernel"] = d1 / d2.clamp_min(1e-12)
    return {k: v.numpy() for k, v in out.items()}


def ks_distance(a, b) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    return float(
        np.abs(np.searchsorted(a, grid, "right") / len(a) - np.searchsorted(b, grid, "right") / len(b)).max()
    )


def distances(ours, theirs) -> dict:
    """name -> KS distance between two `view_statistics` results (the statistics both have)."""
    return {k: ks_distance(ours[k], theirs[k]) for k in STATS if k in ours and k in theirs}


def indexed(data, n):
    """The first n images of `data` (an ArrayDataset), each labelled with its own index, so that a
    view's label names its source image."""
    from pipelines.data.arrays import ArrayDataset

    return ArrayDataset(
        images=np.ascontiguousarray(data.images[:n]),
        labels=np.arange(n),
        classes=[],
        name=f"{data.name}[:{n}]",
        mean=data.mean,
        std=data.std,
    )


def loader_statistics(loader, data) -> dict:
    """Statistics of every view `loader` yields in epoch 0 (both SimCLR views), for a loader built
    over `indexed(...)` data."""
    views, labels = [], []
    loader.set_epoch(0)
    for batch in loader:
        for v in (batch.view1, batch.view2):
            views.append(v.detach().cpu().clone())
            labels.append(batch.labels.cpu().clone())
    labels = torch.cat(labels)
    sources = torch.from_numpy(data.images).permute(0, 3, 1, 2)[labels]
    return view_statistics(torch.cat(views), data.mean, data.std, sources)


def compare(ours, reference, factor=2.0) -> dict:
    """ours, reference: two `view_statistics` results each (two seeds of one pipeline). The bound
    is `factor` times the largest distance between two seeds of the same pipeline (either one);
    worst / least: per statistic, the largest / smallest distance over the four cross pairings."""
    null = max(max(distances(*pair).values()) for pair in (ours, reference))
    cross = [distances(a, b) for a in ours for b in reference]
    return {
        "null": null,
        "bound": factor * null,
        "worst": {k: max(d[k] for d in cross) for k in cross[0]},
        "least": {k: min(d[k] for d in cross) for k in cross[0]},
    }
