"""Peak host memory and loader throughput on converted folders of JPEGs of mixed sizes.

    python -m benchmarks.memory --out benchmarks/results/cpu-2026-12-02/memory     # 10,000 and 20,000 images
    python -m benchmarks.memory --sizes 20000,40000 --views 224 --work-dir /data/mem --keep-work
    python -m benchmarks.memory --pipelines ffcv,ffcv_os_cache --sizes 2000,4000   # the page-cache pitfall
    python -m benchmarks.memory --quick --out /tmp/mem                             # seconds (tests)

The benchmark makes its own data: `make_folder` writes the largest size's images (seeded, sides
drawn from --side-min..--side-max, a few classes; a smooth random colour field plus a crop of a
shared noise texture, so the JPEGs are neither trivial to compress nor costly to make); each
smaller size is the first N of them (hard links). Each size is converted to a .beton and to
DALI shards by `python -m fastssl.convert --dataset imagefolder --max-resolution R` (fastssl.convert's
main, in a fresh process whose peak RSS is recorded: own sizes, JPEG, longer side capped). Then for
every pipeline, view side and size, a fresh process (so its peak is that loader's alone) opens the
converted dataset (`datasets.load(path)`, streamed) and
1. times loader-only SimCLR batches exactly as benchmarks.throughput counts them (two augmented,
   normalised views on the device; images/s, 1 image = 2 views): --warmup untimed batches, then
   --repeats windows of --loader-steps batches in the same epoch (steady state: a 20,000-image
   epoch's start-up, e.g. DALI filling its shuffle buffer, belongs to 300 batches, not to a window);
2. streams the whole epoch once with the eval recipe (decode, resize, centre crop in FFCV / DALI),
   so every stored byte passes through the loader's reader; its images/s is reported too;
and reports its peak RSS: VmHWM of that process (/proc/self/status: the high-water mark of its
resident pages since exec, every thread counted: FFCV's numba workers and DALI's threads are
threads of it; ru_maxrss is not used, it carries over the forked parent's pages across exec);
beside it, the RSS of the process plus any live child process sampled at 10 Hz with psutil (these
loaders start none), and the file-backed / anonymous split of its RSS at the end (RssFile, RssAnon).
The converter's peak is reported the same way (its FFCV writer forks: the sampled column counts them).

RSS independent of dataset size: per pipeline and view side, the peak at the largest size must be
within --margin-mib (default 64 MiB, half of what the stored file grows by from 10,000 to 20,000
images here; a fraction of a ~1 GiB peak would hide a loader that holds the file) of the peak at the
smallest. For scale the table gives what holding the data would add: the growth of the stored file,
and of the decoded views (N x side^2 x 3 bytes).
FFCV page cache: with os_cache=True (FFCV's default, kept for in-memory data) FFCV memory-maps the
.beton and every page it touches stays file-backed RSS of the process, up to the whole file after
one epoch. The `ffcv` rows use what fastssl streams a converted .beton with (pipelines.loaders.ffcv
stream_options): os_cache=False, FFCV reading the 8 MiB pages a batch needs into slots of its own
and freeing a slot after its page's last sample, in order "windowed" (pipelines.loaders.ffcv_order: pages
permuted, samples shuffled within blocks of recipes.STREAM_WINDOW = 4,096), which keeps the pages
of about two blocks open, whatever the file's size. `ffcv_quasi_random` is FFCV's own bounded order
(a window of 2 x batch_size pages: 1 GiB at batch 64, so a smaller file is held whole) and
`ffcv_os_cache` FFCV's default (os_cache=True, order random), for comparison. DALI reads its shards
with plain reads (dont_use_mmap: mapped pages would stay file-backed RSS) into the reader's shuffle
buffer of STREAM_WINDOW samples.
Allocator (--allocator): "fixed" (the default) runs each case with MALLOC_MMAP_THRESHOLD_=131072
(glibc), so every buffer above 128 KiB is its own mapping, returned when freed. With glibc's default
("default") the threshold rises after such frees and the torch view ops' large transient buffers
come from its heaps, whose peak then depends on thread timing: identical 224 px cases differed by
~300 MiB, more than the data grows. Mapping each buffer afresh costs page faults, so "fixed" lowers
the SimCLR images/s on a small CPU; measure images/s with "default" too.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from fastssl.config import ConfigError, cli, parse
from pipelines import DataError

from . import common, timing
from .throughput import installed

STEM = "memory"
CLASSES = ("a", "b", "c")
# pipeline name in this benchmark -> (pipelines.PIPELINES name, converted format, backend keywords)
LOADERS = {
    "ffcv": ("ffcv", "ffcv", {}),
    "dali": ("dali", "dali", {}),
    "ffcv_quasi_random": ("ffcv", "ffcv", {"os_cache": False, "order": "quasi_random"}),
    "ffcv_os_cache": ("ffcv", "ffcv", {"os_cache": True, "order": "random"}),
}
# --allocator: the environment of each case (see the docstring)
ALLOCATORS = {
    "fixed": {"MALLOC_MMAP_THRESHOLD_": "131072"},  # glibc: buffers above 128 KiB always mapped
    "default": {},
}
QUICK = {"sizes": "120,240", "views": "48", "side_min": 24, "side_max": 80, "max_resolution": 64}
CASE_TIMEOUT_S = 1800  # a case that hangs becomes a failed row, never a hung benchmark


@dataclass
class MemoryConfig:
    # Only the largest is generated; each smaller size is its first N images.
    sizes: str = field(default="10000,20000", metadata={"help": "comma-separated dataset sizes (images)"})
    views: str = field(default="96,224", metadata={"help": "comma-separated view sides, pixels"})
    pipelines: str = field(
        default="ffcv,dali", metadata={"help": f"comma-separated, from {', '.join(LOADERS)}"}
    )
    side_min: int = field(default=64, metadata={"help": "smallest generated image side, pixels"})
    side_max: int = field(default=500, metadata={"help": "largest generated image side, pixels"})
    max_resolution: int = field(
        default=256, metadata={"help": "converter's cap on the longer side (--max-resolution)"}
    )
    batch_size: int | None = field(
        default=None, metadata={"help": "images per batch, two views each (default 64; --quick 8)"}
    )
    workers: int | None = field(
        default=None, metadata={"help": "loader and converter threads (default: usable cores)"}
    )
    warmup: int | None = field(
        default=None,
        metadata={
            "help": "untimed SimCLR batches first (numba compilation, pipeline start) (default 3; --quick 1)"
        },
    )
    repeats: int | None = field(
        default=None, metadata={"help": "timed windows of SimCLR batches (default 5; >= 5 unless --quick)"}
    )
    loader_steps: int | None = field(
        default=None, metadata={"help": "SimCLR batches per timed window (default 2; --quick 1)"}
    )
    margin_mib: float = field(
        default=64.0, metadata={"help": "allowed peak-RSS growth from the smallest to the largest size, MiB"}
    )
    device: str = field(
        default="cpu",
        metadata={"help": "where the views are made (cpu: DALI's CPU graph)", "choices": ["cpu", "cuda"]},
    )
    threads: int | None = field(
        default=None, metadata={"help": "torch CPU threads in each case (default: torch's own; --quick 1)"}
    )
    seed: int = field(default=0, metadata={"help": "seed of the images, data order and augmentation"})
    # Reused when it already holds them, so a rerun skips generating and converting them.
    work_dir: str | None = field(
        default=None, metadata={"help": "folder for the images and conversions (default: a temporary one)"}
    )
    keep_work: bool = field(
        default=False, metadata={"help": "keep the default temporary --work-dir afterwards"}
    )
    quick: bool = field(
        default=False, metadata={"help": "tiny sizes and sides: a smoke run in seconds (the test)"}
    )
    out: str | None = field(
        default=None,
        metadata={"help": "output directory (default benchmarks/results/<device>-<date>/memory)"},
    )
    overwrite: bool = field(default=False, metadata={"help": "replace memory.* files already in --out"})
    # fixed makes the peak reproducible: with glibc's own threshold it depends on thread timing (see the
    # docstring).
    allocator: str = field(
        default="fixed",
        metadata={
            "help": "fixed: glibc's mmap threshold fixed at 128 KiB in each case; default: glibc's own",
            "choices": list(ALLOCATORS),
        },
    )

    def __post_init__(self):
        q = self.quick
        if (
            q
        ):  # the test's size: a few hundred tiny images, one small view side (fields left at their defaults)
            full = MemoryConfig.__dataclass_fields__
            for k, v in QUICK.items():
                if getattr(self, k) == full[k].default:
                    setattr(self, k, v)
        defaults = dict(
            batch_size=8 if q else 64,
            warmup=1 if q else 3,
            repeats=2 if q else 5,
            loader_steps=1 if q else 2,
            workers=len(os.sched_getaffinity(0)),
            threads=1 if q else None,
        )
        for k, v in defaults.items():
            if getattr(self, k) is None:
                setattr(self, k, v)
        self.size_list = _ints("sizes", self.sizes)
        self.view_list = _ints("views", self.views)
        self.pipeline_list = [p.strip() for p in self.pipelines.split(",") if p.strip()]
        bad = [p for p in self.pipeline_list if p not in LOADERS]
        if bad or not self.pipeline_list:
            raise ValueError(
                f"--pipelines: unknown {', '.join(bad) or '(none given)'}; choose from {', '.join(LOADERS)}"
            )
        if len(set(self.size_list)) < 2:
            raise ValueError(f"--sizes needs two different dataset sizes to compare, got {self.sizes!r}")
        if not 1 <= self.side_min <= self.side_max:
            raise ValueError(f"need 1 <= --side-min <= --side-max, got {self.side_min}, {self.side_max}")
        for k in ("max_resolution", "batch_size", "workers", "warmup", "repeats", "loader_steps"):
            if getattr(self, k) < 1:
                raise ValueError(f"--{k.replace('_', '-')} must be positive, got {getattr(self, k)}")
        if self.repeats < 5 and not q:
            raise ValueError(
                f"--repeats must be >= 5 for a reported benchmark (got {self.repeats}); --quick allows fewer"
            )
        if self.margin_mib <= 0:
            raise ValueError(f"--margin-mib must be positive, got {self.margin_mib}")
        need = self.warmup + self.repeats * self.loader_steps
        if min(self.size_list) < need * self.batch_size:
            raise ValueError(
                f"the smallest size must hold {need} batches of {self.batch_size} "
                f"(--warmup + --repeats x --loader-steps), got {min(self.size_list)} images"
            )


def _ints(name, text) -> list:
    try:
        values = sorted(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"--{name}: expected comma-separated integers, got {text!r}") from None
    if not values or values[0] < 1:
        raise ValueError(f"--{name}: expected positive integers, got {text!r}")
    return values


# ----------------------------------------------------------------------------- data


def make_folder(root, n_train, n_test=0, sides=(64, 400), seed=0, classes=CLASSES, png_every=10) -> str:
    """Write root/train/<class>/<i>.jpg (and root/test/... when n_test): image i of a split is a
    bilinear upsampling of 4x4 random colours tinted by its class (so classes differ) plus a crop of
    one shared noise texture (so the JPEG is not trivially small), h and w uniform in `sides`;
    every `png_every`-th a PNG (0: none). Image i depends on (seed, split, i) only, so the first N
    images of a larger folder are those of an N-image folder. Returns root."""
    from PIL import Image

    texture = np.random.default_rng([seed, 2]).integers(-24, 25, (sides[1], 2 * sides[1], 3), dtype=np.int16)
    tint = np.random.default_rng([seed, 3]).uniform(-60, 60, (len(classes), 3))
    for s, (split, n) in enumerate((("train", n_train), ("test", n_test))):
        for i in range(n):
            rng = np.random.default_rng([seed, s, i])
            c = i % len(classes)
            folder = os.path.join(root, split, classes[c])
            os.makedirs(folder, exist_ok=True)
            h, w = (int(v) for v in rng.integers(sides[0], sides[1] + 1, 2))
            small = np.clip(rng.uniform(0, 255, (4, 4, 3)) + tint[c], 0, 255).astype(np.uint8)
            field_ = np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR), np.int16)
            dy, dx = int(rng.integers(0, sides[1] - h + 1)), int(rng.integers(0, 2 * sides[1] - w + 1))
            pixels = np.clip(field_ + texture[dy : dy + h, dx : dx + w], 0, 255).astype(np.uint8)
            ext = "png" if png_every and i % png_every == png_every - 1 else "jpg"
            Image.fromarray(pixels).save(os.path.join(folder, f"{i:06d}.{ext}"), quality=90)
    return root


def _stamped(path, stamp, name=".made.json") -> bool:
    try:
        with open(os.path.join(path, name)) as f:
            return json.load(f) == stamp
    except (OSError, ValueError):
        return False


def _stamp(path, stamp, name=".made.json") -> None:
    common.write_json(os.path.join(path, name), stamp)


def _bytes(path) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def prepare(cfg, work) -> list:
    """Generate the largest folder, link the smaller ones, convert each size to both formats
    (skipping what `work` already holds from the same settings). One dict per size."""
    n_max = max(cfg.size_list)
    made = {"n": n_max, "sides": [cfg.side_min, cfg.side_max], "seed": cfg.seed, "classes": list(CLASSES)}
    big = os.path.join(work, f"photos-{n_max}")
    t0 = time.perf_counter()
    if not _stamped(big, made):
        shutil.rmtree(big, ignore_errors=True)
        make_folder(big, n_max, sides=(cfg.side_min, cfg.side_max), seed=cfg.seed, png_every=0)
        _stamp(big, made)
    generate_s = time.perf_counter() - t0
    formats = sorted({LOADERS[p][1] for p in cfg.pipeline_list})
    out = []
    for n in cfg.size_list:
        folder = big if n == n_max else os.path.join(work, f"photos-{n}")
        if not _stamped(folder, {**made, "n": n}):
            shutil.rmtree(folder, ignore_errors=True)
            for i in range(n):  # image i has class i % len(CLASSES): the first n are class-balanced
                c, name = CLASSES[i % len(CLASSES)], f"{i:06d}.jpg"
                os.makedirs(os.path.join(folder, "train", c), exist_ok=True)
                os.link(os.path.join(big, "train", c, name), os.path.join(folder, "train", c, name))
            _stamp(folder, {**made, "n": n})
        paths = {
            "ffcv": os.path.join(work, f"n{n}", "train.beton"),
            "dali": os.path.join(work, f"n{n}", "dali", "train"),
        }
        conv = {"max_resolution": cfg.max_resolution, **made, "n": n}
        seconds, peaks = {}, {}
        for to in formats:
            if not _stamped(os.path.join(work, f"n{n}"), conv, f".made-{to}.json"):
                t0 = time.perf_counter()
                peaks[to] = convert_child(folder, to, paths[to], cfg.max_resolution, cfg.workers)
                seconds[to] = time.perf_counter() - t0
                _stamp(os.path.join(work, f"n{n}"), conv, f".made-{to}.json")
        out.append(
            {
                "images": n,
                "folder_bytes": _bytes(os.path.join(folder, "train")),
                "stored_bytes": {to: _bytes(paths[to]) for to in formats},
                "paths": {to: paths[to] for to in formats},
                "convert_s": {to: seconds.get(to, "reused") for to in formats},
                "convert_peak_rss_mib": {to: peaks.get(to, "reused") for to in formats},
                "generate_s": generate_s if n == n_max else None,
            }
        )
        print(
            f"{n} images: "
            + ", ".join(
                f"{to} {f'converted in {seconds[to]:.0f} s' if to in seconds else 'reused'}" for to in formats
            ),
            file=sys.stderr,
        )
    return out


# ----------------------------------------------------------------------------- processes of their own


def _child(code, args, what, env=None):
    """Run `code` (which prints one JSON line last) in a fresh interpreter with `args` as
    sys.argv[1:] and `env` added to the environment; its parsed output, or RuntimeError naming
    `what` with the last stderr line."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, *args],
            capture_output=True,
            text=True,
            cwd=common.REPO,
            timeout=CASE_TIMEOUT_S,
            check=False,
            env={**os.environ, **(env or {})},
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{what}: no result within {CASE_TIMEOUT_S} s") from None
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
        raise RuntimeError(f"{what}: {lines[-1] if lines else f'exit code {done.returncode}'}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def convert_child(folder, to, path, max_resolution, workers) -> dict:
    """`python -m fastssl.convert --dataset imagefolder --max-resolution R` of the train split, in a
    fresh process; its peak RSS (VmHWM; FFCV's writer processes are forked children: the sampled
    tree peak counts them)."""
    argv = [
        "--dataset",
        "imagefolder",
        "--data-dir",
        folder,
        "--to",
        to,
        "--out",
        path,
        "--max-resolution",
        str(max_resolution),
        "--workers",
        str(workers),
        "--force",
    ]
    code = (
        "import json, sys; from benchmarks.memory import TreeSampler, peak_rss_mib; from fastssl.convert import main; "
        "t = TreeSampler(); main(sys.argv[1:]); tree = t.close(); "
        "print(json.dumps({'self': peak_rss_mib(), 'sampled_tree': tree}))"
    )
    return _child(code, argv, f"converting {folder} to {to}")


def _status_mib(key):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def peak_rss_mib() -> float:
    """Peak RSS of this process since it started (exec), all its threads: VmHWM, MiB. Not
    ru_maxrss, which keeps the high-water mark of the forked parent's pages across exec."""
    return _status_mib("VmHWM")


class TreeSampler:
    """Samples the RSS of this process plus its live child processes every `every` seconds (psutil;
    None without it): a loader's worker processes would count here. RUSAGE_CHILDREN is no help: a
    forked child's ru_maxrss includes the parent's pages at the fork (torch's import forks for
    `ldconfig -p`)."""

    def __init__(self, every=0.1):
        import threading

        self.peak, self.every, self.stop = None, every, threading.Event()
        try:
            import psutil
        except ImportError:
            return
        self.proc = psutil.Process()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _sample(self):
        import psutil

        total = self.proc.memory_info().rss
        try:
            children = self.proc.children(recursive=True)
        except psutil.Error:  # a child exited while being listed: next sample
            return
        for child in children:
            try:
                total += child.memory_info().rss
            except psutil.Error:  # exited meanwhile
                pass
        self.peak = max(self.peak or 0.0, total / 2**20)

    def _run(self):
        while not self.stop.wait(self.every):
            self._sample()

    def close(self):
        """The peak (MiB), one last sample included; None without psutil."""
        if not hasattr(self, "proc"):
            return None
        self.stop.set()
        self.thread.join()
        self._sample()
        return self.peak


def run_case(
    loader_name, path, side, batch_size, workers, warmup, repeats, loader_steps, seed, device, threads
) -> dict:
    """Steps 1 and 2 of the module docstring, in this process; the record of one case."""
    import torch

    import pipelines
    from pipelines import datasets

    common.set_threads(threads)
    name, _, extra = LOADERS[loader_name]
    data = datasets.load(path, "train", image_size=side)  # streamed: labels and manifest only
    before = _status_mib("VmRSS")
    sampler = TreeSampler()
    loader = pipelines.build(
        name, data, batch_size=batch_size, device=device, workers=workers, seed=seed, recipe="simclr", **extra
    )
    loader.set_epoch(1)
    it = iter(loader)
    for i in range(warmup):  # untimed: numba compilation, pipeline start, shuffle buffer
        batch = next(it)
        if i == 0:
            batch.check(torch.device(device))
    rates = []
    for _ in range(repeats):
        with timing.Stopwatch(device) as sw:
            images = sum(next(it).view1.shape[0] for _ in range(loader_steps))
        rates.append(images / sw.seconds)
    getattr(it, "close", lambda: None)()
    del it
    after_views = peak_rss_mib()
    stream = pipelines.build(
        name,
        data,
        batch_size=batch_size,
        device=device,
        workers=workers,
        seed=seed,
        recipe="eval",
        drop_last=False,
        **extra,
    )
    with timing.Stopwatch(device) as sw:
        streamed = sum(b.labels.shape[0] for b in stream)
    if streamed != len(data):
        raise RuntimeError(f"the eval pass delivered {streamed} of {len(data)} images")
    tree = sampler.close()
    return {
        "views_img_per_s": common.summarize(rates),
        "stream_img_per_s": streamed / sw.seconds,
        "stream_images": streamed,
        "rss_before_loading_mib": before,
        "peak_rss_views_mib": after_views,
        "peak_rss_mib": peak_rss_mib(),
        "sampled_tree_peak_rss_mib": tree,
        "rss_file_end_mib": _status_mib("RssFile"),
        "rss_anon_end_mib": _status_mib("RssAnon"),
        "torch_threads": torch.get_num_threads(),
    }


def run_child(case: dict, env=None) -> dict:
    """run_case in a fresh interpreter (`env` added); its record, or {"status": "failed: ..."}."""
    code = "import json, sys; from benchmarks.memory import run_case; print(json.dumps(run_case(**json.loads(sys.argv[1]))))"
    try:
        return {"status": "ok", **_child(code, [json.dumps(case)], "case", env)}
    except RuntimeError as e:
        return {"status": f"failed: {e}"}


# ----------------------------------------------------------------------------- whole run


def measure(cfg, env, work) -> dict:
    try:
        datasets_ = prepare(cfg, work)
    except RuntimeError as e:  # a conversion that failed: one line, exit 2
        raise DataError(str(e)) from None
    records = []
    for loader_name in cfg.pipeline_list:
        lib = LOADERS[loader_name][0]
        for side in cfg.view_list:
            for d in datasets_:
                base = {
                    "pipeline": loader_name,
                    "options": LOADERS[loader_name][2],
                    "view": side,
                    "images": d["images"],
                }
                t0, load = time.perf_counter(), os.getloadavg()[0]
                if not installed(lib):
                    rec = {"status": f"skipped: not installed (pip install -e .[{lib}])"}
                else:
                    case = dict(
                        loader_name=loader_name,
                        path=d["paths"][LOADERS[loader_name][1]],
                        side=side,
                        batch_size=cfg.batch_size,
                        workers=cfg.workers,
                        warmup=cfg.warmup,
                        repeats=cfg.repeats,
                        loader_steps=cfg.loader_steps,
                        seed=cfg.seed,
                        device=cfg.device,
                        threads=cfg.threads,
                    )
                    rec = run_child(case, ALLOCATORS[cfg.allocator])
                records.append({**base, **rec, "case_s": time.perf_counter() - t0, "load_average_1min": load})
                print(
                    f"{loader_name} {side} px, {d['images']} images: {rec['status']}"
                    + (f", peak RSS {rec['peak_rss_mib']:.0f} MiB" if rec["status"] == "ok" else ""),
                    file=sys.stderr,
                )
    settings = {k: v for k, v in asdict(cfg).items()} | {
        "work_dir": work if cfg.keep_work or cfg.work_dir else None,
        "case_env": ALLOCATORS[cfg.allocator],
    }
    return {
        "benchmark": STEM,
        "environment": env,
        "settings": settings,
        "datasets": datasets_,
        "records": records,
        "checks": checks(records, datasets_, cfg.margin_mib),
    }


def checks(records, datasets_, margin_mib) -> list:
    """Per (pipeline, view): peak RSS at the smallest and the largest size, their ratio, and whether
    the growth is within `margin_mib`; beside it, what holding the data would have added."""
    by_n = {d["images"]: d for d in datasets_}
    out = []
    for key in dict.fromkeys((r["pipeline"], r["view"]) for r in records):
        ok = sorted(
            (r for r in records if (r["pipeline"], r["view"]) == key and r["status"] == "ok"),
            key=lambda r: r["images"],
        )
        if len(ok) < 2 or ok[0]["images"] == ok[-1]["images"]:
            out.append({"pipeline": key[0], "view": key[1], "status": "not measured (a size did not run)"})
            continue
        lo, hi = ok[0], ok[-1]
        fmt = LOADERS[key[0]][1]
        growth = hi["peak_rss_mib"] - lo["peak_rss_mib"]
        out.append(
            {
                "pipeline": key[0],
                "view": key[1],
                "images": [lo["images"], hi["images"]],
                "peak_rss_mib": [lo["peak_rss_mib"], hi["peak_rss_mib"]],
                "ratio": hi["peak_rss_mib"] / lo["peak_rss_mib"],
                "growth_mib": growth,
                "allowed_mib": margin_mib,
                "stored_growth_mib": (
                    by_n[hi["images"]]["stored_bytes"][fmt] - by_n[lo["images"]]["stored_bytes"][fmt]
                )
                / 2**20,
                "decoded_growth_mib": (hi["images"] - lo["images"]) * key[1] ** 2 * 3 / 2**20,
                "status": "pass" if growth <= margin_mib else "fail",
            }
        )
    return out


def render(result) -> str:
    s = result["settings"]
    env = " ".join(f"{k}={v}" for k, v in s.get("case_env", {}).items()) or "none"
    head = (
        f"loader-only SimCLR views then one streamed eval epoch per case, each case a fresh process (environment "
        f"added: {env}); batch "
        f"{s['batch_size']}, {s['workers']} loader threads, torch threads {s['threads'] or 'default'}, device "
        f"{s['device']}; images: sides {s['side_min']}-{s['side_max']} px, converted with --max-resolution "
        f"{s['max_resolution']}; allowed peak-RSS growth {s['margin_mib']:,.0f} MiB\n\n"
    )

    def per_format(d, key, spec, inner=None):
        return ", ".join(
            x if isinstance(x, str) else format(x if inner is None else x[inner], spec)
            for x in d[key].values()
        )

    formats = ", ".join(result["datasets"][0]["stored_bytes"])
    data = common.markdown_table(
        [
            "images",
            "folder MiB",
            f"stored MiB ({formats})",
            f"conversion s ({formats})",
            f"converter peak RSS MiB ({formats})",
            f"converter sampled peak with children MiB ({formats})",
        ],
        [
            [
                f"{d['images']:,}",
                f"{d['folder_bytes'] / 2**20:,.0f}",
                ", ".join(f"{b / 2**20:,.0f}" for b in d["stored_bytes"].values()),
                per_format(d, "convert_s", ".0f"),
                per_format(d, "convert_peak_rss_mib", ",.0f", "self"),
                per_format(d, "convert_peak_rss_mib", ",.0f", "sampled_tree"),
            ]
            for d in result["datasets"]
        ],
    )
    rows = []
    for r in result["records"]:
        if r["status"] != "ok":
            rows.append([r["pipeline"], r["view"], f"{r['images']:,}", r["status"]] + [""] * 6)
            continue
        rows.append(
            [
                r["pipeline"],
                r["view"],
                f"{r['images']:,}",
                "ok",
                common.fmt_range(r["views_img_per_s"], ",.1f"),
                f"{r['stream_img_per_s']:,.0f}",
                f"{r['rss_before_loading_mib']:,.0f}",
                f"{r['peak_rss_mib']:,.0f}",
                common.fmt(r["rss_file_end_mib"]),
                common.fmt(r["sampled_tree_peak_rss_mib"]),
            ]
        )
    cases = common.markdown_table(
        [
            "pipeline",
            "view px",
            "images",
            "status",
            "SimCLR two-view img/s median (min-max)",
            "eval stream img/s",
            "RSS before loading MiB",
            "peak RSS MiB",
            "file-backed RSS at end MiB",
            "sampled peak RSS with children MiB",
        ],
        rows,
    )
    crows = []
    for c in result["checks"]:
        if "ratio" not in c:
            crows.append([c["pipeline"], c["view"]] + [""] * 6 + [c["status"]])
            continue
        crows.append(
            [
                c["pipeline"],
                c["view"],
                " / ".join(f"{n:,}" for n in c["images"]),
                " / ".join(f"{v:,.0f}" for v in c["peak_rss_mib"]),
                f"{c['ratio']:.3f}",
                f"{c['growth_mib']:+,.0f} (allowed {c['allowed_mib']:,.0f})",
                f"{c['stored_growth_mib']:,.0f}",
                f"{c['decoded_growth_mib']:,.0f}",
                c["status"],
            ]
        )
    check = common.markdown_table(
        [
            "pipeline",
            "view px",
            "images",
            "peak RSS MiB",
            "ratio",
            "growth MiB",
            "stored file growth MiB",
            "decoded views growth MiB",
            "RSS independent of size",
        ],
        crows,
    )
    return head + data + "\n" + cases + "\n" + check


def chart(path, result) -> None:
    ok = [c for c in result["checks"] if "ratio" in c]
    groups = [f"{c['pipeline']} {c['view']}px" for c in ok]
    sizes = sorted({n for c in ok for n in c["images"]})
    series = {
        f"{n:,} images": [
            common.summarize([c["peak_rss_mib"][c["images"].index(n)]]) if n in c["images"] else None
            for c in ok
        ]
        for n in sizes
    }
    common.bar_chart(
        path,
        groups,
        series,
        "peak RSS, MiB",
        f"peak host RSS per loader process, {result['environment']['cpu']}",
    )


@cli
def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = parse(MemoryConfig, argv, description=__doc__)
    out = cfg.out or os.path.join(
        common.default_out(STEM, common.resolve_device(cfg.device), cfg.quick), STEM
    )
    common.check_out(out, [f"{STEM}.{e}" for e in ("json", "csv", "md", "png")], cfg.overwrite)
    if cfg.work_dir and os.path.exists(cfg.work_dir) and not os.path.isdir(cfg.work_dir):
        raise ConfigError(f"--work-dir {cfg.work_dir} exists and is not a directory")
    work = cfg.work_dir or tempfile.mkdtemp(prefix="fastssl-memory-")
    env = common.environment("benchmarks.memory", argv)
    try:
        result = measure(cfg, env, work)
    finally:
        if not cfg.keep_work and not cfg.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    table = render(result)
    common.write_all(out, STEM, result, result["records"], table, lambda p: chart(p, result))
    common.print_table(table)
    return result


if __name__ == "__main__":
    main()
