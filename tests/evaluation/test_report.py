"""Paired comparisons to SFT in the results rows and table."""

import json

import numpy as np
import pytest

from jaxrl_reason.evaluation.metrics import paired_bootstrap_ci
from jaxrl_reason.evaluation.report import compare_to_baseline, markdown_table


def _row(method, maj1, pass_k, ids=("q0", "q1", "q2", "q3")):
    return {
        "method": method,
        "maj@1": float(np.mean(maj1)),
        "pass@K": float(np.mean(pass_k)),
        "samples": 0,
        "num_questions": len(ids),
        "per_question": {"id": list(ids), "maj@1": list(maj1), "pass@K": list(pass_k)},
    }


def test_compare_to_baseline_adds_paired_differences_that_recompute():
    sft = _row("SFT", [1, 0, 0, 1], [1, 1, 0, 1])
    ei = _row("EI", [1, 1, 0, 1], [1, 1, 0, 0])
    rows = compare_to_baseline([sft, ei], num_resamples=200)
    assert "vs_SFT" not in rows[0] and "vs_SFT" not in sft and "vs_SFT" not in ei
    got = rows[1]["vs_SFT"]
    assert got["maj@1"]["diff"] == pytest.approx(0.25)
    assert got["pass@K"]["diff"] == pytest.approx(-0.25)
    # Anyone can recompute it from results.json alone.
    stored = json.loads(json.dumps(rows))
    pq_ei, pq_sft = stored[1]["per_question"], stored[0]["per_question"]
    diff, ci = paired_bootstrap_ci(pq_ei["maj@1"], pq_sft["maj@1"], 200)
    assert stored[1]["vs_SFT"]["maj@1"] == {"diff": diff, "ci": list(ci)}


def test_rows_on_other_questions_or_without_per_question_results_get_no_comparison():
    sft = _row("SFT", [1, 0, 0, 1], [1, 1, 0, 1])
    other = _row("EI", [1, 1, 0, 1], [1, 1, 0, 1], ids=("q0", "q1", "q2", "q9"))
    old = {**_row("PPO", [1, 1, 1, 1], [1, 1, 1, 1]), "per_question": None}
    rows = compare_to_baseline([sft, other, old])
    assert all("vs_SFT" not in r for r in rows)
    assert "Δ" not in markdown_table(rows, 8)


def test_table_shows_the_paired_columns():
    rows = compare_to_baseline(
        [_row("SFT", [1, 0, 0, 1], [1, 1, 0, 1]), _row("EI", [1, 1, 0, 1], [1, 1, 0, 0])]
    )
    table = markdown_table(rows, 8)
    header, _, sft_line, ei_line = table.splitlines()
    assert "Δmaj@1 vs SFT (paired)" in header and "Δpass@8 vs SFT (paired)" in header
    assert sft_line.endswith("| - | - |")
    assert "| +25.0 [" in ei_line and "| -25.0 [" in ei_line


def test_a_greedy_only_table_has_no_sampled_columns():
    from jaxrl_reason.evaluation.report import table_note

    rows = compare_to_baseline(
        [_row("SFT", [1, 0, 0, 1], [1, 1, 0, 1]), _row("EI", [1, 1, 0, 1], [1, 1, 0, 0])]
    )
    header, _, _, ei_line = markdown_table(rows, 0).splitlines()
    assert header == "| method | maj@1 | samples drawn | Δmaj@1 vs SFT (paired) |"
    assert ei_line.count("|") == header.count("|") and "| +25.0 [" in ei_line
    assert "@0" not in table_note(0) and "greedy" in table_note(0)
