"""The RL driver's metrics after a crash: `run_rounds` resumed from its phase state writes
the file an uninterrupted run writes (records of the rounds after the last save, and a last
line cut off mid-write, do not stay behind). The SFT loop's twin is in test_sft_loop.py."""

import pytest

from jaxrl_reason.algorithms import rounds
from jaxrl_reason.training.metrics_writer import read_metrics
from tests.algorithms.test_rounds import Counter, _run, fake_sample


@pytest.fixture(autouse=True)
def _fake_sampler(monkeypatch):
    monkeypatch.setattr(rounds, "sample_rollouts", fake_sample)


def _comparable(records):
    return [{k: v for k, v in r.items() if k != "time"} for r in records]


def test_a_resumed_phase_writes_the_metrics_of_an_uninterrupted_run(tmp_path):
    _run(tmp_path / "full", Counter(checkpoint_every=2))
    # Rounds 1-3 logged, the state saved after round 2, then the process dies in round 4.
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "cut", Counter(checkpoint_every=2, die_in=4))
    assert [r["step"] for r in read_metrics(tmp_path / "cut", "counter")] == [1, 2, 3]
    with (tmp_path / "cut" / "metrics.jsonl").open("a") as f:
        f.write('{"step": 4, "phase": "coun')  # a write the crash cut off
    _run(tmp_path / "cut", Counter(checkpoint_every=2))
    resumed = read_metrics(tmp_path / "cut")
    assert [(r["phase"], r["step"]) for r in resumed] == [
        (phase, r) for r in range(1, 5) for phase in ("counter", "counter_eval")
    ]
    assert _comparable(resumed) == _comparable(read_metrics(tmp_path / "full"))
