"""One GPU window, two calls: what each call carries, the command it runs, and what comes back.

    python3 -m benchmarks.gpu_window plan            # stage .cache/gpu-window/call{1,2}; print both calls
    python3 -m benchmarks.gpu_window check           # staged parts: sizes, checksums, every limit
    python3 -m benchmarks.gpu_window call1 --out "$OUT"   # on the GPU machine: the printed command
    python3 -m benchmarks.gpu_window call2 --out "$OUT"
    python3 -m benchmarks.gpu_window next --results benchmarks/results/h200-DATE   # the second window
    # the race against lightly in a window: its wheels travel with call 2 (the GPU machine has no
    # lightly and no network); pure-Python wheels, unzipped there onto PYTHONPATH, no pip needed
    pip download --no-deps lightly==1.6.0 lightning-utilities tqdm -d .cache/peers
    python3 -m benchmarks.gpu_window plan --wheels .cache/peers
    python3 -m benchmarks.gpu_window next --results benchmarks/results/h200-DATE --race

The window (benchmarks/README.md, "One GPU window"): 15 minutes on one offline machine, its start
included; one command of at most 10 minutes per call; at most 64 MiB travelling per call (the
tree, tracked and untracked-not-ignored files, plus the carried folder); what a call leaves outside
$OUT lasts only while the machine stays warm (about 30 s idle); 8 result files of 16 MiB at most.
CIFAR-10 (cifar10.npz, 104 MiB) cannot travel in one call, so call 1 carries part A and measures
what needs no dataset (environment and matmul peak, the step ablation on synthetic batches,
NT-Xent); call 2, fired at once, carries part B, joins the two (SHA-256 checked), unpacks CIFAR-10
and measures throughput (whole epochs, `gpu` against torchvision with 16 workers) and a short time
to accuracy whose measured epoch costs size the next window (`next`). Each call first learns in
seconds whether torch.compile works (benchmarks.preflight); if not, it measures eager and says so.
--smoke runs a call's code path on a CPU in seconds (tests/benchmarks/test_gpu_window.py rehearses
both calls in a copy of the tree that holds only what travels, with python3 alone on the PATH).
"""

import datetime
import glob
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field

from fastssl.config import ConfigError, cli, parse
from pipelines.files import sha256

from . import common, preflight

MIB = 2**20
CARRY_LIMIT = 64 * MIB  # what one call may carry, tree included
# What we let it carry: 1 MiB to spare, for what the tree gains between `plan` and the calls (the plan
# is made right before them; a tree grown past this needs a third call).
CARRY_TARGET = 63 * MIB
COMMAND_LIMIT = 2000  # characters of one device command
RESULT_FILES, RESULT_BYTES = 8, 16 * MIB
STAGE = os.path.join(".cache", "gpu-window")
DATA = os.path.join(".cache", "data")
NPZ = "cifar10.npz"
# The window, in minutes: 15 in all, 2 kept as margin. The start and the transfers are the device's
# published figures and our assumption (63 MiB each way is not measured); the limits are ours.
WINDOW_MIN, MARGIN_MIN, START_MIN, TRANSFER_MIN = 15.0, 2.0, 2.0, 0.5
CALLS = {  # stages, seconds the command may run (the device call's timeout_s), stage shares
    "call1": {"stages": "environment,step,nt_xent", "limit_s": 255, "estimates": None},
    "call2": {
        "stages": "environment,throughput,time_to_accuracy",
        "limit_s": 315,
        "estimates": "throughput=130,time_to_accuracy=140",
    },
}
TTA_EPOCHS = 30  # the short time-to-accuracy run of call 2
SUITE_MARGIN_S = 25  # the suite's grace (15 s) + writing results, inside a call's limit


