"""`python -m benchmarks.race`: fastssl against lightly and plain PyTorch, speed and accuracy in one run.

    python -m benchmarks.race --data-dir data --out benchmarks/results/cpu-2026-12-03/race
    python -m benchmarks.race --smoke --out /tmp/race                     # seconds, tiny data
    # an ablation: one recipe difference swapped at a time, same seeds
    python -m benchmarks.race --entrants fastssl,lightly,lightly:lars=fastssl,fastssl:proj_out_bn=true

Seeds run interleaved (seed 0 of every entrant, then seed 1, ...), each training in a process of its
own whose process tree is sampled for its memory peak; every final backbone (and snapshot) is then
scored by one kNN (fastssl.eval.knn: the same bank, test split, k and temperature for all).
"""

import dataclasses
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field

import psutil

from fastssl.config import ConfigError, cli, parse

from .. import common
from . import ENTRANTS
from .report import chart, summarize_runs, table
from .score import score_runs
from .spec import RaceSpec, device_of, parse_entrant

SMOKE = {
    "dataset": "cifar10-sample",
    "subset": 64,
    "epochs": 2,
    "batch_size": 16,
    "proj_hidden_dim": 64,
    "proj_dim": 16,
    "workers": 0,
    "snapshot_every": 1,
}


@dataclass
class RaceConfig(RaceSpec):
    # The entrants are the keys of ENTRANTS in benchmarks/race/__init__.py; each entrant's module lists its
    # KNOBS.
    entrants: str = field(
        default="fastssl,lightly,plain",
        metadata={"help": "comma-separated entrants, each NAME or NAME:knob=value,..."},
    )
    seeds: str = field(
        default="0,1,2",
        metadata={"help": "comma-separated seeds; accuracy is reported as mean and spread over them"},
    )
    out: str = field(default="runs/race", metadata={"help": "where race.{json,csv,md,png} go"})
    work: str | None = field(
        default=None, metadata={"help": "where the runs (backbones) go (default: OUT/runs)"}
    )
    overwrite: bool = field(default=False, metadata={"help": "replace existing results in --out"})
    knn_k: int = field(default=200, metadata={"help": "kNN neighbours"})
    knn_t: float = field(default=0.1, metadata={"help": "kNN temperature"})
    untrained: bool = field(default=True, metadata={"help": "also score the untrained network of each seed"})
    smoke: bool = field(default=False, metadata={"help": "tiny settings: checks the wiring in seconds"})

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or self.knn_k < 1 or not self.knn_t > 0:
            raise ValueError("--epochs, --batch-size, --knn-k and --knn-t must be positive")
        if self.snapshot_every < 0 or self.workers < 0:
            raise ValueError("--snapshot-every and --workers must be >= 0")


def entrant_list(text: str) -> list[str]:
    """The entrants, split at commas that start a new entrant (a knob list also uses commas)."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" in part and ":" not in part and out:  # another knob of the previous entrant
            out[-1] += "," + part
        else:
            out.append(part)
    for entrant in out:
        name, _ = parse_entrant(entrant)
        if name not in ENTRANTS:
            raise ConfigError(f"unknown entrant {name!r}; choose from {', '.join(ENTRANTS)}")
        missing = ENTRANTS[name].available()
        if missing:
            raise ConfigError(f"entrant {name}: {missing}")
    return out


def slug(entrant: str) -> str:
    return entrant.replace(":", "__").replace(",", "_").replace("=", "-")


def finished(entrant: str, spec: RaceSpec, out: str) -> dict | None:
    """The record of a run already finished in `out` with this entrant and spec (a race stopped
    part-way resumes from its finished runs), else None."""
    try:
        with open(os.path.join(out, "record.json")) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    same = record.get("entrant") == entrant and record.get("spec") == dataclasses.asdict(spec)
    return record if same and "peak_rss_tree_mib" in record else None


def run_entrant(entrant: str, spec: RaceSpec, out: str) -> dict:
    """Train one entrant in a child process; the child's process tree (DataLoader workers included)
    is sampled every 0.2 s for its summed resident memory."""
    done = finished(entrant, spec, out)
    if done is not None:
        print(f"race: {entrant}, seed {spec.seed}: finished before, reused", file=sys.stderr, flush=True)
        return done
    print(f"race: {entrant}, seed {spec.seed}", file=sys.stderr, flush=True)
    cmd = [sys.executable, "-m", "benchmarks.race.run_one", entrant, spec.to_json(), out]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    child = subprocess.Popen(cmd, env=env)
    peak, t0 = 0, time.perf_counter()
    proc = psutil.Process(child.pid)
    while child.poll() is None:
        try:
            tree = [proc, *proc.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.2)
    if child.returncode != 0:
        raise ConfigError(f"entrant {entrant} (seed {spec.seed}) failed with exit code {child.returncode}")
    with open(os.path.join(out, "record.json")) as f:
        record = json.load(f)
    record.update({"peak_rss_tree_mib": peak / 2**20, "wall_s": time.perf_counter() - t0})
    common.write_json(os.path.join(out, "record.json"), record)  # with its memory peak: reusable
    return record


@cli
def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    cfg = parse(RaceConfig, argv, description=__doc__)
    if cfg.smoke:
        cfg = dataclasses.replace(cfg, **SMOKE)
    entrants = entrant_list(cfg.entrants)
    try:
        seeds = [int(s) for s in cfg.seeds.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds: comma-separated integers, got {cfg.seeds!r}") from None
    if not seeds:
        raise ConfigError("--seeds: at least one seed")
    common.check_out(cfg.out, [f"race.{x}" for x in ("json", "csv", "md", "png")], cfg.overwrite)
    work = cfg.work or os.path.join(cfg.out, "runs")
    env = common.environment("benchmarks.race", argv)
    base = RaceSpec(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(RaceSpec)})
    runs = []
    for seed in seeds:  # interleaved: a slow spell of the machine hits every entrant alike
        spec = dataclasses.replace(base, seed=seed)
        for entrant in entrants:
            runs.append(run_entrant(entrant, spec, os.path.join(work, slug(entrant), f"seed{seed}")))
    scores = score_runs(base, runs, seeds, device_of(base), cfg.knn_k, cfg.knn_t, cfg.untrained)
    summary = summarize_runs(runs, scores, entrants)
    differences = {e: ENTRANTS[parse_entrant(e)[0]].DIFFERENCES for e in entrants}
    result = {
        "environment": env,
        "config": dataclasses.asdict(cfg),
        "seeds": seeds,
        "entrants": entrants,
        "differences": differences,
        "summary": summary,
        "untrained": scores["untrained"],
        "runs": runs,
        "scores": scores["runs"],
    }
    text = table(result)
    common.write_all(cfg.out, "race", result, summary["rows"], text, lambda path: chart(path, result))
    common.print_table(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
