"""Every GPU measurement of fastssl in one command, inside one time budget.

    python -m benchmarks.suite --data-dir data                       # one GPU, ~9 minutes
    python -m benchmarks.suite --data-dir data --stages step,throughput,nt_xent --out results/a
    python -m benchmarks.suite --data-dir data --stages time_to_accuracy --rates-from results/a/suite.json --out results/b
    python -m benchmarks.suite --smoke --out /tmp/suite              # every stage's code path on a CPU
    python -m benchmarks.suite --data-dir data --stages families --rates-from results/a/suite.json --out results/c

It prints its plan (stages and estimated seconds) first, runs the stages in order, each under its
own deadline (the estimates add up to --budget; time a stage leaves unused passes to the next),
writes the results after every stage, and ends with a one-screen summary. A stage that runs out
of time stops starting new work, keeps what it measured and is reported as "cut"; one that still
runs past its deadline plus a grace period is interrupted and reported as "cut" too. Stages:
environment (+ measured bf16 matmul peak), step ablation, throughput per pipeline, NT-Xent, time
to accuracy (SimCLR on CIFAR-10, kNN every 10 epochs against wall-clock time, then the linear
probe on CIFAR-10 and the transfer probe on CIFAR-100); optional, only when named in --stages:
families (autoencoder, SimCLR, Deep InfoMax on CIFAR-10 80/10/10, one seed, at the stage's budget). Outputs, all in --out: suite.json,
suite.md, throughput.png, step.png, knn.png. Training runs and probes write into --work-dir
(default: a temporary folder, removed at the end unless --keep-work).
"""

import json
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field

import torch

from fastssl.config import ConfigError, cli, parse

from . import common, nt_xent, preflight, suite_report
from . import suite_stages as stages

STEM = "suite"
FILES = ("suite.json", "suite.md", "throughput.png", "step.png", "knn.png")
MAX_FILE_BYTES = 16 * 2**20  # what an offline machine can send back in one transfer, with margin

# Sizes of each stage: the real run (one GPU, full CIFAR-10) and --smoke (CPU, tiny, every code path).
FULL = dict(
    matmul_n=8192,
    step_batch=512,
    image_size=32,
    step_steps=20,
    step_repeats=5,
    step_warmup=3,
    compile_backend="inductor",
    throughput_dataset="cifar10",
    throughput_batch=512,
    workers=16,
    throughput_repeats=5,
    throughput_steps=None,
    loader_steps=None,
    nt_xent_sizes="512,1024,2048,4096",
    nt_xent_repeats=5,
    train_dataset="cifar10",
    train_batch=512,
    train_images=50000,
    test_images=10000,
    knn_every=10,
    max_epochs=200,
    probe_dataset="cifar10",
    probe_epochs=100,
    probe_extra=[],
    probe_images=50000,
    feature_batch=1024,
    train_stem="cifar",
    race_epochs=5,  # all entrants: fastssl, plain and lightly (when installed), one seed
    train_setup_s=10.0,
)  # reading CIFAR-10 and building the loader: seconds, not measured per run
SMOKE = dict(
    FULL,
    matmul_n=128,
    step_batch=2,
    image_size=8,
    step_steps=1,
    step_repeats=2,
    step_warmup=1,
    compile_backend="eager",
    throughput_dataset="cifar10-sample",
    throughput_batch=2,
    workers=1,
    throughput_repeats=2,
    throughput_steps=1,
    loader_steps=2,
    nt_xent_sizes="64,128",
    nt_xent_repeats=2,
    train_dataset="cifar10-sample",
    train_batch=16,
    train_subset=64,
    train_images=64,
    test_images=1000,
    train_extra=["--stem", "imagenet", "--log-interval", "2"],
    knn_every=1,
    max_epochs=2,
    probe_dataset="cifar10-sample",
    probe_epochs=2,
    probe_subset=200,
    probe_extra=["--lrs", "0.1", "--wds", "0", "--feature-batch-size", "500"],
    probe_images=200,
    feature_batch=64,
    train_stem="imagenet",
    race_epochs=2,
    train_setup_s=0.0,
)