@dataclass
class WindowConfig:
    data_src: str = field(
        default=os.path.join("..", "shared", "data"),
        metadata={"help": "folder of cifar10.npz, unpack.py and README.md (plan)"},
    )
    # The default is the folder the calls' carry lists name (see describe).
    stage_dir: str | None = field(
        default=None, metadata={"help": f"plan/check: where the calls' folders go (default <repo>/{STAGE})"}
    )
    out: str | None = field(default=None, metadata={"help": "call1/call2: where results go (default $OUT)"})
    results: str | None = field(
        default=None,
        metadata={"help": "next: the first window's committed folder (holding call1/ and call2/)"},
    )
    smoke: bool = field(
        default=False,
        metadata={"help": "call1/call2 on a CPU with tiny sizes (the rehearsal); numbers mean nothing"},
    )
    stages: str | None = field(
        default=None, metadata={"help": "call1/call2: suite stages instead of the call's own"}
    )
    epochs: int | None = field(
        default=None,
        metadata={"help": f"call2: time-to-accuracy epochs (default: planned, at most {TTA_EPOCHS})"},
    )
    # lightly 1.6 imports only lightning-utilities and tqdm beyond what the GPU machine has.
    wheels: str | None = field(
        default=None,
        metadata={"help": "plan: a folder of pure-Python wheels that call 2 carries (the race's peers)"},
    )
    race: bool = field(
        default=False, metadata={"help": "next: call 2 runs the race stage instead of time to accuracy"}
    )
    rates_from: str | None = field(
        default=None, metadata={"help": "call2: a suite.json whose rates plan the epochs (the next window)"}
    )
    limit_s: int | None = field(
        default=None,
        metadata={"help": "call1/call2: seconds the call may run (default: the call's limit in the plan)"},
    )

    def __post_init__(self):
        if self.epochs is not None and self.epochs <= 0:
            raise ValueError(f"--epochs must be positive, got {self.epochs}")


def repo() -> str:
    return common.REPO


