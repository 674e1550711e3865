"""The SimCLR training step, ablated: what torch.compile (and its modes), channels_last, bf16 and
the optimiser's update path each buy.

    python -m benchmarks.step                                   # GPU: batch 512, all settings
    python -m benchmarks.step --device cpu --batch-size 32 --steps 2
    python -m benchmarks.step --quick --out /tmp/bench          # CPU, seconds (CI)

Rows: every combination of {eager, compiled} x {contiguous, channels_last} x {fp32, bf16 autocast}
with train's defaults (compile mode default, fullgraph, multi-tensor LARS), then on the fastest
combination (compiled + channels_last + bf16) each other LARS path (`--optimizer-paths`: loop =
one tensor at a time, compiled = the update under torch.compile) and each other compile mode
(`--compile-modes`: max-autotune-no-cudagraphs; reduce-overhead = CUDA graphs with static input
buffers), and the same step with fastssl.train's online linear probe (`--online-probe`: its
cost). Rows that cannot run here (CUDA graphs on a CPU, modes with a non-inductor backend) are
listed as skipped with the reason. Each row runs fastssl.step.TrainStep, the exact step of
fastssl.train (forward under autocast, backward, LARS step, schedule step), on one pre-made batch,
so no data loading is involved. Settings are interleaved across repeats. Reported: images/s
(source images, each giving two views), the speed-up over the all-off baseline (eager,
contiguous, fp32), TFLOP/s (FLOPs counted from the model by FlopCounterMode), peak GPU memory, the
graphs torch._dynamo compiled during warm-up and during the timed steps (must be 0: a steady-state
step never recompiles), and per choice of the grid the geometric-mean speed-up of turning it on
with the others held fixed. fp32 on CUDA means TF32 matmuls, as fastssl.train sets them.

Functions for other benchmarks (benchmarks.suite): `TrainStep(cfg, device, ...)`, `settings(cfg,
device)`, `run_setting(setting, cfg, device, batches) -> dict` (one row, timed alone) and
`measure(cfg, device, env) -> result dict` (the whole interleaved table, no files written).
"""

import itertools
import math
import statistics
import sys
import time
from dataclasses import dataclass, field

import torch

from fastssl import step as fstep
from fastssl.config import cli, parse
from fastssl.online_probe import build as build_probe
from pipelines import Batch

from . import common, timing

STEM = "step"
FACTORS = ("compile", "channels_last", "bf16")
OPTIMIZER_PATHS = ("loop", "foreach", "compiled")  # LARS update: per tensor, multi-tensor, torch.compile'd
# Each row compiles the same step function with other guards (model, layout, autocast): allow
# more cached variants than dynamo's default of 8, so no row silently falls back to eager.
RECOMPILE_LIMIT = 64


class TrainStep(fstep.TrainStep):
    """fastssl.step.TrainStep over a freshly built method, optimiser and schedule exactly as
    fastssl.train constructs them, for a PretrainConfig `cfg`:

        step = TrainStep(cfg, device, bf16=True, compile=True)
        step(batch)          # forward (autocast) -> zero_grad -> backward -> optimizer -> schedule
        step.flops(batch)    # FLOPs of one forward+backward (FlopCounterMode, eager model)

    fast_optimizer=False uses LARS's per-tensor loop; compile_optimizer=True its compiled update;
    cudagraphs=True is compile mode reduce-overhead. No host sync inside a step; the logged values
    are summed on the device as train.py does (`log_sum`).
    """

    def __init__(
        self,
        cfg,
        device,
        *,
        bf16: bool,
        compile: bool,
        channels_last: bool = True,
        compile_backend: str = "inductor",
        num_classes: int = 10,
        compile_mode: str = "default",
        fullgraph: bool = True,
        fast_optimizer: bool = True,
        compile_optimizer: bool = False,
        cudagraphs: bool = False,
        online_probe: bool = False,
    ):
        from fastssl.methods import METHODS
        from fastssl.optim import base_lr, build_optimizer, warmup_cosine

        device = torch.device(device)
        if cudagraphs:
            compile, compile_mode = True, "reduce-overhead"
        torch.manual_seed(cfg.seed)
        method = METHODS[cfg.method](cfg, num_classes).to(device)
        if channels_last:
            method = method.to(memory_format=torch.channels_last)
        lr = base_lr(cfg.optimizer, cfg.lr) * cfg.batch_size / 256
        optimizer = build_optimizer(
            cfg.optimizer,
            method,
            lr,
            cfg.weight_decay,
            cfg.momentum,
            nesterov=cfg.nesterov,
            foreach=fast_optimizer,
            compiled=compile_optimizer,
            backend=compile_backend,
        )
        # A long schedule (10^6 steps, 1% warm-up) keeps the lr in its normal range for any benchmark length.
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(10**6, 10**4))
        # The online probe, as fastssl.train adds it: the method wrapped, its own optimiser stepped too.
        model, probe_optimizer = build_probe(method, num_classes) if online_probe else (method, None)
        super().__init__(
            model,
            optimizer,
            schedule,
            device,
            bf16=bf16,
            compile=compile,
            mode=compile_mode,
            fullgraph=fullgraph,
            backend=compile_backend,
            probe_optimizer=probe_optimizer,
        )
        self.method, self.channels_last = method, channels_last
        self.log_sum = None

    def __call__(self, batch) -> None:
        logs = super().__call__(batch)
        vals = torch.stack([v.float() for v in logs.values()])
        self.log_sum = vals if self.log_sum is None else self.log_sum + vals


