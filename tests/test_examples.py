"""examples/ run as a user runs them: a fresh interpreter, the script's own command line."""

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STEPS, BATCH = 6, 32  # a few seconds of CPU: enough for SGD to beat the untrained network


def losses(*args) -> list:
    """The losses examples/custom_loop.py prints, one per step, run on the CPU with `args`."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, str(REPO / "examples" / "custom_loop.py"), "--device", "cpu", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return [float(v) for v in re.findall(r"^step \d+ loss (\S+)$", done.stdout, re.M)]


def test_custom_loop_learns():
    """The same seeded batches twice: trained, and with lr 0 (the untrained network). Comparing the
    two step by step removes the batch-to-batch noise that hides a trend over so few steps."""
    pytest.importorskip("torchvision")
    common = ["--steps", str(STEPS), "--batch-size", str(BATCH)]
    trained, untrained = losses(*common), losses(*common, "--lr", "0")
    assert len(trained) == len(untrained) == STEPS
    assert all(math.isfinite(v) for v in trained + untrained)
    assert trained[0] == untrained[0]  # the same batch and weights before the first update
    gain = sum(u - t for t, u in zip(trained[1:], untrained[1:])) / (STEPS - 1)
    assert gain > 0, f"training did not lower the loss: {trained} vs untrained {untrained}"