@dataclass
class SuiteConfig:
    budget: float | None = field(
        default=None,
        metadata={
            "help": "seconds for the whole suite (default 540: one 10-minute call with margin; --smoke 180)"
        },
    )
    # Stages run in the order listed, whatever the order given; race and families, outside the default, run
    # only when named (each is a GPU call of its own).
    stages: str = field(
        default=",".join(stages.STAGES),
        metadata={"help": "comma-separated: " + ", ".join(stages.all_stages())},
    )
    data_dir: str | None = field(
        default=None,
        metadata={"help": "where CIFAR-10 / CIFAR-100 live (else $FASTSSL_DATA); nothing is downloaded"},
    )
    pipelines: str = field(
        default="gpu,torchvision,ffcv,dali",
        metadata={"help": "pipelines of the throughput stage (those not installed are listed as skipped)"},
    )
    # cifar10-sample ships with fastssl, so it serves before CIFAR-10 is staged.
    throughput_dataset: str | None = field(
        default=None,
        metadata={
            "help": "data of the throughput stage (default cifar10; --smoke: cifar10-sample)",
            "choices": ["cifar10", "cifar10-sample"],
        },
    )
    # A stage's estimated seconds are its share of --budget.
    estimates: str | None = field(
        default=None,
        metadata={
            "help": "stage=seconds,... replacing stages' estimates, e.g. throughput=140,time_to_accuracy=150"
        },
    )
    # For a run that skips the throughput and step stages: the earlier run's throughput/step stage gives the
    # epoch time.
    rates_from: str | None = field(
        default=None, metadata={"help": "suite.json of an earlier run on the same GPU, for the epoch time"}
    )
    # The plan chooses them from the measured costs so that the training run and its probes fit.
    epochs: int | None = field(
        default=None,
        metadata={
            "help": "time-to-accuracy epochs (default: planned from measured costs, at most --max-epochs)"
        },
    )
    max_epochs: int | None = field(
        default=None,
        metadata={"help": "most epochs the time-to-accuracy plan may choose (default 200; --smoke 2)"},
    )
    # The check takes a few seconds and runs first. --no-compile runs eager everywhere, with the rows labelled
    # so.
    compile: bool | None = field(
        default=None,
        metadata={
            "help": "torch.compile where the suite compiles (default: yes if a quick compile check passes)"
        },
    )
    compile_check_timeout: float = field(
        default=90.0,
        metadata={"help": "seconds the compile check may take before compiling counts as not working"},
    )
    device: str = field(default="auto", metadata={"help": "auto (cuda if available), cpu, cuda or cuda:N"})
    peak_tflops: float | None = field(
        default=None,
        metadata={"help": "datasheet dense bf16 TFLOP/s, for a GPU missing from benchmarks/peaks.py"},
    )
    seed: int = field(default=0, metadata={"help": "seed of every stage"})
    threads: int | None = field(
        default=None, metadata={"help": "torch CPU threads (default: torch's own; --smoke 1)"}
    )
    # A rehearsal of the code paths; it takes seconds to minutes.
    smoke: bool = field(
        default=False,
        metadata={"help": "every stage's code path on the CPU with tiny sizes; numbers mean nothing"},
    )
    grace: float = field(
        default=15.0, metadata={"help": "seconds a stage may run past its deadline before it is interrupted"}
    )
    out: str | None = field(
        default=None, metadata={"help": "output folder (default benchmarks/results/<device>-<date>)"}
    )
    work_dir: str | None = field(
        default=None, metadata={"help": "folder for the training run and probes (default: a temporary one)"}
    )
    keep_work: bool = field(
        default=False, metadata={"help": "keep --work-dir's training run and probes afterwards"}
    )
    overwrite: bool = field(default=False, metadata={"help": "replace suite files already in --out"})

    def __post_init__(self):
        if self.smoke and self.device == "auto":
            self.device = "cpu"
        if self.smoke and self.threads is None:
            self.threads = 1
        if self.budget is None:
            self.budget = 180.0 if self.smoke else 540.0
        if not self.budget > 0 or not self.grace >= 0:
            raise ValueError("--budget must be > 0 and --grace >= 0")
        if self.epochs is not None and self.epochs <= 0:
            raise ValueError(f"--epochs must be positive, got {self.epochs}")
        if self.max_epochs is not None and self.max_epochs <= 0:
            raise ValueError(f"--max-epochs must be positive, got {self.max_epochs}")
        self.stage_list = [s.strip() for s in self.stages.split(",") if s.strip()]
        known = stages.all_stages()
        bad = [s for s in self.stage_list if s not in known]
        if bad or not self.stage_list:
            raise ValueError(
                f"--stages: unknown {', '.join(bad) or '(none given)'}; choose from {', '.join(known)}"
            )
        self.estimate_of = {}
        for item in filter(None, (self.estimates or "").split(",")):
            name, _, sec = item.partition("=")
            try:
                self.estimate_of[name.strip()] = float(sec)
            except ValueError:
                raise ValueError(f"--estimates: expected stage=seconds, got {item!r}") from None
            if name.strip() not in known or not self.estimate_of[name.strip()] > 0:
                raise ValueError(f"--estimates: {item!r}: stage from {', '.join(known)}, seconds > 0")
        # Always in the suite's order, and always with the environment first: every result carries
        # the GPU it ran on and its measured matmul peak.
        self.stage_list = [s for s in known if s in self.stage_list or s == "environment"]


