"""Data-pipeline throughput: loader alone and feeding the real SimCLR training step.

    python -m benchmarks.throughput --data-dir data                          # GPU: all four pipelines
    python -m benchmarks.throughput --pipelines gpu,dali --batch-size 512 --workers 16
    python -m benchmarks.throughput --device cpu --batch-size 32 --steps 3 --loader-steps 40 --workers 2
    python -m benchmarks.throughput --quick --out /tmp/bench                 # CPU, seconds (CI)

For each pipeline (`torchvision`, `gpu`, `dali`, `ffcv`) on CIFAR-10 (the shipped cifar10-sample
with --quick or --dataset cifar10-sample; a missing dataset is an error) it measures, per repeat:
- loader-only: source images/s delivered as two augmented views, normalised, on the device;
- end-to-end: images/s of SimCLR training fed by that pipeline, using fastssl's own model,
  optimiser and step (benchmarks.step.TrainStep: bf16 autocast and torch.compile on CUDA, as
  fastssl.pretrain); a repeat times one whole epoch, its start-up included, as training sees it,
  right after an untimed whole epoch read the same way (so batches a loader prepared ahead, before
  the window, never count; `--steps N` below an epoch times N batches after N untimed ones);
- compute-only: the same step on one pre-made batch (no loading), once per repeat.
From these: data-wait fraction = (end-to-end step time - compute-only step time) / end-to-end
step time (share of each step the device waits for data; 0 when loading is fully hidden),
TFLOP/s = FLOPs per step (FlopCounterMode over one forward+backward of the real step) x steps/s,
MFU = TFLOP/s / peak, against both the datasheet's dense bf16 peak (--peak-tflops or
benchmarks/peaks.py) and the bf16 matmul rate measured at the start on CUDA (n/a on CPUs), and the
ratio to the torchvision DataLoader. Pipelines that cannot run say why ("unavailable: ...").
Pipelines (and the compute-only case) are interleaved in a rotating order across repeats.
"""

import sys
import time
from dataclasses import dataclass, field

import torch

import pipelines
from fastssl.config import ConfigError, cli, parse
from pipelines import Batch, DataError

from . import common, peaks, timing
from .step import TrainStep, model_config, setup_device

STEM = "throughput"
ORDER = ("torchvision", "gpu", "dali", "ffcv")
COMPUTE = "compute-only"


