"""What every benchmark shares: the environment record, summaries of repeats, the result writers.

Protocol (see README.md): untimed warm-up first (it includes compilation); each repeat times a
window of work with benchmarks.timing.Stopwatch (CUDA events bracketed by
`torch.cuda.synchronize()` on a GPU, `time.perf_counter()` on the CPU); results are the median
and the min-max over the repeats.
Every output (JSON, CSV, markdown, PNG) is written atomically and carries the environment and the
exact command that produced it.
"""

import csv
import datetime
import importlib.metadata
import io
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys

import torch

from fastssl.config import ConfigError
from fastssl.train import resolve_device  # noqa: F401  (one rule for --device everywhere)

from . import peaks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ----------------------------------------------------------------------------- environment


def _run(cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _version(*dists):
    """Installed version of the first distribution found (by name prefix for DALI's CUDA-suffixed
    wheels), without importing the library itself."""
    for name in dists:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    for d in importlib.metadata.distributions():
        n = (d.metadata["Name"] or "").lower()
        if any(n.startswith(p) for p in dists):
            return f"{n} {d.version}"
    return None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(module: str, argv) -> dict:
    """Hardware, versions, code revision and the exact command of a benchmark run."""
    cuda = torch.cuda.is_available()
    driver = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]) if cuda else None
    status = _run(["git", "status", "--porcelain", "--untracked-files=no"])
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "command": shlex.join(["python", "-m", module, *map(str, argv)]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        # A copy of the tree without .git (an offline GPU machine's) is told its commit by the stager.
        "git_commit": _run(["git", "rev-parse", "HEAD"]) or os.environ.get("FASTSSL_GIT_COMMIT"),
        "git_dirty": bool(status)
        if status is not None
        else {"1": True, "0": False}.get(os.environ.get("FASTSSL_GIT_DIRTY", "")),
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "gpu_count": torch.cuda.device_count() if cuda else 0,
        "gpu_driver": driver.splitlines()[0] if driver else None,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        # Other processes on the machine skew CPU timings; the load average says how busy it was.
        "load_average_1_5_15min": load,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "dali": _version("nvidia-dali"),
        "ffcv": _version("ffcv"),
        "numpy": _version("numpy"),
    }


def apply_quick(cfg) -> bool:
    """--quick means the CPU with one thread unless the flags say otherwise; returns cfg.quick."""
    if cfg.quick and cfg.device == "auto":
        cfg.device = "cpu"
    if cfg.quick and cfg.threads is None:
        cfg.threads = 1
    return cfg.quick


def set_threads(n) -> None:
    """torch's CPU thread count (None: leave torch's default). On a CPU shared with other jobs,
    fewer threads than cores avoids OpenMP barriers waiting on descheduled threads."""
    if n is not None:
        if n < 1:
            raise ConfigError(f"--threads must be >= 1, got {n}")
        torch.set_num_threads(n)


def peak_tflops(device: torch.device, override=None):
    """(datasheet dense bf16 TFLOP/s or None, where it came from); see benchmarks/peaks.py."""
    info = peaks.peak_info(device, override, measure=False)
    return info["datasheet_tflops"], info["datasheet_source"]


