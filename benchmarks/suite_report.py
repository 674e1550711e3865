"""What `python -m benchmarks.suite` writes and prints: the plan, suite.json, suite.md, three
charts, the targets and the one-screen summary. Rendering only; nothing here measures."""

import os
import sys

from . import common, nt_xent, peaks, throughput
from .suite_stages import all_stages

TARGET_KNN, TARGET_SECONDS = 85.0, 300.0  # kNN top-1 (%) on CIFAR-10 within this wall time
OPTIMIZER_SHARE = 0.05


def print_plan(steps, cfg, env, out) -> None:
    print(
        f"benchmarks.suite on {env['gpu'] or env['cpu']} (torch {env['torch']}), budget {cfg.budget:.0f} s"
        f"{', smoke' if cfg.smoke else ''}; results in {out}"
    )
    for i, (name, est) in enumerate(steps, 1):
        print(f"  {i}. {name:<17} ~{est:5.0f} s  {all_stages()[name][1]}")
    sys.stdout.flush()


def stage(report, name):
    rec = next((r for r in report["stages"] if r["stage"] == name), None)
    return rec, (rec or {}).get("result") or {}


def targets(report) -> list:
    """Every target, judged where measurable, else "not measured" with the reason."""
    out = []
    for name in ("throughput", "nt_xent"):
        rec, res = stage(report, name)
        out += res.get("targets") or [
            common.target(
                f"{name} targets", None, 0, True, False, f"{name} stage {rec['status'] if rec else 'not run'}"
            )
        ]
    gpu = report["environment"]["gpu"]
    why = peaks.not_target_reason(gpu)
    rec, st = stage(report, "step")
    best = max(
        (r for r in st.get("rows", []) if r.get("optimizer_ms")),
        key=lambda r: r["img_per_s"]["median"],
        default=None,
    )
    share = best["optimizer_ms"] / best["step_ms"]["median"] if best else None
    out.append(
        common.target(
            f"optimiser step <= 5% of step time, fastest setting ({peaks.TARGET_CLASS})",
            share,
            OPTIMIZER_SHARE,
            False,
            not why and best is not None and not report["smoke"],
            why or ("--smoke" if report["smoke"] else "step stage did not finish"),
            "fraction",
        )
    )
    rec, tta = stage(report, "time_to_accuracy")
    t85 = tta.get("time_to_85_s")
    full = not why and not report["smoke"] and tta.get("dataset") == "cifar10"
    reached = t85 is not None or bool(tta.get("curve"))
    out.append(
        common.target(
            f"time to {TARGET_KNN:.0f}% kNN top-1 on CIFAR-10 <= {TARGET_SECONDS:.0f} s wall "
            f"({peaks.TARGET_CLASS})",
            t85 if t85 is not None else (float("inf") if reached else None),
            TARGET_SECONDS,
            False,
            full and reached,
            why
            or ("--smoke" if report["smoke"] else f"time_to_accuracy {rec['status'] if rec else 'not run'}"),
            "s",
        )
    )
    return out


# ----------------------------------------------------------------------------- markdown


def step_table(res) -> str:
    rows = []
    for r in res.get("rows", []):
        if not r.get("img_per_s"):
            rows.append([r["setting"], r["status"]] + [""] * 9)
            continue
        rows.append(
            [
                r["setting"],
                r["status"],
                common.fmt_range(r["img_per_s"]),
                f"{r['step_ms']['median']:.2f}",
                f"{r['speedup_vs_first']:.2f}x",
                f"{r['tflops']:.3f}",
                common.fmt(r["mfu"], ".1%"),
                common.fmt(r["mfu_measured"], ".1%"),
                common.fmt(r.get("peak_memory_gib"), ".2f"),
                common.fmt(r.get("optimizer_ms"), ".2f"),
                f"{r.get('graphs_warmup', '')} / {r.get('recompiles_timed', '')}",
            ]
        )
    head = (
        f"batch {res.get('batch_size')} ({res.get('image_size')}x{res.get('image_size')} views), "
        f"{res.get('steps_per_repeat')} steps x {res.get('repeats')} repeats, compile backend "
        f"{res.get('compile_backend')}; each row adds one change to the row above\n\n"
    )
    return head + common.markdown_table(
        [
            "setting",
            "status",
            "img/s median (min-max)",
            "ms/step",
            "vs first",
            "TFLOP/s",
            "MFU (datasheet)",
            "MFU (measured matmul)",
            "peak mem GiB",
            "optimiser ms",
            "graphs compiled: warm-up / timed",
        ],
        rows,
    )


