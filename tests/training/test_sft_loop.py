"""The SFT loop: it learns, stops cleanly on NaN, and a resumed run equals an uninterrupted one.

The subprocess tests run `sft_run_script.py` and interrupt it with SIGKILL (at a random
moment after a checkpoint) and with SIGTERM (preemption), then resume it in a new process.
"""

import os
import random
import re
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_reason.model import Transformer, init_params
from jaxrl_reason.training import (
    PREEMPTED_EXIT_CODE,
    Checkpointer,
    OptimizerConfig,
    Preempted,
    init_train_state,
    make_optimizer,
    read_metrics,
    sft_loss_fn,
    train_sft,
)

from .sft_run_script import ToyBatches, tiny_config

CONFIG = tiny_config()
SCRIPT = os.path.join(os.path.dirname(__file__), "sft_run_script.py")

_INIT = jax.jit(init_params, static_argnums=0)  # one compile, not op-by-op


def _params():
    return _INIT(CONFIG, jax.random.key(0))


def _opt(total_steps=100):  # one config, so the tests share one compiled step
    return OptimizerConfig(
        learning_rate=3e-3, warmup_steps=3, total_steps=total_steps, weight_decay=0.01
    )


def test_sft_memorises_a_few_sequences(tmp_path):
    evals = []

    def eval_fn(params, step):
        evals.append(step)
        return {"step_seen": step}

    state = train_sft(
        CONFIG,
        _params(),
        ToyBatches,
        _opt(100),
        tmp_path,
        num_steps=100,
        seed=0,
        eval_fn=eval_fn,
        eval_every=50,
        checkpoint_every=40,
        show_progress=False,
    )
    losses = [r["loss"] for r in read_metrics(tmp_path, "sft")]
    assert len(losses) == 100 and int(state.step) == 100
    assert np.mean(losses[-5:]) < 0.5 * losses[0], (losses[0], losses[-5:])
    assert evals == [50, 100] and len(read_metrics(tmp_path, "sft_eval")) == 2
    with Checkpointer(tmp_path / "checkpoints") as ckpt:
        assert ckpt.all_steps() == [40, 80, 100]


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_state(tmp_path):
    sft = sft_loss_fn(Transformer(CONFIG))

    def poisoned(params, batch, rng):  # NaN on the 6th batch (index 5)
        loss, metrics = sft(params, batch, rng)
        return jnp.where(batch["batch_index"][0] == 5, jnp.nan, loss), metrics

    with pytest.raises(
        FloatingPointError, match=r"non-finite loss at step 6 .*last good checkpoint: step 5 in "
    ):
        train_sft(
            CONFIG,
            _params(),
            ToyBatches,
            _opt(100),
            tmp_path,
            num_steps=20,
            seed=0,
            checkpoint_every=2,
            loss_fn=poisoned,
            show_progress=False,
        )
    tx = make_optimizer(_opt(100))
    with Checkpointer(tmp_path / "checkpoints") as ckpt:
        assert ckpt.latest_step() == 5
        state, meta = ckpt.restore(init_train_state(_params(), tx))
    assert int(state.step) == 5 and meta["data"] == {"position": 5} and meta["step"] == 5
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state))
    # Rerunning without the fault resumes from that state and finishes.
    final = train_sft(
        CONFIG,
        _params(),
        ToyBatches,
        _opt(100),
        tmp_path,
        num_steps=8,
        seed=0,
        checkpoint_every=2,
        show_progress=False,
    )
    assert int(final.step) == 8


class _TermAt(ToyBatches):
    """Toy data that sends this process SIGTERM when asked for batch `at`."""

    def __init__(self, at):
        super().__init__()
        self.at = at

    def __next__(self):
        if self.position == self.at:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().__next__()


def test_preempted_then_resumed_in_process_equals_uninterrupted(tmp_path):
    args = dict(optimizer_config=_opt(100), seed=3, checkpoint_every=3, show_progress=False)
    params = _params()
    straight = train_sft(CONFIG, params, ToyBatches, workdir=tmp_path / "a", num_steps=8, **args)
    # SIGTERM arrives while batch 5 is prefetched during step 5: stop after step 5, and the
    # resumed run must fetch batch 5 again.
    with pytest.raises(Preempted) as stopped:
        train_sft(CONFIG, params, lambda: _TermAt(5), workdir=tmp_path / "b", num_steps=8, **args)
    assert stopped.value.code == PREEMPTED_EXIT_CODE
    want = f"received SIGTERM: saved checkpoint at step 5 in {tmp_path / 'b' / 'checkpoints'}"
    assert str(stopped.value).startswith(want)
    resumed = train_sft(CONFIG, params, ToyBatches, workdir=tmp_path / "b", num_steps=8, **args)
    for x, y in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    steps = [r["step"] for r in read_metrics(tmp_path / "b", "sft")]
    assert steps == list(range(1, 9))