@dataclass
class ThroughputConfig:
    pipelines: str = field(
        default="torchvision,gpu,dali,ffcv", metadata={"help": "comma-separated pipelines to compare"}
    )
    dataset: str = field(
        default="cifar10",
        metadata={
            "help": "dataset (not found: an error, never a silent switch to the sample)",
            "choices": ["cifar10", "cifar100", "cifar10-sample"],
        },
    )
    data_dir: str | None = field(
        default=None, metadata={"help": "where the dataset lives (else $FASTSSL_DATA)"}
    )
    batch_size: int | None = field(
        default=None, metadata={"help": "images per step, each giving two views (default 512; --quick 2)"}
    )
    workers: int | None = field(
        default=None,
        metadata={"help": "worker processes/threads of torchvision, dali, ffcv (default 16; --quick 1)"},
    )
    repeats: int | None = field(
        default=None,
        metadata={"help": "timed repeats, interleaved over pipelines (default 5; >= 5 unless --quick)"},
    )
    steps: int | None = field(
        default=None, metadata={"help": "timed training steps per repeat (default: one epoch; --quick 1)"}
    )
    loader_steps: int | None = field(
        default=None,
        metadata={"help": "timed loader-only batches per repeat (default: one epoch; --quick 2)"},
    )
    warmup: int | None = field(
        default=None,
        metadata={
            "help": "untimed training steps per pipeline first, compilation included (default 3; --quick 1)"
        },
    )
    device: str = field(default="auto", metadata={"help": "auto (cuda if available), cpu, cuda or cuda:N"})
    precision: str = field(
        default="auto",
        metadata={
            "help": "auto: bf16 autocast on CUDA, fp32 on CPU (as fastssl.pretrain)",
            "choices": ["auto", "bf16", "fp32"],
        },
    )
    compile: bool | None = field(
        default=None, metadata={"help": "torch.compile the step (default: on for CUDA, as fastssl.pretrain)"}
    )
    compile_backend: str = field(default="inductor", metadata={"help": "torch.compile backend"})
    peak_tflops: float | None = field(
        default=None,
        metadata={"help": "peak dense bf16 TFLOP/s of the device for MFU (default: table by GPU model)"},
    )
    cache_dir: str | None = field(
        default=None,
        metadata={"help": "where dali/ffcv keep their converted copy of the data (default: theirs)"},
    )
    seed: int = field(default=0, metadata={"help": "seed of model, data order and augmentation"})
    threads: int | None = field(
        default=None, metadata={"help": "torch CPU threads (default: torch's own; --quick 1)"}
    )
    quick: bool = field(default=False, metadata={"help": "CPU smoke run in seconds on cifar10-sample"})
    out: str | None = field(
        default=None, metadata={"help": "output directory (default benchmarks/results/<device>-<date>)"}
    )
    overwrite: bool = field(default=False, metadata={"help": "replace throughput.* files already in --out"})

    def __post_init__(self):
        q = common.apply_quick(self)
        defaults = dict(
            batch_size=2 if q else 512,
            workers=1 if q else 16,
            repeats=2 if q else 5,
            steps=1 if q else None,
            loader_steps=2 if q else None,
            warmup=1 if q else 3,
        )
        for k, v in defaults.items():
            if getattr(self, k) is None:
                setattr(self, k, v)
        self.pipeline_list = [p.strip() for p in self.pipelines.split(",") if p.strip()]
        bad = [p for p in self.pipeline_list if p not in pipelines.PIPELINES]
        if bad or not self.pipeline_list:
            raise ValueError(
                f"--pipelines: unknown {', '.join(bad) or '(none given)'}; choose from {', '.join(pipelines.PIPELINES)}"
            )
        for k in ("batch_size", "repeats", "steps", "loader_steps"):
            v = getattr(self, k)
            if v is not None and v <= 0:
                raise ValueError(f"--{k.replace('_', '-')} must be positive, got {v}")
        if self.batch_size < 2:
            raise ValueError("--batch-size must be >= 2 (BatchNorm and NT-Xent need several images)")
        if self.workers < 0 or self.warmup < 1:
            raise ValueError("--workers must be >= 0 and --warmup >= 1")
        if self.repeats < 5 and not q:
            raise ValueError(
                f"--repeats must be >= 5 for a reported benchmark (got {self.repeats}); --quick allows fewer"
            )


def load_data(cfg):
    """(dataset, note). Never a silent substitute: numbers on the 2,000-image sample are not CIFAR-10's,
    so a missing dataset is an error (DataError, exit 2) and the sample is used only when asked for."""
    from pipelines import datasets

    if cfg.quick:
        return datasets.load("cifar10-sample", "train"), "cifar10-sample (--quick)"
    return datasets.load(cfg.dataset, "train", cfg.data_dir, download=False), cfg.dataset


def build_loader(name, data, cfg, device):
    kwargs = dict(batch_size=cfg.batch_size, device=device, seed=cfg.seed, recipe="simclr")
    if name != "gpu":
        kwargs["workers"] = cfg.workers  # the gpu pipeline has no workers, as in fastssl.train
    if name in ("dali", "ffcv") and cfg.cache_dir:
        kwargs["cache_dir"] = cfg.cache_dir
    return pipelines.build(name, data, **kwargs)


