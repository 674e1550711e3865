"""A declared grid of pretraining runs, each probed: `python -m fastssl.experiment FILE.toml`.

    python -m fastssl.experiment experiments/example.toml                 # run (or continue) every cell
    python -m fastssl.experiment experiments/example.toml --dry-run       # list cells and their state
    python -m fastssl.experiment experiments/cpu_smoke.toml --device cpu  # a tiny grid on a CPU
    python -m fastssl.experiment experiments/example.toml --only temperature-0.5

Each cell = one point of the grid x one seed: pretrain (fastssl.train.train) -> linear probe and
kNN on the frozen backbone (fastssl.linear). Cells live in OUT/cells/NAME/{pretrain,linear}/;
after every cell OUT/results.csv (one row per cell) and OUT/results.md (mean ± std over seeds)
are rewritten. Re-running the same command continues: finished steps (summary.json present) are
skipped, an interrupted pretraining resumes from its last.pt. The TOML schema is in
docs/evaluation.md; experiments/example.toml shows every feature.
"""

import csv
import io
import itertools
import json
import os
import statistics
import sys
from dataclasses import asdict, dataclass, field

from pipelines.data import splits

from .. import checkpoint as ckpt
from ..config import ConfigError, cli, load_toml, parse

TOP_KEYS = {"out", "seeds", "pretrain", "grid", "linear", "description"}
RESULT_COLUMNS = [
    "pretrain_images",
    "final_loss",
    "monitor_knn_top1",
    "pretrain_time_s",
    "img_per_s",
    "linear_top1",
    "linear_top5",
    "knn_top1",
    "knn_top5",
    "lr",
    "weight_decay",
]


@dataclass
class ExperimentConfig:
    plan: str = field(
        default="", metadata={"help": "the experiment TOML file (also accepted as the first argument)"}
    )
    device: str | None = field(default=None, metadata={"help": "device for every cell (overrides the file)"})
    compile: bool | None = field(
        default=None, metadata={"help": "torch.compile pretraining (overrides the file)"}
    )
    progress: bool = field(default=True, metadata={"help": "show progress bars"})
    only: str | None = field(default=None, metadata={"help": "run only cells whose name contains this text"})
    dry_run: bool = field(default=False, metadata={"help": "list the cells and their state, run nothing"})

    def __post_init__(self):
        if not self.plan:
            raise ValueError("give the experiment file: python -m fastssl.experiment FILE.toml")


@dataclass
class Cell:
    name: str  # directory name, from the grid values and the seed
    values: dict  # the grid values that define it (plus "seed")
    pretrain: dict  # PretrainConfig fields
    linear: dict | None  # LinearConfig fields, None = no probe


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)  # names and messages, not configs


def _name(values: dict) -> str:
    """Cell directory name from its grid values and seed ("80/10/10" -> "80-10-10": one path component)."""
    return "_".join(f"{k}-{_fmt(v)}" for k, v in values.items()).replace("/", "-")


def _argv(values: dict) -> list[str]:
    """Config dict -> command-line flags (so runs record a replayable command)."""
    out = []
    for k, v in values.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            out.append(flag if v else "--no-" + k.replace("_", "-"))
        elif v is not None:
            out += [flag, str(v)]  # str(float) round-trips exactly
    return out


_sizes = {}


def _train_size(dataset: str, data_dir, split=splits.OFFICIAL, split_seed=0) -> int:
    """Images pretraining draws from: the training split, or the train part of a train/val/test split."""
    from ..data import load_data

    key = (dataset, data_dir, split, split_seed)
    if key not in _sizes:
        _sizes[key] = len(load_data(dataset, data_dir, split, split_seed, test="skip").train)
    return _sizes[key]