setup_device = fstep.setup_device  # the backend switches fastssl.train sets (TF32 matmuls, cuDNN autotuner)


def model_config(batch_size: int, seed: int = 0):
    """fastssl.pretrain's defaults (ResNet-18 CIFAR stem, 2048->128 head, LARS, temperature 0.2)."""
    from fastssl.pretrain import PretrainConfig

    return PretrainConfig(batch_size=batch_size, seed=seed, progress=False, knn_every=0)


def synthetic_batch(batch_size: int, size: int, device, channels_last: bool, seed: int = 0) -> Batch:
    """Normalised-looking random views as one (2B, 3, size, size) tensor, as the gpu pipeline
    yields them: the step's speed does not depend on pixel values."""
    g = torch.Generator().manual_seed(seed)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    views = torch.randn(2 * batch_size, 3, size, size, generator=g).to(device, memory_format=fmt)
    return Batch.from_views(views, torch.zeros(batch_size, dtype=torch.int64, device=device))


@dataclass
class StepConfig:
    batch_size: int | None = field(
        default=None, metadata={"help": "images per step, each giving two views (default 512; --quick 2)"}
    )
    image_size: int | None = field(
        default=None, metadata={"help": "side of the synthetic views (default 32 = CIFAR; --quick 8)"}
    )
    steps: int | None = field(
        default=None, metadata={"help": "timed steps per repeat (default 20 on CUDA, 3 on CPU; --quick 1)"}
    )
    # Interleaved: each repeat times every setting once, so a drift in the machine's speed reaches all
    # settings alike.
    repeats: int | None = field(
        default=None,
        metadata={"help": "timed repeats, interleaved over the settings (default 5; >= 5 unless --quick: 1)"},
    )
    warmup: int | None = field(
        default=None,
        metadata={"help": "untimed steps per setting first, compilation included (default 3; --quick 1)"},
    )
    compile_backend: str | None = field(
        default=None,
        metadata={"help": "torch.compile backend (default inductor; --quick eager: dynamo capture only)"},
    )
    device: str = field(default="auto", metadata={"help": "auto (cuda if available), cpu, cuda or cuda:N"})
    peak_tflops: float | None = field(
        default=None,
        metadata={"help": "peak dense bf16 TFLOP/s of the device for MFU (default: table by GPU model)"},
    )
    seed: int = field(default=0, metadata={"help": "seed of the model and the synthetic batch"})
    # CPUs without native bf16 run bf16 steps very slowly.
    precisions: str = field(
        default="fp32,bf16", metadata={"help": "comma-separated precisions to compare (fp32, bf16)"}
    )
    # Each mode is one row, run on the fastest setting of the grid; the grid itself uses default.
    compile_modes: str = field(
        default="default,max-autotune-no-cudagraphs,reduce-overhead",
        metadata={"help": f"comma-separated torch.compile modes ({', '.join(fstep.COMPILE_MODES)})"},
    )
    # Each path is one row, run on the fastest setting of the grid; the grid itself uses foreach.
    optimizer_paths: str = field(
        default="loop,foreach,compiled",
        metadata={"help": "comma-separated LARS update paths (loop, foreach, compiled)"},
    )
    online_probe: bool = field(
        default=True,
        metadata={"help": "add a row: the fastest step with fastssl.train's online linear probe"},
    )
    threads: int | None = field(
        default=None, metadata={"help": "torch CPU threads (default: torch's own; --quick 1)"}
    )
    quick: bool = field(
        default=False, metadata={"help": "CPU smoke run in seconds: tiny batch and image, 1 repeat"}
    )
    out: str | None = field(
        default=None, metadata={"help": "output directory (default benchmarks/results/<device>-<date>)"}
    )
    overwrite: bool = field(default=False, metadata={"help": "replace step.* files already in --out"})

    def __post_init__(self):
        q = common.apply_quick(self)
        cuda = self.device != "cpu" and (self.device.startswith("cuda") or torch.cuda.is_available())
        # --quick: a tiny batch of 8x8 views, one repeat, dynamo without code generation. On CPUs
        # without native bf16, bf16 convolutions on contiguous tensors take a slow path costing ~2 s
        # a step whatever the size, which is most of the quick run's time.
        defaults = dict(
            batch_size=2 if q else 512,
            image_size=8 if q else 32,
            steps=1 if q else (20 if cuda else 3),
            repeats=1 if q else 5,
            warmup=1 if q else 3,
            compile_backend="eager" if q else "inductor",
        )
        for k, v in defaults.items():
            if getattr(self, k) is None:
                setattr(self, k, v)
        for k in ("batch_size", "image_size", "steps", "repeats"):
            if getattr(self, k) <= 0:
                raise ValueError(f"--{k.replace('_', '-')} must be positive, got {getattr(self, k)}")
        if self.warmup < 1:
            raise ValueError("--warmup must be >= 1 (the first step compiles and autotunes)")
        if self.repeats < 5 and not q:
            raise ValueError(
                f"--repeats must be >= 5 for a reported benchmark (got {self.repeats}); --quick allows fewer"
            )
        if self.batch_size < 2:
            raise ValueError("--batch-size must be >= 2 (BatchNorm and NT-Xent need several images)")
        wanted = [p.strip() for p in self.precisions.split(",") if p.strip()]
        if not wanted or set(wanted) - {"fp32", "bf16"}:
            raise ValueError(f"--precisions takes fp32 and/or bf16, got {self.precisions!r}")
        for name, valid in (("compile_modes", fstep.COMPILE_MODES), ("optimizer_paths", OPTIMIZER_PATHS)):
            got = _items(getattr(self, name))
            if not got or set(got) - set(valid):
                raise ValueError(
                    f"--{name.replace('_', '-')} takes {', '.join(valid)}, got {getattr(self, name)!r}"
                )


