"""NT-Xent loss: eager vs torch.compile, forward+backward time and memory.

    python -m benchmarks.nt_xent                                # GPU: N = 256..4096, fp32 and bf16
    python -m benchmarks.nt_xent --device cpu --sizes 256,1024,4096
    python -m benchmarks.nt_xent --quick --out /tmp/bench       # CPU, seconds (CI)

N is the number of images, so z1 and z2 are (N, dim) and the similarity matrix is (2N, 2N).
For `fastssl.losses.nt_xent` and, when the module has it, `nt_xent_chunked`, each called eagerly
and through torch.compile, at each N and input dtype (fp32; bf16 inputs), it reports
- fwd+bwd ms: one `loss = f(z1, z2, t); loss.backward()`, median (min-max) over repeats;
- saved for backward: bytes of the distinct storages autograd keeps for the backward pass,
  captured with `torch.autograd.graph.saved_tensors_hooks` (the inputs z1, z2 themselves excluded,
  they exist anyway); device-independent, so meaningful on the CPU too;
- peak CUDA memory above what was allocated before the call (torch.cuda.max_memory_allocated).
"""

import sys
from dataclasses import dataclass, field

import torch

from fastssl.config import cli, parse

from . import common, peaks, timing

STEM = "nt_xent"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class NTXentConfig:
    sizes: str | None = field(
        default=None,
        metadata={"help": "comma-separated N (images per view) (default 256,512,1024,4096; --quick 64,128)"},
    )
    dim: int = field(default=128, metadata={"help": "embedding dimension"})
    dtypes: str = field(default="fp32,bf16", metadata={"help": "input dtypes, comma-separated: fp32, bf16"})
    temperature: float = field(default=0.2, metadata={"help": "NT-Xent temperature"})
    iters: int | None = field(
        default=None,
        metadata={"help": "fwd+bwd calls per timed repeat (default 20 on CUDA, 2 on CPU; --quick 1)"},
    )
    repeats: int | None = field(
        default=None,
        metadata={"help": "timed repeats, interleaved over all cases (default 5; >= 5 unless --quick)"},
    )
    warmup: int = field(default=2, metadata={"help": "untimed calls per case first (the first one compiles)"})
    compile_backend: str | None = field(
        default=None,
        metadata={
            "help": "torch.compile backend (default inductor; --quick aot_eager, which skips code generation)"
        },
    )
    modes: str = field(
        default="eager,compiled",
        metadata={"help": "comma-separated: eager, compiled (eager alone where torch.compile does not work)"},
    )
    device: str = field(default="auto", metadata={"help": "auto (cuda if available), cpu, cuda or cuda:N"})
    seed: int = field(default=0, metadata={"help": "seed of the random embeddings"})
    threads: int | None = field(
        default=None, metadata={"help": "torch CPU threads (default: torch's own; --quick 1)"}
    )
    quick: bool = field(default=False, metadata={"help": "CPU smoke run in seconds: small N, 2 repeats"})
    out: str | None = field(
        default=None, metadata={"help": "output directory (default benchmarks/results/<device>-<date>)"}
    )
    overwrite: bool = field(default=False, metadata={"help": "replace nt_xent.* files already in --out"})

    def __post_init__(self):
        q = common.apply_quick(self)
        cuda = self.device != "cpu" and (self.device.startswith("cuda") or torch.cuda.is_available())
        if self.sizes is None:
            self.sizes = "64,128" if q else "256,512,1024,4096"
        if self.iters is None:
            self.iters = 1 if q else (20 if cuda else 2)
        if self.repeats is None:
            self.repeats = 2 if q else 5
        if self.compile_backend is None:
            self.compile_backend = "aot_eager" if q else "inductor"
        self.mode_list = [m.strip() for m in self.modes.split(",") if m.strip()]
        if not self.mode_list or set(self.mode_list) - {"eager", "compiled"}:
            raise ValueError(f"--modes: expected eager and/or compiled, got {self.modes!r}")
        try:
            self.size_list = [int(s) for s in self.sizes.split(",") if s.strip()]
        except ValueError:
            raise ValueError(f"--sizes: expected comma-separated integers, got {self.sizes!r}") from None
        self.dtype_list = [d.strip() for d in self.dtypes.split(",") if d.strip()]
        bad = [d for d in self.dtype_list if d not in DTYPES]
        if bad or not self.dtype_list:
            raise ValueError(f"--dtypes: {', '.join(bad) or 'none given'}; choose from {', '.join(DTYPES)}")
        if not self.size_list or min(self.size_list) < 2:
            raise ValueError("--sizes: every N must be >= 2")
        if (
            self.dim <= 0
            or self.iters <= 0
            or self.repeats <= 0
            or self.warmup < 1
            or not self.temperature > 0
        ):
            raise ValueError("--dim, --iters, --repeats and --temperature must be positive and --warmup >= 1")
        if self.repeats < 5 and not q:
            raise ValueError(
                f"--repeats must be >= 5 for a reported benchmark (got {self.repeats}); --quick allows fewer"
            )