def load_plan(path: str) -> tuple[dict, list[Cell]]:
    """Read and check an experiment file; returns (plan, cells), every cell's configs validated."""
    from ..pretrain import PretrainConfig
    from .linear import LinearConfig
    from .setup import splits_conflict

    plan = load_toml(path)
    unknown = set(plan) - TOP_KEYS
    if unknown:
        raise ConfigError(
            f"{path}: unknown key(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(TOP_KEYS))}"
        )
    if "out" not in plan:
        raise ConfigError(f"{path}: 'out' (the experiment directory) is required")
    seeds = plan.get("seeds", [0])
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    ):
        raise ConfigError(f"{path}: 'seeds' must be a non-empty list of integers")
    grids = plan.get("grid", [{}])
    grids = [grids] if isinstance(grids, dict) else grids
    base, linear = dict(plan.get("pretrain", {})), plan.get("linear")
    for name, table in [("pretrain", base), ("linear", linear or {})] + [("grid", g) for g in grids]:
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [{name}] must be a table")
    reserved = {"out", "seed", "resume", "overwrite"}
    for k in reserved & set(base):
        raise ConfigError(f"{path}: [pretrain] key {k!r} is set by the runner (seeds go in 'seeds')")
    for k in {"backbone", "out", "seed"} & set(linear or {}):
        raise ConfigError(f"{path}: [linear] key {k!r} is set by the runner")
    cells, seen = [], set()
    for g in grids:
        for key, vals in g.items():
            if not isinstance(vals, list) or not vals:
                raise ConfigError(f"{path}: grid key {key!r} must be a non-empty list")
            if key in reserved:
                raise ConfigError(f"{path}: grid key {key!r} is not allowed (seeds go in 'seeds')")
        keys = list(g)
        for combo in itertools.product(*(g[k] for k in keys)):
            point = dict(zip(keys, combo))
            for seed in seeds:
                cfg = {**base, **point, "seed": seed}
                frac = cfg.pop("data_fraction", None)
                if frac is not None:
                    if not (isinstance(frac, (int, float)) and 0 < frac <= 1):
                        raise ConfigError(f"{path}: data_fraction must be in (0, 1], got {frac!r}")
                    # A fraction of the pool [pretrain] draws from: its subset if it sets one, else the whole split.
                    pool = cfg.get("subset") or _train_size(
                        cfg.get("dataset", "cifar10"),
                        cfg.get("data_dir"),
                        cfg.get("split", splits.OFFICIAL),
                        cfg.get("split_seed", 0),
                    )
                    cfg["subset"] = cfg.get("subset") if frac == 1 else max(1, round(frac * pool))
                name = _name({**point, "seed": seed})
                if name in seen:
                    continue
                seen.add(name)
                cell_dir = os.path.join(plan["out"], "cells", name)
                pretrain = {**cfg, "out": os.path.join(cell_dir, "pretrain")}
                lin = (
                    None
                    if linear is None
                    else {
                        **linear,
                        "backbone": pretrain["out"],
                        "seed": seed,
                        "out": os.path.join(cell_dir, "linear"),
                    }
                )
                if lin is not None and lin.get("dataset", "cifar100") == cfg.get("dataset", "cifar10"):
                    # probed on the pretraining dataset: its split, unless [linear] sets one (then checked)
                    for k in ("split", "split_seed"):
                        if k in cfg:
                            lin.setdefault(k, cfg[k])
                # Validate now, before any cell runs: a typo must not surface after hours of training.
                pre_cfg = parse(PretrainConfig, _argv(pretrain))
                if lin is not None:
                    lin_cfg = parse(LinearConfig, _argv(lin))
                    if splits_conflict(
                        pre_cfg.dataset,
                        pre_cfg.split,
                        pre_cfg.split_seed,
                        lin_cfg.dataset,
                        lin_cfg.split,
                        lin_cfg.split_seed,
                    ):
                        raise ConfigError(
                            f"{path}: cell {name} pretrains on {pre_cfg.dataset} --split {pre_cfg.split} "
                            f"but probes {lin_cfg.dataset} --split {lin_cfg.split}: the probe would test "
                            "pretraining images; give [linear] the same split and split_seed"
                        )
                cells.append(Cell(name, {**point, "seed": seed}, pretrain, lin))
    return plan, cells


def _summary(run_dir: str) -> dict | None:
    p = os.path.join(run_dir, "summary.json")
    if not os.path.isfile(p):
        return None
    with open(p) as f:
        return json.load(f)