def _items(text: str) -> list:
    return [p.strip() for p in text.split(",") if p.strip()]


def setting_name(s: dict) -> str:
    parts = [
        "compiled" if s["compile"] else "eager",
        "channels_last" if s["channels_last"] else "contiguous",
        "bf16" if s["bf16"] else "fp32",
    ]
    if s["mode"] != "default":
        parts.append(f"mode {s['mode']}")
    if s["optimizer"] != "foreach":
        parts.append(f"LARS {s['optimizer']}")
    if s["probe"]:
        parts.append("online probe")
    return " + ".join(parts)


def settings(cfg, device) -> tuple:
    """(rows to run, rows skipped here with their reason) for a StepConfig. A setting is a dict of
    compile, channels_last, bf16, mode (torch.compile mode) and optimizer (LARS update path)."""
    bf16_options = [p == "bf16" for p in ("fp32", "bf16") if p in _items(cfg.precisions)]
    run = [
        dict(zip(FACTORS, combo), mode="default", optimizer="foreach", probe=False)
        for combo in itertools.product((False, True), (False, True), bf16_options)
    ]
    best = dict(
        compile=True,
        channels_last=True,
        bf16=bf16_options[-1],
        mode="default",
        optimizer="foreach",
        probe=False,
    )
    extra = [{**best, "optimizer": o} for o in _items(cfg.optimizer_paths) if o != "foreach"]
    extra += [{**best, "mode": m} for m in _items(cfg.compile_modes) if m != "default"]
    # fastssl.train's online probe (on by default for labelled data): its cost on the fastest step.
    extra += [{**best, "probe": True}] if cfg.online_probe else []
    skipped = []
    for s in extra:
        reason = None
        if s["mode"] == "reduce-overhead" and device.type != "cuda":
            reason = "CUDA graphs need a CUDA device"
        elif s["mode"] != "default" and cfg.compile_backend != "inductor":
            reason = f"compile modes need the inductor backend (this run: {cfg.compile_backend})"
        if reason:
            skipped.append({"setting": setting_name(s), **s, "status": f"skipped: {reason}"})
        else:
            run.append(s)
    return run, skipped


