"""The race's numbers: per-run measures, their mean and spread over seeds, ratios to fastssl, the
markdown table and the PNG (images/s bars; kNN top-1 against training seconds).

Every ratio is computed from the same measured quantities as the rows it compares: training images
per second over whole epochs after the first (the first epoch, with start-up and compilation, is
reported apart), paired by seed.
"""

import statistics

from .. import common


def run_measures(run: dict, score: dict) -> dict:
    """One run's measures from its epoch records and its kNN score."""
    epochs = run["epochs"]
    steady = epochs[1:] or epochs
    seconds = sum(e["time_s"] for e in steady)
    curve = []
    times = [e["time_s"] for e in epochs]
    for point in score["curve"]:  # training seconds when the snapshot was taken (evaluation excluded)
        curve.append({"train_s": sum(times[: point["epoch"]]), "top1": point["top1"], "top5": point["top5"]})
    return {
        "entrant": run["entrant"],
        "seed": run["seed"],
        "img_per_s": sum(e["images"] for e in steady) / seconds,
        "first_epoch_img_per_s": epochs[0]["images"] / epochs[0]["time_s"],
        "data_wait_share": sum(e["data_wait_s"] for e in steady) / seconds,
        "train_s": sum(times),
        "peak_rss_mib": run["peak_rss_tree_mib"],
        "peak_cuda_mib": run["peak_cuda_mib"],
        "final_loss": epochs[-1]["loss"],
        "losses": [e["loss"] for e in epochs],
        "knn_top1": score["final"]["top1"],
        "knn_top5": score["final"]["top5"],
        "curve": curve,
    }


def spread(values) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "n": len(values),
        "values": values,
    }


KEYS = (
    "img_per_s",
    "first_epoch_img_per_s",
    "data_wait_share",
    "train_s",
    "peak_rss_mib",
    "peak_cuda_mib",
    "final_loss",
    "knn_top1",
    "knn_top5",
)


def summarize_runs(runs: list, scores: dict, entrants: list) -> dict:
    rows = [run_measures(r, s) for r, s in zip(runs, scores["runs"])]
    reference = "fastssl" if "fastssl" in entrants else entrants[0]
    by = {e: {r["seed"]: r for r in rows if r["entrant"] == e} for e in entrants}
    out = {}
    for e in entrants:
        stats = {k: spread([r[k] for r in by[e].values()]) for k in KEYS}
        seeds = [s for s in by[e] if s in by[reference]]
        # paired by seed: reference images/s over this entrant's, and this entrant's kNN minus the reference's
        stats["speedup_of_reference"] = spread(
            [by[reference][s]["img_per_s"] / by[e][s]["img_per_s"] for s in seeds]
        )
        stats["knn_top1_minus_reference"] = spread(
            [by[e][s]["knn_top1"] - by[reference][s]["knn_top1"] for s in seeds]
        )
        out[e] = stats
    untrained = spread([u["top1"] for u in scores["untrained"]])
    return {
        "reference": reference,
        "entrants": out,
        "untrained_top1": untrained,
        "rows": [{k: v for k, v in r.items() if k not in ("curve", "losses")} for r in rows],
        "measures": rows,
    }


def _pm(s, spec=".1f") -> str:
    if s is None:
        return "n/a"
    return format(s["mean"], spec) if s["n"] == 1 else f"{format(s['mean'], spec)} ± {format(s['sd'], spec)}"


def table(result: dict) -> str:
    summary, ref = result["summary"], result["summary"]["reference"]
    n = len(result["seeds"])
    header = [
        "entrant",
        "train img/s",
        "1st epoch img/s",
        "data wait",
        "peak RSS MiB",
        "final loss",
        "kNN top-1 %",
        "kNN top-5 %",
        f"{ref} speed-up ×",
        f"Δ top-1 vs {ref} (pp)",
    ]
    rows = []
    for e, s in summary["entrants"].items():
        wait = s["data_wait_share"]
        rows.append(
            [
                f"`{e}`",
                _pm(s["img_per_s"], ".1f"),
                _pm(s["first_epoch_img_per_s"], ".1f"),
                f"{100 * wait['mean']:.0f}%",
                _pm(s["peak_rss_mib"], ".0f"),
                _pm(s["final_loss"], ".3f"),
                _pm(s["knn_top1"], ".2f"),
                _pm(s["knn_top5"], ".2f"),
                "—" if e == ref else _pm(s["speedup_of_reference"], ".2f"),
                "—" if e == ref else _pm(s["knn_top1_minus_reference"], ".2f"),
            ]
        )
    if summary["untrained_top1"] is not None:
        rows.append(
            ["untrained network", "", "", "", "", "", _pm(summary["untrained_top1"], ".2f"), "", "", ""]
        )
    cfg = result["config"]
    text = (
        f"SimCLR, {cfg['dataset']} ({cfg['subset'] or 'all'} training images), ResNet-18 {cfg['stem']} stem, "
        f"batch {cfg['batch_size']}, {cfg['epochs']} epochs, lr {cfg['lr']} × batch/256 with "
        f"{cfg['warmup_epochs']} warm-up epoch(s) then cosine, temperature {cfg['temperature']}, projection "
        f"{cfg['proj_hidden_dim']} → {cfg['proj_dim']}; {n} seed(s) ({', '.join(map(str, result['seeds']))}), "
        f"mean ± sd. Images/s: whole epochs after the first. kNN: k {cfg['knn_k']}, T {cfg['knn_t']}, "
        f"bank = the training images, queries = the whole test split.\n\n"
    )
    text += common.markdown_table(header, rows)
    text += "\nRecipe differences from fastssl that remain:\n"
    for e, diffs in result["differences"].items():
        for d in diffs:
            text += f"- `{e}`: {d}\n"
    return text


def chart(path: str, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = result["summary"]
    names = list(summary["entrants"])
    fig, (bars, curves) = plt.subplots(1, 2, figsize=(11, 4.2))
    speed = [summary["entrants"][e]["img_per_s"] for e in names]
    bars.bar(range(len(names)), [s["mean"] for s in speed], yerr=[s["sd"] for s in speed], capsize=3)
    bars.set_xticks(range(len(names)))
    bars.set_xticklabels(names, rotation=20, ha="right", fontsize=8)
    bars.set_ylabel("training images/s (whole epochs after the first)")
    bars.grid(axis="y", alpha=0.3)
    for i, e in enumerate(names):
        for m in (m for m in summary["measures"] if m["entrant"] == e):
            xs = [0.0] + [p["train_s"] for p in m["curve"]]
            ys = [None] + [p["top1"] for p in m["curve"]]
            curves.plot(
                xs[1:],
                ys[1:],
                marker="o",
                color=f"C{i}",
                alpha=0.8,
                label=e if m["seed"] == result["seeds"][0] else None,
            )
    if summary["untrained_top1"] is not None:
        curves.axhline(summary["untrained_top1"]["mean"], color="grey", ls="--", lw=1, label="untrained")
    curves.set_xlabel("training seconds (evaluation excluded)")
    curves.set_ylabel("kNN top-1 % (test split)")
    curves.legend(fontsize=8)
    curves.grid(alpha=0.3)
    env = result["environment"]
    fig.suptitle(f"SimCLR race on {env['gpu'] or env['cpu']}", fontsize=10)
    fig.tight_layout()
    common._atomic(path, lambda f: fig.savefig(f, format="png", dpi=120), mode="wb")
    plt.close(fig)
