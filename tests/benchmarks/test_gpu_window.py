"""The GPU window rehearsed on a CPU: both calls' trees built as they travel (tracked and
untracked-not-ignored files plus the carried folder, nothing from ../shared), every limit checked,
and both calls' exact commands run there with --smoke and python3 alone on the PATH."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from benchmarks import gpu_window as gw

REPO = gw.repo()
NPZ_BYTES = 108_920_105  # ../shared/data/cifar10.npz, the file the window carries in two parts

# Stands in for ../shared/data/unpack.py: leaves a marker where CIFAR-10 would be unpacked.
UNPACK = (
    """import os, sys
assert sys.argv[2:] == ["--only", "cifar10"] and os.path.getsize(os.path.join(os.path.dirname(__file__), "cifar10.npz")) == %d
os.makedirs(os.path.join(sys.argv[1], "cifar-10-batches-py"), exist_ok=True)
"""
    % NPZ_BYTES
)


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    """A CIFAR bundle of the real size staged by `plan` (outside the repository)."""
    tmp = tmp_path_factory.mktemp("window")
    src = tmp / "src"
    src.mkdir()
    with open(src / "cifar10.npz", "wb") as f:
        f.write(os.urandom(NPZ_BYTES))
    (src / "unpack.py").write_text(UNPACK)
    (src / "README.md").write_text("bundle\n")
    stage = tmp / "stage"
    manifest = gw.main(["plan", "--data-src", str(src), "--stage-dir", str(stage)])
    return tmp, src, stage, manifest


def test_plan_fits_every_limit_and_check_finds_damage(staged, capsys):
    tmp, src, stage, manifest = staged
    out = (stage / "plan.txt").read_text()  # what plan printed
    tree = sum(os.path.getsize(os.path.join(REPO, p)) for p in gw.tree_files(REPO))
    for call in gw.CALLS:
        carried = gw.folder_bytes(stage / call)
        assert tree + carried <= gw.CARRY_TARGET <= 64 * 2**20, (call, tree, carried)
        assert len(gw.command(call)) <= gw.COMMAND_LIMIT and gw.command(call) in out
        assert f'carry [".cache/gpu-window/{call}"]' in out
    assert sum(m for _, m in gw.timeline()) <= gw.WINDOW_MIN - gw.MARGIN_MIN
    assert [p["bytes"] for p in manifest["parts"]] and sum(p["bytes"] for p in manifest["parts"]) == NPZ_BYTES
    assert gw.check(gw.parse(gw.WindowConfig, ["--stage-dir", str(stage)])) == []
    # a damaged part is found, and the command says so in one line, exit 2
    part = stage / "call2" / "cifar10.npz.part-b"
    keep = part.read_bytes()
    part.write_bytes(keep[:-1] + bytes([keep[-1] ^ 1]))
    with pytest.raises(SystemExit) as e:
        gw.main(["check", "--stage-dir", str(stage)])
    assert e.value.code == 2 and "checksum differs" in capsys.readouterr().out
    part.write_bytes(keep)


def device_tree(dest, stage, calls):
    """What a call finds on the device: the tree that travels, and the carried folders so far."""
    for p in gw.tree_files(REPO):
        os.makedirs(os.path.dirname(os.path.join(dest, p)), exist_ok=True)
        shutil.copy2(os.path.join(REPO, p), os.path.join(dest, p))
    for call in calls:
        shutil.copytree(stage / call, dest / gw.STAGE / call, dirs_exist_ok=True)


def run(command, cwd, out, bin_dir):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FASTSSL_", "PYTHON", "OUT"))}
    env.update(PATH=f"{bin_dir}:/usr/bin:/bin", OUT=str(out), HOME=os.environ.get("HOME", "/root"))
    assert shutil.which("python", path=env["PATH"]) is None  # as on the GPU machine
    done = subprocess.run(
        ["bash", "-c", command + " --smoke"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def results(out, call):
    files = sorted((out / call).iterdir())
    assert 0 < len(files) <= gw.RESULT_FILES and all(f.stat().st_size <= gw.RESULT_BYTES for f in files)
    assert not any(f.is_dir() for f in files)  # $OUT/<call>/<file>: two folders down at most
    return {s["stage"]: s for s in json.loads((out / call / "suite.json").read_text())["stages"]}


def test_both_calls_run_where_they_travel(staged, tmp_path):
    _, _, stage, manifest = staged
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)
    device = tmp_path / "device"
    assert not (device.parent / "shared").exists()

    device_tree(device, stage, ["call1"])
    out1 = tmp_path / "out1"
    text = run(gw.command("call1"), device, out1, bin_dir)
    assert "compile check: ok" in text
    st = results(out1, "call1")
    assert list(st) == ["environment", "step", "nt_xent"] and all(s["status"] == "ok" for s in st.values()), (
        st
    )
    pre = json.loads((out1 / "call1" / "preflight.json").read_text())
    assert pre["commit"] == manifest["commit"] and pre["facts"]["executable"].startswith(str(bin_dir))
    env = json.loads((out1 / "call1" / "suite.json").read_text())["environment"]
    assert env["git_commit"] == manifest["commit"]  # recorded although no .git travels

    device_tree(device, stage, ["call2"])  # call 1's folder is still there: the machine stayed warm
    out2 = tmp_path / "out2"
    text = run(gw.command("call2"), device, out2, bin_dir)
    assert "CIFAR-10 assembled and unpacked" in text
    st = results(out2, "call2")
    assert list(st) == ["environment", "throughput", "time_to_accuracy"], st
    assert all(s["status"] == "ok" for s in st.values()), {
        k: (s["status"], s["reason"]) for k, s in st.items()
    }
    probes = st["time_to_accuracy"]["result"]["probes"]
    assert probes["linear"]["status"] == "ok"
    assert probes["transfer"]["status"].startswith(
        "skipped: CIFAR-100 not found"
    )  # at once, nothing downloaded
    assert (device / gw.DATA / "cifar-10-batches-py").is_dir()


def test_call2_without_part_a_says_so_in_one_line(staged, tmp_path):
    _, _, stage, _ = staged
    root = tmp_path / "device"
    shutil.copytree(stage / "call2", root / gw.STAGE / "call2")  # a cold machine: call 1's part is gone
    lines = []
    got = gw.assemble(str(root), lines.append, smoke=True)
    assert not got["ok"] and len(lines) == 1 and "cifar10.npz.part-a is not on this machine" in lines[0]
    assert not (root / gw.DATA).exists()


def test_next_window_is_sized_from_the_first_windows_files(tmp_path, capsys):
    curve = [
        {"epoch": e, "wall_s": 60 + 1.5 * e, "knn_top1": 50 + e, "epoch_time_s": 1.2}
        for e in range(10, 31, 10)
    ]
    tta = {
        "plan": {"costs": {"first_step_s": 40.0, "checkpoint_s": 0.2}, "knn_s_estimate": 2.0},
        "curve": curve,
    }
    (tmp_path / "call2").mkdir()
    (tmp_path / "call2" / "suite.json").write_text(
        json.dumps({"stages": [{"stage": "time_to_accuracy", "result": tta}]})
    )
    text = gw.main(["next", "--results", str(tmp_path)])
    per = 1.2 + 2 * 0.2 + 2.0 / 10
    epochs = int((300 - 40 - 2.0) // per)
    assert f"plan: {epochs} epochs" in text and f"--epochs {epochs}" in text and "--rates-from" in text
    with pytest.raises(SystemExit) as e:
        gw.main(["next", "--results", str(tmp_path / "nowhere")])
    assert e.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1


def _wheel(folder, name="peerprobe"):
    """A minimal pure-Python wheel: a package whose import prints a marker."""
    import zipfile

    path = folder / f"{name}-0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}/__init__.py", "MARK = 'peer imported'\n")
        z.writestr(f"{name}-0.1.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    return path


def test_wheels_travel_with_call2_and_are_importable_there(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "cifar10.npz").write_bytes(os.urandom(4096))
    (src / "unpack.py").write_text("")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels)
    stage = tmp_path / "stage"
    manifest = gw.main(["plan", "--data-src", str(src), "--stage-dir", str(stage), "--wheels", str(wheels)])
    assert manifest["wheels"] == ["peerprobe-0.1-py3-none-any.whl"]
    assert (stage / "call2" / "wheels" / "peerprobe-0.1-py3-none-any.whl").is_file()
    assert not (stage / "call1" / "wheels").exists()  # only call 2 carries them

    device = tmp_path / "device"
    shutil.copytree(stage / "call2", device / gw.STAGE / "call2")
    lines = []
    peers = gw.unzip_wheels(str(device), lines.append)
    got = subprocess.run(
        [sys.executable, "-c", "import peerprobe; print(peerprobe.MARK)"],
        env={**os.environ, "PYTHONPATH": peers},
        capture_output=True,
        text=True,
    )
    assert got.stdout.strip() == "peer imported" and "peerprobe-0.1-py3-none-any.whl" in lines[0]
    assert gw.unzip_wheels(str(tmp_path / "bare"), lines.append) is None  # nothing carried: no peers


def test_plan_refuses_wheels_it_cannot_unzip_onto_the_path(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    (src / "cifar10.npz").write_bytes(b"x" * 64)
    (src / "unpack.py").write_text("")
    for folder, name in (("empty", None), ("native", "numpy-2.0-cp312-cp312-linux_x86_64.whl")):
        (tmp_path / folder).mkdir()
        if name:
            (tmp_path / folder / name).write_bytes(b"")
        with pytest.raises(SystemExit) as e:
            gw.main(
                [
                    "plan",
                    "--data-src",
                    str(src),
                    "--stage-dir",
                    str(tmp_path / "s"),
                    "--wheels",
                    str(tmp_path / folder),
                ]
            )
        assert e.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1


def test_next_window_can_run_the_race_instead(tmp_path):
    tta = {
        "plan": {"costs": {"first_step_s": 40.0, "checkpoint_s": 0.2}, "knn_s_estimate": 2.0},
        "curve": [{"epoch": 10, "wall_s": 70, "knn_top1": 60, "epoch_time_s": 1.2}],
    }
    (tmp_path / "call2").mkdir()
    (tmp_path / "call2" / "suite.json").write_text(
        json.dumps({"stages": [{"stage": "time_to_accuracy", "result": tta}]})
    )
    text = gw.main(["next", "--results", str(tmp_path), "--race"])
    assert "--stages environment,race" in text and "time_to_accuracy" not in text.split("call 2:")[1]