def _check_unchanged(run_dir: str, cls, values: dict) -> None:
    """A cell directory must hold the run this plan describes: an edited plan must not silently
    reuse (or resume) results computed with other settings."""
    from ..train import RESUMABLE_CHANGES

    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        return
    with open(path) as f:
        saved = json.load(f)["config"]
    want = asdict(parse(cls, _argv(values)))
    ignore = RESUMABLE_CHANGES | {"progress", "overwrite", "resume"}
    defaults = asdict(parse(cls, _argv({k: values[k] for k in ("backbone",) if k in values})))
    # a key the saved run lacks was added since: it ran with that key's default
    changed = [k for k, v in want.items() if k not in ignore and saved.get(k, defaults[k]) != v]
    if changed:
        raise ConfigError(
            f"{run_dir} was run with other settings ({', '.join(changed)}); "
            "restore the plan or give the experiment a new 'out'"
        )


def state(cell: Cell) -> str:
    """What running `cell` would do now: new, resume, probe or done."""
    from ..pretrain import PretrainConfig
    from .linear import LinearConfig

    pre = cell.pretrain["out"]
    _check_unchanged(pre, PretrainConfig, cell.pretrain)
    if cell.linear is not None:
        _check_unchanged(cell.linear["out"], LinearConfig, cell.linear)
    if _summary(pre) is None:
        if os.path.isfile(os.path.join(pre, "last.pt")):
            return f"resume pretraining (after epoch {ckpt.load(os.path.join(pre, 'last.pt'))['epoch'] + 1})"
        return "new"
    if cell.linear is not None and _summary(cell.linear["out"]) is None:
        return "probe"
    return "done"


def run_cell(cell: Cell, overrides: dict) -> None:
    """Pretrain (resuming if interrupted) then probe; steps with a summary.json are skipped."""
    from ..pretrain import PretrainConfig
    from ..train import train
    from .linear import LinearConfig, evaluate

    pre = cell.pretrain["out"]
    if _summary(pre) is None:
        argv = _argv({**cell.pretrain, **overrides})
        if os.path.isfile(os.path.join(pre, "last.pt")):
            argv.append("--resume")
        elif os.path.isdir(pre):
            argv.append("--overwrite")  # started, but died before its first checkpoint: nothing to keep
        train(parse(PretrainConfig, argv), argv, command="fastssl.pretrain")
    if cell.linear is not None and _summary(cell.linear["out"]) is None:
        lin = {**cell.linear, **{k: v for k, v in overrides.items() if k != "compile"}}
        argv = _argv(lin) + (["--overwrite"] if os.path.isdir(lin["out"]) else [])  # a probe died mid-write
        evaluate(parse(LinearConfig, argv), argv)


def result_row(cell: Cell) -> dict:
    pre = _summary(cell.pretrain["out"]) or {}
    lin = (_summary(cell.linear["out"]) if cell.linear else None) or {}
    cfg = {}
    cfg_path = os.path.join(cell.pretrain["out"], "config.json")
    if os.path.isfile(cfg_path):
        with open(cfg_path) as f:
            cfg = json.load(f)
    return {
        "cell": cell.name,
        **cell.values,
        "pretrain_images": cfg.get("train_images"),
        "final_loss": pre.get("final_loss"),
        "monitor_knn_top1": pre.get("knn_top1"),
        "pretrain_time_s": pre.get("wall_time_s"),
        "img_per_s": pre.get("img_per_s"),
        "linear_top1": lin.get("test_top1"),
        "linear_top5": lin.get("test_top5"),
        "knn_top1": lin.get("knn_top1"),
        "knn_top5": lin.get("knn_top5"),
        "lr": lin.get("lr"),
        "weight_decay": lin.get("weight_decay"),
        "eval_dataset": eval_label(lin.get("data") or {}),
    }


def eval_label(data: dict) -> str | None:
    """What a probe was scored on: the dataset label, and the split's test part when not the official one."""
    label, split = data.get("label"), data.get("split", splits.OFFICIAL)
    return label if label is None or split == splits.OFFICIAL else f"{label}, test part of {split}"


def mean_std(values) -> str:
    vals = [float(v) for v in values if v not in (None, "")]
    if not vals:
        return "-"
    if len(vals) == 1:
        return f"{vals[0]:.2f}"
    return f"{statistics.mean(vals):.2f} ± {statistics.stdev(vals):.2f}"


