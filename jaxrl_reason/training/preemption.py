"""SIGTERM (preemption) handling: finish the step, save, exit with a clear message."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)

# Exit status of a run stopped by SIGTERM after saving (128 + SIGTERM, the shell convention),
# so that restart-on-failure schedulers re-run the command, which resumes.
PREEMPTED_EXIT_CODE = 143


class Preempted(SystemExit):  # noqa: N818 - reads as an event, like KeyboardInterrupt
    """Raised by training loops after saving on SIGTERM; exits with PREEMPTED_EXIT_CODE."""

    def __init__(self, message: str) -> None:
        super().__init__(PREEMPTED_EXIT_CODE)
        self.message = message

    def __str__(self) -> str:
        return self.message


class PreemptionGuard:
    """Context manager: while active, SIGTERM sets `should_stop` instead of killing us.

    The loop checks `guard.should_stop` after each step. With several processes, a stop
    seen by any host stops all of them at the same step (one tiny all-gather per check).
    The previous handler is restored on exit. Outside the main thread no handler can be
    installed; the guard then never stops.
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)) -> None:
        self.signals = signals
        self._flag = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        del frame
        log.warning(
            "received %s: will save a checkpoint and stop after this step",
            signal.Signals(signum).name,
        )
        self._flag = True

    @property
    def should_stop(self) -> bool:
        if jax.process_count() == 1:
            return self._flag
        flags = multihost_utils.process_allgather(np.asarray(self._flag))
        return bool(np.any(flags))

    def __enter__(self) -> PreemptionGuard:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        else:
            log.warning("PreemptionGuard outside the main thread: SIGTERM is not handled")
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
