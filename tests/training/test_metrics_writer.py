"""Metric writer (JSONL + TensorBoard), throughput bar and the SIGTERM guard."""

import json
import math
import os
import signal
import time

import numpy as np
import pytest

from jaxrl_reason.run_files import RunFileError
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


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_last_line_cut_off_by_a_crash_is_dropped_not_glued_onto(tmp_path, caplog):
    with MetricWriter(tmp_path, tensorboard=False) as writer:
        writer.write(1, {"loss": 2.0}, "sft")
        writer.write(2, {"loss": 1.5}, "sft")
    path = tmp_path / "metrics.jsonl"
    with path.open("a") as f:
        f.write('{"step": 3, "phase": "sft", "lo')  # the crash, mid-write
    with caplog.at_level("WARNING"):
        assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]  # a reader skips it
    assert "cut off mid-write" in caplog.text and path.read_text().endswith('"lo')
    with MetricWriter(tmp_path, tensorboard=False) as writer:  # the writer drops it
        writer.write(3, {"loss": 1.0}, "sft")
    assert [(r["step"], r["loss"]) for r in _records(path)] == [(1, 2.0), (2, 1.5), (3, 1.0)]


def test_a_last_record_missing_only_its_newline_is_kept(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "phase": "sft"}\n{"step": 2, "phase": "sft"}')
    with MetricWriter(tmp_path, tensorboard=False) as writer:
        writer.write(3, {}, "sft")
    assert [r["step"] for r in _records(path)] == [1, 2, 3]


def test_a_damaged_line_in_the_middle_names_the_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    damaged = '{"step": 1, "phase": "sft"}\n{"step": 2, "pha\n{"step": 3, "phase": "sft"}\n'
    path.write_text(damaged)
    want = rf"{path}:2: metrics file line 2 is not valid JSON .*restore the file, or delete"
    with pytest.raises(RunFileError, match=want):
        read_metrics(tmp_path)
    with pytest.raises(RunFileError, match=want):
        MetricWriter(tmp_path, tensorboard=False)
    assert path.read_text() == damaged  # untouched


def test_a_resumed_phase_drops_its_records_past_the_checkpoint(tmp_path, caplog):
    with MetricWriter(tmp_path, tensorboard=False) as writer:
        for step in range(1, 6):
            writer.write(step, {"loss": float(step)}, "sft")
            if step % 2 == 0:
                writer.write(step, {"acc": 0.5}, "sft_eval")
            writer.write(step, {"loss": float(step)}, "orm")  # another phase: kept whole
    path = tmp_path / "metrics.jsonl"
    before = path.read_text().splitlines(keepends=True)
    with caplog.at_level("WARNING"):
        writer = MetricWriter(tmp_path, resume_step=3, phases=("sft", "sft_eval"))
    writer.close()
    assert "dropped 3 record(s) of sft/sft_eval past step 3" in caplog.text
    kept = [line for line in before if not ('"sft' in line and json.loads(line)["step"] > 3)]
    assert path.read_text() == "".join(kept)  # the rest byte for byte
    assert [r["step"] for r in read_metrics(tmp_path, "sft")] == [1, 2, 3]
    assert [r["step"] for r in read_metrics(tmp_path, "sft_eval")] == [2]
    assert [r["step"] for r in read_metrics(tmp_path, "orm")] == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="resume_step needs the phases"):
        MetricWriter(tmp_path, resume_step=3)