def tta_section(res) -> str:
    if not res:
        return "not run\n"
    lines = [
        f"{res['epochs_planned']} epochs planned ({res['plan'].get('source')}"
        + (
            f", estimated {res['plan']['epoch_s_estimate']:.2f} s/epoch"
            if "epoch_s_estimate" in res["plan"]
            else ""
        )
        + f"); training took {res.get('pretrain_wall_s', 0):.1f} s; time to {TARGET_KNN:.0f}% kNN top-1: "
        + (f"{res['time_to_85_s']:.1f} s" if res.get("time_to_85_s") is not None else "not reached"),
        "",
    ]
    lines.append(
        common.markdown_table(
            ["epoch", "wall s", "kNN top-1 %", "kNN top-5 %"],
            [
                [
                    p["epoch"],
                    common.fmt(p["wall_s"], ".1f"),
                    f"{p['knn_top1']:.2f}",
                    common.fmt(p["knn_top5"], ".2f"),
                ]
                for p in res.get("curve", [])
            ],
        )
    )
    rows = []
    for key, p in (res.get("probes") or {}).items():
        if p.get("status") != "ok":
            rows.append([key, p.get("status", ""), "", "", "", ""])
        else:
            rows.append(
                [
                    key,
                    p["dataset"],
                    f"{p['test_top1']:.2f}",
                    f"{p['test_top5']:.2f}",
                    common.fmt(p["knn_top1"], ".2f"),
                    f"{p['wall_time_s']:.1f}",
                ]
            )
    if rows:
        lines += [
            "",
            common.markdown_table(
                ["probe", "dataset", "test top-1 %", "test top-5 %", "kNN top-1 %", "s"], rows
            ),
        ]
    return "\n".join(lines) + "\n"


def families_section(res) -> str:
    """One row per family: its epochs, loss, kNN monitor, and the probe on the split's test part."""
    rows = []
    for method, r in res["families"].items():
        p = r.get("probe") or {}
        rows.append(
            [
                method,
                str(r.get("epochs", "-")),
                common.fmt(r.get("final_loss"), ".4f"),
                common.fmt(r.get("val_knn_top1"), ".2f"),
                common.fmt(r.get("knn_top1"), ".2f"),
                common.fmt(p.get("test_top1"), ".2f"),
                common.fmt(p.get("test_top5"), ".2f"),
                p.get("status", r.get("status", "-")),
            ]
        )
    return (
        f"Each family pretrained on the train part of {res['dataset']} {res['split']} (split seed 0), the linear "
        "probe tuned on its validation part and scored once on its test part; kNN top-1 on the test part "
        "(train + validation vote). Commands in suite.json.\n\n"
        + common.markdown_table(
            [
                "family",
                "epochs",
                "final loss",
                "val kNN top-1",
                "kNN top-1",
                "linear top-1",
                "linear top-5",
                "probe",
            ],
            rows,
        )
    )


def compile_line(report) -> str:
    c = report.get("compile") or {}
    check = c.get("check") or {}
    how = f" (compile check {check['seconds']:.1f} s)" if check else ""
    return (
        "torch.compile: on" + how
        if c.get("enabled", True)
        else f"torch.compile: **off, every row that would compile runs eager**: {c.get('reason')}{how}"
    ) + "\n"