def build(setting: dict, cfg, device) -> TrainStep:
    """The benchmark's TrainStep for one setting of a StepConfig."""
    return TrainStep(
        model_config(cfg.batch_size, cfg.seed),
        device,
        bf16=setting["bf16"],
        compile=setting["compile"],
        channels_last=setting["channels_last"],
        compile_backend=cfg.compile_backend,
        compile_mode=setting["mode"],
        fast_optimizer=setting["optimizer"] != "loop",
        compile_optimizer=setting["optimizer"] == "compiled",
        online_probe=setting["probe"],
    )


def _warm(step, batch, warmup, device) -> dict:
    """Untimed warm-up (compilation, autotuning): seconds, peak memory, graphs compiled."""
    t0, before = time.perf_counter(), fstep.compile_counters()["unique_graphs"]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        step(batch)
    mem = None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        mem = torch.cuda.max_memory_allocated(device) / 2**30
    return {
        "warmup_s": time.perf_counter() - t0,
        "peak_memory_gib": mem,
        "graphs_warmup": fstep.compile_counters()["unique_graphs"] - before,
    }


def _timed(step, batch, steps, device) -> tuple:
    """(seconds for `steps` steps, graphs compiled meanwhile)."""
    before = fstep.compile_counters()["unique_graphs"]
    with timing.Stopwatch(device) as sw:
        for _ in range(steps):
            step(batch)
    return sw.seconds, fstep.compile_counters()["unique_graphs"] - before


def _record(s, times, info, cfg, flops, peak) -> dict:
    rate = common.summarize([cfg.batch_size * cfg.steps / x for x in times])
    step_ms = common.summarize([1000 * x / cfg.steps for x in times])
    tflops = flops * cfg.steps / statistics.median(times) / 1e12
    return {
        "setting": setting_name(s),
        **s,
        "status": "ok",
        "img_per_s": rate,
        "step_ms": step_ms,
        "tflops": tflops,
        "mfu": tflops / peak if peak and s["bf16"] else None,
        **info,
    }


def run_setting(setting: dict, cfg, device, batches=None, peak=None) -> dict:
    """One row timed on its own: warm-up, then cfg.repeats x cfg.steps timed steps. `batches`:
    {channels_last: Batch} to reuse (made from cfg when missing)."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    batches = batches if batches is not None else {}
    cl = setting["channels_last"]
    if cl not in batches:
        batches[cl] = synthetic_batch(cfg.batch_size, cfg.image_size, device, cl, cfg.seed)
    step = build(setting, cfg, device)
    info = _warm(step, batches[cl], cfg.warmup, device)
    flops = step.flops(batches[cl])
    times, info["graphs_timed"] = [], 0
    for _ in range(cfg.repeats):
        t, g = _timed(step, batches[cl], cfg.steps, device)
        times.append(t)
        info["graphs_timed"] += g
    return _record(setting, times, info, cfg, flops, peak)


def measure(cfg, device, env) -> dict:
    """Every setting of `settings(cfg, device)`, interleaved over the repeats; the result dict
    main() writes (records, skipped rows, effects, settings)."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    setup_device(device)
    peak, peak_source = common.peak_tflops(device, cfg.peak_tflops)
    run, skipped = settings(cfg, device)
    steps, batches = [], {}
    for s in run:
        steps.append(build(s, cfg, device))
        if s["channels_last"] not in batches:
            batches[s["channels_last"]] = synthetic_batch(
                cfg.batch_size, cfg.image_size, device, s["channels_last"], cfg.seed
            )
    flops = steps[0].flops(
        batches[False] if False in batches else batches[True]
    )  # same network and shapes everywhere
    print(
        f"step benchmark on {env['gpu'] or env['cpu']}: batch {cfg.batch_size} ({2 * cfg.batch_size} views of "
        f"{cfg.image_size}x{cfg.image_size}), {flops / 1e9:.1f} GFLOP per step, {cfg.steps} steps x {cfg.repeats} repeats",
        file=sys.stderr,
    )
    infos = []
    for s, step in zip(run, steps):
        infos.append(_warm(step, batches[s["channels_last"]], cfg.warmup, device))
        print(
            f"{setting_name(s)}: warm-up {infos[-1]['warmup_s']:.1f} s, {infos[-1]['graphs_warmup']} graph(s)",
            file=sys.stderr,
        )
        infos[-1]["graphs_timed"] = 0
    times = [[] for _ in run]
    for r in range(cfg.repeats):
        for j in range(len(run)):  # rotated order: drift and position effects hit every setting alike
            i = (j + r) % len(run)
            t, g = _timed(steps[i], batches[run[i]["channels_last"]], cfg.steps, device)
            times[i].append(t)
            infos[i]["graphs_timed"] += g
    records = [_record(s, t, info, cfg, flops, peak) for s, t, info in zip(run, times, infos)]
    base = records[0]["img_per_s"]["median"]
    for rec in records:
        rec["speedup_vs_baseline"] = rec["img_per_s"]["median"] / base
    grid = [r for r in records if r["mode"] == "default" and r["optimizer"] == "foreach" and not r["probe"]]
    effects = []
    for f in FACTORS:
        ratios = []
        for rec_on in grid:
            if rec_on[f]:
                off = next(
                    (r for r in grid if not r[f] and all(r[g] == rec_on[g] for g in FACTORS if g != f)), None
                )
                if off is not None:
                    ratios.append(rec_on["img_per_s"]["median"] / off["img_per_s"]["median"])
        if ratios:  # a factor held fixed (e.g. --precisions fp32) has no effect to report
            effects.append(
                {
                    "choice": f,
                    "geomean_speedup": math.exp(sum(map(math.log, ratios)) / len(ratios)),
                    "min_speedup": min(ratios),
                    "max_speedup": max(ratios),
                }
            )
    return {
        "benchmark": STEM,
        "environment": env,
        "device": str(device),
        "settings": {
            **vars(cfg),
            "flops_per_step": flops,
            "peak_tflops": peak,
            "peak_source": peak_source,
            "model": "resnet18 (cifar stem) + 2048->128 head, LARS",
        },
        "records": records,
        "skipped": skipped,
        "effects": effects,
        "recompiles_in_timed_steps": sum(r["graphs_timed"] for r in records),
    }