class _DieAt(ToyBatches):
    """Toy data whose process "dies" (an exception nothing catches) at batch `at`."""

    def __init__(self, at):
        super().__init__()
        self.at = at

    def __next__(self):
        if self.position == self.at:
            raise KeyboardInterrupt("killed")
        return super().__next__()


def _comparable(records):
    return [(r["step"], r["phase"], r.get("loss"), r.get("seen")) for r in records]


def test_a_crash_after_a_checkpoint_leaves_the_metrics_of_an_uninterrupted_run(tmp_path):
    """Records written after the last checkpoint (steps 4 and 5) are written again on
    resume, and a line cut off mid-write by the crash is dropped: neither stays behind."""
    args = dict(
        optimizer_config=_opt(100),
        num_steps=8,
        seed=3,
        checkpoint_every=3,
        eval_fn=lambda params, step: {"seen": step},
        eval_every=2,
        show_progress=False,
    )
    train_sft(CONFIG, _params(), ToyBatches, workdir=tmp_path / "a", **args)
    with pytest.raises(KeyboardInterrupt):  # while fetching batch 6: after step 5 is logged
        train_sft(CONFIG, _params(), lambda: _DieAt(6), workdir=tmp_path / "b", **args)
    path = tmp_path / "b" / "metrics.jsonl"
    assert [r["step"] for r in read_metrics(tmp_path / "b", "sft")] == [1, 2, 3, 4, 5]
    with path.open("a") as f:
        f.write('{"step": 6, "phase": "sft", "loss": 0.')  # the last write, cut off
    train_sft(CONFIG, _params(), ToyBatches, workdir=tmp_path / "b", **args)
    straight, resumed = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert [r["step"] for r in resumed if r["phase"] == "sft"] == list(range(1, 9))
    assert [r["step"] for r in resumed if r["phase"] == "sft_eval"] == [2, 4, 6, 8]
    assert _comparable(resumed) == _comparable(straight)
    assert [set(r) for r in resumed] == [set(r) for r in straight]


def _start(workdir, *extra):
    return subprocess.Popen(
        [
            sys.executable,
            SCRIPT,
            str(workdir),
            "--num_steps",
            "16",
            "--checkpoint_every",
            "4",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ),
    )


def _wait_for(proc, text, timeout=240):
    """Read the process's output until a line contains `text`; return all lines read."""
    lines, deadline = [], time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if text in line:
            return lines
    proc.kill()
    raise AssertionError(f"never saw {text!r}; output:\n{''.join(lines)}")


def _final_params(workdir):
    with np.load(workdir / "final_params.npz") as f:
        return {k: f[k] for k in f.files}


@pytest.mark.slow  # five processes: ~25 s on 2 idle cores
def test_killed_and_preempted_runs_resume_to_the_uninterrupted_result(tmp_path):
    full = _start(tmp_path / "full")
    killed = _start(tmp_path / "killed", "--delay", "0.1")
    termed = _start(tmp_path / "termed", "--delay", "0.25")  # >= 3 s after its step 4

    _wait_for(killed, "saving checkpoint at step 8")
    time.sleep(random.uniform(0.0, 0.3))  # well before the 8 remaining steps (>= 0.8 s)
    killed.send_signal(signal.SIGKILL)
    killed.communicate(timeout=60)

    _wait_for(termed, "saving checkpoint at step 4")
    termed.send_signal(signal.SIGTERM)
    out, _ = termed.communicate(timeout=120)
    assert termed.returncode == PREEMPTED_EXIT_CODE, out
    found = re.search(
        r"received SIGTERM: saved checkpoint at step (\d+) in (\S+); re-run the "
        r"same command to resume",
        out,
    )
    assert found, out
    assert 4 <= int(found.group(1)) < 16
    assert found.group(2) == str(tmp_path / "termed" / "checkpoints")
    out, _ = full.communicate(timeout=240)
    assert full.returncode == 0, out

    for name in ("killed", "termed"):
        assert not (tmp_path / name / "final_params.npz").exists(), f"{name} was not stopped"
    resumes = [_start(tmp_path / name) for name in ("killed", "termed")]
    for proc in resumes:
        out, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0, out
    want = _final_params(tmp_path / "full")
    for name in ("killed", "termed"):
        got = _final_params(tmp_path / name)
        assert got.keys() == want.keys()
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=f"{name}: {k}")


class _Finite(ToyBatches):
    def __next__(self):
        if self.position == 3:
            raise StopIteration
        return super().__next__()


def test_exhausted_data_names_the_step(tmp_path):
    with pytest.raises(ValueError, match="ran out at step 3"):
        train_sft(
            CONFIG, _params(), _Finite, _opt(), tmp_path, num_steps=5, seed=0, show_progress=False
        )
