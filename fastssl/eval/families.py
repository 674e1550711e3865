"""The families section of the report: an experiment whose grid varies `method` (autoencoder,
SimCLR, Deep InfoMax on one backbone, e.g. experiments/families.toml) gets one table per evaluation
(the split's test part, the official test split), measured next to figures quoted elsewhere for
this comparison, which are claims never measured by fastssl, and three plots:
loss per family, kNN monitor per epoch, accuracy bars.
"""

import os
import statistics

from .. import checkpoint as ckpt
from .experiment import aggregate

FAMILIES = {
    "autoencoder": "reconstruction (autoencoder)",
    "simclr": "contrastive (SimCLR)",
    "dim": "MI maximisation (Deep InfoMax)",
}
# Figures quoted elsewhere for this comparison (top-1 / top-5, %): claims from elsewhere, not fastssl measurements.
QUOTED_CLAIMS = {"autoencoder": (63.4, 85.6), "simclr": (68.2, 91.3), "dim": (72.1, 94.5)}
QUOTED_LABEL = "quoted claims, not measured by fastssl"
METRICS = ["linear_top1", "linear_top5", "knn_top1", "knn_top5"]
HEADERS = {
    "family": "family",
    "linear_top1": "measured top-1",
    "linear_top5": "measured top-5",
    "knn_top1": "measured kNN top-1",
    "knn_top5": "measured kNN top-5",
    "n": "n (seeds)",
    "claim_top1": f"top-1 ({QUOTED_LABEL})",
    "claim_top5": f"top-5 ({QUOTED_LABEL})",
}


def is_families(exp: dict) -> bool:
    """A comparison of families: at least two of them among the rows (a one-method sweep is not)."""
    return len({r.get("method") for r in exp["rows"]} & set(FAMILIES)) >= 2


def tables(exp: dict) -> list[tuple[str, list[dict]]]:
    """[(evaluation label, rows)]: per family, mean ± std over seeds, with the quoted claim beside it."""
    by_eval = {}
    for r in exp["rows"]:
        if r.get("method"):
            label = r.get("eval_dataset") or "-"
            label = label if "test part of" in label or label == "-" else f"{label} (official test split)"
            by_eval.setdefault(label, []).append(r)
    out = []
    order = list(FAMILIES)
    for label, rows in by_eval.items():
        agg = aggregate(rows, ["method"], METRICS)
        agg.sort(key=lambda a: order.index(a["method"]) if a["method"] in order else len(order))
        for a in agg:
            claim = QUOTED_CLAIMS.get(a["method"], (None, None))
            vals = {
                m: [float(r[m]) for r in rows if r["method"] == a["method"] and r.get(m) not in (None, "")]
                for m in METRICS
            }
            a.update(
                family=FAMILIES.get(a["method"], a["method"]),
                claim_top1=claim[0],
                claim_top5=claim[1],
                numbers={
                    m: (statistics.mean(v) if v else None, statistics.stdev(v) if len(v) > 1 else 0.0)
                    for m, v in vals.items()
                },
            )
        out.append((label, agg))
    return out


def _runs(found: dict, exp: dict) -> list[dict]:
    root = os.path.realpath(exp["dir"]) + os.sep
    return [r for r in found["pretrain"] if os.path.realpath(r["dir"]).startswith(root)]


def _curve(run: dict, key: str):
    recs = [
        r for r in ckpt.read_jsonl(os.path.join(run["dir"], "metrics.jsonl")) if r.get("summary") and key in r
    ]
    return [r["epoch"] + 1 for r in recs], [r[key] for r in recs]


