"""Checkpoint on preemption: SIGUSR2 (what Slurm sends before preempting a job or at its time limit, which submitit
answers by requeueing it) and SIGTERM are noted while a Trainer trains, and acted on at the next step boundary:
the Trainer saves last.pt there, then hands the signal to the handler that was installed before (submitit's
requeue, or the default action, which ends the process). A requeued run resumes from that step instead of from
its last periodic checkpoint, up to train.ckpt_every steps earlier.

Installed only in the main thread (Python delivers signals there) and only by a single-process run: the ranks of
a torchrun run would reach their step boundaries apart, and saving is collective. The previous handlers are
restored when training ends, however it ends.
"""

from __future__ import annotations

import os
import signal
import threading

SIGNALS = tuple(s for s in (getattr(signal, "SIGUSR2", None), signal.SIGTERM) if s is not None)


class CheckpointSignals:
    """Context manager: while active, SIGNALS set `pending` (the first one received) instead of acting;
    `hand_over()` restores the previous handlers and delivers the pending signal to them."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.pending: int | None = None
        self._previous: dict[int, object] = {}

    def _note(self, signum, frame) -> None:
        if self.pending is None:
            self.pending = signum

    def __enter__(self) -> CheckpointSignals:
        if self.enabled:
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._note)
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def hand_over(self) -> None:
        """Restore the previous handlers and deliver the pending signal to them: a Python handler runs (submitit
        requeues the job), the default action ends the process, an ignored signal is ignored. Training goes on if
        the process does; later signals take their course at once."""
        signum, self.pending = self.pending, None
        self._restore()
        if signum is not None:
            os.kill(os.getpid(), signum)