def saved_bytes(f, z1, z2, temperature) -> int:
    """Bytes of the distinct storages autograd saves for backward during `f(z1, z2, t)` (inputs
    excluded), then runs the backward so the graph is freed."""
    skip = {z1.untyped_storage().data_ptr(), z2.untyped_storage().data_ptr()}
    seen = {}

    def pack(x):
        try:
            s = x.untyped_storage()
            if s.data_ptr() not in skip:
                seen[s.data_ptr()] = s.nbytes()
        except (RuntimeError, NotImplementedError):  # tensors without storage (none expected)
            pass
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        loss = f(z1, z2, temperature)
    loss.backward()
    z1.grad = z2.grad = None
    return sum(seen.values())


def _raise_recompile_limit():
    # Static shapes per (N, dtype) mean one compiled graph each; dynamo's default limit is 8.
    import torch._dynamo

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(64, getattr(torch._dynamo.config, name)))


def measure(cfg, device, env, expired=lambda: False) -> dict:
    """The whole measurement (no files written). `expired()` is polled between cases and repeats;
    once True nothing new starts, what is done is kept and the result says `cut`."""
    from fastssl import losses
    from fastssl.step import setup_device

    setup_device(device)  # the backend settings training runs with

    peak = peaks.peak_info(device)  # the GPU's measured bf16 matmul rate, recorded with every GPU benchmark
    _raise_recompile_limit()
    functions = {"nt_xent": losses.nt_xent, "nt_xent_chunked": getattr(losses, "nt_xent_chunked", None)}
    cases, unavailable = [], []
    for fname, fn in functions.items():
        for mode in cfg.mode_list:
            if fn is None:
                unavailable.append(
                    {"function": fname, "mode": mode, "status": f"unavailable: fastssl.losses has no {fname}"}
                )
                continue
            f = torch.compile(fn, dynamic=False, backend=cfg.compile_backend) if mode == "compiled" else fn
            for dname in cfg.dtype_list:
                for n in cfg.size_list:
                    cases.append({"function": fname, "mode": mode, "dtype": dname, "n": n, "f": f})

    g = torch.Generator().manual_seed(cfg.seed)
    for c in cases:  # inputs, untimed warm-up (compilation), then the two memory measurements
        if expired():
            c["status"] = "cut: out of time before its warm-up"
            continue
        z = [
            torch.randn(c["n"], cfg.dim, generator=g).to(device, DTYPES[c["dtype"]]).requires_grad_()
            for _ in range(2)
        ]
        c["z"] = z
        try:
            for _ in range(cfg.warmup):
                c["f"](z[0], z[1], cfg.temperature).backward()
            c["saved"] = saved_bytes(c["f"], z[0], z[1], cfg.temperature)
            c["peak"] = None
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
                before = torch.cuda.memory_allocated(device)
                c["f"](z[0], z[1], cfg.temperature).backward()
                torch.cuda.synchronize(device)
                c["peak"] = torch.cuda.max_memory_allocated(device) - before
            z[0].grad = z[1].grad = None
            c["status"], c["times"] = "ok", []
        except Exception as e:  # noqa: BLE001 - reported in the table, the other cases go on
            c["status"] = f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            print(f"{c['function']} {c['mode']} {c['dtype']} N={c['n']}: {c['status']}", file=sys.stderr)
    live = [c for c in cases if c["status"] == "ok"]
    repeats_done = 0
    for r in range(cfg.repeats):
        if expired():
            break
        repeats_done += 1
        for j in range(len(live)):  # rotated order: drift hits every case alike
            c = live[(j + r) % len(live)]
            z1, z2 = c["z"]
            with timing.Stopwatch(device) as sw:
                for _ in range(cfg.iters):
                    c["f"](z1, z2, cfg.temperature).backward()
                    z1.grad = z2.grad = None
            c["times"].append(1000 * sw.seconds / cfg.iters)

    records = []
    for c in cases:
        matrix = (2 * c["n"]) ** 2 * 4  # one (2N, 2N) fp32 matrix, the yardstick of the memory target
        ok = c["status"] == "ok" and bool(c["times"])
        if c["status"] == "ok" and not ok:
            c["status"] = "cut: out of time before the first repeat"
        records.append(
            {
                "function": c["function"],
                "mode": c["mode"],
                "dtype": c["dtype"],
                "n": c["n"],
                "status": c["status"],
                "fwd_bwd_ms": common.summarize(c["times"]) if ok else None,
                "saved_bytes": c.get("saved") if ok else None,
                "saved_vs_2n_squared_fp32": c["saved"] / matrix if ok else None,
                "peak_cuda_bytes": c.get("peak") if ok else None,
            }
        )
    records += [{**u, "dtype": None, "n": None} for u in unavailable]

    def find(fname, mode, dtype, n):
        return next(
            (
                r
                for r in records
                if (r["function"], r["mode"], r["dtype"], r["n"]) == (fname, mode, dtype, n)
                and r["status"] == "ok"
            ),
            None,
        )

    fast = find("nt_xent", "compiled", "fp32", 1024)
    mem = find("nt_xent", "compiled", "fp32", 4096)
    why = peaks.not_target_reason(env["gpu"])
    targets = [
        common.target(
            f"compiled nt_xent fp32 fwd+bwd at N=1024 <= 1 ms ({peaks.TARGET_CLASS})",
            fast["fwd_bwd_ms"]["median"] if fast else None,
            1.0,
            False,
            not why and cfg.compile_backend == "inductor" and fast is not None,
            "; ".join(r for r in (why, "" if fast else "N=1024 fp32 compiled not run") if r)
            or f"compile backend {cfg.compile_backend}, not inductor",
            "ms",
        ),
        common.target(
            "compiled nt_xent fp32 saved-for-backward at N=4096 <= ~one (2N)^2 fp32 matrix (x1.05)",
            mem["saved_vs_2n_squared_fp32"] if mem else None,
            1.05,
            False,
            mem is not None,
            "N=4096 fp32 compiled not run",
            "x (2N)^2*4 bytes",
        ),
    ]
    return {
        "benchmark": STEM,
        "environment": env,
        "device": str(device),
        "cut": repeats_done < cfg.repeats or any(c["status"].startswith("cut") for c in cases),
        "repeats_done": repeats_done,
        "peak": peak,
        "settings": {k: v for k, v in vars(cfg).items() if k not in ("size_list", "dtype_list", "mode_list")},
        "records": records,
        "targets": targets,
    }