def default_out(kind: str, device: torch.device, quick: bool) -> str:
    """benchmarks/results/<cpu|gpu-model>-<date>; quick runs get a quick- prefix."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device).lower().replace("nvidia", "")
        host = re.sub(r"[^a-z0-9]+", "-", name).strip("-")
    else:
        host = "cpu"
    date = datetime.date.today().isoformat()
    return os.path.join(REPO, "benchmarks", "results", f"{'quick-' if quick else ''}{host}-{date}")


# ----------------------------------------------------------------------------- summaries


def summarize(values) -> dict:
    """Median and min-max of a list of numbers (one per repeat)."""
    values = [float(v) for v in values]
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
        "values": values,
    }


def fmt(x, spec=",.0f", none="n/a") -> str:
    return none if x is None else format(x, spec)


def fmt_range(s: dict, spec=",.0f") -> str:
    """'median (min-max)' of a summarize() dict."""
    return f"{format(s['median'], spec)} ({format(s['min'], spec)}-{format(s['max'], spec)})"


def target(
    name: str, value, threshold, higher_is_better: bool, measurable: bool, reason: str = "", unit: str = ""
) -> dict:
    """One target line: status is "met", "not met" or "not measured" (with the reason)."""
    if not measurable or value is None:
        status = "not measured"
    else:
        ok = value >= threshold if higher_is_better else value <= threshold
        status = "met" if ok else "not met"
    return {
        "target": name,
        "threshold": threshold,
        "unit": unit,
        "value": value,
        "status": status,
        "reason": reason if status == "not measured" else "",
    }


# ----------------------------------------------------------------------------- writers


def check_out(out: str, names, overwrite: bool) -> list:
    """Paths of the files a benchmark will write in `out`; refuses to replace existing ones unless
    --overwrite (checked before any work, so a mistaken --out costs nothing)."""
    paths = [os.path.join(out, n) for n in names]
    existing = [p for p in paths if os.path.exists(p)]
    if existing and not overwrite:
        raise ConfigError(f"{existing[0]} already exists; choose another --out or pass --overwrite")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"--out {out} exists and is not a directory")
    return paths


def _atomic(path: str, write, mode="w"):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, mode, **({"newline": ""} if mode == "w" else {})) as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: str, obj) -> None:
    _atomic(path, lambda f: f.write(json.dumps(obj, indent=2, default=str) + "\n"))


def write_text(path: str, text: str) -> None:
    _atomic(path, lambda f: f.write(text))


def write_csv(path: str, rows, env: dict) -> None:
    """One row per record; every row carries the environment columns (env_*), command included."""
    rows = [{**_flat(r), **{f"env_{k}": v for k, v in _flat(env).items()}} for r in rows]
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    write_text(path, buf.getvalue())


def _flat(d: dict, prefix="") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}_"))
        elif isinstance(v, (list, tuple)):
            out[prefix + k] = " ".join(map(str, v))
        else:
            out[prefix + k] = v
    return out


def markdown_table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def bar_chart(path: str, groups, series: dict, ylabel: str, title: str, log: bool = False) -> None:
    """Grouped bars with min-max error bars. series: name -> list of summarize() dicts (or None
    for a missing bar), one per group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(groups) * max(1, len(series)) ** 0.5 + 2), 4.2))
    width = 0.8 / max(1, len(series))
    for i, (name, stats) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        pts = [(x, s) for x, s in zip(xs, stats) if s is not None]
        if not pts:
            continue
        med = [s["median"] for _, s in pts]
        err = [[s["median"] - s["min"] for _, s in pts], [s["max"] - s["median"] for _, s in pts]]
        ax.bar([x for x, _ in pts], med, width, yerr=err, capsize=3, label=name)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(
        groups,
        rotation=20 if max(map(len, groups), default=0) > 10 else 0,
        ha="right" if max(map(len, groups), default=0) > 10 else "center",
    )
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if log:
        ax.set_yscale("log")
    if len(series) > 4:  # many series: legend beside the axes, not over the bars
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    elif len(series) > 1:
        ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _atomic(path, lambda f: fig.savefig(f, format="png", dpi=120), mode="wb")
    plt.close(fig)


def write_all(out: str, stem: str, result: dict, rows, table: str, chart) -> None:
    """<out>/<stem>.{json,csv,md,png}. `chart(path)` draws the PNG. The markdown file repeats the
    command and environment above the table."""
    env = result["environment"]
    write_json(os.path.join(out, f"{stem}.json"), result)
    write_csv(os.path.join(out, f"{stem}.csv"), rows, env)
    header = (
        f"<!-- {env['command']} -->\n"
        f"`{env['command']}`  \n{env['date']}, commit {env['git_commit']}"
        f"{' (dirty)' if env['git_dirty'] else ''}, {env['gpu'] or env['cpu']} "
        f"({env['cpu_cores_usable']} usable cores), torch {env['torch']}\n\n"
    )
    write_text(os.path.join(out, f"{stem}.md"), header + table)
    chart(os.path.join(out, f"{stem}.png"))
    print(f"wrote {os.path.join(out, stem)}.{{json,csv,md,png}}", file=sys.stderr)


def print_table(table: str) -> None:
    """The markdown table is the last thing a benchmark prints."""
    sys.stdout.flush()
    print(table, end="", flush=True)
