"""Graceful stop on preemption: SIGTERM, SIGINT (Ctrl-C) and SIGUSR1 (what SLURM's `--signal`
sends ahead of the kill) only set a flag; the training loop finishes its step, saves the exact
position and exits with `128 + signal number` (143 TERM, 130 INT, 138 USR1). A second signal
exits at once with the same code, without saving.
"""

import os
import signal
import sys
import threading

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class StopFlag:
    """`with StopFlag() as stop:` ... `if stop.signum: save and exit(stop.exit_code)`.
    Handlers are installed only in the main thread (Python allows nothing else) and the previous
    ones are restored on exit."""

    def __init__(self):
        self.signum, self._previous = None, {}

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def _handle(self, signum, frame):
        if self.signum is not None:  # second signal: the user means it
            print(
                f"\n{signal.Signals(signum).name} again: exiting now without saving",
                file=sys.stderr,
                flush=True,
            )
            os._exit(128 + signum)
        self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()


def name(signum: int) -> str:
    return signal.Signals(signum).name
