"""Checks that decide, in seconds, how a GPU run measures: does torch.compile work here, and did
inductor really capture CUDA graphs?

    from benchmarks import preflight
    preflight.compile_check("cuda")   # {"ok": False, "reason": "...", "seconds": 4.1} when it fails
    with preflight.cudagraph_watch() as w:
        step(batch)                   # compiled with mode="reduce-overhead"
    w.skipped                         # ["skipping cudagraphs due to mutated inputs ..."]

torch.compile needs libcuda visible to Triton and a C compiler; on an image where either is missing
the first compile fails after its imports, tens of seconds into a stage. compile_check compiles a
tiny function in a child process with a time limit, so a failure costs seconds and the run goes on
eager with the reason recorded. Inductor does not raise when it declines CUDA graphs: it logs
"skipping cudagraphs ..." and runs without them; cudagraph_watch catches that message and the skip
counter, so a row can say "not engaged" instead of being labelled CUDA graphs.
"""

import logging
import os
import subprocess
import sys
import time

# The child: compile one elementwise function and compare it to eager (a wrong answer fails too).
CHECK = """
import sys, torch
dev, backend = sys.argv[1], sys.argv[2]
f = torch.compile(lambda x: (x.sin() * 2 + 1).sum(), backend=backend, fullgraph=True)
x = torch.randn(4096, device=dev)
y = f(x)
assert torch.allclose(y, (x.sin() * 2 + 1).sum(), rtol=1e-4, atol=1e-2), "compiled result differs from eager"
print("compile ok")
"""


def compile_check(
    device: str, backend: str = "inductor", timeout: float = 90.0, python: str | None = None
) -> dict:
    """Whether torch.compile(backend) runs a small function on `device`, in a child process that
    is killed after `timeout` seconds: {"ok", "reason" (one line), "seconds", "backend"}."""
    t0 = time.monotonic()
    cmd = [python or sys.executable, "-c", CHECK, str(device), backend]
    try:
        done = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
    except subprocess.TimeoutExpired:
        return {
            "ok": False,
            "reason": f"compile check still running after {timeout:.0f} s",
            "backend": backend,
            "seconds": time.monotonic() - t0,
        }
    except OSError as e:
        return {
            "ok": False,
            "reason": f"compile check could not start: {e}",
            "backend": backend,
            "seconds": time.monotonic() - t0,
        }
    ok = done.returncode == 0 and "compile ok" in done.stdout
    return {
        "ok": ok,
        "reason": "" if ok else _last_error(done.stderr or done.stdout, done.returncode),
        "backend": backend,
        "seconds": time.monotonic() - t0,
    }


def _last_error(text: str, code: int) -> str:
    """The line that names the failure: the last 'SomethingError: ...' line, else the last line."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.split(":", 1)[0].endswith(("Error", "Exception", "Failure"))]
    line = (errors or lines or [f"exit code {code}"])[-1]
    return line[:300]


class cudagraph_watch:
    """Collects inductor's "skipping cudagraphs" messages and skip count while the block runs."""

    LOGGER = "torch._inductor.cudagraph_utils.__cudagraphs"  # inductor's artifact logger for these

    def __enter__(self):
        self.skipped, self.count = [], 0
        self._before = _skip_counter()
        watch = self

        class _Handler(logging.Handler):
            def emit(self, record):
                msg = record.getMessage()
                if "skipping cudagraphs" in msg:
                    watch.skipped.append(msg.splitlines()[0][:300])

        self._handler = _Handler(level=logging.WARNING)
        logging.getLogger(self.LOGGER).addHandler(self._handler)
        return self

    def __exit__(self, *exc):
        logging.getLogger(self.LOGGER).removeHandler(self._handler)
        self.count = _skip_counter() - self._before
        return False

    @property
    def engaged(self) -> bool:
        return not self.skipped and self.count == 0

    @property
    def reason(self) -> str:
        if self.engaged:
            return ""
        return (
            self.skipped[0]
            if self.skipped
            else f"inductor skipped CUDA graphs {self.count} time(s) (no reason logged)"
        )


def _skip_counter() -> int:
    from torch._dynamo.utils import counters

    return int(counters["inductor"]["cudagraph_skips"])
