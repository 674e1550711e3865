"""Fault trials: hit tiny pretraining runs with kills, signals, a second writer, damaged files and a
full disk, and count how many come through with nothing lost. Writes a markdown table.

    python scripts/fault_trials.py --out benchmarks/results/cpu-2026-12-02/fault_trials.md --seed 0

"Nothing lost" means: a killed or signalled run, resumed until it finishes, has the same per-step
losses (bit for bit) and final weights as an uninterrupted run, a complete summary.json and no
temporary files left; a refused run exits 2 with one stderr line and leaves every file as it was.
"""

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "--dataset",
    "cifar10-sample",
    "--subset",
    "64",
    "--batch-size",
    "16",
    "--stem",
    "imagenet",
    "--device",
    "cpu",
    "--no-progress",
    "--knn-every",
    "0",
    "--proj-hidden-dim",
    "64",
    "--proj-dim",
    "32",
    "--no-compile",
    "--log-interval",
    "1",
    "--epochs",
    "3",
]


def pretrain(*args, wait=True, tiny=True):
    env = {k: v for k, v in os.environ.items() if k != "FASTSSL_DATA"}
    env["PYTHONPATH"] = REPO
    p = subprocess.Popen(
        [sys.executable, "-m", "fastssl.pretrain", *(TINY if tiny else []), *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if wait:
        p.out, p.err = p.communicate(timeout=300)
    return p


def read(out):
    from fastssl import checkpoint as ckpt

    losses = [r["loss"] for r in ckpt.read_jsonl(os.path.join(out, "metrics.jsonl")) if "loss" in r]
    model = torch.load(os.path.join(out, "last.pt"), weights_only=False)["model"]
    with open(os.path.join(out, "summary.json")) as f:
        return losses, model, json.load(f)


def same_as(reference, out):
    try:
        losses, model, summary = read(out)
    except (OSError, ValueError, KeyError):
        return False
    ref_losses, ref_model, ref_summary = reference
    return (
        losses == ref_losses
        and all(torch.equal(model[k], ref_model[k]) for k in ref_model)
        and summary["epochs_run"] == ref_summary["epochs_run"]
        and summary["final_loss"] == ref_summary["final_loss"]
        and not [n for n in os.listdir(out) if ".tmp-" in n]
    )


def interrupted(reference, out, rng, signum):
    """Start, deliver `signum` at a random moment, resume until done; True when nothing was lost."""
    p = pretrain("--out", out, "--save-every-steps", "1", wait=False)
    time.sleep(rng.uniform(3.0, 8.0))  # interpreter start ~3 s, then ~0.1-0.3 s per step
    if p.poll() is None:
        p.send_signal(signum)
    _, err = p.communicate(timeout=300)
    # 128 + signum: stopped with its position saved; -signum: the signal came before the handlers
    # were installed (interpreter start) and the process had written nothing worth keeping.
    if p.returncode not in (0, -signum, 128 + signum):
        print(f"  {signal.Signals(signum).name}: exit {p.returncode}: {err[-300:]}")
        return False
    for _ in range(3):
        if os.path.isfile(os.path.join(out, "summary.json")) and p.returncode == 0:
            break
        p = pretrain(
            "--out", out, "--resume" if os.path.isfile(os.path.join(out, "last.pt")) else "--overwrite"
        )
    ok = p.returncode == 0 and same_as(reference, out)
    if not ok:
        print(
            f"  {signal.Signals(signum).name}: resumed run differs or failed (exit {p.returncode}): {getattr(p, 'err', '')[-300:]}"
        )
    return ok


def second_writer(reference, out, rng):
    first = pretrain("--out", out, wait=False)
    deadline = time.time() + 60
    while not os.path.isfile(os.path.join(out, "config.json")) and time.time() < deadline:
        time.sleep(0.05)
    second = pretrain("--out", out, "--overwrite")
    first.communicate(timeout=300)
    err = second.err.strip().splitlines()
    return (
        second.returncode == 2
        and len(err) == 1
        and f"pid {first.pid}" in err[0]
        and first.returncode == 0
        and same_as(reference, out)
    )


def _snapshot(out):
    return {
        os.path.relpath(os.path.join(d, n), out): open(os.path.join(d, n), "rb").read()
        for d, _, names in os.walk(out)
        for n in names
        if n != ".lock"
    }


def _rewrite(path, fn):
    state = torch.load(path, weights_only=False)
    torch.save(fn(state), path)


def _as_directory(path):
    os.remove(path)
    os.mkdir(path)


DAMAGE = {
    "last.pt is a bare state_dict": ("last.pt", lambda p: _rewrite(p, lambda s: s["model"])),
    "last.pt is a foreign dict": ("last.pt", lambda p: torch.save({"weights": torch.ones(2)}, p)),
    "last.pt without optimizer state": ("last.pt", lambda p: _rewrite(p, lambda s: {**s, "optimizer": {}})),
    "last.pt config does not match weights": (
        "last.pt",
        lambda p: _rewrite(p, lambda s: {**s, "config": {**s["config"], "proj_dim": 16}}),
    ),
    "last.pt truncated": ("last.pt", lambda p: open(p, "r+b").truncate(os.path.getsize(p) // 2)),
    "metrics.jsonl holds binary bytes": (
        "metrics.jsonl",
        lambda p: open(p, "ab").write(bytes(range(256)) + b"\n{}\n"),
    ),
    "metrics.jsonl is a directory": ("metrics.jsonl", _as_directory),
    "config.json is a directory": ("config.json", _as_directory),
}


def damaged(half, out, kind):
    shutil.copytree(half, out)
    name, damage = DAMAGE[kind]
    damage(os.path.join(out, name))
    before = _snapshot(out)
    p = pretrain("--out", out, "--resume", tiny=False)  # the saved config, as a user would resume
    err = p.err.strip().splitlines()
    return p.returncode == 2 and len(err) == 1 and name in err[0] and _snapshot(out) == before


def disk_full(work):
    mnt = os.path.join(work, "small")
    os.makedirs(mnt)
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mnt], capture_output=True
    ).returncode:
        return None  # not allowed here
    try:
        out = os.path.join(mnt, "run")
        p = pretrain("--out", out)
        err = p.err.strip().splitlines()
        return (
            p.returncode == 2
            and len(err) == 1
            and "No space left" in err[0]
            and not [n for n in os.listdir(out) if ".tmp-" in n]
        )
    finally:
        subprocess.run(["umount", mnt], check=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="markdown file to write")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill/signal moments")
    ap.add_argument("--kills", type=int, default=6, help="kill -9 trials")
    ap.add_argument("--signals", type=int, default=2, help="trials per signal (TERM, INT, USR1)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = tempfile.mkdtemp(prefix="fault_trials_")
    rows = []
    try:
        ref_dir = os.path.join(work, "reference")
        assert pretrain("--out", ref_dir).returncode == 0
        reference = read(ref_dir)
        half = os.path.join(work, "half")  # a resumable run: 1 of its 3 epochs done
        assert pretrain("--out", half, "--epochs", "1").returncode == 0
        state = torch.load(os.path.join(half, "last.pt"), weights_only=False)
        state["config"]["epochs"] = 3
        torch.save(state, os.path.join(half, "last.pt"))
        os.remove(os.path.join(half, "summary.json"))

        def trial(kind, fn, n):
            results = [fn(os.path.join(work, f"{kind}-{i}".replace(" ", "_"))) for i in range(n)]
            results = [r for r in results if r is not None]
            rows.append((kind, len(results), sum(results)))
            print(rows[-1], flush=True)

        trial(
            "kill -9 at a random moment, then --resume",
            lambda o: interrupted(reference, o, rng, signal.SIGKILL),
            args.kills,
        )
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            trial(
                f"{s.name} at a random moment, then --resume",
                lambda o, s=s: interrupted(reference, o, rng, s),
                args.signals,
            )
        trial(
            "second run on the same --out (with --overwrite)", lambda o: second_writer(reference, o, rng), 2
        )
        for kind in DAMAGE:
            trial(f"resume with {kind}", lambda o, k=kind: damaged(half, o, k), 1)
        trial("disk full (1 MiB tmpfs)", lambda o: disk_full(work), 1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO
    ).stdout.strip()
    lines = [
        "# Fault trials",
        "",
        f"Command: `python scripts/fault_trials.py --out {args.out} --seed {args.seed} --kills {args.kills} "
        f"--signals {args.signals}` (commit {commit}, torch {torch.__version__}, CPU).",
        "",
        "Each trial is a tiny run (`"
        + " ".join(TINY)
        + "`); killed and signalled runs checkpoint every step "
        "(`--save-every-steps 1`). Survived = nothing lost: resumed to the end with bit-identical per-step "
        "losses, final weights and summary versus an uninterrupted run and no temporary files; refused inputs "
        "exit 2 with one stderr line and every file left as it was.",
        "",
        "| fault | trials | survived with nothing lost |",
        "|---|---:|---:|",
    ]
    lines += [f"| {kind} | {n} | {ok} |" for kind, n, ok in rows]
    lines += ["", f"Total: {sum(r[2] for r in rows)} of {sum(r[1] for r in rows)} trials.", ""]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
