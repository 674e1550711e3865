"""Tables and plots from finished runs: `python -m fastssl.report RUNS... --out report/`.

    # everything under runs/ (pretraining, linear, supervised and experiment directories)
    python -m fastssl.report runs --out report
    # chosen runs; markdown only
    python -m fastssl.report runs/exp runs/linear_imagenet runs/scratch_s0 runs/scratch_s1 --out report --no-html

RUNS are run directories or folders searched recursively for them. --out gets report.md, a
self-contained report.html (PNGs embedded), and the PNGs:
  main table      every evaluated backbone (linear probe / kNN on frozen features, or supervised
                  from scratch), mean ± std over seeds (repeats with the same label)
  experiments     one table per grid of each fastssl.experiment directory (sweeps, data size)
  families        an experiment varying `method`: measured top-1 / top-5 per family next to the
                  figures quoted elsewhere for this comparison (labelled as such, not measured);
                  families_loss.png  families_knn.png  families_accuracy.png (fastssl/eval/families.py)
  pretrain_loss.png  knn_curves.png  linear_curves.png  supervised_curves.png  data_size.png
Dataset names come from the runs (e.g. "CIFAR-100 (JPEG-recompressed copy)"), never from flags.
"""

import base64
import csv
import html
import json
import os
import shutil
import sys
from dataclasses import dataclass, field

from .. import checkpoint as ckpt
from ..config import ConfigError, cli, parse
from . import families
from .experiment import aggregate, eval_label

KIND_ORDER = {"simclr": 0, "imagenet": 1, "supervised": 2, "state_dict": 3, "random": 4}
METRIC_NAMES = {
    "linear_top1": "linear top-1",
    "linear_top5": "linear top-5",
    "knn_top1": "kNN top-1",
    "knn_top5": "kNN top-5",
    "monitor_knn_top1": "monitor kNN top-1",
    "final_loss": "final loss",
    "pretrain_images": "pretraining images",
}