def tree_files(root: str) -> list:
    """Paths (relative) of what travels with every call: tracked and untracked-not-ignored files."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [p for p in out.split("\0") if p and os.path.isfile(os.path.join(root, p))]


def folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def command(call: str, extra=()) -> str:
    """The device command of `call` (runs in the repository root)."""
    return " ".join(["PYTHONUNBUFFERED=1 python3 -m benchmarks.gpu_window", call, '--out "$OUT"', *extra])


# ----------------------------------------------------------------------------- plan / check (here)


def plan(cfg) -> dict:
    """Split cifar10.npz into the two calls' folders under .cache/gpu-window, each sized from the
    measured tree so that tree + folder <= 63 MiB, and describe both calls."""
    root, src = repo(), os.path.abspath(cfg.data_src)
    missing = [f for f in (NPZ, "unpack.py") if not os.path.isfile(os.path.join(src, f))]
    if missing:
        raise ConfigError(f"--data-src {src}: no {', '.join(missing)} (the CIFAR bundle)")
    tree = sum(os.path.getsize(os.path.join(root, p)) for p in tree_files(root))
    size = os.path.getsize(os.path.join(src, NPZ))
    half = (size + 1) // 2
    extras = [f for f in ("unpack.py", "README.md") if os.path.isfile(os.path.join(src, f))]
    small = sum(os.path.getsize(os.path.join(src, f)) for f in extras) + 64 * 1024  # + manifest, slack
    wheels = sorted(glob.glob(os.path.join(cfg.wheels, "*.whl"))) if cfg.wheels else []
    if cfg.wheels and not wheels:
        raise ConfigError(f"--wheels {cfg.wheels}: no .whl files there")
    impure = [w for w in wheels if not w.endswith("-none-any.whl")]
    if impure:
        raise ConfigError(
            f"--wheels: {os.path.basename(impure[0])} is not pure Python (it is unzipped, not installed)"
        )
    small += sum(os.path.getsize(w) for w in wheels)
    if tree + half + small > CARRY_TARGET:
        raise ConfigError(
            f"{NPZ} ({size / MIB:.1f} MiB) does not fit two calls: the tree that travels with each is "
            f"{tree / MIB:.1f} MiB, half the file {half / MIB:.1f} MiB, limit {CARRY_TARGET // MIB} MiB"
        )
    stage = cfg.stage_dir or os.path.join(root, STAGE)
    shutil.rmtree(stage, ignore_errors=True)
    parts = []
    with open(os.path.join(src, NPZ), "rb") as f:
        for call, name, n in (("call1", f"{NPZ}.part-a", half), ("call2", f"{NPZ}.part-b", size - half)):
            os.makedirs(os.path.join(stage, call))
            path = os.path.join(stage, call, name)
            with open(path, "wb") as out:
                out.write(f.read(n))
            parts.append({"call": call, "name": name, "bytes": n, "sha256": sha256(path)})
    for f in extras:  # unpack.py must sit beside the joined file; it travels with call 2
        shutil.copy2(os.path.join(src, f), os.path.join(stage, "call2", f))
    for w in wheels:
        os.makedirs(os.path.join(stage, "call2", "wheels"), exist_ok=True)
        shutil.copy2(w, os.path.join(stage, "call2", "wheels"))
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True
    ).stdout.strip()
    dirty = bool(
        subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
    )
    manifest = {
        "file": NPZ,
        "bytes": size,
        "sha256": sha256(os.path.join(src, NPZ)),
        "parts": parts,
        "commit": commit,
        "dirty": dirty,
        "tree_bytes": tree,
        "wheels": [os.path.basename(w) for w in wheels],
        "staged": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    for call in CALLS:
        common.write_json(os.path.join(stage, call, "manifest.json"), manifest)
    text = describe(manifest, {c: folder_bytes(os.path.join(stage, c)) for c in CALLS})
    common.write_text(os.path.join(stage, "plan.txt"), text)
    print(text, end="")
    return manifest


def timeline() -> list:
    """[(step, minutes)] of the window, in order."""
    c1, c2 = CALLS["call1"]["limit_s"] / 60, CALLS["call2"]["limit_s"] / 60
    return [
        ("machine start", START_MIN),
        ("call 1: transfer (tree + part A)", TRANSFER_MIN),
        ("call 1: preflight, environment, step ablation, NT-Xent (limit)", c1),
        ("call 2: transfer (tree + part B)", TRANSFER_MIN),
        ("call 2: preflight, join + unpack CIFAR-10, throughput, time to accuracy (limit)", c2),
    ]


def describe(manifest, carried: dict) -> str:
    tree = manifest["tree_bytes"]
    lines = [
        f"GPU window: {WINDOW_MIN:.0f} min, {MARGIN_MIN:.0f} min of it kept as margin; tree that travels with "
        f"each call: {tree / MIB:.2f} MiB (commit {manifest['commit'][:12]}{', dirty' if manifest['dirty'] else ''})"
    ]
    for i, call in enumerate(CALLS, 1):
        c, total = CALLS[call], tree + carried[call]
        lines += [
            "",
            f'call {i}: carry ["{STAGE}/{call}"]  timeout_s {c["limit_s"]}  travels {total / MIB:.2f} MiB '
            f"(limit {CARRY_LIMIT // MIB}: tree {tree / MIB:.2f} + folder {carried[call] / MIB:.2f})",
            f"  command ({len(command(call))} chars): {command(call)}",
            f"  stages: {c['stages']}; results: $OUT/{call}/ (suite.json, suite.md, charts, preflight.json, log.txt)",
        ]
    lines += ["", "expected minutes:"]
    total = 0.0
    for step, minutes in timeline():
        total += minutes
        lines.append(f"  {minutes:5.2f}  {step}")
    lines.append(
        f"  {total:5.2f}  in all (<= {WINDOW_MIN - MARGIN_MIN:.0f}); fire call 2 as soon as call 1 returns"
    )
    return "\n".join(lines) + "\n"


def check(cfg) -> list:
    """Problems with the staged calls (empty: ready): parts present with their sizes and checksums,
    joining to the file's checksum, every call within the carry limit with today's tree, commands
    within their length, the timeline within the window."""
    root = repo()
    stage = cfg.stage_dir or os.path.join(root, STAGE)
    problems, digest, manifest = [], hashlib.sha256(), None
    try:
        with open(os.path.join(stage, "call1", "manifest.json")) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return [f"nothing staged in {STAGE} (run: python3 -m benchmarks.gpu_window plan)"]
    tree = sum(os.path.getsize(os.path.join(root, p)) for p in tree_files(root))
    for part in manifest["parts"]:
        path = os.path.join(stage, part["call"], part["name"])
        if not os.path.isfile(path) or os.path.getsize(path) != part["bytes"]:
            problems.append(f"{path}: missing or not {part['bytes']} bytes")
            continue
        with open(path, "rb") as f:
            data = f.read()
        if hashlib.sha256(data).hexdigest() != part["sha256"]:
            problems.append(f"{path}: checksum differs from the manifest")
        digest.update(data)
    if not problems and digest.hexdigest() != manifest["sha256"]:
        problems.append(f"the parts do not join to {NPZ} (sha256 {manifest['sha256'][:12]}...)")
    for call, c in CALLS.items():
        total = tree + folder_bytes(os.path.join(stage, call))
        if total > CARRY_TARGET:
            problems.append(
                f"{call}: {total / MIB:.2f} MiB would travel (tree {tree / MIB:.2f} MiB), over {CARRY_TARGET // MIB} MiB"
            )
        if len(command(call)) > COMMAND_LIMIT:
            problems.append(f"{call}: command of {len(command(call))} characters, over {COMMAND_LIMIT}")
        if not 0 < c["limit_s"] <= 600:
            problems.append(f"{call}: limit {c['limit_s']} s outside 1..600")
    if sum(m for _, m in timeline()) > WINDOW_MIN - MARGIN_MIN:
        problems.append(
            f"the calls need {sum(m for _, m in timeline()):.2f} min, over {WINDOW_MIN - MARGIN_MIN:.0f}"
        )
    if tree != manifest["tree_bytes"]:
        print(
            f"note: the tree is {tree - manifest['tree_bytes']:+d} bytes since the plan (checked against today's)"
        )
    return problems


# ----------------------------------------------------------------------------- the calls (device)


class Log:
    """Everything the call prints, also into <out>/log.txt (it comes back with the results)."""

    def __init__(self, path):
        self.f = open(path, "a", buffering=1)

    def __call__(self, msg=""):
        print(msg, flush=True)
        self.f.write(msg + "\n")


def gpu_facts(device: str) -> dict:
    import torch

    facts = {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": device,
    }
    if device == "cuda":
        facts["gpu"] = torch.cuda.get_device_name()
        smi = shutil.which("nvidia-smi")
        if smi:
            q = subprocess.run(
                [smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            )
            facts["nvidia_smi"] = q.stdout.strip() or q.stderr.strip()
    return facts


def run_call(cfg, call: str) -> int:
    t0 = time.monotonic()
    limit = cfg.limit_s or CALLS[call]["limit_s"]
    out = cfg.out or os.environ.get("OUT")
    if not out:
        raise ConfigError("--out not given and $OUT not set: where should the results go?")
    root = repo()
    res = os.path.join(out, call)
    os.makedirs(res, exist_ok=True)
    log = Log(os.path.join(res, "log.txt"))
    import torch

    device = "cpu" if cfg.smoke or not torch.cuda.is_available() else "cuda"
    facts = gpu_facts(device)
    log(
        f"{call}: {facts.get('gpu', 'no GPU')} {facts.get('nvidia_smi', '')} | torch {facts['torch']} "
        f"CUDA {facts['cuda']} | Python {facts['python']}"
    )
    # Call 2 trusts call 1's check when the machine stayed warm (same machine, same image).
    known, backend = os.path.join(root, STAGE, "compile-check.json"), "eager" if cfg.smoke else "inductor"
    try:
        with open(known) as f:
            check = {**json.load(f), "from": "call 1"}
        if (check.get("backend"), check.get("device")) != (backend, device):
            raise ValueError("checked for another backend or device")
    except (OSError, ValueError):
        check = {
            **preflight.compile_check(device, backend, timeout=20 if cfg.smoke else 60),
            "device": device,
        }
        common.write_json(known, check)
    log(
        f"compile check{' (call 1)' if check.get('from') else ''}: {'ok' if check['ok'] else 'FAILED: ' + check['reason']} "
        f"({check['seconds']:.1f} s)"
        + ("" if check["ok"] else "; measuring eager (--no-compile), rows labelled so")
    )
    pre = {
        "call": call,
        "facts": facts,
        "compile_check": check,
        "stages": cfg.stages or CALLS[call]["stages"],
    }
    manifest = _manifest(root, call)
    env = dict(os.environ)
    peers = unzip_wheels(root, log)
    if peers:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [peers, env.get("PYTHONPATH")]))
        pre["peers"] = sorted(os.listdir(os.path.join(root, STAGE, "call2", "wheels")))
    if manifest:  # no .git travels: the stager's commit goes into every record
        env.update(FASTSSL_GIT_COMMIT=manifest["commit"], FASTSSL_GIT_DIRTY="1" if manifest["dirty"] else "0")
        pre["commit"] = manifest["commit"]
    argv = [
        "--stages",
        pre["stages"],
        "--out",
        res,
        "--overwrite",
        "--compile" if check["ok"] else "--no-compile",
    ]
    if call == "call2":
        data = assemble(root, log, cfg.smoke)
        pre["data"] = data
        if data["ok"]:
            argv += ["--data-dir", os.path.join(root, DATA), "--pipelines", "gpu,torchvision"]
            argv += [] if cfg.smoke else ["--max-epochs", str(TTA_EPOCHS)]
            argv += ["--estimates", CALLS[call]["estimates"]] if not cfg.stages else []
        else:
            argv = [
                "--stages",
                "environment,throughput",
                "--throughput-dataset",
                "cifar10-sample",
                "--pipelines",
                "gpu,torchvision",
                *argv[2:],
            ]
        argv += ["--epochs", str(cfg.epochs)] if cfg.epochs else []
        argv += ["--rates-from", cfg.rates_from] if cfg.rates_from else []
    argv += ["--smoke"] if cfg.smoke else []
    budget = limit - (time.monotonic() - t0) - SUITE_MARGIN_S
    argv += ["--budget", f"{max(10.0, budget):.0f}"]
    pre["suite_command"] = shlex.join(["python3", "-m", "benchmarks.suite", *argv])
    common.write_json(os.path.join(res, "preflight.json"), pre)
    log(f"+ {pre['suite_command']}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.suite", *argv],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    for line in proc.stdout:
        log(line.rstrip("\n"))
    code = proc.wait()
    files = sorted(os.listdir(res))
    big = [f for f in files if os.path.getsize(os.path.join(res, f)) > RESULT_BYTES]
    log(
        f"{call} done in {time.monotonic() - t0:.0f} s (limit {limit}); suite exit {code}; "
        f"{len(files)} files in $OUT/{call}" + (f"; over {RESULT_BYTES // MIB} MiB: {big}" if big else "")
    )
    return code


def unzip_wheels(root: str, log) -> str | None:
    """The folder the wheels carried by call 2 are unzipped into (pure-Python wheels need no pip:
    a wheel is a zip of the package), or None when none travelled."""
    folder = os.path.join(root, STAGE, "call2", "wheels")
    wheels = sorted(glob.glob(os.path.join(folder, "*.whl")))
    if not wheels:
        return None
    target = os.path.join(root, STAGE, "peers")
    shutil.rmtree(target, ignore_errors=True)
    for w in wheels:
        with zipfile.ZipFile(w) as z:
            z.extractall(target)
    log(f"peers on PYTHONPATH: {', '.join(os.path.basename(w) for w in wheels)}")
    return target


def _manifest(root, call):
    try:
        with open(os.path.join(root, STAGE, call, "manifest.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def assemble(root: str, log, smoke: bool) -> dict:
    """Join part A (left by call 1) and part B (carried by call 2), check them, unpack CIFAR-10 into
    .cache/data. Never half-used: a missing or damaged part says so in one line and returns ok=False."""
    t0 = time.monotonic()
    stage = os.path.join(root, STAGE)
    manifest = _manifest(root, "call2")
    if manifest is None:
        log(f"no {STAGE}/call2/manifest.json: call 2 must carry {STAGE}/call2")
        return {"ok": False, "reason": "call 2's folder did not travel"}
    joined = os.path.join(stage, "joined")
    os.makedirs(joined, exist_ok=True)
    target = os.path.join(joined, NPZ)
    if not (
        os.path.isfile(target)
        and os.path.getsize(target) == manifest["bytes"]
        and sha256(target) == manifest["sha256"]
    ):
        for part in manifest["parts"]:
            path = os.path.join(stage, part["call"], part["name"])
            if not os.path.isfile(path) or sha256(path) != part["sha256"]:
                why = (
                    f"{part['name']} is not on this machine or damaged (part A comes with call 1 and lasts only "
                    f"while the machine stays warm): CIFAR-10 not assembled; throughput on the shipped sample, "
                    f"time to accuracy not run"
                )
                log(why)
                return {"ok": False, "reason": why}
        tmp = f"{target}.tmp-{os.getpid()}"
        with open(tmp, "wb") as out:
            for part in manifest["parts"]:
                with open(os.path.join(stage, part["call"], part["name"]), "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 22)
        if sha256(tmp) != manifest["sha256"]:
            os.remove(tmp)
            log(f"the joined {NPZ} does not match its checksum: CIFAR-10 not assembled")
            return {"ok": False, "reason": "joined file checksum mismatch"}
        os.replace(tmp, target)
    shutil.copy2(os.path.join(stage, "call2", "unpack.py"), os.path.join(joined, "unpack.py"))
    done = subprocess.run(
        [sys.executable, os.path.join(joined, "unpack.py"), os.path.join(root, DATA), "--only", "cifar10"],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        log(f"unpacking CIFAR-10 failed: {why}")
        return {"ok": False, "reason": f"unpack: {why}"}
    log(f"CIFAR-10 assembled and unpacked into {DATA} in {time.monotonic() - t0:.1f} s")
    return {"ok": True, "seconds": time.monotonic() - t0}


# ----------------------------------------------------------------------------- the next window


def next_window(cfg) -> str:
    """The second window's plan, from the first window's result folder: the full time-to-accuracy
    run (85% kNN top-1 within 300 s of training wall time) sized from call 2's measured costs."""
    if not cfg.results:
        raise ConfigError("next needs --results FOLDER (the first window's, holding call2/suite.json)")
    path = os.path.join(cfg.results, "call2", "suite.json")
    try:
        with open(path) as f:
            stages = {r["stage"]: r for r in json.load(f)["stages"]}
        tta = stages["time_to_accuracy"]["result"]
        costs, curve = tta["plan"]["costs"], tta["curve"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path}: no measured time-to-accuracy run ({type(e).__name__}: {e})") from None
    epoch_times = sorted(p["epoch_time_s"] for p in curve if p.get("epoch_time_s"))
    if not epoch_times:
        raise ConfigError(f"{path}: its kNN curve has no epoch times")
    epoch_s = epoch_times[len(epoch_times) // 2]
    knn_s = tta["plan"]["knn_s_estimate"]
    compile_s = costs["first_step_s"]
    target_s, knn_every = 300.0, 10
    # Training wall time (what the target counts): compilation, the epochs, a kNN pass every 10
    # epochs, and the checkpoints; the probes come after it.
    per = epoch_s + 2 * costs["checkpoint_s"] + knn_s / knn_every
    epochs = max(1, int((target_s - compile_s - knn_s) // per))
    limit = 540
    rates = os.path.join(cfg.results, "call2", "suite.json")
    if cfg.race:  # the race stage sizes its own epochs from the suite's budget; lightly needs --wheels
        c2 = command("call2", ["--stages", "environment,race", "--limit-s", str(limit)])
    else:
        c2 = command(
            "call2",
            [
                "--stages",
                "environment,time_to_accuracy",
                "--epochs",
                str(epochs),
                "--rates-from",
                shlex.quote(rates),
                "--limit-s",
                str(limit),
            ],
        )
    c1 = command("call1", ["--stages", "environment", "--limit-s", "60"])
    reached = next((p for p in curve if p["knn_top1"] >= 85.0), None)
    last = curve[-1] if curve else {}
    lines = [
        f"second window, sized from {path}:",
        f"  measured: {epoch_s:.2f} s per epoch (median of {len(epoch_times)}), compile {compile_s:.1f} s, "
        f"kNN pass {knn_s:.1f} s, checkpoint {costs['checkpoint_s']:.2f} s",
        f"  first window: kNN top-1 {last.get('knn_top1', float('nan')):.2f}% after {last.get('epoch')} epochs"
        + (f"; 85% reached at {reached['wall_s']:.0f} s" if reached else "; 85% not reached"),
        "  plan: the race (fastssl, plain, lightly when its wheels travelled: plan --wheels)"
        if cfg.race
        else f"  plan: {epochs} epochs (warm-up + cosine over all of them) end within {target_s:.0f} s of training wall time",
        f'  call 1: carry ["{STAGE}/call1"] timeout_s 60: {c1}',
        f'  call 2: carry ["{STAGE}/call2"] timeout_s {limit}: {c2}',
        f"  window: {START_MIN + 2 * TRANSFER_MIN + 1 + limit / 60:.1f} min of {WINDOW_MIN - MARGIN_MIN:.0f} "
        f"(start {START_MIN}, transfers {2 * TRANSFER_MIN}, call 1 1.0, call 2 {limit / 60:.1f})",
    ]
    for c in (c1, c2):
        if len(c) > COMMAND_LIMIT:
            raise ConfigError(f"command of {len(c)} characters, over {COMMAND_LIMIT}: {c[:80]}...")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    return text


VERBS = {
    "plan": plan,
    "check": check,
    "call1": lambda cfg: run_call(cfg, "call1"),
    "call2": lambda cfg: run_call(cfg, "call2"),
    "next": next_window,
}


@cli
def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["--help"], ["-h"]):
        print(__doc__)
        return None
    if not argv or argv[0] not in VERBS:
        raise ConfigError(
            f"first argument: one of {', '.join(VERBS)} (python3 -m benchmarks.gpu_window --help)"
        )
    cfg = parse(WindowConfig, argv[1:], description=__doc__)
    result = VERBS[argv[0]](cfg)
    if argv[0] == "check":
        for p in result:
            print(f"problem: {p}")
        if result:
            raise ConfigError(f"{len(result)} problem(s) with the staged calls (see above)")
        print("ready: parts present, checksums match, every call within its limits")
    elif argv[0] in ("call1", "call2") and result:
        sys.exit(result)
    return result


if __name__ == "__main__":
    main()