class StageTimeout(Exception):
    """Raised inside a stage that ran past its deadline plus the grace period."""


def _alarm(signum, frame):
    raise StageTimeout()


class Context:
    """What the stages share: config, device, environment, sizes, results so far, deadline."""

    def __init__(self, cfg, device, env, work):
        self.cfg, self.device, self.env, self.work = cfg, device, env, work
        self.sizes = dict(SMOKE if cfg.smoke else FULL)
        if cfg.throughput_dataset:
            self.sizes["throughput_dataset"] = cfg.throughput_dataset
        self.max_epochs = cfg.max_epochs or self.sizes["max_epochs"]
        self.compile = {
            "enabled": cfg.compile is not False,
            "reason": "--no-compile" if cfg.compile is False else "",
            "check": None,
        }
        self.train_compile = device.type == "cuda"  # as fastssl.pretrain decides; see decide_compile
        self.peak = {"datasheet_tflops": None, "measured_tflops": None}
        self.results, self.partial, self.deadline = {}, {}, None
        self.earlier = {}  # stages of --rates-from, for the epoch-time estimate
        if cfg.rates_from:
            try:
                with open(cfg.rates_from) as f:
                    self.earlier = {r["stage"]: r for r in json.load(f)["stages"]}
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise ConfigError(
                    f"--rates-from {cfg.rates_from}: not a suite.json ({type(e).__name__})"
                ) from None


def decide_compile(ctx) -> dict:
    """--compile as given, else a compile check (seconds, in a child process) where the suite would
    generate code (inductor); a failure turns compilation off for the whole run, with its reason."""
    cfg = ctx.cfg
    if cfg.compile is None and ctx.sizes["compile_backend"] == "inductor":
        check = preflight.compile_check(str(ctx.device), "inductor", cfg.compile_check_timeout)
        stages.log(
            f"compile check: {'ok' if check['ok'] else 'failed: ' + check['reason']} ({check['seconds']:.1f} s)"
        )
        ctx.compile = {
            "enabled": check["ok"],
            "check": check,
            "reason": "" if check["ok"] else f"compile check failed: {check['reason']}",
        }
    ctx.train_compile = ctx.device.type == "cuda" and ctx.compile["enabled"]
    return ctx.compile


def plan(cfg) -> list:
    """[(stage, estimated seconds)] scaled so that the estimates fill --budget."""
    reg = stages.all_stages()
    est = {
        s: cfg.estimate_of.get(s, reg[s].smoke_estimate_s if cfg.smoke else reg[s].estimate_s)
        for s in cfg.stage_list
    }
    total = sum(est.values())
    return [(s, cfg.budget * est[s] / total) for s in cfg.stage_list]