def markdown(report) -> str:
    env = report["environment"]
    _, envres = stage(report, "environment")
    peak = envres.get("peak") or {}
    parts = [
        f"<!-- {env['command']} -->\n# benchmarks.suite: {env['gpu'] or env['cpu']}\n",
        f"`{env['command']}`  \n{env['date']}, commit {env['git_commit']}{' (dirty)' if env['git_dirty'] else ''}, "
        f"torch {env['torch']}, CUDA {env['cuda']}, driver {env['gpu_driver']}, Python {env['python']}; "
        f"budget {report['budget_s']:.0f} s, elapsed {report.get('elapsed_s', 0):.0f} s"
        f"{'; --smoke: code paths only, the numbers mean nothing' if report['smoke'] else ''}\n",
        f"Peak: datasheet {common.fmt(peak.get('datasheet_tflops'), '.1f')} TFLOP/s ({peak.get('datasheet_source', '')}), "
        f"measured {common.fmt(peak.get('measured_tflops'), '.2f')} TFLOP/s"
        + (f" ({peak['measured']['n']}^3 {peak['measured']['dtype']} matmul)" if peak.get("measured") else "")
        + "\n",
        compile_line(report),
        "## Stages\n",
        common.markdown_table(
            ["stage", "status", "seconds", "planned", "reason"],
            [
                [r["stage"], r["status"], f"{r['seconds']:.1f}", f"{r['estimate_s']:.0f}", r["reason"]]
                for r in report["stages"]
            ],
        ),
    ]
    sections = [
        ("step", "## Step ablation\n", step_table),
        ("throughput", "## Throughput\n", throughput.render),
        ("nt_xent", "## NT-Xent\n", nt_xent.render),
        ("time_to_accuracy", "## Time to accuracy\n", tta_section),
        ("families", "## Families (CIFAR-10 80/10/10, one seed)\n", families_section),
    ]
    for name, title, render in sections:
        rec, res = stage(report, name)
        if rec is None:
            continue
        parts.append(title)
        if res.get("command"):
            parts.append(f"`{res['command']}`\n")
        if res.get("compile_note"):
            parts.append(f"**{res['compile_note']}**\n")
        try:
            parts.append(render(res) if res else f"{rec['status']}: {rec['reason']}\n")
        except (KeyError, TypeError, AttributeError, IndexError) as e:  # a cut stage's partial result
            parts.append(
                f"{rec['status']}: {rec['reason']}; partial result in suite.json ({type(e).__name__}: {e})\n"
            )
    for rec in report["stages"]:  # a stage without a section above: its own "markdown", else its status
        if rec["stage"] not in {"environment", *(name for name, _, _ in sections)}:
            res = rec.get("result") or {}
            parts += [f"## {rec['stage']}\n", res.get("markdown") or f"{rec['status']}: {rec['reason']}\n"]
    parts += [
        "## Targets\n",
        common.markdown_table(["target", "value", "status"], throughput.target_rows(targets(report))),
    ]
    return "\n".join(parts)


# ----------------------------------------------------------------------------- charts


def step_chart(path, report, res) -> None:
    rows = [r for r in res.get("rows", []) if r.get("img_per_s")]
    env = report["environment"]
    common.bar_chart(
        path,
        [r["setting"] for r in rows],
        {"images/s": [r["img_per_s"] for r in rows]},
        "images/s (median, min-max)",
        f"SimCLR step ablation, batch {res.get('batch_size')}, {env['gpu'] or env['cpu']}",
    )


