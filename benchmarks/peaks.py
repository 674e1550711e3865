"""What a GPU can do: datasheet peaks and a measured bf16 matmul rate, so results compare across GPUs.

MFU is reported against both: the vendor's number says how far from the paper peak a run is, the
measured dense matmul rate says how far from what this particular card (clocks, power cap, driver)
delivers. Targets are stated for the H100/H200 class; `target_class` decides that from the device
name with whole-word patterns, never a bare substring ("H100" is inside "GH100"-style names and
"L4" inside "L40S").
"""

import re

import torch

from .timing import Stopwatch

# Dense bf16 tensor-core peak, TFLOP/s, without structured sparsity (the datasheets print the
# sparse figure first: dense = sparse / 2). Patterns are tried in order against
# torch.cuda.get_device_name(); the first match wins, so the specific variants come first.
PEAKS = [
    # (regex, model, dense bf16 TFLOP/s, in the H100/H200 target class)
    (r"\bGH200\b", "GH200 (H100/H200 GPU)", 989.4, True),
    (r"\bH200\b.*\bNVL\b", "H200 NVL", 835.5, True),
    (r"\bH200\b", "H200 SXM", 989.4, True),
    (r"\bH100\b.*\bPCIe\b", "H100 PCIe", 756.0, True),
    (r"\bH100\b.*\bNVL\b", "H100 NVL", 835.5, True),
    (r"\bH100\b", "H100 SXM", 989.4, True),  # "NVIDIA H100 80GB HBM3" is the SXM part
    (r"\bA100\b", "A100", 312.0, False),  # SXM and PCIe share the tensor-core peak
    (r"\bL40S\b", "L40S", 362.05, False),
    (r"\bL4\b", "L4", 121.0, False),
    (r"\bB200\b", "B200", 2250.0, False),
]
TARGET_CLASS = "H100 or H200"


def lookup(name: str | None):
    """(model, dense bf16 TFLOP/s, in target class) for a device name, or None when not in the table."""
    for pattern, model, tflops, target in PEAKS:
        if name and re.search(pattern, name, flags=re.IGNORECASE):
            return model, tflops, target
    return None


def target_class(name: str | None) -> bool:
    """True when the targets (stated for one H100 or H200) apply to a device called `name`."""
    hit = lookup(name)
    return bool(hit and hit[2])


def not_target_reason(name: str | None) -> str:
    """Why a run on `name` cannot be judged against the targets ('' when it can)."""
    return "" if target_class(name) else f"needs an {TARGET_CLASS} (this run: {name or 'CPU'})"


def measure_matmul(device, n: int = 8192, iters: int | None = None, dtype=torch.bfloat16) -> dict:
    """Measured dense matmul rate: C = A @ B with (n, n) operands in `dtype`, 2 n^3 FLOPs each.

    Untimed warm-up (cuBLAS heuristics, clocks), then 3 windows of `iters` products between two
    syncs, the fastest kept. At the H100 datasheet peak one 8192^3 product is 2 * 8192^3 / 989e12
    = 1.1 ms, so the default 50 per window keep the whole measurement short."""
    device = torch.device(device)
    iters = iters or (50 if device.type == "cuda" else 3)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device, dtype)
    b = torch.randn(n, n, generator=g).to(device, dtype)
    for _ in range(3):
        c = a @ b
    times = []
    for _ in range(3):
        with Stopwatch(device) as sw:
            for _ in range(iters):
                c = a @ b
        times.append(sw.seconds)
    del c
    best = min(times)  # a peak: the fastest window is the capability, slower ones are interference
    return {
        "n": n,
        "dtype": str(dtype).replace("torch.", ""),
        "iters": iters,
        "tflops": 2 * n**3 * iters / best / 1e12,
        "window_s": times,
    }


def peak_info(device, override: float | None = None, measure: bool | None = None, n: int = 8192) -> dict:
    """Both yardsticks for MFU on `device`:
    datasheet_tflops (--peak-tflops, else the table; None on CPUs and unknown GPUs) with its source,
    measured_tflops (the matmul above; by default only on CUDA), and the device name."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if cuda else None
    info = {
        "device_name": name,
        "target_class": target_class(name),
        "datasheet_tflops": None,
        "datasheet_source": "",
        "measured_tflops": None,
        "measured": None,
    }
    if override is not None:
        info.update(datasheet_tflops=float(override), datasheet_source="--peak-tflops")
    elif not cuda:
        info["datasheet_source"] = "no datasheet peak for CPUs"
    else:
        hit = lookup(name)
        if hit:
            info.update(datasheet_tflops=hit[1], datasheet_source=f"datasheet: {hit[0]}, dense bf16")
        else:
            info["datasheet_source"] = f"{name} not in benchmarks/peaks.py; pass --peak-tflops"
    if measure if measure is not None else cuda:
        m = measure_matmul(device, n=n)
        info.update(measured_tflops=m["tflops"], measured=m)
    return info


def mfu(tflops, info: dict) -> dict:
    """{"mfu": vs datasheet, "mfu_measured": vs the measured matmul rate}; None where a yardstick is missing."""

    def ratio(peak):
        return tflops / peak if tflops is not None and peak else None

    return {"mfu": ratio(info.get("datasheet_tflops")), "mfu_measured": ratio(info.get("measured_tflops"))}