def aggregate(rows: list[dict], keys: list[str], metrics: list[str]) -> list[dict]:
    """Rows grouped by `keys` (in first-seen order): each metric as 'mean ± std' over the group
    (sample std over seeds), plus n."""
    groups = {}
    for r in rows:
        groups.setdefault(tuple(str(r.get(k)) for k in keys), []).append(r)
    return [
        {**dict(zip(keys, key)), "n": len(rs), **{m: mean_std(r.get(m) for r in rs) for m in metrics}}
        for key, rs in groups.items()
    ]


def markdown_table(rows: list[dict], columns: list[str], headers: dict | None = None) -> str:
    headers = headers or {}
    lines = ["| " + " | ".join(headers.get(c, c) for c in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append(
            "| " + " | ".join("-" if r.get(c) in (None, "") else str(r.get(c)) for c in columns) + " |"
        )
    return "\n".join(lines) + "\n"


def write_results(plan: dict, cells: list[Cell]) -> list[dict]:
    rows = [result_row(c) for c in cells if _summary(c.pretrain["out"]) is not None]
    out = plan["out"]
    keys = list(dict.fromkeys(k for c in cells for k in c.values if k != "seed"))
    columns = ["cell", *keys, "seed", *RESULT_COLUMNS, "eval_dataset"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    ckpt.atomic_write_text(os.path.join(out, "results.csv"), buf.getvalue())
    metrics = ["linear_top1", "linear_top5", "knn_top1", "knn_top5", "monitor_knn_top1", "final_loss"]
    evals = ", ".join(dict.fromkeys(r["eval_dataset"] for r in rows if r.get("eval_dataset")))
    md = [
        f"# {plan.get('description', os.path.basename(os.path.normpath(out)))}\n",
        f"{len(rows)} of {len(cells)} cells finished. Mean ± std over seeds (sample std); n = seeds.",
        f"Linear probe and kNN on {evals}; monitor kNN = the training run's own kNN monitor.\n"
        if evals
        else "",
        markdown_table(
            aggregate(rows, keys, metrics),
            [*keys, "n", *metrics],
            {
                "linear_top1": "linear top-1",
                "linear_top5": "linear top-5",
                "knn_top1": "kNN top-1",
                "knn_top5": "kNN top-5",
                "monitor_knn_top1": "monitor kNN top-1",
                "final_loss": "final loss",
            },
        ),
    ]
    ckpt.atomic_write_text(os.path.join(out, "results.md"), "\n".join(md))
    return rows


@cli
def main(argv=None):
    from rich.console import Console

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-"):
        argv = ["--plan", argv[0], *argv[1:]]
    cfg = parse(ExperimentConfig, argv, description=__doc__)
    plan, cells = load_plan(cfg.plan)
    if cfg.only:
        cells_to_run = [c for c in cells if cfg.only in c.name]
    else:
        cells_to_run = cells
    console = Console()
    states = {c.name: state(c) for c in cells_to_run}
    console.print(f"[bold]{cfg.plan}[/]: {len(cells_to_run)} cell(s) -> {plan['out']}")
    for c in cells_to_run:
        console.print(f"  {c.name}: {states[c.name]}")
    if cfg.dry_run:
        return 0
    os.makedirs(plan["out"], exist_ok=True)
    with open(cfg.plan) as f:
        ckpt.atomic_write_text(os.path.join(plan["out"], "experiment.toml"), f.read())
    overrides = {
        k: v
        for k, v in {"device": cfg.device, "compile": cfg.compile, "progress": cfg.progress}.items()
        if v is not None
    }
    for i, c in enumerate(cells_to_run):
        if states[c.name] == "done":
            continue
        console.rule(f"cell {i + 1}/{len(cells_to_run)}: {c.name} ({states[c.name]})")
        run_cell(c, overrides)
        write_results(plan, cells)
        r = result_row(c)
        console.print(
            f"{c.name}: final loss {_fmt(r['final_loss'])}, linear top-1 {_fmt(r['linear_top1'])}, "
            f"kNN top-1 {_fmt(r['knn_top1'])} ({r['eval_dataset'] or 'no probe'})"
        )
    rows = write_results(plan, cells)
    console.print(f"{len(rows)} cell(s) finished; results: {os.path.join(plan['out'], 'results.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