def plots(found: dict, exp: dict, out: str, stem: str) -> list[tuple[str, str]]:
    """families_loss / families_knn / families_accuracy PNGs (prefixed by `stem`); [(file, caption)]."""
    from .plots import bars, figure

    made, runs = [], _runs(found, exp)
    methods = [m for m in FAMILIES if any(r["config"].get("config", {}).get("method") == m for r in runs)]

    def series(method, key):
        out_ = []
        for r in runs:
            c = r["config"].get("config", {})
            if c.get("method") == method:
                x, y = _curve(r, key)
                if x:
                    out_.append(
                        {"label": f"{c.get('split', 'official')}, seed {c.get('seed')}", "x": x, "y": y}
                    )
        return out_

    loss = [
        {
            "title": FAMILIES[m],
            "xlabel": "epoch",
            "ylabel": "loss (epoch mean)",
            "series": series(m, "epoch_loss"),
        }
        for m in methods
    ]
    if loss and any(p["series"] for p in loss):
        figure(os.path.join(out, f"{stem}_loss.png"), loss, width=4.5)
        made.append(
            (
                f"{stem}_loss.png",
                "Pretraining loss per family (each family's own loss: reconstruction MSE, "
                "NT-Xent, Deep InfoMax objective), one line per split and seed.",
            )
        )
    knn = []
    for i, m in enumerate(methods):  # one colour and one legend entry per family; dashed: official split
        for j, s in enumerate(series(m, "val_knn_top1")):
            dashes = "--" if s["label"].startswith("official") else "-"
            knn.append(
                {**s, "label": FAMILIES[m] if j == 0 else None, "style": f"C{i}{dashes}", "alpha": 0.8}
            )
    if knn:
        figure(
            os.path.join(out, f"{stem}_knn.png"),
            [
                {
                    "title": "kNN monitor (validation images)",
                    "xlabel": "epoch",
                    "ylabel": "kNN top-1 (%)",
                    "series": knn,
                }
            ],
        )
        made.append(
            (
                f"{stem}_knn.png",
                "kNN top-1 of each pretraining run's monitor per epoch, on validation images "
                "(solid: the split's validation part; dashed: official split, a part held out "
                "of its training images); one line per run, one colour per family.",
            )
        )
    for j, (label, rows) in enumerate(tables(exp)):
        groups = [r["family"] for r in rows]
        series_ = [
            {
                "label": f"measured {k}",
                "values": [r["numbers"][f"linear_{k}"][0] for r in rows],
                "err": [r["numbers"][f"linear_{k}"][1] for r in rows],
            }
            for k in ("top1", "top5")
        ]
        series_ += [
            {
                "label": f"{k} ({QUOTED_LABEL})",
                "values": [r[f"claim_{k}"] for r in rows],
                "hatch": "//",
                "alpha": 0.4,
            }
            for k in ("top1", "top5")
        ]
        name = f"{stem}_accuracy{'' if j == 0 else f'_{j + 1}'}.png"
        bars(
            os.path.join(out, name),
            {
                "title": f"linear probe on {label}",
                "ylabel": "accuracy (%)",
                "groups": groups,
                "series": series_,
            },
        )
        made.append(
            (
                name,
                f"Linear-probe top-1 / top-5 on {label} (mean ± std over seeds), beside the {QUOTED_LABEL} "
                "(hatched).",
            )
        )
    return made


def blocks(found: dict, exp: dict, out: str) -> list[tuple]:
    """Report blocks (see report.build) for a families experiment."""
    b = [
        ("h2", f"Three families on one backbone ({exp['name']})"),
        (
            "p",
            "Linear probe (frozen backbone; learning rate and weight decay chosen on validation images, test "
            "scored once) and the weighted kNN of the probe's settings (fastssl.linear --knn-k) on the same features, top-1 / top-5 (%), mean ± std over seeds. "
            "The two right-hand columns are figures quoted elsewhere for this comparison: "
            f"{QUOTED_LABEL}; they come with no protocol and no run, and sit here only for reference.",
        ),
    ]
    for label, rows in tables(exp):
        b.append(("p", f"Evaluated on {label}."))
        b.append(("table", ["family", *METRICS, "n", "claim_top1", "claim_top5"], HEADERS, rows))
    stem = "families" if exp.get("index", 0) == 0 else f"families_{exp['index'] + 1}"
    b += [("img", name, caption) for name, caption in plots(found, exp, out, stem)]
    return b
