"""Metric writer (JSONL + TensorBoard), throughput bar and the SIGTERM guard."""

import json
import math
import os
import signal
import time

import numpy as np
import pytest

from jaxrl_reason.training import MetricWriter, PreemptionGuard, ThroughputBar, read_metrics


def test_writer_appends_json_lines_and_tensorboard_events(tmp_path):
    with MetricWriter(tmp_path) as writer:
        writer.write(1, {"loss": np.float32(2.5), "finite": np.bool_(True), "n": 3}, "sft")
        writer.write(2, {"loss": float("nan")}, "eval")
    with MetricWriter(tmp_path) as writer:  # a resumed run appends
        writer.write(3, {"loss": 1.0}, "sft")
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert records[0]["loss"] == 2.5 and records[0]["finite"] is True and records[0]["n"] == 3
    assert records[1]["loss"] == "nan"
    assert [r["step"] for r in read_metrics(tmp_path, "sft")] == [1, 3]
    events = [f for f in os.listdir(tmp_path / "tb") if f.startswith("events")]
    assert events and all(os.path.getsize(tmp_path / "tb" / f) > 0 for f in events)


def test_throughput_bar_computes_mfu_from_its_inputs():
    bar = ThroughputBar(10, flops_per_token=6e6, peak_flops=1e12, num_devices=2, disable=True)
    bar.update(1, tokens=1000)
    time.sleep(0.01)
    rates = bar.update(1, tokens=1000)
    assert 0 < rates["tokens_per_s"] < 1000 / 0.01  # the second step alone, >= 10 ms
    assert rates == bar.rates()
    # mfu = tokens/s * flops/token / (peak * devices), whatever the elapsed time was.
    assert math.isclose(rates["mfu"], rates["tokens_per_s"] * 6e6 / 2e12, rel_tol=1e-9)
    bar.close()
    no_peak = ThroughputBar(10, peak_flops=None, disable=True)
    no_peak.total_peak = None  # e.g. on a CPU: tokens/s only
    assert "mfu" not in no_peak.update(1, tokens=10)


def test_preemption_guard_turns_sigterm_into_a_flag():
    previous = signal.getsignal(signal.SIGTERM)
    with PreemptionGuard() as guard:
        assert not guard.should_stop
        os.kill(os.getpid(), signal.SIGTERM)
        assert guard.should_stop
    assert signal.getsignal(signal.SIGTERM) == previous


@pytest.mark.parametrize("bad", [0, -1])
def test_checkpointer_rejects_bad_keep(tmp_path, bad):
    from jaxrl_reason.training import Checkpointer

    with pytest.raises(ValueError, match="keep"):
        Checkpointer(tmp_path, keep=bad)
