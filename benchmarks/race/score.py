"""The race's one evaluation: every backbone, final and snapshots, scored by the same weighted kNN
(fastssl.eval.knn.knn_eval: k, temperature, bank and test split shared), each fed the images
normalised as its entrant trained on them (a backbone's BatchNorm statistics expect that input).

    scores = score_runs(spec, runs, seeds, device, k=200, t=0.1, untrained=True)

The bank is the race's training images (labels vote, as in fastssl.knn); the queries are the whole
test split of the dataset.
"""

import json

import torch

from fastssl.checkpoint import atomic_write_text, load_network
from fastssl.eval.knn import knn_eval
from pipelines.data.arrays import ArrayDataset, fingerprint
from pipelines.files import sha256

from .spec import RaceSpec, images


def normalised(data, mean, std) -> ArrayDataset:
    """The same pixels with another mean/std (no copy)."""
    return ArrayDataset(data.images, data.labels, data.classes, data.name, tuple(mean), tuple(std))


def score(path: str, bank, test, mean, std, device, k: int, t: float) -> dict:
    """{"top1", "top5"} of the backbone at `path`. Kept beside it (`<path>.knn.json`, keyed by the
    weights' sha256 and everything else the score depends on), so a race resumed after a stop
    scores only what is new."""
    key = {
        "sha256": sha256(path),
        "bank": fingerprint(bank),
        "test": fingerprint(test),
        "mean": list(mean),
        "std": list(std),
        "k": k,
        "t": t,
    }
    cache = path + ".knn.json"
    try:
        with open(cache) as f:
            saved = json.load(f)
        if saved["key"] == key:
            return saved["score"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    backbone, _ = load_network(path)
    backbone = backbone.to(device)
    result = knn_eval(backbone, normalised(bank, mean, std), normalised(test, mean, std), device, k, t)
    atomic_write_text(cache, json.dumps({"key": key, "score": result}))
    return result


def score_runs(spec: RaceSpec, runs: list, seeds: list, device, k: int, t: float, untrained: bool) -> dict:
    """{"runs": [{"final": {top1, top5}, "curve": [{epoch, top1, top5}, ...]} per run],
    "untrained": [{seed, top1, top5}]}."""
    bank, test = images(spec), images(spec, "test")
    out = []
    for run in runs:
        args = (bank, test, run["mean"], run["std"], device, k, t)
        curve = [{"epoch": s["epoch"], **score(s["path"], *args)} for s in run["snapshots"]]
        final = score(run["backbone"], *args)
        out.append(
            {
                "entrant": run["entrant"],
                "seed": run["seed"],
                "final": final,
                "curve": curve + [{"epoch": len(run["epochs"]), **final}],
            }
        )
    control = []
    if untrained:
        for seed in seeds:  # the same network untrained: what the features are worth before training
            torch.manual_seed(seed)
            backbone, _ = load_network("random", spec.stem)
            control.append({"seed": seed, **knn_eval(backbone.to(device), bank, test, device, k, t)})
    return {"runs": out, "untrained": control}