def timed_pass(loader, epoch: int, steps: int, device, step=None) -> float:
    """Images/s of a window of `steps` batches, each fed to `step` when given, read right after an
    untimed lead-in consumed the same way. Syncs only at the window's ends.

    steps >= len(loader): the window is the whole epoch `epoch` + 1 (its start-up, set_epoch and
    iter, included, as training sees it), after the whole epoch `epoch` as lead-in. Otherwise the
    window is batches steps..2*steps-1 of epoch `epoch`, after its first `steps` as lead-in, which
    must outnumber the batches the loader prepares ahead (the suite times whole epochs; this is for
    short CPU runs). Either way a batch made before the
    window never counts as made inside it: a loader that prepares batches ahead (DataLoader
    workers' prefetch, DALI's pipeline started for the next epoch) fills its queue while the other
    pipelines run, and the lead-in empties it at the consumer's pace. And no batch of an earlier,
    part-read epoch is still in flight when the window starts: its drain falls in the lead-in."""

    def feed(batch):
        if step is not None:
            step(batch)
        return batch.view1.shape[0]

    if steps >= len(loader):
        loader.set_epoch(epoch)
        for batch in loader:
            feed(batch)
        with timing.Stopwatch(device) as sw:
            loader.set_epoch(epoch + 1)
            images = sum(feed(batch) for batch in loader)
        return images / sw.seconds
    loader.set_epoch(epoch)
    it = iter(loader)
    lead = min(steps, len(loader) - steps)
    for _ in range(lead):
        feed(next(it))
    with timing.Stopwatch(device) as sw:
        images = sum(feed(next(it)) for _ in range(steps))
    close = getattr(it, "close", None)  # stop the part-read epoch (generator/worker clean-up) untimed
    if close is not None:
        close()
    del it
    return images / sw.seconds


def compute_pass(step, batch, steps: int, device) -> float:
    with timing.Stopwatch(device) as sw:
        for _ in range(steps):
            step(batch)
    return batch.view1.shape[0] * steps / sw.seconds


def _reason(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0]}" if msg else type(e).__name__


