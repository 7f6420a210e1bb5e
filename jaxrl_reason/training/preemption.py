"""SIGTERM (preemption) handling: finish the step, save, exit with a clear message."""

from __future__ import annotations

import logging
import os
import signal
import sys
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


# A SIGTERM that arrived outside a training loop, while `defer_sigterm` is active: the next
# loop (or `stop_if_requested`, between a run's units of work) stops for it.
_requested = False


def _second_signal(signum: int) -> None:
    """A second SIGTERM while the first is being served: stop now, keeping the last save."""
    raise Preempted(
        f"received {signal.Signals(signum).name} twice: stopped at once; the last saved "
        "checkpoint is kept; re-run the same command to resume from it"
    )


def _defer(signum: int, frame: FrameType | None) -> None:
    global _requested
    del frame
    if _requested:
        _second_signal(signum)
    log.warning(
        "received %s: will stop after the current unit of work (a training step, a round "
        "or an evaluation) is finished and saved",
        signal.Signals(signum).name,
    )
    _requested = True


class defer_sigterm:  # noqa: N801 - a context manager, used like a function
    """While active (the whole of `jaxrl-reason train`/`demo`/`study`), SIGTERM never kills
    the process mid-work: training loops stop at their next step (`PreemptionGuard`) and
    between units of work `stop_if_requested` raises `Preempted` with how to resume."""

    def __enter__(self) -> defer_sigterm:
        global _requested
        _requested = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, _defer)
        return self

    def __exit__(self, *exc: Any) -> None:
        global _requested
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        _requested = False


def stop_if_requested(done: str) -> None:
    """Raise `Preempted` if a SIGTERM arrived: `done` says what finished and was saved."""
    global _requested
    if _any_process(_requested):  # (every process must ask: it is an all-gather)
        _requested = False
        message = f"received SIGTERM: stopped after {done}; re-run the same command to resume"
        log.warning(message)
        raise Preempted(message)


def _any_process(flag: bool) -> bool:
    """Whether `flag` or the module's request holds on any process."""
    if jax.process_count() == 1:
        return flag
    flags = multihost_utils.process_allgather(np.asarray(flag or _requested))
    return bool(np.any(flags))


class PreemptionGuard:
    """Context manager: while active, SIGTERM sets `should_stop` instead of killing us.

    The loop checks `guard.should_stop` after each step. With several processes, a stop
    seen by any host stops all of them at the same step (one tiny all-gather per check).
    The previous handler is restored on exit; a SIGTERM the loop did not stop for (it came
    in its last step) is handed to an enclosing `defer_sigterm`. Outside the main thread no
    handler can be installed; the guard then never stops.
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)) -> None:
        self.signals = signals
        self._flag = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        del frame
        if self._flag:
            _second_signal(signum)
        log.warning(
            "received %s: will save a checkpoint and stop after this step",
            signal.Signals(signum).name,
        )
        self._flag = True

    @property
    def should_stop(self) -> bool:
        return _any_process(self._flag or _requested)

    def __enter__(self) -> PreemptionGuard:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        else:
            log.warning("PreemptionGuard outside the main thread: SIGTERM is not handled")
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        global _requested
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if exc_type is not None and issubclass(exc_type, Preempted):
            _requested = False  # served: the loop saved and stopped
        elif self._flag and self._previous.get(signal.SIGTERM) is _defer:
            _requested = True  # not served: the enclosing run stops at its next unit
        self._previous.clear()


def _exit_now(code: int) -> None:
    logging.shutdown()
    os._exit(code)


class abort_on_sigterm:  # noqa: N801 - a context manager, used like a function
    """For read-only work (`jaxrl-reason eval`): SIGTERM ends the process at once, exit
    status 143, with a message, since there is nothing to save; the previous handler is
    restored on exit."""

    def __init__(self, what: str) -> None:
        self.what = what

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        del frame
        message = (
            f"received {signal.Signals(signum).name}: {self.what} stopped before it finished; "
            "nothing written; re-run the same command"
        )
        # At once, without unwinding: raising here, inside a running XLA computation, can
        # crash the interpreter's shutdown (a segfault instead of 143); nothing is open.
        print(f"jaxrl-reason {self.what}: {message}", file=sys.stderr, flush=True)
        _exit_now(PREEMPTED_EXIT_CODE)

    def __enter__(self) -> abort_on_sigterm:
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