def knn_chart(path, report, res) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = [p for p in res.get("curve", []) if p.get("wall_s") is not None]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.plot(
        [p["wall_s"] for p in curve],
        [p["knn_top1"] for p in curve],
        "o-",
        label="kNN top-1 (k=200, validation split)",
    )
    ax.axhline(TARGET_KNN, color="C3", ls="--", lw=1, label=f"{TARGET_KNN:.0f}%")
    ax.axvline(TARGET_SECONDS, color="C7", ls=":", lw=1, label=f"{TARGET_SECONDS:.0f} s")
    ax.set_xlabel("wall-clock seconds since training began")
    ax.set_ylabel("kNN top-1 (%)")
    env = report["environment"]
    ax.set_title(
        f"SimCLR {res.get('dataset')}, {res.get('epochs_planned')} epochs, {env['gpu'] or env['cpu']}",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    common._atomic(path, lambda f: fig.savefig(f, format="png", dpi=120), mode="wb")
    plt.close(fig)


def write(out, report, ctx) -> dict:
    """suite.json, suite.md and the charts of the stages done so far; {file: bytes}."""
    charts = {
        "throughput.png": ("throughput", lambda p, r, res: throughput.chart(p, res)),
        "step.png": ("step", step_chart),
        "knn.png": ("time_to_accuracy", knn_chart),
    }
    for name, (stage_name, draw) in charts.items():
        rec, res = stage(report, stage_name)
        path = os.path.join(out, name)
        if res and rec is report["stages"][-1]:  # drawn once, right after its stage
            try:
                draw(path, report, res)
            except Exception as e:  # noqa: BLE001 - a chart must never lose the numbers
                rec.setdefault("chart_error", f"{type(e).__name__}: {e}")
    report["targets"] = targets(report)
    common.write_json(os.path.join(out, "suite.json"), report)
    common.write_text(os.path.join(out, "suite.md"), markdown(report))
    return {
        f: os.path.getsize(os.path.join(out, f))
        for f in sorted(os.listdir(out))
        if os.path.isfile(os.path.join(out, f)) and not f.startswith(".")
    }


# ----------------------------------------------------------------------------- summary


def print_summary(report) -> None:
    """One screen: stage statuses, the headline numbers, the targets, the files."""
    p = []
    p.append(
        f"benchmarks.suite done in {report['elapsed_s']:.0f} s of {report['budget_s']:.0f} "
        f"on {report['environment']['gpu'] or report['environment']['cpu']}"
    )
    p.append("stages: " + ", ".join(f"{r['stage']} {r['status']}" for r in report["stages"]))
    _, e = stage(report, "environment")
    if e.get("peak"):
        p.append(
            f"peak bf16: datasheet {common.fmt(e['peak']['datasheet_tflops'], '.0f')} TFLOP/s, "
            f"measured {e['peak']['measured_tflops']:.2f} TFLOP/s"
        )
    _, st = stage(report, "step")
    for r in st.get("rows", []):
        if r.get("img_per_s"):
            p.append(
                f"  step {r['setting']:<22} {r['img_per_s']['median']:>12,.0f} img/s  {r['step_ms']['median']:8.2f} ms"
                f"  MFU {common.fmt(r['mfu'], '.1%')} / {common.fmt(r['mfu_measured'], '.1%')}"
            )
        else:
            p.append(f"  step {r['setting']:<22} {r['status']}")
    _, tp = stage(report, "throughput")
    for r in tp.get("records", []):
        p.append(
            f"  pipeline {r['pipeline']:<13} "
            + (
                f"e2e {r['e2e_img_per_s']['median']:>10,.0f} img/s, loader "
                f"{common.fmt(r['loader_img_per_s'] and r['loader_img_per_s']['median'])}, wait "
                f"{common.fmt(r['data_wait_fraction'], '.0%')}"
                if r["e2e_img_per_s"]
                else r["status"]
            )
        )
    _, tta = stage(report, "time_to_accuracy")
    if tta.get("curve"):
        last = tta["curve"][-1]
        p.append(
            f"  kNN top-1 {last['knn_top1']:.2f}% after {last['epoch']} epochs, {common.fmt(last['wall_s'], '.0f')} s;"
            f" {TARGET_KNN:.0f}% at "
            + (f"{tta['time_to_85_s']:.0f} s" if tta.get("time_to_85_s") else "not reached")
        )
    for key, pr in (tta.get("probes") or {}).items():
        p.append(
            f"  {key} probe: "
            + (
                f"{pr['test_top1']:.2f}% top-1 on {pr['dataset']}"
                if pr.get("status") == "ok"
                else pr.get("status", "")
            )
        )
    for t in report["targets"]:
        p.append(f"  target {t['status']:<12} {t['target']}")
    p.append("files: " + ", ".join(f"{f} ({n / 2**10:.0f} KiB)" for f, n in report.get("files", {}).items()))
    print("\n".join(p), flush=True)
