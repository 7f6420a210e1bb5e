"""`jaxrl-reason study`: the verdict rules on hand-made results, and the smoke study."""

import json

import numpy as np
import pytest

from jaxrl_reason.demo import SCALES
from jaxrl_reason.evaluation.report import compare_to_baseline
from jaxrl_reason.study import equal_budget, pass_at_k_curve, verdicts
from tests.test_cli import run_cli

N = 200


def _row(method, **rates):
    """A results row whose per-question 0/1 outcomes have the given rates (nested: a
    better method is right on a superset of a worse one's questions)."""
    pq = {"id": [f"q{i}" for i in range(N)]}
    for metric, rate in rates.items():
        pq[metric] = [int(i < rate * N) for i in range(N)]
    return {"method": method, "samples": 800, "num_questions": N, "per_question": pq, **rates}


def _rows(ei, ppo):
    rows = [
        _row("SFT", **{"maj@1": 0.3, "pass@K": 0.5}),
        _row("EI", **ei),
        _row("PPO sparse", **ppo),
    ]
    return compare_to_baseline(compare_to_baseline(rows), baseline="EI")


def _by_finding(found):
    return {f["finding"][0]: f["verdict"] for f in found}


PROBE = {
    "num_questions": 100,
    "num_samples": 8,
    "sft_solved": 0.5,
    "methods": {"EI": {"newly_solved": 2, "lost": 1, "novel_share": 0.1}},
}


def test_verdicts_follow_their_rules():
    epochs = [
        {**_row("SFT", **{"maj@1": 0.2, "pass@K": 0.6}), "epochs": 1},
        {**_row("SFT", **{"maj@1": 0.4, "pass@K": 0.4}), "epochs": 4},
    ]
    good = _rows({"maj@1": 0.45, "pass@K": 0.6}, {"maj@1": 0.44, "pass@K": 0.6})
    assert _by_finding(verdicts(good, epochs, PROBE)) == {
        "1": "reproduced",  # nobody above EI, EI not below SFT
        "2": "reproduced",  # maj@1 and pass@K both up
        "3": "reproduced",  # more epochs: maj@1 up, pass@K down
        "4": "reproduced",  # PPO within the paired CI of EI
        "5": "reproduced",  # 2 of 50 unsolved questions newly solved
    }
    bad = _rows({"maj@1": 0.45, "pass@K": 0.3}, {"maj@1": 0.7, "pass@K": 0.8})
    wide = {**PROBE, "methods": {"EI": {"newly_solved": 30, "lost": 0, "novel_share": 0.5}}}
    flat = [epochs[0], {**epochs[0], "epochs": 4}]
    found = _by_finding(verdicts(bad, flat, wide))
    assert found == {
        "1": "refuted",  # PPO significantly above EI on both metrics
        "2": "refuted",  # maj@1 up, pass@K significantly down
        "3": "not reproduced",  # no change with epochs
        "4": "not reproduced",  # PPO far from EI at the same samples
        "5": "not reproduced",  # 60% of the unsolved questions newly solved
    }


def test_pass_at_k_curve_is_the_unbiased_estimator():
    row = {"per_question": {"num_correct": [0, 1, 4]}}
    curve = pass_at_k_curve(row, 4)
    assert curve[1] == pytest.approx(np.mean([0, 1 / 4, 1]))
    assert curve[4] == pytest.approx(np.mean([0, 1, 1]))
    assert list(curve.values()) == sorted(curve.values())


def test_equal_budget_gives_ppo_and_grpo_ei_samples():
    s = equal_budget(SCALES["default"])
    ei = s.ei.num_rounds * s.ei.questions_per_round * s.ei.num_samples
    for cfg in (s.ppo, s.grpo):
        per_iteration = cfg.prompts_per_iteration * cfg.num_samples
        assert ei <= cfg.num_iterations * per_iteration < ei + per_iteration


@pytest.mark.slow  # ~5 minutes on 2 cores
def test_smoke_study_writes_a_report_with_every_finding_and_figure(tmp_path):
    out = run_cli("study", "--scale", "smoke", "--workdir", str(tmp_path), timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert [v["finding"][0] for v in report["verdicts"]] == list("12345")
    assert all(
        v["verdict"] in ("reproduced", "not reproduced", "refuted") for v in report["verdicts"]
    )
    methods = [r["method"] for r in report["rows"]]
    assert methods == ["SFT", "EI", "PPO sparse", "PPO dense", "PPO ORM", "RCRL", "GRPO"]
    assert len({r["samples"] for r in report["rows"][1:]}) == 1  # the same budget
    assert set(report["probe"]["methods"]) == set(methods[1:])
    for name in ("fig_tradeoff", "fig_samples", "fig_exploration", "fig_pass_at_k"):
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000
    assert "## Verdicts" in (tmp_path / "report.md").read_text()
