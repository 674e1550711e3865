"""The SimCLR training step, ablated: what torch.compile, channels_last and bf16 each buy.

    python -m benchmarks.step                                   # GPU: batch 512, all 8 settings
    python -m benchmarks.step --device cpu --batch-size 32 --steps 2
    python -m benchmarks.step --quick --out /tmp/bench          # CPU, seconds (CI)

Every combination of {eager, compiled} x {contiguous, channels_last} x {fp32, bf16 autocast} runs
the exact step of fastssl.train (forward under autocast, backward, LARS step, schedule step) on one
pre-made batch, so no data loading is involved. Settings are interleaved across repeats. Reported:
images/s (source images, each giving two views), the speed-up over the all-off baseline (eager,
contiguous, fp32), TFLOP/s (FLOPs counted from the model by FlopCounterMode), peak GPU memory,
and per choice the geometric-mean speed-up of turning it on with the others held fixed.
fp32 on CUDA means TF32 matmuls/convolutions, as fastssl.train sets them.
"""
import itertools
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field

import torch

from fastssl.config import cli, parse
from pipelines import Batch

from . import common

STEM = "step"
FACTORS = ("compile", "channels_last", "bf16")


class TrainStep:
    """One training step exactly as `fastssl.train.train` runs it, with the same model, optimiser and
    schedule construction, for a PretrainConfig `cfg`:

        step = TrainStep(cfg, device, bf16=True, compile=True)
        step(batch)          # forward (autocast) -> zero_grad -> backward -> optimizer -> schedule
        step.flops(batch)    # FLOPs of one forward+backward (FlopCounterMode, eager model)

    No host sync inside a step; the logged values are summed on the device as train.py does.
    """

    def __init__(self, cfg, device, *, bf16: bool, compile: bool, channels_last: bool = True,
                 compile_backend: str = "inductor", num_classes: int = 10):
        from fastssl.methods import METHODS
        from fastssl.optim import build_optimizer, warmup_cosine

        self.device, self.bf16 = torch.device(device), bf16
        self.channels_last = channels_last
        torch.manual_seed(cfg.seed)
        method = METHODS[cfg.method](cfg, num_classes).to(self.device)
        if channels_last:
            method = method.to(memory_format=torch.channels_last)
        lr = cfg.lr * cfg.batch_size / 256
        self.optimizer = build_optimizer(cfg.optimizer, method, lr, cfg.weight_decay, cfg.momentum)
        # A long schedule (10^6 steps, 1% warm-up) keeps the lr in its normal range for any benchmark length.
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, warmup_cosine(10**6, 10**4))
        self.method = method
        self.fn = torch.compile(method, backend=compile_backend) if compile else method
        self.log_sum = None

    def __call__(self, batch) -> None:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss, logs = self.fn(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.schedule.step()
        vals = torch.stack([v.float() for v in logs.values()])
        self.log_sum = vals if self.log_sum is None else self.log_sum + vals

    def flops(self, batch) -> int:
        """Matmul/convolution FLOPs of one forward+backward of this step's model on `batch` (the
        optimiser's elementwise work is not counted, as usual for MFU)."""
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                loss, _ = self.method(batch)
            loss.backward()
        self.optimizer.zero_grad(set_to_none=True)
        return int(counter.get_total_flops())


def setup_device(device: torch.device) -> None:
    """The backend switches fastssl.train sets on CUDA (cuDNN autotuner, TF32)."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True


def model_config(batch_size: int, seed: int = 0):
    """fastssl.pretrain's defaults (ResNet-18 CIFAR stem, 2048->128 head, LARS, temperature 0.2)."""
    from fastssl.pretrain import PretrainConfig

    return PretrainConfig(batch_size=batch_size, seed=seed, progress=False, knn_every=0)


def synthetic_batch(batch_size: int, size: int, device, channels_last: bool, seed: int = 0) -> Batch:
    """Normalised-looking random views: the step's speed does not depend on pixel values."""
    g = torch.Generator().manual_seed(seed)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    views = [torch.randn(batch_size, 3, size, size, generator=g).to(device, memory_format=fmt) for _ in range(2)]
    return Batch(views[0], views[1], torch.zeros(batch_size, dtype=torch.int64, device=device))


@dataclass
class StepConfig:
    batch_size: int | None = field(default=None, metadata={"help": "images per step, each giving two views (default 512; --quick 2)"})
    image_size: int | None = field(default=None, metadata={"help": "side of the synthetic views (default 32 = CIFAR; --quick 8)"})
    steps: int | None = field(default=None, metadata={"help": "timed steps per repeat (default 20 on CUDA, 3 on CPU; --quick 1)"})
    repeats: int | None = field(default=None, metadata={"help": "timed repeats, interleaved over the settings (default 5; >= 5 unless --quick, which does 1)"})
    warmup: int | None = field(default=None, metadata={"help": "untimed steps per setting first, compilation included (default 3; --quick 1)"})
    compile_backend: str | None = field(default=None, metadata={"help": "torch.compile backend (default inductor; --quick eager: dynamo capture only)"})
    device: str = field(default="auto", metadata={"help": "auto (cuda if available), cpu, cuda or cuda:N"})
    peak_tflops: float | None = field(default=None, metadata={"help": "peak dense bf16 TFLOP/s of the device for MFU (default: table by GPU model)"})
    seed: int = field(default=0, metadata={"help": "seed of the model and the synthetic batch"})
    precisions: str = field(default="fp32,bf16", metadata={"help": "comma-separated precisions to compare (fp32, bf16); CPUs without native bf16 run bf16 steps very slowly"})
    threads: int | None = field(default=None, metadata={"help": "torch CPU threads (default: torch's own; --quick 1)"})
    quick: bool = field(default=False, metadata={"help": "CPU smoke run in seconds: tiny batch and image, 1 repeat"})
    out: str | None = field(default=None, metadata={"help": "output directory (default benchmarks/results/<device>-<date>)"})
    overwrite: bool = field(default=False, metadata={"help": "replace step.* files already in --out"})

    def __post_init__(self):
        q = common.apply_quick(self)
        cuda = self.device != "cpu" and (self.device.startswith("cuda") or torch.cuda.is_available())
        # --quick: a tiny batch of 8x8 views, one repeat, dynamo without code generation. On CPUs
        # without native bf16, bf16 convolutions on contiguous tensors take a slow path costing ~2 s
        # a step whatever the size, which is most of the quick run's time.
        defaults = dict(batch_size=2 if q else 512, image_size=8 if q else 32,
                        steps=1 if q else (20 if cuda else 3), repeats=1 if q else 5, warmup=1 if q else 3,
                        compile_backend="eager" if q else "inductor")
        for k, v in defaults.items():
            if getattr(self, k) is None:
                setattr(self, k, v)
        for k in ("batch_size", "image_size", "steps", "repeats"):
            if getattr(self, k) <= 0:
                raise ValueError(f"--{k.replace('_', '-')} must be positive, got {getattr(self, k)}")
        if self.warmup < 1:
            raise ValueError("--warmup must be >= 1 (the first step compiles and autotunes)")
        if self.repeats < 5 and not q:
            raise ValueError(f"--repeats must be >= 5 for a reported benchmark (got {self.repeats}); --quick allows fewer")
        if self.batch_size < 2:
            raise ValueError("--batch-size must be >= 2 (BatchNorm and NT-Xent need several images)")
        wanted = [p.strip() for p in self.precisions.split(",") if p.strip()]
        if not wanted or set(wanted) - {"fp32", "bf16"}:
            raise ValueError(f"--precisions takes fp32 and/or bf16, got {self.precisions!r}")


def setting_name(s: dict) -> str:
    return " + ".join(["compiled" if s["compile"] else "eager", "channels_last" if s["channels_last"] else "contiguous",
                       "bf16" if s["bf16"] else "fp32"])


@cli
def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = parse(StepConfig, argv, description=__doc__)
    device = common.resolve_device(cfg.device)
    out = cfg.out or common.default_out(STEM, device, cfg.quick)
    common.check_out(out, [f"{STEM}.{e}" for e in ("json", "csv", "md", "png")], cfg.overwrite)
    common.set_threads(cfg.threads)
    env = common.environment("benchmarks.step", argv)
    setup_device(device)
    peak, peak_source = common.peak_tflops(device, cfg.peak_tflops)
    mcfg = model_config(cfg.batch_size, cfg.seed)

    bf16_options = [p == "bf16" for p in ("fp32", "bf16") if p in cfg.precisions.split(",")]
    settings = [dict(zip(FACTORS, (c, cl, b))) for c, cl, b in itertools.product((False, True), (False, True), bf16_options)]
    steps, batches = [], {}
    for s in settings:
        steps.append(TrainStep(mcfg, device, bf16=s["bf16"], compile=s["compile"], channels_last=s["channels_last"],
                               compile_backend=cfg.compile_backend))
        if s["channels_last"] not in batches:
            batches[s["channels_last"]] = synthetic_batch(cfg.batch_size, cfg.image_size, device, s["channels_last"], cfg.seed)
    flops = steps[0].flops(batches[False])  # same network and shapes for every setting
    print(f"step benchmark on {env['gpu'] or env['cpu']}: batch {cfg.batch_size} ({2 * cfg.batch_size} views of "
          f"{cfg.image_size}x{cfg.image_size}), {flops / 1e9:.1f} GFLOP per step, {cfg.steps} steps x {cfg.repeats} repeats",
          file=sys.stderr)

    peak_mem = [None] * len(settings)
    for i, (s, step) in enumerate(zip(settings, steps)):  # untimed warm-up: compilation, autotuning
        t0 = time.perf_counter()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(cfg.warmup):
            step(batches[s["channels_last"]])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            peak_mem[i] = torch.cuda.max_memory_allocated(device)
        print(f"{setting_name(s)}: warm-up {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    times = [[] for _ in settings]
    for r in range(cfg.repeats):
        for j in range(len(settings)):  # rotated order: drift and position effects hit every setting alike
            i = (j + r) % len(settings)
            batch = batches[settings[i]["channels_last"]]
            with common.Stopwatch(device) as sw:
                for _ in range(cfg.steps):
                    steps[i](batch)
            times[i].append(sw.seconds)

    records = []
    for s, t, mem in zip(settings, times, peak_mem):
        rate = common.summarize([cfg.batch_size * cfg.steps / x for x in t])
        step_ms = common.summarize([1000 * x / cfg.steps for x in t])
        tflops = flops * cfg.steps / statistics.median(t) / 1e12
        records.append({"setting": setting_name(s), **s, "img_per_s": rate, "step_ms": step_ms, "tflops": tflops,
                        "mfu": tflops / peak if peak and s["bf16"] else None,
                        "peak_memory_gib": mem / 2**30 if mem is not None else None})
    base = records[0]["img_per_s"]["median"]
    for rec in records:
        rec["speedup_vs_baseline"] = rec["img_per_s"]["median"] / base
    effects = []
    for f in FACTORS:
        ratios = []
        for rec_on in records:
            if rec_on[f]:
                off = next((r for r in records if not r[f] and all(r[g] == rec_on[g] for g in FACTORS if g != f)), None)
                if off is None:
                    continue
                ratios.append(rec_on["img_per_s"]["median"] / off["img_per_s"]["median"])
        if not ratios:  # a factor held fixed (e.g. --precisions fp32) has no effect to report
            continue
        effects.append({"choice": f, "geomean_speedup": math.exp(sum(map(math.log, ratios)) / len(ratios)),
                        "min_speedup": min(ratios), "max_speedup": max(ratios)})

    result = {"benchmark": STEM, "environment": env, "device": str(device),
              "settings": {**vars(cfg), "out": out, "flops_per_step": flops, "peak_tflops": peak,
                           "peak_source": peak_source, "model": "resnet18 (cifar stem) + 2048->128 head, LARS"},
              "records": records, "effects": effects}
    table = ("| setting | img/s median (min-max) | step ms | speed-up vs all-off | TFLOP/s | MFU | peak mem GiB |\n"
             "|---|---|---|---|---|---|---|\n")
    for rec in records:
        table += (f"| {rec['setting']} | {common.fmt_range(rec['img_per_s'])} | {rec['step_ms']['median']:.1f} | "
                  f"{rec['speedup_vs_baseline']:.2f}x | {rec['tflops']:.3f} | {common.fmt(rec['mfu'], '.1%')} | "
                  f"{common.fmt(rec['peak_memory_gib'], '.2f')} |\n")
    table += "\n" + common.markdown_table(
        ["choice turned on", "speed-up, geometric mean over the other settings", "range"],
        [[e["choice"], f"{e['geomean_speedup']:.2f}x", f"{e['min_speedup']:.2f}x-{e['max_speedup']:.2f}x"] for e in effects])
    common.write_all(out, STEM, result, records, table, lambda p: common.bar_chart(
        p, [r["setting"].replace(" + ", "\n") for r in records], {"images/s": [r["img_per_s"] for r in records]},
        "images/s (median, min-max)", f"SimCLR step, batch {cfg.batch_size}, {env['gpu'] or env['cpu']}"))
    print(f"wrote {os.path.join(out, STEM)}.{{json,csv,md,png}}", file=sys.stderr)
    common.print_table(table)
    return result


if __name__ == "__main__":
    main()