def render(result) -> str:
    records, targets = result["records"], result["targets"]
    rows = []
    for r in records:
        if r["status"] != "ok":
            rows.append([r["function"], r["mode"], r["dtype"] or "-", r["n"] or "-", r["status"], "", "", ""])
            continue
        rows.append(
            [
                r["function"],
                r["mode"],
                r["dtype"],
                r["n"],
                "ok",
                common.fmt_range(r["fwd_bwd_ms"], ".3f"),
                f"{r['saved_bytes'] / 2**20:.2f} ({r['saved_vs_2n_squared_fp32']:.2f}x)",
                common.fmt(r["peak_cuda_bytes"] and r["peak_cuda_bytes"] / 2**20, ".2f"),
            ]
        )
    table = common.markdown_table(
        [
            "function",
            "mode",
            "dtype",
            "N",
            "status",
            "fwd+bwd ms median (min-max)",
            "saved for backward MiB (x (2N)^2 fp32)",
            "peak CUDA MiB",
        ],
        rows,
    )
    table += "\n" + common.markdown_table(
        ["target", "value", "status"],
        [
            [
                t["target"],
                common.fmt(t["value"], ".3f"),
                t["status"] + (f" ({t['reason']})" if t["reason"] else ""),
            ]
            for t in targets
        ],
    )
    return table


def chart(path, result) -> None:
    cfg, records, env = result["settings"], result["records"], result["environment"]
    sizes = sorted({r["n"] for r in records if r["n"]})

    def find(fn, mode, d, n):
        return next(
            (
                r
                for r in records
                if (r["function"], r["mode"], r["dtype"], r["n"]) == (fn, mode, d, n) and r["fwd_bwd_ms"]
            ),
            None,
        )

    names = dict.fromkeys((r["function"], r["mode"], r["dtype"]) for r in records if r["dtype"])
    series = {
        f"{fn} {mode} {d}": [(find(fn, mode, d, n) or {}).get("fwd_bwd_ms") for n in sizes]
        for fn, mode, d in names
    }
    common.bar_chart(
        path,
        [f"N={n}" for n in sizes],
        series,
        "fwd+bwd ms (median, min-max; log)",
        f"NT-Xent, dim {cfg['dim']}, {env['gpu'] or env['cpu']}",
        log=True,
    )


@cli
def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = parse(NTXentConfig, argv, description=__doc__)
    device = common.resolve_device(cfg.device)
    out = cfg.out or common.default_out(STEM, device, cfg.quick)
    common.check_out(out, [f"{STEM}.{e}" for e in ("json", "csv", "md", "png")], cfg.overwrite)
    common.set_threads(cfg.threads)
    env = common.environment("benchmarks.nt_xent", argv)
    result = measure(cfg, device, env)
    result["settings"]["out"] = out
    table = render(result)
    common.write_all(out, STEM, result, result["records"], table, lambda p: chart(p, result))
    common.print_table(table)
    return result


if __name__ == "__main__":
    main()
