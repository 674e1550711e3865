"""Per-pipeline statistics of SimCLR views: does `--pipeline` change the science?

    python -m benchmarks.recipe_stats --data-dir .cache/data --out benchmarks/results/cpu-2026-12-02
    python -m benchmarks.recipe_stats --data-dir .cache/data --pipelines gpu,torchvision --n 1000 --out /tmp/r

Each pipeline makes the two SimCLR views of the first `--n` CIFAR-10 training images (each image
labelled with its index, so a view names its source) under two seeds; every view is reduced to the
statistics of tests/pipelines/view_stats.py (the parity test's own code). Two tables: a summary of
each statistic per pipeline, and the two-sample KS distance of each pipeline to torchvision (worst
of the four seed pairings) against the calibrated bound (BOUND_FACTOR x the largest distance between
two seeds of the same pipeline). The last rows are deliberately wrong recipes on the gpu pipeline
(jitter applied with p = 0.6, no hue), showing the distances a real difference produces.
Writes recipe_stats.md in --out, with the command and environment at the top.
"""

import os
import sys
from dataclasses import dataclass, field

import numpy as np
import torch

import pipelines
from fastssl.config import cli, parse
from pipelines import datasets, recipes
from pipelines.recipes import SimCLRRecipe

from . import common
from .view_stats import STATS, compare, indexed, loader_statistics

STEM = "recipe_stats"
BOUND_FACTOR = 2.0  # as tests/pipelines/loaders/test_recipe_parity.py
WRONG = {"gpu, jitter_p=0.6": dict(jitter_p=0.6), "gpu, no hue": dict(jitter=(0.4, 0.4, 0.4, 0.0))}
KWARGS = {
    "torchvision": dict(workers=0),
    "gpu": {},
    "dali": dict(workers=2, ahead=False),
    "ffcv": dict(workers=2),
}


@dataclass
class RecipeStatsConfig:
    data_dir: str | None = field(default=None, metadata={"help": "CIFAR-10 root (else $FASTSSL_DATA)"})
    n: int = field(default=4000, metadata={"help": "images (two views each, per seed)"})
    pipelines: str = field(
        default="torchvision,gpu,dali,ffcv",
        metadata={"help": "comma-separated; torchvision is the reference and always runs"},
    )
    seeds: str = field(default="0,1", metadata={"help": "the two seeds of every pipeline"})
    batch_size: int = field(default=500, metadata={"help": "loader batch size"})
    wrong: bool = field(default=True, metadata={"help": "add the deliberately wrong recipes as rows"})
    out: str | None = field(
        default=None, metadata={"help": "output directory (default benchmarks/results/cpu-<date>)"}
    )
    overwrite: bool = field(default=False, metadata={"help": "replace a recipe_stats.md already in --out"})

    def __post_init__(self):
        names = [p.strip() for p in self.pipelines.split(",") if p.strip()]
        unknown = set(names) - set(pipelines.PIPELINES)
        if unknown:
            raise ValueError(
                f"--pipelines: unknown {', '.join(sorted(unknown))}; choose from {', '.join(pipelines.PIPELINES)}"
            )
        self.pipelines = ",".join(["torchvision"] + [p for p in names if p != "torchvision"])
        try:
            seeds = [int(s) for s in self.seeds.split(",")]
        except ValueError:
            seeds = []
        if len(seeds) != 2 or seeds[0] == seeds[1]:
            raise ValueError(f"--seeds takes two different integers, got {self.seeds!r}")
        if self.n < self.batch_size or self.batch_size < 1:
            raise ValueError(f"need 1 <= --batch-size <= --n, got {self.batch_size} and {self.n}")


def run(data, name, seed, spec, cfg, cache):
    kwargs = dict(KWARGS[name], **({"cache_dir": cache} if name in ("dali", "ffcv") else {}))
    loader = pipelines.build(name, data, batch_size=cfg.batch_size, seed=seed, spec=spec, **kwargs)
    return loader_statistics(loader, data)


@cli
def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = parse(RecipeStatsConfig, argv, description=__doc__)
    out = cfg.out or common.default_out(STEM, torch.device("cpu"), False)  # the loaders run on the CPU
    (path,) = common.check_out(out, [f"{STEM}.md"], cfg.overwrite)
    env = common.environment("benchmarks.recipe_stats", argv)
    data = indexed(datasets.load("cifar10", "train", data_dir=cfg.data_dir), cfg.n)
    seeds = [int(s) for s in cfg.seeds.split(",")]
    cache = os.path.join(os.path.expanduser("~"), ".cache", "fastssl", "recipe_stats")
    rows = {p: (recipes.name(p, "simclr"), SimCLRRecipe()) for p in cfg.pipelines.split(",")}
    if cfg.wrong:
        rows.update({k: ("(wrong on purpose)", SimCLRRecipe(**v)) for k, v in WRONG.items()})
    stats = {}
    for label, (_, spec) in rows.items():
        backend = label.split(",")[0]
        stats[label] = [run(data, backend, s, spec, cfg, cache) for s in seeds]
        print(f"{label}: done", file=sys.stderr, flush=True)

    def summary(values, k):  # gray: the fraction; hue: the spread jitter gives it; else the median
        if k == "gray":
            return np.mean(values)
        if k == "hue":
            return np.subtract(*np.percentile(values, [75, 25]))
        return np.median(values)

    means = [
        [label, rows[label][0]] + [f"{summary(stats[label][0][k], k):.4f}" for k in STATS] for label in rows
    ]
    dist = []
    for label in rows:
        r = compare(stats[label], stats["torchvision"], BOUND_FACTOR)
        verdict = "same" if max(r["worst"].values()) <= r["bound"] else "differs"
        dist.append(
            [label]
            + [f"{r['worst'][k]:.3f}" for k in STATS]
            + [f"{r['null']:.3f}", f"{r['bound']:.3f}", verdict]
        )
    text = (
        f"# SimCLR view statistics per pipeline\n\n    {env['command']}\n\n"
        f"commit {env['git_commit']}{' (dirty)' if env['git_dirty'] else ''}, {env['date']}; {env['cpu']}, "
        f"torch {env['torch']}, torchvision {env['torchvision']}, DALI {env['dali']}, FFCV {env['ffcv']}.\n"
        f"{cfg.n} CIFAR-10 training images, two views each, seeds {seeds[0]} and {seeds[1]}; statistics as in "
        "tests/pipelines/view_stats.py (brightness, contrast, saturation: log ratio of the view's to its source "
        "image's; gray: fraction of exactly grey views; hue: turn of the mean chroma, radians; kernel: "
        "neighbour / two-apart squared differences of the grey level).\n\n"
        f"## Each statistic per pipeline (seed {seeds[0]}): median; gray: fraction; hue: interquartile range\n\n"
        + common.markdown_table(["pipeline", "recipe"] + list(STATS), means)
        + "\n## KS distance to torchvision (worst of the four seed pairings)\n\n"
        + f"bound = {BOUND_FACTOR:g} x null, null = the largest distance between the two seeds of one pipeline "
        "(this row's or torchvision's).\n\n"
        + common.markdown_table(["pipeline"] + list(STATS) + ["null", "bound", "verdict"], dist)
    )
    common.write_text(path, text)
    common.print_table(text)


if __name__ == "__main__":
    main()