def installed(name: str) -> bool:
    """Whether the library behind pipeline `name` is importable at all (checked without importing
    it: DALI's import alone takes seconds). Its absence is a skip, not a failure."""
    import importlib.util

    module = {"dali": "nvidia.dali", "ffcv": "ffcv", "torchvision": "torchvision"}.get(name)
    try:
        return module is None or importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def measure(cfg, device, env, expired=lambda: False, peak=None) -> dict:
    """The whole measurement (no files written): the result dict that main() saves.

    `expired()` is polled between warm-ups and repeats; once it says True no new work starts, the
    repeats done so far are kept and the result says `cut` (the suite's stage deadline)."""
    setup_device(device)
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    compiled = cfg.compile if cfg.compile is not None else device.type == "cuda"
    peak = dict(peak or peaks.peak_info(device, cfg.peak_tflops))  # the suite passes the one it measured
    if peak["datasheet_tflops"] is not None and not bf16 and cfg.peak_tflops is None:
        peak.update(
            datasheet_tflops=None,
            datasheet_source="the datasheet peak is for bf16; run bf16 or pass --peak-tflops",
        )
        peak["measured_tflops"] = None  # measured in bf16 too
    threads = torch.get_num_threads()

    data, data_note = load_data(cfg)
    if len(data.labels) < cfg.batch_size:
        raise ConfigError(
            f"--batch-size {cfg.batch_size} exceeds the {len(data.labels)} images of {data.name}"
        )

    # Build every pipeline first (conversions to .beton / DALI shards happen here, untimed).
    status, loaders = {}, {}
    for name in cfg.pipeline_list:
        t0 = time.perf_counter()
        if not installed(name):
            status[name] = f"skipped: not installed (pip install -e .[{name}])"
        elif expired():
            status[name] = "cut: out of time before it was built"
        else:
            try:
                loaders[name] = build_loader(name, data, cfg, device)
                status[name] = "ok"
            except (DataError, ImportError, RuntimeError, OSError) as e:
                status[name] = f"unavailable: {_reason(e)}"
        torch.set_num_threads(threads)
        print(f"{name}: {status[name]} (built in {time.perf_counter() - t0:.1f} s)", file=sys.stderr)

    step = TrainStep(
        model_config(cfg.batch_size, cfg.seed),
        device,
        bf16=bf16,
        compile=compiled,
        compile_backend=cfg.compile_backend,
        num_classes=len(data.classes),
    )
    steps_of, loader_steps_of, warmup_s = {}, {}, {}
    premade = None
    for name, loader in list(loaders.items()):  # untimed warm-up: workers, autotuning, compilation
        if expired():
            status[name] = "cut: out of time before its warm-up"
            del loaders[name]
            continue
        t0 = time.perf_counter()
        try:
            n = len(loader)
            steps_of[name] = min(cfg.steps or n, n)
            loader_steps_of[name] = min(cfg.loader_steps or n, n)
            loader.set_epoch(0)
            it = iter(loader)
            for i in range(min(cfg.warmup, n)):
                batch = next(it).check(device) if i == 0 else next(it)
                if premade is None:  # the compute-only batch: a real one, cloned out of the loader's buffers
                    premade = Batch(
                        batch.view1.clone(memory_format=torch.channels_last),
                        batch.view2.clone(memory_format=torch.channels_last),
                        batch.labels.clone(),
                    )
                step(batch)
            getattr(it, "close", lambda: None)()
            del it
            warmup_s[name] = time.perf_counter() - t0  # the first one includes compiling the step
            print(f"{name}: warm-up {warmup_s[name]:.1f} s", file=sys.stderr)
        except Exception as e:  # noqa: BLE001 - one broken pipeline must not hide the others' numbers
            status[name] = f"failed: {_reason(e)}"
            del loaders[name]
            print(f"{name}: {status[name]}", file=sys.stderr)
        torch.set_num_threads(threads)
    if premade is None:
        g = torch.Generator().manual_seed(cfg.seed)
        views = [
            torch.randn(cfg.batch_size, 3, 32, 32, generator=g).to(device, memory_format=torch.channels_last)
            for _ in range(2)
        ]
        premade = Batch(views[0], views[1], torch.zeros(cfg.batch_size, dtype=torch.int64, device=device))
    compute_steps = cfg.steps or max(steps_of.values(), default=len(data.labels) // cfg.batch_size)
    step(premade)  # the model is warm from the pipelines' warm-up; this covers a new batch layout
    flops = step.flops(premade)
    print(
        f"{flops / 1e9:.1f} GFLOP per step (batch {cfg.batch_size}); bf16={bf16} compile={compiled}; "
        f"data: {data_note}",
        file=sys.stderr,
    )

    loader_rates = {name: [] for name in loaders}
    e2e_rates = {name: [] for name in loaders}
    compute_rates = []
    repeats_done = 0
    for r in range(cfg.repeats):
        if expired():
            break
        cases = list(loaders) + [COMPUTE]
        for j in range(len(cases)):  # rotated order: drift and position effects hit every pipeline alike
            name = cases[(j + r) % len(cases)]
            if name == COMPUTE:
                compute_rates.append(compute_pass(step, premade, compute_steps, device))
                continue
            if status[name] != "ok":
                continue
            try:
                # Each pass brings its own untimed lead-in (timed_pass), so neither order nor the
                # other pipelines' passes in between change what a window measures.
                e2e_rates[name].append(timed_pass(loaders[name], 1 + 4 * r, steps_of[name], device, step))
                loader_rates[name].append(timed_pass(loaders[name], 3 + 4 * r, loader_steps_of[name], device))
            except Exception as e:  # noqa: BLE001
                status[name] = f"failed: {_reason(e)}"
                print(f"{name}: {status[name]}", file=sys.stderr)
            torch.set_num_threads(threads)  # FFCV sets torch's thread count at each epoch start
        repeats_done += 1
        print(f"repeat {r + 1}/{cfg.repeats} done", file=sys.stderr)
    if not repeats_done:
        for name in loaders:
            if status[name] == "ok":
                status[name] = "cut: out of time before the first repeat"

    compute = common.summarize(compute_rates) if compute_rates else None
    records = []
    for name in cfg.pipeline_list:
        rec = {
            "pipeline": name,
            "status": status[name],
            "loader_img_per_s": None,
            "e2e_img_per_s": None,
            "e2e_step_ms": None,
            "data_wait_fraction": None,
            "data_wait_fraction_raw": None,
            "tflops": None,
            "mfu": None,
            "mfu_measured": None,
            "e2e_vs_torchvision": None,
            "loader_vs_torchvision": None,
            "steps_per_repeat": steps_of.get(name),
            "loader_steps_per_repeat": loader_steps_of.get(name),
            "warmup_s": warmup_s.get(name),
        }
        if status[name] == "ok" and e2e_rates[name]:
            e2e = common.summarize(e2e_rates[name])
            raw = 1 - e2e["median"] / compute["median"]
            rec.update(
                loader_img_per_s=common.summarize(loader_rates[name]),
                e2e_img_per_s=e2e,
                e2e_step_ms=1000 * cfg.batch_size / e2e["median"],
                # Negative values are timing noise (end-to-end cannot beat compute-only).
                data_wait_fraction=max(0.0, raw),
                data_wait_fraction_raw=raw,
                tflops=flops * e2e["median"] / cfg.batch_size / 1e12,
            )
            rec.update(peaks.mfu(rec["tflops"], peak))
        records.append(rec)
    if compute is not None:
        comp_tflops = flops * compute["median"] / cfg.batch_size / 1e12
        records.append(
            {
                "pipeline": COMPUTE,
                "status": "ok",
                "loader_img_per_s": None,
                "e2e_img_per_s": compute,
                "e2e_step_ms": 1000 * cfg.batch_size / compute["median"],
                "data_wait_fraction": 0.0,
                "data_wait_fraction_raw": 0.0,
                "tflops": comp_tflops,
                **peaks.mfu(comp_tflops, peak),
                "e2e_vs_torchvision": None,
                "loader_vs_torchvision": None,
                "steps_per_repeat": compute_steps,
                "loader_steps_per_repeat": None,
            }
        )
    else:
        records.append(
            {
                "pipeline": COMPUTE,
                "status": "cut: out of time before the first repeat",
                **{k: None for k in records[0] if k not in ("pipeline", "status")},
            }
        )
    tv = next((r for r in records if r["pipeline"] == "torchvision" and r["e2e_img_per_s"]), None)
    for rec in records:
        if tv and rec["e2e_img_per_s"]:
            rec["e2e_vs_torchvision"] = rec["e2e_img_per_s"]["median"] / tv["e2e_img_per_s"]["median"]
            if rec["loader_img_per_s"]:
                rec["loader_vs_torchvision"] = (
                    rec["loader_img_per_s"]["median"] / tv["loader_img_per_s"]["median"]
                )

    targets = make_targets(cfg, env, data, records, tv)
    return {
        "benchmark": STEM,
        "environment": env,
        "device": str(device),
        "dataset": data_note,
        "dataset_images": len(data.labels),
        "cut": repeats_done < cfg.repeats,
        "repeats_done": repeats_done,
        "settings": {k: v for k, v in vars(cfg).items() if k != "pipeline_list"}
        | {
            "bf16": bf16,
            "compile": compiled,
            "flops_per_step": flops,
            "peak": peak,
            "compute_steps_per_repeat": compute_steps,
            "model": "resnet18 (cifar stem) + 2048->128 head, LARS, fastssl.pretrain defaults",
        },
        "records": records,
        "targets": targets,
    }


def chart(path, result) -> None:
    """Loader-only and end-to-end bars per pipeline (log scale)."""
    s, env = result["settings"], result["environment"]
    ok = [r for r in result["records"] if r["e2e_img_per_s"]]
    common.bar_chart(
        path,
        [r["pipeline"] for r in ok],
        {"loader-only": [r["loader_img_per_s"] for r in ok], "end-to-end": [r["e2e_img_per_s"] for r in ok]},
        "images/s (median, min-max; log)",
        f"SimCLR data throughput, batch {s['batch_size']}, "
        f"{s['workers']} workers, {env['gpu'] or env['cpu']}",
        log=True,
    )


@cli
def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = parse(ThroughputConfig, argv, description=__doc__)
    device = common.resolve_device(cfg.device)
    out = cfg.out or common.default_out(STEM, device, cfg.quick)
    common.check_out(out, [f"{STEM}.{e}" for e in ("json", "csv", "md", "png")], cfg.overwrite)
    common.set_threads(cfg.threads)
    env = common.environment("benchmarks.throughput", argv)
    result = measure(cfg, device, env)
    result["settings"]["out"] = out
    table = render(result)
    common.write_all(out, STEM, result, result["records"], table, lambda p: chart(p, result))
    common.print_table(table)
    return result


def make_targets(cfg, env, data, records, tv):
    """The targets, judged only on an H100/H200-class GPU with full CIFAR-10."""
    this_run = [
        r
        for r in (
            peaks.not_target_reason(env["gpu"]),
            "" if data.name == "cifar10" else f"needs full CIFAR-10 (data: {data.name})",
        )
        if r
    ]
    full = not this_run and not cfg.quick
    why = "; ".join(this_run) or ("--quick" if cfg.quick else "")
    pipes = [r for r in records if r["e2e_img_per_s"] and r["pipeline"] != COMPUTE]
    best = max(pipes, key=lambda r: r["e2e_img_per_s"]["median"], default=None)
    gpu_rec = next((r for r in pipes if r["pipeline"] == "gpu"), None)
    cls = peaks.TARGET_CLASS
    return [
        common.target(
            f"end-to-end >= 45,000 img/s with the best pipeline ({cls})",
            best["e2e_img_per_s"]["median"] if best else None,
            45000,
            True,
            full and best is not None,
            why if not full else "no pipeline ran",
            "img/s",
        ),
        common.target(
            f"best end-to-end >= 3x torchvision with 16 workers ({cls})",
            best["e2e_vs_torchvision"] if best and tv else None,
            3.0,
            True,
            full and cfg.workers == 16 and best is not None and tv is not None,
            why
            if not full
            else (
                f"--workers {cfg.workers}, not 16"
                if cfg.workers != 16
                else "torchvision or every other pipeline unavailable"
            ),
            "x",
        ),
        common.target(
            f"gpu loader-only >= 200,000 two-view img/s ({cls})",
            gpu_rec["loader_img_per_s"]["median"] if gpu_rec else None,
            200000,
            True,
            full and gpu_rec is not None,
            why if not full else "gpu pipeline not run",
            "img/s",
        ),
        common.target(
            f"gpu pipeline data wait < 2% of step time ({cls})",
            gpu_rec["data_wait_fraction"] if gpu_rec else None,
            0.02,
            False,
            full and gpu_rec is not None,
            why if not full else "gpu pipeline not run",
            "fraction",
        ),
    ]


def target_rows(targets) -> list:
    """[target, value, status] rows; fractions as percentages, ratios with 2 decimals."""

    def value(t):
        spec = {"x": ",.2f", "fraction": ".1%"}.get(t["unit"], ",.0f")
        return common.fmt(t["value"], spec)

    return [
        [t["target"], value(t), t["status"] + (f" ({t['reason']})" if t["reason"] else "")] for t in targets
    ]


def render(result) -> str:
    s = result["settings"]
    rows = []
    for r in result["records"]:
        if not r["e2e_img_per_s"]:
            rows.append([r["pipeline"], r["status"]] + [""] * 8)
            continue
        rows.append(
            [
                r["pipeline"],
                r["status"],
                common.fmt_range(r["loader_img_per_s"]) if r["loader_img_per_s"] else "-",
                common.fmt_range(r["e2e_img_per_s"]),
                f"{r['e2e_step_ms']:.1f}",
                common.fmt(r["e2e_vs_torchvision"], ".2f") + ("x" if r["e2e_vs_torchvision"] else ""),
                common.fmt(r["data_wait_fraction"], ".0%"),
                common.fmt(r["tflops"], ".3f"),
                common.fmt(r["mfu"], ".1%"),
                common.fmt(r["mfu_measured"], ".1%"),
            ]
        )
    peak = s["peak"]
    cut = f", cut after {result['repeats_done']} of {s['repeats']} repeats" if result["cut"] else ""
    head = (
        f"data: {result['dataset']}; batch {s['batch_size']}, {s['workers']} workers, "
        f"{'bf16' if s['bf16'] else 'fp32'}, {'compiled' if s['compile'] else 'eager'}, {s['repeats']} repeats{cut}; "
        f"peak: {common.fmt(peak['datasheet_tflops'], '.0f')} TFLOP/s ({peak['datasheet_source']}), "
        f"measured bf16 matmul {common.fmt(peak['measured_tflops'], '.0f')} TFLOP/s\n\n"
    )
    table = common.markdown_table(
        [
            "pipeline",
            "status",
            "loader-only img/s median (min-max)",
            "end-to-end img/s median (min-max)",
            "step ms",
            "e2e vs torchvision",
            "data wait",
            "TFLOP/s",
            "MFU (datasheet)",
            "MFU (measured matmul)",
        ],
        rows,
    )
    table += "\n" + common.markdown_table(["target", "value", "status"], target_rows(result["targets"]))
    return head + table


if __name__ == "__main__":
    main()