def table(result) -> str:
    text = (
        "| setting | img/s median (min-max) | step ms | speed-up vs all-off | TFLOP/s | MFU | peak mem GiB "
        "| graphs compiled: warm-up / timed |\n|---|---|---|---|---|---|---|---|\n"
    )
    for rec in result["records"]:
        text += (
            f"| {rec['setting']} | {common.fmt_range(rec['img_per_s'])} | {rec['step_ms']['median']:.1f} | "
            f"{rec['speedup_vs_baseline']:.2f}x | {rec['tflops']:.3f} | {common.fmt(rec['mfu'], '.1%')} | "
            f"{common.fmt(rec['peak_memory_gib'], '.2f')} | {rec['graphs_warmup']} / {rec['graphs_timed']} |\n"
        )
    for rec in result["skipped"]:
        text += f"| {rec['setting']} | {rec['status']} | | | | | | |\n"
    effects = result["effects"]
    return (
        text
        + "\n"
        + common.markdown_table(
            ["choice turned on", "speed-up, geometric mean over the other settings", "range"],
            [
                [
                    e["choice"],
                    f"{e['geomean_speedup']:.2f}x",
                    f"{e['min_speedup']:.2f}x-{e['max_speedup']:.2f}x",
                ]
                for e in effects
            ],
        )
    )


@cli
def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = parse(StepConfig, argv, description=__doc__)
    device = common.resolve_device(cfg.device)
    out = cfg.out or common.default_out(STEM, device, cfg.quick)
    common.check_out(out, [f"{STEM}.{e}" for e in ("json", "csv", "md", "png")], cfg.overwrite)
    common.set_threads(cfg.threads)
    env = common.environment("benchmarks.step", argv)
    result = measure(cfg, device, env)
    result["settings"]["out"] = out
    records, text = result["records"], table(result)
    common.write_all(
        out,
        STEM,
        result,
        records,
        text,
        lambda p: common.bar_chart(
            p,
            [r["setting"].replace(" + ", "\n") for r in records],
            {"images/s": [r["img_per_s"] for r in records]},
            "images/s (median, min-max)",
            f"SimCLR step, batch {cfg.batch_size}, {env['gpu'] or env['cpu']}",
        ),
    )
    common.print_table(text)
    return result


if __name__ == "__main__":
    main()
