"""The stages of `python -m benchmarks.suite`, each a function `(ctx, expired) -> result dict`.

`ctx` is the suite's state (config, device, environment, earlier stages' results, work folder);
`expired()` says the stage's deadline has passed: stages poll it between units of work, stop
starting new ones and return what they have with `"cut": True`. A stage that cannot run at all
raises `Skip(reason)`. The measuring code is the benchmarks' own (benchmarks.throughput.measure,
benchmarks.nt_xent.measure, benchmarks.step.TrainStep) and fastssl's own training and probes
(fastssl.train.train, fastssl.eval.linear.evaluate): nothing here re-implements a loop it reports on.
"""

import json
import os
import statistics
import subprocess
import sys
import time
from typing import Callable, NamedTuple

import torch

from fastssl.config import parse

from . import common, nt_xent, peaks, preflight, throughput, timing
from . import step as step_bench
from .suite_plan import epoch_seconds, measure_costs, plan_epochs


class Skip(Exception):
    """The stage cannot run here (missing library, data or device); the message says why."""


def log(msg: str) -> None:
    print(f"[suite] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- 1. environment


def environment(ctx, expired) -> dict:
    """Versions, GPU, driver, commit and command, and the measured bf16 matmul peak."""
    info = peaks.peak_info(ctx.device, ctx.cfg.peak_tflops, measure=True, n=ctx.sizes["matmul_n"])
    ctx.peak = info
    log(
        f"{ctx.env['gpu'] or ctx.env['cpu']}: datasheet {common.fmt(info['datasheet_tflops'], '.0f')} TFLOP/s "
        f"({info['datasheet_source']}), measured {info['measured']['n']}^3 {info['measured']['dtype']} matmul "
        f"{info['measured_tflops']:.2f} TFLOP/s"
    )
    return {
        "environment": ctx.env,
        "peak": info,
        "installed": {p: throughput.installed(p) for p in ("torchvision", "dali", "ffcv")},
    }


# ----------------------------------------------------------------------------- 2. step ablation

# Each row turns one more thing on (cumulative), from plain eager fp32 to the fastest step, as a
# setting of benchmarks.step (compile, channels_last, bf16, torch.compile mode, LARS update path).
ABLATION = [
    ("eager fp32 contiguous", {}),
    ("+ channels_last", {"channels_last": True}),
    ("+ bf16 autocast", {"bf16": True}),
    ("+ torch.compile", {"compile": True}),
    ("+ fast optimiser", {"optimizer": "foreach"}),  # multi-tensor LARS instead of one tensor at a time
    ("+ CUDA graphs", {"mode": "reduce-overhead"}),  # static input buffers, graphs replayed
]
BASE = {
    "compile": False,
    "channels_last": False,
    "bf16": False,
    "mode": "default",
    "optimizer": "loop",
    "probe": False,
}


def _graphs() -> int:
    """Graphs dynamo has compiled so far in this process (a steady-state step must add none)."""
    from fastssl.step import compile_counters

    return compile_counters()["unique_graphs"]


def _skip_reason(setting, device, backend, compiled=True, why_not="") -> str:
    if (setting["compile"] or setting["mode"] != "default") and not compiled:
        return f"not compiled ({why_not})"
    if setting["mode"] == "reduce-overhead" and device.type != "cuda":
        return "CUDA graphs need a CUDA device"
    if setting["mode"] != "default" and backend != "inductor":
        return f"compile modes need the inductor backend (this run: {backend})"
    return ""


def step_ablation(ctx, expired) -> dict:
    s = ctx.sizes
    scfg = parse(
        step_bench.StepConfig,
        [
            "--batch-size",
            str(s["step_batch"]),
            "--image-size",
            str(s["image_size"]),
            "--steps",
            str(s["step_steps"]),
            "--repeats",
            str(s["step_repeats"]),
            "--warmup",
            str(s["step_warmup"]),
            "--compile-backend",
            s["compile_backend"],
            "--seed",
            str(ctx.cfg.seed),
            "--device",
            str(ctx.device),
        ]
        + (["--quick"] if ctx.cfg.smoke else []),
    )
    step_bench.setup_device(ctx.device)
    rows, live, setting = [], [], dict(BASE)
    compiled, why_not = ctx.compile["enabled"], ctx.compile["reason"]
    for name, change in ABLATION:
        setting = {**setting, **change}
        if not compiled and setting["compile"] and "compile" not in change:
            setting["compile"] = False  # later rows go on eager, and say so
            name += " (eager)"
        row = {
            "setting": name,
            **setting,
            "status": "ok",
            "benchmark_setting": step_bench.setting_name(setting),
        }
        rows.append(row)
        reason = _skip_reason(setting, ctx.device, s["compile_backend"], compiled, why_not)
        if reason:
            row["status"] = f"skipped: {reason}"
            setting = {**setting, "mode": "default"}  # later rows go on without it
            continue
        if expired():
            row["status"] = "cut: out of time before its warm-up"
            continue
        t0 = time.perf_counter()
        try:
            st = step_bench.build(setting, scfg, ctx.device)
            batch = step_bench.synthetic_batch(
                s["step_batch"], s["image_size"], ctx.device, setting["channels_last"], ctx.cfg.seed
            )
            if ctx.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(ctx.device)
            before = _graphs()
            with preflight.cudagraph_watch() as watch:
                for _ in range(s["step_warmup"]):
                    st(batch)
            row["graphs_warmup"] = _graphs() - before
            if setting["mode"] == "reduce-overhead" and not watch.engaged:
                # inductor fell back to plain compiled code: timed, but never called CUDA graphs
                row["status"] = f"not engaged: {watch.reason}"
                row["setting"] = name + " (not engaged)"
            if ctx.device.type == "cuda":
                torch.cuda.synchronize(ctx.device)
                row["peak_memory_gib"] = torch.cuda.max_memory_allocated(ctx.device) / 2**30
            row["warmup_s"] = time.perf_counter() - t0
            row["flops_per_step"] = st.flops(batch)
            live.append((row, st, batch))
        except Exception as e:  # noqa: BLE001 - one broken setting must not hide the others
            row["status"] = f"failed: {throughput._reason(e)}"
        log(f"step {name}: {row['status']} (warm-up {time.perf_counter() - t0:.1f} s)")
    for row, _, _ in live:
        row["times"] = []
        row["recompiles_timed"] = 0
    for r in range(s["step_repeats"]):
        if expired():
            break
        for j in range(len(live)):  # rotated order: drift hits every setting alike
            row, st, batch = live[(j + r) % len(live)]
            before = _graphs()
            with timing.Stopwatch(ctx.device) as sw:
                for _ in range(s["step_steps"]):
                    st(batch)
            row["recompiles_timed"] += _graphs() - before
            row["times"].append(sw.seconds)
    for row, st, batch in live:  # the optimiser alone, on the gradients of one real step
        if expired() or not row["times"]:
            break
        st(batch)
        with timing.Stopwatch(ctx.device) as sw:
            for _ in range(s["step_steps"]):
                st.optimizer.step()
        row["optimizer_ms"] = 1000 * sw.seconds / s["step_steps"]
    base = None
    for row, _, _ in live:
        if not row["times"]:
            row["status"] = "cut: out of time before the first repeat"
            continue
        t = row.pop("times")
        row["img_per_s"] = common.summarize([s["step_batch"] * s["step_steps"] / x for x in t])
        row["step_ms"] = common.summarize([1000 * x / s["step_steps"] for x in t])
        row["tflops"] = row["flops_per_step"] * s["step_steps"] / statistics.median(t) / 1e12
        row.update(peaks.mfu(row["tflops"], ctx.peak) if row["bf16"] else {"mfu": None, "mfu_measured": None})
        base = base or row["img_per_s"]["median"]
        row["speedup_vs_first"] = row["img_per_s"]["median"] / base
    done = [r for r in rows if r.get("img_per_s")]
    return {
        "batch_size": s["step_batch"],
        "image_size": s["image_size"],
        "steps_per_repeat": s["step_steps"],
        "repeats": s["step_repeats"],
        "compile_backend": s["compile_backend"],
        "rows": rows,
        # the row that runs what fastssl.train runs here, for the time-to-accuracy plan
        "best_img_per_s": next(
            (
                r["img_per_s"]["median"]
                for r in done
                if r["compile"] == ctx.train_compile
                and r["channels_last"]
                and r["bf16"] == (ctx.device.type == "cuda")
                and r["mode"] == "default"
                and r["optimizer"] == "foreach"
            ),
            None,
        ),
        "cut": any(r["status"].startswith("cut") for r in rows)
        or any(len(r["img_per_s"]["values"]) < s["step_repeats"] for r in done),
    }


# ----------------------------------------------------------------------------- 3. throughput


def throughput_stage(ctx, expired) -> dict:
    s = ctx.sizes
    argv = [
        "--pipelines",
        ctx.cfg.pipelines,
        "--dataset",
        s["throughput_dataset"],
        "--batch-size",
        str(s["throughput_batch"]),
        "--workers",
        str(s["workers"]),
        "--repeats",
        str(s["throughput_repeats"]),
        "--seed",
        str(ctx.cfg.seed),
        "--device",
        str(ctx.device),
    ]
    # Whole epochs unless sized down (--smoke): see benchmarks.throughput.timed_pass.
    argv += ["--steps", str(s["throughput_steps"])] if s["throughput_steps"] else []
    argv += ["--loader-steps", str(s["loader_steps"])] if s["loader_steps"] else []
    if not ctx.compile["enabled"]:
        argv += ["--no-compile"]
    if ctx.cfg.data_dir:
        argv += ["--data-dir", ctx.cfg.data_dir]
    if ctx.cfg.smoke:
        argv += ["--quick"]
    if ctx.cfg.peak_tflops is not None:
        argv += ["--peak-tflops", str(ctx.cfg.peak_tflops)]
    argv += ["--cache-dir", os.path.join(ctx.work, "pipeline-cache")]
    tcfg = parse(throughput.ThroughputConfig, argv)
    result = throughput.measure(
        tcfg, ctx.device, ctx.env, expired, peak=ctx.peak if "datasheet_source" in ctx.peak else None
    )
    result["command"] = "python -m benchmarks.throughput " + " ".join(argv)
    result["compile_note"] = "" if ctx.compile["enabled"] else f"eager: {ctx.compile['reason']}"
    gpu = next((r for r in result["records"] if r["pipeline"] == "gpu" and r["e2e_img_per_s"]), None)
    result["gpu_e2e_img_per_s"] = gpu["e2e_img_per_s"]["median"] if gpu else None
    return result


# ----------------------------------------------------------------------------- 4. NT-Xent


def nt_xent_stage(ctx, expired) -> dict:
    s = ctx.sizes
    argv = [
        "--sizes",
        s["nt_xent_sizes"],
        "--dtypes",
        "fp32",
        "--repeats",
        str(s["nt_xent_repeats"]),
        "--device",
        str(ctx.device),
    ] + (["--quick"] if ctx.cfg.smoke else [])
    if not ctx.compile["enabled"]:
        argv += ["--modes", "eager"]
    result = nt_xent.measure(parse(nt_xent.NTXentConfig, argv), ctx.device, ctx.env, expired)
    result["command"] = "python -m benchmarks.nt_xent " + " ".join(argv)
    result["compile_note"] = (
        "" if ctx.compile["enabled"] else f"compiled cases not run: {ctx.compile['reason']}"
    )
    return result


# ----------------------------------------------------------------------------- 5. time to accuracy


def pretrain_argv(ctx, epochs: int, out: str) -> list:
    s = ctx.sizes
    argv = [
        "--dataset",
        s["train_dataset"],
        "--epochs",
        str(epochs),
        "--batch-size",
        str(s["train_batch"]),
        "--knn-every",
        str(s["knn_every"]),
        "--seed",
        str(ctx.cfg.seed),
        "--device",
        str(ctx.device),
        "--out",
        out,
        "--overwrite",
        "--no-progress",
    ]
    if ctx.cfg.data_dir:
        argv += ["--data-dir", ctx.cfg.data_dir]
    if s.get("train_subset"):
        argv += ["--subset", str(s["train_subset"])]
    if not ctx.compile["enabled"]:
        argv += ["--no-compile"]
    argv += s.get("train_extra", [])
    return argv


def time_to_accuracy(ctx, expired) -> dict:
    from fastssl.pretrain import PretrainConfig
    from fastssl.train import train

    s = ctx.sizes
    if s["train_dataset"] == "cifar10" and (missing := absent("cifar10", ctx.cfg.data_dir)):
        raise Skip(f"CIFAR-10 not found: {missing}")
    # A probe whose data is not here is skipped at once (nothing is downloaded) and gets no time.
    probes = {"linear": s["probe_dataset"], "transfer": "cifar100"}
    missing = {k: absent(d, ctx.cfg.data_dir) for k, d in probes.items()}
    costs = measure_costs(ctx, need_epoch=epoch_seconds(ctx)[0] is None and not ctx.cfg.epochs)
    epochs, plan = plan_epochs(
        ctx, ctx.deadline - time.monotonic(), costs, [k for k in probes if not missing[k]]
    )
    run = os.path.join(ctx.work, "pretrain")
    argv = pretrain_argv(ctx, epochs, run)
    log(
        f"time to accuracy: {epochs} epochs ({plan.get('source')}); python -m fastssl.pretrain {' '.join(argv)}"
    )
    result = {
        "epochs_planned": epochs,
        "plan": plan,
        "command": "python -m fastssl.pretrain " + " ".join(argv),
        "dataset": s["train_dataset"],
        "curve": [],
        "cut": False,
    }
    ctx.partial["time_to_accuracy"] = result  # what is known so far survives a cut
    t0 = time.monotonic()
    try:
        result["summary"] = train(parse(PretrainConfig, argv), argv)
    finally:
        result["curve"] = knn_curve(os.path.join(run, "metrics.jsonl"))
        result["pretrain_wall_s"] = time.monotonic() - t0
        result["time_to_85_s"] = next((p["wall_s"] for p in result["curve"] if p["knn_top1"] >= 85.0), None)
    result["probes"] = {}
    for key, dataset in probes.items():
        if missing[key]:
            result["probes"][key] = {"status": f"skipped: {missing[key]} (nothing downloaded)"}
            continue
        if expired():
            result["probes"][key] = {"status": "cut: out of time before it started"}
            result["cut"] = True
            continue
        result["probes"][key] = probe(ctx, run, dataset, key)
    return result


def absent(dataset: str, data_dir) -> str:
    """ "" when `dataset` is on this machine, else why not; never downloads (an offline machine
    would wait on DNS and a 20 s timeout first)."""
    from pipelines import DataError
    from pipelines.data import cifar

    if dataset not in cifar.ARCHIVES:
        return ""  # shipped with fastssl (cifar10-sample)
    try:
        cifar.find_cifar(dataset, data_dir, download=False)
        return ""
    except DataError as e:
        return str(e)


def knn_curve(path: str) -> list:
    """[{epoch, wall_s, knn_top1, knn_top5}] from a run's metrics.jsonl: the trainer's kNN monitor, which
    scores a validation split held out of the training images (the test split is scored once, at the end)."""
    curve = []
    if not os.path.isfile(path):
        return curve
    with open(path) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut by a stop in mid-write
            if rec.get("summary") and "val_knn_top1" in rec:
                curve.append(
                    {
                        "epoch": rec["epoch"] + 1,
                        "wall_s": rec.get("wall_s"),
                        "knn_top1": rec["val_knn_top1"],
                        "knn_top5": rec.get("val_knn_top5"),
                        "epoch_time_s": rec.get("epoch_time_s"),
                    }
                )
    return curve


def probe(ctx, run: str, dataset: str, key: str, extra=()) -> dict:
    """fastssl.linear's protocol on the run's backbone; the dataset label says which copy it was."""
    from fastssl.eval.linear import LinearConfig, evaluate
    from pipelines import DataError

    s = ctx.sizes
    argv = [
        "--backbone",
        run,
        "--dataset",
        dataset,
        "--epochs",
        str(s["probe_epochs"]),
        "--device",
        str(ctx.device),
        "--out",
        os.path.join(ctx.work, key),
        "--overwrite",
        "--no-progress",
        *s["probe_extra"],
        *extra,
    ]
    if ctx.cfg.data_dir:
        argv += ["--data-dir", ctx.cfg.data_dir]
    if s.get("probe_subset"):
        argv += ["--subset", str(s["probe_subset"])]
    try:
        summary = evaluate(parse(LinearConfig, argv), argv)
    except DataError as e:
        return {"status": f"skipped: {e}", "command": "python -m fastssl.linear " + " ".join(argv)}
    return {
        "status": "ok",
        "command": "python -m fastssl.linear " + " ".join(argv),
        "dataset": summary["data"]["label"],
        "test_top1": summary["test_top1"],
        "test_top5": summary["test_top5"],
        "knn_top1": summary["knn_top1"],
        "lr": summary["lr"],
        "weight_decay": summary["weight_decay"],
        "wall_time_s": summary["wall_time_s"],
        "train_images": summary["data"]["train_images"],
        "test_images": summary["data"]["test_images"],
    }


# ----------------------------------------------------------------------------- 6. families (optional)

FAMILY_METHODS = ("autoencoder", "simclr", "dim")
FAMILY_SPLIT = "80/10/10"


def families_stage(ctx, expired) -> dict:
    """A one-seed, 80/10/10-only version of the families study (methods and split fixed here, not
    read from experiments/families.toml): each family pretrained once (seed --seed) on the train
    part of CIFAR-10's 80/10/10 split for the same number of epochs, a third of the stage's deadline
    each (planned from SimCLR's measured epoch time, the costliest of the three: two views), then
    probed on the same split (tuned on validation, test part scored once). Time a cheaper family
    leaves unused is not handed on: the budget per family stays equal."""
    from fastssl.pretrain import PretrainConfig
    from fastssl.train import train

    s = ctx.sizes
    if s["train_dataset"] == "cifar10" and (missing := absent("cifar10", ctx.cfg.data_dir)):
        raise Skip(f"CIFAR-10 not found: {missing}")
    split = ["--split", FAMILY_SPLIT, "--split-seed", "0"]
    result = {"split": FAMILY_SPLIT, "dataset": s["train_dataset"], "families": {}, "cut": False}
    ctx.partial["families"] = result
    # One epoch count for all three: "same budget per family" means epochs and batch, not seconds.
    costs = measure_costs(ctx, need_epoch=epoch_seconds(ctx)[0] is None and not ctx.cfg.epochs)
    epochs, plan = plan_epochs(
        ctx, (ctx.deadline - time.monotonic()) / len(FAMILY_METHODS), costs, ["linear"]
    )
    result.update(epochs=epochs, plan=plan)
    for method in FAMILY_METHODS:
        if expired():
            result["families"][method] = {"status": "cut: out of time before it started"}
            result["cut"] = True
            continue
        run = os.path.join(ctx.work, f"family_{method}")
        argv = pretrain_argv(ctx, epochs, run) + ["--method", method, *split]
        log(f"families: {method}, {epochs} epochs; python -m fastssl.pretrain {' '.join(argv)}")
        rec = {"epochs": epochs, "plan": plan, "command": "python -m fastssl.pretrain " + " ".join(argv)}
        result["families"][method] = rec
        summary = train(parse(PretrainConfig, argv), argv)
        rec.update(
            final_loss=summary["final_loss"],
            val_knn_top1=summary["val_knn_top1"],
            knn_top1=summary["knn_top1"],
            knn_top5=summary["knn_top5"],
            pretrain_wall_s=summary["wall_time_s"],
        )
        rec["probe"] = probe(ctx, run, s["train_dataset"], f"family_{method}_linear", split)
    return result


def race_stage(ctx, expired) -> dict:
    """`python -m benchmarks.race` on this device: fastssl (its defaults: bf16 + compile on CUDA, or
    --no-compile when the preflight said compile does not work here), plain PyTorch and lightly (when
    installed, e.g. from the staged wheels; else listed as skipped), one seed, full CIFAR-10, CIFAR
    stem, the same fixed number of epochs for all; the race's own table becomes this stage's section.
    It runs in a child process, killed at the stage's deadline."""
    from .race import ENTRANTS

    s = ctx.sizes
    if s["train_dataset"] == "cifar10" and (missing := absent("cifar10", ctx.cfg.data_dir)):
        raise Skip(f"CIFAR-10 not found: {missing}")
    fastssl = "fastssl" if ctx.compile["enabled"] else "fastssl:compile=false"
    entrants = [fastssl, "plain"] + (["lightly"] if ENTRANTS["lightly"].available() is None else [])
    out = os.path.join(ctx.work, "race")
    argv = [
        "--dataset",
        s["train_dataset"],
        "--subset",
        str(s.get("train_subset") or 0),
        "--stem",
        s["train_stem"],
        "--epochs",
        str(s["race_epochs"]),
        "--batch-size",
        str(s["train_batch"]),
        "--workers",
        str(s["workers"]),
        "--device",
        str(ctx.device),
        "--seeds",
        str(ctx.cfg.seed),
        "--entrants",
        ",".join(entrants),
        "--snapshot-every",
        "0",
        "--out",
        out,
        "--overwrite",
    ]
    if ctx.cfg.data_dir:
        argv += ["--data-dir", ctx.cfg.data_dir]
    command = "python3 -m benchmarks.race " + " ".join(argv)
    result = {
        "command": command,
        "entrants": entrants,
        "skipped": {} if "lightly" in entrants else {"lightly": ENTRANTS["lightly"].available()},
    }
    ctx.partial["race"] = result
    log(f"race: {command}")
    try:
        subprocess.run(
            [sys.executable, "-m", "benchmarks.race", *argv],
            check=True,
            timeout=max(1.0, ctx.deadline - time.monotonic()),
        )
    except subprocess.TimeoutExpired:
        result["status"] = "cut: the race did not finish within the stage's deadline"
        return result
    except subprocess.CalledProcessError as e:
        raise RuntimeError(f"benchmarks.race exited with {e.returncode}") from None
    with open(os.path.join(out, "race.json")) as f:
        race = json.load(f)
    with open(os.path.join(out, "race.md")) as f:
        result["markdown"] = f.read()
    result["summary"] = {k: v for k, v in race["summary"].items() if k != "measures"}
    return result


class Stage(NamedTuple):
    fn: Callable  # (ctx, expired) -> result dict
    what: str  # one line for the plan
    estimate_s: float  # seconds on one H100/H200: its share of --budget
    smoke_estimate_s: float  # seconds of --smoke on a CPU


# Adding a stage is one function above and one line here (in STAGES, or in OPTIONAL when it runs
# only where named in --stages).
STAGES = {
    "environment": Stage(
        environment, "GPU, driver, versions, commit, command; measured bf16 matmul peak", 15, 5
    ),
    "step": Stage(
        step_ablation,
        "step ablation: eager fp32 -> channels_last -> bf16 -> compile -> fast optimiser -> CUDA graphs",
        120,
        30,
    ),
    "throughput": Stage(
        throughput_stage,
        "loader-only and end-to-end images/s per pipeline (whole epochs), data wait, ratio to torchvision",
        120,
        30,
    ),
    "nt_xent": Stage(nt_xent_stage, "NT-Xent forward+backward, eager / compiled / chunked", 50, 15),
    "time_to_accuracy": Stage(
        time_to_accuracy,
        "SimCLR on CIFAR-10 with kNN every 10 epochs, then linear and transfer probes",
        255,
        70,
    ),
}
# Run only when named in --stages (each a GPU call of its own).
OPTIONAL = {
    "race": Stage(
        race_stage,
        "fastssl vs plain PyTorch vs lightly (when installed), whole epochs, one shared kNN",
        240,
        120,
    ),
    "families": Stage(
        families_stage,
        "autoencoder, SimCLR, Deep InfoMax on CIFAR-10 80/10/10 at the stage's budget, each probed on the split",
        500,
        100,
    ),
}


def all_stages() -> dict:
    """STAGES then OPTIONAL, looked up at call time (tests replace STAGES)."""
    return {**STAGES, **OPTIONAL}