def run_stage(ctx, name, deadline, grace) -> dict:
    """One stage under its deadline: {status, reason, seconds, result}."""
    fn = stages.all_stages()[name][0]
    ctx.deadline = deadline
    t0 = time.monotonic()
    rec = {"stage": name, "status": "ok", "reason": "", "deadline_s": deadline - t0}
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, max(0.01, deadline - t0 + grace))
    try:
        rec["result"] = fn(ctx, lambda: time.monotonic() > deadline)
        if rec["result"].get("cut"):
            rec.update(status="cut", reason="deadline reached; what was measured by then is kept")
    except StageTimeout:
        rec.update(
            status="cut", reason=f"interrupted {grace:.0f} s after its deadline", result=ctx.partial.get(name)
        )
    except stages.Skip as e:
        rec.update(status="skipped", reason=str(e))
    except Exception as e:  # noqa: BLE001 - a broken stage is reported; the later ones still run
        rec.update(
            status="failed",
            reason=f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}",
            result=ctx.partial.get(name),
        )
    except SystemExit as e:  # fastssl.train exits on a signal or a diverged loss: report, go on
        rec.update(status="failed", reason=f"exited with code {e.code}", result=ctx.partial.get(name))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    rec["seconds"] = time.monotonic() - t0
    return rec


@cli
def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = parse(SuiteConfig, argv, description=__doc__)
    device = common.resolve_device(cfg.device)
    out = cfg.out or common.default_out(STEM, device, cfg.smoke)
    common.check_out(out, FILES, cfg.overwrite)
    if cfg.work_dir and os.path.exists(cfg.work_dir) and not os.path.isdir(cfg.work_dir):
        raise ConfigError(f"--work-dir {cfg.work_dir} exists and is not a directory")
    common.set_threads(cfg.threads)
    # Every stage compiles its own model: past dynamo's default limit of 8 recompilations of the
    # same forward it would silently fall back to eager and the later stages would time that.
    nt_xent._raise_recompile_limit()
    env = common.environment("benchmarks.suite", argv)
    ctx = Context(cfg, device, env, None)  # validates --rates-from before anything is written
    ctx.work = work = cfg.work_dir or tempfile.mkdtemp(prefix="fastssl-suite-")
    os.makedirs(work, exist_ok=True)

    t_start = time.monotonic()
    decide_compile(ctx)  # seconds of the budget, before any stage compiles
    steps = plan(cfg)
    suite_report.print_plan(steps, cfg, env, out)
    report = {
        "benchmark": STEM,
        "environment": env,
        "budget_s": cfg.budget,
        "smoke": cfg.smoke,
        "out": out,
        "work_dir": work if cfg.keep_work else None,
        "plan": [{"stage": s, "estimate_s": e} for s, e in steps],
        "compile": ctx.compile,
        "stages": [],
    }
    end = t_start + cfg.budget
    try:
        for i, (name, est) in enumerate(steps):
            now = time.monotonic()
            # The time left is shared in proportion to the estimates of the stages still to run, so
            # time a stage leaves unused passes on and an overrun is shared by all later stages.
            still = sum(e for _, e in steps[i:])
            deadline = now + max(0.0, end - now) * est / still
            if now >= end:
                rec = {
                    "stage": name,
                    "status": "cut",
                    "reason": "the suite's budget was spent before it started",
                    "seconds": 0.0,
                    "deadline_s": 0.0,
                    "result": None,
                }
            else:
                stages.log(f"stage {i + 1}/{len(steps)} {name}: deadline in {deadline - now:.0f} s")
                rec = run_stage(ctx, name, deadline, cfg.grace)
            rec["estimate_s"] = est
            ctx.results[name] = rec
            report["stages"].append(rec)
            report["elapsed_s"] = time.monotonic() - t_start
            suite_report.write(out, report, ctx)  # partial results on disk after every stage
            stages.log(
                f"{name}: {rec['status']}{' (' + rec['reason'] + ')' if rec['reason'] else ''} "
                f"in {rec['seconds']:.1f} s"
            )
    finally:
        if not cfg.keep_work and not cfg.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    report["elapsed_s"] = time.monotonic() - t_start
    report["files"] = suite_report.write(out, report, ctx)
    too_big = [f for f, n in report["files"].items() if n > MAX_FILE_BYTES]
    if too_big:
        print(f"warning: {', '.join(too_big)} larger than {MAX_FILE_BYTES // 2**20} MiB", file=sys.stderr)
    suite_report.print_summary(report)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return report


if __name__ == "__main__":
    main()