@dataclass
class ReportConfig:
    # Usually given as positional arguments (python -m fastssl.report RUNS...), which main() joins into this
    # field; with --runs or in a TOML file they are comma-separated.
    runs: str = field(
        default="", metadata={"help": "run / experiment directories or folders holding them, comma-separated"}
    )
    out: str = field(default="report", metadata={"help": "output directory"})
    title: str = field(default="fastssl results", metadata={"help": "report title"})
    html: bool = field(default=True, metadata={"help": "also write a self-contained report.html"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing output directory"})

    def __post_init__(self):
        if not self.runs:
            raise ValueError("give at least one run directory: python -m fastssl.report RUNS... --out DIR")


# ---- finding runs ----------------------------------------------------------------------------


def _json(path):
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def discover(paths: list[str]) -> dict:
    """Runs under `paths`: {"linear": [...], "supervised": [...], "pretrain": [...], "experiment": [...]},
    each item {"dir", "name", "summary", "config"}; only finished runs (summary.json present)."""
    found = {"linear": [], "supervised": [], "pretrain": [], "experiment": []}
    seen = set()
    for root in paths:
        if not os.path.exists(root):
            raise ConfigError(f"no such run directory: {root}")
        base = os.path.dirname(os.path.abspath(root))
        for d, _, files in sorted(os.walk(root)):
            real = os.path.realpath(d)
            if real in seen:
                continue
            seen.add(real)
            name = os.path.relpath(os.path.abspath(d), base)
            if "results.csv" in files and "experiment.toml" in files:
                with open(os.path.join(d, "results.csv")) as f:
                    found["experiment"].append({"dir": d, "name": name, "rows": list(csv.DictReader(f))})
            summary = _json(os.path.join(d, "summary.json")) if "summary.json" in files else None
            if summary is None:
                continue
            run = {
                "dir": d,
                "name": name,
                "summary": summary,
                "config": _json(os.path.join(d, "config.json")) or {},
            }
            if summary.get("protocol") == "linear":
                found["linear"].append(run)
            elif summary.get("protocol") == "supervised":
                found["supervised"].append(run)
            elif "method" in run["config"].get("config", {}):
                found["pretrain"].append(run)
    if not any(found.values()):
        raise ConfigError(f"no finished runs (summary.json) under {', '.join(paths)}")
    return found


# ---- tables ----------------------------------------------------------------------------------


def main_rows(found: dict) -> list[dict]:
    """One row per (backbone, protocol, evaluation data), mean ± std over its repeats."""
    rows = []
    for r in found["linear"]:
        s = r["summary"]
        protocol = "linear probe, frozen" + (f", {s['data']['resize']} px" if s["data"].get("resize") else "")
        rows.append(
            {
                "backbone": s["backbone"]["label"],
                "kind": s["backbone"]["kind"],
                "protocol": protocol,
                "data": eval_label(s["data"]),
                "top1": s["test_top1"],
                "top5": s["test_top5"],
                "knn_top1": s.get("knn_top1"),
            }
        )
    for r in found["supervised"]:
        s = r["summary"]
        rows.append(
            {
                "backbone": s["backbone"]["label"],
                "kind": "supervised",
                "protocol": "end-to-end, from scratch",
                "data": eval_label(s["data"]),
                "top1": s["test_top1"],
                "top5": s["test_top5"],
                "knn_top1": s.get("knn_top1"),
            }
        )
    keys = ["data", "kind", "backbone", "protocol"]
    top1 = {}
    for r in rows:
        top1.setdefault(tuple(str(r[k]) for k in keys), []).append(r["top1"])
    groups = aggregate(rows, keys, ["top1", "top5", "knn_top1"])
    # Per evaluation dataset: SimCLR, ImageNet, supervised, other, random; best mean top-1 first.
    groups.sort(
        key=lambda g: (g["data"], KIND_ORDER.get(g["kind"], 9), -_mean(top1[tuple(g[k] for k in keys)]))
    )
    return groups


def _mean(values):
    return sum(values) / len(values)


def run_rows(found: dict) -> list[dict]:
    rows = []
    for kind in ("linear", "supervised"):
        for r in found[kind]:
            s = r["summary"]
            seed = s["backbone"].get("seed")
            rows.append(
                {
                    "run": r["name"],
                    "backbone": s["backbone"]["label"],
                    "seed": seed if seed is not None else s.get("seed"),
                    "data": eval_label(s["data"]),
                    "top1": f"{s['test_top1']:.2f}",
                    "top5": f"{s['test_top5']:.2f}",
                    "lr, wd": f"{s['lr']:g}, {s['weight_decay']:g}" if kind == "linear" else "-",
                    "val top-1": f"{s['val_top1']:.2f}" if kind == "linear" else "-",
                    "time (s)": f"{s['wall_time_s']:.0f}",
                }
            )
    return rows


def _num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def experiment_tables(exp: dict) -> list[dict]:
    """One table per grid of an experiment: rows grouped by the keys the grid varies."""
    measured = ["linear_top1", "linear_top5", "knn_top1", "monitor_knn_top1", "final_loss"]
    rows = exp["rows"]
    reserved = {
        "cell",
        "seed",
        "eval_dataset",
        "pretrain_images",
        "pretrain_time_s",
        "img_per_s",
        "lr",
        "weight_decay",
        "knn_top5",
        *measured,
    }
    keys = [k for k in (rows[0].keys() if rows else []) if k not in reserved]
    by_grid = {}
    for r in rows:  # a grid's cells define exactly its keys; other grids' keys are empty
        by_grid.setdefault(tuple(k for k in keys if r.get(k) not in (None, "")), []).append(r)
    tables = []
    for gkeys, grows in by_grid.items():
        agg = aggregate(grows, list(gkeys), measured)
        metrics = measured
        if {"data_fraction", "subset"} & set(gkeys):  # data size: show the image count (not averaged)
            for a in agg:
                imgs = next(r["pretrain_images"] for r in grows if all(str(r.get(k)) == a[k] for k in gkeys))
                a["pretrain_images"] = f"{int(float(imgs)):,}" if imgs else "-"
            metrics = ["pretrain_images", *measured]
        evals = sorted({r["eval_dataset"] for r in grows if r.get("eval_dataset")})
        tables.append(
            {"keys": list(gkeys), "metrics": metrics, "rows": agg, "raw": grows, "eval": ", ".join(evals)}
        )
    return tables


# ---- plots -----------------------------------------------------------------------------------


def _epochs(run, key):
    recs = [
        r for r in ckpt.read_jsonl(os.path.join(run["dir"], "metrics.jsonl")) if r.get("summary") and key in r
    ]
    return [r["epoch"] + 1 for r in recs], [r[key] for r in recs]


def make_plots(found: dict, tables: list[tuple[dict, dict]], out: str) -> list[tuple[str, str]]:
    """Write the PNGs into `out`; returns [(file name, caption)] for those written."""
    from .plots import figure

    made = []
    pre = found["pretrain"]
    if pre:
        series = [
            {"label": r["name"], "x": x, "y": y} for r in pre for x, y in [_epochs(r, "epoch_loss")] if x
        ]
        if series:
            figure(
                os.path.join(out, "pretrain_loss.png"),
                [
                    {
                        "title": "pretraining loss (epoch mean)",
                        "xlabel": "epoch",
                        "ylabel": "loss",
                        "series": series,
                    }
                ],
            )
            made.append(("pretrain_loss.png", "Pretraining loss per epoch."))
    knn = [
        {"label": r["name"], "x": x, "y": y}
        for r in pre + found["supervised"]
        for x, y in [_epochs(r, "val_knn_top1")]
        if x
    ]
    if knn:
        figure(
            os.path.join(out, "knn_curves.png"),
            [
                {
                    "title": "kNN monitor during training",
                    "xlabel": "epoch",
                    "ylabel": "kNN top-1 (%)",
                    "series": knn,
                }
            ],
        )
        made.append(
            (
                "knn_curves.png",
                "kNN top-1 of the training runs' monitor (on a validation split held out of the training images).",
            )
        )
    lin = []
    for r in found["linear"]:
        final = [
            m for m in ckpt.read_jsonl(os.path.join(r["dir"], "metrics.jsonl")) if m.get("phase") == "final"
        ]
        if final:
            colour = f"C{len(lin) // 2 % 10}"
            lin.append(
                {
                    "label": r["name"],
                    "x": [m["epoch"] + 1 for m in final],
                    "y": [m["test_top1"] for m in final],
                    "style": colour + "-",
                }
            )
            lin.append(
                {
                    "label": None,
                    "x": [m["epoch"] + 1 for m in final],
                    "y": [m["train_top1"] for m in final],
                    "style": colour + ":",
                    "alpha": 0.6,
                }
            )
    if lin:
        figure(
            os.path.join(out, "linear_curves.png"),
            [
                {
                    "title": "linear classifier (final run): test solid, train dotted",
                    "xlabel": "epoch",
                    "ylabel": "top-1 (%)",
                    "series": lin,
                }
            ],
        )
        made.append(
            (
                "linear_curves.png",
                "Linear classifiers on frozen features: test top-1 (solid) and running train top-1 (dotted) per epoch.",
            )
        )
    sup = found["supervised"]
    if sup:
        loss = [{"label": r["name"], "x": x, "y": y} for r in sup for x, y in [_epochs(r, "epoch_loss")] if x]
        acc = [{"label": r["name"], "x": x, "y": y} for r in sup for x, y in [_epochs(r, "epoch_acc")] if x]
        figure(
            os.path.join(out, "supervised_curves.png"),
            [
                {
                    "title": "supervised from scratch: loss",
                    "xlabel": "epoch",
                    "ylabel": "cross-entropy",
                    "series": loss,
                },
                {
                    "title": "supervised from scratch: train accuracy",
                    "xlabel": "epoch",
                    "ylabel": "top-1 (%)",
                    "series": [{**s, "y": [100 * v for v in s["y"]]} for s in acc],
                },
            ],
        )
        made.append(
            (
                "supervised_curves.png",
                "Supervised training from scratch: loss and running train accuracy per epoch.",
            )
        )
    size_series = []
    for exp, t in tables:
        if not ({"data_fraction", "subset"} & set(t["keys"])):
            continue
        others = [k for k in t["keys"] if k not in ("data_fraction", "subset")]
        curves = {}
        for r in t["raw"]:
            curves.setdefault(tuple(r.get(k) for k in others), []).append(r)
        for key, rs in curves.items():
            label = ", ".join(f"{k}={v}" for k, v in zip(others, key))
            for metric, style in [("linear_top1", "o-"), ("knn_top1", "s--")]:
                pts = {}
                for r in rs:
                    if _num(r.get(metric)) is not None and _num(r.get("pretrain_images")):
                        pts.setdefault(int(float(r["pretrain_images"])), []).append(_num(r[metric]))
                if pts:
                    xs = sorted(pts)
                    mean = [sum(pts[x]) / len(pts[x]) for x in xs]
                    std = [
                        (sum((v - m) ** 2 for v in pts[x]) / (len(pts[x]) - 1)) ** 0.5
                        if len(pts[x]) > 1
                        else 0.0
                        for x, m in zip(xs, mean)
                    ]
                    size_series.append(
                        {
                            "label": f"{METRIC_NAMES[metric]} {label}".strip(),
                            "x": xs,
                            "y": mean,
                            "err": std,
                            "style": style,
                        }
                    )
    if size_series:
        figure(
            os.path.join(out, "data_size.png"),
            [
                {
                    "title": "accuracy vs pretraining data size",
                    "xlabel": "pretraining images",
                    "ylabel": "top-1 (%)",
                    "series": size_series,
                    "logx": True,
                }
            ],
        )
        made.append(
            (
                "data_size.png",
                "Linear-probe and kNN top-1 against the number of pretraining images (mean ± std over seeds).",
            )
        )
    return made


# ---- rendering -------------------------------------------------------------------------------


def build(found: dict, cfg: ReportConfig, out: str) -> list[tuple]:
    """The report as blocks: ("h1"|"h2"|"p", text), ("table", columns, headers, rows), ("img", file, caption)."""
    blocks = [("h1", cfg.title)]
    labels = {r["summary"]["data"]["label"] for k in ("linear", "supervised") for r in found[k]}
    labels |= {
        row.get("eval_dataset") for e in found["experiment"] for row in e["rows"] if row.get("eval_dataset")
    }
    if any("JPEG-recompressed" in (lbl or "") for lbl in labels):
        blocks.append(
            (
                "p",
                "CIFAR-100 (JPEG-recompressed copy): the same images, labels and order as CIFAR-100, "
                "but decoded from a JPEG copy (mean absolute pixel error about 6/255). Accuracies on it are "
                "close to, but not, official CIFAR-100 numbers.",
            )
        )
    main = main_rows(found)
    if main:
        blocks.append(("h2", "Main comparison"))
        blocks.append(
            (
                "p",
                "Test-set accuracy (%). Linear probe: frozen backbone, features extracted once, "
                "learning rate and weight decay chosen on a stratified 10% validation split, retrained on the full "
                'training set, test scored once ("test part of A/B/C": a train/val/test split of the pooled '
                "images, tuned on its validation part, refit on train + validation). kNN: weighted 200-NN on "
                "the same features. Mean ± std over repeats (seeds); n = repeats.",
            )
        )
        blocks.append(
            (
                "table",
                ["backbone", "protocol", "data", "top1", "top5", "knn_top1", "n"],
                {"data": "evaluated on", "top1": "top-1", "top5": "top-5", "knn_top1": "kNN top-1"},
                main,
            )
        )
    tables = []
    for i, exp in enumerate(found["experiment"]):
        if families.is_families(exp):
            blocks += families.blocks(found, {**exp, "index": i}, out)
        for t in experiment_tables(exp):
            tables.append((exp, t))
            what = " × ".join(t["keys"]) or "base settings"
            kind = "Pretraining data size" if {"data_fraction", "subset"} & set(t["keys"]) else "Sweep"
            blocks.append(("h2", f"{kind}: {what} ({exp['name']})"))
            blocks.append(
                (
                    "p",
                    f"Linear probe and kNN on {t['eval'] or '-'}; monitor kNN = the pretraining run's final "
                    "kNN on the evaluated test set (the official test split, or the split's test part). Mean ± std over seeds; n = seeds.",
                )
            )
            blocks.append(("table", [*t["keys"], "n", *t["metrics"]], METRIC_NAMES, t["rows"]))
    plots = make_plots(found, tables, out)
    if plots:
        blocks.append(("h2", "Curves"))
        for name, caption in plots:
            blocks.append(("img", name, caption))
    runs = run_rows(found)
    if runs:
        blocks.append(("h2", "Runs"))
        cols = ["run", "backbone", "seed", "data", "top1", "top5", "lr, wd", "val top-1", "time (s)"]
        blocks.append(("table", cols, {"top1": "top-1", "top5": "top-5"}, runs))
    return blocks


def _cell(v) -> str:
    if v is None or v == "":
        return "-"
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def to_markdown(blocks) -> str:
    out = []
    for b in blocks:
        if b[0] == "h1":
            out.append(f"# {b[1]}\n")
        elif b[0] == "h2":
            out.append(f"## {b[1]}\n")
        elif b[0] == "p":
            out.append(b[1] + "\n")
        elif b[0] == "table":
            _, cols, headers, rows = b
            out.append("| " + " | ".join(headers.get(c, c) for c in cols) + " |")
            out.append("|" + "---|" * len(cols))
            out += ["| " + " | ".join(_cell(r.get(c)).replace("|", "\\|") for c in cols) + " |" for r in rows]
            out.append("")
        elif b[0] == "img":
            out.append(f"![{b[2]}]({b[1]})\n\n{b[2]}\n")
    return "\n".join(out)


def to_html(blocks, out_dir: str, title: str) -> str:
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}"
        "th{background:#f4f4f4}img{max-width:100%}</style></head><body>"
    ]
    for b in blocks:
        if b[0] in ("h1", "h2"):
            parts.append(f"<{b[0]}>{html.escape(b[1])}</{b[0]}>")
        elif b[0] == "p":
            parts.append(f"<p>{html.escape(b[1])}</p>")
        elif b[0] == "table":
            _, cols, headers, rows = b
            parts.append(
                "<table><tr>" + "".join(f"<th>{html.escape(headers.get(c, c))}</th>" for c in cols) + "</tr>"
            )
            parts += [
                "<tr>" + "".join(f"<td>{html.escape(_cell(r.get(c)))}</td>" for c in cols) + "</tr>"
                for r in rows
            ]
            parts.append("</table>")
        elif b[0] == "img":
            with open(os.path.join(out_dir, b[1]), "rb") as f:
                data = base64.b64encode(f.read()).decode()
            parts.append(
                f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(b[2])}'>"
                f"<figcaption>{html.escape(b[2])}</figcaption></figure>"
            )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(cfg: ReportConfig) -> dict:
    """Render into a staging directory, then move it to --out: a failure leaves --out untouched."""
    out = cfg.out.rstrip("/") or cfg.out
    if os.path.exists(out) and (not os.path.isdir(out) or any(os.scandir(out))) and not cfg.overwrite:
        raise ConfigError(f"--out {out} already exists; pass --overwrite to replace it")
    paths = [p for p in cfg.runs.split(",") if p]
    found = discover(paths)
    stage = f"{out}.tmp-{os.getpid()}"
    os.makedirs(stage)
    try:
        blocks = build(found, cfg, stage)
        ckpt.atomic_write_text(os.path.join(stage, "report.md"), to_markdown(blocks))
        if cfg.html:
            ckpt.atomic_write_text(os.path.join(stage, "report.html"), to_html(blocks, stage, cfg.title))
        if os.path.exists(out):
            shutil.rmtree(out) if os.path.isdir(out) else os.remove(out)
        os.replace(stage, out)
    finally:
        if os.path.isdir(stage):
            shutil.rmtree(stage)
    return {k: len(v) for k, v in found.items()}


@cli
def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    positional = []
    while argv and not argv[0].startswith("-"):
        positional.append(argv.pop(0))
    if positional:
        argv = ["--runs", ",".join(positional), *argv]
    cfg = parse(ReportConfig, argv, description=__doc__)
    counts = write_report(cfg)
    print(
        f"report: {os.path.join(cfg.out, 'report.md')}  ("
        + ", ".join(f"{v} {k}" for k, v in counts.items())
        + " runs)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
